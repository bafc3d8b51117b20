"""How long SQLStore takes to summarize, query and prune 1,000,000 records.

    python tests/benchmarks/bench_summary_sql.py [--records 1000000]
        [--postgresql URL] [--mariadb URL] [--server-records 200000]

Fills a SQLite table twice, with and without the summary index that
SQLStore gives SQLite tables (``summary_index=``), and optionally a
PostgreSQL and a MariaDB one, with
realistic rows straight through the store's table, in big executemany
transactions: 30 days of traffic, 50 routes, some 5xx, a few user agents,
many addresses, a few sampled records. Then times ``summary()``,
``summary(since=24 hours ago)``, ``read(100, since=...)``, ``read(100,
where=...)``, the rate of 100 inserts of 500 rows (what the worker writes)
into the full table, and ``retain`` of the oldest week. A benchmark, not a test: it prints
figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import typing as t
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

from flask_traffic import Traffic
from flask_traffic.stores import SQLStore

_UTC = timezone.utc
DAYS = 30
ROUTES = 50
_USER_AGENTS = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Chrome 131",
        "Windows",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.6 Safari/605.1.15",
        "Safari 17.6",
        "Mac OS X",
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Firefox 133.0",
        "Linux",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
        "Mobile Safari 17.6",
        "iOS",
    ),
    ("curl/8.5.0", "curl 8.5.0", None),
    ("python-requests/2.32.3", "Python Requests 2.32", None),
]
_REFERRERS = [None, None, None, "https://www.google.com/", "https://example.com/", "https://t.co/x"]


def rows(count: int, end: datetime, seed: int = 5) -> Iterator[dict[str, t.Any]]:
    """``count`` realistic rows, oldest first, spread evenly over ``DAYS`` days before ``end``."""
    rng = random.Random(seed)
    start = end - timedelta(days=DAYS)
    step = timedelta(days=DAYS) / count
    routes = [f"/section{r}/<int:item>" if r % 3 else f"/page{r}" for r in range(ROUTES)]
    # A few busy routes, a long tail.
    route_weights = [1.0 / (r + 1) for r in range(ROUTES)]
    addresses = [f"10.{a // 65536}.{a // 256 % 256}.{a % 256}" for a in range(200_000)]
    for n in range(count):
        route_index = rng.choices(range(ROUTES), route_weights)[0]
        route = routes[route_index]
        path = route.replace("<int:item>", str(rng.randrange(500)))
        roll = rng.random()
        status = 500 if roll < 0.01 else 404 if roll < 0.04 else 302 if roll < 0.08 else 200
        agent, browser, platform = _USER_AGENTS[int(rng.random() ** 2 * len(_USER_AGENTS))]
        unmatched = status == 404
        yield {
            "request_date": start + step * n,
            "request_method": "POST" if roll > 0.95 else "GET",
            "request_host_url": "https://example.com/",
            "request_path": "/no/such/page" if unmatched else path,
            "request_endpoint": None if unmatched else f"view{route_index}",
            "request_route": None if unmatched else route,
            "request_remote_address": addresses[int(rng.paretovariate(1.2)) % len(addresses)],
            "request_referrer": rng.choice(_REFERRERS),
            "request_user_agent": agent,
            "request_browser": browser,
            "request_platform": platform,
            "response_time": rng.lognormvariate(3.0, 1.0),
            "response_size": rng.randrange(200, 50_000),
            "response_status_code": status,
            "response_exception": "RuntimeError('database down')" if status == 500 else None,
            "response_mimetype": "text/html",
            "request_sample_rate": 0.5 if roll > 0.99 else None,
        }


def fill(engine: sa.Engine, table: sa.Table, count: int, end: datetime) -> float:
    """Insert ``count`` rows in transactions of 50,000; return the seconds taken."""
    started = time.perf_counter()
    insert = table.insert()
    batch: list[dict[str, t.Any]] = []
    for row in rows(count, end):
        batch.append(row)
        if len(batch) == 50_000:
            with engine.begin() as connection:
                connection.execute(insert, batch)
            batch = []
    if batch:
        with engine.begin() as connection:
            connection.execute(insert, batch)
    return time.perf_counter() - started


def timed(label: str, action: Callable[[], t.Any], repeat: int = 3) -> t.Any:
    """Run ``action`` ``repeat`` times; print the best and the worst time."""
    times = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    print(f"  {label}: best {min(times) * 1000:,.0f} ms, worst {max(times) * 1000:,.0f} ms")
    return result


def insert_rate(engine: sa.Engine, table: sa.Table, end: datetime) -> float:
    """Rows per second written in 100 transactions of 500 rows, as the worker writes."""
    batch: list[dict[str, t.Any]] = list(rows(50_000, end, seed=9))
    insert = table.insert()
    started = time.perf_counter()
    for start in range(0, len(batch), 500):
        with engine.begin() as connection:
            connection.execute(insert, batch[start : start + 500])
    return len(batch) / (time.perf_counter() - started)


def bench(url: str | None, count: int, folder: Path, label: str, **options: t.Any) -> None:
    app = Flask("bench", instance_path=str(folder))
    table_name = f"bench_{int(time.time() * 1000)}"
    # Summaries from the rows (the summary index's, or not): no rollups.
    options.setdefault("rollups", False)
    store = SQLStore(database_url=url, database_table_name=table_name, location=folder, **options)
    Traffic(app, stores=store)
    engine = store.database_engine
    assert engine is not None
    try:
        end = datetime.now(_UTC)
        seconds = fill(engine, store.database_log_table, count, end)
        print(f"{label}: {count:,} rows inserted in {seconds:.1f} s")
        day_ago = end - timedelta(hours=24)
        summary = timed("summary()", store.summary)
        print(
            f"    total {summary['total']:,}, {len(summary['routes'])} routes, "
            f"{summary['unique_visitors']:,} visitors, {summary['errors']:,} errors"
        )
        timed("summary(since=24 h ago)", lambda: store.summary(since=day_ago))
        timed("read(100, since=24 h ago)", lambda: store.read(100, since=day_ago))
        timed(
            "read(100, where={'response_status_code': 500})",
            lambda: store.read(100, where={"response_status_code": 500}),
        )
        timed(
            "read(100, until=29 days ago)",
            lambda: store.read(100, until=end - timedelta(days=DAYS - 1)),
        )
        exported = timed(
            "export of all rows via scan(), oldest first",
            lambda: sum(1 for _ in store.scan(store.query(), oldest_first=True)),
            repeat=1,
        )
        print(f"    {exported:,} rows streamed")
        rate = insert_rate(engine, store.database_log_table, end)
        print(f"  50,000 more rows in batches of 500: {rate:,.0f} rows/s")
        removed = timed(
            "retain(cutoff=23 days ago): removes a week",
            lambda: store.retain(end - timedelta(days=DAYS - 7), None),
            repeat=1,
        )
        print(f"    {removed:,} rows removed")
        removed = timed(
            f"retain(max_records={count // 2:,})",
            lambda: store.retain(None, count // 2),
            repeat=1,
        )
        print(f"    {removed:,} rows removed")
    finally:
        store.shutdown()
        if url is not None:
            engine = sa.create_engine(url)
            store.database_log_table.drop(engine, checkfirst=True)
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--postgresql", help="a PostgreSQL URL to run on as well")
    parser.add_argument("--mariadb", help="a MariaDB URL to run on as well")
    parser.add_argument("--server-records", type=int, default=200_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        bench(None, args.records, Path(folder), "SQLite")
    with tempfile.TemporaryDirectory() as folder:
        bench(None, args.records, Path(folder), "SQLite, summary_index=False", summary_index=False)
    for url in (args.postgresql, args.mariadb):
        if url:
            with tempfile.TemporaryDirectory() as folder:
                bench(url, args.server_records, Path(folder), sa.make_url(url).get_backend_name())
    return 0


if __name__ == "__main__":
    sys.exit(main())
