"""What the dashboard reads from its store, and what it adds up itself.

Without filters the summary is the store's own :meth:`~flask_traffic.stores.Store.summary`
(which a store may compute in its backend). Filtered, and for the figures
``summary()`` does not give (status classes and p95 per bucket, overall
percentiles, errors grouped), the rows the store selects go through
:class:`~flask_traffic.summary.SummaryBuilder` and
:class:`~flask_traffic._breakdown.BreakdownBuilder`, so every count, weight
and percentile follows the one rule the store's summary follows. Without
filters, a store that keeps rollups feeds the breakdown's buckets from
them, and only its failed requests are read (:func:`breakdown`).
"""

from __future__ import annotations

import dataclasses
import itertools
import typing as t
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

from .._breakdown import BreakdownBuilder
from ..query import Query, is_error
from ..rollups import Unit
from ..stores.base import Store
from ..summary import SummaryBuilder, bucket_unit, sample_weight
from ._params import View

__all__ = ["breakdown", "filtered_summary", "records", "scan_view"]

_FLUSH_TIMEOUT = 10.0
# Rows are counted this many at a time.
_CHUNK = 5000
#: The fields of the small rows the error groups' builders count.
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
    # The route is left out: each error group's builder then counts one
    # "route"; the sample rate keeps sampled records weighted.
    return {
        "response_status_code": row.get("response_status_code"),
        "response_time": row.get("response_time"),
        "request_sample_rate": row.get("request_sample_rate"),
    }


def _unit(store: Store, view: View, query: Query) -> Unit:
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
        self.groups: dict[tuple[str | None, str | None], dict[str, t.Any]] = {}
        # Weights summed per group; the 5xx rows kept to count per route at
        # the end, in one builder call rather than one a row.
        self.weights: defaultdict[tuple[str | None, str | None], float] = defaultdict(float)
        self.server_errors: list[dict[str, t.Any]] = []

    def add(self, row: dict[str, t.Any], slim: dict[str, t.Any]) -> None:
        route = row.get("request_route")
        status = row.get("response_status_code")
        if status is not None and status >= 500:
            self.server_errors.append({**slim, "request_route": route})
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
        self.weights[key] += sample_weight(slim["request_sample_rate"])

    def result(self) -> list[dict[str, t.Any]]:
        found = [{**group, "count": round(self.weights[key])} for key, group in self.groups.items()]
        # Stable: groups were met newest first, and stay so among equal counts.
        found.sort(key=lambda group: -group["count"])
        return found[:_ERROR_GROUPS]

    def route_counts(self) -> list[dict[str, t.Any]]:
        # 5xx per route: one builder whose "routes" are the routes.
        per_route = SummaryBuilder(None, None, _SLIM_FIELDS)
        per_route.add_rows(self.server_errors)
        return [
            {"route": entry["route"], "count": entry["count"]}
            for entry in per_route.result()["routes"]
        ]


def breakdown(store: Store, view: View) -> dict[str, t.Any]:
    """What the page's chart, cards and error list need beyond ``summary()``.

    ``bucket`` (as ``summary()`` picks it), ``buckets`` (``[{"start",
    "count", "status_classes", "p50", "p95", "p99"}]``, oldest first, each
    bucket with requests), ``overall`` (``count``, ``status_classes`` and
    percentiles of the whole view), ``errors`` (``[{"exception", "route",
    "count", "first", "last", "sample"}]``, the most frequent first: requests
    with an exception or a 5xx status), ``route_errors`` (``[{"route",
    "count"}]``: 5xx responses per route), ``source`` (as a summary's: where
    the figures came from).

    Without a filter, a store that keeps rollups gives the figures per
    bucket and overall from them, for a window counted per hour or day (its
    edges rounded out as its summary rounds them); only the requests that
    failed are then read, for the errors. Otherwise every request of the
    view is read.
    """
    if not view.is_filtered and store.keeps_rollups:
        found = _from_rollups(store, view)
        if found is not None:
            return found
    return _from_records(store, view)


def _from_rollups(store: Store, view: View) -> dict[str, t.Any] | None:
    """The breakdown with its figures from the rollups, and its errors from
    the failed requests of the window they counted; ``None`` where the
    store's summary would count the records."""
    # As summary() does: rollups outlive the records, so the window is not
    # cut to max_age where they are counted.
    query = Query.make(store.fields, None, view.since, view.until)
    store.flush(_FLUSH_TIMEOUT)
    builder = BreakdownBuilder(query.since, query.until)
    source = store.rollup_breakdown(query, builder)
    if source is None:
        return None
    failed = dataclasses.replace(
        store.query(None, since=builder.since, until=builder.until), errors_only=True
    )
    errors = _Errors()
    read = 0
    for row in store.scan(failed):
        read += 1
        # A store may give more than it is asked (errors_only is new to
        # stores written before it): the test is made here too.
        if is_error(row):
            errors.add(row, _slim(row))
    return {
        **builder.result(),
        "errors": errors.result(),
        "route_errors": errors.route_counts(),
        "source": {**source, "error_records": read},
    }


def _from_records(store: Store, view: View) -> dict[str, t.Any]:
    """The breakdown of every request the view selects."""
    query = _query(store, view)
    store.flush(_FLUSH_TIMEOUT)
    has_date = "request_date" in store.fields
    unit = _unit(store, view, query) if has_date else "minute"
    builder = BreakdownBuilder(query.since, query.until, unit)
    errors = _Errors()
    rows = view.kept(store.scan(query))
    while True:
        chunk = list(itertools.islice(rows, _CHUNK))
        if not chunk:
            break
        builder.add_rows(chunk)
        for row in chunk:
            if is_error(row):
                errors.add(row, _slim(row))
    return {
        **builder.result(),
        "errors": errors.result(),
        "route_errors": errors.route_counts(),
        "source": {"source": "records"},
    }
