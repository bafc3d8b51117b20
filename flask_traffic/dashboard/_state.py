"""What a dashboard keeps for one app, in ``app.extensions["traffic_dashboard"]``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from ..stores.base import Store
from ._auth import Authorize

__all__ = ["EXTENSION_KEY", "DashboardState", "current_state"]

#: Where :class:`DashboardState` is kept in ``app.extensions``.
EXTENSION_KEY = "traffic_dashboard"


@dataclass(frozen=True)
class DashboardState:
    """One app's dashboard.

    :param store: the store it reads.
    :param url_prefix: where it is mounted.
    :param authorize: called for every dashboard request; falsy refuses it.
    :param uses_password: whether ``authorize`` is the built-in HTTP Basic
        check (a refusal is then a 401 challenge, else a 403).
    :param record_self: whether the app's stores record the dashboard's own requests.
    """

    store: Store
    url_prefix: str
    authorize: Authorize
    uses_password: bool
    record_self: bool


def current_state(app: Flask | None = None) -> DashboardState:
    """The dashboard state of ``app`` (default: the current app)."""
    state: DashboardState = (app or current_app).extensions[EXTENSION_KEY]
    return state
