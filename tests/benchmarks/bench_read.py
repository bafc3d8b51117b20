"""How long ``read(100)`` takes on a 1,000,000-record JSON Lines and CSV file.

    python tests/benchmarks/bench_read.py [--records 1000000] [--limit 100]

Writes the files through the stores' own encoders (1,000 real records from
the test client, repeated), then times ``read(limit)``, which reads backwards
from the end of the file and stops once it has ``limit`` records. A
benchmark, not a test: it prints times and asserts only that the newest
record comes back first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from flask import Flask

from flask_traffic import Traffic, TrafficRecord, request_traffic
from flask_traffic.stores import CSVStore, JSONStore
from flask_traffic.stores.filestore import FileStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args(argv)
    unit = 1000
    with tempfile.TemporaryDirectory() as folder:
        app = Flask("bench", instance_path=folder)
        app.route("/<path:p>")(lambda p: p)
        stores: list[FileStore] = [JSONStore(rollups=False), CSVStore(rollups=False)]
        Traffic(app, stores=stores)
        records: list[TrafficRecord] = []
        with request_traffic.connected_to(
            lambda sender, record, **extra: records.append(record), app
        ):
            client = app.test_client()
            for i in range(unit):
                client.get(f"/page/{i}", headers={"User-Agent": "bench", "Referer": "=x"})
        for store in stores:
            store.flush()
            body = store.encode(records)
            with open(store.path, "ab") as file:
                for _ in range(args.records // unit - 1):
                    file.write(body)
            size = os.path.getsize(store.path)
            start = time.perf_counter()
            rows = store.read(args.limit)
            elapsed = time.perf_counter() - start
            if rows[0]["request_path"] != f"/page/{unit - 1}" or len(rows) != args.limit:
                print(f"{store.name}: wrong rows back", file=sys.stderr)
                return 1
            print(
                f"{store.name}: read({args.limit}) of {args.records:,} records "
                f"({size / 1e6:,.0f} MB) took {elapsed * 1000:.1f} ms"
            )
            store.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
