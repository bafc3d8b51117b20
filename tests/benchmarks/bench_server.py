"""What flask-traffic costs under a real server: gunicorn and wrk, against bare Flask.

    python tests/benchmarks/bench_server.py [--stores json,csv,...,all,otel] [--duration 10]
        [--rounds 1] [--worker-class gthread|sync] [--workers 2] [--threads 4]
        [--connections 16] [--load wrk|python] [--switch-interval SECONDS] [--py-spy FOLDER]
        [--max-seconds 1200]

Each run starts gunicorn on 127.0.0.1 (``--reuse-port``) serving the tests'
app (``tests/helpers.py``), bare or with the stores of one configuration,
warms it for a second, loads it for ``--duration`` seconds with Debian's
``wrk`` (16 keep-alive connections, a few paths and user agents; a bounded
Python keep-alive client in a process of its own when ``wrk`` is absent), then
stops it with SIGTERM and reads every store back: the record count must equal
the requests the workers answered (each worker counts them and reports at
exit), less what a full queue made a store drop (counted and reported), so
nothing was lost on the way out. Bare runs alternate with store
runs (bare, A, bare, B, ..., bare), and each store run is compared with the
mean of the bare runs on either side: requests/s, p50 and p99 latency.

Configurations: ``json``, ``csv``, ``sqlite``, ``postgresql``, ``mariadb``
(the test suite's local servers, a table of its own), ``sqlorm`` (SQLite),
``redis`` (a stream of its own), ``otel`` (the OTel exporter against the
suite's OTLP receiver, ``tests/otel_receiver.py``, in a process of its own),
``all`` (json+csv+sqlite+sqlorm+redis), any ``+``-joined list of these, and
two for finding where the time goes: ``null`` (a sink whose ``export`` does
nothing: the request thread and the processor's queue and wake-ups, but no
encoding or I/O) and ``none`` (flask-traffic with no store: its WSGI wrapper,
which makes no record when nothing receives it). ``--switch-interval``
sets ``sys.setswitchinterval`` in every worker (bare ones too).
``--py-spy FOLDER`` samples one worker of each store run with ``py-spy
record --gil`` and prints which threads held the GIL.

Per run it also prints, from the workers' own ``getrusage`` and
``/proc/self/task``, the CPU time per request (all threads, and the part of
the flask-traffic worker threads; in the kernel; in the garbage collector,
timed with ``gc.callbacks``) and context switches per request. Tables
and streams are dropped, files removed. A benchmark, not a test: the exit
status says only whether every record was read back.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import itertools
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, this folder is on sys.path: the same user agents as bench_ingest.
from bench_ingest import USER_AGENTS

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path.insert(0, str(TESTS))

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
KINDS = ("json", "csv", "sqlite", "postgresql", "mariadb", "sqlorm", "redis", "otel", "null")
ALL_FIVE = "json+csv+sqlite+sqlorm+redis"
DEFAULT_CONFIGS = "json,csv,sqlite,postgresql,mariadb,sqlorm,redis,all,otel"

PATHS = ("/", "/item/1", "/item/22", "/echo/a/b", "/", "/item/333")

# -- The app gunicorn serves (``bench_server:create_app()``), set by the environment.

_ENV_KINDS = "BENCH_SERVER_KINDS"  # "+"-joined kinds; empty: bare Flask
_ENV_FOLDER = "BENCH_SERVER_FOLDER"  # instance folder, where files and reports go
_ENV_NAME = "BENCH_SERVER_NAME"  # the table and stream name
_ENV_OTLP = "BENCH_SERVER_OTLP"  # the receiver's endpoint
_ENV_SWITCH = "BENCH_SERVER_SWITCH_INTERVAL"


def _orm_model(name: str) -> type[t.Any]:
    from sqlalchemy.orm import DeclarativeBase

    from flask_traffic.stores import SQLORMModelMixin

    class Base(DeclarativeBase):
        pass

    return type("BenchTraffic", (Base, SQLORMModelMixin), {"__tablename__": name})


def _orm_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'orm.sqlite'}"


def make_sinks(kinds: Sequence[str], folder: Path, name: str, otlp: str = "") -> list[t.Any]:
    """The sinks of one configuration; the server and the read-back both use it."""
    from flask_traffic.stores import CSVStore, JSONStore, Sink

    sinks: list[t.Any] = []
    # The write path under load, as measured before rollups were on by
    # default: no store folds during a run.
    for kind in kinds:
        if kind == "json":
            sinks.append(JSONStore(location=folder, rollups=False))
        elif kind == "csv":
            sinks.append(CSVStore(location=folder, rollups=False))
        elif kind in ("sqlite", "postgresql", "mariadb"):
            from flask_traffic.stores import SQLStore

            url = {"sqlite": None, "postgresql": POSTGRES_URL, "mariadb": MARIADB_URL}[kind]
            sinks.append(
                SQLStore(
                    location=folder,
                    database_url=url,
                    database_table_name=f"{name}_{kind}",
                    rollups=False,
                )
            )
        elif kind == "sqlorm":
            from sqlalchemy import create_engine
            from sqlalchemy.orm import Session

            from flask_traffic.stores import SQLORMStore

            model = _orm_model(f"{name}_orm")
            session = Session(create_engine(_orm_url(folder)))
            sinks.append(SQLORMStore(model, db_session=session, rollups=False))
        elif kind == "redis":
            from flask_traffic.stores import RedisStore

            sinks.append(RedisStore(event_name=name, url=REDIS_URL, rollups=False))
        elif kind == "otel":
            from flask_traffic_otel import OTelExporter

            sinks.append(OTelExporter(f"{otlp}/v1/traces"))
        elif kind == "null":

            class NullSink(Sink):
                def export(self, records: Sequence[t.Any]) -> None:
                    pass

            sinks.append(NullSink())
        elif kind != "none":
            raise SystemExit(f"unknown store kind {kind!r}; the kinds: {', '.join(KINDS)}")
    return sinks


def _task_figures(tid: int) -> tuple[float, int]:
    """CPU seconds and context switches of one thread of this process."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/self/task/{tid}/status").read_text()
    switches = sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", status))
    return cpu, switches


def create_app() -> t.Any:
    """The app one gunicorn worker serves, counting its requests; at exit
    it writes ``reports/<pid>.json`` (requests, CPU, context switches) beside the stores."""
    from helpers import make_app

    from flask_traffic import Traffic

    if os.environ.get(_ENV_SWITCH):
        sys.setswitchinterval(float(os.environ[_ENV_SWITCH]))
    folder = Path(os.environ[_ENV_FOLDER])
    kinds = [kind for kind in os.environ.get(_ENV_KINDS, "").split("+") if kind]
    app = make_app(folder, "bench")
    sinks = make_sinks(kinds, folder, os.environ.get(_ENV_NAME, ""), os.environ.get(_ENV_OTLP, ""))
    if kinds:
        Traffic(app, stores=sinks)
    counter = itertools.count()
    inner = app.wsgi_app

    def counted(environ: t.Any, start_response: t.Any) -> t.Any:
        next(counter)
        return inner(environ, start_response)

    app.wsgi_app = counted
    collected = [0.0, 0.0]  # seconds in the garbage collector; when the current one began

    def time_collections(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected[1] = time.perf_counter()
        else:
            collected[0] += time.perf_counter() - collected[1]

    gc.callbacks.append(time_collections)
    start = resource.getrusage(resource.RUSAGE_SELF)

    # Registered after flask-traffic's own: runs first, with its workers still alive.
    @atexit.register
    def write_report() -> None:
        end = resource.getrusage(resource.RUSAGE_SELF)
        workers = [
            _task_figures(thread.native_id)
            for thread in threading.enumerate()
            if thread.name.startswith("flask-traffic") and thread.native_id is not None
        ]
        figures = {
            "requests": int(repr(counter)[6:-1]),
            "cpu": end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime,
            "system_cpu": end.ru_stime - start.ru_stime,
            "gc": collected[0],
            "collections": [generation["collections"] for generation in gc.get_stats()],
            # Records refused by a full queue: counted and logged, not lost unseen.
            "dropped": {sink.name: sink.stats()["dropped"] for sink in sinks},
            "switches": end.ru_nvcsw + end.ru_nivcsw - start.ru_nvcsw - start.ru_nivcsw,
            "store_cpu": sum(cpu for cpu, _ in workers),
            "store_switches": sum(switches for _, switches in workers),
        }
        (reports / f"{os.getpid()}.json").write_text(json.dumps(figures))

    reports = folder / "reports"
    reports.mkdir(exist_ok=True)
    (reports / f"{os.getpid()}.ready").touch()
    return app


# -- The load generators.

_WRK_SCRIPT = """
local paths = {%s}
local agents = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[i %% #paths + 1],
    {["User-Agent"] = agents[i %% #agents + 1], ["Referer"] = "http://127.0.0.1/"})
end
"""


@dataclass
class Load:
    """What one load run measured."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, seconds: float, connections: int, script: Path) -> Load:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    done = subprocess.run(
        [*command, "--timeout", "5s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    out = done.stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Load(
        requests_per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        errors=(sum(int(n) for n in errors.groups()) if errors else 0)
        + (int(non_2xx.group(1)) if non_2xx else 0),
    )


def python_client(port: int, seconds: float, connections: int) -> None:
    """The fallback load: ``connections`` keep-alive threads for ``seconds``;
    prints requests/s, p50 and p99 (ms) and errors as JSON."""
    import http.client

    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    deadline = time.perf_counter() + seconds

    def loop(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for i in itertools.count(number):
            start = time.perf_counter()
            if start >= deadline:
                break
            headers = {"User-Agent": USER_AGENTS[i % len(USER_AGENTS)], "Referer": "x"}
            try:
                connection.request("GET", PATHS[i % len(PATHS)], headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    errors[number] += 1
            except (OSError, http.client.HTTPException):
                errors[number] += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                continue
            latencies[number].append((time.perf_counter() - start) * 1e3)
        connection.close()

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 10)
    elapsed = time.perf_counter() - started
    every = sorted(itertools.chain.from_iterable(latencies))
    cuts = statistics.quantiles(every, n=100)
    print(json.dumps([len(every) / elapsed, cuts[49], cuts[98], sum(errors)]))


def run_python_client(port: int, seconds: float, connections: int) -> Load:
    done = subprocess.run(
        [sys.executable, __file__, "--client", str(port), str(seconds), str(connections)],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    rate, p50, p99, errors = json.loads(done.stdout)
    return Load(rate, p50, p99, int(errors))


# -- One run: start gunicorn, load it, stop it, read the stores back.


@dataclass
class Run:
    config: str
    load: Load
    load_average: float
    requests: int = 0
    records: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # by a full queue, counted
    cpu_us: float = 0.0  # CPU per request, every thread of the workers
    system_cpu_us: float = 0.0  # of it, in the kernel
    gc_us: float = 0.0  # of it, in the garbage collector
    collections: tuple[int, ...] = ()  # by generation, both workers
    store_cpu_us: float = 0.0  # of it, the flask-traffic worker threads
    switches: float = 0.0  # context switches per request, every thread
    store_switches: float = 0.0

    @property
    def lost(self) -> bool:
        return any(
            count + self.dropped.get(name, 0) != self.requests
            for name, count in self.records.items()
        )


class Receiver:
    """The suite's OTLP receiver in a process of its own: asked, it says
    how many spans it has."""

    _CODE = (
        "import sys\nsys.path.insert(0, sys.argv[1])\n"
        "from otel_receiver import OTLPReceiver\nreceiver = OTLPReceiver()\n"
        "print(receiver.port, flush=True)\n"
        "for line in sys.stdin:\n    print(len(receiver.spans()), flush=True)\n"
        "receiver.close()\n"
    )

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", self._CODE, str(TESTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.endpoint = f"http://127.0.0.1:{self._process.stdout.readline().strip()}"

    def spans(self) -> int:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write("count\n")
        self._process.stdin.flush()
        return int(self._process.stdout.readline())

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(30)


def _spare_port() -> int:
    from own_servers import spare_port

    return int(spare_port())


def read_back(kinds: Sequence[str], folder: Path, name: str, limit: int) -> dict[str, int]:
    """How many records each readable store of the configuration holds."""
    from flask import Flask

    from flask_traffic import Traffic
    from flask_traffic.stores import Store

    stores = [
        sink
        for sink in make_sinks([k for k in kinds if k not in ("otel", "null")], folder, name)
        if isinstance(sink, Store)
    ]
    if not stores:
        return {}
    app = Flask("readback", instance_path=str(folder))
    traffic = Traffic(app, stores=stores)
    try:
        with app.app_context():
            return {store.name: len(store.read(limit)) for store in stores}
    finally:
        traffic.shutdown(app)


def clean_up(kinds: Sequence[str], folder: Path, name: str) -> None:
    """Drop the tables and streams a run made (its files go with its folder)."""
    for kind in kinds:
        with contextlib.suppress(Exception):
            if kind in ("postgresql", "mariadb"):
                import sqlalchemy as sa

                engine = sa.create_engine(POSTGRES_URL if kind == "postgresql" else MARIADB_URL)
                table = sa.Table(f"{name}_{kind}", sa.MetaData())
                table.drop(engine, checkfirst=True)
                engine.dispose()
            elif kind == "redis":
                import redis

                with redis.Redis.from_url(REDIS_URL) as client:
                    keys = list(client.scan_iter(f"{name}*"))
                    if keys:
                        client.delete(*keys)


@contextlib.contextmanager
def gunicorn(
    args: argparse.Namespace, env: dict[str, str], port: int, folder: Path
) -> Iterator[list[int]]:
    """A running gunicorn; yields its workers' pids once all have booted,
    and stops it with SIGTERM (a kill after a minute) at the end."""
    command = [sys.executable, "-m", "gunicorn", "-w", str(args.workers)]
    command += ["-k", args.worker_class, "--reuse-port", "-b", f"127.0.0.1:{port}"]
    if args.worker_class == "gthread":
        command += ["--threads", str(args.threads)]
    command += ["--chdir", str(HERE), "--graceful-timeout", "30", "--log-level", "warning"]
    server = subprocess.Popen([*command, "bench_server:create_app()"], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(ready := list((folder / "reports").glob("*.ready"))) < args.workers:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("gunicorn did not start")
            time.sleep(0.1)
        yield [int(path.stem) for path in ready]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    command += ["--gil", "--threads", "--nonblocking", "--rate", "250", "--format", "raw"]
    return subprocess.Popen(
        [*command, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


_OWNERS = ("flask_traffic", "flask", "werkzeug", "blinker", "gunicorn", "helpers")


def gil_shares(raw: Path) -> str:
    """From a ``py-spy --gil --threads`` raw profile, the share of GIL samples
    of each kind of thread; a request thread's samples go to the package of
    the innermost frame that is one of ours or the server's (stdlib frames go
    to their caller), and the flask-traffic workers' to their innermost
    flask_traffic function."""
    shares: dict[str, int] = {}
    leaves: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        _, _, frames_text = stack.partition(": ")
        frames = frames_text.split(";")
        count = int(count_text)
        if frames[0].startswith("flask-traffic"):
            kind = "flask-traffic workers"
            leaf = next((f for f in reversed(frames) if "flask_traffic/" in f), frames[-1])
            leaves[leaf] = leaves.get(leaf, 0) + count
        elif frames[0] == "MainThread":
            kind = "gunicorn's main thread"
        else:
            owner = next(
                (
                    name
                    for frame in reversed(frames)
                    for name in _OWNERS
                    if f"({name}/" in frame or f"({name}.py" in frame
                ),
                "other",
            )
            kind = f"requests: {owner}"
        shares[kind] = shares.get(kind, 0) + count
    total = max(sum(shares.values()), 1)
    store = max(sum(leaves.values()), 1)
    top = sorted(leaves.items(), key=lambda item: -item[1])[:4]
    return (
        f"GIL samples {total}: "
        + ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(shares.items(), key=lambda i: -i[1]))
        + "; workers' top: "
        + "; ".join(f"{name} {count / store:.0%}" for name, count in top)
    )


def one_run(
    args: argparse.Namespace, config: str, receiver: Receiver | None, work: Path, number: int
) -> Run:
    kinds = [kind for kind in config.split("+") if kind and config != "bare"]
    folder = work / f"run{number}"
    folder.mkdir()
    name = f"bench_server_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, **{_ENV_KINDS: "+".join(kinds), _ENV_FOLDER: str(folder)})
    env[_ENV_NAME] = name
    root = TESTS.parent
    env["PYTHONPATH"] = os.pathsep.join(
        [
            str(root),
            str(root / "exporters" / "flask-traffic-otel"),
            os.environ.get("PYTHONPATH", ""),
        ]
    )
    if receiver is not None:
        env[_ENV_OTLP] = receiver.endpoint
    if args.switch_interval:
        env[_ENV_SWITCH] = str(args.switch_interval)
    if "sqlorm" in kinds:
        # The model's table, made once here rather than by two workers at once.
        import sqlalchemy as sa

        engine = sa.create_engine(_orm_url(folder))
        _orm_model(f"{name}_orm").metadata.create_all(engine)
        engine.dispose()
    spans_before = receiver.spans() if receiver is not None and "otel" in kinds else 0
    port = _spare_port()
    script = work / "load.lua"
    if not script.exists():
        paths = ", ".join(f'"{path}"' for path in PATHS)
        script.write_text(_WRK_SCRIPT % (paths, ", ".join(f'"{a}"' for a in USER_AGENTS)))
    try:
        with gunicorn(args, env, port, folder) as pids:

            def load(seconds: float) -> Load:
                if args.load == "wrk":
                    return run_wrk(f"http://127.0.0.1:{port}", seconds, args.connections, script)
                return run_python_client(port, seconds, args.connections)

            load(1)  # warm-up: connections, tables, the user agent parser
            spy = None
            if args.py_spy and kinds:
                spy = py_spy(
                    pids[0], args.duration - 1, Path(args.py_spy) / f"{config}-{number}.txt"
                )
            measured = load(args.duration)
            if spy is not None:
                spy.wait(30)
        run = Run(config, measured, os.getloadavg()[0])
        reports = [json.loads(p.read_text()) for p in (folder / "reports").glob("*.json")]
        run.requests = sum(report["requests"] for report in reports)
        per = 1e6 / max(run.requests, 1)
        run.cpu_us = sum(report["cpu"] for report in reports) * per
        run.system_cpu_us = sum(report["system_cpu"] for report in reports) * per
        run.gc_us = sum(report["gc"] for report in reports) * per
        run.collections = tuple(map(sum, zip(*(r["collections"] for r in reports), strict=True)))
        for figures in reports:
            for sink, dropped in figures["dropped"].items():
                run.dropped[sink] = run.dropped.get(sink, 0) + dropped
        run.store_cpu_us = sum(report["store_cpu"] for report in reports) * per
        run.switches = sum(report["switches"] for report in reports) * per / 1e6
        run.store_switches = sum(report["store_switches"] for report in reports) * per / 1e6
        if len(reports) != args.workers:
            run.records["worker reports"] = len(reports)
        run.records.update(read_back(kinds, folder, name, run.requests + 1000))
        if receiver is not None and "otel" in kinds:
            deadline = time.monotonic() + 10
            while (spans := receiver.spans() - spans_before) < run.requests:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            run.records["OTelExporter"] = spans
        return run
    finally:
        clean_up(kinds, folder, name)


def _ratio(runs: list[Run], index: int, value: t.Callable[[Run], float]) -> float:
    """A store run's figure over the mean of the bare runs on either side."""
    before, after = runs[index - 1], runs[index + 1]
    return value(runs[index]) / ((value(before) + value(after)) / 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--stores", default=DEFAULT_CONFIGS, help="comma-separated configurations")
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=1, help="times through the configurations")
    parser.add_argument("--worker-class", choices=("gthread", "sync"), default="gthread")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--switch-interval", type=float, default=0, help="sys.setswitchinterval")
    parser.add_argument("--py-spy", metavar="FOLDER", help="py-spy record --gil each store run")
    parser.add_argument(
        "--load",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="the load generator: wrk (the default when installed) or a Python client",
    )
    parser.add_argument("--max-seconds", type=float, default=1200, help="start no run after")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--client":
        python_client(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
        return 0
    args = parse_args(argv)
    configs = [ALL_FIVE if c == "all" else c for c in args.stores.split(",") if c]
    unknown = {k for c in configs for k in c.split("+")} - {*KINDS, "none", "bare"}
    if unknown:
        kinds = ", ".join(KINDS)
        raise SystemExit(f"unknown store kinds {sorted(unknown)}; the kinds: {kinds}, none")
    if args.py_spy:
        Path(args.py_spy).mkdir(parents=True, exist_ok=True)
    order = ["bare"]
    for _ in range(args.rounds):
        for config in configs:
            order += [config, "bare"]
    started = time.monotonic()
    receiver = Receiver() if any("otel" in c for c in configs) else None
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for number, config in enumerate(order):
                if time.monotonic() - started > args.max_seconds and config != "bare":
                    break
                run = one_run(args, config, receiver, work, number)
                runs.append(run)
                print(
                    f"{run.config:>28}: {run.load.requests_per_s:8,.0f} req/s, "
                    f"p50 {run.load.p50_ms:6.2f} ms, p99 {run.load.p99_ms:6.2f} ms, "
                    f"CPU {run.cpu_us:5.0f} us/req (system {run.system_cpu_us:3.0f}, "
                    f"GC {run.gc_us:4.1f}, collections {run.collections}) "
                    f"(flask-traffic workers {run.store_cpu_us:4.0f}), "
                    f"switches {run.switches:5.2f}/req (workers {run.store_switches:4.2f}), "
                    f"errors {run.load.errors}, load {run.load_average:.2f}; "
                    f"{run.requests} answered, read back {run.records}"
                    + (
                        f", dropped (queue full) {run.dropped}" if any(run.dropped.values()) else ""
                    ),
                    flush=True,
                )
                if args.py_spy and config != "bare":
                    raw = Path(args.py_spy) / f"{config}-{number}.txt"
                    if raw.exists():
                        print(f"{'':>30}{gil_shares(raw)}", flush=True)
    finally:
        if receiver is not None:
            receiver.close()
    return report(args, runs)


def report(args: argparse.Namespace, runs: list[Run]) -> int:
    ratios: dict[str, list[tuple[float, float, float]]] = {}
    for index in range(1, len(runs) - 1, 2):
        ratios.setdefault(runs[index].config, []).append(
            (
                _ratio(runs, index, lambda r: r.load.requests_per_s),
                _ratio(runs, index, lambda r: r.load.p50_ms),
                _ratio(runs, index, lambda r: r.load.p99_ms),
            )
        )
    bare = [run for run in runs if run.config == "bare"]
    print(
        f"\n{args.worker_class}, {args.workers} workers"
        + (f" x {args.threads} threads" if args.worker_class == "gthread" else "")
        + f", {args.connections} connections, {args.duration:g} s runs; bare: "
        f"{statistics.median(r.load.requests_per_s for r in bare):,.0f} req/s, "
        f"p50 {statistics.median(r.load.p50_ms for r in bare):.2f} ms, "
        f"p99 {statistics.median(r.load.p99_ms for r in bare):.2f} ms (medians)"
    )
    print(f"{'configuration':>28}  req/s ratio  p50 ratio  p99 ratio")
    for config, values in ratios.items():
        rate, p50, p99 = (statistics.median(column) for column in zip(*values, strict=True))
        print(f"{config:>28}  {rate:11.2f}  {p50:9.2f}  {p99:9.2f}")
    lost = [run.config for run in runs if run.lost]
    dropped = sorted({run.config for run in runs if any(run.dropped.values())})
    print(
        (
            "records: every one read back or counted as dropped"
            if not lost
            else f"records missing: {lost}"
        )
        + (f"; dropped by a full queue in {dropped}" if dropped else "")
    )
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
