"""How long ``summary()`` and queries take on 1,000,000-record JSON Lines and CSV files.

    python tests/benchmarks/bench_summary_files.py [--records 1000000] [--days 30] [--only json]

Writes the files directly in the stores' own formats (through their value
encoders, not through requests): records spread evenly over ``--days`` days
up to now, ~50 routes, ~1 % 5xx, a few user agents, 50,000 addresses. Then
times ``summary()``, ``summary(since=last 24 h)``, ``read(100, since=last
24 h)`` and ``read(100, where=5xx)`` on each. A benchmark, not a test: it
prints times and checks only that the summary counted every record.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import typing as t
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from flask_traffic.query import Query
from flask_traffic.stores import CSVStore, JSONStore
from flask_traffic.stores._framing import encode_lines, field_encoders
from flask_traffic.stores.csvfile import _ENCODERS as CSV_ENCODERS
from flask_traffic.stores.filestore import FileStore
from flask_traffic.stores.jsonlines import _ENCODERS as JSON_ENCODERS

UTC = timezone.utc
AGENTS = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "Chrome 131",
        "Windows",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/18.1 Safari/605.1.15",
        "Safari 18.1",
        "Mac OS X",
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Firefox 133",
        "Linux",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        "Mobile Safari 18.1",
        "iOS",
    ),
    ("curl/8.5.0", "curl 8.5.0", None),
]
REFERRERS = [None, None, None, "https://www.google.com/", "https://example.com/blog?a=1"]
CHUNK = 100_000


def rows(count: int, days: int, seed: int = 7) -> t.Iterator[list[tuple[t.Any, ...]]]:
    """The records' values in schema order, oldest first, CHUNK at a time."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    start = now - timedelta(days=days)
    step = (now - start) / count
    routes = [f"/api/r{k}/<int:id>" for k in range(50)]
    addresses = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(50_000)]
    chunk: list[tuple[t.Any, ...]] = []
    for i in range(count):
        date = (start + step * i).isoformat(timespec="microseconds")
        k = min(int(rng.expovariate(0.1)), 49)
        agent, browser, platform = AGENTS[rng.randrange(len(AGENTS))]
        roll = rng.random()
        status = 500 if roll < 0.01 else 404 if roll < 0.04 else 302 if roll < 0.08 else 200
        chunk.append(
            (
                date,
                "GET" if roll > 0.1 else "POST",
                "https://example.com/",
                f"/api/r{k}/{rng.randrange(1000)}",
                f"r{k}",
                routes[k],
                addresses[rng.randrange(len(addresses))],
                REFERRERS[rng.randrange(len(REFERRERS))],
                agent,
                browser,
                platform,
                round(rng.lognormvariate(3, 1), 3),
                rng.randrange(100, 50_000),
                status,
                "ValueError('boom')" if status == 500 else None,
                "application/json",
                None,
            )
        )
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write(store: FileStore, encoders: dict[t.Any, Callable[[t.Any], str]], args: t.Any) -> float:
    start = time.perf_counter()
    fields = store.fields
    json_lines = isinstance(store, JSONStore)
    prefixes = [f'"{name}":' for name in fields] if json_lines else [""] * len(fields)
    with open(store.path, "wb") as file:
        file.write(store.header())
        for chunk in rows(args.records, args.days):
            text = encode_lines(
                chunk,
                field_encoders(fields, encoders),
                prefixes,
                "{" if json_lines else "",
                "}" if json_lines else "",
            )
            file.write(text.encode("utf-8", "surrogatepass"))
    return time.perf_counter() - start


def timed(what: str, call: Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> t.Any:
    start = time.perf_counter()
    result = call(*args, **kwargs)
    took = time.perf_counter() - start
    print(f"  {what}: " + (f"{took:.2f} s" if took >= 1 else f"{took * 1000:.1f} ms"))
    return result


def _oldest_first(store: FileStore, query: Query) -> int:
    return sum(1 for _ in store.scan(query, oldest_first=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--only", choices=["json", "csv"], help="time one store only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        stores: list[tuple[FileStore, dict[t.Any, Callable[[t.Any], str]]]] = [
            # Summaries from the records: no rollups to answer them.
            (JSONStore(location=folder, rollups=False), JSON_ENCODERS),
            (CSVStore(location=folder, rollups=False), CSV_ENCODERS),
        ]
        for store, encoders in stores:
            if args.only and store.name != {"json": "JSONStore", "csv": "CSVStore"}[args.only]:
                continue
            took = write(store, encoders, args)
            size = os.path.getsize(store.path)
            print(
                f"{store.name}: {args.records:,} records, {size / 1e6:,.0f} MB "
                f"(written in {took:.1f} s)"
            )
            day_ago = datetime.now(UTC) - timedelta(days=1)
            everything = timed("summary()", store.summary)
            if everything["total"] != args.records:
                print(f"{store.name}: summary counted {everything['total']}", file=sys.stderr)
                return 1
            last_day = timed("summary(since=24 h ago)", store.summary, since=day_ago)
            print(f"    ({last_day['total']:,} records in the last 24 h)")
            timed("read(100, since=24 h ago)", store.read, 100, since=day_ago)
            timed(
                "scan(since=24 h ago, oldest_first=True), all of it",
                _oldest_first,
                store,
                store.query(since=day_ago),
            )
            timed("read(100, where=500)", store.read, 100, where={"response_status_code": 500})
            store.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
