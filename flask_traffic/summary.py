"""Summaries of stored traffic: one aggregation, fed by any store.

A store either feeds :class:`SummaryBuilder` its rows (:meth:`~SummaryBuilder.add_rows`,
what the memory and Redis stores do), or its columns (through
:class:`flask_traffic._tally.ColumnTally`, what the file stores do), or counts
it computed itself (the ``add_*`` methods, what the SQL stores do with
``GROUP BY``). The builder turns any of these into the same plain, JSON-ready
dict, so every store's ``summary()`` has one shape, documented in
:meth:`SummaryBuilder.result`.

Percentiles of ``response_time`` come from a histogram with fixed,
logarithmic buckets (:func:`histogram_index`), whichever way the builder is
fed: they are exact to within about 4.5 % of the value, use bounded memory,
and are the same from every store.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import operator
import secrets
import typing as t
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from .query import iso_text

__all__ = [
    "BUCKET_TEXT",
    "HISTOGRAM_BASE_MS",
    "HISTOGRAM_LOG_RATIO",
    "HISTOGRAM_MAX_INDEX",
    "HISTOGRAM_RATIO",
    "SUMMARY_FIELDS",
    "TOP",
    "TOP_FIELDS",
    "VISITOR_FIELDS",
    "SummaryBuilder",
    "bucket_unit",
    "histogram_index",
    "histogram_indexes",
    "histogram_value",
    "percentiles",
    "sample_weight",
    "status_classes",
    "visitor_key",
]

#: The upper bound, in ms, of histogram bucket 0; bucket ``i >= 1`` holds
#: ``[BASE * RATIO**(i-1), BASE * RATIO**i)``.
HISTOGRAM_BASE_MS = 0.01
#: Eight buckets per doubling: a bucket's middle is within ~4.5 % of any
#: value in it.
HISTOGRAM_RATIO = 2.0**0.125
#: The last bucket, which also holds everything slower (~1.3 hours and up).
HISTOGRAM_MAX_INDEX = 240
#: ``ln(HISTOGRAM_RATIO)``, the step between bucket edges on a log scale.
HISTOGRAM_LOG_RATIO = math.log(HISTOGRAM_RATIO)

#: How many entries the ``top_*`` lists hold.
TOP = 10
_PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
#: The ``top_*`` lists of a summary and the field each counts.
TOP_FIELDS = {
    "top_paths": "request_path",
    "top_referrers": "request_referrer",
    "top_browsers": "request_browser",
    "top_platforms": "request_platform",
}
#: The fields unique visitors are counted from.
VISITOR_FIELDS = frozenset({"request_date", "request_remote_address", "request_user_agent"})
#: Every field a summary reads.
SUMMARY_FIELDS = frozenset(
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
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Spans up to these lengths are counted per minute, per hour; longer, per day.
_MINUTES_UP_TO = timedelta(hours=2)
_HOURS_UP_TO = timedelta(days=3)
# Per-process secret: a visitor's key cannot be recomputed from the summary.
_SECRET = secrets.token_bytes(16)

BucketUnit = t.Literal["minute", "hour", "day"]
#: Per bucket size: the length of the ISO 8601 prefix that names a minute,
#: an hour, a day, and what completes it into the bucket's start, as
#: ``requests_per_bucket`` names its buckets.
BUCKET_TEXT: dict[BucketUnit, tuple[int, str]] = {
    "minute": (16, ":00+00:00"),
    "hour": (13, ":00:00+00:00"),
    "day": (10, "T00:00:00+00:00"),
}


def histogram_index(ms: float) -> int:
    """The histogram bucket of a ``response_time`` in milliseconds.

    SQL stores compute the same in the database as
    ``floor(ln(ms / HISTOGRAM_BASE_MS) / ln(HISTOGRAM_RATIO)) + 1``, clamped
    to ``0 .. HISTOGRAM_MAX_INDEX`` (0 for ``ms < HISTOGRAM_BASE_MS``).
    """
    if ms < HISTOGRAM_BASE_MS:
        return 0
    index = math.floor(math.log(ms / HISTOGRAM_BASE_MS) / HISTOGRAM_LOG_RATIO) + 1
    return min(index, HISTOGRAM_MAX_INDEX)


def histogram_indexes(times: list[float]) -> t.Iterable[int]:
    """``map(histogram_index, times)``: the same arithmetic, a step at a time
    over the whole column (each step a ``map`` in C), for column-wise tallies."""
    if not times or min(times) < HISTOGRAM_BASE_MS:
        return map(histogram_index, times)
    logs = map(math.log, map(operator.truediv, times, itertools.repeat(HISTOGRAM_BASE_MS)))
    steps = map(math.floor, map(operator.truediv, logs, itertools.repeat(HISTOGRAM_LOG_RATIO)))
    return map(min, map((1).__add__, steps), itertools.repeat(HISTOGRAM_MAX_INDEX))


def histogram_value(index: int) -> float:
    """The value a bucket stands for: its geometric middle, in ms."""
    if index <= 0:
        return HISTOGRAM_BASE_MS / 2
    return float(HISTOGRAM_BASE_MS * HISTOGRAM_RATIO ** (index - 0.5))


def bucket_unit(first: datetime | None, last: datetime | None) -> BucketUnit:
    """Minute, hour or day buckets for a span from ``first`` to ``last``."""
    if first is None or last is None:
        return "minute"
    span = last - first
    if span <= _MINUTES_UP_TO:
        return "minute"
    if span <= _HOURS_UP_TO:
        return "hour"
    return "day"


def visitor_key(date: str, address: str | None, user_agent: str | None) -> bytes:
    """A visitor's key for one UTC day: a hash of address and user agent,
    salted with the day and a secret of this process, so the summary never
    holds an address and visitors cannot be followed from day to day."""
    salt = hashlib.blake2b(date[:10].encode(), key=_SECRET, digest_size=16).digest()
    text = f"{address}\x00{user_agent}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, key=salt, digest_size=12).digest()


def sample_weight(rate: float | None) -> float:
    """The requests a record kept with ``request_sample_rate`` ``rate``
    stands for: ``1 / rate``, 1 for none."""
    return 1.0 if not rate else 1.0 / rate


class SummaryBuilder:
    """Adds up traffic into the dict ``summary()`` returns.

    :param since: the window's start asked for, or ``None``.
    :param until: the window's end asked for, or ``None``.
    :param fields: the fields the store keeps; parts of the summary that need
        a field the store leaves out are ``None``.
    """

    def __init__(
        self, since: datetime | None, until: datetime | None, fields: Iterable[str]
    ) -> None:
        self.since = since
        self.until = until
        self.fields = frozenset(fields)
        self.total = 0.0
        self.sampled = False
        # Weighted counts: a sampled record counts 1/sample_rate.
        self.statuses: defaultdict[int | None, float] = defaultdict(float)
        self.minutes: defaultdict[str, float] = defaultdict(float)
        self.route_counts: defaultdict[str | None, float] = defaultdict(float)
        self.route_times: defaultdict[str | None, defaultdict[int, float]] = defaultdict(
            lambda: defaultdict(float)
        )
        self.tops: dict[str, defaultdict[str, float]] = {
            name: defaultdict(float) for name in TOP_FIELDS
        }
        self.visitors: set[bytes] = set()
        self.visitor_count: int | None = None
        self.first: str | None = None
        self.last: str | None = None
        #: What the counts were read from, for the result's ``source``; a
        #: store that answers from its rollups says so here.
        self.source: dict[str, t.Any] | None = None

    # -- fed row by row ---------------------------------------------------

    def add_rows(self, rows: Iterable[Mapping[str, t.Any]]) -> None:
        """Count rows as ``read()`` gives them (the query already applied)."""
        tops = [(self.tops[name], field) for name, field in TOP_FIELDS.items()]
        statuses, minutes = self.statuses, self.minutes
        route_counts, route_times = self.route_counts, self.route_times
        visitors = self.visitors
        count_visitors = self.fields >= VISITOR_FIELDS
        total = 0.0
        first, last = self.first, self.last
        for row in rows:
            weight = sample_weight(row.get("request_sample_rate"))
            if weight != 1.0:
                self.sampled = True
            total += weight
            statuses[row.get("response_status_code")] += weight
            date = row.get("request_date")
            if date is not None:
                minutes[date[:16]] += weight
                if first is None or date < first:
                    first = date
                if last is None or date > last:
                    last = date
                if count_visitors:
                    visitors.add(
                        visitor_key(
                            date, row.get("request_remote_address"), row.get("request_user_agent")
                        )
                    )
            route = row.get("request_route")
            route_counts[route] += weight
            ms = row.get("response_time")
            if ms is not None:
                route_times[route][histogram_index(ms)] += weight
            for counter, field in tops:
                value = row.get(field)
                if value is not None:
                    counter[value] += weight
        self.total += total
        self.first, self.last = first, last

    # -- fed with counts (SQL GROUP BY) -----------------------------------

    def add_status(self, code: int | None, weight: float) -> None:
        """``weight`` requests answered with ``code``; adds to the total."""
        self.total += weight
        self.statuses[code] += weight

    def add_minute(self, minute: str, weight: float) -> None:
        """``weight`` requests in the minute named by ISO text (``YYYY-MM-DDTHH:MM``)."""
        self.minutes[minute[:16]] += weight

    def add_route(self, route: str | None, weight: float) -> None:
        """``weight`` requests to ``route``."""
        self.route_counts[route] += weight

    def add_route_time(self, route: str | None, index: int, weight: float) -> None:
        """``weight`` requests to ``route`` in histogram bucket ``index``."""
        self.route_times[route][index] += weight

    def add_top(self, name: str, value: str, weight: float) -> None:
        """``weight`` requests with ``value``; ``name`` is ``"top_paths"``,
        ``"top_referrers"``, ``"top_browsers"`` or ``"top_platforms"``."""
        self.tops[name][value] += weight

    def set_visitors(self, count: int) -> None:
        """Distinct (UTC day, address, user agent), counted by the store."""
        self.visitor_count = count

    def set_span(self, first: str | None, last: str | None, sampled: bool = False) -> None:
        """The first and last ``request_date`` (ISO text) seen, and whether
        any counted record was sampled."""
        self.first, self.last = first, last
        self.sampled = self.sampled or sampled

    # -- the result --------------------------------------------------------

    def result(self) -> dict[str, t.Any]:
        """The summary, a plain JSON-ready dict:

        ``since``, ``until``
            the window asked for (ISO text or ``None``).
        ``first``, ``last``
            the first and last ``request_date`` in it.
        ``total``
            requests (records kept by sampling count ``1/sample_rate`` each).
        ``sampled``
            whether any counted record was sampled, so counts are estimates.
        ``errors``, ``error_rate``
            5xx responses, and their share of ``total`` (0.0 to 1.0).
        ``status_classes``
            ``{"1xx": n, "2xx": n, "3xx": n, "4xx": n, "5xx": n}``.
        ``bucket``, ``requests_per_bucket``
            ``"minute"``, ``"hour"`` or ``"day"`` (from the span), and
            ``[{"start": ISO text, "count": n}]`` for each bucket with requests,
            oldest first.
        ``routes``
            ``[{"route", "count", "p50", "p95", "p99"}]``, busiest first; the
            route ``None`` is requests no route matched; percentiles in ms.
        ``top_paths``, ``top_referrers``, ``top_browsers``, ``top_platforms``
            ``[{"value", "count"}]``, the :data:`TOP` most frequent.
        ``unique_visitors``
            distinct (UTC day, address, user agent), summed over days; never
            scaled for sampling.
        ``source``
            ``{"source": "records"}``, or for a store that answered from its
            rollups ``{"source": "rollups", "granularity": the finest bucket
            size read, "since": ..., "until": ...}`` (the window counted, its
            edges rounded as the store says) and more the store tells.
        ``percentiles``
            how the percentiles were computed.

        A part that needs a field the store leaves out is ``None``.
        """
        fields = self.fields
        total = round(self.total)
        classes = status_classes(self.statuses)
        errors = round(classes["5xx"])
        has_status = "response_status_code" in fields
        first, last = self.first, self.last
        span_start = self.since or (_parse(first) if first else None)
        span_end = self.until or (_parse(last) if last else None)
        unit = bucket_unit(span_start, span_end)
        visitors = self.visitor_count if self.visitor_count is not None else len(self.visitors)
        return {
            "since": None if self.since is None else iso_text(self.since),
            "until": None if self.until is None else iso_text(self.until),
            "first": first,
            "last": last,
            "total": total,
            "sampled": self.sampled,
            "errors": errors if has_status else None,
            "error_rate": (round(errors / total, 4) if total else 0.0) if has_status else None,
            "status_classes": (
                {name: round(weight) for name, weight in classes.items()} if has_status else None
            ),
            "bucket": unit,
            "requests_per_bucket": (self._buckets(unit) if "request_date" in fields else None),
            "routes": self._routes() if "request_route" in fields else None,
            "top_paths": self._top("top_paths"),
            "top_referrers": self._top("top_referrers"),
            "top_browsers": self._top("top_browsers"),
            "top_platforms": self._top("top_platforms"),
            "unique_visitors": (visitors if fields >= VISITOR_FIELDS else None),
            "percentiles": (
                "from a histogram of response_time with 8 logarithmic buckets per "
                "doubling: within about 4.5% of the exact value"
            ),
            "source": self.source if self.source is not None else {"source": "records"},
        }

    def _buckets(self, unit: BucketUnit) -> list[dict[str, t.Any]]:
        size, suffix = BUCKET_TEXT[unit]
        rolled: defaultdict[str, float] = defaultdict(float)
        for minute, weight in self.minutes.items():
            rolled[minute[:size]] += weight
        return [
            {"start": key + suffix, "count": round(weight)}
            for key, weight in sorted(rolled.items())
            if round(weight)
        ]

    def _routes(self) -> list[dict[str, t.Any]]:
        rows = []
        for route, weight in self.route_counts.items():
            entry: dict[str, t.Any] = {"route": route, "count": round(weight)}
            entry.update(percentiles(self.route_times.get(route)))
            rows.append(entry)
        rows.sort(key=lambda entry: (-entry["count"], entry["route"] is None, entry["route"] or ""))
        return rows

    def _top(self, name: str) -> list[dict[str, t.Any]] | None:
        if TOP_FIELDS[name] not in self.fields:
            return None
        counts = self.tops[name]
        items: Iterable[tuple[str, float]] = counts.items()
        if len(counts) > TOP:
            # Only the values that may rank (thousands of paths in a month):
            # a weight that rounds to at least the TOP-th largest's.
            floor = round(heapq.nlargest(TOP, counts.values())[-1], 6) - 1e-6
            items = [item for item in items if item[1] >= floor]
        # Weights rounded before ranking: sums of 1/sample_rate added in
        # another order (rollups) differ in the last bits, and a tie must
        # break the same way, by value.
        ranked = sorted(items, key=lambda item: (-round(item[1], 6), item[0]))
        return [{"value": value, "count": round(weight)} for value, weight in ranked[:TOP]]


def status_classes(statuses: Mapping[int | None, float]) -> dict[str, float]:
    """The weights of ``statuses`` (status code -> weight) per class, ``1xx``
    to ``5xx``, not rounded; codes outside 100 to 599 count in none."""
    classes = dict.fromkeys(_STATUS_CLASSES, 0.0)
    for code, weight in statuses.items():
        if code is not None and 100 <= code <= 599:
            classes[f"{code // 100}xx"] += weight
    return classes


def percentiles(histogram: Mapping[int, float] | None) -> dict[str, float | None]:
    """``p50``, ``p95`` and ``p99`` in ms of a ``response_time`` histogram
    (bucket index -> weight); ``None`` each for an empty one."""
    if not histogram:
        return {name: None for name, _ in _PERCENTILES}
    total = sum(histogram.values())
    found: dict[str, float | None] = {}
    ordered = sorted(histogram.items())
    # One walk for the three (a summary has one histogram per route): the
    # running sums are those a walk per percentile would add up.
    wanted = iter(_PERCENTILES)
    name, share = next(wanted)
    running = 0.0
    for index, weight in ordered:
        running += weight
        while running >= share * total:
            found[name] = _ROUNDED_VALUES[index]
            step = next(wanted, None)
            if step is None:
                return found
            name, share = step
    for name, _ in _PERCENTILES:
        found.setdefault(name, _ROUNDED_VALUES[ordered[-1][0]])
    return found


#: ``histogram_value`` of each index, rounded to the microsecond as a
#: summary gives it.
_ROUNDED_VALUES = tuple(
    round(histogram_value(index), 3) for index in range(HISTOGRAM_MAX_INDEX + 1)
)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)
