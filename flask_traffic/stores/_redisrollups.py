"""RedisStore's rollups: folding stream entries into per-hour and per-day
hashes (:data:`~._rollupparts.KEPT_UNITS`: no minutes, see there), bounding
and trimming them. Summaries are :mod:`._redisrollupsummary`'s.

Keys, all under ``<event_name>:flask-traffic-rollup:``:

``position``
    the id of the last stream entry folded.
``<unit>:<bucket start ISO>``
    a hash: field ``<part>\\x1f<key>`` holds the weight summed
    (``HINCRBYFLOAT``, see :data:`~flask_traffic.rollups.PARTS`), but for
    ``response_time``: field ``h`` holds the bucket's histograms, one
    document (:mod:`._rolluphistograms`), one field a bucket however
    many routes (:func:`~._rolluphistograms.merge_histograms`). Fields ``first``
    and ``last`` hold the bucket's first and last ``request_date`` in
    microseconds since the epoch. Once the bucket is over, its top paths and
    referrers are cut to their :data:`~._rollupparts.TOP_KEPT` leaders, the
    rest summed under ``o:<part>\\x1f`` (a summary then says that list is
    approximate), and field ``c`` marks it done.
``visitors:<unit>:<bucket start ISO>``
    Redis's own HyperLogLog of the visitor hashes of an hour or a day
    (``PFADD`` of each :func:`~flask_traffic.rollups.visitor_hash` as hex).
``buckets:<unit>``
    a sorted set of the bucket starts (POSIX seconds), so retention and
    summaries find buckets without ``SCAN``.
``rebuild``
    while a rebuild runs (:meth:`RedisRollups.rebuild`): a hash of the last
    entry refolded (``cursor``), the fold position when it began (``stop``)
    and the POSIX day it rebuilds from (``day``, empty for all).
"""

from __future__ import annotations

import time
import typing as t
from collections.abc import Callable
from datetime import datetime, timezone

from ..rollups import RollupDelta, RollupRetention, Unit, bucket_start
from ._redisentries import id_before
from ._redistransaction import Transaction, transaction, watched
from ._rolluphistograms import merge_histograms
from ._rollupparts import (
    COMPACTED,
    KEPT_UNITS,
    OTHER,
    TOP_KEPT,
    WORKER_FOLD_BUDGET,
    Deadline,
    is_over,
    split_times,
)
from ._rollupstore import FoldState

if t.TYPE_CHECKING:
    import redis

    from .._breakdown import BreakdownBuilder
    from ..query import Query
    from ..summary import SummaryBuilder

__all__ = ["RedisRollups"]

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
#: Stream entries per fold transaction.
FOLD_CHUNK = 5000
#: Bucket keys per ``DEL`` of retention.
_DELETE_CHUNK = 1000
SEPARATOR = "\x1f"
#: A bucket's old fields: ``first``, ``last`` and ``h`` (histograms).
_Old = tuple[bytes | None, bytes | None, bytes | None]

_Row = dict[str, t.Any]
Decode = Callable[[list[t.Any]], list[_Row]]


def text_of(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def seconds_of(moment: datetime) -> int:
    return int((moment - _EPOCH).total_seconds())


#: ``HINCRBYFLOAT`` of each ``field, amount`` pair of ``ARGV`` on ``KEYS[1]``:
#: a script runs whole, as the ``MULTI`` around it does.
_ADD_FIELDS = """
for i = 1, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 0
"""


def _field(part: str, key: str) -> bytes:
    return f"{part}{SEPARATOR}{key}".encode("utf-8", "surrogatepass")


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
        self.raw = {never_decode: True}
        self.prefix = f"{event_name}:flask-traffic-rollup:"
        self.position_key = self.prefix + "position"
        self.rebuild_key = self.prefix + "rebuild"
        #: Seconds between retention passes of :meth:`maintain`.
        self.retention_interval = 60.0
        #: Whether the last fold stopped at its budget with more to fold.
        self.unfinished = False
        self._retention_due = time.monotonic()

    def bucket_key(self, unit: Unit, start: datetime) -> str:
        return f"{self.prefix}{unit}:{start.isoformat()}"

    def visitor_key(self, unit: Unit, start: datetime) -> str:
        return f"{self.prefix}visitors:{unit}:{start.isoformat()}"

    def set_key(self, unit: Unit) -> str:
        return f"{self.prefix}buckets:{unit}"

    def _xrange(self, after: bytes | None, count: int, stop: bytes = b"+") -> list[t.Any]:
        low = b"-" if after is None else b"(" + after
        entries: list[t.Any] = self.client.execute_command(  # type: ignore[no-untyped-call]
            "XRANGE", self.event_name, low, stop, "COUNT", count, **self.raw
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

    def maintain(self, retain_entries: Callable[[], object] | None) -> bool:
        """The worker's pass: fold (for :data:`WORKER_FOLD_BUDGET` seconds at
        most); then, once per retention interval, trim the buckets and run
        ``retain_entries`` (the stream's retention), which comes after the
        fold so it finds the entries it may trim folded. Whether the fold
        has more to do (retention waits for it)."""
        self.fold(WORKER_FOLD_BUDGET)
        if self.unfinished:
            return True
        if time.monotonic() < self._retention_due:
            return False
        self._retention_due = time.monotonic() + self.retention_interval
        self.retain(datetime.now(_UTC))
        if retain_entries is not None:
            retain_entries()
        return False

    # -- folding -----------------------------------------------------------

    def fold(self, budget: float | None = None) -> int:
        """Fold every entry after the position into the buckets; return how
        many entries this call folded. With a ``budget``, stop after the
        chunk in which that many seconds passed (:attr:`unfinished` says so).

        Each chunk of up to :data:`FOLD_CHUNK` entries is one ``MULTI``/
        ``EXEC`` under ``WATCH`` of the position: if another process folded
        meanwhile, ``EXEC`` fails, and the chunk is read again from the new
        position. Entry ids are assigned by the server at ``XADD`` and
        entries become visible in id order, so no entry with an id below
        the position can appear later: what is below it is folded, once.
        Only folds write the buckets, so what a fold reads of them before
        its ``MULTI`` (spans, histograms, the top lists it cuts) is still
        theirs when it runs.
        """
        deadline = Deadline(budget)
        self.unfinished = False
        folded = self._chunks(deadline, self._rebuild_step, self.position_key, self.rebuild_key)
        if self.unfinished:
            return folded
        return folded + self._chunks(deadline, self._fold_step, self.position_key)

    def _chunks(
        self,
        deadline: Deadline,
        step: t.Callable[[redis.client.Pipeline], tuple[int, int] | None],
        *watched_keys: str,
    ) -> int:
        """Run ``step`` chunk after chunk, each on a pipeline watching
        ``watched_keys`` and again when one of them changed meanwhile, until
        it finds nothing (``None``) or a chunk short of :data:`FOLD_CHUNK`
        entries, or ``deadline`` passes (:attr:`unfinished`); the entries it
        counted. ``step`` gives the entries it read and those it counted."""
        import redis

        counted = 0
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*watched_keys)  # type: ignore[no-untyped-call]
                    done = step(pipe)
                except redis.WatchError:
                    continue
            if done is None:
                return counted
            read, folded = done
            counted += folded
            if read < FOLD_CHUNK:
                return counted
            if deadline.passed():
                self.unfinished = True
                return counted

    def _fold_step(self, pipe: redis.client.Pipeline) -> tuple[int, int] | None:
        """Fold the chunk of entries after the position (``pipe`` watches it)."""
        raw = pipe.get(self.position_key)
        after = None if raw is None else bytes(raw)  # type: ignore[arg-type]
        entries = self._xrange(after, FOLD_CHUNK)
        if not entries:
            return None
        writes = self._queue_fold(pipe, self.decode(entries))
        writes.command("SET", self.position_key, entries[-1][0])
        writes.execute()
        return len(entries), len(entries)

    def _queue_fold(self, pipe: redis.client.Pipeline, rows: list[_Row]) -> Transaction:
        """Read what folding ``rows`` changes (``pipe`` is watching), then
        queue the changes in a transaction on its connection."""
        delta = RollupDelta(self.secret, keep_hashes=True, units=KEPT_UNITS)
        delta.add_rows(rows)
        now = datetime.now(_UTC)
        olds = self._read_olds(list(delta.spans))
        over = self._read_over(delta, now)
        writes = watched(self.client, pipe)
        self._queue_delta(writes, delta, olds)
        self._queue_compaction(writes, delta, over)
        return writes

    # -- rebuilding --------------------------------------------------------

    def rebuild(self, since: datetime | None = None) -> int:
        """Drop the buckets from the UTC day of ``since`` on (all of them
        without it) and fold those days' entries again; return how many
        entries were folded.

        The entries folded so far are refolded chunk by chunk (from the
        first whose id is a clock margin before that day: no earlier entry
        can hold a request of it) while the app keeps writing; an
        interrupted rebuild goes on at the next :meth:`fold`. Until it ends,
        summaries are counted from the entries.
        """
        import redis

        day = None if since is None else bucket_start(since, "day")
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.position_key, self.rebuild_key)  # type: ignore[no-untyped-call]
                    position = pipe.get(self.position_key)
                    low = "-inf" if day is None else seconds_of(day)
                    starts = {
                        unit: t.cast(
                            "list[bytes]", pipe.zrangebyscore(self.set_key(unit), low, "+inf")
                        )
                        for unit in KEPT_UNITS
                    }
                    writes = watched(self.client, pipe)
                    for unit, members in starts.items():
                        for index in range(0, len(members), _DELETE_CHUNK):
                            self._queue_drop(writes, unit, members[index : index + _DELETE_CHUNK])
                    writes.command("DEL", self.rebuild_key)
                    if position is not None:
                        # Written again, so that a summary or a fold reading
                        # meanwhile (watching it) starts over.
                        writes.command("SET", self.position_key, t.cast("bytes", position))
                        writes.command(
                            "HSET",
                            self.rebuild_key,
                            "cursor",
                            b"" if day is None else id_before(day),
                            "stop",
                            t.cast("bytes", position),
                            "day",
                            b"" if day is None else b"%d" % seconds_of(day),
                        )
                    writes.execute()
                except redis.WatchError:
                    continue
            return self.fold()

    def rebuilding(self) -> bool:
        """Whether a rebuild is under way (or was interrupted)."""
        return bool(self.client.exists(self.rebuild_key))

    def fold_state(self) -> FoldState:
        """How far the rollups lag (:func:`._redisfoldstate.fold_state`)."""
        from ._redisfoldstate import fold_state

        return fold_state(self)

    def _rebuild_step(self, pipe: redis.client.Pipeline) -> tuple[int, int] | None:
        """Refold the next chunk of the entries a rebuild has left (``pipe``
        watches the position and the rebuild); ``None`` without a rebuild."""
        state = t.cast("dict[bytes, bytes]", pipe.hgetall(self.rebuild_key))
        if not state:
            return None
        cursor = state[b"cursor"] or None
        entries = self._xrange(cursor, FOLD_CHUNK, state[b"stop"])
        rows = self.decode(entries)
        if state[b"day"]:
            day = datetime.fromtimestamp(int(state[b"day"]), _UTC)
            # Earlier days' requests are in the buckets kept.
            rows = [
                row
                for row in rows
                if row["request_date"] is not None
                and datetime.fromisoformat(row["request_date"]) >= day
            ]
        writes = self._queue_fold(pipe, rows)
        if len(entries) < FOLD_CHUNK:
            writes.command("DEL", self.rebuild_key)
        else:
            writes.command("HSET", self.rebuild_key, "cursor", entries[-1][0])
        writes.execute()
        return len(entries), len(rows)

    def _read_olds(self, keys: list[tuple[Unit, datetime]]) -> dict[tuple[Unit, datetime], _Old]:
        with self.client.pipeline(transaction=False) as pipe:
            for unit, start in keys:
                pipe.hmget(self.bucket_key(unit, start), ["first", "last", "h"])
            replies = pipe.execute()
        return {key: (first, last, h) for key, (first, last, h) in zip(keys, replies, strict=True)}

    def _read_over(
        self, delta: RollupDelta, now: datetime
    ) -> dict[tuple[Unit, datetime], dict[bytes, bytes]]:
        """The fields of the buckets to cut: those of the delta that are
        over, and the newest few of each size that closed since the last
        fold without being cut (``c``)."""
        with self.client.pipeline(transaction=False) as pipe:
            for unit in KEPT_UNITS:
                pipe.zrange(self.set_key(unit), -3, -1)
            newest = pipe.execute()
        chosen = {key for key in delta.spans if is_over(*key, now)}
        recent = [
            (unit, start)
            for unit, members in zip(KEPT_UNITS, newest, strict=True)
            for start in (datetime.fromisoformat(text_of(member)) for member in members)
            if is_over(unit, start, now) and (unit, start) not in chosen
        ]
        with self.client.pipeline(transaction=False) as pipe:
            for unit, start in recent:
                pipe.hexists(self.bucket_key(unit, start), "c")
            done = pipe.execute()
        chosen.update(key for key, cut in zip(recent, done, strict=True) if not cut)
        keys = sorted(chosen)
        with self.client.pipeline(transaction=False) as pipe:
            for unit, start in keys:
                pipe.hgetall(self.bucket_key(unit, start))
            replies = pipe.execute()
        return dict(zip(keys, replies, strict=True))

    def _queue_delta(
        self,
        writes: Transaction,
        delta: RollupDelta,
        olds: dict[tuple[Unit, datetime], _Old],
    ) -> None:
        plain, times = split_times(delta.sums, delta.time_keys)
        increments: dict[tuple[Unit, datetime], list[bytes | float]] = {}
        for (unit, start, part, key), weight in plain.items():
            pairs = increments.get((unit, start))
            if pairs is None:
                pairs = increments[unit, start] = []
            pairs += (_field(part, key), weight)
        for (unit, start), pairs in increments.items():
            # One command a bucket, not one a field: a chunk of new paths
            # adds some 10,000 fields, each a command and a reply to read.
            writes.command("EVAL", _ADD_FIELDS, 1, self.bucket_key(unit, start), *pairs)
        for (unit, start), (first, last) in delta.spans.items():
            old_first, old_last, old_h = olds[unit, start]
            if old_first is not None:
                first = min(first, int(old_first))
            if old_last is not None:
                last = max(last, int(old_last))
            fields: list[str | int] = ["first", first, "last", last]
            added = times.get((unit, start))
            if added:
                stored = None if old_h is None else text_of(old_h)
                fields += ["h", t.cast("str", merge_histograms(stored, added))]
            writes.command("HSET", self.bucket_key(unit, start), *fields)
            writes.command("ZADD", self.set_key(unit), seconds_of(start), start.isoformat())
        for (unit, start), hashes in delta.hashes.items():
            writes.command("PFADD", self.visitor_key(unit, start), *(f"{h:016x}" for h in hashes))

    def _queue_compaction(
        self,
        writes: Transaction,
        delta: RollupDelta,
        over: dict[tuple[Unit, datetime], dict[bytes, bytes]],
    ) -> None:
        """Cut the top lists of the buckets in ``over`` (their fields, less
        the delta's sums queued before) to their :data:`TOP_KEPT` leaders."""
        added: dict[tuple[Unit, datetime, str], dict[str, float]] = {}
        for (unit, start, part, key), weight in delta.sums.items():
            if part in COMPACTED and (unit, start) in over:
                added.setdefault((unit, start, part), {})[key] = weight
        for (unit, start), fields in over.items():
            bucket = self.bucket_key(unit, start)
            for part in COMPACTED:
                prefix = f"{part}{SEPARATOR}"
                weights: dict[str, float] = {}
                for name, value in fields.items():
                    text = text_of(name)
                    if text.startswith(prefix):
                        weights[text[len(prefix) :]] = float(value)
                for key, weight in added.get((unit, start, part), {}).items():
                    weights[key] = weights.get(key, 0.0) + weight
                if len(weights) <= TOP_KEPT:
                    continue
                ranked = sorted(weights.items(), key=lambda item: (-item[1], item[0]))
                rest = ranked[TOP_KEPT:]
                writes.command("HDEL", bucket, *(_field(part, key) for key, _ in rest))
                writes.command(
                    "HINCRBYFLOAT", bucket, _field(OTHER + part, ""), sum(w for _, w in rest)
                )
            writes.command("HSET", bucket, "c", 1)

    # -- retention ---------------------------------------------------------

    def retain(self, now: datetime) -> int:
        """Delete the buckets older than each unit's cutoff; return how many."""
        removed = 0
        for unit in KEPT_UNITS:
            cutoff = self.retention.cutoff(unit, now)
            if cutoff is None:
                continue
            set_key = self.set_key(unit)
            while True:
                old = t.cast(
                    "list[bytes]",
                    self.client.zrangebyscore(
                        set_key, "-inf", f"({seconds_of(cutoff)}", start=0, num=_DELETE_CHUNK
                    ),
                )
                if not old:
                    break
                writes = transaction(self.client)
                self._queue_drop(writes, unit, old)
                writes.execute()
                removed += len(old)
        return removed

    def _queue_drop(self, writes: Transaction, unit: Unit, members: list[bytes]) -> None:
        """Queue the removal of the ``unit`` buckets starting at ``members``
        (their sorted set's members): their hashes, sketches and members."""
        if not members:
            return
        starts = [datetime.fromisoformat(text_of(member)) for member in members]
        keys = [self.bucket_key(unit, start) for start in starts]
        keys += [self.visitor_key(unit, start) for start in starts]
        writes.command("DEL", *keys)
        writes.command("ZREM", self.set_key(unit), *members)

    # -- summaries ---------------------------------------------------------

    def summarize(self, query: Query, builder: SummaryBuilder) -> dict[str, t.Any] | None:
        """Feed ``builder`` the window of ``query`` from the rollups
        (:func:`._redisrollupsummary.summarize`); ``None``, having fed
        nothing, when the entries are to be read instead."""
        from ._redisrollupsummary import summarize

        return summarize(self, query, builder)

    def breakdown(self, query: Query, builder: BreakdownBuilder) -> dict[str, t.Any] | None:
        """Feed ``builder`` the window of ``query`` from the rollups
        (:func:`._redisrollupsummary.breakdown`); ``None``, having fed
        nothing, when the entries are to be read instead."""
        from ._redisrollupsummary import breakdown

        return breakdown(self, query, builder)
