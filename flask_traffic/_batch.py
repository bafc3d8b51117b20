"""The batch processor: a bounded queue and a worker thread per store, with
retries, dead letters and the disk spool (:mod:`flask_traffic.processors`
names it)."""

from __future__ import annotations

import logging
import threading
import time
import typing as t
from collections import deque

from ._checks import check_positive_int, check_positive_seconds
from ._fork import after_fork_in_child
from ._health import Health
from ._isolation import (
    DeadLetterFunction,
    Export,
    IsTransient,
    PendingBatch,
    backoff_delay,
    is_transient_default,
    isolate,
)
from ._maintenance import Maintenance, MaintenanceFunction
from ._spool import ReplayBatch, Spool
from ._stopping import EXIT_TIMEOUT, live_processors
from .record import TrafficRecord

__all__ = ["SHUTDOWN_TIMEOUT", "SUSPECT_AFTER", "BatchProcessor", "SpoolTarget"]

# A replayed batch is this many times max_batch_size: the spool is a backlog
# already on disk, so nothing waits on the batch, and larger transactions
# amortise the per-batch work (a round trip, the commit, the fence update)
# that makes replay keep up with a store's ingest rate.
_REPLAY_BATCHES = 4

logger = logging.getLogger("flask_traffic")

ExportFunction = Export

SHUTDOWN_TIMEOUT = EXIT_TIMEOUT
#: After this many transient failures in a row of one batch, it is searched
#: for a record that fails alone (unless the sink retries whole batches only).
SUSPECT_AFTER = 5


class SpoolTarget(t.Protocol):
    """What a processor's spool replays into: a sink that fences spool batches."""

    def replay_spooled(self, records: list[TrafficRecord], spool_id: str, first: int) -> None:
        """Write records ``first`` on of spool ``spool_id``, skipping those
        already written; raise on failure, like ``export``."""

    def spool_finished(self, spool_id: str) -> None:
        """Spool ``spool_id`` is replayed and removed: drop its fence; never raises."""


class _FlushMarker:
    """Put in the queue by force_flush; set once everything before it is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class BatchProcessor:
    """A bounded queue and a worker thread that writes records in batches.

    The request thread only appends to the queue. The worker writes a batch
    when ``max_batch_size`` records are waiting, or every ``schedule_delay``
    seconds, or on :meth:`force_flush`.

    A write that fails with an error that may pass (``is_transient``: a
    connection refused, a time-out, a locked database) is logged, counted and
    retried unchanged with exponential back-off up to ``max_backoff``
    seconds; the records wait meanwhile. A write that fails with an error no
    retry mends (bad data, an encoding error, a value out of range) is split
    in halves until the records that fail on their own are found: those are
    set aside (``dead_letter``) and every other record is written, in order.
    When even single records all fail, the sink itself is broken: the batch
    backs off and takes queued records in at the next attempt, so that a bad
    record is found beside good ones.

    When ``max_queue_size`` records are waiting, new ones are dropped and
    counted, with one line a minute saying how many, so a request never
    blocks. At shutdown a batch backing off is tried once more at once.
    After ``os.fork`` the child starts a worker of its own with an empty
    queue (the parent writes what it had queued).

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
    :param is_transient: whether an error of ``export`` may pass by itself;
        by default operating-system errors (``OSError``) do.
    :param dead_letter: given the records no retry can write, with their
        errors; returns how many it kept. ``None`` drops (and counts) them.
    :param split_transient: after ``SUSPECT_AFTER`` transient failures in a
        row, search the batch for a record that fails alone; ``False`` for a
        sink that must see a failed batch again whole (it fences batches
        against lost replies).
    :param spool: where records go while the sink fails: when the queue
        holds half of ``max_queue_size`` during a back-off, and at shutdown
        while it still fails. They are replayed into ``spool_target``, oldest
        first and before the queue, once it answers; a process also replays
        the spool files that stopped processes left. ``None``: no spool.
    :param spool_target: the sink, which fences replayed batches.
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
        is_transient: IsTransient = is_transient_default,
        dead_letter: DeadLetterFunction | None = None,
        split_transient: bool = True,
        spool: Spool | None = None,
        spool_target: SpoolTarget | None = None,
    ) -> None:
        self._export = export
        self._spool = spool if spool_target is not None else None
        self._spool_target = spool_target
        self._spill_at = max(1, max_queue_size // 2) if isinstance(max_queue_size, int) else 1
        self._split_transient = split_transient
        self._max_queue_size = check_positive_int(max_queue_size, "max_queue_size")
        self._max_batch_size = check_positive_int(max_batch_size, "max_batch_size")
        self._schedule_delay = check_positive_seconds(schedule_delay, "schedule_delay")
        self._max_backoff = check_positive_seconds(max_backoff, "max_backoff")
        self._health = Health(name)
        self._maintenance = Maintenance(maintenance, maintenance_interval, name)
        self._transient = is_transient
        self._dead_letter = dead_letter
        self._is_shut_down = False
        self._init_worker()
        live_processors.add(self)
        after_fork_in_child(self._at_fork_reinit)

    def _at_fork_reinit(self) -> None:
        # The child gets fresh locks and a thread of its own (threads do not
        # survive fork); what the parent had queued is the parent's to write.
        if not self._is_shut_down:
            self._health = Health(self._health.name)
            if self._spool is not None:
                self._spool.forget_after_fork()
            self._init_worker()

    def _init_worker(self) -> None:
        self._queue: deque[TrafficRecord | _FlushMarker] = deque()
        self._in_flight = 0
        # Flush markers queued and not yet released; changed under the lock.
        self._pending_flushes = 0
        self._flush_lock = threading.Lock()
        self._backing_off = False
        # Whether records over the spill threshold go to the spool: while
        # backing off, and while the spool holds records (they come first).
        self._spilling = False
        self._wake = threading.Event()
        self._stopping = False
        self._deadline = float("inf")
        self._shutdown_lock = threading.Lock()
        self._worker = threading.Thread(
            target=self._run, name=f"flask-traffic {self._health.name}", daemon=True
        )
        self._worker.start()

    def emit(self, record: TrafficRecord) -> None:
        queue = self._queue
        if self._stopping:
            self._health.drop(1, "processor is shut down")
            return
        if len(queue) + self._in_flight >= self._max_queue_size:
            self._health.drop(
                1,
                f"queue full at {self._max_queue_size}: a larger TRAFFIC_MAX_QUEUE_SIZE "
                f"holds more during an outage",
            )
            return
        queue.append(record)
        size = len(queue)
        if (size >= self._max_batch_size and not self._backing_off) or (
            size >= self._spill_at and self._spilling
        ):
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

    def shutdown(self, timeout: float | None = SHUTDOWN_TIMEOUT) -> None:
        """Write what is queued and stop the worker. Safe to call twice.

        A batch that is backing off is tried once more at once (the store may
        be back); when that write fails, or a write fails while the queue is
        drained, the records left are counted as dropped and reported on the
        ``flask_traffic`` logger with their number, at once rather than at
        ``timeout``, so that a failing store never holds a stopping process.
        ``timeout`` bounds the time slow writes may take.
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
                self._health.name,
                timeout,
                len(self._queue) + self._in_flight,
            )
        self._health.report_drops(now=True)
        live_processors.discard(self)

    def stats(self) -> dict[str, t.Any]:
        queued = sum(1 for item in list(self._queue) if not isinstance(item, _FlushMarker))
        stats = self._health.stats(queued + self._in_flight)
        spool = self._spool
        if spool is not None:
            stats.update(
                spooled=spool.backlog,
                spooled_bytes=spool.backlog_bytes,
                spilled=spool.spilled,
                replayed=spool.replayed,
                replaying=spool.replaying,
            )
        return stats

    def _take(self, pending: PendingBatch) -> None:
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

    def _run(self) -> None:
        spool = self._spool
        if spool is None:
            self._loop()
            return
        try:
            spool.adopt_orphans()
            self._spilling = spool.backlog > 0
            self._loop()
        finally:
            spool.close()

    def _backlog(self) -> int:
        return 0 if self._spool is None else self._spool.backlog

    def _loop(self) -> None:
        pending = PendingBatch()
        while True:
            timed_out = self._sleep(pending)
            self._health.report_drops()
            stopped = self._stopping and time.monotonic() >= self._deadline
            if stopped and (pending.batch or self._queue or self._backlog()):
                self._give_up(pending)
                return
            if pending.batch and time.monotonic() < pending.retry_at:
                # Backing off: neither a full queue nor a flush brings the
                # retry forward, or a store that is down would be retried at
                # the request rate. A queue past the threshold spills.
                if len(self._queue) >= self._spill_at:
                    self._spill(pending)
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
            if self._backing_off and len(self._queue) >= self._spill_at:
                self._spill(pending)
            if self._stopping and pending.batch and pending.retried_at_stop:
                # It was tried once more at shutdown and still fails: give up
                # now rather than hold the process (a server recycling its
                # worker waits for it) until the deadline.
                self._give_up(pending)
                return
            if self._stopping and not pending.batch and not self._queue and not self._backlog():
                return
            if not pending.batch:
                self._maintenance.run_if_due()
                if self._spool is not None:
                    self._spool.adopt_orphans_if_due()
                    self._spilling = self._spilling or self._backlog() > 0

    def _sleep(self, pending: PendingBatch) -> bool:
        """Wait for a wake-up, the timer or a due retry; ``True`` on the timer."""
        now = time.monotonic()
        if self._stopping and not pending.retried_at_stop:
            # Shutting down: a batch backing off is tried once more at once
            # (the store may be back); one failing from here on, once.
            pending.retried_at_stop = True
            pending.retry_at = now
        if pending.batch:
            wait = max(0.0, pending.retry_at - now)
        else:
            # Spooled records (taken over at start, say) are written at once.
            wait = 0.0 if self._backlog() else self._schedule_delay
        if self._stopping:
            wait = min(wait, max(0.0, self._deadline - now))
        timed_out = not self._wake.wait(wait)
        self._wake.clear()
        return timed_out

    def _write_queued(self, pending: PendingBatch, drain_all: bool) -> None:
        """Write batches until the queue is empty (``drain_all``) or holds
        less than a full batch, or a write fails and backs off."""
        while True:
            if not pending.batch and self._backlog():
                # The spool first: it holds older records than the queue,
                # which spills behind it while it is replayed.
                if len(self._queue) >= self._spill_at:
                    self._spill(pending)
                self._load_replay(pending)
            if not pending.batch or pending.may_grow:
                if not pending.batch and not drain_all and len(self._queue) < self._max_batch_size:
                    return
                pending.may_grow = False
                self._take(pending)
            if pending.batch and not self._write_pending(pending):
                return
            self._release(pending.markers)
            if not self._queue and not self._backlog():
                return

    def _write_pending(self, pending: PendingBatch) -> bool:
        """Write the batch in hand; ``False`` when it backs off."""
        batch = pending.batch
        pending.attempt += 1
        export = self._export_for(pending)
        try:
            export(batch)
        except Exception as exc:
            transient = self._transient(exc)
            # A batch failing the same way time after time may hold a record
            # that fails with a transient-looking error (a packet too big
            # drops the connection): search it while the store answers.
            suspect = transient and self._split_transient and pending.attempt >= SUSPECT_AFTER
            if transient and not suspect:
                self._health.failed(exc, len(batch), retrying=True)
                return self._back_off(pending)
            self._health.failed(exc, len(batch), retrying=False)
            found = isolate(export, batch, self._transient, self._health, suspect=suspect)
            self._set_aside(found.poison)
            if found.poison and not found.unwritten and pending.replay is not None:
                self._fence_past(pending.replay)
            if found.unwritten:
                pending.batch = found.unwritten
                self._hold(pending)
                # Nothing could be written: take more records in next time,
                # unless the store went away (then retry it unchanged).
                pending.may_grow = (
                    found.written == 0
                    and pending.replay is None
                    and not (found.error is not None and self._transient(found.error))
                )
                return self._back_off(pending)
        else:
            self._health.exported_batch(len(batch))
        pending.batch, pending.attempt = [], 0
        self._in_flight = 0
        self._backing_off = False
        if pending.replay is not None:
            self._replayed(pending.replay)
            pending.replay = None
        self._spilling = self._backlog() > 0
        # Between batches too: under a steady flow the worker may never see
        # an empty queue, and retention must still run.
        self._maintenance.run_if_due()
        return True

    def _back_off(self, pending: PendingBatch) -> bool:
        pending.retry_at = time.monotonic() + backoff_delay(pending.attempt, self._max_backoff)
        self._backing_off = True
        self._spilling = self._spool is not None
        return False

    # -- the spool -------------------------------------------------------------

    def _export_for(self, pending: PendingBatch) -> ExportFunction:
        """The write of the batch in hand: the sink's export, or for records
        replayed from the spool its fenced write, each part at its number."""
        replay, target = pending.replay, self._spool_target
        if replay is None or target is None:
            return self._export
        spool_id = replay.file.id
        records = replay.records
        numbers: dict[int, int] = {}

        def replay_part(part: t.Sequence[TrafficRecord]) -> None:
            if part[0] is records[0]:
                number = replay.start
            else:
                # A part of a batch being searched for a poison record.
                if not numbers:
                    numbers.update((id(record), i) for i, record in enumerate(records))
                number = replay.start + numbers[id(part[0])]
            target.replay_spooled(list(part), spool_id, number)

        return replay_part

    def _hold(self, pending: PendingBatch) -> None:
        """Count the batch in hand as in flight (against the queue's bound),
        but for a replayed one: on disk still, and counted in the spool's
        backlog until written."""
        self._in_flight = 0 if pending.replay is not None else len(pending.batch)

    def _fence_past(self, replay: ReplayBatch) -> None:
        """Move the sink's fence to the end of ``replay``, whose records are
        written but for those just set aside as poison: after a crash, the
        next process skips them instead of setting them aside again."""
        target = self._spool_target
        if target is None:
            return
        try:
            target.replay_spooled([], replay.file.id, replay.start + len(replay.records))
        except Exception as exc:
            # At worst a crash before the next batch sets them aside twice.
            logger.info("%s: could not move the spool fence: %s", self._health.name, exc)

    def _load_replay(self, pending: PendingBatch) -> None:
        assert self._spool is not None
        replay = self._spool.next_batch(self._max_batch_size * _REPLAY_BATCHES)
        if replay is not None:
            pending.batch, pending.replay = list(replay.records), replay
            self._hold(pending)

    def _replayed(self, replay: ReplayBatch) -> None:
        assert self._spool is not None
        assert self._spool_target is not None
        finished = self._spool.advance(replay)
        if finished is not None:
            self._spool_target.spool_finished(finished)

    def _spill(self, pending: PendingBatch) -> None:
        """Move the batch in hand (unless a replay: on disk already) and the
        queue to the spool, dropping and counting what does not fit; the
        spool's oldest records become the batch in hand, keeping its back-off."""
        spool = self._spool
        if spool is None:
            return
        records: list[TrafficRecord] = []
        markers = []
        if pending.replay is None:
            records, pending.batch = pending.batch, []
            markers, pending.markers = pending.markers, []
        queue = self._queue
        while queue:
            item = queue.popleft()
            if isinstance(item, _FlushMarker):
                markers.append(item)
            else:
                records.append(item)
        # Flushes wait for the spool to be replayed, behind it in the queue.
        queue.extendleft(reversed(markers))
        self._hold(pending)
        kept = spool.spill(records)
        self._health.drop(
            len(records) - kept,
            f"the spool is full or cannot be written ({spool.folder}): see TRAFFIC_SPOOL_MAX_BYTES",
        )
        if not pending.batch:
            self._load_replay(pending)

    def _set_aside(self, poison: list[tuple[TrafficRecord, BaseException]]) -> None:
        if not poison:
            return
        kept = 0 if self._dead_letter is None else self._dead_letter(poison)
        if kept:
            self._health.set_aside(kept, poison[0][1], "the dead-letter file")
        self._health.drop(
            len(poison) - kept,
            "no retry can write them and the dead-letter file is full or off: see "
            "TRAFFIC_DEAD_LETTER_MAX_BYTES",
        )

    def _release(self, markers: list[_FlushMarker]) -> None:
        if not markers:
            return
        for marker in markers:
            marker.done.set()
        with self._flush_lock:
            self._pending_flushes -= len(markers)
        markers.clear()

    def _give_up(self, pending: PendingBatch) -> None:
        if self._spool is not None:
            self._spill(pending)
            pending.batch, pending.replay = [], None
        lost = len(pending.batch)
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _FlushMarker):
                pending.markers.append(item)
            else:
                lost += 1
        pending.batch = []
        self._in_flight = 0
        self._health.drop(lost, "store still failing at shutdown")

        self._health.report_drops(now=True)
        self._release(pending.markers)
