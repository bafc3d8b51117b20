"""Counting rows a column at a time for a :class:`~flask_traffic.summary.SummaryBuilder`.

The builder's :meth:`~flask_traffic.summary.SummaryBuilder.add_rows` loops
over rows in Python; :class:`ColumnTally` counts the same blocks of rows with
``Counter`` and ``map`` (loops in C), then hands the builder its counts
through the ``add_*`` methods SQL stores use, so the result is the same.
The file stores summarize through it.
"""

from __future__ import annotations

import itertools
import operator
import typing as t
from collections import Counter

from .summary import TOP_FIELDS, VISITOR_FIELDS, SummaryBuilder, histogram_indexes, visitor_key

__all__ = ["ColumnTally"]

_MINUTE = operator.itemgetter(slice(0, 16))
_DAY = operator.itemgetter(slice(0, 10))


class ColumnTally:
    """Counts blocks of stored rows for a :class:`SummaryBuilder`, as its
    ``add_rows`` would, a column at a time.

    :param fields: the fields the store keeps.
    :param builder: what to feed; call :meth:`finish` once every block is added.
    :param low: the earliest ``request_date`` (stored text) to count, if any.
    :param high: the first ``request_date`` not to count, if any.
    """

    def __init__(
        self, fields: tuple[str, ...], builder: SummaryBuilder, low: str | None, high: str | None
    ) -> None:
        self.fields = fields
        self.builder = builder
        self.low, self.high = low, high
        self.statuses: Counter[t.Any] = Counter()
        self.minutes: Counter[str] = Counter()
        self.routes: Counter[t.Any] = Counter()
        self.route_times: Counter[tuple[t.Any, int]] = Counter()
        self.tops = {name: Counter[t.Any]() for name in TOP_FIELDS}
        self.visitors: set[tuple[str, t.Any, t.Any]] = set()
        self.first: str | None = None
        self.last: str | None = None
        # Whether a visitor's address or user agent is None or holds a NUL.
        self.ambiguous = False
        self.count_visitors = set(fields) >= VISITOR_FIELDS

    def column(self, rows: list[dict[str, t.Any]], name: str) -> list[t.Any]:
        """The values of field ``name`` in ``rows`` (``None`` for a field not kept)."""
        if name not in self.fields:
            return [None] * len(rows)
        return list(map(dict.get, rows, itertools.repeat(name)))

    def add(self, block: list[t.Any]) -> None:
        """Count a block of rows; ``None`` (an unreadable record) is skipped,
        and so are rows outside ``low`` and ``high``."""
        rows: list[dict[str, t.Any]] = (
            [row for row in block if row is not None] if None in block else block
        )
        if not rows:
            return
        dates = self.column(rows, "request_date")
        low, high = self.low, self.high
        if (low is not None or high is not None) and (
            None in dates
            or (low is not None and min(dates) < low)
            or (high is not None and max(dates) >= high)
        ):
            rows = [
                row
                for row, date in zip(rows, dates, strict=True)
                if date is not None
                and (low is None or date >= low)
                and (high is None or date < high)
            ]
            if not rows:
                return
            dates = self.column(rows, "request_date")
        times = self.column(rows, "response_time")
        timed = "response_time" in self.fields
        if (
            self.column(rows, "request_sample_rate").count(None) != len(rows)
            or ("request_date" in self.fields and None in dates)
            or (timed and None in times)
        ):
            # Weighted or incomplete rows: the builder's own loop handles them.
            fields = self.fields
            self.builder.add_rows([{name: row.get(name) for name in fields} for row in rows])
            return
        self.statuses.update(self.column(rows, "response_status_code"))
        routes = self.column(rows, "request_route")
        self.routes.update(routes)
        if timed:
            self.route_times.update(zip(routes, histogram_indexes(times), strict=True))
        for name, field in TOP_FIELDS.items():
            self.tops[name].update(self.column(rows, field))
        if "request_date" in self.fields:
            self.minutes.update(map(_MINUTE, dates))
            first, last = min(dates), max(dates)
            if self.first is None or first < self.first:
                self.first = first
            if self.last is None or last > self.last:
                self.last = last
            if self.count_visitors:
                addresses = self.column(rows, "request_remote_address")
                agents = self.column(rows, "request_user_agent")
                if not self.ambiguous and (
                    None in addresses
                    or None in agents
                    or "\x00" in "".join(addresses)
                    or "\x00" in "".join(agents)
                ):
                    self.ambiguous = True
                self.visitors.update(zip(map(_DAY, dates), addresses, agents, strict=True))

    def finish(self) -> None:
        """Hand the builder what was counted."""
        builder = self.builder
        for code, count in self.statuses.items():
            builder.add_status(code, float(count))
        for minute, count in self.minutes.items():
            builder.add_minute(minute, float(count))
        for route, count in self.routes.items():
            builder.add_route(route, float(count))
        for (route, index), count in self.route_times.items():
            builder.add_route_time(route, index, float(count))
        for name, counter in self.tops.items():
            counter.pop(None, None)
            for value, count in counter.items():
                builder.add_top(name, value, float(count))
        if builder.visitors or builder.visitor_count is not None:
            builder.visitors.update(
                visitor_key(day, address, agent) for day, address, agent in self.visitors
            )
        elif self.count_visitors:
            # Only the count is wanted: hashing every visitor (the costliest
            # step) is skipped. visitor_key hashes the day and the text
            # f"{address}\x00{agent}": distinct texts are distinct keys, and
            # distinct (day, address, agent) are distinct texts unless a value
            # is None or holds a NUL.
            visitors: t.Collection[t.Any] = self.visitors
            if self.ambiguous:
                visitors = {(day, f"{address}\x00{agent}") for day, address, agent in visitors}
            builder.set_visitors(len(visitors))
        first, last = self.first, self.last
        if builder.first is not None and (first is None or builder.first < first):
            first = builder.first
        if builder.last is not None and (last is None or builder.last > last):
            last = builder.last
        builder.set_span(first, last)
