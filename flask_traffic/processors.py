"""Processors take records off the request thread and hand them to a store.

:class:`BatchProcessor` is the default: a bounded queue and one worker thread
per store that writes batches, after the pattern of OpenTelemetry's batch
span processor. :class:`SyncProcessor` writes in the request, for people who
prefer that cost to a queue.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import typing as t
import weakref
from collections import deque
from collections.abc import Callable, Sequence

from ._fork import after_fork_in_child
from .record import TrafficRecord

__all__ = [
    "BatchProcessor",
    "ExportFunction",
    "MaintenanceFunction",
    "Processor",
    "ProcessorOptions",
    "SyncProcessor",
    "backoff_delay",
    "check_positive_int",
    "check_positive_seconds",
    "make_processor",
]

logger = logging.getLogger("flask_traffic")

#: What a processor calls with each batch; it raises on failure.
ExportFunction = Callable[[Sequence[TrafficRecord]], None]
#: What a processor calls now and then between batches (retention).
MaintenanceFunction = Callable[[], None]

_DROP_WARNING_INTERVAL = 60.0
_SHUTDOWN_TIMEOUT = 10.0


class ProcessorOptions(t.TypedDict):
    """The ``TRAFFIC_*`` settings a store's processor is built from."""

    sync: bool
    max_queue_size: int
    max_batch_size: int
    schedule_delay: float
    retention_interval: float


def check_positive_int(value: object, name: str) -> int:
    """``value`` if it is a positive ``int`` (not a bool), else a ``ValueError``
    naming ``name``: the one rule for sizes, in config and in arguments."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def check_positive_seconds(value: object, name: str) -> float:
    """``value`` as a float if it is a positive number, else a ``ValueError``
    naming ``name``: the one rule for durations, in config and in arguments."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
    return float(value)


class Processor(t.Protocol):
    """What :class:`~flask_traffic.stores.Store` needs from a processor."""

    def emit(self, record: TrafficRecord) -> None:
        """Take one record; called on the request thread, never raises."""

    def force_flush(self, timeout: float | None = None) -> bool:
        """Write everything taken so far; ``False`` if that did not finish."""

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush and stop; safe to call more than once."""

    def stats(self) -> dict[str, int]:
        """Counters: ``queued``, ``exported``, ``dropped``, ``failed_exports``."""


class _Maintenance:
    """Runs a store's maintenance (retention) at most once per interval."""

    __slots__ = ("due", "function", "interval", "name")

    def __init__(self, function: MaintenanceFunction | None, interval: float, name: str) -> None:
        self.function = function
        self.interval = check_positive_seconds(interval, "maintenance_interval")
        self.name = name
        # Due at once: an app that starts after a long stop prunes right away.
        self.due = time.monotonic()

    def run_if_due(self) -> None:
        if self.function is None or time.monotonic() < self.due:
            return
        self.due = time.monotonic() + self.interval
        try:
            self.function()
        except Exception:
            # Retried at the next interval; records are never at stake here.
            logger.warning("%s: retention failed; trying again later.", self.name, exc_info=True)


class _Counters:
    """Counters shared by both processors; the drop path takes a lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.exported = 0
        self.dropped = 0
        self.failed_exports = 0
        self._lock = threading.Lock()
        self._last_drop_warning = -_DROP_WARNING_INTERVAL
        self._dropped_since_warning = 0

    def drop(self, count: int, reason: str) -> None:
        with self._lock:
            self.dropped += count
            self._dropped_since_warning += count
            now = time.monotonic()
            if now - self._last_drop_warning < _DROP_WARNING_INTERVAL:
                return
            dropped, self._dropped_since_warning = self._dropped_since_warning, 0
            self._last_drop_warning = now
        logger.warning(
            "%s: dropped %d traffic record(s) (%s); %d dropped in all.",
            self.name,
            dropped,
            reason,
            self.dropped,
        )


class SyncProcessor:
    """Writes each record in the request that made it.

    A failed write is logged and counted, and that record is dropped: the
    request neither waits for retries nor sees the error.

    :param export: the store's ``export`` method.
    :param name: how log messages name the store.
    :param maintenance: called after a write at most once per
        ``maintenance_interval`` seconds (retention), in the request.
    :param maintenance_interval: seconds between maintenance runs.
    """

    def __init__(
        self,
        export: ExportFunction,
        *,
        name: str = "store",
        maintenance: MaintenanceFunction | None = None,
        maintenance_interval: float = 60.0,
    ) -> None:
        self._export = export
        self._counters = _Counters(name)
        self._maintenance = _Maintenance(maintenance, maintenance_interval, name)
        # export() of a file store is not safe to run in two threads at once.
        self._lock = threading.Lock()

    def emit(self, record: TrafficRecord) -> None:
        try:
            with self._lock:
                self._export((record,))
                self._maintenance.run_if_due()
        except Exception:
            self._counters.failed_exports += 1
            logger.exception("%s: writing a traffic record failed.", self._counters.name)
            self._counters.drop(1, "write failed in sync mode")
        else:
            self._counters.exported += 1

    def force_flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        return None

    def stats(self) -> dict[str, int]:
        c = self._counters
        return {
            "queued": 0,
            "exported": c.exported,
            "dropped": c.dropped,
            "failed_exports": c.failed_exports,
        }


class _FlushMarker:
    """Put in the queue by force_flush; set once everything before it is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_live_processors: weakref.WeakSet[BatchProcessor] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for processor in list(_live_processors):
        processor.shutdown(timeout=_SHUTDOWN_TIMEOUT)


class BatchProcessor:
    """A bounded queue and a worker thread that writes records in batches.

    The request thread only appends to the queue. The worker writes a batch
    when ``max_batch_size`` records are waiting, or every ``schedule_delay``
    seconds, or on :meth:`force_flush`. A failed write is logged, counted and
    retried with exponential back-off up to ``max_backoff`` seconds; the
    records wait meanwhile. When ``max_queue_size`` records are waiting, new
    ones are dropped and counted, with a warning at most once a minute, so a
    request never blocks. After ``os.fork`` the child starts a worker of its
    own with an empty queue (the parent writes what it had queued).

    :param export: the store's ``export`` method.
    :param name: how log messages name the store.
    :param max_queue_size: records that may wait before new ones are dropped.
    :param max_batch_size: records handed to one ``export`` call at most.
    :param schedule_delay: seconds between writes when the batch is not full.
    :param max_backoff: longest wait, in seconds, between retries.
    :param maintenance: called by the worker between batches at most once
        per ``maintenance_interval`` seconds (retention); its failures are
        logged and it is tried again at the next interval.
    :param maintenance_interval: seconds between maintenance runs.
    """

    def __init__(
        self,
        export: ExportFunction,
        *,
        name: str = "store",
        max_queue_size: int = 10_000,
        max_batch_size: int = 512,
        schedule_delay: float = 1.0,
        max_backoff: float = 30.0,
        maintenance: MaintenanceFunction | None = None,
        maintenance_interval: float = 60.0,
    ) -> None:
        self._export = export
        self._max_queue_size = check_positive_int(max_queue_size, "max_queue_size")
        self._max_batch_size = check_positive_int(max_batch_size, "max_batch_size")
        self._schedule_delay = check_positive_seconds(schedule_delay, "schedule_delay")
        self._max_backoff = check_positive_seconds(max_backoff, "max_backoff")
        self._counters = _Counters(name)
        self._maintenance = _Maintenance(maintenance, maintenance_interval, name)
        self._is_shut_down = False
        self._init_worker()
        _live_processors.add(self)
        after_fork_in_child(self._at_fork_reinit)

    def _at_fork_reinit(self) -> None:
        # The child gets fresh locks and a thread of its own (threads do not
        # survive fork); what the parent had queued is the parent's to write.
        if not self._is_shut_down:
            self._counters = _Counters(self._counters.name)
            self._init_worker()

    def _init_worker(self) -> None:
        self._queue: deque[TrafficRecord | _FlushMarker] = deque()
        self._in_flight = 0
        # Flush markers queued and not yet released; changed under the lock.
        self._pending_flushes = 0
        self._flush_lock = threading.Lock()
        self._backing_off = False
        self._wake = threading.Event()
        self._stopping = False
        self._deadline = float("inf")
        self._shutdown_lock = threading.Lock()
        self._worker = threading.Thread(
            target=self._run, name=f"flask-traffic {self._counters.name}", daemon=True
        )
        self._worker.start()

    def emit(self, record: TrafficRecord) -> None:
        queue = self._queue
        if self._stopping:
            self._counters.drop(1, "processor is shut down")
            return
        if len(queue) + self._in_flight >= self._max_queue_size:
            self._counters.drop(1, f"queue full at {self._max_queue_size}")
            return
        queue.append(record)
        if len(queue) >= self._max_batch_size and not self._backing_off:
            self._wake.set()

    def force_flush(self, timeout: float | None = None) -> bool:
        """Write every record taken so far.

        :param timeout: seconds to wait at most; ``None`` waits until done.
        :return: ``True`` when everything was written, ``False`` on time-out
            (for example while the store is failing and being retried).
        """
        if not self._worker.is_alive():
            return not self._queue
        marker = _FlushMarker()
        with self._flush_lock:
            self._pending_flushes += 1
            self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    flush = force_flush

    def shutdown(self, timeout: float | None = _SHUTDOWN_TIMEOUT) -> None:
        """Write what is queued and stop the worker. Safe to call twice.

        Records that still cannot be written when ``timeout`` runs out are
        counted as dropped and reported on the ``flask_traffic`` logger.
        """
        with self._shutdown_lock:
            if self._is_shut_down:
                return
            self._is_shut_down = True
        self._deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        self._stopping = True
        self._wake.set()
        # The worker gives up at the deadline itself; the margin lets it
        # count what it drops before this checks on it.
        self._worker.join(None if timeout is None else timeout + 1.0)
        if self._worker.is_alive():
            logger.warning(
                "%s: shutdown timed out after %ss with %d record(s) unwritten.",
                self._counters.name,
                timeout,
                len(self._queue) + self._in_flight,
            )
        _live_processors.discard(self)

    def stats(self) -> dict[str, int]:
        c = self._counters
        queued = sum(1 for item in list(self._queue) if not isinstance(item, _FlushMarker))
        return {
            "queued": queued + self._in_flight,
            "exported": c.exported,
            "dropped": c.dropped,
            "failed_exports": c.failed_exports,
        }

    def _take(self, pending: _Pending) -> None:
        queue = self._queue
        limit = self._max_batch_size
        batch = pending.batch
        while queue and len(batch) < limit:
            item = queue.popleft()
            if isinstance(item, _FlushMarker):
                pending.markers.append(item)
            else:
                batch.append(item)
        self._in_flight = len(batch)

    def _write(self, batch: list[TrafficRecord], attempt: int) -> bool:
        try:
            self._export(batch)
        except Exception:
            self._counters.failed_exports += 1
            # The traceback once per outage; the retries only say they failed.
            logger.warning(
                "%s: writing %d traffic record(s) failed (attempt %d); retrying.",
                self._counters.name,
                len(batch),
                attempt,
                exc_info=attempt == 1,
            )
            return False
        self._counters.exported += len(batch)
        return True

    def _run(self) -> None:
        pending = _Pending()
        while True:
            timed_out = self._sleep(pending)
            stopped = self._stopping and time.monotonic() >= self._deadline
            if stopped and (pending.batch or self._queue):
                self._give_up(pending)
                return
            if pending.batch and time.monotonic() < pending.retry_at:
                # Backing off: neither a full queue nor a flush brings the
                # retry forward, or a store that is down would be retried at
                # the request rate.
                continue
            # The timer, a flush, shutdown or a due retry write everything; a
            # full batch wakes the worker for full batches only, so that
            # writes stay large while requests keep coming. A flush is seen
            # as long as its marker waits: the count only drops when a
            # marker is released, so no flag can be reset under a new one.
            drain_all = (
                timed_out or self._stopping or self._pending_flushes > 0 or bool(pending.batch)
            )
            self._write_queued(pending, drain_all)
            if self._stopping and not pending.batch and not self._queue:
                return
            if not pending.batch:
                self._maintenance.run_if_due()

    def _sleep(self, pending: _Pending) -> bool:
        """Wait for a wake-up, the timer or a due retry; ``True`` on the timer."""
        now = time.monotonic()
        wait = max(0.0, pending.retry_at - now) if pending.batch else self._schedule_delay
        if self._stopping:
            wait = min(wait, max(0.0, self._deadline - now))
        timed_out = not self._wake.wait(wait)
        self._wake.clear()
        return timed_out

    def _write_queued(self, pending: _Pending, drain_all: bool) -> None:
        """Write batches until the queue is empty (``drain_all``) or holds
        less than a full batch, or a write fails and backs off."""
        while True:
            if not pending.batch:
                if not drain_all and len(self._queue) < self._max_batch_size:
                    return
                self._take(pending)
            if pending.batch and not self._write_pending(pending):
                return
            self._release(pending.markers)
            if not self._queue:
                return

    def _write_pending(self, pending: _Pending) -> bool:
        pending.attempt += 1
        if not self._write(pending.batch, pending.attempt):
            pending.retry_at = time.monotonic() + backoff_delay(pending.attempt, self._max_backoff)
            self._backing_off = True
            return False
        pending.batch, pending.attempt = [], 0
        self._in_flight = 0
        self._backing_off = False
        # Between batches too: under a steady flow the worker may never see
        # an empty queue, and retention must still run.
        self._maintenance.run_if_due()
        return True

    def _release(self, markers: list[_FlushMarker]) -> None:
        if not markers:
            return
        for marker in markers:
            marker.done.set()
        with self._flush_lock:
            self._pending_flushes -= len(markers)
        markers.clear()

    def _give_up(self, pending: _Pending) -> None:
        lost = len(pending.batch)
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _FlushMarker):
                pending.markers.append(item)
            else:
                lost += 1
        pending.batch = []
        self._in_flight = 0
        self._counters.drop(lost, "store still failing at shutdown")
        self._release(pending.markers)


class _Pending:
    """The worker's batch in hand: records being written or retried, the
    flush markers taken with them, and its retry state."""

    __slots__ = ("attempt", "batch", "markers", "retry_at")

    def __init__(self) -> None:
        self.batch: list[TrafficRecord] = []
        self.markers: list[_FlushMarker] = []
        self.attempt = 0
        self.retry_at = 0.0


def backoff_delay(attempt: int, max_backoff: float) -> float:
    """Seconds to wait before retry ``attempt + 1``: 0.5 s, 1 s, 2 s ... up to
    ``max_backoff``; the exponent is capped so a long outage cannot overflow."""
    return min(max_backoff, 0.5 * 2.0 ** min(attempt - 1, 30))


def make_processor(
    export: ExportFunction,
    *,
    name: str,
    options: ProcessorOptions,
    sync: bool,
    maintenance: MaintenanceFunction | None = None,
) -> SyncProcessor | BatchProcessor:
    """The processor a sink gets from ``init_app``: a :class:`SyncProcessor`
    when ``sync``, else a :class:`BatchProcessor` sized by ``options``."""
    if sync:
        return SyncProcessor(
            export,
            name=name,
            maintenance=maintenance,
            maintenance_interval=options["retention_interval"],
        )
    return BatchProcessor(
        export,
        name=name,
        max_queue_size=options["max_queue_size"],
        max_batch_size=options["max_batch_size"],
        schedule_delay=options["schedule_delay"],
        maintenance=maintenance,
        maintenance_interval=options["retention_interval"],
    )
