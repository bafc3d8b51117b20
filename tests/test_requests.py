"""One record per request, whatever happens, with the right values."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from flask import Flask
from helpers import make_app

from flask_traffic import Traffic, TrafficRecord, request_traffic
from flask_traffic.stores import MemoryStore

CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    store = MemoryStore()
    yield store
    store.shutdown()


@pytest.fixture
def app(tmp_path: Path, store: MemoryStore) -> Flask:
    app = make_app(tmp_path)
    Traffic(app, stores=store)
    return app


@pytest.fixture(autouse=True)
def _quiet_flask_errors(caplog: pytest.LogCaptureFixture) -> None:
    # Flask logs unhandled exceptions; that is expected here.
    caplog.set_level(logging.CRITICAL, logger="site")


def only(store: MemoryStore) -> dict[str, object]:
    rows = store.read()
    assert len(rows) == 1, rows
    return rows[0]


def test_normal_response(app: Flask, store: MemoryStore) -> None:
    before = datetime.now(timezone.utc)
    response = app.test_client().get("/item/7?x=1", headers={"User-Agent": CHROME})
    assert response.status_code == 200
    row = only(store)
    assert row["request_method"] == "GET"
    assert row["request_path"] == "/item/7"
    assert row["request_endpoint"] == "item"
    assert row["request_route"] == "/item/<int:n>"
    assert row["request_host_url"] == "http://localhost/"
    assert row["request_remote_address"] == "127.0.0.1"
    assert row["request_browser"] == "Chrome 131"
    assert row["request_platform"] == "Mac OS X"
    assert row["response_status_code"] == 200
    assert row["response_size"] == len(response.data)
    assert row["response_mimetype"] == "application/json"
    assert row["response_exception"] is None
    assert isinstance(row["response_time"], float)
    assert row["response_time"] > 0
    date = datetime.fromisoformat(str(row["request_date"]))
    assert date.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= date <= datetime.now(timezone.utc)


@pytest.mark.parametrize(
    ("method", "path", "status", "endpoint"),
    [
        ("GET", "/forbidden", 403, "forbidden"),
        ("GET", "/no/such/page", 404, None),
        ("POST", "/", 405, None),
    ],
)
def test_http_errors_give_one_record(
    app: Flask, store: MemoryStore, method: str, path: str, status: int, endpoint: str | None
) -> None:
    assert app.test_client().open(path, method=method).status_code == status
    row = only(store)
    assert row["response_status_code"] == status
    assert row["request_endpoint"] == endpoint
    assert row["response_exception"] is None


def test_unhandled_exception_answered_500(app: Flask, store: MemoryStore) -> None:
    assert app.test_client().get("/boom").status_code == 500
    row = only(store)
    assert row["response_status_code"] == 500
    assert row["response_exception"] == "ValueError('boom')"
    assert row["request_endpoint"] == "boom"


def test_unhandled_exception_propagated(app: Flask, store: MemoryStore) -> None:
    app.testing = True  # PROPAGATE_EXCEPTIONS: the exception reaches the client
    with pytest.raises(ValueError, match="boom"):
        app.test_client().get("/boom")
    row = only(store)
    assert row["response_status_code"] == 500
    assert row["response_exception"] == "ValueError('boom')"
    assert row["request_route"] == "/boom"


def test_streamed_response(app: Flask, store: MemoryStore) -> None:
    assert app.test_client().get("/stream").data == b"ab"
    row = only(store)
    assert row["request_endpoint"] == "stream"
    assert row["response_status_code"] == 200
    assert row["response_size"] is None


def test_trace_context_is_carried_not_stored(app: Flask, store: MemoryStore) -> None:
    seen: list[TrafficRecord] = []

    def keep(sender: Flask, record: TrafficRecord, **extra: object) -> None:
        seen.append(record)

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with request_traffic.connected_to(keep, app):
        app.test_client().get("/", headers={"traceparent": parent, "tracestate": "k=v"})
    assert [(r.traceparent, r.tracestate) for r in seen] == [(parent, "k=v")]
    assert "traceparent" not in only(store)


def test_test_request_context_is_not_a_request(app: Flask, store: MemoryStore) -> None:
    with app.test_request_context("/"):
        pass
    assert store.read() == []


def test_proxy_fix_applied_after_init(tmp_path: Path, store: MemoryStore) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = make_app(tmp_path)
    Traffic(app, stores=store)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    app.test_client().get(
        "/",
        headers={
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "example.com",
        },
    )
    row = only(store)
    assert row["request_remote_address"] == "203.0.113.9"
    assert row["request_host_url"] == "https://example.com/"


def test_many_requests_one_record_each(app: Flask, store: MemoryStore) -> None:
    client = app.test_client()
    for i in range(50):
        client.get(f"/item/{i}")
    paths = [row["request_path"] for row in store.read()]
    assert paths == [f"/item/{i}" for i in reversed(range(50))]
