"""The dashboard's ``api/breakdown`` from rollups: per bucket and overall,
it counts what the breakdown of every record of the window it counted
(rounded out to hours or days) counts, on SQLite, PostgreSQL, MariaDB,
Redis and a JSON Lines file; its errors come from the failed requests
only, which a SQL store selects in its ``WHERE``."""

from __future__ import annotations

import random
import typing as t
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dashboard_apps import basic
from dashboard_apps import make_app as dashboard_app
from helpers import database_url, drop_tables, make_app, statements_run, unique_name

from flask_traffic import LogPolicy, Traffic, TrafficRecord
from flask_traffic.dashboard._figures import breakdown
from flask_traffic.dashboard._params import View
from flask_traffic.query import is_error, iso_text
from flask_traffic.stores import JSONStore, SQLStore, Store

UTC = timezone.utc
# Three whole days ending a day ago: Redis reads a window from the stream
# id of its start, so the records must be of the past.
START = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=4)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
ROUTES = ["/", "/item/<int:n>", "/search", None]
EXCEPTIONS = ["ValueError('boom')", "KeyError('x')"]
#: Records folded, then the tail written after the last fold.
FOLDED, TAIL = 2500, 500
KINDS = ["sqlite", "postgresql", "mariadb", "redis", "jsonl"]

WINDOWS = {
    "all": (None, None),
    "days": (START + DAY, START + 2 * DAY),
    "hours": (START + 5 * HOUR, START + 29 * HOUR),
    # Counted per day: day buckets, and whole days of hours.
    "five days": (START - 2 * DAY + 7 * HOUR, START + 3 * DAY + 5 * HOUR),
    "unaligned days": (START + 5 * HOUR + 3 * MINUTE + timedelta(seconds=7), START + 2 * DAY),
    "unaligned hours": (START + 20 * HOUR + 59 * MINUTE, START + 23 * HOUR + 30 * MINUTE),
    # The tail is the last twelve hours: these cross the fold position.
    "across the fold": (START + 54 * HOUR + 10 * MINUTE, START + 68 * HOUR + 5 * MINUTE),
    "open end": (START + 50 * HOUR, None),
    "up to": (None, START + 31 * HOUR + 30 * MINUTE),
    "empty": (START + 10 * DAY, START + 11 * DAY),
    # Counted per minute: from the records, rollups or not.
    "per minute": (START + 3 * HOUR + 10 * MINUTE, START + 3 * HOUR + 11 * MINUTE),
}


def records(count: int, seed: int = 7) -> list[TrafficRecord]:
    """``count`` requests over the three days, in date order (a file store
    expects them about in order): a few routes, every status class, 5xx
    answers with and without an exception, and now and then one that
    raised yet answered 200 (a failure the list shows too)."""
    rng = random.Random(seed)
    moments = sorted(START + timedelta(seconds=rng.uniform(0, 3 * 86400)) for _ in range(count))
    made = []
    for moment in moments:
        status = rng.choice([200, 200, 200, 201, 301, 404, 500, 503, 101])
        exception = None
        if (status >= 500 and rng.random() < 0.6) or rng.random() < 0.01:
            exception = rng.choice(EXCEPTIONS)
        made.append(
            TrafficRecord(
                start_time_ns=int(moment.timestamp() * 1_000_000) * 1000,
                duration_ns=int(rng.lognormvariate(2.5, 1.2) * 1_000_000),
                request_method="GET",
                request_path=f"/p{rng.randrange(30)}",
                request_route=rng.choice(ROUTES),
                request_remote_address=f"10.0.0.{rng.randrange(10)}",
                request_user_agent="Mozilla/5.0 Chrome/131.0",
                response_status_code=status,
                response_exception=exception,
            )
        )
    return made


MADE = records(FOLDED + TAIL)


def failed(record: TrafficRecord) -> bool:
    """Whether the dashboard lists ``record`` among the errors."""
    return is_error(
        {
            "response_status_code": record.response_status_code,
            "response_exception": record.response_exception,
        }
    )


def _sql_pair(url: str | None, tmp_path: Path) -> Iterator[tuple[SQLStore, SQLStore]]:
    options: dict[str, t.Any] = {"database_table_name": unique_name()}
    if url is not None:
        options["database_url"] = url
    rolled = SQLStore(sync=True, rollups=True, **options)
    Traffic(make_app(tmp_path), stores=rolled)
    raw = SQLStore(sync=True, name="raw", rollups=False, **options)
    Traffic(make_app(tmp_path), stores=raw)
    rollups = rolled._rollup_tables()
    assert rollups is not None
    # Nothing is folded before its rows settle on PostgreSQL and MariaDB.
    rollups.settle = 0.0
    yield rolled, raw
    if url is not None:
        drop_tables(rolled)
    rolled.shutdown()
    raw.shutdown()


def _redis_pair(url: str) -> Iterator[tuple[Store, Store]]:
    import redis

    from flask_traffic.stores import RedisStore

    name = unique_name()
    # Sampled: 5xx responses are always kept, so weights are 1 and 1/0.5.
    rolled = RedisStore(
        rollups=True, url=url, event_name=name, log_policy=LogPolicy(sample_rate=0.5)
    )
    raw = RedisStore(url=url, event_name=name, rollups=False, log_policy=LogPolicy(sample_rate=0.5))
    yield rolled, raw
    rolled.shutdown()
    raw.shutdown()
    with redis.Redis.from_url(url) as client:
        client.delete(name, *client.scan_iter(f"{name}:*", count=1000))


def _jsonl_pair(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    rolled = JSONStore(location=tmp_path, sync=True, rollups=True)
    Traffic(make_app(tmp_path), stores=rolled)
    raw = JSONStore(location=tmp_path, sync=True, name="raw", rollups=False)
    Traffic(make_app(tmp_path), stores=raw)
    yield rolled, raw
    rolled.shutdown()
    raw.shutdown()


@pytest.fixture(params=KINDS)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """A store keeping rollups, :data:`FOLDED` records folded and
    :data:`TAIL` written after the fold; and a store without rollups on the
    same table, stream or file: the raw breakdown to compare with."""
    kind = request.param
    made: Iterator[tuple[Store, Store]]
    if kind == "sqlite":
        made = _sql_pair(None, tmp_path)
    elif kind in ("postgresql", "mariadb"):
        made = _sql_pair(database_url(kind, request), tmp_path)
    elif kind == "redis":
        made = _redis_pair(request.getfixturevalue("redis_url"))
    else:
        made = _jsonl_pair(tmp_path)
    rolled, raw = next(made)
    for start in range(0, FOLDED, 500):
        rolled.export(MADE[start : start + 500])
    assert rolled.fold() == FOLDED
    rolled.export(MADE[FOLDED:])
    yield rolled, raw
    next(made, None)


def breakdown_of(store: Store, since: datetime | None, until: datetime | None) -> dict[str, t.Any]:
    return breakdown(store, View(since=since, until=until))


def counted(source: dict[str, t.Any]) -> tuple[datetime | None, datetime | None]:
    """The window a breakdown from rollups counted."""
    since, until = (
        None if text is None else datetime.fromisoformat(text)
        for text in (source["since"], source["until"])
    )
    return since, until


def assert_same(
    rolled: Store, raw: Store, since: datetime | None, until: datetime | None
) -> tuple[str, str]:
    """The rolled store's breakdown of the window is the raw breakdown: of
    the window it counted, rounded out to hours or days, when it answered
    from its rollups; else of the same window. Returns the source and the
    bucket size."""
    got = breakdown_of(rolled, since, until)
    source = got.pop("source")
    if source["source"] == "records":
        # Minutes are not kept: a window counted per minute is read whole.
        want = breakdown_of(raw, since, until)
    else:
        assert source["source"] == "rollups"
        assert source["granularity"] in (None, "hour", "day")
        low, high = counted(source)
        # Rounded out, never in: the window asked for is inside.
        assert since is None or (low is not None and low <= since and low.minute == 0)
        assert until is None or (high is not None and until <= high and high.minute == 0)
        want = breakdown_of(raw, low, high)
    assert want.pop("source") == {"source": "records"}
    assert got == want, (since, until)
    return str(source["source"]), str(got["bucket"])


@pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
def test_a_breakdown_from_rollups_equals_the_raw_breakdown_of_its_window(
    pair: tuple[Store, Store], window: str
) -> None:
    rolled, raw = pair
    since, until = WINDOWS[window]
    source, bucket = assert_same(rolled, raw, since, until)
    assert source == ("records" if window == "per minute" else "rollups"), window
    assert bucket == {"per minute": "minute", "five days": "day"}.get(window, "hour")


def test_figures_come_from_the_buckets_and_the_tail_only(
    pair: tuple[Store, Store],
) -> None:
    rolled, _ = pair
    since, until = WINDOWS["across the fold"]
    got = breakdown_of(rolled, since, until)
    source = got["source"]
    assert source["granularity"] == "hour"
    low, high = counted(source)
    assert low is not None
    assert high is not None
    dates = [record.request_date_iso for record in MADE]
    window = [n for n, date in enumerate(dates) if iso_text(low) <= date < iso_text(high)]
    # Of the records, only the tail's of the window are read for figures,
    # and the failed ones for the errors.
    assert source["raw_records"] == sum(1 for n in window if n >= FOLDED) > 0
    errors = sum(1 for n in window if failed(MADE[n]))
    assert source["error_records"] == errors > 0
    assert got["overall"]["count"] == sum(b["count"] for b in got["buckets"])


def test_empty_rollups_before_any_fold_read_the_records(tmp_path: Path) -> None:
    made = _sql_pair(None, tmp_path)
    rolled, raw = next(made)
    rolled.export(MADE[:300])
    got = breakdown_of(rolled, START, START + DAY)
    assert got.pop("source") == {"source": "records"}
    want = breakdown_of(raw, START, START + DAY)
    want.pop("source")
    assert got == want
    next(made, None)


def test_a_filtered_view_reads_the_records(pair: tuple[Store, Store]) -> None:
    rolled, raw = pair
    view = View(since=START, until=START + 2 * DAY, where={"request_route": "/search"})
    got = breakdown(rolled, view)
    assert got.pop("source") == {"source": "records"}
    want = breakdown(raw, view)
    want.pop("source")
    assert got == want


def test_the_errors_part_selects_only_failed_rows_in_sql(tmp_path: Path) -> None:

    made = _sql_pair(None, tmp_path)
    rolled, _ = next(made)
    for start in range(0, FOLDED, 500):
        rolled.export(MADE[start : start + 500])
    rolled.fold()
    engine = rolled.database_engine
    assert engine is not None
    table = rolled.database_log_table.name
    with statements_run(engine) as statements:
        got = breakdown_of(rolled, START, START + 3 * DAY)
    assert got["source"]["source"] == "rollups"
    # The traffic table is read by two statements: the tail's rows (none
    # here) and the failed ones.
    reads = [(text, values) for text, values in statements if f"FROM {table} " in text + " "]
    [(text, values)] = [pair for pair in reads if "response_status_code >=" in pair[0]]
    assert "response_exception IS NOT NULL" in text
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(text, values).all()
    errors = [record for record in MADE[:FOLDED] if failed(record)]
    assert len(rows) == len(errors) == got["source"]["error_records"]
    assert len(rows) < FOLDED / 2
    next(made, None)


def test_the_failed_rows_of_a_window_are_found_through_the_errors_index(tmp_path: Path) -> None:
    # SQLite would walk the whole table in id order to give the few failed
    # rows newest first without a sort, or the window's rows by date: seconds
    # on ten million rows, for the dashboard's errors of the last month. The
    # table's partial index of failed requests holds just those.

    from flask_traffic.query import Query

    made = _sql_pair(None, tmp_path)
    rolled, _ = next(made)
    rolled.export(MADE)
    engine = rolled.database_engine
    assert engine is not None
    since = START + 2 * DAY
    with statements_run(engine) as statements:
        rows = list(rolled.scan(Query(since=since, errors_only=True)))
    expected = [record for record in MADE if failed(record) and record.request_date >= since]
    assert len(rows) == len(expected) > 0
    assert [row["request_date"] for row in rows] == sorted(
        (row["request_date"] for row in rows), reverse=True
    )
    [(text, values)] = statements
    with engine.connect() as connection:
        plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + text, values).all()
    index = f"USING INDEX ix_{rolled.database_log_table.name}_errors "
    assert any(index in str(step[-1]) for step in plan), plan
    next(made, None)


def test_the_api_says_where_its_breakdown_came_from(tmp_path: Path) -> None:
    made = _sql_pair(None, tmp_path)
    rolled, _ = next(made)
    rolled.export(MADE)
    rolled.fold()
    app = dashboard_app(rolled)
    client = app.test_client()
    since, until = (START + DAY).isoformat(), (START + 2 * DAY).isoformat()
    for query, source in (
        (f"since={since}&until={until}", "rollups"),
        (f"since={since}&until={until}&request_route=/search", "records"),
    ):
        response = client.get(
            "/traffic/dashboard/api/breakdown?" + query.replace("+", "%2B"), headers=basic()
        )
        assert response.status_code == 200, response.data
        body = response.get_json()
        # What the page reads is all there, as before.
        assert {"bucket", "buckets", "overall", "errors", "route_errors"} <= set(body)
        assert body["source"]["source"] == source
        assert body["bucket"] == "hour"
    next(made, None)
