"""SQLStore on SQLite, PostgreSQL and MariaDB: schema, read-back, failures,
fork, and several processes writing one table."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
import typing as t
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import helpers
import pytest
import sqlalchemy as sa

from flask_traffic import FIELD_NAMES, LogPolicy, Traffic
from flask_traffic.stores import JSONStore, SQLStore, Store
from flask_traffic.stores.sqlschema import SUMMARY_INDEX_COLUMNS

BACKENDS = ["sqlite", "postgresql", "mariadb"]
ISO_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")

# Requests whose values a database could mangle: (path, headers, environ).
HOSTILE_USER_AGENT = "Mozilla/5.0 " + "x" * 10_000
HOSTILE_REQUESTS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("/caf%C3%A9/%E2%9C%93", {"User-Agent": HOSTILE_USER_AGENT}, {}),
    ("/line%0Abreak%0Dreturn", {}, {"HTTP_REFERER": "a\r\nb"}),
    ("/emoji/%F0%9F%98%80", {}, {}),  # 4 bytes in UTF-8: utf8mb4 on MariaDB
    ("/invalid/%FF%FE", {}, {}),  # Werkzeug decodes it to U+FFFD
    ("/nul/%00/x", {}, {"HTTP_USER_AGENT": "nul\x00inside"}),
    # A PEP 3333 server hands over header bytes decoded as latin-1.
    ("/latin1", {}, {"HTTP_USER_AGENT": "caf\xc3\xa9 \xff"}),
    # A server using surrogateescape would hand over lone surrogates.
    ("/surrogate", {}, {"HTTP_REFERER": "bad\udcff\udc80utf8"}),
    # Values that look like the store's own escaping.
    ("/marker", {}, {"HTTP_USER_AGENT": '\ufffe"x"', "HTTP_REFERER": "\\u0000 \\x00"}),
    ("/", {"Referer": ""}, {}),
]


@dataclass
class Database:
    backend: str
    url: str
    table: str


def _drop(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    try:
        sa.Table(table, sa.MetaData()).drop(engine, checkfirst=True)
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> Iterator[Database]:
    """An empty database of each kind, and a table name; the table is dropped after."""
    backend: str = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mariadb_url")
    yield Database(backend, url, unique_name)
    _drop(url, unique_name)


@pytest.fixture
def sql_store(database: Database, stores: list[Store]) -> Callable[..., SQLStore]:
    """Makes SQLStores on ``database``'s table."""

    def make(**options: t.Any) -> SQLStore:
        options.setdefault("database_url", database.url)
        store = SQLStore(database_table_name=database.table, **options)
        stores.append(store)
        return store

    return make


#: The shared test app, where any path answers 200.
make_app = functools.partial(helpers.make_app, catch_all=True)


def columns_of(engine: sa.Engine, table: str) -> dict[str, t.Any]:
    return {c["name"]: c["type"] for c in sa.inspect(engine).get_columns(table)}


# --- SQLite by default ------------------------------------------------------


def test_default_is_a_wal_sqlite_file_in_the_instance_folder(
    tmp_path: Path, stores: list[Store]
) -> None:
    instance = tmp_path / "not" / "yet" / "there"
    app = make_app(instance)
    store = SQLStore()
    stores.append(store)
    assert store.database_engine is None
    Traffic(app, stores=store)
    app.test_client().get("/hello")
    assert [row["request_path"] for row in store.read()] == ["/hello"]
    assert (instance / "traffic.sqlite").is_file()
    engine = store.database_engine
    assert engine is not None
    assert engine.url.database == str(instance / "traffic.sqlite")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    assert sa.inspect(engine).has_table("_traffic_")


def test_filename_and_location(tmp_path: Path, stores: list[Store]) -> None:
    store = SQLStore("hits.db", location=tmp_path / "logs", database_table_name="hits")
    stores.append(store)
    Traffic(make_app(tmp_path / "instance"), stores=store)
    assert (tmp_path / "logs" / "hits.db").is_file()
    assert not (tmp_path / "instance").exists()
    assert store.database_engine is not None
    assert sa.inspect(store.database_engine).has_table("hits")


def test_unwritable_location_fails_at_init(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RuntimeError, match="location"):
        Traffic(make_app(tmp_path), stores=SQLStore(location=blocker / "sub"))


def test_bad_arguments_fail_at_construction(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="not both"):
        SQLStore(database_url="sqlite://", database_engine=engine)
    with pytest.raises(TypeError, match=r"database_engine must be a sqlalchemy\.Engine"):
        SQLStore(database_engine="sqlite://")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="database_url must be"):
        SQLStore(database_url=engine)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a SQLAlchemy URL"):
        SQLStore(database_url="localhost:5432")
    with pytest.raises(ValueError, match="unknown dialect"):
        SQLStore(database_url="nosuchdb://host/db")
    with pytest.raises(TypeError, match="database_table_name"):
        SQLStore(database_table_name="")
    with pytest.raises(TypeError, match="log_policy"):
        SQLStore(log_policy={})  # type: ignore[arg-type]
    engine.dispose()


def test_an_unreachable_database_does_not_stop_the_app(
    tmp_path: Path, stores: list[Store], caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 9 of loopback. Until 1.0 this failed init_app
    # ("cannot create the table"), and with it every gunicorn worker's boot.
    store = SQLStore(database_url="postgresql+psycopg://nobody@127.0.0.1:9/none")
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    assert "SQLStore cannot reach its database yet (psycopg.OperationalError" in caplog.text
    assert app.test_client().get("/x").status_code == 200
    assert not store.flush(0.5)
    stats = store.stats()
    assert stats["queued"] == 1
    assert stats["last_error"].startswith("psycopg.OperationalError")


def test_given_engine_is_used_and_not_disposed(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'mine.db'}")
    store = SQLStore(database_engine=engine)
    assert store.database_engine is engine
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    app.test_client().get("/x")
    assert store.read()[0]["request_path"] == "/x"
    store.shutdown()
    # Still the user's to use.
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM _traffic_")).scalar() == 1
    engine.dispose()


def test_a_table_of_an_older_version_gets_the_columns_it_has(
    tmp_path: Path, stores: list[Store], caplog: pytest.LogCaptureFixture
) -> None:
    # flask-traffic 0.8 had no request_route column.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'traffic.sqlite'}")
    old = SQLStore().database_log_table
    old_columns = [sa.Column(c.name, c.type) for c in old.columns if c.name != "request_route"]
    sa.Table("_traffic_", sa.MetaData(), *old_columns).create(engine)
    engine.dispose()
    store = SQLStore()
    stores.append(store)
    app = make_app(tmp_path)
    with caplog.at_level("WARNING", logger="flask_traffic"):
        Traffic(app, stores=store)
    assert any("request_route" in r.getMessage() for r in caplog.records)
    app.test_client().get("/old")
    (row,) = store.read()
    assert row["request_path"] == "/old"
    assert row["request_route"] is None
    assert list(row) == list(FIELD_NAMES)


def test_a_custom_read_on_database_log_table(tmp_path: Path, stores: list[Store]) -> None:
    class MyStore(SQLStore):
        def read(self, limit: int = 1000) -> list[dict[str, t.Any]]:
            self.flush()
            table = self.database_log_table
            assert self.database_engine is not None
            with self.database_engine.connect() as connection:
                query = table.select().order_by(table.c.traffic_id.desc()).limit(limit)
                return [row._asdict() for row in connection.execute(query)]

    store = MyStore()
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    client = app.test_client()
    client.get("/one")
    client.get("/two")
    rows = store.read()
    assert [(row["traffic_id"], row["request_path"]) for row in rows] == [(2, "/two"), (1, "/one")]
    assert rows[0]["request_date"].tzinfo is not None
    assert rows[0]["response_status_code"] == 200


# --- Every backend ----------------------------------------------------------


def test_schema(database: Database, sql_store: Callable[..., SQLStore], tmp_path: Path) -> None:
    store = sql_store()
    Traffic(make_app(tmp_path), stores=store)
    assert store.database_engine is not None
    engine = store.database_engine
    columns = columns_of(engine, database.table)
    assert list(columns) == ["traffic_id", *FIELD_NAMES]
    with engine.connect() as connection:

        def type_name(name: str) -> str:
            # MariaDB reflects BIGINT as BIGINT(20): the display width is no matter.
            compiled: str = columns[name].compile(connection.dialect)
            return re.sub(r"^(BIGINT|INTEGER)\(\d+\)", r"\1", compiled)

        # SQLite autoincrements only an INTEGER PRIMARY KEY.
        assert type_name("traffic_id") == ("INTEGER" if database.backend == "sqlite" else "BIGINT")
        assert type_name("response_time") in {"DOUBLE", "DOUBLE PRECISION"}
        assert type_name("response_size") == "BIGINT"
        assert "TEXT" in type_name("request_user_agent")
        assert "CHAR" not in type_name("request_user_agent")
        date_type = type_name("request_date")
    expected_date = {
        "sqlite": "DATETIME",
        "postgresql": "TIMESTAMP WITH TIME ZONE",
        "mariadb": "DATETIME(6)",
    }[database.backend]
    assert date_type == expected_date
    indexes = sa.inspect(engine).get_indexes(database.table)
    # The failed requests by date, a partial index (none on MariaDB).
    partial = [["request_date"]] if database.backend in ("sqlite", "postgresql") else []
    if partial:
        [errors] = [index for index in indexes if index["name"].endswith("_errors")]
        where = str(errors.get("dialect_options", {}).get(f"{database.backend}_where", ""))
        assert "response_status_code >= 500" in where
        assert "response_exception IS NOT NULL" in where
    # The store keeps rollups by default, so summaries read them: on SQLite
    # too the table gets no summary index (summary_index=None), only the
    # date index every backend has.
    assert store.keeps_rollups
    assert sorted(index["column_names"] for index in indexes) == [["request_date"], *partial]
    # Without rollups only SQLite, which sorts every GROUP BY, gets it (on
    # the existing table, at init_app).
    raw = sql_store(rollups=False)
    Traffic(make_app(tmp_path, "raw"), stores=raw)
    expected_indexes = [["request_date"], *partial]
    if database.backend == "sqlite":
        expected_indexes.append(list(SUMMARY_INDEX_COLUMNS))
    indexes = sa.inspect(engine).get_indexes(database.table)
    assert sorted(index["column_names"] for index in indexes) == sorted(expected_indexes)
    assert sa.inspect(engine).get_pk_constraint(database.table)["constrained_columns"] == [
        "traffic_id"
    ]


def test_reads_back_what_json_store_reads(
    database: Database, sql_store: Callable[..., SQLStore], stores: list[Store], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    store = sql_store()
    json_store = JSONStore()
    stores.append(json_store)
    Traffic(app, stores=[store, json_store])
    client = app.test_client()
    for path, headers, environ in HOSTILE_REQUESTS:
        client.get(path, headers=headers, environ_base=environ)
    client.get("/error/none")
    rows = store.read()
    assert rows == json_store.read()
    assert len(rows) == len(HOSTILE_REQUESTS) + 1
    by_path = {row["request_path"]: row for row in rows}
    assert by_path["/café/✓"]["request_user_agent"] == HOSTILE_USER_AGENT
    assert by_path["/line\nbreak\rreturn"]["request_referrer"] == "a\r\nb"
    assert "/emoji/😀" in by_path
    assert "/invalid/\ufffd\ufffd" in by_path
    assert by_path["/nul/\x00/x"]["request_user_agent"] == "nul\x00inside"
    assert by_path["/latin1"]["request_user_agent"] == "caf\xc3\xa9 \xff"
    assert by_path["/surrogate"]["request_referrer"] == "bad\udcff\udc80utf8"
    assert by_path["/marker"]["request_user_agent"] == '\ufffe"x"'
    assert by_path["/marker"]["request_referrer"] == "\\u0000 \\x00"
    assert by_path["/"]["request_referrer"] == ""
    for row in rows:
        assert list(row) == list(FIELD_NAMES)
        assert ISO_DATE.match(row["request_date"])
        assert isinstance(row["response_time"], float)
        assert isinstance(row["response_status_code"], int)
        assert row["response_exception"] is None
    # Text a database can hold is stored as is, for other readers of the table.
    engine = store.database_engine
    assert engine is not None
    table = store.database_log_table
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(table.c.request_user_agent).where(table.c.request_path == "/café/✓")
        ).scalar()
    assert stored == HOSTILE_USER_AGENT


def test_dates_keep_microseconds_and_utc(
    database: Database, sql_store: Callable[..., SQLStore], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    store = sql_store()
    Traffic(app, stores=store)
    for _ in range(5):
        app.test_client().get("/")
    text = [row["request_date"] for row in store.read()]
    assert store.database_engine is not None
    table = store.database_log_table
    with store.database_engine.connect() as connection:
        query = sa.select(table.c.request_date).order_by(table.c.traffic_id.desc())
        dates = connection.execute(query).scalars().all()
    assert [d.isoformat(timespec="microseconds") for d in dates] == text
    assert all(d.utcoffset() == timedelta(0) for d in dates)
    assert any(d.microsecond for d in dates)


def test_disabled_fields_are_null_and_left_out_of_read(
    database: Database, sql_store: Callable[..., SQLStore], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    policy = LogPolicy().set_from_false(request_path=True, response_status_code=True)
    store = sql_store(log_policy=policy)
    Traffic(app, stores=store)
    app.test_client().get("/a", headers={"User-Agent": "secret"})
    assert store.read() == [{"request_path": "/a", "response_status_code": 200}]
    assert store.database_engine is not None
    table = store.database_log_table
    with store.database_engine.connect() as connection:
        row = connection.execute(table.select()).one()._asdict()
    assert row["request_user_agent"] is None
    assert row["request_date"] is None
    assert list(columns_of(store.database_engine, database.table)) == ["traffic_id", *FIELD_NAMES]


def test_read_limit_newest_first(
    database: Database, sql_store: Callable[..., SQLStore], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    store = sql_store()
    Traffic(app, stores=store)
    client = app.test_client()
    for n in range(30):
        client.get(f"/page/{n}")
    assert [row["request_path"] for row in store.read(3)] == ["/page/29", "/page/28", "/page/27"]
    assert len(store.read()) == 30
    assert store.read(0) == []


def test_a_batch_is_one_executemany_in_one_transaction(
    database: Database, sql_store: Callable[..., SQLStore], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 60.0
    # Rollups are folded in transactions of their own, after the batch's.
    store = sql_store(rollups=False)
    Traffic(app, stores=store)
    engine = store.database_engine
    assert engine is not None
    inserts: list[tuple[bool, int]] = []
    commits: list[int] = []

    def on_execute(conn: t.Any, cursor: t.Any, statement: str, params: t.Any, *a: t.Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            executemany = bool(a[-1])
            inserts.append((executemany, len(params) if executemany else 1))

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", lambda conn: commits.append(1))
    client = app.test_client()
    for n in range(50):
        client.get(f"/batch/{n}")
    assert store.flush(timeout=30)
    sa.event.remove(engine, "before_cursor_execute", on_execute)
    # PostgreSQL (psycopg) takes the rows by COPY, which cursor events do
    # not see: no INSERT at all there, rather than one a row.
    assert inserts == ([] if database.backend == "postgresql" else [(True, 50)])
    assert len(commits) == 1
    assert len(store.read()) == 50


def test_failed_writes_wait_in_the_queue_and_are_retried(
    database: Database, sql_store: Callable[..., SQLStore], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    store = sql_store()
    Traffic(app, stores=store)
    engine = store.database_engine
    assert engine is not None
    # The table disappears after init_app, as when a database is being restored.
    store.database_log_table.drop(engine)
    client = app.test_client()
    for n in range(5):
        client.get(f"/while/down/{n}")
    store.flush(timeout=0.2)
    deadline = time.monotonic() + 30
    while store.stats()["failed_exports"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.stats()["failed_exports"] >= 1
    assert store.stats()["queued"] == 5
    assert store.stats()["dropped"] == 0
    store.database_log_table.create(engine)
    assert store.flush(timeout=60)
    assert {row["request_path"] for row in store.read()} == {f"/while/down/{n}" for n in range(5)}
    assert store.stats()["exported"] == 5


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_connections_closed_by_the_server_are_replaced(
    backend: str,
    request: pytest.FixtureRequest,
    stores: list[Store],
    unique_name: str,
    tmp_path: Path,
) -> None:
    url = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mariadb_url")
    store = SQLStore(database_url=url, database_table_name=unique_name)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    engine = store.database_engine
    assert engine is not None
    own_id = "SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT connection_id()"
    ids: list[int] = []

    def on_connect(dbapi_connection: t.Any, record: t.Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(own_id)
        ids.append(int(cursor.fetchone()[0]))
        cursor.close()

    engine.dispose()
    sa.event.listen(engine, "connect", on_connect)
    try:
        client = app.test_client()
        client.get("/before")
        assert len(store.read()) == 1
        assert ids
        # A server restart: the store's connections are cut.
        admin = sa.create_engine(url, poolclass=sa.NullPool)
        with admin.connect() as connection:
            for pid in ids:
                if backend == "postgresql":
                    connection.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                else:
                    connection.execute(sa.text(f"KILL CONNECTION {pid}"))
        admin.dispose()
        client.get("/after")
        assert [row["request_path"] for row in store.read()] == ["/after", "/before"]
        assert store.stats()["dropped"] == 0
    finally:
        store.shutdown()
        _drop(url, unique_name)


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connections(
    database: Database, sql_store: Callable[..., SQLStore], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    store = sql_store()
    Traffic(app, stores=store)
    client = app.test_client()
    client.get("/parent")
    assert len(store.read()) == 1
    engine = store.database_engine
    assert engine is not None
    pool = engine.pool
    assert t.cast(sa.QueuePool, pool).checkedin() >= 1  # the parent's pooled connection
    connection_id = {
        "sqlite": None,
        "postgresql": "SELECT pg_backend_pid()",
        "mariadb": "SELECT connection_id()",
    }[database.backend]
    parent_id = None
    if connection_id:
        with engine.connect() as connection:
            parent_id = connection.exec_driver_sql(connection_id).scalar()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            fresh = engine.pool is not pool
            report = [str(t.cast(sa.QueuePool, engine.pool).checkedin() if fresh else -1)]
            if connection_id:
                with engine.connect() as connection:
                    report.append(str(connection.exec_driver_sql(connection_id).scalar()))
            client.get("/child")
            store.flush(timeout=30)
            os.write(write_end, " ".join(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_end, 100).decode().split()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report[0] == "0"  # nothing inherited in the child's pool
    if connection_id:
        assert report[1] != str(parent_id)
    # The parent's own connection still works.
    client.get("/parent/again")
    assert [row["request_path"] for row in store.read()] == ["/parent/again", "/child", "/parent"]


def test_threads_lose_and_duplicate_nothing(
    database: Database, sql_store: Callable[..., SQLStore], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 20
    store = sql_store()
    Traffic(app, stores=store)

    def hammer(thread: int) -> None:
        helpers.send_requests(app, (f"/t{thread}/{n}" for n in range(100)))

    helpers.run_writers(hammer, 6, timeout=120)
    found = [row["request_path"] for row in store.read(10_000)]
    assert len(found) == 600
    assert set(found) == {f"/t{i}/{n}" for i in range(6) for n in range(100)}


def _process(number: int, options: dict[str, t.Any], instance: str, count: int) -> None:
    app = make_app(Path(instance))
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 16
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 0.05
    # Each process creates the table if missing: they race to do it.
    store = SQLStore(**options)
    Traffic(app, stores=store)
    helpers.send_requests(app, (f"/p{number}/{n}" for n in range(count)))
    store.shutdown(timeout=60)
    if store.stats()["exported"] != count:
        raise SystemExit(f"exported {store.stats()}")


def test_four_processes_share_one_table(database: Database, tmp_path: Path) -> None:
    if database.backend == "sqlite":
        # The default: a file in the instance folder, which all four share.
        options: dict[str, t.Any] = {"database_table_name": database.table}
    else:
        options = {"database_url": database.url, "database_table_name": database.table}
    count = 200
    helpers.run_writers(_process, 4, options, str(tmp_path), count, processes=True, timeout=180)
    reader = SQLStore(**options, location=tmp_path)
    app = make_app(tmp_path)
    Traffic(app, stores=reader)
    try:
        found = [row["request_path"] for row in reader.read(10_000)]
    finally:
        reader.shutdown()
    assert len(found) == 4 * count
    assert set(found) == {f"/p{i}/{n}" for i in range(4) for n in range(count)}


def test_sync_mode_writes_in_the_request(
    database: Database, sql_store: Callable[..., SQLStore], tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    store = sql_store(sync=True)
    Traffic(app, stores=store)
    app.test_client().get("/now")
    assert store.stats()["exported"] == 1
    assert store.fetch(10)[0]["request_path"] == "/now"


# --- Without SQLAlchemy -----------------------------------------------------


def test_without_sqlalchemy_construction_names_the_extra() -> None:
    code = """
import sys
sys.modules["sqlalchemy"] = None  # as if not installed
import flask_traffic
from flask_traffic.stores import SQLStore, SQLORMStore
for make in (lambda: SQLStore(), lambda: SQLORMStore(object)):
    try:
        make()
    except ImportError as exc:
        print(exc)
try:
    from flask_traffic.stores import SQLORMModelMixin
except ImportError as exc:
    print(exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines() == [
        'SQLStore needs the sqlalchemy package: pip install "flask-traffic[sqlalchemy]".',
        'SQLORMStore needs the sqlalchemy package: pip install "flask-traffic[sqlalchemy]".',
        'SQLORMModelMixin needs the sqlalchemy package: pip install "flask-traffic[sqlalchemy]".',
    ]


# --- The example ------------------------------------------------------------


@pytest.mark.parametrize("from_env", [False, True])
def test_sql_example(
    load_example: Callable[[str], t.Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    from_env: bool,
) -> None:
    module = load_example("sql_app")
    if from_env:
        monkeypatch.setenv("TRAFFIC_DATABASE_URL", f"sqlite:///{tmp_path / 'from_env.db'}")
    app = module.create_app(instance_path=str(tmp_path / "instance"))
    try:
        client = app.test_client()
        assert client.get("/").status_code == 200
        assert client.get("/item/3").get_json() == {"item": 3}
        client.get("/missing")
        rows = client.get("/traffic").get_json()
        assert [(r["request_path"], r["response_status_code"]) for r in rows] == [
            ("/missing", 404),
            ("/item/3", 200),
            ("/", 200),
        ]
        assert all(ISO_DATE.match(r["request_date"]) for r in rows)
        assert rows[1]["request_route"] == "/item/<int:n>"
    finally:
        for store in module.traffic.get_stores(app):
            store.shutdown()
    used = tmp_path / ("from_env.db" if from_env else "instance/traffic.sqlite")
    assert used.is_file()


def test_sqlite_dates_are_stored_as_sqlalchemys_own_text() -> None:
    """The date of a SQLite row is written by a faster path than
    SQLAlchemy's, to the very same text, whatever the datetime given."""
    from datetime import datetime, timezone

    from sqlalchemy.dialects import sqlite

    from flask_traffic.stores.sqlschema import UTCDateTime

    dialect = sqlite.dialect()
    ours = UTCDateTime().bind_processor(dialect)
    theirs = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None
    assert theirs is not None
    offset = timezone(timedelta(hours=-7, minutes=-30))
    moments = [
        datetime(2026, 12, 1, 23, 12, 16, 262183, tzinfo=timezone.utc),
        datetime(2026, 12, 1, 23, 12, 16, tzinfo=timezone.utc),
        datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=offset),
        datetime(1, 1, 1, 0, 0, 0, 1),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime(999, 7, 4, 12),
    ]
    for moment in moments:
        utc = moment if moment.tzinfo is None else moment.astimezone(timezone.utc)
        assert ours(moment) == theirs(utc.replace(tzinfo=None)), moment
    assert ours(None) is None
