"""JSONStore: one JSON object per line (JSON Lines), appended."""

from __future__ import annotations

import json
import os
import typing as t
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii
from pathlib import Path

from .._textcache import text_cache
from ..record import FieldType, TrafficRecord
from ._framing import encode_lines, field_encoders
from .filestore import FileStore

__all__ = ["JSONStore"]

_decode = json.JSONDecoder().decode
_loads = json.loads

# Lines are put together from per-value JSON text rather than by json.dumps
# of a dict: text values repeat from request to request (user agents, hosts,
# routes), so their escaped form is cached, and encode_lines runs the loops
# in C; a line costs about a quarter of json.dumps. Output is plain ASCII, so
# any string (even one with lone surrogates) is stored and read back
# unchanged.


def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _number(value: float | None) -> str:
    return "null" if value is None else repr(value)


_ENCODERS: dict[FieldType, Callable[[t.Any], str]] = {
    "str": text_cache(8192)(_text),
    # Unique per request: caching would only evict the values that repeat.
    "datetime": _text,
    "int": _number,
    "float": _number,
}


class JSONStore(FileStore):
    """Appends each record as one JSON object per line (JSON Lines), by
    default to ``traffic.json``; the parameters are :class:`FileStore`'s.

    An existing file that holds a JSON array (written by flask-traffic 0.8)
    is refused at ``init_app``.

    Its rollups (unless ``rollups=False``) are kept beside it in a SQLite
    file named after it, ``traffic.json.rollups.sqlite``.
    """

    default_filename = "traffic.json"

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
        fields = self.fields
        text = encode_lines(
            list(map(self.log_policy.values, records)),
            field_encoders(fields, _ENCODERS),
            [encode_basestring_ascii(name) + ":" for name in fields],
            "{",
            "}",
        )
        return text.encode("ascii")

    def decode(self, raw: bytes, header: bytes) -> dict[str, t.Any] | None:
        try:
            stored = _decode(raw.decode("utf-8"))
        except ValueError:
            return None
        if not isinstance(stored, dict):
            return None
        return {name: stored.get(name) for name in self.fields}

    def decode_block(self, block: bytes, header: bytes) -> list[dict[str, t.Any] | None]:
        stored = self._stored(block)
        if stored is None:
            return super().decode_block(block, header)
        fields = self.fields
        return [
            {name: item.get(name) for name in fields} if type(item) is dict else None
            for item in stored
        ]

    def decode_stored(self, block: bytes, header: bytes) -> list[t.Any]:
        stored = self._stored(block)
        if stored is None:
            return super().decode_block(block, header)
        if list(map(type, stored)).count(dict) == len(stored):
            return stored
        return [item if type(item) is dict else None for item in stored]

    @staticmethod
    def _stored(block: bytes) -> list[t.Any] | None:
        """The values of a block of lines, ``None`` if one is unreadable."""
        # One JSON array for the whole block: one call into the C decoder
        # instead of one per line. A line is one value with no raw newline in
        # it, so a block's lines joined with commas are the array's items.
        try:
            stored = _loads(b"[" + block[:-1].replace(b"\n", b",") + b"]")
        except ValueError:
            return None
        if type(stored) is not list or len(stored) != block.count(b"\n"):
            return None
        return stored
