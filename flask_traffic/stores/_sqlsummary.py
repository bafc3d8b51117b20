"""The summary of a traffic table, counted by the database: :class:`SummarySQL`.

It runs the same queries on every database; the few spellings that differ
are constructs of their own (:mod:`._sqlexpr`, :func:`._sqltext.exact_text`).
SQLite's way of reading through its indexes instead of sorting is a
subclass of its own, in :mod:`._sqlitesummary`.
"""

from __future__ import annotations

import functools
import typing as t
from collections import defaultdict
from collections.abc import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.sql.util import ClauseAdapter

from ..query import Query
from ..summary import (
    HISTOGRAM_MAX_INDEX,
    TOP,
    TOP_FIELDS,
    VISITOR_FIELDS,
    SummaryBuilder,
)
from ._sqlexpr import double, histogram_bucket, utc_truncated
from ._sqltable import TableIO, date_text
from ._sqltext import ESCAPED, decode_optional_text, decode_text, exact_text
from .sqlschema import SUMMARY_INDEX_COLUMNS

__all__ = ["DIMENSIONS", "Counted", "Feed", "MySQLSummarySQL", "Part", "RouteTime", "SummarySQL"]


#: The columns the summary counts requests by, besides time: the summary
#: index's first columns, in its order.
DIMENSIONS = SUMMARY_INDEX_COLUMNS[:4]
#: (route, status, browser, platform, weight): one group's weight.
Counted = tuple[t.Any, t.Any, t.Any, t.Any, float]
#: (route, histogram bucket, weight): the weight of one route's bucket.
RouteTime = tuple[t.Any, t.Any, float]

#: Feeds a SummaryBuilder what one summary query found.
Feed = Callable[[SummaryBuilder], None]
#: One summary query: run on a connection, it gives what to feed.
Part = Callable[[sa.Connection], Feed]


class SummarySQL:
    """The summary of the rows a query selects, counted by the database.

    A few queries (:meth:`parts`), each one pass over the selected rows: the
    time span (two index lookups); requests per status, route,
    ``response_time`` histogram bucket, browser and platform together (few
    distinct combinations, rolled up in Python); requests per minute; the
    top paths and referrers, each ranked in the database so only the leaders
    come back; unique visitors as a ``COUNT`` of distinct (UTC day, address,
    user agent). Weights are ``SUM(1 / request_sample_rate)``; when no row
    in the window was sampled, rows are counted instead of weighed. Only
    grouped counts reach Python, never a row per request. The queries run
    one after the other on one connection.

    Subclasses for one database override the hooks: :meth:`prepare`,
    :meth:`execute`, :meth:`run_parts`, :meth:`source`, :meth:`digests`,
    :meth:`dimensions` and :meth:`minutes`.
    """

    def __init__(self, io: TableIO, query: Query, fields: t.Collection[str]):
        self.fields = frozenset(fields)
        self.table = io.table
        self.columns = {name: io.table.c[name] for name in io.written}
        self.conditions = io.conditions(query)
        #: Whether some selected row was kept by sampling, found by :meth:`prepare`:
        #: only then are weights summed instead of rows counted.
        self.weighted = True
        one = double(1.0)
        rate = self.columns.get("request_sample_rate")
        self.weight: sa.ColumnElement[t.Any] = (
            one
            if rate is None
            else sa.case((rate.is_(None), one), (rate == 0, one), else_=one / rate)
        )

    # -- running ---------------------------------------------------------------

    def parts(self) -> list[Part]:
        """The queries to run, each giving what to feed, in the order that
        finishes soonest where they run two at a time (SQLite, measured with
        tests/benchmarks/bench_summary_sql.py): the two that may step
        through an index (dimensions, minutes) one after the other, each
        beside a sort. Two index walks at once slow each other down by half
        (every row they return takes the GIL, and their page reads contend);
        a walk beside a sort does not."""
        parts: list[Part] = [self.dimensions]
        if self.fields >= VISITOR_FIELDS:
            parts.append(self._visitors)
        tops = [
            functools.partial(self._ranked_top, name)
            for name in ("top_paths", "top_referrers")
            if TOP_FIELDS[name] in self.fields and TOP_FIELDS[name] in self.columns
        ]
        # The bigger sort next, then minutes: it starts when the dimensions
        # end, beside that sort.
        parts.extend(tops[:1])
        if "request_date" in self.columns:
            parts.append(self.minutes)
        parts.extend(tops[1:])
        parts.append(self._span)
        return parts

    def run(self, engine: sa.Engine, builder: SummaryBuilder) -> None:
        """Run every part and feed ``builder`` (in this thread) what they found."""
        with engine.connect() as connection:
            self.prepare(connection)
        for feed in self.execute(engine, self.parts()):
            feed(builder)

    def prepare(self, connection: sa.Connection) -> None:
        """Look up what the parts depend on, before they are made."""
        self.weighted = self._find_weighted(connection)

    def execute(self, engine: sa.Engine, parts: list[Part]) -> list[Feed]:
        """Run ``parts``: one after the other, on one connection."""
        with engine.connect() as connection:
            return self.run_parts(connection, parts)

    def run_parts(self, connection: sa.Connection, parts: Iterable[Part]) -> list[Feed]:
        """Run ``parts`` on ``connection``."""
        return [part(connection) for part in parts]

    # -- building blocks --------------------------------------------------------

    def text(self, name: str) -> sa.ColumnElement[t.Any] | None:
        """The column of a text field, compared by its bytes; None without one."""
        column = self.columns.get(name)
        return None if column is None else exact_text(column)

    def digests(self, keys: dict[str, sa.ColumnElement[t.Any]]) -> list[sa.ColumnElement[t.Any]]:
        """Extra keys to group and count ``keys`` by, where the database tells
        long text values apart only by a prefix; none here."""
        return []

    def selected(
        self,
        columns: t.Iterable[sa.ColumnElement[t.Any]],
        *conditions: sa.ColumnElement[bool],
        weights: bool = True,
    ) -> sa.Select[t.Any]:
        """``columns`` of the rows the query selects (and ``conditions``),
        with their weight ``w`` if :attr:`weighted` and ``weights``, read
        from :meth:`source`."""
        weight = [self.weight.label("w")] if self.weighted and weights else []
        statement = sa.select(*columns, *weight).where(*self.conditions, *conditions)
        source = self.source()
        if source is not None:
            statement = ClauseAdapter(source).traverse(statement)
        return statement

    def source(self) -> sa.FromClause | None:
        """What :meth:`selected` reads the table as; None: the table itself."""
        return None

    def grouped(
        self,
        connection: sa.Connection,
        keys: dict[str, sa.ColumnElement[t.Any]],
    ) -> list[t.Sequence[t.Any]]:
        """The weight of the rows per distinct ``keys``: rows ``(*keys, weight)``.

        The keys are computed in a subquery and grouped by name outside it,
        so expressions with bound parameters group on every database.
        """
        inner = self.selected(
            [
                *(expression.label(name) for name, expression in keys.items()),
                *self.digests(keys),
            ]
        ).subquery("selected")
        # The digests, if any, come after the keys: rows start with the keys.
        key_columns = [column for column in inner.c if column.name != "w"]
        statement = sa.select(*key_columns, self.total(inner.c.get("w"))).group_by(*key_columns)
        # No GROUP BY and no row gives one row of NULL or 0: dropped.
        return [row for row in connection.execute(statement) if row[-1]]

    def total(self, weights: sa.ColumnElement[t.Any] | None) -> sa.ColumnElement[t.Any]:
        """The weight of a group of rows whose weights are ``weights``: their
        count when no row in the window was sampled (:meth:`selected` then
        gives no weights), which spares computing 1,000,000 weights."""
        return sa.func.sum(weights) if self.weighted else sa.func.count()

    def _find_weighted(self, connection: sa.Connection) -> bool:
        # Whether any selected row weighs other than 1 (was kept by sampling).
        rate = self.columns.get("request_sample_rate")
        if rate is None:
            return False
        sampled = sa.select(sa.literal(1)).where(
            *self.conditions, rate.is_not(None), rate != 0, rate != 1
        )
        return connection.execute(sampled.limit(1)).first() is not None

    # -- the parts ---------------------------------------------------------------

    def dimensions(self, connection: sa.Connection) -> Feed:
        """The weight per status, route, browser and platform, and per route
        and ``response_time`` bucket."""
        # Status, route, histogram bucket, browser, platform: each has few
        # distinct values, so one GROUP BY over all of them stays small and
        # costs one sort instead of four.
        keys: dict[str, sa.ColumnElement[t.Any]] = {}
        for name in DIMENSIONS:
            if name in self.columns:
                column = self.columns[name]
                text = isinstance(column.type, sa.Text)
                keys[name] = exact_text(column) if text else column
        if "request_route" in self.fields and "response_time" in self.columns:
            keys["bucket"] = histogram_bucket(self.columns["response_time"])

        rows = self.grouped(connection, keys)
        counts: list[Counted] = []
        times: list[RouteTime] = []
        for row in rows:
            key = dict(zip(keys, row, strict=False))
            weight = row[-1]
            counts.append((*(key.get(name) for name in DIMENSIONS), weight))
            times.append((key.get("request_route"), key.get("bucket"), weight))
        return self.dimensions_feed(counts, times)

    def dimensions_feed(
        self,
        counts: list[Counted],
        times: list[RouteTime],
    ) -> Feed:
        """What feeds the builder ``counts`` (the weight per route, status,
        browser and platform) and ``times`` (per route and bucket)."""
        routes = "request_route" in self.fields
        tops = [
            name
            for name in ("top_browsers", "top_platforms")
            if TOP_FIELDS[name] in self.fields and TOP_FIELDS[name] in self.columns
        ]

        def feed(builder: SummaryBuilder) -> None:
            statuses: defaultdict[int | None, float] = defaultdict(float)
            route_counts: defaultdict[str | None, float] = defaultdict(float)
            buckets: defaultdict[tuple[str | None, int], float] = defaultdict(float)
            top_counts: dict[str, defaultdict[str, float]] = {n: defaultdict(float) for n in tops}
            for route, code, browser, platform, weight in counts:
                statuses[None if code is None else int(code)] += weight
                route_counts[route] += weight
                for name, value in (("top_browsers", browser), ("top_platforms", platform)):
                    if name in top_counts and value is not None:
                        top_counts[name][value] += weight

            for route, index, weight in times:
                if index is not None:
                    buckets[route, min(int(index), HISTOGRAM_MAX_INDEX)] += weight
            for code, weight in statuses.items():
                builder.add_status(code, weight)
            if routes:
                for route, weight in route_counts.items():
                    builder.add_route(decode_optional_text(route), weight)
                for (route, index), weight in buckets.items():
                    builder.add_route_time(decode_optional_text(route), index, weight)
            for name, top in top_counts.items():
                for value, weight in top.items():
                    builder.add_top(name, decode_text(value), weight)
            builder.set_span(builder.first, builder.last, self.weighted)

        return feed

    def minutes(self, connection: sa.Connection) -> Feed:
        """The weight per UTC minute."""
        minute = utc_truncated(self.columns["request_date"], "minute")
        return self.minutes_feed(self.grouped(connection, {"minute": minute}))

    @staticmethod
    def minutes_feed(rows: Iterable[t.Sequence[t.Any]]) -> Feed:
        """What feeds the builder ``rows`` of (``YYYY-MM-DD HH:MM``, weight)."""
        found = [(f"{key[:10]}T{key[11:16]}", weight) for key, weight in rows if key is not None]

        def feed(builder: SummaryBuilder) -> None:
            for minute, weight in found:
                builder.add_minute(minute, weight)

        return feed

    @staticmethod
    def date_range(
        connection: sa.Connection, date: sa.ColumnElement[t.Any], *conditions: t.Any
    ) -> tuple[t.Any, t.Any]:
        """The first and last ``date`` of the rows ``conditions`` select: two
        scalar subqueries, as each MIN or MAX alone is one index lookup."""
        first, last = connection.execute(
            sa.select(
                sa.select(sa.func.min(date)).where(*conditions).scalar_subquery(),
                sa.select(sa.func.max(date)).where(*conditions).scalar_subquery(),
            )
        ).one()
        return first, last

    def _span(self, connection: sa.Connection) -> Feed:
        date = self.columns.get("request_date")
        if date is None:
            return lambda builder: None
        first, last = self.date_range(connection, date, *self.conditions)

        def feed(builder: SummaryBuilder) -> None:
            builder.set_span(date_text(first), date_text(last), builder.sampled)

        return feed

    def _ranked_top(self, name: str, connection: sa.Connection) -> Feed:
        # Only the leaders leave the database: the TOP first by (weight,
        # stored text), and every value tied with them whose stored text may
        # not sort as its value does (escaped text starts with U+FFFE). The
        # builder sorts them all by (-weight, value) and keeps TOP.
        value = exact_text(self.columns[TOP_FIELDS[name]])
        digests = self.digests({"value": value})
        inner = self.selected([value.label("value"), *digests], value.is_not(None)).subquery(
            "selected"
        )
        weight = self.total(inner.c.get("w"))
        keys = [column for column in inner.c if column.name != "w"]
        ranked = (
            sa.select(
                inner.c.value,
                weight.label("weight"),
                sa.func.row_number().over(order_by=(weight.desc(), *keys)).label("n"),
                sa.func.rank().over(order_by=weight.desc()).label("rank"),
            )
            .group_by(*keys)
            .subquery("ranked")
        )
        unordered = ranked.c.value >= ESCAPED
        if digests:
            # Ordered by their first 1024 bytes only, as grouping is.
            unordered = sa.or_(unordered, sa.func.length(ranked.c.value) > 1000)
        statement = sa.select(ranked.c.value, ranked.c.weight).where(
            sa.or_(ranked.c.n <= TOP, sa.and_(ranked.c.rank <= TOP, unordered))
        )
        rows = list(connection.execute(statement))

        def feed(builder: SummaryBuilder) -> None:
            for stored, weight in rows:
                builder.add_top(name, decode_text(stored), weight)

        return feed

    def _visitors(self, connection: sa.Connection) -> Feed:
        date = self.columns.get("request_date")
        count = 0
        if date is not None:
            day = utc_truncated(date, "day")
            address, agent = (
                sa.null() if text is None else text
                for text in (self.text("request_remote_address"), self.text("request_user_agent"))
            )
            keys = {"address": address, "agent": agent}
            columns = [day.label("day"), *(e.label(n) for n, e in keys.items())]
            distinct = (
                self.selected([*columns, *self.digests(keys)], date.is_not(None), weights=False)
                .distinct()
                .subquery("visits")
            )

            found = connection.execute(sa.select(sa.func.count()).select_from(distinct)).scalar()
            count = int(found or 0)
        return lambda builder: builder.set_visitors(count)


class MySQLSummarySQL(SummarySQL):
    """:class:`SummarySQL` on MariaDB and MySQL, whose ``GROUP BY`` and
    ``DISTINCT`` compare only the first ``max_sort_length`` bytes (1024) of
    ``TEXT``: two 10 kB user agents that start alike would count as one."""

    def digests(self, keys: dict[str, sa.ColumnElement[t.Any]]) -> list[sa.ColumnElement[t.Any]]:
        """A SHA-256 of each text key, which tells long values apart."""
        return [
            sa.func.sha2(expression, 256).label(f"{name}_digest")
            for name, expression in keys.items()
            if isinstance(expression.type, sa.Text)
        ]
