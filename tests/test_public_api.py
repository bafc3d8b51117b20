"""The public names are exactly what __all__ says, and the package is typed."""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import pytest

import flask_traffic


@pytest.mark.parametrize(
    "module_name", ["flask_traffic", "flask_traffic.stores", "flask_traffic.testing"]
)
def test_all_is_exactly_the_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    # Stores that need optional packages are loaded on first access.
    for name in module.__all__:
        getattr(module, name)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert set(module.__all__) == public


def test_the_documented_names() -> None:
    assert set(flask_traffic.__all__) >= {
        "Traffic",
        "LogPolicy",
        "TrafficRecord",
        "request_traffic",
    }
    from flask_traffic.stores import CSVStore, JSONStore, MemoryStore, Store

    assert all(issubclass(cls, Store) for cls in (CSVStore, JSONStore, MemoryStore))


def test_ships_py_typed() -> None:
    assert (Path(flask_traffic.__file__).parent / "py.typed").is_file()
