"""RedisStore against real Redis: entry format, round trips, faults, fork, load.

Most tests use the shared local Redis (``redis_url``) with a stream of their
own (``unique_name``), deleted afterwards. The tests that need a server they
can stop, restart or give a password start their own ``redis-server`` on a
free loopback port and never touch the shared one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import typing as t
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import helpers
import pytest
import redis
from flask import Flask
from own_servers import RedisServer

from flask_traffic import FIELD_NAMES, FIELDS, LogPolicy, Traffic, TrafficRecord
from flask_traffic.stores import JSONStore, RedisStore, Store

ROOT = Path(__file__).resolve().parents[1]
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)

#: Header values a server may hand over; WSGI strings are latin-1 decoded bytes.
HOSTILE_HEADERS: list[dict[str, str]] = [
    {"HTTP_USER_AGENT": CHROME, "HTTP_REFERER": "https://example.com/a?b=c"},
    {"HTTP_REFERER": ""},
    {"HTTP_USER_AGENT": "line one\r\nline two\n\r"},
    {"HTTP_USER_AGENT": "A" * 10_000},
    {"HTTP_USER_AGENT": "Ünïcødé ✓ 漢字 🙂"},
    {"HTTP_USER_AGENT": b"\xff\xfe\xc3(bad".decode("latin-1")},
    {"HTTP_USER_AGENT": "caf\xc3\xa9 mojibake"},
    # Not in the user agent: the browser parser refuses lone surrogates.
    {"HTTP_REFERER": "lone \udcff and \ud800 surrogates"},
    {"HTTP_USER_AGENT": "nul\x00byte", "HTTP_REFERER": "None"},
    {"HTTP_USER_AGENT": "0", "HTTP_REFERER": "1.5"},
]


#: The shared test app, its records written within 50 ms of a request.
make_app = functools.partial(helpers.make_app, schedule_delay=0.05)


@pytest.fixture
def stream(redis_url: str, unique_name: str) -> Iterator[str]:
    """A stream key on the shared Redis, deleted afterwards with its fence and rollup keys."""
    yield unique_name
    with redis.Redis.from_url(redis_url) as client:
        fences = list(client.scan_iter(f"{unique_name}:*"))
        client.delete(unique_name, *fences)


@pytest.fixture
def server(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the shared Redis, to look at what the store wrote."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a redis-server of the test's own, keeping an append-only file so
    a restart finds what was written: ``own_redis("--requirepass", "x")``."""
    servers: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        folder = tmp_path / f"redis{len(servers)}"
        folder.mkdir()
        own = RedisServer(folder, *args, durable=True)
        servers.append(own)
        own.start()
        return own

    yield start
    for own in servers:
        own.stop()


class LostReplyProxy:
    """A TCP proxy to a Redis server that can lose the reply to one transaction.

    With ``lose_next_exec`` set, it passes everything on to the server but
    holds the replies, and once the reply to ``EXEC`` is complete (the
    server has run the transaction) it closes the client's connection
    instead: what a client sees when the server dies at that moment.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        # accept() wakes up now and then to see whether close() was called.
        self.listener.settimeout(0.1)
        self._closed = threading.Event()
        self.port: int = self.listener.getsockname()[1]
        self.lose_next_exec = threading.Event()
        self.lost = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                near, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            near.settimeout(None)
            far = socket.create_connection(self.target, timeout=10)
            far.settimeout(None)
            self._sockets += [near, far]
            for target in (self._up, self._down):
                thread = threading.Thread(target=target, args=(near, far), daemon=True)
                self._threads.append(thread)
                thread.start()

    @staticmethod
    def _up(near: socket.socket, far: socket.socket) -> None:
        try:
            while data := near.recv(65536):
                far.sendall(data)
        except OSError:
            pass

    def _down(self, near: socket.socket, far: socket.socket) -> None:
        held = b""
        try:
            while data := far.recv(65536):
                if not self.lose_next_exec.is_set():
                    near.sendall(data)
                    continue
                # MULTI's +OK, one +QUEUED per command, then EXEC's array,
                # whose last element is the reply to the fence's SET.
                held += data
                if held.endswith(b"+OK\r\n") and held.rfind(b"*") > held.rfind(b"+QUEUED"):
                    self.lose_next_exec.clear()
                    self.lost.set()
                    near.shutdown(socket.SHUT_RDWR)
                    return
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        self._threads[0].join(10)
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(10)


# Pointing the store at a server.


def test_0_8_signature_with_host_password_and_port(
    tmp_path: Path, own_redis: Callable[..., RedisServer], stores: list[Store]
) -> None:
    own = own_redis("--requirepass", "s3cret")
    store = RedisStore("127.0.0.1", "traffic", "s3cret", own.port)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    app.test_client().get("/")
    assert [row["request_path"] for row in store.read()] == ["/"]
    with redis.Redis(port=own.port, password="s3cret") as client:
        assert client.xlen("traffic") == 1


def test_wrong_password_fails_at_init_app(
    tmp_path: Path, own_redis: Callable[..., RedisServer], stores: list[Store]
) -> None:
    own = own_redis("--requirepass", "s3cret")
    store = RedisStore("127.0.0.1", "traffic", "wrong", own.port)
    stores.append(store)
    with pytest.raises(RuntimeError, match="redis_password"):
        Traffic(make_app(tmp_path), stores=store)


def test_host_url_and_client_reach_the_same_stream(
    tmp_path: Path, redis_url: str, stream: str, stores: list[Store]
) -> None:
    parts = urlsplit(redis_url)
    assert parts.hostname is not None
    with redis.Redis.from_url(redis_url, decode_responses=True) as decoding:
        by_host = RedisStore(parts.hostname, stream, redis_port=parts.port or 6379)
        by_url = RedisStore(event_name=stream, url=redis_url)
        # A client that decodes replies itself: read() still gets raw bytes.
        by_client = RedisStore(event_name=stream, client=decoding)
        stores += [by_host, by_url, by_client]
        for n, store in enumerate(stores):
            app = make_app(tmp_path)
            Traffic(app, stores=store)
            app.test_client().get(f"/echo/{n}", headers={"Referer": "\udcff"})
            assert store.flush(10)
        rows = [store.read() for store in stores]
    assert rows[0] == rows[1] == rows[2]
    assert [row["request_path"] for row in rows[0]] == ["/echo/2", "/echo/1", "/echo/0"]
    assert {row["request_referrer"] for row in rows[0]} == {"\udcff"}


def _connection_names(client: redis.Redis) -> list[str]:
    return [entry["name"] for entry in client.client_list()]


def test_shutdown_closes_only_a_client_the_store_made(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, unique_name: str
) -> None:
    own_name, given_name = f"{unique_name}_own", f"{unique_name}_given"
    with redis.Redis.from_url(redis_url, client_name=given_name) as given:
        made = RedisStore(event_name=stream, url=f"{redis_url}?client_name={own_name}")
        passed = RedisStore(event_name=stream, client=given)
        for store in (made, passed):
            Traffic(make_app(tmp_path), stores=store)
            store.read()  # a connection is open now
        names = _connection_names(server)
        assert own_name in names
        assert given_name in names
        made.shutdown()
        passed.shutdown()
        made.shutdown()  # twice is fine
        names = _connection_names(server)
        assert own_name not in names
        assert given_name in names
        given.ping()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"event_name": "s"}, ValueError, "exactly one of redis_host, url or client, got none"),
        (
            {"redis_host": "127.0.0.1", "event_name": "s", "url": "redis://127.0.0.1"},
            ValueError,
            "got redis_host and url",
        ),
        ({"url": "redis://127.0.0.1"}, TypeError, "event_name must be a non-empty str"),
        ({"url": "redis://127.0.0.1", "event_name": ""}, TypeError, "event_name"),
        ({"url": "redis://127.0.0.1", "event_name": b"s"}, TypeError, "event_name"),
        ({"url": "redis://127.0.0.1", "event_name": "s", "max_len": 0}, ValueError, "max_len"),
        ({"url": "redis://127.0.0.1", "event_name": "s", "max_len": True}, ValueError, "max_len"),
        ({"url": "redis://127.0.0.1", "event_name": "s", "max_len": "9"}, ValueError, "max_len"),
        (
            {"url": "redis://127.0.0.1", "event_name": "s", "redis_password": "x"},
            ValueError,
            "redis_password and redis_port go with redis_host only",
        ),
        ({"url": "http://user:pw@127.0.0.1", "event_name": "s"}, ValueError, "redis://"),
        ({"url": 6379, "event_name": "s"}, TypeError, "url must be a str"),
        ({"client": "redis://127.0.0.1", "event_name": "s"}, TypeError, "redis.Redis"),
        ({"redis_host": "", "event_name": "s"}, TypeError, "redis_host"),
        ({"redis_host": "h", "event_name": "s", "redis_port": 0}, ValueError, "redis_port"),
        ({"redis_host": "h", "event_name": "s", "redis_password": 1}, TypeError, "password"),
        ({"url": "redis://127.0.0.1", "event_name": "s", "sync": 1}, TypeError, "sync"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        RedisStore(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.count(". ") == 0
    assert message.endswith(".")
    assert "pw@" not in message  # a URL's password is not echoed


def test_without_redis_py_construction_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from flask_traffic.stores import RedisStore\n"
        "try:\n"
        "    RedisStore(event_name='s', url='redis://127.0.0.1')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        'RedisStore needs the redis package: pip install "flask-traffic[redis]".'
    )


def test_a_key_that_is_not_a_stream_fails_at_init_app(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    server.set(stream, "not a stream")
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    with pytest.raises(RuntimeError, match="holds a string, not a stream: pass another event_name"):
        Traffic(make_app(tmp_path), stores=store)


def made(path: str) -> TrafficRecord:
    return TrafficRecord(time.time_ns(), 1_000_000, "GET", request_path=path)


def test_a_write_refused_inside_the_transaction_raises_and_the_client_goes_on(
    redis_url: str, server: redis.Redis, stream: str
) -> None:
    # The key turned into a string after init_app: every XADD of the batch
    # fails inside EXEC. The write raises Redis's error (no retry can write
    # it), and the client's connections are still good for the next one.
    store = RedisStore(event_name=stream, url=redis_url, sync=True)
    Traffic(Flask("refused"), stores=store)
    server.set(stream, "not a stream")
    records = [made(f"/r/{n}") for n in range(3)]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.export(records)
    server.delete(stream)
    store.export(records)
    assert [row["request_path"] for row in store.read()] == ["/r/2", "/r/1", "/r/0"]
    store.shutdown()


def test_a_client_of_a_redis_subclass_writes_through_redis_pys_pipeline(
    redis_url: str, stream: str
) -> None:
    # A subclass may route or wrap commands: the store leaves its writes to
    # redis-py rather than packing them itself.
    from flask_traffic.stores._redistransaction import _PipelineTransaction, transaction

    class Counting(redis.Redis):
        pipelines = 0

        def pipeline(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
            Counting.pipelines += 1
            return super().pipeline(*args, **kwargs)

    with Counting.from_url(redis_url) as client:
        assert isinstance(transaction(client), _PipelineTransaction)
        store = RedisStore(event_name=stream, client=client, sync=True)
        Traffic(Flask("subclass"), stores=store)
        store.export([made("/via-pipeline")])
        assert Counting.pipelines >= 1
        assert [row["request_path"] for row in store.read()] == ["/via-pipeline"]
        store.shutdown()


# What is stored, and how it reads back.


def test_entry_holds_the_enabled_fields_as_text_and_leaves_none_out(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    app.test_client().get("/", headers={"User-Agent": CHROME})
    assert store.flush(10)
    ((_, entry),) = server.xrange(stream)
    row = store.read()[0]
    assert row["request_referrer"] is None
    assert row["response_exception"] is None
    # Every field but the None ones, as text; no "None" strings.
    assert sorted(entry) == sorted(name.encode() for name in FIELD_NAMES if row[name] is not None)
    assert b"None" not in entry.values()
    assert entry[b"request_date"] == row["request_date"].encode()
    assert row["request_date"].endswith("+00:00")
    assert entry[b"response_status_code"] == b"200"
    assert entry[b"response_size"] == b"5"
    assert float(entry[b"response_time"]) == row["response_time"]
    assert entry[b"request_browser"] == b"Chrome 131"
    types = {field.name: field.type for field in FIELDS}
    for name, value in row.items():
        expected = {"int": int, "float": float}.get(types[name], str)
        assert value is None or type(value) is expected


def test_a_record_whose_kept_fields_are_all_none(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    policy = LogPolicy().set_from_false(request_referrer=True)
    store = RedisStore(event_name=stream, url=redis_url, log_policy=policy)
    reference = JSONStore(location=tmp_path, log_policy=LogPolicy().set_from_false(
        request_referrer=True
    ))  # fmt: skip
    stores += [store, reference]
    app = make_app(tmp_path)
    Traffic(app, stores=[store, reference])
    client = app.test_client()
    client.get("/")
    client.get("/", headers={"Referer": "r"})
    assert (
        store.read() == reference.read() == [{"request_referrer": "r"}, {"request_referrer": None}]
    )
    # A stream entry needs a field: the empty record got a placeholder.
    assert server.xrange(stream)[0][1] == {b"_": b""}


def test_read_equals_the_json_store_for_hostile_input(
    tmp_path: Path,
    redis_url: str,
    stream: str,
    stores: list[Store],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RedisStore(event_name=stream, url=redis_url)
    reference = JSONStore(location=tmp_path)
    stores += [store, reference]
    app = make_app(tmp_path)
    Traffic(app, stores=[store, reference])
    client = app.test_client()
    with caplog.at_level(logging.CRITICAL, logger="flask.app"):
        for n, headers in enumerate(HOSTILE_HEADERS):
            client.get(f"/echo/{n}", environ_overrides=headers)
        client.get("/boom")
        client.get("/forbidden")
        client.get("/echo/é/%0D%0A/" + "p" * 2_000)
        client.post("/")
    expected = reference.read()
    got = store.read()
    assert len(got) == len(HOSTILE_HEADERS) + 4
    assert got == expected
    by_path = {row["request_path"]: row for row in got}
    for n, headers in enumerate(HOSTILE_HEADERS):
        row = by_path[f"/echo/{n}"]
        for key, name in (
            ("HTTP_USER_AGENT", "request_user_agent"),
            ("HTTP_REFERER", "request_referrer"),
        ):
            if key in headers:
                assert row[name] == headers[key]
    assert by_path["/boom"]["response_exception"] == "ValueError('boom')"


def test_two_lone_surrogates_that_would_make_a_pair_stay_two(
    tmp_path: Path, redis_url: str, stream: str, stores: list[Store]
) -> None:
    # JSON reads "\\ud83d\\ude00" back as one character; the stream keeps both.
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    app.test_client().get("/", environ_overrides={"HTTP_REFERER": "\ud83d\ude00"})
    assert store.read()[0]["request_referrer"] == "\ud83d\ude00"


def test_sync_writes_in_the_request(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    store = RedisStore(event_name=stream, url=redis_url, sync=True)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    app.test_client().get("/echo/now")
    # No flush: the entry is there when the response is.
    ((_, entry),) = server.xrange(stream)
    assert entry[b"request_path"] == b"/echo/now"


def test_read_limit_newest_first(
    tmp_path: Path, redis_url: str, stream: str, stores: list[Store]
) -> None:
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    client = app.test_client()
    for n in range(30):
        client.get(f"/echo/{n}")
    assert [row["request_path"] for row in store.read(3)] == ["/echo/29", "/echo/28", "/echo/27"]
    assert len(store.read()) == 30
    assert store.read(0) == []


def test_entries_written_by_0_8_read_back(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    # What flask-traffic 0.8 wrote: every value as text, None as "None".
    old = dict.fromkeys(FIELD_NAMES, "None")
    old.pop("request_route")
    old.update(
        request_date="2024-05-01T10:00:00.123456",
        request_path="/old",
        response_time="12.5",
        response_status_code="200",
    )
    server.xadd(stream, old)  # type: ignore[arg-type]
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    Traffic(make_app(tmp_path), stores=store)
    (row,) = store.read()
    assert row["request_path"] == "/old"
    assert row["request_date"] == "2024-05-01T10:00:00.123456"
    assert row["response_time"] == 12.5
    assert row["response_status_code"] == 200
    assert row["response_size"] is None  # "None" where a number belongs
    assert row["request_route"] is None  # no such field in 0.8
    assert row["request_referrer"] == "None"  # text is given back as stored


def test_max_len_trims_the_stream(
    tmp_path: Path, redis_url: str, server: redis.Redis, stream: str, stores: list[Store]
) -> None:
    store = RedisStore(event_name=stream, url=redis_url, max_len=50)
    stores.append(store)
    app = make_app(tmp_path)
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 100
    Traffic(app, stores=store)
    client = app.test_client()
    for n in range(1000):
        client.get(f"/echo/{n}")
    rows = store.read(50)
    assert [row["request_path"] for row in rows] == [f"/echo/{n}" for n in range(999, 949, -1)]
    # "MAXLEN ~" trims whole stream nodes (100 entries by default), so the
    # stream keeps at least 50 and somewhat more, but far from all 1000.
    assert 50 <= server.xlen(stream) <= 250


# Faults, fork, load.


def _send_until(app: Flask, stop: threading.Event, statuses: list[int], limit: int) -> None:
    client = app.test_client()
    deadline = time.monotonic() + 60
    n = 0
    while not stop.is_set() and n < limit and time.monotonic() < deadline:
        statuses.append(client.get(f"/echo/{n}").status_code)
        n += 1


def test_redis_stops_and_comes_back_and_nothing_is_lost(
    tmp_path: Path,
    own_redis: Callable[..., RedisServer],
    stores: list[Store],
    caplog: pytest.LogCaptureFixture,
) -> None:
    own = own_redis()
    store = RedisStore(event_name="traffic", url=own.url)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    statuses: list[int] = []
    stop = threading.Event()
    sender = threading.Thread(target=_send_until, args=(app, stop, statuses, 5_000))

    def wait_for(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 20
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert condition()

    with caplog.at_level(logging.CRITICAL, logger="flask_traffic"):
        sender.start()
        try:
            wait_for(lambda: store.stats()["exported"] >= 50)
            own.stop()
            # Requests go on while Redis is down; their records wait.
            down_at = len(statuses)
            wait_for(lambda: store.stats()["failed_exports"] >= 2 and len(statuses) > down_at)
            own.start()
            wait_for(lambda: len(statuses) > down_at + 100)
        finally:
            stop.set()
            sender.join(60)
        assert not sender.is_alive()
        assert store.flush(30)
    assert set(statuses) == {200}
    assert store.stats()["dropped"] == 0
    paths = [row["request_path"] for row in store.read(10_000)]
    assert len(paths) == len(statuses)
    assert set(paths) == {f"/echo/{n}" for n in range(len(statuses))}


def test_a_transaction_whose_reply_was_lost_is_not_written_twice(
    tmp_path: Path,
    redis_url: str,
    stream: str,
    stores: list[Store],
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = urlsplit(redis_url)
    proxy = LostReplyProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    try:
        store = RedisStore("127.0.0.1", stream, redis_port=proxy.port)
        stores.append(store)
        app = make_app(tmp_path)
        Traffic(app, stores=store)
        client = app.test_client()
        client.get("/echo/0")
        assert store.flush(10)
        proxy.lose_next_exec.set()
        with caplog.at_level(logging.INFO, logger="flask_traffic"):
            for n in range(1, 6):
                client.get(f"/echo/{n}")
            assert store.flush(30)
        assert proxy.lost.is_set()
        assert store.stats()["failed_exports"] == 1
        assert any("not writing it again" in r.getMessage() for r in caplog.records)
        paths = [row["request_path"] for row in store.read()]
    finally:
        proxy.close()
    assert paths == [f"/echo/{n}" for n in range(5, -1, -1)]


def test_redis_down_when_the_app_starts(
    tmp_path: Path,
    own_redis: Callable[..., RedisServer],
    stores: list[Store],
    caplog: pytest.LogCaptureFixture,
) -> None:
    own = own_redis()
    own.stop()
    store = RedisStore("127.0.0.1", "traffic", redis_port=own.port)
    stores.append(store)
    app = make_app(tmp_path)
    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        Traffic(app, stores=store)
        assert any("cannot reach Redis" in r.getMessage() for r in caplog.records)
        client = app.test_client()
        assert [client.get(f"/echo/{n}").status_code for n in range(20)] == [200] * 20
        assert not store.flush(0.3)
    own.start()
    assert store.flush(30)
    assert len(store.read()) == 20


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns about fork() with threads running; forking is the point.
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_child_after_fork_uses_its_own_connection(
    tmp_path: Path, redis_url: str, stream: str, stores: list[Store]
) -> None:
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    client = app.test_client()
    client.get("/echo/parent")
    assert store.flush(10)
    parent_id = store.client.client_id()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            client.get("/echo/child")
            if store.flush(10) and store.client.client_id() != parent_id:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection is untouched by the child's work and exit.
    assert store.client.client_id() == parent_id
    client.get("/echo/parent-again")
    paths = [row["request_path"] for row in store.read()]
    assert paths == ["/echo/parent-again", "/echo/child", "/echo/parent"]


def test_threads_lose_nothing(
    tmp_path: Path, redis_url: str, stream: str, stores: list[Store]
) -> None:
    store = RedisStore(event_name=stream, url=redis_url)
    stores.append(store)
    app = make_app(tmp_path)
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 50
    Traffic(app, stores=store)

    def hammer(thread: int) -> None:
        helpers.send_requests(app, (f"/echo/t{thread}/{n}" for n in range(200)))

    helpers.run_writers(hammer, 4, timeout=60)
    found = [row["request_path"] for row in store.read(10_000)]
    assert len(found) == 800
    assert set(found) == {f"/echo/t{i}/{n}" for i in range(4) for n in range(200)}


def _process(number: int, folder: str, url: str, key: str, count: int) -> None:
    app = make_app(Path(folder))
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 16
    store = RedisStore(event_name=key, url=url)
    Traffic(app, stores=store)
    helpers.send_requests(app, (f"/echo/p{number}/{n}" for n in range(count)))
    store.shutdown()


def test_four_processes_share_one_stream(
    tmp_path: Path, redis_url: str, stream: str, stores: list[Store]
) -> None:
    helpers.run_writers(
        _process, 4, str(tmp_path), redis_url, stream, 200, processes=True, timeout=120
    )
    reader = RedisStore(event_name=stream, url=redis_url)
    stores.append(reader)
    found = [row["request_path"] for row in reader.read(10_000)]
    assert len(found) == 800
    assert set(found) == {f"/echo/p{i}/{n}" for i in range(4) for n in range(200)}


# The example.


def test_example_app_serves_its_traffic(
    tmp_path: Path,
    redis_url: str,
    stream: str,
    load_example: Callable[[str], ModuleType],
) -> None:
    example = load_example("redis_app")
    app: Flask = example.create_app(str(tmp_path), redis_url=redis_url, event_name=stream)
    try:
        client = app.test_client()
        assert client.get("/").status_code == 200
        assert client.get("/item/7").get_json() == {"item": 7}
        assert client.get("/missing").status_code == 404
        rows = client.get("/traffic").get_json()
    finally:
        for store in example.traffic.get_stores(app):
            store.shutdown()
    assert [(row["request_path"], row["response_status_code"]) for row in rows] == [
        ("/missing", 404),
        ("/item/7", 200),
        ("/", 200),
    ]
    assert rows[1]["request_route"] == "/item/<int:n>"
    assert isinstance(rows[1]["response_time"], float)


def test_example_reads_redis_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    own_redis: Callable[..., RedisServer],
    load_example: Callable[[str], ModuleType],
) -> None:
    own = own_redis()
    monkeypatch.setenv("REDIS_URL", own.url)
    example = load_example("redis_app")
    app: Flask = example.create_app(str(tmp_path))
    try:
        app.test_client().get("/")
        (store,) = example.traffic.get_stores(app)
        assert store.flush(10)
    finally:
        for store in example.traffic.get_stores(app):
            store.shutdown()
    with redis.Redis(port=own.port) as client:
        assert client.xlen(example.STREAM) == 1
