"""The SQL table of traffic records, derived from :data:`~flask_traffic.record.FIELDS`.

Shared by :class:`~flask_traffic.stores.SQLStore` (a Core ``Table``) and
:class:`~flask_traffic.stores.SQLORMModelMixin` (declarative columns), so both
make the same table. This module imports SQLAlchemy; the store modules import
it only once they know SQLAlchemy is installed.

Text that a database cannot hold (PostgreSQL rejects NUL characters, and no
driver encodes a lone surrogate as UTF-8) is stored as
``"\\ufffe" + <the value as an ASCII JSON string>`` and decoded when read, so
every value reads back exactly as :class:`~flask_traffic.stores.JSONStore`
returns it. A value that itself starts with U+FFFE (a Unicode noncharacter)
is stored the same way, so the rule stays reversible. Everything else is
stored as is.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import typing as t
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from ..record import FIELDS, Field, FieldType, TrafficRecord

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

__all__ = [
    "ID_COLUMN",
    "SQLORMModelMixin",
    "TableIO",
    "UTCDateTime",
    "create_table",
    "decode_text",
    "encode_text",
    "table_columns",
]

logger = logging.getLogger("flask_traffic")

_UTC = timezone.utc

#: The primary key every traffic table has besides the fields.
ID_COLUMN = "traffic_id"

#: Starts a stored text value that is escaped (see the module docstring).
_ESCAPED = "\ufffe"
_decode_json = json.JSONDecoder().decode


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime with microseconds, on every database.

    ``timestamptz`` on PostgreSQL, ``DATETIME(6)`` holding UTC on MariaDB and
    MySQL, SQLAlchemy's ``DATETIME`` text holding UTC on SQLite. A naive
    datetime given to it is taken as UTC. It always gives back aware UTC
    datetimes.
    """

    # Where Alembic's autogenerate says the type is: a public module.
    __module__ = "flask_traffic.stores.ormstore"
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


# Text values repeat from request to request (hosts, routes, user agents).
@functools.lru_cache(maxsize=8192)
def encode_text(value: str) -> str:
    """``value`` as stored: itself, or escaped when a database cannot hold it."""
    if value.isascii():
        if "\x00" not in value:
            return value
    elif not value.startswith(_ESCAPED) and "\x00" not in value:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return value
    return _ESCAPED + encode_basestring_ascii(value)


def decode_text(value: str) -> str:
    """The value :func:`encode_text` was given."""
    if value.startswith(_ESCAPED):
        return t.cast(str, _decode_json(value[1:]))
    return value


def _encode_optional_text(value: str | None) -> str | None:
    return None if value is None else encode_text(value)


def _decode_optional_text(value: str | None) -> str | None:
    if value is None or not value.startswith(_ESCAPED):
        return value
    return decode_text(value)


def _iso(value: datetime | None) -> str | None:
    # The text TrafficRecord.request_date_iso gives: UTC, microseconds, +00:00.
    return None if value is None else value.isoformat(timespec="microseconds")


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _int(value: int | None) -> int | None:
    return None if value is None else int(value)


_FIELD_BY_NAME: dict[str, Field] = {field.name: field for field in FIELDS}

_READERS: dict[FieldType, Callable[[t.Any], t.Any]] = {
    "datetime": _iso,
    "str": _decode_optional_text,
    "int": _int,
    "float": _float,
}


class TableIO:
    """Writes records into a traffic table and reads rows back, for one
    policy's fields.

    :param table: the table (a Core ``Table`` or a model's ``__table__``).
    :param fields: the policy's enabled field names, in schema order: the
        keys of the rows :meth:`read` returns. The table's other field
        columns are left ``NULL``.
    :param columns: the fields the table has a column for in the database,
        when that is not all of them (a table made by an older version).
    """

    def __init__(
        self, table: sa.Table, fields: Sequence[str], columns: t.Collection[str] | None = None
    ) -> None:
        self.table = table
        self.fields = tuple(fields)
        written = tuple(n for n in self.fields if columns is None or n in columns)
        self.written = written
        self.insert = table.insert()
        self.select = sa.select(*(table.c[name] for name in written)).order_by(
            table.c[ID_COLUMN].desc()
        )
        # What picks the written fields out of the policy's values.
        self._pick: Callable[[tuple[t.Any, ...]], tuple[t.Any, ...]] | None = None
        if written != self.fields:
            positions = [self.fields.index(name) for name in written]
            self._pick = lambda values: tuple(values[i] for i in positions)
        self._readers = [_READERS[_FIELD_BY_NAME[name].type] for name in written]
        self._date_index = written.index("request_date") if "request_date" in written else None
        self._text_indexes = [
            i for i, name in enumerate(written) if _FIELD_BY_NAME[name].type == "str"
        ]

    def rows(
        self,
        records: Sequence[TrafficRecord],
        values: Callable[[TrafficRecord], tuple[t.Any, ...]],
    ) -> list[dict[str, t.Any]]:
        """Insert parameters for ``records``.

        :param values: the policy's ``values``: the enabled fields, JSON-ready.
        """
        written = self.written
        if not written or not records:
            return [{} for _ in records]
        tuples = list(map(values, records))
        if self._pick is not None:
            tuples = list(map(self._pick, tuples))
        # Column by column, so the per-value work runs in map() and zip().
        columns: list[t.Iterable[t.Any]] = list(zip(*tuples, strict=True))
        for index in self._text_indexes:
            columns[index] = map(_encode_optional_text, columns[index])
        if self._date_index is not None:
            # The record keeps the datetime itself: no need to parse the text.
            columns[self._date_index] = map(_request_date, records)
        return [dict(zip(written, row, strict=True)) for row in zip(*columns, strict=True)]

    def read(self, connection: sa.Connection, limit: int) -> list[dict[str, t.Any]]:
        """The newest ``limit`` rows, newest first, as the file stores give them."""
        result = connection.execute(self.select.limit(limit))
        readers = self._readers
        written = self.written
        rows = [dict(zip(written, map(_apply, readers, row), strict=True)) for row in result]
        if written != self.fields:
            missing = dict.fromkeys(self.fields)
            rows = [{**missing, **row} for row in rows]
        return rows


_request_date = operator.attrgetter("request_date")


def _apply(reader: Callable[[t.Any], t.Any], value: t.Any) -> t.Any:
    return reader(value)


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
