"""RedisStore: one Redis stream entry per record (``XADD``)."""

from __future__ import annotations

import functools
import logging
import operator
import os
import re
import typing as t
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone

from .._checks import check_positive_seconds
from .._optional import require
from ..policy import LogPolicy
from ..processors import MaintenanceFunction, ProcessorOptions
from ..query import Query
from ..record import TrafficRecord
from ..rollups import DEFAULT_RETENTION, ROLLUP_FIELDS, RollupRetention, site_secret
from ..summary import SummaryBuilder
from ._redisclient import from_host, from_url, is_int, location_of
from ._redisentries import (
    add_entries,
    decode_entries,
    entry_maker,
    lowest_id,
    read_rows,
    spooled_entry,
    spooled_entry_maker,
)
from ._redisrollups import RedisRollups
from ._redistransaction import transaction
from .base import Store

if t.TYPE_CHECKING:
    import redis
    from flask import Flask

    from .._breakdown import BreakdownBuilder
    from ._rollupstore import FoldReporter

__all__ = ["RedisStore"]

logger = logging.getLogger("flask_traffic")

#: Seconds a writer's fence key outlives its last batch: a batch retried
#: after an outage longer than this may be written twice.
_FENCE_TTL = 24 * 3600

#: The most ``XTRIM`` commands one retention run sends: each removes at most
#: 100 stream nodes' worth of entries (``~`` trimming's default ``LIMIT``,
#: 10,000 entries with the default node size), so the server stays
#: responsive while a large backlog goes; what is left goes at the next run.
_MAX_TRIMS = 1000

_Row = dict[str, t.Any]


def _same_records(a: Sequence[TrafficRecord], b: Sequence[TrafficRecord]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


class RedisStore(Store):
    """Appends each record to a Redis stream as one entry (``XADD``).

    Point it at a server in exactly one way: ``redis_host`` (with
    ``redis_password`` and ``redis_port``, the arguments of flask-traffic
    0.8), ``url=`` or ``client=``. Each batch is one pipelined ``MULTI``/
    ``EXEC`` transaction of ``XADD`` commands, one entry per record, whose
    fields are the policy's enabled fields as text; a ``None`` value is left
    out of the entry. :meth:`read` reads the newest entries back with
    ``XREVRANGE`` and gives back ints, floats and ``None``; ``since`` becomes
    a stream id range (see :meth:`scan`).

    A failed write (the server is down) raises in the worker thread, and the
    processor retries the batch with back-off while requests go on. A batch
    the server ran before it died without replying is not written twice: see
    :meth:`export`.

    Two ways to bound the stream, which may be combined:

    - ``max_len`` is Redis's own: every ``XADD`` carries ``MAXLEN ~ max_len``,
      so the stream never grows much past it, at no extra command.
    - ``max_records`` and ``max_age`` are the limits every store takes: the
      worker applies them at most once per ``TRAFFIC_RETENTION_INTERVAL``
      (``XTRIM MAXLEN ~`` and ``XTRIM MINID ~``, see :meth:`retain`), so
      between two runs the stream holds up to an interval's traffic more.
      Records older than ``max_age`` are left out of :meth:`read` and
      :meth:`summary` even before they are trimmed.

    Both trim whole stream nodes only (``~``), so they never keep fewer than
    the newest ``max_len``/``max_records`` entries, only somewhat more.

    :param redis_host: the server's host name or address.
    :param event_name: the stream's key.
    :param redis_password: the password, with ``redis_host`` only.
    :param redis_port: the server's port, with ``redis_host`` only.
    :param log_policy: which fields and requests to keep.
    :param url: a ``redis://``, ``rediss://`` or ``unix://`` URL instead of
        ``redis_host``; it may carry the password and database number.
    :param client: a :class:`redis.Redis` to use instead; the store does not
        close it. It keeps its own timeouts and retries: redis-py's default
        retries a failed transaction itself, which can write a batch twice
        when a reply is lost; ``retry=Retry(NoBackoff(), 0)`` avoids that.
    :param max_len: trim the stream to about this many entries at every
        write (``XADD ... MAXLEN ~``); ``None`` never trims there.
    :param sync: write in the request thread; ``None`` follows ``TRAFFIC_SYNC``.
    :param name: how ``flask traffic`` commands and log messages name the
        store; ``RedisStore`` by default, numbered when an app has several.
    :param max_age: a :class:`~datetime.timedelta`: remove entries of older
        requests in the background (``XTRIM MINID``), and leave them out of
        what is read until then.
    :param max_records: keep about this many entries, the newest, trimmed in
        the background (``XTRIM MAXLEN ~``); never fewer.
    :param spool: where records wait on disk while Redis is down:
        ``None`` for the app's ``TRAFFIC_SPOOL_DIR``, a folder, or ``False``.
    :param rollups: keep per-hour and per-day rollups (on by default),
        folded from the stream by the worker (:meth:`fold`), so a
        :meth:`summary` without ``where`` of a window over two hours reads
        them and the entries not folded yet instead of every entry, its
        edges rounded out to whole hours or days. ``False`` turns folding
        and rollup summaries off; a policy that leaves out a field rollups
        need does too, without a word.
    :param fold_interval: seconds between two folds in the worker.
    :param rollup_retention: how long each bucket size is kept
        (:class:`~flask_traffic.rollups.RollupRetention`), applied with the
        retention of entries, every ``TRAFFIC_RETENTION_INTERVAL``.

    .. versionchanged:: 1.0
        ``url``, ``client``, ``max_len`` and ``sync``; ``None`` is left out
        of the entry instead of stored as ``"None"``, and :meth:`read` gives
        numbers back as numbers. ``name``, ``max_age`` and ``max_records``;
        :meth:`read` takes ``since``, ``until`` and ``where``, and
        :meth:`summary` sums the stream up.
    """

    event_name: str
    max_len: int | None

    def __init__(
        self,
        redis_host: str | None = None,
        event_name: str | None = None,
        redis_password: str | None = None,
        redis_port: int = 6379,
        log_policy: LogPolicy | None = None,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        max_len: int | None = None,
        sync: bool | None = None,
        name: str | None = None,
        max_age: timedelta | None = None,
        max_records: int | None = None,
        spool: str | os.PathLike[str] | bool | None = None,
        rollups: bool = True,
        fold_interval: float = 10.0,
        rollup_retention: RollupRetention = DEFAULT_RETENTION,
    ) -> None:
        super().__init__(
            log_policy, sync=sync, name=name, max_age=max_age, max_records=max_records, spool=spool
        )
        if not isinstance(rollups, bool):
            raise TypeError(f"rollups must be True or False, got {rollups!r}.")
        if not isinstance(rollup_retention, RollupRetention):
            raise TypeError(
                f"rollup_retention must be a RollupRetention, got {rollup_retention!r}."
            )
        self.fold_interval = check_positive_seconds(fold_interval, "fold_interval")
        redis_module = require("redis", extra="redis", needed_by="RedisStore")
        if not isinstance(event_name, str) or not event_name:
            raise TypeError(
                f"event_name must be a non-empty str (the stream's key), got {event_name!r}."
            )
        given = [
            name
            for name, value in (("redis_host", redis_host), ("url", url), ("client", client))
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "RedisStore takes exactly one of redis_host, url or client, "
                f"got {' and '.join(given) if given else 'none'}."
            )
        if redis_host is None and (redis_password is not None or redis_port != 6379):
            raise ValueError(
                "redis_password and redis_port go with redis_host only: "
                "put them in url= or in the client you pass."
            )
        if max_len is not None and (not is_int(max_len) or max_len < 1):
            raise ValueError(f"max_len must be a positive integer or None, got {max_len!r}.")
        self.event_name = event_name
        self.max_len = max_len
        self._owns_client = client is None
        if client is not None:
            if not isinstance(client, redis_module.Redis):
                raise TypeError(f"client must be a redis.Redis, got {type(client).__name__}.")
            self._client: redis.Redis = client
        elif url is not None:
            self._client = from_url(redis_module, url)
        else:
            self._client = from_host(redis_module, redis_host, redis_password, redis_port)
        self._never_decode: str = redis_module.client.NEVER_DECODE
        self._unsure_errors: tuple[type[Exception], ...] = (
            redis_module.ConnectionError,
            redis_module.TimeoutError,
        )
        # Errors that pass by themselves: the server away, slow, loading its
        # data set, busy with a script, or a replica without its primary.
        exceptions = redis_module.exceptions
        self._transient_errors: tuple[type[BaseException], ...] = (
            OSError,
            redis_module.ConnectionError,
            redis_module.TimeoutError,
            exceptions.BusyLoadingError,
            exceptions.TryAgainError,
            exceptions.MasterDownError,
            exceptions.ReadOnlyError,
        )
        self._pid = -1
        self._fence_key = ""
        self._batch_number = 0
        # The batch whose last write failed with its outcome unknown, and
        # the number it was written under.
        self._unsure: tuple[Sequence[TrafficRecord], int] | None = None
        self._rollups_asked = rollups
        self.rollups = RedisRollups(
            self._client,
            event_name,
            # A fold reads the fields rollups keep, not the rest.
            functools.partial(self._decode, only=ROLLUP_FIELDS),
            self._never_decode,
            rollup_retention,
        )
        self.rollups.secret = site_secret(None, location_of(self._client, event_name))

    def __repr__(self) -> str:
        return f"<RedisStore stream={self.event_name!r} fields={len(self.fields)}>"

    @property
    def client(self) -> redis.Redis:
        """The :class:`redis.Redis` this store writes with."""
        return self._client

    def setup(self, app: Flask) -> None:
        redis_module = require("redis", extra="redis", needed_by="RedisStore")
        try:
            kind = self._client.type(self.event_name)
        except redis_module.AuthenticationError:
            raise RuntimeError(
                "RedisStore could not log in to Redis: check redis_password "
                "(or the password in url=)."
            ) from None
        except (redis_module.ConnectionError, redis_module.TimeoutError) as exc:
            # Redis may start after the app: the records wait and are retried.
            logger.warning(
                "RedisStore cannot reach Redis yet (%s); records wait in the queue.", exc
            )
            return
        if isinstance(kind, bytes):
            kind = kind.decode("ascii", "replace")
        if kind not in ("none", "stream"):
            raise RuntimeError(
                f"Redis key {self.event_name!r} holds a {kind}, not a stream: "
                f"pass another event_name=."
            )
        if self.max_age is not None:
            self._check_minid(redis_module)

    @property
    def keeps_rollups(self) -> bool:
        """Whether rollups are on and the policy keeps every field they need."""
        return self._rollups_asked and set(self.fields) >= ROLLUP_FIELDS

    def attach(self, app: Flask, options: ProcessorOptions) -> None:
        """Take the site's visitor secret (:func:`~flask_traffic.rollups.site_secret`);
        with rollups, the worker's maintenance runs every ``fold_interval``.

        :meta private:
        """
        if self.processor is None and self.keeps_rollups:
            location = location_of(self._client, self.event_name)
            self.rollups.secret = site_secret(app, location)
            self.rollups.retention_interval = options["retention_interval"]
            options = options.copy()
            options["retention_interval"] = min(self.fold_interval, options["retention_interval"])
        super().attach(app, options)

    def _fold_reporter(self) -> FoldReporter | None:
        # Its rollups fold by their own calls, not as a RollupKeeper.
        return self.rollups

    def _maintenance(self) -> MaintenanceFunction | None:
        entries = super()._maintenance()
        if not self.keeps_rollups:
            return entries
        return lambda: self.rollups.maintain(entries)

    def fold(self, progress: t.Callable[[int], None] | None = None) -> int:
        """Fold the entries written since the last fold into the rollups
        (the worker does every ``fold_interval``); return how many."""
        folded = self.rollups.fold() if self.keeps_rollups else 0
        if folded and progress is not None:
            progress(folded)
        return folded

    def rebuild_rollups(
        self, since: datetime | None = None, progress: t.Callable[[int], None] | None = None
    ) -> int:
        """Drop the rollups from the UTC day of ``since`` on (all without
        it) and fold the entries of those days still in the stream again;
        safe while the app writes, and an interrupted rebuild goes on at the
        next fold (:meth:`._redisrollups.RedisRollups.rebuild`)."""
        if not self.keeps_rollups:
            return super().rebuild_rollups(since, progress)
        folded = self.rollups.rebuild(since)
        if folded and progress is not None:
            progress(folded)
        return folded

    def summarize(self, query: Query, builder: SummaryBuilder) -> None:
        """From the rollups and the entries not folded yet when rollups are
        on, the query has no ``where`` and its window is counted per hour or
        day (over 2 hours); else from every entry."""
        if self.keeps_rollups and not query.where:
            builder.source = self.rollups.summarize(query, builder)
            if builder.source is not None:
                return
            query = self.summarize_records(query, builder)
        super().summarize(query, builder)

    def rollup_breakdown(self, query: Query, builder: BreakdownBuilder) -> dict[str, t.Any] | None:
        if not self.keeps_rollups or query.where:
            return None
        return self.rollups.breakdown(query, builder)

    def _check_minid(self, redis_module: t.Any) -> None:
        try:
            version = str(self._client.info("server").get("redis_version", ""))
        except redis_module.RedisError:
            # INFO may be forbidden (ACL): retention then logs its own failure.
            return
        numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
        if numbers and numbers < (6, 2):
            raise RuntimeError(
                f"max_age needs Redis 6.2 or later (XTRIM MINID) and this server runs "
                f"{version}: upgrade Redis, or use max_records= instead."
            )

    # A batch whose reply was lost is retried whole, so its fence can tell
    # whether it landed; written in parts it could be written twice.
    splits_transient_failures = False

    def is_transient(self, error: BaseException) -> bool:
        """Connection errors, time-outs and a server loading, busy or without
        its primary pass by themselves; other Redis errors (a wrong type at the
        key, an out-of-memory refusal) are not retried as they are."""
        return isinstance(error, self._transient_errors)

    def export(self, records: Sequence[TrafficRecord]) -> None:
        """Write ``records`` as one ``MULTI``/``EXEC`` transaction of ``XADD``.

        The transaction also sets this writer's fence key (``<event_name>:
        flask-traffic-writer:<id>``, one per process, expiring a day after
        its last batch) to the batch's number. When a write fails with its
        outcome unknown (the server died before replying, after it may have
        run the batch), the retry first reads the fence: if it holds the
        batch's number the batch is in the stream and is not written again.
        So a retry never duplicates entries.
        """
        if os.getpid() != self._pid:
            # A new process (or a fork): a writer of its own.
            self._pid = os.getpid()
            self._fence_key = f"{self.event_name}:flask-traffic-writer:{uuid.uuid4().hex}"
            self._unsure = None
        unsure = self._unsure
        if unsure is not None and _same_records(unsure[0], records):
            number = unsure[1]
            landed = self._client.get(self._fence_key)
            if landed is not None and int(landed) == number:
                self._unsure = None
                logger.info(
                    "%s: the batch of %d record(s) whose reply was lost is in the stream; "
                    "not writing it again.",
                    self.name,
                    len(records),
                )
                return
        else:
            self._batch_number += 1
            number = self._batch_number
        self._unsure = None
        try:
            writes = transaction(self._client)
            add_entries(
                writes, self.event_name, map(entry_maker(self.log_policy), records), self.max_len
            )
            writes.command("SET", self._fence_key, number, "EX", _FENCE_TTL)
            writes.execute()
        except self._unsure_errors:
            self._unsure = (records, number)
            raise

    def _spooled_row(self) -> tuple[str, Callable[[TrafficRecord], tuple[t.Any, ...]]]:
        # The spool keeps each record's entry as it is written.
        return spooled_entry(self.log_policy)

    def _spool_key(self, spool_id: str) -> str:
        return f"{self.event_name}:flask-traffic-spool:{spool_id}"

    def spool_position(self, spool_id: str) -> int:
        """The spool file's fence key (``<event_name>:flask-traffic-spool:<id>``)."""
        landed = self._client.get(self._spool_key(spool_id))
        return 0 if landed is None else int(landed)

    def export_spooled(
        self, records: Sequence[TrafficRecord], spool_id: str, position: int
    ) -> None:
        """The entries and the spool file's fence key in one ``MULTI``/``EXEC``."""
        # Most come back from the spool with their values encoded.
        entries = map(spooled_entry_maker(self.log_policy), records)
        writes = transaction(self._client)
        add_entries(writes, self.event_name, entries, self.max_len)
        writes.command("SET", self._spool_key(spool_id), position, "EX", _FENCE_TTL)
        writes.execute()

    def forget_spool(self, spool_id: str) -> None:
        self._client.delete(self._spool_key(spool_id))

    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[_Row]:
        """The entries ``query`` selects, newest first (``XREVRANGE``) or
        oldest first (``XRANGE``), read in chunks as they are consumed.

        ``since`` is pushed down as the lowest stream id to read: an entry's
        id is the Redis server's clock when it was written, always after its
        request started, so no entry of a request at or after ``since`` has
        an id below it (the server clock's offset from this host's is
        measured with ``TIME``, and other app hosts' clocks may be off by up
        to a minute). ``until`` cannot bound the ids, since an entry may be
        written long after its request (after an outage): it is tested
        here, with ``where``, on each entry read. With ``max_age``, the
        reading also starts ``max_age`` ago (:meth:`query` has moved
        ``since`` there when the store keeps ``request_date``).
        """
        since = query.since
        if self.max_age is not None:
            # Entries written before then are of older requests, which
            # retention removes: whatever the query, they are not read.
            age_cutoff = datetime.now(timezone.utc) - self.max_age
            if since is None or age_cutoff > since:
                since = age_cutoff
        test = None if query.is_everything else query.matches
        lowest = b"-" if since is None else lowest_id(self._client, since)
        rows = read_rows(
            self._client, self.event_name, lowest, query.limit, oldest_first, self._decode
        )
        return rows if test is None else filter(test, rows)

    def _decode(self, entries: list[t.Any], only: frozenset[str] | None = None) -> list[_Row]:
        """Rows of ``entries``, of every field the store keeps or of those
        of them in ``only``."""
        fields = self.fields if only is None else [name for name in self.fields if name in only]
        return decode_entries(fields, entries)

    def retain(self, cutoff: datetime | None, max_records: int | None) -> int:
        """Trim the stream: ``XTRIM MINID ~`` for ``cutoff``, then ``XTRIM
        MAXLEN ~ max_records``; return how many entries went.

        An entry's id is the server's clock when it was written, after its
        request started, so ``MINID`` only removes entries of requests older
        than ``cutoff`` (less a minute for clocks that disagree: see
        :meth:`scan`). An entry written late (after an outage) stays until
        its write time is past the cutoff; :meth:`read` and :meth:`summary`
        leave it out. Both trims remove whole stream nodes only, so they
        never remove one of the newest ``max_records`` entries; each
        ``XTRIM`` removes at most 100 nodes' worth of entries, and they are
        repeated until nothing more goes, so a large backlog does not block
        the server. Writers may go on meanwhile.
        """
        removed = 0
        if cutoff is not None:
            lowest = lowest_id(self._client, cutoff)
            if self.keeps_rollups:
                # Never an entry that is not folded yet: fold first.
                self.rollups.fold()
                lowest = self.rollups.below_position(lowest)
            if lowest != b"-":
                removed += self._trim(lambda: self._client.xtrim(self.event_name, minid=lowest))
        if max_records is not None:
            removed += self._trim(lambda: self._client.xtrim(self.event_name, maxlen=max_records))
        return removed

    @staticmethod
    def _trim(trim: Callable[[], int]) -> int:
        removed = 0
        for _ in range(_MAX_TRIMS):
            count = int(trim())
            removed += count
            if not count:
                break
        return removed

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Flush and stop the worker, then close the client if this store
        created it (one passed as ``client=`` stays open). Safe to call twice."""
        super().shutdown(timeout)
        if self._owns_client:
            self._client.close()
