"""Replay against ingest of a store, in CPU instructions.

    python tests/benchmarks/bench_spool_instructions.py [--small 2000] [--large 6000]
        [--stores sqlite,redis]

``valgrind --tool=callgrind`` counts the instructions of the process: unlike
the records per second of ``bench_spool.py``, the figure does not move with
the machine's load. SQLite runs in the process, so all of a write's work is
counted, the database's included; for PostgreSQL, MariaDB and Redis it is
the client's work (the server does the same for a replayed record as for a
fresh one, but for the fence update each replayed batch adds). Each
mode runs twice, with ``--small`` and ``--large`` records, and the
difference of the counts over the difference of the records is the cost of
one record, start-up cancelled out. ``ingest``: records handed to the
store's processor as requests would, then a flush (``bench_ingest.py``'s
path). ``replay``: a spool file the parent left, as a stopped process
leaves it, moved into the folder of a store attached and warmed up, then
written. Both children make the same records, so that cost cancels too.
Needs valgrind. A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_ingest import MAKERS, ingest, make_records
from bench_instructions import callgrind_count
from bench_spool import replay, spill

from flask_traffic._spool import Spool


def child(kind: str, mode: str, count: int, folder: Path) -> None:
    """Ingest ``count`` records into a ``kind`` store, or replay the spool
    staged in ``folder``."""
    Spool.rescan_interval = 0.0
    with MAKERS[kind](folder / mode) as store:
        if mode == "ingest":
            _, written = ingest(store, folder / mode, count)
        else:
            make_records(count)  # what ingest() makes, so that it cancels out
            _, written = replay(store, folder / mode, folder / "staged", count)
    if written != count:
        raise SystemExit(f"{mode}: {written} of {count} records written")


def instructions(kind: str, mode: str, count: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if mode == "replay":
            spill(folder / "staged", count, kind)
        return callgrind_count(__file__, "--child", kind, mode, str(count), str(folder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=6000)
    parser.add_argument("--stores", default="sqlite", help="comma-separated store kinds")
    parser.add_argument(
        "--child", nargs=4, metavar=("KIND", "MODE", "COUNT", "FOLDER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), Path(args.child[3]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    for kind in args.stores.split(","):
        per_record = {}
        for mode in ("ingest", "replay"):
            started = time.perf_counter()
            small = instructions(kind, mode, args.small)
            large = instructions(kind, mode, args.large)
            per_record[mode] = (large - small) / (args.large - args.small)
            print(
                f"{kind} {mode}: {per_record[mode] / 1000:,.1f} k instructions per record "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        ratio = per_record["ingest"] / per_record["replay"]
        print(f"{kind} replay rate / ingest rate, in instructions: {ratio:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
