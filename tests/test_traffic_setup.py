"""Traffic and init_app: stores, config, several apps, the signal."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flask import Flask
from helpers import make_app

from flask_traffic import Traffic, TrafficRecord, request_traffic
from flask_traffic.stores import JSONStore, MemoryStore


def test_app_factory_and_one_traffic_for_two_apps(tmp_path: Path) -> None:
    traffic = Traffic()
    stores = {}
    apps = {}
    for name in ("one", "two"):
        app = make_app(tmp_path / name, name)
        stores[name] = MemoryStore()
        traffic.init_app(app, stores=[stores[name]])
        apps[name] = app
    apps["one"].test_client().get("/")
    apps["one"].test_client().get("/")
    apps["two"].test_client().get("/")
    assert len(stores["one"].read()) == 2
    assert len(stores["two"].read()) == 1
    assert traffic.get_stores(apps["two"]) == [stores["two"]]
    for app in apps.values():
        traffic.shutdown(app)


def test_stores_given_to_the_constructor(tmp_path: Path) -> None:
    store = MemoryStore()
    traffic = Traffic(stores=store)
    app = make_app(tmp_path)
    traffic.init_app(app)
    app.test_client().get("/")
    assert len(store.read()) == 1
    traffic.shutdown(app)
    traffic.shutdown(app)  # twice is fine


def test_no_store_still_sends_the_signal(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    Traffic(app)
    seen: list[tuple[object, TrafficRecord]] = []

    def handler(sender: Flask, record: TrafficRecord, **extra: object) -> None:
        seen.append((sender, record))

    with request_traffic.connected_to(handler, app):
        app.test_client().get("/")
    assert len(seen) == 1
    assert seen[0][0] is app
    assert seen[0][1].request_path == "/"


def test_registering_twice_is_an_error(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    Traffic(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        Traffic(app)


@pytest.mark.parametrize("stores", ["traffic.json", 42, [MemoryStore(), "x"]])
def test_bad_stores_argument(tmp_path: Path, stores: object) -> None:
    with pytest.raises(TypeError, match="stores"):
        Traffic(make_app(tmp_path), stores=stores)  # type: ignore[arg-type]


def test_same_store_twice_in_the_list(tmp_path: Path) -> None:
    store = MemoryStore()
    with pytest.raises(ValueError, match="twice"):
        Traffic(make_app(tmp_path), stores=[store, store])


def test_module_level_store_serves_every_app_of_a_factory(tmp_path: Path) -> None:
    store = JSONStore()
    first = make_app(tmp_path)
    second = make_app(tmp_path)
    Traffic(first, stores=store)
    Traffic(second, stores=store)
    first.test_client().get("/")
    second.test_client().get("/")
    assert len(store.read()) == 2
    assert store.path == tmp_path / "traffic.json"
    store.shutdown()


@pytest.mark.parametrize("kind", ["json", "sqlite"])
def test_a_store_serving_another_instance_folder_says_so(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_traffic.stores import SQLStore

    store = JSONStore() if kind == "json" else SQLStore()
    Traffic(make_app(tmp_path / "a"), stores=store)
    with caplog.at_level(logging.WARNING, logger="flask_traffic"):
        Traffic(make_app(tmp_path / "a", "same"), stores=store)
        assert not caplog.records  # same folder: nothing to say
        Traffic(make_app(tmp_path / "b", "other"), stores=store)
    store.shutdown()
    if kind == "sqlite":
        assert isinstance(store, SQLStore)
        assert store.database_engine is not None
        store.database_engine.dispose()
    [message] = [r.getMessage() for r in caplog.records]
    assert "the requests of app 'other' go there too" in message
    assert str(tmp_path / "a") in message
    assert str(tmp_path / "b") in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TRAFFIC_ENABLED", "yes"),
        ("TRAFFIC_SYNC", 1),
        ("TRAFFIC_MAX_QUEUE_SIZE", 0),
        ("TRAFFIC_MAX_BATCH_SIZE", 2.5),
        ("TRAFFIC_SCHEDULE_DELAY", -1),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, key: str, value: object) -> None:
    app = make_app(tmp_path)
    app.config[key] = value
    with pytest.raises(ValueError, match=key):
        Traffic(app, stores=MemoryStore())


def test_disabled_records_nothing(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.config["TRAFFIC_ENABLED"] = False
    store = MemoryStore()
    Traffic(app, stores=store)
    app.test_client().get("/")
    assert store.read() == []
    store.shutdown()


def test_sync_mode_writes_in_the_request(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.config["TRAFFIC_SYNC"] = True
    store = JSONStore()
    Traffic(app, stores=store)
    app.test_client().get("/")
    # No flush: the line is in the file when the response is back.
    assert len(store.path.read_text().splitlines()) == 1
    assert store.stats()["exported"] == 1
    store.shutdown()


def test_failing_receiver_is_logged_and_harmless(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tmp_path)
    store = MemoryStore()
    Traffic(app, stores=store)

    def broken(sender: Flask, record: TrafficRecord, **extra: object) -> None:
        raise RuntimeError("receiver bug")

    with (
        caplog.at_level(logging.ERROR, logger="flask_traffic"),
        request_traffic.connected_to(broken, app),
    ):
        response = app.test_client().get("/")
    assert response.status_code == 200
    assert len(store.read()) == 1
    assert any("receiver bug" in (r.exc_text or "") for r in caplog.records)
    store.shutdown()


def test_receiver_changes_are_seen(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    Traffic(app)
    seen: list[str | None] = []

    def handler(sender: Flask, record: TrafficRecord, **extra: object) -> None:
        seen.append(record.request_path)

    client = app.test_client()
    request_traffic.connect(handler, app)
    client.get("/a")
    request_traffic.disconnect(handler, app)
    client.get("/b")
    with request_traffic.muted():
        client.get("/c")
    with request_traffic.connected_to(handler, app):
        client.get("/d")
    assert seen == ["/a", "/d"]
