"""How far the rollups lag, as ``flask traffic status`` (text and
``--json``), ``store.rollup_state()`` and ``traffic.health(app, rollups=True)``
say: on SQLite, PostgreSQL, MariaDB, Redis and a JSON Lines store."""

from __future__ import annotations

import json
import random
import sqlite3
import typing as t
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from click.testing import Result
from flask import Flask
from helpers import database_url, make_app, random_record, unique_name

from flask_traffic import Traffic, TrafficRecord
from flask_traffic.stores import JSONStore, RedisStore, SQLStore, Store

UTC = timezone.utc
KINDS = ["sqlite", "postgresql", "mariadb", "redis", "jsonl"]


def records(count: int) -> list[TrafficRecord]:
    """``count`` records, a second apart, the first ten minutes ago."""
    rng = random.Random(11)
    start = datetime.now(UTC) - timedelta(minutes=10)
    return [random_record(rng, start + timedelta(seconds=i / 10)) for i in range(count)]


@pytest.fixture
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], tuple[Flask, Store]]]:
    """Makes an app whose one store of the given kind keeps rollups."""
    made: list[tuple[Traffic, Flask, Callable[[], None]]] = []

    def make(kind: str) -> tuple[Flask, Store]:
        name = unique_name()
        cleanup: Callable[[], None] = lambda: None  # noqa: E731
        store: Store
        if kind == "redis":
            url = request.getfixturevalue("redis_url")
            store = RedisStore(sync=True, rollups=True, url=url, event_name=name)

            def cleanup() -> None:
                with redis.Redis.from_url(url) as client:
                    client.delete(name, *client.scan_iter(f"{name}:*", count=1000))

        elif kind == "jsonl":
            store = JSONStore(sync=True, rollups=True, location=tmp_path / f"{name}.jsonl")
        else:
            options: dict[str, t.Any] = {"database_table_name": name}
            if kind != "sqlite":
                options["database_url"] = database_url(kind, request)
            store = SQLStore(sync=True, rollups=True, **options)
        app = make_app(tmp_path, name)
        made.append((Traffic(app, stores=store), app, cleanup))
        return app, store

    yield make
    for traffic, app, cleanup in made:
        traffic.shutdown(app)
        cleanup()


def status(app: Flask, *args: str) -> Result:
    result = app.test_cli_runner().invoke(args=["traffic", "status", *args])
    assert result.exit_code == 0, result.output
    return result


def rollups_of(app: Flask, store: Store) -> dict[str, t.Any]:
    found: dict[str, t.Any] = json.loads(status(app, "--json").stdout)[store.name]["rollups"]
    return found


def rollups_cell(app: Flask, store: Store) -> str:
    """The store's Rollups cell of the status table."""
    lines = status(app).stdout.splitlines()
    header = lines[0]
    start = header.index("Rollups")
    end = header.index("Error")
    row = next(line for line in lines[1:] if line.strip().startswith(store.name))
    return row[start:end].strip()


def settle_now(store: Store) -> None:
    """Fold up to the last row at once on PostgreSQL and MariaDB too, rather
    than only the ids seen 10 s before."""
    if isinstance(store, SQLStore):
        tables = store._rollup_tables()
        assert tables is not None
        tables.settle = 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_status_counts_the_records_to_fold_until_they_are_folded(
    kind: str, make_store: Callable[[str], tuple[Flask, Store]]
) -> None:
    app, store = make_store(kind)
    assert rollups_of(app, store)["pending"] == 0
    made = records(300)
    store.export(made)
    found = rollups_of(app, store)
    assert found["pending"] == 300
    assert found["pending_exact"] is True
    assert found["rebuilding"] is False
    assert found["rebuild_progress"] is None
    # The oldest record waiting is the first written, ten minutes ago.
    assert found["oldest_pending"] == made[0].request_date_iso
    assert 590 < found["lag_seconds"] < 700
    assert (found["pending_bytes"] is not None) == (kind == "jsonl")
    cell = rollups_cell(app, store)
    assert cell.startswith("300 rec to fold")
    assert "oldest 10 min ago" in cell

    settle_now(store)
    assert store.fold() == 300
    found = rollups_of(app, store)
    assert found["pending"] == 0
    assert found["oldest_pending"] is None
    assert found["lag_seconds"] is None
    assert rollups_cell(app, store) == "folded"
    state = store.rollup_state()
    assert state is not None
    assert state.pending == 0
    assert state.pending_bytes in (None, 0)


def interrupt_rebuild(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start a rebuild of 1,000 folded records, in chunks of 200, and stop
    it after two chunks."""
    from flask_traffic.stores import _filerollups, _redisrollups, _sqlrollups

    for module in (_filerollups, _redisrollups, _sqlrollups):
        monkeypatch.setattr(module, "FOLD_CHUNK", 200)
    store.export(records(1000))
    settle_now(store)
    assert store.fold() == 1000
    if isinstance(store, RedisStore):
        # Redis's rebuild calls no progress: it stops in its third chunk.
        rollups = store.rollups
        real_fold = rollups._queue_fold
        chunks = 0

        def stopping(pipe: t.Any, rows: list[dict[str, t.Any]]) -> t.Any:
            nonlocal chunks
            chunks += 1
            if chunks == 3:
                raise KeyboardInterrupt
            return real_fold(pipe, rows)

        monkeypatch.setattr(rollups, "_queue_fold", stopping)
        with pytest.raises(KeyboardInterrupt):
            store.rebuild_rollups()
        monkeypatch.setattr(rollups, "_queue_fold", real_fold)
        return
    steps = 0

    def stop(count: int) -> None:
        nonlocal steps
        steps += 1
        if steps == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.rebuild_rollups(None, stop)


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupted_rebuild_shows_as_under_way(
    kind: str,
    make_store: Callable[[str], tuple[Flask, Store]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, store = make_store(kind)
    interrupt_rebuild(store, monkeypatch)
    found = rollups_of(app, store)
    assert found["rebuilding"] is True
    assert found["pending"] == 0
    # Two chunks of 200 refolded of 1,000.
    assert found["rebuild_progress"] == pytest.approx(0.4, abs=0.01)
    assert rollups_cell(app, store) == "folded, rebuild 40%"
    store.fold()  # goes on with the rebuild, to its end
    found = rollups_of(app, store)
    assert found["rebuilding"] is False
    assert found["rebuild_progress"] is None
    assert rollups_cell(app, store) == "folded"


def test_past_the_bound_the_count_says_at_least_and_at_most(
    make_store: Callable[[str], tuple[Flask, Store]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_traffic.stores import _filefoldstate, _sqlfoldstate

    monkeypatch.setattr(_sqlfoldstate, "COUNT_BOUND", 50)
    monkeypatch.setattr(_filefoldstate, "COUNT_BOUND", 50)
    app, store = make_store("sqlite")
    store.export(records(300))
    found = rollups_of(app, store)
    assert (found["pending"], found["pending_exact"], found["pending_at_most"]) == (50, False, 300)
    assert rollups_cell(app, store).startswith("over 50 (at most 300) rec to fold")
    app, store = make_store("jsonl")
    store.export(records(300))
    found = rollups_of(app, store)
    assert found["pending_exact"] is False
    assert 50 <= found["pending"] < 300
    assert found["pending_at_most"] is None
    assert isinstance(store, JSONStore)
    assert found["pending_bytes"] == store.path.stat().st_size


def test_stores_without_rollups_show_none(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    plain = JSONStore(sync=True, name="plain", rollups=False)
    rolled = JSONStore(sync=True, rollups=True, name="rolled", location=tmp_path / "r.jsonl")
    traffic = Traffic(app, stores=[plain, rolled])
    made = records(1)
    plain.export(made)
    rolled.export(made)
    assert plain.rollup_state() is None
    found = json.loads(status(app, "--json").stdout)
    assert "rollups" not in found["plain"]
    assert found["rolled"]["rollups"]["pending"] == 1
    lines = status(app).stdout.splitlines()
    assert lines[0].split() == ["Store", "State", "Read", "Dead", "letters", "Rollups", "Error"]
    plain_row = next(line for line in lines if line.startswith("  plain"))
    assert plain_row[lines[0].index("Rollups") :].split()[0] == "-"
    health = traffic.health(app, rollups=True)
    assert "rollups" not in health["stores"]["plain"]
    assert health["stores"]["rolled"]["rollups"]["pending"] == 1
    assert "rollups" not in traffic.health(app)["stores"]["rolled"]
    traffic.shutdown(app)

    # A site with no store keeping rollups has no Rollups column.
    other = make_app(tmp_path, "other")
    traffic = Traffic(
        other, stores=JSONStore(sync=True, rollups=False, location=tmp_path / "o.jsonl")
    )
    assert "Rollups" not in status(other).stdout
    traffic.shutdown(other)


def test_a_failed_read_of_the_fold_state_shows_its_error(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    store = SQLStore(sync=True, rollups=True)
    traffic = Traffic(app, stores=store)
    store.export(records(10))
    tables = store._rollup_tables()
    assert tables is not None
    # The store reads, but its rollup state table is gone.
    with sqlite3.connect(tables.engine.url.database or "") as connection:
        connection.execute(f"DROP TABLE {tables.state.name}")
    cell = rollups_cell(app, store)
    assert cell.startswith("error: sqlite3.OperationalError: no such table")
    found = json.loads(status(app, "--json").stdout)[store.name]
    assert found["failing"] is False
    assert "no such table" in found["rollups"]["error"]
    health = traffic.health(app, rollups=True)
    assert health["ok"] is True
    assert "no such table" in health["stores"][store.name]["rollups"]["error"]
    traffic.shutdown(app)
