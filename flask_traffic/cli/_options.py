"""What the ``flask traffic`` commands share: the ``--since``/``--until`` and
``--store`` options, and finding the current app's stores."""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import click
from flask import current_app

from ..extension import TrafficState, get_state
from ..query import iso_text, parse_moment
from ..stores.base import Sink, Store

__all__ = [
    "FLUSH_TIMEOUT",
    "READ_DEFAULT",
    "app_sinks",
    "app_state",
    "check_window",
    "named_sink",
    "parse_moment_option",
    "pick_store",
    "store_option",
    "window_options",
]

#: Seconds a command waits for a store to write what is queued before reading it.
FLUSH_TIMEOUT = 10.0

#: The ``[default: ...]`` of ``--store`` for the commands that read one store.
READ_DEFAULT = "the first store that can be read"


# -- --since / --until -----------------------------------------------------------


def _moment(text: str | None, param: str) -> datetime | None:
    # Every duration of one command goes back from the same moment, so
    # "--since 3h --until 1h" is two hours, not a few microseconds more
    # (which a summary then counts per hour, its edges rounded out).
    context = click.get_current_context(silent=True)
    meta: dict[str, t.Any] = {} if context is None else context.meta
    now = meta.setdefault("flask_traffic.now", datetime.now(timezone.utc))
    try:
        return parse_moment(text, param, now=now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


def parse_moment_option(text: str, param: str) -> datetime | None:
    """An option's moment (see :func:`~flask_traffic.query.parse_moment`), or
    a usage error naming ``param``."""
    return _moment(text, param)


def window_options(since_default: str | None) -> Callable[[t.Any], t.Any]:
    """A decorator adding ``--since`` and ``--until`` to a command, which then
    receives them as ``since`` and ``until`` (aware datetimes or ``None``).

    :param since_default: the text ``--since`` takes when not given (``"24h"``),
        or ``None`` for no lower bound.
    """
    since_help = "Only requests at or after this moment"
    if since_default is not None:
        since_help += f" ('all' for every one) [default: {since_default}]"

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
        return _moment(value, f"'--{param.name}'")

    def add(function: t.Any) -> t.Any:
        function = click.option(
            "--until",
            metavar="WHEN",
            callback=convert,
            help="Only requests before this moment.",
        )(function)
        return click.option(
            "--since",
            metavar="WHEN",
            default=since_default,
            callback=convert,
            help=since_help + ".",
        )(function)

    return add


def check_window(since: datetime | None, until: datetime | None) -> None:
    """Fail with a usage error when ``since`` is after ``until``."""
    if since is not None and until is not None and since > until:
        raise click.UsageError(
            f"--since ({iso_text(since)}) is after --until ({iso_text(until)}); swap them."
        )


def store_option(default: str) -> Callable[[t.Any], t.Any]:
    """A decorator adding ``--store NAME``, received as ``store_name``.

    :param default: what the help says is used without it.
    """
    return click.option(
        "--store",
        "store_name",
        metavar="NAME",
        default=None,
        help=f"The store to use, by name (an unknown name lists them) [default: {default}].",
    )


# -- finding the app's stores ---------------------------------------------------------


def app_state() -> TrafficState:
    """The current app's traffic state; a :class:`click.ClickException` when
    the app is not set up or has no store."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        state = get_state(app)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    if not state.sinks:
        raise click.ClickException(
            f"The app {app.name!r} has no traffic stores: pass stores=[JSONStore(), ...] "
            f"to init_app."
        )
    return state


def app_sinks() -> list[Sink]:
    """Every store and exporter of the current app, in ``init_app`` order;
    a :class:`click.ClickException` when the app has none."""
    return list(app_state().sinks)


def _names(stores: Sequence[Sink]) -> str:
    return ", ".join(store.name for store in stores)


def named_sink(stores: Sequence[Sink], name: str) -> Sink:
    """The one of ``stores`` called ``name``; a bad ``--store`` listing them if none is."""
    for store in stores:
        if store.name == name:
            return store
    raise click.BadParameter(
        f"no store is named {name!r}; this app's stores are: {_names(stores)}.",
        param_hint="'--store'",
    )


def pick_store(name: str | None) -> tuple[Store, str | None]:
    """The store to read and, when it was chosen among several, a note saying so.

    :param name: the ``--store`` given, or ``None`` for the first readable store.
    """
    stores = app_sinks()
    if name is not None:
        named = named_sink(stores, name)
        if not isinstance(named, Store):
            raise click.ClickException(
                f"{named.name}: {named.name} keeps no records to read back. It only sends "
                f"them on; name a store with --store NAME."
            )
        return named, None
    for store in stores:
        if isinstance(store, Store):
            if len(stores) == 1:
                return store, None
            return store, (
                f"the first of this app's stores that can be read ({_names(stores)}); "
                f"choose another with --store NAME"
            )
    raise click.ClickException(
        f"None of this app's stores ({_names(stores)}) keeps records to read back: "
        f"add a JSONStore, CSVStore or SQLStore to stores=."
    )
