"""The frames of a spool file: a record, and the row a store made of it,
as bytes that survive a torn write (:func:`encode_record`), and back
(:func:`decode_batch`).

A frame is its payload's length and CRC-32, then the payload: optionally a
row part, then the record's constructor values as JSON (ASCII, so lone
surrogates survive). The row part is a byte 1, the length of what follows
(2 bytes) and ``(start_time_ns, tag, values)`` in :mod:`marshal`: the
store's policy values and a tag of their key (:func:`key_tag`). Marshal,
not JSON, because replay reads it for every record (a third of the cost)
and it keeps the values' types as they are; the record's own part stays
JSON, which every Python reads. Spool files written before this had a JSON
row part ended by a NUL byte; they are still read.
Replay writes a row part made under the store's own policy as it is and
only decodes the rest when something else of the record is read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import marshal
import os
import struct
import typing as t
import zlib

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
# Opens a frame's row part; a JSON document never starts with it.
_ROW = 1
_ROW_LENGTH = struct.Struct("<BH")
# Ended the JSON row part of older frames. JSON in ASCII holds no NUL byte.
_ROW_END = b"\x00"
#: The marshal format of row parts (readable by every Python 3 since 3.4).
_MARSHAL_VERSION = 4


def _dumps(value: t.Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str).encode("ascii")


@functools.lru_cache(maxsize=16)
def key_tag(key: str) -> str:
    """What a frame holds of a policy values key: 16 hex digits of its hash
    (the key itself is a few hundred characters)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def encode_record(record: TrafficRecord, row: Row | None = None) -> bytes:
    """One frame: its length and CRC, then, when ``row`` is given, the row
    part (``(start_time_ns, tag, values)`` in marshal, after a byte 1 and
    its length), then the record's
    :meth:`~flask_traffic.TrafficRecord.raw_values` as JSON (ASCII, so lone
    surrogates survive).

    :raises ValueError: the row holds a value marshal does not keep (the
        caller spills the record without it).
    """
    payload = _dumps(record.raw_values())
    if row is not None:
        head = marshal.dumps((record.start_time_ns, key_tag(row[0]), row[1]), _MARSHAL_VERSION)
        if len(head) > 0xFFFF:
            raise ValueError("the row is too long for a spool frame's row part")
        payload = _ROW_LENGTH.pack(_ROW, len(head)) + head + payload
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _raw_part(payload: bytes) -> bytes:
    if payload[0] == _ROW:
        return payload[_ROW_LENGTH.size + _ROW_LENGTH.unpack_from(payload)[1] :]
    return payload.rpartition(_ROW_END)[2]


def decode_record(payload: bytes) -> TrafficRecord:
    """The record a frame's payload holds, identical to the one spilled."""
    return _record(json.loads(_raw_part(payload)))


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
    records: list[TrafficRecord] = []
    slow: list[tuple[int, bytes]] = []
    tag = None if key is None else key_tag(key)
    start = _ROW_LENGTH.size
    for payload in payloads:
        if payload[0] != _ROW:
            # An older frame, with a JSON row part or none: the slow way.
            slow.append((len(records), payload.rpartition(_ROW_END)[2]))
            records.append(t.cast(TrafficRecord, None))
            continue
        end = start + (payload[1] | payload[2] << 8)
        try:
            moment, row_tag, values = marshal.loads(payload[start:end])
        except (ValueError, EOFError, TypeError):
            row_tag = None  # a marshal format this Python does not read
        if row_tag == tag and key is not None:
            records.append(_SpooledRecord(moment, key, values, payload[end:]))
        else:
            slow.append((len(records), payload[end:]))
            records.append(t.cast(TrafficRecord, None))
    if slow:
        # One JSON document for them all: a third of the cost of one each.
        made = json.loads(b"[" + b",".join(raw for _, raw in slow) + b"]")
        for (index, _), values in zip(slow, made, strict=True):
            records[index] = _record(values)
    return records


def read_frames(fd: int, offset: int, end: int, limit: int) -> tuple[list[bytes], int]:
    """The payloads of up to ``limit`` whole frames from ``offset`` on, and
    the offset after the last; stops at ``end`` or at the first torn frame."""
    payloads: list[bytes] = []
    unpack, header, crc32 = HEADER.unpack_from, HEADER.size, zlib.crc32
    while len(payloads) < limit and offset < end:
        # Whole blocks, a frame at least: one read for thousands of frames.
        buffer = os.pread(fd, min(end - offset, _READ_BLOCK), offset)
        size = len(buffer)
        pos = 0
        while len(payloads) < limit and pos + header <= size:
            length, crc = unpack(buffer, pos)
            if length == 0 or length > _MAX_FRAME:
                return payloads, offset + pos
            stop = pos + header + length
            if stop > size:
                break
            payload = buffer[pos + header : stop]
            if crc32(payload) != crc:
                return payloads, offset + pos
            payloads.append(payload)
            pos = stop
        if pos == 0:
            # Not one whole frame in the block: a longer frame, or a torn one.
            if size < _READ_BLOCK or size + offset >= end:
                return payloads, offset
            length = unpack(buffer, 0)[0]
            if length > _MAX_FRAME:
                return payloads, offset
            buffer = os.pread(fd, header + length, offset)
            if len(buffer) < header + length:
                return payloads, offset
            payload = buffer[header:]
            if crc32(payload) != HEADER.unpack_from(buffer)[1]:
                return payloads, offset
            payloads.append(payload)
            pos = len(buffer)
        offset += pos
    return payloads, offset
