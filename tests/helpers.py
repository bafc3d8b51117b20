"""Scaffolding the test modules and the benchmarks share: the test app, the
writer loop and unique names.

A plain module rather than fixtures in ``conftest.py``: spawned writer
processes and the benchmarks (run as scripts) import it by name. Under
pytest ``tests/`` is on ``sys.path``; a benchmark puts it there.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import threading
import time
import typing as t
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

from flask import Flask, abort, stream_with_context

from flask_traffic import TrafficRecord


def unique_name() -> str:
    """A table or stream name no other test (or concurrent run) uses."""
    return f"traffic_{uuid.uuid4().hex[:12]}"


def make_app(
    instance: str | Path,
    name: str = "site",
    *,
    schedule_delay: float | None = None,
    catch_all: bool = False,
) -> Flask:
    """The app the tests send their requests to.

    Its routes: ``/`` answers ``hello``; ``/item/<int:n>`` ``{"n": n}``;
    ``/forbidden`` 403; ``/boom`` raises ``ValueError("boom")``;
    ``/echo/<path:rest>`` answers ``rest``; ``/stream`` streams ``ab``.

    :param instance: the instance folder, where stores put their files by default.
    :param name: the app's import name.
    :param schedule_delay: ``TRAFFIC_SCHEDULE_DELAY``, how long a worker waits
        to fill a batch; ``None`` leaves the extension's default.
    :param catch_all: also route every other path (endpoint ``anything``),
        answering the path itself, so any path is a 200.
    """
    app = Flask(name, instance_path=str(instance))
    if schedule_delay is not None:
        app.config["TRAFFIC_SCHEDULE_DELAY"] = schedule_delay
    app.add_url_rule("/", "index", lambda: "hello")

    @app.route("/item/<int:n>")
    def item(n: int) -> dict[str, int]:
        return {"n": n}

    @app.route("/forbidden")
    def forbidden() -> str:
        abort(403)

    @app.route("/boom")
    def boom() -> str:
        raise ValueError("boom")

    @app.route("/echo/<path:rest>")
    def echo(rest: str) -> str:
        return rest

    @app.route("/stream")
    def stream() -> object:
        def parts() -> Iterator[str]:
            yield "a"
            yield "b"

        return app.response_class(stream_with_context(parts()))

    if catch_all:
        app.add_url_rule("/<path:rest>", "anything", lambda rest: rest)
    return app


def send_requests(app: Flask, paths: Iterable[str], **options: t.Any) -> None:
    """GET each of ``paths`` from ``app`` through one test client;
    ``options`` (``headers=``, ``environ_base=``) go with every request."""
    client = app.test_client()
    for path in paths:
        client.get(path, **options)


def run_writers(
    work: Callable[..., object],
    writers: int,
    *args: t.Any,
    processes: bool = False,
    timeout: float = 120.0,
) -> None:
    """Run ``work(number, *args)`` for each ``number`` in ``range(writers)``,
    all at once, in threads or in spawned processes, and wait for them.

    :param work: with ``processes``, a module-level function: the child
        imports it by name.
    :param timeout: how long they may take, together.
    :raises AssertionError: when one is still running after ``timeout``
        seconds, or a process exits with a status other than 0; a thread's
        exception is raised again here.
    """
    errors: list[BaseException] = []
    runners: list[t.Any]  # threads or processes: start, join, is_alive, name
    if processes:
        context = multiprocessing.get_context("spawn")
        runners = [
            context.Process(target=work, args=(number, *args), name=f"writer-{number}")
            for number in range(writers)
        ]
    else:

        def guarded(number: int) -> None:
            try:
                work(number, *args)
            except BaseException as error:
                errors.append(error)

        runners = [
            threading.Thread(target=guarded, args=(number,), name=f"writer-{number}", daemon=True)
            for number in range(writers)
        ]
    deadline = time.monotonic() + timeout
    try:
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(max(0.0, deadline - time.monotonic()))
        stuck = [runner.name for runner in runners if runner.is_alive()]
    finally:
        if processes:
            for runner in runners:
                if runner.is_alive():
                    runner.kill()
                    runner.join(10)
    assert not stuck, f"{', '.join(stuck)} still running after {timeout} s"
    if errors:
        raise errors[0]
    if processes:
        codes = {runner.name: runner.exitcode for runner in runners}
        assert set(codes.values()) == {0}, f"writers exited with {codes}"


def http_status(port: int, path: str) -> int:
    """The status of ``GET path`` from a server on a loopback ``port``; 0
    when it does not answer."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


def random_record(rng: random.Random, moment: datetime, path: str | None = None) -> TrafficRecord:
    """A record of a request at ``moment``, to ``path`` (``/p/0`` to ``/p/50``
    at random without it), the rest at random: a few routes, addresses,
    referrers, user agents (one with a lone surrogate) and statuses, as the
    rollup tests need. The draws come in the same order either way, so a
    test's data stays what its windows were picked for."""
    duration = int(rng.lognormvariate(16, 1))
    method = rng.choice(["GET", "POST"])
    if path is None:
        path = f"/p/{rng.randint(0, 50)}"
    return TrafficRecord(
        int(moment.timestamp() * 1e9),
        duration,
        method,
        "http",
        "example.com",
        None,
        path,
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


def database_url(kind: str, request: t.Any) -> str | None:
    """The URL of the test server of a SQL ``kind`` (``"postgresql"``,
    ``"mariadb"``) from its fixture (which skips or fails without it), or
    ``None`` for ``"sqlite"``; ``request`` is the test's ``pytest.FixtureRequest``."""
    if kind == "sqlite":
        return None
    return t.cast(
        str, request.getfixturevalue("postgres_url" if kind == "postgresql" else "mariadb_url")
    )


def drop_tables(store: t.Any) -> None:
    """Drop a ``SQLStore``'s table and its rollups' tables (on a server,
    where they outlive the test)."""
    import sqlalchemy as sa

    engine = store.database_engine
    name = store.database_log_table.name
    with engine.begin() as connection:
        for table in (f"{name}_rollup", f"{name}_rollup_bucket", f"{name}_rollup_state", name):
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


@contextlib.contextmanager
def statements_run(engine: t.Any) -> Iterator[list[tuple[str, t.Any]]]:
    """The ``(statement, parameters)`` that ``engine``'s connections run
    while the block runs, as the driver gets them."""
    import sqlalchemy as sa

    statements: list[tuple[str, t.Any]] = []

    def seen(_conn: t.Any, _cursor: t.Any, statement: str, parameters: t.Any, *_: t.Any) -> None:
        statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
