"""A Flask-SQLAlchemy site whose traffic SQLORMStore records in a model of its own.

    pip install "flask-traffic[flask-sqlalchemy]" flask-migrate
    python examples/orm_app.py

The database is examples/instance/orm_app.sqlite, or the SQLAlchemy URL in
TRAFFIC_DATABASE_URL. Running the file creates the tables; with
``flask --app examples/orm_app.py ...`` create them with ``init-db``, or with
Flask-Migrate (``db init``, ``db migrate``, ``db upgrade``).

Open http://127.0.0.1:5000/, add a note at /notes/add/hello, then
http://127.0.0.1:5000/traffic for what was recorded, newest first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from flask_traffic import Traffic
from flask_traffic.stores import SQLORMModelMixin, SQLORMStore

db = SQLAlchemy()
migrate = Migrate()
traffic = Traffic()


class Hit(db.Model, SQLORMModelMixin):  # type: ignore[name-defined,misc]
    """One request; the mixin gives it the columns (table ``_traffic_``)."""


class Note(db.Model):  # type: ignore[name-defined,misc]
    """The site's own data."""

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


def create_app(instance_path: str | None = None, database_url: str | None = None) -> Flask:
    """The site.

    :param instance_path: the instance folder, where the SQLite file goes.
    :param database_url: a SQLAlchemy URL; ``TRAFFIC_DATABASE_URL`` or
        ``sqlite:///orm_app.sqlite`` (in the instance folder) when ``None``.
    """
    app = Flask(__name__, instance_path=instance_path)
    app.config["SQLALCHEMY_DATABASE_URI"] = (
        database_url or os.environ.get("TRAFFIC_DATABASE_URL") or "sqlite:///orm_app.sqlite"
    )
    # The store finds the engine through Flask-SQLAlchemy: set it up first.
    db.init_app(app)
    migrate.init_app(app, db)
    store = SQLORMStore(Hit)
    traffic.init_app(app, stores=store)

    @app.cli.command("init-db")
    def init_db() -> None:
        """Create the tables."""
        db.create_all()

    @app.route("/")
    def index() -> str:
        return (
            "<h1>SQLORMStore demo</h1>"
            '<p><a href="/notes/add/hello">add a note</a> · <a href="/traffic">the traffic</a></p>'
        )

    @app.route("/notes/add/<text>")
    def add_note(text: str) -> dict[str, int]:
        db.session.add(Note(text=text))
        db.session.commit()
        return {"notes": db.session.scalar(select(func.count()).select_from(Note)) or 0}

    @app.route("/traffic")
    def show_traffic() -> list[dict[str, Any]]:
        return store.read(100)

    return app


if __name__ == "__main__":
    # Run as a script the app is named "__main__" and Flask would put its
    # instance folder in the working directory: keep it beside this file.
    site = create_app(str(Path(__file__).with_name("instance")))
    with site.app_context():
        db.create_all()
    site.run(host="127.0.0.1", port=5000)
