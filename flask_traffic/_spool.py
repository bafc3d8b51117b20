"""The disk spool: records a failing store cannot take now, kept on local disk
until it answers again, and replayed once, across restarts.

A spool is a folder per store (``<instance folder>/traffic-spool/<store>/``
by default). Each process appends to a file of its own,
``<pid>-<random>.spool``, which it holds under an exclusive ``flock`` for as
long as it lives; a file nobody holds was left by a process that died or
stopped, and the next process to look takes it over, under the lock, and
replays it. A file is a header line and then one frame per record
(:mod:`._spoolframes`: the row the store made of it, when it made one, and
the record's constructor values, after a length and a CRC). A frame torn
by a crash (``SIGKILL`` in the middle of a write) fails its length or CRC
check and ends the file there.

Records are numbered in their file from 0. A store that spools keeps, per
spool file, how many of its records it has written, in the transaction that
writes them; so a batch replayed again after a crash (written, but the spool
never learnt it) is recognised and skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
import typing as t
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from ._spoolframes import decode_batch, encode_record, read_frames
from .record import TrafficRecord

__all__ = [
    "SPOOL_FOLDER",
    "FencedReplay",
    "FencedSink",
    "ReplayBatch",
    "Spool",
    "SpoolFile",
    "spool_folder",
]

logger = logging.getLogger("flask_traffic")

#: The folder, in the instance folder (or ``TRAFFIC_SPOOL_DIR``), that holds
#: one folder of spool files per store.
SPOOL_FOLDER = "traffic-spool"
_SUFFIX = ".spool"
_MAGIC = b"flask-traffic spool 1\n"
#: At most one spill line a minute per store; each says how many since.
_SPILL_REPORT_INTERVAL = 60.0
# Frames counted at a time when a spool file is taken over.
_COUNT_CHUNK = 10_000


def spool_folder(base: Path, store_name: str) -> Path:
    """The folder of ``store_name``'s spool files under ``base``."""
    return base / (re.sub(r"[^A-Za-z0-9._-]", "_", store_name).lstrip(".") or "store")


class SpoolFile:
    """One spool file held by this process under an exclusive lock: what it
    holds (``size`` bytes of whole frames, ``records``) and how far it has
    been replayed (``offset``, ``position``: the next record's number)."""

    def __init__(self, path: Path, fd: int, size: int, records: int) -> None:
        self.path = path
        self.fd = fd
        self.id = path.stem
        self.size = size
        self.records = records
        self.offset = len(_MAGIC)
        self.position = 0

    @classmethod
    def create(cls, folder: Path) -> SpoolFile:
        """A new, empty spool file of this process in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:16]}{_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, _MAGIC)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return cls(path, fd, len(_MAGIC), 0)

    @classmethod
    def adopt(cls, path: Path) -> SpoolFile | None:
        """``path`` taken over under its lock, when no live process holds it
        (and it is still there once locked); ``None`` otherwise."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Finished and removed by its owner between open and lock?
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError(path)
            end = os.fstat(fd).st_size
            if os.pread(fd, len(_MAGIC), 0) != _MAGIC:
                raise ValueError(f"{path} is not a spool file")
        except (OSError, ValueError):
            os.close(fd)
            return None
        size, records = len(_MAGIC), 0
        while True:
            frames, size = read_frames(fd, size, end, _COUNT_CHUNK)
            records += len(frames)
            if len(frames) < _COUNT_CHUNK:
                break
        found = cls(path, fd, size, records)
        if size < end:
            logger.warning(
                "%s: %d byte(s) at the end were torn by a crash (at most one record); "
                "the %d whole record(s) before them are replayed.",
                path,
                end - size,
                records,
            )
        return found

    def append(self, frames: Sequence[bytes], max_bytes: int) -> int:
        """Append as many of ``frames`` as fit under ``max_bytes`` and the
        disk; return how many. A write cut short (a full disk) is cut back to
        the last whole frame."""
        ends = []
        size = self.size
        for frame in frames:
            if size + len(frame) > max_bytes:
                break
            size += len(frame)
            ends.append(size)
        if not ends:
            return 0
        data = memoryview(b"".join(frames[: len(ends)]))
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError:
            logger.warning("%s: cannot write the spool file.", self.path, exc_info=True)
            kept = self.size + done
            whole = [end for end in ends if end <= kept]
            self._cut(whole[-1] if whole else self.size)
            self.records += len(whole)
            return len(whole)
        self.size = size
        self.records += len(ends)
        return len(ends)

    def _cut(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError:
            logger.warning("%s: cannot cut a torn write off.", self.path, exc_info=True)
        self.size = size

    def read(self, limit: int, key: str | None = None) -> tuple[list[TrafficRecord], int]:
        """Up to ``limit`` records from the replay offset, and the offset
        after them; rows spilled under policy ``key`` come back ready to write."""
        payloads, offset = read_frames(self.fd, self.offset, self.size, limit)
        if not payloads:
            return [], offset
        return decode_batch(payloads, key), offset

    def close(self, *, delete: bool) -> None:
        """Release the file (and the lock); ``delete``: remove it first, under the lock."""
        if delete:
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class ReplayBatch(t.NamedTuple):
    """Records read from a spool file for one replay write."""

    file: SpoolFile
    records: list[TrafficRecord]
    #: The number of ``records[0]`` in its file.
    start: int
    #: The file offset after the batch.
    end_offset: int


class Spool:
    """One store's spool in this process: the file it appends to, the files
    it took over, oldest first, and the counts ``stats()`` shows.

    Used by the store's worker thread only; ``stats`` reads plain numbers.

    :param folder: the store's spool folder.
    :param max_bytes: the size the folder's spool files may reach together
        (every process's, and those waiting to be replayed); records past it
        are dropped (the caller counts them). Processes spilling at the same
        moment may pass it by one spill each.
    :param name: how log lines name the store.
    :param rows: the store's policy values key and ``values`` function: each
        spilled record keeps its row too, and replay writes the rows kept
        under the same key without making the records again.
    """

    #: Seconds between looks for spool files left by processes that stopped
    #: while this one runs (a server recycling a worker, say): the worker
    #: looks when idle, at most this often.
    rescan_interval = 30.0

    def __init__(
        self,
        folder: Path,
        max_bytes: int,
        name: str,
        rows: tuple[str, Callable[[TrafficRecord], tuple[t.Any, ...]]] | None = None,
    ) -> None:
        self.folder = folder
        self._rows = rows
        self.max_bytes = max_bytes
        self.name = name
        self._own: SpoolFile | None = None
        #: Files to replay, oldest first: taken over ones, then this process's.
        self._files: list[SpoolFile] = []
        self.spilled = 0
        self.replayed = 0
        self._replay_started: float | None = None
        self._replayed_before = 0
        self._unreported_spills = 0
        self._last_spill_report = -_SPILL_REPORT_INTERVAL
        self._last_scan = time.monotonic()

    @property
    def backlog(self) -> int:
        """Records in the spool not replayed yet."""
        return sum(file.records - file.position for file in self._files)

    @property
    def backlog_bytes(self) -> int:
        """Bytes of spool files not replayed yet."""
        return sum(file.size - file.offset for file in self._files)

    @property
    def replaying(self) -> bool:
        """Whether the store has taken spooled records since it last failed
        and the spool is not empty yet."""
        return self._replay_started is not None

    def adopt_orphans_if_due(self) -> None:
        """:meth:`adopt_orphans`, if :attr:`rescan_interval` has passed since the last look."""
        if time.monotonic() - self._last_scan >= self.rescan_interval:
            self.adopt_orphans()

    def adopt_orphans(self) -> None:
        """Take over the spool files in the folder that no live process holds."""
        self._last_scan = time.monotonic()
        try:
            paths = sorted(self.folder.glob(f"*{_SUFFIX}"), key=_mtime)
        except OSError:
            return
        held = {file.path for file in self._files}
        taken = []
        for path in paths:
            if path in held:
                continue
            found = SpoolFile.adopt(path)
            if found is None:
                continue
            if found.records == 0:
                found.close(delete=True)
                continue
            taken.append(found)
        if taken:
            self._files[:0] = taken
            logger.warning(
                "%s: took over %d spool file(s) left by stopped processes, %d record(s) to replay.",
                self.name,
                len(taken),
                sum(file.records for file in taken),
            )

    def spill(self, records: Sequence[TrafficRecord]) -> int:
        """Append ``records`` to this process's spool file; return how many
        it holds now (the rest did not fit)."""
        if not records:
            return 0
        try:
            if self._own is None:
                self._own = SpoolFile.create(self.folder)
                self._files.append(self._own)
            # The bound is the folder's: every process of the site spills
            # into it, and the disk is shared.
            room = self.max_bytes - self._others_bytes()
            written = self._own.append(list(map(self._encode, records)), room)
        except OSError:
            logger.warning(
                "%s: cannot open a spool file in %s.", self.name, self.folder, exc_info=True
            )
            return 0
        self.spilled += written
        self._unreported_spills += written
        moment = time.monotonic()
        if written and moment - self._last_spill_report >= _SPILL_REPORT_INTERVAL:
            logger.warning(
                "%s: the store is failing; spilled %d traffic record(s) to %s (%d waiting "
                "there, %d bytes), to be written when it answers.",
                self.name,
                self._unreported_spills,
                self._own.path,
                self.backlog,
                self.backlog_bytes,
            )
            self._unreported_spills = 0
            self._last_spill_report = moment
        return written

    def _others_bytes(self) -> int:
        """Bytes of the folder's spool files but this process's own: what
        other processes spilled and what waits to be replayed."""
        own = None if self._own is None else self._own.path.name
        total = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                if entry.name.endswith(_SUFFIX) and entry.name != own:
                    with contextlib.suppress(OSError):
                        total += entry.stat().st_size
        return total

    def _encode(self, record: TrafficRecord) -> bytes:
        rows = self._rows
        if rows is None:
            return encode_record(record)
        try:
            return encode_record(record, (rows[0], rows[1](record)))
        except Exception:
            # The store's write fails on it too (the dead-letter file will
            # tell), or a value marshal does not keep: the spool keeps what
            # makes the record again.
            return encode_record(record)

    def next_batch(self, limit: int) -> ReplayBatch | None:
        """The oldest records not replayed yet, at most ``limit``."""
        while self._files:
            file = self._files[0]
            key = None if self._rows is None else self._rows[0]
            records, end = (
                file.read(limit, key) if file.position < file.records else ([], file.size)
            )
            if records:
                return ReplayBatch(file, records, file.position, end)
            # Read to its end (or to a frame that fails its check).
            self._finish(file)
        return None

    def advance(self, batch: ReplayBatch) -> str | None:
        """``batch`` is written: move past it. Returns the spool id of a
        file thereby finished (and removed), for the store to forget."""
        file = batch.file
        if self._replay_started is None:
            self._replay_started = time.monotonic()
            self._replayed_before = self.replayed
            logger.warning(
                "%s: the store answers; replaying %d spooled traffic record(s) (%d bytes).",
                self.name,
                self.backlog,
                self.backlog_bytes,
            )
        file.offset = batch.end_offset
        file.position = batch.start + len(batch.records)
        self.replayed += len(batch.records)
        if file.position < file.records:
            return None
        self._finish(file)
        if not self._files and self._replay_started is not None:
            logger.warning(
                "%s: replay finished: %d spooled traffic record(s) written in %.1f s.",
                self.name,
                self.replayed - self._replayed_before,
                time.monotonic() - self._replay_started,
            )
            self._replay_started = None
        return file.id

    def _finish(self, file: SpoolFile) -> None:
        self._files.remove(file)
        if file is self._own:
            self._own = None
        file.close(delete=True)

    def close(self) -> None:
        """Release every file at shutdown: removed when replayed, else left
        (unlocked) for the next process to take over."""
        for file in self._files:
            with contextlib.suppress(OSError):
                os.fsync(file.fd)
            file.close(delete=file.position >= file.records)
        self._files = []
        self._own = None

    def forget_after_fork(self) -> None:
        """In a child after ``fork``: let go of the parent's files (closing
        them here leaves the parent's locks in place)."""
        for file in self._files:
            with contextlib.suppress(OSError):
                os.close(file.fd)
        self._files = []
        self._own = None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class FencedSink(t.Protocol):
    """The hooks of a :class:`~flask_traffic.stores.Sink` that spools."""

    name: str

    def spool_position(self, spool_id: str) -> int: ...

    def export_spooled(
        self, records: Sequence[TrafficRecord], spool_id: str, position: int
    ) -> None: ...

    def forget_spool(self, spool_id: str) -> None: ...


class FencedReplay:
    """What a processor replays a spool into: ``sink``'s fenced writes,
    skipping the records of a spool file the sink has written already
    (before a crash, or before a reply was lost).

    :param sink: the sink.
    :param kept: the sink's worker-side filter of a batch (``skip_bots``).
    """

    def __init__(
        self,
        sink: FencedSink,
        kept: Callable[[Sequence[TrafficRecord]], Sequence[TrafficRecord]],
    ) -> None:
        self.sink = sink
        self._kept = kept
        #: Per spool file, its position after the last batch written; a
        #: batch whose outcome is unknown leaves none, so it is read again.
        self._positions: dict[str, int] = {}

    def replay_spooled(self, records: list[TrafficRecord], spool_id: str, first: int) -> None:
        """Write records ``first`` on of spool file ``spool_id``, but those written already."""
        done = self._positions.pop(spool_id, None)
        if done is None:
            done = self.sink.spool_position(spool_id)
        end = first + len(records)
        if done >= end:
            self._positions[spool_id] = done
            logger.info(
                "%s: %d spooled record(s) were written before; not writing them again.",
                self.sink.name,
                len(records),
            )
            return
        self.sink.export_spooled(self._kept(records[max(0, done - first) :]), spool_id, end)
        self._positions[spool_id] = end

    def spool_finished(self, spool_id: str) -> None:
        """Spool file ``spool_id`` is replayed and removed: its fence goes."""
        self._positions.pop(spool_id, None)
        try:
            self.sink.forget_spool(spool_id)
        except Exception as exc:
            # A fence left behind costs a row or a key; the records are written.
            logger.info("%s: could not drop spool fence %s: %s", self.sink.name, spool_id, exc)
