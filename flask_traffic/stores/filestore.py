"""FileStore: what the JSON Lines and CSV stores share. Where the file is,
appending a batch under a lock, reading records back (from the end of the
files, or from a point forwards), summaries a column at a time, and retention
by rotating the file (:mod:`._rotation`)."""

from __future__ import annotations

import abc
import os
import threading
import typing as t
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from .._tally import ColumnTally
from ..policy import LogPolicy
from ..query import Query
from ..record import TrafficRecord, iso_text
from ..rollups import ROLLUP_FIELDS, RollupRetention, rollup_settings, site_secret
from ..summary import SummaryBuilder
from ._framing import (
    Snapshot,
    append_whole,
    blocks_backwards,
    blocks_forward,
    count_records,
    locked,
    placed_blocks_backwards,
    same_file,
    split_records,
)
from ._rotation import BlockDecoder, FileSet
from .base import RollupKeeper, Store, warn_if_outside_instance_folder

if t.TYPE_CHECKING:
    from flask import Flask

    from ._filerollups import FileRollups

__all__ = ["LATE_WRITE_SLACK", "FileStore"]

_REOPEN_TRIES = 100

#: How long after its request a record may be appended and still be found by
#: a query with ``since``/``until``: a scan stops once it meets a record this
#: much older than ``since`` (see :meth:`FileStore.scan`). Records wait in the
#: queue for about a second; an hour also covers a store failing (and
#: retrying) for most of that hour.
LATE_WRITE_SLACK = timedelta(hours=1)


class _Window(t.NamedTuple):
    """Where a scan may stop, as stored date text."""

    stop_before: str | None  # newest first: stop at a record older than this
    stop_after: str | None  # oldest first: stop at a record this new or newer


def _window(query: Query) -> _Window:
    since, until = query.since, query.until
    return _Window(
        stop_before=None if since is None else iso_text(since - LATE_WRITE_SLACK),
        stop_after=None if until is None else iso_text(until + LATE_WRITE_SLACK),
    )


def _first_dated(rows: list[t.Any], test: Callable[[str], bool]) -> int | None:
    """The index of the first row whose date passes ``test``, if any."""
    for index, row in enumerate(rows):
        if row is not None:
            date = row.get("request_date")
            if date is not None and test(date):
                return index
    return None


class FileStore(Store):
    """A store that appends to one file, safely from several processes.

    Each batch is one ``write()`` under an exclusive file lock, so several
    processes (gunicorn workers) can share one file. Only the policy's
    enabled fields are written.

    Retention (``max_age``, ``max_records``) never rewrites that file: it
    renames it to a dated file beside it (``traffic.2026-11-25T081500.json``)
    and deletes dated files once every record in them is outside the limits;
    :meth:`read`, :meth:`scan` and :meth:`summary` read the live file and the
    dated ones, newest first, and leave out what is outside the limits.

    :param filename: the file's name; :attr:`default_filename` when ``None``.
    :param location: the folder it is in; the app's instance folder when
        ``None``. Created with its parents if missing.
    :param log_policy: which fields and requests to keep.
    :param sync: write in the request thread; ``None`` follows ``TRAFFIC_SYNC``.
    :param name: how the ``flask traffic`` commands and logs name the store.
    :param max_age: keep records for this long (a :class:`~datetime.timedelta`);
        older ones are rotated out to dated files beside this one and deleted.
    :param max_records: keep about this many records, the newest.
    :param rollups: keep rollups (:mod:`flask_traffic.rollups`) in a SQLite
        file beside this one, ``<file>.rollups.sqlite``, folded by the
        worker after writing (:mod:`._filerollups`), and answer
        :meth:`summary` of a window over two hours from them, its edges
        rounded out to whole hours or days. On by default; ``False`` turns
        them off. A policy that leaves out a field they count keeps none,
        without a word, as does a CSV file whose header lacks one.
    :param rollup_retention: how long rollups of each bucket size are kept.
    """

    #: The file's name when none is given.
    default_filename: t.ClassVar[str]
    #: Whether a newline inside double quotes belongs to the record (CSV).
    quoted_records: t.ClassVar[bool] = False
    #: Whether the file starts with a header line that is not a record.
    has_header: t.ClassVar[bool] = False

    def __init__(
        self,
        filename: str | os.PathLike[str] | None = None,
        location: str | os.PathLike[str] | None = None,
        log_policy: LogPolicy | None = None,
        *,
        sync: bool | None = None,
        name: str | None = None,
        max_age: timedelta | None = None,
        max_records: int | None = None,
        rollups: bool = True,
        rollup_retention: RollupRetention | None = None,
    ) -> None:
        super().__init__(log_policy, sync=sync, name=name, max_age=max_age, max_records=max_records)
        #: Whether this store keeps rollups (it needs every field they count).
        self.rollups, self.rollup_retention = rollup_settings(
            rollups, rollup_retention, self.log_policy.enabled_fields
        )
        self._rollup_state: FileRollups | None = None
        self._visitor_secret = b""
        if filename is None:
            filename = self.default_filename
        if not isinstance(filename, (str, os.PathLike)) or not os.fspath(filename):
            raise TypeError(f"filename must be a non-empty str or path, got {filename!r}.")
        if location is not None and not isinstance(location, (str, os.PathLike)):
            raise TypeError(f"location must be a folder path or None, got {location!r}.")
        self.filename = os.fspath(filename)
        self.location = None if location is None else Path(location)
        self._path: Path | None = None
        # flock does not keep two threads of one process apart: this does.
        self._write_lock = threading.Lock()
        self._file_set: FileSet | None = None

    @property
    def path(self) -> Path:
        """The file's full path, known once the store is attached to an app
        (or at once when ``location`` was given)."""
        if self._path is not None:
            return self._path
        if self.location is not None:
            return self.location / self.filename
        raise RuntimeError(
            f"{self.name} has no location yet: attach it with "
            f"Traffic(app, stores=...) or pass location=... to the store."
        )

    def _files(self) -> FileSet:
        """The live file and the rotated ones."""
        path = self.path
        files = self._file_set
        if files is None or files.path != path:
            decode: BlockDecoder = self.decode_block
            files = self._file_set = FileSet(
                path,
                has_header=self.has_header,
                quoted=self.quoted_records,
                decode_block=decode,
                write_lock=self._write_lock,
            )
        return files

    def setup(self, app: Flask) -> None:
        if self.max_age is not None and "request_date" not in self.fields:
            raise ValueError(
                f"{self.name} has max_age but its LogPolicy leaves out request_date: "
                f"enable request_date or drop max_age."
            )
        folder = self.location if self.location is not None else Path(app.instance_path)
        path = folder / self.filename
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Open once now, so a path that cannot be written fails at init_app.
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RuntimeError(
                f"{self.name} cannot write {path}: {exc.strerror}; pass location=... "
                f"with a writable folder."
            ) from None
        try:
            with locked(fd, exclusive=True):
                self.check_existing(fd, path)
        finally:
            os.close(fd)
        self._path = path
        self._visitor_secret = site_secret(app, os.fspath(path))

    def also_serve(self, app: Flask) -> None:
        if self.location is None:
            warn_if_outside_instance_folder(self, app, self._path)

    def check_existing(self, fd: int, path: Path) -> None:
        """Raise if an existing file has a layout this store cannot append to."""

    @abc.abstractmethod
    def encode(self, records: Sequence[TrafficRecord]) -> bytes:
        """The bytes for a batch: whole, newline-terminated records."""

    @abc.abstractmethod
    def header(self) -> bytes:
        """What a new, empty file starts with (``b""`` for none)."""

    @abc.abstractmethod
    def decode(self, raw: bytes, header: bytes) -> dict[str, t.Any] | None:
        """One stored record as a row of the enabled fields, ``None`` if unreadable."""

    def decode_block(self, block: bytes, header: bytes) -> list[dict[str, t.Any] | None]:
        """Whole records (each ending with a newline) as rows, in file order;
        ``None`` for an unreadable one. Stores override this with a faster
        way than one :meth:`decode` per record."""
        return [self.decode(raw, header) for raw in split_records(block, self.quoted_records)]

    def decode_stored(self, block: bytes, header: bytes) -> list[t.Any]:
        """Like :meth:`decode_block`, for summaries: rows may hold fields
        the policy leaves out (a summary reads only enabled ones) and may
        leave out fields a summary does not read (only
        :data:`~flask_traffic.summary.SUMMARY_FIELDS` are needed), so a store
        can skip work."""
        return self.decode_block(block, header)

    # -- writing -------------------------------------------------------------

    def export(self, records: Sequence[TrafficRecord]) -> None:
        batch = self.encode(records)
        path = self.path
        with self._write_lock:
            for _ in range(_REOPEN_TRIES):
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    with locked(fd, exclusive=True):
                        if same_file(fd, path):
                            append_whole(fd, batch, self.header, self.quoted_records)
                            return
                        # Retention renamed the file while we waited for the
                        # lock: write to the new live file instead.
                finally:
                    os.close(fd)
        raise RuntimeError(f"{path} was replaced {_REOPEN_TRIES} times while {self.name} wrote.")

    # -- reading ---------------------------------------------------------------

    def rotated_files(self) -> list[Path]:
        """The dated files retention renamed the live file to, oldest first."""
        return [path for _, path in self._files().rotated()]

    def scan(self, query: Query, *, oldest_first: bool = False) -> Iterator[dict[str, t.Any]]:
        """The rows ``query`` selects, newest first (or oldest first), lazily,
        from the live file and the rotated ones.

        Newest first, the files are read backwards and the scan stops at the
        first record older than ``since`` minus :data:`LATE_WRITE_SLACK`, or
        after the newest ``max_records``. Oldest first gives the same rows
        reversed: each file is read backwards only to find where that scan
        would stop, then forwards from there, stopping at the first record
        ``LATE_WRITE_SLACK`` past ``until``. Either way the cost follows the
        records read, not the size of the files.

        Records are appended in the order they are written, which is the
        order of their dates give or take the time a record waits in the
        queue (a second, or the retries of a failing store): a record written
        more than ``LATE_WRITE_SLACK`` after its request may be missed by a
        query with ``since``/``until`` (retention never relies on this).
        Records outside ``max_records`` are left out even before retention
        deletes them; :meth:`Store.query` starts the window ``max_age`` ago.
        """
        keep = query.matches
        for rows in self._row_blocks(query, oldest_first=oldest_first):
            for row in rows:
                if row is not None and keep(row):
                    yield row

    def summarize(self, query: Query, builder: SummaryBuilder) -> None:
        """Feed ``builder`` the selected records, a block of rows at a time.

        Counts what :meth:`SummaryBuilder.add_rows` would, with the same
        result, but a column at a time (``Counter`` and ``map`` loop in C);
        blocks holding sampled records, or rows missing a date or a response
        time, go through ``add_rows``.
        """
        if query.where:
            super().summarize(query, builder)
            return
        rollups = self._rollup_files()
        if rollups is not None:
            builder.source = rollups.summarize(query, builder)
            if builder.source is not None:
                return
            query = self.summarize_records(query, builder)
        tally = ColumnTally(self.fields, builder, query.since_iso, query.until_iso)
        for rows in self._row_blocks(query, oldest_first=False, stored=True):
            tally.add(rows)
        tally.finish()

    def _row_blocks(
        self, query: Query, *, oldest_first: bool, stored: bool = False
    ) -> Iterator[list[t.Any]]:
        """The rows a scan goes through, a block at a time, in the scan's
        order: unreadable records as ``None``, capped at ``max_records``,
        and ending where the scan may stop early; not yet filtered.

        With ``stored``, rows are the decoded records as stored (see
        :meth:`decode_stored`).
        """
        window = _window(query)
        decode = self.decode_stored if stored else self.decode_block
        quoted = self.quoted_records
        files = self._files()
        with files.open_all() as snaps:
            if oldest_first:
                yield from self._forward(files, snaps, window, decode)
                return
            left = self.max_records
            stop_before = window.stop_before
            for snap in snaps:
                for block in blocks_backwards(snap.fd, snap.start, snap.size, quoted):
                    rows = decode(block, snap.header)[::-1]
                    if left is not None:
                        rows = rows[:left]
                        left -= len(rows)
                    if stop_before is not None:
                        cut = _first_dated(rows, lambda date: date < stop_before)
                        if cut is not None:
                            yield rows[:cut]
                            return
                    yield rows
                    if left == 0:
                        return

    def _forward(
        self,
        files: FileSet,
        snaps: list[Snapshot],
        window: _Window,
        decode: Callable[[bytes, bytes], list[t.Any]],
    ) -> Iterator[list[t.Any]]:
        # Where the newest-first scan would stop (max_records, or a record
        # older than since by more than the slack), found by reading each
        # file backwards as far as that; then forward from there. So the
        # same rows come out, reversed, and only those are read.
        left = self.max_records
        plan: list[tuple[Snapshot, int, int]] = []
        for snap in snaps:
            if left == 0:
                break
            offset, drop, taken, stopped = self._begin(
                files, snap, window.stop_before, left, decode
            )
            plan.append((snap, offset, drop))
            if left is not None:
                left -= taken
            if stopped:
                break
        stop_after = window.stop_after
        for snap, offset, drop in reversed(plan):
            for block in blocks_forward(snap.fd, offset, snap.size, self.quoted_records):
                rows = decode(block, snap.header)
                if drop:
                    # Forward blocks do not line up with backward ones.
                    taken = min(drop, len(rows))
                    rows = rows[taken:]
                    drop -= taken
                if stop_after is not None:
                    cut = _first_dated(rows, lambda date: date >= stop_after)
                    if cut is not None:
                        yield rows[:cut]
                        return
                yield rows

    def _begin(
        self,
        files: FileSet,
        snap: Snapshot,
        stop_before: str | None,
        left: int | None,
        decode: Callable[[bytes, bytes], list[t.Any]],
    ) -> tuple[int, int, int, bool]:
        """Where a file's part of a newest-first scan begins: ``(offset,
        records to drop at offset, records in the part, whether the scan
        stops in this file)``."""
        quoted = self.quoted_records
        if stop_before is None:
            if left is None:
                return snap.start, 0, 0, False
            count = files.count(snap)
            if count <= left:
                return snap.start, 0, count, False
            # Only counting: no record is decoded to find the newest `left`.
            seen = 0
            for offset, block in placed_blocks_backwards(snap.fd, snap.start, snap.size, quoted):
                number = count_records(block, quoted)
                if seen + number >= left:
                    return offset, number - (left - seen), left, True
                seen += number
            return snap.start, 0, seen, False
        seen = 0
        for offset, block in placed_blocks_backwards(snap.fd, snap.start, snap.size, quoted):
            rows = decode(block, snap.header)
            number = len(rows)
            within = number if left is None else min(number, left - seen)
            for back in range(within):
                row = rows[number - 1 - back]
                if row is not None:
                    date = row.get("request_date")
                    if date is not None and date < stop_before:
                        return offset, number - back, seen + back, True
            if left is not None and seen + number >= left:
                return offset, number - (left - seen), left, True
            seen += number
        return snap.start, 0, seen, False

    # -- retention ---------------------------------------------------------------

    def retain(self, cutoff: datetime | None, max_records: int | None) -> int:
        """Rotate the live file when it is due, and delete rotated files
        outside the limits; never rewrites a file.

        The live file is renamed to a dated file beside it (under the
        writers' lock; a writer that opened it before finds out and opens a
        new live file) once its first record is older than half of
        ``max_age``, or it holds more than about ``max_records / 2`` records.
        A rotated file is deleted once its newest record is older than
        ``cutoff``, or once the files newer than it (the live one included)
        hold ``max_records`` records. So files hold at most about 1.5 times
        the limits, and nothing inside them is deleted; :meth:`scan` leaves
        out what lies outside them until then.

        :return: how many records the deleted files held.
        """
        return self._files().retain(cutoff, max_records)

    # -- rollups ---------------------------------------------------------------

    def _rollup_files(self) -> FileRollups | None:
        """The rollups, in the sidecar beside the file; None when off."""
        if not self.rollups:
            return None
        if not set(getattr(self, "columns", self.fields)) >= ROLLUP_FIELDS:
            # A CSV file written under another policy lacks a column they count.
            self.rollups = False
            return None
        state = self._rollup_state
        # Made again once setup() knows the file and the site's secret.
        if state is None or (state.data_path, state.secret) != (self.path, self._visitor_secret):
            from ._filerollups import FileRollups

            state = self._rollup_state = FileRollups(
                self, self._visitor_secret, self.rollup_retention
            )
        return state

    @property
    def keeps_rollups(self) -> bool:
        return self.rollups

    def _rollup_keeper(self) -> RollupKeeper | None:
        return self._rollup_files()
