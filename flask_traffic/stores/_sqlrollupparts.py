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
- **Packed buckets.** The same compaction packs the bucket's sums, but for
  its few :data:`LOOSE` parts (its total, records and statuses, which the
  dashboard's breakdown reads a bucket at a time), into one JSON document,
  stored in rows of the part :data:`PACKED` (``key_hash`` numbers them,
  ``key`` holds the text: a ``TEXT`` of MariaDB holds 64 KB): a summary
  reads a closed hour or day as a row or two and adds them up itself, where
  grouping some 600 rows a bucket by their text keys took the database most
  of a summary's time (MariaDB: 47 ms for a day's hours, against 6 ms to
  read and add up their documents). A fold that adds to a bucket already
  packed (a late record, a rebuild) adds rows beside its document, which
  the next compaction packs in; a summary adds both up meanwhile.
"""

from __future__ import annotations

import json
import typing as t
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from ..rollups import Unit
from ._rollupparts import (
    COMPACTED,
    OTHER,
    TOP_KEPT,
    is_over,
)

if t.TYPE_CHECKING:
    from ._sqlrollups import SQLRollups

__all__ = ["LOOSE", "PACKED", "compact", "read_sums", "rewrite"]

#: The part of a packed bucket's rows (no part of the rollups is named so).
PACKED = "packed"
#: The parts a compaction leaves as rows: one or a few a bucket.
LOOSE = ("total", "records", "status")
# Characters of a packed row: the document is ASCII JSON, so also its bytes,
# under the 65,535 of a MariaDB TEXT.
_PACKED_CHARS = 60_000

# How long a rewrite waits for the lock of a rollup table (:func:`rewrite`).
_REWRITE_WAIT = "5s"

_Sums = dict[str, dict[str, float]]


def compact(
    rollups: SQLRollups,
    connection: sa.Connection,
    touched: Iterable[tuple[Unit, datetime]],
    now: datetime,
) -> None:
    """Cut and pack the hours and days in ``touched`` that are over: keep
    the :data:`TOP_KEPT` most frequent values of each top list and add up
    the others under ``"o:<part>"`` (key ``""``), then store the sums of
    every part but the :data:`LOOSE` ones as one document."""
    sums = rollups.sums
    for unit, start in touched:
        if not is_over(unit, start, now):
            # A minute holds few requests; an open bucket still grows.
            continue
        bucket = [sums.c.unit == unit, sums.c.start == start, sums.c.part.not_in(LOOSE)]
        parts: _Sums = defaultdict(dict)
        if not _add_rows(connection, sums, bucket, parts):
            # Packed already, and nothing added since.
            continue
        _add_documents(connection, sums, bucket, parts)
        for part in COMPACTED:
            _cut(parts, part)
        connection.execute(sums.delete().where(*bucket))
        text = json.dumps(
            {part: list(values.items()) for part, values in parts.items() if values},
            ensure_ascii=True,
            separators=(",", ":"),
        )
        connection.execute(
            sums.insert(),
            [
                {
                    "unit": unit,
                    "start": start,
                    "part": PACKED,
                    "key_hash": number,
                    "key": text[offset : offset + _PACKED_CHARS],
                    "weight": 0.0,
                }
                for number, offset in enumerate(range(0, len(text), _PACKED_CHARS))
            ],
        )


def _cut(parts: _Sums, part: str) -> None:
    """Keep the :data:`TOP_KEPT` largest values of ``part``, the rest added
    to ``"o:<part>"``."""
    values = parts.get(part)
    if values is None or len(values) <= TOP_KEPT:
        return
    ranked = sorted(values.items(), key=lambda item: (-item[1], item[0]))
    parts[part] = dict(ranked[:TOP_KEPT])
    other = parts[OTHER + part]
    other[""] = other.get("", 0.0) + sum(weight for _, weight in ranked[TOP_KEPT:])


def _add_rows(
    connection: sa.Connection,
    sums: sa.Table,
    where: list[sa.ColumnElement[bool]],
    parts: _Sums,
) -> int:
    """Add the value rows (not packed) of ``sums`` that meet ``where`` to
    ``parts``; how many there were."""
    # Only the columns they need: a driver parsing in Python (PyMySQL) took
    # twice as long over a bucket's start and hash too, on the 3,000 rows of
    # an hour under way.
    rows = connection.execute(
        sa.select(sums.c.part, sums.c.key, sums.c.weight).where(*where, sums.c.part != PACKED)
    )
    count = 0
    for part, key, weight in rows:
        values = parts[part]
        values[key] = values.get(key, 0.0) + float(weight)
        count += 1
    return count


def _add_documents(
    connection: sa.Connection,
    sums: sa.Table,
    where: list[sa.ColumnElement[bool]],
    parts: _Sums,
) -> None:
    """Add the documents of the packed buckets of ``sums`` that meet
    ``where`` to ``parts``."""
    packed: defaultdict[tuple[str, datetime], list[tuple[int, str]]] = defaultdict(list)
    documents = connection.execute(
        sa.select(sums.c.unit, sums.c.start, sums.c.key_hash, sums.c.key).where(
            *where, sums.c.part == PACKED
        )
    )
    for unit, start, number, text in documents:
        packed[unit, start].append((int(number), text))
    for chunks in packed.values():
        chunks.sort()
        for part, values in json.loads("".join(text for _, text in chunks)).items():
            into = parts[part]
            for key, weight in values:
                into[key] = into.get(key, 0.0) + weight


def read_sums(
    connection: sa.Connection, sums: sa.Table, where: sa.ColumnElement[bool]
) -> list[tuple[str, str, float]]:
    """The weight of each ``(part, stored key)`` but the totals, summed over
    the buckets of the sums table ``sums`` that meet ``where``, packed or
    not."""
    parts: _Sums = defaultdict(dict)
    window = [where, sums.c.part != "total"]
    _add_rows(connection, sums, window, parts)
    _add_documents(connection, sums, window, parts)
    return [(part, key, weight) for part, values in parts.items() for key, weight in values.items()]


def rewrite(rollups: SQLRollups) -> None:
    """On PostgreSQL, clear what a rebuild or a backlog's fold left of
    the rows it replaced, and analyze the traffic table.

    Its upserts and compactions (which pack a bucket's hundreds of rows
    into one) leave the rollup tables some 40 times the size of what
    they hold (470 MB for 11 MB after 1,000,000 records) and their
    index as large, which a plain ``VACUUM`` leaves as it is: the
    planner then read a day's 600 rows by a scan of the whole table
    (57 ms, against 0.5 ms through the index). So they are rewritten
    (``VACUUM FULL``, half a second at that size), unless another
    session holds one of them for over :data:`_REWRITE_WAIT`: that one
    is then vacuumed in place. And a table filled just before (a bulk
    load, an import) has no statistics until autovacuum comes, and
    without them the planner reads a summary's records after the fold
    position through the date index, a month of rows (110 ms at
    1,000,000), rather than the few past the position by their id."""
    if rollups.engine.dialect.name != "postgresql":
        return
    with rollups.engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        prepare = autocommit.dialect.identifier_preparer
        # A rewrite locks the table: never queue the site's folds and
        # summaries behind a long wait for it.
        autocommit.exec_driver_sql(f"SET lock_timeout = '{_REWRITE_WAIT}'")
        for table in (rollups.sums, rollups.buckets):
            name = prepare.format_table(table)
            try:
                autocommit.exec_driver_sql(f"VACUUM FULL ANALYZE {name}")
            except sa.exc.OperationalError:
                autocommit.exec_driver_sql(f"VACUUM ANALYZE {name}")
        autocommit.exec_driver_sql(f"ANALYZE {prepare.format_table(rollups.io.table)}")
