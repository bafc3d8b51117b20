"""SQLStore: a table in any database SQLAlchemy reaches; SQLite by default."""

from __future__ import annotations

import logging
import os
import typing as t
from datetime import timedelta
from pathlib import Path

from .._optional import require
from ..policy import LogPolicy
from ..rollups import RollupRetention
from ._sqlbase import SQLTableStore
from .base import warn_if_outside_instance_folder

if t.TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy import URL, Engine, Index, Table

    from ._sqltable import TableIO

__all__ = ["SQLStore"]

logger = logging.getLogger("flask_traffic")

#: Milliseconds a SQLite writer waits for another process's write to finish.
_SQLITE_BUSY_TIMEOUT_MS = 30_000

# Drivers SQLAlchemy names in its URLs -> the flask-traffic extra installing one.
_DRIVER_EXTRAS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


class SQLStore(SQLTableStore):
    """Writes records into a table of a SQL database, through SQLAlchemy.

    By default a SQLite file in the app's instance folder, opened in WAL
    mode with a busy timeout so that several processes (gunicorn workers)
    can write at once. Any database SQLAlchemy reaches works: pass
    ``database_url`` (``"postgresql+psycopg://user:pw@host/db"``,
    ``"mysql+pymysql://user:pw@host/db"``) or an ``Engine``.

    The table is created in ``init_app`` if it does not exist. It has a
    ``traffic_id`` primary key and a column for every field of
    :data:`~flask_traffic.FIELDS`; the policy's enabled fields are written,
    the others left ``NULL``. Each batch is one multi-row insert in one
    transaction.

    :param filename: the SQLite file's name; unused with ``database_url`` or
        ``database_engine``.
    :param location: the SQLite file's folder; the app's instance folder
        when ``None``. Created with its parents if missing.
    :param log_policy: which fields and requests to keep.
    :param database_table_name: the table's name.
    :param database_url: a SQLAlchemy URL (``str`` or ``URL``) of the database.
    :param database_engine: a SQLAlchemy ``Engine`` to use instead; the store
        does not dispose of it.
    :param sync: write in the request thread; ``None`` follows ``TRAFFIC_SYNC``.
    :param name: how ``flask traffic`` commands and log messages name the
        store; the class name by default.
    :param max_age: a :class:`~datetime.timedelta`: rows older than this are
        deleted by the worker, in batches, at most once every
        ``TRAFFIC_RETENTION_INTERVAL`` seconds.
    :param max_records: keep only the newest this many rows (by
        ``traffic_id``); older ones are deleted the same way.
    :param spool: where records wait on disk while the database is down:
        ``None`` for the app's ``TRAFFIC_SPOOL_DIR``, a folder, or ``False``.
    :param summary_index: on SQLite, give the table (also an existing one)
        the index :meth:`summary` reads from the records, on ``request_route``,
        ``response_status_code``, ``request_browser``, ``request_platform``,
        ``response_time``, ``request_sample_rate`` and ``request_date``. It
        makes a summary of a million rows about 1.6 times as fast, and costs
        every write: a large table takes rows a quarter to half as fast, and 28 %
        more disk. ``None`` (the default) gives it to a store without
        ``rollups`` only (``rollups=False``, or a policy that leaves out a
        field they count): with them summaries read the rollups. Pass
        ``False`` for a table written much more often than summarized. Other
        databases do not get it (PostgreSQL groups without sorting; MariaDB
        cannot index whole ``TEXT`` columns). An index made before is not
        dropped.
    :param rollups: keep per-hour and per-day rollups
        (:mod:`flask_traffic.rollups`) in tables beside this one, folded by
        the worker at every retention pass, and answer :meth:`summary`
        (without ``where``, of a window over two hours) from them, its edges
        rounded out to whole hours or days. On by default; ``False`` turns
        them off. A policy that leaves out a field they count keeps none,
        without a word, as does a table made without a column they count.
    :param rollup_retention: how long each bucket size is kept
        (:class:`~flask_traffic.rollups.RollupRetention`; hours 400 days,
        days forever by default).

    :meth:`read` and :meth:`summary` run in the database: the window on the
    indexed ``request_date`` and the ``where`` tests become the ``WHERE`` of
    one query, and the summary is counted with ``GROUP BY``.

    .. attribute:: database_engine

        The SQLAlchemy ``Engine`` (``None`` until ``init_app`` for the default
        SQLite file).

    .. attribute:: database_log_table

        The SQLAlchemy ``Table``, for queries of your own, e.g. in an
        overridden :meth:`read`.
    """

    database_engine: Engine | None
    database_log_table: Table

    def __init__(
        self,
        filename: str | os.PathLike[str] = "traffic.sqlite",
        location: str | os.PathLike[str] | None = None,
        log_policy: LogPolicy | None = None,
        *,
        database_table_name: str = "_traffic_",
        database_url: str | URL | None = None,
        database_engine: Engine | None = None,
        sync: bool | None = None,
        name: str | None = None,
        max_age: timedelta | None = None,
        max_records: int | None = None,
        summary_index: bool | None = None,
        spool: str | os.PathLike[str] | bool | None = None,
        rollups: bool = True,
        rollup_retention: RollupRetention | None = None,
    ) -> None:
        require("sqlalchemy", extra="sqlalchemy", needed_by="SQLStore")
        import sqlalchemy as sa

        super().__init__(
            log_policy,
            sync=sync,
            name=name,
            max_age=max_age,
            max_records=max_records,
            spool=spool,
            rollups=rollups,
            rollup_retention=rollup_retention,
        )
        if database_url is not None and database_engine is not None:
            raise ValueError(
                "SQLStore takes database_url or database_engine, not both: pass one of them."
            )
        if database_url is not None and not isinstance(database_url, (str, sa.URL)):
            raise TypeError(
                f"database_url must be a SQLAlchemy URL string such as "
                f"'postgresql+psycopg://user@host/db', got {type(database_url).__name__}."
            )
        if database_engine is not None and not isinstance(database_engine, sa.Engine):
            raise TypeError(
                f"database_engine must be a sqlalchemy.Engine (from create_engine()), "
                f"got {type(database_engine).__name__}."
            )
        if not isinstance(filename, (str, os.PathLike)) or not os.fspath(filename):
            raise TypeError(f"filename must be a non-empty str or path, got {filename!r}.")
        if location is not None and not isinstance(location, (str, os.PathLike)):
            raise TypeError(f"location must be a folder path or None, got {location!r}.")
        if summary_index is not None and not isinstance(summary_index, bool):
            raise TypeError(f"summary_index must be True, False or None, got {summary_index!r}.")
        if summary_index is None:
            # Rollups answer summaries of any window over an hour: what the
            # index is for; without it inserts into a large table go 3x
            # as fast.
            summary_index = not self.rollups
        if not isinstance(database_table_name, str) or not database_table_name:
            raise TypeError(
                f"database_table_name must be a non-empty str, got {database_table_name!r}."
            )
        from .sqlschema import errors_index, table_columns
        from .sqlschema import summary_index as make_summary_index

        self.filename = os.fspath(filename)
        self.location = None if location is None else Path(location)
        self.database_table_name = database_table_name
        self.database_url = database_url
        self.database_log_table = sa.Table(database_table_name, sa.MetaData(), *table_columns())
        self._summary_index = make_summary_index(self.database_log_table) if summary_index else None
        self._errors_index = errors_index(self.database_log_table)
        self.database_engine = database_engine
        self._sqlite_path: Path | None = None
        #: Whether the store made the engine (and so disposes of it at shutdown).
        self._owns_engine = False
        if database_url is not None:
            self.database_engine = self._create_engine(database_url)
            self._owns_engine = True

    def __repr__(self) -> str:
        engine = self.database_engine
        where = (
            engine.url.render_as_string(hide_password=True) if engine is not None else self.filename
        )
        return f"<SQLStore {where} table={self.database_table_name!r}>"

    def _create_engine(self, url: str | URL) -> Engine:
        import sqlalchemy as sa

        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            raise ValueError(
                f"database_url {url!r} is not a SQLAlchemy URL; write it as "
                f"'dialect+driver://user:password@host/database'."
            ) from None
        try:
            if parsed.get_backend_name() == "sqlite":
                return self._sqlite_engine(parsed)
            # A pooled connection may have been closed by the server (restart,
            # idle timeout) since it was last used: test it before a batch.
            # hide_parameters: a failed statement's message (logged, kept in
            # stats()) must not carry client addresses and user agents.
            return sa.create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
        except ImportError as exc:
            extra = _DRIVER_EXTRAS.get(parsed.get_backend_name())
            hint = f'pip install "flask-traffic[{extra}]"' if extra else "install its driver"
            raise ImportError(
                f"SQLStore cannot load the driver of {parsed.drivername!r} ({exc}): {hint}."
            ) from None
        except sa.exc.NoSuchModuleError:
            raise ValueError(
                f"database_url names the unknown dialect {parsed.drivername!r}; "
                f"use one SQLAlchemy knows, e.g. 'postgresql+psycopg'."
            ) from None

    @staticmethod
    def _sqlite_engine(url: URL) -> Engine:
        import sqlalchemy as sa

        engine = sa.create_engine(url, hide_parameters=True)

        def on_connect(dbapi_connection: t.Any, record: t.Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                # The timeout first: switching to WAL takes a lock another
                # process starting at the same time may hold.
                cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
                if url.database and url.database != ":memory:":
                    # Readers do not block the writer, and writers of other
                    # processes wait for each other instead of failing.
                    cursor.execute("PRAGMA journal_mode = WAL")
                    cursor.execute("PRAGMA synchronous = NORMAL")
            finally:
                cursor.close()

        sa.event.listen(engine, "connect", on_connect)
        return engine

    def open_table(self, app: Flask) -> tuple[Engine, TableIO]:
        import sqlalchemy as sa

        from ._sqltable import TableIO
        from .sqlschema import create_table, existing_columns

        if self.database_engine is None:
            folder = self.location if self.location is not None else Path(app.instance_path)
            path = folder / self.filename
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RuntimeError(
                    f"SQLStore cannot create the folder {folder}: {exc.strerror}; "
                    f"pass location=... with a writable folder."
                ) from None
            self.database_engine = self._sqlite_engine(sa.URL.create("sqlite", database=str(path)))
            self._owns_engine = True
            self._sqlite_path = path
        engine = self.database_engine
        table = self.database_log_table
        create_table(table, engine, self.name)
        columns = existing_columns(table, engine)
        missing = [name for name in self.fields if name not in columns]
        if missing:
            # A table made by an older version: write what it has, as
            # CSVStore does with an older file.
            logger.warning(
                "%s: the table %s has no column %s; those fields are not stored. "
                "Add the column(s) (ALTER TABLE, or a migration) to store them.",
                self.name,
                table.name,
                ", ".join(missing),
            )
        from .sqlschema import SUMMARY_INDEX_COLUMNS

        if engine.dialect.name == "sqlite" and self._summary_index is not None:
            self._add_index(engine, self._summary_index, SUMMARY_INDEX_COLUMNS, columns)
        if engine.dialect.name in ("sqlite", "postgresql"):
            needed = ("request_date", "response_status_code", "response_exception")
            self._add_index(engine, self._errors_index, needed, columns)
        return engine, TableIO(table, self.fields, columns)

    def _add_index(
        self, engine: Engine, index: Index, needed: t.Sequence[str], columns: set[str]
    ) -> None:
        # A table made before the index existed gets it now, once (see the
        # summary_index parameter).
        import sqlalchemy as sa

        if not columns.issuperset(needed):
            return
        from .sqlschema import find_index

        table = self.database_log_table
        indexed = [column.name for column in index.columns]

        def there(connection: sa.Connection) -> bool:
            names = {found["name"] for found in sa.inspect(connection).get_indexes(table.name)}
            if index.name in names:
                return True
            # A model's own index of the same columns counts too; not for the
            # errors index, partial, whose column the date index has.
            return (
                index is not self._errors_index
                and find_index(connection, table, indexed) is not None
            )

        with engine.connect() as connection:
            if there(connection):
                return
        logger.info(
            "%s: adding the index %s to the table %s (once; about 2 s per million rows).",
            self.name,
            index.name,
            self.database_log_table.name,
        )
        try:
            with engine.begin() as connection:
                index.create(connection, checkfirst=True)
        except sa.exc.OperationalError as exc:
            with engine.connect() as connection:
                if there(connection):
                    return  # another worker starting at the same time made it first
            # The table was locked for longer than the busy timeout (another
            # process building the index of a huge table, say): the app
            # starts anyway, and reads work without the index.
            logger.warning(
                "%s: could not add the index %s to the table %s (%s); the store works "
                "without it, reads more slowly. It is added when the app next starts.",
                self.name,
                index.name,
                self.database_log_table.name,
                " ".join(str(exc.orig).split()),
            )

    def shutdown(self, timeout: float | None = 10.0) -> None:
        super().shutdown(timeout)
        if self._owns_engine and self.database_engine is not None:
            self.database_engine.dispose()

    def also_serve(self, app: Flask) -> None:
        if self.location is None:
            warn_if_outside_instance_folder(self, app, self._sqlite_path)
