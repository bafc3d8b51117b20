"""The ``flask traffic`` commands, run through Flask's CLI test runner.

Every command runs against the stores that can read back (MemoryStore,
JSONStore, CSVStore, SQLStore on SQLite) and must agree with the store API:
``stats --json`` is ``store.summary()``, ``tail`` is ``store.read()``,
``export`` reads back as ``store.read()`` does.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import pty
import subprocess
import sys
import typing as t
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import helpers
import pytest
from click.testing import Result
from flask import Flask

from flask_traffic import FIELDS, LogPolicy, Traffic, TrafficRecord
from flask_traffic.cli import follow as follow_module
from flask_traffic.cli import traffic_cli
from flask_traffic.query import Query
from flask_traffic.rollups import bucket_start
from flask_traffic.stores import CSVStore, JSONStore, MemoryStore, Sink, SQLStore, Store

UTC = timezone.utc
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
EVERYTHING = ["--since", "2000-01-01", "--until", "2100-01-01"]
_TYPES = {field.name: field.type for field in FIELDS}


#: The shared test app, its records written within 50 ms of a request.
make_app = functools.partial(helpers.make_app, schedule_delay=0.05)


STORE_KINDS: dict[str, Callable[[Path], Store]] = {
    "memory": lambda folder: MemoryStore(),
    "json": lambda folder: JSONStore(location=folder),
    "csv": lambda folder: CSVStore(location=folder),
    "sqlite": lambda folder: SQLStore(location=folder),
}


class Site:
    """An app with one store, and what the tests do to it."""

    def __init__(self, app: Flask, store: Store) -> None:
        self.app = app
        self.store = store
        self.client = app.test_client()

    def get(self, path: str, **environ: str) -> None:
        self.client.get(path, environ_base={"REMOTE_ADDR": "10.0.0.1", **environ})

    def run(self, *args: str) -> Result:
        return self.app.test_cli_runner().invoke(args=["traffic", *args])


@pytest.fixture(params=sorted(STORE_KINDS))
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    app = make_app(tmp_path / "instance")
    store = STORE_KINDS[request.param](tmp_path / "data")
    traffic = Traffic(app, stores=store)
    yield Site(app, store)
    traffic.shutdown(app)


def send_mixed_traffic(site: Site) -> None:
    site.get("/", HTTP_USER_AGENT=CHROME, HTTP_REFERER="https://example.com/")
    for n in range(3):
        site.get(f"/item/{n}", HTTP_USER_AGENT="curl/8.5.0")
    site.get("/missing")
    site.get("/forbidden", REMOTE_ADDR="10.0.0.2")
    site.get("/boom", HTTP_USER_AGENT=CHROME)


def record_at(moment: datetime, path: str, status: int = 200) -> TrafficRecord:
    return TrafficRecord(
        start_time_ns=int(moment.timestamp() * 1_000_000_000),
        duration_ns=2_000_000,
        request_method="GET",
        request_path=path,
        request_route=path,
        request_remote_address="10.0.0.9",
        response_status_code=status,
    )


def path_of(line: str) -> str:
    """The path in a ``tail`` line: after the time, before an exception."""
    return line.split(" ms  ", 1)[1].split("  ! ", 1)[0]


def rows_from_csv(text: str) -> list[dict[str, t.Any]]:
    """An exported CSV file as rows, with CSVStore's rules undone."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    rows = []
    for cells in reader:
        row: dict[str, t.Any] = {}
        for name, cell in zip(header, cells, strict=True):
            kind = _TYPES[name]
            if cell == "":
                row[name] = None
            elif kind == "int":
                row[name] = int(cell)
            elif kind == "float":
                row[name] = float(cell)
            else:
                row[name] = cell[1:] if cell.startswith("'") else cell
        rows.append(row)
    return rows


# -- stats ----------------------------------------------------------------------------


def test_stats_json_is_the_summary(site: Site) -> None:
    send_mixed_traffic(site)
    result = site.run("stats", "--json", *EVERYTHING)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == site.store.summary("2000-01-01", "2100-01-01")
    assert printed["total"] == 7
    assert printed["status_classes"]["5xx"] == 1


def test_stats_default_window_is_the_last_24_hours(site: Site) -> None:
    site.store.export([record_at(datetime.now(UTC) - timedelta(days=2), "/old")])
    site.get("/")
    if site.store.keeps_rollups:
        # As the worker's first retention pass does.
        site.store.fold()
    before = datetime.now(UTC)
    result = site.run("stats", "--json")
    after = datetime.now(UTC)
    printed = json.loads(result.stdout)
    since = datetime.fromisoformat(printed["since"])
    low, high = before - timedelta(hours=24), after - timedelta(hours=24)
    if site.store.keeps_rollups:
        # Rollups (on by default) count 24 hours per hour: the window's
        # start is rounded down to its hour, and the summary says so.
        assert printed["source"]["source"] == "rollups"
        assert printed["source"]["granularity"] == "hour"
        assert printed["source"]["since"] == printed["since"]
        low, high = bucket_start(low, "hour"), bucket_start(high, "hour")
    else:
        assert printed["source"] == {"source": "records"}
    assert low <= since <= high
    assert printed["until"] is None
    assert printed["total"] == 1
    everything = json.loads(site.run("stats", "--json", "--since", "all").stdout)
    assert everything["since"] is None
    assert everything["total"] == 2


def test_stats_table_shows_the_key_figures(site: Site) -> None:
    send_mixed_traffic(site)
    summary = site.store.summary("2000-01-01", "2100-01-01")
    result = site.run("stats", *EVERYTHING)
    assert result.exit_code == 0, result.output
    text = result.stdout
    lines = text.splitlines()
    assert lines[0] == (
        f"Traffic of {site.store.name}, from 2000-01-01 00:00:00 UTC to 2100-01-01 00:00:00 UTC"
    )
    assert "Requests         7" in lines
    assert "Errors (5xx)     1 (14.29%)" in lines
    assert "Status           1xx 0  2xx 4  3xx 0  4xx 2  5xx 1" in lines
    assert f"Unique visitors  {summary['unique_visitors']}" in lines
    assert f"Requests per {summary['bucket']}" in lines
    for route in summary["routes"]:
        name = route["route"] or "(no route)"
        line = next(line for line in lines if line.strip().startswith(name + " "))
        cells = line.split()
        assert cells[-4:] == [
            str(route["count"]),
            *(
                f"{route[p]:.2f}" if route[p] < 10 else f"{route[p]:,.1f}"
                for p in ("p50", "p95", "p99")
            ),
        ]
    assert "Top paths" in lines
    assert any(line.split() == ["/item/0", "1"] for line in lines)
    assert any(line.split() == ["Chrome", "131", "2"] for line in lines)
    assert any(line.split() == ["https://example.com/", "1"] for line in lines)


def test_stats_table_of_an_empty_window(site: Site) -> None:
    result = site.run("stats")
    assert result.exit_code == 0, result.output
    assert "No requests recorded in this window." in result.stdout


@pytest.mark.parametrize(
    ("args", "total"),
    [
        ([], 2),  # the last 24 hours
        (["--since", "30m"], 1),
        (["--since", "3h", "--until", "1h"], 1),
        (["--since", "7d"], 2),
        (["--since", "2w"], 3),
        (["--since", "all"], 4),
        (["--until", "1h"], 1),  # since still defaults to 24h ago
        (["--since", "all", "--until", "8d"], 2),
        (["--since", "2000-01-01", "--until", "2001-01-01"], 1),
        (["--since", "2000-06-01T00:00:00Z"], 4),  # since is inclusive
        (["--since", "2000-06-01T02:00:00+02:00", "--until", "2000-06-01T01:00:01"], 1),
    ],
)
def test_stats_window(site: Site, args: list[str], total: int) -> None:
    now = datetime.now(UTC)
    site.store.export(
        [
            record_at(datetime(2000, 6, 1, 0, 0, tzinfo=UTC), "/long-ago"),
            record_at(now - timedelta(days=10), "/ten-days"),
            record_at(now - timedelta(hours=2), "/two-hours"),
            record_at(now - timedelta(minutes=5), "/recent"),
        ]
    )
    result = site.run("stats", "--json", *args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == total


def test_durations_of_one_command_go_back_from_the_same_moment(site: Site) -> None:
    # "--since 3h --until 1h" is two hours exactly: a few microseconds more
    # is counted per hour, from rollups with its edges rounded out.
    result = site.run("stats", "--json", "--since", "3h", "--until", "1h")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    since, until = (datetime.fromisoformat(found[name]) for name in ("since", "until"))
    assert until - since == timedelta(hours=2)
    assert found["bucket"] == "minute"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--since", "yesterday"],
            "Invalid value for '--since': 'yesterday' is neither a duration",
        ),
        (["--until", "5x"], "Invalid value for '--until': '5x' is neither a duration"),
        (["--since", "2026-13-01"], "Invalid value for '--since'"),
        (["--since", "99999999w"], "reaches back before the year 1"),
        (["--since", "1h", "--until", "2h"], "is after --until"),
    ],
)
def test_stats_bad_times(tmp_path: Path, args: list[str], message: str) -> None:
    app = make_app(tmp_path)
    traffic = Traffic(app, stores=MemoryStore())
    result = app.test_cli_runner().invoke(args=["traffic", "stats", *args])
    traffic.shutdown(app)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "Traceback" not in result.output


# -- tail -----------------------------------------------------------------------------


def test_tail_prints_the_newest_oldest_first(site: Site) -> None:
    for n in range(5):
        site.get(f"/item/{n}")
    site.get("/boom")
    result = site.run("tail", "-n", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    newest = site.store.read(3)
    assert [path_of(line) for line in lines] == [
        "/item/3",
        "/item/4",
        "/boom",
    ]
    for line, row in zip(lines, reversed(newest), strict=True):
        date = row["request_date"]
        assert line.startswith(f"{date[:10]}T{date[11:23]}Z  GET ")
        assert f" {row['response_status_code']} " in line
        assert " ms  " in line
    assert lines[-1].endswith("/boom  ! ValueError('boom')")
    assert len(site.run("tail").stdout.splitlines()) == 6  # -n 20 by default
    assert site.run("tail", "-n", "0").stdout == ""
    assert site.run("tail", "-n", "-1").exit_code == 2


def test_tail_escapes_what_clients_control(site: Site) -> None:
    site.get("/echo/%1b[31mred%0Aline")
    line = site.run("tail", "-n", "1").stdout
    assert "\x1b" not in line
    assert line.count("\n") == 1
    assert line.rstrip("\n").endswith("/echo/\\x1b[31mred\\nline")


def test_tail_follow_prints_records_added_between_polls(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.get("/item/1")
    site.get("/item/2")
    naps: list[float] = []

    def between_polls(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 1:
            site.get("/item/3")
        if len(naps) == 2:
            site.get("/item/4")
            site.get("/item/5")

    monkeypatch.setattr(follow_module, "sleep", between_polls)
    result = site.run("tail", "-n", "1", "--follow", "--max-polls", "3", "--interval", "0.25")
    assert result.exit_code == 0, result.output
    paths = [line.split()[-1] for line in result.stdout.splitlines()]
    assert paths == ["/item/2", "/item/3", "/item/4", "/item/5"]
    assert naps == [0.25, 0.25, 0.25]


def test_tail_follow_catches_a_late_record_with_an_earlier_date(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow request is dated when it started but written when it ended,
    # after quicker ones that started later.
    site.get("/quick")
    newest = datetime.fromisoformat(site.store.read(1)[0]["request_date"])

    def between_polls(seconds: float) -> None:
        site.store.export([record_at(newest - timedelta(seconds=5), "/slow")])

    monkeypatch.setattr(follow_module, "sleep", between_polls)
    result = site.run("tail", "-n", "5", "--follow", "--max-polls", "1")
    assert [line.split()[-1] for line in result.stdout.splitlines()] == ["/quick", "/slow"]


def test_tail_follow_from_an_empty_store_and_ctrl_c(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    naps: list[float] = []

    def between_polls(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 1:
            site.get("/first")
        elif len(naps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(follow_module, "sleep", between_polls)
    result = site.run("tail", "--follow")
    assert result.exit_code == 0, result.output
    assert [line.split()[-1] for line in result.stdout.splitlines()] == ["/first"]
    assert naps == [1.0, 1.0, 1.0]
    assert "Aborted" not in result.output


def test_tail_follow_needs_request_date(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    store = MemoryStore(log_policy=LogPolicy().set_from_true(request_date=False))
    traffic = Traffic(app, stores=store)
    app.test_client().get("/item/7")
    runner = app.test_cli_runner()
    plain = runner.invoke(args=["traffic", "tail"])
    follow = runner.invoke(args=["traffic", "tail", "--follow", "--max-polls", "1"])
    traffic.shutdown(app)
    assert plain.stdout.split()[:2] == ["-", "GET"]
    assert follow.exit_code == 2
    assert "--follow needs the request_date field, which MemoryStore leaves out" in follow.stderr


# -- export -----------------------------------------------------------------------------

HOSTILE = [
    ("/echo/=1+2", {"HTTP_USER_AGENT": '=HYPERLINK("http://x")'}),
    ("/echo/-x", {"HTTP_USER_AGENT": "+1", "HTTP_REFERER": "@SUM(A1)"}),
    ("/echo/'quoted", {"HTTP_USER_AGENT": "\tTab", "HTTP_REFERER": ""}),
    ("/echo/lines", {"HTTP_USER_AGENT": 'line one\r\nline two\n"quoted", comma'}),
    ("/echo/é/漢字/🙂", {"HTTP_USER_AGENT": "Ünïcødé ✓"}),
    ("/echo/escaped", {"HTTP_USER_AGENT": "Firefox/133.0 \udcff\udcfe"}),
]


def send_hostile_traffic(site: Site) -> None:
    send_mixed_traffic(site)
    for path, environ in HOSTILE:
        site.get(path, **environ)


def test_export_csv_reads_back_as_read(site: Site, tmp_path: Path) -> None:
    send_hostile_traffic(site)
    target = tmp_path / "out.csv"
    result = site.run("export", "--format", "csv", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Wrote 13 records from {site.store.name} to {target} (csv).\n"
    raw = target.read_bytes()
    assert raw.startswith(",".join(site.store.fields).encode() + b"\r\n")
    text = raw.decode("utf-8", "surrogatepass")
    assert rows_from_csv(text) == list(reversed(site.store.read()))
    # Formula cells are neutralised for spreadsheets.
    cells = [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]
    assert '\'=HYPERLINK("http://x")' in cells
    assert "'@SUM(A1)" in cells
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert list(tmp_path.glob(".*.part")) == []


def test_export_jsonl_reads_back_as_read(site: Site, tmp_path: Path) -> None:
    send_hostile_traffic(site)
    target = tmp_path / "out.jsonl"
    result = site.run("export", "-o", str(target))  # the format from the suffix
    assert result.exit_code == 0, result.output
    text = target.read_text("ascii")
    assert [json.loads(line) for line in text.splitlines()] == list(reversed(site.store.read()))
    assert list(json.loads(text.splitlines()[0])) == list(site.store.fields)


def test_export_window_and_stdout(site: Site) -> None:
    now = datetime.now(UTC)
    site.store.export(
        [
            record_at(now - timedelta(days=3), "/three-days"),
            record_at(now - timedelta(hours=5), "/five-hours"),
            record_at(now - timedelta(hours=1), "/an-hour"),
        ]
    )
    result = site.run("export", "--format", "jsonl", "--since", "2d", "--until", "30m", "-o", "-")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["request_path"] for row in rows] == ["/five-hours", "/an-hour"]
    assert result.stderr == f"Wrote 2 records from {site.store.name} to standard output (jsonl).\n"
    csv_out = site.run("export", "--format", "csv", "--since", "4d", "-o", "-")
    assert [row["request_path"] for row in rows_from_csv(csv_out.stdout)] == [
        "/three-days",
        "/five-hours",
        "/an-hour",
    ]


def test_export_arguments(site: Site, tmp_path: Path) -> None:
    unknown = site.run("export", "-o", str(tmp_path / "out.txt"))
    assert unknown.exit_code == 2
    assert "Say which format to write: --format csv or --format jsonl." in unknown.stderr
    assert site.run("export", "--format", "xml", "-o", "-").exit_code == 2
    missing = site.run("export", "--format", "csv")
    assert missing.exit_code == 2
    assert "Missing option '-o'" in missing.stderr
    nowhere = site.run("export", "--format", "csv", "-o", str(tmp_path / "no" / "such" / "x.csv"))
    assert nowhere.exit_code == 1
    assert f"Could not write {tmp_path / 'no' / 'such' / 'x.csv'}" in nowhere.stderr
    assert site.run("export", "--since", "soon", "-o", "-", "--format", "csv").exit_code == 2


class _Row(dict[str, t.Any]):
    """A row that can be watched with a weak reference (a plain dict cannot)."""


class GeneratedStore(Store):
    """Produces ``count`` rows on the fly, counting how many are alive at once."""

    def __init__(self, count: int, fail_after: int | None = None) -> None:
        super().__init__()
        self.count = count
        self.fail_after = fail_after
        self.alive = 0
        self.most_alive = 0
        self.scans: list[tuple[Query, bool]] = []

    def export(self, records: Sequence[TrafficRecord]) -> None:
        pass

    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[dict[str, t.Any]]:
        self.scans.append((query, oldest_first))
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for n in range(self.count):
            if n == self.fail_after:
                raise OSError(5, "Input/output error")
            row = _Row.fromkeys(self.fields)
            row["request_date"] = (start + timedelta(seconds=n)).isoformat(timespec="microseconds")
            row["request_path"] = f"/item/{n}"
            row["response_time"] = n / 7
            self.alive += 1
            weakref.finalize(row, self._gone)
            self.most_alive = max(self.most_alive, self.alive)
            yield row

    def _gone(self) -> None:
        self.alive -= 1


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Callable[..., tuple[Flask, GeneratedStore]]]:
    apps: list[tuple[Traffic, Flask]] = []

    def make(count: int, fail_after: int | None = None) -> tuple[Flask, GeneratedStore]:
        app = make_app(tmp_path / f"app{len(apps)}")
        store = GeneratedStore(count, fail_after)
        apps.append((Traffic(app, stores=store), app))
        return app, store

    yield make
    for traffic, app in apps:
        traffic.shutdown(app)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_streams_oldest_first(
    generated: Callable[..., tuple[Flask, GeneratedStore]], tmp_path: Path, fmt: str
) -> None:
    app, store = generated(20_000)
    target = tmp_path / f"big.{fmt}"
    result = app.test_cli_runner().invoke(
        args=["traffic", "export", "--since", "2000-01-01", "-o", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert "Wrote 20,000 records" in result.stdout
    [(query, oldest_first)] = store.scans
    assert oldest_first
    assert query.limit is None
    assert query.since == datetime(2000, 1, 1, tzinfo=UTC)
    # Written as they came: never more than a couple of rows held at once.
    assert store.most_alive <= 3
    lines = target.read_text().splitlines()
    assert len(lines) == 20_000 + (fmt == "csv")
    assert lines[-1].count("/item/19999") == 1
    # No progress bar without a terminal: nothing on stderr at all.
    assert result.stderr == ""


def test_a_failed_export_leaves_the_old_file(
    generated: Callable[..., tuple[Flask, GeneratedStore]], tmp_path: Path
) -> None:
    app, _ = generated(100, fail_after=50)
    target = tmp_path / "kept.csv"
    target.write_text("the previous export\n")
    result = app.test_cli_runner().invoke(args=["traffic", "export", "-o", str(target)])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: GeneratedStore could not be read: OSError: [Errno 5] Input/output error\n"
    )
    assert target.read_text() == "the previous export\n"
    assert [path.name for path in tmp_path.iterdir() if path.is_file()] == ["kept.csv"]


APP_MODULE = """
from flask import Flask
from flask_traffic import Traffic
from flask_traffic.stores import JSONStore

app = Flask("cli_app", instance_path={instance!r})
Traffic(app, stores=JSONStore(location={data!r}))
"""


def flask_command(tmp_path: Path, records: int) -> tuple[list[str], dict[str, str]]:
    """``flask --app cli_app traffic`` for an app whose JSONStore holds ``records``,
    to run in a process of its own, and its environment."""
    data = tmp_path / "data"
    app = make_app(tmp_path / "instance")
    traffic = Traffic(app, stores=JSONStore(location=data))
    now = datetime.now(UTC)
    app.extensions["traffic"].stores[0].export(
        [record_at(now - timedelta(seconds=n), f"/item/{n}") for n in range(records)]
    )
    traffic.shutdown(app)
    (tmp_path / "cli_app.py").write_text(
        APP_MODULE.format(instance=str(tmp_path / "i"), data=str(data))
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "100"}
    return [sys.executable, "-m", "flask", "--app", "cli_app", "traffic"], env


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    flask, env = flask_command(tmp_path, 3)
    command = [*flask, "export"]
    piped = subprocess.run(
        [*command, "-o", str(tmp_path / "piped.csv")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert piped.stderr == ""
    assert piped.stdout.startswith("Wrote 3 records from JSONStore")

    leader, follower = pty.openpty()
    try:
        process = subprocess.run(
            [*command, "-o", str(tmp_path / "tty.csv")],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
            check=True,
        )
        os.close(follower)
        follower = -1
        on_terminal = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            on_terminal += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert b"Exporting JSONStore" in on_terminal
    assert process.stdout.startswith(b"Wrote 3 records from JSONStore")
    assert (tmp_path / "tty.csv").read_bytes() == (tmp_path / "piped.csv").read_bytes()


@pytest.mark.parametrize("args", [["export", "--format", "csv", "-o", "-"], ["tail", "-n", "5000"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(
    tmp_path: Path, args: list[str]
) -> None:
    # As `flask traffic export -o - | head -1` does, with far more than a
    # pipe holds, so the command is still writing when the reader leaves.
    flask, env = flask_command(tmp_path, 5000)
    process = subprocess.Popen(
        [*flask, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()
    errors = process.stderr.read()
    process.stderr.close()
    code = process.wait(timeout=60)
    assert first
    assert errors == b""
    assert code == 1


# -- prune -------------------------------------------------------------------------------


class ListStore(Store):
    """Rows in a list, with retention: the smallest store that can prune."""

    def __init__(self, fail: bool = False, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self.kept: list[dict[str, t.Any]] = []
        self.fail = fail

    def export(self, records: Sequence[TrafficRecord]) -> None:
        self.kept.extend(self.log_policy.row(record) for record in records)

    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[dict[str, t.Any]]:
        rows = self.kept if oldest_first else list(reversed(self.kept))
        return (row for row in rows if query.matches(row))

    def retain(self, cutoff: datetime | None, max_records: int | None) -> int:
        if self.fail:
            raise ConnectionError("the database went away")
        before = len(self.kept)
        if cutoff is not None:
            limit = cutoff.isoformat(timespec="microseconds")
            self.kept = [row for row in self.kept if row["request_date"] >= limit]
        if max_records is not None:
            self.kept = self.kept[-max_records:]
        return before - len(self.kept)


def test_prune_reports_each_store(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    # sync: no worker thread that could apply the limits before the command does.
    by_count = ListStore(max_records=3, sync=True)
    by_age = ListStore(max_age=timedelta(days=7), sync=True)
    plain = JSONStore(location=tmp_path)
    traffic = Traffic(app, stores=[by_count, by_age, plain])
    now = datetime.now(UTC)
    for store in (by_count, by_age):
        store.export([record_at(now - timedelta(days=d), f"/{d}") for d in reversed(range(10))])
    runner = app.test_cli_runner()
    result = runner.invoke(args=["traffic", "prune"])
    again = runner.invoke(args=["traffic", "prune", "--store", "ListStore"])
    unknown = runner.invoke(args=["traffic", "prune", "--store", "nope"])
    traffic.shutdown(app)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ListStore: removed 7 records (max_records 3).",
        "ListStore-2: removed 3 records (max_age 1w).",
        "JSONStore: no max_age or max_records, nothing to prune.",
    ]
    assert [row["request_path"] for row in by_count.read()] == ["/0", "/1", "/2"]
    assert len(by_age.read()) == 7
    assert again.stdout == "ListStore: removed 0 records (max_records 3).\n"
    assert unknown.exit_code == 2
    assert (
        "no store is named 'nope'; this app's stores are: ListStore, ListStore-2, JSONStore."
        in unknown.stderr
    )


def test_prune_goes_on_past_a_failing_store(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    broken = ListStore(fail=True, max_records=1, name="broken", sync=True)
    working = ListStore(max_age=timedelta(hours=1), max_records=5, sync=True)
    traffic = Traffic(app, stores=[broken, working])
    working.export([record_at(datetime.now(UTC) - timedelta(hours=2), "/old")])
    result = app.test_cli_runner().invoke(args=["traffic", "prune"])
    traffic.shutdown(app)
    assert result.exit_code == 1
    assert "broken: prune failed: ConnectionError: the database went away" in result.stderr
    assert "ListStore: removed 1 record (max_age 1h, max_records 5)." in result.stdout


# -- choosing a store, apps without traffic, several apps ----------------------------------


class SendOnlyStore(Sink):
    """Like an exporter (the OpenTelemetry bridge): sends records on, keeps none."""

    def export(self, records: Sequence[TrafficRecord]) -> None:
        pass


def test_the_first_store_that_reads_is_used_and_named(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    stores = [
        SendOnlyStore(),
        JSONStore("a.json", location=tmp_path),
        JSONStore("b.json", location=tmp_path),
    ]
    traffic = Traffic(app, stores=stores)
    app.test_client().get("/")
    traffic.flush(app)
    stores[2].export([record_at(datetime.now(UTC), "/only-in-b")])
    runner = app.test_cli_runner()
    try:
        assert [store.name for store in stores] == ["SendOnlyStore", "JSONStore", "JSONStore-2"]
        table = runner.invoke(args=["traffic", "stats"])
        assert table.stdout.splitlines()[:2] == [
            table.stdout.splitlines()[0],
            "JSONStore is the first of this app's stores that can be read (SendOnlyStore, "
            "JSONStore, JSONStore-2); choose another with --store NAME.",
        ]
        assert table.stdout.startswith("Traffic of JSONStore, from ")
        as_json = runner.invoke(args=["traffic", "stats", "--json"])
        assert json.loads(as_json.stdout)["total"] == 1  # only JSON on stdout
        tail = runner.invoke(args=["traffic", "tail"])
        assert tail.stdout.split()[-1] == "/"
        assert tail.stderr.startswith("==> JSONStore <== (the first of this app's stores")
        second = runner.invoke(args=["traffic", "tail", "--store", "JSONStore-2"])
        assert [line.split()[-1] for line in second.stdout.splitlines()] == ["/", "/only-in-b"]
        assert second.stderr == ""
        exported = runner.invoke(args=["traffic", "export", "--format", "jsonl", "-o", "-"])
        assert exported.stderr.startswith("Exporting JSONStore: the first of this app's stores")
        unknown = runner.invoke(args=["traffic", "stats", "--store", "JSONStore-3"])
        assert unknown.exit_code == 2
        assert (
            "Invalid value for '--store': no store is named 'JSONStore-3'; this app's "
            "stores are: SendOnlyStore, JSONStore, JSONStore-2." in unknown.stderr
        )
        send_only = runner.invoke(args=["traffic", "stats", "--store", "SendOnlyStore"])
        assert send_only.exit_code == 1
        assert (
            "Error: SendOnlyStore: SendOnlyStore keeps no records to read back." in send_only.stderr
        )
        assert "Traceback" not in send_only.output
        # prune goes through every store, readable or not.
        assert runner.invoke(args=["traffic", "prune"]).stdout.count("nothing to prune") == 3
    finally:
        traffic.shutdown(app)


def test_no_store_that_reads(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    traffic = Traffic(app, stores=SendOnlyStore())
    result = app.test_cli_runner().invoke(args=["traffic", "tail"])
    traffic.shutdown(app)
    assert result.exit_code == 1
    assert (
        "None of this app's stores (SendOnlyStore) keeps records to read back: add a "
        "JSONStore, CSVStore or SQLStore to stores=." in result.stderr
    )


def test_an_app_without_traffic(tmp_path: Path) -> None:
    app = make_app(tmp_path, "bare")
    # As an entry point or a hand-registered group would: the app never ran init_app.
    app.cli.add_command(traffic_cli)
    for command in ("stats", "tail", "export", "prune"):
        args = [
            "traffic",
            command,
            *(["-o", "-", "--format", "csv"] if command == "export" else []),
        ]
        result = app.test_cli_runner().invoke(args=args)
        assert result.exit_code == 1
        assert result.stderr == (
            "Error: The app 'bare' does not record its traffic: set it up with "
            "Traffic(app, stores=[...]) or traffic.init_app(app, stores=[...]) first.\n"
        )
    empty = make_app(tmp_path, "empty")
    traffic = Traffic(empty)
    result = empty.test_cli_runner().invoke(args=["traffic", "stats"])
    traffic.shutdown(empty)
    assert result.exit_code == 1
    assert "The app 'empty' has no traffic stores: pass stores=[JSONStore(), ...]" in result.stderr


def test_one_traffic_serves_each_app_its_own_stores(tmp_path: Path) -> None:
    traffic = Traffic()
    apps = {}
    for name, requests in (("one", 2), ("two", 5)):
        app = make_app(tmp_path / name, name)
        traffic.init_app(app, stores=[MemoryStore(), JSONStore(location=tmp_path / name)])
        for _ in range(requests):
            app.test_client().get("/")
        apps[name] = app
    try:
        for name, total in (("one", 2), ("two", 5)):
            runner = apps[name].test_cli_runner()
            assert "traffic" in apps[name].cli.list_commands(None)  # type: ignore[arg-type]
            for store in ("MemoryStore", "JSONStore"):
                result = runner.invoke(args=["traffic", "stats", "--json", "--store", store])
                assert json.loads(result.stdout)["total"] == total
    finally:
        for app in apps.values():
            traffic.shutdown(app)


def test_help_lists_the_commands(site: Site) -> None:
    result = site.run("--help")
    assert result.exit_code == 0
    for command in ("stats", "tail", "export", "prune"):
        assert f"  {command} " in result.stdout
    assert "--max-polls" not in site.run("tail", "--help").stdout


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_prune_counts_what_it_removes_with_the_worker_running(tmp_path: Path, kind: str) -> None:
    # The store's worker runs a due retention pass as soon as the command's
    # flush wakes it; the command must still report what was removed.
    app = make_app(tmp_path / "instance")
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 5.0
    week = timedelta(days=7)
    store: Store = (
        SQLStore(location=tmp_path, max_age=week) if kind == "sqlite" else MemoryStore(max_age=week)
    )
    traffic = Traffic(app, stores=store)
    now = datetime.now(UTC)
    store.export([record_at(now - timedelta(days=d), f"/{d}") for d in reversed(range(10))])
    result = app.test_cli_runner().invoke(args=["traffic", "prune"])
    rows = store.read()
    traffic.shutdown(app)
    limits = "max_age 1w" + (", max_records 10,000" if kind == "memory" else "")
    assert result.stdout == f"{store.name}: removed 3 records ({limits}).\n"
    assert len(rows) == 7
