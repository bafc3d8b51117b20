"""A small site that keeps its traffic in a file and sends it to an
OpenTelemetry collector as HTTP server spans.

    pip install -e './exporters/flask-traffic-otel'    # from a checkout
    OTEL_SERVICE_NAME=shop python examples/otel_app.py

With no endpoint given, spans go where the OTEL_EXPORTER_OTLP_* environment
variables say, else to a collector on http://localhost:4318. Open
http://127.0.0.1:5000/ and a few other pages: each request is a span in your
tracing backend (a request that carries a W3C traceparent joins its caller's
trace), and a line in examples/instance/traffic.json, listed at /traffic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, abort
from flask_traffic_otel import OTelExporter

from flask_traffic import LogPolicy, Traffic
from flask_traffic.stores import JSONStore

traffic = Traffic()


def create_app(instance_path: str | None = None, endpoint: str | None = None) -> Flask:
    """The site; ``endpoint`` is the collector's OTLP/HTTP traces URL."""
    app = Flask(__name__, instance_path=instance_path)

    json_store = JSONStore()
    # Spans carry no client address, and leave out the /traffic page itself.
    exporter = OTelExporter(
        endpoint,
        log_policy=LogPolicy(skip_endpoints=["show_traffic"]).set_from_true(
            request_remote_address=False
        ),
    )
    traffic.init_app(app, stores=[json_store, exporter])

    @app.route("/")
    def index() -> str:
        return (
            "<h1>flask-traffic OpenTelemetry demo</h1>"
            '<p><a href="/item/1">an item</a> · <a href="/missing">a 404</a> · '
            '<a href="/error">an error</a> · <a href="/traffic">the traffic</a></p>'
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

    return app


if __name__ == "__main__":
    # Keep the instance folder beside this file, as `flask --app` would.
    create_app(str(Path(__file__).with_name("instance"))).run(host="127.0.0.1", port=5000)
