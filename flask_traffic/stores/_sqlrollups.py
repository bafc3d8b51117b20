"""Rollups of a traffic table (:mod:`flask_traffic.rollups`), kept in three
tables beside it, on every database SQLAlchemy speaks:

``<table>_rollup(unit, start, part, key_hash, key, weight)``
    summed weights per bucket and ``(part, key)``; ``key_hash`` (64 bits of
    BLAKE2b) makes the primary key, so keys of any length are indexable
    (MariaDB indexes no ``TEXT``). A bucket over is packed: its sums but
    the few loose parts in one document, rows of the part ``packed``
    (:mod:`._sqlrollupparts`).
``<table>_rollup_bucket(unit, start, first_us, last_us, visitors)``
    per bucket, the first and last ``request_date`` and the visitor sketch.
``<table>_rollup_state(name, position, candidate, candidate_at)``
    the fold position: every row with a ``traffic_id`` up to it is in the
    rollups, none after it.

:class:`SQLRollups` folds rows in order of ``traffic_id``, in transactions
that also move the position; the first statement of each updates the state
row, which locks it (and on SQLite the database) until the commit, so one
process of the site folds at a time and nothing is counted twice. Sums are
additive upserts; the bucket rows are read, merged and written under that
lock.

On databases where several writers insert at once (PostgreSQL, MariaDB) a
row id is taken when a transaction inserts, not when it commits, so a low
id can appear after a higher one has been folded. The fold therefore only
goes up to the highest id seen ``settle`` seconds before (a batch's
transaction lasts milliseconds); SQLite writers take turns, so there it
folds up to the last row.
"""

from __future__ import annotations

import time
import typing as t
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from ..query import Query
from ..rollups import (
    UNITS,
    HyperLogLog,
    RollupDelta,
    RollupRetention,
    Unit,
    bucket_start,
)
from ..summary import SummaryBuilder
from ._rolluphistograms import merge_histograms
from ._rollupparts import KEPT_UNITS, Deadline, Times, is_over
from ._rollupstore import FoldState
from ._sqlfold import fold_chunk, key_hash
from ._sqlinsert import make_upsert
from ._sqlrollupparts import compact, rewrite
from ._sqltable import TableIO
from ._sqltext import encode_text
from .sqlschema import ID_COLUMN, UTCDateTime

if t.TYPE_CHECKING:
    from .._breakdown import BreakdownBuilder

__all__ = ["FOLD_CHUNK", "KEPT_UNITS", "SQLRollups"]

_UTC = timezone.utc
#: Rows folded per transaction.
FOLD_CHUNK = 5000
_STATE = "fold"
# The state row of a rebuild: rows up to ``position`` refolded of those up
# to ``candidate`` (the fold position when it began), from the day whose
# POSIX time is ``candidate_at`` on (all days when NULL).
_REBUILD = "rebuild"
_MINUTE = timedelta(minutes=1)
# How far back a fold looks for buckets over and not packed yet: a site's
# processes stopped for longer leave theirs as rows (exact, slower to read)
# until a rebuild.
_LOOKBACK = timedelta(days=14)
# Rows one fold() folds from which it vacuums after, on PostgreSQL, rather
# than leave its dead rows to autovacuum (a worker's passes, budgeted, fold
# fewer).
_VACUUM_AFTER = 100_000


def _tables(table: sa.Table) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    metadata = sa.MetaData(schema=table.schema)
    sums = sa.Table(
        f"{table.name}_rollup",
        metadata,
        sa.Column("unit", sa.String(6), primary_key=True),
        sa.Column("start", UTCDateTime(timezone=True), primary_key=True),
        sa.Column("part", sa.String(16), primary_key=True),
        sa.Column("key_hash", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("weight", sa.Double, nullable=False),
        # On SQLite, rows kept in primary key order: a window's rows are a
        # few pages read in a row, not a page a row scattered by fold order
        # (a third of a month's summary query).
        sqlite_with_rowid=False,
    )
    buckets = sa.Table(
        f"{table.name}_rollup_bucket",
        metadata,
        sa.Column("unit", sa.String(6), primary_key=True),
        sa.Column("start", UTCDateTime(timezone=True), primary_key=True),
        sa.Column("first_us", sa.BigInteger, nullable=False),
        sa.Column("last_us", sa.BigInteger, nullable=False),
        sa.Column("visitors", sa.LargeBinary, nullable=True),
        # Per route, its response_time histogram (see _rolluphistograms).
        sa.Column("histograms", sa.Text, nullable=True),
    )
    state = sa.Table(
        f"{table.name}_rollup_state",
        metadata,
        sa.Column("name", sa.String(16), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("candidate", sa.BigInteger, nullable=True),
        sa.Column("candidate_at", sa.Double, nullable=True),
    )
    return metadata, sums, buckets, state


class SQLRollups:
    """The rollups of one traffic table.

    :param engine: the store's engine.
    :param io: the table's reader and writer.
    :param secret: the site's visitor secret.
    :param retention: how long each bucket size is kept.
    :param settle: seconds a row id must have been seen before it is folded
        (0 on SQLite).
    """

    def __init__(
        self,
        engine: sa.Engine,
        io: TableIO,
        secret: bytes,
        retention: RollupRetention,
        settle: float,
    ) -> None:
        self.engine = engine
        self.io = io
        self.secret = secret
        self.retention = retention
        self.settle = settle
        metadata, self.sums, self.buckets, self.state = _tables(io.table)
        try:
            metadata.create_all(engine, checkfirst=True)
        except sa.exc.DBAPIError:
            # Another process made them at the same moment: once more, and
            # each table there now is left as it is.
            time.sleep(0.1)
            metadata.create_all(engine, checkfirst=True)
        self._upsert_sums = make_upsert(self.engine.dialect, self.sums, {"weight": "add"})
        self._upsert_buckets = make_upsert(
            self.engine.dialect,
            self.buckets,
            {"first_us": "set", "last_us": "set", "visitors": "set", "histograms": "set"},
        )
        #: Whether the last fold stopped at its budget with more to fold.
        self.unfinished = False

    # -- folding ---------------------------------------------------------------

    def fold(
        self, progress: t.Callable[[int], None] | None = None, budget: float | None = None
    ) -> int:
        """Fold every row written since the last fold, and go on with a
        rebuild left unfinished; return how many rows were folded.

        :param progress: called with the rows of each transaction.
        :param budget: seconds after which to stop, at the end of a chunk
            (:attr:`unfinished` then says so).
        """
        folded = self._fold(progress, budget)
        if folded >= _VACUUM_AFTER:
            # A backlog folded at once (rollups new on an old table, the
            # CLI after an outage) left as many dead rows as a rebuild.
            self._vacuum()
        return folded

    def _fold(self, progress: t.Callable[[int], None] | None, budget: float | None) -> int:
        deadline = Deadline(budget)
        self.unfinished = False
        folded = 0
        for step in (self._fold_chunk, self._rebuild_chunk):
            while True:
                count = step()
                folded += count
                if count and progress is not None:
                    progress(count)
                if count < FOLD_CHUNK:
                    break
                if deadline.passed():
                    self.unfinished = True
                    return folded
        self._compact_closed()
        return folded

    def _compact_closed(self) -> None:
        """Cut and pack the hours and days of the last :data:`_LOOKBACK` that
        are over and still hold rows to pack: those folded while open (by
        any process of the site), and those a fold added to once packed."""
        now = datetime.now(_UTC)
        sums = self.sums
        with self.engine.connect() as connection:
            over = [
                (unit, start)
                for unit in KEPT_UNITS
                for start in connection.execute(
                    sa.select(sums.c.start)
                    .where(
                        sums.c.unit == unit,
                        sums.c.start >= bucket_start(now - _LOOKBACK, unit),
                        sums.c.start < bucket_start(now, unit),
                        # Every bucket of records has a route row until packed.
                        sums.c.part == "route",
                    )
                    .distinct()
                ).scalars()
                if is_over(unit, start, now)
            ]
        if not over:
            return
        with self.engine.begin() as connection:
            self._lock(connection)
            compact(self, connection, over, now)

    def _fold_chunk(self) -> int:
        with self.engine.begin() as connection:
            position, limit = self._lock(connection)
            if limit <= position:
                return 0
            last = self._fold_rows(connection, position, limit, [])
            if last is None:
                return 0
            connection.execute(
                self.state.update().where(self.state.c.name == _STATE).values(position=last[0])
            )
            return last[1]

    def _fold_rows(
        self,
        connection: sa.Connection,
        after: int,
        upto: int,
        conditions: list[sa.ColumnElement[bool]],
    ) -> tuple[int, int] | None:
        """Fold the first :data:`FOLD_CHUNK` rows with an id after ``after``
        and up to ``upto`` that meet ``conditions``, by id; the last one's id
        and how many, or None when there were none."""
        folded = fold_chunk(
            connection, self.io.table, (after, upto), conditions, self.secret, FOLD_CHUNK, self.sums
        )
        if folded is None:
            return None
        delta, times, last, count = folded
        self._apply(connection, delta, times)
        return last, count

    # -- rebuilding ------------------------------------------------------------

    def rebuild(
        self, since: datetime | None = None, progress: t.Callable[[int], None] | None = None
    ) -> int:
        """Drop the rollups from the UTC day of ``since`` on (all of them
        without it) and fold those days' rows again; return how many rows.

        The rows folded so far are refolded transaction by transaction while
        the app keeps writing (its new rows are folded as usual); an
        interrupted rebuild goes on at the next :meth:`fold`. Until it ends,
        summaries are counted from the raw rows.
        """
        day = None if since is None else bucket_start(since, "day")
        with self.engine.begin() as connection:
            position, _ = self._lock(connection)
            for table in (self.sums, self.buckets):
                connection.execute(
                    table.delete().where(*([] if day is None else [table.c.start >= day]))
                )
            state = self.state
            connection.execute(state.delete().where(state.c.name == _REBUILD))
            connection.execute(
                state.insert().values(
                    name=_REBUILD,
                    position=0,
                    candidate=position,
                    candidate_at=None if day is None else day.timestamp(),
                )
            )
        folded = self._fold(progress, None)
        self._vacuum()
        return folded

    def _vacuum(self) -> None:
        """On PostgreSQL, rewrite the rollup tables after a rebuild or a
        backlog's fold (:func:`._sqlrollupparts.rewrite`)."""
        rewrite(self)

    def rebuilding(self, connection: sa.Connection) -> bool:
        """Whether a rebuild is under way (or was interrupted)."""
        return self.rebuild_state(connection) is not None

    def rebuild_state(self, connection: sa.Connection) -> tuple[int, int, float | None] | None:
        """The rebuild under way: the last id refolded, the last id to
        refold, and the POSIX time of the day it rebuilds from (``None``:
        all); ``None`` without a rebuild."""
        state = self.state
        found = connection.execute(
            sa.select(state.c.position, state.c.candidate, state.c.candidate_at).where(
                state.c.name == _REBUILD
            )
        ).first()
        if found is None:
            return None
        day = found[2]
        return int(found[0]), int(found[1] or 0), None if day is None else float(day)

    def _rebuild_chunk(self) -> int:
        state = self.state
        with self.engine.begin() as connection:
            self._lock(connection)
            found = self.rebuild_state(connection)
            if found is None:
                return 0
            done, stop, day = found
            conditions = []
            if day is not None:
                conditions.append(
                    self.io.table.c["request_date"] >= datetime.fromtimestamp(day, _UTC)
                )
            last = self._fold_rows(connection, done, stop, conditions)
            if last is None:
                connection.execute(state.delete().where(state.c.name == _REBUILD))
                return 0
            if last[1] < FOLD_CHUNK:
                # The last of them: the rebuild is done.
                connection.execute(state.delete().where(state.c.name == _REBUILD))
            else:
                connection.execute(
                    state.update().where(state.c.name == _REBUILD).values(position=last[0])
                )
            return last[1]

    def _lock(self, connection: sa.Connection) -> tuple[int, int]:
        """Lock the state row; the fold position and the highest id to fold."""
        state = self.state
        # An update first: it takes the row's lock (the database's on SQLite)
        # that a SELECT would not.
        moved = connection.execute(
            state.update().where(state.c.name == _STATE).values(position=state.c.position)
        ).rowcount
        if not moved:
            connection.execute(state.insert().values(name=_STATE, position=0))
        position, candidate, candidate_at = connection.execute(
            sa.select(state.c.position, state.c.candidate, state.c.candidate_at).where(
                state.c.name == _STATE
            )
        ).one()
        newest = connection.execute(sa.select(sa.func.max(self.io.table.c[ID_COLUMN]))).scalar()
        newest = int(newest or 0)
        if not self.settle:
            return int(position), newest
        now = time.time()
        settled = candidate_at is not None and now - float(candidate_at) >= self.settle
        limit = int(candidate) if settled and candidate is not None else int(position)
        # A new candidate once the settled one is folded, not before: the
        # fold goes on up to it, chunk after chunk.
        if candidate is None or (settled and int(position) >= int(candidate)):
            connection.execute(
                state.update()
                .where(state.c.name == _STATE)
                .values(candidate=newest, candidate_at=now)
            )
        return int(position), limit

    def position(self, connection: sa.Connection) -> int:
        """The fold position: rows after it are not in the rollups."""
        found = connection.execute(
            sa.select(self.state.c.position).where(self.state.c.name == _STATE)
        ).scalar()
        return int(found or 0)

    def fold_state(self) -> FoldState:
        """How far the rollups lag (:func:`._sqlfoldstate.fold_state`)."""
        from ._sqlfoldstate import fold_state

        return fold_state(self)

    def add_sums(
        self, connection: sa.Connection, sums: Iterable[tuple[Unit, datetime, str, str, float]]
    ) -> None:
        """Add ``(unit, start, part, key, weight)`` to the sums."""
        rows = [
            {
                "unit": unit,
                "start": start,
                "part": part,
                "key_hash": key_hash(part, key),
                # Stored as the table's text is: lone surrogates survive.
                "key": encode_text(key),
                "weight": weight,
            }
            for unit, start, part, key, weight in sums
        ]
        if rows:
            self._upsert_sums(connection, rows)

    def _apply(self, connection: sa.Connection, delta: RollupDelta, times: Times) -> None:
        self.add_sums(connection, ((*key, weight) for key, weight in delta.sums.items()))
        touched = list(delta.spans)
        old = self._read_buckets(connection, touched)
        rows = []
        for unit, start in touched:
            first, last = delta.spans[unit, start]
            known = old.get((unit, start))
            sketch = delta.visitors.get((unit, start))
            histograms = None
            if known is not None:
                first, last = min(first, known[0]), max(last, known[1])
                if known[2] is not None:
                    if sketch is None:
                        sketch = HyperLogLog()
                    sketch.merge_packed(known[2])
                histograms = known[3]
            rows.append(
                {
                    "unit": unit,
                    "start": start,
                    "first_us": first,
                    "last_us": last,
                    "visitors": None if sketch is None else sketch.packed(),
                    "histograms": merge_histograms(histograms, times.get((unit, start), {})),
                }
            )
        if rows:
            self._upsert_buckets(connection, rows)
        now = datetime.now(_UTC)
        # Those still open are cut by a later fold's _compact_closed, though
        # no record may land in them by then.
        compact(self, connection, touched, now)

    def _read_buckets(
        self, connection: sa.Connection, keys: list[tuple[Unit, datetime]]
    ) -> dict[tuple[Unit, datetime], tuple[int, int, bytes | None, str | None]]:
        buckets = self.buckets
        found: dict[tuple[Unit, datetime], tuple[int, int, bytes | None, str | None]] = {}
        for unit in UNITS:
            starts = [start for kind, start in keys if kind == unit]
            for i in range(0, len(starts), 500):
                statement = sa.select(
                    buckets.c.start,
                    buckets.c.first_us,
                    buckets.c.last_us,
                    buckets.c.visitors,
                    buckets.c.histograms,
                ).where(buckets.c.unit == unit, buckets.c.start.in_(starts[i : i + 500]))
                for start, first, last, visitors, histograms in connection.execute(statement):
                    found[unit, start] = (int(first), int(last), visitors, histograms)
        return found

    # -- retention ---------------------------------------------------------------

    def retain(self, now: datetime | None = None) -> int:
        """Remove buckets past their size's retention; return how many."""
        now = now or datetime.now(_UTC)
        removed = 0
        with self.engine.begin() as connection:
            for unit in UNITS:
                cutoff = self.retention.cutoff(unit, now)
                if cutoff is None:
                    continue
                for table in (self.sums, self.buckets):
                    result = connection.execute(
                        table.delete().where(table.c.unit == unit, table.c.start < cutoff)
                    )
                    if table is self.buckets:
                        removed += max(result.rowcount, 0)
        return removed

    # -- summaries ---------------------------------------------------------------

    def summarize(self, query: Query, builder: SummaryBuilder) -> dict[str, t.Any] | None:
        """Feed ``builder`` the window of ``query`` from the rollups
        (:func:`._sqlrollupsummary.summarize`); ``None`` before the first fold."""
        from ._sqlrollupsummary import summarize

        return summarize(self, query, builder)

    def breakdown(self, query: Query, builder: BreakdownBuilder) -> dict[str, t.Any] | None:
        """Feed ``builder`` the window of ``query`` from the rollups
        (:func:`._sqlrollupsummary.breakdown`); ``None`` where a summary
        would count the rows."""
        from ._sqlrollupsummary import breakdown

        return breakdown(self, query, builder)
