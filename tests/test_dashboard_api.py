"""The dashboard's setup, login, headers and JSON API, through the Flask test client."""

from __future__ import annotations

import csv
import io
import json
import logging
import typing as t
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from click.testing import CliRunner
from dashboard_apps import (
    CHROME,
    KNOWN_TRAFFIC,
    PASSWORD,
    basic,
    make_app,
    send,
)
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import check_password_hash

from flask_traffic import Traffic
from flask_traffic.dashboard import Dashboard
from flask_traffic.stores import CSVStore, JSONStore, MemoryStore, Store
from flask_traffic.summary import SummaryBuilder

PREFIX = "/traffic/dashboard"
API = PREFIX + "/api/"
AUTH = basic()


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    store = MemoryStore()
    yield store
    store.shutdown()


@pytest.fixture
def app(store: MemoryStore) -> Flask:
    app = make_app(store)
    send(app, KNOWN_TRAFFIC)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def get_json(client: FlaskClient, url: str) -> t.Any:
    response = client.get(url, headers=AUTH)
    assert response.status_code == 200, response.data
    return response.get_json()


def status(client: FlaskClient, url: str, **options: t.Any) -> int:
    """The status of a request, its answer closed (static files hold a file open)."""
    with client.open(url, **options) as response:
        return response.status_code


# -- setting it up ----------------------------------------------------------------


def test_init_app_needs_traffic_first() -> None:
    app = Flask("plain")
    app.config["TRAFFIC_DASHBOARD_PASSWORD_HASH"] = "pbkdf2:sha256:1$a$b"
    with pytest.raises(RuntimeError, match=r"call traffic\.init_app\(app, stores=\[\.\.\.\]\)"):
        Dashboard(app)


def test_no_way_to_log_in_is_refused_naming_both_ways(store: MemoryStore) -> None:
    app = Flask("open")
    Traffic(app, stores=store)
    with pytest.raises(ValueError, match=r"authorize=.*TRAFFIC_DASHBOARD_PASSWORD_HASH") as error:
        Dashboard(app)
    assert str(error.value).count(".") >= 1
    assert "dashboard" not in app.blueprints


def test_a_plain_password_in_the_config_is_refused(store: MemoryStore) -> None:
    app = Flask("plain_password")
    app.config["TRAFFIC_DASHBOARD_PASSWORD_HASH"] = "hunter2hunter2"
    Traffic(app, stores=store)
    with pytest.raises(ValueError, match=r"not the password itself.*dashboard-password"):
        Dashboard(app)


def test_registering_twice_is_an_error(app: Flask) -> None:
    with pytest.raises(RuntimeError, match="already been registered"):
        Dashboard().init_app(app)


def test_the_store_is_the_first_readable_one_or_the_one_named(tmp_path: Path) -> None:
    first, second = JSONStore(location=tmp_path), CSVStore(location=tmp_path)
    for choice, expected in ((None, first), ("CSVStore", second), (second, second)):
        app = Flask("stores", instance_path=str(tmp_path))
        Traffic(app, stores=[first, second])
        Dashboard(app, store=choice, authorize=lambda: True)
        assert app.extensions["traffic_dashboard"].store is expected
    other = MemoryStore()
    app = Flask("foreign")
    Traffic(app, stores=[first])
    with pytest.raises(ValueError, match="one of the app's readable stores"):
        Dashboard(app, store=other, authorize=lambda: True)
    first.shutdown()
    second.shutdown()


def test_url_prefix(store: MemoryStore) -> None:
    app = make_app(store, url_prefix="/admin/traffic/")
    client = app.test_client()
    assert client.get("/admin/traffic/", headers=AUTH).status_code == 200
    assert client.get("/admin/traffic/api/summary", headers=AUTH).status_code == 200
    assert client.get(PREFIX + "/", headers=AUTH).status_code == 404
    with pytest.raises(ValueError, match="url_prefix must be a path"):
        make_app(MemoryStore(), url_prefix="traffic")


def test_an_open_dashboard_is_warned_about_once_outside_debug_and_testing(
    store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        for testing in (True, False):
            app = Flask("open_dashboard")
            app.testing = testing
            Traffic(app, stores=store)
            Dashboard(app, authorize=lambda: True)
        closed = Flask("closed_dashboard")
        Traffic(closed, stores=store)
        Dashboard(closed, authorize=lambda: False)
    warnings = [r.getMessage() for r in caplog.records if "lets anyone in" in r.getMessage()]
    assert len(warnings) == 1
    assert "/traffic/dashboard" in warnings[0]


def test_the_secret_key_is_left_alone(app: Flask, client: FlaskClient) -> None:
    assert app.secret_key is None
    client.get(PREFIX + "/", headers=AUTH)
    client.get(PREFIX + "/")
    assert app.secret_key is None
    assert "Set-Cookie" not in client.get(PREFIX + "/", headers=AUTH).headers


# -- who may look ---------------------------------------------------------------

EVERY_URL = [
    PREFIX + "/",
    PREFIX + "/static/dashboard.js",
    PREFIX + "/static/dashboard.css",
    API + "summary",
    API + "records",
    API + "breakdown",
    API + "export",
]


@pytest.mark.parametrize("url", EVERY_URL)
def test_without_the_password_nothing_is_served(client: FlaskClient, url: str) -> None:
    for headers in ({}, basic("wrong password"), {"Authorization": "Bearer x"}):
        response = client.get(url, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="flask-traffic')
        assert response.mimetype == "text/plain"
        assert b"traffic dashboard" in response.data
        assert b"/item" not in response.data
    assert status(client, url, headers=AUTH) == 200


def test_any_user_name_with_the_password_is_let_in(client: FlaskClient) -> None:
    assert client.get(API + "summary", headers=basic(PASSWORD, user="me")).status_code == 200
    assert client.get(API + "summary", headers=basic(PASSWORD, user="")).status_code == 200


@pytest.mark.parametrize("url", EVERY_URL)
def test_authorize_refusing_is_a_403_everywhere(store: MemoryStore, url: str) -> None:
    allowed: list[bool] = [False]
    seen: list[str] = []

    def authorize() -> bool:
        from flask import request

        seen.append(request.path)
        return allowed[0]

    app = make_app(store, authorize=authorize)
    send(app, KNOWN_TRAFFIC)
    client = app.test_client()
    response = client.get(url, headers=AUTH)
    assert response.status_code == 403
    assert "WWW-Authenticate" not in response.headers
    assert b"/item" not in response.data
    allowed[0] = True
    assert status(client, url) == 200
    assert seen == [url, url]


def test_the_api_is_read_only(client: FlaskClient) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for url in EVERY_URL:
            assert status(client, url, method=method, headers=AUTH) == 405


# -- headers --------------------------------------------------------------------


@pytest.mark.parametrize("url", [*EVERY_URL, API + "summary?since=nonsense"])
def test_security_headers(client: FlaskClient, url: str) -> None:
    for headers in (AUTH, {}):
        with client.get(url, headers=headers) as response:
            pass
        policy = dict(
            part.strip().split(" ", 1)
            for part in response.headers["Content-Security-Policy"].split(";")
        )
        assert policy["default-src"] == "'none'"
        assert policy["script-src"] == "'self'"
        assert policy["style-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        assert policy["base-uri"] == "'none'"
        text = response.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in text
        assert "unsafe-eval" not in text
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        if "/static/" not in url:
            assert response.headers["Cache-Control"] == "no-store"


def test_the_page_has_no_inline_script_or_style(client: FlaskClient) -> None:
    page = client.get(PREFIX + "/", headers=AUTH).get_data(as_text=True)
    assert "<script>" not in page
    assert "style=" not in page
    assert " on" + "click=" not in page
    assert 'src="/traffic/dashboard/static/dashboard.js"' in page
    assert "http://" not in page
    assert "https://" not in page


def test_the_store_time_is_in_a_server_timing_header(client: FlaskClient) -> None:
    timing = client.get(API + "summary", headers=AUTH).headers["Server-Timing"]
    assert timing.startswith("store;dur=")
    assert 'desc="MemoryStore"' in timing


# -- what the API gives ---------------------------------------------------------


def test_summary_is_store_summary(client: FlaskClient, store: MemoryStore) -> None:
    now = datetime.now(timezone.utc)
    hour_ago = quote((now - timedelta(hours=1)).isoformat())
    cases = [
        ("", {}),
        ("?since=all", {}),
        (f"?since={hour_ago}", {"since": unquote(hour_ago)}),
        ("?since=2000-01-01&until=2100-01-01", {"since": "2000-01-01", "until": "2100-01-01"}),
        ("?until=2000-01-01", {"until": "2000-01-01"}),
    ]
    for query, arguments in cases:
        assert get_json(client, API + "summary" + query) == store.summary(**arguments)
    summary = get_json(client, API + "summary?since=24h")
    assert summary["total"] == len(KNOWN_TRAFFIC)
    assert summary["status_classes"] == {"1xx": 0, "2xx": 12, "3xx": 1, "4xx": 3, "5xx": 2}


def test_durations_are_read_as_the_cli_reads_them(client: FlaskClient) -> None:
    assert get_json(client, API + "summary?since=30m")["total"] == len(KNOWN_TRAFFIC)
    later = get_json(client, API + "summary?since=1h&until=30m")
    assert later["total"] == 0
    since = datetime.fromisoformat(later["since"])
    assert abs(since - (datetime.now(timezone.utc) - timedelta(hours=1))) < timedelta(minutes=1)
    # Both ends go back from one moment: 3h to 1h is two hours exactly,
    # counted per minute (a few microseconds more is counted per hour).
    window = get_json(client, API + "summary?since=3h&until=1h")
    until = datetime.fromisoformat(window["until"])
    assert until - datetime.fromisoformat(window["since"]) == timedelta(hours=2)
    assert window["bucket"] == "minute"


def test_records_is_store_read(client: FlaskClient, store: MemoryStore) -> None:
    assert get_json(client, API + "records") == store.read(50)
    assert get_json(client, API + "records?limit=3") == store.read(3)
    assert get_json(client, API + "records?limit=0") == []
    rows = get_json(client, API + "records?limit=5&since=1h&request_route=/item/<int:n>")
    assert rows == store.read(5, where={"request_route": "/item/<int:n>"})
    assert len(rows) == 5


def test_records_pages(client: FlaskClient, store: MemoryStore) -> None:
    everything = store.read(100)
    assert get_json(client, API + "records?limit=4&offset=4") == everything[4:8]
    assert get_json(client, API + "records?limit=4&offset=1000") == []


def _expected_summary(store: Store, keep: Callable[[dict[str, t.Any]], bool]) -> dict[str, t.Any]:
    builder = SummaryBuilder(None, None, store.fields)
    builder.add_rows(row for row in store.read(10_000) if keep(row))
    return builder.result()


def test_filters(client: FlaskClient, store: MemoryStore) -> None:
    item = get_json(client, API + "summary?request_route=/item/<int:n>")
    assert item == _expected_summary(store, lambda r: r["request_route"] == "/item/<int:n>")
    assert item["total"] == 7
    assert item["top_referrers"] == [{"value": "https://example.com/a", "count": 1}]
    not_item = get_json(client, API + "summary?not.request_route=/item/<int:n>")
    assert not_item["total"] == len(KNOWN_TRAFFIC) - 7
    unmatched = get_json(client, API + "summary?request_route=")
    assert unmatched == _expected_summary(store, lambda r: r["request_route"] is None)
    assert unmatched["total"] == 1
    statuses = get_json(
        client, API + "summary?not.response_status_code=200&not.response_status_code=404"
    )
    assert statuses["status_classes"] == {"1xx": 0, "2xx": 1, "3xx": 1, "4xx": 0, "5xx": 2}
    both = get_json(client, API + "records?request_browser=Chrome 131&not.request_path=/item/1")
    assert {row["request_path"] for row in both} == {
        "/item/0",
        "/item/2",
        "/item/3",
        "/item/4",
        "/item/5",
        "/boom",
    }
    assert all(row["request_user_agent"] == CHROME for row in both)


def test_breakdown(client: FlaskClient, store: MemoryStore) -> None:
    breakdown = get_json(client, API + "breakdown?since=1h")
    summary = get_json(client, API + "summary?since=1h")
    assert breakdown["bucket"] == summary["bucket"] == "minute"
    assert [(b["start"], b["count"]) for b in breakdown["buckets"]] == [
        (b["start"], b["count"]) for b in summary["requests_per_bucket"]
    ]
    classes = {
        name: sum(b["status_classes"][name] for b in breakdown["buckets"])
        for name in summary["status_classes"]
    }
    assert classes == summary["status_classes"]
    assert breakdown["overall"]["count"] == summary["total"]
    assert breakdown["overall"]["p50"] <= breakdown["overall"]["p95"] <= breakdown["overall"]["p99"]
    [error] = breakdown["errors"]
    assert error["exception"] == "RuntimeError('database down')"
    assert error["route"] == "/boom"
    assert error["count"] == 2
    assert error["first"] < error["last"]
    assert error["sample"]["request_path"] == "/boom"
    assert error["sample"]["request_date"] == error["last"]
    assert breakdown["route_errors"] == [{"route": "/boom", "count": 2}]
    filtered = get_json(client, API + "breakdown?since=1h&request_browser=Chrome 131")
    assert filtered["overall"]["count"] == 8
    assert filtered["errors"][0]["count"] == 1


def test_breakdown_picks_the_summary_bucket_without_a_window(client: FlaskClient) -> None:
    assert (
        get_json(client, API + "breakdown")["bucket"] == get_json(client, API + "summary")["bucket"]
    )
    assert get_json(client, API + "breakdown?since=7d")["bucket"] == "day"
    assert get_json(client, API + "breakdown?since=2100-01-01")["buckets"] == []


@pytest.mark.parametrize(
    ("query", "parameter", "words"),
    [
        ("summary?since=yesterday", "since", "neither a duration"),
        ("summary?until=soon", "until", "neither a duration"),
        ("summary?since=1h&until=2h", "until", "later than since"),
        ("summary?since=1h&since=2h", "since", "2 times"),
        ("summary?colour=red", "colour", "unknown parameter"),
        ("summary?response_status_code=teapot", "response_status_code", "numbers"),
        ("summary?response_time=fast", "response_time", "numbers"),
        ("summary?request_date=2026-01-01", "request_date", "since and until"),
        ("summary?request_path=/a&request_path=/b", "request_path", "once"),
        ("records?limit=-1", "limit", "whole number"),
        ("records?limit=1001", "limit", "whole number"),
        ("records?offset=x", "offset", "whole number"),
        ("export?format=xml", "format", "csv or jsonl"),
        ("breakdown?not.nothing=1", "not.nothing", "unknown parameter"),
    ],
)
def test_bad_parameters_are_400_saying_which_and_why(
    client: FlaskClient, query: str, parameter: str, words: str
) -> None:
    response = client.get(API + query, headers=AUTH)
    assert response.status_code == 400
    body = response.get_json()
    assert body["parameter"] == parameter
    assert words in body["message"]


def test_a_field_the_store_leaves_out_is_a_400(store: MemoryStore) -> None:
    slim = MemoryStore()
    slim.log_policy.set_from_false(request_date=True, request_path=True)
    app = make_app(slim)
    response = app.test_client().get(API + "summary?request_route=/", headers=AUTH)
    assert response.status_code == 400
    assert "leaves out 'request_route'" in response.get_json()["message"]
    slim.shutdown()


def test_export(client: FlaskClient, store: MemoryStore) -> None:
    response = client.get(API + "export?format=csv&request_route=/item/<int:n>", headers=AUTH)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="traffic-')
    table = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    expected = list(reversed(store.read(100, where={"request_route": "/item/<int:n>"})))
    assert [row["request_path"] for row in table] == [row["request_path"] for row in expected]
    assert list(table[0]) == list(store.fields)

    response = client.get(API + "export?format=jsonl&not.request_route=/item/<int:n>", headers=AUTH)
    assert response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert lines == [r for r in reversed(store.read(100)) if r["request_route"] != "/item/<int:n>"]
    empty = client.get(API + "export?since=2100-01-01", headers=AUTH).get_data(as_text=True)
    assert empty == ",".join(store.fields) + "\r\n"


def test_export_streams_many_rows(store: MemoryStore) -> None:
    app = make_app(store)
    send(app, [("GET", "/", {})] * 4500)
    response = app.test_client().get(API + "export?format=csv", headers=AUTH)
    lines = response.get_data(as_text=True).splitlines()
    assert len(lines) == 4501
    assert lines[0] == ",".join(store.fields)
    assert not any(line == lines[0] for line in lines[1:])


# -- its own requests -------------------------------------------------------------


def test_the_dashboard_does_not_record_itself(client: FlaskClient, store: MemoryStore) -> None:
    before = len(store.read(1000))
    for url in EVERY_URL:
        status(client, url, headers=AUTH)
    assert len(store.read(1000)) == before
    # A refused request is recorded: a guessed password shows in the traffic.
    client.get(API + "summary", headers=basic("guess"))
    newest = store.read(1)[0]
    assert (newest["request_path"], newest["response_status_code"]) == (API + "summary", 401)


def test_record_self(store: MemoryStore) -> None:
    app = make_app(store, record_self=True)
    client = app.test_client()
    client.get(API + "summary", headers=AUTH)
    client.get(PREFIX + "/", headers=AUTH)
    assert [row["request_path"] for row in store.read(2)] == [PREFIX + "/", API + "summary"]


# -- flask traffic dashboard-password ---------------------------------------------


def test_dashboard_password_command(app: Flask) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app.cli, ["traffic", "dashboard-password"], input="a long password\n", obj=None
    )
    assert result.exit_code == 0, result.output
    password_hash = result.stdout.strip()
    assert check_password_hash(password_hash, "a long password")
    assert "TRAFFIC_DASHBOARD_PASSWORD_HASH" in result.stderr
    short = runner.invoke(app.cli, ["traffic", "dashboard-password"], input="short\n")
    assert short.exit_code == 2
    assert "at least 8 characters" in short.output
