"""The disk spool against real failures: a Redis and a PostgreSQL of the
test's own stopped longer than a small queue holds while requests flow, a
process restart in the middle of an outage, shutdown during back-off, a full
disk under the spool, four processes replaying at once, and SIGKILL during a
spill. Each reports requests answered / records expected / stored /
duplicates (printed at the end of the run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import typing as t
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from helpers import http_status
from own_servers import PostgreSQLCluster, RedisServer

from flask_traffic import Traffic
from flask_traffic._spool import SpoolFile
from flask_traffic.stores import RedisStore, SQLStore
from flask_traffic.stores.base import Store

SITE = Path(__file__).with_name("spool_site.py")
SMALL_QUEUE = {
    "TRAFFIC_MAX_QUEUE_SIZE": 200,
    "TRAFFIC_MAX_BATCH_SIZE": 50,
    "TRAFFIC_SCHEDULE_DELAY": 0.05,
}


class Backend(t.NamedTuple):
    kind: str
    url: str
    start: Callable[[], None]
    stop: Callable[[], None]


@pytest.fixture(params=["redis", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A Redis or a PostgreSQL of the test's own, not running yet."""
    if request.param == "redis":
        redis_server = RedisServer(tmp_path)
        yield Backend("redis", redis_server.url, redis_server.start, redis_server.stop)
        redis_server.stop()
    else:
        cluster = PostgreSQLCluster()
        yield Backend("sql", cluster.url, cluster.start, cluster.stop)
        cluster.remove()


def make_store(backend: Backend, table: str) -> Store:
    if backend.kind == "redis":
        return RedisStore(url=backend.url, event_name=table)
    return SQLStore(database_url=backend.url, database_table_name=table)


def site_app(folder: Path, store: Store) -> tuple[Flask, Store, Traffic]:
    """An app in ``folder`` with the small queue, recording into ``store``."""
    app = Flask("site", instance_path=str(folder))
    app.config.update(SMALL_QUEUE)
    app.add_url_rule("/page/<int:n>", "page", lambda n: "ok")
    return app, store, Traffic(app, stores=store)


def stored_paths(backend: Backend, table: str, folder: Path) -> list[str]:
    """Every stored ``request_path``, oldest first."""
    app = Flask("reader", instance_path=str(folder / "reader"))
    app.config["TRAFFIC_SPOOL_MAX_BYTES"] = 0
    store = make_store(backend, table)
    traffic = Traffic(app, stores=store)
    rows = [row["request_path"] for row in store.read(1_000_000)]
    traffic.shutdown(app)
    return rows[::-1]


def run_site(
    instance: Path, backend: Backend, table: str, first: int, count: int, *options: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, str(SITE), str(instance), backend.kind, backend.url, table),
            *(str(first), str(count), *options),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def site_stats(process: subprocess.Popen[str]) -> dict[str, t.Any]:
    out, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors[-3000:]
    stats: dict[str, t.Any] = json.loads(out.strip().splitlines()[-1])
    return stats


def pages(first: int, count: int) -> list[str]:
    return [f"/page/{n}" for n in range(first, first + count)]


def report(
    fault_report: Callable[..., None], fault: str, answered: int, expected: int, rows: list[str]
) -> None:
    fault_report(
        fault,
        answered=answered,
        expected=expected,
        stored=len(set(rows)),
        duplicates=len(rows) - len(set(rows)),
    )


def in_process_order(rows: list[str], *runs: list[str]) -> bool:
    """Whether each run's records appear in ``rows`` in the run's order."""
    position = {path: i for i, path in enumerate(rows)}
    return all([position[p] for p in run] == sorted(position[p] for p in run) for run in runs)


def wait_until(test: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not test():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_an_outage_longer_than_the_queue_loses_nothing(
    tmp_path: Path, backend: Backend, unique_name: str, fault_report: Callable[..., None]
) -> None:
    backend.start()
    app, store, traffic = site_app(tmp_path, make_store(backend, unique_name))
    client = app.test_client()
    backend.stop()
    answered = 0
    for n in range(1500):  # 7.5 times the queue
        answered += client.get(f"/page/{n}").status_code == 200
        time.sleep(0.001)  # requests flow (the test client alone is ~3,000/s)
    stats = store.stats()
    assert stats["spilled"] > 1000
    assert stats["dropped"] == 0
    backend.start()
    wait_until(lambda: store.flush(1) and store.stats()["spooled"] == 0)
    rows = stored_paths(backend, unique_name, tmp_path)
    traffic.shutdown(app)
    name = "Redis" if backend.kind == "redis" else "PostgreSQL"
    report(fault_report, f"{name} down for 1500 requests, queue 200", answered, 1500, rows)
    assert answered == 1500
    assert rows == pages(0, 1500)  # once each, in order
    assert store.stats()["replayed"] == stats["spilled"]


def test_a_restart_in_the_middle_of_an_outage_replays_the_first_process_spool(
    tmp_path: Path, backend: Backend, unique_name: str, fault_report: Callable[..., None]
) -> None:
    first = site_stats(run_site(tmp_path, backend, unique_name, 0, 600))
    assert first["spilled"] == 600
    assert first["dropped"] == 0
    assert list((tmp_path / "traffic-spool").glob("*/*.spool"))
    backend.start()
    second = site_stats(run_site(tmp_path, backend, unique_name, 600, 400, "--replay"))
    rows = stored_paths(backend, unique_name, tmp_path)
    name = "Redis" if backend.kind == "redis" else "PostgreSQL"
    report(
        fault_report,
        f"{name} down, process restarted mid-outage",
        first["answered"] + second["answered"],
        1000,
        rows,
    )
    assert sorted(rows) == sorted(pages(0, 1000))
    assert in_process_order(rows, pages(0, 600), pages(600, 400))
    assert not list((tmp_path / "traffic-spool").glob("*/*.spool"))


def test_shutdown_during_back_off_with_the_store_back_writes_instead_of_spilling(
    tmp_path: Path, unique_name: str, fault_report: Callable[..., None]
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        backend = Backend("redis", server.url, server.start, server.stop)
        app, store, traffic = site_app(tmp_path, make_store(backend, unique_name))
        client = app.test_client()
        server.stop()
        answered = sum(client.get(f"/page/{n}").status_code == 200 for n in range(60))
        wait_until(lambda: store.stats()["failed_exports"] > 0)
        server.start()
        traffic.shutdown(app)
        rows = stored_paths(backend, unique_name, tmp_path)
        report(fault_report, "shutdown in back-off, Redis back", answered, 60, rows)
        assert rows == pages(0, 60)
        assert store.stats()["spilled"] == 0
    finally:
        server.stop()


def test_a_full_disk_under_the_spool_drops_and_counts(
    tmp_path: Path, unique_name: str, fault_report: Callable[..., None]
) -> None:
    server = RedisServer(tmp_path)
    backend = Backend("redis", server.url, server.start, server.stop)
    try:
        full = site_stats(run_site(tmp_path, backend, unique_name, 0, 5000, "--fsize", "200000"))
        assert full["answered"] == 5000
        assert full["spilled"] > 0
        assert full["dropped"] > 0
        assert full["spilled"] + full["dropped"] == 5000
        server.start()
        site_stats(run_site(tmp_path, backend, unique_name, 5000, 0, "--replay"))
        rows = stored_paths(backend, unique_name, tmp_path)
        report(fault_report, "full disk under the spool (RLIMIT_FSIZE 200 kB)", 5000, 5000, rows)
        assert len(rows) == len(set(rows)) == full["spilled"]
    finally:
        server.stop()


def test_four_processes_replaying_at_once_write_nothing_twice(
    tmp_path: Path, backend: Backend, unique_name: str, fault_report: Callable[..., None]
) -> None:
    left = [run_site(tmp_path, backend, unique_name, 1000 * i, 500) for i in range(4)]
    spilled = [site_stats(process)["spilled"] for process in left]
    assert spilled == [500] * 4
    backend.start()
    replaying = [
        run_site(tmp_path, backend, unique_name, 10_000 + 1000 * i, 250, "--replay")
        for i in range(4)
    ]
    answered = sum(site_stats(process)["answered"] for process in replaying) + 2000
    rows = stored_paths(backend, unique_name, tmp_path)
    name = "Redis" if backend.kind == "redis" else "PostgreSQL"
    report(fault_report, f"4 processes replaying 4 spools at once ({name})", answered, 3000, rows)
    expected = [p for i in range(4) for p in pages(1000 * i, 500) + pages(10_000 + 1000 * i, 250)]
    assert Counter(rows) == Counter(expected)


def test_sigkill_during_a_spill_loses_at_most_the_record_being_written(
    tmp_path: Path, unique_name: str, fault_report: Callable[..., None]
) -> None:
    server = RedisServer(tmp_path)
    backend = Backend("redis", server.url, server.start, server.stop)
    try:
        site = run_site(tmp_path, backend, unique_name, 0, 0, "--forever")
        assert site.stdout is not None
        folder = tmp_path / "traffic-spool" / "RedisStore"
        sent = -1
        while not any(p.stat().st_size > 200_000 for p in folder.glob("*.spool")):
            sent = int(site.stdout.readline())
        os.kill(site.pid, signal.SIGKILL)
        rest, _ = site.communicate(timeout=30)
        sent = max([sent, *map(int, rest.split())])
        (path,) = folder.glob("*.spool")
        size = path.stat().st_size
        taken = SpoolFile.adopt(path)
        assert taken is not None
        whole, torn = taken.records, size - taken.size
        taken.close(delete=False)
        assert torn < 400  # a record's frame at most
        server.start()
        site_stats(run_site(tmp_path, backend, unique_name, 0, 0, "--replay"))
        rows = stored_paths(backend, unique_name, tmp_path)
        answered = sent + 1
        report(fault_report, "SIGKILL during a spill (Redis down)", answered, answered, rows)
        assert len(rows) == len(set(rows)) == whole
        assert rows == pages(0, whole)  # a prefix: only the newest, in memory, are lost
        # In memory at the kill: what waited under the spill threshold.
        assert answered - whole <= 200
    finally:
        server.stop()


def test_stats_and_status_show_the_spool(tmp_path: Path, unique_name: str) -> None:
    server = RedisServer(tmp_path)  # never started: Redis is down
    app, store, traffic = site_app(tmp_path, RedisStore(url=server.url, event_name=unique_name))
    client = app.test_client()
    for n in range(300):
        client.get(f"/page/{n}")
        time.sleep(0.001)
    wait_until(lambda: store.stats()["spooled"] > 0)
    stats = store.stats()
    assert stats["spooled_bytes"] > 0
    assert stats["spilled"] >= stats["spooled"]
    runner = app.test_cli_runner()
    table = runner.invoke(args=["traffic", "status"])
    assert table.exit_code == 1
    print(table.stdout)
    header, *lines = table.stdout.splitlines()
    assert "Spool" in header.split()
    assert any(" rec, 1 file(s) " in line for line in lines)
    found = json.loads(runner.invoke(args=["traffic", "status", "--json"]).stdout)
    assert found["RedisStore"]["spooled"] > 0
    assert found["RedisStore"]["spool_files"] == 1
    assert found["RedisStore"]["spool_files_bytes"] > 0
    assert found["RedisStore"]["replaying"] is False
    traffic.shutdown(app, 2)
    assert store.stats()["dropped"] == 0


GUNICORN_APP = """
from flask import Flask
from flask_traffic import Traffic
from flask_traffic.stores import RedisStore

def create_app():
    app = Flask("site", instance_path={folder!r})
    app.config.update(TRAFFIC_MAX_QUEUE_SIZE=200, TRAFFIC_MAX_BATCH_SIZE=50)
    app.add_url_rule("/page/<int:n>", "page", lambda n: "ok")
    Traffic(app, stores=RedisStore(url={url!r}, event_name={table!r}))
    return app
"""


def test_a_sigterm_of_gunicorn_during_an_outage_keeps_every_record(
    tmp_path: Path, unique_name: str, fault_report: Callable[..., None]
) -> None:
    import shutil

    from own_servers import spare_port

    if shutil.which("gunicorn") is None and not (Path(sys.executable).parent / "gunicorn").exists():
        pytest.skip("gunicorn is not installed")
    server = RedisServer(tmp_path)  # down during the whole run
    backend = Backend("redis", server.url, server.start, server.stop)
    (tmp_path / "site_app.py").write_text(
        GUNICORN_APP.format(folder=str(tmp_path), url=server.url, table=unique_name)
    )
    port = spare_port()
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "--threads", "4", "-b",
         f"127.0.0.1:{port}", "--chdir", str(tmp_path), "site_app:create_app()"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: http_status(port, "/page/0") == 200, 30)
        statuses = [http_status(port, f"/page/{n}") for n in range(1, 1000)]
    finally:
        gunicorn.terminate()  # SIGTERM: a deploy
        gunicorn.wait(60)
    try:
        server.start()
        site_stats(run_site(tmp_path, backend, unique_name, 0, 0, "--replay"))
        rows = stored_paths(backend, unique_name, tmp_path)
    finally:
        server.stop()
    answered = statuses.count(200) + 1
    report(fault_report, "SIGTERM of gunicorn (2x4) while Redis is down", answered, 1000, rows)
    assert answered == 1000
    assert Counter(rows) == Counter(pages(0, 1000))
