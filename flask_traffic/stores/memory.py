"""MemoryStore: the newest rows in a bounded in-memory list."""

from __future__ import annotations

import threading
import typing as t
from collections import deque
from collections.abc import Sequence

from ..policy import LogPolicy
from ..record import TrafficRecord
from .base import Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Keeps the newest ``max_records`` rows in memory, per process.

    For tests, for a live "last requests" view, and as the smallest example
    of a store. Nothing survives a restart.

    :param max_records: how many rows to keep; the oldest go first.
    :param log_policy: which fields and requests to keep.
    :param sync: write in the request thread; ``None`` follows ``TRAFFIC_SYNC``.
    """

    def __init__(
        self,
        max_records: int = 10_000,
        log_policy: LogPolicy | None = None,
        *,
        sync: bool | None = None,
    ) -> None:
        super().__init__(log_policy, sync=sync)
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise ValueError(f"max_records must be a positive integer, got {max_records!r}.")
        self._rows: deque[dict[str, t.Any]] = deque(maxlen=max_records)
        self._lock = threading.Lock()

    def export(self, records: Sequence[TrafficRecord]) -> None:
        rows = self.rows(records)
        with self._lock:
            self._rows.extend(rows)

    def fetch(self, limit: int) -> list[dict[str, t.Any]]:
        with self._lock:
            newest = list(self._rows)[-limit:]
        newest.reverse()
        return [dict(row) for row in newest]

    def clear(self) -> None:
        """Forget every row."""
        with self._lock:
            self._rows.clear()
