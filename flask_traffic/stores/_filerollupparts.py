"""Writing a fold's records into a file store's sidecar
(:mod:`._filerollups`), with the rules of the SQL stores' rollups
(:mod:`._rollupparts`), so a bucket holds a bounded number of rows
whatever the traffic:

- only hours and days are kept (:data:`~._rollupparts.KEPT_UNITS`);
- per route, its ``response_time`` histogram, all in one document
  (:mod:`._rolluphistograms`) in the bucket's ``histograms`` column,
  merged here under the fold's write lock;
- once an hour or a day is over, its top paths and referrers keep their
  :data:`~._rollupparts.TOP_KEPT` most frequent values, the others added
  up under ``"o:<part>"`` (key ``""``).
"""

from __future__ import annotations

import sqlite3
import typing as t
from collections.abc import Iterable
from datetime import datetime, timezone

from ..rollups import HyperLogLog, RollupDelta, Unit
from ._rolluphistograms import merge_histograms
from ._rollupparts import (
    COMPACTED,
    KEPT_UNITS,
    OTHER,
    TOP_KEPT,
    is_over,
    split_times,
)

__all__ = ["apply_rows", "compact", "encode_key"]

_UTC = timezone.utc
_ADD_SUMS = (
    "INSERT INTO sums (unit, start, part, key, weight) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (unit, start, part, key) DO UPDATE SET weight = weight + excluded.weight"
)


def encode_key(key: str) -> bytes:
    """A sums key as stored: sqlite3 refuses str with lone surrogates."""
    return key.encode("utf-8", "surrogatepass")


def apply_rows(
    connection: sqlite3.Connection,
    secret: bytes,
    rows: list[dict[str, t.Any]],
    now: datetime | None = None,
) -> None:
    """Add ``rows`` to the sums and buckets, in the caller's transaction
    (which holds the sidecar's write lock), then compact the buckets they
    touched that are over."""
    if not rows:
        return
    delta = RollupDelta(secret, units=KEPT_UNITS)
    delta.add_rows(rows)
    plain, times = split_times(delta.sums, delta.time_keys)
    connection.executemany(
        _ADD_SUMS,
        [
            (unit, start.isoformat(), part, encode_key(key), weight)
            for (unit, start, part, key), weight in plain.items()
        ],
    )
    merged = []
    for (unit, start), (first, last) in delta.spans.items():
        known = connection.execute(
            "SELECT first_us, last_us, visitors, histograms FROM buckets "
            "WHERE unit = ? AND start = ?",
            (unit, start.isoformat()),
        ).fetchone()
        sketch = delta.visitors.get((unit, start))
        registers = None if sketch is None else sketch.to_bytes()
        histograms = None
        if known is not None:
            first, last = min(first, int(known[0])), max(last, int(known[1]))
            if known[2] is not None:
                both = HyperLogLog(bytes(known[2]))
                if registers is not None:
                    both.merge(registers)
                registers = both.to_bytes()
            histograms = known[3]
        histograms = merge_histograms(histograms, times.get((unit, start), {}))
        merged.append((unit, start.isoformat(), first, last, registers, histograms))
    connection.executemany(
        "INSERT OR REPLACE INTO buckets (unit, start, first_us, last_us, visitors, histograms) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        merged,
    )
    compact(connection, delta.spans, now or datetime.now(_UTC))


def compact(
    connection: sqlite3.Connection, touched: Iterable[tuple[Unit, datetime]], now: datetime
) -> None:
    """Bound the top lists of the hours and days in ``touched`` that are
    over, as :func:`._sqlrollupparts.compact` does for a table."""
    for unit, start in touched:
        if not is_over(unit, start, now):
            continue
        bucket = (unit, start.isoformat())
        for part in COMPACTED:
            found = connection.execute(
                "SELECT key, weight FROM sums WHERE unit = ? AND start = ? AND part = ? "
                "ORDER BY weight DESC, key",
                (*bucket, part),
            ).fetchall()
            if len(found) <= TOP_KEPT:
                continue
            rest = found[TOP_KEPT:]
            connection.executemany(
                "DELETE FROM sums WHERE unit = ? AND start = ? AND part = ? AND key = ?",
                [(*bucket, part, key) for key, _ in rest],
            )
            weight = float(sum(float(row[1]) for row in rest))
            connection.execute(_ADD_SUMS, (*bucket, OTHER + part, encode_key(""), weight))
