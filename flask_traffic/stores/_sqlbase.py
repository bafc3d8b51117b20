"""What the SQL stores share: :class:`SQLTableStore`."""

from __future__ import annotations

import abc
import typing as t
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from .._fork import after_fork_in_child
from ..policy import LogPolicy
from ..query import Query
from ..record import TrafficRecord
from ..summary import SummaryBuilder
from .base import Store

if t.TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy import Engine

    from ._sqltable import TableIO

__all__ = ["SQLTableStore"]


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
    ) -> None:
        super().__init__(log_policy, sync=sync, name=name, max_age=max_age, max_records=max_records)
        self._engine = None
        self._io = None
        after_fork_in_child(self._after_fork_in_child)

    def setup(self, app: Flask) -> None:
        self._engine, self._io = self.open_table(app)

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
            raise RuntimeError(
                f"{self.name} is not set up yet: attach it with Traffic(app, stores=...)."
            )
        return self._engine, self._io

    def export(self, records: Sequence[TrafficRecord]) -> None:
        engine, io = self._ready()
        rows = io.rows(records, self.log_policy.values)
        with engine.begin() as connection:
            # A list of parameter sets: one executemany, which the drivers
            # turn into multi-row inserts or a pipeline.
            connection.execute(io.insert, rows)

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

        engine, io = self._ready()
        # The databases that count differently, by SQLAlchemy's dialect name.
        kinds = {"sqlite": SQLiteSummarySQL, "mysql": MySQLSummarySQL, "mariadb": MySQLSummarySQL}
        kind = kinds.get(engine.dialect.name, SummarySQL)
        kind(io, query, self.fields).run(engine, builder)

    def retain(self, cutoff: datetime | None, max_records: int | None) -> int:
        """Delete rows older than ``cutoff`` and all but the newest
        ``max_records``, in batches of 10,000 rows, each its own short
        transaction, so writers wait at most one batch."""
        engine, io = self._ready()
        return io.retain(engine, cutoff, max_records)
