"""The stores shipped with flask-traffic.

``SQLStore``, ``SQLORMStore``, ``SQLORMModelMixin`` and ``RedisStore`` need
optional packages; their modules are imported on first use, so
``from flask_traffic.stores import JSONStore`` never imports SQLAlchemy or
redis-py.
"""

from __future__ import annotations

import importlib
import typing as t

from .base import ProcessorOptions, Sink, Store
from .csvfile import CSVStore
from .jsonlines import JSONStore
from .memory import MemoryStore

if t.TYPE_CHECKING:
    from .ormstore import SQLORMStore
    from .redisstream import RedisStore
    from .sqlschema import SQLORMModelMixin
    from .sqlstore import SQLStore

__all__ = [
    "CSVStore",
    "JSONStore",
    "MemoryStore",
    "ProcessorOptions",
    "RedisStore",
    "SQLORMModelMixin",
    "SQLORMStore",
    "SQLStore",
    "Sink",
    "Store",
]

# Name -> module that defines it, for the stores that need optional packages.
_LAZY = {
    "SQLStore": "sqlstore",
    "SQLORMStore": "ormstore",
    "SQLORMModelMixin": "sqlschema",
    "RedisStore": "redisstream",
}


def __getattr__(name: str) -> t.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
