"""Summaries and the dashboard's breakdown from a traffic table's rollups
(:class:`._sqlrollups.SQLRollups`): the window's whole hours and days from
the rollup tables, the rest from the raw rows."""

from __future__ import annotations

import typing as t
from collections.abc import Iterable
from datetime import datetime, timezone

import sqlalchemy as sa

from ..query import Query
from ..rollups import (
    Piece,
    RollupRetention,
    Unit,
    WindowPlan,
    bucket_start,
    plan_folded,
)
from ..summary import SummaryBuilder
from ._rollupparts import add_records, breakdown_records, feed_buckets, records_weight
from ._sqlrollupparts import read_sums
from ._sqltable import TableIO
from ._sqltext import decode_text
from .sqlschema import ID_COLUMN

if t.TYPE_CHECKING:
    from .._breakdown import BreakdownBuilder
    from ._sqlrollups import SQLRollups

__all__ = ["breakdown", "summarize"]

_UTC = timezone.utc


def summarize(
    rollups: SQLRollups, query: Query, builder: SummaryBuilder
) -> dict[str, t.Any] | None:
    """Feed ``builder`` the window of ``query`` (which has no ``where``):
    its whole minutes from the rollups; from the raw rows, the seconds
    before its first whole minute and after its last one, and every row
    after the fold position. So it counts exactly what the raw summary
    counts, for any window. Returns what the summary says of its source;
    ``None``, having fed nothing, before the first fold (the database
    counts faster than the rows could be read)."""
    with rollups.engine.connect() as connection:
        window = _window(rollups, connection, query)
        if window is None:
            return None
        plan, raw = window
        builder.since = plan.since or builder.since
        builder.until = plan.until or builder.until
        sketches: list[tuple[Unit, datetime, bytes]] = []
        approximate: set[str] = set()
        rows = io_rows(connection, rollups.io, raw)
        if plan.kept:
            slack = records_weight(rows)
            sketches, approximate = _feed_rollups(rollups, connection, builder, plan, slack)
    return add_records(builder, rows, plan, sketches, approximate, rollups.secret, packed=True)


def breakdown(
    rollups: SQLRollups, query: Query, builder: BreakdownBuilder
) -> dict[str, t.Any] | None:
    """Feed ``builder`` the window of ``query`` (which has no ``where``) as
    :func:`summarize` reads it: each kept bucket's total, status sums and
    histograms, and the raw rows it does not hold. Returns the source;
    ``None``, having fed nothing, where a summary reads the records."""
    sums, buckets = rollups.sums, rollups.buckets
    with rollups.engine.connect() as connection:
        window = _window(rollups, connection, query)
        if window is None:
            return None
        plan, raw = window
        if plan.kept:
            for start, part, key, weight in connection.execute(
                sa.select(sums.c.start, sums.c.part, sums.c.key, sums.c.weight).where(
                    _within(sums, plan.kept), sums.c.part.in_(("total", "status"))
                )
            ):
                builder.add_sum(start, part, decode_text(key), float(weight))
            for row in connection.execute(
                sa.select(
                    buckets.c.unit,
                    buckets.c.start,
                    buckets.c.first_us,
                    buckets.c.last_us,
                    buckets.c.histograms,
                ).where(_within(buckets, plan.kept))
            ):
                builder.add_bucket(*row)
        rows = io_rows(connection, rollups.io, raw)
    return breakdown_records(builder, rows, plan)


def _window(
    rollups: SQLRollups, connection: sa.Connection, query: Query
) -> tuple[WindowPlan, list[sa.ColumnElement[bool]]] | None:
    """How the window of ``query`` is read from the rollups, and the
    conditions of the raw rows to read besides (every row after the fold
    position, and the folded ones of pieces past their retention);
    ``None`` where the database counts the raw rows instead: nothing
    folded yet, a rebuild under way, or a window counted per minute."""
    table = rollups.io.table
    date, row_id = table.c["request_date"], table.c[ID_COLUMN]
    position = rollups.position(connection)
    if not position or rollups.rebuilding(connection):
        return None
    first, last = connection.execute(
        sa.select(
            sa.func.min(rollups.buckets.c.first_us), sa.func.max(rollups.buckets.c.last_us)
        ).where(rollups.buckets.c.unit == "day")
    ).one()
    plan = plan_folded(query.since, query.until, first, last, rollups.retention)
    if plan is None:
        return None
    # Nothing of the window folded: all its rows are read.
    raw: list[sa.ColumnElement[bool]] = []
    if plan.found:
        # Folded rows to read again: the pieces past retention.
        edges = [sa.and_(date >= piece.start, date < piece.end) for piece in plan.expired]
        raw = [sa.or_(row_id > position, *edges)]
    if plan.since is not None:
        raw.append(date >= plan.since)
    if plan.until is not None:
        raw.append(date < plan.until)
    return plan, raw


def _within(table: sa.Table, chosen: Iterable[Piece]) -> sa.ColumnElement[bool]:
    """The rows of ``table`` (sums or buckets) of the buckets of ``chosen``."""
    return sa.or_(
        *(
            sa.and_(
                table.c.unit == piece.unit,
                table.c.start >= piece.start,
                table.c.start < piece.end,
            )
            for piece in chosen
        )
    )


def _feed_rollups(
    rollups: SQLRollups,
    connection: sa.Connection,
    builder: SummaryBuilder,
    plan: WindowPlan,
    slack: float,
) -> tuple[list[tuple[Unit, datetime, bytes]], set[str]]:
    """Feed ``builder`` the sums of the :attr:`~WindowPlan.summed` buckets
    of ``plan`` (of the top lists, the values that can rank when records
    weighing up to ``slack`` are added), and the histograms and first and
    last requests of the same records from its ``whole`` ones; return the
    visitor sketches of those, and the top lists some bucket kept only the
    leaders of."""
    sums, buckets = rollups.sums, rollups.buckets
    summed = _within(sums, _packed_pieces(plan.summed, rollups.retention))
    totals = read_sums(connection, sums, summed)
    per_bucket = connection.execute(
        sa.select(sums.c.start, sums.c.weight).where(summed, sums.c.part == "total")
    ).all()
    # Each bucket's row once: its span, visitors and histograms.
    rows = connection.execute(
        sa.select(
            buckets.c.unit,
            buckets.c.start,
            buckets.c.first_us,
            buckets.c.last_us,
            buckets.c.visitors,
            buckets.c.histograms,
        ).where(_within(buckets, plan.whole))
    ).all()
    sketches = [(row[0], row[1], row[4]) for row in rows if row[4] is not None]
    approximate = feed_buckets(
        builder,
        totals,
        decode_text,
        [(start, float(weight)) for start, weight in per_bucket],
        [(row[2], row[3], row[5]) for row in rows],
        slack,
    )
    return sketches, approximate


def _packed_pieces(chosen: list[Piece], retention: RollupRetention) -> list[Piece]:
    """``chosen``, with the UTC day under way as its hours, where those are
    kept: that day is a row a value (every path and referrer of the day so
    far, some 11,000 at 10 million records in 90 days), its hours that are
    over a packed row each (:mod:`._sqlrollupparts`)."""
    now = datetime.now(_UTC)
    today = bucket_start(now, "day")
    cutoff = retention.cutoff("hour", now)
    if cutoff is not None and cutoff > today:
        return chosen
    found = []
    for piece in chosen:
        if piece.unit != "day" or piece.end <= today:
            found.append(piece)
            continue
        if piece.start < today:
            found.append(Piece("day", piece.start, today))
        found.append(Piece("hour", max(piece.start, today), piece.end))
    return found


def io_rows(
    connection: sa.Connection, io: TableIO, conditions: list[sa.ColumnElement[bool]]
) -> list[dict[str, t.Any]]:
    """The rows of ``io``'s table that meet ``conditions``, as ``read()`` gives them."""
    table = io.table
    statement = sa.select(*(table.c[name] for name in io.written)).where(*conditions)
    return io.convert(connection.execute(statement))
