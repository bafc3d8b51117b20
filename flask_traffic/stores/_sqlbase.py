"""What the SQL stores share: :class:`SQLTableStore`."""

from __future__ import annotations

import abc
import functools
import logging
import os
import threading
import typing as t
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from .._fork import after_fork_in_child
from .._health import describe_error
from ..policy import LogPolicy
from ..query import Query
from ..record import TrafficRecord
from ..rollups import ROLLUP_FIELDS, RollupRetention, rollup_settings, site_secret
from ..summary import SummaryBuilder
from .base import RollupKeeper, Store

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    from flask import Flask
    from sqlalchemy import Connection, Engine

    from ._sqlrollups import SQLRollups
    from ._sqltable import SpooledRow, TableIO

__all__ = ["SQLTableStore"]

logger = logging.getLogger("flask_traffic")

# Seconds a row id must have been seen before it is folded, where writers
# insert at once and commit out of id order (PostgreSQL, MariaDB).
_SETTLE_SECONDS = 10.0


def _first_transient(
    error: BaseException, is_transient: t.Callable[[BaseException], bool]
) -> BaseException | None:
    """``error`` or the first of its causes that may pass by itself."""
    seen: BaseException | None = error
    while seen is not None:
        if is_transient(seen):
            return seen
        seen = seen.__cause__
    return None


class SQLTableStore(Store):
    """What SQLStore and SQLORMStore share: one batch insert per export, in
    one transaction on the store's own connection; reading, summarizing
    and retention in the database.

    Subclasses implement :meth:`open_table`.
    """

    _engine: Engine | None
    _io: TableIO | None

    def __init__(
        self,
        log_policy: LogPolicy | None,
        *,
        sync: bool | None,
        name: str | None,
        max_age: timedelta | None,
        max_records: int | None,
        spool: str | os.PathLike[str] | bool | None,
        rollups: bool = True,
        rollup_retention: RollupRetention | None = None,
    ) -> None:
        super().__init__(
            log_policy, sync=sync, name=name, max_age=max_age, max_records=max_records, spool=spool
        )
        #: Whether this store keeps rollups (it needs every field they count).
        self.rollups, self.rollup_retention = rollup_settings(
            rollups, rollup_retention, self.log_policy.enabled_fields
        )
        self._rollup_state: SQLRollups | None = None
        self._visitor_secret = b""
        self._engine = None
        self._io = None
        self._fence: sa.Table | None = None
        self._spooled: SpooledRow | None = None
        # Set by setup() when the database did not answer: finishes it.
        self._open_later: t.Callable[[], tuple[Engine, TableIO]] | None = None
        self._open_lock = threading.Lock()
        after_fork_in_child(self._after_fork_in_child)

    def setup(self, app: Flask) -> None:
        """Open the table; when the database does not answer yet (down,
        restarting, a SQLite file locked by another process starting), say
        so in one line and finish in the worker once it answers, the records
        waiting in the queue meanwhile: the app starts either way.
        Configuration mistakes still raise here."""
        self._visitor_secret = site_secret(app, self._location())
        try:
            self._engine, self._io = self.open_table(app)
        except Exception as exc:
            cause = _first_transient(exc, self.is_transient)
            if cause is None:
                raise
            logger.warning(
                "%s cannot reach its database yet (%s); requests are recorded and wait "
                "in its queue, and the table is made ready when the database answers.",
                self.name,
                describe_error(cause),
            )
            self._open_later = functools.partial(self.open_table, app)

    def is_transient(self, error: BaseException) -> bool:
        """A database that is down, restarting, unreachable, timing out or
        locked: SQLAlchemy's ``OperationalError``, ``InterfaceError`` and
        pool time-outs, and any error after which the connection was found
        dead. Data, integrity and programming errors are not (a value a
        column refuses, text the database's character set cannot hold).
        """
        import sqlalchemy as sa

        if isinstance(error, sa.exc.DBAPIError):
            return error.connection_invalidated or isinstance(
                error, (sa.exc.OperationalError, sa.exc.InterfaceError)
            )
        return isinstance(error, (sa.exc.TimeoutError, sa.exc.DisconnectionError, OSError))

    @abc.abstractmethod
    def open_table(self, app: Flask) -> tuple[Engine, TableIO]:
        """The engine to write through and the :class:`~._sqltable.TableIO`
        of the table, for ``app``: runs once, in :meth:`setup`.

        Raise here, with a sentence that says the fix, for anything that is
        misconfigured.
        """

    def _after_fork_in_child(self) -> None:
        # A pooled connection's socket is shared with the parent after fork
        # (gunicorn --preload): the child must open its own. close=False
        # leaves the parent's connections alone.
        if self._engine is not None:
            self._engine.dispose(close=False)

    def _ready(self) -> tuple[Engine, TableIO]:
        if self._engine is None or self._io is None:
            with self._open_lock:
                if self._open_later is not None and self._io is None:
                    # Raises while the database is still away: the batch
                    # backs off and this runs again at the retry. The
                    # driver's error, not the wrapping "cannot create the
                    # table", so that it is seen as the outage it is.
                    try:
                        self._engine, self._io = self._open_later()
                    except Exception as exc:
                        cause = _first_transient(exc, self.is_transient)
                        if cause is None or cause is exc:
                            raise
                        raise cause from None
                    self._open_later = None
                    logger.warning("%s: its database answers; the table is ready.", self.name)
        if self._engine is None or self._io is None:
            raise RuntimeError(
                f"{self.name} is not set up yet: attach it with Traffic(app, stores=...)."
            )
        return self._engine, self._io

    def export(self, records: Sequence[TrafficRecord]) -> None:
        engine, io = self._ready()
        with engine.begin() as connection:
            self._insert(connection, io, records)

    def _spooled_row(self) -> SpooledRow:
        # The spool keeps the text encoded as the table holds it.
        if self._spooled is None:
            from ._sqltable import spooled_row

            self._spooled = spooled_row(self.log_policy)
        return self._spooled

    def _insert(
        self,
        connection: Connection,
        io: TableIO,
        records: Sequence[TrafficRecord],
        *,
        spooled: bool = False,
    ) -> None:
        # One executemany, which the drivers turn into multi-row inserts or
        # a pipeline.
        if spooled:
            io.write_spooled(connection, records, self._spooled_row())
        else:
            io.write(connection, records, self.log_policy.values)

    def _fence_table(self, engine: Engine, io: TableIO) -> sa.Table:
        """``<table>_spool_fence``: per spool file, how many of its records
        are in the table. Made when a spool is first replayed."""
        if self._fence is None:
            from ._sqltable import make_fence_table

            self._fence = make_fence_table(engine, io.table)
        return self._fence

    def spool_position(self, spool_id: str) -> int:
        engine, io = self._ready()
        fence = self._fence_table(engine, io)
        with engine.connect() as connection:
            found = connection.execute(
                fence.select()
                .with_only_columns(fence.c.records_written)
                .where(fence.c.spool_id == spool_id)
            ).scalar()
        return 0 if found is None else int(found)

    def export_spooled(
        self, records: Sequence[TrafficRecord], spool_id: str, position: int
    ) -> None:
        """The rows and the spool file's row of ``<table>_spool_fence`` in one
        transaction."""
        engine, io = self._ready()
        fence = self._fence_table(engine, io)
        with engine.begin() as connection:
            self._insert(connection, io, records, spooled=True)
            moved = connection.execute(
                fence.update().where(fence.c.spool_id == spool_id).values(records_written=position)
            ).rowcount
            if not moved:
                connection.execute(
                    fence.insert().values(spool_id=spool_id, records_written=position)
                )

    def forget_spool(self, spool_id: str) -> None:
        engine, io = self._ready()
        fence = self._fence_table(engine, io)
        with engine.begin() as connection:
            connection.execute(fence.delete().where(fence.c.spool_id == spool_id))

    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[dict[str, t.Any]]:
        """The rows ``query`` selects, newest (or oldest) first, by ``traffic_id``.

        One ``SELECT`` with the window on the indexed ``request_date`` and
        the ``where`` tests in its ``WHERE`` and ``query.limit`` as its
        ``LIMIT``, streamed in chunks: exporting millions of rows does not
        hold them all in memory. :meth:`read` and :meth:`fetch` come here.
        """
        engine, io = self._ready()
        return io.scan(engine, query, oldest_first)

    def summarize(self, query: Query, builder: SummaryBuilder) -> None:
        """Count in the database: a few ``GROUP BY`` queries whose grouped
        counts feed ``builder``; no row per request reaches Python."""
        from ._sqlitesummary import SQLiteSummarySQL
        from ._sqlsummary import MySQLSummarySQL, SummarySQL

        rollups = None if query.where else self._rollup_tables()
        if rollups is not None:
            builder.source = rollups.summarize(query, builder)
            if builder.source is not None:
                return
            query = self.summarize_records(query, builder)
        engine, io = self._ready()
        # The databases that count differently, by SQLAlchemy's dialect name.
        kinds = {"sqlite": SQLiteSummarySQL, "mysql": MySQLSummarySQL, "mariadb": MySQLSummarySQL}
        kind = kinds.get(engine.dialect.name, SummarySQL)
        kind(io, query, self.fields).run(engine, builder)

    def _location(self) -> str:
        # What every process of the site writing to this table has alike.
        return f"{type(self).__name__}:{self.name}"

    def _rollup_tables(self) -> SQLRollups | None:
        """The rollups, their tables made on first use; None when off."""
        if not self.rollups:
            return None
        engine, io = self._ready()
        with self._open_lock:
            return self._make_rollups(engine, io)

    def _make_rollups(self, engine: Engine, io: TableIO) -> SQLRollups | None:
        if self._rollup_state is None:
            from ._sqlrollups import SQLRollups

            if not set(ROLLUP_FIELDS) <= set(io.written):
                # A table made by an older version lacks a column they count.
                self.rollups = False
                return None
            settle = 0.0 if engine.dialect.name == "sqlite" else _SETTLE_SECONDS
            self._rollup_state = SQLRollups(
                engine, io, self._visitor_secret, self.rollup_retention, settle
            )
        return self._rollup_state

    @property
    def keeps_rollups(self) -> bool:
        return self.rollups

    def _rollup_keeper(self) -> RollupKeeper | None:
        return self._rollup_tables()

    def retain(self, cutoff: datetime | None, max_records: int | None) -> int:
        """Delete rows older than ``cutoff`` and all but the newest
        ``max_records``, in batches of 10,000 rows, each its own short
        transaction, so writers wait at most one batch."""
        engine, io = self._ready()
        return io.retain(engine, cutoff, max_records)
