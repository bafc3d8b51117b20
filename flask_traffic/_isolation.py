"""What a batch processor does with a batch that failed: back off while the
cause may pass, and find the records that fail on their own when it cannot."""

from __future__ import annotations

import typing as t
from collections import deque
from collections.abc import Callable, Sequence

from ._health import Health
from .record import TrafficRecord

__all__ = [
    "DeadLetterFunction",
    "Export",
    "IsTransient",
    "Isolated",
    "PendingBatch",
    "backoff_delay",
    "is_transient_default",
    "isolate",
]

#: A sink's export: writes a batch, raises on failure.
Export = Callable[[Sequence[TrafficRecord]], None]
#: Whether an export error may pass by itself (a retry may succeed).
IsTransient = Callable[[BaseException], bool]
#: Records set aside: a function given them with their errors, returning how
#: many it kept (the rest are counted as dropped).
DeadLetterFunction = Callable[[list[tuple[TrafficRecord, BaseException]]], int]


def is_transient_default(error: BaseException) -> bool:
    """The default classification: operating-system errors (a refused or
    reset connection, a time-out, a full disk, a locked file) may pass;
    anything else (encoding, values, programming errors) will not."""
    return isinstance(error, OSError)


def backoff_delay(attempt: int, max_backoff: float) -> float:
    """Seconds to wait before retry ``attempt + 1``: 0.5 s, 1 s, 2 s ... up to
    ``max_backoff``; the exponent is capped so a long outage cannot overflow."""
    return min(max_backoff, 0.5 * 2.0 ** min(attempt - 1, 30))


class PendingBatch:
    """The worker's batch in hand: the records being written or retried, the
    flush markers taken with them, and its retry state.

    ``may_grow`` is set after a failure no retry can mend while nothing of the
    batch could be written: the next attempt takes queued records into it, so
    that a lone bad record is found beside good ones rather than blocking
    them. (After a transient failure the batch is retried unchanged: a store
    may be fencing it against a lost reply.)
    """

    __slots__ = (
        "attempt",
        "batch",
        "markers",
        "may_grow",
        "replay",
        "retried_at_stop",
        "retry_at",
    )

    def __init__(self) -> None:
        self.batch: list[TrafficRecord] = []
        self.markers: list[t.Any] = []
        self.attempt = 0
        self.retry_at = 0.0
        self.may_grow = False
        self.retried_at_stop = False
        #: The spool batch (a :class:`~._spool.ReplayBatch`) when the records
        #: are replayed from the spool, else ``None``.
        self.replay: t.Any = None


class Isolated(t.NamedTuple):
    """What :func:`isolate` found."""

    #: Records written, in order.
    written: int
    #: Records that failed alone with an error no retry mends, with it.
    poison: list[tuple[TrafficRecord, BaseException]]
    #: Records still to write (the sink failed as a whole or went away).
    unwritten: list[TrafficRecord]
    #: The error that left ``unwritten``, if any.
    error: BaseException | None


def _halves(records: list[TrafficRecord]) -> list[list[TrafficRecord]]:
    middle = len(records) // 2
    return [records] if middle == 0 else [records[:middle], records[middle:]]


def isolate(
    export: Export,
    batch: list[TrafficRecord],
    transient: IsTransient,
    health: Health,
    *,
    suspect: bool = False,
) -> Isolated:
    """Write ``batch``, which just failed, in halves, and halves of the halves
    that fail, down to single records.

    Records are written in their order. A record that fails alone with an
    error no retry mends is poison. With ``suspect`` (the batch failed with a
    transient-looking error several times in a row), a record that fails
    alone with a transient error is poison too, once the store has written
    other records of this search: it answers, that record is what fails.
    When the sink fails with a transient error otherwise (it went away), or
    when not a single record could be written (the sink itself is broken, not
    its records), what is left is returned as ``unwritten`` for the back-off,
    and nothing is called poison.
    """
    todo: deque[list[TrafficRecord]] = deque(_halves(batch))
    poison: list[tuple[TrafficRecord, BaseException]] = []
    # A lone record that failed with a transient error, while suspect: poison
    # if the store then writes the next records, not if it fails again.
    candidate: tuple[TrafficRecord, BaseException] | None = None
    written = 0
    while todo:
        chunk = todo.popleft()
        try:
            export(chunk)
        except Exception as exc:
            health.note_failure(exc)
            passing = transient(exc)
            if passing and not (suspect and (len(chunk) > 1 or candidate is None)):
                if not written:
                    return Isolated(0, [], batch, exc)
                rest = [candidate[0]] if candidate is not None else []
                rest += chunk + [record for part in todo for record in part]
                return Isolated(written, poison, rest, exc)
            if len(chunk) > 1:
                todo.extendleft(reversed(_halves(chunk)))
            elif passing:
                candidate = (chunk[0], exc)
            else:
                poison.append((chunk[0], exc))
        else:
            written += len(chunk)
            health.exported_batch(len(chunk))
            if candidate is not None:
                poison.append(candidate)
                candidate = None
    if candidate is not None and written:
        poison.append(candidate)
    if not written and poison:
        return Isolated(0, [], batch, poison[0][1])
    return Isolated(written, poison, [], None)
