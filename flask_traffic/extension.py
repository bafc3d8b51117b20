"""The Flask extension: config, stores, and one record per request."""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Iterable
from dataclasses import dataclass
from time import perf_counter_ns, time_ns

from flask import Flask, got_request_exception, request

from .cli import traffic_cli
from .record import TrafficRecord
from .signals import ReceiverCache, request_traffic
from .stores.base import ProcessorOptions, Store

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["Traffic"]

logger = logging.getLogger("flask_traffic")

_EXTENSION_KEY = "traffic"
# Where an unhandled exception and its request are parked by the
# got_request_exception receiver, for the middleware to read afterwards.
_PARKED_KEY = "flask_traffic.exception"

#: The config keys read by :meth:`Traffic.init_app`, with their defaults.
CONFIG_DEFAULTS: dict[str, t.Any] = {
    "TRAFFIC_ENABLED": True,
    "TRAFFIC_SYNC": False,
    "TRAFFIC_MAX_QUEUE_SIZE": 10_000,
    "TRAFFIC_MAX_BATCH_SIZE": 512,
    "TRAFFIC_SCHEDULE_DELAY": 1.0,
    "TRAFFIC_RETENTION_INTERVAL": 60.0,
}

StoresArg = Store | Iterable[Store] | None


@dataclass
class _TrafficState:
    """What ``app.extensions["traffic"]`` holds for one app."""

    stores: list[Store]
    enabled: bool
    receiver: _StoresReceiver | None = None


class _StoresReceiver:
    """Subscribes an app's stores to ``request_traffic``, each through its policy.

    One receiver for all of an app's stores rather than one per store:
    every request pays blinker's dispatch once, not once per store.
    """

    __slots__ = ("routes", "stores")

    def __init__(self, stores: list[Store]) -> None:
        self.stores = tuple(stores)
        routes = []
        for store in stores:
            assert store.processor is not None
            routes.append((store.log_policy.accepts, store.processor.emit, store))
        self.routes = tuple(routes)

    def __call__(self, sender: Flask, record: TrafficRecord, **extra: t.Any) -> None:
        for accepts, emit, store in self.routes:
            try:
                if accepts(record):
                    emit(record)
            except Exception:
                logger.exception("%s: could not take a traffic record.", store.name)

    def __repr__(self) -> str:
        return f"<receiver for {list(self.stores)!r}>"


def _normalise_stores(stores: StoresArg) -> list[Store]:
    if stores is None:
        return []
    if isinstance(stores, Store):
        return [stores]
    if isinstance(stores, (str, bytes)) or not isinstance(stores, Iterable):
        raise TypeError(f"stores must be a store or a list of stores, got {type(stores).__name__}.")
    result = list(stores)
    for item in result:
        if not isinstance(item, Store):
            raise TypeError(
                f"stores must hold flask_traffic stores (JSONStore(), CSVStore(), ...), "
                f"got {item!r}."
            )
    if len({id(item) for item in result}) != len(result):
        raise ValueError("stores lists the same store twice; each record would be written twice.")
    return result


def _name_stores(stores: list[Store]) -> None:
    """Number the default names of stores of one class: JSONStore, JSONStore-2."""
    taken: set[str] = set()
    for store in stores:
        if store.processor is not None:  # already named by the app it first served
            taken.add(store.name)
            continue
        if store._name is None:
            base, number = store.name, 1
            while store.name in taken:
                number += 1
                store.name = f"{base}-{number}"
        if store.name in taken:
            raise ValueError(f"Two stores are named {store.name!r}; give each a name= of its own.")
        taken.add(store.name)


def _read_config(app: Flask) -> tuple[bool, ProcessorOptions]:
    for key, default in CONFIG_DEFAULTS.items():
        app.config.setdefault(key, default)
    config = app.config
    for key in ("TRAFFIC_ENABLED", "TRAFFIC_SYNC"):
        if not isinstance(config[key], bool):
            raise ValueError(f"{key} must be True or False, got {config[key]!r}.")
    for key in ("TRAFFIC_MAX_QUEUE_SIZE", "TRAFFIC_MAX_BATCH_SIZE"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}.")
    for key in ("TRAFFIC_SCHEDULE_DELAY", "TRAFFIC_RETENTION_INTERVAL"):
        seconds = config[key]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ValueError(f"{key} must be a positive number of seconds, got {seconds!r}.")
    options: ProcessorOptions = {
        "sync": config["TRAFFIC_SYNC"],
        "max_queue_size": config["TRAFFIC_MAX_QUEUE_SIZE"],
        "max_batch_size": config["TRAFFIC_MAX_BATCH_SIZE"],
        "schedule_delay": float(config["TRAFFIC_SCHEDULE_DELAY"]),
        "retention_interval": float(config["TRAFFIC_RETENTION_INTERVAL"]),
    }
    return config["TRAFFIC_ENABLED"], options


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
        if request_traffic.is_muted:
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
            None if exception is None else repr(exception),
            environ.get("HTTP_TRACEPARENT"),
            environ.get("HTTP_TRACESTATE"),
        )


class Traffic:
    """Records every request of a Flask app and hands it to stores.

    ::

        traffic = Traffic()

        def create_app():
            app = Flask(__name__)
            traffic.init_app(app, stores=[JSONStore(), CSVStore()])
            return app

    One ``Traffic`` object can serve many apps; each app has its own stores,
    kept in ``app.extensions["traffic"]``.

    :param app: an app to set up now; otherwise call :meth:`init_app`.
    :param stores: stores used by :meth:`init_app` when it gets none.
    """

    def __init__(self, app: Flask | None = None, *, stores: StoresArg = None) -> None:
        self._default_stores = stores
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def init_app(self, app: Flask, stores: StoresArg = None) -> None:
        """Set up ``app``: read the ``TRAFFIC_*`` config, attach the stores,
        and start recording its requests.

        :param app: the Flask application.
        :param stores: a store, a list of stores, or ``None`` for the stores
            given to the constructor. With no store at all, requests are
            still announced on :data:`~flask_traffic.request_traffic`.
        :raises RuntimeError: if ``app`` already has a ``Traffic``.
        """
        if _EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'Traffic' instance has already been registered on this Flask app. "
                "Import and use that instance instead."
            )
        store_list = _normalise_stores(self._default_stores if stores is None else stores)
        _name_stores(store_list)
        enabled, options = _read_config(app)
        for store in store_list:
            store.attach(app, options)
        state = _TrafficState(stores=store_list, enabled=enabled)
        if store_list:
            state.receiver = _StoresReceiver(store_list)
            # Held strongly: blinker would drop a weakly held receiver object
            # as soon as this function returns.
            request_traffic.connect(state.receiver, sender=app, weak=False)
        app.extensions[_EXTENSION_KEY] = state
        # `flask traffic ...`; the commands find this app's stores through
        # app.extensions, so one group serves every app.
        app.cli.add_command(traffic_cli)
        if enabled:
            got_request_exception.connect(_park_exception, sender=app, weak=False)
            app.wsgi_app = _TrafficMiddleware(app.wsgi_app, app)  # type: ignore[method-assign]

    @staticmethod
    def _state(app: Flask) -> _TrafficState:
        try:
            return t.cast(_TrafficState, app.extensions[_EXTENSION_KEY])
        except KeyError:
            raise RuntimeError(
                f"The app {app.name!r} is not set up for traffic: call init_app(app) first."
            ) from None

    def get_stores(self, app: Flask) -> list[Store]:
        """The stores attached to ``app``, in the order given."""
        return list(self._state(app).stores)

    def flush(self, app: Flask, timeout: float | None = None) -> bool:
        """Write everything queued for ``app``'s stores.

        :return: ``False`` if some store did not finish within ``timeout``.
        """
        return all([store.flush(timeout) for store in self._state(app).stores])

    def shutdown(self, app: Flask, timeout: float | None = 10.0) -> None:
        """Flush and stop ``app``'s stores and stop recording its requests.

        Safe to call twice. Stores are also shut down at interpreter exit.
        """
        state = self._state(app)
        if state.receiver is not None:
            request_traffic.disconnect(state.receiver, sender=app)
            state.receiver = None
        for store in state.stores:
            store.shutdown(timeout)
