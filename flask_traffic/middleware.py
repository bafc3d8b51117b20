"""The WSGI wrapper that times each request and builds its record."""

from __future__ import annotations

import logging
import typing as t
from time import perf_counter_ns, time_ns

from flask import Flask, got_request_exception, request

from .record import TrafficRecord
from .signals import ReceiverCache, request_traffic

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["SKIP_ENVIRON_KEY", "install"]

logger = logging.getLogger("flask_traffic")

# Where an unhandled exception and its request are parked by the
# got_request_exception receiver, for the middleware to read afterwards.
_PARKED_KEY = "flask_traffic.exception"

#: A request whose WSGI ``environ`` holds this key, truthy, by the time its
#: response is done is not recorded: nothing is sent on
#: :data:`~flask_traffic.request_traffic` for it. The dashboard sets it on its
#: own requests.
SKIP_ENVIRON_KEY = "flask_traffic.skip"


def install(app: Flask) -> None:
    """Wrap ``app.wsgi_app`` so every request of ``app`` becomes a record sent
    on :data:`~flask_traffic.request_traffic`."""
    got_request_exception.connect(_park_exception, sender=app, weak=False)
    app.wsgi_app = _TrafficMiddleware(app.wsgi_app, app)  # type: ignore[method-assign]


def _park_exception(sender: Flask, exception: BaseException, **extra: t.Any) -> None:
    # Flask sends got_request_exception for unhandled exceptions only, inside
    # the request context, whether it then answers 500 or propagates; the
    # normal path pays nothing for it.
    req = request._get_current_object()  # type: ignore[attr-defined]
    req.environ[_PARKED_KEY] = (req, exception)


def _length_and_type(headers: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """``Content-Length`` and ``Content-Type`` from response headers, in one pass."""
    length = content_type = None
    for key, value in headers:
        name = key.lower()
        if name == "content-length":
            length = value
        elif name == "content-type":
            content_type = value
    return length, content_type


class _TrafficMiddleware:
    """Wraps ``app.wsgi_app``: times the request and builds its record.

    Wrapping the WSGI app, rather than using ``after_request`` or
    ``teardown_request``, sees every request exactly once: normal responses,
    ``abort()``, routing errors, and exceptions whether Flask answers 500 or
    lets them propagate. It copies raw values only; anything that costs
    (parsing, formatting) is left to the record's properties, which the
    stores' worker threads read.
    """

    def __init__(self, wsgi_app: WSGIApplication, app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.app = app
        self.receivers = ReceiverCache(app)

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        start_time_ns = time_ns()
        started = perf_counter_ns()
        response: list[t.Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
            # Flask calls this while the request context is still pushed, so
            # its request object (with the matched URL rule) is still in the
            # environ; Flask unlinks it when the context pops.
            response[:] = (status, headers, environ.get("werkzeug.request"))
            return start_response(status, headers, exc_info)

        try:
            result = self.wsgi_app(environ, capture)
        except BaseException as exc:
            if request_traffic.receivers:
                self._send(environ, start_time_ns, perf_counter_ns() - started, response, exc)
            raise
        if request_traffic.receivers:
            self._send(environ, start_time_ns, perf_counter_ns() - started, response, None)
        return result

    def _send(
        self,
        environ: WSGIEnvironment,
        start_time_ns: int,
        duration_ns: int,
        response: list[t.Any],
        raised: BaseException | None,
    ) -> None:
        # Parked by _park_exception; must not outlive the request either way.
        parked = environ.pop(_PARKED_KEY, None)
        if request_traffic.is_muted or environ.get(SKIP_ENVIRON_KEY):
            return
        receivers = self.receivers.receivers()
        if not receivers:
            return  # other apps have receivers, this one has none
        try:
            record = self._record(environ, start_time_ns, duration_ns, response, raised, parked)
        except Exception:
            logger.exception("Could not build the traffic record of a request.")
            return
        app = self.app
        for receiver in receivers:
            # blinker stops at the first receiver that raises; one broken
            # receiver must neither fail the request nor starve the stores.
            try:
                receiver(app, record=record)
            except Exception:
                logger.exception("The request_traffic receiver %r failed.", receiver)

    @staticmethod
    def _record(
        environ: WSGIEnvironment,
        start_time_ns: int,
        duration_ns: int,
        response: list[t.Any],
        raised: BaseException | None,
        parked: tuple[t.Any, BaseException] | None,
    ) -> TrafficRecord:
        parked_request, parked_exception = parked if parked is not None else (None, None)
        exception = raised if raised is not None else parked_exception
        if response:
            status, headers, req = response
            status_code: int | None = int(status[:3])
            content_length, content_type = _length_and_type(headers)
        else:
            req = parked_request
            status_code = 500 if exception is not None else None
            content_length = content_type = None
        if req is not None:
            # Another Request(environ) made during the request would be a
            # plain Werkzeug one, without url_rule.
            rule = getattr(req, "url_rule", None)
            method = req.method
            path = req.path
            scheme = req.scheme
            server = req.server
            remote_address = req.remote_addr
        else:
            # Flask failed before it made a request object.
            rule = None
            method = environ.get("REQUEST_METHOD")
            raw = environ.get("PATH_INFO") or ""
            path = "/" + raw.encode("latin-1").decode("utf-8", "replace").lstrip("/")
            scheme = environ.get("wsgi.url_scheme", "http")
            server = None
            remote_address = environ.get("REMOTE_ADDR")
        # Positional, in TrafficRecord's parameter order: keywords cost more.
        return TrafficRecord(
            start_time_ns,
            duration_ns,
            method,
            scheme,
            environ.get("HTTP_HOST"),
            server,
            path,
            environ.get("QUERY_STRING", ""),
            environ.get("SERVER_PROTOCOL"),
            None if rule is None else rule.endpoint,
            None if rule is None else rule.rule,
            remote_address,
            environ.get("HTTP_REFERER"),
            environ.get("HTTP_USER_AGENT"),
            status_code,
            content_length,
            content_type,
            None,
            environ.get("HTTP_TRACEPARENT"),
            environ.get("HTTP_TRACESTATE"),
            # The object only: repr(), str() and the stack trace run user
            # code and read source files, so the record formats them when a
            # worker first reads them.
            exception,
        )
