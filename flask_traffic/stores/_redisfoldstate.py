"""How far a stream's rollups lag (:class:`~._rollupstore.FoldState`), in
one pipeline: the fold position, the rebuild hash, the stream's length and
first entry, and the entries after the position up to :data:`COUNT_BOUND`
(Redis counts no id range, so those are read; the stream's length bounds the
rest from above). During a rebuild, one more pipeline reads, up to that
bound, the entries it refolds and those it has left.
"""

from __future__ import annotations

import typing as t
from datetime import datetime, timezone

from ._redisentries import CLOCK_MARGIN_MS
from ._rollupstore import FoldState

if t.TYPE_CHECKING:
    from ._redisrollups import RedisRollups

__all__ = ["COUNT_BOUND", "fold_state"]

_UTC = timezone.utc
#: Entries after the fold position read at most (a few MB, a few ms).
COUNT_BOUND = 10_000


def _ms(entry_id: bytes) -> int:
    """The milliseconds part of a stream id."""
    return int(entry_id.partition(b"-")[0])


def _xrange(pipe: t.Any, rollups: RedisRollups, low: bytes, high: bytes, count: int) -> None:
    # Redis counts no id range: the entries are read, fields and all.
    pipe.execute_command("XRANGE", rollups.event_name, low, high, "COUNT", count, **rollups.raw)


def fold_state(rollups: RedisRollups) -> FoldState:
    """What :meth:`._redisrollups.RedisRollups.fold_state` reports."""
    position = rollups.position()
    with rollups.client.pipeline(transaction=False) as pipe:
        pipe.hgetall(rollups.rebuild_key)
        pipe.xlen(rollups.event_name)
        _xrange(pipe, rollups, b"-" if position is None else b"(" + position, b"+", COUNT_BOUND + 1)
        _xrange(pipe, rollups, b"-", b"+", 1)
        rebuild, length, after, first = pipe.execute()
    exact = len(after) <= COUNT_BOUND
    oldest = None
    if after:
        # Its request_date, as the other stores say; else when it was added.
        date = rollups.decode(after[:1])[0].get("request_date")
        oldest = (
            datetime.fromisoformat(date)
            if date
            else datetime.fromtimestamp(_ms(bytes(after[0][0])) / 1000, _UTC)
        )
    return FoldState(
        pending=min(len(after), COUNT_BOUND),
        pending_exact=exact,
        pending_at_most=None if exact else int(length),
        oldest_pending=oldest,
        rebuilding=bool(rebuild),
        rebuild_progress=_progress(rollups, rebuild, first) if rebuild else None,
    )


def _progress(rollups: RedisRollups, rebuild: dict[bytes, bytes], first: list[t.Any]) -> float:
    """How far a rebuild is: by count when it refolds up to
    :data:`COUNT_BOUND` entries, else by the entries' times, from where it
    began (its day less the clock margin, or the stream's first entry) to
    where it ends."""
    cursor, stop = bytes(rebuild[b"cursor"]), bytes(rebuild[b"stop"])
    start = _ms(bytes(first[0][0])) if first else 0
    if rebuild[b"day"]:
        start = max(start, int(rebuild[b"day"]) * 1000 - CLOCK_MARGIN_MS)
    with rollups.client.pipeline(transaction=False) as pipe:
        _xrange(pipe, rollups, b"%d" % start, stop, COUNT_BOUND + 1)
        _xrange(pipe, rollups, b"(" + cursor if cursor else b"%d" % start, stop, COUNT_BOUND + 1)
        total, left = (len(entries) for entries in pipe.execute())
    if total <= COUNT_BOUND:
        return 1.0 if not total else 1.0 - left / total
    done = _ms(cursor) if cursor else start
    if _ms(stop) <= start:
        return 1.0
    return min(1.0, max(0.0, (done - start) / (_ms(stop) - start)))
