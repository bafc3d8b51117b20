"""What the JSON Lines and CSV stores share: where the file is, appending a
batch under a lock, and reading records back from the end of the file."""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import threading
import typing as t
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..policy import LogPolicy
from ..record import FIELDS, FieldType, TrafficRecord
from .base import Store

if t.TYPE_CHECKING:
    from flask import Flask

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per file only
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileStore", "encode_lines", "field_encoders"]

logger = logging.getLogger("flask_traffic")

_CHUNK = 64 * 1024
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


def _tail_records(fd: int, size: int, limit: int, *, quoted: bool, skip_first: bool) -> list[bytes]:
    """The last ``limit`` newline-terminated records of a file, newest first.

    Reads backwards in chunks and stops as soon as it has enough, so the
    cost depends on ``limit``, not on the size of the file. With ``quoted``
    a newline only ends a record when an even number of ``"`` follows it
    up to the end of the record (a newline inside an RFC 4180 quoted cell
    does not). ``skip_first`` leaves out the file's first record (a header).
    An unterminated last record (a write cut off by a crash) is ignored.
    """
    records: list[bytes] = []
    # The record being put together, from the scan point to its end.
    pending: list[bytes] = []
    parity = 0
    pos = size
    started = False
    while pos > 0 and len(records) < limit:
        step = min(_CHUNK, pos)
        pos -= step
        chunk = os.pread(fd, step, pos)
        end = len(chunk)
        if not started:
            # Drop whatever follows the final newline: not a whole record.
            cut = chunk.rfind(b"\n")
            if cut == -1:
                continue
            end = cut
            started = True
        while len(records) < limit:
            nl = chunk.rfind(b"\n", 0, end)
            if nl == -1:
                break
            segment = chunk[nl + 1 : end]
            end = nl
            if quoted:
                parity ^= segment.count(b'"') & 1
                if parity:
                    pending.append(b"\n" + segment)
                    continue
            pending.append(segment)
            record = b"".join(reversed(pending))
            pending = []
            if record:
                records.append(record)
        else:
            return records
        segment = chunk[:end]
        if quoted:
            parity ^= segment.count(b'"') & 1
        pending.append(segment)
    if pos == 0 and started and len(records) < limit and not skip_first:
        record = b"".join(reversed(pending))
        if record:
            records.append(record)
    return records


class FileStore(Store):
    """A store that appends to one file, safely from several processes.

    :param filename: the file's name.
    :param location: the folder it is in; the app's instance folder when
        ``None``. Created with its parents if missing.
    :param log_policy: which fields and requests to keep.
    :param sync: write in the request thread; ``None`` follows ``TRAFFIC_SYNC``.
    """

    #: Whether a newline inside double quotes belongs to the record (CSV).
    _quoted_records: t.ClassVar[bool] = False
    #: Whether the file starts with a header line that is not a record.
    _has_header: t.ClassVar[bool] = False

    def __init__(
        self,
        filename: str | os.PathLike[str],
        location: str | os.PathLike[str] | None = None,
        log_policy: LogPolicy | None = None,
        *,
        sync: bool | None = None,
    ) -> None:
        super().__init__(log_policy, sync=sync)
        if not isinstance(filename, (str, os.PathLike)) or not os.fspath(filename):
            raise TypeError(f"filename must be a non-empty str or path, got {filename!r}.")
        if location is not None and not isinstance(location, (str, os.PathLike)):
            raise TypeError(f"location must be a folder path or None, got {location!r}.")
        self.filename = os.fspath(filename)
        self.location = None if location is None else Path(location)
        self._path: Path | None = None
        # flock does not keep two threads of one process apart: this does.
        self._write_lock = threading.Lock()

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
        if self.location is None and self._path is not None:
            folder = Path(app.instance_path)
            if folder != self._path.parent:
                logger.warning(
                    "%s already writes to %s; the requests of app %r go there too, not "
                    "to its instance folder %s. Create one store per app, or pass location=.",
                    self.name,
                    self._path,
                    app.name,
                    folder,
                )

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

    def export(self, records: Sequence[TrafficRecord]) -> None:
        data = self.encode(records)
        with self._write_lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                with _locked(fd, exclusive=True):
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
            finally:
                os.close(fd)

    def fetch(self, limit: int) -> list[dict[str, t.Any]]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            with _locked(fd, exclusive=False):
                size = os.fstat(fd).st_size
                header = self._read_header(fd) if self._has_header else b""
                raw = _tail_records(
                    fd, size, limit, quoted=self._quoted_records, skip_first=self._has_header
                )
        finally:
            os.close(fd)
        rows = []
        for item in raw:
            row = self.decode(item, header)
            if row is not None:
                rows.append(row)
        return rows

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
        first = os.pread(fd, _CHUNK, 0)
        return first.split(b"\n", 1)[0]
