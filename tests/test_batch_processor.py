"""The processors: bounded queue, batches, retry, flush, shutdown, fork."""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import pytest
from flask import Flask

from flask_traffic import Traffic, TrafficRecord, _batch
from flask_traffic.processors import BatchProcessor, SyncProcessor
from flask_traffic.stores import MemoryStore


def counters(stats: dict[str, t.Any]) -> dict[str, t.Any]:
    """The four counters every processor has had since 1.0."""
    return {key: stats[key] for key in ("queued", "exported", "dropped", "failed_exports")}


def record(n: int = 0) -> TrafficRecord:
    return TrafficRecord(start_time_ns=n, duration_ns=1, request_path=f"/{n}")


class Sink:
    """An export function that can be made to fail, and keeps what it got."""

    def __init__(self, failures: int = 0, block: threading.Event | None = None) -> None:
        self.failures = failures
        self.block = block
        self.batches: list[list[TrafficRecord]] = []

    def __call__(self, batch: Sequence[TrafficRecord]) -> None:
        if self.block is not None:
            self.block.wait(10)
        if self.failures:
            self.failures -= 1
            raise OSError("store is down")
        self.batches.append(list(batch))

    @property
    def paths(self) -> list[str | None]:
        return [r.request_path for batch in self.batches for r in batch]


def test_flush_writes_everything_in_order() -> None:
    sink = Sink()
    processor = BatchProcessor(sink, max_batch_size=7)
    for n in range(100):
        processor.emit(record(n))
    assert processor.force_flush(10)
    assert sink.paths == [f"/{n}" for n in range(100)]
    assert max(len(batch) for batch in sink.batches) <= 7
    stats = processor.stats()
    assert counters(stats) == {"queued": 0, "exported": 100, "dropped": 0, "failed_exports": 0}
    assert stats["dead_lettered"] == 0
    assert stats["last_error"] is None
    assert stats["last_error_at"] is None
    assert stats["last_export_at"] is not None
    processor.shutdown()


def test_timer_writes_without_flush() -> None:
    sink = Sink()
    processor = BatchProcessor(sink, schedule_delay=0.05)
    processor.emit(record())
    deadline = time.monotonic() + 5
    while not sink.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.paths == ["/0"]
    processor.shutdown()


def test_full_queue_drops_and_counts_without_blocking(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    sink = Sink(block=gate)
    processor = BatchProcessor(sink, max_queue_size=10, max_batch_size=5, schedule_delay=0.01)
    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        for n in range(100):
            processor.emit(record(n))
        # Every emit returned while the store was still stuck in its write.
        assert sink.batches == []
        assert processor.stats()["dropped"] >= 90
    gate.set()
    assert processor.force_flush(10)
    stats = processor.stats()
    assert stats["exported"] + stats["dropped"] == 100
    assert any("dropped" in r.getMessage() for r in caplog.records)
    processor.shutdown()


def test_failing_store_is_retried_and_nothing_is_lost(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(failures=2)
    processor = BatchProcessor(sink, max_batch_size=10, schedule_delay=0.01)
    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        for n in range(25):
            processor.emit(record(n))
        assert not processor.force_flush(0.2)  # still backing off
        assert processor.force_flush(10)
    assert sink.paths == [f"/{n}" for n in range(25)]
    assert processor.stats()["failed_exports"] == 2
    assert processor.stats()["dropped"] == 0
    assert any("failed" in r.getMessage() for r in caplog.records)
    processor.shutdown()


def test_back_off_holds_under_load(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(failures=10**9)
    processor = BatchProcessor(sink, max_batch_size=2, schedule_delay=0.01, max_backoff=5)
    with caplog.at_level(logging.CRITICAL, logger="flask_traffic"):
        for n in range(300):
            processor.emit(record(n))
            time.sleep(0.002)
    # 0.6 s of a full queue: attempts at 0, 0.5 s and maybe 1.5 s, not one per record.
    assert processor.stats()["failed_exports"] <= 4
    assert processor.stats()["queued"] == 300
    sink.failures = 0
    processor.shutdown(timeout=10)
    assert len(sink.paths) == 300


def test_shutdown_twice_and_emit_after() -> None:
    sink = Sink()
    processor = BatchProcessor(sink)
    processor.emit(record(1))
    processor.shutdown()
    processor.shutdown()
    processor.emit(record(2))
    assert sink.paths == ["/1"]
    assert processor.stats()["dropped"] == 1


def test_shutdown_gives_up_on_a_dead_store(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(failures=10**9)
    processor = BatchProcessor(sink, schedule_delay=0.01)
    processor.emit(record())
    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        processor.shutdown(timeout=0.3)
    assert processor.stats()["dropped"] == 1
    assert any("shutdown" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_queue_size": 0},
        {"max_batch_size": -1},
        {"max_batch_size": True},
        {"schedule_delay": 0},
        {"max_backoff": "1"},
    ],
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BatchProcessor(Sink(), **kwargs)  # type: ignore[arg-type]


def test_sync_processor_logs_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(failures=1)
    processor = SyncProcessor(sink)
    with caplog.at_level(logging.ERROR, logger="flask_traffic"):
        processor.emit(record(1))
        processor.emit(record(2))
    assert sink.paths == ["/2"]
    assert counters(processor.stats()) == {
        "queued": 0,
        "exported": 1,
        "dropped": 1,
        "failed_exports": 1,
    }
    assert processor.force_flush() is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns about fork() with threads running; forking is the point.
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_child_after_fork_has_its_own_worker() -> None:
    sink = Sink()
    gate = threading.Event()
    sink.block = gate
    processor = BatchProcessor(sink, schedule_delay=0.01)
    processor.emit(record(1))  # queued in the parent, held by the gate
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            sink.block = None
            sink.batches.clear()
            processor.emit(record(2))
            if processor.force_flush(5) and sink.paths == ["/2"]:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    gate.set()
    assert processor.force_flush(10)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sink.paths == ["/1"]
    processor.shutdown()


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def export(self, records: Sequence[TrafficRecord]) -> None:
        if self.fail:
            raise ConnectionError("down")
        super().export(records)


def test_failing_store_never_fails_requests_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask("site", instance_path=str(tmp_path))
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 0.01
    app.add_url_rule("/", "index", lambda: "hello")
    store = FlakyStore()
    Traffic(app, stores=store)
    client = app.test_client()
    with caplog.at_level(logging.CRITICAL, logger="flask_traffic"):
        assert [client.get("/").status_code for _ in range(20)] == [200] * 20
        assert not store.flush(0.2)
    store.fail = False
    assert store.flush(10)
    assert len(store.read()) == 20
    store.shutdown()


def _worker_lines(run: Callable[[BatchProcessor], None]) -> set[int]:
    """The lines of _batch.py the worker thread runs during ``run``."""
    seen: set[int] = set()

    def trace(frame: FrameType, event: str, arg: object) -> t.Any:
        if frame.f_code.co_filename != _batch.__file__:
            return None
        if event == "line":
            seen.add(frame.f_lineno)
        return trace

    threading.settrace(trace)
    try:
        processor = BatchProcessor(Sink(), max_batch_size=4, schedule_delay=30.0)
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    run(processor)
    processor.shutdown()
    return seen


def _full_batches(processor: BatchProcessor) -> None:
    for n in range(9):  # two full batches and one record over
        processor.emit(record(n))
    assert processor.force_flush(5)


def _flush_landing_at(line: int) -> list[bool]:
    """Wake the worker with a full batch and let a flush land just before it
    runs ``line`` (the tracer holds the worker there until the flush is
    queued); what that flush returned, or nothing if the line never ran."""
    results: list[bool] = []
    flushers: list[threading.Thread] = []
    armed = threading.Event()
    processor: BatchProcessor | None = None

    def trace(frame: FrameType, event: str, arg: object) -> t.Any:
        if frame.f_code.co_filename != _batch.__file__:
            return None
        if event == "line" and frame.f_lineno == line and armed.is_set() and not flushers:
            assert processor is not None
            target = processor
            flusher = threading.Thread(target=lambda: results.append(target.force_flush(5)))
            flusher.start()
            flushers.append(flusher)
            time.sleep(0.02)  # the flusher queues its marker meanwhile
        return trace

    threading.settrace(trace)
    try:
        processor = BatchProcessor(Sink(), max_batch_size=4, schedule_delay=30.0)
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    armed.set()
    for n in range(5):  # a full batch wakes the worker, one record stays
        processor.emit(record(n))
    deadline = time.monotonic() + 0.3
    while not flushers and time.monotonic() < deadline:
        time.sleep(0.005)
    for flusher in flushers:
        flusher.join(10)
    processor.shutdown()
    return results


def test_a_flush_landing_anywhere_in_the_worker_is_never_missed() -> None:
    # A flush requested while the worker handles a full batch must not wait
    # for the 30 s timer, wherever in its loop the worker is when the flush
    # lands: each run lets one flush land just before one line the worker
    # runs, so every interleaving of a flush with the loop is tried once.
    lines = _worker_lines(_full_batches)
    assert lines
    landed = 0
    for line in sorted(lines):
        results = _flush_landing_at(line)
        assert results in ([], [True]), f"a flush landing at line {line} was missed"
        landed += len(results)
    assert landed >= 10  # most lines the worker runs were tried
