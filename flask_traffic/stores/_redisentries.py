"""How RedisStore lays a record out in a stream entry and reads it back,
and steps between stream ids."""

from __future__ import annotations

import time
import typing as t
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone

from .._textcache import text_cache
from ..record import FIELDS, FieldType

if t.TYPE_CHECKING:
    import redis
    from redis.typing import EncodableT, FieldT

    from ..policy import LogPolicy
    from ..record import TrafficRecord
    from ._redistransaction import Transaction

__all__ = [
    "CLOCK_MARGIN_MS",
    "CODECS",
    "EMPTY_ENTRY",
    "add_entries",
    "decode_entries",
    "entry_maker",
    "id_before",
    "lowest_id",
    "next_id",
    "read_rows",
    "spooled_entry",
    "spooled_entry_maker",
]

# A stream entry needs at least one field: a record whose kept fields are all
# None is written with this one, which read() ignores.
EMPTY_ENTRY: dict[FieldT, EncodableT] = {b"_": b""}
_EMPTY_FLAT: tuple[EncodableT, ...] = (b"_", b"")

#: How far, in ms, the clock of a host that writes to the stream may be off
#: from the clock of the host that reads or prunes it. Stream ids are the
#: Redis server's clock; the server's own offset is measured (``TIME``) and
#: allowed for, so this covers only the app hosts' disagreement.
CLOCK_MARGIN_MS = 60_000

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)

#: The largest sequence number of a stream id (``<ms>-<seq>``).
_MAX_SEQ = 2**64 - 1

#: Entries per ``XREVRANGE``/``XRANGE`` of :func:`read_rows`: large enough
#: that round trips do not count, small enough that a reply does not hold
#: the server or the reader's memory for long.
_CHUNK = 2000

_Row = dict[str, t.Any]


# Text is stored as UTF-8, with surrogatepass: WSGI strings are latin-1
# decoded bytes and may carry lone surrogates after Werkzeug's decoding, and
# both must come back unchanged. Numbers are stored as their repr so that
# read() parses back the very same value.
def _encode_text(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _decode_text(value: bytes) -> str:
    return value.decode("utf-8", "surrogatepass")


def _encode_int(value: int) -> bytes:
    return b"%d" % value


def _encode_float(value: float) -> bytes:
    return repr(value).encode("ascii")


_ENCODERS: dict[FieldType, Callable[[t.Any], bytes]] = {
    # Cached: text values repeat from request to request (user agents, hosts,
    # routes).
    "str": text_cache(8192)(_encode_text),
    # Unique per request: caching would only evict the values that repeat.
    "datetime": _encode_text,
    "int": _encode_int,
    "float": _encode_float,
}

_PARSERS: dict[FieldType, Callable[[bytes], t.Any]] = {
    "str": _decode_text,
    "datetime": _decode_text,
    "int": int,
    "float": float,
}

#: field name -> (name as stored, encoder, parser), derived from FIELDS.
CODECS: dict[str, tuple[bytes, Callable[[t.Any], bytes], Callable[[bytes], t.Any]]] = {
    field.name: (field.name.encode("ascii"), _ENCODERS[field.type], _PARSERS[field.type])
    for field in FIELDS
}


def next_id(entry_id: bytes, oldest_first: bool) -> bytes | None:
    """The stream id just after ``entry_id`` (just before it when reading
    newest first), or ``None`` if there is none.

    Computed rather than written as an exclusive range (``(id``), which
    Redis understands only from 6.2 on.
    """
    ms_text, _, seq_text = entry_id.partition(b"-")
    ms, seq = int(ms_text), int(seq_text)
    if oldest_first:
        return b"%d-%d" % ((ms, seq + 1) if seq < _MAX_SEQ else (ms + 1, 0))
    if seq:
        return b"%d-%d" % (ms, seq - 1)
    return None if ms == 0 else b"%d-%d" % (ms - 1, _MAX_SEQ)


def entry_maker(policy: LogPolicy) -> Callable[[TrafficRecord], tuple[EncodableT, ...]]:
    """What makes a record's stream entry, flat: field name, value, name,
    value... of the policy's fields that are not ``None``, each encoded by
    its codec (flat because that is what ``XADD`` takes, with no dict made
    and taken apart again per record)."""
    codecs = [CODECS[name] for name in policy.enabled_fields]
    values = policy.values

    def entry(record: TrafficRecord) -> tuple[EncodableT, ...]:
        made: list[EncodableT] = []
        add = made.extend
        for (name, encode, _), value in zip(codecs, values(record), strict=True):
            if value is not None:
                add((name, encode(value)))
        return tuple(made) or _EMPTY_FLAT

    return entry


def spooled_entry(policy: LogPolicy) -> tuple[str, Callable[[TrafficRecord], tuple[t.Any, ...]]]:
    """What a RedisStore spills of a record beside the record itself: its
    entry's values encoded, in the policy's field order, ``None`` where the
    entry leaves the field out (the names are the policy's: a frame need
    not repeat them), and the key they come back under on the record.
    Replay makes the flat entry of them (:func:`spooled_entry_maker`),
    doing less than a fresh write does."""
    codecs = [CODECS[name] for name in policy.enabled_fields]
    values = policy.values

    def encoded(record: TrafficRecord) -> tuple[t.Any, ...]:
        return tuple(
            None if value is None else encode(value)
            for (_, encode, _), value in zip(codecs, values(record), strict=True)
        )

    return f"redis-values\x00{policy.values_key}", encoded


def spooled_entry_maker(
    policy: LogPolicy,
) -> Callable[[TrafficRecord], tuple[EncodableT, ...]]:
    """What makes the flat entry of a record read back from a spool: from
    the values :func:`spooled_entry` kept, or made afresh."""
    key, encoded = spooled_entry(policy)
    names = [CODECS[name][0] for name in policy.enabled_fields]

    def entry(record: TrafficRecord) -> tuple[EncodableT, ...]:
        made: list[EncodableT] = []
        add = made.extend
        for name, value in zip(names, record.computed(key, encoded), strict=True):
            if value is not None:
                add((name, value))
        return tuple(made) or _EMPTY_FLAT

    return entry


def add_entries(
    writes: Transaction,
    key: str,
    entries: Iterable[tuple[EncodableT, ...]],
    max_len: int | None,
) -> None:
    """Queue one ``XADD`` per flat entry on ``writes``: the command redis-py's
    ``xadd(key, entry, maxlen=max_len, approximate=True)`` sends, without
    its checks and list building per record."""
    head: tuple[EncodableT, ...] = (
        ("XADD", key, "*") if max_len is None else ("XADD", key, "MAXLEN", "~", max_len, "*")
    )
    command = writes.command
    for entry in entries:
        command(*head, *entry)


def lowest_id(client: redis.Redis, moment: datetime) -> bytes:
    """The lowest stream id an entry of a request at or after ``moment``
    can have (``b"-"`` for the start of the stream)."""
    before = time.time()
    seconds, micros = client.time()
    after = time.time()
    # Stream ids follow the server's clock, requests this host's.
    offset_ms = (seconds - (before + after) / 2) * 1000 + micros / 1000
    ms = (moment - _EPOCH) // _MS + int(offset_ms) - CLOCK_MARGIN_MS
    return b"-" if ms <= 0 else b"%d" % ms


def decode_entries(fields: Iterable[str], entries: list[t.Any]) -> list[_Row]:
    """The rows of ``XRANGE`` ``entries`` (raw bytes), with ``fields``."""
    codecs = [(name, CODECS[name][0], CODECS[name][2]) for name in fields]
    rows = []
    for _, stored in entries:
        if stored is None:
            continue
        if not isinstance(stored, dict):
            stored = dict(zip(stored[::2], stored[1::2], strict=True))
        # The placeholder field "_" of an empty entry is no field: every
        # field of its row is None.
        get = stored.get
        row: _Row = {}
        for name, key, parse in codecs:
            value = get(key)
            if value is not None:
                try:
                    value = parse(value)
                except ValueError:
                    # Entries of flask-traffic 0.8 hold "None" or text
                    # where a number belongs.
                    value = None
            row[name] = value
        rows.append(row)
    return rows


def read_rows(
    client: redis.Redis,
    key: str,
    lowest: bytes,
    limit: int | None,
    oldest_first: bool,
    decode: Callable[[list[t.Any]], list[_Row]],
) -> Iterator[_Row]:
    """The rows of the stream ``key`` from id ``lowest`` on, newest first
    (``XREVRANGE``) or oldest first (``XRANGE``), read in chunks as they are
    consumed, each chunk's entries made rows by ``decode``."""
    import redis as redis_module

    # XRANGE key low high, XREVRANGE key high low: both go on from the
    # first bound, moved past the last id read.
    command, first, second = (
        ("XRANGE", lowest, b"+") if oldest_first else ("XREVRANGE", b"+", lowest)
    )
    # A small limit asks for a small first chunk; later chunks grow.
    size = _CHUNK if limit is None else max(1, min(limit, _CHUNK))
    # Raw bytes whatever the client's decode_responses: text is decoded
    # here, the same way it was encoded.
    options = {redis_module.client.NEVER_DECODE: True}
    while True:
        entries = client.execute_command(  # type: ignore[no-untyped-call]
            command, key, first, second, "COUNT", size, **options
        )
        if not entries:
            return
        yield from decode(entries)
        if len(entries) < size:
            return
        following = next_id(entries[-1][0], oldest_first)
        if following is None:
            return
        first = following
        size = min(size * 2, _CHUNK)


def id_before(day: datetime) -> bytes:
    """A stream id below every entry that can hold a request of ``day`` or
    later: the day's start less the clock margin app hosts may be off by."""
    milliseconds = (day - _EPOCH) // _MS
    return b"%d-0" % max(0, milliseconds - CLOCK_MARGIN_MS)
