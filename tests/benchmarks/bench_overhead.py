"""Per-request cost of flask-traffic against bare Flask, in the same run.

    python tests/benchmarks/bench_overhead.py [--requests 500] [--rounds 30] [-v]
    python tests/benchmarks/bench_overhead.py --stores json,csv,sqlite,sqlorm,redis [--rollups]

Two apps with the same routes: bare Flask (A) and Flask with a JSONStore and
a CSVStore (B), or the stores named by ``--stores`` (the kinds of
``bench_ingest.py``; the server-backed ones use the test suite's local
servers). Rounds alternate A and B so drift on the machine hits both;
each B round ends with both stores flushed, so the background work (user
agent parsing, encoding, file writes) is inside the timed part. Prints the
median of the per-round ratios B/A, of wall time and of the process's CPU
time (all threads; steadier on a shared machine). A benchmark, not a test:
nothing asserts; the exit status says only whether every record was written.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this folder is on sys.path.
import bench_ingest
from bench_ingest import MAKERS, USER_AGENTS
from flask import Flask

from flask_traffic import Traffic
from flask_traffic.stores import Store

# The tests' folder holds the shared test app.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_app


def run_requests(app: Flask, count: int) -> None:
    client = app.test_client()
    for i in range(count):
        path = "/" if i % 2 else f"/item/{i}"
        headers = {"User-Agent": USER_AGENTS[i % len(USER_AGENTS)], "Referer": "http://127.0.0.1/"}
        response = client.get(path, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"unexpected status {response.status_code} for {path}")


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """Wall time and this process's CPU time (every thread) of ``fn()``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def measure(
    bare: Flask,
    traffic_app: Flask,
    stores: list[Store],
    requests: int,
    rounds: int,
    verbose: bool,
) -> tuple[list[float], list[float]]:
    def traffic_round() -> None:
        run_requests(traffic_app, requests)
        for store in stores:
            if not store.flush(60):
                raise SystemExit(f"{store.name} did not flush")
            if store.keeps_rollups:
                # What the worker does between batches, inside the round.
                store.fold()

    wall_ratios, cpu_ratios = [], []
    for number in range(rounds):
        # Alternate which app goes first, so neither always follows the other.
        if number % 2:
            b, b_cpu = timed(traffic_round)
            a, a_cpu = timed(lambda: run_requests(bare, requests))
        else:
            a, a_cpu = timed(lambda: run_requests(bare, requests))
            b, b_cpu = timed(traffic_round)
        wall_ratios.append(b / a)
        cpu_ratios.append(b_cpu / a_cpu)
        if verbose:
            print(
                f"round {number + 1:2d}: bare {a / requests * 1e6:6.1f} us/request, "
                f"traffic {b / requests * 1e6:6.1f} us/request, wall ratio {b / a:.3f}, "
                f"cpu ratio {b_cpu / a_cpu:.3f}"
            )
    return wall_ratios, cpu_ratios


def _quartiles(values: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.3f}-{q3:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per round")
    parser.add_argument("--rounds", type=int, default=30, help="A/B rounds")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every round")
    parser.add_argument("--stores", default="json,csv", help="comma-separated store kinds")
    parser.add_argument(
        "--rollups", action="store_true", help="SQL and Redis keep rollups, folded each round"
    )
    args = parser.parse_args(argv)
    bench_ingest.ROLLUPS = args.rollups
    kinds = args.stores.split(",")
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as made:
        bare = make_app(folder, "bare")
        traffic_app = make_app(folder, "traffic")
        stores: list[Store] = [made.enter_context(MAKERS[kind](Path(folder))) for kind in kinds]
        Traffic(traffic_app, stores=stores)
        # Warm-up: imports, caches, the user agent parser's first parses.
        run_requests(bare, 500)
        run_requests(traffic_app, 500)
        for store in stores:
            store.flush()
        wall, cpu = measure(bare, traffic_app, stores, args.requests, args.rounds, args.verbose)
        written = [store.stats()["exported"] for store in stores]
        for store in stores:
            store.shutdown()
    expected = 500 + args.requests * args.rounds
    print(f"records written per store: {written} (expected {expected} each)")
    names = " + ".join(type(store).__name__ for store in stores)
    print(
        f"Flask + {names} / bare Flask, per request, median of "
        f"{args.rounds} rounds of {args.requests}: wall {statistics.median(wall):.3f}x, "
        f"CPU {statistics.median(cpu):.3f}x (quartiles: wall {_quartiles(wall)}, "
        f"CPU {_quartiles(cpu)})"
    )
    return 0 if set(written) == {expected} else 1


if __name__ == "__main__":
    sys.exit(main())
