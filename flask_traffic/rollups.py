"""Rollups: per-minute, per-hour and per-day aggregates of stored traffic, so
that ``summary()`` of a month reads a few thousand aggregate rows instead of
millions of records.

SQLStore, SQLORMStore, RedisStore, JSONStore and CSVStore keep them unless
given ``rollups=False`` (:func:`rollup_settings`), when their policy keeps
every field they count (:data:`ROLLUP_FIELDS`); a store whose policy leaves
one out keeps none, without a word. MemoryStore keeps none.

A store that keeps rollups *folds* its records into them: in its worker,
between batches, it reads the records written since its last fold (by their
position: a SQL row id), adds them up with :class:`RollupDelta` and writes
the sums and the new position in one transaction, under a lock that lets
one process of the site fold at a time. Nothing is added to the write path
of a request's record. A summary then adds up the rollups of the window's
buckets (:func:`pieces`) and, from the raw records, those written after the
last fold, so it counts every record once, however recently it was written.

What a bucket keeps, for the parts of :meth:`~flask_traffic.summary.SummaryBuilder.result`:
sums of weights (``1 / sample_rate`` a record) per ``(part, key)``
(:data:`PARTS`), the first and last ``request_date`` as POSIX seconds, and
unique visitors as a HyperLogLog (:class:`HyperLogLog`, per hour and per
day). So counts and percentiles (the same ``response_time`` histogram)
equal the raw summary's; visitors are within about 1.6 %.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import typing as t
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ._hyperloglog import HyperLogLog
from ._rollupwindow import (
    UNIT_LENGTH,
    UNITS,
    Piece,
    Unit,
    WindowPlan,
    bucket_start,
    from_microseconds,
    pieces,
    plan_folded,
    plan_window,
)
from .query import iso_text
from .summary import (
    TOP,
    TOP_FIELDS,
    VISITOR_FIELDS,
    SummaryBuilder,
    histogram_index,
    sample_weight,
)

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "DEFAULT_RETENTION",
    "LEADER_MARGIN",
    "PARTS",
    "ROLLUP_FIELDS",
    "UNITS",
    "HyperLogLog",
    "Piece",
    "RollupDelta",
    "RollupRetention",
    "Unit",
    "WindowPlan",
    "bucket_start",
    "count_visitors",
    "feed",
    "from_microseconds",
    "leaders",
    "pieces",
    "plan_folded",
    "plan_window",
    "rollup_key",
    "rollup_settings",
    "site_secret",
    "visitor_hash",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

#: The parts a bucket sums weights of, by key: ``total`` and ``records`` (key
#: ``""``: the weight, and the number of records, so a summary knows whether
#: any was sampled), ``status`` (the code as text, ``""`` for none), ``route``
#: and ``time`` (JSON ``[route, histogram index]``), and the top lists'
#: fields.
PARTS = ("total", "records", "status", "route", "time", *TOP_FIELDS)
#: The fields a rollup reads: a store keeping them all can keep rollups.
ROLLUP_FIELDS = frozenset(
    {
        "request_date",
        "request_route",
        "request_sample_rate",
        "response_status_code",
        "response_time",
        *VISITOR_FIELDS,
        *TOP_FIELDS.values(),
    }
)
# Visitors are counted per hour and per day: a minute's share of them is
# not kept (a window's minutes count their hour's visitors).
_VISITOR_UNITS: tuple[Unit, ...] = ("hour", "day")


@dataclass(frozen=True)
class RollupRetention:
    """How long each bucket size is kept; ``None`` keeps it forever.

    The defaults keep minutes for two days (a summary of a window up to two
    hours is counted per minute), hours for 400 days (a year and a month of
    hourly figures), days forever: at 13 million requests a month that is
    a few hundred thousand rows in all.
    """

    minute: timedelta | None = timedelta(days=2)
    hour: timedelta | None = timedelta(days=400)
    day: timedelta | None = None

    def __post_init__(self) -> None:
        for unit in UNITS:
            value = getattr(self, unit)
            if value is not None and (
                not isinstance(value, timedelta) or value < UNIT_LENGTH[unit]
            ):
                raise ValueError(
                    f"rollup_retention.{unit} must be None or a timedelta of at least "
                    f"one {unit}, not {value!r}"
                )

    def cutoff(self, unit: Unit, now: datetime) -> datetime | None:
        """The start of the oldest ``unit`` bucket to keep at ``now``."""
        kept = getattr(self, unit)
        return None if kept is None else bucket_start(now - kept, unit)


#: What stores keep when given no ``rollup_retention``.
DEFAULT_RETENTION = RollupRetention()


def rollup_settings(
    asked: bool, retention: RollupRetention | None, fields: Iterable[str]
) -> tuple[bool, RollupRetention]:
    """A store's ``rollups=`` and ``rollup_retention=``, checked: whether it
    keeps rollups (asked, and its policy keeps every field they count), and
    how long (:data:`DEFAULT_RETENTION` for ``None``)."""
    if retention is not None and not isinstance(retention, RollupRetention):
        raise TypeError(
            f"rollup_retention must be a flask_traffic.rollups.RollupRetention, "
            f"not {type(retention).__name__}."
        )
    return bool(asked) and set(fields) >= ROLLUP_FIELDS, retention or DEFAULT_RETENTION


def site_secret(app: Flask | None, location: str) -> bytes:
    """The site's visitor secret (:func:`visitor_hash`), 32 bytes: a hash of
    the app's ``TRAFFIC_VISITOR_SECRET``, else of its ``SECRET_KEY``, else
    of ``location`` (where the store writes, without a password), so every
    process of a site that writes to one place counts a visitor once."""
    config: Mapping[str, t.Any] = {} if app is None else app.config
    value = config.get("TRAFFIC_VISITOR_SECRET") or config.get("SECRET_KEY") or location
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(bytes(value), digest_size=32).digest()


def visitor_hash(secret: bytes, day: str, address: str | None, user_agent: str | None) -> int:
    """A visitor's 64-bit hash for one UTC day (``day`` is ISO text), keyed
    by ``secret``: the same in every process that has the same secret, so
    a site's workers count a visitor once between them."""
    text = f"{day[:10]}\x00{address}\x00{user_agent}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(text, key=secret[:64], digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rollup_key(value: t.Any) -> str:
    """The key a ``route`` or ``time`` sum is kept under: ``value`` as ASCII JSON."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


class RollupDelta:
    """What a batch of records adds to the rollups, per bucket of each size.

    :param secret: the site's visitor secret (:func:`visitor_hash`).
    :param keep_hashes: keep each hour's and day's visitor hashes themselves
        (:attr:`hashes`) instead of sketches (:attr:`visitors`): for a store
        whose backend counts them (Redis's ``PFADD``).
    :param units: the bucket sizes to add up.
    """

    def __init__(
        self, secret: bytes, *, keep_hashes: bool = False, units: tuple[Unit, ...] = UNITS
    ) -> None:
        self.secret = secret
        self.keep_hashes = keep_hashes
        self.units = units
        #: ``(unit, bucket start) -> visitor hashes`` for hours and days, with
        #: ``keep_hashes``.
        self.hashes: dict[tuple[Unit, datetime], set[int]] = {}
        #: ``(unit, bucket start, part, key) -> weight``.
        self.sums: defaultdict[tuple[Unit, datetime, str, str], float] = defaultdict(float)
        #: ``(unit, bucket start) -> [first, last]``, microseconds since the epoch.
        self.spans: dict[tuple[Unit, datetime], list[int]] = {}
        #: ``(unit, bucket start) -> sketch`` for hours and days.
        self.visitors: dict[tuple[Unit, datetime], HyperLogLog] = {}
        self.records = 0
        #: The ``time`` part's keys (JSON ``[route, index]``) as made, and
        #: what they hold: a fold splits them without decoding them again.
        self.time_keys: dict[str, tuple[str | None, int]] = {}

    def add_rows(self, rows: Iterable[Mapping[str, t.Any]]) -> None:
        """Add rows as ``read()`` gives them (``request_date`` as ISO text).

        Each row is added to its bucket of the finest size only; the
        coarser buckets then add up those (a bucket nests in the next size's),
        a key once a bucket rather than once a row.
        """
        secret, units = self.secret, self.units
        if not units:
            return
        # Per minute of the rows: its bucket of each size, worked out once.
        starts: dict[str, list[tuple[Unit, datetime]]] = {}
        # Keys repeat from row to row: each is made once.
        route_keys: dict[str | None, str] = {}
        time_keys: dict[tuple[str | None, int], str] = {}
        parsed = self.time_keys
        tops = tuple(TOP_FIELDS.items())
        # The finest size's sums, spans and visitor hashes, by bucket start.
        fine: defaultdict[tuple[datetime, str, str], float] = defaultdict(float)
        fine_spans: dict[datetime, list[int]] = {}
        fine_hashes: dict[datetime, set[int]] = {}
        # A visitor's requests of a day share its hash: each worked out once.
        visitor_hashes: dict[tuple[str, str | None, str | None], int] = {}
        # Each finest bucket's buckets of every size.
        nests: dict[datetime, list[tuple[Unit, datetime]]] = {}
        for row in rows:
            date_text = row.get("request_date")
            if date_text is None:
                continue
            self.records += 1
            weight = sample_weight(row.get("request_sample_rate"))
            moment_at = datetime.fromisoformat(date_text)
            buckets = starts.get(date_text[:16])
            if buckets is None:
                minute = bucket_start(moment_at, "minute")
                buckets = starts[date_text[:16]] = [
                    (unit, minute if unit == "minute" else bucket_start(minute, unit))
                    for unit in units
                ]
                nests.setdefault(buckets[0][1], buckets)
            start = buckets[0][1]
            moment = (moment_at - _EPOCH) // _MICROSECOND
            status = row.get("response_status_code")
            route = row.get("request_route")
            route_key = route_keys.get(route)
            if route_key is None:
                route_key = route_keys[route] = rollup_key(route)
            fine[start, "total", ""] += weight
            fine[start, "records", ""] += 1.0
            fine[start, "status", "" if status is None else str(status)] += weight
            fine[start, "route", route_key] += weight
            ms = row.get("response_time")
            if ms is not None:
                index = histogram_index(ms)
                time_key = time_keys.get((route, index))
                if time_key is None:
                    time_key = time_keys[route, index] = rollup_key([route, index])
                    parsed[time_key] = (route, index)
                fine[start, "time", time_key] += weight
            for name, field in tops:
                value = row.get(field)
                if value is not None:
                    fine[start, name, value] += weight
            span = fine_spans.get(start)
            if span is None:
                fine_spans[start] = [moment, moment]
            elif moment < span[0]:
                span[0] = moment
            elif moment > span[1]:
                span[1] = moment
            visitor = (
                date_text[:10],
                row.get("request_remote_address"),
                row.get("request_user_agent"),
            )
            hashed = visitor_hashes.get(visitor)
            if hashed is None:
                hashed = visitor_hashes[visitor] = visitor_hash(secret, *visitor)
            seen = fine_hashes.get(start)
            if seen is None:
                seen = fine_hashes[start] = set()
            seen.add(hashed)
        self._spread(fine, fine_spans, fine_hashes, nests)

    def _spread(
        self,
        fine: Mapping[tuple[datetime, str, str], float],
        spans: Mapping[datetime, list[int]],
        hashes: Mapping[datetime, set[int]],
        nests: Mapping[datetime, list[tuple[Unit, datetime]]],
    ) -> None:
        """Add the finest buckets' sums, spans and visitor hashes to their
        buckets of every size."""
        sums = self.sums
        for (start, part, key), weight in fine.items():
            for unit, outer in nests[start]:
                sums[unit, outer, part, key] += weight
        for start, (low, high) in spans.items():
            for bucket in nests[start]:
                span = self.spans.get(bucket)
                if span is None:
                    self.spans[bucket] = [low, high]
                else:
                    span[0] = min(span[0], low)
                    span[1] = max(span[1], high)
        for start, seen in hashes.items():
            for bucket in nests[start]:
                if bucket[0] not in _VISITOR_UNITS:
                    continue
                if self.keep_hashes:
                    self.hashes.setdefault(bucket, set()).update(seen)
                    continue
                sketch = self.visitors.get(bucket)
                if sketch is None:
                    sketch = self.visitors[bucket] = HyperLogLog()
                for hashed in seen:
                    sketch.add(hashed)


#: How far below the ``TOP``-th weight a value of a top list is kept by
#: :func:`leaders`, besides its slack: more than the summary's ranking
#: rounds weights by (6 places), so a value left out ranks below the
#: ``TOP`` even where rounding ties weights.
LEADER_MARGIN = 1e-5

_K = t.TypeVar("_K")


def leaders(sums: Iterable[tuple[str, _K, float]], slack: float) -> list[tuple[str, _K, float]]:
    """Of a window's ``(part, key, weight)`` sums, those a summary can show:
    all but the values of a top list (``TOP_FIELDS``) weighing less than
    its ``TOP``-th by more than ``slack`` (the records the summary adds
    besides) and :data:`LEADER_MARGIN`. A month holds some 9,000 paths and
    referrers, of which the summary shows ten each; the rest need not be
    decoded and counted."""
    found = list(sums)
    weights: defaultdict[str, list[float]] = defaultdict(list)
    for part, _, weight in found:
        if part in TOP_FIELDS:
            weights[part].append(weight)
    floors = {
        part: heapq.nlargest(TOP, values)[-1] - slack - LEADER_MARGIN
        for part, values in weights.items()
        if len(values) > TOP
    }
    if not floors:
        return found
    return [row for row in found if (floor := floors.get(row[0])) is None or row[2] >= floor]


def feed(
    builder: SummaryBuilder,
    sums: Iterable[tuple[str, str, float]],
    per_bucket: Iterable[tuple[datetime, float]],
    span: tuple[int | None, int | None],
    visitors: float | None,
) -> None:
    """Feed ``builder`` what a window's rollups hold.

    :param sums: ``(part, key, weight)`` summed over the window's buckets.
    :param per_bucket: ``(bucket start, total weight)`` of each bucket.
    :param span: the first and last ``request_date`` (microseconds since the epoch).
    :param visitors: unique visitors, summed over the window's days.
    """
    total = records = 0.0
    tops = builder.tops
    for part, key, weight in sums:
        # The top lists first: most of a window's sums.
        counter = tops.get(part)
        if counter is not None:
            counter[key] += weight
        elif part == "total":
            total += weight
        elif part == "records":
            records += weight
        elif part == "status":
            builder.statuses[int(key) if key else None] += weight
        elif part == "route":
            builder.add_route(json.loads(key), weight)
        elif part == "time":
            route, index = json.loads(key)
            builder.add_route_time(route, index, weight)
    builder.total += total
    if round(total, 6) != round(records, 6):
        builder.sampled = True
    for start, weight in per_bucket:
        builder.add_minute(start.isoformat()[:16], weight)
    first, last = span
    if first is not None and last is not None:
        first_text = _iso(first)
        last_text = _iso(last)
        if builder.first is None or first_text < builder.first:
            builder.first = first_text
        if builder.last is None or last_text > builder.last:
            builder.last = last_text
    if visitors is not None:
        builder.visitor_count = round(visitors) + (builder.visitor_count or 0)


def _iso(microseconds: int) -> str:
    return iso_text(from_microseconds(microseconds))


def count_visitors(
    sketches: Iterable[tuple[Unit, datetime, bytes]],
    extra: Iterable[tuple[datetime, int]] = (),
    *,
    packed: bool = False,
) -> float:
    """Unique visitors of a window from the sketches of its buckets: per UTC
    day, its day sketch, or the union of its hours' (a minute counts with
    its hour), with ``extra`` visitor hashes (``(day, hash)``: of raw
    records read besides) added to their day's; summed over the days, as
    the raw summary counts them. ``packed``: the sketches are as
    :meth:`HyperLogLog.packed` gives them, else registers."""
    days: dict[datetime, HyperLogLog] = {}
    whole: set[datetime] = set()
    for unit, start, registers in sketches:
        day = bucket_start(start, "day")
        if unit == "day":
            days[day] = HyperLogLog.unpacked(registers) if packed else HyperLogLog(registers)
            whole.add(day)
        elif day not in whole:
            sketch = days.setdefault(day, HyperLogLog())
            if packed:
                sketch.merge_packed(registers)
            else:
                sketch.merge(registers)
    for day, hashed in extra:
        days.setdefault(bucket_start(day, "day"), HyperLogLog()).add(hashed)
    return math.fsum(sketch.count() for sketch in days.values())
