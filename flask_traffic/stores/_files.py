"""What the JSON Lines and CSV stores share: where the file is, appending a
batch under a lock, reading records back (from the end of the file, or from
its start), queries, summaries and retention by rotating the file."""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import re
import threading
import typing as t
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .._tally import ColumnTally
from ..policy import LogPolicy
from ..query import Query
from ..record import FIELDS, FieldType, TrafficRecord, iso_text
from ..summary import SummaryBuilder
from .base import Store, warn_if_outside_instance_folder

if t.TYPE_CHECKING:
    from flask import Flask

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per file only
    fcntl = None  # type: ignore[assignment]

__all__ = ["LATE_WRITE_SLACK", "FileStore", "encode_lines", "field_encoders", "split_records"]

logger = logging.getLogger("flask_traffic")

_CHUNK = 64 * 1024
# Reads start with a small block (a short read() is quick) and grow to a
# large one (fewer calls per record for scans and summaries).
_FIRST_BLOCK = 16 * 1024
_BLOCK = 256 * 1024
_UTC = timezone.utc
# Rotated files are named after the moment of rotation, in UTC.
_STAMP = "%Y-%m-%dT%H%M%S"
_REOPEN_TRIES = 100
_CACHED_FILES = 256
_HEAD = 64

#: How long after its request a record may be appended and still be found by
#: a query with ``since``/``until``: a scan stops once it meets a record this
#: much older than ``since`` (see :meth:`FileStore.scan`). Records wait in the
#: queue for about a second; an hour also covers a store failing (and
#: retrying) for most of that hour.
LATE_WRITE_SLACK = timedelta(hours=1)
_FIELD_TYPES = {field.name: field.type for field in FIELDS}


def field_encoders(
    fields: tuple[str, ...], by_type: dict[FieldType, Callable[[t.Any], str]]
) -> list[Callable[[t.Any], str]]:
    """One text encoder per field, chosen by the field's type."""
    return [by_type[_FIELD_TYPES[name]] for name in fields]


def encode_lines(
    rows: Sequence[tuple[t.Any, ...]],
    encoders: Sequence[Callable[[t.Any], str]],
    prefixes: Sequence[str],
    start: str,
    end: str,
) -> str:
    """Text lines for ``rows``: ``start``, then each value's text after its
    prefix, joined with commas, then ``end`` and a newline.

    Works a column at a time with ``map`` and ``zip``, so the loops over
    records and fields run in C and Python code runs only where an encoder
    does (a cache miss, a number, a date): this is the hot loop of every
    file store's worker.
    """
    if not rows:
        return ""
    if not encoders:
        return (start + end + "\n") * len(rows)
    columns = [
        map(encode, column)
        for encode, column in zip(encoders, zip(*rows, strict=True), strict=True)
    ]
    columns = [
        map(prefix.__add__, column) if prefix else column
        for prefix, column in zip(prefixes, columns, strict=True)
    ]
    glue = end + "\n" + start
    return start + glue.join(map(",".join, zip(*columns, strict=True))) + end + "\n"


@contextlib.contextmanager
def _locked(fd: int, exclusive: bool) -> Iterator[None]:
    """Hold an advisory lock on ``fd``: other processes' writers wait."""
    if fcntl is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _read_header(fd: int) -> bytes:
    return os.pread(fd, _CHUNK, 0).split(b"\n", 1)[0]


def _whole_end(fd: int, start: int, size: int) -> int:
    """Where the last whole (newline-terminated) record before ``size`` ends.

    What follows it is a write cut off by a crash: not a record.
    """
    end = size
    while end > start:
        step = min(_CHUNK, end - start)
        cut = os.pread(fd, step, end - step).rfind(b"\n")
        if cut != -1:
            return end - step + cut + 1
        end -= step
    return start


def _first_boundary(data: bytes, quoted: bool) -> int:
    """Where the first record that starts inside ``data`` starts (after a
    newline that ends a record); ``data`` ends where a record ends. -1 if none.

    With ``quoted``, a newline ends a record only when an even number of
    ``"`` follows it up to the end of ``data`` (a newline inside an RFC 4180
    quoted cell does not).
    """
    nl = data.find(b"\n")
    if nl == -1:
        return -1
    if quoted:
        after = data.count(b'"', nl + 1)
        while after & 1:
            following = data.find(b"\n", nl + 1)
            if following == -1:
                return -1
            after -= data.count(b'"', nl + 1, following + 1)
            nl = following
    return nl + 1


def _last_boundary(data: bytes, quoted: bool) -> int:
    """Where the last whole record of ``data`` ends; ``data`` starts where a
    record starts. -1 if no record ends in it."""
    nl = data.rfind(b"\n")
    if nl == -1:
        return -1
    if quoted:
        before = data.count(b'"', 0, nl + 1)
        while before & 1:
            previous = data.rfind(b"\n", 0, nl)
            if previous == -1:
                return -1
            before -= data.count(b'"', previous + 1, nl + 1)
            nl = previous
    return nl + 1


def _blocks_backwards(fd: int, start: int, size: int, quoted: bool) -> Iterator[bytes]:
    """The whole records between ``start`` and ``size``, in blocks, the end
    of the file first; each block is whole records in file order.

    (:func:`_placed_blocks_backwards` also says where each block starts.)
    """
    for _, block in _placed_blocks_backwards(fd, start, size, quoted):
        yield block


def _placed_blocks_backwards(
    fd: int, start: int, size: int, quoted: bool
) -> Iterator[tuple[int, bytes]]:
    """``(offset, block)``: the whole records between ``start`` and ``size``,
    in blocks, the end of the file first; each block is whole records in file
    order, starting at ``offset``.

    Reads backwards in chunks, so a caller that stops early reads only the
    end of the file: the cost depends on how far back it goes, not on the
    size of the file. The first chunk is small (a short ``read()`` is quick),
    later ones grow.
    """
    pos = _whole_end(fd, start, size)
    pending = b""
    step = _FIRST_BLOCK
    while pos > start:
        take = min(step, pos - start)
        pos -= take
        data = os.pread(fd, take, pos) + pending
        step = min(step * 4, _BLOCK)
        if pos == start:
            if data:
                yield start, data
            return
        cut = _first_boundary(data, quoted)
        if cut == -1:
            pending = data
            continue
        pending = data[:cut]
        if cut < len(data):
            yield pos + cut, data[cut:]


def _blocks_forward(fd: int, start: int, size: int, quoted: bool) -> Iterator[bytes]:
    """The whole records between ``start`` and ``size``, in blocks, in file order."""
    pos = start
    pending = b""
    step = _FIRST_BLOCK
    while pos < size:
        chunk = os.pread(fd, min(step, size - pos), pos)
        if not chunk:
            return
        pos += len(chunk)
        step = min(step * 4, _BLOCK)
        data = pending + chunk if pending else chunk
        cut = _last_boundary(data, quoted)
        if cut == -1:
            pending = data
            continue
        pending = data[cut:]
        yield data[:cut]


def split_records(block: bytes, quoted: bool) -> list[bytes]:
    """The records of a block of whole records, without their newlines."""
    lines = block.split(b"\n")
    lines.pop()
    if not quoted or b'"' not in block:
        return lines
    records: list[bytes] = []
    pending: list[bytes] = []
    parity = 0
    for line in lines:
        parity ^= line.count(b'"') & 1
        pending.append(line)
        if not parity:
            records.append(b"\n".join(pending))
            pending = []
    return records


def _count_records(block: bytes, quoted: bool) -> int:
    if not quoted or b'"' not in block:
        return block.count(b"\n")
    return len(split_records(block, quoted))


class _Snapshot(t.NamedTuple):
    """One file as it was when opened: reads never go past ``size``, so a
    batch being appended meanwhile is not half read."""

    fd: int
    start: int  # where the records start (after a header)
    size: int
    header: bytes
    ident: tuple[int, int]


def _snapshot(fd: int, has_header: bool) -> _Snapshot:
    stat = os.fstat(fd)
    header, start = b"", 0
    if has_header and stat.st_size:
        # Written with the first batch, in the same write(): whole once size > 0.
        header = _read_header(fd)
        start = min(stat.st_size, len(header) + 1)
    return _Snapshot(fd, start, stat.st_size, header, (stat.st_dev, stat.st_ino))


def _open_snapshot(path: Path, has_header: bool) -> _Snapshot | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # Writers hold the exclusive lock while they append: under the
        # shared one the size is where a batch ends.
        with _locked(fd, exclusive=False):
            return _snapshot(fd, has_header)
    except BaseException:
        os.close(fd)
        raise


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not rotated away)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _first_dated(rows: list[t.Any], test: Callable[[str], bool]) -> int | None:
    """The index of the first row whose date passes ``test``, if any."""
    for index, row in enumerate(rows):
        if row is not None:
            date = row.get("request_date")
            if date is not None and test(date):
                return index
    return None


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
    """

    #: The file's name when none is given.
    default_filename: t.ClassVar[str]
    #: Whether a newline inside double quotes belongs to the record (CSV).
    _quoted_records: t.ClassVar[bool] = False
    #: Whether the file starts with a header line that is not a record.
    _has_header: t.ClassVar[bool] = False

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
    ) -> None:
        super().__init__(log_policy, sync=sync, name=name, max_age=max_age, max_records=max_records)
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
        # Record counts of files, by (device, inode): (size counted, count,
        # the file's first bytes).
        self._counts: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        # Newest dates of files, by (device, inode) and size: files only
        # grow, and rotated ones never change.
        self._newest: dict[tuple[tuple[int, int], int, bytes], str | None] = {}

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
            with _locked(fd, exclusive=True):
                self.check_existing(fd, path)
        finally:
            os.close(fd)
        self._path = path

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
        return [self.decode(raw, header) for raw in split_records(block, self._quoted_records)]

    def decode_stored(self, block: bytes, header: bytes) -> list[t.Any]:
        """Like :meth:`decode_block`, for summaries: rows may hold fields
        the policy leaves out (a summary reads only enabled ones) and may
        leave out fields a summary does not read (only
        :data:`~flask_traffic.summary.SUMMARY_FIELDS` are needed), so a store can skip work."""
        return self.decode_block(block, header)

    # -- writing -------------------------------------------------------------

    def export(self, records: Sequence[TrafficRecord]) -> None:
        batch = self.encode(records)
        path = self.path
        with self._write_lock:
            for _ in range(_REOPEN_TRIES):
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    with _locked(fd, exclusive=True):
                        if not _same_file(fd, path):
                            # Retention renamed the file while we waited for
                            # the lock: write to the new live file instead.
                            continue
                        data = batch
                        size = os.fstat(fd).st_size
                        if size == 0:
                            data = self.header() + data
                        elif os.pread(fd, 1, size - 1) != b"\n":
                            # A writer died mid-record: end that record, keep ours whole.
                            data = self._close_torn_record(fd, size) + data
                        # One write() per batch: O_APPEND puts it at the end in one piece.
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view) :]
                        return
                finally:
                    os.close(fd)
        raise RuntimeError(f"{path} was replaced {_REOPEN_TRIES} times while {self.name} wrote.")

    def _close_torn_record(self, fd: int, size: int) -> bytes:
        """What ends a record cut off by a crash, so the next batch starts clean.

        For quoted records the cut may have left a ``"`` open, which would
        make every newline before it look quoted to the backwards reader;
        counting the file's quotes (once, after a crash) tells whether to
        close it. The torn record itself reads back as unreadable and is
        skipped.
        """
        if not self._quoted_records:
            return b"\n"
        quotes = 0
        for offset in range(0, size, _CHUNK):
            quotes += os.pread(fd, _CHUNK, offset).count(b'"')
        return b'"\n' if quotes % 2 else b"\n"

    @staticmethod
    def _read_header(fd: int) -> bytes:
        return _read_header(fd)

    # -- reading ---------------------------------------------------------------

    def rotated_files(self) -> list[Path]:
        """The dated files retention renamed the live file to, oldest first."""
        return [path for _, path in self._rotated()]

    def _rotated(self) -> list[tuple[tuple[str, int], Path]]:
        live = self.path
        pattern = re.compile(
            re.escape(live.stem) + r"\.(\d{4}-\d\d-\d\dT\d{6})(?:-(\d+))?" + re.escape(live.suffix)
        )
        found = []
        try:
            names = os.listdir(live.parent)
        except FileNotFoundError:
            return []
        for name in names:
            match = pattern.fullmatch(name)
            if match:
                found.append(((match[1], int(match[2] or 0)), live.parent / name))
        found.sort()
        return found

    @contextlib.contextmanager
    def _open_files(self) -> Iterator[list[_Snapshot]]:
        """The live file and the rotated ones, newest first, open.

        The live file is opened before the folder is listed: if it is
        rotated meanwhile, it shows up under its new name as the same file,
        which is skipped, so no record is read twice or missed.
        """
        snaps: list[_Snapshot] = []
        try:
            live = _open_snapshot(self.path, self._has_header)
            if live is not None:
                snaps.append(live)
            seen = {snap.ident for snap in snaps}
            for _, path in reversed(self._rotated()):
                snap = _open_snapshot(path, self._has_header)
                if snap is None:
                    continue  # deleted by retention meanwhile
                if snap.ident in seen:
                    os.close(snap.fd)
                    continue
                seen.add(snap.ident)
                snaps.append(snap)
            yield snaps
        finally:
            for snap in snaps:
                os.close(snap.fd)

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
        quoted = self._quoted_records
        with self._open_files() as snaps:
            if oldest_first:
                yield from self._forward(snaps, window, decode, quoted)
                return
            left = self.max_records
            stop_before = window.stop_before
            for snap in snaps:
                for block in _blocks_backwards(snap.fd, snap.start, snap.size, quoted):
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
        snaps: list[_Snapshot],
        window: _Window,
        decode: Callable[[bytes, bytes], list[t.Any]],
        quoted: bool,
    ) -> Iterator[list[t.Any]]:
        # Where the newest-first scan would stop (max_records, or a record
        # older than since by more than the slack), found by reading each
        # file backwards as far as that; then forward from there. So the
        # same rows come out, reversed, and only those are read.
        left = self.max_records
        plan: list[tuple[_Snapshot, int, int]] = []
        for snap in snaps:
            if left == 0:
                break
            offset, drop, taken, stopped = self._begin(snap, window.stop_before, left, decode)
            plan.append((snap, offset, drop))
            if left is not None:
                left -= taken
            if stopped:
                break
        stop_after = window.stop_after
        for snap, offset, drop in reversed(plan):
            for block in _blocks_forward(snap.fd, offset, snap.size, quoted):
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
        snap: _Snapshot,
        stop_before: str | None,
        left: int | None,
        decode: Callable[[bytes, bytes], list[t.Any]],
    ) -> tuple[int, int, int, bool]:
        """Where a file's part of a newest-first scan begins: ``(offset,
        records to drop at offset, records in the part, whether the scan
        stops in this file)``."""
        quoted = self._quoted_records
        if stop_before is None:
            if left is None:
                return snap.start, 0, 0, False
            count = self._count(snap)
            if count <= left:
                return snap.start, 0, count, False
            # Only counting: no record is decoded to find the newest `left`.
            seen = 0
            for offset, block in _placed_blocks_backwards(snap.fd, snap.start, snap.size, quoted):
                number = _count_records(block, quoted)
                if seen + number >= left:
                    return offset, number - (left - seen), left, True
                seen += number
            return snap.start, 0, seen, False
        seen = 0
        for offset, block in _placed_blocks_backwards(snap.fd, snap.start, snap.size, quoted):
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

    def _count(self, snap: _Snapshot) -> int:
        """How many records ``snap`` holds, counting only what was appended
        since the last count of the same file (files only grow)."""
        start, count = snap.start, 0
        # The first record's start (its date, to the microsecond) tells a
        # file from a new one that got a deleted file's inode.
        head = os.pread(snap.fd, _HEAD, snap.start)
        known = self._counts.get(snap.ident)
        if known is not None and known[2] == head[: len(known[2])] and known[0] <= snap.size:
            start, count = known[0], known[1]
            if start == snap.size:
                return count
        quoted = self._quoted_records
        count += sum(
            _count_records(block, quoted)
            for block in _blocks_forward(snap.fd, start, snap.size, quoted)
        )
        if len(self._counts) > _CACHED_FILES:
            self._counts.clear()
        self._counts[snap.ident] = (max(snap.size, start), count, head)
        return count

    def _first_date(self, snap: _Snapshot) -> str | None:
        for block in _blocks_forward(snap.fd, snap.start, snap.size, self._quoted_records):
            for row in self.decode_block(block, snap.header):
                if row is not None and row.get("request_date") is not None:
                    return t.cast(str, row["request_date"])
        return None

    def _last_date(self, snap: _Snapshot) -> str | None:
        for block in _blocks_backwards(snap.fd, snap.start, snap.size, self._quoted_records):
            for row in reversed(self.decode_block(block, snap.header)):
                if row is not None and row.get("request_date") is not None:
                    return t.cast(str, row["request_date"])
        return None

    def _newest_date(self, snap: _Snapshot) -> str | None:
        key = (snap.ident, snap.size, os.pread(snap.fd, _HEAD, snap.start))
        if key not in self._newest:
            newest: str | None = None
            for block in _blocks_forward(snap.fd, snap.start, snap.size, self._quoted_records):
                for row in self.decode_block(block, snap.header):
                    date = None if row is None else row.get("request_date")
                    if date is not None and (newest is None or date > newest):
                        newest = date
            if len(self._newest) > _CACHED_FILES:
                self._newest.clear()
            self._newest[key] = newest
        return self._newest[key]

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
        now = datetime.now(_UTC)
        self._rotate_if_due(now, cutoff, max_records)
        return self._delete_outside(cutoff, max_records)

    def _rotate_if_due(
        self, now: datetime, cutoff: datetime | None, max_records: int | None
    ) -> bool:
        path = self.path
        with self._write_lock:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return False
            try:
                with _locked(fd, exclusive=True):
                    if not _same_file(fd, path):
                        return False  # another process rotated it just now
                    snap = _snapshot(fd, self._has_header)
                    if not self._rotation_due(snap, now, cutoff, max_records):
                        return False
                    self._rotate(path, now)
                    return True
            finally:
                os.close(fd)

    def _rotation_due(
        self, snap: _Snapshot, now: datetime, cutoff: datetime | None, max_records: int | None
    ) -> bool:
        body = snap.size - snap.start
        if body <= 0:
            return False
        if cutoff is not None:
            first = self._first_date(snap)
            if first is not None and first < iso_text(cutoff + (now - cutoff) / 2):
                return True
        if max_records is not None:
            # Estimated from the last 64 KiB: counting every record each
            # time would read the whole file once a minute.
            sample = min(body, _CHUNK)
            lines = os.pread(snap.fd, sample, snap.size - sample).count(b"\n")
            if body * max(lines, 1) / sample > max_records / 2:
                return True
        return False

    def _rotate(self, path: Path, now: datetime) -> Path:
        stamp, number = now.strftime(_STAMP), 0
        rotated = self._rotated()
        if rotated and rotated[-1][0] >= (stamp, 0):
            # Later than every rotated file, even if the clock went back.
            stamp, number = rotated[-1][0][0], rotated[-1][0][1] + 1
        while True:
            target = path.with_name(
                f"{path.stem}.{stamp}{f'-{number}' if number else ''}{path.suffix}"
            )
            try:
                # link + unlink never replaces a file another process rotated
                # to the same name, as rename would.
                os.link(path, target)
            except FileExistsError:
                number += 1
                continue
            except OSError:  # pragma: no cover - a file system without hard links
                if target.exists():
                    number += 1
                    continue
                os.rename(path, target)
                return target
            os.unlink(path)
            return target

    def _delete_outside(self, cutoff: datetime | None, max_records: int | None) -> int:
        rotated = self._rotated()
        if not rotated:
            return 0
        cutoff_text = None if cutoff is None else iso_text(cutoff)
        removed = 0
        held = 0
        seen: set[tuple[int, int]] = set()
        live = _open_snapshot(self.path, self._has_header)
        if live is not None:
            try:
                seen.add(live.ident)
                if max_records is not None:
                    held = self._count(live)
            finally:
                os.close(live.fd)
        for _, path in reversed(rotated):
            snap = _open_snapshot(path, self._has_header)
            if snap is None:
                continue
            try:
                if snap.ident in seen:
                    continue  # the live file, being rotated by another process
                seen.add(snap.ident)
                count = self._count(snap)
                full = max_records is not None and held >= max_records
                if full or (cutoff_text is not None and self._all_older(snap, cutoff_text)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    removed += count
                else:
                    held += count
            finally:
                os.close(snap.fd)
        return removed

    def _all_older(self, snap: _Snapshot, cutoff: str) -> bool:
        last = self._last_date(snap)
        if last is None or last >= cutoff:
            return False
        # The last record is not always the newest (records wait in queues):
        # before deleting, make sure (once per file) that none is newer.
        newest = self._newest_date(snap)
        return newest is not None and newest < cutoff
