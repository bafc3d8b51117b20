"""One contract, every store: the checks of flask_traffic.testing on each kind.

The kit sends each store and a reference ``JSONStore`` the same requests,
hostile ones included, and compares what they read back (see
``flask_traffic/testing.py``). The server-backed stores run against the local
PostgreSQL, MariaDB and Redis (see ``conftest.py``); each store gets a table
or stream of its own, removed after the test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import unique_name

from flask_traffic import LogPolicy
from flask_traffic.stores import CSVStore, JSONStore, MemoryStore, Store
from flask_traffic.testing import StoreContract, StoreFactory

KindFactory = Callable[[pytest.FixtureRequest], StoreFactory]


def _json(request: pytest.FixtureRequest) -> StoreFactory:
    return lambda folder, log_policy: JSONStore(location=folder, log_policy=log_policy)


def _csv(request: pytest.FixtureRequest) -> StoreFactory:
    return lambda folder, log_policy: CSVStore(location=folder, log_policy=log_policy)


def _memory(request: pytest.FixtureRequest) -> StoreFactory:
    return lambda folder, log_policy: MemoryStore(log_policy=log_policy)


def _sql(url_fixture: str | None) -> KindFactory:
    def kind(request: pytest.FixtureRequest) -> StoreFactory:
        url = None if url_fixture is None else request.getfixturevalue(url_fixture)

        def make(folder: Path, log_policy: LogPolicy) -> Store:
            from flask_traffic.stores import SQLStore

            store = SQLStore(
                location=folder,
                database_url=url,
                database_table_name=unique_name(),
                log_policy=log_policy,
            )

            def drop() -> None:
                if store.database_engine is not None:
                    store.database_log_table.drop(store.database_engine, checkfirst=True)
                    store.database_engine.dispose()

            request.addfinalizer(drop)
            return store

        return make

    return kind


def _orm(request: pytest.FixtureRequest) -> StoreFactory:
    def make(folder: Path, log_policy: LogPolicy) -> Store:
        from sqlalchemy import create_engine
        from sqlalchemy.orm import DeclarativeBase, Session

        from flask_traffic.stores import SQLORMModelMixin, SQLORMStore

        class Base(DeclarativeBase):
            pass

        model = type("TrafficModel", (Base, SQLORMModelMixin), {"__tablename__": unique_name()})
        engine = create_engine(f"sqlite:///{folder / 'orm.sqlite'}")
        Base.metadata.create_all(engine)
        session = Session(engine)

        def close() -> None:
            session.close()
            engine.dispose()

        request.addfinalizer(close)
        return SQLORMStore(model, db_session=session, log_policy=log_policy)

    return make


def _redis(request: pytest.FixtureRequest) -> StoreFactory:
    import redis

    from flask_traffic.stores import RedisStore

    url = request.getfixturevalue("redis_url")

    def make(folder: Path, log_policy: LogPolicy) -> Store:
        key = unique_name()

        def delete() -> None:
            with redis.Redis.from_url(url) as client:
                client.delete(key, *client.scan_iter(f"{key}:*"))

        request.addfinalizer(delete)
        # The contract compares summaries of unaligned windows with the
        # reference's: rollups round windows to minutes (test_redis_rollups.py).
        return RedisStore(event_name=key, url=url, log_policy=log_policy, rollups=False)

    return make


KINDS: dict[str, KindFactory] = {
    "json": _json,
    "csv": _csv,
    "sqlite": _sql(None),
    "postgresql": _sql("postgres_url"),
    "mariadb": _sql("mariadb_url"),
    "sqlorm": _orm,
    "redis": _redis,
    "memory": _memory,
}


@pytest.mark.parametrize("check", StoreContract.CHECKS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_store_keeps_the_contract(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, check: str
) -> None:
    StoreContract(KINDS[kind](request)).run(check, tmp_path)


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
    # One kind each here (SQLStore on three databases), and MemoryStore.
    assert set(KINDS) == {"json", "csv", "sqlite", "postgresql", "mariadb", "sqlorm", "redis"} | {
        "memory"
    }
