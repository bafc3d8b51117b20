"""A fold of SQL rows added up by the database: grouped queries instead of
every row read into Python.

A chunk of rows (a few thousand, by id) is summed per UTC hour by a
few ``GROUP BY`` queries: one per status code (with the counts, weights and
first and last ``request_date``), one per route and ``response_time``
histogram bucket, one per top list's field, and one of the distinct
visitors. Python then sees a row per group, not per record, and adds the
hours up into their days. The result is the :class:`~flask_traffic.rollups.RollupDelta`
that :meth:`~flask_traffic.rollups.RollupDelta.add_rows` makes of the same
rows, which the rollups apply as before.

The database computes the weights (``1 / request_sample_rate``) and the
histogram bucket with the same double operations as Python
(:func:`._sqlexpr.histogram_bucket`); only the order of the additions of
sampled weights differs, by a rounding at most.
"""

from __future__ import annotations

import hashlib
import typing as t
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from ..rollups import HyperLogLog, RollupDelta, Unit, rollup_key, visitor_hash
from ..summary import HISTOGRAM_MAX_INDEX, TOP_FIELDS
from ._rollupparts import Times
from ._sqlexpr import double, histogram_bucket, utc_truncated
from ._sqltext import decode_optional_text, decode_text, exact_text
from .sqlschema import ID_COLUMN

__all__ = ["fold_chunk", "key_hash"]

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = timedelta(microseconds=1)

#: ``(unit, bucket start)`` of an hour and of its day.
_Buckets = tuple[tuple[Unit, datetime], tuple[Unit, datetime]]


class _Hours:
    """The hour and day buckets of ``YYYY-MM-DD HH`` texts, each worked out once."""

    def __init__(self) -> None:
        self._known: dict[str, _Buckets] = {}

    def __call__(self, text: t.Any) -> _Buckets:
        text = str(text)
        found = self._known.get(text)
        if found is None:
            hour = datetime(
                int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), tzinfo=_UTC
            )
            found = self._known[text] = (("hour", hour), ("day", hour.replace(hour=0)))
        return found


def _microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def fold_chunk(
    connection: sa.Connection,
    table: sa.Table,
    ids: tuple[int, int],
    conditions: list[sa.ColumnElement[bool]],
    secret: bytes,
    limit: int,
    sums: sa.Table,
) -> tuple[RollupDelta, Times, int, int] | None:
    """Add up the first ``limit`` rows with an id after ``ids[0]`` and up to
    ``ids[1]`` that meet ``conditions``, by id, in the database: their delta
    (hours and days; no ``time`` part), their ``response_time`` histograms
    per bucket and route, the last one's id and how many; ``None`` when
    there are none. ``table`` has a column for each of
    :data:`~flask_traffic.rollups.ROLLUP_FIELDS` (a store keeps rollups only
    then).

    On SQLite the top lists' sums are not in the delta: they are added to
    ``sums`` (the rollups' sums table) here, by ``INSERT ... SELECT``, as
    a few rows a record are most of a fold's work there.
    """
    id_column = table.c[ID_COLUMN]
    after, upto = ids
    # The chunk's last id and size, not its ids: reading 5,000 of them into
    # Python was a tenth of a SQLite fold.
    ids_in = (
        sa.select(id_column.label("id"))
        .where(id_column > after, id_column <= upto, *conditions)
        .order_by(id_column)
        .limit(limit)
        .subquery("ids")
    )
    last_id, count = connection.execute(sa.select(sa.func.max(ids_in.c.id), sa.func.count())).one()
    if not count:
        return None
    last = int(last_id)
    # The chunk's ids as one range, with one upper bound: given two (``upto``
    # and ``last``), SQLite bounds its walk by the first and filters by the
    # other, to the end of the table: 1.6 s a chunk on 10 million rows.
    chunk = [id_column > after, id_column <= last, *conditions]
    fold = _Fold(connection, table, chunk, secret)
    fold.statuses()
    fold.routes()
    if connection.dialect.name == "sqlite":
        _insert_tops(connection, sums, table, fold.chunk, fold.weight)
    else:
        for part, field in TOP_FIELDS.items():
            fold.top(part, field)
    fold.visitors()
    return fold.delta, fold.times, last, int(count)


class _Fold:
    """The grouped queries of one chunk, and the delta they add up to."""

    def __init__(
        self,
        connection: sa.Connection,
        table: sa.Table,
        conditions: list[sa.ColumnElement[bool]],
        secret: bytes,
    ) -> None:
        self.connection = connection
        self.columns = table.c
        date = table.c["request_date"]
        #: The chunk's rows (those without a date count nowhere).
        self.chunk = [*conditions, date.is_not(None)]
        rate = table.c["request_sample_rate"]
        #: A row's weight, as :meth:`RollupDelta.add_rows` computes it.
        self.weight: sa.ColumnElement[float] = sa.case(
            (sa.or_(rate.is_(None), rate == 0), double(1.0)), else_=double(1.0) / rate
        )
        self.secret = secret
        self.delta = RollupDelta(secret, units=("hour", "day"))
        self.times: Times = {}
        self.buckets = _Hours()

    def grouped(
        self,
        keys: dict[str, sa.ColumnElement[t.Any]],
        *aggregates: t.Callable[[sa.Subquery], sa.ColumnElement[t.Any]],
        where: t.Sequence[sa.ColumnElement[bool]] = (),
    ) -> t.Iterable[t.Any]:
        """Rows of ``(hour, *keys, *aggregates)`` over the chunk's rows, per
        distinct hour and keys. The keys are computed in a subquery and
        grouped by name outside it: expressions with bound parameters group
        on every database."""
        columns = self.columns
        inner = (
            sa.select(
                utc_truncated(columns["request_date"], "hour").label("hour"),
                *(expression.label(name) for name, expression in keys.items()),
                self.weight.label("w"),
                columns["request_date"].label("d"),
            )
            .where(*self.chunk, *where)
            .subquery("chunk")
        )
        names = [inner.c.hour, *(inner.c[name] for name in keys)]
        statement = sa.select(*names, *(make(inner) for make in aggregates)).group_by(*names)
        return self.connection.execute(statement)

    def add(self, text: t.Any, part: str, key: str, value: float) -> None:
        sums = self.delta.sums
        for unit, start in self.buckets(text):
            sums[unit, start, part, key] += value

    def statuses(self) -> None:
        """Weights and counts per status code; each bucket's first and last date."""
        delta = self.delta
        spans = delta.spans
        rows = self.grouped(
            {"status": self.columns["response_status_code"]},
            lambda inner: sa.func.sum(inner.c.w),
            lambda inner: sa.func.count(),
            lambda inner: sa.func.min(inner.c.d),
            lambda inner: sa.func.max(inner.c.d),
        )
        for text, code, summed, count, first, last in rows:
            self.add(text, "total", "", summed)
            self.add(text, "records", "", float(count))
            self.add(text, "status", "" if code is None else str(code), summed)
            delta.records += int(count)
            low, high = _microseconds(first), _microseconds(last)
            for bucket in self.buckets(text):
                span = spans.get(bucket)
                if span is None:
                    spans[bucket] = [low, high]
                else:
                    span[0] = min(span[0], low)
                    span[1] = max(span[1], high)

    def routes(self) -> None:
        """Weights per route and per route and ``response_time`` bucket."""
        columns = self.columns
        rows = self.grouped(
            {
                "route": exact_text(columns["request_route"]),
                "bucket": histogram_bucket(columns["response_time"]),
            },
            lambda inner: sa.func.sum(inner.c.w),
        )
        route_keys: dict[str | None, str] = {}
        times = self.times
        for text, stored, bucket, summed in rows:
            value = decode_optional_text(stored)
            key = route_keys.get(value)
            if key is None:
                key = route_keys[value] = rollup_key(value)
            self.add(text, "route", key, summed)
            if bucket is None:
                continue
            index = min(int(bucket), HISTOGRAM_MAX_INDEX)
            for pair in self.buckets(text):
                histogram = times.setdefault(pair, {}).setdefault(value, {})
                histogram[index] = histogram.get(index, 0.0) + summed

    def top(self, part: str, name: str) -> None:
        """Weights per value of a top list's field."""
        field = self.columns[name]
        rows = self.grouped(
            {"value": exact_text(field)},
            lambda inner: sa.func.sum(inner.c.w),
            where=[field.is_not(None)],
        )
        for text, stored, summed in rows:
            self.add(text, part, decode_text(stored), summed)

    def visitors(self) -> None:
        """Each hour's and day's sketch of the distinct visitors."""
        columns = self.columns
        rows = self.grouped(
            {
                "address": exact_text(columns["request_remote_address"]),
                "agent": exact_text(columns["request_user_agent"]),
            }
        )
        visitors = self.delta.visitors
        for text, address, agent in rows:
            hashed = visitor_hash(
                self.secret,
                str(text)[:10],
                decode_optional_text(address),
                decode_optional_text(agent),
            )
            for bucket in self.buckets(text):
                sketch = visitors.get(bucket)
                if sketch is None:
                    sketch = visitors[bucket] = HyperLogLog()
                sketch.add(hashed)


def key_hash(part: str, key: str) -> int:
    """The 64 bits of BLAKE2b that stand for ``(part, key)`` in a sums row's
    primary key."""
    text = f"{part}\x00{key}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


def _stored_key_hash(part: str, stored: str) -> int:
    return key_hash(part, decode_text(stored))


# SQLite's text of a bucket start, from its hour's text (``YYYY-MM-DD HH``):
# the hour's or the day's first characters, then the rest of the stored format.
_SQLITE_STARTS: dict[Unit, tuple[int, str]] = {
    "hour": (13, ":00:00.000000"),
    "day": (10, " 00:00:00.000000"),
}

# A chunk's top list sums per hour, on SQLite, before they are added to the
# hours and, summed again, to the days: the chunk's rows are read once for
# all four lists, and each key hashed once, not once a bucket size.
_SQLITE_HOURS = sa.Table(
    "traffic_fold_tops",
    sa.MetaData(),
    sa.Column("hour", sa.Text),
    sa.Column("part", sa.Text),
    sa.Column("key_hash", sa.BigInteger),
    sa.Column("key", sa.Text),
    sa.Column("weight", sa.Double),
    prefixes=["TEMPORARY"],
)


def _insert_tops(
    connection: sa.Connection,
    sums: sa.Table,
    table: sa.Table,
    chunk: list[sa.ColumnElement[bool]],
    weight: sa.ColumnElement[t.Any],
) -> None:
    from sqlalchemy.dialects import sqlite

    raw: t.Any = connection.connection.driver_connection
    # Once per connection would do; it costs a microsecond.
    raw.create_function("traffic_key_hash", 2, _stored_key_hash, deterministic=True)
    hours = _SQLITE_HOURS
    # A temporary table is the connection's own: no other writer sees it.
    # IF NOT EXISTS, one statement, where checkfirst asks two PRAGMAs first.
    connection.execute(sa.schema.CreateTable(hours, if_not_exists=True))
    connection.execute(hours.delete())
    hour = sa.func.substr(table.c["request_date"], 1, 13)
    selects = []
    for part, name in TOP_FIELDS.items():
        field = table.c[name]
        selects.append(
            sa.select(
                hour,
                sa.literal(part),
                sa.func.traffic_key_hash(part, field),
                field,
                sa.func.sum(weight),
            )
            .where(*chunk, field.is_not(None))
            .group_by(hour, field)
        )
    connection.execute(
        hours.insert().from_select(
            ["hour", "part", "key_hash", "key", "weight"], sa.union_all(*selects)
        )
    )
    for unit, (length, rest) in _SQLITE_STARTS.items():
        start = sa.func.substr(hours.c.hour, 1, length).op("||")(rest)
        if unit == "hour":
            select = sa.select(
                sa.literal(unit), start, hours.c.part, hours.c.key_hash, hours.c.key, hours.c.weight
            ).where(sa.true())
        else:
            select = sa.select(
                sa.literal(unit),
                start,
                hours.c.part,
                hours.c.key_hash,
                sa.func.min(hours.c.key),
                sa.func.sum(hours.c.weight),
            ).group_by(start, hours.c.part, hours.c.key_hash)
        # Inserted in primary key order: each lands beside the last (15 %
        # faster for a path a request).
        insert = sqlite.insert(sums).from_select(
            ["unit", "start", "part", "key_hash", "key", "weight"],
            select.order_by(start, hours.c.part, hours.c.key_hash),
        )
        connection.execute(
            insert.on_conflict_do_update(
                index_elements=["unit", "start", "part", "key_hash"],
                set_={"weight": sums.c.weight + insert.excluded.weight},
            )
        )
