"""MemoryStore: the newest rows in a bounded in-memory list."""

from __future__ import annotations

import threading
import typing as t
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone

from ..policy import LogPolicy
from ..query import Query, iso_text
from ..record import TrafficRecord
from .base import Store

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = ["MemoryStore"]

_UTC = timezone.utc


class MemoryStore(Store):
    """Keeps the newest ``max_records`` rows in memory, per process.

    For tests, for a live "last requests" view, and as the smallest example
    of a store. Nothing survives a restart.

    :param max_records: how many rows to keep; the oldest go first.
    :param log_policy: which fields and requests to keep.
    :param sync: write in the request thread; ``None`` follows ``TRAFFIC_SYNC``.
    :param name: how the ``flask traffic`` commands and logs name the store.
    :param max_age: keep rows for this long (a :class:`~datetime.timedelta`);
        :meth:`read` and :meth:`summary` leave older ones out, and the worker
        forgets them.
    """

    def __init__(
        self,
        max_records: int = 10_000,
        log_policy: LogPolicy | None = None,
        *,
        sync: bool | None = None,
        name: str | None = None,
        max_age: timedelta | None = None,
    ) -> None:
        super().__init__(log_policy, sync=sync, name=name, max_age=max_age, max_records=max_records)
        self._rows: deque[dict[str, t.Any]] = deque(maxlen=max_records)
        self._lock = threading.Lock()

    def setup(self, app: Flask) -> None:
        if self.max_age is not None and "request_date" not in self.fields:
            raise ValueError(
                f"{self.name} has max_age but its LogPolicy leaves out request_date: "
                f"enable request_date or drop max_age."
            )

    def export(self, records: Sequence[TrafficRecord]) -> None:
        row = self.log_policy.row
        rows = [row(record) for record in records]
        with self._lock:
            self._rows.extend(rows)

    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[dict[str, t.Any]]:
        """The rows ``query`` selects, newest first (or oldest first), from a
        copy of the list taken at the call."""
        with self._lock:
            rows = list(self._rows)
        if not oldest_first:
            rows.reverse()
        if query.is_everything:
            limit = len(rows) if query.limit is None else query.limit
            return (dict(row) for row in rows[:limit])
        matches = query.matches
        return (dict(row) for row in rows if matches(row))

    def retain(self, cutoff: datetime | None, max_records: int | None) -> int:
        """Forget rows older than ``cutoff``; the list itself holds at most
        ``max_records``."""
        if cutoff is None:
            return 0
        oldest = iso_text(cutoff)
        with self._lock:
            kept = [row for row in self._rows if (row.get("request_date") or "") >= oldest]
            removed = len(self._rows) - len(kept)
            if removed:
                self._rows = deque(kept, maxlen=self._rows.maxlen)
        return removed

    def clear(self) -> None:
        """Forget every row."""
        with self._lock:
            self._rows.clear()
