"""How a traffic table's rows are inserted: by the database driver itself
(:class:`DriverInsert`), each column bound by its type's processor a column
at a time, or on PostgreSQL with psycopg by ``COPY`` (:class:`CopyInsert`).
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Sequence

import sqlalchemy as sa

if t.TYPE_CHECKING:
    from ._sqltable import TableIO

__all__ = ["CopyInsert", "DriverInsert", "plan_insert"]


class DriverInsert:
    """The insert of a table's written columns run by the database driver's
    own ``executemany``, each column made ready by its type's bind
    processor here, a column at a time: SQLAlchemy's work per parameter set
    (building the dict, running each processor) was about a third of a
    write's time.

    :param sql: the compiled insert.
    :param processors: per written column, its bind processor or ``None``.
    :param names: for a driver taking named parameters, the written columns'
        names in the statement; ``None`` for a positional one, where
        ``order`` gives the written column of each placeholder.
    """

    def __init__(
        self,
        sql: str,
        processors: Sequence[Callable[[t.Any], t.Any] | None],
        names: list[str] | None,
        order: list[int],
    ) -> None:
        self.sql = sql
        self.processors = processors
        self.names = names
        self.order = order

    def run(self, connection: sa.Connection, columns: list[t.Iterable[t.Any]]) -> None:
        """Insert the rows of ``columns`` (in written order)."""
        ready = [
            column if processor is None else map(processor, column)
            for column, processor in zip(columns, self.processors, strict=True)
        ]
        if self.names is None:
            if self.order != list(range(len(ready))):
                ready = [ready[i] for i in self.order]
            connection.exec_driver_sql(self.sql, list(zip(*ready, strict=True)))
        else:
            names = self.names
            rows = [dict(zip(names, row, strict=True)) for row in zip(*ready, strict=True)]
            connection.exec_driver_sql(self.sql, rows)


def plan_insert(io: TableIO, dialect: sa.Dialect) -> DriverInsert | t.Literal[False]:
    """The plan of ``io``'s insert on ``dialect``, or ``False`` when the
    statement has parameters besides the written columns (a model's
    column with a Python-side default, which only SQLAlchemy fills in)."""
    table, written = io.table, list(io.written)
    compiled = io.insert.compile(dialect=dialect, column_keys=written)
    params = list(compiled.positiontup or []) if compiled.positional else list(compiled.binds)
    if sorted(params) != sorted(written):
        return False
    processors = [
        table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in written
    ]
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        preparer = dialect.identifier_preparer
        names = ", ".join(preparer.quote(name) for name in written)
        sql = f"COPY {preparer.format_table(table)} ({names}) FROM STDIN"
        return CopyInsert(sql, processors, None, list(range(len(written))))
    if compiled.positional:
        return DriverInsert(str(compiled), processors, None, [written.index(p) for p in params])
    return DriverInsert(str(compiled), processors, written, list(range(len(written))))


class CopyInsert(DriverInsert):
    """On PostgreSQL with psycopg: the rows sent by ``COPY ... FROM STDIN``
    in the transaction of the connection. psycopg's ``executemany`` runs the
    insert once a row, and the server's work per statement was most of a
    write's time: ``COPY`` takes rows in about half the time. Errors come
    out as SQLAlchemy's, and a connection found dead is invalidated, as a
    statement through SQLAlchemy would do."""

    def run(self, connection: sa.Connection, columns: list[t.Iterable[t.Any]]) -> None:
        ready = [
            column if processor is None else map(processor, column)
            for column, processor in zip(columns, self.processors, strict=True)
        ]
        dialect = connection.dialect
        pooled = connection.connection
        raw = pooled.driver_connection
        assert raw is not None
        try:
            with raw.cursor() as cursor, cursor.copy(self.sql) as copy:
                write = copy.write_row
                for row in zip(*ready, strict=True):
                    write(row)
        except dialect.loaded_dbapi.Error as exc:
            dead = dialect.is_disconnect(exc, pooled.dbapi_connection, None)
            if dead:
                connection.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                self.sql,
                None,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=dead,
                dialect=dialect,
            ) from exc
