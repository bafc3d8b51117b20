"""Reading and writing the rows of a traffic table: :class:`TableIO`."""

from __future__ import annotations

import operator
import typing as t
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa

from ..query import Query
from ..record import FIELDS, Field, FieldType, TrafficRecord, iso_text
from ._sqlinsert import DriverInsert, plan_insert
from ._sqltext import decode_optional_text, encode_optional_text, encode_text, exact_text
from .sqlschema import ID_COLUMN, failed

if t.TYPE_CHECKING:
    from ..policy import LogPolicy

__all__ = [
    "RETAIN_BATCH",
    "SCAN_CHUNK",
    "SpooledRow",
    "TableIO",
    "date_text",
    "make_fence_table",
    "spooled_row",
]

#: Rows fetched at a time while streaming a scan (an export of millions of
#: rows holds this many in memory, not all).
SCAN_CHUNK = 2000
#: Rows deleted per transaction by retention: short enough that writers
#: waiting for the table are not held up for long.
RETAIN_BATCH = 10_000


def date_text(value: datetime | None) -> str | None:
    """A stored date as ``read()`` gives it: :func:`~flask_traffic.record.iso_text`."""
    return None if value is None else iso_text(value)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _int(value: int | None) -> int | None:
    return None if value is None else int(value)


_FIELD_BY_NAME: dict[str, Field] = {field.name: field for field in FIELDS}

_READERS: dict[FieldType, Callable[[t.Any], t.Any]] = {
    "datetime": date_text,
    "str": decode_optional_text,
    "int": _int,
    "float": _float,
}


class TableIO:
    """Writes records into a traffic table and reads rows back, for one
    policy's fields.

    :param table: the table (a Core ``Table`` or a model's ``__table__``).
    :param fields: the policy's enabled field names, in schema order: the
        keys of the rows :meth:`scan` gives. The table's other field
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
        id_column = table.c[ID_COLUMN]
        select = sa.select(*(table.c[name] for name in written))
        # What scan() adds its WHERE and LIMIT to, newest or oldest first.
        self._newest_first = select.order_by(id_column.desc())
        self._oldest_first = select.order_by(id_column.asc())
        # The same, in an order no index gives (see scan()).
        self._sorted = {
            False: select.order_by((id_column + 0).desc()),
            True: select.order_by((id_column + 0).asc()),
        }
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
        # Per dialect: how the driver runs the insert, or False where
        # SQLAlchemy must (see _DriverInsert.plan).
        self._plans: dict[sa.Dialect, DriverInsert | t.Literal[False]] = {}

    def write(
        self,
        connection: sa.Connection,
        records: Sequence[TrafficRecord],
        values: Callable[[TrafficRecord], tuple[t.Any, ...]],
    ) -> None:
        """Insert ``records``.

        :param values: the policy's ``values``: the enabled fields, JSON-ready.
        """
        if records:
            tuples = list(map(values, records))
            if self._pick is not None:
                tuples = list(map(self._pick, tuples))
            # Column by column, so the per-value work runs in map() and zip().
            columns: list[t.Iterable[t.Any]] = list(zip(*tuples, strict=True))
            for index in self._text_indexes:
                columns[index] = map(encode_optional_text, columns[index])
            self._insert(connection, records, columns)

    def write_spooled(
        self, connection: sa.Connection, records: Sequence[TrafficRecord], spooled: SpooledRow
    ) -> None:
        """:meth:`write` of records read back from a spool, most of which
        carry their row under ``spooled``'s key with the text encoded."""
        if records:
            key, encode = spooled
            tuples = [record.computed(key, encode) for record in records]
            if self._pick is not None:
                tuples = list(map(self._pick, tuples))
            self._insert(connection, records, list(zip(*tuples, strict=True)))

    def _insert(
        self,
        connection: sa.Connection,
        records: Sequence[TrafficRecord],
        columns: list[t.Iterable[t.Any]],
    ) -> None:
        """One executemany of ``columns`` (text encoded; the date column
        taken from the records)."""
        if not self.written:
            connection.execute(self.insert, [{} for _ in records])
            return
        if self._date_index is not None:
            # The record keeps the datetime itself: no need to parse the text.
            columns[self._date_index] = map(_request_date, records)
        plan = self._plans.get(connection.dialect)
        if plan is None:
            plan = self._plans[connection.dialect] = plan_insert(self, connection.dialect)
        if plan is False:
            written = self.written
            rows = [dict(zip(written, row, strict=True)) for row in zip(*columns, strict=True)]
            connection.execute(self.insert, rows)
        else:
            plan.run(connection, columns)

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

    def conditions(self, query: Query) -> list[sa.ColumnElement[bool]]:
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
        found.extend(self._equals(name, value) for name, value in query.where.items())
        if query.errors_only:
            found.append(self._failed())
        return found

    def _failed(self) -> sa.ColumnElement[bool]:
        """:func:`~flask_traffic.query.is_error` as SQL, on the columns there:
        the database skips the rows that did not fail (through the errors
        index, where the table has it: :func:`.sqlschema.errors_index`)."""
        return failed(self.table, self._written_set)

    def _equals(self, name: str, value: t.Any) -> sa.ColumnElement[bool]:
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
            return exact_text(column) == encode_text(value)
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
        chunks of :data:`SCAN_CHUNK` rows from one streamed result, or at
        once when ``query.limit`` fits in one chunk (``read(100)``)."""
        if query.limit == 0:
            return
        statement = self._oldest_first if oldest_first else self._newest_first
        if query.errors_only and query.since is not None and engine.dialect.name == "sqlite":
            # Few rows fail: SQLite would walk the whole table in id order to
            # give them without a sort; this way it finds the window through
            # the date index and sorts what failed in it (a full scan of 10
            # million rows for the dashboard's errors of the last 24 hours).
            statement = self._sorted[oldest_first]
        conditions = self.conditions(query)
        if conditions:
            statement = statement.where(*conditions)
        if query.limit is not None:
            statement = statement.limit(query.limit)
        if query.limit is not None and query.limit <= SCAN_CHUNK:
            # No more rows than a chunk: no server-side cursor, and the
            # connection goes back to the pool before the first row is given.
            with engine.connect() as connection:
                rows = self.convert(connection.execute(statement))
            yield from rows
            return
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
    if moment.utcoffset() != timedelta(0) or iso_text(moment) != text:
        return None
    return moment


_request_date = operator.attrgetter("request_date")


#: What a SQL store's spool keeps of a record (:func:`spooled_row`): the key
#: it is kept under on the record, and what makes it.
SpooledRow = tuple[str, Callable[[TrafficRecord], tuple[t.Any, ...]]]


def spooled_row(policy: LogPolicy) -> SpooledRow:
    """What a SQL store spills of a record beside the record itself: the
    policy's values with their text encoded as the table holds it
    (:func:`encode_optional_text`) and the date left out (the record's start
    time gives it again), so that replay inserts them as they are, doing
    less than a fresh write does (:meth:`TableIO.spooled_rows`)."""
    names = policy.enabled_fields
    texts = [i for i, name in enumerate(names) if _FIELD_BY_NAME[name].type == "str"]
    date = names.index("request_date") if "request_date" in names else None
    values = policy.values

    def encode(record: TrafficRecord) -> tuple[t.Any, ...]:
        row = list(values(record))
        for index in texts:
            row[index] = encode_optional_text(row[index])
        if date is not None:
            row[date] = None
        return tuple(row)

    return f"sql-text\x00{policy.values_key}", encode


def _apply(reader: Callable[[t.Any], t.Any], value: t.Any) -> t.Any:
    return reader(value)


def make_fence_table(engine: sa.Engine, table: sa.Table) -> sa.Table:
    """``<table>_spool_fence(spool_id, records_written)``, created if missing
    (by another process at the same moment too)."""
    metadata = sa.MetaData(schema=table.schema)
    fence = sa.Table(
        f"{table.name}_spool_fence",
        metadata,
        sa.Column("spool_id", sa.String(64), primary_key=True),
        sa.Column("records_written", sa.BigInteger, nullable=False),
    )
    try:
        metadata.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        if not sa.inspect(engine).has_table(fence.name, schema=table.schema):
            raise
    return fence
