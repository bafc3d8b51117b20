"""Statements run on many rows by the database driver itself, each value
bound by its column type's processor here rather than by SQLAlchemy per
parameter set: a traffic table's inserts (:class:`DriverInsert`, a column
at a time; on PostgreSQL with psycopg ``COPY``, :class:`CopyInsert`) and
the rollups' upserts (:func:`driver_executemany`).
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Sequence

import sqlalchemy as sa

if t.TYPE_CHECKING:
    from ._sqltable import TableIO

__all__ = [
    "CopyInsert",
    "DriverInsert",
    "bind_processor",
    "driver_executemany",
    "make_upsert",
    "plan_insert",
]


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
        # The placeholders' order, where it is not the written columns'.
        self._reorder = None if order == list(range(len(order))) else order

    def ready(self, columns: list[t.Iterable[t.Any]]) -> list[t.Iterable[t.Any]]:
        """``columns`` (in written order), each through its bind processor."""
        return [
            column if processor is None else map(processor, column)
            for column, processor in zip(columns, self.processors, strict=True)
        ]

    def run(self, connection: sa.Connection, columns: list[t.Iterable[t.Any]]) -> None:
        """Insert the rows of ``columns`` (in written order)."""
        ready = self.ready(columns)
        if self.names is None:
            if self._reorder is not None:
                ready = [ready[i] for i in self._reorder]
            connection.exec_driver_sql(self.sql, list(zip(*ready, strict=True)))
        else:
            names = self.names
            rows = [dict(zip(names, row, strict=True)) for row in zip(*ready, strict=True)]
            connection.exec_driver_sql(self.sql, rows)


def bind_processor(
    column: sa.ColumnElement[t.Any], dialect: sa.Dialect
) -> Callable[[t.Any], t.Any] | None:
    """What makes a value of ``column`` ready for ``dialect``'s driver, as
    SQLAlchemy would bind it (``None``: as it is)."""
    return column.type.dialect_impl(dialect).bind_processor(dialect)


def plan_insert(io: TableIO, dialect: sa.Dialect) -> DriverInsert | t.Literal[False]:
    """The plan of ``io``'s insert on ``dialect``, or ``False`` when the
    statement has parameters besides the written columns (a model's
    column with a Python-side default, which only SQLAlchemy fills in)."""
    table, written = io.table, list(io.written)
    compiled = io.insert.compile(dialect=dialect, column_keys=written)
    params = list(compiled.positiontup or []) if compiled.positional else list(compiled.binds)
    if sorted(params) != sorted(written):
        return False
    processors = [bind_processor(table.c[name], dialect) for name in written]
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
        ready = self.ready(columns)
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


def driver_executemany(
    dialect: sa.Dialect, table: sa.Table, statement: t.Any
) -> t.Callable[[sa.Connection, list[dict[str, t.Any]]], None]:
    """``statement`` run on many rows by the driver itself, each value made
    ready by its column type's bind processor here: SQLAlchemy's own work
    per parameter set was most of a fold's time (a fold writes several rows
    a record)."""
    names = [column.name for column in table.columns]
    compiled = statement.compile(dialect=dialect, column_keys=names)
    sql = str(compiled)
    processors = {
        name: processor
        for name in names
        if (processor := bind_processor(table.c[name], dialect)) is not None
    }
    positional = compiled.positional
    order = list(compiled.positiontup or []) if positional else names

    def upsert(connection: sa.Connection, rows: list[dict[str, t.Any]]) -> None:
        if not rows:
            return
        ready = {name: _once_per_value(processor) for name, processor in processors.items()}
        made: list[t.Any] = []
        for row in rows:
            values = dict(row)
            for name, process in ready.items():
                values[name] = process(values[name])
            made.append(tuple(values[name] for name in order) if positional else values)
        connection.exec_driver_sql(sql, made)

    return upsert


def _once_per_value(processor: Callable[[t.Any], t.Any]) -> Callable[[t.Any], t.Any]:
    """``processor``, run once per distinct value (and type: ``1`` is not
    ``True``): a fold's rows repeat a few values (bucket starts, units)."""
    ready: dict[tuple[type, t.Any], t.Any] = {}

    def process(value: t.Any) -> t.Any:
        key = (type(value), value)
        if key not in ready:
            ready[key] = processor(value)
        return ready[key]

    return process


def make_upsert(
    dialect: sa.Dialect, table: sa.Table, columns: dict[str, str]
) -> t.Callable[[sa.Connection, list[dict[str, t.Any]]], None]:
    """An insert that adds to (``"add"``) or replaces (``"set"``) the
    given columns of a row whose primary key is there already."""
    name = dialect.name
    keys = [column.name for column in table.primary_key.columns]
    statement: t.Any
    if name == "postgresql" and dialect.driver == "psycopg":
        return _unnest_upsert(dialect, table, columns, keys)
    if name in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        module: t.Any = sqlite if name == "sqlite" else postgresql
        insert = module.insert(table)
        new = insert.excluded
        statement = insert.on_conflict_do_update(
            index_elements=keys,
            set_={
                name: (table.c[name] + new[name]) if how == "add" else new[name]
                for name, how in columns.items()
            },
        )
    elif name in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        mysql_insert = mysql.insert(table)
        inserted = mysql_insert.inserted
        statement = mysql_insert.on_duplicate_key_update(
            {
                name: (table.c[name] + inserted[name]) if how == "add" else inserted[name]
                for name, how in columns.items()
            }
        )
    else:
        return _portable_upsert(table, columns, keys)
    return driver_executemany(dialect, table, statement)


def _unnest_upsert(
    dialect: sa.Dialect, table: sa.Table, columns: dict[str, str], keys: list[str]
) -> t.Callable[[sa.Connection, list[dict[str, t.Any]]], None]:
    """PostgreSQL's upsert of many rows as one statement, a column at a
    time: ``INSERT ... SELECT * FROM unnest(<an array per column>) ON
    CONFLICT ... DO UPDATE``. The driver's ``executemany`` ran one statement
    per row, 60 % of a fold's time on 10,000,000 records (a fold writes
    thousands of rows a chunk). Rows of one primary key are merged first,
    as one after the other would have been: a statement may not update a
    row twice."""
    quote = dialect.identifier_preparer.quote
    names = [column.name for column in table.columns]
    arrays = ", ".join(f"%s::{column.type.compile(dialect=dialect)}[]" for column in table.columns)
    updates = ", ".join(
        f"{quote(name)} = {dialect.identifier_preparer.format_table(table)}.{quote(name)}"
        f" + EXCLUDED.{quote(name)}"
        if how == "add"
        else f"{quote(name)} = EXCLUDED.{quote(name)}"
        for name, how in columns.items()
    )
    sql = (
        f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
        f"({', '.join(map(quote, names))}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(map(quote, keys))}) DO UPDATE SET {updates}"
    )
    processors = {
        name: processor
        for name in names
        if (processor := bind_processor(table.c[name], dialect)) is not None
    }
    added = [name for name, how in columns.items() if how == "add"]

    def upsert(connection: sa.Connection, rows: list[dict[str, t.Any]]) -> None:
        if not rows:
            return
        merged: dict[tuple[t.Any, ...], dict[str, t.Any]] = {}
        for row in rows:
            key = tuple(row[name] for name in keys)
            before = merged.get(key)
            if before is None:
                merged[key] = dict(row)
                continue
            for name in columns:
                before[name] = before[name] + row[name] if name in added else row[name]
        values = list(merged.values())
        params = []
        for name in names:
            column = [row[name] for row in values]
            processor = processors.get(name)
            params.append(
                column if processor is None else list(map(_once_per_value(processor), column))
            )
        connection.exec_driver_sql(sql, tuple(params))

    return upsert


def _portable_upsert(
    table: sa.Table, columns: dict[str, str], keys: list[str]
) -> t.Callable[[sa.Connection, list[dict[str, t.Any]]], None]:
    # Any other database: update, then insert what was not there. Safe
    # because the fold holds the state row's lock.
    def upsert(connection: sa.Connection, rows: list[dict[str, t.Any]]) -> None:
        for row in rows:
            match = [table.c[key] == row[key] for key in keys]
            values = {
                name: (table.c[name] + row[name]) if how == "add" else row[name]
                for name, how in columns.items()
            }
            if not connection.execute(table.update().where(*match).values(values)).rowcount:
                connection.execute(table.insert().values(row))

    return upsert
