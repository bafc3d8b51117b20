"""The rollups' core (``flask_traffic.rollups``): how a window is cut into
buckets, the HyperLogLog that counts visitors, and that a summary added up
from rollups is the summary of the raw records."""

from __future__ import annotations

import itertools
import random
import typing as t
import zlib
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Session

from flask_traffic import LogPolicy
from flask_traffic.record import iso_text
from flask_traffic.rollups import (
    DEFAULT_RETENTION,
    ROLLUP_FIELDS,
    UNITS,
    HyperLogLog,
    Piece,
    RollupDelta,
    RollupRetention,
    Unit,
    count_visitors,
    feed,
    leaders,
    pieces,
    plan_window,
    visitor_hash,
)
from flask_traffic.stores import (
    CSVStore,
    JSONStore,
    MemoryStore,
    RedisStore,
    SQLORMModelMixin,
    SQLORMStore,
    SQLStore,
    Store,
)
from flask_traffic.summary import SummaryBuilder, bucket_unit

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LENGTH: dict[Unit, timedelta] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
Row = dict[str, t.Any]


def at(text: str) -> datetime:
    """A UTC moment from ``YYYY-MM-DDTHH:MM`` text."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def aligned(moment: datetime, unit: Unit) -> bool:
    """Whether ``moment`` starts a ``unit`` bucket (by epoch arithmetic, not
    the module's own rounding)."""
    return (moment - EPOCH) % LENGTH[unit] == timedelta(0)


def ceil(moment: datetime, unit: Unit) -> datetime:
    """The first ``unit`` bucket start at or after ``moment``."""
    return moment + (-(moment - EPOCH)) % LENGTH[unit]


def floor(moment: datetime, unit: Unit) -> datetime:
    """The start of the ``unit`` bucket ``moment`` falls in."""
    return moment - (moment - EPOCH) % LENGTH[unit]


# -- pieces ----------------------------------------------------------------


def check_pieces(since: datetime, until: datetime, coarsest: Unit) -> list[Piece]:
    """Assert what ``pieces`` promises of a window, and return its pieces."""
    found = pieces(since, until, coarsest)
    window = f"{since} .. {until} ({coarsest})"
    if since == until:
        assert found == [], window
        return found
    assert found[0].start == since, window
    assert found[-1].end == until, window
    for before, after in itertools.pairwise(found):
        assert before.end == after.start, f"not contiguous: {window}: {found}"
        assert before.unit != after.unit, f"two pieces could be one: {window}: {found}"
    top = UNITS.index(coarsest)
    for piece in found:
        assert piece.start < piece.end, window
        assert UNITS.index(piece.unit) <= top, f"coarser than {coarsest}: {piece}"
        assert aligned(piece.start, piece.unit), f"start not aligned: {piece}"
        assert aligned(piece.end, piece.unit), f"end not aligned: {piece}"
        # Fewest pieces: no whole coarser bucket allowed is left in a finer piece.
        for coarser in UNITS[UNITS.index(piece.unit) + 1 : top + 1]:
            first = ceil(piece.start, coarser)
            assert first + LENGTH[coarser] > piece.end, (
                f"a whole {coarser} at {first} comes as {piece.unit}s: {window}: {found}"
            )
    return found


def random_windows(seed: int, count: int) -> Iterable[tuple[datetime, datetime, Unit]]:
    """Minute-aligned windows near month and year ends: day-aligned,
    hour-aligned or not, from empty to two months long."""
    rng = random.Random(seed)
    for _ in range(count):
        year, month = rng.choice((2025, 2026, 2027, 2028)), rng.randrange(1, 13)
        since = datetime(year, month, 1, tzinfo=UTC)
        since += timedelta(minutes=rng.randrange(-4 * 1440, 4 * 1440))
        scale = rng.choice((0, 1, 60, 1440, 1440 * 60))
        until = since + timedelta(minutes=rng.randrange(scale + 1))
        for unit in ("hour", "day"):
            if rng.random() < 0.3:
                since = floor(since, unit)
            if rng.random() < 0.3:
                until = max(since, ceil(until, unit))
        yield since, until, rng.choice(UNITS)


def test_pieces_random_windows() -> None:
    """Random windows (some aligned to days or hours, some across month and
    year ends, some empty or one minute) are covered exactly, in order, by
    aligned pieces no coarser than asked, whole days and hours as such."""
    units_seen: set[Unit] = set()
    for since, until, coarsest in random_windows(seed=20261130, count=3000):
        units_seen.update(piece.unit for piece in check_pieces(since, until, coarsest))
    assert units_seen == set(UNITS)


@pytest.mark.parametrize(
    ("since", "until", "coarsest", "expected"),
    [
        pytest.param(
            "2026-12-31T22:30",
            "2027-01-02T01:15",
            "day",
            [
                ("minute", "2026-12-31T22:30", "2026-12-31T23:00"),
                ("hour", "2026-12-31T23:00", "2027-01-01T00:00"),
                ("day", "2027-01-01T00:00", "2027-01-02T00:00"),
                ("hour", "2027-01-02T00:00", "2027-01-02T01:00"),
                ("minute", "2027-01-02T01:00", "2027-01-02T01:15"),
            ],
            id="across-year-end-by-day",
        ),
        pytest.param(
            "2026-12-31T22:30",
            "2027-01-02T01:15",
            "hour",
            [
                ("minute", "2026-12-31T22:30", "2026-12-31T23:00"),
                ("hour", "2026-12-31T23:00", "2027-01-02T01:00"),
                ("minute", "2027-01-02T01:00", "2027-01-02T01:15"),
            ],
            id="across-year-end-by-hour",
        ),
        pytest.param(
            "2026-12-31T22:30",
            "2027-01-02T01:15",
            "minute",
            [("minute", "2026-12-31T22:30", "2027-01-02T01:15")],
            id="across-year-end-by-minute",
        ),
        pytest.param(
            "2026-02-01T00:00",
            "2026-03-01T00:00",
            "day",
            [("day", "2026-02-01T00:00", "2026-03-01T00:00")],
            id="whole-february",
        ),
        pytest.param(
            "2026-11-30T23:00",
            "2026-12-01T03:00",
            "day",
            [("hour", "2026-11-30T23:00", "2026-12-01T03:00")],
            id="whole-hours-across-month-end",
        ),
        pytest.param(
            "2026-11-30T10:05",
            "2026-11-30T10:50",
            "day",
            [("minute", "2026-11-30T10:05", "2026-11-30T10:50")],
            id="within-an-hour",
        ),
        pytest.param(
            "2026-11-30T23:59",
            "2026-12-01T00:00",
            "day",
            [("minute", "2026-11-30T23:59", "2026-12-01T00:00")],
            id="one-minute",
        ),
        pytest.param("2026-11-30T12:00", "2026-11-30T12:00", "day", [], id="empty"),
    ],
)
def test_pieces_expected(
    since: str, until: str, coarsest: Unit, expected: list[tuple[Unit, str, str]]
) -> None:
    """A few windows cut into exactly the pieces one would by hand."""
    found = check_pieces(at(since), at(until), coarsest)
    assert found == [Piece(unit, at(start), at(end)) for unit, start, end in expected]


@pytest.mark.parametrize(
    ("since", "until", "first", "last", "whole"),
    [
        # A day counted per hour up to the last folded hour: the figures
        # come from the evening's hours and the whole of today's day.
        (
            "2026-11-29T20:17",
            None,
            "2026-11-01T00:00",
            "2026-11-30T09:13",
            [
                ("hour", "2026-11-29T20:00", "2026-11-30T00:00"),
                ("day", "2026-11-30T00:00", "2026-12-01T00:00"),
            ],
        ),
        # Something folded after the window's end: its last hours stay hours.
        (
            "2026-11-29T20:17",
            "2026-11-30T09:05",
            "2026-11-01T00:00",
            "2026-11-30T11:00",
            [("hour", "2026-11-29T20:00", "2026-11-30T10:00")],
        ),
        # Nothing folded before the window's start: its first day whole.
        (
            "2026-11-29T20:17",
            "2026-11-30T09:05",
            "2026-11-29T21:30",
            "2026-11-30T11:00",
            [
                ("day", "2026-11-29T00:00", "2026-11-30T00:00"),
                ("hour", "2026-11-30T00:00", "2026-11-30T10:00"),
            ],
        ),
        # The whole store: whole days.
        (
            None,
            None,
            "2026-11-27T05:01",
            "2026-11-30T09:13",
            [("day", "2026-11-27T00:00", "2026-12-01T00:00")],
        ),
    ],
)
def test_a_window_counted_per_hour_takes_its_figures_from_the_fewest_buckets(
    since: str | None, until: str | None, first: str, last: str, whole: list[tuple[Unit, str, str]]
) -> None:
    """Its counts per hour come from hours; the rest from days wherever a
    day bucket holds only records of the window."""
    plan = plan_window(
        None if since is None else at(since),
        None if until is None else at(until),
        at(first),
        at(last),
        RollupRetention(),
        now=at("2026-11-30T12:00"),
    )
    assert plan is not None
    assert {piece.unit for piece in plan.kept} == {"hour"} or since is None
    assert plan.whole == [Piece(unit, at(start), at(end)) for unit, start, end in whole]
    # Hours past retention: every figure comes from the buckets the counts do.
    short = RollupRetention(hour=timedelta(hours=10))
    plan = plan_window(
        at("2026-11-29T20:17"), None, at(first), at(last), short, now=at("2026-11-30T12:00")
    )
    assert plan is not None
    assert plan.expired
    assert plan.whole == plan.kept


@pytest.mark.parametrize("seed", range(40))
def test_the_top_lists_leaders_give_the_summary_of_every_value(seed: int) -> None:
    """Values a summary's top lists leave out, given the records it adds
    besides: the top lists are those of every value, ties and sampled
    weights (thirds) included."""
    rng = random.Random(seed)
    step = rng.choice([1.0, 1 / 3, 0.5])
    sums = [
        (part, f"/v{n}", step * rng.randint(1, 12))
        for part in ("top_paths", "top_referrers")
        for n in range(rng.randint(5, 60))
    ]
    sums += [("route", '"/r"', 7.0), ("status", "200", 9.0)]
    rows: list[Row] = [
        {"request_path": f"/v{rng.randrange(70)}", "request_sample_rate": rng.choice([1.0, 0.5])}
        for _ in range(rng.randint(0, 15))
    ]
    slack = sum(1 / row["request_sample_rate"] for row in rows)
    kept = leaders(sums, slack)
    assert ("route", '"/r"', 7.0) in kept
    found = []
    for chosen in (sums, kept):
        builder = SummaryBuilder(None, None, ROLLUP_FIELDS)
        feed(builder, chosen, [], (None, None), None)
        builder.add_rows(rows)
        result = builder.result()
        found.append((result["top_paths"], result["top_referrers"]))
    assert found[0] == found[1]
    # And what it is for: of 100 values of distinct weights, the ten.
    distinct = [("top_paths", f"/d{n}", float(n)) for n in range(100)]
    assert sorted(weight for _, _, weight in leaders(distinct, 0.0)) == [
        float(n) for n in range(90, 100)
    ]


# -- HyperLogLog -------------------------------------------------------------

STANDARD_ERROR = 0.016


def random_hashes(seed: int, count: int) -> list[int]:
    """``count`` distinct visitor hashes of random addresses and user agents."""
    rng = random.Random(seed)
    secret = rng.randbytes(16)
    found: set[int] = set()
    while len(found) < count:
        address = ".".join(str(rng.randrange(256)) for _ in range(4))
        agent = f"Mozilla/5.0 ({rng.randrange(10**9)})"
        found.add(visitor_hash(secret, "2026-11-30", address, agent))
    return sorted(found)


@pytest.mark.parametrize("count", [0, 1, 100, 10_000, 200_000])
def test_hyperloglog_count(count: int) -> None:
    """``count`` distinct hashes, each added twice, are counted within three
    standard errors."""
    sketch = HyperLogLog()
    hashes = random_hashes(seed=count, count=count)
    for hashed in hashes + hashes:
        sketch.add(hashed)
    assert abs(sketch.count() - count) <= 3 * STANDARD_ERROR * count


def test_hyperloglog_merge_is_union() -> None:
    """Merging two overlapping sketches gives the sketch of their union."""
    hashes = random_hashes(seed=7, count=30_000)
    left, right, union = HyperLogLog(), HyperLogLog(), HyperLogLog()
    for hashed in hashes[:20_000]:
        left.add(hashed)
    for hashed in hashes[10_000:]:
        right.add(hashed)
    for hashed in hashes:
        union.add(hashed)
    assert left.to_bytes() != union.to_bytes()
    left.merge(right.to_bytes())
    assert left.to_bytes() == union.to_bytes()
    assert abs(left.count() - 30_000) <= 3 * STANDARD_ERROR * 30_000


def test_hyperloglog_bytes_round_trip() -> None:
    """A sketch made from another's bytes holds the same registers and
    counts the same, and goes on counting from them."""
    hashes = random_hashes(seed=11, count=5_000)
    sketch = HyperLogLog()
    for hashed in hashes[:4_000]:
        sketch.add(hashed)
    stored = sketch.to_bytes()
    assert isinstance(stored, bytes)
    assert len(stored) == HyperLogLog.SIZE
    copy = HyperLogLog(stored)
    assert copy.to_bytes() == stored
    assert copy.count() == sketch.count()
    for hashed in hashes[4_000:]:
        copy.add(hashed)
    assert sketch.to_bytes() == stored, "the copy shares no registers with the original"
    assert abs(copy.count() - 5_000) <= 3 * STANDARD_ERROR * 5_000


@pytest.mark.parametrize("size", [0, 1, HyperLogLog.SIZE - 1, HyperLogLog.SIZE + 1])
def test_hyperloglog_wrong_length(size: int) -> None:
    """Registers of the wrong length are refused."""
    with pytest.raises(ValueError, match=str(size)):
        HyperLogLog(bytes(size))


# -- RollupDelta + feed equal the raw summary ----------------------------------

DATA_START = at("2026-11-29T00:00")
#: One in a hundred rows falls in this minute, so a one-minute window has some.
BUSY_MINUTE = at("2026-11-30T12:34")
ROUTES = [f"/api/v{index % 3}/items/<int:id>/{index}" for index in range(19)] + [None]
STATUSES = [200, 200, 200, 201, 304, 404, 500, None]
BROWSERS = ["chrome", "firefox", "safari", "edge"]
PLATFORMS = ["windows", "macos", "linux", "android", "iphone"]
AGENTS = [f"Mozilla/5.0 (agent {index})" for index in range(4)]


def make_rows(seed: int, count: int, sampled: bool) -> list[Row]:
    """Rows as ``read()`` gives them, over three days across a month end."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        start, length = (BUSY_MINUTE, 60) if index % 100 == 0 else (DATA_START, 3 * 86_400)
        moment = start + timedelta(microseconds=rng.randrange(length * 10**6))
        rows.append(
            {
                "request_date": iso_text(moment),
                "request_route": rng.choice(ROUTES),
                "response_status_code": rng.choice(STATUSES),
                "response_time": None if rng.random() < 0.1 else rng.lognormvariate(3, 1.5),
                "request_sample_rate": (
                    rng.choice((None, None, None, None, 1.0, 0.5, 0.1)) if sampled else None
                ),
                "request_path": f"/items/{rng.randrange(40)}",
                "request_referrer": (
                    None if rng.random() < 0.3 else f"https://ref{rng.randrange(15)}.example/"
                ),
                "request_browser": rng.choice(BROWSERS),
                "request_platform": rng.choice(PLATFORMS),
                "request_remote_address": f"198.51.100.{rng.randrange(250)}",
                "request_user_agent": rng.choice(AGENTS),
            }
        )
    return rows


def make_delta(rows: list[Row]) -> RollupDelta:
    """The rollups of ``rows``, folded in batches as a store's worker would."""
    delta = RollupDelta(secret=b"site secret")
    for start in range(0, len(rows), 700):
        delta.add_rows(rows[start : start + 700])
    assert delta.records == len(rows)
    return delta


def raw_summary(rows: list[Row], since: datetime, until: datetime) -> dict[str, t.Any]:
    """The summary of the raw rows in the window."""
    low, high = iso_text(since), iso_text(until)
    builder = SummaryBuilder(since, until, ROLLUP_FIELDS)
    builder.add_rows(row for row in rows if low <= row["request_date"] < high)
    return builder.result()


def rollup_summary(delta: RollupDelta, since: datetime, until: datetime) -> dict[str, t.Any]:
    """The summary of the window added up from the rollups of its pieces."""
    found = pieces(since, until, bucket_unit(since, until))

    def inside(unit: Unit, start: datetime) -> bool:
        return any(piece.unit == unit and piece.start <= start < piece.end for piece in found)

    sums: defaultdict[tuple[str, str], float] = defaultdict(float)
    per_bucket = []
    for (unit, start, part, key), weight in delta.sums.items():
        if inside(unit, start):
            sums[part, key] += weight
            if part == "total":
                per_bucket.append((start, weight))
    spans = [span for (unit, start), span in delta.spans.items() if inside(unit, start)]
    span = (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else (None, None)
    # Sketches are kept per hour and per day; a minute piece counts its hours'.
    buckets: set[tuple[Unit, datetime]] = set()
    for piece in found:
        kept: Unit = "hour" if piece.unit == "minute" else piece.unit
        moment = floor(piece.start, kept)
        while moment < piece.end:
            buckets.add((kept, moment))
            moment += LENGTH[kept]
    visitors = count_visitors(
        (unit, start, delta.visitors[unit, start].to_bytes())
        for unit, start in sorted(buckets)
        if (unit, start) in delta.visitors
    )
    builder = SummaryBuilder(since, until, ROLLUP_FIELDS)
    feed(
        builder,
        ((part, key, weight) for (part, key), weight in sums.items()),
        per_bucket,
        span,
        visitors,
    )
    return builder.result()


WINDOWS = [
    ("2026-11-28T00:00", "2026-12-03T00:00"),  # all the data and more, by day
    ("2026-11-27T13:00", "2026-12-05T07:00"),  # days with hours at the edges
    ("2026-11-28T23:59", "2026-12-02T00:01"),  # days, hours and minutes
    ("2026-11-29T05:17", "2026-12-01T19:43"),  # by hour, unaligned
    ("2026-11-30T00:00", "2026-12-01T00:00"),  # one whole day, by hour
    ("2026-11-30T22:00", "2026-12-01T02:00"),  # whole hours across the month end
    ("2026-11-30T23:10", "2026-12-01T00:50"),  # by minute, across the month end
    ("2026-11-30T12:34", "2026-11-30T12:35"),  # one minute
    ("2026-11-30T12:34", "2026-11-30T12:34"),  # empty
    ("2026-12-03T00:00", "2026-12-04T00:00"),  # no data
]


@pytest.fixture(scope="module", params=[True, False], ids=["sampled", "unsampled"])
def data(request: pytest.FixtureRequest) -> tuple[list[Row], RollupDelta]:
    """Random rows (with sample rates or without) and their rollups."""
    rows = make_rows(seed=42, count=4_000, sampled=request.param)
    return rows, make_delta(rows)


@pytest.mark.parametrize(("since", "until"), WINDOWS)
def test_rollups_equal_raw_summary(
    data: tuple[list[Row], RollupDelta], since: str, until: str
) -> None:
    """A window's summary from its pieces' rollups is the raw summary:
    every count, bucket, route percentile, top list, first and last and
    ``sampled`` the same; unique visitors within 5 % when the window is
    whole hours (a minute piece counts its whole hour's visitors)."""
    rows, delta = data
    start, end = at(since), at(until)
    raw = raw_summary(rows, start, end)
    rolled = rollup_summary(delta, start, end)
    raw_visitors, rolled_visitors = raw.pop("unique_visitors"), rolled.pop("unique_visitors")
    assert rolled == raw
    if aligned(start, "hour") and aligned(end, "hour"):
        assert abs(rolled_visitors - raw_visitors) <= 0.05 * raw_visitors
    if start == end or start >= DATA_START + timedelta(days=3):
        assert raw["total"] == 0
        assert rolled_visitors == raw_visitors == 0
    else:
        assert raw["total"] > 0
        assert raw_visitors > 0


def test_rollups_sampled_flag(data: tuple[list[Row], RollupDelta]) -> None:
    """The data with sample rates is summarised as sampled, the data without
    as not: the flag compared above is not always the same."""
    rows, delta = data
    is_sampled = any(row["request_sample_rate"] not in (None, 1.0) for row in rows)
    since, until = at("2026-11-28T00:00"), at("2026-12-03T00:00")
    assert rollup_summary(delta, since, until)["sampled"] is is_sampled
    assert raw_summary(rows, since, until)["sampled"] is is_sampled


# -- the stores' default ---------------------------------------------------------


def _stores(tmp_path: Path, **options: t.Any) -> list[Store]:
    """One store of each kind that can keep rollups, none attached to an app."""

    class Base(DeclarativeBase):
        pass

    model = type("Hit", (Base, SQLORMModelMixin), {"__tablename__": "hits"})
    session = Session(sa.create_engine("sqlite://"))
    return [
        SQLStore(location=tmp_path, **options),
        SQLORMStore(model, db_session=session, **options),
        RedisStore(url="redis://127.0.0.1:6379/0", event_name="unused", **options),
        JSONStore(location=tmp_path, **options),
        CSVStore(location=tmp_path, **options),
    ]


def test_stores_keep_rollups_by_default_unless_told_not_to(tmp_path: Path) -> None:
    for store in _stores(tmp_path):
        assert store.keeps_rollups, store
        store.shutdown()
    for store in _stores(tmp_path, rollups=False):
        assert not store.keeps_rollups, store
        store.shutdown()
    assert not MemoryStore().keeps_rollups


def test_a_policy_without_a_field_they_count_quietly_keeps_none(tmp_path: Path) -> None:
    # By default as when asked for: no error, the summaries read the records.
    policy = LogPolicy().set_from_true(response_time=False)
    for options in ({}, {"rollups": True}):
        for store in _stores(tmp_path, log_policy=policy, **options):
            assert not store.keeps_rollups, (store, options)
            store.shutdown()


# -- RollupRetention ---------------------------------------------------------


def test_retention_defaults() -> None:
    """Minutes are kept two days, hours 400 days, days forever."""
    assert RollupRetention() == DEFAULT_RETENTION
    assert DEFAULT_RETENTION.minute == timedelta(days=2)
    assert DEFAULT_RETENTION.hour == timedelta(days=400)
    assert DEFAULT_RETENTION.day is None


def test_retention_cutoff() -> None:
    """The cutoff is the start, in UTC, of the oldest bucket kept; none for a
    size kept forever."""
    now = datetime(2026, 3, 1, 12, 34, 56, 789, tzinfo=UTC)
    assert DEFAULT_RETENTION.cutoff("minute", now) == at("2026-02-27T12:34")
    assert DEFAULT_RETENTION.cutoff("hour", now) == at("2025-01-25T12:00")
    assert DEFAULT_RETENTION.cutoff("day", now) is None
    monthly = RollupRetention(minute=None, day=timedelta(days=30))
    assert monthly.cutoff("minute", now) is None
    assert monthly.cutoff("day", now) == at("2026-01-30T00:00")
    # 01:30 at +02:00 is the previous UTC day.
    east = datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert RollupRetention(day=timedelta(days=1)).cutoff("day", east) == at("2026-02-27T00:00")


@pytest.mark.parametrize("unit", UNITS)
def test_retention_one_unit_is_enough(unit: Unit) -> None:
    """Keeping a bucket size for exactly one bucket is allowed."""
    retention = RollupRetention(**{unit: LENGTH[unit]})
    assert getattr(retention, unit) == LENGTH[unit]


@pytest.mark.parametrize(
    ("unit", "value"),
    [
        ("minute", timedelta(seconds=59)),
        ("hour", timedelta(minutes=59)),
        ("day", timedelta(hours=23, minutes=59)),
        ("minute", timedelta(0)),
        ("hour", -timedelta(days=1)),
        ("minute", 120),
        ("hour", "400 days"),
        ("day", 30.0),
    ],
)
def test_retention_bad_values(unit: Unit, value: object) -> None:
    """A retention shorter than one bucket, or not a timedelta, is refused
    with an error naming the bucket size."""
    with pytest.raises(ValueError, match=rf"rollup_retention\.{unit} .*one {unit}"):
        RollupRetention(**{unit: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, 1, 100, 300, 50_000])
def test_hyperloglog_packed_round_trip_and_merge(n: int) -> None:
    """A sketch as stored (sparse for few visitors, compressed for many)
    comes back with the same registers, and merges as the sketch does."""
    rng = random.Random(n)
    sketch = HyperLogLog()
    for _ in range(n):
        sketch.add(rng.getrandbits(64))
    packed = sketch.packed()
    assert packed[:1] == (b"S" if n <= 100 else b"Z")
    assert HyperLogLog.unpacked(packed).registers == sketch.registers
    other = HyperLogLog()
    for _ in range(500):
        other.add(rng.getrandbits(64))
    merged, expected = HyperLogLog(other.to_bytes()), HyperLogLog(other.to_bytes())
    merged.merge_packed(packed)
    expected.merge(sketch.registers)
    assert merged.registers == expected.registers


@pytest.mark.parametrize("top", [1, 54, 127, 255])
def test_hyperloglog_merge_is_max_of_each_register(top: int) -> None:
    """A merge keeps the larger of each pair of registers, whatever they
    hold (registers no sketch writes, 128 and up, too)."""
    rng = random.Random(top)
    for _ in range(20):
        mine = bytes(rng.choice((0, rng.randint(0, top))) for _ in range(HyperLogLog.SIZE))
        theirs = bytes(rng.choice((0, rng.randint(0, top))) for _ in range(HyperLogLog.SIZE))
        sketch = HyperLogLog(mine)
        sketch.merge(theirs)
        assert sketch.registers == bytearray(map(max, mine, theirs))


def test_hyperloglog_unpacks_old_zlib_streams() -> None:
    """A sketch kept as a bare zlib stream (before the prefixes) still reads."""
    sketch = HyperLogLog()
    for hashed in random_hashes(seed=5, count=3_000):
        sketch.add(hashed)
    assert HyperLogLog.unpacked(zlib.compress(sketch.to_bytes())).registers == sketch.registers
