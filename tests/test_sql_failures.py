"""SQL stores when the database is down at start, and records a column refuses."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import http_status, make_app, run_writers
from own_servers import PostgreSQLCluster

from flask_traffic import Traffic
from flask_traffic.stores import SQLStore


@pytest.fixture
def cluster() -> Iterator[PostgreSQLCluster]:
    made = PostgreSQLCluster()
    yield made
    made.remove()


def test_the_app_starts_while_postgresql_is_down_and_writes_everything_once_it_is_up(
    tmp_path: Path,
    cluster: PostgreSQLCluster,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
    fault_report: Callable[..., None],
) -> None:
    app = make_app(tmp_path, catch_all=True)
    store = SQLStore(database_url=cluster.url, database_table_name=unique_name)
    traffic = Traffic(app, stores=store)  # must not raise: the server is down
    assert "cannot reach its database yet" in caplog.text
    client = app.test_client()
    statuses = [client.get(f"/page/{n}").status_code for n in range(60)]
    assert statuses == [200] * 60
    assert not store.flush(1)
    assert store.stats()["queued"] == 60
    cluster.start()
    assert store.flush(60)
    paths = [row["request_path"] for row in store.read()]
    fault_report(
        "PostgreSQL down at init_app, then up",
        answered=statuses.count(200),
        expected=60,
        stored=len(set(paths)),
        duplicates=len(paths) - len(set(paths)),
    )
    assert sorted(paths, key=lambda p: int(p.rsplit("/", 1)[1])) == [
        f"/page/{n}" for n in range(60)
    ]
    assert store.stats()["dead_lettered"] == 0
    assert "its database answers; the table is ready" in caplog.text
    traffic.shutdown(app)


def test_a_wrong_url_still_fails_at_init_app(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with pytest.raises(ValueError, match="is not a SQLAlchemy URL"):
        Traffic(app, stores=SQLStore(database_url="not a url"))


def _start_and_write(number: int, folder: str, start_at: float) -> None:
    app = make_app(folder, catch_all=True)
    # All four start at once on a file none has made yet.
    time.sleep(max(0.0, start_at - time.time()))
    traffic = Traffic(app, stores=SQLStore())
    client = app.test_client()
    for n in range(50):
        assert client.get(f"/w{number}/{n}").status_code == 200
    traffic.shutdown(app, timeout=60)


@pytest.mark.parametrize("attempt", range(3))
def test_four_processes_start_on_a_fresh_sqlite_file(
    tmp_path: Path, attempt: int, fault_report: Callable[..., None]
) -> None:
    run_writers(_start_and_write, 4, str(tmp_path), time.time() + 3, processes=True)
    app = make_app(tmp_path)
    store = SQLStore()
    traffic = Traffic(app, stores=store)
    rows = [row["request_path"] for row in store.read(1000)]
    paths = set(rows)
    traffic.shutdown(app)
    fault_report(
        f"4 processes start on a fresh SQLite file (run {attempt + 1})",
        answered=200,  # each writer asserts its 50 answers
        expected=200,
        stored=len(paths),
        duplicates=len(rows) - len(paths),
    )
    assert paths == {f"/w{w}/{n}" for w in range(4) for n in range(50)}


def test_text_the_connections_charset_cannot_hold_is_set_aside(
    tmp_path: Path, mariadb_url: str, unique_name: str, fault_report: Callable[..., None]
) -> None:
    # 3-byte utf8 connections refuse emoji ("Incorrect string value"): that
    # record is set aside, every other one is written, in order.
    app = make_app(tmp_path, catch_all=True)
    store = SQLStore(database_url=mariadb_url + "?charset=utf8", database_table_name=unique_name)
    traffic = Traffic(app, stores=store)
    client = app.test_client()
    answered = [client.get(path).status_code for path in ("/a", "/b/\N{GRINNING FACE}", "/c", "/d")]
    assert store.flush(30)
    paths = [row["request_path"] for row in store.read()]
    stats = store.stats()
    fault_report(
        "emoji path over a utf8 MariaDB connection (1 set aside)",
        answered=len(answered),
        expected=4,
        stored=len(paths) + stats["dead_lettered"],
        duplicates=len(paths) - len(set(paths)),
    )
    assert paths == ["/d", "/c", "/a"]
    assert stats["dead_lettered"] == 1
    assert stats["last_error"].startswith('pymysql.err.DataError: (1366, "Incorrect string value')
    letters = (tmp_path / "traffic-dead-letters.jsonl").read_text("ascii")
    assert "\\ud83d\\ude00" in letters  # the record, with its path, is kept there
    traffic.shutdown(app)


def test_a_huge_exception_text_is_cut_and_written(
    tmp_path: Path, mariadb_url: str, unique_name: str, fault_report: Callable[..., None]
) -> None:
    # 17 MB of exception text is past MariaDB's max_allowed_packet.
    app = make_app(tmp_path)

    @app.route("/huge-error")
    def huge_error() -> str:
        raise ValueError("x" * 17_000_000)

    store = SQLStore(database_url=mariadb_url, database_table_name=unique_name)
    traffic = Traffic(app, stores=store)
    client = app.test_client()
    assert client.get("/huge-error").status_code == 500
    assert client.get("/").status_code == 200
    rows = store.read()
    fault_report(
        "17 MB exception text on MariaDB",
        answered=2,
        expected=2,
        stored=len(rows),
        duplicates=len(rows) - len({row["request_path"] for row in rows}),
    )
    assert [row["request_path"] for row in rows] == ["/", "/huge-error"]
    text = rows[1]["response_exception"]
    assert text.startswith("ValueError('xxx")
    assert text.endswith("... (17,000,014 characters)")
    assert store.stats()["dead_lettered"] == 0
    traffic.shutdown(app)


APP_MODULE = """
from flask import Flask
from flask_traffic import Traffic
from flask_traffic.stores import SQLStore

def create_app():
    app = Flask("site", instance_path={folder!r})
    app.add_url_rule("/<int:n>", "page", lambda n: "ok")
    Traffic(app, stores=SQLStore(database_url={url!r}, database_table_name={table!r}))
    return app
"""


def test_gunicorn_recycling_workers_keeps_serving_while_the_database_is_down(
    tmp_path: Path,
    cluster: PostgreSQLCluster,
    unique_name: str,
    fault_report: Callable[..., None],
) -> None:
    import shutil
    import subprocess
    import sys

    from own_servers import spare_port

    if shutil.which("gunicorn") is None and not (Path(sys.executable).parent / "gunicorn").exists():
        pytest.skip("gunicorn is not installed")
    (tmp_path / "site_app.py").write_text(
        APP_MODULE.format(folder=str(tmp_path), url=cluster.url, table=unique_name)
    )
    port = spare_port()
    # A file, not a pipe: workers that take over spools log their retries,
    # more than a pipe holds unread.
    log = (tmp_path / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "--max-requests",
            "40",
            "--max-requests-jitter",
            "5",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(tmp_path),
            "--graceful-timeout",
            "15",
            "site_app:create_app()",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while http_status(port, "/0") != 200:
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)
        # About seven worker boots, every one with PostgreSQL down.
        statuses = [http_status(port, f"/{n}") for n in range(1, 301)]
        assert statuses == [200] * 300
        cluster.start()
        # Workers booted from now on, and the ones running, write.
        later = [http_status(port, f"/{n}") for n in range(1000, 1100)]
        assert later == [200] * 100
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    errors = (tmp_path / "gunicorn.log").read_bytes()
    assert b"Worker failed to boot" not in errors
    app = make_app(tmp_path)
    store = SQLStore(database_url=cluster.url, database_table_name=unique_name)
    traffic = Traffic(app, stores=store)
    rows = [row["request_path"] for row in store.read(10_000)]
    written = set(rows)
    traffic.shutdown(app)
    fault_report(
        "gunicorn --max-requests 40, PostgreSQL down for 300 of 401",
        # The first request is the one that found the server up.
        answered=1 + statuses.count(200) + later.count(200),
        expected=401,
        stored=len(written),
        duplicates=len(rows) - len(written),
    )
    # What the last workers were given after the database came back is there.
    assert {f"/{n}" for n in range(1060, 1100)} <= written
