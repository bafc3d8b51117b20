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
import hashlib
import io
import json
import math
import os
import re
import sys
import time
import typing as t
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from .dashboard.password import dashboard_password_command
from .extension import TrafficState, get_state
from .query import iso_text, parse_moment
from .stores.base import Sink, Store
from .stores.csvfile import escape_formula

__all__ = ["traffic_cli"]

_UTC = timezone.utc
_FLUSH_TIMEOUT = 10.0

traffic_cli = AppGroup(
    "traffic",
    help=(
        "Look at the recorded traffic: stats, tail, export, prune. Times are UTC; "
        "--since/--until take a duration back from now (30m, 24h, 7d, 2w), a date "
        "(2026-11-25) or ISO 8601 text (2026-11-25T08:00:00+01:00)."
    ),
)
traffic_cli.add_command(dashboard_password_command)


# -- --since / --until -----------------------------------------------------------


def _moment(text: str | None, param: str) -> datetime | None:
    try:
        return parse_moment(text, param)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


def _window_options(since_default: str | None) -> Callable[[t.Any], t.Any]:
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


def _check_window(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since > until:
        raise click.UsageError(
            f"--since ({iso_text(since)}) is after --until ({iso_text(until)}); swap them."
        )


def _store_option(default: str) -> Callable[[t.Any], t.Any]:
    return click.option(
        "--store",
        "store_name",
        metavar="NAME",
        default=None,
        help=f"The store to use, by name (an unknown name lists them) [default: {default}].",
    )


_READ_DEFAULT = "the first store that can be read"


# -- finding the app's stores ---------------------------------------------------------


def _app_state() -> TrafficState:
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


def _app_stores() -> list[Sink]:
    return list(_app_state().sinks)


def _names(stores: Sequence[Sink]) -> str:
    return ", ".join(store.name for store in stores)


def _named(stores: Sequence[Sink], name: str) -> Sink:
    for store in stores:
        if store.name == name:
            return store
    raise click.BadParameter(
        f"no store is named {name!r}; this app's stores are: {_names(stores)}.",
        param_hint="'--store'",
    )


def _pick_store(name: str | None) -> tuple[Store, str | None]:
    """The store to read and, when it was chosen among several, a note saying so."""
    stores = _app_stores()
    if name is not None:
        named = _named(stores, name)
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


# -- text for terminals -----------------------------------------------------------------

# Request paths, referrers and user agents come from clients: control
# characters (escape sequences), line breaks and lone surrogates (undecodable
# bytes) are shown escaped, never sent to the terminal.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _safe(value: t.Any, width: int | None = None) -> str:
    if value is None:
        return "-"
    text = _UNSAFE.sub(
        lambda found: found.group().encode("unicode_escape", "backslashreplace").decode("ascii"),
        str(value),
    )
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def _short_date(text: str | None) -> str:
    """ISO text as ``2026-11-25 08:00:00`` (UTC)."""
    if not text:
        return "-"
    return f"{text[:10]} {text[11:19]}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [len(title) for title in header]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


# -- flask traffic stats ------------------------------------------------------------------

_BARS = "▁▂▃▄▅▆▇█"
_ASCII_BARS = "_.-=+*#@"
_SPARK_WIDTH = 60
_UNIT_STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
_LIST_BUCKETS = 12
_LIST_ROUTES = 15
_LIST_TOP = 5
_TOP_TITLES = {
    "top_paths": "Top paths",
    "top_referrers": "Top referrers",
    "top_browsers": "Top browsers",
    "top_platforms": "Top platforms",
}


def _bars() -> str:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        _BARS.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return _ASCII_BARS
    return _BARS


def _floor(moment: datetime, unit: str) -> datetime:
    if unit == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(second=0, microsecond=0)


def _bucket_label(start: str, unit: str) -> str:
    return start[:10] if unit == "day" else f"{start[:10]} {start[11:16]}"


def _sparkline(summary: Mapping[str, t.Any]) -> list[str]:
    """Requests per bucket across the window, empty buckets included, as one line."""
    buckets = summary["requests_per_bucket"]
    unit = summary["bucket"]
    step = _UNIT_STEP[unit]
    counts = {datetime.fromisoformat(item["start"]): item["count"] for item in buckets}
    first, last = min(counts), max(counts)
    if summary["since"] is not None:
        first = min(first, _floor(datetime.fromisoformat(summary["since"]), unit))
    if summary["until"] is not None:
        end = datetime.fromisoformat(summary["until"]) - timedelta(microseconds=1)
        last = max(last, _floor(end, unit))
    slots = int((last - first) / step) + 1
    # Several buckets share a mark when the window has more than fit a line.
    group = math.ceil(slots / _SPARK_WIDTH)
    columns = [0] * math.ceil(slots / group)
    for start, count in counts.items():
        columns[int((start - first) / step) // group] += count
    peak = max(columns)
    bars = _bars()
    line = "".join(
        " " if not count else bars[max(1, math.ceil(count / peak * len(bars))) - 1]
        for count in columns
    )
    busiest = max(buckets, key=lambda item: (item["count"], item["start"]))
    per = f"{group} {unit}s" if group > 1 else unit
    return [
        f"  |{line}|",
        f"  {_bucket_label(iso_text(first), unit)} to {_bucket_label(iso_text(last), unit)}, "
        f"a mark per {per}",
        f"  busiest {unit}: {_bucket_label(busiest['start'], unit)}, "
        f"{_count(busiest['count'])} requests",
    ]


def _summary_lines(summary: Mapping[str, t.Any], store: Store, note: str | None) -> list[str]:
    since, until = summary["since"], summary["until"]
    if since is None and until is None:
        window = "all recorded requests"
    else:
        start = f"{_short_date(since)} UTC" if since else "the first request"
        end = f"{_short_date(until)} UTC" if until else "now"
        window = f"from {start} to {end}"
    lines = [f"Traffic of {store.name}, {window}"]
    if note:
        lines.append(f"{store.name} is {note}.")
    lines.append("")
    total = summary["total"]
    if not total:
        lines.append("No requests recorded in this window.")
        return lines
    facts = [("Requests", _count(total) + (" (sampled: estimates)" if summary["sampled"] else ""))]
    if summary["errors"] is not None:
        facts.append(("Errors (5xx)", f"{_count(summary['errors'])} ({summary['error_rate']:.2%})"))
    if summary["status_classes"] is not None:
        facts.append(
            (
                "Status",
                "  ".join(
                    f"{name} {_count(count)}" for name, count in summary["status_classes"].items()
                ),
            )
        )
    if summary["first"] is not None:
        facts.append(
            ("First, last", f"{_short_date(summary['first'])}, {_short_date(summary['last'])}")
        )
    if summary["unique_visitors"] is not None:
        facts.append(("Unique visitors", _count(summary["unique_visitors"])))
    width = max(len(title) for title, _ in facts)
    lines.extend(f"{title.ljust(width)}  {value}" for title, value in facts)

    buckets = summary["requests_per_bucket"]
    if buckets:
        lines += ["", f"Requests per {summary['bucket']}", *_sparkline(summary)]
        if 1 < len(buckets) <= _LIST_BUCKETS:
            lines += _table(
                ["Start", "Requests"],
                [
                    [_bucket_label(b["start"], summary["bucket"]), _count(b["count"])]
                    for b in buckets
                ],
                right={1},
            )

    routes = summary["routes"]
    if routes:
        shown = routes[:_LIST_ROUTES]
        lines += ["", "Routes (response time in ms)"]
        lines += _table(
            ["Route", "Requests", "p50", "p95", "p99"],
            [
                [
                    "(no route)" if item["route"] is None else _safe(item["route"], 60),
                    _count(item["count"]),
                    _ms(item["p50"]),
                    _ms(item["p95"]),
                    _ms(item["p99"]),
                ]
                for item in shown
            ],
            right={1, 2, 3, 4},
        )
        if len(routes) > len(shown):
            lines.append(f"  ... and {len(routes) - len(shown)} more (--json has them all)")

    for key, title in _TOP_TITLES.items():
        top = summary[key]
        if not top:
            continue
        lines += ["", title]
        lines += _table(
            ["Value", "Requests"],
            [
                [_safe(item["value"], 70) if item["value"] else "(empty)", _count(item["count"])]
                for item in top[:_LIST_TOP]
            ],
            right={1},
        )
    return lines


@traffic_cli.command("stats")
@_window_options("24h")
@_store_option(_READ_DEFAULT)
@click.option("--json", "as_json", is_flag=True, help="Print store.summary() as JSON instead.")
def stats_command(
    since: datetime | None, until: datetime | None, store_name: str | None, as_json: bool
) -> None:
    """Totals, error rate, requests over time, routes with response-time
    percentiles, top paths, referrers, browsers and platforms, and unique
    visitors: the store's summary() of the window (the last 24 hours unless
    --since says otherwise)."""
    _check_window(since, until)
    store, note = _pick_store(store_name)
    summary = store.summary(since, until)
    if as_json:
        # ASCII: lone surrogates from undecodable headers stay valid JSON.
        click.echo(json.dumps(summary, indent=2, ensure_ascii=True))
    else:
        click.echo("\n".join(_summary_lines(summary, store, note)))


# -- flask traffic tail -------------------------------------------------------------------

# How far back --follow looks again at each poll: a request is dated when it
# starts and written when it ends (or when another process's batch lands), so
# it can arrive after newer ones.
_FOLLOW_LOOKBACK = timedelta(seconds=30)
# Module-level so a test can run the polls without waiting.
_sleep = time.sleep


def _log_line(row: Mapping[str, t.Any]) -> str:
    date = row.get("request_date")
    stamp = f"{date[:10]}T{date[11:23]}Z" if isinstance(date, str) else "-"
    status = row.get("response_status_code")
    ms = row.get("response_time")
    line = (
        f"{stamp}  {_safe(row.get('request_method')):<7} {_safe(status):>3} "
        f"{(_ms(ms) + ' ms') if ms is not None else '-':>11}  {_safe(row.get('request_path'))}"
    )
    exception = row.get("response_exception")
    if exception:
        line += f"  ! {_safe(exception, 120)}"
    return line


def _row_key(row: Mapping[str, t.Any]) -> bytes:
    text = json.dumps(row, ensure_ascii=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode("ascii"), digest_size=16).digest()


class _Follower:
    """Prints the records that show up in a store, each once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Rows already seen within the look-back window: key -> request_date.
        self.seen: dict[bytes, str] = {}
        self.newest: str | None = None

    def _since(self) -> str | None:
        if self.newest is None:
            return None
        return iso_text(datetime.fromisoformat(self.newest) - _FOLLOW_LOOKBACK)

    def _rows(self) -> Iterator[dict[str, t.Any]]:
        store = self.store
        store.flush(_FLUSH_TIMEOUT)
        return store.scan(store.query(None, since=self._since()), oldest_first=True)

    def start(self) -> None:
        """Take what is there now as seen."""
        newest = self.store.read(1)
        self.newest = newest[0].get("request_date") if newest else None
        for row in self._rows():
            self.mark(row)

    def mark(self, row: Mapping[str, t.Any]) -> bool:
        """Take ``row`` as seen; ``False`` if it already was."""
        key = _row_key(row)
        if key in self.seen:
            return False
        # A row without a date ("" sorts first) is forgotten at the next poll.
        date = row.get("request_date") or ""
        self.seen[key] = date
        if date and (self.newest is None or date > self.newest):
            self.newest = date
        return True

    def poll(self) -> list[dict[str, t.Any]]:
        """The rows not seen before, in the order the store gives them."""
        fresh = [row for row in self._rows() if self.mark(row)]
        cutoff = self._since()
        if cutoff is not None:
            self.seen = {key: date for key, date in self.seen.items() if date >= cutoff}
        return fresh


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
@_store_option(_READ_DEFAULT)
def tail_command(
    count: int, follow: bool, interval: float, max_polls: int | None, store_name: str | None
) -> None:
    """The newest requests, oldest of them first, one per line: start time
    (UTC), method, status, response time, path, and the exception if one was
    raised."""
    store, note = _pick_store(store_name)
    if follow and "request_date" not in store.fields:
        raise click.UsageError(
            f"--follow needs the request_date field, which {store.name} leaves out."
        )
    if note:
        click.echo(f"==> {store.name} <== ({note})", err=True)
    # Started before the first lines are read, so that a request
    # recorded in between is printed once: with them or after them.
    follower = _Follower(store) if follow else None
    if follower is not None:
        follower.start()
    for row in reversed(store.read(count) if count else []):
        click.echo(_log_line(row))
        if follower is not None:
            follower.mark(row)
    if follower is None:
        return
    polls = 0
    try:
        while max_polls is None or polls < max_polls:
            _sleep(interval)
            polls += 1
            for row in follower.poll():
                click.echo(_log_line(row))  # echo flushes: lines show at once
    except KeyboardInterrupt:
        pass


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
@_window_options(None)
@_store_option(_READ_DEFAULT)
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
    _check_window(since, until)
    store, note = _pick_store(store_name)
    err = sys.stderr
    if note:
        click.echo(f"Exporting {store.name}: {note}.", err=True)
    write = _write_csv if fmt == "csv" else _write_jsonl
    destination = _Destination(output)
    text: io.TextIOWrapper | None = None
    try:
        query = store.query(None, since=since, until=until)
        store.flush(_FLUSH_TIMEOUT)
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


def _duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return str(value)


@traffic_cli.command("prune")
@_store_option("every store")
def prune_command(store_name: str | None) -> None:
    """Apply the stores' max_age and max_records now, rather than at the
    worker's next retention pass; print how many records each removed."""
    stores = _app_stores()
    chosen = [_named(stores, store_name)] if store_name is not None else stores
    failed = 0
    for store in chosen:
        limits = []
        if not isinstance(store, Store):
            click.echo(f"{store.name}: keeps no records, nothing to prune.")
            continue
        if store.max_age is not None:
            limits.append(f"max_age {_duration(store.max_age)}")
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
