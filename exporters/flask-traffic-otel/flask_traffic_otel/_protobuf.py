"""The OTLP ``ExportTraceServiceRequest`` of finished spans, as protobuf bytes.

Written straight to the wire format, for the few message types a trace
request holds, instead of building ``opentelemetry-proto`` message objects
first: that costs the SDK's encoder about 27 us a span, most of it spent on
attribute pairs that repeat from span to span. :class:`TraceEncoder` encodes
each repeated pair once and reuses its bytes. The bytes decode to the same
message as the SDK's ``encode_spans`` of the same spans (the test suite
compares the two).
"""

from __future__ import annotations

import logging
import struct
import typing as t
from collections.abc import Mapping, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

if t.TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["TraceEncoder", "varint"]

logger = logging.getLogger("flask_traffic")

# Field tags: (field number << 3) | wire type; 0 varint, 1 fixed64,
# 2 length-delimited, 5 fixed32.
_REQUEST_RESOURCE_SPANS = b"\x0a"
_RESOURCE = b"\x0a"
_RESOURCE_SCOPE_SPANS = b"\x12"
_RESOURCE_SCHEMA_URL = b"\x1a"
_RESOURCE_ATTRIBUTE = b"\x0a"
_SCOPE = b"\x0a"
_SCOPE_SPAN = b"\x12"
_SCOPE_SCHEMA_URL = b"\x1a"
_SCOPE_NAME = b"\x0a"
_SCOPE_VERSION = b"\x12"
_SCOPE_ATTRIBUTE = b"\x1a"
_SPAN_TRACE_ID = b"\x0a\x10"
_SPAN_SPAN_ID = b"\x12\x08"
_SPAN_TRACE_STATE = b"\x1a"
_SPAN_PARENT_ID = b"\x22\x08"
_SPAN_NAME = b"\x2a"
_SPAN_ATTRIBUTE = b"\x4a"
_SPAN_DROPPED_ATTRIBUTES = b"\x50"
_SPAN_EVENT = b"\x5a"
_SPAN_DROPPED_EVENTS = b"\x60"
_SPAN_LINK = b"\x6a"
_SPAN_DROPPED_LINKS = b"\x70"
_SPAN_STATUS = b"\x7a"
_EVENT_NAME = b"\x12"
_EVENT_ATTRIBUTE = b"\x1a"
_EVENT_DROPPED_ATTRIBUTES = b"\x20"
_LINK_TRACE_ID = b"\x0a\x10"
_LINK_SPAN_ID = b"\x12\x08"
_LINK_TRACE_STATE = b"\x1a"
_LINK_ATTRIBUTE = b"\x22"
_LINK_DROPPED_ATTRIBUTES = b"\x28"
_STATUS_MESSAGE = b"\x12"
_STATUS_CODE = b"\x18"
_KEY = b"\x0a"
_VALUE = b"\x12"
_STRING = b"\x0a"
_BOOL = b"\x10"
_INT = b"\x18"
_DOUBLE = b"\x21"
_ARRAY = b"\x2a"
_KVLIST = b"\x32"
_BYTES = b"\x3a"
_LIST_ITEM = b"\x0a"

# start_time_unix_nano (7) and end_time_unix_nano (8), both fixed64.
_times = struct.Struct("<BQBQ").pack
# Event.time_unix_nano (1), fixed64.
_event_time = struct.Struct("<BQ").pack
_double = struct.Struct("<d").pack

# Span.flags (16, fixed32) and Link.flags (6, fixed32): whether the parent
# (the linked context) is remote, as the SDK's encoder sets them.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_SPAN_FLAGS = {
    False: b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE),
    True: b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE),
}
_LINK_FLAGS = {
    False: b"\x35" + struct.pack("<I", _HAS_IS_REMOTE),
    True: b"\x35" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE),
}
_KINDS = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
_EMPTY_STATUS = _SPAN_STATUS + b"\x00"
_EMPTY_SCOPE = _SCOPE + b"\x00"

_ONE_BYTE = [bytes((n,)) for n in range(0x80)]
_INT64 = 1 << 63
# Distinct attribute pairs and span names kept encoded; past this many the
# cache starts over, so unique values (paths, addresses) cannot grow it.
_CACHE_LIMIT = 8192


def varint(value: int) -> bytes:
    """``value`` (``0 <= value < 2**64``) as a protobuf varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # Lone surrogates: protobuf strings must be valid UTF-8.
        return text.encode(errors="replace")


def _field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: a string, bytes or a nested message."""
    return tag + varint(len(data)) + data


def _any_value(value: object) -> bytes:
    """The body of an ``AnyValue``, as the SDK's encoder makes it."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(_STRING, _utf8(value))
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ValueError(f"{value} does not fit in a 64-bit integer")
        return _INT + varint(value & 0xFFFF_FFFF_FFFF_FFFF)
    if isinstance(value, float):
        return _DOUBLE + _double(value)
    if isinstance(value, bytes):
        return _field(_BYTES, value)
    if isinstance(value, Sequence):
        items = b"".join(_field(_LIST_ITEM, _any_value(item)) for item in value)
        return _field(_ARRAY, items)
    if isinstance(value, Mapping):
        pairs = b"".join(_field(_LIST_ITEM, _key_value(str(k), v)) for k, v in value.items())
        return _field(_KVLIST, pairs)
    raise TypeError(f"an attribute cannot be a {type(value).__name__}")


def _key_value(key: str, value: object) -> bytes:
    """The body of a ``KeyValue``."""
    return _field(_KEY, _utf8(key)) + _field(_VALUE, _any_value(value))


def _attributes(tag: bytes, attributes: Mapping[str, object] | None) -> list[bytes]:
    """Each attribute as a ``KeyValue`` field; one the SDK's encoder would
    refuse is left out and logged, as it does."""
    fields = []
    for key, value in (attributes or {}).items():
        try:
            fields.append(_field(tag, _key_value(key, value)))
        except (TypeError, ValueError) as error:
            logger.error("flask_traffic_otel: attribute %r left out of a span: %s", key, error)
    return fields


def _trace_state(context: SpanContext) -> str:
    state = context.trace_state
    return ",".join(f"{key}={value}" for key, value in state.items()) if state else ""


class TraceEncoder:
    """Encodes batches of finished spans as one OTLP trace request.

    Keeps the encoded bytes of span attribute pairs with a ``str`` or
    ``int`` value, of span names and of resources and scopes between
    batches. One encoder is used by one thread at a time.
    """

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, object], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The serialized ``ExportTraceServiceRequest`` of ``spans``,
        grouped by resource, then by instrumentation scope."""
        groups: dict[int, dict[int, list[bytes]]] = {}
        last_resource: object = None
        last_scope: object = None
        encoded: list[bytes] = []
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            if resource is not last_resource or scope is not last_scope:
                last_resource, last_scope = resource, scope
                self._remember(resource, scope)
                encoded = groups.setdefault(id(resource), {}).setdefault(id(scope), [])
            encoded.append(self._span(span))
        request = []
        for resource_id, scopes in groups.items():
            scope_spans = []
            for scope_id, encoded in scopes.items():
                scope_spans.append(
                    _field(_RESOURCE_SCOPE_SPANS, self._scopes[scope_id][1] + b"".join(encoded))
                )
            prefix = self._resources[resource_id][1]
            request.append(_field(_REQUEST_RESOURCE_SPANS, prefix + b"".join(scope_spans)))
        return b"".join(request)

    def _remember(self, resource: Resource, scope: InstrumentationScope | None) -> None:
        """Encode a resource and a scope the first time they are seen (held
        here, so their ids stay theirs)."""
        known = self._resources.get(id(resource))
        if known is None or known[0] is not resource:
            attributes = b"".join(_attributes(_RESOURCE_ATTRIBUTE, resource.attributes))
            schema = _field(_RESOURCE_SCHEMA_URL, _utf8(resource.schema_url or ""))
            self._resources[id(resource)] = (
                resource,
                _field(_RESOURCE, attributes) + (schema if resource.schema_url else b""),
            )
        known_scope = self._scopes.get(id(scope))
        if known_scope is None or known_scope[0] is not scope:
            if scope is None:
                prefix = _EMPTY_SCOPE
            else:
                body = _field(_SCOPE_NAME, _utf8(scope.name)) if scope.name else b""
                if scope.version:
                    body += _field(_SCOPE_VERSION, _utf8(scope.version))
                body += b"".join(_attributes(_SCOPE_ATTRIBUTE, scope.attributes))
                prefix = _field(_SCOPE, body)
            # The scope's schema URL follows its spans; keep it in front:
            # fields may come in any order.
            if scope is not None and scope.schema_url:
                prefix += _field(_SCOPE_SCHEMA_URL, _utf8(scope.schema_url))
            self._scopes[id(scope)] = (scope, prefix)

    def _span(self, span: ReadableSpan) -> bytes:
        """One ``ScopeSpans.spans`` field."""
        context: SpanContext = span.context
        parent = span.parent
        parts = [
            _SPAN_TRACE_ID
            + context.trace_id.to_bytes(16, "big")
            + _SPAN_SPAN_ID
            + context.span_id.to_bytes(8, "big")
        ]
        if context.trace_state:
            parts.append(_field(_SPAN_TRACE_STATE, _utf8(_trace_state(context))))
        if parent is not None:
            parts.append(_SPAN_PARENT_ID + parent.span_id.to_bytes(8, "big"))
        names = self._names
        name = span.name
        encoded_name = names.get(name)
        if encoded_name is None:
            if len(names) >= _CACHE_LIMIT:
                names.clear()
            encoded_name = names[name] = _field(_SPAN_NAME, _utf8(name)) if name else b""
        parts.append(
            encoded_name
            + _KINDS[span.kind]
            + _times(0x39, span.start_time or 0, 0x41, span.end_time or 0)
        )

        pairs = self._pairs
        for key, value in (span.attributes or {}).items():
            kind = value.__class__
            # Only exact str and int: True == 1 would find 1's bytes.
            if kind is str or kind is int:
                encoded = pairs.get((key, value))
                if encoded is None:
                    try:
                        encoded = _field(_SPAN_ATTRIBUTE, _key_value(key, value))
                    except ValueError as error:
                        logger.error("flask_traffic_otel: attribute %r left out: %s", key, error)
                        continue
                    if len(pairs) >= _CACHE_LIMIT:
                        pairs.clear()
                    pairs[key, value] = encoded
                parts.append(encoded)
            else:
                parts.extend(_attributes(_SPAN_ATTRIBUTE, {key: value}))
        if span.dropped_attributes:
            parts.append(_SPAN_DROPPED_ATTRIBUTES + varint(span.dropped_attributes))

        for event in span.events:
            body = _event_time(0x09, event.timestamp) + _field(_EVENT_NAME, _utf8(event.name))
            body += b"".join(_attributes(_EVENT_ATTRIBUTE, event.attributes))
            if event.dropped_attributes:
                body += _EVENT_DROPPED_ATTRIBUTES + varint(event.dropped_attributes)
            parts.append(_field(_SPAN_EVENT, body))
        if span.dropped_events:
            parts.append(_SPAN_DROPPED_EVENTS + varint(span.dropped_events))

        for link in span.links:
            linked = link.context
            body = (
                _LINK_TRACE_ID
                + linked.trace_id.to_bytes(16, "big")
                + _LINK_SPAN_ID
                + linked.span_id.to_bytes(8, "big")
            )
            link_state = _trace_state(linked)
            if link_state:
                body += _field(_LINK_TRACE_STATE, _utf8(link_state))
            body += b"".join(_attributes(_LINK_ATTRIBUTE, link.attributes))
            if link.dropped_attributes:
                body += _LINK_DROPPED_ATTRIBUTES + varint(link.dropped_attributes)
            parts.append(_field(_SPAN_LINK, body + _LINK_FLAGS[linked.is_remote]))
        if span.dropped_links:
            parts.append(_SPAN_DROPPED_LINKS + varint(span.dropped_links))

        status = span.status
        if status.status_code is StatusCode.UNSET and not status.description:
            parts.append(_EMPTY_STATUS)
        else:
            code = status.status_code.value
            body = _field(_STATUS_MESSAGE, _utf8(status.description)) if status.description else b""
            if code:
                body += _STATUS_CODE + varint(code)
            parts.append(_field(_SPAN_STATUS, body))
        parts.append(_SPAN_FLAGS[parent is not None and parent.is_remote])
        return _field(_SCOPE_SPAN, b"".join(parts))
