"""How long ``summary()`` takes from rollups, against the records, on a big store.

    python tests/benchmarks/bench_rollups.py [--records 1000000] [--stores sqlite,redis] [--raw]
        [--breakdown]

Fills each store kind with ``--records`` records over the last 90 days
(about 200 routes, 10,000 paths, 1,000 referrers, 50 browsers on 5
platforms, 500,000 visitors, 2 % 4xx and 0.5 % 5xx answers) through the
store's own ``export()`` in batches of 5,000, folds them into its rollups
(the time of ``flask traffic rollup --rebuild``: the same work), then times
``summary()`` of the last 24 hours, 7, 30 and 90 days (best of
``--repeat``), from the rollups and, with ``--raw``, from the records (a
second store on the same table with rollups off). With ``--breakdown``,
the dashboard's ``api/breakdown`` of the same windows is timed too (its
figures from the rollups, its errors from the failed records), and with
``--raw`` against the breakdown of every record (its figures compared with
the records' of the window the rollups counted). The servers are the test
suite's local ones; tables are dropped at the end. With ``--keep FOLDER``
every store is kept: the SQLite and JSON Lines files in the folder,
PostgreSQL's and MariaDB's tables in their databases and Redis's stream
and rollup keys in it (the folder names them), and a later run with the
same ``--keep`` and ``--records`` times them again without filling them
(10 million records take a while to write), or builds their rollups when
the run that wrote them stopped before. A benchmark, not a test: nothing
asserts; the exit status says whether the two summaries (and breakdowns)
agreed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
import typing as t
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flask import Flask

from flask_traffic import Traffic, TrafficRecord
from flask_traffic.stores import SQLStore, Store

UTC = timezone.utc
DAYS = 90
URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}
REDIS_URL = "redis://127.0.0.1:6379/0"
PLATFORMS = (
    "Windows NT 10.0; Win64; x64",
    "Macintosh; Intel Mac OS X 10_15_7",
    "X11; Linux x86_64",
    "Linux; Android 14; Pixel 8",
    "iPhone; CPU iPhone OS 17_5 like Mac OS X",
)
WINDOWS = {"24 h": 1, "7 d": 7, "30 d": 30, "90 d": 90}


class Traffic90:
    """Records of 90 days of a site, made the same for every store."""

    def __init__(self, seed: int = 13) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.routes = [f"/r{n}/<int:id>" for n in range(200)]
        self.paths = [f"/r{n % 200}/{n}" for n in range(10_000)]
        self.referrers = [f"https://ref{n}.example/" for n in range(1_000)]
        self.agents = [
            f"Mozilla/5.0 ({PLATFORMS[n % 5]}) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{80 + n}.0.0.0 Safari/537.36"
            for n in range(50)
        ]
        self.end = datetime.now(UTC)

    def batch(self, count: int, done: float, share: float) -> list[TrafficRecord]:
        """``count`` records of the ``share`` of the 90 days that starts
        ``done`` (0 to 1) of the way through them, in time order, as a site
        writes them."""
        rng = self.rng
        span = DAYS * 86_400 * 10**9
        start_ns = int(self.end.timestamp() * 1e9) - span + int(done * span)
        times = sorted(start_ns + rng.randrange(max(1, int(share * span))) for _ in range(count))
        made = []
        for moment in times:
            n = rng.randrange(10_000)
            draw = rng.random()
            status = 500 if draw < 0.005 else 404 if draw < 0.025 else 200
            made.append(
                TrafficRecord(
                    moment,
                    int(rng.lognormvariate(16.5, 0.8)),
                    "POST" if n % 10 == 0 else "GET",
                    "https",
                    "example.com",
                    None,
                    self.paths[n],
                    "",
                    "HTTP/1.1",
                    "view",
                    self.routes[n % 200],
                    f"10.{rng.randrange(8)}.{rng.randrange(250)}.{rng.randrange(250)}",
                    rng.choice(self.referrers) if rng.random() < 0.5 else None,
                    self.agents[int(rng.triangular(0, 49.99, 45))],
                    status,
                    "1234",
                    "text/html",
                )
            )
        return made


@contextlib.contextmanager
def sql_pair(kind: str, folder: Path, table: str, keep: bool) -> Iterator[tuple[Store, Store]]:
    """A store keeping rollups and one without, on ``table``; dropped at the
    end unless ``keep``."""
    options: dict[str, t.Any] = {"database_table_name": table, "sync": True}
    if kind != "sqlite":
        options["database_url"] = URLS[kind]
    rolled = SQLStore(rollups=True, name="rolled", **options)
    raw = SQLStore(name="raw", rollups=False, **options)
    for store in (rolled, raw):
        Traffic(Flask("bench", instance_path=str(folder)), stores=store)
    try:
        yield rolled, raw
    finally:
        engine = rolled.database_engine
        if kind != "sqlite" and engine is not None and not keep:
            import sqlalchemy as sa

            with engine.begin() as connection:
                for suffix in ("_rollup", "_rollup_bucket", "_rollup_state", "_spool_fence", ""):
                    connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}{suffix}"))
        for store in (rolled, raw):
            store.shutdown()


@contextlib.contextmanager
def redis_pair(folder: Path, key: str, keep: bool) -> Iterator[tuple[Store, Store]]:
    """The stream ``key``, read with rollups and without; deleted at the
    end unless ``keep``."""
    import redis

    from flask_traffic.stores import RedisStore

    rolled = RedisStore(event_name=key, url=REDIS_URL, rollups=True, sync=True, name="rolled")
    raw = RedisStore(event_name=key, url=REDIS_URL, sync=True, name="raw", rollups=False)
    for store in (rolled, raw):
        Traffic(Flask("bench", instance_path=str(folder)), stores=store)
    try:
        yield rolled, raw
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for name in () if keep else client.scan_iter(f"{key}*", count=1000):
            client.delete(name)
        for store in (rolled, raw):
            store.shutdown()


@contextlib.contextmanager
def jsonl_pair(folder: Path) -> Iterator[tuple[Store, Store]]:
    """A JSON Lines file in ``folder``, read with rollups and without."""
    from flask_traffic.stores import JSONStore

    rolled = JSONStore(location=folder, rollups=True, sync=True, name="rolled")
    raw = JSONStore(location=folder, sync=True, name="raw", rollups=False)
    for store in (rolled, raw):
        Traffic(Flask("bench", instance_path=str(folder)), stores=store)
    try:
        yield rolled, raw
    finally:
        for store in (rolled, raw):
            store.shutdown()


def store_pair(
    kind: str, folder: Path, table: str, keep: bool
) -> contextlib.AbstractContextManager[tuple[Store, Store]]:
    if kind == "redis":
        return redis_pair(folder, table, keep)
    if kind == "jsonl":
        return jsonl_pair(folder)
    return sql_pair(kind, folder, table, keep)


def best(seconds: t.Callable[..., float], repeat: int) -> float:
    return min(seconds() for _ in range(repeat))


def timed_summary(store: Store, since: datetime) -> tuple[float, dict[str, t.Any]]:
    start = time.perf_counter()
    found = store.summary(since)
    return time.perf_counter() - start, found


def timed_breakdown(
    store: Store, since: datetime | None, until: datetime | None = None
) -> tuple[float, dict[str, t.Any]]:
    """The time of the dashboard's ``api/breakdown`` of the window, and its answer."""
    from flask_traffic.dashboard._figures import breakdown
    from flask_traffic.dashboard._params import View

    start = time.perf_counter()
    found = breakdown(store, View(since=since, until=until))
    return time.perf_counter() - start, found


def breakdown_line(rolled: Store, raw: Store, since: datetime, repeat: int, compare: bool) -> str:
    """The breakdown's time from the rollups and, with ``compare``, from
    every record; whether the figures agree with the records' of the
    window the rollups counted."""
    seconds = best(lambda: timed_breakdown(rolled, since)[0], repeat)
    _, found = timed_breakdown(rolled, since)
    # Older versions say nothing of their source: they read the records.
    source = found.pop("source", {"source": "records"})
    line = f"             breakdown {seconds * 1000:8.1f} ms from {source['source']}"
    if not compare:
        return line
    raw_seconds = best(lambda: timed_breakdown(raw, since)[0], repeat)
    counted = since if source.get("since") is None else datetime.fromisoformat(source["since"])
    _, want = timed_breakdown(raw, counted)
    want.pop("source", None)
    same = found == want
    return line + (
        f", records {raw_seconds * 1000:9.1f} ms ({'same figures' if same else 'FIGURES DIFFER'})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--stores", default="sqlite,postgresql,mariadb,redis,jsonl")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--raw", action="store_true", help="time the raw summaries too")
    parser.add_argument(
        "--keep", type=Path, help="keep the stores (the state of a database's or Redis's here)"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="time the dashboard's api/breakdown too"
    )
    args = parser.parse_args(argv)
    agreed = True
    for kind in args.stores.split(","):
        site = Traffic90()
        with contextlib.ExitStack() as stack:
            if args.keep is not None:
                folder = args.keep / f"{kind}-{args.records}"
                folder.mkdir(parents=True, exist_ok=True)
            else:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            kept = folder / "kept.json"
            state = json.loads(kept.read_text()) if kept.exists() else {}
            table = state.get("table", f"bench_{uuid.uuid4().hex[:10]}")
            keep = args.keep is not None
            rolled, raw = stack.enter_context(store_pair(kind, folder, table, keep))
            if state:
                site.end = datetime.fromisoformat(state["end"])
                print(f"{kind}: {args.records:,} records kept in {folder}", flush=True)
            else:
                write(kind, site, rolled, args.records)
            if args.keep is not None:
                # Written: a run stopped while folding goes on from here.
                state.update(table=table, end=site.end.isoformat())
                kept.write_text(json.dumps(state))
            if not state.get("folded"):
                build(kind, rolled)
                if args.keep is not None:
                    kept.write_text(json.dumps({**state, "folded": True}))
            agreed = time_windows(site, rolled, raw, args) and agreed
    return 0 if agreed else 1


def write(kind: str, site: Traffic90, rolled: Store, records: int) -> None:
    """Write ``records`` of ``site`` to ``rolled``."""
    start = time.perf_counter()
    left = records
    while left:
        count = min(left, 5_000)
        done = 1 - left / records
        rolled.export(site.batch(count, done, count / records))
        left -= count
    filled = time.perf_counter() - start
    print(f"{kind}: {records:,} records written in {filled:.0f} s ({records / filled:,.0f}/s)")


def build(kind: str, rolled: Store) -> None:
    """Build the rollups of what ``rolled`` holds, as ``--rebuild`` does."""
    start = time.perf_counter()
    # On Redis the first fold is the same work as a rebuild.
    folded = rolled.fold() if kind == "redis" else rolled.rebuild_rollups()
    if kind in ("postgresql", "mariadb"):
        # A fold only takes row ids seen 10 s before (ids are taken at
        # insert, and may commit out of order): the first one notes
        # the newest id, the next one, 10 s on, folds up to it.
        rolled.fold()
        time.sleep(10.5)
        start = time.perf_counter()
        folded += rolled.fold()
    rebuilt = time.perf_counter() - start
    print(
        f"{kind}: rollups built from {folded:,} records in {rebuilt:.1f} s "
        f"({folded / rebuilt:,.0f}/s)",
        flush=True,
    )


def time_windows(site: Traffic90, rolled: Store, raw: Store, args: argparse.Namespace) -> bool:
    """Print the time of each window's summary (and breakdown, with
    ``--breakdown``); whether the counts agreed."""
    agreed = True
    with_raw, repeat = args.raw, args.repeat
    for label, days in WINDOWS.items():
        since = site.end - timedelta(days=days)
        seconds = best(lambda at=since: timed_summary(rolled, at)[0], repeat)
        line = f"  last {label:>4}: rollups {seconds * 1000:8.1f} ms"
        if with_raw:
            _, found = timed_summary(rolled, since)
            # The records of the window the rollups counted (its
            # edges rounded to hours), against the records asked.
            source = found["source"]
            counted = datetime.fromisoformat(source["since"])
            _, raw_found = timed_summary(raw, counted)
            raw_seconds, _ = timed_summary(raw, since)
            skipped = {"source", "unique_visitors", "since", "until"}
            skipped.update(source["approximate"])
            same = all(found[key] == raw_found[key] for key in found if key not in skipped)
            agreed = agreed and same
            line += (
                f", records {raw_seconds * 1000:9.1f} ms"
                f" ({'same counts' if same else 'COUNTS DIFFER'}; visitors "
                f"{found['unique_visitors']:,} against {raw_found['unique_visitors']:,})"
            )
        print(line, flush=True)
        if args.breakdown:
            line = breakdown_line(rolled, raw, since, repeat, with_raw)
            agreed = agreed and "DIFFER" not in line
            print(line, flush=True)
    return agreed


if __name__ == "__main__":
    sys.exit(main())
