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

pytestmark = pytest.mark.usefixtures("redis_url")

UTC = timezone.utc
# Three whole days, ending at least a day ago: nothing now lands in them.
BASE = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=4)
ROUTES = ["/", "/item/<int:n>", "/search", None]
AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
]


def make_record(rng: random.Random, moment: datetime) -> TrafficRecord:
    route = rng.choice(ROUTES)
    return TrafficRecord(
        start_time_ns=int(moment.timestamp() * 1_000_000) * 1000,
        duration_ns=int(rng.lognormvariate(2.5, 1.0) * 1_000_000),
        request_method="GET",
        request_path=f"/p{rng.randrange(30)}",
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


def assert_same(
    rolled: dict[str, t.Any], raw: dict[str, t.Any], raw_visitors: int | None = None
) -> None:
    """Equal, but for visitors: within 5 % of ``raw_visitors`` (by default
    the raw summary's), or one visitor for a few dozen (a sketch's error is
    relative; a summary may add the worker's sketch to exact counts)."""
    assert rolled["source"]["source"] == "rollups"
    assert raw["source"] == {"source": "records"}
    visitors, raw_count = rolled.pop("unique_visitors"), raw.pop("unique_visitors")
    expected = raw_count if raw_visitors is None else raw_visitors
    assert visitors == pytest.approx(expected, rel=0.05, abs=1)
    del rolled["source"], raw["source"]
    assert rolled == raw


DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
WINDOWS = {
    "days": (BASE, BASE + 3 * DAY),
    "one day": (BASE + DAY, BASE + 2 * DAY),
    "hours": (BASE + 5 * HOUR, BASE + 53 * HOUR),
    "minutes": (BASE + 10 * HOUR + 17 * MINUTE, BASE + 58 * HOUR + 43 * MINUTE),
    "short": (BASE + 30 * HOUR + 2 * MINUTE, BASE + 31 * HOUR + 29 * MINUTE),
    "one bucket": (BASE + 30 * HOUR + 7 * MINUTE, BASE + 30 * HOUR + 8 * MINUTE),
    "empty": (BASE - 2 * DAY, BASE - DAY + 3 * HOUR),
    "around": (BASE - 5 * HOUR, BASE + 3 * DAY + 5 * HOUR),
}


@pytest.mark.parametrize("window", list(WINDOWS), ids=list(WINDOWS))
def test_rollup_summary_equals_the_raw_summary(
    folded: tuple[RedisStore, RedisStore], window: str
) -> None:
    store, raw = folded
    since, until = WINDOWS[window]
    rolled = store.summary(since, until)
    expected = raw.summary(since, until)
    if window != "empty":
        assert rolled["total"] > 0
        assert rolled["sampled"]
        assert rolled["routes"]
        assert rolled["top_paths"]
        assert rolled["requests_per_bucket"]
    assert rolled["source"]["since"] == since.isoformat(timespec="microseconds")
    # The documented rule: a minute counts the visitors of its whole hour.
    hours = raw.summary(since.replace(minute=0), until + (-until.minute % 60) * MINUTE)
    assert_same(rolled, expected, hours["unique_visitors"])


def test_windows_are_rounded_to_minutes(folded: tuple[RedisStore, RedisStore]) -> None:
    store, raw = folded
    since = BASE + 10 * HOUR + 17 * MINUTE
    until = BASE + 20 * HOUR + 43 * MINUTE
    rolled = store.summary(since + timedelta(seconds=20), until - timedelta(seconds=20))
    assert rolled["source"]["granularity"] == "minute"
    assert rolled["since"] == since.isoformat(timespec="microseconds")
    hours = raw.summary(since.replace(minute=0), until.replace(minute=0) + HOUR)
    assert_same(rolled, raw.summary(since, until), hours["unique_visitors"])


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
    assert_same(rolled, raw.summary(since, until))
    assert store.fold() == 600
    assert_same(store.summary(since, until), raw.summary(since, until))
    # No since: from the oldest bucket; no until: up to now.
    # No since, no until: as the records' summary, buckets by the span.
    everything = store.summary()
    assert everything["since"] is None
    assert_same(everything, raw.summary())


def test_everything_in_the_tail_before_any_fold(redis_url: str, key: str) -> None:
    store = RedisStore(rollups=True, url=redis_url, event_name=key, log_policy=sampled())
    raw = RedisStore(url=redis_url, event_name=key, log_policy=sampled(), rollups=False)
    store.export(spread(random.Random(6), BASE, 3, 20))
    rolled = store.summary(BASE, BASE + DAY)
    assert_same(rolled, raw.summary(BASE, BASE + DAY))
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
    assert_same(rolled, raw.summary(since, until))


def test_retention_removes_old_minutes_and_keeps_hours(
    redis_url: str, key: str, server: redis.Redis
) -> None:
    store = RedisStore(
        url=redis_url,
        event_name=key,
        rollups=True,
        rollup_retention=RollupRetention(minute=timedelta(days=1)),
    )
    now = datetime.now(UTC)
    old = bucket = (now - timedelta(days=3)).replace(minute=30, second=0, microsecond=0)
    store.export([make_record(random.Random(8), old + timedelta(seconds=5))])
    store.export([make_record(random.Random(9), now - timedelta(seconds=5))])
    assert store.fold() == 2
    prefix = f"{key}:flask-traffic-rollup:"
    assert server.exists(f"{prefix}minute:{bucket.isoformat()}")
    assert store.rollups.retain(now) == 1
    assert not server.exists(f"{prefix}minute:{bucket.isoformat()}")
    assert server.zcard(f"{prefix}buckets:minute") == 1
    hour = bucket.replace(minute=0)
    assert server.exists(f"{prefix}hour:{hour.isoformat()}")
    assert server.exists(f"{prefix}visitors:hour:{hour.isoformat()}")
    # The old hour is still summed, from its hour bucket, past the minutes' cutoff.
    summary = store.summary(hour, hour + HOUR)
    assert summary["total"] == 1
    assert summary["source"]["granularity"] == "hour"


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
        summary = store.summary()
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
