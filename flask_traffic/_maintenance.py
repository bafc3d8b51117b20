"""A store's maintenance (retention), run by its processor now and then."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ._checks import check_positive_seconds

__all__ = ["Maintenance", "MaintenanceFunction"]

logger = logging.getLogger("flask_traffic")

#: What a processor calls now and then between batches (retention); it
#: returns True when it has more to do at once (a fold stopped at its budget).
MaintenanceFunction = Callable[[], "bool | None"]


class Maintenance:
    """Runs a store's maintenance (retention) at most once per interval, or
    again at the next chance while it says it has more to do."""

    __slots__ = ("due", "function", "interval", "name")

    def __init__(self, function: MaintenanceFunction | None, interval: float, name: str) -> None:
        self.function = function
        self.interval = check_positive_seconds(interval, "maintenance_interval")
        self.name = name
        # Due at once: an app that starts after a long stop prunes right away.
        self.due = time.monotonic()

    def run_if_due(self) -> None:
        if self.function is None or time.monotonic() < self.due:
            return
        self.due = time.monotonic() + self.interval
        try:
            if self.function():
                # Between the next batches: the records first, then more.
                self.due = time.monotonic()
        except Exception:
            # Retried at the next interval; records are never at stake here.
            logger.warning("%s: retention failed; trying again later.", self.name, exc_info=True)
