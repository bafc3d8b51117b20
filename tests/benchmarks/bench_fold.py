"""What folding records into rollups costs, per record, for each store kind.

    python tests/benchmarks/bench_fold.py [--records 20000] [--stores sqlite,redis,...]
                                          [--data unique|site] [--instructions]

Each store is filled with ``--records`` records (written, not folded), then
folded once; the figure is the fold's time per record (``perf_counter``
and the process's CPU time). ``--data unique`` gives every request a path of
its own (``bench_ingest``'s records: the most rows a fold can add);
``--data site`` draws them from ``bench_rollups``' site (10,000 paths, 1,000
referrers, 50 browsers), as densely as its 10,000,000 records over 90 days
(about 4,600 an hour). With ``--instructions`` each store is run twice under
valgrind (fill only, fill and fold) and the difference of the instruction
counts per record is printed: it does not move with the machine's load. For
PostgreSQL and MariaDB, that count is this process's (the client's); the
database's own work is not in it. A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_ingest import MARIADB_URL, POSTGRES_URL, REDIS_URL, make_records
from bench_instructions import callgrind_count

from flask_traffic import TrafficRecord
from flask_traffic.stores import CSVStore, JSONStore, RedisStore, SQLStore, Store

KINDS = ("sqlite", "postgresql", "mariadb", "redis", "json", "csv")


@contextlib.contextmanager
def rolled(kind: str, folder: Path) -> Iterator[Store]:
    """A store of ``kind`` keeping rollups, writing in the caller's thread."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    store: Store
    if kind in ("sqlite", "postgresql", "mariadb"):
        url = {"postgresql": POSTGRES_URL, "mariadb": MARIADB_URL}.get(kind)
        store = SQLStore(
            location=folder, database_url=url, database_table_name=name, sync=True, rollups=True
        )
    elif kind == "redis":
        store = RedisStore(event_name=name, url=REDIS_URL, sync=True, rollups=True)
    else:
        store = (JSONStore if kind == "json" else CSVStore)(
            location=folder, sync=True, rollups=True
        )
    try:
        yield store
    finally:
        _drop(kind, store, name)


def _drop(kind: str, store: Store, name: str) -> None:
    if isinstance(store, SQLStore) and store.database_engine is not None:
        import sqlalchemy as sa

        with store.database_engine.begin() as connection:
            for suffix in ("_rollup", "_rollup_bucket", "_rollup_state", "_spool_fence", ""):
                connection.execute(sa.text(f"DROP TABLE IF EXISTS {name}{suffix}"))
        store.database_engine.dispose()
    elif kind == "redis":
        import redis

        with redis.Redis.from_url(REDIS_URL) as client:
            client.delete(name, *client.scan_iter(f"{name}:*", count=1000))


def records(data: str, count: int) -> list[TrafficRecord]:
    if data == "unique":
        return make_records(count)
    from bench_rollups import Traffic90

    return Traffic90().batch(count, 0.5, count / 10_000_000)


def run(kind: str, data: str, count: int, fold: bool) -> tuple[float, float]:
    """Fill a new store and fold it (when ``fold``): the fold's seconds, wall and CPU."""
    from flask import Flask

    from flask_traffic import Traffic

    made = records(data, count)
    with tempfile.TemporaryDirectory() as tmp, rolled(kind, Path(tmp)) as store:
        Traffic(Flask("bench", instance_path=tmp), stores=store)
        for start in range(0, count, 1000):
            store.export(made[start : start + 1000])
        keeper = store._rollup_keeper()
        if hasattr(keeper, "settle"):
            keeper.settle = 0.0  # fold rows at once, not 10 s after
        if not fold:
            return 0.0, 0.0
        wall, cpu = time.perf_counter(), time.process_time()
        folded = store.fold()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if folded != count:
            raise SystemExit(f"{kind}: folded {folded} of {count}")
        return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--stores", default=",".join(KINDS))
    parser.add_argument("--data", choices=("unique", "site"), default="unique")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run(args.child[0], args.data, args.records, args.child[1] == "fold")
        return 0
    for kind in args.stores.split(","):
        if args.instructions:
            counts = [
                callgrind_count(
                    __file__,
                    *("--child", kind, mode, "--records", str(args.records), "--data", args.data),
                )
                for mode in ("fill", "fold")
            ]
            per = (counts[1] - counts[0]) / args.records
            print(f"{kind:>10}: {per:11,.0f} instructions a record folded")
            continue
        wall, cpu = run(kind, args.data, args.records, True)
        print(
            f"{kind:>10}: {wall / args.records * 1e6:6.1f} us a record folded "
            f"(CPU {cpu / args.records * 1e6:.1f} us; {args.records} records)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
