"""The dead-letter file: records a store cannot write, set aside so that they
never block the others."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import typing as t
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from ._health import describe_error
from .record import FIELD_NAMES, TrafficRecord, iso_text

__all__ = ["DEAD_LETTER_FILE", "DeadLetterFile"]

logger = logging.getLogger("flask_traffic")

_UTC = timezone.utc
#: The file's name in the instance folder (or ``TRAFFIC_DEAD_LETTER_DIR``).
DEAD_LETTER_FILE = "traffic-dead-letters.jsonl"
# Text values longer than this are cut in a dead letter (a 17 MB exception
# text is why it is there; its head says what it was).
_MAX_TEXT = 64 * 1024


def _value(value: t.Any) -> t.Any:
    if isinstance(value, datetime):
        return iso_text(value)
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[:_MAX_TEXT] + f"... ({len(value):,} characters in all)"
    if value is None or isinstance(value, (str, int, float)):
        return value
    return repr(value)


class DeadLetterFile:
    """JSON Lines, one set-aside record a line: ``{"time", "store", "error",
    "record"}``, ``record`` holding every field as text or a number. Shared by
    every store and process of a site (lines are appended whole, under an
    exclusive lock), and bounded: past ``max_bytes`` records are dropped, and
    counted, instead of written.

    :param path: the file.
    :param max_bytes: the size the file may reach.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def write(self, store: str, items: list[tuple[TrafficRecord, BaseException]]) -> int:
        """Append ``items``; return how many were written (the rest did not
        fit under ``max_bytes``, or the file could not be written)."""
        now = iso_text(datetime.now(_UTC))
        lines = []
        for record, error in items:
            entry = {
                "time": now,
                "store": store,
                "error": describe_error(error),
                "record": {name: _value(getattr(record, name, None)) for name in FIELD_NAMES},
            }
            # ASCII: lone surrogates (undecodable headers) stay valid JSON.
            lines.append(json.dumps(entry, ensure_ascii=True, default=repr) + "\n")
        try:
            with self._open() as fd:
                size = os.fstat(fd).st_size
                written = 0
                data = []
                for line in lines:
                    encoded = line.encode("ascii")
                    if size + len(encoded) > self.max_bytes:
                        break
                    data.append(encoded)
                    size += len(encoded)
                    written += 1
                if data:
                    os.write(fd, b"".join(data))
        except OSError:
            logger.warning("Cannot write the dead-letter file %s.", self.path, exc_info=True)
            return 0
        return written

    @contextlib.contextmanager
    def _open(self) -> Iterator[int]:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield fd
            finally:
                os.close(fd)
