"""SQL stores' rollups: a summary answered from folded rollups counts what
the raw summary counts, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import random
import re
import time
import typing as t
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from helpers import (
    database_url,
    drop_tables,
    make_app,
    random_record,
    statements_run,
    unique_name,
)

from flask_traffic import Traffic, TrafficRecord
from flask_traffic.stores import SQLStore

UTC = timezone.utc
START = datetime(2026, 11, 27, tzinfo=UTC)


def records(count: int) -> list[TrafficRecord]:
    rng = random.Random(7)
    made = []
    for _ in range(count):
        moment = START + timedelta(seconds=rng.uniform(0, 3 * 86400))
        made.append(random_record(rng, moment))
    return made


WINDOWS = [
    (None, None),
    (START + timedelta(hours=5, minutes=3, seconds=7), START + timedelta(days=2, seconds=30)),
    (START + timedelta(days=1), START + timedelta(days=2)),
    (START + timedelta(hours=3), START + timedelta(hours=4, minutes=30)),
    (START + timedelta(hours=3, minutes=10), START + timedelta(hours=3, minutes=11)),
    (START + timedelta(days=10), START + timedelta(days=11)),
    # No whole minute (a folded minute holding 4 records): every record of
    # it is read.
    (
        START + timedelta(hours=48, minutes=47, seconds=0.5),
        START + timedelta(hours=48, minutes=47, seconds=59.5),
    ),
]


def rollup_pair(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[SQLStore, SQLStore]:
    """A store keeping rollups on a table of its own of ``kind``'s
    database, folding every row at once, and a store without rollups
    reading the same table: the raw summary to compare with."""
    options: dict[str, str] = {"database_table_name": unique_name()}
    if kind != "sqlite":
        options["database_url"] = database_url(kind, request)
    rolled = SQLStore(sync=True, rollups=True, **options)
    Traffic(make_app(tmp_path), stores=rolled)
    raw = SQLStore(sync=True, name="raw", rollups=False, **options)
    Traffic(make_app(tmp_path), stores=raw)
    tables = rolled._rollup_tables()
    assert tables is not None
    # Nothing is folded before its rows settle on PostgreSQL and MariaDB.
    tables.settle = 0.0
    return rolled, raw


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_rollup_summary_counts_what_the_raw_summary_counts(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rolled, raw = rollup_pair(kind, tmp_path, request)
    made = records(3000)
    rolled.export(made[:2500])
    assert rolled.fold() == 2500
    rolled.export(made[2500:])  # a tail written after the fold
    for since, until in WINDOWS:
        got = rolled.summary(since, until)
        source = got.pop("source")
        if got["bucket"] == "minute":
            # Minutes are not kept: a window counted per minute is counted
            # from the records.
            assert source == {"source": "records"}
            want = raw.summary(since, until)
            want.pop("source")
            assert got == want, (since, until)
            continue
        assert source["source"] == "rollups"
        # Counted per hour or day, the window's edges are rounded out to
        # hours: the records of that window are what it must equal.
        counted = tuple(
            None if text is None else datetime.fromisoformat(text)
            for text in (source["since"], source["until"])
        )
        if (since, until) == (None, None):
            assert counted == (since, until)
        else:
            assert since is not None
            assert until is not None
            assert counted[0] is not None
            assert counted[1] is not None
            assert counted[0] <= since < until <= counted[1]
            # Rounded out to the summary's bucket: an hour, or a day.
            step = timedelta(days=1) if got["bucket"] == "day" else timedelta(hours=1)
            assert since - counted[0] < step > counted[1] - until
            assert counted[0].minute == counted[1].minute == 0
            assert got["bucket"] != "day" or counted[0].hour == counted[1].hour == 0
        want = raw.summary(*counted)
        assert want["total"] or since == START + timedelta(days=10), (since, until)
        want.pop("source")
        assert got.pop("unique_visitors") == pytest.approx(want.pop("unique_visitors"), rel=0.1)
        assert got == want, (since, until)
    assert rolled.fold() == 500
    if kind != "sqlite":
        drop_tables(rolled)


#: Text a database may group wrongly: case and trailing spaces (MariaDB's
#: default collation), a lone surrogate, a NUL and U+FFFE (stored escaped),
#: non-ASCII text, the empty text.
AWKWARD = ["/A", "/a", "/a ", "/\udcff", "/nul\x00", "\ufffe/x", "/caf\u00e9", ""]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_a_fold_tells_apart_every_text_and_weighs_sampled_records(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from flask_traffic import LogPolicy

    options: dict[str, t.Any] = {"database_table_name": unique_name()}
    if kind != "sqlite":
        options["database_url"] = database_url(kind, request)
    # 5xx responses are always kept: the weights are 1 and 1 / 0.3.
    rolled = SQLStore(sync=True, rollups=True, log_policy=LogPolicy(sample_rate=0.3), **options)
    Traffic(make_app(tmp_path), stores=rolled)
    raw = SQLStore(sync=True, name="raw", rollups=False, **options)
    Traffic(make_app(tmp_path), stores=raw)
    rng = random.Random(3)
    made = [
        TrafficRecord(
            int((START + timedelta(seconds=97 * n)).timestamp() * 1e9),
            int(rng.lognormvariate(16, 1)),
            "GET",
            "http",
            "example.com",
            None,
            AWKWARD[n % len(AWKWARD)],
            "",
            "HTTP/1.1",
            "e",
            AWKWARD[n % 3],
            AWKWARD[n % 7],
            AWKWARD[n % 5],
            rng.choice(["Mozilla/5.0 Chrome/131.0", "curl/8", "bad \udcff agent"]),
            rng.choice([200, 200, 404, 500]),
            "1",
            "text/html",
        )
        for n in range(1200)
    ]
    rolled.export(made)
    tables = rolled._rollup_tables()
    assert tables is not None
    tables.settle = 0.0  # type: ignore[union-attr]
    assert rolled.fold() == len(made)
    for since, until in [(None, None), (START + timedelta(hours=2), START + timedelta(days=1))]:
        got = rolled.summary(since, until)
        assert got["source"]["source"] == "rollups"
        want = raw.summary(since, until)
        assert got["sampled"]
        assert want["sampled"]
        assert {entry["value"] for entry in got["top_paths"]} == set(AWKWARD)
        assert got.pop("unique_visitors") == pytest.approx(want.pop("unique_visitors"), rel=0.1)
        assert counts(got) == counts(want), (since, until)
    if kind != "sqlite":
        drop_tables(rolled)


def counts(summary: dict[str, t.Any]) -> dict[str, t.Any]:
    """What must equal between two summaries of the same records: all but
    the source and the visitors' estimate."""
    return {k: v for k, v in summary.items() if k not in ("source", "unique_visitors")}


@pytest.fixture
def sqlite_pair(tmp_path: Path) -> tuple[Flask, SQLStore, SQLStore]:
    """An app with a SQLite store keeping rollups, and a second store
    without them reading the same table: the raw summary to compare with."""
    app = make_app(tmp_path)
    rolled = SQLStore(sync=True, rollups=True)
    Traffic(app, stores=rolled)
    raw = SQLStore(sync=True, name="raw", rollups=False)
    Traffic(make_app(tmp_path), stores=raw)
    return app, rolled, raw


def test_a_rebuild_interrupted_and_written_through_counts_every_record_once(
    sqlite_pair: tuple[Flask, SQLStore, SQLStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_traffic.stores import _sqlrollups

    monkeypatch.setattr(_sqlrollups, "FOLD_CHUNK", 400)
    _, rolled, raw = sqlite_pair
    made = records(3000)
    rolled.export(made[:2000])
    assert rolled.fold() == 2000
    window = (START + timedelta(days=1, hours=2), None)
    steps = 0

    def interrupt(count: int) -> None:
        # The app writes on while the rebuild runs; then it is stopped.
        nonlocal steps
        steps += 1
        rolled.export(made[2000 + 100 * (steps - 1) : 2000 + 100 * steps])
        if steps == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rolled.rebuild_rollups(START + timedelta(days=1, hours=5), interrupt)
    # Half rebuilt: the summary is counted from the records meanwhile.
    during = rolled.summary(*window)
    assert during["source"] == {"source": "records"}
    assert counts(during) == counts(raw.summary(*window))
    rolled.export(made[2200:])
    assert rolled.fold() > 0  # goes on with the rebuild, and the new rows
    for since, until in [window, (None, None), (START, START + timedelta(days=2))]:
        after = rolled.summary(since, until)
        assert after["source"]["source"] == "rollups"
        assert counts(after) == counts(raw.summary(since, until)), (since, until)
    assert rolled.summary()["total"] == 3000


def test_flask_traffic_rollup_folds_and_rebuilds(
    sqlite_pair: tuple[Flask, SQLStore, SQLStore],
) -> None:
    app, rolled, raw = sqlite_pair
    rolled.export(records(1000))
    runner = app.test_cli_runner()
    folded = runner.invoke(args=["traffic", "rollup"])
    assert folded.exit_code == 0, folded.output
    assert "SQLStore: folded 1,000 records." in folded.output
    rebuilt = runner.invoke(args=["traffic", "rollup", "--rebuild", "--since", "2026-11-28"])
    assert rebuilt.exit_code == 0, rebuilt.output
    rebuilt_count = int(rebuilt.output.split("rebuilt from ")[1].split(" ")[0].replace(",", ""))
    assert rebuilt_count == sum(1 for row in raw.read(5000) if row["request_date"] >= "2026-11-28")
    assert counts(rolled.summary()) == counts(raw.summary())
    wrong = runner.invoke(args=["traffic", "rollup", "--since", "2026-11-28"])
    assert wrong.exit_code == 2
    assert "--since goes with --rebuild" in wrong.output


def test_rollups_need_every_field_they_count_and_say_where_a_summary_came_from(
    tmp_path: Path,
) -> None:
    from flask_traffic import LogPolicy

    partial = LogPolicy().set_from_true(response_time=False)
    store = SQLStore(sync=True, rollups=True, log_policy=partial)
    Traffic(make_app(tmp_path), stores=store)
    assert not store.keeps_rollups
    with pytest.raises(TypeError, match="its LogPolicy leaves out response_time"):
        store.rebuild_rollups()
    store.export(records(10))
    assert store.fold() == 0
    assert store.summary()["source"] == {"source": "records"}


def test_flask_traffic_rollup_says_why_a_store_keeps_none(tmp_path: Path) -> None:
    from flask_traffic import LogPolicy
    from flask_traffic.stores import MemoryStore

    app = make_app(tmp_path)
    off = SQLStore(sync=True, name="off", rollups=False)
    narrow = SQLStore(
        sync=True,
        name="narrow",
        database_table_name="narrow",
        log_policy=LogPolicy().set_from_true(request_referrer=False),
    )
    traffic = Traffic(app, stores=[off, narrow, MemoryStore(name="memory")])
    runner = app.test_cli_runner()
    for name, reason in [
        ("off", "it was made with rollups=False"),
        ("narrow", "its LogPolicy leaves out request_referrer, which they count"),
        ("memory", "a MemoryStore cannot keep them"),
    ]:
        result = runner.invoke(args=["traffic", "rollup", "--store", name])
        assert result.exit_code == 2, result.output
        assert f"{name} keeps no rollups: {reason}" in result.output
    # Without --store, the stores keeping none are passed over.
    result = runner.invoke(args=["traffic", "rollup"])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    traffic.shutdown(app)


def test_an_hour_over_keeps_its_200_leading_paths_and_the_rest_as_other(
    sqlite_pair: tuple[Flask, SQLStore, SQLStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_traffic.stores import _sqlrollupparts, _sqlrollups

    _, rolled, raw = sqlite_pair
    # Of the day before yesterday: a fold packs the buckets over of the last
    # 14 days (yesterday's day is not over in the first minutes after midnight).
    hour = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    made = []
    for n in range(300):  # 300 paths, the first ten far ahead of the rest
        for _ in range(20 if n < 10 else 1):
            made.append(
                TrafficRecord(
                    int((hour + timedelta(seconds=len(made))).timestamp() * 1e9),
                    1_000_000,
                    "GET",
                    "http",
                    "example.com",
                    None,
                    f"/p/{n}",
                    "",
                    "HTTP/1.1",
                    "e",
                    "/p/<n>",
                    "10.0.0.1",
                    None,
                    "curl/8",
                    200,
                    "1",
                    "text/plain",
                )
            )
    # Folded while the hour is still open: kept whole...
    for module in (_sqlrollups, _sqlrollupparts):
        monkeypatch.setattr(module, "is_over", lambda *args: False)
    rolled.export(made)
    assert rolled.fold() == len(made)
    window = (hour - timedelta(hours=3), hour + timedelta(hours=3))
    assert rolled.summary(*window)["source"]["approximate"] == []
    # ...and cut at the next fold once it is over, though nothing new came.
    monkeypatch.undo()
    assert rolled.fold() == 0
    got = rolled.summary(*window)
    assert got.pop("source")["approximate"] == ["top_paths"]
    want = raw.summary(*window)
    want.pop("source")
    assert got.pop("unique_visitors") == want.pop("unique_visitors") == 1
    assert got == want  # the top 10 and every count are the same
    engine = rolled.database_engine
    assert engine is not None
    import sqlalchemy as sa

    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT unit, part, key_hash, key FROM _traffic__rollup ORDER BY key_hash")
        ).all()
    # Each bucket is its loose parts' rows and one document of the rest.
    assert sorted({(unit, part) for unit, part, _, _ in rows}) == [
        (unit, part)
        for unit in ("day", "hour")
        for part in ("packed", "records", "status", "total")
    ]
    for unit in ("day", "hour"):
        document = json.loads(
            "".join(key for kind, part, _, key in rows if (kind, part) == (unit, "packed"))
        )
        paths = dict(document["top_paths"])
        assert len(paths) == 200
        assert all(paths[f"/p/{n}"] == 20 for n in range(10))
        assert document["o:top_paths"] == [["", 100.0]]


def test_rollups_outlive_the_records_max_age_removes(tmp_path: Path) -> None:
    """Raw requests kept a day, their hours and days for longer: a summary
    of last week still counts them, from the rollups."""
    app = make_app(tmp_path)
    rolled = SQLStore(sync=True, rollups=True, max_age=timedelta(days=1))
    Traffic(app, stores=rolled)
    made = records(600)  # three days, ending days before now
    rolled.export(made)
    assert rolled.prune() == 600  # folded first, then removed
    assert rolled.read(10) == []
    window = (START, START + timedelta(days=3))
    got = rolled.summary(*window)
    assert got["source"]["source"] == "rollups"
    assert got["total"] == 600
    assert got["requests_per_bucket"][0]["start"] == "2026-11-27T00:00:00+00:00"
    # A window counted per minute reads the records, which are gone.
    short = rolled.summary(START, START + timedelta(hours=1))
    assert short["source"] == {"source": "records"}
    assert short["total"] == 0


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_fold_goes_on_chunk_after_chunk_up_to_the_settled_ids(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ids may commit out of order, a fold takes the ids seen a while
    before, all of them, however many chunks that is."""
    from flask_traffic.stores import _sqlrollups

    monkeypatch.setattr(_sqlrollups, "FOLD_CHUNK", 400)
    name = unique_name()
    store = SQLStore(
        sync=True, rollups=True, database_table_name=name, database_url=database_url(kind, request)
    )
    Traffic(make_app(tmp_path), stores=store)
    try:
        rollups = store._rollup_tables()
        assert rollups is not None
        rollups.settle = 0.3
        store.export(records(2500))
        assert store.fold() == 0  # notes the newest id
        time.sleep(0.4)
        assert store.fold() == 2500
        store.export(records(100))
        time.sleep(0.4)
        assert store.fold() == 0  # the ids up to the last note are folded; notes anew
        time.sleep(0.4)
        assert store.fold() == 100
    finally:
        import sqlalchemy as sa

        engine = store.database_engine
        assert engine is not None
        with engine.begin() as connection:
            for table in (f"{name}_rollup", f"{name}_rollup_bucket", f"{name}_rollup_state", name):
                connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


def test_a_folds_statements_bound_their_walk_by_the_chunk(
    sqlite_pair: tuple[Flask, SQLStore, SQLStore],
) -> None:
    # Given two upper bounds on the id (the newest id to fold, the chunk's
    # last), SQLite bounds its walk by the first and filters by the other:
    # every chunk then read the table to its end (1.6 s a chunk on 10
    # million rows). Each walk of a fold (a statement, or each SELECT of a
    # UNION) has one upper bound on it.

    _, rolled, _ = sqlite_pair
    rolled.export(records(300))
    engine = rolled.database_engine
    assert engine is not None
    with statements_run(engine) as statements:
        assert rolled.fold() == 300
    reads = [text for text, _ in statements if "traffic_id >" in text]
    assert len(reads) >= 5
    for text in reads:
        assert text.count("traffic_id <") == text.count("traffic_id >"), text
        walks = len(re.findall(rf"FROM {rolled.database_log_table.name}\b", text))
        assert text.count("traffic_id <") == walks, text


def test_a_worker_folds_a_backlog_between_batches_and_drops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A table of records never folded (rollups new on an old table, say):
    # the worker folds it a budget at a time, and writes the requests that
    # come meanwhile in between, rather than after the whole backlog.
    from flask_traffic.stores import _rollupparts, _sqlrollups, base

    monkeypatch.setattr(_sqlrollups, "FOLD_CHUNK", 500)
    monkeypatch.setattr(base, "WORKER_FOLD_BUDGET", 0.0)
    assert _rollupparts.WORKER_FOLD_BUDGET > 0
    old = SQLStore(sync=True, rollups=False)
    Traffic(make_app(tmp_path), stores=old)
    backlog = records(20_000)
    for start in range(0, len(backlog), 2000):
        old.export(backlog[start : start + 2000])
    store = SQLStore(rollups=True)
    app = make_app(tmp_path, "worker")
    Traffic(app, stores=store)
    app.test_client().get("/item/1")
    assert store.flush(10)
    # Written while the fold is under way: the backlog is not folded yet.
    state = store.rollup_state()
    assert state is not None
    assert state.pending > 0
    assert store.read(1)[0]["request_path"] == "/item/1"
    # More requests while it folds; once the backlog is folded, at most
    # those wait (until the next pass).
    sent, deadline = 1, time.monotonic() + 60
    while (state := store.rollup_state()) is not None and state.pending > sent:
        assert time.monotonic() < deadline, state
        if sent < 50:
            app.test_client().get("/item/2")
            sent += 1
        time.sleep(0.05)
    assert store.flush(10)
    stats = store.stats()
    assert stats["dropped"] == 0
    summary = store.summary(START - timedelta(days=1), START + timedelta(days=4))
    assert summary["source"]["source"] == "rollups"
    assert summary["total"] == len(backlog)
    store.shutdown()
    old.shutdown()


def postgresql_store(tmp_path: Path, request: pytest.FixtureRequest) -> SQLStore:
    """A store keeping rollups on a table of its own on the test PostgreSQL,
    folding every row at once."""
    store = SQLStore(
        sync=True,
        rollups=True,
        database_table_name=unique_name(),
        database_url=database_url("postgresql", request),
    )
    Traffic(make_app(tmp_path), stores=store)
    tables = store._rollup_tables()
    assert tables is not None
    tables.settle = 0.0
    return store


def table_pages(engine: sa.Engine, name: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT pg_relation_size(CAST(:name AS regclass)) / 8192"), {"name": name}
            ).scalar_one()
        )


def copy_pages(engine: sa.Engine, name: str) -> int:
    """The pages of a fresh copy of the table ``name``'s rows."""
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TEMPORARY TABLE fresh AS SELECT * FROM {name}"))
        pages = connection.execute(sa.text("SELECT pg_relation_size('fresh') / 8192")).scalar_one()
        connection.execute(sa.text("DROP TABLE fresh"))
    return int(pages)


def test_a_rebuild_on_postgresql_vacuums_in_place_a_table_another_session_holds(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rewriting a table waits for every other session's lock on it; a
    # session reading it for long makes the rebuild vacuum it in place
    # instead, rather than queue the site's folds and summaries behind.
    from flask_traffic.stores import _sqlrollupparts

    monkeypatch.setattr(_sqlrollupparts, "_REWRITE_WAIT", "200ms")
    store = postgresql_store(tmp_path, request)
    try:
        store.export(records(2000))
        tables = store._rollup_tables()
        assert tables is not None
        assert store.fold() == 2000
        engine = store.database_engine
        assert engine is not None
        with engine.connect() as reader:
            reader.execute(sa.text(f"LOCK TABLE {tables.sums.name} IN ACCESS SHARE MODE"))
            started = time.monotonic()
            assert store.rebuild_rollups() == 2000
            assert time.monotonic() - started < 30
            reader.rollback()
        with engine.connect() as connection:
            vacuumed = dict(
                connection.execute(
                    sa.text(
                        "SELECT relname, last_vacuum FROM pg_stat_user_tables "
                        "WHERE relname IN (:sums, :buckets)"
                    ),
                    {"sums": tables.sums.name, "buckets": tables.buckets.name},
                ).all()
            )
        # The one held was vacuumed in place; the other was rewritten.
        assert vacuumed[tables.sums.name] is not None
        assert table_pages(engine, tables.buckets.name) <= copy_pages(engine, tables.buckets.name)
        assert store.summary()["total"] == 2000
    finally:
        drop_tables(store)
        store.shutdown()


@pytest.mark.parametrize("how", ["rebuild", "backlog"])
def test_a_rebuild_on_postgresql_leaves_no_dead_rows_behind(
    how: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebuild's upserts and compactions leave dead rows that a summary's
    # index scans step over until autovacuum comes: the rebuild vacuums,
    # and so does a fold of a backlog (here 2,000 rows stand for 100,000).
    # The traffic table is analyzed too, so that the records after the fold
    # position are found by their id.
    import sqlalchemy as sa

    from flask_traffic.stores import _sqlrollups

    monkeypatch.setattr(_sqlrollups, "_VACUUM_AFTER", 2000)

    store = postgresql_store(tmp_path, request)
    try:
        store.export(records(2000))
        tables = store._rollup_tables()
        assert tables is not None
        if how == "rebuild":
            assert store.rebuild_rollups() == 2000
        else:
            assert store.fold() == 2000
        engine = store.database_engine
        assert engine is not None
        with engine.connect() as connection:
            vacuumed = connection.execute(
                sa.text(
                    "SELECT relname, n_dead_tup, last_vacuum, last_analyze "
                    "FROM pg_stat_user_tables WHERE relname IN (:sums, :buckets, :raw)"
                ),
                {
                    "sums": tables.sums.name,
                    "buckets": tables.buckets.name,
                    "raw": store.database_log_table.name,
                },
            ).all()
        assert len(vacuumed) == 3
        for name, dead, _, analyzed_at in vacuumed:
            assert analyzed_at is not None, name
            if name != store.database_log_table.name:
                assert dead == 0, name
        # Rewritten: no larger than a copy of what they hold.
        assert table_pages(engine, tables.sums.name) <= copy_pages(engine, tables.sums.name)
        raw = SQLStore(
            sync=True,
            rollups=False,
            name="raw",
            database_table_name=store.database_log_table.name,
            database_url=database_url("postgresql", request),
        )
        Traffic(make_app(tmp_path, "raw"), stores=raw)
        assert counts(store.summary()) == counts(raw.summary())
        raw.shutdown()
    finally:
        drop_tables(store)
        store.shutdown()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_a_path_the_rollups_rank_below_the_top_ten_rises_with_the_records_not_yet_folded(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The database hands over only the values of a top list that can
    rank; those the records read besides lift into it are among them."""
    rolled, raw = rollup_pair(kind, tmp_path, request)
    rng = random.Random(3)
    at = START + timedelta(hours=5)
    # /t0 30 times down to /t11 19 times: /t10 and /t11 rank 11th and 12th.
    folded = [
        random_record(rng, at + timedelta(seconds=n + rank / 100), f"/t{rank}")
        for rank in range(12)
        for n in range(30 - rank)
    ]
    rolled.export(folded)
    assert rolled.fold() == len(folded)
    # Six more of /t11, written after the fold: 25 in all, fifth.
    rolled.export(
        [random_record(rng, at + timedelta(minutes=40, seconds=n), "/t11") for n in range(6)]
    )
    since, until = START, START + timedelta(days=1)
    got = rolled.summary(since, until)
    assert got["source"]["source"] == "rollups"
    assert got["source"]["raw_records"] == 6
    want = raw.summary(since, until)
    assert got["top_paths"] == want["top_paths"]
    assert {"value": "/t11", "count": 25} in got["top_paths"]
    assert counts(got) == counts(want)
    if kind != "sqlite":
        drop_tables(rolled)


def test_postgresqls_upsert_of_many_rows_adds_up_rows_of_one_key(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL's sums are upserted in one statement (``unnest``), which
    may not touch a row twice: two rows of one key in a fold (two keys of
    one hash) add up as two statements would, and a row already there is
    added to."""
    import sqlalchemy as sa

    from flask_traffic.stores._sqlinsert import make_upsert

    store = postgresql_store(tmp_path, request)
    try:
        tables = store._rollup_tables()
        assert tables is not None
        engine = store.database_engine
        assert engine is not None
        upsert = make_upsert(engine.dialect, tables.sums, {"weight": "add"})
        row = {"unit": "hour", "start": START, "part": "top_paths", "key_hash": 7, "key": "/a"}
        with engine.begin() as connection:
            upsert(connection, [{**row, "weight": 1.5}, {**row, "weight": 2.0}])
            upsert(connection, [{**row, "weight": 0.25}, {**row, "key_hash": 8, "weight": 1.0}])
            found = connection.execute(
                sa.select(tables.sums.c.key_hash, tables.sums.c.weight).order_by(
                    tables.sums.c.key_hash
                )
            ).all()
        assert [tuple(item) for item in found] == [(7, 3.75), (8, 1.0)]
    finally:
        drop_tables(store)
        store.shutdown()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_packed_buckets_and_rows_added_beside_them_count_what_the_records_do(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket over is packed into a document (over several rows when
    long); records folded into it later are rows beside it until the next
    compaction packs them in; the day under way is read as its hours."""
    from flask_traffic.stores import _sqlrollups

    rolled, raw = rollup_pair(kind, tmp_path, request)
    tables = rolled._rollup_tables()
    assert tables is not None
    rng = random.Random(5)
    now = datetime.now(UTC)
    made = [
        random_record(rng, now - timedelta(seconds=rng.uniform(0, 3 * 86400))) for _ in range(3000)
    ]
    # Today and the hour under way too, wherever the test runs in the day.
    made += [random_record(rng, now - timedelta(seconds=rng.uniform(0, 600))) for _ in range(50)]
    # 300 paths of 400 characters in one hour two days ago: its document
    # takes more than one row.
    long_hour = (now - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    made += [
        random_record(rng, long_hour + timedelta(seconds=n), f"/{n:03d}" + "x" * 396)
        for n in range(300)
    ]
    rolled.export(made)
    assert rolled.fold() == len(made)
    engine = rolled.database_engine
    assert engine is not None
    with engine.connect() as connection:
        chunks = (
            connection.execute(
                sa.select(tables.sums.c.key_hash).where(
                    tables.sums.c.unit == "hour",
                    tables.sums.c.start == long_hour,
                    tables.sums.c.part == "packed",
                )
            )
            .scalars()
            .all()
        )
    assert sorted(chunks) == [0, 1]

    windows = [
        (now - timedelta(days=7), None),  # counted per day, today as its hours
        (now - timedelta(hours=24), None),
        (long_hour - timedelta(hours=3), long_hour + timedelta(hours=2)),
    ]

    def assert_same() -> None:
        for since, until in windows:
            got = rolled.summary(since, until)
            assert got["source"]["source"] == "rollups"
            counted = (datetime.fromisoformat(got["source"]["since"]), until)
            if until is not None:
                counted = (counted[0], datetime.fromisoformat(got["source"]["until"]))
            want = raw.summary(*counted)
            # The long hour kept its 200 leading paths: that list is
            # approximate in a window with it, its other counts exact.
            for name in got["source"]["approximate"]:
                del got[name], want[name]
            assert counts(got) == counts(want), (since, until)

    assert_same()
    # Late records of the long hour, folded while compactions do nothing:
    # rows beside its document.
    monkeypatch.setattr(_sqlrollups, "compact", lambda *args: None)
    late = [
        random_record(rng, long_hour + timedelta(minutes=30, seconds=n), "/late") for n in range(40)
    ]
    rolled.export(late[:20])
    assert rolled.fold() == 20
    assert_same()
    monkeypatch.undo()
    rolled.export(late[20:])
    assert rolled.fold() == 20
    with engine.connect() as connection:
        parts = (
            connection.execute(
                sa.select(tables.sums.c.part).where(
                    tables.sums.c.unit == "hour", tables.sums.c.start == long_hour
                )
            )
            .scalars()
            .all()
        )
    assert sorted(set(parts)) == ["packed", "records", "status", "total"]
    assert_same()
    last = rolled.summary(*windows[2])
    assert last["source"]["approximate"] == ["top_paths"]
    assert {"value": "/late", "count": 40} in last["top_paths"]
    if kind != "sqlite":
        drop_tables(rolled)


def test_any_process_packs_the_recent_buckets_another_left_as_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that folded an hour and stopped before it was over leaves
    it as rows; another process's next fold packs it, though it folded
    nothing of it."""
    from flask_traffic.stores import _sqlrollups

    first = SQLStore(sync=True, rollups=True)
    Traffic(make_app(tmp_path), stores=first)
    rng = random.Random(9)
    hour = (datetime.now(UTC) - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
    made = [random_record(rng, hour + timedelta(seconds=n * 7)) for n in range(400)]
    first.export(made)
    with monkeypatch.context() as patched:
        patched.setattr(_sqlrollups, "compact", lambda *args: None)
        assert first.fold() == len(made)
    first.shutdown()

    def parts() -> set[str]:
        tables = second._rollup_tables()
        assert tables is not None
        with tables.engine.connect() as connection:
            return set(
                connection.execute(
                    sa.select(tables.sums.c.part).where(
                        tables.sums.c.unit == "hour", tables.sums.c.start == hour
                    )
                ).scalars()
            )

    second = SQLStore(sync=True, rollups=True, name="second")
    Traffic(make_app(tmp_path, "second"), stores=second)
    assert "route" in parts()
    assert second.fold() == 0
    assert parts() == {"packed", "records", "status", "total"}
    raw = SQLStore(sync=True, name="raw", rollups=False)
    Traffic(make_app(tmp_path, "raw"), stores=raw)
    window = (hour - timedelta(hours=2), hour + timedelta(hours=2))
    assert counts(second.summary(*window)) == counts(raw.summary(*window))
