"""Replay against ingest of a SQLite store, in CPU instructions.

    python tests/benchmarks/bench_spool_instructions.py [--small 2000] [--large 6000]

SQLite runs in the process, so ``valgrind --tool=callgrind`` counts all of
a write's work, the database's included: unlike the records per second of
``bench_spool.py``, the figure does not move with the machine's load. Each
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


def child(mode: str, count: int, folder: Path) -> None:
    """Ingest ``count`` records, or replay the spool staged in ``folder``."""
    Spool.rescan_interval = 0.0
    with MAKERS["sqlite"](folder / mode) as store:
        if mode == "ingest":
            _, written = ingest(store, folder / mode, count)
        else:
            make_records(count)  # what ingest() makes, so that it cancels out
            _, written = replay(store, folder / mode, folder / "staged", count)
    if written != count:
        raise SystemExit(f"{mode}: {written} of {count} records written")


def instructions(mode: str, count: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if mode == "replay":
            spill(folder / "staged", count)
        return callgrind_count(__file__, "--child", mode, str(count), str(folder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=6000)
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "COUNT", "FOLDER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    per_record = {}
    for mode in ("ingest", "replay"):
        started = time.perf_counter()
        small, large = instructions(mode, args.small), instructions(mode, args.large)
        per_record[mode] = (large - small) / (args.large - args.small)
        print(
            f"{mode}: {per_record[mode] / 1000:,.1f} k instructions per record "
            f"({time.perf_counter() - started:.0f} s)"
        )
    ratio = per_record["ingest"] / per_record["replay"]
    print(f"SQLite replay rate / ingest rate, in instructions: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
