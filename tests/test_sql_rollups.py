"""SQL stores' rollups: a summary answered from folded rollups counts what
the raw summary counts, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import make_app, unique_name

from flask_traffic import Traffic, TrafficRecord
from flask_traffic.stores import SQLStore

UTC = timezone.utc
START = datetime(2026, 11, 27, tzinfo=UTC)


def records(count: int) -> list[TrafficRecord]:
    rng = random.Random(7)
    made = []
    for _ in range(count):
        moment = START + timedelta(seconds=rng.uniform(0, 3 * 86400))
        made.append(
            TrafficRecord(
                int(moment.timestamp() * 1e9),
                int(rng.lognormvariate(16, 1)),
                rng.choice(["GET", "POST"]),
                "http",
                "example.com",
                None,
                f"/p/{rng.randint(0, 50)}",
                "",
                "HTTP/1.1",
                "e",
                rng.choice(["/a", "/b/<x>", None]),
                f"10.0.0.{rng.randint(0, 30)}",
                rng.choice([None, "http://r/1", "http://r/2"]),
                rng.choice(["Mozilla/5.0 Chrome/131.0", "curl/8", "bad \udcff agent"]),
                rng.choice([200, 200, 404, 500]),
                "1",
                "text/html",
            )
        )
    return made


WINDOWS = [
    (None, None),
    (START + timedelta(hours=5, minutes=3, seconds=7), START + timedelta(days=2, seconds=30)),
    (START + timedelta(days=1), START + timedelta(days=2)),
    (START + timedelta(hours=3), START + timedelta(hours=4, minutes=30)),
    (START + timedelta(hours=3, minutes=10), START + timedelta(hours=3, minutes=11)),
    (START + timedelta(days=10), START + timedelta(days=11)),
]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_rollup_summary_counts_what_the_raw_summary_counts(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    options: dict[str, str] = {"database_table_name": unique_name()}
    if kind != "sqlite":
        fixture = "postgres_url" if kind == "postgresql" else "mariadb_url"
        options["database_url"] = request.getfixturevalue(fixture)
    app = make_app(tmp_path)
    rolled = SQLStore(sync=True, rollups=True, **options)
    Traffic(app, stores=rolled)
    raw = SQLStore(sync=True, name="raw", **options)
    Traffic(make_app(tmp_path), stores=raw)
    made = records(3000)
    rolled.export(made[:2500])
    # Nothing is folded before its rows settle on PostgreSQL and MariaDB.
    assert rolled._rollup_tables() is not None
    rolled._rollup_tables().settle = 0.0  # type: ignore[union-attr]
    assert rolled.fold() == 2500
    rolled.export(made[2500:])  # a tail written after the fold
    for since, until in WINDOWS:
        got = rolled.summary(since, until)
        want = raw.summary(since, until)
        assert got["source"]["source"] == "rollups"
        assert got.pop("unique_visitors") == pytest.approx(want.pop("unique_visitors"), rel=0.1)
        got.pop("source")
        want.pop("source")
        assert got == want, (since, until)
    assert rolled.fold() == 500
    if kind != "sqlite":
        import sqlalchemy as sa

        engine = rolled.database_engine
        assert engine is not None
        name = options["database_table_name"]
        with engine.begin() as connection:
            for table in (f"{name}_rollup", f"{name}_rollup_bucket", f"{name}_rollup_state", name):
                connection.execute(sa.text(f"DROP TABLE {table}"))
