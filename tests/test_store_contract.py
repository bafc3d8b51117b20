"""One contract, every store: the same requests read back the same from each.

Each case attaches a ``JSONStore`` (the reference) and the store under test to
one app, sends the same requests, hostile ones included, and compares what
``read()`` returns: the same rows, the same values and types, newest first.
The server-backed stores run against the local PostgreSQL, MariaDB and Redis
(see ``conftest.py``).
"""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from flask import Flask, abort

from flask_traffic import FIELD_NAMES, LogPolicy, Traffic
from flask_traffic.stores import CSVStore, JSONStore, Store

CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)

#: (method, path, environ overrides): what every store is sent, oldest first.
#: Overrides go straight into the WSGI environ, as a server would put them
#: there, so headers can hold what the test client would refuse to send.
REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/", {"HTTP_USER_AGENT": CHROME, "HTTP_REFERER": "https://example.com/a?b=c"}),
    ("GET", "/item/3", {}),
    ("GET", "/missing", {"HTTP_USER_AGENT": "curl/8.5.0"}),
    ("GET", "/forbidden", {"HTTP_REFERER": ""}),
    ("GET", "/boom", {"HTTP_USER_AGENT": CHROME}),
    ("POST", "/item/4", {}),
    ("GET", "/echo/=1+2", {"HTTP_USER_AGENT": '=HYPERLINK("http://x")'}),
    ("GET", "/echo/-x", {"HTTP_USER_AGENT": "+1", "HTTP_REFERER": "@SUM(A1)"}),
    ("GET", "/echo/'quoted", {"HTTP_USER_AGENT": "\tTab", "HTTP_REFERER": "\rcarriage"}),
    ("GET", "/echo/lines", {"HTTP_USER_AGENT": 'line one\r\nline two\n"quoted", comma'}),
    ("GET", "/echo/é/漢字/🙂", {"HTTP_USER_AGENT": "Ünïcødé ✓"}),
    ("GET", "/echo/%2F%25%20", {}),
    # A server hands header bytes over as latin-1 text: invalid UTF-8 arrives so.
    ("GET", "/echo/latin", {"HTTP_USER_AGENT": b"\xff\xfe\xc3(bad".decode("latin-1")}),
    # A server decoding with surrogateescape (PEP 383) leaves lone surrogates.
    (
        "GET",
        "/echo/escaped",
        {"HTTP_USER_AGENT": "Firefox/133.0 \udcff\udcfe", "HTTP_REFERER": "\udc80"},
    ),
    ("GET", "/echo/big", {"HTTP_USER_AGENT": "A" * 10_000}),
    ("GET", "/echo/" + "p" * 2_000, {}),
]


def make_app(instance: Path) -> Flask:
    app = Flask("contract", instance_path=str(instance))
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 0.05

    @app.route("/")
    def index() -> str:
        return "hello"

    @app.route("/item/<int:n>")
    def item(n: int) -> dict[str, int]:
        return {"n": n}

    @app.route("/forbidden")
    def forbidden() -> str:
        abort(403)

    @app.route("/boom")
    def boom() -> str:
        raise ValueError("boom, with a 'quote'")

    @app.route("/echo/<path:rest>")
    def echo(rest: str) -> str:
        return rest

    return app


StoreFactory = Callable[[pytest.FixtureRequest, Path], tuple[Store, Callable[[], None]]]


def _json(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
    return JSONStore("other.json", location=tmp), lambda: None


def _csv(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
    return CSVStore(location=tmp), lambda: None


def _sql(url: str | None) -> StoreFactory:
    def factory(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
        from flask_traffic.stores import SQLStore

        table = request.getfixturevalue("unique_name")
        store = SQLStore(location=tmp, database_url=url, database_table_name=table)

        def drop() -> None:
            if store.database_engine is not None:
                store.database_log_table.drop(store.database_engine, checkfirst=True)
                store.database_engine.dispose()

        return store, drop

    return factory


def _sqlite(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
    return _sql(None)(request, tmp)


def _postgresql(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
    return _sql(request.getfixturevalue("postgres_url"))(request, tmp)


def _mariadb(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
    return _sql(request.getfixturevalue("mariadb_url"))(request, tmp)


def _orm(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import DeclarativeBase, Session

    from flask_traffic.stores import SQLORMModelMixin, SQLORMStore

    class Base(DeclarativeBase):
        pass

    model = type(
        "TrafficModel",
        (Base, SQLORMModelMixin),
        {"__tablename__": request.getfixturevalue("unique_name")},
    )
    engine = create_engine(f"sqlite:///{tmp / 'orm.sqlite'}")
    Base.metadata.create_all(engine)
    session = Session(engine)

    def close() -> None:
        session.close()
        engine.dispose()

    return SQLORMStore(model, db_session=session), close


def _redis(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
    import redis

    from flask_traffic.stores import RedisStore

    url = request.getfixturevalue("redis_url")
    key = request.getfixturevalue("unique_name")

    def delete() -> None:
        with redis.Redis.from_url(url) as client:
            client.delete(key, *client.scan_iter(f"{key}:flask-traffic-writer:*"))

    return RedisStore(event_name=key, url=url), delete


STORES: dict[str, StoreFactory] = {
    "json": _json,
    "csv": _csv,
    "sqlite": _sqlite,
    "postgresql": _postgresql,
    "mariadb": _mariadb,
    "sqlorm": _orm,
    "redis": _redis,
}


@pytest.fixture(params=list(STORES))
def store_under_test(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store, clean_up = STORES[request.param](request, tmp_path)
    yield store
    store.shutdown()
    clean_up()


def send_all(app: Flask, requests: list[tuple[str, str, dict[str, str]]] = REQUESTS) -> None:
    client = app.test_client()
    for method, path, environ in requests:
        client.open(path, method=method, environ_overrides=environ)


def test_read_gives_what_the_reference_store_gives(
    tmp_path: Path, store_under_test: Store, caplog: pytest.LogCaptureFixture
) -> None:
    reference = JSONStore(location=tmp_path)
    app = make_app(tmp_path)
    Traffic(app, stores=[reference, store_under_test])
    try:
        with caplog.at_level(logging.CRITICAL, logger="flask.app"):
            send_all(app)
        expected = reference.read()
        got = store_under_test.read()
    finally:
        reference.shutdown()

    assert len(expected) == len(REQUESTS)
    # Newest first, in the order the requests were made.
    assert [row["request_method"] for row in reversed(expected)] == [r[0] for r in REQUESTS]
    assert got == expected
    for row in got:
        assert list(row) == list(FIELD_NAMES)
    by_status = {row["response_status_code"] for row in got}
    assert by_status == {200, 308, 403, 404, 405, 500}
    boom = next(row for row in got if row["request_path"] == "/boom")
    assert boom["response_exception"] == "ValueError(\"boom, with a 'quote'\")"
    assert isinstance(boom["response_time"], float)
    assert isinstance(boom["response_size"], int)


def test_read_limit_and_policy_fields(tmp_path: Path, store_under_test: Store) -> None:
    policy_fields = ("request_date", "request_path", "response_status_code", "response_time")
    store_under_test.log_policy.set_from_false(**dict.fromkeys(policy_fields, True))
    reference = JSONStore(
        location=tmp_path,
        log_policy=LogPolicy().set_from_false(**dict.fromkeys(policy_fields, True)),
    )
    app = make_app(tmp_path)
    Traffic(app, stores=[reference, store_under_test])
    try:
        send_all(app)
        expected = reference.read(limit=5)
        got = store_under_test.read(limit=5)
        assert store_under_test.read(limit=0) == []
    finally:
        reference.shutdown()
    assert len(got) == 5
    assert got == expected
    # The enabled fields, in schema order.
    assert all(
        tuple(row) == ("request_date", "request_path", "response_time", "response_status_code")
        for row in got
    )


def test_every_store_kind_is_covered() -> None:
    # A store added to flask_traffic.stores must join this suite.
    import flask_traffic.stores as stores

    kinds = {
        name
        for name in stores.__all__
        if isinstance(getattr(stores, name), type)
        and issubclass(getattr(stores, name), Store)
        and name not in {"Store", "MemoryStore"}
    }
    assert kinds == {"JSONStore", "CSVStore", "SQLStore", "SQLORMStore", "RedisStore"}


def test_queries_and_summaries_give_what_the_reference_gives(
    tmp_path: Path, store_under_test: Store, caplog: pytest.LogCaptureFixture
) -> None:
    reference = JSONStore(location=tmp_path)
    app = make_app(tmp_path)
    Traffic(app, stores=[reference, store_under_test])
    try:
        with caplog.at_level(logging.CRITICAL, logger="flask.app"):
            send_all(app, REQUESTS[:8])
            middle = datetime.now(timezone.utc)
            send_all(app, REQUESTS[8:])
        hostile_agent = REQUESTS[9][2]["HTTP_USER_AGENT"]
        queries: list[dict[str, t.Any]] = [
            {"since": middle},
            {"until": middle},
            {"since": middle.isoformat(), "until": datetime.now(timezone.utc)},
            {"where": {"response_status_code": 404}},
            {"where": {"request_route": None}},
            {"where": {"request_user_agent": hostile_agent}},
            {"where": {"request_method": "GET", "response_status_code": 200}, "since": middle},
            {"limit": 3, "since": middle},
        ]
        for query in queries:
            expected = reference.read(**query)
            assert expected, query  # each query selects something
            assert store_under_test.read(**query) == expected, query
        everything = reference.read()
        oldest_first = list(store_under_test.scan(store_under_test.query(), oldest_first=True))
        assert oldest_first == everything[::-1]
        for window in ({}, {"since": middle}, {"until": middle}):
            expected_summary = reference.summary(**window)
            assert expected_summary["total"] > 0
            assert store_under_test.summary(**window) == expected_summary, window
    finally:
        reference.shutdown()
