"""What the rollups of every store bound the same way, whatever holds them
(SQL tables, Redis hashes): the bucket sizes kept, histograms as one
document per bucket (:mod:`._rolluphistograms`), and top lists cut to their leaders once a bucket is
over (see :mod:`._sqlrollupparts` for why). No backend is imported here."""

from __future__ import annotations

import json
import math
import time
import typing as t
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from ..query import iso_text
from ..rollups import UNITS, Unit, WindowPlan, count_visitors, feed, leaders, visitor_hash
from ..summary import SummaryBuilder, sample_weight
from ._rolluphistograms import feed_histograms

if t.TYPE_CHECKING:
    from .._breakdown import BreakdownBuilder

__all__ = [
    "COMPACTED",
    "KEPT_UNITS",
    "LENGTH",
    "OTHER",
    "TOP_KEPT",
    "WORKER_FOLD_BUDGET",
    "Deadline",
    "Times",
    "add_records",
    "breakdown_records",
    "feed_buckets",
    "is_over",
    "records_weight",
    "rollup_source",
    "split_times",
]

#: The bucket sizes kept: no minutes. At a few requests a second a minute
#: holds about one row per record and path (10 rows a record to fold), and a
#: window short enough to be counted per minute (2 hours) is counted from
#: its records about as fast.
KEPT_UNITS: tuple[Unit, ...] = ("hour", "day")
#: Values of a compacted top list a bucket keeps.
TOP_KEPT = 200
#: The parts compacted once their bucket is over.
COMPACTED = ("top_paths", "top_referrers")
#: What prefixes the part of the weight a compaction folded away.
OTHER = "o:"
#: A bucket is compacted this long after it ends (late records, clock skew).
_GRACE = timedelta(minutes=5)
LENGTH: dict[Unit, timedelta] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}

#: Seconds of folding a worker's pass does at most (and the chunk it is in)
#: before it writes records again: a store with millions of records to fold
#: (new rollups on an old table, a backlog) folds them between batches, and
#: the requests of meanwhile wait in the queue, not dropped.
WORKER_FOLD_BUDGET = 0.5


class Deadline:
    """When a fold given ``budget`` seconds stops (never without one)."""

    __slots__ = ("at",)

    def __init__(self, budget: float | None) -> None:
        self.at = None if budget is None else time.monotonic() + budget

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


#: ``(unit, bucket start) -> {route: {histogram index: weight}}``.
Times = dict[tuple[Unit, datetime], dict[str | None, dict[int, float]]]


def split_times(
    sums: dict[tuple[Unit, datetime, str, str], float],
    parsed: Mapping[str, tuple[str | None, int]] | None = None,
) -> tuple[dict[tuple[Unit, datetime, str, str], float], Times]:
    """A delta's sums without its ``time`` part, and that part per bucket
    and route; ``parsed``: what the ``time`` keys hold, where known
    (:attr:`~flask_traffic.rollups.RollupDelta.time_keys`)."""
    plain: dict[tuple[Unit, datetime, str, str], float] = {}
    times: Times = {}
    known = parsed or {}
    for bucket_key, weight in sums.items():
        unit, start, part, key = bucket_key
        if part != "time":
            plain[bucket_key] = weight
            continue
        found = known.get(key)
        route, index = json.loads(key) if found is None else found
        histogram = times.setdefault((unit, start), {}).setdefault(route, {})
        histogram[index] = histogram.get(index, 0.0) + weight
    return plain, times


def is_over(unit: Unit, start: datetime, now: datetime) -> bool:
    """Whether the hour or day bucket at ``start`` is over and may be
    compacted (a minute holds few requests and never is)."""
    return unit != "minute" and start + LENGTH[unit] + _GRACE <= now


def rollup_source(
    granularity: str | None,
    raw_records: int,
    since: datetime | None,
    until: datetime | None,
    approximate: set[str],
) -> dict[str, t.Any]:
    """What a summary says of where its counts came from: the finest bucket
    size read, the records read besides, and the window counted (its edges
    rounded to hours when it is counted per hour or day), and the top lists
    that are approximate: some bucket of the window kept only its
    :data:`TOP_KEPT` most frequent values."""
    return {
        "source": "rollups",
        "granularity": granularity,
        "raw_records": raw_records,
        "since": None if since is None else iso_text(since),
        "until": None if until is None else iso_text(until),
        "approximate": sorted(approximate),
    }


def records_weight(rows: Iterable[Mapping[str, t.Any]]) -> float:
    """What the records a rollup summary reads besides its buckets weigh:
    a value the buckets rank below a top list can rise into it by no more
    (:func:`~flask_traffic.rollups.leaders`' slack)."""
    return math.fsum(sample_weight(row.get("request_sample_rate")) for row in rows)


_Key = t.TypeVar("_Key")


def feed_buckets(
    builder: SummaryBuilder,
    sums: list[tuple[str, _Key, float]],
    decode: t.Callable[[_Key], str],
    per_bucket: list[tuple[datetime, float]],
    buckets: list[tuple[int, int, str | None]],
    slack: float,
) -> set[str]:
    """Feed ``builder`` a window's rollups as a SQL or file store read them;
    return the top lists some bucket kept only the leaders of.

    :param sums: ``(part, stored key, weight)`` of every part but the total,
        summed over the window's buckets; of the top lists only the values
        that can rank when records weighing up to ``slack`` are added are
        decoded (:func:`~flask_traffic.rollups.leaders`).
    :param per_bucket: ``(bucket start, total weight)`` of each bucket.
    :param buckets: ``(first_us, last_us, histograms)`` of the buckets the
        histograms and span are read from.
    """
    span = (
        min((int(first) for first, _, _ in buckets), default=None),
        max((int(last) for _, last, _ in buckets), default=None),
    )
    feed_histograms(builder, (histograms for _, _, histograms in buckets))
    weights = [(part, decode(key), weight) for part, key, weight in leaders(sums, slack)]
    weights.append(("total", "", math.fsum(weight for _, weight in per_bucket)))
    feed(builder, weights, per_bucket, span, None)
    return {part[len(OTHER) :] for part, _, weight in sums if part.startswith(OTHER) and weight}


def add_records(
    builder: SummaryBuilder,
    rows: list[dict[str, t.Any]],
    plan: WindowPlan,
    sketches: list[tuple[Unit, datetime, bytes]],
    approximate: set[str],
    secret: bytes,
    *,
    packed: bool,
) -> dict[str, t.Any]:
    """Feed ``builder`` the records a rollup summary of the window ``plan``
    read besides the sums (``rows``), count the window's visitors, and say
    where it all came from.

    With no sketch in the window, the records' visitors are counted exactly;
    otherwise each record's visitor joins its day's sketch, so a visitor
    seen in both is counted once.

    :param packed: the sketches are as :meth:`~flask_traffic.rollups.HyperLogLog.packed` gives them.
    """
    since, until = plan.since, plan.until
    builder.add_rows(rows)
    if not sketches:
        return rollup_source(None, len(rows), since, until, approximate)
    extra = [
        (
            datetime.fromisoformat(row["request_date"]),
            visitor_hash(
                secret,
                row["request_date"],
                row.get("request_remote_address"),
                row.get("request_user_agent"),
            ),
        )
        for row in rows
        if row.get("request_date") is not None
    ]
    builder.visitor_count = round(count_visitors(sketches, extra, packed=packed))
    finest = min((UNITS.index(piece.unit) for piece in plan.found), default=0)
    return rollup_source(UNITS[finest], len(rows), since, until, approximate)


def breakdown_records(
    builder: BreakdownBuilder, rows: list[dict[str, t.Any]], plan: WindowPlan
) -> dict[str, t.Any]:
    """Feed ``builder`` the records a breakdown from rollups read besides
    the buckets (``rows``: after the fold position, or of pieces past their
    retention), set its window to the one counted, and say where it all
    came from, as a summary does."""
    builder.since, builder.until = plan.since, plan.until
    builder.add_rows(rows)
    return rollup_source(builder.granularity, len(rows), plan.since, plan.until, set())
