"""Fixtures shared by every test module: the local services and the examples.

The SQL and Redis store tests run against real servers on loopback. On a
machine without one, its tests skip with a one-line reason; under CI
(``CI=true``) a missing service fails them instead, so a green CI run always
means the stores were tested for real.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import typing as t
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import helpers
import pytest

from flask_traffic.stores import Store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

#: The servers the store tests use, all on loopback: (name, port, URL).
#: Override a URL with the environment variable of the same name.
SERVICES = {
    "redis": ("Redis", 6379, "redis://127.0.0.1:6379/0"),
    "postgres": ("PostgreSQL", 5432, "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": ("MariaDB", 3306, "mysql+pymysql://root@127.0.0.1:3306/test"),
}
_ENV = {
    "redis": "TRAFFIC_TEST_REDIS_URL",
    "postgres": "TRAFFIC_TEST_POSTGRES_URL",
    "mariadb": "TRAFFIC_TEST_MARIADB_URL",
}

_answers: dict[str, bool] = {}


def _answers_on(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def service_url(key: str) -> str:
    """The URL of a local service, or skip (fail under CI) when it does not answer."""
    name, port, url = SERVICES[key]
    if key not in _answers:
        _answers[key] = _answers_on(port)
    if not _answers[key]:
        message = f"{name} does not answer on 127.0.0.1:{port}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI needs it (see .ci/run).")
        pytest.skip(f"{message}.")
    return os.environ.get(_ENV[key], url)


@pytest.fixture
def redis_url() -> str:
    """``redis://`` URL of the local Redis."""
    return service_url("redis")


@pytest.fixture
def postgres_url() -> str:
    """SQLAlchemy URL of the local PostgreSQL database ``test`` (psycopg 3)."""
    return service_url("postgres")


@pytest.fixture
def mariadb_url() -> str:
    """SQLAlchemy URL of the local MariaDB database ``test`` (PyMySQL)."""
    return service_url("mariadb")


@pytest.fixture
def unique_name() -> str:
    """A table or stream name no other test (or concurrent run) uses."""
    return helpers.unique_name()


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Flask finds the app's root path through sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_example() -> Iterator[Callable[[str], ModuleType]]:
    """Import ``examples/<name>.py`` as the module ``name``; forgotten afterwards."""
    loaded: list[str] = []

    def load(name: str) -> ModuleType:
        loaded.append(name)
        return _load_example(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture
def stores() -> Iterator[list[Store]]:
    """Stores a test makes (append them); each is shut down afterwards,
    disposing of the engines SQL stores made."""
    made: list[Store] = []
    yield made
    for store in made:
        store.shutdown()


# -- the fault report ---------------------------------------------------------------------

_FAULTS: list[tuple[str, int, int, int, int]] = []


@pytest.fixture
def fault_report() -> Callable[..., None]:
    """Record what a fault test saw, for the table printed at the end of the
    run: ``fault_report(fault, answered=, expected=, stored=, duplicates=)``."""

    def add(fault: str, *, answered: int, expected: int, stored: int, duplicates: int) -> None:
        _FAULTS.append((fault, answered, expected, stored, duplicates))

    return add


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    if not _FAULTS:
        return
    terminalreporter.section("faults: requests answered / records expected / stored / duplicates")
    width = max(len(fault) for fault, *_ in _FAULTS)
    for fault, answered, expected, stored, duplicates in _FAULTS:
        terminalreporter.write_line(
            f"{fault:<{width}}  {answered:>6}  {expected:>6}  {stored:>6}  {duplicates:>4}"
        )
