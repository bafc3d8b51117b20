"""JSONStore: one JSON object per line (JSON Lines), appended."""

from __future__ import annotations

import functools
import json
import os
import typing as t
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii
from pathlib import Path

from ..policy import LogPolicy
from ..record import FieldType, TrafficRecord
from ._files import FileStore, field_encoders

__all__ = ["JSONStore"]

_decode = json.JSONDecoder().decode

# Lines are put together from per-value JSON text rather than by json.dumps
# of a dict: text values repeat from request to request (user agents, hosts,
# routes), so their escaped form is cached, and the whole line costs about a
# third of json.dumps. Output is plain ASCII, so any string (even one with
# lone surrogates) is stored and read back unchanged.
_ENCODERS: dict[FieldType, Callable[[t.Any], str]] = {
    "str": functools.lru_cache(maxsize=8192)(encode_basestring_ascii),
    # Unique per request: caching would only evict the values that repeat.
    "datetime": encode_basestring_ascii,
    "int": int.__repr__,
    "float": float.__repr__,
}


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
        values = self.log_policy.values
        fields = self.fields
        prefixes = [encode_basestring_ascii(name) + ":" for name in fields]
        encoders = field_encoders(fields, _ENCODERS)
        lines = [
            "{"
            + ",".join(
                [
                    prefix + ("null" if value is None else encode(value))
                    for prefix, encode, value in zip(
                        prefixes, encoders, values(record), strict=True
                    )
                ]
            )
            + "}\n"
            for record in records
        ]
        return "".join(lines).encode("ascii")

    def decode(self, raw: bytes, header: bytes) -> dict[str, t.Any] | None:
        try:
            stored = _decode(raw.decode("utf-8"))
        except ValueError:
            return None
        if not isinstance(stored, dict):
            return None
        return {name: stored.get(name) for name in self.fields}
