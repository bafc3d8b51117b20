"""A small site whose traffic flask-traffic records in a Redis stream.

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/redis_app.py
    flask --app examples/redis_app.py run

Open http://127.0.0.1:5000/ and a few other pages, then
http://127.0.0.1:5000/traffic for what was recorded, newest first. The
entries are in the stream ``flask_traffic``:

    redis-cli XREVRANGE flask_traffic + - COUNT 5
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, abort

from flask_traffic import Traffic
from flask_traffic.stores import RedisStore

#: The stream's key.
STREAM = "flask_traffic"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

traffic = Traffic()


def create_app(
    instance_path: str | None = None,
    redis_url: str | None = None,
    event_name: str = STREAM,
) -> Flask:
    app = Flask(__name__, instance_path=instance_path)

    # The stream keeps about the newest 100,000 requests.
    store = RedisStore(
        event_name=event_name,
        url=redis_url or os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        max_len=100_000,
    )
    traffic.init_app(app, stores=store)

    @app.route("/")
    def index() -> str:
        return (
            "<h1>flask-traffic and Redis</h1>"
            '<p><a href="/item/1">an item</a> · <a href="/missing">a 404</a> · '
            '<a href="/traffic">the traffic</a></p>'
        )

    @app.route("/item/<int:n>")
    def item(n: int) -> dict[str, int]:
        return {"item": n}

    @app.route("/missing")
    def missing() -> str:
        abort(404)

    @app.route("/traffic")
    def show_traffic() -> list[dict[str, Any]]:
        return store.read(limit=100)

    return app


if __name__ == "__main__":
    create_app(str(Path(__file__).with_name("instance"))).run(host="127.0.0.1", port=5000)
