"""The files of a file store: the live one, and the dated ones retention
renamed it to. Listing and opening them together, counting their records,
rotating the live file by rename and deleting dated files outside the limits.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import typing as t
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from ..record import iso_text
from ._framing import (
    Snapshot,
    blocks_backwards,
    blocks_forward,
    count_records,
    locked,
    open_snapshot,
    same_file,
    snapshot,
)

__all__ = ["BlockDecoder", "FileSet"]

#: Rows of a block of whole records, in file order; ``None`` for an unreadable one.
BlockDecoder = Callable[[bytes, bytes], list[dict[str, t.Any] | None]]

_UTC = timezone.utc
# Rotated files are named after the moment of rotation, in UTC.
_STAMP = "%Y-%m-%dT%H%M%S"
# How much of the end of the live file estimates its record count.
_SAMPLE = 64 * 1024
_CACHED_FILES = 256
_HEAD = 64


class FileSet:
    """A live file and the dated files beside it that retention renamed it to
    (``traffic.json`` → ``traffic.2026-11-25T081500.json``).

    :param path: the live file.
    :param has_header: whether each file starts with a header line.
    :param quoted: whether a newline inside double quotes belongs to the record.
    :param decode_block: turns a block of records into rows (for their dates).
    :param write_lock: the lock the store's writers hold in this process.
    """

    def __init__(
        self,
        path: Path,
        *,
        has_header: bool,
        quoted: bool,
        decode_block: BlockDecoder,
        write_lock: threading.Lock,
    ) -> None:
        self.path = path
        self.has_header = has_header
        self.quoted = quoted
        self.decode_block = decode_block
        self.write_lock = write_lock
        # Record counts of files, by (device, inode): (size counted, count,
        # the file's first bytes).
        self._counts: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        # Newest dates of files, by (device, inode) and size: files only
        # grow, and rotated ones never change.
        self._newest: dict[tuple[tuple[int, int], int, bytes], str | None] = {}

    def rotated(self) -> list[tuple[tuple[str, int], Path]]:
        """The dated files, oldest first, each after its sort key."""
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
    def open_all(self) -> Iterator[list[Snapshot]]:
        """The live file and the rotated ones, newest first, open.

        The live file is opened before the folder is listed: if it is
        rotated meanwhile, it shows up under its new name as the same file,
        which is skipped, so no record is read twice or missed.
        """
        snaps: list[Snapshot] = []
        try:
            live = open_snapshot(self.path, self.has_header)
            if live is not None:
                snaps.append(live)
            seen = {snap.ident for snap in snaps}
            for _, path in reversed(self.rotated()):
                snap = open_snapshot(path, self.has_header)
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

    def count(self, snap: Snapshot) -> int:
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
        quoted = self.quoted
        count += sum(
            count_records(block, quoted)
            for block in blocks_forward(snap.fd, start, snap.size, quoted)
        )
        if len(self._counts) > _CACHED_FILES:
            self._counts.clear()
        self._counts[snap.ident] = (max(snap.size, start), count, head)
        return count

    # -- retention ---------------------------------------------------------------

    def retain(self, cutoff: datetime | None, max_records: int | None) -> int:
        """Rotate the live file when it is due, and delete rotated files
        outside the limits, as :meth:`FileStore.retain
        <flask_traffic.stores.filestore.FileStore.retain>` describes.

        :return: how many records the deleted files held.
        """
        now = datetime.now(_UTC)
        self._rotate_if_due(now, cutoff, max_records)
        return self._delete_outside(cutoff, max_records)

    def _rotate_if_due(
        self, now: datetime, cutoff: datetime | None, max_records: int | None
    ) -> bool:
        path = self.path
        with self.write_lock:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return False
            try:
                with locked(fd, exclusive=True):
                    if not same_file(fd, path):
                        return False  # another process rotated it just now
                    snap = snapshot(fd, self.has_header)
                    if not self._rotation_due(snap, now, cutoff, max_records):
                        return False
                    self._rotate(path, now)
                    return True
            finally:
                os.close(fd)

    def _rotation_due(
        self, snap: Snapshot, now: datetime, cutoff: datetime | None, max_records: int | None
    ) -> bool:
        body = snap.size - snap.start
        if body <= 0:
            return False
        if cutoff is not None:
            first = self._first_date(snap)
            if first is not None and first < iso_text(cutoff + (now - cutoff) / 2):
                return True
        if max_records is not None:
            # Estimated from the end of the file: counting every record each
            # time would read the whole file once a minute.
            sample = min(body, _SAMPLE)
            lines = os.pread(snap.fd, sample, snap.size - sample).count(b"\n")
            if body * max(lines, 1) / sample > max_records / 2:
                return True
        return False

    def _rotate(self, path: Path, now: datetime) -> Path:
        stamp, number = now.strftime(_STAMP), 0
        rotated = self.rotated()
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
        rotated = self.rotated()
        if not rotated:
            return 0
        cutoff_text = None if cutoff is None else iso_text(cutoff)
        removed = 0
        held = 0
        seen: set[tuple[int, int]] = set()
        live = open_snapshot(self.path, self.has_header)
        if live is not None:
            try:
                seen.add(live.ident)
                if max_records is not None:
                    held = self.count(live)
            finally:
                os.close(live.fd)
        for _, path in reversed(rotated):
            snap = open_snapshot(path, self.has_header)
            if snap is None:
                continue
            try:
                if snap.ident in seen:
                    continue  # the live file, being rotated by another process
                seen.add(snap.ident)
                count = self.count(snap)
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

    def _all_older(self, snap: Snapshot, cutoff: str) -> bool:
        last = self._last_date(snap)
        if last is None or last >= cutoff:
            return False
        # The last record is not always the newest (records wait in queues):
        # before deleting, make sure (once per file) that none is newer.
        newest = self._newest_date(snap)
        return newest is not None and newest < cutoff

    # -- dates of a file ---------------------------------------------------------

    def _dates(self, blocks: Iterator[bytes], header: bytes, reverse: bool) -> Iterator[str]:
        """The dates of the records in ``blocks``, in order (each block
        reversed with ``reverse``), where a record has one."""
        for block in blocks:
            rows = self.decode_block(block, header)
            for row in reversed(rows) if reverse else rows:
                if row is not None:
                    date = row.get("request_date")
                    if date is not None:
                        yield date

    def _first_date(self, snap: Snapshot) -> str | None:
        blocks = blocks_forward(snap.fd, snap.start, snap.size, self.quoted)
        return next(self._dates(blocks, snap.header, reverse=False), None)

    def _last_date(self, snap: Snapshot) -> str | None:
        blocks = blocks_backwards(snap.fd, snap.start, snap.size, self.quoted)
        return next(self._dates(blocks, snap.header, reverse=True), None)

    def _newest_date(self, snap: Snapshot) -> str | None:
        key = (snap.ident, snap.size, os.pread(snap.fd, _HEAD, snap.start))
        if key not in self._newest:
            blocks = blocks_forward(snap.fd, snap.start, snap.size, self.quoted)
            newest = max(self._dates(blocks, snap.header, reverse=False), default=None)
            if len(self._newest) > _CACHED_FILES:
                self._newest.clear()
            self._newest[key] = newest
        return self._newest[key]
