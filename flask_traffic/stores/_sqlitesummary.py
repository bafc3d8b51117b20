"""SQLite's summary: :class:`SQLiteSummarySQL` reads through indexes
instead of sorting, and runs two queries at a time.

SQLite has no hash aggregation: every ``GROUP BY`` sorts the rows it
groups, on one core, and sorting is what a summary costs. So the queries
run two at a time on two connections, and two parts step through an index
instead of sorting: the requests per minute through the ``request_date``
index, and, where the table has the summary index (see
:data:`~flask_traffic.stores.sqlschema.SUMMARY_INDEX_COLUMNS`) and the
window covers at least half of the table's time, the
status/route/browser/platform counts and the ``response_time`` histograms.
"""

from __future__ import annotations

import concurrent.futures
import math
import typing as t
from collections.abc import Callable, Iterable
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import Alias
from sqlalchemy.sql.util import ClauseAdapter

from ..query import Query
from ._sqlexpr import bucket_start, double, histogram_bucket, utc_truncated
from ._sqlsummary import DIMENSIONS, Counted, Feed, Part, RouteTime, SummarySQL
from ._sqltable import TableIO
from .sqlschema import SUMMARY_INDEX_COLUMNS, find_index

__all__ = ["SQLiteSummarySQL"]


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


def _ensure_math(connection: sa.Connection) -> None:
    # SQLite has ln(), exp() and floor() when built with its math functions
    # (most builds since 3.35); otherwise Python's, which give the same values.
    import sqlite3  # here: a Python built without it still summarizes elsewhere

    raw: t.Any = connection.connection.driver_connection
    try:
        raw.execute("SELECT ln(1.0), exp(1.0), floor(1.5)").fetchall()
    except sqlite3.OperationalError:  # no such function
        raw.create_function("ln", 1, math.log, deterministic=True)
        raw.create_function("exp", 1, _exp, deterministic=True)
        raw.create_function("floor", 1, math.floor, deterministic=True)


class SQLiteSummarySQL(SummarySQL):
    """:class:`~._sqlsummary.SummarySQL` on SQLite (see the module docstring).

    The index each query reads is named, not left to the planner, which has
    no statistics: a narrow window is found through the date index;
    otherwise the table is read whole, not through the summary index
    (smaller than the table, but its rows come out in an order slower to
    sort), nor through the date index (a lookup per row).
    """

    def __init__(self, io: TableIO, query: Query, fields: t.Collection[str]):
        super().__init__(io, query, fields)
        #: Whether the summary index could answer the query on its own: its
        #: window is on request_date and its tests are on the index's columns.
        self.covered = set(query.where) <= set(SUMMARY_INDEX_COLUMNS)
        #: The summary index to read the dimensions from, found by :meth:`prepare`.
        self.index: str | None = None
        #: The index on request_date alone, found by :meth:`prepare`.
        self.date_index: str | None = None
        self.since = query.since
        self.until = query.until
        self.window = query.since is not None or query.until is not None
        #: Whether the window is narrow enough to find through the date
        #: index, found by :meth:`prepare`.
        self.narrow = False

    def prepare(self, connection: sa.Connection) -> None:
        super().prepare(connection)
        self._choose_indexes(connection)

    def execute(self, engine: sa.Engine, parts: list[Part]) -> list[Feed]:
        """Two at a time on two connections, on a SQLite file (an in-memory
        database has one connection)."""
        if not isinstance(engine.pool, sa.pool.QueuePool):
            return super().execute(engine, parts)
        with concurrent.futures.ThreadPoolExecutor(2, "flask-traffic-summary") as pool:
            futures = [pool.submit(self._run_alone, engine, part) for part in parts]
            return [future.result() for future in futures]

    def _run_alone(self, engine: sa.Engine, part: Part) -> Feed:
        with engine.connect() as connection:
            return self.run_parts(connection, [part])[0]

    def run_parts(self, connection: sa.Connection, parts: Iterable[Part]) -> list[Feed]:
        _ensure_math(connection)
        return super().run_parts(connection, parts)

    def source(self) -> sa.FromClause:
        return _IndexedBy.of(self.table, self.date_index if self.narrow else None)

    def dimensions(self, connection: sa.Connection) -> Feed:
        if self.index is None:
            return super().dimensions(connection)
        return self._walked_dimensions(connection)

    def minutes(self, connection: sa.Connection) -> Feed:
        if self.date_index is None:
            return super().minutes(connection)
        return self._walked_minutes(connection)

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
        first, last = self.date_range(connection, self.table.c["request_date"])
        if first is None or last is None or last <= first:
            return 1.0
        start = first if self.since is None else max(first, self.since)
        end = last if self.until is None else min(last, self.until)
        share: float = max(end - start, timedelta(0)) / (last - first)
        return share

    def through(
        self, index: str | None, name: str
    ) -> tuple[_IndexedBy, list[sa.ColumnElement[bool]], sa.ColumnElement[t.Any]]:
        """The table read through ``index`` under the name ``name``, for the
        index walks: the query's conditions on it, and the weight of a
        group of its rows (see :meth:`~SummarySQL.total`)."""
        source = _IndexedBy.of(self.table, index, name)
        adapter = ClauseAdapter(source)
        conditions = [adapter.traverse(condition) for condition in self.conditions]
        weight = self.total(adapter.traverse(self.weight))
        return source, conditions, weight

    def _walked_dimensions(self, connection: sa.Connection) -> Feed:
        # What dimensions() counts, read from the summary index without a
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
            return [source.c[name].is_(group.c[name]) for name in DIMENSIONS]

        source, conditions, weight = self.through(index, self.table.name)
        keys = [source.c[name] for name in DIMENSIONS]
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
            sa.select(*(step.c[name] for name in DIMENSIONS), sa.null(), following).where(
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
            *(steps.c[name] for name in DIMENSIONS),
            steps.c.weight,
            histogram_bucket(steps.c.lo),
            ranged,
        )
        written = [name in self.columns for name in DIMENSIONS]
        counts: list[Counted] = []
        times: list[RouteTime] = []
        for *values, group_weight, bucket, bucket_weight in connection.execute(statement):
            # A column the policy does not write reads as None, as in dimensions().
            key = [value if kept else None for value, kept in zip(values, written, strict=True)]
            if group_weight:
                counts.append((*key, group_weight))
            if bucket is not None and bucket_weight:
                times.append((key[0], bucket, bucket_weight))
        return self.dimensions_feed(counts, times)

    def _walked_minutes(self, connection: sa.Connection) -> Feed:
        # What minutes() counts, stepping through the request_date
        # index a minute at a time instead of sorting every row by minute.
        # The stored text is "YYYY-MM-DD HH:MM:SS.ffffff": a minute's rows
        # come before its "YYYY-MM-DD HH:MM" followed by ";" (after ":").
        def minute(date: sa.ColumnElement[t.Any]) -> sa.ColumnElement[t.Any]:
            return utc_truncated(date, "minute")

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
        rows = connection.execute(sa.select(minute(steps.c.first), counted))
        return self.minutes_feed(row for row in rows if row[1])
