"""How a traffic record becomes an HTTP server span and metric point.

After the stable OpenTelemetry semantic conventions for HTTP servers: the
span name, the attributes, the error type and the span status. Only what the
exporter's :class:`~flask_traffic.LogPolicy` keeps becomes an attribute.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import typing as t

from flask_traffic import LogPolicy, TrafficRecord

__all__ = [
    "DURATION_BUCKETS",
    "SpanData",
    "SpanMapper",
    "known_methods",
    "parse_exception",
    "protocol_version",
    "redact_query",
]

#: The explicit bucket boundaries the conventions advise for
#: ``http.server.request.duration``, in seconds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

# RFC 9110, PATCH (RFC 5789) and QUERY, as the conventions define "known".
_DEFAULT_METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE")
)
_KNOWN_METHODS_ENV = "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"
_OTHER = "_OTHER"

# Query keys whose values the conventions say to replace by REDACTED.
_SECRET_QUERY = re.compile(r"(?:(?<=&)|^)(AWSAccessKeyId|Signature|sig|X-Goog-Signature)=[^&]*")
# repr() of an exception: ValueError('boom'); some use <Name ...> instead.
_CALL_REPR = re.compile(r"([A-Za-z_][\w.]*)\((.*)\)", re.DOTALL)
_ANGLE_REPR = re.compile(r"<([A-Za-z_][\w.]*)[ >]")
# Longer argument lists are reported as written rather than evaluated.
_MAX_LITERAL = 10_000

AttributeValue = str | int
Attributes = dict[str, AttributeValue]


def known_methods() -> frozenset[str]:
    """The methods reported as themselves; others become ``_OTHER``.

    ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` (comma-separated, case
    sensitive) replaces the default list, as the conventions require.
    """
    value = os.environ.get(_KNOWN_METHODS_ENV)
    if value is None:
        return _DEFAULT_METHODS
    return frozenset(item.strip() for item in value.split(",") if item.strip())


@functools.lru_cache(maxsize=16)
def protocol_version(server_protocol: str | None) -> str | None:
    """``"1.1"`` from ``"HTTP/1.1"``; ``"2"`` from ``"HTTP/2"`` or ``"HTTP/2.0"``."""
    if not server_protocol or not server_protocol.upper().startswith("HTTP/"):
        return None
    version = server_protocol[5:]
    if version in ("2.0", "3.0"):
        version = version[0]
    return version or None


def redact_query(query: str) -> str:
    """``query`` with the values of signature and access-key parameters
    replaced by ``REDACTED``, as the conventions ask for ``url.query``."""
    # Substring tests first: most queries hold none of the keys, and a
    # regex substitution costs ten times as much.
    if "sig" not in query and "Signature" not in query and "AWSAccessKeyId" not in query:
        return query
    return _SECRET_QUERY.sub(r"\1=REDACTED", query)


@functools.lru_cache(maxsize=256)
def parse_exception(text: str) -> tuple[str | None, str]:
    """Type name and message from the ``repr()`` a record keeps.

    ``"ValueError('boom')"`` gives ``("ValueError", "boom")``; the message is
    what ``str()`` of the exception would have been. A repr of another shape
    gives ``(None, text)`` or the name it starts with and the text.
    """
    match = _CALL_REPR.fullmatch(text)
    if match is None:
        angle = _ANGLE_REPR.match(text)
        return (angle.group(1) if angle else None), text
    type_name, args = match.groups()
    if not args:
        return type_name, ""
    if len(args) > _MAX_LITERAL:
        return type_name, args
    try:
        parsed = ast.literal_eval(f"({args},)")
    except Exception:  # a custom repr that is not literal arguments
        return type_name, args
    if not isinstance(parsed, tuple):
        return type_name, args
    # BaseException.__str__: the one argument's str(), else the tuple's.
    return type_name, str(parsed[0]) if len(parsed) == 1 else str(parsed)


class SpanData(t.NamedTuple):
    """What :class:`SpanMapper` makes of one record."""

    name: str
    attributes: Attributes
    metric_attributes: Attributes
    failed: bool
    description: str | None
    exception_event: Attributes | None


class SpanMapper:
    """Maps records to span data under one state of a policy.

    The path (cut to ``max_request_path_length``) and the client address
    (anonymised when ``anonymize_ip`` is set) come from the policy's own
    :meth:`~flask_traffic.LogPolicy.values`, so they match what every other
    store keeps; the other fields are plain values of the record, switched on
    or off by the policy.

    :param policy: the exporter's policy; the mapper copies what it needs.
    :param methods: the known HTTP methods, see :func:`known_methods`.
    """

    def __init__(self, policy: LogPolicy, methods: frozenset[str]) -> None:
        self.key = self.key_of(policy)
        enabled = frozenset(policy.enabled_fields)
        self._methods = methods
        self._method = "request_method" in enabled
        self._route = "request_route" in enabled
        self._server = "request_host_url" in enabled
        self._user_agent = "request_user_agent" in enabled
        self._status = "response_status_code" in enabled
        self._exception = "response_exception" in enabled
        transformed = {
            name: True for name in ("request_path", "request_remote_address") if name in enabled
        }
        self._values_policy = LogPolicy(
            max_request_path_length=policy.max_request_path_length,
            anonymize_ip=policy.anonymize_ip,
        ).set_from_false(**transformed)
        fields = self._values_policy.enabled_fields
        self._path = fields.index("request_path") if "request_path" in fields else None
        self._address = (
            fields.index("request_remote_address") if "request_remote_address" in fields else None
        )

    @staticmethod
    def key_of(policy: LogPolicy) -> tuple[t.Any, ...]:
        """What a mapper depends on: rebuild it when this changes."""
        return (policy.enabled_fields, policy.max_request_path_length, policy.anonymize_ip)

    def map(self, record: TrafficRecord) -> SpanData:
        """Name, attributes and status of ``record``'s span."""
        scheme = record.url_scheme
        attributes: Attributes = {"url.scheme": scheme}
        metric: Attributes = {"url.scheme": scheme}

        name = "HTTP"
        method = record.request_method if self._method else None
        if method is not None:
            if method in self._methods:
                attributes["http.request.method"] = metric["http.request.method"] = method
                name = method
            else:
                attributes["http.request.method"] = metric["http.request.method"] = _OTHER
                attributes["http.request.method_original"] = method
        route = record.request_route if self._route else None
        if route is not None:
            attributes["http.route"] = metric["http.route"] = route
            name = f"{name} {route}"

        if self._path is not None or self._address is not None:
            values = self._values_policy.values(record)
            if self._path is not None:
                path = values[self._path]
                if path is not None:
                    attributes["url.path"] = path
                if record.query_string:
                    attributes["url.query"] = redact_query(record.query_string)
            if self._address is not None and values[self._address] is not None:
                attributes["client.address"] = values[self._address]

        status = record.response_status_code
        if self._status and status is not None:
            attributes["http.response.status_code"] = metric["http.response.status_code"] = status
        if self._server:
            address = record.server_address
            if address is not None:
                attributes["server.address"] = address
                port = record.server_port
                if port is not None:
                    attributes["server.port"] = port
        if self._user_agent and record.request_user_agent is not None:
            attributes["user_agent.original"] = record.request_user_agent
        version = protocol_version(record.server_protocol)
        if version is not None:
            attributes["network.protocol.version"] = metric["network.protocol.version"] = version

        exception = record.response_exception
        server_error = status is not None and status >= 500
        failed = exception is not None or server_error
        description: str | None = None
        event: Attributes | None = None
        if failed:
            if exception is not None and self._exception:
                type_name, message = parse_exception(exception)
                error_type = type_name or _OTHER
                event = {"exception.message": message}
                if type_name is not None:
                    event["exception.type"] = type_name
                description = f"{type_name}: {message}" if type_name else message
            elif server_error and self._status:
                error_type = str(status)
            else:
                # Failed, but the policy hides both the exception and the status.
                error_type = _OTHER
            attributes["error.type"] = metric["error.type"] = error_type
        return SpanData(name, attributes, metric, failed, description, event)
