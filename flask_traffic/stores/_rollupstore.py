"""What every store has of rollups (:mod:`flask_traffic.rollups`): the
:class:`KeepsRollups` part of :class:`~flask_traffic.stores.Store`, the
:class:`RollupKeeper` a store that keeps them hands it, and the
:class:`FoldState` they report."""

from __future__ import annotations

import dataclasses
import typing as t
from datetime import datetime, timezone

from .._health import describe_error
from ..record import iso_text
from ..rollups import ROLLUP_FIELDS

if t.TYPE_CHECKING:
    from .._breakdown import BreakdownBuilder
    from ..query import Query
    from ..summary import SummaryBuilder

__all__ = ["FoldReporter", "FoldState", "KeepsRollups", "RollupKeeper", "read_fold_state"]

_UTC = timezone.utc

# Seconds a rebuild waits for the queue to be written first.
_FLUSH_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class FoldState:
    """How far a store's rollups lag behind its records
    (:meth:`KeepsRollups.rollup_state`): a summary reads the records not yet
    folded from the raw records, so the more of them, the slower it is.

    Each backend reads it in a few cheap steps, whatever the store's size;
    where counting every record would not be cheap, ``pending`` stops at a
    bound and says so.
    """

    #: Records written and not yet folded; when ``pending_exact`` is false, a
    #: lower bound (counting stopped there).
    pending: int
    pending_exact: bool = True
    #: When ``pending`` is not exact, an upper bound where one is cheap (SQL:
    #: the newest row id less the fold position; Redis: the stream's length).
    pending_at_most: int | None = None
    #: File stores: bytes of the data files not yet folded.
    pending_bytes: int | None = None
    #: When the oldest record not yet folded was made (its ``request_date``,
    #: else on Redis its stream id's time); ``None`` when none waits.
    oldest_pending: datetime | None = None
    #: Whether a rebuild is under way, or was interrupted (it goes on at the
    #: next fold); summaries read the raw records until it ends.
    rebuilding: bool = False
    #: How far that rebuild is, from 0.0 to 1.0, where known.
    rebuild_progress: float | None = None

    def lag(self, now: datetime | None = None) -> float | None:
        """Seconds since the oldest record not yet folded was made; ``None``
        when none waits."""
        if self.oldest_pending is None:
            return None
        return max(0.0, ((now or datetime.now(_UTC)) - self.oldest_pending).total_seconds())

    def as_json(self, now: datetime | None = None) -> dict[str, t.Any]:
        """The fields as JSON values (dates as ISO 8601 text), and
        ``lag_seconds`` (:meth:`lag`)."""
        found = {
            name: iso_text(value) if isinstance(value, datetime) else value
            for name, value in dataclasses.asdict(self).items()
        }
        found["lag_seconds"] = self.lag(now)
        return found


class FoldReporter(t.Protocol):
    """What reads a store's :class:`FoldState`."""

    def fold_state(self) -> FoldState: ...


class RollupKeeper(FoldReporter, t.Protocol):
    """What a store's rollups do for it (:meth:`Store.fold`,
    :meth:`Store.rebuild_rollups`, its worker's retention pass,
    :meth:`Store.rollup_state`)."""

    #: Whether the last fold stopped at its budget with more to fold.
    unfinished: bool

    def fold(
        self, progress: t.Callable[[int], None] | None = None, budget: float | None = None
    ) -> int: ...

    def rebuild(
        self, since: datetime | None = None, progress: t.Callable[[int], None] | None = None
    ) -> int: ...

    def retain(self, now: datetime | None = None) -> int: ...

    def breakdown(self, query: Query, builder: BreakdownBuilder) -> dict[str, t.Any] | None: ...


class KeepsRollups:
    """The rollup methods of a store; by default it keeps none.

    A store that keeps rollups overrides :attr:`keeps_rollups` and
    :meth:`_rollup_keeper`.
    """

    name: str

    if t.TYPE_CHECKING:
        # Sink's and Store's, which come after this class in a store's bases.
        @property
        def fields(self) -> tuple[str, ...]: ...

        def flush(self, timeout: float | None = 10.0) -> bool: ...

        def within_max_age(self, query: Query) -> Query: ...

    def summarize_records(self, query: Query, builder: SummaryBuilder) -> Query:
        """Where a store that keeps rollups counts the records instead: the
        query and the builder's window cut to ``max_age``, as without them."""
        query = self.within_max_age(query)
        builder.since = query.since
        return query

    def rollup_breakdown(self, query: Query, builder: BreakdownBuilder) -> dict[str, t.Any] | None:
        """Feed ``builder`` the dashboard's breakdown of the window of
        ``query`` (which has no ``where``) from the rollups, as
        :meth:`summarize` reads them, and return what it says of its
        source (as a summary's ``source``); ``None``, having fed nothing,
        where the records are to be read: no rollups, nothing folded yet,
        or a window counted per minute.

        :meta private:
        """
        keeper = None if query.where or not self.keeps_rollups else self._rollup_keeper()
        return None if keeper is None else keeper.breakdown(query, builder)

    @property
    def keeps_rollups(self) -> bool:
        """Whether this store keeps rollups (:mod:`flask_traffic.rollups`),
        which its ``summary()`` answers from.

        .. versionadded:: 1.0
        """
        return False

    def fold(self, progress: t.Callable[[int], None] | None = None) -> int:
        """Fold the records written since the last fold into the rollups now,
        rather than at the worker's next retention pass, and go on with a
        rebuild left unfinished; return how many records were folded.

        :param progress: called with the count of each step.

        .. versionadded:: 1.0
        """
        keeper = self._rollup_keeper()
        return 0 if keeper is None else keeper.fold(progress)

    def rebuild_rollups(
        self, since: datetime | None = None, progress: t.Callable[[int], None] | None = None
    ) -> int:
        """Build the rollups again from the stored records, from the UTC day
        of ``since`` on (all of them without it); return how many records.
        Safe while the app writes; an interrupted rebuild goes on at the next
        :meth:`fold`.

        .. versionadded:: 1.0
        """
        keeper = self._rollup_keeper()
        if keeper is None:
            raise TypeError(self.no_rollups_reason())
        self.flush(_FLUSH_TIMEOUT)
        return keeper.rebuild(since, progress)

    def rollup_state(self) -> FoldState | None:
        """How far the rollups lag behind the records: how many records are
        not folded yet, since when, and whether a rebuild is under way
        (:class:`FoldState`); ``None`` when the store keeps no rollups.

        A few cheap reads of the store (no count of a big table), for
        ``flask traffic status`` and health checks; raises as a read does
        when the store cannot be reached.

        .. versionadded:: 1.0
        """
        reporter = self._fold_reporter() if self.keeps_rollups else None
        return None if reporter is None else reporter.fold_state()

    def no_rollups_reason(self) -> str:
        """Why this store keeps no rollups, in a sentence that says what to
        do; for errors, such as ``flask traffic rollup``'s.

        :meta private:
        """
        if type(self)._rollup_keeper is KeepsRollups._rollup_keeper:
            return f"{self.name} keeps no rollups: a {type(self).__name__} cannot keep them."
        missing = sorted(ROLLUP_FIELDS - set(self.fields))
        if missing:
            return (
                f"{self.name} keeps no rollups: its LogPolicy leaves out {', '.join(missing)}, "
                f"which they count; keep those fields to keep rollups."
            )
        # On by default: off when asked, or when the table or CSV file was
        # made without a column they count.
        return (
            f"{self.name} keeps no rollups: it was made with rollups=False, or its table or "
            f"file lacks a column they count; drop rollups=False (or add the column)."
        )

    def _rollup_keeper(self) -> RollupKeeper | None:
        """The store's rollups, ready to fold; ``None`` when it keeps none.
        Stores that keep rollups return theirs."""
        return None

    def _fold_reporter(self) -> FoldReporter | None:
        """What reads the fold state: the rollup keeper, unless a store
        folds by other means."""
        return self._rollup_keeper()


def read_fold_state(store: KeepsRollups) -> tuple[FoldState | None, str | None]:
    """``store``'s :meth:`~KeepsRollups.rollup_state`, or the ``"Type:
    message"`` of its failure: a report goes on past a store that fails."""
    try:
        return store.rollup_state(), None
    except Exception as exc:
        return None, describe_error(exc)
