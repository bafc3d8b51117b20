"""The disk spool: its file format, spill and replay in the batch processor,
takeover of a stopped process's spool, and the fence that keeps a replayed
batch from being written twice."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import typing as t
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from flask import Flask

from flask_traffic import LogPolicy, Traffic, TrafficRecord
from flask_traffic._spool import Spool, SpoolFile
from flask_traffic._spoolframes import HEADER, Row, decode_record, encode_record, key_tag
from flask_traffic.processors import BatchProcessor
from flask_traffic.stores import JSONStore, MemoryStore, SQLStore, Store


def record(n: int, **extra: t.Any) -> TrafficRecord:
    return TrafficRecord(
        start_time_ns=1_700_000_000_000_000_000 + n * 1000,
        duration_ns=1_000_000,
        request_method="GET",
        request_path=f"/r/{n}",
        response_status_code=200,
        **extra,
    )


class FencedSink:
    """A sink that keeps what it writes in a list and fences spool batches
    as a database would: rows and position in one step."""

    def __init__(self) -> None:
        self.written: list[str | None] = []
        self.positions: dict[str, int] = {}
        #: Every fenced write: spool id and the position after it.
        self.fences: list[tuple[str, int]] = []
        self.fail = False
        #: Write, then raise as if the reply were lost.
        self.lose_reply = False
        self.lock = threading.Lock()

    def export(self, records: Sequence[TrafficRecord]) -> None:
        if self.fail:
            raise ConnectionError("down")
        with self.lock:
            self.written.extend(r.request_path for r in records)

    def replay_spooled(self, records: list[TrafficRecord], spool_id: str, first: int) -> None:
        if self.fail:
            raise ConnectionError("down")
        if any(r.request_user_agent == "poison" for r in records):
            raise ValueError("this record can never be written")
        done = self.positions.get(spool_id, 0)
        end = first + len(records)
        if done >= end:
            return
        with self.lock:
            self.written.extend(r.request_path for r in records[max(0, done - first) :])
            self.positions[spool_id] = end
            self.fences.append((spool_id, end))
        if self.lose_reply:
            self.lose_reply = False
            raise ConnectionError("reply lost")

    def spool_finished(self, spool_id: str) -> None:
        self.positions.pop(spool_id, None)


def processor(sink: FencedSink, folder: Path, **options: t.Any) -> BatchProcessor:
    options.setdefault("max_queue_size", 20)
    options.setdefault("max_batch_size", 5)
    options.setdefault("schedule_delay", 0.05)
    options.setdefault("max_backoff", 0.2)
    return BatchProcessor(
        sink.export,
        name="fenced",
        spool=Spool(folder, options.pop("max_bytes", 1 << 30), "fenced"),
        spool_target=sink,
        **options,
    )


def wait_for(test: t.Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def paths(count: int, start: int = 0) -> list[str | None]:
    return [f"/r/{n}" for n in range(start, start + count)]


def stopped_while_failing(folder: Path, count: int) -> tuple[FencedSink, BatchProcessor]:
    """A processor given ``count`` records while its sink fails, shut down."""
    sink = FencedSink()
    sink.fail = True
    p = processor(sink, folder)
    for n in range(count):
        p.emit(record(n))
    p.shutdown(5)
    return sink, p


def hostile_record() -> TrafficRecord:
    return TrafficRecord(
        1_700_000_000_123_456_789,
        42_000,
        "POST",
        "https",
        "example.com:8443",
        ("10.0.0.1", 8443),
        "/caf\udce9?x",
        "a=1",
        "HTTP/1.1",
        "shop.item",
        "/item/<int:n>",
        "203.0.113.9",
        "https://ref/",
        "Mozilla/5.0 (Windows NT 10.0) Chrome/131.0",
        500,
        "123",
        "text/html; charset=utf-8",
        None,
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "k=v",
        KeyError("boom"),
    )


def test_a_frame_gives_back_the_very_same_record() -> None:
    original = hostile_record()
    frame = encode_record(original)
    copy = decode_record(frame[8:])
    assert copy.raw_values() == original.raw_values()
    assert copy.as_dict() == original.as_dict()
    assert copy.server_port == 8443


@pytest.mark.parametrize("same_policy", [True, False])
def test_a_spilled_row_is_written_as_it_was_made_and_the_record_stays_whole(
    tmp_path: Path, same_policy: bool
) -> None:
    # Replay writes the row the store made before it failed; under another
    # policy (the app changed between processes) the row is made again.
    spilled_under = LogPolicy().set_from_true()
    spilled_under.anonymize_ip = True
    replayed_under = spilled_under if same_policy else LogPolicy().set_from_true()
    original = hostile_record()
    spool = Spool(tmp_path, 1 << 20, "s", rows=(spilled_under.values_key, spilled_under.values))
    assert spool.spill([original]) == 1
    spool.close()
    again = Spool(tmp_path, 1 << 20, "s", rows=(replayed_under.values_key, replayed_under.values))
    again.adopt_orphans()
    batch = again.next_batch(10)
    assert batch is not None
    (copy,) = batch.records
    assert replayed_under.values(copy) == replayed_under.values(original)
    assert (spilled_under.values_key == replayed_under.values_key) == same_policy
    # Everything else is there too, for a dead letter or a skip_bots test.
    assert copy.raw_values() == original.raw_values()
    assert copy.as_dict() == original.as_dict()
    assert copy.request_browser == "Chrome 131"
    again.advance(batch)
    again.close()


def taken_over(path: Path, count: int, *, delete: bool = True) -> list[TrafficRecord]:
    """The records of the spool file at ``path`` taken over as a new process
    would, which must hold ``count``."""
    taken = SpoolFile.adopt(path)
    assert taken is not None
    assert taken.records == count
    records, _ = taken.read(count + 100)
    taken.close(delete=delete)
    return records


def test_a_torn_tail_is_skipped_and_the_whole_records_kept(tmp_path: Path) -> None:
    spool = SpoolFile.create(tmp_path)
    assert spool.append([encode_record(record(n)) for n in range(10)], 1 << 20) == 10
    size = spool.size
    spool.close(delete=False)
    with open(spool.path, "r+b") as file:
        file.truncate(size - 3)  # the last record cut short, as by SIGKILL
    assert [r.request_path for r in taken_over(spool.path, 9)] == paths(9)


def test_frames_of_any_size_are_read_and_a_damaged_one_ends_the_file(tmp_path: Path) -> None:
    # A frame longer than a read block (a 3 MB header value), then frames
    # after it; then one whose bytes changed (a disk error, a crash that
    # left garbage): what follows a frame failing its check is not trusted.
    spool = SpoolFile.create(tmp_path)
    frames = [encode_record(record(n)) for n in range(5)]
    frames[1] = encode_record(record(1, request_user_agent="x" * 3_000_000))
    assert spool.append(frames, 1 << 30) == 5
    spool.close(delete=False)
    records = taken_over(spool.path, 5, delete=False)
    assert [r.request_path for r in records] == paths(5)
    assert len(records[1].request_user_agent or "") == 3_000_000
    damaged = bytearray(spool.path.read_bytes())
    third = damaged.index(b"/r/3")
    damaged[third + 3] = ord("9")
    spool.path.write_bytes(bytes(damaged))
    assert [r.request_path for r in taken_over(spool.path, 3)] == paths(3)


def test_frames_written_before_the_row_part_was_marshal_still_replay(tmp_path: Path) -> None:
    # Spool files left by the version before: a JSON row part ended by a
    # NUL byte. After an upgrade they are replayed, the records made again.
    policy = LogPolicy()
    spool = SpoolFile.create(tmp_path)
    older = []
    for n in range(3):
        made = record(n)
        head = json.dumps([made.start_time_ns, key_tag(policy.values_key), policy.values(made)])
        payload = head.encode() + b"\x00" + encode_record(made)[8:]
        older.append(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
    assert spool.append(older, 1 << 20) == 3
    records, _ = spool.read(10, policy.values_key)
    assert [r.request_path for r in records] == paths(3)
    assert [policy.values(r) for r in records] == [policy.values(record(n)) for n in range(3)]
    spool.close(delete=True)


def test_a_row_marshal_cannot_keep_is_spilled_without_it(tmp_path: Path) -> None:
    # A store whose row holds an object marshal does not write: the spool
    # keeps the record alone and replay makes the row again.
    spool = Spool(tmp_path, 1 << 20, "s", rows=("odd", lambda r: (object(), r.request_path)))
    assert spool.spill([record(0), record(1)]) == 2
    batch = spool.next_batch(10)
    assert batch is not None
    assert [r.request_path for r in batch.records] == paths(2)
    spool.advance(batch)
    spool.close()


def test_a_held_spool_is_not_taken_over(tmp_path: Path) -> None:
    spool = SpoolFile.create(tmp_path)
    spool.append([encode_record(record(0))], 1 << 20)
    assert SpoolFile.adopt(spool.path) is None
    spool.close(delete=False)
    taken = SpoolFile.adopt(spool.path)
    assert taken is not None
    taken.close(delete=True)


def test_an_outage_longer_than_the_queue_spills_and_replays_in_order(tmp_path: Path) -> None:
    sink = FencedSink()
    sink.fail = True
    p = processor(sink, tmp_path, max_queue_size=100)
    for n in range(500):  # five times the queue
        p.emit(record(n))
        time.sleep(0.001)
    assert wait_for(lambda: p.stats()["spooled"] > 0)
    stats = p.stats()
    assert stats["dropped"] == 0
    assert stats["spooled_bytes"] > 0
    sink.fail = False
    assert p.force_flush(10)
    assert sink.written == paths(500)
    assert wait_for(lambda: p.stats()["spooled"] == 0)
    assert p.stats()["replayed"] == p.stats()["spilled"] > 0
    p.shutdown()
    assert list(tmp_path.iterdir()) == []  # replayed spools are removed


def test_shutdown_while_failing_spills_and_the_next_process_replays(tmp_path: Path) -> None:
    sink, p = stopped_while_failing(tmp_path, 15)
    assert p.stats()["dropped"] == 0
    assert len(list(tmp_path.glob("*.spool"))) == 1
    sink.fail = False
    again = processor(sink, tmp_path)
    assert wait_for(lambda: len(sink.written) == 15)
    again.emit(record(15))
    assert again.force_flush(5)
    assert sink.written == paths(16)
    again.shutdown()
    assert list(tmp_path.glob("*.spool")) == []


def test_a_running_process_takes_over_a_spool_left_after_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server recycles one worker while another keeps running: the one
    # still running finds the spool on its next look, without a restart.
    monkeypatch.setattr(Spool, "rescan_interval", 0.1)
    sink = FencedSink()
    running = processor(sink, tmp_path)
    running.emit(record(100))
    assert running.force_flush(5)
    stopped_while_failing(tmp_path, 15)
    assert len(list(tmp_path.glob("*.spool"))) == 1
    assert wait_for(lambda: len(sink.written) == 16)
    assert sink.written == ["/r/100", *paths(15)]
    assert wait_for(lambda: list(tmp_path.glob("*.spool")) == [])
    assert running.stats()["replayed"] == 15
    running.shutdown()


def test_shutdown_while_backing_off_with_the_store_back_writes(tmp_path: Path) -> None:
    sink = FencedSink()
    sink.fail = True
    p = processor(sink, tmp_path, max_backoff=30.0)
    for n in range(8):
        p.emit(record(n))
    assert wait_for(lambda: p.stats()["failed_exports"] > 0)
    sink.fail = False
    p.shutdown(5)
    assert sink.written == paths(8)
    assert p.stats()["spilled"] == 0
    assert list(tmp_path.glob("*.spool")) == []


def test_a_replayed_batch_whose_reply_was_lost_is_not_written_twice(tmp_path: Path) -> None:
    sink, _ = stopped_while_failing(tmp_path, 15)
    sink.fail = False
    sink.lose_reply = True
    again = processor(sink, tmp_path)
    assert wait_for(lambda: not list(tmp_path.glob("*.spool")))
    again.shutdown()
    assert sink.written == paths(15)


def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    sink = FencedSink()
    sink.fail = True
    p = processor(sink, tmp_path, max_bytes=2000)
    for n in range(100):
        p.emit(record(n))
        time.sleep(0.001)
    p.shutdown(5)
    stats = p.stats()
    assert stats["spilled"] > 0
    assert stats["dropped"] > 0
    assert stats["spilled"] + stats["dropped"] == 100
    sink.fail = False
    again = processor(sink, tmp_path)
    assert wait_for(lambda: len(sink.written) == stats["spilled"])
    again.shutdown()
    assert sink.written == sorted(set(sink.written), key=lambda p: int(p.split("/")[-1]))  # type: ignore[union-attr]


def test_a_forked_child_leaves_its_parents_spool_alone(tmp_path: Path) -> None:
    sink = FencedSink()
    sink.fail = True
    p = processor(sink, tmp_path)
    for n in range(15):
        p.emit(record(n))
    assert wait_for(lambda: p.stats()["spooled"] > 0)
    pid = os.fork()
    if pid == 0:  # the child: shuts down its own processor, exits
        try:
            p.shutdown(1)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    (held,) = tmp_path.glob("*.spool")
    assert SpoolFile.adopt(held) is None  # still the parent's
    sink.fail = False
    assert p.force_flush(10)
    p.shutdown()
    assert sink.written == paths(15)


def test_stores_without_a_fence_do_not_spool(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    json_store = JSONStore()
    memory = MemoryStore()
    Traffic(app, stores=[json_store, memory])
    assert not json_store.supports_spool
    assert not memory.supports_spool
    assert json_store.stats()["spooled"] == 0
    json_store.shutdown()
    memory.shutdown()


def test_spool_settings_are_checked(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["TRAFFIC_SPOOL_MAX_BYTES"] = -1
    with pytest.raises(ValueError, match="TRAFFIC_SPOOL_MAX_BYTES"):
        Traffic(app, stores=[MemoryStore()])
    with pytest.raises(TypeError, match="spool must be"):
        SQLStore(database_url="sqlite://", spool=3)  # type: ignore[arg-type]


def test_spill_and_replay_each_log_a_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = FencedSink()
    sink.fail = True
    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        p = processor(sink, tmp_path)
        for n in range(60):
            p.emit(record(n))
            time.sleep(0.001)
        assert wait_for(lambda: p.stats()["spooled"] > 0)
        sink.fail = False
        assert p.force_flush(10)
        p.shutdown()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("spilled" in m for m in messages) == 1
    assert sum("replaying" in m for m in messages) == 1
    assert sum("replay finished" in m for m in messages) == 1


def test_the_spool_bound_holds_for_all_the_processes_of_a_store_together(tmp_path: Path) -> None:
    # Two processes of one site spill into the store's one folder: the
    # bound is on the folder, so eight gunicorn workers do not take 8 GiB.
    first = Spool(tmp_path, 20_000, "first")
    second = Spool(tmp_path, 20_000, "second")
    assert first.spill([record(n) for n in range(40)]) == 40
    used = sum(path.stat().st_size for path in tmp_path.glob("*.spool"))
    kept = second.spill([record(n) for n in range(40, 400)])
    assert 0 < kept < 360
    total = sum(path.stat().st_size for path in tmp_path.glob("*.spool"))
    assert used < total <= 20_000
    # The first process, now that the folder is full, keeps nothing more.
    assert first.spill([record(400)]) == 0
    first.close()
    second.close()


def replayed_and_fresh(
    tmp_path: Path, fresh: Store, replayed: Store, rows: Row
) -> tuple[list[dict[str, t.Any]], list[dict[str, t.Any]]]:
    """What ``replayed`` reads back after replaying a spool of the records of
    :func:`hostile_records` spilled with ``rows``, as a stopped process
    leaves it, and what ``fresh`` reads after writing them itself; oldest
    first."""
    from flask_traffic._spool import SPOOL_FOLDER, spool_folder

    made = hostile_records()
    Traffic(Flask("fresh", instance_path=str(tmp_path / "fresh")), stores=fresh)
    fresh.export(made)
    staged = Spool(tmp_path / "staged", 1 << 20, "s", rows=rows)
    assert staged.spill(made) == len(made)
    staged.close()
    target = spool_folder(tmp_path / "replayed" / SPOOL_FOLDER, replayed.name)
    target.mkdir(parents=True)
    for path in (tmp_path / "staged").iterdir():
        path.rename(target / path.name)
    Traffic(Flask("replayed", instance_path=str(tmp_path / "replayed")), stores=replayed)
    assert wait_for(lambda: replayed.stats()["replayed"] == len(made))
    replayed.flush()
    return replayed.read()[::-1], fresh.read()[::-1]


def hostile_records() -> list[TrafficRecord]:
    """Records whose text a store must encode: lone surrogates, a NUL byte."""
    return [hostile_record(), record(1, request_user_agent="nul\x00byte"), record(2)]


def assert_hostile_rows(rows: list[dict[str, t.Any]]) -> None:
    assert [r["request_path"] for r in rows] == ["/caf\udce9?x", "/r/1", "/r/2"]
    assert rows[1]["request_user_agent"] == "nul\x00byte"


def test_a_sql_store_replays_the_very_rows_a_fresh_write_makes(tmp_path: Path) -> None:
    # A SQL store spills the row with its text encoded as the table holds it
    # and replay inserts it as it is: what is read back equals what writing
    # the same records afresh gives.
    from flask_traffic.stores._sqltable import spooled_row

    policy = LogPolicy().set_from_true()
    fresh = SQLStore(location=tmp_path / "fresh", log_policy=policy, sync=True)
    replayed = SQLStore(location=tmp_path / "replayed", log_policy=policy)
    try:
        rows, expected = replayed_and_fresh(tmp_path, fresh, replayed, spooled_row(policy))
        assert rows == expected
        assert_hostile_rows(rows)
    finally:
        replayed.shutdown()
        fresh.shutdown()


def test_a_redis_store_replays_the_very_entries_a_fresh_write_makes(
    tmp_path: Path, redis_url: str
) -> None:
    # RedisStore spills each record's entry as it writes it and replay adds
    # it as it is: what is read back equals a fresh write of the same records.
    import uuid

    from flask_traffic.stores import RedisStore
    from flask_traffic.stores._redisentries import spooled_entry

    policy = LogPolicy().set_from_true()
    name = f"spool-entries-{uuid.uuid4().hex[:8]}"
    fresh = RedisStore(event_name=f"{name}-fresh", url=redis_url, log_policy=policy, sync=True)
    replayed = RedisStore(event_name=f"{name}-replayed", url=redis_url, log_policy=policy)
    try:
        rows, expected = replayed_and_fresh(tmp_path, fresh, replayed, spooled_entry(policy))
        assert rows == expected
        assert_hostile_rows(rows)
    finally:
        for store in (replayed, fresh):
            store.client.delete(store.event_name)
            store.shutdown()


def test_a_poison_record_replayed_is_set_aside_once_and_fenced_past(tmp_path: Path) -> None:
    # A spooled record no write takes (a value the database refuses): it is
    # set aside, and the fence moves past it, so that a process taking the
    # spool over after a crash skips it rather than set it aside again.
    sink = FencedSink()
    sink.fail = True
    letters: list[str | None] = []
    p = processor(
        sink,
        tmp_path,
        max_batch_size=10,
        dead_letter=lambda poison: letters.extend(r.request_path for r, _ in poison) or len(poison),
    )
    made = [record(n) for n in range(9)] + [record(9, request_user_agent="poison")]
    for item in made:
        p.emit(item)
    p.shutdown(5)
    assert p.stats()["spilled"] == 10
    sink.fail = False
    again = processor(
        sink,
        tmp_path,
        max_batch_size=10,
        dead_letter=lambda poison: letters.extend(r.request_path for r, _ in poison) or len(poison),
    )
    assert wait_for(lambda: not list(tmp_path.glob("*.spool")))
    again.shutdown()
    assert sink.written == paths(9)
    assert letters == ["/r/9"]
    assert sink.fences[-1][1] == 10
