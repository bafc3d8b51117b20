"""JSONStore: one JSON object per line (JSON Lines), appended."""

from __future__ import annotations

import json
import os
import typing as t
from collections.abc import Sequence
from pathlib import Path

from ..policy import LogPolicy
from ..record import TrafficRecord
from ._files import FileStore

__all__ = ["JSONStore"]

# Plain ASCII output: any string, even one with lone surrogates, is stored
# and read back unchanged, and the file is valid UTF-8 whatever comes in.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode


class JSONStore(FileStore):
    """Appends each record as one JSON object per line (JSON Lines).

    Each batch is one ``write()`` under an exclusive file lock, so several
    processes (gunicorn workers) can share one file. Only the policy's
    enabled fields are written.

    :param filename: the file's name.
    :param location: its folder; the app's instance folder when ``None``.
    :param log_policy: which fields and requests to keep.
    :param sync: write in the request thread; ``None`` follows ``TRAFFIC_SYNC``.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str] = "traffic.json",
        location: str | os.PathLike[str] | None = None,
        log_policy: LogPolicy | None = None,
        *,
        sync: bool | None = None,
    ) -> None:
        super().__init__(filename, location, log_policy, sync=sync)

    def check_existing(self, fd: int, path: Path) -> None:
        if os.pread(fd, 1, 0) == b"[":
            raise RuntimeError(
                f"{path} holds a JSON array (the format of flask-traffic 0.8); "
                f"JSONStore now appends JSON Lines: move that file away or pass "
                f"another filename=."
            )

    def header(self) -> bytes:
        return b""

    def encode(self, records: Sequence[TrafficRecord]) -> bytes:
        row = self.log_policy.row
        return "".join([_encode(row(record)) + "\n" for record in records]).encode("ascii")

    def decode(self, raw: bytes, header: bytes) -> dict[str, t.Any] | None:
        try:
            stored = _decode(raw.decode("utf-8"))
        except ValueError:
            return None
        if not isinstance(stored, dict):
            return None
        return {name: stored.get(name) for name in self.fields}
