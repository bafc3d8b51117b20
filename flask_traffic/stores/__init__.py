"""The stores shipped with flask-traffic.

``SQLStore``, ``SQLORMStore`` and ``RedisStore`` need optional packages and
arrive with their own modules.
"""

from __future__ import annotations

from .base import ProcessorOptions, Store
from .csvfile import CSVStore
from .jsonlines import JSONStore
from .memory import MemoryStore

__all__ = ["CSVStore", "JSONStore", "MemoryStore", "ProcessorOptions", "Store"]
