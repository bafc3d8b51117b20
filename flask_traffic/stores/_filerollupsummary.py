"""Summaries from a file store's rollups (:class:`._filerollups.FileRollups`),
as :mod:`._sqlrollupsummary` does for a table: a window counted per minute
(up to two hours) from the records; any other one, its edges rounded out to
whole hours, from the sidecar's hours and days, with the records of pieces
past their retention and those after the fold positions."""

from __future__ import annotations

import dataclasses
import sqlite3
import typing as t
from datetime import datetime, timezone

from ..query import Query, iso_text
from ..rollups import (
    Piece,
    Unit,
    WindowPlan,
    plan_folded,
)
from ..summary import SummaryBuilder
from ._filerollups import FileRollups, decode_key, head_of, matching, open_files
from ._framing import Snapshot, blocks_forward
from ._rollupparts import add_records, breakdown_records, feed_buckets, records_weight

if t.TYPE_CHECKING:
    from .._breakdown import BreakdownBuilder

__all__ = ["breakdown", "summarize"]

_UTC = timezone.utc
#: A span of dates as stored text, either end open (``None``).
_Range = tuple[str | None, str | None]


def summarize(
    rollups: FileRollups, query: Query, builder: SummaryBuilder
) -> dict[str, t.Any] | None:
    """Feed ``builder`` the window of ``query`` (which has no ``where``),
    its edges rounded out to whole hours (``builder.since``/``until`` say
    so): its hours and days from the rollups; from the raw records, the
    pieces past their retention and every record after the fold positions.
    Returns what the summary says of its source; ``None``, having fed
    nothing, for a window counted per minute, before the first fold or
    while a rebuild runs."""
    return _read(
        rollups, query, lambda connection, plan: _summarize(rollups, connection, plan, builder)
    )


def breakdown(
    rollups: FileRollups, query: Query, builder: BreakdownBuilder
) -> dict[str, t.Any] | None:
    """Feed ``builder`` the window of ``query`` (which has no ``where``) as
    :func:`summarize` reads it: each kept bucket's total, status sums and
    histograms, and the records it does not hold. Returns the source;
    ``None``, having fed nothing, where a summary reads the records."""

    def feed_buckets(connection: sqlite3.Connection, plan: WindowPlan) -> _Feeder:
        if plan.kept:
            test, values = _within(plan.kept)
            for start, part, key, weight in connection.execute(
                f"SELECT start, part, key, weight FROM sums WHERE {test} "
                "AND part IN ('total', 'status')",
                values,
            ):
                builder.add_sum(
                    datetime.fromisoformat(start), part, decode_key(bytes(key)), float(weight)
                )
            for unit, start, first_us, last_us, histograms in connection.execute(
                f"SELECT unit, start, first_us, last_us, histograms FROM buckets WHERE {test}",
                values,
            ):
                start_at = datetime.fromisoformat(start)
                builder.add_bucket(unit, start_at, first_us, last_us, histograms)
        return lambda rows: breakdown_records(builder, rows, plan)

    return _read(rollups, query, feed_buckets)


#: What a summary or a breakdown does with the raw records read besides
#: the buckets it was fed; it returns the source.
_Feeder = t.Callable[[list[dict[str, t.Any]]], dict[str, t.Any]]


def _read(
    rollups: FileRollups,
    query: Query,
    feed_buckets: t.Callable[[sqlite3.Connection, WindowPlan], _Feeder],
) -> dict[str, t.Any] | None:
    """Plan the window of ``query``, let ``feed_buckets`` read its kept
    buckets, then feed what it returns the raw records of the window the
    buckets do not hold; that returns the source. ``None``, having fed
    nothing, where the records are counted instead."""
    connection = rollups.connect(create=False)
    if connection is None:
        return None
    try:
        # One read transaction: the sums and the positions agree.
        with rollups.transaction(connection, "DEFERRED"):
            if not rollups.position(connection) or rollups.rebuilding(connection):
                return None
            first, last = connection.execute(
                "SELECT min(first_us), max(last_us) FROM buckets WHERE unit = 'day'"
            ).fetchone()
            plan = plan_folded(query.since, query.until, first, last, rollups.retention)
            if plan is None:
                # Counted per minute: the records are counted.
                return None
            feeder = feed_buckets(connection, plan)
            window = dataclasses.replace(query, since=plan.since, until=plan.until)
            # Folded records to read again: the expired pieces; the whole
            # window when nothing of it is in the rollups.
            edges: list[_Range] = [
                (iso_text(piece.start), iso_text(piece.end)) for piece in plan.expired
            ]
            if not plan.found:
                edges.append((window.since_iso, window.until_iso))
            rows = _raw_rows(rollups, connection, window, edges)
    finally:
        connection.close()
    return feeder(rows)


def _summarize(
    rollups: FileRollups,
    connection: sqlite3.Connection,
    plan: WindowPlan,
    builder: SummaryBuilder,
) -> _Feeder:
    """Read the kept buckets of ``plan``; return what feeds ``builder``
    them and the records read besides."""
    builder.since = plan.since or builder.since
    builder.until = plan.until or builder.until
    read = _read_rollups(connection, plan) if plan.kept else None

    def feed_records(rows: list[dict[str, t.Any]]) -> dict[str, t.Any]:
        sketches: list[tuple[Unit, datetime, bytes]] = []
        approximate: set[str] = set()
        if read is not None:
            sketches = read.sketches
            approximate = feed_buckets(
                builder, read.sums, decode_key, read.per_bucket, read.buckets, records_weight(rows)
            )
        return add_records(builder, rows, plan, sketches, approximate, rollups.secret, packed=False)

    return feed_records


def _raw_rows(
    rollups: FileRollups, connection: sqlite3.Connection, query: Query, edges: list[_Range]
) -> list[dict[str, t.Any]]:
    """The records of the window after each file's fold position, and the
    folded ones dated within ``edges`` (read from the spans that hold them)."""
    store = rollups.store
    quoted, decode = store.quoted_records, store.decode_block
    keep = query.matches
    files = rollups.file_rows(connection)
    rows: list[dict[str, t.Any]] = []
    with store._files().open_all() as snaps:
        for snap in snaps:
            if snap.size <= snap.start:
                continue
            known = matching(files, snap, head_of(snap))
            offset = snap.start if known is None else max(known[4], snap.start)
            rows.extend(_rows(snap, offset, snap.size, quoted, decode, keep))
        edges = [(low, high) for low, high in edges if low is None or high is None or low < high]
        if edges:
            by_file = open_files(files, snaps)
            tests = " OR ".join(
                "(last >= ? AND first < ?)"
                if low is not None and high is not None
                else "(last >= ?)"
                if low is not None
                else "(first < ?)"
                if high is not None
                else "1"
                for low, high in edges
            )
            values = [value for edge in edges for value in edge if value is not None]

            def within(row: dict[str, t.Any]) -> bool:
                date = row.get("request_date")
                return date is not None and any(
                    (low is None or date >= low) and (high is None or date < high)
                    for low, high in edges
                )

            for file_id, start, end in connection.execute(
                f'SELECT file, start, "end" FROM spans WHERE {tests} ORDER BY id', values
            ):
                held = by_file.get(int(file_id))
                if held is not None:
                    rows.extend(_rows(held, int(start), int(end), quoted, decode, within))
    return rows


def _rows(
    snap: Snapshot,
    start: int,
    end: int,
    quoted: bool,
    decode: t.Callable[[bytes, bytes], list[dict[str, t.Any] | None]],
    keep: t.Callable[[dict[str, t.Any]], bool],
) -> list[dict[str, t.Any]]:
    """The readable records of ``snap`` between ``start`` and ``end`` that ``keep`` keeps."""
    found: list[dict[str, t.Any]] = []
    for block in blocks_forward(snap.fd, start, end, quoted):
        found.extend(row for row in decode(block, snap.header) if row is not None and keep(row))
    return found


class _Rollups(t.NamedTuple):
    """What a summary reads of a window's buckets (:func:`feed_buckets`'s)."""

    sums: list[tuple[str, bytes, float]]
    per_bucket: list[tuple[datetime, float]]
    buckets: list[tuple[int, int, str | None]]
    sketches: list[tuple[Unit, datetime, bytes]]


def _read_rollups(connection: sqlite3.Connection, plan: WindowPlan) -> _Rollups:
    """The sums of the :attr:`~WindowPlan.summed` buckets of ``plan``, and
    the span, histograms and visitor sketches of its ``whole`` ones: fed
    once the weight of the records read besides is known, the top lists'
    slack."""
    test, values = _within(plan.summed)
    totals = connection.execute(
        f"SELECT part, key, sum(weight) FROM sums WHERE {test} AND part != 'total' "
        "GROUP BY part, key",
        values,
    ).fetchall()
    per_bucket = [
        (datetime.fromisoformat(start), float(weight))
        for start, weight in connection.execute(
            f"SELECT start, weight FROM sums WHERE {test} AND part = 'total'", values
        )
    ]
    # Each bucket's row once: its span, visitors and histograms.
    test, values = _within(plan.whole)
    rows = connection.execute(
        f"SELECT unit, start, first_us, last_us, visitors, histograms FROM buckets WHERE {test}",
        values,
    ).fetchall()
    return _Rollups(
        [(str(part), bytes(key), float(weight)) for part, key, weight in totals],
        per_bucket,
        [(first, last, histograms) for _, _, first, last, _, histograms in rows],
        [
            (unit, datetime.fromisoformat(start), bytes(blob))
            for unit, start, _, _, blob, _ in rows
            if blob is not None
        ],
    )


def _within(found: list[Piece]) -> tuple[str, list[str]]:
    """The test of the sums' or buckets' rows of the buckets of ``found``,
    and its values."""
    test = " OR ".join("(unit = ? AND start >= ? AND start < ?)" for _ in found)
    values = [
        value
        for piece in found
        for value in (piece.unit, piece.start.isoformat(), piece.end.isoformat())
    ]
    return f"({test})", values
