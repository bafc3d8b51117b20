"""The Flask extension: config, stores, and their subscription to each request."""

from __future__ import annotations

import logging
import os
import typing as t
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask

from . import middleware
from ._deadletter import DEAD_LETTER_FILE, DeadLetterFile
from ._health import is_failing
from ._spool import SPOOL_FOLDER
from .processors import (
    ProcessorOptions,
    check_positive_int,
    check_positive_seconds,
    shutdown_in_parallel,
)
from .record import TrafficRecord
from .signals import request_traffic
from .stores._rollupstore import read_fold_state
from .stores.base import Sink, Store

__all__ = ["CONFIG_DEFAULTS", "Traffic", "TrafficState", "get_state"]

logger = logging.getLogger("flask_traffic")

_EXTENSION_KEY = "traffic"

#: The config keys read by :meth:`Traffic.init_app`, with their defaults.
CONFIG_DEFAULTS: dict[str, t.Any] = {
    "TRAFFIC_ENABLED": True,
    "TRAFFIC_SYNC": False,
    "TRAFFIC_MAX_QUEUE_SIZE": 10_000,
    "TRAFFIC_MAX_BATCH_SIZE": 512,
    "TRAFFIC_SCHEDULE_DELAY": 1.0,
    "TRAFFIC_RETENTION_INTERVAL": 60.0,
    # None: the app's instance folder.
    "TRAFFIC_DEAD_LETTER_DIR": None,
    "TRAFFIC_DEAD_LETTER_MAX_BYTES": 64 * 1024 * 1024,
    # None: the app's instance folder; 0 bytes: no spool.
    "TRAFFIC_SPOOL_DIR": None,
    "TRAFFIC_SPOOL_MAX_BYTES": 1024 * 1024 * 1024,
}

StoresArg = Sink | Iterable[Sink] | None


@dataclass
class TrafficState:
    """What ``app.extensions["traffic"]`` holds for one app; get it with
    :func:`get_state`.

    :param sinks: the app's stores and exporters, in the order given.
    :param enabled: ``TRAFFIC_ENABLED`` as ``init_app`` read it.

    .. versionadded:: 1.0
    """

    sinks: list[Sink]
    enabled: bool
    #: Where the app's stores set aside records no retry can write, or
    #: ``None`` when ``TRAFFIC_DEAD_LETTER_MAX_BYTES`` is 0.
    dead_letter_path: Path | None = None
    _receiver: _StoresReceiver | None = field(default=None, repr=False)

    @property
    def stores(self) -> list[Store]:
        """The sinks that can be read back (:class:`~flask_traffic.stores.Store`),
        in the order given; what the ``flask traffic`` commands and the
        dashboard read."""
        return [sink for sink in self.sinks if isinstance(sink, Store)]

    def sink(self, name: str) -> Sink:
        """The sink called ``name``.

        :raises LookupError: naming the app's sinks, when none is.
        """
        for sink in self.sinks:
            if sink.name == name:
                return sink
        names = ", ".join(sink.name for sink in self.sinks) or "none"
        raise LookupError(f"no store is named {name!r}; this app's stores are: {names}.")


def get_state(app: Flask) -> TrafficState:
    """The traffic state of ``app``.

    :raises RuntimeError: when :meth:`Traffic.init_app` has not set ``app`` up.

    .. versionadded:: 1.0
    """
    state = app.extensions.get(_EXTENSION_KEY)
    if not isinstance(state, TrafficState):
        raise RuntimeError(
            f"The app {app.name!r} does not record its traffic: set it up with "
            f"Traffic(app, stores=[...]) or traffic.init_app(app, stores=[...]) first."
        )
    return state


class _StoresReceiver:
    """Subscribes an app's stores to ``request_traffic``, each through its policy.

    One receiver for all of an app's stores rather than one per store:
    every request pays blinker's dispatch once, not once per store.
    """

    __slots__ = ("routes", "stores")

    def __init__(self, stores: list[Sink]) -> None:
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


def _normalise_stores(stores: StoresArg) -> list[Sink]:
    if stores is None:
        return []
    if isinstance(stores, Sink):
        return [stores]
    if isinstance(stores, (str, bytes)) or not isinstance(stores, Iterable):
        raise TypeError(f"stores must be a store or a list of stores, got {type(stores).__name__}.")
    result = list(stores)
    for item in result:
        if not isinstance(item, Sink):
            raise TypeError(
                f"stores must hold flask_traffic stores (JSONStore(), CSVStore(), ...), "
                f"got {item!r}."
            )
    if len({id(item) for item in result}) != len(result):
        raise ValueError("stores lists the same store twice; each record would be written twice.")
    return result


def _name_stores(stores: list[Sink]) -> None:
    """Number the default names of stores of one class: JSONStore, JSONStore-2."""
    taken: set[str] = set()
    for store in stores:
        if store.processor is not None:  # already named by the app it first served
            taken.add(store.name)
            continue
        if store.has_default_name:
            base, number = store.name, 1
            while store.name in taken:
                number += 1
                store.name = f"{base}-{number}"
        if store.name in taken:
            raise ValueError(f"Two stores are named {store.name!r}; give each a name= of its own.")
        taken.add(store.name)


def _folder_and_bound(app: Flask, prefix: str) -> tuple[Path | None, int]:
    """``<prefix>_DIR`` (``None``: the instance folder) and ``<prefix>_MAX_BYTES``
    checked; the folder is ``None`` when the bound is 0 (turned off)."""
    folder = app.config[f"{prefix}_DIR"]
    if folder is not None and not isinstance(folder, (str, os.PathLike)):
        raise ValueError(f"{prefix}_DIR must be a folder path or None, got {folder!r}.")
    max_bytes = app.config[f"{prefix}_MAX_BYTES"]
    if max_bytes != 0:
        check_positive_int(max_bytes, f"{prefix}_MAX_BYTES")
    if not max_bytes:
        return None, 0
    return Path(app.instance_path if folder is None else folder), max_bytes


def _read_config(app: Flask) -> tuple[bool, ProcessorOptions]:
    for key, default in CONFIG_DEFAULTS.items():
        app.config.setdefault(key, default)
    config = app.config
    for key in ("TRAFFIC_ENABLED", "TRAFFIC_SYNC"):
        if not isinstance(config[key], bool):
            raise ValueError(f"{key} must be True or False, got {config[key]!r}.")
    folder, max_bytes = _folder_and_bound(app, "TRAFFIC_DEAD_LETTER")
    dead_letters = None if folder is None else DeadLetterFile(folder / DEAD_LETTER_FILE, max_bytes)
    spool_dir, spool_max_bytes = _folder_and_bound(app, "TRAFFIC_SPOOL")
    options: ProcessorOptions = {
        "sync": config["TRAFFIC_SYNC"],
        "max_queue_size": check_positive_int(
            config["TRAFFIC_MAX_QUEUE_SIZE"], "TRAFFIC_MAX_QUEUE_SIZE"
        ),
        "max_batch_size": check_positive_int(
            config["TRAFFIC_MAX_BATCH_SIZE"], "TRAFFIC_MAX_BATCH_SIZE"
        ),
        "schedule_delay": check_positive_seconds(
            config["TRAFFIC_SCHEDULE_DELAY"], "TRAFFIC_SCHEDULE_DELAY"
        ),
        "retention_interval": check_positive_seconds(
            config["TRAFFIC_RETENTION_INTERVAL"], "TRAFFIC_RETENTION_INTERVAL"
        ),
        "dead_letters": dead_letters,
        "spool_dir": None if spool_dir is None else spool_dir / SPOOL_FOLDER,
        "spool_max_bytes": spool_max_bytes,
    }
    return config["TRAFFIC_ENABLED"], options


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
        dead_letters = options["dead_letters"]
        state = TrafficState(
            sinks=store_list,
            enabled=enabled,
            dead_letter_path=None if dead_letters is None else dead_letters.path,
        )
        if store_list:
            state._receiver = _StoresReceiver(store_list)
            # Held strongly: blinker would drop a weakly held receiver object
            # as soon as this function returns.
            request_traffic.connect(state._receiver, sender=app, weak=False)
        app.extensions[_EXTENSION_KEY] = state
        # `flask traffic ...`; imported here so that the CLI (which reads the
        # state through get_state) and this module do not import each other.
        from .cli import traffic_cli

        app.cli.add_command(traffic_cli)
        if enabled:
            middleware.install(app)

    def get_stores(self, app: Flask) -> list[Sink]:
        """The stores and exporters attached to ``app``, in the order given."""
        return list(get_state(app).sinks)

    def health(self, app: Flask, *, rollups: bool = False) -> dict[str, t.Any]:
        """The health of ``app``'s traffic pipeline in this process, for an
        app's own health check::

            @app.get("/healthz")
            def healthz():
                health = traffic.health(app)
                return health, 200 if health["ok"] else 503

        :param rollups: also read how far the rollups of each store that
            keeps them lag (:meth:`~flask_traffic.stores.Store.rollup_state`),
            under ``"rollups"``: a few reads of the store per call, where the
            rest is this process's counters; a failed read gives
            ``{"error": "Type: message"}`` and leaves ``ok`` as it is.
        :return: ``{"ok": bool, "stores": {name: {...}}}``: each store's
            :meth:`~flask_traffic.stores.Sink.stats` plus ``"failing"``
            (its last write raised and none has succeeded since); ``ok`` when
            no store is failing.

        .. versionadded:: 1.0
        """
        stores = {}
        for sink in get_state(app).sinks:
            stats = sink.stats()
            stores[sink.name] = {**stats, "failing": is_failing(stats)}
            if rollups and isinstance(sink, Store) and sink.keeps_rollups:
                state, error = read_fold_state(sink)
                if state is not None:
                    stores[sink.name]["rollups"] = state.as_json()
                elif error is not None:
                    stores[sink.name]["rollups"] = {"error": error}
        return {"ok": not any(s["failing"] for s in stores.values()), "stores": stores}

    def flush(self, app: Flask, timeout: float | None = None) -> bool:
        """Write everything queued for ``app``'s stores.

        :return: ``False`` if some store did not finish within ``timeout``.
        """
        return all([store.flush(timeout) for store in get_state(app).sinks])

    def shutdown(self, app: Flask, timeout: float | None = 10.0) -> None:
        """Flush and stop ``app``'s stores and stop recording its requests.

        The stores shut down at once, each in a thread, within ``timeout``
        seconds in all. Safe to call twice. Stores are also shut down at
        interpreter exit.
        """
        state = get_state(app)
        if state._receiver is not None:
            request_traffic.disconnect(state._receiver, sender=app)
            state._receiver = None
        # Together, within one budget: a server's graceful timeout is for the
        # whole app, and each store may be waiting on its own server.
        shutdown_in_parallel([sink.shutdown for sink in state.sinks], timeout)
