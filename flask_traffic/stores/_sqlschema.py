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

import concurrent.futures
import functools
import json
import logging
import math
import operator
import typing as t
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring_ascii

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, declared_attr, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import Alias
from sqlalchemy.sql.util import ClauseAdapter

from ..query import Query
from ..record import FIELDS, Field, FieldType, TrafficRecord
from ..summary import (
    HISTOGRAM_BASE_MS,
    HISTOGRAM_MAX_INDEX,
    HISTOGRAM_RATIO,
    TOP,
    TOP_FIELDS,
    VISITOR_FIELDS,
    SummaryBuilder,
)

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

__all__ = [
    "ID_COLUMN",
    "RETAIN_BATCH",
    "SCAN_CHUNK",
    "SUMMARY_INDEX_COLUMNS",
    "SQLORMModelMixin",
    "TableIO",
    "UTCDateTime",
    "create_table",
    "decode_text",
    "encode_text",
    "exact_text",
    "find_index",
    "summary_index",
    "table_columns",
]

logger = logging.getLogger("flask_traffic")

_UTC = timezone.utc

#: The primary key every traffic table has besides the fields.
ID_COLUMN = "traffic_id"

#: Starts a stored text value that is escaped (see the module docstring).
_ESCAPED = "\ufffe"

#: Rows fetched at a time while streaming a scan (an export of millions of
#: rows holds this many in memory, not all).
SCAN_CHUNK = 2000
#: Rows deleted per transaction by retention: short enough that writers
#: waiting for the table are not held up for long.
RETAIN_BATCH = 10_000

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


def find_index(connection: sa.Connection, table: sa.Table, columns: Sequence[str]) -> str | None:
    """The name of an index on ``table`` of exactly ``columns``, in that
    order, whatever it is called (a model's own ``Index`` counts); None if
    there is none."""
    for index in sa.inspect(connection).get_indexes(table.name):
        if tuple(index["column_names"]) == tuple(columns):
            return index["name"]
    return None


class _IndexedBy(Alias):
    """A table read through one index (``INDEXED BY``), or through none
    (``NOT INDEXED``), on SQLite; the plain table elsewhere.

    SQLAlchemy renders no table hints for SQLite, and SQLite's planner, with
    no statistics, picks the summary index wherever it covers a query, also
    where reading the table is faster.
    """

    # The index is not part of the statement cache key: no caching.
    inherit_cache = False
    index: str | None

    @classmethod
    def of(cls, table: sa.Table, index: str | None, name: str | None = None) -> _IndexedBy:
        """``table`` read through ``index`` (through none if it is None),
        named ``name`` in the statement (the table's name by default)."""
        alias = cls._construct(table, name=name or table.name)
        alias.index = index
        return alias


@compiles(_IndexedBy)
def _compile_indexed_by(element: _IndexedBy, compiler: SQLCompiler, **kw: t.Any) -> str:
    visit_alias: Callable[..., str] = compiler.visit_alias
    text = visit_alias(element, **kw)
    if kw.get("asfrom") and compiler.dialect.name == "sqlite":
        index = element.index
        text += " NOT INDEXED" if index is None else f" INDEXED BY {compiler.preparer.quote(index)}"
    return text


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
        self._written_set = frozenset(written)
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
        return self.convert(connection.execute(self.select.limit(limit)))

    def convert(self, rows: t.Iterable[t.Sequence[t.Any]]) -> list[dict[str, t.Any]]:
        """Rows of the written columns (in :attr:`written` order) as dicts
        keyed by :attr:`fields`, values as ``read()`` gives them."""
        readers = self._readers
        written = self.written
        converted = [dict(zip(written, map(_apply, readers, row), strict=True)) for row in rows]
        if written != self.fields:
            missing = dict.fromkeys(self.fields)
            converted = [{**missing, **row} for row in converted]
        return converted

    # -- queries -------------------------------------------------------------

    def conditions(self, query: Query, dialect: Dialect) -> list[sa.ColumnElement[bool]]:
        """``query``'s window and ``where`` tests as SQL, selecting exactly
        the rows :meth:`Query.matches <flask_traffic.query.Query.matches>`
        selects from what :meth:`convert` gives."""
        found: list[sa.ColumnElement[bool]] = []
        if query.since is not None or query.until is not None:
            if "request_date" not in self._written_set:
                return [sa.false()]
            date = self.table.c["request_date"]
            if query.since is not None:
                found.append(date >= query.since)
            if query.until is not None:
                found.append(date < query.until)
        found.extend(self._equals(name, value, dialect) for name, value in query.where.items())
        return found

    def _equals(self, name: str, value: t.Any, dialect: Dialect) -> sa.ColumnElement[bool]:
        if name not in self._written_set:
            # A field without a column reads back as None.
            return sa.true() if value is None else sa.false()
        column = self.table.c[name]
        if value is None:
            return column.is_(None)
        kind = _FIELD_BY_NAME[name].type
        if kind == "str":
            if not isinstance(value, str):
                return sa.false()
            # Stored text is encoded: hostile values compare as they were written.
            return exact_text(column, dialect) == encode_text(value)
        if kind == "datetime":
            # read() gives dates as ISO text: only that exact text matches.
            moment = _parse_iso(value) if isinstance(value, str) else None
            if moment is None:
                return sa.false()
            return column == moment
        if not isinstance(value, (int, float)) or value != value:
            return sa.false()
        try:
            number: int | float = float(value) if kind == "float" else int(value)
        except OverflowError:
            return sa.false()
        if number != value or (kind == "int" and not -(2**63) <= number < 2**63):
            # No stored value can equal it (2.5 in an int column, 2**64).
            return sa.false()
        return column == number

    def scan(
        self, engine: sa.Engine, query: Query, oldest_first: bool = False
    ) -> Iterator[dict[str, t.Any]]:
        """The rows ``query`` selects, newest (or oldest) first, fetched in
        chunks of :data:`SCAN_CHUNK` rows from one streamed result."""
        if query.limit == 0:
            return
        id_column = self.table.c[ID_COLUMN]
        statement = (
            sa.select(*(self.table.c[name] for name in self.written))
            .where(*self.conditions(query, engine.dialect))
            .order_by(id_column.asc() if oldest_first else id_column.desc())
        )
        if query.limit is not None:
            statement = statement.limit(query.limit)
        with engine.connect() as connection:
            # Server-side cursors on PostgreSQL and MariaDB; SQLite steps
            # through the result as it is fetched.
            result = connection.execution_options(yield_per=SCAN_CHUNK).execute(statement)
            try:
                for part in result.partitions():
                    yield from self.convert(part)
            finally:
                # A caller that stops early leaves a server-side cursor open.
                result.close()

    def summarize(
        self, engine: sa.Engine, query: Query, builder: SummaryBuilder, fields: t.Collection[str]
    ) -> None:
        """Feed ``builder`` the counts of the rows ``query`` selects, computed
        in the database (see :class:`_SummarySQL`).

        :param fields: the policy's fields: parts for the others are skipped.
        """
        _SummarySQL(self, query, engine.dialect, fields).run(engine, builder)

    def retain(self, engine: sa.Engine, cutoff: datetime | None, max_records: int | None) -> int:
        """Delete rows dated before ``cutoff`` and all but the newest
        ``max_records`` (by ``traffic_id``), :data:`RETAIN_BATCH` rows per
        transaction so writers never wait long; return how many went."""
        removed = 0
        if cutoff is not None and "request_date" in self._written_set:
            removed += self._delete_older(engine, cutoff)
        if max_records is not None:
            removed += self._delete_beyond(engine, max_records)
        return removed

    def _delete_older(self, engine: sa.Engine, cutoff: datetime) -> int:
        table = self.table
        id_column = table.c[ID_COLUMN]
        old = sa.select(id_column).where(table.c["request_date"] < cutoff).limit(RETAIN_BATCH)
        removed = 0
        while True:
            if engine.dialect.name in ("mysql", "mariadb"):
                # MariaDB and MySQL refuse LIMIT in an IN subquery: fetch the ids.
                with engine.connect() as connection:
                    ids = list(connection.execute(old).scalars())
                if not ids:
                    break
                delete = sa.delete(table).where(id_column.in_(ids))
            else:
                delete = sa.delete(table).where(id_column.in_(old.scalar_subquery()))
            with engine.begin() as connection:
                count = connection.execute(delete).rowcount
            removed += count
            if count < RETAIN_BATCH:
                break
        return removed

    def _delete_beyond(self, engine: sa.Engine, max_records: int) -> int:
        table = self.table
        id_column = table.c[ID_COLUMN]
        newest_first = sa.select(id_column).order_by(id_column.desc())
        with engine.connect() as connection:
            # The oldest row to keep; rows written meanwhile get larger ids.
            keep_from = connection.execute(newest_first.offset(max_records - 1).limit(1)).scalar()
        if keep_from is None:
            return 0
        batch_ends = (
            sa.select(id_column)
            .where(id_column < keep_from)
            .order_by(id_column.asc())
            .offset(RETAIN_BATCH - 1)
            .limit(1)
        )
        removed = 0
        while True:
            # The id that ends a batch, so each DELETE is one id range. Read
            # outside the deleting transaction: a SQLite transaction that
            # reads before it writes fails if another process wrote between.
            with engine.connect() as connection:
                batch_end = connection.execute(batch_ends).scalar()
            below = id_column < keep_from if batch_end is None else id_column <= batch_end
            with engine.begin() as connection:
                removed += connection.execute(sa.delete(table).where(below)).rowcount
            if batch_end is None:
                return removed


def _parse_iso(text: str) -> datetime | None:
    # The datetime whose read() text is exactly ``text``, else None.
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.utcoffset() != timedelta(0) or _iso(moment) != text:
        return None
    return moment


def exact_text(expression: sa.ColumnElement[t.Any], dialect: Dialect) -> sa.ColumnElement[t.Any]:
    """``expression`` compared, grouped and ordered by its bytes, as Python compares
    str: MariaDB's and MySQL's default collations ignore case and trailing
    spaces, and PostgreSQL's may order by language rules."""
    if dialect.name in ("mysql", "mariadb"):
        return expression.collate(
            "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"
        )
    if dialect.name == "postgresql":
        return expression.collate("C")
    return expression


def _double(value: float, dialect: Dialect) -> sa.ColumnElement[float]:
    """A float constant the database computes with as a double, bit for bit."""
    if dialect.name in ("mysql", "mariadb"):
        # A literal with an exponent is a DOUBLE there (without one, a DECIMAL);
        # 17 significant digits give back the same double.
        return sa.literal_column(f"{value:.16e}", sa.Double())
    return sa.cast(sa.literal(value, sa.Double()), sa.Double())


def _exp(value: float) -> float:
    # SQLite's exp() gives infinity where Python's raises.
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


def _ensure_ln(connection: sa.Connection) -> None:
    # SQLite has ln(), exp() and floor() when built with its math functions
    # (most builds since 3.35); otherwise Python's, which give the same values.
    import sqlite3

    raw: t.Any = connection.connection.driver_connection
    try:
        raw.execute("SELECT ln(1.0), exp(1.0), floor(1.5)").fetchall()
    except sqlite3.OperationalError:  # no such function
        raw.create_function("ln", 1, math.log, deterministic=True)
        raw.create_function("exp", 1, _exp, deterministic=True)
        raw.create_function("floor", 1, math.floor, deterministic=True)


#: The columns the summary counts requests by, besides time: the summary
#: index's first columns, in its order.
_DIMENSIONS = SUMMARY_INDEX_COLUMNS[:4]
# (route, status, browser, platform, weight): one group's weight.
_Counted = tuple[t.Any, t.Any, t.Any, t.Any, float]

# Feeds a SummaryBuilder what one summary query found.
_Feed = Callable[[SummaryBuilder], None]
_Part = Callable[[sa.Connection], _Feed]


class _SummarySQL:
    """The summary of the rows a query selects, counted by the database.

    A few queries, each one pass over the selected rows: the time span (two
    index lookups); requests per status, route, ``response_time`` histogram
    bucket, browser and platform together (few distinct combinations, rolled
    up in Python); requests per minute; the top paths and referrers, each
    ranked in the database so only the leaders come back; unique visitors as
    a ``COUNT`` of distinct (UTC day, address, user agent). Weights are
    ``SUM(1 / request_sample_rate)``. Only grouped counts reach Python, never
    a row per request.

    On a SQLite file the queries run two at a time on two connections (SQLite
    sorts each ``GROUP BY`` on one core); elsewhere one after the other on
    one connection.

    On SQLite, where sorting is what a summary costs, two parts step through
    an index instead of sorting: the requests per minute through the
    ``request_date`` index, and, where the table has the summary index (see
    :data:`SUMMARY_INDEX_COLUMNS`) and the window covers at least half of
    the table's time, the status/route/browser/platform counts and the
    ``response_time`` histograms (see :meth:`_indexed_dimensions`). When no
    row in the window was sampled, rows are counted instead of weighed.
    """

    def __init__(self, io: TableIO, query: Query, dialect: Dialect, fields: t.Collection[str]):
        self.dialect = dialect
        self.fields = frozenset(fields)
        self.table = io.table
        self.columns = {name: io.table.c[name] for name in io.written}
        self.conditions = io.conditions(query, dialect)
        #: Whether the summary index could answer the query on its own: its
        #: window is on request_date and its tests are on the index's columns.
        self.covered = dialect.name == "sqlite" and set(query.where) <= set(SUMMARY_INDEX_COLUMNS)
        #: The summary index to read the dimensions from, found by :meth:`run`.
        self.index: str | None = None
        #: The index on request_date alone, on SQLite, found by :meth:`run`.
        self.date_index: str | None = None
        self.since = query.since
        self.until = query.until
        self.window = query.since is not None or query.until is not None
        #: Whether the window is narrow enough to find through the date
        #: index (SQLite), found by :meth:`run`.
        self.narrow = False
        #: Whether some selected row was kept by sampling, found by :meth:`run`:
        #: only then are weights summed instead of rows counted.
        self.weighted = True
        one = _double(1.0, dialect)
        rate = self.columns.get("request_sample_rate")
        self.weight: sa.ColumnElement[t.Any] = (
            one
            if rate is None
            else sa.case((rate.is_(None), one), (rate == 0, one), else_=one / rate)
        )

    # -- running ---------------------------------------------------------------

    def parts(self) -> list[_Part]:
        """The queries to run, each giving what to feed, in the order that
        finishes soonest on two connections (measured with
        tests/benchmarks/bench_summary_sql.py): the two that step through an
        index (dimensions, minutes) one after the other, each beside a sort.
        Two index walks at once slow each other down by half (every row they
        return takes the GIL, and their page reads contend); a walk beside a
        sort does not."""
        parts: list[_Part] = [self._dimensions if self.index is None else self._indexed_dimensions]
        if self.fields >= VISITOR_FIELDS:
            parts.append(self._visitors)
        tops = [
            functools.partial(self._ranked_top, name)
            for name in ("top_paths", "top_referrers")
            if TOP_FIELDS[name] in self.fields and TOP_FIELDS[name] in self.columns
        ]
        # The bigger sort next, then minutes: it starts when the dimensions
        # end, beside that sort.

        parts.extend(tops[:1])
        if "request_date" in self.columns:
            parts.append(self._minutes if self.date_index is None else self._walked_minutes)
        parts.extend(tops[1:])
        parts.append(self._span)
        return parts

    def run(self, engine: sa.Engine, builder: SummaryBuilder) -> None:
        """Run every part and feed ``builder`` (in this thread) what they found."""
        with engine.connect() as connection:
            self.weighted = self._find_weighted(connection)
            if self.dialect.name == "sqlite":
                self._choose_indexes(connection)
        parts = self.parts()
        if self.dialect.name == "sqlite" and isinstance(engine.pool, sa.pool.QueuePool):
            with concurrent.futures.ThreadPoolExecutor(2, "flask-traffic-summary") as pool:
                futures = [pool.submit(self._run_alone, engine, part) for part in parts]
                feeds = [future.result() for future in futures]
        else:
            with engine.connect() as connection:
                feeds = self._run_all(connection, parts)
        for feed in feeds:
            feed(builder)

    def _choose_indexes(self, connection: sa.Connection) -> None:
        # Looked up each time: another process (or a migration) may have
        # added them since the store started.
        if "request_date" in self.columns:
            self.date_index = find_index(connection, self.table, ["request_date"])
        # A window over less than half the table's time is found through
        # the date index; a wider one is read with the rest of the table.
        self.narrow = (
            self.window and self.date_index is not None and self._window_share(connection) < 0.5
        )
        if self.covered and not self.narrow and "request_route" in self.fields:
            # Not for a narrow window: the summary index is read whole
            # whatever the window.
            self.index = find_index(connection, self.table, SUMMARY_INDEX_COLUMNS)

    def _window_share(self, connection: sa.Connection) -> float:
        # The share of the table's time span that the window covers: about
        # the share of its rows, as traffic is spread over time.
        first, last = self._date_range(connection, self.table.c["request_date"])
        if first is None or last is None or last <= first:
            return 1.0
        start = first if self.since is None else max(first, self.since)
        end = last if self.until is None else min(last, self.until)
        share: float = max(end - start, timedelta(0)) / (last - first)
        return share

    def _run_alone(self, engine: sa.Engine, part: _Part) -> _Feed:
        with engine.connect() as connection:
            return self._run_all(connection, [part])[0]

    def _run_all(self, connection: sa.Connection, parts: list[_Part]) -> list[_Feed]:
        if self.dialect.name == "sqlite":
            _ensure_ln(connection)
        return [part(connection) for part in parts]

    # -- building blocks --------------------------------------------------------

    def text(self, name: str) -> sa.ColumnElement[t.Any] | None:
        """The column of a text field, compared by its bytes; None without one."""
        column = self.columns.get(name)
        return None if column is None else exact_text(column, self.dialect)

    def digests(self, keys: dict[str, sa.ColumnElement[t.Any]]) -> list[sa.ColumnElement[t.Any]]:
        """Extra keys that tell long text values apart on MariaDB and MySQL,
        whose GROUP BY and DISTINCT compare only the first
        ``max_sort_length`` bytes (1024) of TEXT: two 10 kB user agents that
        start alike would count as one."""
        if self.dialect.name not in ("mysql", "mariadb"):
            return []
        return [
            sa.func.sha2(expression, 256).label(f"{name}_digest")
            for name, expression in keys.items()
            if isinstance(expression.type, sa.Text)
        ]

    def selected(
        self,
        columns: t.Iterable[sa.ColumnElement[t.Any]],
        *conditions: sa.ColumnElement[bool],
        weights: bool = True,
    ) -> sa.Select[t.Any]:
        """``columns`` of the rows the query selects (and ``conditions``),
        with their weight ``w`` if :attr:`weighted` and ``weights``.

        On SQLite the index to read is named, not left to the planner, which
        has no statistics: a narrow window is found through the date index;
        otherwise the table is read whole, not through the summary index
        (smaller than the table, but its rows come out in an order slower to
        sort), nor through the date index (a lookup per row).
        """
        weight = [self.weight.label("w")] if self.weighted and weights else []
        statement = sa.select(*columns, *weight).where(*self.conditions, *conditions)
        if self.dialect.name == "sqlite":
            source = _IndexedBy.of(self.table, self.date_index if self.narrow else None)
            statement = ClauseAdapter(source).traverse(statement)
        return statement

    def grouped(
        self,
        connection: sa.Connection,
        keys: dict[str, sa.ColumnElement[t.Any]],
    ) -> list[t.Sequence[t.Any]]:
        """The weight of the rows per distinct ``keys``: rows ``(*keys, weight)``.

        The keys are computed in a subquery and grouped by name outside it,
        so expressions with bound parameters group on every database.
        """
        inner = self.selected(
            [
                *(expression.label(name) for name, expression in keys.items()),
                *self.digests(keys),
            ]
        ).subquery("selected")
        # The digests, if any, come after the keys: rows start with the keys.
        key_columns = [column for column in inner.c if column.name != "w"]
        statement = sa.select(*key_columns, self.total(inner)).group_by(*key_columns)
        # No GROUP BY and no row gives one row of NULL or 0: dropped.
        return [row for row in connection.execute(statement) if row[-1]]

    def through(
        self, index: str | None, name: str
    ) -> tuple[_IndexedBy, list[sa.ColumnElement[bool]], sa.ColumnElement[t.Any]]:
        """The table read through ``index`` under the name ``name``, for the
        index walks: the query's conditions on it, and the weight of a
        group of its rows (see :meth:`total`)."""
        source = _IndexedBy.of(self.table, index, name)
        adapter = ClauseAdapter(source)
        conditions = [adapter.traverse(condition) for condition in self.conditions]
        weight = sa.func.sum(adapter.traverse(self.weight)) if self.weighted else sa.func.count()
        return source, conditions, weight

    def total(self, inner: sa.Subquery) -> sa.ColumnElement[t.Any]:
        """The weight of a group of ``inner``'s rows: their count when no row
        in the window was sampled, which spares computing 1,000,000 weights."""
        return sa.func.sum(inner.c.w) if self.weighted else sa.func.count()

    def _find_weighted(self, connection: sa.Connection) -> bool:
        # Whether any selected row weighs other than 1 (was kept by sampling).
        rate = self.columns.get("request_sample_rate")
        if rate is None:
            return False
        sampled = sa.select(sa.literal(1)).where(
            *self.conditions, rate.is_not(None), rate != 0, rate != 1
        )
        return connection.execute(sampled.limit(1)).first() is not None

    # -- the parts ---------------------------------------------------------------

    def _dimensions(self, connection: sa.Connection) -> _Feed:
        # Status, route, histogram bucket, browser, platform: each has few
        # distinct values, so one GROUP BY over all of them stays small and
        # costs one sort instead of four.
        keys: dict[str, sa.ColumnElement[t.Any]] = {}
        for name in _DIMENSIONS:
            if name in self.columns:
                column = self.columns[name]
                text = isinstance(column.type, sa.Text)
                keys[name] = exact_text(column, self.dialect) if text else column
        if "request_route" in self.fields and "response_time" in self.columns:
            keys["bucket"] = self._bucket(self.columns["response_time"])

        rows = self.grouped(connection, keys)
        counts: list[_Counted] = []
        times: list[tuple[str | None, int | float | None, float]] = []
        for row in rows:
            key = dict(zip(keys, row, strict=False))
            weight = row[-1]
            counts.append((*(key.get(name) for name in _DIMENSIONS), weight))
            times.append((key.get("request_route"), key.get("bucket"), weight))
        return self._dimensions_feed(counts, times)

    def _indexed_dimensions(self, connection: sa.Connection) -> _Feed:
        # What _dimensions counts, read from the summary index without a
        # sort. The counts are grouped in the index's order. The histogram
        # walks each group's response_time range in the index, one bucket at
        # a time: a seek finds the bucket's first time, a seek past its end
        # the next bucket's, so each row is read twice but never sorted.
        # Buckets are made of the rows between a first time and a bound a
        # little (2e-12) below the next bucket's start; if rounding puts a
        # row of the same bucket past that bound, it starts a range of its
        # own, whose bucket is again computed from its first time.
        index = self.index
        base = _double(HISTOGRAM_BASE_MS, self.dialect)
        log_ratio = _double(math.log(HISTOGRAM_RATIO), self.dialect)
        below = _double(1 - 2e-12, self.dialect)

        def bucket_end(first: sa.ColumnElement[t.Any]) -> sa.ColumnElement[t.Any]:
            start = base * sa.func.exp(self._bucket(first) * log_ratio)
            return sa.func.max(first, start * below)

        def same_group(source: _IndexedBy, group: t.Any) -> list[sa.ColumnElement[bool]]:
            return [source.c[name].is_(group.c[name]) for name in _DIMENSIONS]

        source, conditions, weight = self.through(index, self.table.name)
        keys = [source.c[name] for name in _DIMENSIONS]
        groups = (
            sa.select(
                *keys, weight.label("weight"), sa.func.min(source.c.response_time).label("lo")
            )
            .where(*conditions)
            .group_by(*keys)
            .cte("groups")
        )
        steps = sa.select(groups).cte("steps", recursive=True)
        step = steps.alias("step")
        source, conditions, _ = self.through(index, "following")
        following = (
            sa.select(sa.func.min(source.c.response_time))
            .where(
                *same_group(source, step),
                source.c.response_time > bucket_end(step.c.lo),
                *conditions,
            )
            .scalar_subquery()
        )
        steps = steps.union_all(
            sa.select(*(step.c[name] for name in _DIMENSIONS), sa.null(), following).where(
                step.c.lo.is_not(None)
            )
        )
        source, conditions, weight = self.through(index, "ranged")
        ranged = (
            sa.select(weight)
            .where(
                *same_group(source, steps),
                source.c.response_time >= steps.c.lo,
                source.c.response_time <= bucket_end(steps.c.lo),
                *conditions,
            )
            .scalar_subquery()
        )
        statement = sa.select(
            *(steps.c[name] for name in _DIMENSIONS),
            steps.c.weight,
            self._bucket(steps.c.lo),
            ranged,
        )
        written = [name in self.columns for name in _DIMENSIONS]
        counts: list[_Counted] = []
        times: list[tuple[str | None, int | float | None, float]] = []
        for *values, group_weight, bucket, bucket_weight in connection.execute(statement):
            # A column the policy does not write reads as None, as in _dimensions.
            key = [value if kept else None for value, kept in zip(values, written, strict=True)]
            if group_weight:
                counts.append((*key, group_weight))
            if bucket is not None and bucket_weight:
                times.append((key[0], bucket, bucket_weight))
        return self._dimensions_feed(counts, times)

    def _dimensions_feed(
        self,
        counts: list[_Counted],
        times: list[tuple[str | None, int | float | None, float]],
    ) -> _Feed:
        """What feeds the builder ``counts`` (the weight per route, status,
        browser and platform) and ``times`` (per route and bucket)."""
        routes = "request_route" in self.fields
        tops = [
            name
            for name in ("top_browsers", "top_platforms")
            if TOP_FIELDS[name] in self.fields and TOP_FIELDS[name] in self.columns
        ]

        def feed(builder: SummaryBuilder) -> None:
            statuses: defaultdict[int | None, float] = defaultdict(float)
            route_counts: defaultdict[str | None, float] = defaultdict(float)
            buckets: defaultdict[tuple[str | None, int], float] = defaultdict(float)
            top_counts: dict[str, defaultdict[str, float]] = {n: defaultdict(float) for n in tops}
            for route, code, browser, platform, weight in counts:
                statuses[None if code is None else int(code)] += weight
                route_counts[route] += weight
                for name, value in (("top_browsers", browser), ("top_platforms", platform)):
                    if name in top_counts and value is not None:
                        top_counts[name][value] += weight

            for route, index, weight in times:
                if index is not None:
                    buckets[route, min(int(index), HISTOGRAM_MAX_INDEX)] += weight
            for code, weight in statuses.items():
                builder.add_status(code, weight)
            if routes:
                for route, weight in route_counts.items():
                    builder.add_route(_decode_optional_text(route), weight)
                for (route, index), weight in buckets.items():
                    builder.add_route_time(_decode_optional_text(route), index, weight)
            for name, top in top_counts.items():
                for value, weight in top.items():
                    builder.add_top(name, decode_text(value), weight)
            builder.set_span(builder.first, builder.last, self.weighted)

        return feed

    def _bucket(self, time: sa.ColumnElement[t.Any]) -> sa.ColumnElement[t.Any]:
        # histogram_index() in SQL: the same double operations give the same
        # bucket; clamped to HISTOGRAM_MAX_INDEX in Python.
        base = _double(HISTOGRAM_BASE_MS, self.dialect)
        log_ratio = _double(math.log(HISTOGRAM_RATIO), self.dialect)
        return sa.case(
            (time.is_(None), sa.null()),
            (time < base, 0),
            else_=sa.func.floor(sa.func.ln(time / base) / log_ratio) + 1,
        )

    def _minutes(self, connection: sa.Connection) -> _Feed:
        date = self.columns["request_date"]
        name = self.dialect.name
        # "YYYY-MM-DD HH:MM" of the UTC request_date.
        if name == "postgresql":
            minute = sa.func.to_char(sa.func.timezone("UTC", date), "YYYY-MM-DD HH24:MI")
        elif name in ("mysql", "mariadb"):
            minute = sa.func.date_format(date, "%Y-%m-%d %H:%i")
        else:
            # SQLite keeps "YYYY-MM-DD HH:MM:SS.ffffff" text.
            minute = sa.func.substr(date, 1, 16)
        rows = self.grouped(connection, {"minute": minute})

        def feed(builder: SummaryBuilder) -> None:
            for key, weight in rows:
                if key is not None:
                    builder.add_minute(f"{key[:10]}T{key[11:16]}", weight)

        return feed

    def _walked_minutes(self, connection: sa.Connection) -> _Feed:
        # SQLite: what _minutes counts, stepping through the request_date
        # index a minute at a time instead of sorting every row by minute.
        # The stored text is "YYYY-MM-DD HH:MM:SS.ffffff": a minute's rows
        # come before its "YYYY-MM-DD HH:MM" followed by ";" (after ":").
        def minute(date: sa.ColumnElement[t.Any]) -> sa.ColumnElement[str]:
            return sa.func.substr(date, 1, 16, type_=sa.String)

        source, conditions, _ = self.through(self.date_index, self.table.name)
        steps = (
            sa.select(sa.func.min(source.c.request_date, type_=sa.String).label("first"))
            .where(*conditions)
            .cte("minutes", recursive=True)
        )
        step = steps.alias("step")
        source, conditions, _ = self.through(self.date_index, "following")
        following = (
            sa.select(sa.func.min(source.c.request_date, type_=sa.String))
            .where(source.c.request_date >= minute(step.c.first) + ";", *conditions)
            .scalar_subquery()
        )
        steps = steps.union_all(sa.select(following).where(step.c.first.is_not(None)))
        source, conditions, weight = self.through(self.date_index, "counted")
        counted = (
            sa.select(weight)
            .where(
                source.c.request_date >= steps.c.first,
                source.c.request_date < minute(steps.c.first) + ";",
                *conditions,
            )
            .scalar_subquery()
        )
        rows = [
            row for row in connection.execute(sa.select(minute(steps.c.first), counted)) if row[1]
        ]

        def feed(builder: SummaryBuilder) -> None:
            for key, weight in rows:
                builder.add_minute(f"{key[:10]}T{key[11:16]}", weight)

        return feed

    @staticmethod
    def _date_range(
        connection: sa.Connection, date: sa.ColumnElement[t.Any], *conditions: t.Any
    ) -> tuple[t.Any, t.Any]:
        # The first and last request_date of the rows ``conditions`` select:
        # two scalar subqueries, as each MIN or MAX alone is one index lookup.
        first, last = connection.execute(
            sa.select(
                sa.select(sa.func.min(date)).where(*conditions).scalar_subquery(),
                sa.select(sa.func.max(date)).where(*conditions).scalar_subquery(),
            )
        ).one()
        return first, last

    def _span(self, connection: sa.Connection) -> _Feed:

        date = self.columns.get("request_date")
        if date is None:
            return lambda builder: None
        first, last = self._date_range(connection, date, *self.conditions)

        def feed(builder: SummaryBuilder) -> None:
            builder.set_span(_iso(first), _iso(last), builder.sampled)

        return feed

    def _ranked_top(self, name: str, connection: sa.Connection) -> _Feed:
        # Only the leaders leave the database: the TOP first by (weight,
        # stored text), and every value tied with them whose stored text may
        # not sort as its value does (escaped text starts with U+FFFE). The
        # builder sorts them all by (-weight, value) and keeps TOP.
        value = exact_text(self.columns[TOP_FIELDS[name]], self.dialect)
        digests = self.digests({"value": value})
        inner = self.selected([value.label("value"), *digests], value.is_not(None)).subquery(
            "selected"
        )
        weight = self.total(inner)
        keys = [column for column in inner.c if column.name != "w"]
        ranked = (
            sa.select(
                inner.c.value,
                weight.label("weight"),
                sa.func.row_number().over(order_by=(weight.desc(), *keys)).label("n"),
                sa.func.rank().over(order_by=weight.desc()).label("rank"),
            )
            .group_by(*keys)
            .subquery("ranked")
        )
        unordered = ranked.c.value >= _ESCAPED
        if digests:
            # Ordered by their first 1024 bytes only, as grouping is.
            unordered = sa.or_(unordered, sa.func.length(ranked.c.value) > 1000)
        statement = sa.select(ranked.c.value, ranked.c.weight).where(
            sa.or_(ranked.c.n <= TOP, sa.and_(ranked.c.rank <= TOP, unordered))
        )
        rows = list(connection.execute(statement))

        def feed(builder: SummaryBuilder) -> None:
            for stored, weight in rows:
                builder.add_top(name, decode_text(stored), weight)

        return feed

    def _visitors(self, connection: sa.Connection) -> _Feed:
        date = self.columns.get("request_date")
        count = 0
        if date is not None:
            name = self.dialect.name
            if name == "postgresql":
                day = sa.func.to_char(sa.func.timezone("UTC", date), "YYYY-MM-DD")
            elif name in ("mysql", "mariadb"):
                day = sa.func.date(date)
            else:
                day = sa.func.substr(date, 1, 10)
            address, agent = (
                sa.null() if text is None else text
                for text in (self.text("request_remote_address"), self.text("request_user_agent"))
            )
            keys = {"address": address, "agent": agent}
            columns = [day.label("day"), *(e.label(n) for n, e in keys.items())]
            distinct = (
                self.selected([*columns, *self.digests(keys)], date.is_not(None), weights=False)
                .distinct()
                .subquery("visits")
            )

            found = connection.execute(sa.select(sa.func.count()).select_from(distinct)).scalar()
            count = int(found or 0)
        return lambda builder: builder.set_visitors(count)


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
