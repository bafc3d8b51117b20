"""The store-independent parts of monitoring: queries, the summary builder,
retention scheduling and store names."""

from __future__ import annotations

import logging
import threading
import time
import typing as t
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import make_app

from flask_traffic import LogPolicy, Traffic, TrafficRecord
from flask_traffic.processors import BatchProcessor
from flask_traffic.query import Query, iso_text, parse_time
from flask_traffic.stores import JSONStore, MemoryStore, Store
from flask_traffic.summary import (
    HISTOGRAM_MAX_INDEX,
    SummaryBuilder,
    bucket_unit,
    histogram_index,
    histogram_value,
)

UTC = timezone.utc
FIELDS = MemoryStore().fields


# -- since / until / where ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 11, 25, 8, 0, tzinfo=UTC), datetime(2026, 11, 25, 8, 0, tzinfo=UTC)),
        (datetime(2026, 11, 25, 8, 0), datetime(2026, 11, 25, 8, 0, tzinfo=UTC)),
        ("2026-11-25T09:00:00+01:00", datetime(2026, 11, 25, 8, 0, tzinfo=UTC)),
        ("2026-11-25T08:00:00Z", datetime(2026, 11, 25, 8, 0, tzinfo=UTC)),
        ("2026-11-25", datetime(2026, 11, 25, tzinfo=UTC)),
        (None, None),
    ],
)
def test_parse_time(value: t.Any, expected: datetime | None) -> None:
    assert parse_time(value, "since") == expected


def test_parse_time_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="since must be a datetime or ISO 8601"):
        parse_time("yesterday", "since")
    with pytest.raises(TypeError, match="until must be"):
        parse_time(1234, "until")  # type: ignore[arg-type]


def test_iso_text_sorts_like_the_moments() -> None:
    early = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    late = datetime(2026, 1, 2, 4, 4, 5, 0, tzinfo=timezone(timedelta(hours=1)))
    assert iso_text(early) == "2026-01-02T03:04:05.000006+00:00"
    assert iso_text(late) == "2026-01-02T03:04:05.000000+00:00"
    assert iso_text(late) < iso_text(early)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"where": {"status": 500}}, ValueError, "unknown field 'status'; valid fields are"),
        ({"where": {"response_status_code": True}}, TypeError, "must be a str, int"),
        ({"where": {"response_status_code": [500]}}, TypeError, "must be a str, int"),
        ({"where": ["response_status_code"]}, TypeError, "where must be a dict"),
        ({"limit": -1}, ValueError, "limit must be a non-negative integer"),
        ({"since": "soon"}, ValueError, "since must be"),
    ],
)
def test_bad_query_arguments(
    kwargs: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Query.make(FIELDS, **kwargs)


def test_query_needs_the_fields_it_tests() -> None:
    fields = LogPolicy().set_from_false(request_path=True).enabled_fields
    with pytest.raises(ValueError, match="request_date field"):
        Query.make(fields, since="2026-01-01")
    with pytest.raises(ValueError, match="'response_status_code', which this store's LogPolicy"):
        Query.make(fields, where={"response_status_code": 500})


def test_since_is_inclusive_and_until_exclusive() -> None:
    query = Query.make(FIELDS, since="2026-11-25T08:00:00Z", until="2026-11-25T09:00:00Z")
    at = "2026-11-25T08:00:00.000000+00:00"
    assert query.matches({"request_date": at})
    assert not query.matches({"request_date": "2026-11-25T07:59:59.999999+00:00"})
    assert query.matches({"request_date": "2026-11-25T08:59:59.999999+00:00"})
    assert not query.matches({"request_date": "2026-11-25T09:00:00.000000+00:00"})
    assert not query.matches({"request_date": None})


def test_read_with_since_until_and_where(tmp_path: Path) -> None:
    store = MemoryStore()
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    client = app.test_client()
    client.get("/")
    middle = datetime.now(UTC)
    for n in range(3):
        client.get(f"/item/{n}")
    client.get("/missing")
    end = datetime.now(UTC)
    try:
        assert [r["request_path"] for r in store.read(since=middle)] == [
            "/missing",
            "/item/2",
            "/item/1",
            "/item/0",
        ]
        assert [r["request_path"] for r in store.read(until=middle)] == ["/"]
        assert store.read(since=end) == []
        assert [r["request_path"] for r in store.read(where={"response_status_code": 404})] == [
            "/missing"
        ]
        assert [r["request_path"] for r in store.read(where={"request_route": None})] == [
            "/missing"
        ]
        assert len(store.read(2, since=iso_text(middle), where={"request_endpoint": "item"})) == 2
    finally:
        store.shutdown()


# -- the summary builder --------------------------------------------------------


def test_histogram_buckets_are_within_five_percent() -> None:
    assert histogram_index(0.0) == 0
    assert histogram_index(10**9) == HISTOGRAM_MAX_INDEX
    previous = -1
    for ms in (0.011, 0.1, 0.5, 1.0, 3.3, 10.0, 99.9, 1000.0, 60_000.0):
        index = histogram_index(ms)
        assert index > previous
        previous = index
        assert abs(histogram_value(index) - ms) / ms < 0.045


@pytest.mark.parametrize(
    ("span", "unit"),
    [
        (timedelta(minutes=5), "minute"),
        (timedelta(hours=2), "minute"),
        (timedelta(hours=3), "hour"),
        (timedelta(days=3), "hour"),
        (timedelta(days=4), "day"),
    ],
)
def test_bucket_unit_follows_the_span(span: timedelta, unit: str) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    assert bucket_unit(start, start + span) == unit


def row(
    date: str,
    path: str,
    status: int,
    ms: float,
    *,
    route: str | None = None,
    address: str = "10.0.0.1",
    agent: str = "curl/8",
    rate: float | None = None,
    referrer: str | None = None,
) -> dict[str, t.Any]:
    return {
        "request_date": date,
        "request_path": path,
        "request_route": route,
        "request_remote_address": address,
        "request_user_agent": agent,
        "request_referrer": referrer,
        "request_browser": "curl 8" if agent.startswith("curl") else "Firefox 133",
        "request_platform": None if agent.startswith("curl") else "Linux",
        "response_status_code": status,
        "response_time": ms,
        "request_sample_rate": rate,
    }


ROWS = [
    row("2026-11-24T23:59:10.000000+00:00", "/", 200, 1.0, route="/"),
    row("2026-11-25T00:00:05.000000+00:00", "/", 200, 2.0, route="/", agent="Mozilla Firefox"),
    row("2026-11-25T00:00:50.000000+00:00", "/item/1", 404, 3.0, route="/item/<int:n>"),
    row("2026-11-25T00:01:00.000000+00:00", "/boom", 500, 100.0, route="/boom", address="10.0.0.2"),
    row("2026-11-25T00:01:30.000000+00:00", "/nope", 404, 0.5, referrer="https://a.example/"),
    row("2026-11-25T00:01:40.000000+00:00", "/", 200, 2.0, route="/", rate=0.5),
]


def test_summary_of_known_rows() -> None:
    builder = SummaryBuilder(None, None, FIELDS)
    builder.add_rows(ROWS)
    summary = builder.result()
    assert summary["total"] == 7  # the sampled row stands for two requests
    assert summary["sampled"] is True
    assert summary["errors"] == 1
    assert summary["error_rate"] == round(1 / 7, 4)
    assert summary["status_classes"] == {"1xx": 0, "2xx": 4, "3xx": 0, "4xx": 2, "5xx": 1}
    assert summary["first"] == ROWS[0]["request_date"]
    assert summary["last"] == ROWS[-1]["request_date"]
    assert summary["bucket"] == "minute"
    assert summary["requests_per_bucket"] == [
        {"start": "2026-11-24T23:59:00+00:00", "count": 1},
        {"start": "2026-11-25T00:00:00+00:00", "count": 2},
        {"start": "2026-11-25T00:01:00+00:00", "count": 4},
    ]
    routes = {entry["route"]: entry for entry in summary["routes"]}
    assert routes["/"]["count"] == 4
    assert routes["/"]["p50"] == pytest.approx(2.0, rel=0.045)
    assert routes["/"]["p99"] == pytest.approx(2.0, rel=0.045)
    assert routes["/boom"]["p95"] == pytest.approx(100.0, rel=0.045)
    assert routes[None]["count"] == 1
    assert summary["top_paths"][0] == {"value": "/", "count": 4}
    assert summary["top_referrers"] == [{"value": "https://a.example/", "count": 1}]
    assert summary["top_platforms"] == [{"value": "Linux", "count": 1}]
    # (day, address, agent): 24th curl .1; 25th curl .1, Firefox .1, curl .2.
    assert summary["unique_visitors"] == 4
    assert "10.0.0.1" not in repr(summary)
    assert "histogram" in summary["percentiles"]


def test_routes_are_ordered_busiest_first_then_by_name() -> None:
    builder = SummaryBuilder(None, None, FIELDS)
    builder.add_rows(ROWS)
    order = [entry["route"] for entry in builder.result()["routes"]]
    assert order == ["/", "/boom", "/item/<int:n>", None]


def test_counts_fed_by_a_database_give_the_same_summary() -> None:
    by_rows = SummaryBuilder(None, None, FIELDS)
    by_rows.add_rows(ROWS)
    by_counts = SummaryBuilder(None, None, FIELDS)
    for entry in ROWS:
        weight = 1 / entry["request_sample_rate"] if entry["request_sample_rate"] else 1.0
        by_counts.add_status(entry["response_status_code"], weight)
        by_counts.add_minute(entry["request_date"], weight)
        by_counts.add_route(entry["request_route"], weight)
        by_counts.add_route_time(
            entry["request_route"], histogram_index(entry["response_time"]), weight
        )
        for name, field in (
            ("top_paths", "request_path"),
            ("top_referrers", "request_referrer"),
            ("top_browsers", "request_browser"),
            ("top_platforms", "request_platform"),
        ):
            if entry[field] is not None:
                by_counts.add_top(name, entry[field], weight)
    by_counts.set_visitors(4)
    by_counts.set_span(ROWS[0]["request_date"], ROWS[-1]["request_date"], sampled=True)
    assert by_counts.result() == by_rows.result()


def test_parts_without_their_fields_are_none() -> None:
    fields = LogPolicy().set_from_false(request_date=True, request_path=True).enabled_fields
    builder = SummaryBuilder(None, None, fields)
    builder.add_rows(
        [{"request_date": r["request_date"], "request_path": r["request_path"]} for r in ROWS]
    )
    summary = builder.result()
    assert summary["total"] == 6
    for part in ("errors", "status_classes", "routes", "top_referrers", "unique_visitors"):
        assert summary[part] is None
    assert summary["top_paths"][0] == {"value": "/", "count": 3}


def test_empty_summary() -> None:
    builder = SummaryBuilder(None, None, FIELDS)
    summary = builder.result()
    assert summary["total"] == 0
    assert summary["error_rate"] == 0.0
    assert summary["routes"] == []
    assert summary["requests_per_bucket"] == []


def test_store_summary_respects_the_window(tmp_path: Path) -> None:
    store = MemoryStore()
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    client = app.test_client()
    client.get("/missing")
    middle = datetime.now(UTC)
    client.get("/")
    client.get("/item/3")
    try:
        summary = store.summary(since=middle)
        assert summary["total"] == 2
        assert summary["since"] == iso_text(middle)
        assert summary["status_classes"]["4xx"] == 0
        assert store.summary()["total"] == 3
    finally:
        store.shutdown()


# -- retention scheduling ----------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.records: list[TrafficRecord] = []

    def __call__(self, records: Sequence[TrafficRecord]) -> None:
        self.records.extend(records)


def test_worker_runs_maintenance_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []
    ran_twice = threading.Event()

    def maintain() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")  # logged, tried again later
        if len(calls) >= 3:
            ran_twice.set()

    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        processor = BatchProcessor(
            Sink(), schedule_delay=0.01, maintenance=maintain, maintenance_interval=0.05
        )
        assert ran_twice.wait(10)
        processor.shutdown()
    assert any("retention failed" in r.getMessage() for r in caplog.records)
    # A long interval: only the first run, at start.
    calls.clear()
    processor = BatchProcessor(
        Sink(), schedule_delay=0.01, maintenance=lambda: calls.append(1), maintenance_interval=3600
    )
    processor.force_flush()
    processor.force_flush()
    processor.shutdown()
    assert calls == [1]


class CountingMemoryStore(MemoryStore):
    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[datetime | None, int | None]] = []

    def retain(self, cutoff: datetime | None, max_records: int | None) -> int:
        self.calls.append((cutoff, max_records))
        return 0


def test_prune_passes_the_limits(tmp_path: Path) -> None:
    store = CountingMemoryStore(max_age=timedelta(days=7), max_records=100)
    app = make_app(tmp_path)
    app.config["TRAFFIC_RETENTION_INTERVAL"] = 3600.0
    Traffic(app, stores=store)
    before = datetime.now(UTC)
    assert store.prune() == 0
    cutoff, limit = store.calls[-1]
    assert limit == 100
    assert cutoff is not None
    assert before - timedelta(days=7) <= cutoff <= datetime.now(UTC) - timedelta(days=7)
    store.shutdown()
    assert MemoryStore().prune() == 0  # no limits: nothing to do


def test_retention_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"max_age must be a positive datetime\.timedelta"):
        MemoryStore(max_age=3600)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_records must be a positive integer"):
        MemoryStore(max_records=0)

    class NoRetention(MemoryStore):
        retain = Store.retain  # the base's: not implemented

    with pytest.raises(TypeError, match="does not implement retain"):
        NoRetention(max_records=10)


# -- names ----------------------------------------------------------------------


def test_default_names_are_numbered_per_app(tmp_path: Path) -> None:
    stores = [
        JSONStore("a.json"),
        JSONStore("b.json"),
        MemoryStore(),
        JSONStore("c.json", name="errors"),
    ]
    Traffic(make_app(tmp_path), stores=stores)
    assert [store.name for store in stores] == ["JSONStore", "JSONStore-2", "MemoryStore", "errors"]
    for store in stores:
        store.shutdown()


def test_two_stores_of_one_name_fail(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Two stores are named 'x'"):
        Traffic(make_app(tmp_path), stores=[MemoryStore(name="x"), MemoryStore(name="x")])
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        MemoryStore(name=" ")


def test_records_older_than_max_age_are_not_given(tmp_path: Path) -> None:
    store = CountingMemoryStore(max_age=timedelta(hours=1))  # retain() removes nothing
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    now_ns = int(datetime.now(UTC).timestamp() * 1e9)
    processor = store.processor
    assert processor is not None
    for minutes, path in ((120, "/old"), (30, "/recent")):
        start = now_ns - minutes * 60 * 10**9
        processor.emit(TrafficRecord(start_time_ns=start, duration_ns=1000, request_path=path))
    try:
        assert [row["request_path"] for row in store.read()] == ["/recent"]
        assert [row["request_path"] for row in store.read(since="2000-01-01")] == ["/recent"]
        assert store.summary()["total"] == 1
    finally:
        store.shutdown()


def test_maintenance_runs_while_records_keep_coming() -> None:
    calls: list[float] = []

    def slow_export(records: Sequence[TrafficRecord]) -> None:
        time.sleep(0.001)

    processor = BatchProcessor(
        slow_export,
        schedule_delay=0.01,
        max_batch_size=8,
        max_queue_size=1000,
        maintenance=lambda: calls.append(1),
        maintenance_interval=0.01,
    )
    record = TrafficRecord(start_time_ns=0, duration_ns=0)
    # Records come faster than the store takes them, so the queue is never
    # empty: the worker drains batch after batch without a pause.
    deadline = time.monotonic() + 10
    while len(calls) < 5 and time.monotonic() < deadline:
        for _ in range(100):
            processor.emit(record)
        time.sleep(0.0005)
    processor.shutdown(timeout=1)
    assert len(calls) >= 5
