"""The example apps run, and record what they serve."""

from __future__ import annotations

import base64
import csv
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_traffic import FIELD_NAMES, FIELDS, LogPolicy
from flask_traffic.extension import CONFIG_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Flask finds the app's root path through sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo() -> Iterator[ModuleType]:
    module = load_example("demo_app")
    yield module
    sys.modules.pop("demo_app", None)


@pytest.fixture
def demo_app(demo: ModuleType, tmp_path: Path) -> Iterator[Flask]:
    app: Flask = demo.create_app(instance_path=str(tmp_path))
    yield app
    for store in demo.traffic.get_stores(app):
        store.shutdown()


@pytest.fixture
def client(demo_app: Flask) -> FlaskClient:
    client = demo_app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = FIREFOX
    return client


def test_pages(client: FlaskClient) -> None:
    assert client.get("/").status_code == 200
    assert client.get("/item/7").get_json() == {"item": 7}
    assert client.get("/missing").status_code == 404
    assert client.get("/error").status_code == 500


def test_traffic_lists_requests_newest_first(client: FlaskClient) -> None:
    before = datetime.now(timezone.utc)
    index_page = client.get("/").data
    client.get("/item/7?color=red", headers={"Referer": "http://127.0.0.1:5000/"})
    client.post("/item/8")
    client.get("/missing")
    client.get("/error")
    client.get("/no/such/page")

    response = client.get("/traffic")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    rows = response.get_json()

    assert [(r["request_method"], r["request_path"], r["response_status_code"]) for r in rows] == [
        ("GET", "/no/such/page", 404),
        ("GET", "/error", 500),
        ("GET", "/missing", 404),
        ("POST", "/item/8", 405),
        ("GET", "/item/7", 200),
        ("GET", "/", 200),
    ]
    for row in rows:
        assert sorted(row) == sorted(FIELD_NAMES)
        date = datetime.fromisoformat(row["request_date"])
        assert before - timedelta(seconds=1) <= date <= datetime.now(timezone.utc)
        assert row["request_host_url"] == "http://localhost/"
        assert row["request_remote_address"] == "127.0.0.1"
        assert row["request_user_agent"] == FIREFOX
        assert row["request_browser"] == "Firefox 133"
        assert row["request_platform"] == "Linux"
        assert isinstance(row["response_time"], float)
        assert row["response_time"] >= 0

    missing_page, error, missing, not_allowed, item, index = rows
    assert [r["request_date"] for r in rows] == sorted(
        (r["request_date"] for r in rows), reverse=True
    )

    assert index["request_endpoint"] == "index"
    assert index["request_route"] == "/"
    assert index["response_mimetype"] == "text/html"
    assert index["response_size"] == len(index_page)
    assert index["response_exception"] is None
    assert index["request_referrer"] is None

    assert item["request_endpoint"] == "item"
    assert item["request_route"] == "/item/<int:n>"
    assert item["request_referrer"] == "http://127.0.0.1:5000/"
    assert item["response_mimetype"] == "application/json"

    assert not_allowed["request_endpoint"] is None
    assert missing["request_endpoint"] == "missing"
    assert missing["response_exception"] is None

    assert error["request_endpoint"] == "error"
    assert error["response_exception"] == "RuntimeError('something broke')"
    assert missing_page["request_endpoint"] is None
    assert missing_page["request_route"] is None


def test_traffic_page_is_recorded_too(client: FlaskClient) -> None:
    client.get("/")
    assert len(client.get("/traffic").get_json()) == 1
    rows = client.get("/traffic").get_json()
    assert [r["request_path"] for r in rows] == ["/traffic", "/"]
    assert rows[0]["request_endpoint"] == "show_traffic"


def test_summary_page(client: FlaskClient) -> None:
    for path in ("/", "/item/1", "/item/2", "/missing", "/error"):
        client.get(path)
    summary = client.get("/traffic/summary").get_json()
    assert summary["total"] == 5
    assert summary["status_classes"] == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}
    assert summary["error_rate"] == 0.2
    routes = {entry["route"]: entry["count"] for entry in summary["routes"]}
    assert routes == {"/item/<int:n>": 2, "/": 1, "/missing": 1, "/error": 1}
    assert summary["top_browsers"] == [{"value": "Firefox 133", "count": 5}]
    assert summary["unique_visitors"] == 1
    later = client.get("/traffic/summary?since=2100-01-01T00:00:00Z").get_json()
    assert later["total"] == 0


def test_files(demo: ModuleType, demo_app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    client.get("/item/1")
    client.get("/traffic")
    client.get("/missing")
    json_store, csv_store = demo.traffic.get_stores(demo_app)
    assert json_store.flush(timeout=10)
    assert csv_store.flush(timeout=10)

    lines = (tmp_path / "traffic.json").read_text().splitlines()
    assert [json.loads(line)["request_path"] for line in lines] == [
        "/item/1",
        "/traffic",
        "/missing",
    ]

    with open(tmp_path / "traffic.csv", newline="") as f:
        table = list(csv.reader(f))
    columns = [
        "request_date",
        "request_method",
        "request_path",
        "response_time",
        "response_status_code",
    ]
    assert table[0] == columns
    assert [row[1:3] + row[4:] for row in table[1:]] == [
        ["GET", "/item/1", "200"],
        ["GET", "/missing", "404"],
    ]
    rows = csv_store.read()
    assert [list(row) for row in rows] == [columns, columns]
    assert [(row["request_path"], row["response_status_code"]) for row in rows] == [
        ("/missing", 404),
        ("/item/1", 200),
    ]
    assert all(isinstance(row["response_time"], float) for row in rows)


# The README's reference tables are kept in step with the code.


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_field_table_is_fields(readme: str) -> None:
    start = readme.index("<!-- fields: generated from flask_traffic.record.FIELDS -->")
    end = readme.index("<!-- end of fields -->", start)
    table = readme[start:end].splitlines()[3:]
    assert table == [f"| `{f.name}` | {f.type} | {f.doc.replace('<', '&lt;')} |" for f in FIELDS]


def test_readme_lists_every_config_key(readme: str) -> None:
    for key, default in CONFIG_DEFAULTS.items():
        assert f"| `{key}` | `{default!r}` |" in readme


def test_readme_lists_every_log_policy_option(readme: str) -> None:
    for name in [*inspect.signature(LogPolicy).parameters, "set_from_true", "set_from_false"]:
        assert f"| `{name}` |" in readme or f"| `{name}(**fields)` |" in readme


def test_readme_summary_index_snippet_has_the_summary_index_columns(readme: str) -> None:
    from flask_traffic.stores.sqlschema import SUMMARY_INDEX_COLUMNS

    start = readme.index('"ix_hit_summary",')
    snippet = readme[start : readme.index(")", start)]
    assert tuple(re.findall(r'"(\w+)"', snippet)[1:]) == SUMMARY_INDEX_COLUMNS


# The demo app mounts the dashboard behind a password.


def _basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"me:{password}".encode()).decode()}


def test_demo_dashboard(demo: ModuleType, tmp_path: Path) -> None:
    app: Flask = demo.create_app(instance_path=str(tmp_path), dashboard_password="demo password")
    try:
        client = app.test_client()
        client.get("/item/1")
        client.get("/error")
        assert client.get("/traffic/dashboard/").status_code == 401
        page = client.get("/traffic/dashboard/", headers=_basic("demo password"))
        assert page.status_code == 200
        assert b"dashboard.js" in page.data
        summary = client.get("/traffic/dashboard/api/summary", headers=_basic("demo password"))
        json_store = demo.traffic.get_stores(app)[0]
        assert summary.get_json() == json_store.summary()
        assert summary.get_json()["total"] == 3  # the two pages and the refused login
        paths = [row["request_path"] for row in client.get("/traffic").get_json()]
        assert paths == ["/traffic/dashboard/", "/error", "/item/1"]
    finally:
        for store in demo.traffic.get_stores(app):
            store.shutdown()


def test_demo_prints_where_and_how_to_log_in(
    demo: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLASK_TRAFFIC_DASHBOARD_PASSWORD_HASH", raising=False)
    app: Flask = demo.create_app(instance_path=str(tmp_path))
    try:
        printed = capsys.readouterr().err
        match = re.search(
            r"(http://127\.0\.0\.1:5000/traffic/dashboard/) .*password (\S+)\)", printed
        )
        assert match is not None, printed
        response = app.test_client().get("/traffic/dashboard/", headers=_basic(match[2]))
        assert response.status_code == 200
    finally:
        for store in demo.traffic.get_stores(app):
            store.shutdown()
