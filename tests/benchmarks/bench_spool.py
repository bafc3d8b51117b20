"""Records per second the disk spool takes (spill) and gives back to each
store that spools (replay), beside the store's own ingest rate.

    python tests/benchmarks/bench_spool.py [--records 50000] [--rounds 3] [--stores sqlite,...]

Spill: ``--records`` records appended to a spool file in chunks of 100, as a
failing store's worker spills its queue (encoding and the write). Replay:
the store is attached and warmed up as ``bench_ingest.py`` does (connections,
tables, the user-agent parser); then a spool file of ``--records`` records,
as a stopped process leaves it, is moved into the store's spool folder; the
figure is records over the time from then to the last record written
(found, taken over and written, fenced batch by batch). Ingest:
``bench_ingest.py``'s figure for the same store. Each round measures both,
one after the other, and the ratio of the two; the median of ``--rounds``
ratios is the figure (the machine's speed drifts between rounds). The
servers are the test suite's local ones. A benchmark, not a test: nothing
asserts; the exit status says whether every record was replayed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_ingest import MAKERS, ingest, make_records
from flask import Flask

from flask_traffic import LogPolicy, Traffic
from flask_traffic._spool import SPOOL_FOLDER, Spool, spool_folder
from flask_traffic.stores import Store

SPOOLING = ("sqlite", "postgresql", "mariadb", "redis")
CHUNK = 100


def spill(folder: Path, count: int, kind: str = "sqlite") -> float:
    """Seconds to spill ``count`` records into a spool file in ``folder``
    (which is then left behind, as by a process that stopped), each with
    the row a store of ``kind`` keeps beside it (a failing store's worker
    spills its rows too)."""
    from flask_traffic.stores._redisentries import spooled_entry
    from flask_traffic.stores._sqltable import spooled_row

    # The stores measured keep the default policy's fields.
    rows = (spooled_entry if kind == "redis" else spooled_row)(LogPolicy())
    spool = Spool(folder, 1 << 40, "bench", rows=rows)
    records = make_records(count)
    start = time.perf_counter()
    for i in range(0, count, CHUNK):
        spool.spill(records[i : i + CHUNK])
    elapsed = time.perf_counter() - start
    spool.close()
    return elapsed


def replay(store: Store, folder: Path, staged: Path, count: int) -> tuple[float, int]:
    """Seconds from the moment a spool file left by a "stopped process"
    (``staged``) appears in the folder of ``store``, attached and warmed up as
    in ``ingest()``, until its ``count`` records are written, and how many were."""
    app = Flask("bench", instance_path=str(folder))
    Traffic(app, stores=store)
    processor = store.processor
    assert processor is not None
    processor.emit(make_records(1)[0])  # warm-up: connections, tables, parser
    store.flush()
    target = spool_folder(folder / SPOOL_FOLDER, store.name)
    target.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in staged.iterdir():
        path.rename(target / path.name)
    # A flush wakes the worker, which looks for spools on every wake-up here;
    # one made once the spool is taken over waits for it to be replayed. No
    # polling: it would take the GIL from the worker (and, under valgrind,
    # count its own instructions as the replay's).
    deadline = start + 600
    while store.stats()["replayed"] < count and time.perf_counter() < deadline:
        store.flush()
    elapsed = time.perf_counter() - start
    replayed = int(store.stats()["replayed"])
    store.shutdown()
    return elapsed, replayed


def measure(kind: str, count: int) -> tuple[float, float, float, int]:
    """One round for store ``kind``: spill, replay and ingest records/s, and
    how many records the replay wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with MAKERS[kind](folder / "ingest") as store:
            ingest_seconds, ingested = ingest(store, folder / "ingest", count)
        staged = folder / "staged"
        spill_seconds = spill(staged, count, kind)
        with MAKERS[kind](folder / "replay") as store:
            replay_seconds, replayed = replay(store, folder / "replay", staged, count)
    return count / spill_seconds, replayed / replay_seconds, ingested / ingest_seconds, replayed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000, help="records per store")
    parser.add_argument("--stores", default=",".join(SPOOLING), help="comma-separated store kinds")
    parser.add_argument("--rounds", type=int, default=3, help="ingest and replay runs per store")
    args = parser.parse_args(argv)
    logging.getLogger("flask_traffic").setLevel(logging.ERROR)
    # Look for spool files on every wake-up, so that the replay starts when
    # the file appears (the default is every 30 s).
    Spool.rescan_interval = 0.0
    ok = True
    for kind in args.stores.split(","):
        ratios = []
        for round_ in range(1, args.rounds + 1):
            try:
                spilled, replayed_rate, ingest_rate, replayed = measure(kind, args.records)
            except Exception as exc:  # a server that does not answer
                print(f"{kind:>10}: not measured ({type(exc).__name__}: {exc})"[:200])
                ok = False
                break
            ok = ok and replayed == args.records
            ratios.append(replayed_rate / ingest_rate)
            print(
                f"{kind:>10} round {round_}: spill {spilled:9,.0f} records/s, "
                f"replay {replayed_rate:9,.0f} records/s ({replayed} of {args.records}), "
                f"ingest {ingest_rate:9,.0f} records/s, replay/ingest {ratios[-1]:.2f}"
            )
        if ratios:
            print(f"{kind:>10}: replay/ingest median {statistics.median(ratios):.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
