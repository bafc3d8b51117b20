"""What a processor knows of its sink's health: counters, the last error, and
the log lines that say when writing fails, drops, sets records aside or
recovers."""

from __future__ import annotations

import logging
import threading
import time
import traceback
import typing as t
from datetime import datetime, timezone

from .record import iso_text

__all__ = ["Health", "describe_error", "is_failing"]

logger = logging.getLogger("flask_traffic")

_UTC = timezone.utc
#: At most one drop line a minute; each says how many since the last one.
DROP_REPORT_INTERVAL = 60.0
#: At most one line a minute for a sink whose every write fails.
FAILING_REPORT_INTERVAL = 60.0
#: Error text kept in stats() and written to logs and dead letters.
_MAX_ERROR_TEXT = 500


def describe_error(error: BaseException) -> str:
    """``Type: message`` of ``error``, one line and bounded, for stats and logs.

    Drivers put a statement's parameters (client addresses, user agents) in
    their messages: for an error that wraps a driver's (SQLAlchemy's keep it
    as ``orig``), the driver's own error is described, without the statement
    and its parameters; the rest is cut to a length a log line can carry.
    """
    original = getattr(error, "orig", None)
    if isinstance(original, BaseException):
        error = original
    text = " ".join(str(error).split())
    name = type(error).__qualname__
    module = type(error).__module__
    if module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    line = f"{name}: {text}" if text else name
    if len(line) > _MAX_ERROR_TEXT:
        line = line[: _MAX_ERROR_TEXT - 3] + "..."
    return line


def is_failing(stats: t.Mapping[str, t.Any]) -> bool:
    """Whether the sink whose ``stats()`` these are is failing now: its last
    write raised and none has succeeded since."""
    error_at = stats.get("last_error_at")
    export_at = stats.get("last_export_at")
    return error_at is not None and (export_at is None or export_at < error_at)


class Health:
    """Counters and the last error of one sink's processor.

    The request thread only touches :meth:`drop` (under a lock); everything
    else is the worker's.

    :param name: how log lines name the sink.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.exported = 0
        self.dropped = 0
        self.failed_exports = 0
        self.dead_lettered = 0
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.last_export_at: str | None = None
        self._lock = threading.Lock()
        self._unreported_drops = 0
        self._drop_reasons: set[str] = set()
        self._last_drop_report = -DROP_REPORT_INTERVAL
        self._failing_since: float | None = None
        self._failures_in_row = 0
        self._last_failing_report = -FAILING_REPORT_INTERVAL

    def stats(self, queued: int) -> dict[str, t.Any]:
        """The counters as :meth:`Sink.stats() <flask_traffic.stores.Sink.stats>` gives them."""
        return {
            "queued": queued,
            "exported": self.exported,
            "dropped": self.dropped,
            "failed_exports": self.failed_exports,
            "dead_lettered": self.dead_lettered,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_export_at": self.last_export_at,
            # The disk spool's, filled in by a processor that has one.
            "spooled": 0,
            "spooled_bytes": 0,
            "spilled": 0,
            "replayed": 0,
            "replaying": False,
        }

    @property
    def failing(self) -> bool:
        """Whether the last write failed and none has succeeded since."""
        return self._failing_since is not None

    # -- drops ---------------------------------------------------------------

    def drop(self, count: int, reason: str) -> None:
        """Count ``count`` records lost; report them now or with the next report."""
        if count <= 0:
            return
        with self._lock:
            self.dropped += count
            self._unreported_drops += count
            self._drop_reasons.add(reason)
        self.report_drops()

    def report_drops(self, *, now: bool = False) -> None:
        """Log the drops not yet reported, at most once a minute (``now``: at
        once, as at shutdown), with their true count since the last line."""
        with self._lock:
            if not self._unreported_drops:
                return
            moment = time.monotonic()
            if not now and moment - self._last_drop_report < DROP_REPORT_INTERVAL:
                return
            count, self._unreported_drops = self._unreported_drops, 0
            reasons = "; ".join(sorted(self._drop_reasons))
            self._drop_reasons.clear()
            self._last_drop_report = moment
            total = self.dropped
        logger.warning(
            "%s: dropped %d traffic record(s) since the last report (%s); %d dropped in all.",
            self.name,
            count,
            reasons,
            total,
        )

    # -- writes ----------------------------------------------------------------

    def exported_batch(self, count: int) -> None:
        """A write of ``count`` records succeeded; says so if writing had failed."""
        self.exported += count
        self.last_export_at = iso_text(datetime.now(_UTC))
        if self._failing_since is not None:
            logger.warning(
                "%s: writing traffic records works again after %d failed attempt(s) over %.1f s.",
                self.name,
                self._failures_in_row,
                time.monotonic() - self._failing_since,
            )
        self._failing_since = None
        self._failures_in_row = 0

    def note_failure(self, error: BaseException) -> None:
        """Count a failed write and keep its error, without a log line (the
        writes of a search for bad records)."""
        self.failed_exports += 1
        self.last_error = describe_error(error)
        self.last_error_at = iso_text(datetime.now(_UTC))

    def failed(self, error: BaseException, count: int, *, retrying: bool) -> None:
        """A write of ``count`` records raised ``error``."""
        self.note_failure(error)
        self._failures_in_row += 1
        moment = time.monotonic()
        first = self._failing_since is None
        if first:
            self._failing_since = moment
        elif moment - self._last_failing_report < FAILING_REPORT_INTERVAL:
            return
        self._last_failing_report = moment
        what = "retrying with back-off" if retrying else "setting aside the records that fail"
        # The frames once per outage: they say where. Not exc_info: the
        # exception's own text may carry the batch's values (a statement's
        # parameters); describe_error() says why without them.
        frames = ""
        if first and error.__traceback__ is not None:
            frames = "\nTraceback (most recent call last):\n" + "".join(
                traceback.format_tb(error.__traceback__)
            ).rstrip("\n")
        logger.warning(
            "%s: writing %d traffic record(s) failed (%d attempt(s) in a row; %s): %s%s",
            self.name,
            count,
            self._failures_in_row,
            what,
            self.last_error,
            frames,
        )

    def set_aside(self, count: int, error: BaseException, where: str) -> None:
        """``count`` records no retry can write went to the dead-letter file."""
        self.dead_lettered += count
        logger.warning(
            "%s: set aside %d traffic record(s) that cannot be written (%s) in %s; "
            "the others were written. Read them there to see what they hold.",
            self.name,
            count,
            describe_error(error),
            where,
        )
