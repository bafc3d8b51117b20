"""RedisStore's rollups against the shared local Redis: a summary of the
folded buckets and the unfolded tail equals the summary of every entry."""

from __future__ import annotations

import random
import threading
import typing as t
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import redis
from conftest import service_url
from flask import Flask
from helpers import unique_name

from flask_traffic import LogPolicy
from flask_traffic.record import TrafficRecord
from flask_traffic.rollups import RollupDelta, RollupRetention, site_secret, visitor_hash
from flask_traffic.stores import RedisStore
from flask_traffic.stores._rolluphistograms import decode

pytestmark = pytest.mark.usefixtures("redis_url")

UTC = timezone.utc
# Three whole days, ending at least a day ago: nothing now lands in them.
BASE = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=4)
ROUTES = ["/", "/item/<int:n>", "/search", None]
AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
]


def make_record(rng: random.Random, moment: datetime, path: str | None = None) -> TrafficRecord:
    route = rng.choice(ROUTES)
    return TrafficRecord(
        start_time_ns=int(moment.timestamp() * 1_000_000) * 1000,
        duration_ns=int(rng.lognormvariate(2.5, 1.0) * 1_000_000),
        request_method="GET",
        request_path=path or f"/p{rng.randrange(30)}",
        request_route=route,
        request_remote_address=f"10.0.0.{rng.randrange(10)}",
        request_referrer=rng.choice([None, "https://a.example/", "https://b.example/"]),
        request_user_agent=rng.choice(AGENTS),
        response_status_code=rng.choice([200, 200, 200, 301, 404, 500]),
    )


def spread(rng: random.Random, start: datetime, hours: int, per_hour: int) -> list[TrafficRecord]:
    records = []
    for hour in range(hours):
        for _ in range(per_hour):
            offset = timedelta(hours=hour, seconds=rng.uniform(0, 3600))
            records.append(make_record(rng, start + offset))
    return records


def cleanup(url: str, key: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.delete(key, *client.scan_iter(f"{key}:*", count=1000))


def sampled() -> LogPolicy:
    # 5xx responses are always kept, so weights are mixed: 1 and 1/0.3.
    return LogPolicy(sample_rate=0.3)


@pytest.fixture
def server(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the shared Redis, to look at what the store wrote."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def key(redis_url: str) -> Iterator[str]:
    name = unique_name()
    yield name
    cleanup(redis_url, name)


@pytest.fixture(scope="module")
def folded() -> Iterator[tuple[RedisStore, RedisStore]]:
    """Three days of sampled traffic, folded; a store with rollups and one without."""
    redis_url = service_url("redis")
    name = unique_name()
    store = RedisStore(rollups=True, url=redis_url, event_name=name, log_policy=sampled())
    raw = RedisStore(url=redis_url, event_name=name, log_policy=sampled(), rollups=False)
    records = spread(random.Random(13), BASE, 72, 100)
    for index in range(0, len(records), 1000):
        store.export(records[index : index + 1000])
    assert store.fold() == len(records)
    assert store.fold() == 0
    yield store, raw
    cleanup(redis_url, name)


def counted_window(rolled: dict[str, t.Any]) -> tuple[datetime | None, datetime | None]:
    """The window a rollup summary counted (its edges rounded out to hours)."""
    source = rolled["source"]
    return tuple(  # type: ignore[return-value]
        None if text is None else datetime.fromisoformat(text)
        for text in (source["since"], source["until"])
    )


def assert_same(rolled: dict[str, t.Any], raw_store: RedisStore) -> dict[str, t.Any]:
    """``rolled`` equals the entries' summary of the window it counted (of
    the same window, from the records, when it was counted per minute), but
    for visitors: within 10 % or one (a sketch's error is relative). The
    records' summary is returned."""
    source = rolled.pop("source")
    if source["source"] == "records":
        assert rolled["bucket"] == "minute"
        raw = raw_store.summary(
            rolled["since"] and datetime.fromisoformat(rolled["since"]),
            rolled["until"] and datetime.fromisoformat(rolled["until"]),
        )
    else:
        assert source["source"] == "rollups"
        assert set(source) == {
            "source",
            "granularity",
            "raw_records",
            "since",
            "until",
            "approximate",
        }
        rolled["source"] = source
        raw = raw_store.summary(*counted_window(rolled))
        del rolled["source"]
    assert raw.pop("source") == {"source": "records"}
    visitors, expected = rolled.pop("unique_visitors"), raw.pop("unique_visitors")
    if source["source"] == "records":
        assert visitors == expected
    else:
        assert visitors == pytest.approx(expected, rel=0.1, abs=1)
    assert rolled == raw
    rolled["source"] = source
    return raw


DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
WINDOWS = {
    "days": (BASE, BASE + 3 * DAY),
    "one day": (BASE + DAY, BASE + 2 * DAY),
    "hours": (BASE + 5 * HOUR, BASE + 53 * HOUR),
    "minutes": (BASE + 10 * HOUR + 17 * MINUTE, BASE + 58 * HOUR + 43 * MINUTE),
    "a few hours": (BASE + 30 * HOUR + 2 * MINUTE, BASE + 33 * HOUR + 29 * MINUTE),
    "short": (BASE + 30 * HOUR + 2 * MINUTE, BASE + 31 * HOUR + 29 * MINUTE),
    "one bucket": (BASE + 30 * HOUR + 7 * MINUTE, BASE + 30 * HOUR + 8 * MINUTE),
    "seconds": (
        BASE + 30 * HOUR + 7 * MINUTE + timedelta(seconds=0.5),
        BASE + 30 * HOUR + 7 * MINUTE + timedelta(seconds=59.5),
    ),
    "empty": (BASE - 2 * DAY, BASE - DAY + 3 * HOUR),
    "around": (BASE - 5 * HOUR, BASE + 3 * DAY + 5 * HOUR),
}
#: Windows of up to 2 hours: counted per minute, so from the entries.
PER_MINUTE = {"short", "one bucket", "seconds"}


@pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
def test_rollup_summary_equals_the_raw_summary_of_its_window(
    folded: tuple[RedisStore, RedisStore], window: str
) -> None:
    store, raw = folded
    since, until = WINDOWS[window]
    rolled = store.summary(since, until)
    if window != "empty":
        assert rolled["total"] > 0
        assert rolled["sampled"]
        assert rolled["routes"]
        assert rolled["top_paths"]
        assert rolled["requests_per_bucket"]
    if window in PER_MINUTE:
        assert rolled["source"] == {"source": "records"}
        assert rolled["since"] == since.isoformat(timespec="microseconds")
    else:
        source = rolled["source"]
        assert source["raw_records"] == 0
        assert source["approximate"] == []
        counted = counted_window(rolled)
        assert counted[0] is not None
        assert counted[1] is not None
        assert counted[0] <= since < until <= counted[1]
        # Rounded out to the summary's bucket: an hour, or a day.
        step = DAY if rolled["bucket"] == "day" else HOUR
        assert since - counted[0] < step > counted[1] - until
        assert counted[0].minute == counted[1].minute == 0
        assert rolled["bucket"] != "day" or counted[0].hour == counted[1].hour == 0
        assert rolled["since"] == source["since"]
        assert rolled["until"] == source["until"]
        # The finest piece read: the summary's own bucket (hours up to 3
        # days, days beyond); nothing folded in an empty window.
        assert source["granularity"] == (None if window == "empty" else rolled["bucket"])
    assert_same(rolled, raw)


def test_windows_are_rounded_out_to_hours(folded: tuple[RedisStore, RedisStore]) -> None:
    store, raw = folded
    since = BASE + 10 * HOUR
    until = BASE + 21 * HOUR
    rolled = store.summary(since + 17 * MINUTE + timedelta(seconds=20), until - 17 * MINUTE)
    assert rolled["source"]["granularity"] == "hour"
    assert rolled["since"] == since.isoformat(timespec="microseconds")
    assert rolled["until"] == until.isoformat(timespec="microseconds")
    assert counted_window(rolled) == (since, until)
    assert_same(rolled, raw)


def test_the_tail_after_the_last_fold_is_counted_once(redis_url: str, key: str) -> None:
    store = RedisStore(rollups=True, url=redis_url, event_name=key, log_policy=sampled())
    raw = RedisStore(url=redis_url, event_name=key, log_policy=sampled(), rollups=False)
    rng = random.Random(5)
    store.export(spread(rng, BASE, 30, 40))
    assert store.fold() == 1200
    # The tail: some in the folded hours, some later.
    store.export(spread(rng, BASE + 20 * HOUR, 20, 30))
    since, until = BASE, BASE + 2 * DAY
    rolled = store.summary(since, until)
    assert rolled["total"] == raw.summary(since, until)["total"]
    assert rolled["source"]["raw_records"] == 600
    assert_same(rolled, raw)
    assert store.fold() == 600
    assert store.summary(since, until)["source"]["raw_records"] == 0
    assert_same(store.summary(since, until), raw)
    # No since, no until: as the records' summary, buckets by the span.
    store.export(spread(rng, BASE + 40 * HOUR, 2, 10))
    everything = store.summary()
    assert everything["since"] is None
    assert everything["source"]["since"] is None is everything["source"]["until"]
    assert everything["source"]["raw_records"] == 20
    assert_same(everything, raw)


def test_everything_in_the_tail_before_any_fold(redis_url: str, key: str) -> None:
    store = RedisStore(rollups=True, url=redis_url, event_name=key, log_policy=sampled())
    raw = RedisStore(url=redis_url, event_name=key, log_policy=sampled(), rollups=False)
    store.export(spread(random.Random(6), BASE, 3, 20))
    # Nothing folded: the entries are read, as without rollups.
    rolled = store.summary(BASE, BASE + DAY)
    assert rolled["source"] == {"source": "records"}
    assert rolled == raw.summary(BASE, BASE + DAY)
    assert store.summary()["total"] == raw.summary()["total"] > 0


def test_two_stores_folding_at_once_count_nothing_twice(redis_url: str, key: str) -> None:
    # Two processes of a site: two stores on one stream, each folding.
    stores = [RedisStore(rollups=True, url=redis_url, event_name=key) for _ in range(2)]
    raw = RedisStore(url=redis_url, event_name=key, rollups=False)
    rng = random.Random(7)
    records = spread(rng, BASE, 48, 250)
    rng.shuffle(records)
    folded = [0, 0]
    done = threading.Event()

    def fold(number: int) -> None:
        while not done.is_set():
            folded[number] += stores[number].fold()
        folded[number] += stores[number].fold()

    threads = [threading.Thread(target=fold, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for index in range(0, len(records), 500):
        stores[index % 2].export(records[index : index + 500])
    done.set()
    for thread in threads:
        thread.join()
    assert sum(folded) == len(records)
    since, until = BASE, BASE + 2 * DAY
    rolled = stores[0].summary(since, until)
    assert rolled["total"] == len(records)
    assert_same(rolled, raw)


def test_no_minutes_and_old_hours_are_counted_from_the_entries(
    redis_url: str, key: str, server: redis.Redis
) -> None:
    store = RedisStore(
        url=redis_url,
        event_name=key,
        rollups=True,
        rollup_retention=RollupRetention(hour=timedelta(days=1)),
    )
    raw = RedisStore(url=redis_url, event_name=key, rollups=False)
    now = datetime.now(UTC)
    hour = (now - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    store.export([make_record(random.Random(8), hour + timedelta(minutes=30))])
    store.export([make_record(random.Random(9), now - timedelta(seconds=5))])
    assert store.fold() == 2
    prefix = f"{key}:flask-traffic-rollup:"
    assert not server.exists(f"{prefix}buckets:minute")
    assert not list(server.scan_iter(f"{prefix}minute:*", count=1000))
    assert server.exists(f"{prefix}hour:{hour.isoformat()}")
    assert store.rollups.retain(now) == 1
    assert not server.exists(f"{prefix}hour:{hour.isoformat()}")
    assert not server.exists(f"{prefix}visitors:hour:{hour.isoformat()}")
    assert server.zcard(f"{prefix}buckets:hour") == 1
    assert server.exists(f"{prefix}day:{hour.replace(hour=0).isoformat()}")
    # Hours past their retention: the entries of their requests are read.
    summary = store.summary(hour - HOUR, hour + 2 * HOUR)
    assert summary["total"] == 1
    assert summary["source"]["raw_records"] == 1
    assert_same(summary, raw)
    # Whole days are still summed from the day buckets.
    day = hour.replace(hour=0)
    summary = store.summary(day - 3 * DAY, day + DAY)
    assert summary["total"] == 1
    assert summary["source"]["raw_records"] == 0
    assert summary["source"]["granularity"] == "day"
    assert_same(summary, raw)


def paths_of(server: redis.Redis, bucket: str) -> dict[str, float]:
    """A bucket's top path weights, and its other weight under ``""``."""
    weights = {}
    for name, value in server.hgetall(bucket).items():
        part, _, path = name.decode().partition("\x1f")
        if part in ("top_paths", "o:top_paths"):
            weights[path] = float(value)
    return weights


def many_paths(rng: random.Random, hour: datetime) -> list[TrafficRecord]:
    """300 distinct paths in ``hour``: 10 clear leaders, 290 seen once."""
    paths = [f"/lead{i}" for i in range(10) for _ in range(60 - 4 * i)]
    paths += [f"/rare{i}" for i in range(290)]
    return [
        make_record(rng, hour + timedelta(seconds=rng.uniform(0, 3599)), path) for path in paths
    ]


def test_a_closed_hour_keeps_its_200_top_paths_and_the_rest_as_other(
    redis_url: str, key: str, server: redis.Redis
) -> None:
    store = RedisStore(rollups=True, url=redis_url, event_name=key)
    raw = RedisStore(url=redis_url, event_name=key, rollups=False)
    hour = BASE + 30 * HOUR
    made = many_paths(random.Random(12), hour)
    store.export(made)
    assert store.fold() == len(made)
    bucket = f"{key}:flask-traffic-rollup:hour:{hour.isoformat()}"
    weights = paths_of(server, bucket)
    assert len(weights) == 201
    assert weights[""] == 100
    assert sum(weights.values()) == len(made)
    assert server.hexists(bucket, "c")
    # The day is closed too: cut the same way.
    day = paths_of(server, f"{key}:flask-traffic-rollup:day:{BASE + DAY:%Y-%m-%dT%H:%M:%S+00:00}")
    assert len(day) == 201
    rolled = store.summary(hour - HOUR, hour + 2 * HOUR)
    assert rolled["total"] == len(made)
    assert rolled["source"]["approximate"] == ["top_paths"]
    expected = raw.summary(hour - HOUR, hour + 2 * HOUR)
    assert rolled["top_paths"][:10] == expected["top_paths"][:10]
    assert rolled["top_paths"][0] == {"value": "/lead0", "count": 60}
    for name in ("top_paths", "unique_visitors", "source"):
        del rolled[name], expected[name]
    assert rolled == expected


class _Wrapped(redis.Redis):
    """A client subclass: the store leaves its commands to redis-py's own
    pipelines instead of packing them with hiredis."""


def test_redis_pys_own_pipelines_fold_the_same_buckets(
    redis_url: str, key: str, server: redis.Redis
) -> None:
    rng = random.Random(21)
    records = spread(rng, BASE, 3, 100) + many_paths(rng, BASE + HOUR)
    other = unique_name()
    try:
        with _Wrapped.from_url(redis_url) as client:
            stores = [
                RedisStore(rollups=True, url=redis_url, event_name=key),
                RedisStore(rollups=True, client=client, event_name=other),
            ]
            for store in stores:
                store.export(records)
                assert store.fold() == len(records)
            buckets = []
            for name in (key, other):
                prefix = f"{name}:flask-traffic-rollup:"
                found = {}
                for stored in server.scan_iter(f"{prefix}hour:*", count=1000):
                    found[stored.decode()[len(prefix) :]] = server.hgetall(stored)
                buckets.append(found)
            assert len(buckets[0]) == 3
            # The second hour's paths were cut to their leaders and an "other".
            cut = paths_of(
                server, f"{key}:flask-traffic-rollup:hour:{BASE + HOUR:%Y-%m-%dT%H:%M:%S+00:00}"
            )
            assert len(cut) == 201
            assert buckets[0] == buckets[1]
            assert stores[0].summary(BASE, BASE + DAY) == stores[1].summary(BASE, BASE + DAY)
    finally:
        cleanup(redis_url, other)


def test_an_hour_folded_open_is_cut_at_a_fold_after_it_closed(
    redis_url: str, key: str, server: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_traffic.stores import _redisrollups

    store = RedisStore(rollups=True, url=redis_url, event_name=key)
    hour = BASE + 40 * HOUR

    class Then(datetime):
        @classmethod
        def now(cls, tz: t.Any = None) -> Then:
            return t.cast("Then", hour + 30 * MINUTE)

    monkeypatch.setattr(_redisrollups, "datetime", Then)
    store.export(many_paths(random.Random(14), hour))
    assert store.fold() == 710
    bucket = f"{key}:flask-traffic-rollup:hour:{hour.isoformat()}"
    # Still open: every path is kept.
    assert len(paths_of(server, bucket)) == 300
    assert not server.hexists(bucket, "c")
    monkeypatch.undo()
    # Over now: the next fold cuts it, though its records are elsewhere.
    store.export([make_record(random.Random(15), BASE + 50 * HOUR)])
    assert store.fold() == 1
    weights = paths_of(server, bucket)
    assert len(weights) == 201
    assert sum(weights.values()) == 710


def test_histograms_are_one_field_a_bucket(
    folded: tuple[RedisStore, RedisStore], server: redis.Redis
) -> None:
    store, _ = folded
    hour = BASE + 30 * HOUR
    fields = server.hgetall(f"{store.event_name}:flask-traffic-rollup:hour:{hour.isoformat()}")
    assert not [name for name in fields if name.startswith(b"time\x1f")]
    histograms = list(decode(fields[b"h"].decode("ascii")))
    assert {route for route, _, _ in histograms} <= set(ROUTES)
    weight = sum(sum(weights) for _, _, weights in histograms)
    assert weight == pytest.approx(float(fields[b"total\x1f"]))


def test_retention_of_entries_keeps_what_is_not_folded(redis_url: str, key: str) -> None:
    store = RedisStore(rollups=True, url=redis_url, event_name=key, max_age=timedelta(hours=1))
    rng = random.Random(10)
    store.export([make_record(rng, BASE) for _ in range(10)])
    # Nothing folded: no entry may be trimmed, whatever the cutoff.
    assert store.rollups.below_position(b"99999999999999") == b"-"
    # retain() folds first, then trims no further than the position.
    store.retain(datetime.now(UTC), None)
    position = store.rollups.position()
    assert position is not None
    assert store.fold() == 0
    folded_ms = position.partition(b"-")[0]
    assert store.rollups.below_position(b"99999999999999") == folded_ms
    assert store.rollups.below_position(b"5") == b"5"


def test_rollups_off_or_a_where_reads_the_records(redis_url: str, key: str) -> None:
    store = RedisStore(rollups=True, url=redis_url, event_name=key)
    off = RedisStore(url=redis_url, event_name=key, rollups=False)
    store.export(spread(random.Random(11), BASE, 2, 10))
    assert store.fold() == 20
    assert off.fold() == 0
    assert off.summary(BASE, BASE + DAY)["source"] == {"source": "records"}
    assert store.summary(BASE, BASE + DAY)["source"]["source"] == "rollups"
    builder_where = store.query(None, since=BASE, where={"response_status_code": 500})
    assert not builder_where.is_everything
    # A policy without a field rollups need keeps none.
    narrow = RedisStore(
        rollups=True,
        url=redis_url,
        event_name=key,
        log_policy=LogPolicy().set_from_false(request_date=True),
    )
    assert not narrow.keeps_rollups
    assert narrow.summary(BASE, BASE + DAY)["source"] == {"source": "records"}


@pytest.mark.parametrize("value", [0, -1.0, "10", True])
def test_fold_interval_must_be_positive(redis_url: str, value: object) -> None:
    with pytest.raises(ValueError, match="fold_interval"):
        RedisStore(rollups=True, url=redis_url, event_name="x", fold_interval=value)  # type: ignore[arg-type]


def test_the_worker_folds(redis_url: str, key: str, tmp_path: t.Any) -> None:
    from flask_traffic import Traffic

    app = Flask("site", instance_path=str(tmp_path))
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 0.05
    app.add_url_rule("/", "index", lambda: "hello")
    store = RedisStore(rollups=True, url=redis_url, event_name=key, fold_interval=0.1)
    Traffic(app, stores=[store])
    try:
        client = app.test_client()
        for _ in range(5):
            client.get("/")
        store.flush(10)
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while store.rollups.position() is None and datetime.now(UTC) < deadline:
            client.get("/")
            threading.Event().wait(0.1)
        assert store.rollups.position() is not None
        # A few seconds of requests: counted per minute, from the entries.
        assert store.summary()["source"] == {"source": "records"}
        summary = store.summary(datetime.now(UTC) - 3 * HOUR)
        assert summary["source"]["source"] == "rollups"
        assert summary["total"] == len(store.read(limit=100))
    finally:
        store.shutdown()


def test_site_secret() -> None:
    app = Flask("site")
    assert len(site_secret(None, "redis://h:1/0#s")) == 32
    assert site_secret(None, "a") != site_secret(None, "b")
    assert site_secret(app, "a") == site_secret(None, "a")
    app.config["SECRET_KEY"] = "key"
    assert site_secret(app, "a") == site_secret(app, "b") != site_secret(None, "a")
    by_key = site_secret(app, "a")
    app.config["TRAFFIC_VISITOR_SECRET"] = b"visitors"
    assert site_secret(app, "a") not in (by_key, site_secret(None, "a"))


def test_delta_keeps_hashes_instead_of_sketches() -> None:
    rows = [
        {"request_date": f"2026-01-01T0{hour}:10:00.000000+00:00", "request_remote_address": a}
        for hour in range(3)
        for a in ("1", "2")
    ]
    delta = RollupDelta(b"s", keep_hashes=True)
    delta.add_rows(rows)
    assert not delta.visitors
    day = datetime(2026, 1, 1, tzinfo=UTC)
    expected = {visitor_hash(b"s", "2026-01-01", a, None) for a in ("1", "2")}
    assert delta.hashes["day", day] == expected
    assert delta.hashes["hour", day + HOUR] == expected
    assert ("minute", day) not in delta.hashes


@pytest.mark.parametrize("since", [None, BASE + timedelta(days=1, hours=5)])
def test_a_rebuild_interrupted_and_written_through_counts_every_entry_once(
    redis_url: str, key: str, monkeypatch: pytest.MonkeyPatch, since: datetime | None
) -> None:
    from flask_traffic.stores import _redisrollups

    monkeypatch.setattr(_redisrollups, "FOLD_CHUNK", 400)
    store = RedisStore(rollups=True, url=redis_url, event_name=key, log_policy=sampled())
    raw = RedisStore(url=redis_url, event_name=key, log_policy=sampled(), rollups=False)
    made = spread(random.Random(7), BASE, 72, 40)
    store.export(made[:2000])
    assert store.fold() == 2000
    window = (BASE + timedelta(days=1, hours=2), None)
    folds = 0
    real_fold = store.rollups._queue_fold

    def interrupted(pipe: t.Any, rows: list[dict[str, t.Any]]) -> t.Any:
        # The app writes on while the rebuild runs; then it is stopped.
        nonlocal folds
        folds += 1
        if folds == 3:
            store.export(made[2000:2100])
            raise KeyboardInterrupt
        return real_fold(pipe, rows)

    monkeypatch.setattr(store.rollups, "_queue_fold", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.rebuild_rollups(since)
    monkeypatch.setattr(store.rollups, "_queue_fold", real_fold)
    # Half rebuilt: the summary is counted from the entries meanwhile.
    during = store.summary(*window)
    assert during["source"] == {"source": "records"}
    assert during["total"] == raw.summary(*window)["total"]
    store.export(made[2100:])
    assert store.fold() > 0  # goes on with the rebuild, and the new entries
    assert not store.rollups.rebuilding()
    for low, high in [window, (None, None), (BASE, BASE + timedelta(days=2))]:
        after = store.summary(low, high)
        assert after["source"]["source"] == "rollups"
        assert_same(after, raw)
    assert store.summary()["total"] == raw.summary()["total"] > len(made)
    # Rebuilt again in one go, from nothing in flight: the same.
    assert store.rebuild_rollups(since) > 0
    assert_same(store.summary(BASE, BASE + timedelta(days=3)), raw)


@pytest.mark.parametrize("subclass", [False, True], ids=["packed", "redis-py"])
def test_a_fold_whose_position_moved_meanwhile_folds_its_chunk_again_once(
    redis_url: str, key: str, server: redis.Redis, monkeypatch: pytest.MonkeyPatch, subclass: bool
) -> None:
    # Another process moving the position between a fold's read and its
    # EXEC makes the EXEC fail; the fold reads again from where it is now.
    # A client of a subclass goes through redis-py's pipeline instead of
    # the packed transaction: the same must hold.
    client_class = type("Sub", (redis.Redis,), {}) if subclass else redis.Redis
    with client_class.from_url(redis_url) as client:
        store = RedisStore(rollups=True, client=client, event_name=key)
        raw = RedisStore(url=redis_url, event_name=key, rollups=False)
        made = spread(random.Random(5), BASE, 24, 20)
        store.export(made)
        real = store.rollups._queue_fold
        calls = 0

        def meddling(pipe: t.Any, rows: list[dict[str, t.Any]]) -> t.Any:
            nonlocal calls
            calls += 1
            writes = real(pipe, rows)
            if calls == 1:
                server.set(store.rollups.position_key, b"0-1")
            return writes

        monkeypatch.setattr(store.rollups, "_queue_fold", meddling)
        assert store.fold() == len(made)
        assert calls == 2
        assert store.fold() == 0
        assert_same(store.summary(BASE, BASE + DAY), raw)


def test_a_path_ranked_below_the_top_ten_rises_with_the_entries_not_yet_folded(
    redis_url: str, key: str
) -> None:
    """Only the top-list values that can rank are decoded; those the
    entries read besides lift into the top ten are among them."""
    store = RedisStore(rollups=True, url=redis_url, event_name=key)
    raw = RedisStore(url=redis_url, event_name=key, rollups=False)
    rng = random.Random(3)
    at = BASE + 5 * HOUR
    # /t0 30 times down to /t11 19 times: /t10 and /t11 rank 11th and 12th.
    store.export(
        [
            make_record(rng, at + timedelta(seconds=n + rank / 100), f"/t{rank}")
            for rank in range(12)
            for n in range(30 - rank)
        ]
    )
    assert store.fold() == sum(30 - rank for rank in range(12))
    store.export(
        [make_record(rng, at + timedelta(minutes=40, seconds=n), "/t11") for n in range(6)]
    )
    since, until = BASE, BASE + DAY
    got = store.summary(since, until)
    assert got["source"]["raw_records"] == 6
    assert {"value": "/t11", "count": 25} in got["top_paths"]
    assert got["top_paths"] == raw.summary(since, until)["top_paths"]
    assert_same(got, raw)
