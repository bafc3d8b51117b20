"""Rollups of a file store (:mod:`flask_traffic.rollups`), kept in a SQLite
sidecar beside the data file, ``<data file>.rollups.sqlite`` (standard
library :mod:`sqlite3`), in the tables of :mod:`._sqlrollups` and by its
rules (:mod:`._filerollupparts`: hours and days, histograms per bucket, top
lists bounded once a bucket is over):

``sums(unit, start, part, key, weight)``
    summed weights per bucket and ``(part, key)``; ``start`` is ISO text,
    ``key`` UTF-8 with ``surrogatepass`` as a BLOB, so lone surrogates
    and NUL survive.
``buckets(unit, start, first_us, last_us, visitors, histograms)``
    per bucket, the first and last ``request_date``, the visitor sketch and
    per route its ``response_time`` histogram (:mod:`._rolluphistograms`).
``state(name, position, candidate, candidate_at)``
    ``fold`` (how many folds committed: none before the first) and, while
    one runs, ``rebuild`` (spans up to ``position`` refolded of those up to
    ``candidate``, from the day at POSIX time ``candidate_at`` on).
``files(id, dev, ino, head, folded)``
    the fold position, per file: the byte offset after the last whole
    record folded. A file is known by its device and inode (rotation
    renames by link + unlink, so they stay) and its first bytes ``head``
    (the first record's date, to the microsecond, tells it from a new file
    that got a deleted one's inode).
``spans(id, file, start, end, first, last)``
    the byte ranges each fold read, with the dates they hold: a summary
    reads the folded records at a window's edges from them, and a rebuild
    refolds them.

Each file has its own position, so a rotation loses or doubles nothing: a
rotated file keeps its inode and its position, and the new live file starts
at its beginning. When retention deletes a file, what was folded of it stays
in the rollups (as the SQL stores' rollups outlive deleted rows); records of
it not yet folded are never counted there (the worker folds before its
retention pass, so that takes another process's retention or a hand), and
its rows here go at the next fold.

Folds take ``BEGIN IMMEDIATE`` on the sidecar: one process of the site folds
at a time. Each transaction reads a file's records from its position up to
the size it had under the writers' shared lock (appends are whole batches
under their exclusive lock, so that size ends a record) and writes the sums,
the span and the new position.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import typing as t
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from ..query import Query, iso_text
from ..rollups import UNITS, RollupRetention, bucket_start
from ..summary import SummaryBuilder
from ._filerollupparts import apply_rows, encode_key
from ._framing import Snapshot, blocks_forward, count_records, split_records
from ._rollupparts import Deadline
from ._rollupstore import FoldState

if t.TYPE_CHECKING:
    from .._breakdown import BreakdownBuilder
    from .filestore import FileStore

__all__ = ["FOLD_CHUNK", "FileRollups", "decode_key", "encode_key", "sidecar_path"]

_UTC = timezone.utc
#: Records folded per transaction (about: whole blocks are read).
FOLD_CHUNK = 5000
_STATE = "fold"
_REBUILD = "rebuild"
# As in FileSet.count: enough of a file's start to hold its first date.
_HEAD = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sums (
    unit TEXT NOT NULL, start TEXT NOT NULL, part TEXT NOT NULL, key BLOB NOT NULL,
    weight REAL NOT NULL, PRIMARY KEY (unit, start, part, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    unit TEXT NOT NULL, start TEXT NOT NULL, first_us INTEGER NOT NULL,
    last_us INTEGER NOT NULL, visitors BLOB, histograms TEXT,
    PRIMARY KEY (unit, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY, position INTEGER NOT NULL, candidate INTEGER, candidate_at REAL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL,
    head BLOB NOT NULL, folded INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spans (
    id INTEGER PRIMARY KEY, file INTEGER NOT NULL, start INTEGER NOT NULL,
    "end" INTEGER NOT NULL, first TEXT NOT NULL, last TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS spans_last ON spans (last);
"""

#: A files row: ``(id, dev, ino, head, folded)``.
FileRow = tuple[int, int, int, bytes, int]


def sidecar_path(path: Path) -> Path:
    """Where the rollups of the data file ``path`` are kept."""
    return path.with_name(path.name + ".rollups.sqlite")


def decode_key(key: bytes) -> str:
    """The key :func:`encode_key` was given."""
    return key.decode("utf-8", "surrogatepass")


def head_of(snap: Snapshot) -> bytes:
    """The first bytes of ``snap``'s records, which tell it from another file."""
    return os.pread(snap.fd, min(_HEAD, snap.size - snap.start), snap.start)


def matching(rows: list[FileRow], snap: Snapshot, head: bytes) -> FileRow | None:
    """The files row of ``snap``, if it has one: same inode, and the same
    first bytes as far as both go (either may have been read while the file
    was shorter). Its position may be past ``snap``'s end: another process
    folded what it saw later."""
    for row in rows:
        stored = row[3]
        if (row[1], row[2]) == snap.ident and stored[: len(head)] == head[: len(stored)]:
            return row
    return None


class FileRollups:
    """The rollups of one file store, in its sidecar.

    :param store: the store whose files are folded.
    :param secret: the site's visitor secret.
    :param retention: how long each bucket size is kept.
    """

    def __init__(self, store: FileStore, secret: bytes, retention: RollupRetention) -> None:
        self.store = store
        self.secret = secret
        self.retention = retention
        #: Whether the last fold stopped at its budget with more to fold.
        self.unfinished = False
        #: The data file, and beside it the sidecar.
        self.data_path = store.path
        self.sidecar = sidecar_path(store.path)
        self._made = False

    # -- the sidecar -------------------------------------------------------------

    def connect(self, *, create: bool) -> sqlite3.Connection | None:
        """A new connection to the sidecar (one per call: summaries and the
        worker run in different threads, and forks must not share one);
        ``None`` without ``create`` if there is no sidecar yet."""
        if not create and not self.sidecar.exists():
            return None
        connection = sqlite3.connect(self.sidecar, timeout=60.0, isolation_level=None)
        try:
            if not self._made:
                # WAL: summaries read while a fold writes.
                _use_wal(connection)
                with self.transaction(connection):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            connection.execute(statement)
                    columns = {row[1] for row in connection.execute("PRAGMA table_info(buckets)")}
                    if "histograms" not in columns:
                        # A sidecar from before histograms per bucket: its
                        # buckets' histograms are still in their sums.
                        connection.execute("ALTER TABLE buckets ADD COLUMN histograms TEXT")
                self._made = True
        except BaseException:
            connection.close()
            raise
        return connection

    @staticmethod
    @contextlib.contextmanager
    def transaction(connection: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
        """One transaction: ``IMMEDIATE`` takes the write lock at once, so
        folders take turns; ``DEFERRED`` reads one consistent snapshot."""
        connection.execute(f"BEGIN {mode}")
        try:
            yield
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @staticmethod
    def file_rows(connection: sqlite3.Connection) -> list[FileRow]:
        """Every files row."""
        return [
            (int(a), int(b), int(c), bytes(d), int(e))
            for a, b, c, d, e in connection.execute("SELECT id, dev, ino, head, folded FROM files")
        ]

    @staticmethod
    def position(connection: sqlite3.Connection) -> int:
        """How many folds committed: 0 before the first."""
        found = connection.execute(
            "SELECT position FROM state WHERE name = ?", (_STATE,)
        ).fetchone()
        return 0 if found is None else int(found[0])

    @staticmethod
    def rebuilding(connection: sqlite3.Connection) -> bool:
        """Whether a rebuild is under way (or was interrupted)."""
        return FileRollups.rebuild_state(connection) is not None

    @staticmethod
    def rebuild_state(connection: sqlite3.Connection) -> tuple[int, int, str] | None:
        """The rebuild under way: the last span refolded, the last span to
        refold, and the day it rebuilds from as the records' dates are
        stored (``""``: all); ``None`` without a rebuild."""
        found = connection.execute(
            "SELECT position, candidate, candidate_at FROM state WHERE name = ?", (_REBUILD,)
        ).fetchone()
        if found is None:
            return None
        day = found[2]
        # As the records' dates are stored, to compare them as text.
        day_text = "" if day is None else iso_text(datetime.fromtimestamp(float(day), _UTC))
        return int(found[0]), int(found[1] or 0), day_text

    def fold_state(self) -> FoldState:
        """How far the rollups lag (:func:`._filefoldstate.fold_state`)."""
        from ._filefoldstate import fold_state

        return fold_state(self)

    # -- folding ---------------------------------------------------------------

    def fold(
        self, progress: t.Callable[[int], None] | None = None, budget: float | None = None
    ) -> int:
        """Fold every record written since the last fold, and go on with a
        rebuild left unfinished; return how many records were folded.

        :param progress: called with the records of each transaction.
        :param budget: seconds after which to stop, at the end of a chunk
            (:attr:`unfinished` then says so).
        """
        deadline = Deadline(budget)
        self.unfinished = False
        connection = self.connect(create=True)
        assert connection is not None
        folded = 0
        try:
            files = self.store._files()
            with files.open_all() as snaps:
                # Oldest first: rotated files, then the live one.
                for snap in reversed(snaps):
                    if snap.size <= snap.start:
                        continue  # empty: nothing to know it by yet
                    head = head_of(snap)
                    while (count := self._fold_chunk(connection, snap, head)) is not None:
                        folded += count
                        if count and progress is not None:
                            progress(count)
                        if deadline.passed():
                            self.unfinished = True
                            return folded
                self._forget_gone(connection)
                while (count := self._rebuild_chunk(connection, snaps)) is not None:
                    folded += count
                    if count and progress is not None:
                        progress(count)
                    if deadline.passed():
                        self.unfinished = True
                        return folded
        finally:
            connection.close()
        return folded

    def _fold_chunk(
        self, connection: sqlite3.Connection, snap: Snapshot, head: bytes
    ) -> int | None:
        """Fold about :data:`FOLD_CHUNK` records of ``snap`` after its
        position; how many, or None when none were left."""
        with self.transaction(connection):
            found = matching(self.file_rows(connection), snap, head)
            if found is None:
                # New, or a new file on a deleted one's inode: its rows go.
                self._drop_files(connection, "dev = ? AND ino = ?", snap.ident)
                file_id = connection.execute(
                    "INSERT INTO files (dev, ino, head, folded) VALUES (?, ?, ?, ?)",
                    (*snap.ident, head, snap.start),
                ).lastrowid
                assert file_id is not None
                offset = snap.start
            else:
                file_id, offset = found[0], max(found[4], snap.start)
                if len(head) > len(found[3]):
                    connection.execute("UPDATE files SET head = ? WHERE id = ?", (head, file_id))
            if offset >= snap.size:
                return None
            rows: list[dict[str, t.Any]] = []
            end = offset
            quoted, taken = self.store.quoted_records, 0
            for block in blocks_forward(snap.fd, offset, snap.size, quoted):
                number = count_records(block, quoted)
                if taken + number > FOLD_CHUNK:
                    # No more than a chunk: a span stays small to read again.
                    records = split_records(block, quoted)[: FOLD_CHUNK - taken]
                    block = block[: sum(len(record) + 1 for record in records)]
                    number = len(records)
                taken += number
                rows.extend(row for row in self.store.decode_block(block, snap.header) if row)
                end += len(block)
                if taken >= FOLD_CHUNK:
                    break
            if end == offset:
                return None  # only a record a crash cut off
            apply_rows(connection, self.secret, rows)
            connection.execute("UPDATE files SET folded = ? WHERE id = ?", (end, file_id))
            dates = [row["request_date"] for row in rows if row.get("request_date") is not None]
            if dates:
                connection.execute(
                    'INSERT INTO spans (file, start, "end", first, last) VALUES (?, ?, ?, ?, ?)',
                    (file_id, offset, end, min(dates), max(dates)),
                )
            connection.execute(
                "INSERT INTO state (name, position) VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET position = position + 1",
                (_STATE,),
            )
            return len(rows)

    def _forget_gone(self, connection: sqlite3.Connection) -> None:
        """Drop the rows of files that are gone (deleted by retention).

        The live file is looked at before and after the rotated ones are
        listed: if it changed, a rotation ran meanwhile and the listing may
        have missed a file, so nothing is dropped this time (dropping a file
        that is still there would fold it again)."""
        files = self.store._files()

        def ident(path: Path) -> tuple[int, int] | None:
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                return None
            return (stat.st_dev, stat.st_ino)

        before = ident(files.path)
        present = {ident(path) for _, path in files.rotated()}
        if ident(files.path) != before:
            return
        present.add(before)
        with self.transaction(connection):
            for row in self.file_rows(connection):
                if (row[1], row[2]) not in present:
                    self._drop_files(connection, "id = ?", (row[0],))

    @staticmethod
    def _drop_files(connection: sqlite3.Connection, where: str, values: tuple[int, ...]) -> None:
        gone = [row[0] for row in connection.execute(f"SELECT id FROM files WHERE {where}", values)]
        for file_id in gone:
            connection.execute("DELETE FROM spans WHERE file = ?", (file_id,))
            connection.execute("DELETE FROM files WHERE id = ?", (file_id,))

    # -- rebuilding ------------------------------------------------------------

    def rebuild(
        self, since: datetime | None = None, progress: t.Callable[[int], None] | None = None
    ) -> int:
        """Drop the rollups from the UTC day of ``since`` on (all of them
        without it) and fold those days' records again, from the spans
        folded so far; return how many records (with the new ones folded
        meanwhile). Resumable and safe while the app writes, as
        :meth:`._sqlrollups.SQLRollups.rebuild`; until it ends, summaries
        are counted from the raw records."""
        day = None if since is None else bucket_start(since, "day")
        connection = self.connect(create=True)
        assert connection is not None
        try:
            with self.transaction(connection):
                where, values = (
                    ("", ()) if day is None else (" WHERE start >= ?", (day.isoformat(),))
                )
                for table in ("sums", "buckets"):
                    connection.execute(f"DELETE FROM {table}{where}", values)
                (stop,) = connection.execute("SELECT coalesce(max(id), 0) FROM spans").fetchone()
                connection.execute(
                    "INSERT OR REPLACE INTO state (name, position, candidate, candidate_at) "
                    "VALUES (?, 0, ?, ?)",
                    (_REBUILD, stop, None if day is None else day.timestamp()),
                )
        finally:
            connection.close()
        return self.fold(progress)

    def _rebuild_chunk(self, connection: sqlite3.Connection, snaps: list[Snapshot]) -> int | None:
        """Refold the records of the next spans of a rebuild, from its day
        on; how many, or None when there is no rebuild (any more)."""
        quoted = self.store.quoted_records
        with self.transaction(connection):
            found = self.rebuild_state(connection)
            if found is None:
                return None
            done, stop, day_text = found
            spans = connection.execute(
                'SELECT spans.id, file, start, "end" FROM spans WHERE id > ? AND id <= ? '
                "AND last >= ? ORDER BY id",
                (done, stop, day_text),
            ).fetchall()
            by_file = open_files(self.file_rows(connection), snaps)
            rows: list[dict[str, t.Any]] = []
            last = done
            for span_id, file_id, start, end in spans:
                last = int(span_id)
                snap = by_file.get(int(file_id))
                if snap is not None:
                    # A span's records are whole: it ends where a fold stopped.
                    for block in blocks_forward(snap.fd, int(start), int(end), quoted):
                        rows.extend(
                            row
                            for row in self.store.decode_block(block, snap.header)
                            if row and (row.get("request_date") or "") >= day_text
                        )
                if len(rows) >= FOLD_CHUNK:
                    break
            apply_rows(connection, self.secret, rows)
            if last == done or last == spans[-1][0]:
                connection.execute("DELETE FROM state WHERE name = ?", (_REBUILD,))
            else:
                connection.execute("UPDATE state SET position = ? WHERE name = ?", (last, _REBUILD))
            return len(rows)

    # -- retention ---------------------------------------------------------------

    def retain(self, now: datetime | None = None) -> int:
        """Remove buckets past their size's retention; return how many."""
        now = now or datetime.now(_UTC)
        connection = self.connect(create=True)
        assert connection is not None
        removed = 0
        try:
            with self.transaction(connection):
                for unit in UNITS:
                    cutoff = self.retention.cutoff(unit, now)
                    if cutoff is None:
                        continue
                    values = (unit, cutoff.isoformat())
                    connection.execute("DELETE FROM sums WHERE unit = ? AND start < ?", values)
                    removed += connection.execute(
                        "DELETE FROM buckets WHERE unit = ? AND start < ?", values
                    ).rowcount
        finally:
            connection.close()
        return removed

    # -- summaries ---------------------------------------------------------------

    def summarize(self, query: Query, builder: SummaryBuilder) -> dict[str, t.Any] | None:
        """Feed ``builder`` the window of ``query`` from the rollups
        (:func:`._filerollupsummary.summarize`); ``None`` before the first fold."""
        from ._filerollupsummary import summarize

        return summarize(self, query, builder)

    def breakdown(self, query: Query, builder: BreakdownBuilder) -> dict[str, t.Any] | None:
        """Feed ``builder`` the window of ``query`` from the rollups
        (:func:`._filerollupsummary.breakdown`); ``None`` before the first fold."""
        from ._filerollupsummary import breakdown

        return breakdown(self, query, builder)


def open_files(rows: list[FileRow], snaps: list[Snapshot]) -> dict[int, Snapshot]:
    """The open snapshot of each files row's file, by the row's id, for
    the files there are."""
    found: dict[int, Snapshot] = {}
    for snap in snaps:
        if snap.size > snap.start:
            row = matching(rows, snap, head_of(snap))
            if row is not None:
                found[row[0]] = snap
    return found


def _use_wal(connection: sqlite3.Connection) -> None:
    """Put the sidecar in WAL mode, once for good. Switching waits for no
    busy timeout: when another process opens a new sidecar at the same
    moment, it is tried again until the connection's timeout."""
    deadline = time.monotonic() + 60.0
    while True:
        try:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
