"""A small site whose traffic flask-traffic records in two files.

    python examples/demo_app.py
    flask --app examples/demo_app.py run

Open http://127.0.0.1:5000/, a few of the other pages, then
http://127.0.0.1:5000/traffic for what was recorded, newest first, and
http://127.0.0.1:5000/traffic/summary for the last hour's summary, and
http://127.0.0.1:5000/traffic/dashboard/ for the dashboard. The
`flask traffic` commands work on it too: `cd examples && flask --app demo_app
traffic stats`. The files are examples/instance/traffic.json (JSON Lines) and
traffic.csv.

The dashboard asks for a password (any user name). At start the app makes a
new one and prints it, unless the environment gives a hash of your own:
`export FLASK_TRAFFIC_DASHBOARD_PASSWORD_HASH="$(flask --app demo_app traffic
dashboard-password)"`.
"""

from __future__ import annotations

import secrets
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flask import Flask, abort, request
from werkzeug.security import generate_password_hash

from flask_traffic import LogPolicy, Traffic
from flask_traffic.dashboard import Dashboard
from flask_traffic.stores import CSVStore, JSONStore

traffic = Traffic()
dashboard = Dashboard()


def create_app(instance_path: str | None = None, dashboard_password: str | None = None) -> Flask:
    """The demo site; ``dashboard_password`` is the dashboard's password
    (default: the hash in the environment, else a new password, printed)."""
    app = Flask(__name__, instance_path=instance_path)
    # FLASK_TRAFFIC_DASHBOARD_PASSWORD_HASH -> TRAFFIC_DASHBOARD_PASSWORD_HASH
    app.config.from_prefixed_env()

    # Every field of every request, as JSON Lines in the instance folder.
    json_store = JSONStore()
    # A slimmer CSV file that leaves out the /traffic pages themselves.
    csv_store = CSVStore(
        log_policy=LogPolicy(skip_endpoints=["show_traffic", "traffic_summary"]).set_from_false(
            request_date=True,
            request_method=True,
            request_path=True,
            response_status_code=True,
            response_time=True,
        )
    )
    traffic.init_app(app, stores=[json_store, csv_store])
    if dashboard_password is None and not app.config.get("TRAFFIC_DASHBOARD_PASSWORD_HASH"):
        dashboard_password = secrets.token_urlsafe(12)
        print(
            f"Traffic dashboard: http://127.0.0.1:5000/traffic/dashboard/ "
            f"(any user name, password {dashboard_password})",
            file=sys.stderr,
            flush=True,
        )
    if dashboard_password is not None:
        app.config["TRAFFIC_DASHBOARD_PASSWORD_HASH"] = generate_password_hash(dashboard_password)
    # The JSON file's store, behind the password; its own requests are not recorded.
    dashboard.init_app(app)

    @app.route("/")
    def index() -> str:
        return (
            "<h1>flask-traffic demo</h1>"
            '<p><a href="/item/1">an item</a> · <a href="/missing">a 404</a> · '
            '<a href="/error">an error</a> · <a href="/traffic">the traffic</a> · '
            '<a href="/traffic/summary">its summary</a> · '
            '<a href="/traffic/dashboard/">the dashboard</a></p>'
        )

    @app.route("/item/<int:n>")
    def item(n: int) -> dict[str, int]:
        return {"item": n}

    @app.route("/missing")
    def missing() -> str:
        abort(404)

    @app.route("/error")
    def error() -> str:
        raise RuntimeError("something broke")

    @app.route("/traffic")
    def show_traffic() -> list[dict[str, Any]]:
        return json_store.read()

    @app.route("/traffic/summary")
    def traffic_summary() -> dict[str, Any]:
        # The last hour, or ?since=2026-11-25T08:00:00Z (ISO 8601).
        since = request.args.get("since") or datetime.now(timezone.utc) - timedelta(hours=1)
        return json_store.summary(since=since)

    return app


if __name__ == "__main__":
    # Run as a script the app is named "__main__", and Flask would put its
    # instance folder in the working directory: keep it beside this file, as
    # `flask --app examples/demo_app.py run` does.
    create_app(str(Path(__file__).with_name("instance"))).run(host="127.0.0.1", port=5000)
