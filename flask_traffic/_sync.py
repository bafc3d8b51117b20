"""The processor that writes each record in the request that made it."""

from __future__ import annotations

import threading
import typing as t

from ._health import Health
from ._isolation import DeadLetterFunction, Export, IsTransient, is_transient_default
from ._maintenance import Maintenance, MaintenanceFunction
from .record import TrafficRecord

__all__ = ["SyncProcessor"]


class SyncProcessor:
    """Writes each record in the request that made it.

    A failed write is logged and counted: the request neither waits for
    retries nor sees the error. A record that fails with an error no retry
    mends is set aside (``dead_letter``); one that fails while the store is
    away is dropped.

    :param export: the store's ``export`` method.
    :param name: how log messages name the store.
    :param is_transient: whether an error of ``export`` may pass by itself.
    :param dead_letter: where records no retry can write are set aside.
    :param maintenance: called after a write at most once per
        ``maintenance_interval`` seconds (retention), in the request.
    :param maintenance_interval: seconds between maintenance runs.
    """

    def __init__(
        self,
        export: Export,
        *,
        name: str = "store",
        maintenance: MaintenanceFunction | None = None,
        maintenance_interval: float = 60.0,
        is_transient: IsTransient = is_transient_default,
        dead_letter: DeadLetterFunction | None = None,
    ) -> None:
        self._export = export
        self._health = Health(name)
        self._maintenance = Maintenance(maintenance, maintenance_interval, name)
        self._transient = is_transient
        self._dead_letter = dead_letter
        # export() of a file store is not safe to run in two threads at once.
        self._lock = threading.Lock()

    def emit(self, record: TrafficRecord) -> None:
        try:
            with self._lock:
                self._export((record,))
                self._maintenance.run_if_due()
        except Exception as exc:
            health = self._health
            transient = self._transient(exc)
            health.failed(exc, 1, retrying=False)
            if transient or self._dead_letter is None:
                health.drop(1, "write failed in sync mode")
            else:
                kept = self._dead_letter([(record, exc)])
                if kept:
                    health.set_aside(kept, exc, "the dead-letter file")
                health.drop(1 - kept, "dead-letter file full")
        else:
            self._health.exported_batch(1)

    def force_flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        return None

    def stats(self) -> dict[str, t.Any]:
        return self._health.stats(0)
