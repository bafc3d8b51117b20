"""The SQL table of traffic records, derived from :data:`~flask_traffic.record.FIELDS`.

Shared by :class:`~flask_traffic.stores.SQLStore` (a Core ``Table``) and
:class:`SQLORMModelMixin` (declarative columns), so both make the same
table, with :class:`UTCDateTime` dates (Alembic's autogenerate writes
``flask_traffic.stores.sqlschema.UTCDateTime(timezone=True)``). This module
imports SQLAlchemy; the store modules import it only once they know
SQLAlchemy is installed.
"""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from .._optional import require
from ..record import FIELDS, Field, FieldType

# Before SQLAlchemy's imports: without it, importing this module (as
# ``from flask_traffic.stores import SQLORMModelMixin`` does) says what to install.
require("sqlalchemy", extra="sqlalchemy", needed_by="SQLORMModelMixin")

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.dialects import mysql, postgresql  # noqa: E402
from sqlalchemy.orm import Mapped, declared_attr, mapped_column  # noqa: E402

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

__all__ = [
    "ERROR_STATUS",
    "ID_COLUMN",
    "SUMMARY_INDEX_COLUMNS",
    "SQLORMModelMixin",
    "UTCDateTime",
    "create_table",
    "errors_index",
    "existing_columns",
    "failed",
    "find_index",
    "summary_index",
    "table_columns",
]

logger = logging.getLogger("flask_traffic")

_UTC = timezone.utc

#: The primary key every traffic table has besides the fields.
ID_COLUMN = "traffic_id"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime with microseconds, on every database.

    ``timestamptz`` on PostgreSQL, ``DATETIME(6)`` holding UTC on MariaDB and
    MySQL, SQLAlchemy's ``DATETIME`` text holding UTC on SQLite. A naive
    datetime given to it is taken as UTC. It always gives back aware UTC
    datetimes.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[t.Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=_UTC)
        elif value.utcoffset():
            value = value.astimezone(_UTC)
        if dialect.name == "postgresql":
            return value
        # MariaDB's DATETIME and SQLite's text have no offset: they hold UTC.
        return value.replace(tzinfo=None)

    def bind_processor(self, dialect: Dialect) -> Callable[[t.Any], t.Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLAlchemy's own text of a SQLite DATETIME, written by C
        # (isoformat) instead of its format string filled from a dict: a
        # tenth of a SQLite insert's work.
        def process(value: datetime | None) -> str | None:
            utc = self.process_bind_param(value, dialect)
            return None if utc is None else utc.isoformat(" ", "microseconds")

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=_UTC)
        return value.astimezone(_UTC)


def _text_type() -> sa.types.TypeEngine[str]:
    # TEXT, not VARCHAR(n): a 10 kB user agent must fit. On MariaDB/MySQL
    # TEXT stops at 64 kB and the server's own charset may not be utf8mb4,
    # so the column says both.
    return sa.Text().with_variant(mysql.MEDIUMTEXT(charset="utf8mb4"), "mysql", "mariadb")


_TYPES: dict[FieldType, Callable[[], sa.types.TypeEngine[t.Any]]] = {
    "datetime": UTCDateTime,
    "str": _text_type,
    # response_size may pass 2 GB.
    "int": sa.BigInteger,
    # DOUBLE PRECISION: FLOAT is 4 bytes on MariaDB/MySQL.
    "float": sa.Double,
}

#: Fields with an index: read() and reports look records up by date.
_INDEXED = frozenset({"request_date"})


#: The columns of the index that serves :meth:`~flask_traffic.stores.Store.summary`
#: on SQLite, in this order. SQLite has no hash aggregation: each ``GROUP BY``
#: sorts every selected row, and sorting a million rows by status, route,
#: browser and platform costs more than everything else in a summary. Read
#: in this index's order, those counts need no sort, and the per-route
#: ``response_time`` histogram is read one bucket at a time, each a range
#: of the index. ``request_date`` last: a summary's window is tested inside
#: the index.

SUMMARY_INDEX_COLUMNS = (
    "request_route",
    "response_status_code",
    "request_browser",
    "request_platform",
    "response_time",
    "request_sample_rate",
    "request_date",
)


def summary_index(table: sa.Table) -> sa.Index:
    """The summary index of ``table`` (see :data:`SUMMARY_INDEX_COLUMNS`),
    attached to it, created with it on SQLite only.

    Only SQLite gains from it: PostgreSQL groups with hash tables, and
    MariaDB and MySQL cannot index whole ``TEXT`` columns.
    """
    index = sa.Index(f"ix_{table.name}_summary", *(table.c[name] for name in SUMMARY_INDEX_COLUMNS))
    return index.ddl_if(dialect="sqlite")


#: The status code from which a response is an error (5xx).
ERROR_STATUS = 500


def failed(table: sa.Table, columns: t.Collection[str] | None = None) -> sa.ColumnElement[bool]:
    """A request of ``table`` failed: a 5xx answer, or an exception, tested
    on those of the two ``columns`` (all of the table's without it) has; no
    row fails without either. The status is written out, not bound: SQLite
    uses a partial index only for a query whose test is the index's own,
    word for word (:func:`errors_index`)."""
    tests: list[sa.ColumnElement[bool]] = []
    if columns is None or "response_status_code" in columns:
        tests.append(table.c["response_status_code"] >= sa.literal_column(str(ERROR_STATUS)))
    if columns is None or "response_exception" in columns:
        tests.append(table.c["response_exception"].is_not(None))
    return sa.or_(*tests) if tests else sa.false()


def errors_index(table: sa.Table) -> sa.Index:
    """The index of ``table``'s failed requests by date, attached to it and
    made with it on SQLite and PostgreSQL (MariaDB and MySQL have no partial
    indexes): the dashboard's error list of a month of ten million records
    reads the few thousand that failed, not the month."""
    where = failed(table)
    index = sa.Index(
        f"ix_{table.name}_errors",
        table.c["request_date"],
        sqlite_where=where,
        postgresql_where=where,
    )
    return index.ddl_if(callable_=_has_partial_indexes)


def _has_partial_indexes(
    ddl: t.Any,
    target: t.Any,
    bind: sa.Connection | None,
    tables: list[sa.Table] | None = None,
    state: t.Any = None,
    *,
    dialect: Dialect,
    compiler: t.Any = None,
    checkfirst: bool = False,
) -> bool:
    return dialect.name in ("sqlite", "postgresql")


def find_index(connection: sa.Connection, table: sa.Table, columns: Sequence[str]) -> str | None:
    """The name of an index of every row of ``table`` on exactly
    ``columns``, in that order, whatever it is called (a model's own
    ``Index`` counts); None if there is none."""
    for index in sa.inspect(connection).get_indexes(table.name):
        options = index.get("dialect_options", {})
        if any(name.endswith("_where") for name in options):
            # A partial index (errors_index) holds only some of the rows.
            continue
        if tuple(index["column_names"]) == tuple(columns):
            return index["name"]
    return None


def _id_type() -> sa.types.TypeEngine[int]:
    # SQLite autoincrements only an INTEGER PRIMARY KEY, not a BIGINT one.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def table_columns() -> list[sa.Column[t.Any]]:
    """New ``Column`` objects for a traffic table: the id, then every field."""
    columns: list[sa.Column[t.Any]] = [
        sa.Column(ID_COLUMN, _id_type(), primary_key=True, autoincrement=True)
    ]
    columns.extend(
        sa.Column(field.name, _TYPES[field.type](), nullable=True, index=field.name in _INDEXED)
        for field in FIELDS
    )
    return columns


def create_table(table: sa.Table, engine: sa.Engine, owner: str) -> None:
    """Create ``table`` unless it exists, tolerating other processes doing the same.

    Several gunicorn workers may start at once: each checks, one creates,
    and the others' ``CREATE TABLE`` fails with "already exists" in one form
    or another, which is fine once the table is there.
    """
    try:
        table.create(engine, checkfirst=True)
        return
    except sa.exc.DBAPIError as exc:
        error = exc
    try:
        exists = sa.inspect(engine).has_table(table.name)
    except sa.exc.DBAPIError:
        exists = False
    if not exists:
        # Drivers' messages span lines; the error is one sentence.
        reason = " ".join(str(error.orig).split())
        raise RuntimeError(
            f"{owner} cannot create the table {table.name!r} in "
            f"{engine.url.render_as_string(hide_password=True)} ({reason}); "
            f"check the database URL and that the database is up."
        ) from error
    logger.debug("%s: another process created %s first.", owner, table.name)


def existing_columns(table: sa.Table, engine: sa.Engine) -> set[str]:
    """The column names the table has in the database."""
    return {column["name"] for column in sa.inspect(engine).get_columns(table.name)}


def _mixin_column(field: Field) -> declared_attr[t.Any]:
    def column(cls: type) -> Mapped[t.Any]:
        return mapped_column(
            field.name, _TYPES[field.type](), nullable=True, index=field.name in _INDEXED
        )

    column.__name__ = field.name
    column.__doc__ = field.doc
    return declared_attr(column)


class SQLORMModelMixin:
    """The columns of a traffic table, for a declarative model.

    Flask-SQLAlchemy::

        class Traffic(db.Model, SQLORMModelMixin):
            pass

    Plain SQLAlchemy::

        class Traffic(Base, SQLORMModelMixin):  # Base: a DeclarativeBase
            pass

    The table is named ``_traffic_`` (as in flask-traffic 0.8); set
    ``__tablename__`` in the model to change it. The columns are
    ``traffic_id`` (the primary key) and one per field of
    :data:`~flask_traffic.FIELDS`, of the same types as
    :class:`~flask_traffic.stores.SQLStore`'s table.
    """

    __tablename__ = "_traffic_"

    @declared_attr
    def traffic_id(cls) -> Mapped[int]:
        """The primary key, in the order records were written."""
        return mapped_column(ID_COLUMN, _id_type(), primary_key=True, autoincrement=True)


for _field in FIELDS:
    setattr(SQLORMModelMixin, _field.name, _mixin_column(_field))
del _field
