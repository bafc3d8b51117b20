"""OTLP/HTTP delivery of encoded requests to a collector.

:class:`OTLPSender` posts the bytes of one export over a kept-alive
connection, as OpenTelemetry's OTLP/HTTP exporters do: the settings come from
the arguments, else from the standard ``OTEL_EXPORTER_OTLP_*`` environment
variables; TLS when the URL says ``https``; gzip or deflate when asked; and
retries with exponential back-off on 429, 502, 503, 504 (honouring
``Retry-After``) and on connection errors, within the export's timeout.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import logging
import math
import os
import random
import socket
import ssl
import threading
import time
import typing as t
import urllib.request
import zlib
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from opentelemetry.util.re import parse_env_headers

from ._version import __version__

__all__ = ["COMPRESSIONS", "OTLPSender", "check_compression"]

logger = logging.getLogger("flask_traffic")

#: The values ``compression`` and ``OTEL_EXPORTER_OTLP_COMPRESSION`` take.
COMPRESSIONS = ("none", "gzip", "deflate")
_RETRYABLE = frozenset((429, 502, 503, 504))
_MAX_ATTEMPTS = 6
_JITTER = 0.2
_DEFAULT_TIMEOUT = 10.0
_USER_AGENT = f"flask-traffic-otel/{__version__}"


def check_compression(value: object, name: str = "compression") -> str:
    """``value`` if it names a compression OTLP/HTTP knows, else a ValueError."""
    if isinstance(value, str) and value.strip().lower() in COMPRESSIONS:
        return value.strip().lower()
    raise ValueError(f"{name} must be one of 'gzip', 'deflate' or 'none', got {value!r}.")


def _environ(signal: str, setting: str) -> str:
    """``OTEL_EXPORTER_OTLP_{signal}_{setting}``, else ``OTEL_EXPORTER_OTLP_{setting}``."""
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_{setting}", "").strip()
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{setting}", "").strip()
    )


def _timeout_from_environ(signal: str) -> float:
    text = _environ(signal, "TIMEOUT")
    if not text:
        return _DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        logger.warning(
            "OTEL_EXPORTER_OTLP_TIMEOUT %r is not a positive number of seconds; using %ss.",
            text,
            _DEFAULT_TIMEOUT,
        )
        return _DEFAULT_TIMEOUT
    return value


def _compression_from_environ(signal: str) -> str:
    text = _environ(signal, "COMPRESSION")
    if not text:
        return "none"
    try:
        return check_compression(text)
    except ValueError:
        logger.warning(
            "OTEL_EXPORTER_OTLP_COMPRESSION %r is not known; sending uncompressed.", text
        )
        return "none"


def _ssl_context(signal: str) -> ssl.SSLContext:
    """Certificates as OpenTelemetry's exporters take them from the environment."""
    context = ssl.create_default_context(cafile=_environ(signal, "CERTIFICATE") or None)
    client_certificate = _environ(signal, "CLIENT_CERTIFICATE")
    if client_certificate:
        context.load_cert_chain(client_certificate, _environ(signal, "CLIENT_KEY") or None)
    return context


def _retry_after(response: http.client.HTTPResponse) -> float | None:
    """The delay a ``Retry-After`` header asks for, in seconds."""
    value = (response.getheader("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class _Attempt(t.NamedTuple):
    status: int | None
    reason: str
    retry_after: float | None


class OTLPSender:
    """Posts encoded OTLP requests to one endpoint.

    :param endpoint: the full ``http://`` or ``https://`` URL.
    :param signal: ``"TRACES"`` or ``"METRICS"``: which of the
        ``OTEL_EXPORTER_OTLP_{signal}_*`` variables apply.
    :param headers: sent with every request, over those of the environment.
    :param timeout: seconds one :meth:`send` may take, retries included.
    :param compression: ``"gzip"``, ``"deflate"`` or ``"none"``.
    :param name: who sends, in log messages.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        signal: str = "TRACES",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        compression: str | None = None,
        name: str = "OTelExporter",
    ) -> None:
        self.endpoint = endpoint
        self.timeout = _timeout_from_environ(signal) if timeout is None else timeout
        self.compression = _compression_from_environ(signal) if compression is None else compression
        self._name = name
        parts = urlsplit(endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._context = _ssl_context(signal) if self._https else None
        self._proxy: str | None = None
        if not urllib.request.proxy_bypass(self._host):
            self._proxy = urllib.request.getproxies().get(parts.scheme)

        self._headers = {"content-type": "application/x-protobuf", "user-agent": _USER_AGENT}
        env_headers = _environ(signal, "HEADERS")
        if env_headers:
            self._headers.update(parse_env_headers(env_headers, liberal=True))
        self._headers.update({key.lower(): value for key, value in (headers or {}).items()})
        if self.compression != "none":
            self._headers["content-encoding"] = self.compression

        self._connection: http.client.HTTPConnection | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def headers(self) -> dict[str, str]:
        """The headers of every request, names in lower case."""
        return dict(self._headers)

    def send(self, body: bytes, count: int) -> bool:
        """Post ``body`` (``count`` items); retry what may succeed later.

        :return: whether the collector took it. A failure is logged.
        """
        if self._stopped.is_set():
            logger.warning("%s: %d spans not sent: the exporter is shut down.", self._name, count)
            return False
        if self.compression == "gzip":
            body = gzip.compress(body, compresslevel=6, mtime=0)
        elif self.compression == "deflate":
            body = zlib.compress(body)
        deadline = time.monotonic() + self.timeout
        with self._lock:
            for attempt in range(_MAX_ATTEMPTS):
                result = self._post(body, deadline)
                if result.status is not None and 200 <= result.status < 300:
                    return True
                retryable = result.status is None or result.status in _RETRYABLE
                if not retryable:
                    logger.error(
                        "%s: the collector at %s refused %d spans: %s",
                        self._name,
                        self.endpoint,
                        count,
                        result.reason,
                    )
                    return False
                backoff = result.retry_after
                if backoff is None:
                    backoff = 2**attempt * random.uniform(1 - _JITTER, 1 + _JITTER)
                left = deadline - time.monotonic()
                if attempt + 1 == _MAX_ATTEMPTS or backoff > left or self._stopped.is_set():
                    logger.error(
                        "%s: %d spans not sent to %s within %ss: %s",
                        self._name,
                        count,
                        self.endpoint,
                        self.timeout,
                        result.reason,
                    )
                    return False
                logger.warning(
                    "%s: sending to %s failed (%s); retrying in %.2fs.",
                    self._name,
                    self.endpoint,
                    result.reason,
                    backoff,
                )
                if self._stopped.wait(backoff):
                    logger.error("%s: %d spans not sent: shut down.", self._name, count)
                    return False
        return False

    def _post(self, body: bytes, deadline: float) -> _Attempt:
        """One request; a kept-alive connection the collector closed since is
        tried once more at once on a new one."""
        for fresh in (False, True):
            left = deadline - time.monotonic()
            if left <= 0:
                return _Attempt(None, "timed out", None)
            reused = self._connection is not None and not fresh
            connection = self._connect(left)
            try:
                connection.request("POST", self._target, body, self._headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                self._drop_connection()
                if reused and not self._stopped.is_set():
                    continue
                return _Attempt(None, f"{type(error).__name__}: {error}", None)
            if response.will_close:
                self._drop_connection()
            status = response.status
            return _Attempt(status, f"HTTP {status} {response.reason}", _retry_after(response))
        raise AssertionError("unreachable")

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is not None and self._pid != os.getpid():
            # A fork's child shares the parent's socket: never write to it.
            connection = self._connection = None
        if connection is None:
            self._pid = os.getpid()
            connection = self._new_connection(timeout)
            self._connection = connection
        elif connection.sock is not None:
            connection.sock.settimeout(timeout)
        connection.timeout = timeout
        return connection

    def _new_connection(self, timeout: float) -> http.client.HTTPConnection:
        proxy = urlsplit(self._proxy) if self._proxy else None
        host, port = (proxy.hostname or "", proxy.port) if proxy else (self._host, self._port)
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self._context
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        if proxy is not None:
            connection.set_tunnel(self._host, self._port)
        return connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def shutdown(self) -> None:
        """Stop: a send waiting to retry gives up; safe to call twice."""
        self._stopped.set()
        # Wakes a send blocked on the collector: its socket closes under it.
        connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._lock.acquire(timeout=0.1):
            try:
                self._drop_connection()
            finally:
                self._lock.release()
