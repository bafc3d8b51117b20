"""JSONStore and CSVStore: where, what, how it reads back, and under load."""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from pathlib import Path

import helpers
import pytest

from flask_traffic import FIELD_NAMES, LogPolicy, Traffic
from flask_traffic.stores import CSVStore, JSONStore, MemoryStore

HOSTILE_USER_AGENT = "Mozilla/5.0 " + "x" * 10_000
HOSTILE_REFERRERS = ["=1+2", "+cmd", "-2", "@SUM(A1)", "\tx", "'quoted", 'a,"b"', ""]


#: The shared test app, where any path answers 200.
make_app = functools.partial(helpers.make_app, catch_all=True)


def test_files_in_the_instance_folder(tmp_path: Path) -> None:
    instance = tmp_path / "not" / "yet" / "there"
    app = make_app(instance)
    stores = [JSONStore(), CSVStore()]
    Traffic(app, stores=stores)
    app.test_client().get("/")
    for store, name in zip(stores, ["traffic.json", "traffic.csv"], strict=True):
        assert len(store.read()) == 1
        assert store.path == instance / name
        assert store.path.exists()
        store.shutdown()


def test_location_and_filename(tmp_path: Path) -> None:
    store = JSONStore("hits.jsonl", location=tmp_path / "logs")
    assert store.path == tmp_path / "logs" / "hits.jsonl"
    app = make_app(tmp_path / "instance")
    Traffic(app, stores=store)
    app.test_client().get("/")
    assert store.read()[0]["request_path"] == "/"
    assert (tmp_path / "logs" / "hits.jsonl").exists()
    store.shutdown()


def test_unwritable_location_fails_at_init(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RuntimeError, match="location"):
        Traffic(make_app(tmp_path), stores=JSONStore(location=blocker / "sub"))


def test_json_lines_hold_the_enabled_fields(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    policy = LogPolicy().set_from_false(request_path=True, response_status_code=True)
    store = JSONStore(log_policy=policy)
    Traffic(app, stores=store)
    client = app.test_client()
    client.get("/a")
    client.get("/b")
    store.flush()
    lines = store.path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"request_path": "/a", "response_status_code": 200},
        {"request_path": "/b", "response_status_code": 200},
    ]
    store.shutdown()


def test_csv_header_once_and_formula_cells_neutralised(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    store = CSVStore()
    Traffic(app, stores=store)
    client = app.test_client()
    for referrer in HOSTILE_REFERRERS:
        client.get("/", headers={"Referer": referrer})
    store.flush()
    text = store.path.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(FIELD_NAMES)
    assert text.count("request_date,") == 1
    column = FIELD_NAMES.index("request_referrer")
    raw = [row[column] for row in rows[1:]]
    # Every cell a spreadsheet could run starts with an apostrophe.
    assert all(cell.startswith("'") for cell in raw[:6])
    assert raw[6] == 'a,"b"'
    assert raw[7] == "'"  # the empty string; None would be an empty cell
    back = [row["request_referrer"] for row in reversed(store.read())]
    assert back == HOSTILE_REFERRERS
    store.shutdown()


def test_csv_read_gives_numbers_and_none(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    store = CSVStore()
    Traffic(app, stores=store)
    app.test_client().get("/")
    row = store.read()[0]
    assert isinstance(row["response_time"], float)
    assert row["response_status_code"] == 200
    assert isinstance(row["response_size"], int)
    assert row["response_exception"] is None
    assert row["request_referrer"] is None
    store.shutdown()


@pytest.mark.parametrize("store_class", [JSONStore, CSVStore])
def test_read_limit_newest_first_from_a_large_file(tmp_path: Path, store_class: type) -> None:
    app = make_app(tmp_path)
    store = store_class()
    Traffic(app, stores=store)
    client = app.test_client()
    for n in range(10):
        client.get(f"/page/{n}")
    store.flush()
    # Grow the file to 200,000 records with the store's own encoding.
    body = store.path.read_bytes()
    if store_class is CSVStore:
        header, body = body.split(b"\n", 1)
        header += b"\n"
    else:
        header = b""
    store.path.write_bytes(header + body * 20_000)
    client.get("/newest")
    rows = store.read(100)
    assert len(rows) == 100
    assert rows[0]["request_path"] == "/newest"
    assert [row["request_path"] for row in rows[1:11]] == [f"/page/{n}" for n in range(9, -1, -1)]
    assert store.read(0) == []
    with pytest.raises(ValueError, match="limit"):
        store.read(-1)
    store.shutdown()


@pytest.mark.parametrize("store_class", [JSONStore, CSVStore])
def test_torn_last_line_is_ignored_and_not_glued(tmp_path: Path, store_class: type) -> None:
    app = make_app(tmp_path)
    store = store_class()
    Traffic(app, stores=store)
    client = app.test_client()
    client.get("/one")
    store.flush()
    with store.path.open("ab") as file:
        file.write(b'{"request_path":"/cut')  # a writer died mid-line
    assert [row["request_path"] for row in store.read()] == ["/one"]
    client.get("/two")
    assert [row["request_path"] for row in store.read()] == ["/two", "/one"]
    store.shutdown()


def test_json_array_of_0_8_fails_at_init(tmp_path: Path) -> None:
    (tmp_path / "traffic.json").write_text('[{"request_path": "/"}]')
    with pytest.raises(RuntimeError, match="JSON array"):
        Traffic(make_app(tmp_path), stores=JSONStore())


def test_csv_of_0_8_is_appended_in_its_columns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 0.8's columns: everything but the fields added since.
    old_fields = [n for n in FIELD_NAMES if n not in {"request_route", "request_sample_rate"}]
    old_row = "2024-05-01 10:00:00,GET,http://x/,/old,index,127.0.0.1,None,curl,None,None,12,5,200,None,text/html"
    (tmp_path / "traffic.csv").write_text(",".join(old_fields) + "\n" + old_row + "\n")
    app = make_app(tmp_path)
    store = CSVStore()
    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        Traffic(app, stores=store)
    assert any("request_route" in r.getMessage() for r in caplog.records)
    app.test_client().get("/new")
    new, old = store.read()
    assert new["request_path"] == "/new"
    assert new["request_route"] is None  # no column for it in this file
    assert old["request_path"] == "/old"
    assert old["response_size"] == 5
    assert store.path.read_text().splitlines()[0] == ",".join(old_fields)
    store.shutdown()


def test_csv_without_a_header_of_fields_fails_at_init(tmp_path: Path) -> None:
    (tmp_path / "traffic.csv").write_text("name,age\nbob,3\n")
    with pytest.raises(RuntimeError, match="header"):
        Traffic(make_app(tmp_path), stores=CSVStore())


def test_hostile_input_reads_back_unchanged(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    stores = [JSONStore(), CSVStore(), MemoryStore()]
    Traffic(app, stores=stores)
    client = app.test_client()
    client.get("/caf%C3%A9/%E2%9C%93", headers={"User-Agent": HOSTILE_USER_AGENT})
    client.get("/line%0Abreak%0Dreturn", headers={"Referer": '=HYPERLINK("x"),\'a'})
    client.get("/%25encoded%20space", environ_base={"HTTP_USER_AGENT": 'q"uote,comma\n'})
    client.get("/", headers={"Referer": ""})
    json_rows, csv_rows, memory_rows = (store.read() for store in stores)
    assert json_rows == csv_rows == memory_rows
    by_path = {row["request_path"]: row for row in memory_rows}
    assert by_path["/café/✓"]["request_user_agent"] == HOSTILE_USER_AGENT
    assert by_path["/line\nbreak\rreturn"]["request_referrer"] == '=HYPERLINK("x"),\'a'
    assert by_path["/%encoded space"]["request_user_agent"] == 'q"uote,comma\n'
    assert by_path["/"]["request_referrer"] == ""
    for store in stores:
        store.shutdown()


def test_threads_lose_and_tear_nothing(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 50
    stores = [JSONStore(), CSVStore()]
    Traffic(app, stores=stores)

    def hammer(thread: int) -> None:
        helpers.send_requests(app, (f"/t{thread}/{n}" for n in range(200)))

    helpers.run_writers(hammer, 8, timeout=60)
    expected = {f"/t{i}/{n}" for i in range(8) for n in range(200)}
    for store in stores:
        found = [row["request_path"] for row in store.read(10_000)]
        assert len(found) == len(expected)
        assert set(found) == expected
        store.shutdown()


def _worker(number: int, folder: str, count: int) -> None:
    app = make_app(Path(folder))
    app.config["TRAFFIC_MAX_BATCH_SIZE"] = 16
    stores = [JSONStore(), CSVStore()]
    Traffic(app, stores=stores)
    paths = (f"/p{number}/{n}" for n in range(count))
    helpers.send_requests(app, paths, headers={"User-Agent": 'agent, with "quotes"\n'[:14]})
    for store in stores:
        store.shutdown()


def test_four_processes_share_one_json_and_one_csv_file(tmp_path: Path) -> None:
    count = 300
    helpers.run_writers(_worker, 4, str(tmp_path), count, processes=True, timeout=120)
    expected = {f"/p{i}/{n}" for i in range(4) for n in range(count)}
    readers = [JSONStore(location=tmp_path), CSVStore(location=tmp_path)]
    for store in readers:
        found = [row["request_path"] for row in store.read(10_000)]
        assert len(found) == len(expected)
        assert set(found) == expected
    csv_text = (tmp_path / "traffic.csv").read_text()
    assert csv_text.count("request_date,") == 1


def test_csv_reads_back_fields_of_any_length(tmp_path: Path) -> None:
    # Longer than the csv module's default field limit (131,072 characters).
    agent = "Mozilla/5.0 " + "x" * 300_000
    app = make_app(tmp_path)
    store = CSVStore()
    traffic = Traffic(app, stores=store)
    app.test_client().get("/", headers={"User-Agent": agent})
    app.test_client().get("/", headers={"User-Agent": "short"})
    rows = store.read()
    traffic.shutdown(app)
    assert [row["request_user_agent"] for row in rows] == ["short", agent]
