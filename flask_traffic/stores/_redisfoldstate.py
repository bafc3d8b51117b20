"""How far a stream's rollups lag (:class:`~._rollupstore.FoldState`), in
one pipeline: the fold position, the rebuild hash, the stream's length and
first entry, and the entries after the position up to :data:`COUNT_BOUND`
(Redis counts no id range, so those are read; the stream's length bounds the
rest from above).
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


def fold_state(rollups: RedisRollups) -> FoldState:
    """What :meth:`._redisrollups.RedisRollups.fold_state` reports."""
    position = rollups.position()
    with rollups.client.pipeline(transaction=False) as pipe:
        pipe.hgetall(rollups.rebuild_key)
        pipe.xlen(rollups.event_name)
        low = b"-" if position is None else b"(" + position
        # Redis counts no id range: the entries are read, fields and all.
        for since, count in ((low, COUNT_BOUND + 1), (b"-", 1)):
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "XRANGE", rollups.event_name, since, b"+", "COUNT", count, **rollups.raw
            )
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
    progress = None
    if rebuild:
        # By the entries' times: from where the rebuild began (its day, less
        # the clock margin, or the stream's first entry) to where it ends.
        cursor, stop = bytes(rebuild[b"cursor"]), bytes(rebuild[b"stop"])
        start = _ms(bytes(first[0][0])) if first else 0
        if rebuild[b"day"]:
            start = max(start, int(rebuild[b"day"]) * 1000 - CLOCK_MARGIN_MS)
        done = _ms(cursor) if cursor else start
        progress = 1.0 if _ms(stop) <= start else (done - start) / (_ms(stop) - start)
        progress = min(1.0, max(0.0, progress))
    return FoldState(
        pending=min(len(after), COUNT_BOUND),
        pending_exact=exact,
        pending_at_most=None if exact else int(length),
        oldest_pending=oldest,
        rebuilding=bool(rebuild),
        rebuild_progress=progress,
    )
