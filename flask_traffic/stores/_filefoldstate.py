"""How far a file store's rollups lag (:class:`~._rollupstore.FoldState`):
each data file's bytes after its fold position (from the sidecar's
``files`` rows, as :meth:`._filerollups.FileRollups.fold` finds them), the
records in those bytes counted up to :data:`COUNT_BOUND`, the first of them
decoded for its date, and a rebuild's share of the spans' bytes refolded.
"""

from __future__ import annotations

import typing as t
from datetime import datetime

from ._filerollups import head_of, matching
from ._framing import blocks_forward, count_records
from ._rollupstore import FoldState

if t.TYPE_CHECKING:
    import sqlite3

    from ._filerollups import FileRollups

__all__ = ["COUNT_BOUND", "fold_state"]

#: Records after the fold positions counted at most: about 10 MB read.
COUNT_BOUND = 20_000


def fold_state(rollups: FileRollups) -> FoldState:
    """What :meth:`._filerollups.FileRollups.fold_state` reports."""
    connection = rollups.connect(create=False)
    try:
        rows = [] if connection is None else rollups.file_rows(connection)
        rebuild = None if connection is None else rollups.rebuild_state(connection)
        progress = (
            None if rebuild is None or connection is None else _progress(connection, *rebuild)
        )
    finally:
        if connection is not None:
            connection.close()
    store = rollups.store
    quoted = store.quoted_records
    pending = pending_bytes = 0
    oldest = None
    with store._files().open_all() as snaps:
        # Oldest first, as a fold reads them: the first record found is the oldest.
        for snap in reversed(snaps):
            if snap.size <= snap.start:
                continue
            found = matching(rows, snap, head_of(snap))
            offset = snap.start if found is None else max(found[4], snap.start)
            if offset >= snap.size:
                continue
            pending_bytes += snap.size - offset
            if pending > COUNT_BOUND:
                continue  # counted enough: only the bytes of the rest
            for block in blocks_forward(snap.fd, offset, snap.size, quoted):
                if oldest is None:
                    oldest = _first_date(store.decode_block(block, snap.header))
                pending += count_records(block, quoted)
                if pending > COUNT_BOUND:
                    break
    return FoldState(
        pending=min(pending, COUNT_BOUND),
        pending_exact=pending <= COUNT_BOUND,
        pending_bytes=pending_bytes,
        oldest_pending=oldest,
        rebuilding=rebuild is not None,
        rebuild_progress=progress,
    )


def _first_date(rows: list[dict[str, t.Any] | None]) -> datetime | None:
    for row in rows:
        text = None if row is None else row.get("request_date")
        if text:
            return datetime.fromisoformat(text)
    return None


def _progress(connection: sqlite3.Connection, done: int, stop: int, day_text: str) -> float:
    """The share of the bytes a rebuild refolds (the spans it reads) that
    it has refolded."""
    total, behind = connection.execute(
        'SELECT coalesce(sum("end" - start), 0), '
        'coalesce(sum(CASE WHEN id <= ? THEN "end" - start END), 0) '
        "FROM spans WHERE id <= ? AND last >= ?",
        (done, stop, day_text),
    ).fetchone()
    return 1.0 if not total else min(1.0, int(behind) / int(total))
