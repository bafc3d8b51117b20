"""The contract every store implements, and what they all share."""

from __future__ import annotations

import abc
import typing as t
from collections.abc import Sequence

from ..policy import LogPolicy
from ..processors import BatchProcessor, Processor, SyncProcessor
from ..record import TrafficRecord

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = ["ProcessorOptions", "Store"]

_READ_FLUSH_TIMEOUT = 10.0


class ProcessorOptions(t.TypedDict):
    """The ``TRAFFIC_*`` settings a store's processor is built from."""

    sync: bool
    max_queue_size: int
    max_batch_size: int
    schedule_delay: float


class Store(abc.ABC):
    """A place traffic records are written to and read back from.

    A store implements :meth:`export` (write a batch, raise on failure) and
    :meth:`fetch` (the newest rows); it may override :meth:`setup` to open
    files or tables once it knows its app. Queueing, threads, retries and
    filtering are not its business: :class:`~flask_traffic.Traffic` puts a
    processor in front of it and subscribes it to
    :data:`~flask_traffic.request_traffic` through its :class:`LogPolicy`.

    :param log_policy: which fields and requests to keep; a fresh
        all-fields :class:`LogPolicy` when ``None``.
    :param sync: write in the request thread instead of a worker thread;
        ``None`` follows the app's ``TRAFFIC_SYNC``.
    """

    log_policy: LogPolicy
    processor: Processor | None

    def __init__(self, log_policy: LogPolicy | None = None, *, sync: bool | None = None) -> None:
        if log_policy is None:
            log_policy = LogPolicy()
        elif not isinstance(log_policy, LogPolicy):
            raise TypeError(
                f"log_policy must be a flask_traffic.LogPolicy, got {type(log_policy).__name__}."
            )
        if sync is not None and not isinstance(sync, bool):
            raise TypeError(f"sync must be True, False or None, got {sync!r}.")
        self.log_policy = log_policy
        self.sync = sync
        self.processor = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fields={len(self.log_policy.enabled_fields)}>"

    @property
    def name(self) -> str:
        """How log messages and :meth:`stats` name this store."""
        return type(self).__name__

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names this store keeps: its policy's enabled fields."""
        return self.log_policy.enabled_fields

    def attach(self, app: Flask, options: ProcessorOptions) -> None:
        """Prepare the store for ``app`` and start its processor.

        Called by :meth:`Traffic.init_app <flask_traffic.Traffic.init_app>`.
        A store attached to several apps (a module-level store and an app
        factory called more than once, as test suites do) keeps the place and
        the processor it got from the first one, and records every app's
        requests there.
        """
        if self.processor is not None:
            self.also_serve(app)
            return
        self.setup(app)
        sync = options["sync"] if self.sync is None else self.sync
        if sync:
            self.processor = SyncProcessor(self.export, name=self.name)
        else:
            self.processor = BatchProcessor(
                self.export,
                name=self.name,
                max_queue_size=options["max_queue_size"],
                max_batch_size=options["max_batch_size"],
                schedule_delay=options["schedule_delay"],
            )

    def setup(self, app: Flask) -> None:  # noqa: B027 - optional hook, empty by design
        """Open what the store writes to; runs once, in ``init_app``.

        Raise here, with a sentence that says the fix, for anything that is
        misconfigured: it is better than failing at the first request.
        """

    def also_serve(self, app: Flask) -> None:  # noqa: B027 - optional hook, empty by design
        """Called when the store, already set up, is attached to another app."""

    @abc.abstractmethod
    def export(self, records: Sequence[TrafficRecord]) -> None:
        """Write a batch of records; raise on failure so it is retried.

        Called from one worker thread at a time (or, in sync mode, from
        request threads one at a time).
        """

    @abc.abstractmethod
    def fetch(self, limit: int) -> list[dict[str, t.Any]]:
        """The newest ``limit`` rows, newest first, as :meth:`read` returns them."""

    def read(self, limit: int = 1000) -> list[dict[str, t.Any]]:
        """The newest records, newest first, as JSON-ready dicts.

        Keys are the policy's enabled fields; dates are ISO 8601 text,
        numbers are numbers and missing values ``None``. Everything recorded
        before the call is included (the store's queue is flushed first), so a
        view can ``return store.read()``.

        :param limit: the most rows to return.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}.")
        self.flush(_READ_FLUSH_TIMEOUT)
        if limit == 0:
            return []
        return self.fetch(limit)

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued for this store.

        :return: ``False`` if that did not finish within ``timeout`` seconds.
        """
        if self.processor is None:
            return True
        return self.processor.force_flush(timeout)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Flush and stop the worker; safe to call twice. Also runs at exit."""
        if self.processor is not None:
            self.processor.shutdown(timeout)

    def stats(self) -> dict[str, int]:
        """Counters of the store's processor.

        ``queued`` (waiting now), ``exported``, ``dropped`` (queue full, or
        still failing at shutdown) and ``failed_exports`` (write attempts
        that raised and were retried).
        """
        if self.processor is None:
            return {"queued": 0, "exported": 0, "dropped": 0, "failed_exports": 0}
        return self.processor.stats()

    def rows(self, records: Sequence[TrafficRecord]) -> list[dict[str, t.Any]]:
        """``records`` as rows of this store's enabled fields, JSON-ready."""
        row = self.log_policy.row
        return [row(record) for record in records]
