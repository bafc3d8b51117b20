"""How long ``summary()`` and queries take on a 200,000-entry Redis stream.

    python tests/benchmarks/bench_summary_redis.py [--records 200000] [--days 30] [--url URL]

Writes the entries directly (pipelined ``XADD``, through the store's own value
encoders, not through requests) into a stream of its own on the local Redis,
deleted afterwards: records spread evenly over ``--days`` days up to now,
each with the id a store writing at that moment would have given it, ~50
routes, ~1 % 5xx, a few user agents, 50,000 addresses. Then times
``summary()``, ``summary(since=last 24 h)``, ``read(100)``, ``read(100,
since=last 24 h)`` and ``read(100, where=5xx)``. A benchmark, not a test: it
prints times and checks only that the summary counted every entry.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import typing as t
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import redis

# Run as a script, this folder is on sys.path.
from bench_summary_files import UTC, rows

from flask_traffic import FIELD_NAMES
from flask_traffic.stores import RedisStore
from flask_traffic.stores._redisentries import CODECS

PIPELINE = 10_000


def entries(count: int, days: int) -> Iterator[tuple[str, dict[str, t.Any]]]:
    """(stream id, field values) for each record, oldest first: the records of
    bench_summary_files.py, so the two benchmarks measure the same traffic."""
    for chunk in rows(count, days):
        for values in chunk:
            moment = datetime.fromisoformat(values[0])
            # The id a store writing right after the request would have got.
            yield f"{int(moment.timestamp() * 1000)}-*", dict(zip(FIELD_NAMES, values, strict=True))


def write(client: redis.Redis, key: str, args: argparse.Namespace) -> float:
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for n, (entry_id, values) in enumerate(entries(args.records, args.days), 1):
        fields = {
            CODECS[name][0]: CODECS[name][1](value)
            for name, value in values.items()
            if value is not None
        }
        pipe.xadd(key, fields, id=entry_id)  # type: ignore[arg-type]
        if n % PIPELINE == 0:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - start


def timed(what: str, call: Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> t.Any:
    start = time.perf_counter()
    result = call(*args, **kwargs)
    print(f"  {what}: {time.perf_counter() - start:.2f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--url",
        default=os.environ.get("TRAFFIC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args(argv)
    key = f"bench_{uuid.uuid4().hex[:12]}"
    with redis.Redis.from_url(args.url) as client:
        # Summaries from the entries: no rollups to answer them.
        store = RedisStore(event_name=key, url=args.url, rollups=False)
        try:
            took = write(client, key, args)
            memory = client.memory_usage(key, samples=0) or 0
            print(
                f"{store.name}: {client.xlen(key):,} entries, {memory / 1e6:,.0f} MB "
                f"in Redis (written in {took:.1f} s)"
            )
            day_ago = datetime.now(UTC) - timedelta(days=1)
            everything = timed("summary()", store.summary)
            if everything["total"] != args.records:
                print(f"summary counted {everything['total']}", file=sys.stderr)
                return 1
            last_day = timed("summary(since=24 h ago)", store.summary, since=day_ago)
            print(f"    ({last_day['total']:,} records in the last 24 h)")
            timed("read(100)", store.read, 100)
            timed("read(100, since=24 h ago)", store.read, 100, since=day_ago)
            timed("read(100, where=500)", store.read, 100, where={"response_status_code": 500})
        finally:
            store.shutdown()
            client.delete(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
