"""Text for terminals: safe strings, numbers, tables, the sparkline and the
lines of ``flask traffic stats``, ``tail`` and ``prune``.

Everything a client controls (paths, referrers, user agents, exceptions)
goes through :func:`safe_text` before it reaches a terminal.
"""

from __future__ import annotations

import math
import re
import sys
import typing as t
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from ..query import iso_text

__all__ = [
    "count_text",
    "duration_text",
    "log_line",
    "ms_text",
    "records_text",
    "safe_text",
    "short_date",
    "sparkline",
    "summary_lines",
    "table",
]

# Request paths, referrers and user agents come from clients: control
# characters (escape sequences), line breaks and lone surrogates (undecodable
# bytes) are shown escaped, never sent to the terminal.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

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


def safe_text(value: t.Any, width: int | None = None) -> str:
    """``value`` as text a terminal only shows: control characters, line
    breaks and lone surrogates escaped, ``None`` as ``-``.

    :param value: anything; it is shown as ``str(value)``.
    :param width: cut longer text to this many characters, the last one ``…``.
    """
    if value is None:
        return "-"
    text = _UNSAFE.sub(
        lambda found: found.group().encode("unicode_escape", "backslashreplace").decode("ascii"),
        str(value),
    )
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def count_text(value: float | None) -> str:
    """A count with thousands separators (``12,345``), ``-`` for ``None``."""
    return "-" if value is None else f"{value:,.0f}"


def records_text(count: int) -> str:
    """``1 record``, ``12,345 records``."""
    return f"{count:,} record{'s' if count != 1 else ''}"


def ms_text(value: float | None) -> str:
    """Milliseconds: one decimal from 10 up, two below; ``-`` for ``None``."""
    if value is None:
        return "-"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def short_date(text: str | None) -> str:
    """ISO text as ``2026-11-25 08:00:00`` (UTC); ``-`` when there is none."""
    if not text:
        return "-"
    return f"{text[:10]} {text[11:19]}"


def duration_text(value: timedelta) -> str:
    """A duration in its largest whole unit (``1w``, ``36h``, ``90s``), else as
    :class:`~datetime.timedelta` prints it."""
    seconds = value.total_seconds()
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Lines of a table indented by two spaces, columns as wide as their
    widest cell.

    :param header: the column titles.
    :param rows: the cells, already text, as many per row as titles.
    :param right: the indexes of the columns aligned right (numbers).
    """
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


def sparkline(summary: Mapping[str, t.Any]) -> list[str]:
    """Requests per bucket across the window, empty buckets included, as one
    line, then the span it covers and the busiest bucket.

    :param summary: a :meth:`~flask_traffic.stores.Store.summary` with at
        least one bucket in ``requests_per_bucket``.
    """
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
        f"{count_text(busiest['count'])} requests",
    ]


def summary_lines(summary: Mapping[str, t.Any], store_name: str, note: str | None) -> list[str]:
    """What ``flask traffic stats`` prints for a summary.

    :param summary: what :meth:`~flask_traffic.stores.Store.summary` returned.
    :param store_name: the name of the store it came from.
    :param note: why this store was chosen, if it was chosen among several.
    """
    since, until = summary["since"], summary["until"]
    if since is None and until is None:
        window = "all recorded requests"
    else:
        start = f"{short_date(since)} UTC" if since else "the first request"
        end = f"{short_date(until)} UTC" if until else "now"
        window = f"from {start} to {end}"
    lines = [f"Traffic of {store_name}, {window}"]
    if note:
        lines.append(f"{store_name} is {note}.")
    lines.append("")
    total = summary["total"]
    if not total:
        lines.append("No requests recorded in this window.")
        return lines
    lines += _fact_lines(summary)
    lines += _bucket_lines(summary)
    lines += _route_lines(summary["routes"])
    for key, title in _TOP_TITLES.items():
        top = summary[key]
        if not top:
            continue
        lines += ["", title]
        lines += table(
            ["Value", "Requests"],
            [
                [
                    safe_text(item["value"], 70) if item["value"] else "(empty)",
                    count_text(item["count"]),
                ]
                for item in top[:_LIST_TOP]
            ],
            right={1},
        )
    return lines


def _fact_lines(summary: Mapping[str, t.Any]) -> list[str]:
    sampled = " (sampled: estimates)" if summary["sampled"] else ""
    facts = [("Requests", count_text(summary["total"]) + sampled)]
    if summary["errors"] is not None:
        facts.append(
            ("Errors (5xx)", f"{count_text(summary['errors'])} ({summary['error_rate']:.2%})")
        )
    if summary["status_classes"] is not None:
        facts.append(
            (
                "Status",
                "  ".join(
                    f"{name} {count_text(count)}"
                    for name, count in summary["status_classes"].items()
                ),
            )
        )
    if summary["first"] is not None:
        facts.append(
            ("First, last", f"{short_date(summary['first'])}, {short_date(summary['last'])}")
        )
    if summary["unique_visitors"] is not None:
        facts.append(("Unique visitors", count_text(summary["unique_visitors"])))
    width = max(len(title) for title, _ in facts)
    return [f"{title.ljust(width)}  {value}" for title, value in facts]


def _bucket_lines(summary: Mapping[str, t.Any]) -> list[str]:
    buckets = summary["requests_per_bucket"]
    if not buckets:
        return []
    unit = summary["bucket"]
    lines = ["", f"Requests per {unit}", *sparkline(summary)]
    if 1 < len(buckets) <= _LIST_BUCKETS:
        lines += table(
            ["Start", "Requests"],
            [[_bucket_label(b["start"], unit), count_text(b["count"])] for b in buckets],
            right={1},
        )
    return lines


def _route_lines(routes: Sequence[Mapping[str, t.Any]]) -> list[str]:
    if not routes:
        return []
    shown = routes[:_LIST_ROUTES]
    lines = ["", "Routes (response time in ms)"]
    lines += table(
        ["Route", "Requests", "p50", "p95", "p99"],
        [
            [
                "(no route)" if item["route"] is None else safe_text(item["route"], 60),
                count_text(item["count"]),
                ms_text(item["p50"]),
                ms_text(item["p95"]),
                ms_text(item["p99"]),
            ]
            for item in shown
        ],
        right={1, 2, 3, 4},
    )
    if len(routes) > len(shown):
        lines.append(f"  ... and {len(routes) - len(shown)} more (--json has them all)")
    return lines


def log_line(row: Mapping[str, t.Any]) -> str:
    """One record as ``flask traffic tail`` prints it: start time (UTC),
    method, status, response time, path, and the exception if one was raised."""
    date = row.get("request_date")
    stamp = f"{date[:10]}T{date[11:23]}Z" if isinstance(date, str) else "-"
    status = row.get("response_status_code")
    ms = row.get("response_time")
    line = (
        f"{stamp}  {safe_text(row.get('request_method')):<7} {safe_text(status):>3} "
        f"{(ms_text(ms) + ' ms') if ms is not None else '-':>11}  "
        f"{safe_text(row.get('request_path'))}"
    )
    exception = row.get("response_exception")
    if exception:
        line += f"  ! {safe_text(exception, 120)}"
    return line
