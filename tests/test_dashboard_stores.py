"""The dashboard's API on every readable store: the same answers as the store's own."""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dashboard_apps import KNOWN_TRAFFIC, basic, make_app, send

from flask_traffic.stores import CSVStore, JSONStore, MemoryStore, Store
from flask_traffic.summary import SummaryBuilder

API = "/traffic/dashboard/api/"
Factory = Callable[[pytest.FixtureRequest, Path], tuple[Store, Callable[[], None]]]


def _sqlstore(url_fixture: str | None) -> Factory:
    def make(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
        from flask_traffic.stores import SQLStore

        url = None if url_fixture is None else request.getfixturevalue(url_fixture)
        table = request.getfixturevalue("unique_name")
        store = SQLStore(location=tmp, database_url=url, database_table_name=table)

        def drop() -> None:
            if store.database_engine is not None:
                store.database_log_table.drop(store.database_engine, checkfirst=True)
                store.database_engine.dispose()

        return store, drop

    return make


def _orm(request: pytest.FixtureRequest, tmp: Path) -> tuple[Store, Callable[[], None]]:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import DeclarativeBase, Session

    from flask_traffic.stores import SQLORMModelMixin, SQLORMStore

    class Base(DeclarativeBase):
        pass

    name = request.getfixturevalue("unique_name")
    model = type("DashboardModel", (Base, SQLORMModelMixin), {"__tablename__": name})
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
            client.delete(key, *client.scan_iter(f"{key}:*"))

    return RedisStore(event_name=key, url=url), delete


STORES: dict[str, Factory] = {
    "memory": lambda request, tmp: (MemoryStore(), lambda: None),
    "json": lambda request, tmp: (JSONStore(location=tmp), lambda: None),
    "csv": lambda request, tmp: (CSVStore(location=tmp), lambda: None),
    "sqlite": _sqlstore(None),
    "postgresql": _sqlstore("postgres_url"),
    "sqlorm": _orm,
    "redis": _redis,
}


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store, clean_up = STORES[request.param](request, tmp_path)
    yield store
    store.shutdown()
    clean_up()


def test_the_api_answers_as_the_store(store: Store) -> None:
    app = make_app(store)
    send(app, KNOWN_TRAFFIC)
    client = app.test_client()

    def get(query: str) -> t.Any:
        response = client.get(API + query, headers=basic())
        assert response.status_code == 200, response.data
        return response.get_json()

    assert get("summary") == store.summary()
    assert get("summary?since=2000-01-01&until=2100-01-01") == store.summary(
        "2000-01-01", "2100-01-01"
    )
    assert get("records?limit=7") == store.read(7)
    assert get("records?limit=5&response_status_code=404") == store.read(
        5, where={"response_status_code": 404}
    )

    rows = store.read(1000)
    for query, keep in [
        ("request_route=/item/<int:n>", lambda r: r["request_route"] == "/item/<int:n>"),
        ("not.request_browser=Firefox 133", lambda r: r["request_browser"] != "Firefox 133"),
        ("request_referrer=", lambda r: r["request_referrer"] is None),
    ]:
        builder = SummaryBuilder(None, None, store.fields)
        builder.add_rows(row for row in rows if keep(row))
        assert get("summary?" + query) == builder.result(), query

    breakdown = get("breakdown?since=1h")
    assert breakdown["overall"]["count"] == len(KNOWN_TRAFFIC)
    assert sum(b["count"] for b in breakdown["buckets"]) == len(KNOWN_TRAFFIC)
    assert [(e["route"], e["count"]) for e in breakdown["errors"]] == [("/boom", 2)]
    export = client.get(API + "export?format=jsonl", headers=basic()).get_data(as_text=True)
    assert len(export.splitlines()) == len(KNOWN_TRAFFIC)
