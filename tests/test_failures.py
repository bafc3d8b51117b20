"""A record a store cannot write is set aside; the others keep flowing."""

from __future__ import annotations

import json
import logging
import threading
import time
import typing as t
from collections.abc import Sequence
from pathlib import Path

import pytest
from flask import Flask, Response

from flask_traffic import Traffic, TrafficRecord
from flask_traffic._deadletter import DeadLetterFile
from flask_traffic.processors import BatchProcessor, SyncProcessor
from flask_traffic.stores import MemoryStore


def record(n: int) -> TrafficRecord:
    return TrafficRecord(start_time_ns=n, duration_ns=1, request_path=f"/{n}")


class PickyExport:
    """Writes whole batches or nothing, like a transaction; a record whose
    path is in ``bad`` makes the whole batch raise ``error``."""

    def __init__(self, bad: set[str], error: type[Exception] = TypeError) -> None:
        self.bad = bad
        self.error = error
        self.written: list[str | None] = []
        self.calls = 0
        self.down = False

    def __call__(self, batch: Sequence[TrafficRecord]) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("the server is away")
        for item in batch:
            if item.request_path in self.bad:
                raise self.error(f"cannot write {item.request_path}")
        self.written.extend(item.request_path for item in batch)


class Letters:
    """A dead-letter function that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[tuple[TrafficRecord, BaseException]] = []

    def __call__(self, items: list[tuple[TrafficRecord, BaseException]]) -> int:
        self.items.extend(items)
        return len(items)

    @property
    def paths(self) -> list[str | None]:
        return [item.request_path for item, _ in self.items]


def test_a_bad_record_is_set_aside_and_the_rest_written_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    export, letters = PickyExport({"/13", "/40"}), Letters()
    processor = BatchProcessor(export, max_batch_size=64, dead_letter=letters)
    for n in range(100):
        processor.emit(record(n))
    assert processor.force_flush(10)
    expected = [f"/{n}" for n in range(100) if n not in (13, 40)]
    assert export.written == expected
    assert letters.paths == ["/13", "/40"]
    assert all(isinstance(error, TypeError) for _, error in letters.items)
    stats = processor.stats()
    assert stats["dead_lettered"] == 2
    assert stats["exported"] == 98
    assert stats["dropped"] == 0
    assert stats["last_error"] == "TypeError: cannot write /40"
    assert "set aside 2 traffic record(s) that cannot be written (TypeError" in caplog.text
    processor.shutdown()


def test_a_lone_bad_record_is_found_beside_the_next_ones() -> None:
    # Alone in its batch it cannot be told from a broken store; the next
    # records join it at the retry, and then it can.
    export, letters = PickyExport({"/0"}), Letters()
    processor = BatchProcessor(export, max_batch_size=8, max_backoff=0.05, dead_letter=letters)
    processor.emit(record(0))
    assert not processor.force_flush(0.3)
    for n in range(1, 5):
        processor.emit(record(n))
    assert processor.force_flush(10)
    assert export.written == ["/1", "/2", "/3", "/4"]
    assert letters.paths == ["/0"]
    processor.shutdown()


def test_a_store_whose_every_write_fails_keeps_its_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A programming error in the store, not in the records: nothing is set
    # aside, the batch backs off, and the failure is said (not every time).
    export, letters = PickyExport({f"/{n}" for n in range(10)}), Letters()
    processor = BatchProcessor(export, max_batch_size=4, max_backoff=0.05, dead_letter=letters)
    for n in range(10):
        processor.emit(record(n))
    assert not processor.force_flush(1)
    assert letters.items == []
    stats = processor.stats()
    assert stats["queued"] == 10
    assert stats["dead_lettered"] == 0
    assert stats["last_error"].startswith("TypeError: cannot write")
    assert caplog.text.count("failed (") == 1  # once a minute at most
    export.bad.clear()
    assert processor.force_flush(10)
    assert export.written == [f"/{n}" for n in range(10)]
    assert "works again after" in caplog.text
    processor.shutdown()


def test_an_outage_during_the_search_keeps_the_rest_for_the_back_off() -> None:
    export, letters = PickyExport({"/5"}), Letters()

    went_away = threading.Event()

    def flaky(batch: Sequence[TrafficRecord]) -> None:
        export(batch)
        if len(export.written) >= 2 and not went_away.is_set():
            went_away.set()
            export.down = True  # the server goes away mid-search

    processor = BatchProcessor(flaky, max_batch_size=16, max_backoff=0.05, dead_letter=letters)
    for n in range(16):
        processor.emit(record(n))
    assert not processor.force_flush(0.5)
    export.down = False
    assert processor.force_flush(10)
    assert sorted(export.written, key=lambda p: int(p[1:])) == [  # type: ignore[index]
        f"/{n}" for n in range(16) if n != 5
    ]
    assert len(export.written) == 15  # nothing twice
    assert letters.paths == ["/5"]
    processor.shutdown()


def test_transient_errors_retry_the_same_batch_unchanged() -> None:
    batches: list[list[str | None]] = []
    failures = [3]

    def export(batch: Sequence[TrafficRecord]) -> None:
        batches.append([item.request_path for item in batch])
        if failures[0]:
            failures[0] -= 1
            raise TimeoutError("slow server")

    processor = BatchProcessor(export, max_batch_size=4, max_backoff=0.01)
    for n in range(3):
        processor.emit(record(n))
    assert processor.force_flush(10)
    assert batches == [["/0", "/1", "/2"]] * 4
    processor.shutdown()


def test_shutdown_while_backing_off_tries_again_at_once() -> None:
    export = PickyExport(set())
    export.down = True
    processor = BatchProcessor(export, max_backoff=30.0)
    for n in range(5):
        processor.emit(record(n))
    processor.force_flush(0.2)
    for _ in range(3):  # backing off for seconds now
        processor.force_flush(0.6)
    export.down = False
    started = time.monotonic()
    processor.shutdown(timeout=20)
    assert time.monotonic() - started < 5
    assert export.written == [f"/{n}" for n in range(5)]
    assert processor.stats()["dropped"] == 0


def test_an_apps_stores_shut_down_together_within_one_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class DownStore(MemoryStore):
        def export(self, records: Sequence[TrafficRecord]) -> None:
            raise ConnectionRefusedError("down")

    app = Flask("site", instance_path=str(tmp_path))
    app.add_url_rule("/", "index", lambda: "ok")
    stores = [DownStore(name=f"down-{n}") for n in range(4)]
    traffic = Traffic(app, stores=stores)
    client = app.test_client()
    for _ in range(3):
        client.get("/")
    started = time.monotonic()
    traffic.shutdown(app, timeout=1.5)
    assert time.monotonic() - started < 4  # not 4 x 1.5 s one after another
    for store in stores:
        assert store.stats()["dropped"] == 3
        assert f"{store.name}: dropped 3 traffic record(s)" in caplog.text


def test_drops_are_reported_with_their_true_count(caplog: pytest.LogCaptureFixture) -> None:
    block = threading.Event()
    processor = BatchProcessor(lambda batch: block.wait(10), max_queue_size=5, max_batch_size=5)
    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        for n in range(105):
            processor.emit(record(n))
        block.set()
        processor.shutdown()
    assert processor.stats()["dropped"] == 100
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    counts = [int(line.split("dropped ")[1].split(" ")[0]) for line in lines]
    assert sum(counts) == 100  # every drop is in some line, none twice
    assert lines[-1].endswith("100 dropped in all.")
    assert "a larger TRAFFIC_MAX_QUEUE_SIZE holds more during an outage" in lines[-1]


def test_sync_mode_sets_a_bad_record_aside() -> None:
    export, letters = PickyExport({"/1"}), Letters()
    processor = SyncProcessor(export, dead_letter=letters)
    for n in range(3):
        processor.emit(record(n))
    assert export.written == ["/0", "/2"]
    assert letters.paths == ["/1"]
    assert processor.stats()["dead_lettered"] == 1
    export.down = True
    processor.emit(record(3))
    assert processor.stats()["dropped"] == 1  # away: not a bad record


def test_dead_letters_go_to_a_bounded_file_in_the_instance_folder(
    tmp_path: Path, fault_report: t.Callable[..., None]
) -> None:
    class PickyStore(MemoryStore):
        def export(self, records: Sequence[TrafficRecord]) -> None:
            if any(r.request_path == "/bad" for r in records):
                raise ValueError("value out of range for this column")
            super().export(records)

    app = Flask("site", instance_path=str(tmp_path))
    app.add_url_rule("/<path:p>", "page", lambda p: "ok")
    app.config["TRAFFIC_DEAD_LETTER_MAX_BYTES"] = 8192
    store = PickyStore(name="picky")
    traffic = Traffic(app, stores=store)
    client = app.test_client()
    answered = [
        client.get(path, headers={"User-Agent": "x" * 1500}).status_code
        for path in ("/a", "/bad", "/b", "/bad")
    ]
    paths = [row["request_path"] for row in store.read()]
    fault_report(
        "a store's export raises for one record (2 of 4 set aside)",
        answered=answered.count(200),
        expected=4,
        stored=len(paths) + store.stats()["dead_lettered"],
        duplicates=len(paths) - len(set(paths)),
    )
    assert paths == ["/b", "/a"]
    traffic.shutdown(app)
    lines = (tmp_path / "traffic-dead-letters.jsonl").read_text("ascii").splitlines()
    assert len(lines) == 2  # both fit in 8192 bytes
    entry = json.loads(lines[0])
    assert entry["store"] == "picky"
    assert entry["error"] == "ValueError: value out of range for this column"
    assert entry["record"]["request_path"] == "/bad"
    assert entry["record"]["request_date"].endswith("+00:00")
    stats = store.stats()
    assert stats["dead_lettered"] == 2
    # Past the bound: dropped and counted, never written.
    small = DeadLetterFile(tmp_path / "small.jsonl", max_bytes=100)
    assert small.write("picky", [(record(1), ValueError("x"))]) == 0


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("1234", 1234),
        ("0", 0),
        (str(2**63 - 1), 2**63 - 1),
        ("99999999999999999999", None),  # past BIGINT: no SQL column holds it
        ("-5", None),
        ("lots", None),
    ],
)
def test_a_content_length_no_store_can_hold_is_no_size(header: str, size: int | None) -> None:
    made = TrafficRecord(start_time_ns=0, duration_ns=1, content_length=header)
    assert made.response_size == size


def test_a_huge_content_length_is_written_by_every_store(
    tmp_path: Path,
    postgres_url: str,
    mariadb_url: str,
    unique_name: str,
    fault_report: t.Callable[..., None],
) -> None:
    from flask_traffic.stores import CSVStore, JSONStore, SQLStore

    app = Flask("site", instance_path=str(tmp_path))

    @app.route("/huge")
    def huge() -> Response:
        # A body of unknown length, so the header is the view's own.
        return Response(iter([b""]), headers={"Content-Length": "99999999999999999999"})

    stores = [
        JSONStore(),
        CSVStore(),
        SQLStore(),
        SQLStore(database_url=postgres_url, database_table_name=unique_name, name="PostgreSQL"),
        SQLStore(database_url=mariadb_url, database_table_name=unique_name, name="MariaDB"),
    ]
    traffic = Traffic(app, stores=stores)
    answered = [app.test_client().get(path).status_code for path in ("/huge", "/missing")]
    assert answered == [200, 404]
    for store in stores:
        rows = store.read()
        paths = [row["request_path"] for row in rows]
        fault_report(
            f"Content-Length 99999999999999999999 on {store.name}",
            answered=len(answered),
            expected=2,
            stored=len(set(paths)),
            duplicates=len(paths) - len(set(paths)),
        )
        assert paths == ["/missing", "/huge"], store
        assert rows[1]["response_size"] is None
        assert store.stats()["dead_lettered"] == 0
    traffic.shutdown(app)
