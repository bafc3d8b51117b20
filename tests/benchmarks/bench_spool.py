"""Records per second the disk spool takes (spill) and gives back to each
store that spools (replay), beside the store's own ingest rate.

    python tests/benchmarks/bench_spool.py [--records 50000] [--stores sqlite,postgresql,...]

Spill: ``--records`` records appended to a spool file in chunks of 100, as a
failing store's worker spills its queue (encoding and the write). Replay:
a spool file of ``--records`` records left by a "stopped process" is found
by the store's worker when it is attached, taken over and written, fenced
batch by batch; the figure is records over the time from attaching to the
last record written. Ingest: ``bench_ingest.py``'s figure for the same
store in the same run. The servers are the test suite's local ones. A
benchmark, not a test: nothing asserts; the exit status says whether every
record was replayed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from bench_ingest import MAKERS, ingest, make_records
from flask import Flask

from flask_traffic import Traffic
from flask_traffic._spool import SPOOL_FOLDER, Spool, spool_folder
from flask_traffic.stores import Store

SPOOLING = ("sqlite", "postgresql", "mariadb", "redis")
CHUNK = 100


def spill(folder: Path, count: int) -> float:
    """Seconds to spill ``count`` records into a spool file in ``folder``
    (which is then left behind, as by a process that stopped)."""
    spool = Spool(folder, 1 << 40, "bench")
    records = make_records(count)
    start = time.perf_counter()
    for i in range(0, count, CHUNK):
        spool.spill(records[i : i + CHUNK])
    elapsed = time.perf_counter() - start
    spool.close()
    return elapsed


def replay(store: Store, folder: Path, count: int) -> tuple[float, int]:
    """Seconds from attaching ``store`` until the spool left in its folder
    is written, and how many records it wrote."""
    app = Flask("bench", instance_path=str(folder))
    start = time.perf_counter()
    Traffic(app, stores=store)
    deadline = start + 600
    while store.stats()["replayed"] < count and time.perf_counter() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    replayed = int(store.stats()["replayed"])
    store.shutdown()
    return elapsed, replayed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000, help="records per store")
    parser.add_argument("--stores", default=",".join(SPOOLING), help="comma-separated store kinds")
    args = parser.parse_args(argv)
    logging.getLogger("flask_traffic").setLevel(logging.ERROR)
    ok = True
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            try:
                with MAKERS[kind](folder / "ingest") as store:
                    ingest_seconds, ingested = ingest(store, folder / "ingest", args.records)
                with MAKERS[kind](folder / "replay") as store:
                    spool_dir = spool_folder(folder / "replay" / SPOOL_FOLDER, store.name)
                    spill_seconds = spill(spool_dir, args.records)
                    replay_seconds, replayed = replay(store, folder / "replay", args.records)
            except Exception as exc:  # a server that does not answer
                print(f"{kind:>10}: not measured ({type(exc).__name__}: {exc})"[:200])
                ok = False
                continue
        ok = ok and replayed == args.records
        print(
            f"{kind:>10}: spill {args.records / spill_seconds:9,.0f} records/s, "
            f"replay {replayed / replay_seconds:9,.0f} records/s "
            f"({replayed} of {args.records}), ingest {ingested / ingest_seconds:9,.0f} records/s"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
