"""The ``flask traffic`` commands: look at what the stores recorded.

:meth:`Traffic.init_app <flask_traffic.Traffic.init_app>` adds the group to
every app it sets up, so with ``FLASK_APP`` (or ``--app``) pointing at the
app::

    flask traffic stats --since 7d          # totals, errors, routes, top lists
    flask traffic stats --json              # the same, as store.summary() gives it
    flask traffic tail -n 50 --follow       # the newest requests, then new ones
    flask traffic export --format csv -o traffic.csv --since 2026-11-01
    flask traffic prune                     # apply max_age / max_records now

The commands run in the app context and find the app's stores in
``app.extensions["traffic"]``, so one :class:`~flask_traffic.Traffic` can
serve several apps. They read through the store API only
(:meth:`~flask_traffic.stores.Store.summary`,
:meth:`~flask_traffic.stores.Store.read`,
:meth:`~flask_traffic.stores.Store.scan`,
:meth:`~flask_traffic.stores.Store.prune`), so they work with every store
that can read back; a store that only sends records on (an exporter) is
skipped unless named with ``--store``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import typing as t
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import click
from flask.cli import AppGroup

from ..stores.base import Store
from ..stores.csvfile import escape_formula
from ._options import (
    FLUSH_TIMEOUT,
    READ_DEFAULT,
    app_sinks,
    check_window,
    named_sink,
    pick_store,
    store_option,
    window_options,
)
from .follow import Follower
from .render import duration_text, log_line, summary_lines

__all__ = ["traffic_cli"]

traffic_cli = AppGroup(
    "traffic",
    help=(
        "Look at the recorded traffic: stats, tail, export, prune. Times are UTC; "
        "--since/--until take a duration back from now (30m, 24h, 7d, 2w), a date "
        "(2026-11-25) or ISO 8601 text (2026-11-25T08:00:00+01:00)."
    ),
)


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

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
# Records are written, and the progress bar advanced, this many at a time.
_CHUNK = 1000


def _csv_cell(value: t.Any) -> t.Any:
    # The rule CSVStore writes by: a cell a spreadsheet would run as a formula
    # gets a leading "'", as does one already starting with "'", and the
    # empty string is a lone "'" so that it differs from a missing value.
    if value is None:
        return ""
    if isinstance(value, str):
        return escape_formula(value)
    return value


def _write_csv(out: t.TextIO, fields: Sequence[str], rows: Iterable[Mapping[str, t.Any]]) -> int:
    writer = csv.writer(out)  # RFC 4180: minimal quoting, CRLF line ends
    writer.writerow(fields)
    written = 0
    for row in rows:
        writer.writerow([_csv_cell(row.get(name)) for name in fields])
        written += 1
    return written


def _write_jsonl(out: t.TextIO, fields: Sequence[str], rows: Iterable[Mapping[str, t.Any]]) -> int:
    dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
    written = 0
    # Lines go out a thousand at a time: one write() per line costs as much
    # as encoding it.
    lines: list[str] = []
    for row in rows:
        lines.append(dumps(row))
        if len(lines) == _CHUNK:
            out.write("\n".join(lines) + "\n")
            written += len(lines)
            lines.clear()
    if lines:
        out.write("\n".join(lines) + "\n")
        written += len(lines)
    return written


class _ReadFailed(Exception):
    """The store failed while the export was reading it (not while writing)."""


def _reading(rows: Iterable[dict[str, t.Any]]) -> Iterator[dict[str, t.Any]]:
    try:
        yield from rows
    except Exception as exc:
        raise _ReadFailed(f"{type(exc).__name__}: {exc}") from exc


def _counted(
    rows: Iterable[dict[str, t.Any]], advance: Callable[[int], None]
) -> Iterator[dict[str, t.Any]]:
    pending = 0
    for row in rows:
        yield row
        pending += 1
        if pending == _CHUNK:
            advance(pending)
            pending = 0
    advance(pending)


def _is_terminal(stream: t.IO[t.Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _open_text(binary: t.IO[bytes]) -> io.TextIOWrapper:
    # surrogatepass: a lone surrogate (undecodable header bytes) is kept, as
    # CSVStore keeps it, rather than failing the export.
    return io.TextIOWrapper(binary, encoding="utf-8", errors="surrogatepass", newline="")


class _Destination:
    """Where an export goes: standard output, or a file that only appears,
    whole, once the export succeeds (written beside it, then renamed)."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.temporary: Path | None = None
        self.binary: t.IO[bytes] | None = None

    def open(self) -> io.TextIOWrapper:
        if self.output == "-":
            # sys.stdout rather than click.get_binary_stream(), which Click
            # 8.5 deprecates; CliRunner swaps sys.stdout too.
            return _open_text(sys.stdout.buffer)
        path = Path(self.output)
        if path.exists() and not path.is_file():
            # A device or a pipe (/dev/stdout, a FIFO): nothing to rename.
            self.binary = path.open("wb")
        else:
            self.temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
            # os.open with 0o666 so the umask sets the mode, as for any new file.
            fd = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            self.binary = os.fdopen(fd, "wb")
        return _open_text(self.binary)

    def finish(self, text: io.TextIOWrapper) -> None:
        text.flush()
        if self.binary is None:
            text.detach()  # leave standard output open
            return
        text.close()
        if self.temporary is not None:
            os.replace(self.temporary, self.output)
            self.temporary = None

    def abandon(self, text: io.TextIOWrapper | None) -> None:
        # Called while an error is on its way out: report that one, not a
        # second one from flushing what is left.
        with contextlib.suppress(OSError, ValueError):
            if text is not None and self.binary is None:
                text.detach()
            elif text is not None:
                text.close()
        if self.binary is not None:
            with contextlib.suppress(OSError):
                self.binary.close()
        if self.temporary is not None:
            self.temporary.unlink(missing_ok=True)


@traffic_cli.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
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
        fmt = _FORMATS.get(Path(output).suffix.lower()) if output != "-" else None
        if fmt is None:
            raise click.UsageError("Say which format to write: --format csv or --format jsonl.")
    check_window(since, until)
    store, note = pick_store(store_name)
    err = sys.stderr
    if note:
        click.echo(f"Exporting {store.name}: {note}.", err=True)
    write = _write_csv if fmt == "csv" else _write_jsonl
    destination = _Destination(output)
    text: io.TextIOWrapper | None = None
    try:
        query = store.query(None, since=since, until=until)
        store.flush(FLUSH_TIMEOUT)
        rows = _reading(store.scan(query, oldest_first=True))
        text = destination.open()
        if output != "-" and _is_terminal(err):
            # The bar is advanced by _counted, a step per thousand
            # records, rather than iterated: redrawing it per record
            # would cost more than writing the record.
            with click.progressbar(
                rows, label=f"Exporting {store.name}", file=err, show_pos=True
            ) as bar:
                written = write(text, store.fields, _counted(rows, bar.update))
        else:
            written = write(text, store.fields, rows)
        destination.finish(text)
    except _ReadFailed as exc:
        destination.abandon(text)
        raise click.ClickException(f"{store.name} could not be read: {exc}") from None
    except OSError as exc:
        destination.abandon(text)
        if isinstance(exc, BrokenPipeError) and output == "-":
            raise  # `... -o - | head`: click ends quietly, as other tools do
        raise click.ClickException(f"Could not write {output}: {exc.strerror or exc}.") from None
    except BaseException:
        destination.abandon(text)
        raise
    where = "standard output" if output == "-" else output
    click.echo(
        f"Wrote {written:,} record{'s' if written != 1 else ''} from {store.name} "
        f"to {where} ({fmt}).",
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
        click.echo(
            f"{store.name}: removed {removed:,} record{'s' if removed != 1 else ''} "
            f"({', '.join(limits)})."
        )
    if failed:
        raise click.exceptions.Exit(1)
