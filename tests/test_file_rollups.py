"""File stores' rollups (a SQLite sidecar beside the file): a summary
answered from folded rollups counts what the raw summary of the same file
counts, across rotations, folders and rebuilds."""

from __future__ import annotations

import random
import sqlite3
import threading
import typing as t
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import make_app, random_record

from flask_traffic import Traffic, TrafficRecord
from flask_traffic.stores import CSVStore, JSONStore
from flask_traffic.stores.filestore import FileStore

UTC = timezone.utc
START = datetime(2026, 11, 27, tzinfo=UTC)
KINDS = {"json": JSONStore, "csv": CSVStore}

# The windows of tests/test_sql_rollups.py, and one inside a minute.
WINDOWS = [
    (None, None),
    (START + timedelta(hours=5, minutes=3, seconds=7), START + timedelta(days=2, seconds=30)),
    (START + timedelta(days=1), START + timedelta(days=2)),
    (START + timedelta(hours=3), START + timedelta(hours=4, minutes=30)),
    (START + timedelta(hours=3, minutes=10), START + timedelta(hours=3, minutes=11)),
    (START + timedelta(hours=3, minutes=10, seconds=5), START + timedelta(hours=3, minutes=10.9)),
    (START + timedelta(days=10), START + timedelta(days=11)),
    (
        START + timedelta(hours=48, minutes=47, seconds=0.5),
        START + timedelta(hours=48, minutes=47, seconds=59.5),
    ),
    # Counted per hour, with edges inside hours.
    (START + timedelta(hours=20, minutes=59), START + timedelta(hours=23, minutes=0.5)),
]


def records(count: int, paths: list[str] | None = None, seed: int = 7) -> list[TrafficRecord]:
    """``count`` records over three days, in the order of their dates give
    or take a few seconds (a file store expects them about in order)."""
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        moment = START + timedelta(seconds=rng.uniform(0, 3 * 86400))
        path = rng.choice(paths) if paths else f"/p/{rng.randint(0, 50)}"
        made.append((moment.timestamp() + rng.uniform(0, 5), random_record(rng, moment, path)))
    made.sort(key=lambda pair: pair[0])
    return [made_record for _, made_record in made]


def write(store: FileStore, made: list[TrafficRecord], batch: int = 100) -> None:
    for start in range(0, len(made), batch):
        store.export(made[start : start + batch])


def counts(summary: dict[str, t.Any]) -> dict[str, t.Any]:
    """What must equal between two summaries of the same records: all but
    the source and the visitors' estimate."""
    return {k: v for k, v in summary.items() if k not in ("source", "unique_visitors")}


def same(
    rolled: FileStore, raw: FileStore, since: datetime | None = None, until: datetime | None = None
) -> None:
    """The rolled store's summary of the window is the raw summary: of the
    same window when it is counted per minute (from the records), else of
    the window rounded out to whole hours (from the rollups)."""
    got = rolled.summary(since, until)
    source = got["source"]
    if got["bucket"] == "minute":
        # Minutes are not kept: a window counted per minute is counted
        # from the records.
        assert source == {"source": "records"}, (since, until)
        want = raw.summary(since, until)
        assert got.pop("unique_visitors") == want.pop("unique_visitors")
        assert counts(got) == counts(want), (since, until)
        return
    assert source["source"] == "rollups", (since, until)
    counted = tuple(
        None if text is None else datetime.fromisoformat(text)
        for text in (source["since"], source["until"])
    )
    for asked, edge in zip((since, until), counted, strict=True):
        if asked is None:
            assert edge is None
        else:
            assert edge is not None
            # Rounded out to the summary's bucket: an hour, or a day.
            step = timedelta(days=1) if got["bucket"] == "day" else timedelta(hours=1)
            assert abs(asked - edge) < step
            assert (edge.minute, edge.second, edge.microsecond) == (0, 0, 0)
            assert got["bucket"] != "day" or edge.hour == 0
    assert counted[0] is None or since is None or counted[0] <= since
    assert counted[1] is None or until is None or until <= counted[1]
    want = raw.summary(*counted)
    assert got["unique_visitors"] == pytest.approx(want["unique_visitors"], rel=0.1)
    assert counts(got) == counts(want), (since, until)


@pytest.fixture(params=sorted(KINDS))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FileStore, FileStore]]:
    """A file store keeping rollups, and a second one without them on the
    same file: the raw summary to compare with."""
    kind = KINDS[request.param]
    rolled = kind(location=tmp_path, sync=True, rollups=True)
    Traffic(make_app(tmp_path), stores=rolled)
    raw = kind(location=tmp_path, sync=True, name="raw", rollups=False)
    Traffic(make_app(tmp_path), stores=raw)
    yield rolled, raw
    rolled.shutdown()
    raw.shutdown()


def rotate(store: FileStore) -> None:
    """Rotate the live file now, as retention does when it is due."""
    assert store._files()._rotate_if_due(datetime.now(UTC), None, 2)


def test_rollup_summary_counts_what_the_raw_summary_counts(
    pair: tuple[FileStore, FileStore],
) -> None:
    rolled, raw = pair
    assert rolled.keeps_rollups
    assert not raw.keeps_rollups
    assert rolled.summary()["source"] == {"source": "records"}  # nothing folded yet
    made = records(3000)
    write(rolled, made[:2500])
    assert rolled.fold() == 2500
    assert Path(str(rolled.path) + ".rollups.sqlite").exists()
    write(rolled, made[2500:])  # a tail written after the fold
    for since, until in WINDOWS:
        same(rolled, raw, since, until)
    # Windows of under a minute, around folded records: counted per minute,
    # from the records.
    for record in made[100:2500:600]:
        moment = datetime.fromisoformat(record.request_date_iso)
        window = (moment - timedelta(seconds=1), moment + timedelta(seconds=1))
        assert rolled.summary(*window)["total"] >= 1
        same(rolled, raw, *window)
    # The tail, and the minutes past their retention at the window's start.
    assert rolled.summary()["source"]["raw_records"] >= 500
    assert rolled.fold() == 500
    assert rolled.fold() == 0
    for since, until in WINDOWS:
        same(rolled, raw, since, until)


def test_a_closed_hour_keeps_its_200_most_frequent_paths(
    pair: tuple[FileStore, FileStore],
) -> None:
    from flask_traffic.stores._sqlrollupparts import TOP_KEPT

    rolled, raw = pair
    rng = random.Random(3)
    hour = START + timedelta(hours=5)
    # Ten clear leaders, then 290 paths of one or two requests: 300 in all.
    paths = [f"/lead/{i}" for i in range(10) for _ in range(60 - 3 * i)]
    paths += [f"/tail/{j}" for j in range(290) for _ in range(1 + j % 2)]
    moments = sorted(hour + timedelta(seconds=rng.uniform(0, 3599)) for _ in paths)
    rng.shuffle(paths)
    write(
        rolled,
        [random_record(rng, moment, path) for moment, path in zip(moments, paths, strict=True)],
    )
    assert rolled.fold() == len(paths)
    window = (START, START + timedelta(hours=8))
    got, want = rolled.summary(*window), raw.summary(*window)
    assert got["source"]["approximate"] == ["top_paths"]
    assert got["total"] == want["total"] == len(paths)
    assert got["top_paths"] == want["top_paths"]  # the top 10: the leaders
    assert {entry["value"] for entry in got["top_paths"]} == {f"/lead/{i}" for i in range(10)}
    assert got["top_referrers"] == want["top_referrers"]
    connection = sqlite3.connect(f"{rolled.path}.rollups.sqlite")
    try:
        for unit, start in (("hour", hour), ("day", START)):
            bucket = (unit, start.isoformat())
            kept, weight = connection.execute(
                "SELECT count(*), sum(weight) FROM sums "
                "WHERE unit = ? AND start = ? AND part = 'top_paths'",
                bucket,
            ).fetchone()
            (other,) = connection.execute(
                "SELECT weight FROM sums WHERE unit = ? AND start = ? AND part = 'o:top_paths'",
                bucket,
            ).fetchone()
            assert kept == TOP_KEPT
            assert other > 0
            assert weight + other == len(paths)  # nothing lost
        # Hours and days only; histograms in the buckets, not in the sums.
        units = {row[0] for row in connection.execute("SELECT DISTINCT unit FROM sums")}
        assert units == {"hour", "day"}
        parts = {row[0] for row in connection.execute("SELECT DISTINCT part FROM sums")}
        assert "time" not in parts
        assert all(row[0] for row in connection.execute("SELECT histograms FROM buckets"))
    finally:
        connection.close()


def test_rotations_lose_and_double_nothing(pair: tuple[FileStore, FileStore]) -> None:
    rolled, raw = pair
    made = records(3000)
    write(rolled, made[:600])
    rotate(rolled)  # never folded while live
    write(rolled, made[600:1200])
    assert rolled.fold() == 1200
    write(rolled, made[1200:1800])
    rotate(rolled)  # folded in part while live, the rest after its rotation
    write(rolled, made[1800:2400])
    same(rolled, raw)
    assert rolled.summary()["source"]["raw_records"] >= 1200
    assert rolled.fold() == 1200
    write(rolled, made[2400:])
    rotate(rolled)
    assert len(rolled.rotated_files()) == 3
    for since, until in WINDOWS:
        same(rolled, raw, since, until)
    assert rolled.fold() == 600
    assert rolled.summary()["total"] == 3000
    for since, until in WINDOWS:
        same(rolled, raw, since, until)


def test_a_deleted_file_keeps_what_was_folded_of_it(pair: tuple[FileStore, FileStore]) -> None:
    rolled, _ = pair
    write(rolled, records(1000))
    rotate(rolled)
    assert rolled.fold() == 1000
    [rotated] = rolled.rotated_files()
    rotated.unlink()  # as retention deletes a rotated file
    # Other records: the new live file may take the deleted file's inode,
    # and is told from it by its first record.
    write(rolled, records(200, seed=8))
    assert rolled.fold() == 200
    # Whole hours: no piece past its retention to count from the records
    # (for those, the deleted ones would be missing, as in the SQL stores).
    assert rolled.summary(START, START + timedelta(days=4))["total"] == 1200


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_two_folders_count_each_record_once(kind: str, tmp_path: Path) -> None:
    store_class = KINDS[kind]
    stores = []
    for name in ("one", "two"):
        store = store_class(location=tmp_path, sync=True, rollups=True, name=name)
        Traffic(make_app(tmp_path), stores=store)
        stores.append(store)
    made = records(3000)
    folded = [0, 0]
    writing = threading.Event()

    def fold(index: int) -> None:
        while writing.is_set():
            folded[index] += stores[index].fold()
        folded[index] += stores[index].fold()

    writing.set()
    threads = [threading.Thread(target=fold, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for start in range(0, 3000, 300):
        write(stores[start // 300 % 2], made[start : start + 300], batch=50)
        if start == 1500:
            rotate(stores[0])
    writing.clear()
    for thread in threads:
        thread.join()
    assert sum(folded) == 3000
    for store in stores:
        summary = store.summary()
        assert summary["source"]["source"] == "rollups"
        assert summary["total"] == 3000
        store.shutdown()


def test_a_rebuild_interrupted_and_written_through_counts_every_record_once(
    pair: tuple[FileStore, FileStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_traffic.stores import _filerollups

    monkeypatch.setattr(_filerollups, "FOLD_CHUNK", 200)
    rolled, raw = pair
    made = records(3000)
    write(rolled, made[:2000])
    assert rolled.fold() == 2000
    window = (START + timedelta(days=1, hours=2), None)
    steps = 0

    def interrupt(count: int) -> None:
        # The app writes on while the rebuild runs; then it is stopped.
        nonlocal steps
        steps += 1
        write(rolled, made[2000 + 100 * (steps - 1) : 2000 + 100 * steps])
        if steps == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rolled.rebuild_rollups(START + timedelta(days=1, hours=5), interrupt)
    # Half rebuilt: the summary is counted from the records meanwhile.
    during = rolled.summary(*window)
    assert during["source"] == {"source": "records"}
    assert counts(during) == counts(raw.summary(*window))
    write(rolled, made[2200:])
    assert rolled.fold() > 0  # goes on with the rebuild, and the new records
    for since, until in [window, (None, None), (START, START + timedelta(days=2))]:
        same(rolled, raw, since, until)
    assert rolled.summary()["total"] == 3000
    # A whole rebuild refolds every record the files hold.
    assert rolled.rebuild_rollups() == 3000
    same(rolled, raw)


HOSTILE = [
    "/lone/\udcff/\ud800",
    "/nul/\x00/end",
    "=cmd|' /C calc'!A0",
    "+1+1",
    "@SUM(A1)",
    '/quote/"a,b"\n/newline',
    "/\ufffe/noncharacter",
]


def test_hostile_text_round_trips_in_top_lists(pair: tuple[FileStore, FileStore]) -> None:
    rolled, raw = pair
    made = records(700, paths=HOSTILE)
    write(rolled, made[:600])
    assert rolled.fold() == 600
    write(rolled, made[600:])
    for since, until in WINDOWS[:3]:
        same(rolled, raw, since, until)
    top = rolled.summary()["top_paths"]
    assert {entry["value"] for entry in top} == set(HOSTILE)


def test_rollups_need_every_field_they_count(tmp_path: Path) -> None:
    from flask_traffic import LogPolicy

    partial = LogPolicy().set_from_true(response_time=False)
    store = JSONStore(location=tmp_path, sync=True, rollups=True, log_policy=partial)
    Traffic(make_app(tmp_path), stores=store)
    assert not store.keeps_rollups
    with pytest.raises(TypeError, match="its LogPolicy leaves out response_time"):
        store.rebuild_rollups()
    store.export(records(10))
    assert store.fold() == 0
    assert store.summary()["source"] == {"source": "records"}
    store.shutdown()


def test_the_worker_folds_before_retention_deletes(tmp_path: Path) -> None:
    store = JSONStore(location=tmp_path, sync=True, rollups=True, max_records=400)
    Traffic(make_app(tmp_path), stores=store)
    maintain = store._maintenance()
    assert maintain is not None
    made = records(2000)
    for start in range(0, 2000, 250):
        write(store, made[start : start + 250])
        maintain()  # the worker's pass: fold, then rotate and delete
    assert store.rotated_files()  # retention ran
    # Every record is in the rollups, though retention deleted most files.
    assert store.summary(START, START + timedelta(days=4))["total"] == 2000
    store.shutdown()


def test_flask_traffic_rollup_folds_and_rebuilds_a_file(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    store = CSVStore(location=tmp_path, sync=True, rollups=True)
    Traffic(app, stores=store)
    write(store, records(1000))
    runner = app.test_cli_runner()
    folded = runner.invoke(args=["traffic", "rollup"])
    assert folded.exit_code == 0, folded.output
    assert "CSVStore: folded 1,000 records." in folded.output
    rebuilt = runner.invoke(args=["traffic", "rollup", "--rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "rebuilt from 1,000 " in rebuilt.output
    assert store.summary()["total"] == 1000
    store.shutdown()


def test_a_csv_file_without_a_column_they_count_keeps_no_rollups(tmp_path: Path) -> None:
    (tmp_path / "traffic.csv").write_text("request_date,request_path\n")
    store = CSVStore(location=tmp_path, sync=True, rollups=True)
    Traffic(make_app(tmp_path), stores=store)
    store.export(records(10))
    assert store.fold() == 0
    assert not store.keeps_rollups
    assert store.summary()["source"] == {"source": "records"}
    store.shutdown()


def test_file_rollups_need_no_sqlalchemy() -> None:
    # They reuse the SQL rollups' plain parts, which import no SQLAlchemy.
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "from flask_traffic.stores import _filerollups, _filerollupsummary\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_path_ranked_below_the_top_ten_rises_with_the_records_not_yet_folded(
    pair: tuple[FileStore, FileStore],
) -> None:
    """Only the top-list values that can rank are decoded and counted;
    those the records read besides lift into the top ten are among them."""
    rolled, raw = pair
    rng = random.Random(3)
    at = datetime(2026, 11, 27, 5, tzinfo=timezone.utc)
    # /t0 30 times down to /t11 19 times: /t10 and /t11 rank 11th and 12th.
    write(
        rolled,
        [
            random_record(rng, at + timedelta(seconds=n + rank / 100), f"/t{rank}")
            for rank in range(12)
            for n in range(30 - rank)
        ],
    )
    assert rolled.fold() == sum(30 - rank for rank in range(12))
    write(
        rolled,
        [random_record(rng, at + timedelta(minutes=40, seconds=n), "/t11") for n in range(6)],
    )
    since, until = at - timedelta(hours=5), at + timedelta(hours=19)
    got = rolled.summary(since, until)
    assert got["source"]["raw_records"] == 6
    assert {"value": "/t11", "count": 25} in got["top_paths"]
    want = raw.summary(since, until)
    assert got["top_paths"] == want["top_paths"]
    assert counts(got) == counts(want)
