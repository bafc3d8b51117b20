"""The traffic record and the one list of its fields.

Everything that needs to know the field names (the policy switches, the CSV
header, SQL columns, type conversion when reading back) derives them from
:data:`FIELDS`.
"""

from __future__ import annotations

import functools
import traceback
import typing as t
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType

from werkzeug.http import parse_options_header
from werkzeug.sansio.utils import get_current_url, get_host

from ._useragent import parse_user_agent

__all__ = [
    "EXCEPTION_TEXT_LIMIT",
    "FIELDS",
    "FIELD_NAMES",
    "Field",
    "FieldType",
    "TrafficRecord",
    "iso_text",
]

FieldType = t.Literal["datetime", "str", "int", "float"]


@dataclass(frozen=True)
class Field:
    """One column of the public schema.

    :param name: the key in stores and in :meth:`TrafficRecord.as_dict`.
    :param type: how the value is stored and read back: ``"datetime"`` (an
        aware UTC :class:`~datetime.datetime`, ISO 8601 text in stores),
        ``"str"``, ``"int"`` or ``"float"``. Any field may be ``None``.
    :param doc: one line for the documentation.
    """

    name: str
    type: FieldType
    doc: str


#: The public schema, in the order stores write it. The names are those of
#: flask-traffic 0.8, plus ``request_route`` and ``request_sample_rate``.
FIELDS: tuple[Field, ...] = (
    Field("request_date", "datetime", "when the request started, UTC"),
    Field("request_method", "str", "HTTP method"),
    Field("request_host_url", "str", "scheme and host, e.g. https://example.com/"),
    Field("request_path", "str", "path, cut to the policy's max_request_path_length"),
    Field("request_endpoint", "str", "Flask endpoint name, None when no route matched"),
    Field("request_route", "str", "URL rule, e.g. /item/<int:n>, None when no route matched"),
    Field("request_remote_address", "str", "client address (REMOTE_ADDR)"),
    Field("request_referrer", "str", "Referer header"),
    Field("request_user_agent", "str", "User-Agent header"),
    Field("request_browser", "str", 'browser parsed from the user agent, e.g. "Chrome 131"'),
    Field("request_platform", "str", 'platform parsed from the user agent, e.g. "Mac OS X"'),
    Field("response_time", "float", "milliseconds from the start of the request to the response"),
    Field("response_size", "int", "response body size in bytes when known"),
    Field("response_status_code", "int", "HTTP status code"),
    Field("response_exception", "str", "repr() of an unhandled exception, else None"),
    Field("response_mimetype", "str", "response mimetype, e.g. text/html"),
    Field(
        "request_sample_rate",
        "float",
        "the LogPolicy's sample_rate when the request was kept by sampling, else None",
    ),
)

#: The field names alone, in schema order.
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)

_UTC = timezone.utc
_T = t.TypeVar("_T")
# The largest response_size kept: what a BIGINT column (and Redis, SQLite) holds.
_MAX_SIZE = 2**63 - 1


@functools.lru_cache(maxsize=256)
def _host_url(scheme: str, host_header: str | None, server: tuple[str, int | None] | None) -> str:
    # Werkzeug's URL building costs ~9 us, and a site has few distinct hosts.
    # No trusted_hosts check here: the request already passed Flask's.
    return get_current_url(scheme, get_host(scheme, host_header, server))


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@functools.lru_cache(maxsize=256)
def _server_address(
    scheme: str, host_header: str | None, server: tuple[str, int | None] | None
) -> tuple[str | None, int | None]:
    # The Host header names the server as the client addressed it (after a
    # proxy fix-up, if any); SERVER_NAME/PORT only when it is missing.
    if host_header:
        if host_header.startswith("["):
            address, _, rest = host_header[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            address, sep, port_text = host_header.rpartition(":")
            if not sep:
                address, port_text = host_header, ""
        if port_text.isdigit():
            return address or None, int(port_text)
        if port_text:
            return host_header, None  # not a port: keep the header whole
        return address or None, _DEFAULT_PORTS.get(scheme)
    if server is not None:
        return server[0] or None, server[1]
    return None, None


@functools.lru_cache(maxsize=256)
def _mimetype(content_type: str) -> str | None:
    return parse_options_header(content_type)[0].lower() or None


#: The most characters :attr:`TrafficRecord.exception_message` and
#: :attr:`TrafficRecord.exception_stacktrace` keep; longer texts are cut to
#: their beginning, so a queued record holds a bounded amount of text.
EXCEPTION_TEXT_LIMIT = 32_768


class _ExceptionText(t.NamedTuple):
    """What a record says of its exception, formatted once off the request thread."""

    representation: str
    type_name: str
    message: str
    stacktrace: str


def _text_of(format_: t.Callable[[object], str], value: object, failed: str) -> str:
    # Any class may define __str__ or __repr__; one that fails must not
    # cost the record.
    try:
        return format_(value)
    except Exception:
        return failed


def _describe(exception: BaseException, tb: TracebackType | None) -> _ExceptionText:
    cls = type(exception)
    module = cls.__module__
    qualname = cls.__qualname__
    # As OpenTelemetry's SDK names exception.type: builtins unqualified.
    type_name = f"{module}.{qualname}" if module and module != "builtins" else qualname
    try:
        stacktrace = "".join(traceback.format_exception(cls, exception, tb))
    except Exception:
        stacktrace = "<exception format_exception() failed>"
    representation = _text_of(repr, exception, "<exception repr() failed>")
    if len(representation) > EXCEPTION_TEXT_LIMIT:
        # A 17 MB text is past what a database packet or column takes; its
        # head says what it was, the tail how much there was.
        representation = (
            f"{representation[:EXCEPTION_TEXT_LIMIT]}... ({len(representation):,} characters)"
        )
    return _ExceptionText(
        representation,
        type_name,
        _text_of(str, exception, "<exception str() failed>")[:EXCEPTION_TEXT_LIMIT],
        stacktrace[:EXCEPTION_TEXT_LIMIT],
    )


def iso_text(moment: datetime) -> str:
    """``moment`` as stores keep ``request_date``: UTC, microseconds, ``+00:00``
    (what :attr:`TrafficRecord.request_date_iso` gives, faster, for a record).

    Text in this one format sorts as the moments do, so stores that keep dates
    as text compare them as text.
    """
    return moment.astimezone(_UTC).isoformat(timespec="microseconds")


@functools.lru_cache(maxsize=64)
def _iso_second(seconds: int) -> str:
    # isoformat() costs ~4 us; requests within one second share this prefix.
    return datetime.fromtimestamp(seconds, _UTC).strftime("%Y-%m-%dT%H:%M:%S")


class TrafficRecord:
    """One finished request.

    Built on the request thread from raw values only (clock readings and
    strings copied off the WSGI environ), so it is cheap to make. The values
    that cost something to compute (the date, the host URL, the browser and
    platform, the mimetype) are properties computed on first access, which
    happens in a store's worker thread, and kept, so several stores share the
    work.

    Every name in :data:`FIELD_NAMES` is an attribute. Besides those:

    ``start_time_ns``
        wall clock at the start of the request, ns since the epoch.
    ``duration_ns``
        monotonic duration of the request in ns.
    ``traceparent``, ``tracestate``
        the incoming W3C trace context headers, or ``None``.
    ``url_scheme``, ``query_string``, ``server_protocol``
        from the WSGI environ, for exporters.
    ``server_address``, ``server_port``
        the host and port the request was addressed to, for exporters.
    ``has_exception``
        whether the request ended in an unhandled exception; cheap, formats
        nothing.
    ``exception_type``, ``exception_message``, ``exception_stacktrace``
        that exception's fully qualified class name (``shop.errors.ShelfError``,
        builtins unqualified: ``KeyError``), ``str()`` and
        ``"".join(traceback.format_exception(...))``; ``None`` when there
        was none, and for a record made with ``response_exception`` text
        rather than from an exception.

    The request thread keeps only the exception object and its traceback.
    The first read of any of these texts or of ``response_exception`` (the
    ``repr()``, as in 0.8), normally in a store's worker, formats all of them
    at once and drops the exception, and with it the frames and their
    locals; the message and stack trace are cut to
    :data:`EXCEPTION_TEXT_LIMIT` characters. So a queued record holds
    frames only until a worker first reads it, and bounded text after.
    """

    __slots__ = (
        "_cache",
        "_content_length",
        "_content_type",
        "_described",
        "_given_exception",
        "_host_header",
        "_raised",
        "_server",
        "duration_ns",
        "query_string",
        "request_endpoint",
        "request_method",
        "request_path",
        "request_referrer",
        "request_remote_address",
        "request_route",
        "request_user_agent",
        "response_status_code",
        "server_protocol",
        "start_time_ns",
        "traceparent",
        "tracestate",
        "url_scheme",
    )

    start_time_ns: int
    duration_ns: int
    request_method: str | None
    url_scheme: str
    request_path: str | None
    query_string: str
    server_protocol: str | None
    request_endpoint: str | None
    request_route: str | None
    request_remote_address: str | None
    request_referrer: str | None
    request_user_agent: str | None
    response_status_code: int | None
    traceparent: str | None
    tracestate: str | None

    # Positional-or-keyword on purpose: the middleware passes positionally,
    # which costs a third of 20 keyword arguments on the request thread.
    # Everyone else should pass keywords.
    def __init__(
        self,
        start_time_ns: int,
        duration_ns: int,
        request_method: str | None = None,
        url_scheme: str = "http",
        host_header: str | None = None,
        server: tuple[str, int | None] | None = None,
        request_path: str | None = None,
        query_string: str = "",
        server_protocol: str | None = None,
        request_endpoint: str | None = None,
        request_route: str | None = None,
        request_remote_address: str | None = None,
        request_referrer: str | None = None,
        request_user_agent: str | None = None,
        response_status_code: int | None = None,
        content_length: str | None = None,
        content_type: str | None = None,
        response_exception: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self.start_time_ns = start_time_ns
        self.duration_ns = duration_ns
        self.request_method = request_method
        self.url_scheme = url_scheme
        self._host_header = host_header
        self._server = server
        self.request_path = request_path
        self.query_string = query_string
        self.server_protocol = server_protocol
        self.request_endpoint = request_endpoint
        self.request_route = request_route
        self.request_remote_address = request_remote_address
        self.request_referrer = request_referrer
        self.request_user_agent = request_user_agent
        self.response_status_code = response_status_code
        self._content_length = content_length
        self._content_type = content_type
        self._given_exception = response_exception
        # Its traceback read now: an exception that propagates on gains the
        # frames of the callers above the middleware.
        self._raised = None if exception is None else (exception, exception.__traceback__)
        self._described: _ExceptionText | None = None
        self.traceparent = traceparent
        self.tracestate = tracestate
        # Values computed off the request thread, shared by every store.
        self._cache: dict[t.Hashable, t.Any] = {}

    def raw_values(self) -> tuple[t.Any, ...]:
        """The constructor's arguments, in order, that make this record again
        (``TrafficRecord(*values)``): what a disk spool keeps. An exception
        is kept as its ``repr()`` (``response_exception``).

        .. versionadded:: 1.0
        """
        return (
            self.start_time_ns, self.duration_ns, self.request_method, self.url_scheme,
            self._host_header, self._server, self.request_path, self.query_string,
            self.server_protocol, self.request_endpoint, self.request_route,
            self.request_remote_address, self.request_referrer, self.request_user_agent,
            self.response_status_code, self._content_length, self._content_type,
            self.response_exception, self.traceparent, self.tracestate,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"<TrafficRecord {self.request_method} {self.request_path!r}"
            f" {self.response_status_code}>"
        )

    def computed(self, key: t.Hashable, compute: t.Callable[[TrafficRecord], _T]) -> _T:
        """``compute(self)``, worked out once per record and kept under ``key``,
        so every store and exporter that needs the same derived value (a
        policy's row, say) shares the work.

        .. versionadded:: 1.0
        """
        cache = self._cache
        if key in cache:
            return t.cast(_T, cache[key])
        value = cache[key] = compute(self)
        return value

    @property
    def request_date(self) -> datetime:
        """When the request started, an aware UTC datetime (microseconds)."""
        cache = self._cache
        if "request_date" not in cache:
            seconds, ns = divmod(self.start_time_ns, 1_000_000_000)
            cache["request_date"] = datetime.fromtimestamp(seconds, _UTC).replace(
                microsecond=ns // 1000
            )
        return t.cast(datetime, cache["request_date"])

    @property
    def request_host_url(self) -> str:
        """Scheme and host with a trailing slash, as Werkzeug's ``host_url``."""
        return _host_url(self.url_scheme, self._host_header, self._server)

    @property
    def request_browser(self) -> str | None:
        """Browser family and major version, e.g. ``"Chrome 131"``."""
        return parse_user_agent(self.request_user_agent)[0]

    @property
    def request_platform(self) -> str | None:
        """Operating system family, e.g. ``"Mac OS X"``."""
        return parse_user_agent(self.request_user_agent)[1]

    @property
    def server_address(self) -> str | None:
        """The host the request was sent to, without the port: from the
        ``Host`` header, else ``SERVER_NAME``; an IPv6 address without its
        brackets. ``None`` when unknown.

        .. versionadded:: 1.0
        """
        return _server_address(self.url_scheme, self._host_header, self._server)[0]

    @property
    def server_port(self) -> int | None:
        """The port the request was sent to: from the ``Host`` header, the
        scheme's default port (80, 443) when the header names none, else
        ``SERVER_PORT``. ``None`` when unknown.

        .. versionadded:: 1.0
        """
        return _server_address(self.url_scheme, self._host_header, self._server)[1]

    @property
    def response_time(self) -> float:
        """Duration in milliseconds."""
        return self.duration_ns / 1_000_000

    @property
    def response_size(self) -> int | None:
        """Body size in bytes from ``Content-Length``; ``None`` when streamed,
        and when the header is not a size a store can hold (not a number,
        negative, or past a signed 64-bit integer: ``99999999999999999999``
        would otherwise be a value no SQL column takes)."""
        value = self._content_length
        if value is None:
            return None
        try:
            size = int(value)
        except ValueError:
            return None
        return size if 0 <= size <= _MAX_SIZE else None

    @property
    def response_mimetype(self) -> str | None:
        """The response mimetype without parameters, e.g. ``"text/html"``."""
        value = self._content_type
        return None if value is None else _mimetype(value)

    def _exception_text(self) -> _ExceptionText | None:
        # Read in this order, written in the other (text first, then the
        # exception dropped): a worker that finds the exception gone finds
        # its text, with no lock on the record.
        raised = self._raised
        described = self._described
        if described is not None or raised is None:
            return described
        described = self._described = _describe(*raised)
        self._raised = None
        return described

    @property
    def response_exception(self) -> str | None:
        """``repr()`` of the unhandled exception, as in 0.8; else ``None``.

        A ``repr()`` longer than :data:`EXCEPTION_TEXT_LIMIT` characters is
        cut there and ends with ``... (N characters)``."""
        given = self._given_exception
        if given is not None:
            return given
        described = self._exception_text()
        return None if described is None else described.representation

    @property
    def has_exception(self) -> bool:
        """Whether the request ended in an unhandled exception, without
        formatting it: for checks on the request thread.

        .. versionadded:: 1.0
        """
        return (
            self._given_exception is not None
            or self._raised is not None
            or self._described is not None
        )

    @property
    def exception_type(self) -> str | None:
        """The unhandled exception's class, fully qualified as OpenTelemetry
        names it (``module.QualName``; builtins alone, e.g. ``KeyError``).

        .. versionadded:: 1.0
        """
        described = self._exception_text()
        return None if described is None else described.type_name

    @property
    def exception_message(self) -> str | None:
        """``str()`` of the unhandled exception, cut to
        :data:`EXCEPTION_TEXT_LIMIT` characters.

        .. versionadded:: 1.0
        """
        described = self._exception_text()
        return None if described is None else described.message

    @property
    def exception_stacktrace(self) -> str | None:
        """The unhandled exception as ``traceback.format_exception`` gives it,
        chained exceptions included, cut to :data:`EXCEPTION_TEXT_LIMIT`
        characters.

        .. versionadded:: 1.0
        """
        described = self._exception_text()
        return None if described is None else described.stacktrace

    @property
    def request_sample_rate(self) -> float | None:
        """Always ``None`` on the record: a store's :class:`~flask_traffic.LogPolicy`
        fills it in when it keeps the request by sampling."""
        return None

    @property
    def request_date_iso(self) -> str:
        """:attr:`request_date` as ISO 8601 text with microseconds, as stores keep it."""
        seconds, ns = divmod(self.start_time_ns, 1_000_000_000)
        return f"{_iso_second(seconds)}.{ns // 1000:06d}+00:00"

    def as_dict(self) -> dict[str, t.Any]:
        """Every field as a Python value (``request_date`` is a datetime)."""
        return {name: getattr(self, name) for name in FIELD_NAMES}
