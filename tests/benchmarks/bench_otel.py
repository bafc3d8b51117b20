"""Per-request cost of OTelExporter against bare Flask, beside
opentelemetry-instrumentation-flask, in the same run.

    python tests/benchmarks/bench_otel.py [--requests 500] [--rounds 30] [--metrics]
        [--tracer-provider] [-v]

Three apps with the same routes: bare Flask (A); Flask with flask-traffic and
an OTelExporter (B); Flask instrumented by ``FlaskInstrumentor().instrument_app``
with an SDK TracerProvider and a BatchSpanProcessor (C). B and C export over
OTLP/HTTP to the same local receiver, a separate process on 127.0.0.1 that
decodes every request (tests/otel_receiver.py), so its work is not counted.
Rounds rotate the order of A, B and C so drift on the machine hits all
three (``--tracer-provider``: B's spans are made by a tracer of an SDK
TracerProvider of its own, with a BatchSpanProcessor and the SDK's OTLP
exporter, instead of the exporter's own encoder and sender); each B and C
round ends with a flush, so making, encoding and sending
the spans is inside the timed part. Prints the median per-round ratios B/A
and C/A, of wall time and of this process's CPU time (all threads). A
benchmark, not a test: nothing asserts; the exit status says only whether
every span arrived. Stops after ``--max-seconds`` whatever the round count.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this folder is on sys.path: the same user agents as bench_ingest.
from bench_ingest import USER_AGENTS
from flask import Flask
from flask_traffic_otel import OTelExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from flask_traffic import Traffic

# The tests' folder holds the shared test app.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_app

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# The receiver runs in a process of its own: it prints its port, then
# serves until its standard input closes, and prints how many spans it got.
_RECEIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from otel_receiver import OTLPReceiver
receiver = OTLPReceiver()
print(receiver.port, flush=True)
sys.stdin.read()
print(len(receiver.spans()), flush=True)
receiver.close()
"""


def run_requests(app: Flask, count: int) -> None:
    client = app.test_client()
    for i in range(count):
        path = "/" if i % 2 else f"/item/{i}"
        headers = {"User-Agent": USER_AGENTS[i % len(USER_AGENTS)], "Referer": "http://127.0.0.1/"}
        if i % 4 == 0:
            headers["traceparent"] = TRACEPARENT
        response = client.get(f"{path}?page={i % 7}", headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"unexpected status {response.status_code} for {path}")


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """Wall time and this process's CPU time (every thread) of ``fn()``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def _quartiles(values: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.3f}-{q3:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per round")
    parser.add_argument("--rounds", type=int, default=30, help="A/B/C rounds")
    parser.add_argument("--max-seconds", type=float, default=600, help="stop after this long")
    parser.add_argument("--metrics", action="store_true", help="OTelExporter records metrics too")
    parser.add_argument(
        "--tracer-provider",
        action="store_true",
        help="OTelExporter makes its spans with a TracerProvider of the benchmark's",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every round")
    args = parser.parse_args(argv)

    tests_dir = str(Path(__file__).resolve().parents[1])
    receiver = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, tests_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdin is not None
    assert receiver.stdout is not None
    endpoint = f"http://127.0.0.1:{receiver.stdout.readline().strip()}"

    with tempfile.TemporaryDirectory() as folder:
        bare = make_app(folder, "bare")
        traffic_app = make_app(folder, "traffic")
        own_provider = None
        if args.tracer_provider:
            own_provider = TracerProvider(
                resource=Resource.create({"service.name": "traffic"}), shutdown_on_exit=False
            )
            own_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(f"{endpoint}/v1/traces"))
            )
        exporter = OTelExporter(
            None if own_provider else f"{endpoint}/v1/traces",
            tracer_provider=own_provider,
            metrics_endpoint=f"{endpoint}/v1/metrics" if args.metrics else None,
        )
        Traffic(traffic_app, stores=exporter)
        instrumented = make_app(folder, "instrumented")
        provider = TracerProvider(
            resource=Resource.create({"service.name": "instrumented"}), shutdown_on_exit=False
        )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{endpoint}/v1/traces")))
        FlaskInstrumentor().instrument_app(
            instrumented, tracer_provider=provider, meter_provider=NoOpMeterProvider()
        )

        def traffic_round() -> None:
            run_requests(traffic_app, args.requests)
            if not exporter.flush(60):
                raise SystemExit("OTelExporter did not flush")

        def instrumented_round() -> None:
            run_requests(instrumented, args.requests)
            if not provider.force_flush(60_000):
                raise SystemExit("the instrumentation's provider did not flush")

        runs: dict[str, Callable[[], None]] = {
            "bare": lambda: run_requests(bare, args.requests),
            "traffic": traffic_round,
            "instrumented": instrumented_round,
        }
        # Warm-up: imports, caches, connections.
        for warm in runs.values():
            warm()
        started = time.monotonic()
        ratios: dict[str, list[tuple[float, float]]] = {"traffic": [], "instrumented": []}
        rounds = 0
        order = list(runs)
        for number in range(args.rounds):
            if time.monotonic() - started > args.max_seconds:
                break
            times: dict[str, tuple[float, float]] = {}
            # Rotate the order, so no app always follows another.
            for name in order[number % 3 :] + order[: number % 3]:
                times[name] = timed(runs[name])
            a, a_cpu = times["bare"]
            for name in ratios:
                b, b_cpu = times[name]
                ratios[name].append((b / a, b_cpu / a_cpu))
            rounds += 1
            if args.verbose:
                print(
                    f"round {number + 1:2d}: bare {a / args.requests * 1e6:6.1f} us/request, "
                    + ", ".join(
                        f"{name} {times[name][0] / args.requests * 1e6:6.1f} us/request "
                        f"(wall {ratios[name][-1][0]:.3f}x, cpu {ratios[name][-1][1]:.3f}x)"
                        for name in ratios
                    )
                )
        exporter.shutdown()
        provider.shutdown()
        if own_provider is not None:
            own_provider.shutdown()

    receiver.stdin.close()
    arrived = int(receiver.stdout.readline().strip() or 0)
    receiver.wait(60)
    expected = 2 * args.requests * (rounds + 1)
    print(f"spans received: {arrived} (expected {expected})")
    labels = {
        "traffic": "Flask + flask-traffic + OTelExporter"
        + (" (+metrics)" if args.metrics else "")
        + (" (own tracer_provider)" if args.tracer_provider else ""),
        "instrumented": "Flask + opentelemetry-instrumentation-flask",
    }
    for name, pairs in ratios.items():
        wall = [w for w, _ in pairs]
        cpu = [c for _, c in pairs]
        print(
            f"{labels[name]} / bare Flask, per request, median of {rounds} rounds of "
            f"{args.requests}: wall {statistics.median(wall):.3f}x, CPU "
            f"{statistics.median(cpu):.3f}x (quartiles: wall {_quartiles(wall)}, "
            f"CPU {_quartiles(cpu)})"
        )
    return 0 if arrived == expected else 1


if __name__ == "__main__":
    sys.exit(main())
