"""The parts of a traffic table's rollups that are not plain sums of one key
each, so that a bucket holds a bounded number of rows whatever the traffic:

- **Histograms.** Per route, its ``response_time`` histogram, all in one
  document (:mod:`._rolluphistograms`) in the bucket's row of
  ``<table>_rollup_bucket``, merged by the
  fold (which holds the fold lock, so read, merge and write cannot
  interleave): a summary of 30 days reads 30 documents, where a row per
  route and histogram bucket would be 200,000 rows.
- **Top lists.** Paths and referrers can take any value: once a bucket is
  over (an hour, a day), :func:`compact` keeps its :data:`TOP_KEPT` most
  frequent values and adds up the rest under the part ``"o:<part>"``, which
  a summary reports as its top list being approximate.

Importing this module needs no SQLAlchemy: the file stores' rollups
(:mod:`._filerollups`) use its plain functions too.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterable
from datetime import datetime

from ..rollups import Unit
from ._rollupparts import (
    COMPACTED,
    OTHER,
    TOP_KEPT,
    is_over,
)

if t.TYPE_CHECKING:
    import sqlalchemy as sa

    from ._sqlrollups import SQLRollups

__all__ = ["compact"]


def compact(
    rollups: SQLRollups,
    connection: sa.Connection,
    touched: Iterable[tuple[Unit, datetime]],
    now: datetime,
) -> None:
    """Bound the top lists of the hours and days in ``touched`` that are
    over: keep the :data:`TOP_KEPT` most frequent values of each, and add up
    the others under ``"o:<part>"`` (key ``""``)."""
    import sqlalchemy as sa

    sums = rollups.sums
    for unit, start in touched:
        if not is_over(unit, start, now):
            # A minute holds few requests; an open bucket still grows.
            continue
        for part in COMPACTED:
            found = connection.execute(
                sa.select(sums.c.key_hash, sums.c.weight)
                .where(sums.c.unit == unit, sums.c.start == start, sums.c.part == part)
                .order_by(sums.c.weight.desc(), sums.c.key_hash)
            ).all()
            if len(found) <= TOP_KEPT:
                continue
            rest = found[TOP_KEPT:]
            hashes = [int(row[0]) for row in rest]
            for i in range(0, len(hashes), 500):
                connection.execute(
                    sums.delete().where(
                        sums.c.unit == unit,
                        sums.c.start == start,
                        sums.c.part == part,
                        sums.c.key_hash.in_(hashes[i : i + 500]),
                    )
                )
            rollups.add_sums(
                connection,
                [(unit, start, OTHER + part, "", float(sum(float(row[1]) for row in rest)))],
            )
