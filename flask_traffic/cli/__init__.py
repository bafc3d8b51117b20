"""The ``flask traffic`` commands: look at what the stores recorded.

:meth:`Traffic.init_app <flask_traffic.Traffic.init_app>` adds the group to
every app it sets up, so with ``FLASK_APP`` (or ``--app``) pointing at the
app::

    flask traffic stats --since 7d          # totals, errors, routes, top lists
    flask traffic stats --json              # the same, as store.summary() gives it
    flask traffic tail -n 50 --follow       # the newest requests, then new ones
    flask traffic export --format csv -o traffic.csv --since 2026-11-01
    flask traffic prune                     # apply max_age / max_records now
    flask traffic rollup --rebuild          # build the rollups again from the records
    flask traffic status                    # can each store be reached? (exit 1 if not)
    flask traffic dashboard-password        # a password hash for the dashboard

The commands run in the app context and find the app's stores in
``app.extensions["traffic"]``, so one :class:`~flask_traffic.Traffic` can
serve several apps. They read through the store API only
(:meth:`~flask_traffic.stores.Store.summary`,
:meth:`~flask_traffic.stores.Store.read`,
:meth:`~flask_traffic.stores.Store.scan`,
:meth:`~flask_traffic.stores.Store.prune`), so they work with every store
that can read back; a store that only sends records on (an exporter) is
skipped unless named with ``--store``.

This module holds the group and its commands, each a thin
``@traffic_cli.command(...)`` function; what they do lives beside it:
:mod:`._options` (``--since``/``--until``, ``--store``, finding the stores),
:mod:`.render` (terminal text), :mod:`.follow` (``tail --follow``) and
:mod:`.export` (the CSV and JSON Lines writers). A new command is one more
such function here, its work in a module of its own.
"""

from __future__ import annotations

import json
from datetime import datetime

import click
from flask.cli import AppGroup

from ..dashboard.password import dashboard_password_command
from ..stores.base import Store
from ._options import (
    READ_DEFAULT,
    app_sinks,
    app_state,
    check_window,
    named_sink,
    pick_store,
    store_option,
    window_options,
)
from .export import WRITERS, export_store, format_of
from .follow import Follower
from .render import duration_text, log_line, records_text, summary_lines
from .rollup import FoldCounter, parse_option
from .status import check_sinks, status_json, status_lines

__all__ = ["traffic_cli"]

traffic_cli = AppGroup(
    "traffic",
    help=(
        "Look at the recorded traffic: stats, tail, export, prune, rollup, status. Times "
        "are UTC; "
        "--since/--until take a duration back from now (30m, 24h, 7d, 2w), a date "
        "(2026-11-25) or ISO 8601 text (2026-11-25T08:00:00+01:00)."
    ),
)


# `flask traffic dashboard-password`: its work is the dashboard's.
traffic_cli.add_command(dashboard_password_command)


# -- flask traffic stats ------------------------------------------------------------------


@traffic_cli.command("stats")
@window_options("24h")
@store_option(READ_DEFAULT)
@click.option("--json", "as_json", is_flag=True, help="Print store.summary() as JSON instead.")
def stats_command(
    since: datetime | None, until: datetime | None, store_name: str | None, as_json: bool
) -> None:
    """Totals, error rate, requests over time, routes with response-time
    percentiles, top paths, referrers, browsers and platforms, and unique
    visitors: the store's summary() of the window (the last 24 hours unless
    --since says otherwise)."""
    check_window(since, until)
    store, note = pick_store(store_name)
    summary = store.summary(since, until)
    if as_json:
        # ASCII: lone surrogates from undecodable headers stay valid JSON.
        click.echo(json.dumps(summary, indent=2, ensure_ascii=True))
    else:
        click.echo("\n".join(summary_lines(summary, store.name, note)))


# -- flask traffic tail -------------------------------------------------------------------


@traffic_cli.command("tail")
@click.option(
    "-n",
    "--lines",
    "count",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many of the newest requests to print.",
)
@click.option("-f", "--follow", is_flag=True, help="Then keep printing new requests; Ctrl-C stops.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds between looks at the store with --follow.",
)
@click.option("--max-polls", type=click.IntRange(min=0), default=None, hidden=True)
@store_option(READ_DEFAULT)
def tail_command(
    count: int, follow: bool, interval: float, max_polls: int | None, store_name: str | None
) -> None:
    """The newest requests, oldest of them first, one per line: start time
    (UTC), method, status, response time, path, and the exception if one was
    raised."""
    store, note = pick_store(store_name)
    if follow and "request_date" not in store.fields:
        raise click.UsageError(
            f"--follow needs the request_date field, which {store.name} leaves out."
        )
    if note:
        click.echo(f"==> {store.name} <== ({note})", err=True)
    # Started before the first lines are read, so that a request
    # recorded in between is printed once: with them or after them.
    follower = Follower(store) if follow else None
    if follower is not None:
        follower.start()
    for row in reversed(store.read(count) if count else []):
        click.echo(log_line(row))
        if follower is not None:
            follower.mark(row)
    if follower is None:
        return
    # echo flushes: lines show at once.
    follower.follow(interval, lambda row: click.echo(log_line(row)), max_polls)


# -- flask traffic export -----------------------------------------------------------------


@traffic_cli.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(WRITERS)),
    default=None,
    help="csv (RFC 4180, a header of the store's fields) or jsonl (an object per line); "
    "by default from the file's suffix (.csv; .jsonl, .ndjson or .json).",
)
@window_options(None)
@store_option(READ_DEFAULT)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    help="The file to write ('-' for standard output); replaced once the export is done.",
)
def export_command(
    fmt: str | None,
    since: datetime | None,
    until: datetime | None,
    store_name: str | None,
    output: str,
) -> None:
    """Write the store's records, oldest first, to a CSV or JSON Lines file.

    Records are streamed from the store, never all held in memory. In CSV,
    cells a spreadsheet would run as a formula (starting with = + - @, a tab
    or a carriage return), and cells starting with an apostrophe, get a
    leading apostrophe, as CSVStore writes them; an empty text is a lone
    apostrophe and a missing value an empty cell.
    """
    if fmt is None:
        fmt = format_of(output)
        if fmt is None:
            raise click.UsageError("Say which format to write: --format csv or --format jsonl.")
    check_window(since, until)
    store, note = pick_store(store_name)
    if note:
        click.echo(f"Exporting {store.name}: {note}.", err=True)
    written = export_store(store, fmt, output, since, until)
    where = "standard output" if output == "-" else output
    click.echo(
        f"Wrote {records_text(written)} from {store.name} to {where} ({fmt}).",
        err=output == "-",
    )


# -- flask traffic prune ------------------------------------------------------------------


@traffic_cli.command("prune")
@store_option("every store")
def prune_command(store_name: str | None) -> None:
    """Apply the stores' max_age and max_records now, rather than at the
    worker's next retention pass; print how many records each removed."""
    stores = app_sinks()
    chosen = [named_sink(stores, store_name)] if store_name is not None else stores
    failed = 0
    for store in chosen:
        limits = []
        if not isinstance(store, Store):
            click.echo(f"{store.name}: keeps no records, nothing to prune.")
            continue
        if store.max_age is not None:
            limits.append(f"max_age {duration_text(store.max_age)}")
        if store.max_records is not None:
            limits.append(f"max_records {store.max_records:,}")
        if not limits:
            click.echo(f"{store.name}: no max_age or max_records, nothing to prune.")
            continue
        try:
            removed = store.prune()
        except Exception as exc:
            # One store failing (a database away) must not keep the others as they are.
            click.echo(f"{store.name}: prune failed: {type(exc).__name__}: {exc}", err=True)
            failed += 1
            continue
        click.echo(f"{store.name}: removed {records_text(removed)} ({', '.join(limits)}).")
    if failed:
        raise click.exceptions.Exit(1)


# -- flask traffic rollup -----------------------------------------------------------------


@traffic_cli.command("rollup")
@click.option(
    "--rebuild",
    is_flag=True,
    help="Drop the rollups (from --since's day on) and build them again from the records.",
)
@click.option(
    "--since",
    metavar="WHEN",
    default=None,
    callback=lambda ctx, param, value: None if value is None else parse_option(value, "--since"),
    help="With --rebuild: from this moment's UTC day on [default: all of them].",
)
@store_option("every store that keeps rollups")
def rollup_command(rebuild: bool, since: datetime | None, store_name: str | None) -> None:
    """Fold the records written since the worker's last pass into the
    stores' rollups now (and finish a rebuild that was interrupted), or with
    --rebuild build them again from the stored records. Safe while the app
    writes; run it again to go on after an interruption."""
    if since is not None and not rebuild:
        raise click.UsageError("--since goes with --rebuild.")
    stores = app_sinks()
    chosen = [named_sink(stores, store_name)] if store_name is not None else stores
    failed = 0
    for store in chosen:
        if not isinstance(store, Store) or not store.keeps_rollups:
            if store_name is not None:
                raise click.UsageError(
                    store.no_rollups_reason()
                    if isinstance(store, Store)
                    else f"{store.name} keeps no rollups: it sends only, keeping no records."
                )
            continue
        counter = FoldCounter(store.name)
        try:
            done = store.rebuild_rollups(since, counter) if rebuild else store.fold(counter)
        except Exception as exc:
            counter.end()
            click.echo(f"{store.name}: rollup failed: {type(exc).__name__}: {exc}", err=True)
            failed += 1
            continue
        counter.end()
        what = "rebuilt from" if rebuild else "folded"
        click.echo(f"{store.name}: {what} {records_text(done)}.")
    if failed:
        raise click.exceptions.Exit(1)


# -- flask traffic status -----------------------------------------------------------------


@traffic_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON instead.")
def status_command(as_json: bool) -> None:
    """Check that every store can be read from here, and count the records
    each has set aside in the dead-letter file; exit with status 1 when a
    store is failing, for a cron job or a health check. Stores that keep
    rollups also say how many records wait to be folded, since when, and
    how far a rebuild is.

    The counters of a running server's processes are theirs: see
    traffic.health(app) for an app's own health endpoint."""
    state = app_state()
    statuses = check_sinks(state.sinks, state.dead_letter_path)
    if as_json:
        found = {status.name: status_json(status) for status in statuses}
        click.echo(json.dumps(found, indent=2, ensure_ascii=True))
    else:
        click.echo("\n".join(status_lines(statuses, state.dead_letter_path)))
    if any(status.failing for status in statuses):
        raise click.exceptions.Exit(1)
