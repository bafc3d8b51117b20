"""SQLStore and SQLORMStore monitoring on SQLite, PostgreSQL and MariaDB:
read() with since/until/where pushed into SQL, summary() counted in the
database and equal to the row-by-row summary, and retention in batches,
also while other threads and processes write."""

from __future__ import annotations

import logging
import math
import multiprocessing
import random
import sqlite3
import threading
import time
import typing as t
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from helpers import statements_run
from sqlalchemy.orm import DeclarativeBase, Session

from flask_traffic import LogPolicy, Traffic, TrafficRecord
from flask_traffic.stores import (
    SQLORMModelMixin,
    SQLORMStore,
    SQLStore,
    Store,
    _sqlitesummary,
    _sqltable,
    sqlschema,
)
from flask_traffic.summary import (
    HISTOGRAM_BASE_MS,
    HISTOGRAM_MAX_INDEX,
    SummaryBuilder,
    histogram_index,
)

BACKENDS = ["sqlite", "postgresql", "mariadb"]
UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Long ago: no test here depends on today's date.
START = datetime(2024, 3, 1, 6, 0, tzinfo=UTC)
DAYS = 5
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
#: Text a database could mangle, or group, compare or sort unlike Python.
HOSTILE = [
    "/nul\x00inside",
    "/bad\udcffsurrogate",
    '\ufffe"looks escaped"',
    "/Case",
    "/case",
    "/trail ",
    "/trail",
    "/é/漢字/🙂",
    "/" + "x" * 1500 + "a",
    "/" + "x" * 1500 + "b",
]
# Two user agents alike in their first 3000 characters (MariaDB groups TEXT
# by its first 1024 bytes unless told otherwise).
LONG_AGENTS = ["Mozilla/5.0 " + "y" * 3000 + " one", "Mozilla/5.0 " + "y" * 3000 + " two"]


@dataclass
class Database:
    backend: str
    url: str
    table: str


@pytest.fixture(params=BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> Iterator[Database]:
    """An empty database of each kind and a table name; the table is dropped after."""
    backend: str = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mariadb_url")
    yield Database(backend, url, unique_name)
    engine = sa.create_engine(url)
    try:
        sa.Table(unique_name, sa.MetaData()).drop(engine, checkfirst=True)
    finally:
        engine.dispose()


def sql_store(
    database: Database, stores: list[Store], tmp_path: Path, **options: t.Any
) -> SQLStore:
    """A SQLStore on ``database``'s table, attached to an app of its own;
    without rollups unless ``rollups=True`` is given: the tests here are of
    reads and summaries counted from the rows."""
    options.setdefault("rollups", False)
    store = SQLStore(database_url=database.url, database_table_name=database.table, **options)
    stores.append(store)
    Traffic(Flask("site", instance_path=str(tmp_path)), stores=store)
    return store


def record(
    at: datetime,
    path: str | None = "/",
    *,
    status: int | None = 200,
    route: str | None = "/",
    address: str | None = "10.0.0.1",
    agent: str | None = CHROME,
    referrer: str | None = None,
    ms: float = 12.0,
) -> TrafficRecord:
    """A finished request that started at ``at``."""
    return TrafficRecord(
        start_time_ns=(at - EPOCH) // timedelta(microseconds=1) * 1000,
        duration_ns=round(ms * 1_000_000),
        request_method="GET",
        request_path=path,
        request_route=route,
        request_remote_address=address,
        request_user_agent=agent,
        request_referrer=referrer,
        response_status_code=status,
        content_length="123",
        content_type="text/html; charset=utf-8",
        response_exception="ValueError('x')" if status is not None and status >= 500 else None,
    )


def dataset() -> tuple[list[TrafficRecord], list[TrafficRecord], list[TrafficRecord]]:
    """Requests over ``DAYS`` days: (kept whole, sampled at 1/2, sampled at 1/4).

    Busy paths, a dozen paths and the hostile ones tied at the top-10 cut,
    unmatched routes, 5xx, missing values, response times below the first
    and above the last histogram bucket, many visitors over several days.
    """
    rng = random.Random(5)
    paths: list[str | None] = [*["/"] * 60, *["/a"] * 30, *["/b"] * 15]
    paths += [f"/tie/{n}" for n in range(12)] * 3 + HOSTILE * 3
    paths += [f"/once/{n}" for n in range(40)] + [None] * 3
    rng.shuffle(paths)
    agents = [CHROME, "curl/8.5.0", *LONG_AGENTS, None, "Firefox/133.0 \udcff"]
    referrers = [None, None, "https://example.com/", *HOSTILE[:8]]
    whole: list[TrafficRecord] = []
    for n, path in enumerate(paths):
        at = START + timedelta(
            minutes=rng.randrange(DAYS * 24 * 60), microseconds=rng.randrange(10**6)
        )
        roll = rng.random()
        status = 500 if roll < 0.08 else 404 if roll < 0.2 else 302 if roll < 0.25 else 200
        if n % 97 == 0:
            status = None  # type: ignore[assignment]
        unmatched = status == 404 or path is None
        ms = rng.choice([0.004, 10**8, rng.lognormvariate(3, 1), rng.lognormvariate(1, 2)])
        whole.append(
            record(
                at,
                path,
                status=status,
                route=None if unmatched else [*(path or "").split("/"), ""][1] or "/",
                address=None if n % 53 == 0 else f"10.0.{n % 7}.{n % 11}",
                agent=rng.choice(agents),
                referrer=rng.choice(referrers),
                ms=ms,
            )
        )
    # Sampled requests go to a few paths only, so the ties above stay ties.
    half = [record(START + timedelta(hours=5 * n + 1), "/a", route="a", ms=30.0) for n in range(20)]
    quarter = [
        record(START + timedelta(hours=7 * n + 2), "/sampled", route="sampled", referrer="/Case")
        for n in range(10)
    ]
    return whole, half, quarter


def fill(database: Database, stores: list[Store], tmp_path: Path, **options: t.Any) -> SQLStore:
    """A store on ``database`` holding :func:`dataset`, written as the stores write."""
    whole, half, quarter = dataset()
    store = sql_store(database, stores, tmp_path / "main", **options)
    store.export(whole)
    for rate, records in ((0.5, half), (0.25, quarter)):
        sampler = sql_store(
            database, stores, tmp_path / str(rate), log_policy=LogPolicy(sample_rate=rate)
        )
        sampler.export(records)
    return store


def row_summary(store: Store, since: t.Any = None, until: t.Any = None) -> dict[str, t.Any]:
    """The summary the default path gives: every selected row through the
    builder (without ``source``, which says where a store's summary came from)."""
    query = store.query(None, since=since, until=until)
    builder = SummaryBuilder(query.since, query.until, store.fields)
    Store.summarize(store, query, builder)
    return without_source(builder.result())


def without_source(summary: dict[str, t.Any]) -> dict[str, t.Any]:
    """A summary's counts: everything but its ``source``."""
    return {key: value for key, value in summary.items() if key != "source"}


WINDOWS = [
    (None, None),  # five days: per day
    (START + timedelta(days=1), START + timedelta(days=3)),  # per hour
    (START + timedelta(days=2), START + timedelta(days=2, minutes=90)),  # per minute
    ((START + timedelta(days=4)).isoformat(), None),
    (None, START + timedelta(days=1, hours=3)),
    (START + timedelta(days=30), None),  # nothing
]


# -- summary ---------------------------------------------------------------------


def test_summary_in_the_database_equals_the_row_by_row_summary(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    store = fill(database, stores, tmp_path)
    for since, until in WINDOWS:
        assert without_source(store.summary(since, until)) == row_summary(store, since, until), (
            since,
            until,
        )

    summary = store.summary()
    whole, half, quarter = dataset()
    # What a user would check: sampled records count 1/rate each.
    assert summary["total"] == len(whole) + 2 * len(half) + 4 * len(quarter)
    assert summary["sampled"] is True
    assert summary["bucket"] == "day"
    assert summary["errors"] == sum(r.response_status_code == 500 for r in whole)
    top_paths = [entry["value"] for entry in summary["top_paths"]]
    assert top_paths[:4] == ["/a", "/", "/sampled", "/b"]
    # 22 paths tied at 3 requests for 6 places: the first by value, as
    # Python orders str (escaped and 1,500-character values included).
    assert top_paths[4:] == sorted([*HOSTILE, *(f"/tie/{n}" for n in range(12))])[:6]
    routes = {entry["route"]: entry for entry in summary["routes"]}
    assert None in routes
    assert routes["a"]["count"] == sum(r.request_route == "a" for r in whole) + 2 * len(half)
    # 10**8 ms lands in the last bucket, 0.004 ms in the first.
    assert max(entry["p99"] for entry in summary["routes"]) > 10**6
    assert summary["unique_visitors"] > DAYS
    day = store.summary(START + timedelta(days=2), START + timedelta(days=3))
    assert day["bucket"] == "hour"
    assert day["total"] < summary["total"]


def test_summary_keeps_long_and_hostile_values_apart(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    store = sql_store(
        database, stores, tmp_path, log_policy=LogPolicy(max_request_path_length=4000)
    )
    at = START
    records = [
        record(at, path, agent=agent, referrer=path, address="10.1.1.1")
        for path in HOSTILE
        for agent in LONG_AGENTS
    ]
    store.export(records)
    summary = store.summary()
    assert without_source(summary) == row_summary(store)
    # One address, one day, two user agents that differ after 3000 characters.
    assert summary["unique_visitors"] == 2
    assert {entry["value"]: entry["count"] for entry in summary["top_paths"]} == {
        path: 2 for path in sorted(HOSTILE)[:10]
    }


def test_summary_skips_what_the_policy_leaves_out(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    policy = LogPolicy().set_from_false(request_date=True, response_status_code=True)
    store = sql_store(database, stores, tmp_path, log_policy=policy)
    store.export(dataset()[0])
    summary = store.summary()
    assert without_source(summary) == row_summary(store)
    assert summary["routes"] is None
    assert summary["top_paths"] is None
    assert summary["unique_visitors"] is None
    assert summary["total"] == len(dataset()[0])


def test_summary_of_an_empty_table(database: Database, stores: list[Store], tmp_path: Path) -> None:
    store = sql_store(database, stores, tmp_path)
    assert without_source(store.summary()) == row_summary(store)
    assert store.summary()["total"] == 0


# -- the SQLite summary index ---------------------------------------------------------

#: Windows over more than half of the dataset's five days: read through the
#: summary index (narrower ones go through the date index).
WIDE_WINDOWS = [
    (START - timedelta(days=1), None),
    (START + timedelta(hours=1), START + timedelta(days=4, hours=12)),
    (None, START + timedelta(days=4)),
]


def index_columns(store: SQLStore) -> list[list[str]]:
    """The columns of each index of every row (not the partial errors index)."""
    assert store.database_engine is not None
    indexes = sa.inspect(store.database_engine).get_indexes(store.database_log_table.name)
    return sorted(
        index["column_names"] for index in indexes if not index["name"].endswith("_errors")
    )


def drop_summary_index(store: SQLStore) -> None:
    assert store.database_engine is not None
    name = store.database_log_table.name
    with store.database_engine.begin() as connection:
        connection.exec_driver_sql(f'DROP INDEX "ix_{name}_summary"')


def test_sqlite_summary_is_the_same_through_the_summary_index(
    stores: list[Store], tmp_path: Path
) -> None:
    database = Database("sqlite", f"sqlite:///{tmp_path / 'db.sqlite'}", "hits")
    store = fill(database, stores, tmp_path)
    assert list(sqlschema.SUMMARY_INDEX_COLUMNS) in index_columns(store)
    windows = [*WINDOWS, *WIDE_WINDOWS]
    with_index = [store.summary(since, until) for since, until in windows]
    for (since, until), summary in zip(windows, with_index, strict=True):
        assert without_source(summary) == row_summary(store, since, until), (since, until)
    drop_summary_index(store)
    assert index_columns(store) == [["request_date"]]
    assert [store.summary(since, until) for since, until in windows] == with_index


def _histogram_edges(count: int) -> list[float]:
    # The smallest double of each of the first ``count`` buckets past 0.
    edges = []
    for index in range(1, count + 1):
        low, high = 0.0, 10.0**9
        while math.nextafter(low, math.inf) < high:
            middle = (low + high) / 2
            if histogram_index(middle) >= index:
                high = middle
            else:
                low = middle
        edges.append(high)
    return edges


@pytest.mark.parametrize("python_math", [False, True], ids=["sqlite-math", "python-math"])
def test_sqlite_summary_index_puts_every_time_in_its_bucket(
    stores: list[Store], tmp_path: Path, python_math: bool
) -> None:
    # Times on, just below and just above every bucket edge, in a few
    # (route, status, browser, platform) groups, with sampled rows among
    # them: the index walk must give each row the bucket Python gives it.
    # Also with the Python ln/exp/floor used where SQLite has none.
    database = Database("sqlite", f"sqlite:///{tmp_path / 'db.sqlite'}", "hits")
    store = sql_store(database, stores, tmp_path, log_policy=LogPolicy(sample_rate=1.0))
    assert store.database_engine is not None
    if python_math:

        def register(connection: t.Any, record: t.Any) -> None:
            connection.create_function("ln", 1, math.log, deterministic=True)
            connection.create_function("exp", 1, _sqlitesummary._exp, deterministic=True)
            connection.create_function("floor", 1, math.floor, deterministic=True)

        sa.event.listen(store.database_engine, "connect", register)
        store.database_engine.dispose()
    times: list[float | None] = [None, 0.0, 1e-9, HISTOGRAM_BASE_MS, 10.0**12]
    for edge in _histogram_edges(HISTOGRAM_MAX_INDEX):
        times += [math.nextafter(edge, 0.0), edge, math.nextafter(edge, math.inf)]
    groups = [
        ("/a", 200, "Chrome 131", "Windows"),
        ("/a", 500, None, None),
        (None, 404, "curl", None),
    ]
    rows = [
        {
            "request_date": START + timedelta(seconds=n),
            "request_route": route,
            "request_path": route,
            "response_status_code": status,
            "request_browser": browser,
            "request_platform": platform,
            "response_time": time,
            "request_sample_rate": 0.25 if n % 7 == 0 else None,
        }
        for n, (time, (route, status, browser, platform)) in enumerate(
            (time, group) for time in times for group in groups
        )
    ]
    with store.database_engine.begin() as connection:
        connection.execute(store.database_log_table.insert(), rows)

    def histograms(summarize: t.Callable[[Store, t.Any, SummaryBuilder], None]) -> t.Any:
        query = store.query(None)
        builder = SummaryBuilder(query.since, query.until, store.fields)
        summarize(store, query, builder)
        return {route: dict(counts) for route, counts in builder.route_times.items()}

    by_row = histograms(Store.summarize)
    assert by_row["/a"][HISTOGRAM_MAX_INDEX] > 0
    assert histograms(SQLStore.summarize) == by_row
    assert without_source(store.summary()) == row_summary(store)


def test_sqlite_summary_index_is_added_to_an_older_table_once(
    stores: list[Store], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = sa.create_engine(url)
    # Tables as an earlier version made them: one with every column but no
    # summary index, one without request_route.
    sa.Table("older", sa.MetaData(), *sqlschema.table_columns()).create(engine)
    columns = [c for c in sqlschema.table_columns() if c.name != "request_route"]
    sa.Table("oldest", sa.MetaData(), *columns).create(engine)
    engine.dispose()
    database = Database("sqlite", url, "older")
    with caplog.at_level(logging.INFO, logger="flask_traffic"):
        store = sql_store(database, stores, tmp_path)
    assert list(sqlschema.SUMMARY_INDEX_COLUMNS) in index_columns(store)
    assert "adding the index ix_older_summary to the table older" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flask_traffic"):
        again = sql_store(database, stores, tmp_path / "again")
    assert "adding the index" not in caplog.text
    assert index_columns(again) == index_columns(store)
    oldest = sql_store(Database("sqlite", url, "oldest"), stores, tmp_path / "oldest")
    assert index_columns(oldest) == [["request_date"]]
    oldest.export(dataset()[0])
    assert without_source(oldest.summary()) == row_summary(oldest)


def test_app_starts_when_the_summary_index_cannot_be_added(
    stores: list[Store], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Another process holds the write lock for longer than the busy timeout
    # (building the index of a huge table, say): init_app still succeeds.
    path = tmp_path / "db.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    sa.Table("older", sa.MetaData(), *sqlschema.table_columns()).create(engine)
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        # Only a store without rollups gets the index.
        store = SQLStore(database_engine=engine, database_table_name="older", rollups=False)
        stores.append(store)
        with caplog.at_level(logging.WARNING, logger="flask_traffic"):
            Traffic(Flask("site", instance_path=str(tmp_path)), stores=store)
    finally:
        locker.close()
    assert "could not add the index ix_older_summary to the table older" in caplog.text
    assert "database is locked" in caplog.text
    assert index_columns(store) == [["request_date"]]
    store.export(dataset()[0])
    assert without_source(store.summary()) == row_summary(store)
    engine.dispose()


def test_sqlite_summary_index_can_be_left_out(stores: list[Store], tmp_path: Path) -> None:
    database = Database("sqlite", f"sqlite:///{tmp_path / 'db.sqlite'}", "hits")
    store = sql_store(database, stores, tmp_path, summary_index=False)
    assert index_columns(store) == [["request_date"]]
    store.export(dataset()[0])
    assert without_source(store.summary()) == row_summary(store)
    with pytest.raises(TypeError, match="summary_index must be True, False or None"):
        SQLStore(summary_index="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(("rollups", "indexed"), [(False, True), (True, False)])
def test_sqlite_summary_index_by_default_only_without_rollups(
    stores: list[Store], tmp_path: Path, rollups: bool, indexed: bool
) -> None:
    # A store keeping rollups answers summaries from them: the index would
    # only slow its inserts down.
    database = Database("sqlite", f"sqlite:///{tmp_path / 'db.sqlite'}", "hits")
    store = sql_store(database, stores, tmp_path, rollups=rollups)
    store.flush()  # the table is made by the worker
    summary_columns = ["request_route", "response_status_code", "request_browser"]
    found = index_columns(store)
    assert any(columns[:3] == summary_columns for columns in found) == indexed
    assert ["request_date"] in found


def test_orm_model_with_the_summary_index_summarizes_through_it(
    stores: list[Store], tmp_path: Path
) -> None:
    class Base(DeclarativeBase):
        pass

    # What the README tells SQLORMStore users on SQLite to add.
    model = type(
        "Hit",
        (Base, SQLORMModelMixin),
        {
            "__tablename__": "hits",
            "__table_args__": (sa.Index("hits_summary", *sqlschema.SUMMARY_INDEX_COLUMNS),),
        },
    )
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    session = Session(engine)
    try:
        store = SQLORMStore(model, db_session=session, rollups=False)
        stores.append(store)
        Traffic(Flask("orm", instance_path=str(tmp_path)), stores=store)
        whole = dataset()[0]
        store.export(whole)
        for since, until in [*WINDOWS, *WIDE_WINDOWS]:
            assert without_source(store.summary(since, until)) == row_summary(store, since, until)
        assert store.summary()["total"] == len(whole)
    finally:
        session.close()
        engine.dispose()


# -- read ------------------------------------------------------------------------------


QUERIES: list[dict[str, t.Any]] = [
    {"since": START + timedelta(days=3)},
    {"until": START + timedelta(days=1)},
    {"since": START + timedelta(days=1), "until": (START + timedelta(days=1, hours=6)).isoformat()},
    {"where": {"response_status_code": 500}},
    {"where": {"response_status_code": 500.0}},
    {"where": {"response_status_code": "500"}},
    {"where": {"response_status_code": None}},
    {"where": {"request_route": None, "response_status_code": 404}},
    {"where": {"request_referrer": None}},
    {"where": {"request_user_agent": LONG_AGENTS[1]}},
    {"where": {"request_sample_rate": 0.25}},
    {"where": {"response_time": 0.004}},
    {"where": {"response_size": 123.5}},
    {"where": {"response_size": 2**70}},
    {"where": {"request_path": "/nowhere"}},
    *({"where": {"request_path": path}} for path in HOSTILE),
    *(
        {"where": {"request_referrer": path}, "since": START + timedelta(days=2)}
        for path in HOSTILE
    ),
]


def test_read_selects_what_the_query_selects(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    store = fill(database, stores, tmp_path)
    everything = store.read(100_000)
    assert len(everything) == sum(map(len, dataset()))
    one = everything[17]
    queries = [
        *QUERIES,
        {"where": {"request_date": one["request_date"]}},
        {"where": {"request_date": one["request_date"].replace("+00:00", "Z")}},
        {"where": {"response_time": one["response_time"]}},
    ]
    for arguments in queries:
        query = store.query(None, **arguments)
        expected = [row for row in everything if query.matches(row)]
        for limit in (1, 5, 1000):
            assert store.read(limit, **arguments) == expected[:limit], (arguments, limit)
        oldest_first = list(store.scan(query, oldest_first=True))
        assert oldest_first == expected[::-1], arguments
    # Hostile values match only themselves: not "/case", not "/trail".
    assert {row["request_path"] for row in store.read(where={"request_path": "/Case"})} == {"/Case"}
    assert {row["request_path"] for row in store.read(where={"request_path": "/trail "})} == {
        "/trail "
    }
    assert store.read(where={"request_date": one["request_date"]})[0] == one


def test_read_puts_window_filter_and_limit_into_the_sql(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    store = fill(database, stores, tmp_path)
    engine = store.database_engine
    assert engine is not None
    with statements_run(engine) as statements:
        rows = store.read(3, since=START + timedelta(days=1), where={"response_status_code": 200})
    assert len(rows) == 3
    # The worker may fold rows into the rollups meanwhile: its statements
    # read rows after the fold position or touch the rollup tables.
    (select,) = [
        s
        for s, _ in statements
        if s.lstrip().upper().startswith("SELECT")
        and "_rollup" not in s
        and "traffic_id >" not in s
        and "max(" not in s
    ]
    assert "request_date >=" in select
    assert "response_status_code =" in select
    assert "LIMIT" in select.upper()


def test_scan_streams_a_large_table_and_can_stop_early(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    store = sql_store(database, stores, tmp_path)
    count = 2 * _sqltable.SCAN_CHUNK + 7
    store.export([record(START + timedelta(seconds=n), f"/{n}") for n in range(count)])
    query = store.query()
    newest = store.scan(query)
    assert next(newest)["request_path"] == f"/{count - 1}"
    # Abandoned after one row: the cursor is closed (a leak would warn, and
    # warnings fail the tests).
    del newest
    paths = [row["request_path"] for row in store.scan(query, oldest_first=True)]
    assert paths == [f"/{n}" for n in range(count)]


# -- retention ----------------------------------------------------------------------------


def count_rows(store: SQLStore) -> int:
    engine = store.database_engine
    assert engine is not None
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).select_from(store.database_log_table)
            ).scalar_one()
        )


def test_retain_by_age_deletes_in_batches_and_keeps_the_rest(
    database: Database, stores: list[Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqltable, "RETAIN_BATCH", 7)
    store = sql_store(database, stores, tmp_path)
    cutoff = START + timedelta(days=2)
    old = [record(cutoff - timedelta(minutes=n + 1), f"/old/{n}") for n in range(50)]
    new = [record(cutoff + timedelta(microseconds=n), f"/new/{n}") for n in range(30)]
    store.export(old[:25] + new[:15] + old[25:] + new[15:])
    assert store.retain(cutoff, None) == 50
    assert sorted(row["request_path"] for row in store.read()) == sorted(
        f"/new/{n}" for n in range(30)
    )
    # The record exactly at the cutoff stays: only older ones go.
    assert store.read(where={"request_path": "/new/0"})[0]["request_date"] == cutoff.isoformat(
        timespec="microseconds"
    )
    assert store.retain(cutoff, None) == 0


def test_rows_older_than_max_age_are_not_read_before_retention_removes_them(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    # fetch() as read(): through query(), whose window starts max_age ago.
    # In sync mode, with no request recorded, retention does not run.
    store = sql_store(database, stores, tmp_path, max_age=timedelta(hours=1), sync=True)
    now = datetime.now(UTC)
    store.export(
        [record(now - timedelta(hours=2), "/old"), record(now - timedelta(minutes=1), "/new")]
    )
    assert [row["request_path"] for row in store.fetch(10)] == ["/new"]
    assert [row["request_path"] for row in store.read(10)] == ["/new"]
    assert count_rows(store) == 2


def test_retain_by_count_keeps_the_newest(
    database: Database, stores: list[Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqltable, "RETAIN_BATCH", 7)
    store = sql_store(database, stores, tmp_path)
    store.export([record(START, f"/{n}") for n in range(60)])
    assert store.retain(None, 100) == 0
    assert store.retain(None, 25) == 35
    assert [row["request_path"] for row in store.read()] == [f"/{n}" for n in range(59, 34, -1)]
    assert store.retain(None, 25) == 0
    assert store.retain(None, 1) == 24
    assert [row["request_path"] for row in store.read()] == ["/59"]


def test_max_age_and_max_records_apply_on_prune(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    store = sql_store(
        database, stores, tmp_path, name="hits", max_age=timedelta(days=1), max_records=10
    )
    assert store.name == "hits"
    now = datetime.now(UTC)
    store.export([record(now - timedelta(days=2, minutes=n), f"/old/{n}") for n in range(5)])
    store.export([record(now - timedelta(minutes=n), f"/new/{n}") for n in range(15, 0, -1)])
    # The worker may have pruned some already: it applies the limits at once.
    store.prune()
    assert [row["request_path"] for row in store.read()] == [f"/new/{n}" for n in range(1, 11)]
    assert count_rows(store) == 10
    assert store.prune() == 0


def test_orm_store_queries_summarizes_and_prunes(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    class Base(DeclarativeBase):
        pass

    model = type("Hit", (Base, SQLORMModelMixin), {"__tablename__": database.table})
    engine = sa.create_engine(database.url)
    Base.metadata.create_all(engine)
    session = Session(engine)
    try:
        # Summaries counted from the rows, and retention of the rows.
        store = SQLORMStore(model, db_session=session, name="orm", rollups=False)
        limited = SQLORMStore(
            model, db_session=session, max_age=timedelta(days=1), max_records=5, rollups=False
        )
        stores.extend([store, limited])
        Traffic(Flask("orm", instance_path=str(tmp_path)), stores=[store])
        whole = dataset()[0]
        store.export(whole)
        assert store.name == "orm"
        for since, until in WINDOWS:
            assert without_source(store.summary(since, until)) == row_summary(store, since, until)
        assert store.summary()["total"] == len(whole)
        since = START + timedelta(days=2)
        expected = [
            row
            for row in store.read(100_000)
            if row["request_date"] >= since.isoformat() and row["response_status_code"] == 200
        ]
        assert len(expected) > 5
        assert store.read(5, since=since, where={"response_status_code": 200}) == expected[:5]
        # The dataset is older than max_age; of the rest, the newest 5 stay.
        # (Attached only now: its worker's first retention pass, at start,
        # would remove the dataset under the reads above.)
        Traffic(Flask("orm-limited", instance_path=str(tmp_path)), stores=[limited])
        now = datetime.now(UTC)
        limited.export([record(now - timedelta(minutes=n), f"/fresh/{n}") for n in range(9, 0, -1)])
        limited.prune()
        assert [row["request_path"] for row in store.read()] == [f"/fresh/{n}" for n in range(1, 6)]
        assert limited.prune() == 0
    finally:
        session.close()
        engine.dispose()


# -- retention racing with writers ----------------------------------------------------------


def _write_from_a_process(url: str, table: str, instance: str, number: int, count: int) -> None:
    # Another app process: writes fresh and expired records, in batches.
    store = SQLStore(database_url=url, database_table_name=table)
    Traffic(Flask(f"p{number}", instance_path=instance), stores=store)
    now = datetime.now(UTC)
    try:
        for start in range(0, count, 20):
            store.export(
                [record(now, f"/p{number}/{n}") for n in range(start, start + 20)]
                + [record(now - timedelta(days=3), f"/expired/p{number}/{n}") for n in range(5)]
            )
    finally:
        store.shutdown()


def test_retention_by_age_racing_with_threads_and_processes_loses_nothing_fresh(
    database: Database, stores: list[Store], tmp_path: Path
) -> None:
    app = Flask("site", instance_path=str(tmp_path))
    app.config.update(TRAFFIC_RETENTION_INTERVAL=0.005, TRAFFIC_SCHEDULE_DELAY=0.005)
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 8
    app.add_url_rule("/<path:rest>", "any", lambda rest: rest)
    store = SQLStore(
        database_url=database.url, database_table_name=database.table, max_age=timedelta(days=1)
    )
    stores.append(store)
    Traffic(app, stores=store)
    expired_writer = sql_store(database, stores, tmp_path / "old")
    context = multiprocessing.get_context("spawn")
    per_process = 200
    processes = [
        context.Process(
            target=_write_from_a_process,
            args=(database.url, database.table, str(tmp_path / f"p{n}"), n, per_process),
        )
        for n in range(2)
    ]
    for process in processes:
        process.start()

    def requests(thread: int) -> None:
        client = app.test_client()
        for n in range(150):
            client.get(f"/t{thread}/{n}")
            if n % 10 == 0:
                expired_writer.export(
                    [record(datetime.now(UTC) - timedelta(days=2), f"/expired/t{thread}/{n}")]
                )

    threads = [threading.Thread(target=requests, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for process in processes:
        process.join(180)
        assert process.exitcode == 0
    store.prune()
    paths = {row["request_path"] for row in store.read(100_000)}
    assert paths == {f"/t{t}/{n}" for t in range(3) for n in range(150)} | {
        f"/p{p}/{n}" for p in range(2) for n in range(per_process)
    }
    assert store.stats()["failed_exports"] == 0


def test_retention_by_count_racing_with_writers_never_drops_below_the_limit(
    database: Database, stores: list[Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqltable, "RETAIN_BATCH", 13)
    app = Flask("site", instance_path=str(tmp_path))
    app.config.update(TRAFFIC_RETENTION_INTERVAL=0.005, TRAFFIC_SCHEDULE_DELAY=0.005)
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 8
    app.add_url_rule("/<path:rest>", "any", lambda rest: rest)
    limit = 60
    store = SQLStore(
        database_url=database.url, database_table_name=database.table, max_records=limit
    )
    stores.append(store)
    Traffic(app, stores=store)
    counts: list[int] = []
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            counts.append(count_rows(store))

    def requests(thread: int) -> None:
        client = app.test_client()
        for n in range(150):
            client.get(f"/t{thread}/{n}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=requests, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    app.test_client().get("/last")
    store.flush()
    done.set()
    watcher.join(130)
    store.prune()
    reached = counts.index(next(c for c in counts if c >= limit))
    assert min(counts[reached:]) >= limit
    assert max(counts) < 450  # retention did run while they wrote
    rows = store.read(100_000)
    assert len(rows) == limit
    # The newest by traffic_id are kept.
    assert rows[0]["request_path"] == "/last"


# -- arguments ------------------------------------------------------------------------------


def test_retention_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_age"):
        SQLStore(location=tmp_path, max_age=timedelta(0))
    with pytest.raises(ValueError, match="max_records"):
        SQLStore(location=tmp_path, max_records=0)
    with pytest.raises(ValueError, match="name"):
        SQLStore(location=tmp_path, name="")
    store = SQLStore(location=tmp_path, name="db", max_records=5)
    assert store.supports_retention
    assert store.name == "db"
