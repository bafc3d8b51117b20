"""What every store has of rollups (:mod:`flask_traffic.rollups`): the
:class:`KeepsRollups` part of :class:`~flask_traffic.stores.Store`, and the
:class:`RollupKeeper` a store that keeps them hands it."""

from __future__ import annotations

import typing as t
from datetime import datetime

if t.TYPE_CHECKING:
    from .._breakdown import BreakdownBuilder
    from ..query import Query
    from ..summary import SummaryBuilder

__all__ = ["KeepsRollups", "RollupKeeper"]

# Seconds a rebuild waits for the queue to be written first.
_FLUSH_TIMEOUT = 10.0


class RollupKeeper(t.Protocol):
    """What a store's rollups do for it (:meth:`Store.fold`,
    :meth:`Store.rebuild_rollups`, its worker's retention pass)."""

    def fold(self, progress: t.Callable[[int], None] | None = None) -> int: ...

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
            raise TypeError(f"{self.name} keeps no rollups: pass rollups=True to keep them.")
        self.flush(_FLUSH_TIMEOUT)
        return keeper.rebuild(since, progress)

    def _rollup_keeper(self) -> RollupKeeper | None:
        """The store's rollups, ready to fold; ``None`` when it keeps none.
        Stores that keep rollups return theirs."""
        return None
