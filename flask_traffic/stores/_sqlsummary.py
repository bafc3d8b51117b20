"""The summary of a traffic table, counted by the database: :class:`SummarySQL`."""

from __future__ import annotations

import concurrent.futures
import functools
import math
import typing as t
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import Alias
from sqlalchemy.sql.util import ClauseAdapter

from ..query import Query
from ..summary import (
    HISTOGRAM_MAX_INDEX,
    TOP,
    TOP_FIELDS,
    VISITOR_FIELDS,
    SummaryBuilder,
)
from ._sqlexpr import bucket_start, double, histogram_bucket, utc_truncated
from ._sqltable import TableIO
from ._sqltext import ESCAPED, decode_optional_text, decode_text, exact_text
from .sqlschema import SUMMARY_INDEX_COLUMNS, find_index

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

__all__ = ["SummarySQL"]


def _iso(value: datetime | None) -> str | None:
    # The text TrafficRecord.request_date_iso gives: UTC, microseconds, +00:00.
    return None if value is None else value.isoformat(timespec="microseconds")


class _IndexedBy(Alias):
    """A table read through one index (``INDEXED BY``), or through none
    (``NOT INDEXED``), on SQLite; the plain table elsewhere.

    SQLAlchemy renders no table hints for SQLite, and SQLite's planner, with
    no statistics, picks the summary index wherever it covers a query, also
    where reading the table is faster.
    """

    # The index is not part of the statement cache key: no caching.
    inherit_cache = False
    index: str | None

    @classmethod
    def of(cls, table: sa.Table, index: str | None, name: str | None = None) -> _IndexedBy:
        """``table`` read through ``index`` (through none if it is None),
        named ``name`` in the statement (the table's name by default)."""
        alias = cls._construct(table, name=name or table.name)
        alias.index = index
        return alias


@compiles(_IndexedBy)
def _compile_indexed_by(element: _IndexedBy, compiler: SQLCompiler, **kw: t.Any) -> str:
    visit_alias: Callable[..., str] = compiler.visit_alias
    return visit_alias(element, **kw)


@compiles(_IndexedBy, "sqlite")
def _compile_indexed_by_sqlite(element: _IndexedBy, compiler: SQLCompiler, **kw: t.Any) -> str:
    text = _compile_indexed_by(element, compiler, **kw)
    if kw.get("asfrom"):
        index = element.index
        text += " NOT INDEXED" if index is None else f" INDEXED BY {compiler.preparer.quote(index)}"
    return text


def _exp(value: float) -> float:
    # SQLite's exp() gives infinity where Python's raises.
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _ensure_ln(connection: sa.Connection) -> None:
    # SQLite has ln(), exp() and floor() when built with its math functions
    # (most builds since 3.35); otherwise Python's, which give the same values.
    import sqlite3

    raw: t.Any = connection.connection.driver_connection
    try:
        raw.execute("SELECT ln(1.0), exp(1.0), floor(1.5)").fetchall()
    except sqlite3.OperationalError:  # no such function
        raw.create_function("ln", 1, math.log, deterministic=True)
        raw.create_function("exp", 1, _exp, deterministic=True)
        raw.create_function("floor", 1, math.floor, deterministic=True)


#: The columns the summary counts requests by, besides time: the summary
#: index's first columns, in its order.
_DIMENSIONS = SUMMARY_INDEX_COLUMNS[:4]
# (route, status, browser, platform, weight): one group's weight.
_Counted = tuple[t.Any, t.Any, t.Any, t.Any, float]

# Feeds a SummaryBuilder what one summary query found.
_Feed = Callable[[SummaryBuilder], None]
_Part = Callable[[sa.Connection], _Feed]


class SummarySQL:
    """The summary of the rows a query selects, counted by the database.

    A few queries, each one pass over the selected rows: the time span (two
    index lookups); requests per status, route, ``response_time`` histogram
    bucket, browser and platform together (few distinct combinations, rolled
    up in Python); requests per minute; the top paths and referrers, each
    ranked in the database so only the leaders come back; unique visitors as
    a ``COUNT`` of distinct (UTC day, address, user agent). Weights are
    ``SUM(1 / request_sample_rate)``. Only grouped counts reach Python, never
    a row per request.

    On a SQLite file the queries run two at a time on two connections (SQLite
    sorts each ``GROUP BY`` on one core); elsewhere one after the other on
    one connection.

    On SQLite, where sorting is what a summary costs, two parts step through
    an index instead of sorting: the requests per minute through the
    ``request_date`` index, and, where the table has the summary index (see
    :data:`SUMMARY_INDEX_COLUMNS`) and the window covers at least half of
    the table's time, the status/route/browser/platform counts and the
    ``response_time`` histograms (see :meth:`_indexed_dimensions`). When no
    row in the window was sampled, rows are counted instead of weighed.
    """

    def __init__(self, io: TableIO, query: Query, dialect: Dialect, fields: t.Collection[str]):
        self.dialect = dialect
        self.fields = frozenset(fields)
        self.table = io.table
        self.columns = {name: io.table.c[name] for name in io.written}
        self.conditions = io.conditions(query)
        #: Whether the summary index could answer the query on its own: its
        #: window is on request_date and its tests are on the index's columns.
        self.covered = dialect.name == "sqlite" and set(query.where) <= set(SUMMARY_INDEX_COLUMNS)
        #: The summary index to read the dimensions from, found by :meth:`run`.
        self.index: str | None = None
        #: The index on request_date alone, on SQLite, found by :meth:`run`.
        self.date_index: str | None = None
        self.since = query.since
        self.until = query.until
        self.window = query.since is not None or query.until is not None
        #: Whether the window is narrow enough to find through the date
        #: index (SQLite), found by :meth:`run`.
        self.narrow = False
        #: Whether some selected row was kept by sampling, found by :meth:`run`:
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

    def parts(self) -> list[_Part]:
        """The queries to run, each giving what to feed, in the order that
        finishes soonest on two connections (measured with
        tests/benchmarks/bench_summary_sql.py): the two that step through an
        index (dimensions, minutes) one after the other, each beside a sort.
        Two index walks at once slow each other down by half (every row they
        return takes the GIL, and their page reads contend); a walk beside a
        sort does not."""
        parts: list[_Part] = [self._dimensions if self.index is None else self._indexed_dimensions]
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
            parts.append(self._minutes if self.date_index is None else self._walked_minutes)
        parts.extend(tops[1:])
        parts.append(self._span)
        return parts

    def run(self, engine: sa.Engine, builder: SummaryBuilder) -> None:
        """Run every part and feed ``builder`` (in this thread) what they found."""
        with engine.connect() as connection:
            self.weighted = self._find_weighted(connection)
            if self.dialect.name == "sqlite":
                self._choose_indexes(connection)
        parts = self.parts()
        if self.dialect.name == "sqlite" and isinstance(engine.pool, sa.pool.QueuePool):
            with concurrent.futures.ThreadPoolExecutor(2, "flask-traffic-summary") as pool:
                futures = [pool.submit(self._run_alone, engine, part) for part in parts]
                feeds = [future.result() for future in futures]
        else:
            with engine.connect() as connection:
                feeds = self._run_all(connection, parts)
        for feed in feeds:
            feed(builder)

    def _choose_indexes(self, connection: sa.Connection) -> None:
        # Looked up each time: another process (or a migration) may have
        # added them since the store started.
        if "request_date" in self.columns:
            self.date_index = find_index(connection, self.table, ["request_date"])
        # A window over less than half the table's time is found through
        # the date index; a wider one is read with the rest of the table.
        self.narrow = (
            self.window and self.date_index is not None and self._window_share(connection) < 0.5
        )
        if self.covered and not self.narrow and "request_route" in self.fields:
            # Not for a narrow window: the summary index is read whole
            # whatever the window.
            self.index = find_index(connection, self.table, SUMMARY_INDEX_COLUMNS)

    def _window_share(self, connection: sa.Connection) -> float:
        # The share of the table's time span that the window covers: about
        # the share of its rows, as traffic is spread over time.
        first, last = self._date_range(connection, self.table.c["request_date"])
        if first is None or last is None or last <= first:
            return 1.0
        start = first if self.since is None else max(first, self.since)
        end = last if self.until is None else min(last, self.until)
        share: float = max(end - start, timedelta(0)) / (last - first)
        return share

    def _run_alone(self, engine: sa.Engine, part: _Part) -> _Feed:
        with engine.connect() as connection:
            return self._run_all(connection, [part])[0]

    def _run_all(self, connection: sa.Connection, parts: list[_Part]) -> list[_Feed]:
        if self.dialect.name == "sqlite":
            _ensure_ln(connection)
        return [part(connection) for part in parts]

    # -- building blocks --------------------------------------------------------

    def text(self, name: str) -> sa.ColumnElement[t.Any] | None:
        """The column of a text field, compared by its bytes; None without one."""
        column = self.columns.get(name)
        return None if column is None else exact_text(column)

    def digests(self, keys: dict[str, sa.ColumnElement[t.Any]]) -> list[sa.ColumnElement[t.Any]]:
        """Extra keys that tell long text values apart on MariaDB and MySQL,
        whose GROUP BY and DISTINCT compare only the first
        ``max_sort_length`` bytes (1024) of TEXT: two 10 kB user agents that
        start alike would count as one."""
        if self.dialect.name not in ("mysql", "mariadb"):
            return []
        return [
            sa.func.sha2(expression, 256).label(f"{name}_digest")
            for name, expression in keys.items()
            if isinstance(expression.type, sa.Text)
        ]

    def selected(
        self,
        columns: t.Iterable[sa.ColumnElement[t.Any]],
        *conditions: sa.ColumnElement[bool],
        weights: bool = True,
    ) -> sa.Select[t.Any]:
        """``columns`` of the rows the query selects (and ``conditions``),
        with their weight ``w`` if :attr:`weighted` and ``weights``.

        On SQLite the index to read is named, not left to the planner, which
        has no statistics: a narrow window is found through the date index;
        otherwise the table is read whole, not through the summary index
        (smaller than the table, but its rows come out in an order slower to
        sort), nor through the date index (a lookup per row).
        """
        weight = [self.weight.label("w")] if self.weighted and weights else []
        statement = sa.select(*columns, *weight).where(*self.conditions, *conditions)
        if self.dialect.name == "sqlite":
            source = _IndexedBy.of(self.table, self.date_index if self.narrow else None)
            statement = ClauseAdapter(source).traverse(statement)
        return statement

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
        statement = sa.select(*key_columns, self.total(inner)).group_by(*key_columns)
        # No GROUP BY and no row gives one row of NULL or 0: dropped.
        return [row for row in connection.execute(statement) if row[-1]]

    def through(
        self, index: str | None, name: str
    ) -> tuple[_IndexedBy, list[sa.ColumnElement[bool]], sa.ColumnElement[t.Any]]:
        """The table read through ``index`` under the name ``name``, for the
        index walks: the query's conditions on it, and the weight of a
        group of its rows (see :meth:`total`)."""
        source = _IndexedBy.of(self.table, index, name)
        adapter = ClauseAdapter(source)
        conditions = [adapter.traverse(condition) for condition in self.conditions]
        weight = sa.func.sum(adapter.traverse(self.weight)) if self.weighted else sa.func.count()
        return source, conditions, weight

    def total(self, inner: sa.Subquery) -> sa.ColumnElement[t.Any]:
        """The weight of a group of ``inner``'s rows: their count when no row
        in the window was sampled, which spares computing 1,000,000 weights."""
        return sa.func.sum(inner.c.w) if self.weighted else sa.func.count()

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

    def _dimensions(self, connection: sa.Connection) -> _Feed:
        # Status, route, histogram bucket, browser, platform: each has few
        # distinct values, so one GROUP BY over all of them stays small and
        # costs one sort instead of four.
        keys: dict[str, sa.ColumnElement[t.Any]] = {}
        for name in _DIMENSIONS:
            if name in self.columns:
                column = self.columns[name]
                text = isinstance(column.type, sa.Text)
                keys[name] = exact_text(column) if text else column
        if "request_route" in self.fields and "response_time" in self.columns:
            keys["bucket"] = histogram_bucket(self.columns["response_time"])

        rows = self.grouped(connection, keys)
        counts: list[_Counted] = []
        times: list[tuple[str | None, int | float | None, float]] = []
        for row in rows:
            key = dict(zip(keys, row, strict=False))
            weight = row[-1]
            counts.append((*(key.get(name) for name in _DIMENSIONS), weight))
            times.append((key.get("request_route"), key.get("bucket"), weight))
        return self._dimensions_feed(counts, times)

    def _indexed_dimensions(self, connection: sa.Connection) -> _Feed:
        # What _dimensions counts, read from the summary index without a
        # sort. The counts are grouped in the index's order. The histogram
        # walks each group's response_time range in the index, one bucket at
        # a time: a seek finds the bucket's first time, a seek past its end
        # the next bucket's, so each row is read twice but never sorted.
        # Buckets are made of the rows between a first time and a bound a
        # little (2e-12) below the next bucket's start; if rounding puts a
        # row of the same bucket past that bound, it starts a range of its
        # own, whose bucket is again computed from its first time.
        index = self.index
        below = double(1 - 2e-12)

        def bucket_end(first: sa.ColumnElement[t.Any]) -> sa.ColumnElement[t.Any]:
            start = bucket_start(histogram_bucket(first))
            return sa.func.max(first, start * below)

        def same_group(source: _IndexedBy, group: t.Any) -> list[sa.ColumnElement[bool]]:
            return [source.c[name].is_(group.c[name]) for name in _DIMENSIONS]

        source, conditions, weight = self.through(index, self.table.name)
        keys = [source.c[name] for name in _DIMENSIONS]
        groups = (
            sa.select(
                *keys, weight.label("weight"), sa.func.min(source.c.response_time).label("lo")
            )
            .where(*conditions)
            .group_by(*keys)
            .cte("groups")
        )
        steps = sa.select(groups).cte("steps", recursive=True)
        step = steps.alias("step")
        source, conditions, _ = self.through(index, "following")
        following = (
            sa.select(sa.func.min(source.c.response_time))
            .where(
                *same_group(source, step),
                source.c.response_time > bucket_end(step.c.lo),
                *conditions,
            )
            .scalar_subquery()
        )
        steps = steps.union_all(
            sa.select(*(step.c[name] for name in _DIMENSIONS), sa.null(), following).where(
                step.c.lo.is_not(None)
            )
        )
        source, conditions, weight = self.through(index, "ranged")
        ranged = (
            sa.select(weight)
            .where(
                *same_group(source, steps),
                source.c.response_time >= steps.c.lo,
                source.c.response_time <= bucket_end(steps.c.lo),
                *conditions,
            )
            .scalar_subquery()
        )
        statement = sa.select(
            *(steps.c[name] for name in _DIMENSIONS),
            steps.c.weight,
            histogram_bucket(steps.c.lo),
            ranged,
        )
        written = [name in self.columns for name in _DIMENSIONS]
        counts: list[_Counted] = []
        times: list[tuple[str | None, int | float | None, float]] = []
        for *values, group_weight, bucket, bucket_weight in connection.execute(statement):
            # A column the policy does not write reads as None, as in _dimensions.
            key = [value if kept else None for value, kept in zip(values, written, strict=True)]
            if group_weight:
                counts.append((*key, group_weight))
            if bucket is not None and bucket_weight:
                times.append((key[0], bucket, bucket_weight))
        return self._dimensions_feed(counts, times)

    def _dimensions_feed(
        self,
        counts: list[_Counted],
        times: list[tuple[str | None, int | float | None, float]],
    ) -> _Feed:
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

    def _minutes(self, connection: sa.Connection) -> _Feed:
        minute = utc_truncated(self.columns["request_date"], "minute")
        rows = self.grouped(connection, {"minute": minute})

        def feed(builder: SummaryBuilder) -> None:
            for key, weight in rows:
                if key is not None:
                    builder.add_minute(f"{key[:10]}T{key[11:16]}", weight)

        return feed

    def _walked_minutes(self, connection: sa.Connection) -> _Feed:
        # SQLite: what _minutes counts, stepping through the request_date
        # index a minute at a time instead of sorting every row by minute.
        # The stored text is "YYYY-MM-DD HH:MM:SS.ffffff": a minute's rows
        # come before its "YYYY-MM-DD HH:MM" followed by ";" (after ":").
        def minute(date: sa.ColumnElement[t.Any]) -> sa.ColumnElement[str]:
            return sa.func.substr(date, 1, 16, type_=sa.String)

        source, conditions, _ = self.through(self.date_index, self.table.name)
        steps = (
            sa.select(sa.func.min(source.c.request_date, type_=sa.String).label("first"))
            .where(*conditions)
            .cte("minutes", recursive=True)
        )
        step = steps.alias("step")
        source, conditions, _ = self.through(self.date_index, "following")
        following = (
            sa.select(sa.func.min(source.c.request_date, type_=sa.String))
            .where(source.c.request_date >= minute(step.c.first) + ";", *conditions)
            .scalar_subquery()
        )
        steps = steps.union_all(sa.select(following).where(step.c.first.is_not(None)))
        source, conditions, weight = self.through(self.date_index, "counted")
        counted = (
            sa.select(weight)
            .where(
                source.c.request_date >= steps.c.first,
                source.c.request_date < minute(steps.c.first) + ";",
                *conditions,
            )
            .scalar_subquery()
        )
        rows = [
            row for row in connection.execute(sa.select(minute(steps.c.first), counted)) if row[1]
        ]

        def feed(builder: SummaryBuilder) -> None:
            for key, weight in rows:
                builder.add_minute(f"{key[:10]}T{key[11:16]}", weight)

        return feed

    @staticmethod
    def _date_range(
        connection: sa.Connection, date: sa.ColumnElement[t.Any], *conditions: t.Any
    ) -> tuple[t.Any, t.Any]:
        # The first and last request_date of the rows ``conditions`` select:
        # two scalar subqueries, as each MIN or MAX alone is one index lookup.
        first, last = connection.execute(
            sa.select(
                sa.select(sa.func.min(date)).where(*conditions).scalar_subquery(),
                sa.select(sa.func.max(date)).where(*conditions).scalar_subquery(),
            )
        ).one()
        return first, last

    def _span(self, connection: sa.Connection) -> _Feed:

        date = self.columns.get("request_date")
        if date is None:
            return lambda builder: None
        first, last = self._date_range(connection, date, *self.conditions)

        def feed(builder: SummaryBuilder) -> None:
            builder.set_span(_iso(first), _iso(last), builder.sampled)

        return feed

    def _ranked_top(self, name: str, connection: sa.Connection) -> _Feed:
        # Only the leaders leave the database: the TOP first by (weight,
        # stored text), and every value tied with them whose stored text may
        # not sort as its value does (escaped text starts with U+FFFE). The
        # builder sorts them all by (-weight, value) and keeps TOP.
        value = exact_text(self.columns[TOP_FIELDS[name]])
        digests = self.digests({"value": value})
        inner = self.selected([value.label("value"), *digests], value.is_not(None)).subquery(
            "selected"
        )
        weight = self.total(inner)
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

    def _visitors(self, connection: sa.Connection) -> _Feed:
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
