"""``Dashboard``: mounts the traffic dashboard on an app, behind a login."""

from __future__ import annotations

import logging
import typing as t

from flask import Flask

from ..extension import get_state
from ..stores.base import Store
from ._auth import PASSWORD_CONFIG_KEY, Authorize, PasswordCheck
from ._state import EXTENSION_KEY, DashboardState
from ._views import make_blueprint

__all__ = ["DEFAULT_URL_PREFIX", "Dashboard"]

logger = logging.getLogger("flask_traffic")

#: Where the dashboard is mounted unless ``url_prefix=`` says otherwise.
DEFAULT_URL_PREFIX = "/traffic/dashboard"

StoreArg = Store | str | None


def _pick_store(app: Flask, store: StoreArg) -> Store:
    try:
        state = get_state(app)
    except RuntimeError:
        raise RuntimeError(
            f"The dashboard reads the traffic of {app.name!r}, which does not record it yet: "
            f"call traffic.init_app(app, stores=[...]) before dashboard.init_app(app)."
        ) from None
    if store is None:
        if not state.stores:
            raise ValueError(
                f"The app {app.name!r} has no store the dashboard can read; give "
                f"traffic.init_app a JSONStore, CSVStore, SQLStore, RedisStore or MemoryStore."
            )
        return state.stores[0]
    if isinstance(store, str):
        found = state.sink(store)
        if not isinstance(found, Store):
            raise ValueError(f"{store!r} keeps nothing to read back; pick a store= that does.")
        return found
    if not isinstance(store, Store) or store not in state.stores:
        raise ValueError(
            f"store must be one of the app's readable stores (or its name), got {store!r}."
        )
    return store


def _check_prefix(url_prefix: str) -> str:
    if not isinstance(url_prefix, str) or not url_prefix.startswith("/") or url_prefix == "/":
        raise ValueError(
            f"url_prefix must be a path such as '/traffic/dashboard', got {url_prefix!r}."
        )
    return url_prefix.rstrip("/")


def _warn_if_open(app: Flask, authorize: Authorize, url_prefix: str) -> None:
    """Warn once, at start, when ``authorize`` lets in a request that carries
    no login at all (``lambda: True``), unless the app is in debug or testing."""
    if app.debug or app.testing:
        return
    try:
        with app.test_request_context(url_prefix + "/"):
            allows_anyone = bool(authorize())
    except Exception:
        # It needs more than a bare request (a database, a session): not open.
        return
    if allows_anyone:
        logger.warning(
            "The traffic dashboard at %s lets anyone in: its authorize= allows requests "
            "with no login. Check a login in authorize=, or set %s.",
            url_prefix,
            PASSWORD_CONFIG_KEY,
        )


class Dashboard:
    """The traffic dashboard: a page and a read-only JSON API, under
    ``url_prefix``, behind a login.

    ::

        dashboard = Dashboard()

        def create_app():
            app = Flask(__name__)
            traffic.init_app(app, stores=[store])
            dashboard.init_app(app, authorize=lambda: current_user.is_admin)

    One ``Dashboard`` can serve many apps; the arguments of :meth:`init_app`
    default to the constructor's.

    :param app: an app to set up now; otherwise call :meth:`init_app`.
    :param store: the store to show: one of the app's readable stores, or its
        name; by default the app's first readable store.
    :param url_prefix: where to mount it.
    :param authorize: a callable with no arguments, called in the request
        context of every dashboard request; falsy answers 403. Without it the
        built-in HTTP Basic login checks ``TRAFFIC_DASHBOARD_PASSWORD_HASH``
        (refusing with a 401 challenge).
    :param record_self: record the dashboard's own requests in the app's stores.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        store: StoreArg = None,
        url_prefix: str = DEFAULT_URL_PREFIX,
        authorize: Authorize | None = None,
        record_self: bool = False,
    ) -> None:
        self._defaults: dict[str, t.Any] = {
            "store": store,
            "url_prefix": url_prefix,
            "authorize": authorize,
            "record_self": record_self,
        }
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def init_app(
        self,
        app: Flask,
        *,
        store: StoreArg = None,
        url_prefix: str | None = None,
        authorize: Authorize | None = None,
        record_self: bool | None = None,
    ) -> None:
        """Mount the dashboard on ``app``; call it after ``traffic.init_app(app)``.

        :raises RuntimeError: if ``app`` records no traffic yet, or already
            has a dashboard.
        :raises ValueError: with no way to log in (neither ``authorize`` nor
            ``TRAFFIC_DASHBOARD_PASSWORD_HASH``), or a bad argument.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'Dashboard' instance has already been registered on this Flask app. "
                "Import and use that instance instead."
            )
        defaults = self._defaults
        chosen = _pick_store(app, store if store is not None else defaults["store"])
        prefix = _check_prefix(url_prefix if url_prefix is not None else defaults["url_prefix"])
        check = authorize if authorize is not None else defaults["authorize"]
        record = record_self if record_self is not None else defaults["record_self"]
        if not isinstance(record, bool):
            raise TypeError(f"record_self must be True or False, got {record!r}.")
        app.config.setdefault(PASSWORD_CONFIG_KEY, None)
        password_hash = app.config[PASSWORD_CONFIG_KEY]
        uses_password = check is None
        if check is None:
            if not password_hash:
                raise ValueError(
                    f"The traffic dashboard has no way to log in: pass authorize= (a callable "
                    f"that checks your app's login) or set {PASSWORD_CONFIG_KEY} (make one "
                    f"with `flask traffic dashboard-password`)."
                )
            check = PasswordCheck(password_hash)
        elif not callable(check):
            raise TypeError(f"authorize must be a callable with no arguments, got {check!r}.")
        else:
            _warn_if_open(app, check, prefix)
        app.extensions[EXTENSION_KEY] = DashboardState(
            store=chosen,
            url_prefix=prefix,
            authorize=check,
            uses_password=uses_password,
            record_self=record,
        )
        app.register_blueprint(make_blueprint(), url_prefix=prefix)
