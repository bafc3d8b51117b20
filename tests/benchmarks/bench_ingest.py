"""Records per second each store writes through its batch processor.

    python tests/benchmarks/bench_ingest.py [--records 50000] [--stores json,csv,...] [--rollups]

For each store: attach it to an app, hand its processor ``--records`` fresh
records as fast as the request threads would (``emit``), then flush; the
figure is records over the time from the first ``emit`` to the end of the
flush, so it covers value formatting, user agent parsing, encoding and the
batched writes. PostgreSQL, MariaDB and Redis are the local servers of the
test suite (see ``tests/conftest.py``); a store whose server does not answer
is reported and left out. ``--large FOLDER`` writes the SQLite store into
a copy of the one ``bench_rollups.py --keep FOLDER`` kept (a large table;
the summary index its store without rollups added is dropped).
With ``--rollups`` the SQL stores and RedisStore
keep rollups, and the time runs until the records are folded into them too
(``fold()`` after the flush; the worker folds between batches). On
PostgreSQL and MariaDB a fold only takes the rows written 10 s before (ids
there commit out of order), so there the figure is the raw ingest's. A benchmark,
not a test: nothing asserts; the exit status says whether every record was
written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from flask import Flask

from flask_traffic import Traffic, TrafficRecord
from flask_traffic.stores import CSVStore, JSONStore, Store

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
REDIS_URL = "redis://127.0.0.1:6379/0"

USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
)


def make_records(count: int) -> list[TrafficRecord]:
    start = time.time_ns()
    return [
        TrafficRecord(
            start_time_ns=start + i * 1000,
            duration_ns=1_250_000 + i,
            request_method="GET",
            host_header="127.0.0.1:5000",
            request_path=f"/item/{i}",
            server_protocol="HTTP/1.1",
            request_endpoint="item",
            request_route="/item/<int:n>",
            request_remote_address="127.0.0.1",
            request_referrer="http://127.0.0.1:5000/",
            request_user_agent=USER_AGENTS[i % len(USER_AGENTS)],
            response_status_code=200,
            content_length="11",
            content_type="application/json",
        )
        for i in range(count)
    ]


# Each maker yields a store ready to attach and cleans up what it made.
StoreMaker = Callable[[Path], contextlib.AbstractContextManager[Store]]
#: A folder ``bench_rollups.py --keep`` kept a SQLite store in (``--large``).
LARGE: Path | None = None
#: Whether the SQL stores and RedisStore keep rollups (``--rollups``); the
#: file stores and SQLORMStore never do here: their figures are raw ingest.
ROLLUPS = False


@contextlib.contextmanager
def _file(cls: type[JSONStore] | type[CSVStore], folder: Path) -> Iterator[Store]:
    yield cls(location=folder, rollups=False)


@contextlib.contextmanager
def _sql(url: str | None, folder: Path) -> Iterator[Store]:
    from flask_traffic.stores import SQLStore

    table = f"bench_{uuid.uuid4().hex[:8]}"
    if url is None and LARGE is not None:
        # A copy of a large SQLite store: writing into a big table.
        shutil.copy(LARGE / "traffic.sqlite", folder / "traffic.sqlite")
        table = json.loads((LARGE / "kept.json").read_text())["table"]
        # bench_rollups.py's store without rollups gave the table its
        # summary index, which a store keeping rollups has not.
        with sqlite3.connect(folder / "traffic.sqlite") as connection:
            connection.execute(f"DROP INDEX IF EXISTS ix_{table}_summary")
    store = SQLStore(location=folder, database_url=url, database_table_name=table, rollups=ROLLUPS)
    try:
        yield store
    finally:
        store.shutdown()
        engine = store.database_engine
        if engine is not None:
            import sqlalchemy as sa

            with engine.begin() as connection:
                for suffix in ("_rollup", "_rollup_bucket", "_rollup_state", "_spool_fence", ""):
                    connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}{suffix}"))
            engine.dispose()


@contextlib.contextmanager
def _orm(folder: Path) -> Iterator[Store]:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import DeclarativeBase, Session

    from flask_traffic.stores import SQLORMModelMixin, SQLORMStore

    class Base(DeclarativeBase):
        pass

    model = type("BenchTraffic", (Base, SQLORMModelMixin), {"__tablename__": "bench_traffic"})
    engine = create_engine(f"sqlite:///{folder / 'orm.sqlite'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        try:
            yield SQLORMStore(model, db_session=session, rollups=False)
        finally:
            engine.dispose()


@contextlib.contextmanager
def _redis(folder: Path) -> Iterator[Store]:
    import redis

    from flask_traffic.stores import RedisStore

    key = f"bench_{uuid.uuid4().hex[:8]}"
    store = RedisStore(event_name=key, url=REDIS_URL, rollups=ROLLUPS)
    try:
        yield store
    finally:
        store.shutdown()
        with redis.Redis.from_url(REDIS_URL) as client:
            client.delete(key, *client.scan_iter(f"{key}:*", count=1000))


MAKERS: dict[str, StoreMaker] = {
    "json": lambda folder: _file(JSONStore, folder),
    "csv": lambda folder: _file(CSVStore, folder),
    "sqlite": lambda folder: _sql(None, folder),
    "postgresql": lambda folder: _sql(POSTGRES_URL, folder),
    "mariadb": lambda folder: _sql(MARIADB_URL, folder),
    "sqlorm": _orm,
    "redis": _redis,
}


def ingest(store: Store, folder: Path, count: int) -> tuple[float, int]:
    """Seconds to take and write ``count`` records, and how many were written."""
    app = Flask("bench", instance_path=str(folder))
    app.config["TRAFFIC_MAX_QUEUE_SIZE"] = count + 1
    Traffic(app, stores=store)
    processor = store.processor
    assert processor is not None
    processor.emit(make_records(1)[0])  # warm-up: connections, tables, parser
    store.flush()
    records = make_records(count)
    start = time.perf_counter()
    for record in records:
        processor.emit(record)
    store.flush()
    if store.keeps_rollups:
        store.fold()
    elapsed = time.perf_counter() - start
    written = store.stats()["exported"] - 1
    store.shutdown()
    return elapsed, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000, help="records per store")
    parser.add_argument("--stores", default=",".join(MAKERS), help="comma-separated store kinds")
    parser.add_argument("--rollups", action="store_true", help="SQL and Redis keep rollups")
    parser.add_argument(
        "--large",
        type=Path,
        help="write the SQLite store into a copy of the one bench_rollups.py --keep kept here",
    )
    args = parser.parse_args(argv)
    global ROLLUPS, LARGE
    ROLLUPS, LARGE = args.rollups, args.large
    ok = True
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            try:
                with MAKERS[kind](folder) as store:
                    elapsed, written = ingest(store, folder, args.records)
            except Exception as exc:  # a server that does not answer
                print(f"{kind:>10}: not measured ({type(exc).__name__}: {exc})"[:200])
                ok = False
                continue
        ok = ok and written == args.records
        print(
            f"{kind:>10}: {written / elapsed:9,.0f} records/s "
            f"({written} of {args.records} written in {elapsed:.2f} s)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
