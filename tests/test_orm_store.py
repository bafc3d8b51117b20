"""SQLORMStore and SQLORMModelMixin with Flask-SQLAlchemy, plain SQLAlchemy
and Alembic, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext
from alembic.operations import Operations
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from helpers import run_writers, send_requests
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import flask_traffic.stores.ormstore
import flask_traffic.stores.sqlschema
from flask_traffic import FIELD_NAMES, Traffic
from flask_traffic.stores import JSONStore, SQLORMModelMixin, SQLORMStore, Store

BACKENDS = ["sqlite", "postgresql", "mariadb"]


@dataclass
class Site:
    """A Flask-SQLAlchemy app with a traffic model and a model of its own."""

    app: Flask
    db: SQLAlchemy
    traffic_model: type[t.Any]
    item_model: type[t.Any]
    url: str


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'site.sqlite'}"
    return str(
        request.getfixturevalue("postgres_url" if request.param == "postgresql" else "mariadb_url")
    )


def _make_site(url: str, tmp_path: Path, name: str) -> Site:
    app = Flask("site", instance_path=str(tmp_path / "instance"))
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy()

    class Traffic(db.Model, SQLORMModelMixin):  # type: ignore[name-defined,misc]
        __tablename__ = name

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = f"{name}_item"
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str] = mapped_column(sa.String(50))

    db.init_app(app)

    @app.route("/<path:rest>")
    def anything(rest: str) -> str:
        return rest

    @app.route("/add/<label>")
    def add(label: str) -> str:
        # Added, never committed: it must not reach the database.
        db.session.add(Item(label=label))
        return "added"

    @app.route("/add-and-flush/<label>")
    def add_and_flush(label: str) -> str:
        db.session.add(Item(label=label))
        db.session.flush()
        return "flushed"

    @app.route("/commit/<label>")
    def commit(label: str) -> str:
        db.session.add(Item(label=label))
        db.session.commit()
        return "committed"

    return Site(app, db, Traffic, Item, url)


@pytest.fixture
def site(url: str, tmp_path: Path, unique_name: str) -> Iterator[Site]:
    made = _make_site(url, tmp_path, unique_name)
    with made.app.app_context():
        made.db.create_all()
    yield made
    with made.app.app_context():
        made.db.drop_all()
        for engine in made.db.engines.values():
            engine.dispose()


def _count(site: Site, model: type[t.Any]) -> int:
    with site.app.app_context():
        return int(site.db.session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


def test_flask_sqlalchemy_model_reads_back_like_json_store(site: Site, stores: list[Store]) -> None:
    store = SQLORMStore(site.traffic_model)
    json_store = JSONStore()
    stores += [store, json_store]
    Traffic(site.app, stores=[store, json_store])
    client = site.app.test_client()
    client.get("/caf%C3%A9/%F0%9F%98%80", headers={"User-Agent": "Mozilla/5.0 " + "x" * 10_000})
    client.get("/nul/%00", environ_base={"HTTP_REFERER": "a\r\n\x00\udcff"})
    client.get("/plain")
    rows = store.read()
    assert rows == json_store.read()
    assert [row["request_path"] for row in rows] == ["/plain", "/nul/\x00", "/café/😀"]
    assert all(list(row) == list(FIELD_NAMES) for row in rows)
    # The model is a model: the app queries it like any other, dates aware UTC.
    with site.app.app_context():
        hits = site.db.session.scalars(
            sa.select(site.traffic_model).order_by(site.traffic_model.traffic_id)
        ).all()
        assert [hit.request_path for hit in hits][-1] == "/plain"
        assert hits[-1].request_date.utcoffset() == timedelta(0)
        assert hits[-1].request_date.isoformat(timespec="microseconds") == rows[0]["request_date"]


@pytest.mark.parametrize("sync", [False, True])
def test_the_apps_session_is_never_committed_by_the_store(
    site: Site, stores: list[Store], sync: bool
) -> None:
    store = SQLORMStore(site.traffic_model, sync=sync)
    stores.append(store)
    Traffic(site.app, stores=store)
    client = site.app.test_client()
    assert client.get("/add/pending").data == b"added"
    assert client.get("/add-and-flush/flushed").data == b"flushed"
    assert [row["request_path"] for row in store.read()] == [
        "/add-and-flush/flushed",
        "/add/pending",
    ]
    # flask-traffic 0.8 committed the view's session here.
    assert _count(site, site.item_model) == 0
    client.get("/commit/kept")
    assert _count(site, site.item_model) == 1
    assert len(store.read()) == 3


def test_no_orm_session_takes_part_in_a_write(site: Site, stores: list[Store]) -> None:
    store = SQLORMStore(site.traffic_model)
    stores.append(store)
    Traffic(site.app, stores=store)
    began: list[Session] = []

    def on_begin(session: Session, *args: t.Any) -> None:
        began.append(session)

    sa.event.listen(Session, "after_begin", on_begin)
    try:
        site.app.test_client().get("/x")
        assert store.flush(timeout=30)
    finally:
        sa.event.remove(Session, "after_begin", on_begin)
    assert began == []
    assert _count(site, site.traffic_model) == 1


def test_table_and_columns_match_sql_store(site: Site, stores: list[Store]) -> None:
    store = SQLORMStore(site.traffic_model)
    stores.append(store)
    Traffic(site.app, stores=store)
    with site.app.app_context():
        inspector = sa.inspect(site.db.engine)
        columns = [c["name"] for c in inspector.get_columns(site.traffic_model.__tablename__)]
        indexes = inspector.get_indexes(site.traffic_model.__tablename__)
    assert columns == ["traffic_id", *FIELD_NAMES]
    assert [index["column_names"] for index in indexes] == [["request_date"]]
    from flask_traffic.stores import SQLStore

    core = SQLStore(database_table_name=site.traffic_model.__tablename__).database_log_table
    orm = site.traffic_model.__table__
    for name in ["traffic_id", *FIELD_NAMES]:
        assert repr(orm.c[name].type) == repr(core.c[name].type)


def test_default_table_name_is_that_of_0_8() -> None:
    db = SQLAlchemy()

    class Traffic(db.Model, SQLORMModelMixin):  # type: ignore[name-defined,misc]
        pass

    assert Traffic.__tablename__ == "_traffic_"
    assert Traffic.__table__.name == "_traffic_"


def test_plain_sqlalchemy_with_a_session(
    url: str, tmp_path: Path, unique_name: str, stores: list[Store]
) -> None:
    class Base(DeclarativeBase):
        pass

    class Hit(Base, SQLORMModelMixin):
        __tablename__ = unique_name

    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    session = Session(engine)
    try:
        store = SQLORMStore(Hit, db_session=session)
        stores.append(store)
        app = Flask("plain", instance_path=str(tmp_path))
        app.add_url_rule("/hello", "hello", lambda: "hi")
        Traffic(app, stores=store)
        app.test_client().get("/hello")
        assert [row["request_path"] for row in store.read()] == ["/hello"]
        # The session given was only asked for its bind.
        assert not session.in_transaction()
        assert session.scalars(sa.select(Hit.__table__.c.request_endpoint)).one() == "hello"
    finally:
        session.close()
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_plain_sqlalchemy_without_a_session_fails_at_init(tmp_path: Path) -> None:
    class Base(DeclarativeBase):
        pass

    class Hit(Base, SQLORMModelMixin):
        pass

    store = SQLORMStore(Hit)
    with pytest.raises(RuntimeError, match=r"cannot tell which database Hit.*pass db_session="):
        Traffic(Flask("plain", instance_path=str(tmp_path)), stores=store)
    session = Session()
    with pytest.raises(RuntimeError, match="has no engine for Hit"):
        Traffic(Flask("plain", instance_path=str(tmp_path)), stores=SQLORMStore(Hit, session))
    session.close()


def test_bad_models_fail_at_construction() -> None:
    with pytest.raises(TypeError, match=r"needs a model.*SQLORMStore\(Traffic\)"):
        SQLORMStore()

    class Base(DeclarativeBase):
        pass

    class Bare(Base):
        __tablename__ = "bare"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(
        TypeError,
        match=r"model Bare has no column traffic_id, request_date.*"
        r"add SQLORMModelMixin to its bases",
    ):
        SQLORMStore(Bare)
    with pytest.raises(TypeError, match="mapped declarative model class"):
        SQLORMStore(object)
    with pytest.raises(TypeError, match="mapped declarative model class"):
        SQLORMStore("Traffic")  # type: ignore[arg-type]

    class Hit(Base, SQLORMModelMixin):
        pass

    with pytest.raises(TypeError, match="db_session must be"):
        SQLORMStore(Hit, db_session="session")  # type: ignore[arg-type]


def test_flask_sqlalchemy_set_up_after_traffic_fails_at_init(tmp_path: Path) -> None:
    db = SQLAlchemy()

    class Hit(db.Model, SQLORMModelMixin):  # type: ignore[name-defined,misc]
        pass

    app = Flask("late", instance_path=str(tmp_path))
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(RuntimeError, match=r"call db.init_app\(app\) before traffic.init_app"):
        Traffic(app, stores=SQLORMStore(Hit))


def test_missing_table_is_not_created_and_writes_wait_for_it(
    url: str, tmp_path: Path, unique_name: str, stores: list[Store]
) -> None:
    made = _make_site(url, tmp_path, unique_name)
    store = SQLORMStore(made.traffic_model)
    stores.append(store)
    Traffic(made.app, stores=store)
    try:
        made.app.test_client().get("/early")
        with made.app.app_context():
            assert not sa.inspect(made.db.engine).has_table(unique_name)
            # The app creates its tables after init_app, as apps often do.
            made.db.create_all()
        assert store.flush(timeout=60)
        assert [row["request_path"] for row in store.read()] == ["/early"]
    finally:
        store.shutdown()
        with made.app.app_context():
            made.db.drop_all()
            for engine in made.db.engines.values():
                engine.dispose()


def test_alembic_autogenerate_creates_the_table(
    url: str, tmp_path: Path, unique_name: str, stores: list[Store]
) -> None:
    made = _make_site(url, tmp_path, unique_name)
    metadata = sa.MetaData()
    made.traffic_model.__table__.to_metadata(metadata)
    with made.app.app_context():
        engine = made.db.engine
    try:

        def ours(name: str | None, type_: str, parent_names: t.Any) -> bool:
            # Only this test's table: the database is shared, and the other
            # tables (other tests', a benchmark's, rollups') would be dropped
            # by the migration run below.
            return type_ != "table" or name == unique_name

        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"include_name": ours})
            migration = produce_migrations(context, metadata)
        assert migration.upgrade_ops is not None
        code = render_python_code(migration.upgrade_ops)
        assert f"op.create_table('{unique_name}'" in code
        assert "op.drop_table" not in code
        for name in ["traffic_id", *FIELD_NAMES]:
            assert f"sa.Column('{name}'" in code
        assert f"op.create_index(op.f('ix_{unique_name}_request_date')" in code
        assert "flask_traffic.stores.sqlschema.UTCDateTime(timezone=True)" in code
        # The script runs, given the imports a migration file has (plus ours).
        namespace: dict[str, t.Any] = {"sa": sa, "flask_traffic": flask_traffic}
        exec("from sqlalchemy.dialects import mysql", namespace)
        with engine.begin() as connection:
            namespace["op"] = Operations(MigrationContext.configure(connection))
            exec(code.replace("\n    ", "\n"), namespace)
        store = SQLORMStore(made.traffic_model)
        stores.append(store)
        Traffic(made.app, stores=store)
        made.app.test_client().get("/migrated")
        assert store.read()[0]["request_path"] == "/migrated"
    finally:
        with made.app.app_context():
            made.db.drop_all()
            for each in made.db.engines.values():
                each.dispose()


def test_migrations_of_earlier_versions_still_find_utc_datetime() -> None:
    # Alembic names the type where it is defined; migrations written before
    # it moved to sqlschema name flask_traffic.stores.ormstore.UTCDateTime.
    schema = flask_traffic.stores.sqlschema
    assert schema.UTCDateTime.__module__ == "flask_traffic.stores.sqlschema"
    assert flask_traffic.stores.ormstore.UTCDateTime is schema.UTCDateTime
    assert flask_traffic.stores.ormstore.SQLORMModelMixin is schema.SQLORMModelMixin
    assert SQLORMModelMixin is schema.SQLORMModelMixin


def test_threads_lose_and_duplicate_nothing(site: Site, stores: list[Store]) -> None:
    site.app.config["TRAFFIC_MAX_BATCH_SIZE"] = 20
    store = SQLORMStore(site.traffic_model)
    stores.append(store)
    Traffic(site.app, stores=store)

    def hammer(thread: int) -> None:
        send_requests(site.app, (f"/t{thread}/{n}" for n in range(100)))

    run_writers(hammer, 4, timeout=120)
    found = [row["request_path"] for row in store.read(10_000)]
    assert len(found) == 400
    assert set(found) == {f"/t{i}/{n}" for i in range(4) for n in range(100)}


# --- The example ------------------------------------------------------------


def test_orm_example(load_example: Callable[[str], t.Any], tmp_path: Path) -> None:
    module = load_example("orm_app")
    app = module.create_app(
        instance_path=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'site.db'}"
    )
    try:
        with app.app_context():
            module.db.create_all()
        client = app.test_client()
        assert client.get("/").status_code == 200
        assert client.get("/notes/add/hello").get_json() == {"notes": 1}
        rows = client.get("/traffic").get_json()
        assert [(r["request_path"], r["request_endpoint"]) for r in rows] == [
            ("/notes/add/hello", "add_note"),
            ("/", "index"),
        ]
        assert module.traffic.flush(app, timeout=30)
        with app.app_context():
            hits = module.db.session.scalars(sa.select(module.Hit)).all()
            assert len(hits) == 3  # the /traffic page too
    finally:
        for store in module.traffic.get_stores(app):
            store.shutdown()
        with app.app_context():
            for engine in module.db.engines.values():
                engine.dispose()


def test_orm_example_tables_from_flask_migrate(tmp_path: Path) -> None:
    database = tmp_path / "migrated.db"
    env = {**os.environ, "TRAFFIC_DATABASE_URL": f"sqlite:///{database}"}
    migrations = tmp_path / "migrations"
    app_path = str(Path(__file__).resolve().parents[1] / "examples" / "orm_app.py")

    def flask(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", app_path, "db", *args, "-d", str(migrations)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    flask("init")
    # Alembic writes request_date's type with its module but no import for it.
    template = migrations / "script.py.mako"
    text = template.read_text()
    template.write_text(
        text.replace(
            "import sqlalchemy as sa\n",
            "import sqlalchemy as sa\nimport flask_traffic.stores.sqlschema\n",
            1,
        )
    )
    assert "Detected added table '_traffic_'" in flask("migrate", "-m", "traffic")
    (script,) = (migrations / "versions").glob("*.py")
    code = script.read_text()
    assert "op.create_table('_traffic_'" in code
    assert all(f"sa.Column('{name}'" in code for name in ["traffic_id", *FIELD_NAMES])
    flask("upgrade")
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        columns = [c["name"] for c in sa.inspect(engine).get_columns("_traffic_")]
    finally:
        engine.dispose()
    assert columns == ["traffic_id", *FIELD_NAMES]


def test_columns_of_a_models_own_get_their_defaults(
    url: str, tmp_path: Path, unique_name: str, stores: list[Store]
) -> None:
    # A model may add columns of its own: one with a Python-side default
    # (which only SQLAlchemy fills in, so the write goes through it), one
    # with a server default. Every record gets both.
    app = Flask("own", instance_path=str(tmp_path / "instance"))
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy()

    class Hit(db.Model, SQLORMModelMixin):  # type: ignore[name-defined,misc]
        __tablename__ = unique_name
        tenant: Mapped[str] = mapped_column(sa.String(20), default=lambda: "acme")
        region: Mapped[str] = mapped_column(sa.String(20), server_default="eu")

    db.init_app(app)
    app.add_url_rule("/<path:rest>", "any", lambda rest: rest)
    with app.app_context():
        db.create_all()
    try:
        store = SQLORMStore(Hit)
        stores.append(store)
        Traffic(app, stores=store)
        client = app.test_client()
        for n in range(3):
            client.get(f"/p/{n}")
        assert [row["request_path"] for row in store.read()] == ["/p/2", "/p/1", "/p/0"]
        with app.app_context():
            hits = db.session.scalars(sa.select(Hit).order_by(Hit.traffic_id)).all()
            assert [(hit.tenant, hit.region) for hit in hits] == [("acme", "eu")] * 3
    finally:
        with app.app_context():
            db.drop_all()
            for engine in db.engines.values():
                engine.dispose()
