"""What the dashboard reads from its store, and what it adds up itself.

Without filters the summary is the store's own :meth:`~flask_traffic.stores.Store.summary`
(which a store may compute in its backend). Filtered, and for the figures
``summary()`` does not give (status classes and p95 per bucket, overall
percentiles, errors grouped), the rows the store selects go through
:class:`~flask_traffic.summary.SummaryBuilder`, so every count, weight and
percentile follows the one rule the store's summary follows.
"""

from __future__ import annotations

import itertools
import typing as t
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

from ..query import Query
from ..stores.base import Store
from ..summary import SummaryBuilder, bucket_unit
from ._params import View

__all__ = ["breakdown", "filtered_summary", "records", "scan_view"]

_FLUSH_TIMEOUT = 10.0
# Rows are grouped per bucket this many at a time, then counted per group.
_CHUNK = 5000
# Length of the ISO 8601 text that names a minute, an hour, a day, and what
# completes it into the bucket's start (as summary() names its buckets).
_PREFIX = {
    "minute": (16, ":00+00:00"),
    "hour": (13, ":00:00+00:00"),
    "day": (10, "T00:00:00+00:00"),
}
#: The fields of the small rows the per-bucket builders count.
_SLIM_FIELDS = ("response_status_code", "response_time", "request_route")
_ERROR_GROUPS = 20


def _query(store: Store, view: View, limit: int | None = None) -> Query:
    return store.query(limit, since=view.since, until=view.until, where=dict(view.where))


def scan_view(
    store: Store, view: View, *, oldest_first: bool = False, limit: int | None = None
) -> Iterator[dict[str, t.Any]]:
    """The rows ``view`` selects (its "is not" filters applied), after a flush."""
    query = _query(store, view, limit)
    store.flush(_FLUSH_TIMEOUT)
    return view.kept(store.scan(query, oldest_first=oldest_first))


def filtered_summary(store: Store, view: View) -> dict[str, t.Any]:
    """``store.summary(since, until)`` when ``view`` has no filter; otherwise
    the same summary, of the rows the filters keep."""
    if not view.is_filtered:
        return store.summary(view.since, view.until)
    query = _query(store, view)
    store.flush(_FLUSH_TIMEOUT)
    builder = SummaryBuilder(query.since, query.until, store.fields)
    builder.add_rows(view.kept(store.scan(query)))
    return builder.result()


def records(store: Store, view: View, limit: int, offset: int) -> list[dict[str, t.Any]]:
    """The newest rows ``view`` selects, skipping ``offset``: ``store.read()``
    itself when nothing is skipped and no "is not" filter is set."""
    if not offset and not view.exclude:
        return store.read(limit, since=view.since, until=view.until, where=dict(view.where))
    rows = scan_view(store, view, limit=offset + limit)
    return list(itertools.islice(rows, offset, offset + limit))


def _slim(row: dict[str, t.Any]) -> dict[str, t.Any]:
    # The route is left out: each builder's one "route" is then its bucket's
    # percentiles; the sample rate keeps sampled records weighted.
    return {
        "response_status_code": row.get("response_status_code"),
        "response_time": row.get("response_time"),
        "request_sample_rate": row.get("request_sample_rate"),
    }


def _figures(builder: SummaryBuilder) -> dict[str, t.Any]:
    result = builder.result()
    routes = result["routes"] or [{"p50": None, "p95": None, "p99": None}]
    return {
        "count": result["total"],
        "status_classes": result["status_classes"],
        "p50": routes[0]["p50"],
        "p95": routes[0]["p95"],
        "p99": routes[0]["p99"],
    }


def _unit(store: Store, view: View, query: Query) -> str:
    """The bucket size ``summary()`` picks for this window: from its ends,
    or from the first and last matching request where it has none."""
    start, end = query.since, query.until
    if start is None or end is None:
        newest = next(scan_view(store, view, limit=1), None)
        if newest is None:
            return "minute"
        if end is None:
            end = datetime.fromisoformat(newest["request_date"])
        if start is None:
            oldest = next(scan_view(store, view, oldest_first=True, limit=1))
            start = datetime.fromisoformat(oldest["request_date"])
    return bucket_unit(start, end)


class _Errors:
    """Requests that raised or answered 5xx, grouped by exception and route."""

    def __init__(self) -> None:
        # 5xx per route: one builder whose "routes" are the routes.
        self.per_route = SummaryBuilder(None, None, _SLIM_FIELDS)
        self.groups: dict[tuple[str | None, str | None], dict[str, t.Any]] = {}
        self.counts: defaultdict[tuple[str | None, str | None], SummaryBuilder] = defaultdict(
            lambda: SummaryBuilder(None, None, _SLIM_FIELDS)
        )

    def add(self, row: dict[str, t.Any], slim: dict[str, t.Any]) -> None:
        route = row.get("request_route")
        status = row.get("response_status_code")
        if status is not None and status >= 500:
            self.per_route.add_rows(({**slim, "request_route": route},))
        key = (row.get("response_exception"), route)
        group = self.groups.get(key)
        date = row.get("request_date")
        if group is None:
            # Rows come newest first: the first one seen is the last.
            self.groups[key] = {
                "exception": key[0],
                "route": key[1],
                "first": date,
                "last": date,
                "sample": row,
            }
        else:
            group["first"] = date
        self.counts[key].add_rows((slim,))

    def result(self) -> list[dict[str, t.Any]]:
        found = []
        for key, group in self.groups.items():
            counted = self.counts[key].result()
            found.append({**group, "count": counted["total"]})
        # Stable: groups were met newest first, and stay so among equal counts.
        found.sort(key=lambda group: -group["count"])
        return found[:_ERROR_GROUPS]

    def route_counts(self) -> list[dict[str, t.Any]]:
        return [
            {"route": entry["route"], "count": entry["count"]}
            for entry in self.per_route.result()["routes"]
        ]


def breakdown(store: Store, view: View) -> dict[str, t.Any]:
    """What the page's chart, cards and error list need beyond ``summary()``.

    ``bucket`` (as ``summary()`` picks it), ``buckets`` (``[{"start",
    "count", "status_classes", "p50", "p95", "p99"}]``, oldest first, each
    bucket with requests), ``overall`` (``count``, ``status_classes`` and
    percentiles of the whole view), ``errors`` (``[{"exception", "route",
    "count", "first", "last", "sample"}]``, the most frequent first: requests
    with an exception or a 5xx status), ``route_errors`` (``[{"route",
    "count"}]``: 5xx responses per route).
    """
    query = _query(store, view)
    store.flush(_FLUSH_TIMEOUT)
    has_date = "request_date" in store.fields
    unit = _unit(store, view, query) if has_date else "minute"
    size, suffix = _PREFIX[unit]
    buckets: defaultdict[str, SummaryBuilder] = defaultdict(
        lambda: SummaryBuilder(None, None, _SLIM_FIELDS)
    )
    overall = SummaryBuilder(None, None, _SLIM_FIELDS)
    errors = _Errors()
    rows = view.kept(store.scan(query))
    while True:
        chunk = list(itertools.islice(rows, _CHUNK))
        if not chunk:
            break
        groups: defaultdict[str, list[dict[str, t.Any]]] = defaultdict(list)
        slims = []
        for row in chunk:
            slim = _slim(row)
            slims.append(slim)
            date = row.get("request_date")
            if date is not None:
                groups[date[:size]].append(slim)
            status = row.get("response_status_code")
            if row.get("response_exception") is not None or (status is not None and status >= 500):
                errors.add(row, slim)
        overall.add_rows(slims)
        for key, group in groups.items():
            buckets[key].add_rows(group)
    return {
        "bucket": unit,
        "buckets": [
            {"start": key + suffix, **_figures(builder)} for key, builder in sorted(buckets.items())
        ],
        "overall": _figures(overall),
        "errors": errors.result(),
        "route_errors": errors.route_counts(),
    }
