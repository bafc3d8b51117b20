"""A small site whose traffic SQLStore records in a SQL table.

    python examples/sql_app.py
    flask --app examples/sql_app.py run

By default the table is in a SQLite file, examples/instance/traffic.sqlite.
Point it at another database with a SQLAlchemy URL in TRAFFIC_DATABASE_URL:

    pip install "flask-traffic[postgresql]"
    export TRAFFIC_DATABASE_URL=postgresql+psycopg://user:password@127.0.0.1/site
    python examples/sql_app.py

    pip install "flask-traffic[mysql]"
    export TRAFFIC_DATABASE_URL=mysql+pymysql://user:password@127.0.0.1/site
    python examples/sql_app.py

Open http://127.0.0.1:5000/, a few other pages, then
http://127.0.0.1:5000/traffic for what was recorded, newest first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask

from flask_traffic import LogPolicy, Traffic
from flask_traffic.stores import SQLStore

traffic = Traffic()


def create_app(instance_path: str | None = None, database_url: str | None = None) -> Flask:
    """The site.

    :param instance_path: the instance folder, where the SQLite file goes.
    :param database_url: a SQLAlchemy URL; ``TRAFFIC_DATABASE_URL`` or the
        SQLite file when ``None``.
    """
    app = Flask(__name__, instance_path=instance_path)
    database_url = database_url or os.environ.get("TRAFFIC_DATABASE_URL") or None
    # Every field of every request but the /traffic page's own.
    store = SQLStore(
        log_policy=LogPolicy(skip_endpoints=["show_traffic"]),
        database_url=database_url,
    )
    traffic.init_app(app, stores=store)

    @app.route("/")
    def index() -> str:
        return (
            "<h1>SQLStore demo</h1>"
            '<p><a href="/item/1">an item</a> · <a href="/traffic">the traffic</a></p>'
        )

    @app.route("/item/<int:n>")
    def item(n: int) -> dict[str, int]:
        return {"item": n}

    @app.route("/traffic")
    def show_traffic() -> list[dict[str, Any]]:
        return store.read(100)

    return app


if __name__ == "__main__":
    # Run as a script the app is named "__main__" and Flask would put its
    # instance folder in the working directory: keep it beside this file.
    create_app(str(Path(__file__).with_name("instance"))).run(host="127.0.0.1", port=5000)
