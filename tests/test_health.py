"""The pipeline's health: traffic.health(app) and flask traffic status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from helpers import make_app

from flask_traffic import Traffic, TrafficRecord
from flask_traffic.stores import JSONStore, MemoryStore, Sink


class SwitchStore(MemoryStore):
    """A memory store whose writes can be made to fail, one record or all."""

    down = False
    bad_path = "/echo/bad"

    def export(self, records: Sequence[TrafficRecord]) -> None:
        if self.down:
            raise ConnectionRefusedError("the database is away")
        if any(record.request_path == self.bad_path for record in records):
            raise ValueError("out of range for this column")
        super().export(records)


class Forwarder(Sink):
    """Sends records on and keeps none, like an exporter."""

    def export(self, records: Sequence[TrafficRecord]) -> None:
        pass


def test_health_says_which_store_fails_and_when_it_is_back(tmp_path: Path) -> None:
    app = make_app(tmp_path, catch_all=True)
    store = SwitchStore(name="db")
    traffic = Traffic(app, stores=[store, JSONStore()])
    client = app.test_client()
    client.get("/")
    traffic.flush(app, 10)
    health = traffic.health(app)
    assert health["ok"] is True
    assert set(health["stores"]) == {"db", "JSONStore"}
    db = health["stores"]["db"]
    assert db["failing"] is False
    assert db["exported"] == 1
    assert db["last_export_at"] is not None

    store.down = True
    client.get("/")
    assert not store.flush(0.5)
    health = traffic.health(app)
    assert health["ok"] is False
    assert health["stores"]["db"]["failing"] is True
    assert health["stores"]["db"]["last_error"] == ("ConnectionRefusedError: the database is away")
    assert health["stores"]["JSONStore"]["failing"] is False

    store.down = False
    assert store.flush(40)
    assert traffic.health(app)["ok"] is True
    traffic.shutdown(app)


def test_status_checks_every_store_and_counts_dead_letters(tmp_path: Path) -> None:
    app = make_app(tmp_path, catch_all=True)
    store = SwitchStore(name="db")
    traffic = Traffic(app, stores=[store, JSONStore(), Forwarder()])
    client = app.test_client()
    for path in ("/", "/echo/bad", "/"):
        client.get(path)
    traffic.flush(app, 10)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["traffic", "status"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Store", "State", "Read", "Dead", "letters", "Rollups", "Error"]
    db_line = next(line for line in lines if line.split()[0] == "db")
    assert db_line.split()[1] == "ok"
    assert db_line.split()[4] == "1"  # the bad record, set aside
    assert next(line for line in lines if "Forwarder" in line).split()[1:3] == ["sends", "only"]
    assert f"  Records set aside are in {tmp_path / 'traffic-dead-letters.jsonl'}." in lines
    # A JSONStore keeps rollups by default: its row says how far they lag
    # (folded, or how many records wait), the others' a dash.
    json_line = next(line for line in lines if line.split()[0] == "JSONStore")
    rollups_at = lines[0].index("Rollups")
    assert json_line[rollups_at:].split()[0] != "-"
    assert db_line[rollups_at:].split()[0] == "-"

    store.down = True
    client.get("/")
    failing = runner.invoke(args=["traffic", "status", "--json"])
    assert failing.exit_code == 1
    found = json.loads(failing.stdout)
    assert found["db"]["failing"] is True
    assert found["db"]["error"] == "ConnectionRefusedError: the database is away"
    assert found["db"]["dead_letters"] == 1
    rollups = found["JSONStore"].pop("rollups")
    assert rollups["rebuilding"] is False
    assert 0 <= rollups["pending"] <= 4  # the worker folds on its own schedule
    assert found["JSONStore"] == {
        "reachable": True,
        "failing": False,
        "error": None,
        "read_seconds": found["JSONStore"]["read_seconds"],
        "dead_letters": 0,
    }
    assert "rollups" not in found["db"]
    assert found["Forwarder"]["reachable"] is None
    store.down = False
    traffic.shutdown(app)
