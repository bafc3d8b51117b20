"""The parts of a traffic table's rollups that are not plain sums of one key
each, so that a bucket holds a bounded number of rows whatever the traffic:

- **Histograms.** Per route, its ``response_time`` histogram, as one JSON
  document in the bucket's row of ``<table>_rollup_bucket``, merged by the
  fold (which holds the fold lock, so read, merge and write cannot
  interleave): a summary of 30 days reads 30 documents, where a row per
  route and histogram bucket would be 200,000 rows.
- **Top lists.** Paths and referrers can take any value: once a bucket is
  over (an hour, a day), :func:`compact` keeps its :data:`TOP_KEPT` most
  frequent values and adds up the rest under the part ``"o:<part>"``, which
  a summary reports as its top list being approximate.

Importing this module needs no SQLAlchemy: the file stores' rollups
(:mod:`._filerollups`) use its plain functions too.
"""

from __future__ import annotations

import json
import typing as t
from collections.abc import Iterable
from datetime import datetime, timedelta

from ..rollups import Unit
from ..summary import SummaryBuilder

if t.TYPE_CHECKING:
    import sqlalchemy as sa

    from ._sqlrollups import SQLRollups

__all__ = [
    "COMPACTED",
    "KEPT_UNITS",
    "OTHER",
    "TOP_KEPT",
    "closed",
    "compact",
    "feed_histograms",
    "merge_histograms",
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
_LENGTH: dict[Unit, timedelta] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}

#: ``(unit, bucket start) -> {route as JSON: {histogram index: weight}}``.
Times = dict[tuple[Unit, datetime], dict[str, dict[int, float]]]


def split_times(
    sums: dict[tuple[Unit, datetime, str, str], float],
) -> tuple[dict[tuple[Unit, datetime, str, str], float], Times]:
    """A delta's sums without its ``time`` part, and that part per bucket and route."""
    plain: dict[tuple[Unit, datetime, str, str], float] = {}
    times: Times = {}
    for (unit, start, part, key), weight in sums.items():
        if part != "time":
            plain[unit, start, part, key] = weight
            continue
        route, index = json.loads(key)
        histogram = times.setdefault((unit, start), {}).setdefault(
            json.dumps(route, ensure_ascii=True), {}
        )
        histogram[index] = histogram.get(index, 0.0) + weight
    return plain, times


def merge_histograms(stored: str | None, added: dict[str, dict[int, float]]) -> str | None:
    """A bucket's histograms (JSON ``{route as JSON: [[index, weight], ...]}``)
    with ``added`` added."""
    if not added:
        return stored
    merged: dict[str, dict[int, float]] = {}
    if stored is not None:
        merged = {route: dict(pairs) for route, pairs in json.loads(stored).items()}
    for route, histogram in added.items():
        into = merged.setdefault(route, {})
        for index, weight in histogram.items():
            into[index] = into.get(index, 0.0) + weight
    return json.dumps(
        {route: sorted(histogram.items()) for route, histogram in merged.items()},
        ensure_ascii=True,
        separators=(",", ":"),
    )


def feed_histograms(builder: SummaryBuilder, documents: Iterable[str | None]) -> None:
    """Feed ``builder`` the histograms of some buckets."""
    route_times = builder.route_times
    routes: dict[str, t.Any] = {}
    for document in documents:
        if document is None:
            continue
        for key, pairs in json.loads(document).items():
            route = routes.get(key)
            if route is None:
                route = routes[key] = json.loads(key)
            counts = route_times[route]
            for index, weight in pairs:
                counts[index] += weight


def closed(unit: Unit, start: datetime, now: datetime) -> bool:
    """Whether the bucket is over, to compact: an hour or a day that ended
    more than a few minutes before ``now`` (a minute holds few requests; an
    open bucket still grows)."""
    return unit != "minute" and start + _LENGTH[unit] + _GRACE <= now


def compact(
    rollups: SQLRollups,
    connection: sa.Connection,
    touched: Iterable[tuple[Unit, datetime]],
    now: datetime,
) -> None:
    """Bound the top lists of the hours and days in ``touched`` that are
    over: keep the :data:`TOP_KEPT` most frequent values of each, and add up
    the others under ``"o:<part>"`` (key ``""``)."""
    import sqlalchemy as sa

    sums = rollups.sums
    for unit, start in touched:
        if not closed(unit, start, now):
            continue
        for part in COMPACTED:
            found = connection.execute(
                sa.select(sums.c.key_hash, sums.c.weight)
                .where(sums.c.unit == unit, sums.c.start == start, sums.c.part == part)
                .order_by(sums.c.weight.desc(), sums.c.key_hash)
            ).all()
            if len(found) <= TOP_KEPT:
                continue
            rest = found[TOP_KEPT:]
            hashes = [int(row[0]) for row in rest]
            for i in range(0, len(hashes), 500):
                connection.execute(
                    sums.delete().where(
                        sums.c.unit == unit,
                        sums.c.start == start,
                        sums.c.part == part,
                        sums.c.key_hash.in_(hashes[i : i + 500]),
                    )
                )
            rollups.add_sums(
                connection,
                [(unit, start, OTHER + part, "", float(sum(float(row[1]) for row in rest)))],
            )
