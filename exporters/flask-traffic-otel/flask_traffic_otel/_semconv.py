"""How a traffic record becomes an HTTP server span and metric point.

After the stable OpenTelemetry semantic conventions for HTTP servers: the
span name, the attributes, the error type and the span status. Only what the
exporter's :class:`~flask_traffic.LogPolicy` keeps becomes an attribute.
"""

from __future__ import annotations

import functools
import os
import re
import typing as t

from flask_traffic import LogPolicy, TrafficRecord

__all__ = [
    "DURATION_BUCKETS",
    "SCHEMA_URL",
    "SpanData",
    "SpanMapper",
    "known_methods",
    "protocol_version",
    "redact_query",
    "redacted_query_keys",
]

#: The version of the semantic conventions the spans follow (1.38 made
#: ``QUERY`` a known method), for the instrumentation scope.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.38.0"

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
_SECRET_KEYS = ("AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature")

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


def redacted_query_keys(extra: object = ()) -> tuple[str, ...]:
    """The query keys whose values :func:`redact_query` hides: the four the
    conventions name, and ``extra``, a list of more names (e.g. ``("token",)``)."""
    if (
        isinstance(extra, (str, bytes))
        or not isinstance(extra, (list, tuple, set, frozenset))
        or not all(isinstance(k, str) and k and not set(k) & set("&=") for k in extra)
    ):
        raise TypeError(
            f"redact_query must be a list of query parameter names, such as ('token',), "
            f"got {extra!r}."
        )
    return _SECRET_KEYS + tuple(key for key in extra if key not in _SECRET_KEYS)


@functools.lru_cache(maxsize=16)
def _key_pattern(keys: tuple[str, ...]) -> re.Pattern[str]:
    names = "|".join(re.escape(key) for key in keys)
    return re.compile(rf"(?:(?<=&)|^)({names})=[^&]*")


def redact_query(query: str, keys: tuple[str, ...] = _SECRET_KEYS) -> str:
    """``query`` with the values of the parameters named ``keys`` (see
    :func:`redacted_query_keys`) replaced by ``REDACTED``, as the
    conventions ask for ``url.query``."""
    # Substring tests first: most queries hold none of the keys, and a
    # regex substitution costs ten times as much.
    if not any(key in query for key in keys):
        return query
    return _key_pattern(keys).sub(r"\1=REDACTED", query)


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
    :param redacted: the query keys to redact, see :func:`redacted_query_keys`.
    """

    def __init__(
        self, policy: LogPolicy, methods: frozenset[str], redacted: tuple[str, ...] = _SECRET_KEYS
    ) -> None:
        self.key = self.key_of(policy)
        enabled = frozenset(policy.enabled_fields)
        self._methods = methods
        self._redacted = redacted
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
                    attributes["url.query"] = redact_query(record.query_string, self._redacted)
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

        raised = record.has_exception
        server_error = status is not None and status >= 500
        failed = raised or server_error
        description: str | None = None
        event: Attributes | None = None
        if failed:
            if raised and self._exception:
                error_type, description, event = _exception_of(record)
            elif server_error and self._status:
                error_type = str(status)
            else:
                # Failed, but the policy hides both the exception and the status.
                error_type = _OTHER
            attributes["error.type"] = metric["error.type"] = error_type
        return SpanData(name, attributes, metric, failed, description, event)


def _exception_of(record: TrafficRecord) -> tuple[str, str, Attributes]:
    """``error.type``, the status message and the exception event of a record
    that ended in an exception, as OpenTelemetry's SDK records them."""
    type_name = record.exception_type
    if type_name is None:
        # A record made with response_exception text only: no type to name.
        text = record.response_exception or ""
        return _OTHER, text, {"exception.message": text}
    message = record.exception_message or ""
    event: Attributes = {
        "exception.type": type_name,
        "exception.message": message,
        "exception.stacktrace": record.exception_stacktrace or "",
    }
    # The SDK's status message names the class by its __name__ alone.
    return type_name, f"{type_name.rpartition('.')[2]}: {message}", event
