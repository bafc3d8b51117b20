"""Per-request cost of flask-traffic against bare Flask, in CPU instructions.

    python tests/benchmarks/bench_instructions.py [--small 300] [--large 1300]

Runs each app under ``valgrind --tool=callgrind`` (every thread counted)
twice, with ``--small`` and ``--large`` requests, and divides the difference
of the instruction counts by the difference of the requests, so start-up
costs cancel out. Unlike wall time this does not move with the machine's
load: use it to compare two versions of the code. Needs valgrind (Debian
package ``valgrind``). A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


def child(mode: str, requests: int) -> None:
    """Serve ``requests`` requests with bare Flask or Flask + JSON + CSV stores."""
    from flask import Flask

    from flask_traffic import Traffic
    from flask_traffic.stores import CSVStore, JSONStore, Store

    with tempfile.TemporaryDirectory() as folder:
        app = Flask("bench", instance_path=folder)
        app.add_url_rule("/", "index", lambda: "hello")
        stores: list[Store] = []
        if mode == "traffic":
            # valgrind runs ~50x slower: with the 1 s timer, batches would be a
            # few dozen records instead of the 512 they are at full speed.
            app.config["TRAFFIC_SCHEDULE_DELAY"] = 60.0
            stores = [JSONStore(rollups=False), CSVStore(rollups=False)]
            Traffic(app, stores=stores)
        client = app.test_client()
        for _ in range(requests):
            client.get("/", headers={"User-Agent": CHROME})
        for store in stores:
            store.shutdown()


def callgrind_count(script: str, *args: str) -> int:
    """The instructions ``python script args...`` runs, every thread counted."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        # The interpreter itself: a pyenv or venv shim would be measured instead.
        os.path.realpath(sys.executable),
        script,
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{result.stderr}")
    return int(found.group(1))


def instructions(mode: str, requests: int) -> int:
    return callgrind_count(__file__, "--child", mode, str(requests))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1300)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    per_request = {}
    for mode in ("bare", "traffic"):
        small, large = instructions(mode, args.small), instructions(mode, args.large)
        per_request[mode] = (large - small) / (args.large - args.small)
        print(f"{mode}: {per_request[mode] / 1000:,.1f} k instructions per request")
    ratio = per_request["traffic"] / per_request["bare"]
    print(f"Flask + JSONStore + CSVStore / bare Flask, in instructions: {ratio:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
