"""RedisStore monitoring against the local Redis: queries, summary, retention.

Each test has a stream of its own (``unique_name``), deleted afterwards with
its writers' fence keys. Old data is simulated the way only a raw ``XADD``
can: entries with explicit ids (the server's write time, in ms) from days ago.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import helpers
import pytest
import redis

from flask_traffic import Traffic
from flask_traffic.query import iso_text
from flask_traffic.stores import JSONStore, RedisStore, Store

UTC = timezone.utc
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


#: The shared test app, its records written within 50 ms of a request.
make_app = functools.partial(helpers.make_app, schedule_delay=0.05)


class CountingRedis(redis.Redis):
    """A real client that counts the stream entries the server sends back."""

    entries_returned = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        reply = super().execute_command(*args, **options)
        if args and args[0] in ("XRANGE", "XREVRANGE"):
            self.entries_returned += len(reply)
        return reply


@pytest.fixture
def server(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the shared Redis, to write raw entries and look at the stream."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def stream(server: redis.Redis, unique_name: str) -> Iterator[str]:
    """A stream key of this test's own, deleted afterwards with its fence and rollup keys."""
    yield unique_name
    fences = list(server.scan_iter(f"{unique_name}:*"))
    server.delete(unique_name, *fences)


def put_old(server: redis.Redis, stream: str, moment: datetime, count: int, tag: str) -> None:
    """``count`` entries written at ``moment`` (their explicit id), for requests
    that started then, as a store running at that time would have left them."""
    ms = int(moment.timestamp() * 1000)
    date = iso_text(moment)
    with server.pipeline(transaction=False) as pipe:
        for n in range(count):
            fields = {"request_date": date, "request_path": f"/{tag}/{n}"}
            pipe.xadd(stream, fields, id=f"{ms}-{n}")  # type: ignore[arg-type]
        pipe.execute()


def put_late(server: redis.Redis, stream: str, request_date: datetime, path: str) -> None:
    """An entry written now (the server's id) for a request that started at
    ``request_date``: what a batch retried after a long outage leaves."""
    server.xadd(stream, {"request_date": iso_text(request_date), "request_path": path})


def paths(rows: list[dict[str, Any]]) -> list[str]:
    return [row["request_path"] for row in rows]


def pause() -> datetime:
    """Now, a little apart from the requests before and after it."""
    time.sleep(0.003)
    moment = datetime.now(UTC)
    time.sleep(0.003)
    return moment


# Constructing.


def test_name_and_limits_are_taken(redis_url: str, stream: str, stores: list[Store]) -> None:
    store = RedisStore(
        event_name=stream,
        url=redis_url,
        name="events",
        max_age=timedelta(days=7),
        max_records=10_000,
    )
    stores.append(store)
    assert store.name == "events"
    assert store.max_age == timedelta(days=7)
    assert store.max_records == 10_000
    assert store.supports_retention
    with pytest.raises(ValueError, match="max_records must be a positive integer"):
        RedisStore(event_name=stream, url=redis_url, max_records=0)
    with pytest.raises(ValueError, match=r"max_age must be a positive datetime\.timedelta"):
        RedisStore(event_name=stream, url=redis_url, max_age=3600)  # type: ignore[arg-type]


# Reading with since, until and where.


def test_read_with_since_until_and_where_equals_the_json_store(
    tmp_path: Path, redis_url: str, stream: str, stores: list[Store]
) -> None:
    store = RedisStore(event_name=stream, url=redis_url)
    reference = JSONStore(location=tmp_path)
    stores += [store, reference]
    app = make_app(tmp_path)
    Traffic(app, stores=[store, reference])
    client = app.test_client()
    for n in range(5):
        client.get(f"/item/{n}")
    start = pause()
    client.get("/missing")
    client.get("/forbidden", headers={"Referer": "https://example.com/"})
    client.get("/item/5")
    end = pause()
    client.get("/missing/again")
    client.get("/item/6")

    queries: list[dict[str, Any]] = [
        {"since": start},
        {"since": iso_text(start)},
        {"until": end},
        {"until": end.isoformat().replace("+00:00", "Z")},
        {"since": start, "until": end},
        {"since": start.replace(tzinfo=None), "until": iso_text(end)},
        {"where": {"response_status_code": 404}},
        {"where": {"response_status_code": 404}, "since": start, "until": end},
        {"where": {"request_referrer": None, "request_method": "GET"}, "limit": 4},
        {"where": {"request_route": "/item/<int:n>"}, "limit": 2},
        {"since": start, "limit": 1},
        {"until": start, "where": {"response_status_code": 500}},
    ]
    for query in queries:
        assert store.read(**query) == reference.read(**query), query
    assert paths(store.read(since=start, until=end)) == ["/item/5", "/forbidden", "/missing"]
    assert paths(store.read(since=start, where={"response_status_code": 404})) == [
        "/missing/again",
        "/missing",
    ]
    assert paths(store.read(until=start, limit=2)) == ["/item/4", "/item/3"]
    assert store.read(until=start, where={"response_status_code": 500}) == []


def test_since_is_pushed_down_as_an_id_range(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    put_old(server, stream, datetime.now(UTC) - timedelta(days=2), 3000, "old")
    spy = CountingRedis.from_url(redis_url)
    try:
        # The raw path: with rollups the summary reads the buckets instead.
        store = RedisStore(event_name=stream, client=spy, rollups=False)
        stores.append(store)
        app = make_app(tmp_path)
        Traffic(app, stores=store)
        client = app.test_client()
        for n in range(20):
            client.get(f"/item/{n}")
        since = datetime.now(UTC) - timedelta(hours=1)
        store.flush()

        spy.entries_returned = 0
        rows = store.read(since=since)
        assert paths(rows) == [f"/item/{n}" for n in range(19, -1, -1)]
        # Only the last hour's entries came over the wire, not the 3000 before.
        assert spy.entries_returned == 20

        spy.entries_returned = 0
        assert store.summary(since=since)["total"] == 20
        assert spy.entries_returned == 20

        # Without since, every entry is read: the count above is the bound's doing.
        spy.entries_returned = 0
        assert store.summary()["total"] == 3020
        assert spy.entries_returned == 3020
    finally:
        spy.close()


def test_until_is_tested_on_entries_written_late(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    # A batch retried after an outage is written long after its requests:
    # its entries' ids are new, their request_date is not.
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    Traffic(make_app(tmp_path), stores=store)
    now = datetime.now(UTC)
    put_old(server, stream, now - timedelta(hours=3), 1, "written-then")
    put_late(server, stream, now - timedelta(hours=2), "/written-late")
    put_late(server, stream, now - timedelta(minutes=1), "/recent")
    assert paths(store.read(until=now - timedelta(minutes=30))) == [
        "/written-late",
        "/written-then/0",
    ]
    assert paths(store.read(since=now - timedelta(hours=2, minutes=1))) == [
        "/recent",
        "/written-late",
    ]


def test_scan_oldest_first_across_chunks(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    Traffic(make_app(tmp_path), stores=store)
    start = datetime.now(UTC) - timedelta(minutes=10)
    # 5000 entries over 5000 ms: more than one XRANGE chunk.
    for second in range(5):
        put_old(server, stream, start + timedelta(seconds=second), 1000, f"s{second}")
    expected = [f"/s{second}/{n}" for second in range(5) for n in range(1000)]

    oldest_first = paths(list(store.scan(store.query(), oldest_first=True)))
    newest_first = paths(list(store.scan(store.query())))
    assert oldest_first == expected
    assert newest_first == expected[::-1]
    # A small limit starts with a small chunk and goes on as far as asked.
    assert paths(list(store.scan(store.query(3)))) == expected[::-1]
    since = start + timedelta(seconds=3)
    assert paths(list(store.scan(store.query(since=since), oldest_first=True))) == expected[3000:]
    assert paths(store.read(2, since=since)) == ["/s4/999", "/s4/998"]
    window = store.query(since=start + timedelta(seconds=1), until=start + timedelta(seconds=2))
    assert paths(list(store.scan(window, oldest_first=True))) == expected[1000:2000]


def test_chunks_go_on_across_the_edges_of_stream_ids(
    redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    # The next chunk starts right after (before) the last id read, counted
    # from it: ids of one millisecond up to the largest sequence number, then
    # the next millisecond's.
    ids = ["1-1", f"1-{2**64 - 1}", "2-0", "2-1", "3-0"]
    for entry_id in ids:
        server.xadd(stream, {"request_path": entry_id}, id=entry_id)
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    for limit in (1, 2, 3, 10):
        newest_first = paths(list(store.scan(store.query(limit))))
        oldest_first = paths(list(store.scan(store.query(limit), oldest_first=True)))
        assert newest_first == ids[::-1], limit
        assert oldest_first == ids, limit
        assert paths(store.read(limit)) == ids[::-1][:limit]


# Summary.


def test_summary_equals_the_json_store(
    tmp_path: Path,
    redis_url: str,
    stream: str,
    stores: list[Store],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The records' summary: rollups round windows to minutes (see
    # test_redis_rollups.py for theirs).
    store = RedisStore(event_name=stream, url=redis_url, rollups=False)
    reference = JSONStore(location=tmp_path, rollups=False)
    stores += [store, reference]
    app = make_app(tmp_path)
    Traffic(app, stores=[store, reference])
    client = app.test_client()
    with caplog.at_level(logging.CRITICAL, logger="flask.app"):
        for n in range(30):
            agent = (CHROME, FIREFOX, "curl/8.5.0")[n % 3]
            client.get(f"/item/{n % 4}", headers={"User-Agent": agent})
        start = pause()
        for n in range(12):
            client.get("/boom", headers={"User-Agent": CHROME, "Referer": "https://a.example/"})
            client.get(f"/missing/{n % 2}", environ_overrides={"REMOTE_ADDR": f"10.0.0.{n}"})
            client.get("/forbidden", headers={"User-Agent": FIREFOX})
        end = pause()
        client.post("/")
    got = store.summary()
    assert got == reference.summary()
    assert got["total"] == 67
    assert got["errors"] == 12
    assert got["status_classes"] == {"1xx": 0, "2xx": 30, "3xx": 0, "4xx": 25, "5xx": 12}
    for since, until in ((start, None), (None, end), (start, end), (iso_text(start), end)):
        assert store.summary(since, until) == reference.summary(since, until)
    assert store.summary(start, end)["total"] == 36


# Retention.


def test_retention_by_age_removes_old_entries_and_keeps_the_rest(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    now = datetime.now(UTC)
    put_old(server, stream, now - timedelta(days=3), 1000, "old")
    # Written late: a new id, for a request older than the limit, and one
    # just inside it.
    put_late(server, stream, now - timedelta(days=2), "/late-outside")
    put_late(server, stream, now - timedelta(hours=23), "/late-inside")
    # Raw retention: rollups would go on counting the entries max_age removes.
    store = RedisStore(event_name=stream, url=redis_url, max_age=timedelta(days=1), rollups=False)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    client = app.test_client()
    for n in range(50):
        client.get(f"/item/{n}")

    # The worker prunes after its first batch already; prune() makes sure.
    store.prune()
    # Whole stream nodes only: the old entries sharing one with newer
    # entries may stay a while, nothing newer goes.
    removed = 1052 - server.xlen(stream)
    assert 900 <= removed <= 1000
    kept = [fields[b"request_path"].decode() for _, fields in server.xrange(stream)]
    assert kept[-52:] == ["/late-outside", "/late-inside"] + [f"/item/{n}" for n in range(50)]
    # What is left of old requests is not read, nor counted.
    expected = [f"/item/{n}" for n in range(49, -1, -1)] + ["/late-inside"]
    assert paths(store.read()) == expected
    assert paths(store.read(since=now - timedelta(days=5))) == expected
    assert paths(store.read(2, where={"request_method": None})) == ["/late-inside"]
    assert store.summary()["total"] == 51
    # Pruning again finds nothing more to remove.
    assert store.prune() == 0


def test_retain_with_an_explicit_cutoff(
    redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    now = datetime.now(UTC)
    put_old(server, stream, now - timedelta(days=10), 500, "ten")
    put_old(server, stream, now - timedelta(days=5), 500, "five")
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    assert store.retain(now - timedelta(days=20), None) == 0
    removed = store.retain(now - timedelta(days=7), None)
    assert 400 <= removed <= 500
    left = [fields[b"request_path"].decode() for _, fields in server.xrange(stream)]
    assert left[-500:] == [f"/five/{n}" for n in range(500)]
    assert len(left) == 1000 - removed
    # Without max_age, entries of older requests are still read.
    assert len(store.read(2000)) == len(left)


def test_a_large_backlog_goes_in_one_run(
    redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    # One XTRIM "~" removes at most 100 nodes' worth (10,000 entries): the
    # store repeats it until nothing more goes.
    now = datetime.now(UTC)
    put_old(server, stream, now - timedelta(days=3), 25_000, "old")
    put_old(server, stream, now - timedelta(hours=1), 25_000, "new")
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    removed = store.retain(now - timedelta(days=1), None)
    assert 24_900 <= removed <= 25_000
    length = server.xlen(stream)
    assert length == 50_000 - removed
    removed = store.retain(None, 1000)
    assert 1000 <= server.xlen(stream) <= 1100
    assert removed == length - server.xlen(stream)
    assert paths(store.read(1000)) == [f"/new/{n}" for n in range(24_999, 23_999, -1)]


def test_retention_by_count_keeps_at_least_the_newest(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    store = RedisStore(event_name=stream, url=redis_url, max_records=150)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    client = app.test_client()
    for n in range(1000):
        client.get(f"/item/{n}")
    store.prune()
    length = server.xlen(stream)
    # "MAXLEN ~" removes whole nodes: at least the newest 150 stay, and
    # less than a node more.
    assert 150 <= length < 250
    assert paths(store.read(150)) == [f"/item/{n}" for n in range(999, 849, -1)]
    assert store.prune() == 0


def test_retention_races_with_writers_and_loses_nothing_inside_the_limits(
    tmp_path: Path,
    redis_url: str,
    server: redis.Redis,
    stream: str,
    stores: list[Store],
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = 300
    old = 2000
    now = datetime.now(UTC)
    put_old(server, stream, now - timedelta(days=2), old, "old")
    boundary = f"({int((now - timedelta(days=1)).timestamp() * 1000)}"
    # Two apps on one stream, as two gunicorn workers: one also prunes,
    # after nearly every batch, while the other writes.
    # Rollups off: this is the stream's own retention (with them, each pass
    # folds first, and trims less often under this load).
    trimmer = RedisStore(
        event_name=stream,
        url=redis_url,
        max_records=limit,
        max_age=timedelta(days=1),
        rollups=False,
    )
    writer = RedisStore(event_name=stream, url=redis_url, rollups=False)
    stores += [trimmer, writer]
    apps = {"a": make_app(tmp_path, "trimming_app"), "b": make_app(tmp_path, "writing_app")}
    for app in apps.values():
        app.config.update(TRAFFIC_RETENTION_INTERVAL=0.005, TRAFFIC_SCHEDULE_DELAY=0.002)
    Traffic(apps["a"], stores=trimmer)
    Traffic(apps["b"], stores=writer)
    per_thread = 1500
    stop = threading.Event()
    violations: list[str] = []
    checks = 0

    def send(tag: str) -> None:
        client = apps[tag].test_client()
        deadline = time.monotonic() + 60
        for n in range(per_thread):
            if time.monotonic() > deadline:
                break
            client.get(f"/echo/{tag}/{n}")
            if n % 5 == 4:
                # The worker prunes when its queue is empty, between batches.
                time.sleep(0.001)

    def check() -> None:
        # The newest `limit` entries of requests (not the old ones) must be
        # there at every moment, whatever the trims and writes in between.
        nonlocal checks
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            with server.pipeline(transaction=True) as pipe:
                pipe.xinfo_stream(stream)
                pipe.xrevrange(stream, "+", boundary, count=limit)
                info, newest = pipe.execute()
            added = info["entries-added"] - old
            if len(newest) < min(limit, added):
                violations.append(f"{len(newest)} of the newest {min(limit, added)} entries")
            checks += 1
            time.sleep(0.001)

    with caplog.at_level(logging.INFO, logger="flask_traffic"):
        senders = [threading.Thread(target=send, args=(tag,)) for tag in apps]
        checker = threading.Thread(target=check)
        for thread in (*senders, checker):
            thread.start()
        for thread in senders:
            thread.join(90)
        during = sum("retention removed" in r.getMessage() for r in caplog.records)
        writer.flush()
        trimmer.prune()
        stop.set()
        checker.join(90)

    assert violations == []
    assert checks > 10
    # The worker trimmed the stream again and again while both wrote.
    assert during >= 3
    kept = [fields[b"request_path"].decode() for _, fields in server.xrange(stream)]
    assert limit <= len(kept) < 2 * limit
    assert not any(path.startswith("/old/") for path in kept)
    # Trims remove from the old end only: each writer's entries left are
    # its latest ones, without a gap, and its last one is there.
    for tag in apps:
        numbers = [int(path.rsplit("/", 1)[1]) for path in kept if path.startswith(f"/{tag}/")]
        assert numbers == list(range(per_thread - len(numbers), per_thread))
    assert server.xinfo_stream(stream)["entries-added"] == old + 2 * per_thread
