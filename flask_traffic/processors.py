"""Processors take records off the request thread and hand them to a store.

:class:`BatchProcessor` is the default: a bounded queue and one worker thread
per store that writes batches, after the pattern of OpenTelemetry's batch
span processor. :class:`SyncProcessor` writes in the request, for people who
prefer that cost to a queue.
"""

from __future__ import annotations

import functools
import typing as t
from pathlib import Path

from ._batch import SUSPECT_AFTER, BatchProcessor, SpoolTarget
from ._checks import check_positive_int, check_positive_seconds
from ._deadletter import DeadLetterFile
from ._isolation import Export, IsTransient, is_transient_default
from ._maintenance import MaintenanceFunction
from ._spool import Spool
from ._stopping import shutdown_in_parallel
from ._sync import SyncProcessor
from .record import TrafficRecord

__all__ = [
    "SUSPECT_AFTER",
    "BatchProcessor",
    "ExportFunction",
    "MaintenanceFunction",
    "Processor",
    "ProcessorOptions",
    "SpoolTarget",
    "SyncProcessor",
    "check_positive_int",
    "check_positive_seconds",
    "make_processor",
    "shutdown_in_parallel",
]

#: What a processor calls with each batch; it raises on failure.
ExportFunction = Export


class ProcessorOptions(t.TypedDict):
    """The ``TRAFFIC_*`` settings a store's processor is built from."""

    sync: bool
    max_queue_size: int
    max_batch_size: int
    schedule_delay: float
    retention_interval: float
    #: Where records no retry can write are set aside; ``None``: dropped.
    dead_letters: DeadLetterFile | None
    #: The folder of the stores' spool folders; ``None``: no spool.
    spool_dir: Path | None
    #: The size each store's spool file of a process may reach.
    spool_max_bytes: int


class Processor(t.Protocol):
    """What :class:`~flask_traffic.stores.Store` needs from a processor."""

    def emit(self, record: TrafficRecord) -> None:
        """Take one record; called on the request thread, never raises."""

    def force_flush(self, timeout: float | None = None) -> bool:
        """Write everything taken so far; ``False`` if that did not finish."""

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush and stop; safe to call more than once."""

    def stats(self) -> dict[str, t.Any]:
        """Counters and health: ``queued``, ``exported``, ``dropped``,
        ``failed_exports``, ``dead_lettered``, ``last_error``,
        ``last_error_at``, ``last_export_at``."""


def make_processor(
    export: ExportFunction,
    *,
    name: str,
    options: ProcessorOptions,
    sync: bool,
    maintenance: MaintenanceFunction | None = None,
    is_transient: IsTransient = is_transient_default,
    split_transient: bool = True,
    spool: Spool | None = None,
    spool_target: SpoolTarget | None = None,
) -> SyncProcessor | BatchProcessor:
    """The processor a sink gets from ``init_app``: a :class:`SyncProcessor`
    when ``sync``, else a :class:`BatchProcessor` sized by ``options``; both
    set records no retry can write aside in ``options["dead_letters"]``."""
    dead_letters = options["dead_letters"]
    dead_letter = None if dead_letters is None else functools.partial(dead_letters.write, name)
    if sync:
        return SyncProcessor(
            export,
            name=name,
            maintenance=maintenance,
            maintenance_interval=options["retention_interval"],
            is_transient=is_transient,
            dead_letter=dead_letter,
        )
    return BatchProcessor(
        export,
        name=name,
        max_queue_size=options["max_queue_size"],
        max_batch_size=options["max_batch_size"],
        schedule_delay=options["schedule_delay"],
        maintenance=maintenance,
        maintenance_interval=options["retention_interval"],
        is_transient=is_transient,
        dead_letter=dead_letter,
        split_transient=split_transient,
        spool=spool,
        spool_target=spool_target,
    )
