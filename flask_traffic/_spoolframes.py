"""The frames of a spool file: a record, and the row a store made of it,
as bytes that survive a torn write (:func:`encode_record`), and back
(:func:`decode_batch`).

A frame is its payload's length and CRC-32, then the payload: optionally a
row part (JSON ``[start_time_ns, tag, values]``: the store's policy values
and a tag of their key, :func:`key_tag`) and a NUL byte, then the record's
constructor values as JSON (ASCII, so lone surrogates survive; and so no
NUL byte but the separator).
Replay writes a row part made under the store's own policy as it is and
only decodes the rest when something else of the record is read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import typing as t
import zlib
from collections.abc import Iterator

from .record import TrafficRecord

__all__ = [
    "HEADER",
    "Row",
    "decode_batch",
    "decode_record",
    "encode_record",
    "key_tag",
    "read_frames",
]

#: A frame's header: payload length, CRC-32 of the payload.
HEADER = struct.Struct("<II")
_READ_BLOCK = 1 << 20
#: The largest frame a reader believes: a length past it is a torn header.
_MAX_FRAME = 64 << 20


#: What a spool keeps of a record besides its constructor values: the key
#: of a store's policy values and the values (``LogPolicy.values_key``,
#: ``LogPolicy.values``), so that replay writes them without making the
#: record again.
Row = tuple[str, tuple[t.Any, ...]]
# Ends the frame's row part. JSON in ASCII holds no NUL byte.
_ROW_END = b"\x00"


def _dumps(value: t.Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str).encode("ascii")


@functools.lru_cache(maxsize=16)
def key_tag(key: str) -> str:
    """What a frame holds of a policy values key: 16 hex digits of its hash
    (the key itself is a few hundred characters)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def encode_record(record: TrafficRecord, row: Row | None = None) -> bytes:
    """One frame: its length and CRC, then, when ``row`` is given, the row
    part (JSON ``[start_time_ns, key, values]`` and a NUL byte), then the
    record's :meth:`~flask_traffic.TrafficRecord.raw_values` as JSON (ASCII,
    so lone surrogates survive)."""
    payload = _dumps(record.raw_values())
    if row is not None:
        payload = _dumps((record.start_time_ns, key_tag(row[0]), row[1])) + _ROW_END + payload
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_record(payload: bytes) -> TrafficRecord:
    """The record a frame's payload holds, identical to the one spilled."""
    return _record(json.loads(payload.rpartition(_ROW_END)[2]))


def _record(values: list[t.Any]) -> TrafficRecord:
    if values[5] is not None:  # server: (name, port), a list in JSON
        values[5] = tuple(values[5])
    return TrafficRecord(*values)


class _SpooledRecord(TrafficRecord):
    """A record read back from a spool with the store's row in it: the row is
    what the store writes, so the rest of the frame is only decoded when
    something else is read (a dead letter, a ``skip_bots`` test)."""

    __slots__ = ("_payload",)

    def __init__(self, start_time_ns: int, key: str, values: tuple[t.Any, ...], raw: bytes):
        # Not TrafficRecord.__init__: that work is what replay saves.
        self.start_time_ns = start_time_ns
        self._cache = {key: values}
        self._payload: bytes | None = raw

    def __getattr__(self, name: str) -> t.Any:
        # Only reached for an attribute not set yet: make the whole record.
        payload = self._payload
        if payload is None:
            raise AttributeError(name)
        self._payload = None
        values = json.loads(payload)
        if values[5] is not None:
            values[5] = tuple(values[5])
        cache = self._cache
        TrafficRecord.__init__(self, *values)
        self._cache.update(cache)
        return getattr(self, name)


def decode_batch(payloads: list[bytes], key: str | None) -> list[TrafficRecord]:
    """The records of a batch of frame payloads: from their row parts where
    the row was made under policy ``key``, else made again in full."""
    heads, raws = [], []
    for payload in payloads:
        head, found, raw = payload.partition(_ROW_END)
        if found:
            heads.append(head)
            raws.append(raw)
        else:
            heads.append(b"null")
            raws.append(head)
    # One JSON document for the batch: a third of the cost of one each.
    rows = json.loads(b"[" + b",".join(heads) + b"]")
    records: list[TrafficRecord] = []
    slow: list[tuple[int, bytes]] = []
    tag = None if key is None else key_tag(key)
    for row, raw in zip(rows, raws, strict=True):
        if row is not None and key is not None and row[1] == tag:
            records.append(_SpooledRecord(row[0], key, tuple(row[2]), raw))
        else:
            slow.append((len(records), raw))
            records.append(t.cast(TrafficRecord, None))
    if slow:
        made = json.loads(b"[" + b",".join(raw for _, raw in slow) + b"]")
        for (index, _), values in zip(slow, made, strict=True):
            records[index] = _record(values)
    return records


def read_frames(fd: int, offset: int, end: int, limit: int) -> Iterator[tuple[bytes, int]]:
    """The payloads of up to ``limit`` whole frames from ``offset`` on, with
    the offset after each; stops at ``end`` or at the first torn frame."""
    buffer = b""
    pos = 0  # of the next frame in buffer
    base = offset  # file offset of buffer[0]
    count = 0
    while count < limit:
        avail = len(buffer) - pos
        need = HEADER.size
        if avail >= need:
            length, crc = HEADER.unpack_from(buffer, pos)
            if length == 0 or length > _MAX_FRAME:
                return
            need += length
        if avail < need:
            buffer, base, pos = buffer[pos:], base + pos, 0
            want = min(max(need - avail, _READ_BLOCK), end - base - len(buffer))
            chunk = os.pread(fd, want, base + len(buffer)) if want > 0 else b""
            if not chunk:
                return
            buffer += chunk
            continue
        payload = buffer[pos + HEADER.size : pos + need]
        if zlib.crc32(payload) != crc:
            return
        pos += need
        count += 1
        yield payload, base + pos
