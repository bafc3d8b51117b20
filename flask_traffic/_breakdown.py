"""The figures of the dashboard's breakdown per time bucket: requests,
status classes and ``response_time`` percentiles of each bucket and of the
whole window, added up by one builder whichever way it is fed: with the
records of the window (:meth:`BreakdownBuilder.add_rows`), or with the hour
and day buckets of a store's rollups (:meth:`~BreakdownBuilder.add_sum`,
:meth:`~BreakdownBuilder.add_bucket`) and the records they do not hold.

Both ways count the same weights (``1 / sample_rate`` a record) into the
same histogram buckets (:func:`~flask_traffic.summary.histogram_index`), so
their counts and percentiles are equal. No backend is imported here.
"""

from __future__ import annotations

import operator
import typing as t
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

from .query import iso_text
from .rollups import UNITS, Unit, from_microseconds
from .stores._rolluphistograms import merged_routes
from .summary import (
    BUCKET_TEXT,
    HISTOGRAM_MAX_INDEX,
    bucket_unit,
    histogram_index,
    percentiles,
    sample_weight,
    status_classes,
)

__all__ = ["BreakdownBuilder"]

_UTC = timezone.utc
_SIZE = HISTOGRAM_MAX_INDEX + 1


class _Figures:
    """What one bucket, or the whole window, adds up."""

    __slots__ = ("statuses", "times", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.statuses: defaultdict[int | None, float] = defaultdict(float)
        # A weight per histogram index: a list, so a row adds in one step.
        self.times = [0.0] * _SIZE

    def merge(self, other: _Figures) -> None:
        self.total += other.total
        for code, weight in other.statuses.items():
            self.statuses[code] += weight
        self.times[:] = map(operator.add, self.times, other.times)

    def result(self) -> dict[str, t.Any]:
        histogram = {index: weight for index, weight in enumerate(self.times) if weight}
        classes = status_classes(self.statuses)
        return {
            "count": round(self.total),
            "status_classes": {name: round(weight) for name, weight in classes.items()},
            **percentiles(histogram),
        }


class BreakdownBuilder:
    """Adds up a window's breakdown per bucket.

    :param since: the window's start, or ``None``; a store answering from
        its rollups sets it (and ``until``) to the window it counted.
    :param until: the window's end, or ``None``.
    :param unit: the bucket size, where the caller knows it (the records'
        first and last request are read before them); ``None`` to pick it,
        as ``summary()`` does, from the window, or from the first and last
        request fed where it has no edge. Without it, rows are grouped per
        hour: what rollups are fed in.
    """

    def __init__(
        self, since: datetime | None, until: datetime | None, unit: Unit | None = None
    ) -> None:
        self.since = since
        self.until = until
        self.unit = unit
        self._size = BUCKET_TEXT[unit or "hour"][0]
        self._buckets: dict[str, _Figures] = {}
        self._overall = _Figures()
        self.first: str | None = None
        self.last: str | None = None
        #: The bucket sizes of the rollup buckets fed.
        self.units_fed: set[Unit] = set()

    def _bucket(self, start: datetime) -> _Figures:
        key = start.astimezone(_UTC).isoformat()[: self._size]
        figures = self._buckets.get(key)
        if figures is None:
            figures = self._buckets[key] = _Figures()
        return figures

    def add_rows(self, rows: Iterable[Mapping[str, t.Any]]) -> None:
        """Count rows as ``read()`` gives them (the window already applied)."""
        size, buckets, overall = self._size, self._buckets, self._overall
        statuses, times = overall.statuses, overall.times
        total = 0.0
        first, last = self.first, self.last
        for row in rows:
            weight = sample_weight(row.get("request_sample_rate"))
            status = row.get("response_status_code")
            ms = row.get("response_time")
            index = None if ms is None else histogram_index(ms)
            total += weight
            statuses[status] += weight
            if index is not None:
                times[index] += weight
            date = row.get("request_date")
            if date is None:
                continue
            if first is None or date < first:
                first = date
            if last is None or date > last:
                last = date
            bucket = buckets.get(date[:size])
            if bucket is None:
                bucket = buckets[date[:size]] = _Figures()
            bucket.total += weight
            bucket.statuses[status] += weight
            if index is not None:
                bucket.times[index] += weight
        overall.total += total
        self.first, self.last = first, last

    def add_sum(self, start: datetime, part: str, key: str, weight: float) -> None:
        """A rollup bucket's sum of ``part`` under ``key``: ``total``, or
        ``status`` (the code as text, ``""`` for none); other parts are not
        counted here."""
        if part == "total":
            self._bucket(start).total += weight
            self._overall.total += weight
        elif part == "status":
            code = int(key) if key else None
            self._bucket(start).statuses[code] += weight
            self._overall.statuses[code] += weight

    def add_bucket(
        self,
        unit: Unit,
        start: datetime,
        first_us: int | None,
        last_us: int | None,
        histograms: str | None,
    ) -> None:
        """A rollup bucket's first and last request (microseconds since the
        epoch) and its routes' histograms, one document
        (:mod:`flask_traffic.stores._rolluphistograms`), merged into one."""
        self.units_fed.add(unit)
        for moment in (first_us, last_us):
            if moment is not None:
                text = iso_text(from_microseconds(int(moment)))
                if self.first is None or text < self.first:
                    self.first = text
                if self.last is None or text > self.last:
                    self.last = text
        if histograms is None:
            return
        merged = merged_routes((histograms,))
        bucket = self._bucket(start)
        bucket.times[:] = map(operator.add, bucket.times, merged)
        self._overall.times[:] = map(operator.add, self._overall.times, merged)

    @property
    def granularity(self) -> Unit | None:
        """The finest size of the rollup buckets fed, ``None`` for none."""
        return min(self.units_fed, key=UNITS.index, default=None)

    def result(self) -> dict[str, t.Any]:
        """``bucket`` (``"minute"``, ``"hour"`` or ``"day"``), ``buckets``
        (``[{"start", "count", "status_classes", "p50", "p95", "p99"}]``,
        oldest first, each bucket with requests) and ``overall`` (the same
        figures of the whole window)."""
        unit = self.unit
        if unit is None:
            start = self.since or (None if self.first is None else _parse(self.first))
            end = self.until or (None if self.last is None else _parse(self.last))
            unit = bucket_unit(start, end)
            # Fed per hour: no finer (a rollup window is never counted per
            # minute, its edges are whole hours).
            if UNITS.index(unit) < UNITS.index("hour"):
                unit = "hour"
        size, suffix = BUCKET_TEXT[unit]
        grouped = self._buckets
        if size < self._size:
            # Hours fed, counted per day.
            grouped = {}
            for key, figures in self._buckets.items():
                into = grouped.get(key[:size])
                if into is None:
                    into = grouped[key[:size]] = _Figures()
                into.merge(figures)
        return {
            "bucket": unit,
            "buckets": [
                {"start": key + suffix, **figures.result()}
                for key, figures in sorted(grouped.items())
            ],
            "overall": self._overall.result(),
        }


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)
