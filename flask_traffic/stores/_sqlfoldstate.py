"""How far a traffic table's rollups lag (:class:`~._rollupstore.FoldState`),
read in a few statements that each cost the same on a table of 10,000 or of
10,000,000 rows: the state rows, the first row after the fold position, a
count of the rows after it that stops at :data:`COUNT_BOUND`, and where
needed the highest or lowest ``traffic_id`` (an end of the primary key).
"""

from __future__ import annotations

import typing as t
from datetime import datetime

import sqlalchemy as sa

from ._rollupstore import FoldState
from .sqlschema import ID_COLUMN

if t.TYPE_CHECKING:
    from ._sqlrollups import SQLRollups

__all__ = ["COUNT_BOUND", "fold_state"]

#: Rows after the fold position counted one by one at most: a range of the
#: primary key read to there, tens of milliseconds; past it, the newest id
#: less the position bounds the count from above.
COUNT_BOUND = 100_000


def fold_state(rollups: SQLRollups) -> FoldState:
    """What :meth:`._sqlrollups.SQLRollups.fold_state` reports, in one read
    transaction."""
    table = rollups.io.table
    ids = table.c[ID_COLUMN]
    with rollups.engine.connect() as connection:
        position = rollups.position(connection)
        after = sa.select(ids).where(ids > position).order_by(ids).limit(COUNT_BOUND + 1)
        pending = int(
            connection.execute(
                sa.select(sa.func.count()).select_from(after.subquery())
            ).scalar_one()
        )
        oldest = None
        if pending:
            oldest = connection.execute(
                sa.select(table.c["request_date"]).where(ids > position).order_by(ids).limit(1)
            ).scalar()
        exact = pending <= COUNT_BOUND
        # One aggregate a statement: SQLite reads min() or max() off the
        # index's end only when it is alone; with both it scans the table.
        newest = None if exact else connection.execute(sa.select(sa.func.max(ids))).scalar()
        rebuild = rollups.rebuild_state(connection)
        progress = None
        if rebuild is not None:
            done, stop, _ = rebuild
            # By row ids: the share of the ids up to the rebuild's end that
            # are behind it (a rebuild from a day skips the earlier ones at once).
            low = int(connection.execute(sa.select(sa.func.min(ids))).scalar() or 0)
            progress = 1.0 if stop <= low else min(1.0, max(0.0, (done - low) / (stop - low)))
    return FoldState(
        pending=min(pending, COUNT_BOUND),
        pending_exact=exact,
        pending_at_most=None if exact else int(newest or 0) - position,
        oldest_pending=oldest if isinstance(oldest, datetime) else None,
        rebuilding=rebuild is not None,
        rebuild_progress=progress,
    )
