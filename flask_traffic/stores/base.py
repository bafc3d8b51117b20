"""The contract every store implements, and what they all share."""

from __future__ import annotations

import abc
import dataclasses
import itertools
import logging
import os
import threading
import typing as t
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .._health import Health
from .._isolation import is_transient_default
from .._spool import FencedReplay, Spool, spool_folder
from ..policy import LogPolicy
from ..processors import (
    MaintenanceFunction,
    Processor,
    ProcessorOptions,
    check_positive_int,
    make_processor,
)
from ..query import Query, TimeArg
from ..record import TrafficRecord
from ..summary import SummaryBuilder

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "ProcessorOptions",
    "RollupKeeper",
    "Sink",
    "Store",
    "warn_if_outside_instance_folder",
]

from ._rollupparts import WORKER_FOLD_BUDGET
from ._rollupstore import KeepsRollups, RollupKeeper

logger = logging.getLogger("flask_traffic")

_READ_FLUSH_TIMEOUT = 10.0
_UTC = timezone.utc


class Sink(abc.ABC):
    """Something that receives traffic records: the write side of a store.

    A sink implements :meth:`export` (write a batch, raise on failure) and
    may override :meth:`setup` to open files, tables or connections once it
    knows its app. Queueing, threads, retries and filtering are not its
    business: :class:`~flask_traffic.Traffic` puts a processor in front of it
    and subscribes it to :data:`~flask_traffic.request_traffic` through its
    :class:`LogPolicy`, which is frozen from then on.

    A sink that keeps nothing to read back (an exporter to another system,
    such as the OpenTelemetry bridge) subclasses :class:`Sink`; one that can
    be read subclasses :class:`Store`. The ``flask traffic`` commands read
    only from :class:`Store` instances.

    :param log_policy: which fields and requests to keep; a fresh
        all-fields :class:`LogPolicy` when ``None``.
    :param sync: write in the request thread instead of a worker thread;
        ``None`` follows the app's ``TRAFFIC_SYNC``.
    :param name: how the ``flask traffic`` commands and log messages name the
        sink; by default its class name, numbered when an app has several
        (``JSONStore``, ``JSONStore-2``).
    :param spool: where records wait on disk while the sink fails: ``None``
        for ``<TRAFFIC_SPOOL_DIR>/traffic-spool/<name>/`` (the instance
        folder by default), a folder of its own, or ``False`` for none. Only
        sinks that fence replayed batches (:attr:`supports_spool`) spool.

    .. versionadded:: 1.0
    """

    log_policy: LogPolicy
    processor: Processor | None
    #: Whether a batch that keeps failing with a transient-looking error may
    #: be written in parts to find a record that fails alone. ``False`` for a
    #: sink that must see a failed batch again whole (one that fences
    #: batches against lost replies, as :class:`RedisStore` does).
    splits_transient_failures: t.ClassVar[bool] = True

    def __init__(
        self,
        log_policy: LogPolicy | None = None,
        *,
        sync: bool | None = None,
        name: str | None = None,
        spool: str | os.PathLike[str] | bool | None = None,
    ) -> None:
        if log_policy is None:
            log_policy = LogPolicy()
        elif not isinstance(log_policy, LogPolicy):
            raise TypeError(
                f"log_policy must be a flask_traffic.LogPolicy, got {type(log_policy).__name__}."
            )
        if sync is not None and not isinstance(sync, bool):
            raise TypeError(f"sync must be True, False or None, got {sync!r}.")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"name must be a non-empty str, got {name!r}.")
        if spool is not None and not isinstance(spool, (bool, str, os.PathLike)):
            raise TypeError(f"spool must be a folder path, False or None, got {spool!r}.")
        self.log_policy = log_policy
        self.sync = sync
        self.spool = spool
        self.processor = None
        self._spool_folder: Path | None = None
        self._name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} fields={len(self.log_policy.enabled_fields)}>"

    @property
    def name(self) -> str:
        """How log messages and the ``flask traffic`` commands name this sink:
        the ``name=`` given, else the class name, numbered by ``init_app``
        when an app has several of one class."""
        return self._name if self._name is not None else type(self).__name__

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def has_default_name(self) -> bool:
        """Whether no ``name=`` was given (``init_app`` may then number it)."""
        return self._name is None

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names this sink keeps: its policy's enabled fields."""
        return self.log_policy.enabled_fields

    def attach(self, app: Flask, options: ProcessorOptions) -> None:
        """Prepare the sink for ``app`` and start its processor.

        Plumbing, not a hook: :meth:`Traffic.init_app
        <flask_traffic.Traffic.init_app>` calls it; subclasses override
        :meth:`setup` instead. It freezes the sink's :class:`LogPolicy`. A
        sink attached to several apps (a module-level store and an app
        factory called more than once, as test suites do) keeps the place and
        the processor it got from the first one, and records every app's
        requests there.

        :meta private:
        """
        if self.processor is not None:
            self.also_serve(app)
            return
        self.setup(app)
        self.log_policy.freeze(self.name)
        sync = options["sync"] if self.sync is None else self.sync
        spool = None if sync else self._make_spool(options)
        self._spool_folder = None if spool is None else spool.folder
        self.processor = make_processor(
            self._export_kept,
            name=self.name,
            options=options,
            sync=sync,
            maintenance=self._maintenance(),
            is_transient=self.is_transient,
            split_transient=self.splits_transient_failures,
            spool=spool,
            spool_target=None if spool is None else FencedReplay(self, self._kept),
        )

    def _make_spool(self, options: ProcessorOptions) -> Spool | None:
        base, max_bytes = options["spool_dir"], options["spool_max_bytes"]
        if self.spool is False or not max_bytes or not self.supports_spool:
            return None
        if isinstance(self.spool, (str, os.PathLike)):
            folder = Path(self.spool)
        elif base is None:
            return None
        else:
            folder = spool_folder(base, self.name)
        return Spool(folder, max_bytes, self.name, rows=self._spooled_row())

    def _spooled_row(self) -> tuple[str, Callable[[TrafficRecord], tuple[t.Any, ...]]]:
        # What the spool keeps of a record beside it, and the key it comes
        # back under on the record replay gives export_spooled(): by
        # default the policy's values; a store may keep what it writes.
        policy = self.log_policy
        return policy.values_key, policy.values

    def _maintenance(self) -> MaintenanceFunction | None:
        # What the processor runs between batches; stores with retention
        # limits return their retention pass.
        return None

    def _kept(self, records: Sequence[TrafficRecord]) -> Sequence[TrafficRecord]:
        # The policy's costly filters (skip_bots) run here, in the worker.
        policy = self.log_policy
        if policy.skip_bots:
            return [record for record in records if policy.keeps_in_worker(record)]
        return records

    def _export_kept(self, records: Sequence[TrafficRecord]) -> None:
        records = self._kept(records)
        if records:
            self.export(records)

    # -- the disk spool --------------------------------------------------------

    @property
    def supports_spool(self) -> bool:
        """Whether records wait on disk while this sink fails: it fences
        replayed spool batches (:meth:`export_spooled`). The file stores do
        not (a spool on their disk would not outlive what makes them fail)."""
        return type(self).export_spooled is not Sink.export_spooled

    @property
    def spool_folder(self) -> Path | None:
        """The folder of this sink's spool files, or ``None`` (no spool)."""
        return self._spool_folder

    def spool_position(self, spool_id: str) -> int:
        """How many records of spool file ``spool_id`` this sink has written
        (0 for one it has never seen). Implement with :meth:`export_spooled`."""
        raise NotImplementedError

    def export_spooled(
        self, records: Sequence[TrafficRecord], spool_id: str, position: int
    ) -> None:
        """Write ``records`` (replayed from spool file ``spool_id``) and set
        its :meth:`spool_position` to ``position``, both or neither: in one
        transaction. A sink that implements it spools; raise on failure as
        :meth:`export` does."""
        raise NotImplementedError

    def forget_spool(self, spool_id: str) -> None:  # noqa: B027 - optional hook, empty by design
        """Spool file ``spool_id`` is replayed and removed: drop its position."""

    def setup(self, app: Flask) -> None:  # noqa: B027 - optional hook, empty by design
        """Open what the sink writes to; runs once, in ``init_app``, for the
        first app it is attached to.

        Raise here, with a sentence that says the fix, for anything that is
        misconfigured: it is better than failing at the first request.
        """

    def also_serve(self, app: Flask) -> None:  # noqa: B027 - optional hook, empty by design
        """Called instead of :meth:`setup` when the sink, already set up, is
        attached to another app (to warn that its records go to the same place).

        :meta private:
        """

    @abc.abstractmethod
    def export(self, records: Sequence[TrafficRecord]) -> None:
        """Write a batch of records; raise on failure.

        Called from one worker thread at a time (or, in sync mode, from
        request threads one at a time). After a failure that
        :meth:`is_transient` calls transient, the same batch is retried,
        unchanged, with back-off; after any other failure it is written in
        halves to find the records that fail alone, which are set aside in
        the dead-letter file. So a write must either happen whole or raise
        having written nothing (a transaction), or be safe to repeat.
        """

    def is_transient(self, error: BaseException) -> bool:
        """Whether a failure of :meth:`export` may pass by itself, so the
        batch is retried as it is (a server down or restarting, a time-out, a
        locked database) rather than searched for bad records.

        Override it with the backend's own exception classes; this default
        says so of every ``OSError`` (connections, time-outs, a full disk).
        """
        return is_transient_default(error)

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued for this sink.

        :return: ``False`` if that did not finish within ``timeout`` seconds.
        """
        if self.processor is None:
            return True
        return self.processor.force_flush(timeout)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Flush and stop the worker; safe to call twice. Also runs at exit.

        Subclasses that hold connections close them after calling this.
        """
        if self.processor is not None:
            self.processor.shutdown(timeout)

    def stats(self) -> dict[str, t.Any]:
        """The health of the sink's pipeline.

        ``queued`` (waiting now), ``exported``, ``dropped`` (queue full, or
        still failing at shutdown), ``failed_exports`` (write attempts that
        raised), ``dead_lettered`` (records set aside because no retry could
        write them), ``last_error`` (``"Type: message"`` of the last failure,
        or ``None``), ``last_error_at`` and ``last_export_at`` (ISO 8601 UTC,
        or ``None``); for a sink that spools, ``spooled`` and
        ``spooled_bytes`` (waiting in the disk spool), ``spilled``,
        ``replayed`` and ``replaying`` (0 and ``False`` otherwise).
        """
        if self.processor is None:
            return Health(self.name).stats(0)
        return self.processor.stats()


class Store(KeepsRollups, Sink):
    """A sink that can be read back: every store shipped with flask-traffic.

    Besides :meth:`~Sink.export`, a store implements :meth:`scan` (the rows a
    :class:`~flask_traffic.query.Query` selects, newest or oldest first);
    :meth:`read`, :meth:`fetch` and :meth:`summary` are built on it. It may
    override :meth:`summarize` to count in its backend, and :meth:`retain`
    to support ``max_age`` and ``max_records``.

    :param log_policy: which fields and requests to keep.
    :param sync: write in the request thread instead of a worker thread.
    :param name: how the ``flask traffic`` commands and log messages name it.
    :param max_age: keep records for this long; older ones are removed by
        the worker, at most once every ``TRAFFIC_RETENTION_INTERVAL`` seconds,
        and are never read back, even before they are removed.
    :param max_records: keep at most about this many records, the newest.
    """

    def __init__(
        self,
        log_policy: LogPolicy | None = None,
        *,
        sync: bool | None = None,
        name: str | None = None,
        max_age: timedelta | None = None,
        max_records: int | None = None,
        spool: str | os.PathLike[str] | bool | None = None,
    ) -> None:
        super().__init__(log_policy, sync=sync, name=name, spool=spool)
        if max_age is not None and (not isinstance(max_age, timedelta) or max_age <= timedelta(0)):
            raise ValueError(f"max_age must be a positive datetime.timedelta, got {max_age!r}.")
        if max_records is not None:
            check_positive_int(max_records, "max_records")
        if (max_age is not None or max_records is not None) and not self.supports_retention:
            raise TypeError(
                f"{type(self).__name__} does not implement retain(), so it cannot take "
                f"max_age or max_records."
            )
        self.max_age = max_age
        self.max_records = max_records
        # prune() holds it while it runs; the worker's pass skips meanwhile.
        self._retention_lock = threading.Lock()

    @property
    def supports_retention(self) -> bool:
        """Whether this store implements :meth:`retain` (``max_age``, ``max_records``)."""
        return type(self).retain is not Store.retain

    def _maintenance(self) -> MaintenanceFunction | None:
        if self.max_age is None and self.max_records is None and not self.keeps_rollups:
            return None
        return self._maintain

    @abc.abstractmethod
    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[dict[str, t.Any]]:
        """The rows ``query`` selects, newest first (or oldest first), lazily,
        as :meth:`read` returns them.

        ``query`` comes from :meth:`query`, so its window already starts no
        earlier than ``max_age`` ago. ``query.limit`` is a hint: callers stop
        iterating when they have enough. Push the query down where the
        backend can (a SQL ``WHERE``, a Redis id range, reading a file
        backwards and stopping early). It does not flush.
        """

    def fetch(self, limit: int) -> list[dict[str, t.Any]]:
        """The newest ``limit`` rows, newest first, without flushing the queue."""
        query = self.query(limit)
        return list(itertools.islice(self.scan(query), limit)) if limit else []

    def query(
        self,
        limit: int | None = None,
        *,
        since: TimeArg = None,
        until: TimeArg = None,
        where: Mapping[str, t.Any] | None = None,
    ) -> Query:
        """A :class:`~flask_traffic.query.Query` for this store, arguments checked.

        With ``max_age``, the window starts no earlier than ``max_age`` ago:
        records retention has not removed yet are not given either. This is
        the one place that rule is applied.
        """
        return self.within_max_age(Query.make(self.fields, limit, since, until, where))

    def within_max_age(self, query: Query) -> Query:
        """``query``, its window starting no earlier than ``max_age`` ago."""
        if self.max_age is not None and "request_date" in self.fields:
            floor = datetime.now(_UTC) - self.max_age
            if query.since is None or query.since < floor:
                query = dataclasses.replace(query, since=floor)
        return query

    def read(
        self,
        limit: int = 1000,
        *,
        since: TimeArg = None,
        until: TimeArg = None,
        where: Mapping[str, t.Any] | None = None,
    ) -> list[dict[str, t.Any]]:
        """The newest records, newest first, as JSON-ready dicts.

        Keys are the policy's enabled fields; dates are ISO 8601 text,
        numbers are numbers and missing values ``None``. Everything recorded
        before the call is included (the store's queue is flushed first), so a
        view can ``return store.read()``.

        :param limit: the most rows to return.
        :param since: only requests at or after this moment: a datetime (naive
            is taken as UTC) or ISO 8601 text.
        :param until: only requests before this moment.
        :param where: only rows whose fields equal these values, e.g.
            ``{"response_status_code": 500}``.
        """
        query = self.query(limit, since=since, until=until, where=where)
        self.flush(_READ_FLUSH_TIMEOUT)
        if limit == 0:
            return []
        return list(itertools.islice(self.scan(query), limit))

    def summary(self, since: TimeArg = None, until: TimeArg = None) -> dict[str, t.Any]:
        """A JSON-ready overview of the requests between ``since`` and ``until``:
        totals, error rate, status classes, requests per minute, hour or day,
        per-route counts and ``response_time`` percentiles, top paths,
        referrers, browsers and platforms, unique visitors. The keys are
        described in :meth:`flask_traffic.summary.SummaryBuilder.result`.

        A store keeping rollups (:attr:`keeps_rollups`: by default, those
        that can) answers a window counted per hour or day from them, its
        edges rounded out to whole hours or days, and counts records
        ``max_age`` has removed for as long as their buckets are kept; its
        ``source`` says which was read.

        Flushes the store's queue first, like :meth:`read`.
        """
        if self.keeps_rollups:
            # Rollups outlive the records (a week of requests, a year of
            # hours): the window is cut to max_age only where the records
            # are counted (see summarize_records).
            query = Query.make(self.fields, None, since, until, None)
        else:
            query = self.query(None, since=since, until=until)
        self.flush(_READ_FLUSH_TIMEOUT)
        builder = SummaryBuilder(query.since, query.until, self.fields)
        self.summarize(query, builder)
        return builder.result()

    def summarize(self, query: Query, builder: SummaryBuilder) -> None:
        """Feed ``builder`` the requests ``query`` selects.

        This default feeds it every selected row; SQL stores override it to
        count in the database.
        """
        builder.add_rows(self.scan(query))

    def retain(self, cutoff: datetime | None, max_records: int | None) -> int:
        """Remove records older than ``cutoff`` and all but the newest
        ``max_records``; return how many were removed (an estimate is fine).

        Stores that support ``max_age``/``max_records`` implement this. It
        runs in the worker thread, between batches, and must never remove a
        record inside the limits.
        """
        raise NotImplementedError

    def prune(self) -> int:
        """Apply ``max_age`` and ``max_records`` now (``flask traffic prune``).

        :return: how many records were removed.
        """
        if self.max_age is None and self.max_records is None:
            return 0
        # Taken before the flush: the flush wakes the worker, whose retention
        # pass is often due (it is due at once in a new process, as in a
        # `flask traffic prune`); it would race this one and leave it a
        # count of 0.
        with self._retention_lock:
            self.flush(_READ_FLUSH_TIMEOUT)
            return self._retain_now() or 0

    def _retain_now(self, budget: float | None = None) -> int | None:
        # Records are folded before retention may remove them: with a fold
        # stopped at its ``budget`` (seconds), retention waits (None).
        keeper = self._rollup_keeper() if self.keeps_rollups else None
        if keeper is not None:
            keeper.fold(budget=budget)
            if keeper.unfinished:
                return None
            keeper.retain()
        if self.max_age is None and self.max_records is None:
            return 0
        cutoff = None if self.max_age is None else datetime.now(_UTC) - self.max_age
        removed = self.retain(cutoff, self.max_records)
        if removed:
            logger.info("%s: retention removed %d record(s).", self.name, removed)
        return removed

    def _maintain(self) -> bool:
        # Called by the processor at most once per retention interval, and
        # again at once while the fold has more to do (True); a prune()
        # running now does the work.
        if not self._retention_lock.acquire(blocking=False):
            return False
        try:
            return self._retain_now(WORKER_FOLD_BUDGET) is None
        finally:
            self._retention_lock.release()


def warn_if_outside_instance_folder(sink: Sink, app: Flask, path: Path | None) -> None:
    """For :meth:`Sink.also_serve` of a sink whose file defaulted to the first
    app's instance folder: say that ``app``'s requests go there too."""
    if path is None:
        return
    folder = Path(app.instance_path)
    if folder != path.parent:
        logger.warning(
            "%s already writes to %s; the requests of app %r go there too, not "
            "to its instance folder %s. Create one store per app, or pass location=.",
            sink.name,
            path,
            app.name,
            folder,
        )
