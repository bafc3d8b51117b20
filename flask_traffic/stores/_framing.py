"""How the file stores put records into a file and find them again.

Text lines from rows of values; the advisory lock that keeps processes'
writers apart; appending a batch whole; blocks of whole records read from
the end of a file backwards or from a point forwards; and snapshots of a
file as it was when opened, so a batch appended meanwhile is not half read.
A record is one line, except that with ``quoted`` (CSV) a newline inside
double quotes belongs to the record.
"""

from __future__ import annotations

import contextlib
import os
import typing as t
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..record import FIELDS, FieldType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per file only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Snapshot",
    "append_whole",
    "blocks_backwards",
    "blocks_forward",
    "count_records",
    "encode_lines",
    "field_encoders",
    "locked",
    "open_snapshot",
    "placed_blocks_backwards",
    "read_header",
    "same_file",
    "snapshot",
    "split_records",
]

_CHUNK = 64 * 1024
# Reads start with a small block (a short read() is quick) and grow to a
# large one (fewer calls per record for scans and summaries).
_FIRST_BLOCK = 16 * 1024
_BLOCK = 256 * 1024
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
def locked(fd: int, exclusive: bool) -> Iterator[None]:
    """Hold an advisory lock on ``fd``: other processes' writers wait."""
    if fcntl is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def read_header(fd: int) -> bytes:
    """The file's first line, without its newline."""
    return os.pread(fd, _CHUNK, 0).split(b"\n", 1)[0]


def append_whole(fd: int, batch: bytes, header: Callable[[], bytes], quoted: bool) -> None:
    """Append ``batch``, whole records, to the file ``fd`` (opened with
    ``O_APPEND``, under the exclusive lock) in one ``write()``: after
    ``header()`` if the file is empty, after ending a record a crash cut off
    if its last byte is not a newline."""
    data = batch
    size = os.fstat(fd).st_size
    if size == 0:
        data = header() + data
    elif os.pread(fd, 1, size - 1) != b"\n":
        data = _torn_record_end(fd, size, quoted) + data
    # One write() per batch: O_APPEND puts it at the end in one piece.
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        # A full disk, a quota, EIO: part of the batch may be in the file.
        # Cut it back (we hold the exclusive lock, so nothing was appended
        # after it), or the retry would write those records a second time
        # after a torn one. If even that fails, the next write closes the
        # torn record as after a crash.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def _torn_record_end(fd: int, size: int, quoted: bool) -> bytes:
    """What ends a record cut off by a crash, so the next batch starts clean.

    For quoted records the cut may have left a ``"`` open, which would make
    every newline before it look quoted to the backwards reader; counting the
    file's quotes (once, after a crash) tells whether to close it. The torn
    record itself reads back as unreadable and is skipped.
    """
    if not quoted:
        return b"\n"
    quotes = 0
    for offset in range(0, size, _CHUNK):
        quotes += os.pread(fd, _CHUNK, offset).count(b'"')
    return b'"\n' if quotes % 2 else b"\n"


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


def blocks_backwards(fd: int, start: int, size: int, quoted: bool) -> Iterator[bytes]:
    """The whole records between ``start`` and ``size``, in blocks, the end
    of the file first; each block is whole records in file order.

    (:func:`placed_blocks_backwards` also says where each block starts.)
    """
    for _, block in placed_blocks_backwards(fd, start, size, quoted):
        yield block


def placed_blocks_backwards(
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


def blocks_forward(fd: int, start: int, size: int, quoted: bool) -> Iterator[bytes]:
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


def count_records(block: bytes, quoted: bool) -> int:
    """How many records a block of whole records holds."""
    if not quoted or b'"' not in block:
        return block.count(b"\n")
    return len(split_records(block, quoted))


class Snapshot(t.NamedTuple):
    """One file as it was when opened: reads never go past ``size``, so a
    batch being appended meanwhile is not half read."""

    fd: int
    start: int  # where the records start (after a header)
    size: int
    header: bytes
    ident: tuple[int, int]


def snapshot(fd: int, has_header: bool) -> Snapshot:
    """The open file ``fd`` as it is now; the caller holds a lock on it."""
    stat = os.fstat(fd)
    header, start = b"", 0
    if has_header and stat.st_size:
        # Written with the first batch, in the same write(): whole once size > 0.
        header = read_header(fd)
        start = min(stat.st_size, len(header) + 1)
    return Snapshot(fd, start, stat.st_size, header, (stat.st_dev, stat.st_ino))


def open_snapshot(path: Path, has_header: bool) -> Snapshot | None:
    """``path`` opened for reading, as it is now; ``None`` if it does not
    exist. The caller closes ``snapshot.fd``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # Writers hold the exclusive lock while they append: under the
        # shared one the size is where a batch ends.
        with locked(fd, exclusive=False):
            return snapshot(fd, has_header)
    except BaseException:
        os.close(fd)
        raise


def same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not rotated away)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
