"""RedisStore's rollups: folding stream entries into per-minute, per-hour
and per-day hashes, trimming them, and summing them up for a summary.

Keys, all under ``<event_name>:flask-traffic-rollup:``:

``position``
    the id of the last stream entry folded.
``<unit>:<bucket start ISO>``
    a hash: field ``<part>\\x1f<key>`` holds the weight summed
    (``HINCRBYFLOAT``, see :data:`~flask_traffic.rollups.PARTS`), fields
    ``first`` and ``last`` the bucket's first and last ``request_date`` in
    microseconds since the epoch.
``visitors:<unit>:<bucket start ISO>``
    Redis's own HyperLogLog of the visitor hashes of an hour or a day
    (``PFADD`` of each :func:`~flask_traffic.rollups.visitor_hash` as hex).
``buckets:<unit>``
    a sorted set of the bucket starts (POSIX seconds), so retention and
    summaries find buckets without ``SCAN``.
"""

from __future__ import annotations

import time
import typing as t
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

from ..query import iso_text
from ..rollups import (
    UNITS,
    RollupDelta,
    RollupRetention,
    Unit,
    bucket_start,
    feed,
    pieces,
    visitor_hash,
)
from ..summary import SummaryBuilder, bucket_unit

if t.TYPE_CHECKING:
    import redis

    from ..query import Query

__all__ = ["RedisRollups", "location_of"]

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_MINUTE = timedelta(minutes=1)
_MICROSECOND = timedelta(microseconds=1)
#: Stream entries per fold transaction.
FOLD_CHUNK = 5000
#: Entries per ``XRANGE`` of the unfolded tail a summary reads.
_TAIL_CHUNK = 2000
#: Bucket keys per ``DEL`` of retention.
_DELETE_CHUNK = 1000
_SEPARATOR = "\x1f"

_Row = dict[str, t.Any]
Decode = Callable[[list[t.Any]], list[_Row]]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _seconds(moment: datetime) -> int:
    return int((moment - _EPOCH).total_seconds())


def _ceil_minute(moment: datetime) -> datetime:
    start = bucket_start(moment, "minute")
    return start if start == moment else start + _MINUTE


def location_of(client: redis.Redis, event_name: str) -> str:
    """Where a store writes, without a password: the default visitor secret."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        where = f"unix://{kwargs['path']}"
    else:
        where = f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return f"{where}/{kwargs.get('db', 0)}#{event_name}"


class RedisRollups:
    """The rollups of one stream (``event_name``).

    :param client: the store's client.
    :param event_name: the stream's key.
    :param decode: turns ``XRANGE`` entries into rows as ``scan()`` gives them.
    :param never_decode: redis-py's option name for raw replies.
    :param retention: how long each bucket size is kept.
    """

    def __init__(
        self,
        client: redis.Redis,
        event_name: str,
        decode: Decode,
        never_decode: str,
        retention: RollupRetention,
    ) -> None:
        self.client = client
        self.event_name = event_name
        self.decode = decode
        self.retention = retention
        self.secret = b""
        self._raw = {never_decode: True}
        self.prefix = f"{event_name}:flask-traffic-rollup:"
        self.position_key = self.prefix + "position"
        #: Seconds between retention passes of :meth:`maintain`.
        self.retention_interval = 60.0
        self._retention_due = time.monotonic()

    def _bucket_key(self, unit: Unit, start: datetime) -> str:
        return f"{self.prefix}{unit}:{start.isoformat()}"

    def _visitor_key(self, unit: Unit, start: datetime) -> str:
        return f"{self.prefix}visitors:{unit}:{start.isoformat()}"

    def _set_key(self, unit: Unit) -> str:
        return f"{self.prefix}buckets:{unit}"

    def _xrange(self, after: bytes | None, count: int) -> list[t.Any]:
        low = b"-" if after is None else b"(" + after
        entries: list[t.Any] = self.client.execute_command(  # type: ignore[no-untyped-call]
            "XRANGE", self.event_name, low, b"+", "COUNT", count, **self._raw
        )
        return entries

    def position(self) -> bytes | None:
        """The id of the last entry folded, or ``None``."""
        value = self.client.get(self.position_key)
        return None if value is None else bytes(value)  # type: ignore[arg-type]

    def below_position(self, lowest: bytes) -> bytes:
        """``lowest`` (an ``XTRIM MINID``) lowered so that no entry after the
        fold position would go; ``b"-"`` if nothing is folded yet."""
        position = self.position()
        if position is None or lowest == b"-":
            return b"-"
        folded_ms = int(position.partition(b"-")[0])
        return b"%d" % min(int(lowest), folded_ms)

    def maintain(self, retain_entries: Callable[[], None] | None) -> None:
        """The worker's pass: fold; then, once per retention interval, trim
        the buckets and run ``retain_entries`` (the stream's retention), which
        comes after the fold so it finds the entries it may trim folded."""
        self.fold()
        if time.monotonic() < self._retention_due:
            return
        self._retention_due = time.monotonic() + self.retention_interval
        self.retain(datetime.now(_UTC))
        if retain_entries is not None:
            retain_entries()

    # -- folding -----------------------------------------------------------

    def fold(self) -> int:
        """Fold every entry after the position into the buckets; return how
        many entries this call folded.

        Each chunk of up to :data:`FOLD_CHUNK` entries is one ``MULTI``/
        ``EXEC`` under ``WATCH`` of the position: if another process folded
        meanwhile, ``EXEC`` fails, and the chunk is read again from the new
        position. Entry ids are assigned by the server at ``XADD`` and
        entries become visible in id order, so no entry with an id below
        the position can appear later: what is below it is folded, once.
        """
        import redis

        folded = 0
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.position_key)  # type: ignore[no-untyped-call]
                    raw = pipe.get(self.position_key)
                    after = None if raw is None else bytes(raw)  # type: ignore[arg-type]
                    entries = self._xrange(after, FOLD_CHUNK)
                    if not entries:
                        return folded
                    delta = RollupDelta(self.secret, keep_hashes=True)
                    delta.add_rows(self.decode(entries))
                    spans = self._merged_spans(delta)
                    pipe.multi()
                    self._queue_delta(pipe, delta, spans)
                    pipe.set(self.position_key, entries[-1][0])
                    pipe.execute()
                except redis.WatchError:
                    continue
            folded += len(entries)
            if len(entries) < FOLD_CHUNK:
                return folded

    def _merged_spans(self, delta: RollupDelta) -> dict[tuple[Unit, datetime], tuple[int, int]]:
        # The fold is serialized by WATCH, so the old span read here is
        # still the bucket's when the transaction runs.
        keys = list(delta.spans)
        with self.client.pipeline(transaction=False) as pipe:
            for unit, start in keys:
                pipe.hmget(self._bucket_key(unit, start), ["first", "last"])
            olds = pipe.execute()
        merged = {}
        for key, (old_first, old_last) in zip(keys, olds, strict=True):
            first, last = delta.spans[key]
            if old_first is not None:
                first = min(first, int(old_first))
            if old_last is not None:
                last = max(last, int(old_last))
            merged[key] = (first, last)
        return merged

    def _queue_delta(
        self,
        pipe: redis.client.Pipeline,
        delta: RollupDelta,
        spans: dict[tuple[Unit, datetime], tuple[int, int]],
    ) -> None:
        for (unit, start, part, key), weight in delta.sums.items():
            field = f"{part}{_SEPARATOR}{key}".encode("utf-8", "surrogatepass")
            pipe.hincrbyfloat(self._bucket_key(unit, start), field, weight)
        for (unit, start), (first, last) in spans.items():
            pipe.hset(self._bucket_key(unit, start), mapping={"first": first, "last": last})
            pipe.zadd(self._set_key(unit), {start.isoformat(): _seconds(start)})
        for (unit, start), hashes in delta.hashes.items():
            pipe.pfadd(self._visitor_key(unit, start), *(f"{h:016x}" for h in hashes))

    # -- retention ---------------------------------------------------------

    def retain(self, now: datetime) -> int:
        """Delete the buckets older than each unit's cutoff; return how many."""
        removed = 0
        for unit in UNITS:
            cutoff = self.retention.cutoff(unit, now)
            if cutoff is None:
                continue
            set_key = self._set_key(unit)
            while True:
                old = t.cast(
                    "list[bytes]",
                    self.client.zrangebyscore(
                        set_key, "-inf", f"({_seconds(cutoff)}", start=0, num=_DELETE_CHUNK
                    ),
                )
                if not old:
                    break
                starts = [datetime.fromisoformat(_text(member)) for member in old]
                keys = [self._bucket_key(unit, start) for start in starts]
                keys += [self._visitor_key(unit, start) for start in starts]
                with self.client.pipeline(transaction=True) as pipe:
                    pipe.delete(*keys)
                    pipe.zrem(set_key, *old)
                    pipe.execute()
                removed += len(old)
        return removed

    # -- summaries ---------------------------------------------------------

    def summarize(self, query: Query, builder: SummaryBuilder) -> None:
        """Feed ``builder`` the window's buckets and the entries after the
        fold position that fall in it.

        The window is rounded to minutes (``since`` down, ``until`` up; no
        ``since``: the oldest bucket; no ``until``: now). Unique visitors
        are Redis's ``PFCOUNT`` of each day's union (its day sketch, or the
        hours it is made of; a minute counts with its whole hour), summed
        over days. A window that starts before a unit's retention cutoff is
        summed from buckets of the next unit (hours, not minutes). The
        tail's visitors join their day's union (``PFMERGE`` into a temporary
        key, ``PFADD``, ``PFCOUNT``, ``DEL``, in one ``MULTI``), so a
        visitor seen before and after the fold counts once. The position
        and the buckets are read under ``WATCH`` of the position, so a
        fold meanwhile cannot count an entry twice.

        Without ``since`` the window starts at the minute of the first
        request folded, and the result's buckets follow the span of the
        requests, as a summary of the records does.
        """
        import redis

        until = _ceil_minute(query.until or datetime.now(_UTC))
        day_keys: dict[datetime, set[str]] = {}
        day_counts: dict[datetime, int] = {}
        # With no bucket yet, everything is in the tail.
        builder.source = {"source": "rollups", "granularity": None}
        low = query.since
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.position_key)  # type: ignore[no-untyped-call]
                    raw = pipe.get(self.position_key)
                    after = None if raw is None else bytes(raw)  # type: ignore[arg-type]
                    span = self._folded_span()
                    if span is None:
                        break
                    since = bucket_start(query.since or span[0], "minute")
                    if since >= until:
                        break
                    coarsest = self._coarsest(since, query.until or span[1])
                    window = pieces(since, until, coarsest)
                    found = self._starts(window)
                    pipe.multi()
                    day_keys = self._queue_reads(pipe, found)
                    replies = pipe.execute()
                except redis.WatchError:
                    continue
            day_counts = self._feed(builder, found, sorted(day_keys), replies)
            finest = min((UNITS.index(piece.unit) for piece in window), default=0)
            builder.source = {
                "source": "rollups",
                "granularity": UNITS[finest],
                "since": iso_text(since),
                "until": iso_text(until),
            }
            if query.since is not None:
                builder.since = since
            if query.until is not None:
                builder.until = until
            # No since asked: the tail may hold requests older than any bucket.
            low = None if query.since is None else since
            break
        self._add_tail(builder, after, low, until, day_keys, day_counts)

    def _coarsest(self, since: datetime, until: datetime) -> Unit:
        # The result's unit (summary.bucket_unit), but past a unit's
        # retention the next one: a window of old hours is summed from its
        # hour buckets, though a summary that new would count its minutes.
        unit: Unit = bucket_unit(since, until)
        now = datetime.now(_UTC)
        for finer, coarser in (("minute", "hour"), ("hour", "day")):
            cutoff = self.retention.cutoff(t.cast("Unit", finer), now)
            if unit == finer and cutoff is not None and since < cutoff:
                unit = t.cast("Unit", coarser)
        return unit

    def _folded_span(self) -> tuple[datetime, datetime] | None:
        # The first and last request folded: those of the oldest and the
        # newest bucket of each unit (units are kept for different times).
        with self.client.pipeline(transaction=False) as pipe:
            for unit in UNITS:
                pipe.zrange(self._set_key(unit), 0, 0)
                pipe.zrange(self._set_key(unit), -1, -1)
            ends = pipe.execute()
        with self.client.pipeline(transaction=False) as pipe:
            for index, members in enumerate(ends):
                for member in members:
                    unit = UNITS[index // 2]
                    start = datetime.fromisoformat(_text(member))
                    pipe.hget(self._bucket_key(unit, start), "last" if index % 2 else "first")
            moments = [int(value) for value in pipe.execute() if value is not None]
        if not moments:
            return None
        return _EPOCH + min(moments) * _MICROSECOND, _EPOCH + max(moments) * _MICROSECOND

    def _starts(self, window: list[t.Any]) -> list[tuple[Unit, datetime]]:
        with self.client.pipeline(transaction=False) as pipe:
            for piece in window:
                pipe.zrangebyscore(
                    self._set_key(piece.unit), _seconds(piece.start), f"({_seconds(piece.end)}"
                )
            replies = pipe.execute()
        return [
            (piece.unit, datetime.fromisoformat(_text(member)))
            for piece, members in zip(window, replies, strict=True)
            for member in members
        ]

    def _queue_reads(
        self, pipe: redis.client.Pipeline, found: list[tuple[Unit, datetime]]
    ) -> dict[datetime, set[str]]:
        day_keys: dict[datetime, set[str]] = defaultdict(set)
        for unit, start in found:
            pipe.hgetall(self._bucket_key(unit, start))
            day = bucket_start(start, "day")
            if unit == "day":
                day_keys[day] = {self._visitor_key("day", day)}
            else:
                day_keys[day].add(self._visitor_key("hour", bucket_start(start, "hour")))
        for day in sorted(day_keys):
            pipe.pfcount(*sorted(day_keys[day]))
        return day_keys

    @staticmethod
    def _feed(
        builder: SummaryBuilder,
        found: list[tuple[Unit, datetime]],
        days: list[datetime],
        replies: list[t.Any],
    ) -> dict[datetime, int]:
        sums: defaultdict[tuple[str, str], float] = defaultdict(float)
        per_bucket: list[tuple[datetime, float]] = []
        first: int | None = None
        last: int | None = None
        for (_, start), fields in zip(found, replies, strict=False):
            total = 0.0
            for name, value in fields.items():
                text = _text(name)
                if text == "first":
                    first = int(value) if first is None else min(first, int(value))
                elif text == "last":
                    last = int(value) if last is None else max(last, int(value))
                else:
                    part, _, key = text.partition(_SEPARATOR)
                    weight = float(value)
                    sums[part, key] += weight
                    if part == "total":
                        total = weight
            per_bucket.append((start, total))
        feed(
            builder,
            ((part, key, weight) for (part, key), weight in sums.items()),
            per_bucket,
            (first, last),
            None,
        )
        return {day: int(count) for day, count in zip(days, replies[len(found) :], strict=True)}

    def _tail(self, after: bytes | None) -> Iterator[_Row]:
        while True:
            entries = self._xrange(after, _TAIL_CHUNK)
            if not entries:
                return
            yield from self.decode(entries)
            if len(entries) < _TAIL_CHUNK:
                return
            after = bytes(entries[-1][0])

    def _add_tail(
        self,
        builder: SummaryBuilder,
        after: bytes | None,
        since: datetime | None,
        until: datetime,
        day_keys: dict[datetime, set[str]],
        day_counts: dict[datetime, int],
    ) -> None:
        low = None if since is None else iso_text(since)
        high = iso_text(until)
        rows = [
            row
            for row in self._tail(after)
            if (date := row.get("request_date")) is not None
            and (low is None or date >= low)
            and date < high
        ]
        builder.add_rows(rows)
        hashes: defaultdict[datetime, set[str]] = defaultdict(set)
        for row in rows:
            date = row["request_date"]
            day = bucket_start(datetime.fromisoformat(date), "day")
            address, agent = row.get("request_remote_address"), row.get("request_user_agent")
            hashes[day].add(f"{visitor_hash(self.secret, date, address, agent):016x}")
        counts = dict(day_counts)
        if hashes:
            scratch = f"{self.prefix}scratch:{uuid.uuid4().hex}"
            with self.client.pipeline(transaction=True) as pipe:
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
