"""Queries, summaries and retention of JSONStore, CSVStore and MemoryStore.

Records are made with known dates and written with ``export()`` (the files'
own writer), so windows, limits and summaries can be checked exactly.
"""

from __future__ import annotations

import os
import time
import typing as t
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from flask import Flask
from helpers import run_writers

from flask_traffic import LogPolicy, Traffic, TrafficRecord
from flask_traffic.stores import CSVStore, JSONStore, MemoryStore, Store
from flask_traffic.stores.filestore import LATE_WRITE_SLACK, FileStore
from flask_traffic.summary import SummaryBuilder, histogram_index, histogram_value

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOW = datetime.now(UTC)
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


def record(
    at: datetime,
    path: str = "/",
    *,
    status: int = 200,
    route: str | None = "/",
    address: str | None = "10.0.0.1",
    agent: str | None = CHROME,
    ms: float = 12.0,
    referrer: str | None = None,
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
        response_exception="ValueError('x')" if status >= 500 else None,
    )


StoreMaker = Callable[..., Store]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """``make(kind, **kwargs)``: a store of that kind in ``tmp_path``, shut down afterwards."""
    made: list[Store] = []

    def factory(kind: str, folder: Path | None = None, **kwargs: t.Any) -> Store:
        store: Store
        if kind == "json":
            store = JSONStore(location=folder or tmp_path, **kwargs)
        elif kind == "csv":
            store = CSVStore(location=folder or tmp_path, **kwargs)
        else:
            store = MemoryStore(**kwargs)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.shutdown()


def paths(rows: t.Iterable[dict[str, t.Any]]) -> list[str]:
    return [row["request_path"] for row in rows]


# -- queries ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["json", "csv", "memory"])
def test_read_with_since_until_and_where(make: StoreMaker, kind: str) -> None:
    store = make(kind)
    start = NOW - timedelta(minutes=50)
    statuses = [200, 500, 200, 500, 200]
    store.export(
        [
            record(start + timedelta(minutes=10 * n), f"/{'abcde'[n]}", status=status)
            for n, status in enumerate(statuses)
        ]
    )
    since = NOW - timedelta(minutes=35)
    for value in (
        since,
        since.isoformat(),
        since.isoformat().replace("+00:00", "Z"),
        since.replace(tzinfo=None),  # naive: taken as UTC
        since.astimezone(timezone(timedelta(hours=5))).isoformat(),
    ):
        assert paths(store.read(since=value)) == ["/e", "/d", "/c"], value
    # until is exclusive: the request at exactly -20 minutes is left out.
    assert paths(store.read(until=start + timedelta(minutes=30))) == ["/c", "/b", "/a"]
    window: dict[str, t.Any] = {
        "since": start + timedelta(minutes=5),
        "until": start + timedelta(minutes=35),
    }
    assert paths(store.read(**window, where={"response_status_code": 500})) == ["/d", "/b"]
    assert paths(store.read(1, **window)) == ["/d"]
    assert paths(store.read(where={"request_path": "/a"})) == ["/a"]
    assert store.read(since=NOW + timedelta(seconds=1)) == []
    query = store.query(since=window["since"], until=window["until"])
    assert paths(store.scan(query, oldest_first=True)) == ["/b", "/c", "/d"]
    assert paths(store.scan(store.query(), oldest_first=True)) == ["/a", "/b", "/c", "/d", "/e"]


@pytest.mark.parametrize("kind", ["json", "csv", "memory"])
def test_bad_query_arguments_fail_in_one_sentence(make: StoreMaker, kind: str) -> None:
    store = make(kind)
    cases: list[tuple[dict[str, t.Any], type[Exception], str]] = [
        ({"since": "yesterday"}, ValueError, "since must be a datetime or ISO 8601 text"),
        ({"until": 5}, TypeError, "until must be a datetime or ISO 8601 text"),
        ({"where": {"nope": 1}}, ValueError, "where names unknown field 'nope'"),
        ({"where": {"response_status_code": [500]}}, TypeError, "must be a str, int, float"),
        ({"where": [("request_path", "/")]}, TypeError, "where must be a dict"),
        ({"limit": -1}, ValueError, "limit must be a non-negative integer"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message) as caught:
            store.read(**kwargs)
        text = str(caught.value)
        assert text.endswith(".")
        assert "\n" not in text
    with pytest.raises(ValueError, match="since must be"):
        store.summary(since="not a date")


@pytest.mark.parametrize("store_class", [JSONStore, CSVStore])
def test_limits_are_checked_at_construction(
    store_class: type[JSONStore] | type[CSVStore], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="max_records must be a positive integer"):
        store_class(location=tmp_path, max_records=0)
    with pytest.raises(ValueError, match=r"max_age must be a positive datetime\.timedelta"):
        store_class(location=tmp_path, max_age=60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        store_class(location=tmp_path, name="")
    store = store_class(location=tmp_path, name="hits", max_age=timedelta(days=7), max_records=1000)
    assert (store.name, store.max_age, store.max_records) == ("hits", timedelta(days=7), 1000)
    assert store.supports_retention


@pytest.mark.parametrize("kind", ["json", "csv", "memory"])
def test_max_age_needs_request_date(make: StoreMaker, tmp_path: Path, kind: str) -> None:
    policy = LogPolicy().set_from_false(request_path=True)
    store = make(kind, log_policy=policy, max_age=timedelta(days=1))
    with pytest.raises(ValueError, match="enable request_date or drop max_age"):
        Traffic(Flask("limits", instance_path=str(tmp_path)), stores=store)


# -- reading backwards and stopping early ---------------------------------------------


class _CountingReads:
    """Counts the bytes the file stores read (they read with os.pread)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._pread = os.pread

    def __call__(self, fd: int, length: int, offset: int) -> bytes:
        data = self._pread(fd, length, offset)
        self.bytes += len(data)
        return data


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_since_reads_only_the_end_of_a_large_file(
    make: StoreMaker, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make(kind)
    old = NOW - timedelta(days=10)
    for batch in range(20):
        store.export(
            [record(old + timedelta(seconds=batch * 1000 + n), f"/old/{n}") for n in range(1000)]
        )
    store.export([record(NOW - timedelta(minutes=5, seconds=n), f"/new/{n}") for n in range(30)])
    # Before the window, but not by more than LATE_WRITE_SLACK (written
    # late): read, left out, and the scan goes on past them.
    store.export(
        [record(NOW - timedelta(minutes=61, seconds=15 * n), f"/near/{n}") for n in range(200)]
    )
    store.export(
        [record(NOW - timedelta(minutes=4, seconds=n), f"/new/{n}") for n in range(30, 60)]
    )
    assert isinstance(store, FileStore)
    size = store.path.stat().st_size
    reads = _CountingReads()
    monkeypatch.setattr(os, "pread", reads)

    since = NOW - timedelta(hours=1)
    assert paths(store.read(since=since)) == [f"/new/{n}" for n in reversed(range(60))]
    assert reads.bytes < size / 20
    reads.bytes = 0
    assert store.summary(since=since)["total"] == 60
    assert reads.bytes < size / 20
    reads.bytes = 0
    assert len(store.read(10)) == 10
    assert reads.bytes < size / 20
    # Oldest first: found from the end too, then read forward from there.
    reads.bytes = 0
    assert paths(store.scan(store.query(since=since), oldest_first=True)) == [
        f"/new/{n}" for n in range(60)
    ]
    assert reads.bytes < size / 10
    # Without a window everything is read, which is what makes the above mean something.
    reads.bytes = 0
    assert store.summary()["total"] == 20_260
    assert reads.bytes >= size


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_records_written_late_within_the_slack_are_found(make: StoreMaker, kind: str) -> None:
    store = make(kind)
    since = NOW - timedelta(hours=3)
    store.export([record(since - LATE_WRITE_SLACK - timedelta(minutes=1), "/long-before")])
    store.export([record(since + timedelta(minutes=1), "/inside")])
    # Written late (a store that failed for half an hour): older than since,
    # after a record inside the window. The scan goes on past it.
    store.export([record(since - LATE_WRITE_SLACK / 2, "/late")])
    store.export([record(since + timedelta(minutes=5), "/newest")])
    assert paths(store.read(since=since)) == ["/newest", "/inside"]
    assert store.summary(since=since)["total"] == 2
    assert paths(store.scan(store.query(since=since), oldest_first=True)) == [
        "/inside",
        "/newest",
    ]
    until = since + timedelta(minutes=3)
    assert paths(store.read(until=until)) == ["/late", "/inside", "/long-before"]
    assert paths(store.scan(store.query(until=until), oldest_first=True)) == [
        "/long-before",
        "/inside",
        "/late",
    ]


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_an_unreadable_record_in_the_middle_is_skipped(make: StoreMaker, kind: str) -> None:
    store = make(kind)
    assert isinstance(store, FileStore)
    store.export([record(NOW - timedelta(minutes=3), "/before")])
    with open(store.path, "ab") as file:
        file.write(b"{not json\n" if kind == "json" else b"only,two\n")
    store.export([record(NOW - timedelta(minutes=1), "/after")])
    assert paths(store.read()) == ["/after", "/before"]
    assert paths(store.read(since=NOW - timedelta(hours=1))) == ["/after", "/before"]
    assert store.summary()["total"] == 2


# -- retention ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_retention_by_age_rotates_and_deletes(make: StoreMaker, tmp_path: Path, kind: str) -> None:
    # Raw retention: rollups would go on counting what max_age left out.
    store = make(kind, max_age=timedelta(days=1), rollups=False)
    assert isinstance(store, FileStore)
    store.export([record(NOW - timedelta(days=2, minutes=n), f"/old/{n}") for n in range(5)])
    store.export([record(NOW - timedelta(minutes=60 - n), f"/recent/{n}") for n in range(3)])
    # The live file starts more than max_age / 2 ago: it is renamed. The
    # renamed file holds recent records, so it stays.
    assert store.prune() == 0
    assert not store.path.exists()
    [rotated] = store.rotated_files()
    assert rotated.name.startswith(store.path.stem + ".")
    assert rotated.suffix == store.path.suffix
    # Older than max_age: left out, though still in the rotated file.
    assert paths(store.read()) == ["/recent/2", "/recent/1", "/recent/0"]
    assert store.summary()["total"] == 3

    store.export([record(NOW, "/new")])  # a new live file
    if kind == "csv":
        for path in (store.path, rotated):
            assert path.read_text().startswith("request_date,request_method,")
    assert paths(store.read()) == ["/new", "/recent/2", "/recent/1", "/recent/0"]
    assert paths(store.scan(store.query(), oldest_first=True)) == [
        "/recent/0",
        "/recent/1",
        "/recent/2",
        "/new",
    ]
    assert store.prune() == 0  # the new live file is young: it stays
    assert store.path.exists()

    # A rotated file whose every record is older than max_age is deleted.
    other = make(kind, folder=tmp_path / "other", max_age=timedelta(days=1))
    assert isinstance(other, FileStore)
    other.path.parent.mkdir()
    other.export([record(NOW - timedelta(days=3, minutes=n), f"/old/{n}") for n in range(5)])
    assert other.prune() == 5
    assert other.rotated_files() == []
    assert not other.path.exists()
    assert other.read() == []


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_a_file_whose_last_record_is_old_is_kept_for_its_newer_ones(
    make: StoreMaker, kind: str
) -> None:
    store = make(kind, max_age=timedelta(hours=1))
    assert isinstance(store, FileStore)
    store.export([record(NOW - timedelta(minutes=40), "/inside")])
    store.export([record(NOW - timedelta(days=3), "/written-late")])
    # Its last record is older than max_age, but not all of them: it stays.
    assert store.prune() == 0
    [rotated] = store.rotated_files()
    assert "/inside" in rotated.read_text()


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_retention_by_count_keeps_the_newest(make: StoreMaker, kind: str) -> None:
    store = make(kind, max_records=10)
    assert isinstance(store, FileStore)
    removed = []
    for batch in range(3):
        store.export(
            [
                record(NOW - timedelta(minutes=30 - batch * 10 - n / 10), f"/{batch}/{n}")
                for n in range(8)
            ]
        )
        # More than max_records / 2 records: the live file is renamed. Only
        # once the newer files hold 10 records is the oldest deleted.
        removed.append(store.prune())
    assert removed == [0, 0, 8]
    assert len(store.rotated_files()) == 2
    newest = [f"/2/{n}" for n in reversed(range(8))] + ["/1/7", "/1/6"]
    assert paths(store.read()) == newest
    assert paths(store.read(3)) == newest[:3]
    assert paths(store.scan(store.query(), oldest_first=True)) == newest[::-1]
    assert store.summary()["total"] == 10
    store.export([record(NOW, "/live")])
    assert paths(store.read()) == ["/live", *newest[:9]]
    assert paths(store.scan(store.query(), oldest_first=True)) == [*newest[:9][::-1], "/live"]


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_oldest_first_gives_the_newest_first_rows_reversed(make: StoreMaker, kind: str) -> None:
    # Large enough for several blocks each way, which do not line up.
    store = make(kind, max_records=1500)
    store.export([record(NOW - timedelta(seconds=4000 - n), f"/{n}") for n in range(4000)])
    windows: list[dict[str, t.Any]] = [
        {},
        {"since": NOW - timedelta(seconds=1000)},
        {"until": NOW - timedelta(seconds=700)},
    ]
    for window, count in zip(windows, (1500, 1000, 800), strict=True):
        query = store.query(**window)
        newest_first = paths(store.scan(query))
        assert len(newest_first) == count
        assert paths(store.scan(query, oldest_first=True)) == newest_first[::-1]
    assert paths(store.scan(store.query(), oldest_first=True)) == [
        f"/{n}" for n in range(2500, 4000)
    ]


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_the_live_file_counts_toward_max_records(make: StoreMaker, kind: str) -> None:
    store = make(kind, max_records=10)
    assert isinstance(store, FileStore)
    for batch in range(2):
        store.export([record(NOW, f"/{batch}/{n}") for n in range(8)])
        assert store.prune() == 0
    # 4 records: not enough to rotate the live file, enough with the 8 of
    # the newer rotated file to make the oldest one outside max_records.
    store.export([record(NOW, f"/2/{n}") for n in range(4)])
    assert store.prune() == 8
    assert len(store.rotated_files()) == 1
    assert store.path.exists()
    store.export([record(NOW, "/2/4")])  # counted from where the last count stopped
    assert store.prune() == 0
    assert paths(store.read()) == [f"/2/{n}" for n in reversed(range(5))] + [
        f"/1/{n}" for n in reversed(range(3, 8))
    ]


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_retention_in_the_worker(make: StoreMaker, tmp_path: Path, kind: str) -> None:
    app = Flask("worker", instance_path=str(tmp_path))
    app.config["TRAFFIC_RETENTION_INTERVAL"] = 0.01
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 0.01
    store = make(kind, max_age=timedelta(days=1))
    assert isinstance(store, FileStore)
    Traffic(app, stores=store)
    assert store.processor is not None
    for n in range(5):
        store.processor.emit(record(NOW - timedelta(days=3), f"/old/{n}"))
    store.flush()

    def old_ones_left() -> bool:
        files = [store.path, *store.rotated_files()]
        return any(path.exists() and "/old/" in path.read_text() for path in files)

    # flush() returned: the old records were written. Only the worker's
    # retention (no prune() here) can take them away.
    deadline = time.monotonic() + 10
    while old_ones_left() and time.monotonic() < deadline:
        time.sleep(0.02)
    # The worker rotated the file out and deleted it; new records are kept.
    assert not old_ones_left()
    store.processor.emit(record(datetime.now(UTC), "/tick"))
    rows = store.read()
    assert rows
    assert {row["request_path"] for row in rows} == {"/tick"}


def _writer(number: int, folder: str, kind: str, count: int, at: str) -> None:
    app = Flask(f"writer{number}", instance_path=folder)
    app.config["TRAFFIC_RETENTION_INTERVAL"] = 0.001
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 0.005
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 5
    # Rotation alone: a fold at every 1 ms retention pass, waiting on the
    # other processes' folds, would keep the worker from writing in time.
    store = (JSONStore if kind == "json" else CSVStore)(max_age=timedelta(days=1), rollups=False)
    Traffic(app, stores=store)
    processor = store.processor
    assert processor is not None
    start = datetime.fromisoformat(at)

    def emit(thread: int) -> None:
        for n in range(count):
            processor.emit(record(start, f"/p{number}/{thread}/{n}", agent='a, "quoted"\nagent'))
            if n % 10 == 0:
                time.sleep(0.002)

    run_writers(emit, 2, timeout=60)
    store.shutdown()


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_rotation_racing_with_writers_loses_nothing(tmp_path: Path, kind: str) -> None:
    # Records 13 hours old are inside max_age (1 day) but the live file that
    # holds one is due for rotation (older than max_age / 2): with a retention
    # interval of 1 ms, every process rotates the file it and the others
    # are appending to, over and over.
    at = (NOW - timedelta(hours=13)).isoformat()
    count = 150
    run_writers(_writer, 3, str(tmp_path), kind, count, at, processes=True, timeout=120)
    expected = {f"/p{p}/{t}/{n}" for p in range(3) for t in range(2) for n in range(count)}
    reader = (JSONStore if kind == "json" else CSVStore)(
        location=tmp_path, max_age=timedelta(days=1), rollups=False
    )
    found = paths(reader.read(10_000))
    assert len(found) == len(expected)
    assert set(found) == expected
    assert sorted(paths(reader.scan(reader.query(), oldest_first=True))) == sorted(found)
    assert reader.summary()["total"] == len(expected)
    rotated = reader.rotated_files()
    assert len(rotated) >= 3
    if kind == "csv":
        for path in rotated:
            assert path.read_bytes().startswith(b"request_date,")
            assert path.read_bytes().count(b"request_date,") == 1


# -- summaries -----------------------------------------------------------------------

DAY = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
KNOWN = [
    record(DAY, "/a", route="/a", ms=10.0, referrer="https://ref.example/"),
    record(DAY + timedelta(minutes=1), "/a", route="/a", ms=20.0),
    record(
        DAY + timedelta(minutes=1, seconds=5),
        "/b/1",
        route="/b/<int:n>",
        status=404,
        ms=30.0,
        address="10.0.0.2",
        agent=FIREFOX,
    ),
    record(
        DAY + timedelta(minutes=2),
        "/b/2",
        route="/b/<int:n>",
        status=500,
        ms=40.0,
        address="10.0.0.3",
        agent=FIREFOX,
    ),
    record(
        DAY + timedelta(minutes=2, seconds=30),
        "/missing",
        route=None,
        status=404,
        ms=5.0,
        address="10.0.0.2",
        agent="curl/8.5.0",
    ),
]


def _middle(ms: float) -> float:
    return round(histogram_value(histogram_index(ms)), 3)


@pytest.mark.parametrize("kind", ["json", "csv", "memory"])
def test_summary_of_known_records(make: StoreMaker, kind: str) -> None:
    store = make(kind)
    store.export(KNOWN)
    summary = store.summary()
    minute = DAY.isoformat(timespec="microseconds")[:16]
    browsers: dict[str, int] = {}
    for item in KNOWN:
        assert item.request_browser is not None
        browsers[item.request_browser] = browsers.get(item.request_browser, 0) + 1
    assert summary["total"] == 5
    assert summary["sampled"] is False
    assert summary["errors"] == 1
    assert summary["error_rate"] == 0.2
    assert summary["status_classes"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 2, "5xx": 1}
    assert summary["first"] == DAY.isoformat(timespec="microseconds")
    assert summary["last"] == (DAY + timedelta(minutes=2, seconds=30)).isoformat(
        timespec="microseconds"
    )
    assert summary["bucket"] == "minute"
    assert summary["requests_per_bucket"] == [
        {"start": f"{minute[:-2]}00:00+00:00", "count": 1},
        {"start": f"{minute[:-2]}01:00+00:00", "count": 2},
        {"start": f"{minute[:-2]}02:00+00:00", "count": 2},
    ]
    assert summary["routes"] == [
        {"route": "/a", "count": 2, "p50": _middle(10), "p95": _middle(20), "p99": _middle(20)},
        {
            "route": "/b/<int:n>",
            "count": 2,
            "p50": _middle(30),
            "p95": _middle(40),
            "p99": _middle(40),
        },
        {"route": None, "count": 1, "p50": _middle(5), "p95": _middle(5), "p99": _middle(5)},
    ]
    assert summary["top_paths"] == [
        {"value": "/a", "count": 2},
        {"value": "/b/1", "count": 1},
        {"value": "/b/2", "count": 1},
        {"value": "/missing", "count": 1},
    ]
    assert summary["top_referrers"] == [{"value": "https://ref.example/", "count": 1}]
    assert summary["top_browsers"] == [
        {"value": value, "count": count}
        for value, count in sorted(browsers.items(), key=lambda item: (-item[1], item[0]))
    ]
    # (day, address, agent): the two requests of 10.0.0.1 with Chrome are one.
    assert summary["unique_visitors"] == 4
    assert "10.0.0.1" not in repr(summary)

    later = store.summary(since=DAY + timedelta(minutes=1))
    assert later["total"] == 4
    assert later["since"] == (DAY + timedelta(minutes=1)).isoformat(timespec="microseconds")
    window = store.summary(since=DAY + timedelta(minutes=1), until=DAY + timedelta(minutes=2))
    assert window["total"] == 2
    assert window["unique_visitors"] == 2
    assert store.summary(since=DAY + timedelta(days=1))["total"] == 0


@pytest.mark.parametrize("kind", ["json", "csv", "memory"])
def test_summary_counts_sampled_records_as_many(make: StoreMaker, kind: str) -> None:
    store = make(kind, log_policy=LogPolicy(sample_rate=0.25))
    store.export(KNOWN)
    summary = store.summary()
    # Kept with rate 0.25, each 2xx/4xx record stands for 4; the 500 was kept
    # whatever the dice said, so it counts once.
    assert summary["total"] == 17
    assert summary["sampled"] is True
    assert summary["errors"] == 1
    assert summary["error_rate"] == round(1 / 17, 4)
    assert summary["status_classes"] == {"1xx": 0, "2xx": 8, "3xx": 0, "4xx": 8, "5xx": 1}
    assert [(route["route"], route["count"]) for route in summary["routes"]] == [
        ("/a", 8),
        ("/b/<int:n>", 5),
        (None, 4),
    ]
    assert summary["top_paths"][0] == {"value": "/a", "count": 8}
    assert summary["unique_visitors"] == 4  # visitors are never scaled


def _row_by_row(store: Store, **window: t.Any) -> dict[str, t.Any]:
    """The summary as the base Store computes it: every scanned row to add_rows."""
    query = store.query(None, **window)
    builder = SummaryBuilder(query.since, query.until, store.fields)
    builder.add_rows(store.scan(query))
    return builder.result()


@pytest.mark.parametrize("kind", ["json", "csv"])
@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_fast_summary_equals_row_by_row(make: StoreMaker, kind: str, sample_rate: float) -> None:
    store = make(kind, log_policy=LogPolicy(sample_rate=sample_rate))
    assert isinstance(store, FileStore)
    start = NOW - timedelta(days=2)
    agents = [CHROME, FIREFOX, "curl/8.5.0", None]
    batch = []
    for n in range(4000):  # several blocks of the file
        batch.append(
            record(
                start + timedelta(seconds=40 * n),
                f"/p/{n % 70}",
                route=None if n % 13 == 0 else f"/r{n % 9}",
                status=(200, 201, 302, 404, 500)[n % 5],
                address=None if n % 101 == 0 else f"10.0.{n % 7}.{n % 11}",
                agent=agents[n % 4],
                ms=0.001 if n % 17 == 0 else (n % 300) * 1.7 + 0.3,
                referrer=None if n % 3 else f"https://r{n % 4}.example/",
            )
        )
    store.export(batch)
    if kind == "json":
        with open(store.path, "ab") as file:
            # No response_time, a NUL in an agent, garbage, a record with no date.
            date = (NOW - timedelta(hours=1)).isoformat(timespec="microseconds")
            file.write(f'{{"request_date":"{date}","request_path":"/raw"}}\n'.encode())
            file.write(
                f'{{"request_date":"{date}","request_remote_address":"None",'
                f'"request_user_agent":"a\\u0000b","response_time":1.5}}\n'.encode()
            )
            file.write(b'{"request_path":"/no-date","response_time":2.0}\n')
            file.write(b"garbage\n")
    windows: list[dict[str, t.Any]] = [
        {},
        {"since": NOW - timedelta(days=1)},
        {"until": NOW - timedelta(days=1)},
        {"since": start + timedelta(hours=5), "until": start + timedelta(hours=7)},
    ]
    for window in windows:
        summary = store.summary(**window)
        assert summary == _row_by_row(store, **window), window
        assert summary["total"] > 0
    assert store.summary()["sampled"] is (sample_rate < 1.0)


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_fast_summary_with_fewer_fields_and_limits(make: StoreMaker, kind: str) -> None:
    policy = LogPolicy().set_from_false(
        request_date=True, request_path=True, response_status_code=True
    )
    store = make(kind, log_policy=policy, max_records=50, max_age=timedelta(hours=10))
    store.export([record(NOW - timedelta(minutes=n), f"/{n}") for n in reversed(range(900))])
    summary = store.summary()
    expected = _row_by_row(store)
    # The window starts max_age before each call: a few microseconds apart.
    assert summary.pop("since") <= expected.pop("since")
    assert summary == expected
    assert summary["total"] == 50
    assert summary["routes"] is None
    assert summary["unique_visitors"] is None


# -- MemoryStore ---------------------------------------------------------------------


def test_memory_store_retention_by_age_and_count(make: StoreMaker) -> None:
    store = make("memory", max_records=3, max_age=timedelta(hours=1), name="recent")
    assert (store.name, store.max_records) == ("recent", 3)
    store.export([record(NOW - timedelta(hours=2), "/old")])
    store.export([record(NOW - timedelta(minutes=n), f"/{n}") for n in (30, 20, 10)])
    assert paths(store.read()) == ["/10", "/20", "/30"]
    store.export([record(NOW - timedelta(hours=3), "/written-late")])
    assert paths(store.read()) == ["/10", "/20"]  # the late one is outside max_age
    assert store.summary()["total"] == 2
    assert store.prune() == 1  # the late one goes; /30 went when the list was full
    assert paths(store.scan(store.query(), oldest_first=True)) == ["/20", "/10"]
    store.export([record(NOW, "/now")])
    assert paths(store.read()) == ["/now", "/10", "/20"]
