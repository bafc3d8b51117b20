"""Summaries and the dashboard's breakdown from RedisStore's rollups
(:class:`._redisrollups.RedisRollups`), by the rules of the SQL stores'
(:mod:`._sqlrollupsummary`): a window counted per minute is read from the
entries; any other has its edges rounded out to whole hours, which the
hour and day buckets hold."""

from __future__ import annotations

import itertools
import operator
import typing as t
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from ..query import iso_text
from ..rollups import (
    UNITS,
    Piece,
    Unit,
    WindowPlan,
    bucket_start,
    feed,
    leaders,
    plan_window,
    visitor_hash,
)
from ..summary import SummaryBuilder
from ._redisentries import lowest_id
from ._redisrollups import SEPARATOR, seconds_of, text_of
from ._rolluphistograms import feed_histograms
from ._rollupparts import KEPT_UNITS, OTHER, breakdown_records, records_weight
from ._rollupparts import rollup_source as _source

if t.TYPE_CHECKING:
    import redis

    from .._breakdown import BreakdownBuilder
    from ..query import Query
    from ._redisrollups import RedisRollups

__all__ = ["breakdown", "summarize"]

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = timedelta(microseconds=1)
#: Entries per ``XRANGE`` of the entries a summary reads.
_TAIL_CHUNK = 2000

_Row = dict[str, t.Any]


def summarize(
    rollups: RedisRollups, query: Query, builder: SummaryBuilder
) -> dict[str, t.Any] | None:
    """Feed ``builder`` the window of ``query`` (which has no ``where``) and
    return what the summary says of its source; ``None``, having fed
    nothing, when the entries are to be read instead: nothing folded yet,
    or a window counted per minute (:func:`~flask_traffic.summary.bucket_unit`
    of the window, or of the folded span where it has no edge), since
    minutes are not kept.

    Otherwise ``since`` is rounded down and ``until`` up to whole hours
    (``builder``'s too, and the source says so); a window without one ends
    with the hour of the last (or first) request folded. Its buckets are
    summed; those past their size's retention are counted from the entries
    folded, as are the entries after the fold position that fall in the
    window. Unique visitors are Redis's ``PFCOUNT`` of each day's union
    (its day sketch, or its hours'), with the visitors of the entries read
    merged in (``PFMERGE`` into a temporary key, ``PFADD``, ``PFCOUNT``,
    ``DEL``, in one ``MULTI``), so a visitor seen in both counts once. The
    position and the buckets are read under ``WATCH`` of the position, so
    a fold meanwhile cannot count an entry twice."""
    read = _read(rollups, query, summary=True)
    if read is None:
        return None
    position, plan, buckets, replies, day_keys, documents = read
    since, until, found, expired = plan.since, plan.until, plan.found, plan.expired
    builder.since, builder.until = since or builder.since, until or builder.until
    rows = _entries(rollups, position, expired, since, until)
    approximate = _feed(builder, buckets, replies, records_weight(rows), documents)
    day_counts = {
        day: int(count)
        for day, count in zip(sorted(day_keys), replies[len(buckets) :], strict=True)
    }
    builder.add_rows(rows)
    if not buckets:
        # Nothing folded in the window: the entries' visitors, exactly.
        return _source(None, len(rows), since, until, approximate)
    _count_visitors(rollups, builder, rows, day_keys, day_counts)
    finest = min(UNITS.index(piece.unit) for piece in found)
    return _source(UNITS[finest], len(rows), since, until, approximate)


def breakdown(
    rollups: RedisRollups, query: Query, builder: BreakdownBuilder
) -> dict[str, t.Any] | None:
    """Feed ``builder`` the window of ``query`` (which has no ``where``) as
    :func:`summarize` reads it: each kept bucket's total, status sums and
    histograms, and the entries it does not hold. Returns the source;
    ``None``, having fed nothing, where a summary reads the entries."""
    read = _read(rollups, query, summary=False)
    if read is None:
        return None
    position, plan, buckets, replies, _, _ = read
    for (unit, start), fields in zip(buckets, replies, strict=True):
        low, high, document, _ = (_own(fields, name) for name in _OWN_FIELDS)
        builder.add_bucket(
            unit,
            start,
            None if low is None else int(low),
            None if high is None else int(high),
            None if document is None else text_of(document),
        )
        for name, value in fields.items():
            part, _, key = text_of(name).partition(SEPARATOR)
            if part in _BREAKDOWN_PARTS:
                builder.add_sum(start, part, key, float(value))
    rows = _entries(rollups, position, plan.expired, plan.since, plan.until)
    return breakdown_records(builder, rows, plan)


#: The sums a breakdown reads of a bucket's fields.
_BREAKDOWN_PARTS = frozenset({"total", "status"})


class _Read(t.NamedTuple):
    """What :func:`_read` read of a window, under one ``WATCH``."""

    position: bytes
    plan: WindowPlan
    #: The kept buckets, and their ``HGETALL`` replies (then, with
    #: visitors, the ``PFCOUNT`` of each day of ``day_keys``).
    buckets: list[tuple[Unit, datetime]]
    replies: list[t.Any]
    day_keys: dict[datetime, set[str]]
    #: For a summary whose :attr:`~WindowPlan.whole` buckets are fewer than
    #: those it sums, their histogram documents (``None`` otherwise).
    documents: list[t.Any] | None


def _read(rollups: RedisRollups, query: Query, *, summary: bool) -> _Read | None:
    """The plan of the window of ``query`` and the fields of its buckets:
    for a ``summary``, of the fewest that hold it (:attr:`WindowPlan.summed`),
    then each day's visitors; else of each kept one (a breakdown's). Read
    under ``WATCH`` of the position, so a fold meanwhile cannot count an
    entry twice; ``None`` where the entries are to be read instead."""
    import redis

    while True:
        with rollups.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(rollups.position_key, rollups.rebuild_key)  # type: ignore[no-untyped-call]
                raw = pipe.get(rollups.position_key)
                if raw is None or pipe.exists(rollups.rebuild_key):
                    # Nothing folded yet, or a rebuild under way: the
                    # entries are read.
                    return None
                span = _folded_span(rollups)
                if span is None:
                    return None
                position = bytes(raw)  # type: ignore[arg-type]
                plan = plan_window(query.since, query.until, *span, rollups.retention)
                if plan is None:
                    # Counted per minute: the entries are read.
                    return None
                buckets = _starts(rollups, plan.summed if summary else plan.kept)
                # A day counted per hour takes its histograms from fewer,
                # larger buckets (4 hours and the day, not 25 hours), as SQL
                # does: adding up the documents was half of its sums' time.
                whole = None
                if summary and plan.whole != plan.summed:
                    whole = _starts(rollups, plan.whole)
                pipe.multi()
                day_keys = _queue_reads(rollups, pipe, buckets, visitors=summary)
                for unit, start in whole or ():
                    pipe.hget(rollups.bucket_key(unit, start), "h")
                replies = pipe.execute()
            except redis.WatchError:
                continue
        documents = None
        if whole is not None:
            cut = len(replies) - len(whole)
            replies, documents = replies[:cut], replies[cut:]
        return _Read(position, plan, buckets, replies, day_keys, documents)


def _folded_span(rollups: RedisRollups) -> tuple[datetime, datetime] | None:
    # The first and last request folded: those of the oldest and the
    # newest bucket of each size (sizes are kept for different times).
    with rollups.client.pipeline(transaction=False) as pipe:
        for unit in KEPT_UNITS:
            pipe.zrange(rollups.set_key(unit), 0, 0)
            pipe.zrange(rollups.set_key(unit), -1, -1)
        ends = pipe.execute()
    with rollups.client.pipeline(transaction=False) as pipe:
        for index, members in enumerate(ends):
            for member in members:
                unit = KEPT_UNITS[index // 2]
                start = datetime.fromisoformat(text_of(member))
                pipe.hget(rollups.bucket_key(unit, start), "last" if index % 2 else "first")
        moments = [int(value) for value in pipe.execute() if value is not None]
    if not moments:
        return None
    return _EPOCH + min(moments) * _MICROSECOND, _EPOCH + max(moments) * _MICROSECOND


def _starts(rollups: RedisRollups, window: list[Piece]) -> list[tuple[Unit, datetime]]:
    with rollups.client.pipeline(transaction=False) as pipe:
        for piece in window:
            pipe.zrangebyscore(
                rollups.set_key(piece.unit), seconds_of(piece.start), f"({seconds_of(piece.end)}"
            )
        replies = pipe.execute()
    return [
        (piece.unit, datetime.fromisoformat(text_of(member)))
        for piece, members in zip(window, replies, strict=True)
        for member in members
    ]


def _queue_reads(
    rollups: RedisRollups,
    pipe: redis.client.Pipeline,
    found: list[tuple[Unit, datetime]],
    *,
    visitors: bool,
) -> dict[datetime, set[str]]:
    day_keys: dict[datetime, set[str]] = defaultdict(set)
    for unit, start in found:
        pipe.hgetall(rollups.bucket_key(unit, start))
        if not visitors:
            continue
        day = bucket_start(start, "day")
        if unit == "day":
            day_keys[day] = {rollups.visitor_key("day", day)}
        else:
            day_keys[day].add(rollups.visitor_key("hour", bucket_start(start, "hour")))
    for day in sorted(day_keys):
        pipe.pfcount(*sorted(day_keys[day]))
    return day_keys


def _feed(
    builder: SummaryBuilder,
    found: list[tuple[Unit, datetime]],
    replies: list[t.Any],
    slack: float,
    documents: list[t.Any] | None = None,
) -> set[str]:
    """Feed ``builder`` the buckets' fields (of the top lists, the values
    that can rank when entries weighing up to ``slack`` are added), and the
    histograms of ``documents`` where given, else of those buckets; return
    the top lists some bucket kept only the leaders of."""
    # Summed by the field's name as Redis gave it: a month is some 30,000
    # fields of 6,000 names, each name decoded once, after.
    sums: dict[bytes | str, float] = {}
    get = sums.get
    per_bucket: list[tuple[datetime, float]] = []
    # The histograms of ``documents`` where given, else of these buckets.
    histograms = [] if documents is None else list(documents)
    first: int | None = None
    last: int | None = None
    for (_, start), fields in zip(found, replies, strict=False):
        low, high, document, _ = (_own(fields, name) for name in _OWN_FIELDS)
        if low is not None:
            first = int(low) if first is None else min(first, int(low))
        if high is not None:
            last = int(high) if last is None else max(last, int(high))
        if documents is None:
            histograms.append(document)
        # sums[name] += value for every field, each step a map() in C.
        names = fields.keys()
        before = map(get, names, itertools.repeat(0.0))
        added = map(operator.add, before, map(float, fields.values()))
        sums.update(zip(names, added, strict=True))
        total = _own(fields, _TOTAL_FIELD)
        per_bucket.append((start, 0.0 if total is None else float(total)))
    weights: list[tuple[str, str, float]] = []
    approximate: set[str] = set()
    # Each name's part read from its ASCII head; only the names that can
    # rank are decoded whole.
    named = [(_part_of(name), name, weight) for name, weight in sums.items()]
    for _, name, weight in leaders(named, slack):
        part, _, key = text_of(name).partition(SEPARATOR)
        if not part.startswith(OTHER):
            weights.append((part, key, weight))
        elif weight:
            approximate.add(part[len(OTHER) :])
    feed_histograms(builder, (text_of(document) for document in histograms if document is not None))
    feed(builder, weights, per_bucket, (first, last), None)
    return approximate


_SEPARATOR_BYTES = SEPARATOR.encode("ascii")


def _part_of(name: bytes | str) -> str:
    if isinstance(name, bytes):
        return name.partition(_SEPARATOR_BYTES)[0].decode("ascii", "replace")
    return name.partition(SEPARATOR)[0]


#: A bucket's fields that are not sums: ``first``, ``last``, ``h`` and ``c``.
_OWN_FIELDS = ("first", "last", "h", "c")
_TOTAL_FIELD = f"total{SEPARATOR}"


def _own(fields: dict[t.Any, t.Any], name: str) -> t.Any:
    """Take the field ``name`` out of a bucket's ``HGETALL`` (names are
    bytes, or text from a client that decodes replies); the total is read,
    not taken."""
    take = fields.get if name == _TOTAL_FIELD else fields.pop
    value = take(name.encode("ascii"), None)
    return take(name, None) if value is None else value


def _entries(
    rollups: RedisRollups,
    position: bytes,
    expired: list[Piece],
    since: datetime | None,
    until: datetime | None,
) -> list[_Row]:
    """The entries after ``position`` in the window, and those folded whose
    request falls in a piece of ``expired`` (its buckets are gone)."""
    folded_to = _id_key(position)
    after = b"(" + position
    if expired:
        low = lowest_id(rollups.client, expired[0].start)
        if low == b"-" or _id_key(low) <= folded_to:
            after = low
    pieces_text = [(iso_text(piece.start), iso_text(piece.end)) for piece in expired]
    low_text = None if since is None else iso_text(since)
    high_text = None if until is None else iso_text(until)
    rows: list[_Row] = []
    for folded, chunk in _chunks(rollups, after, folded_to):
        for row in chunk:
            date = row.get("request_date")
            if date is None:
                continue
            if folded:
                if any(low <= date < high for low, high in pieces_text):
                    rows.append(row)
            elif (low_text is None or date >= low_text) and (high_text is None or date < high_text):
                rows.append(row)
    return rows


def _chunks(
    rollups: RedisRollups, low: bytes, folded_to: tuple[int, int]
) -> Iterator[tuple[bool, list[_Row]]]:
    """The entries from ``low`` (an ``XRANGE`` start) on, decoded a chunk at
    a time, each with whether it is folded (its id up to ``folded_to``)."""
    while True:
        entries = rollups.client.execute_command(  # type: ignore[no-untyped-call]
            "XRANGE", rollups.event_name, low, b"+", "COUNT", _TAIL_CHUNK, **rollups.raw
        )
        if not entries:
            return
        cut = len(entries)
        while cut and _id_key(bytes(entries[cut - 1][0])) > folded_to:
            cut -= 1
        if cut:
            yield True, rollups.decode(entries[:cut])
        if cut < len(entries):
            yield False, rollups.decode(entries[cut:])
        if len(entries) < _TAIL_CHUNK:
            return
        low = b"(" + bytes(entries[-1][0])


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _count_visitors(
    rollups: RedisRollups,
    builder: SummaryBuilder,
    rows: list[_Row],
    day_keys: dict[datetime, set[str]],
    day_counts: dict[datetime, int],
) -> None:
    hashes: defaultdict[datetime, set[str]] = defaultdict(set)
    for row in rows:
        date = row["request_date"]
        day = bucket_start(datetime.fromisoformat(date), "day")
        address, agent = row.get("request_remote_address"), row.get("request_user_agent")
        hashes[day].add(f"{visitor_hash(rollups.secret, date, address, agent):016x}")
    counts = dict(day_counts)
    if hashes:
        scratch = f"{rollups.prefix}scratch:{uuid.uuid4().hex}"
        with rollups.client.pipeline(transaction=True) as pipe:
            for day, found in hashes.items():
                pipe.pfmerge(scratch, *sorted(day_keys.get(day, ())))
                pipe.pfadd(scratch, *found)
                pipe.pfcount(scratch)
                pipe.delete(scratch)
            replies = pipe.execute()
        for index, day in enumerate(hashes):
            counts[day] = int(replies[4 * index + 2])
    builder.visitors.clear()
    builder.visitor_count = sum(counts.values())
