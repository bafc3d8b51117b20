"""``flask traffic status``: can each store be reached from here, and what has
it set aside."""

from __future__ import annotations

import json
import time
import typing as t
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .._health import describe_error, is_failing
from ..stores.base import Sink, Store
from .render import safe_text, table

__all__ = [
    "SinkStatus",
    "check_sinks",
    "count_dead_letters",
    "spool_on_disk",
    "spool_text",
    "status_json",
    "status_lines",
]


class SinkStatus(t.NamedTuple):
    """What ``flask traffic status`` found out about one store or exporter."""

    name: str
    #: ``True``/``False``: a read from this process worked or raised;
    #: ``None``: not checked (the sink keeps nothing to read back).
    reachable: bool | None
    #: ``"Type: message"`` of the failed read, or of the last failed write.
    error: str | None
    #: Seconds the read took.
    seconds: float | None
    #: Records of this store in the app's dead-letter file.
    dead_letters: int
    #: This process's :meth:`~flask_traffic.stores.Sink.stats`.
    stats: dict[str, t.Any]
    #: Spool files in the sink's spool folder (every process's) and their
    #: bytes; ``None`` when the sink does not spool.
    spool_on_disk: tuple[int, int] | None = None

    @property
    def failing(self) -> bool:
        return self.reachable is False or is_failing(self.stats)


def count_dead_letters(path: Path | None) -> Counter[str]:
    """How many records each store has set aside in the dead-letter file."""
    counts: Counter[str] = Counter()
    if path is None or not path.exists():
        return counts
    with path.open("rb") as lines:
        for line in lines:
            try:
                counts[str(json.loads(line)["store"])] += 1
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash
    return counts


def check_sinks(sinks: Sequence[Sink], dead_letter_path: Path | None) -> list[SinkStatus]:
    """Read one record from every store (which also writes what this
    process has queued), and count each one's dead letters."""
    letters = count_dead_letters(dead_letter_path)
    found = []
    for sink in sinks:
        reachable: bool | None = None
        error = seconds = None
        if isinstance(sink, Store):
            started = time.perf_counter()
            try:
                sink.read(1)
            except Exception as exc:
                reachable, error = False, describe_error(exc)
            else:
                reachable = True
            seconds = time.perf_counter() - started
        stats = sink.stats()
        if error is None and is_failing(stats):
            error = stats["last_error"]
        spool = None if sink.spool_folder is None else spool_on_disk(sink.spool_folder)
        found.append(
            SinkStatus(sink.name, reachable, error, seconds, letters[sink.name], stats, spool)
        )
    return found


def status_json(status: SinkStatus) -> dict[str, t.Any]:
    """What ``flask traffic status --json`` says of one sink; the spool's
    counts only for a sink that spools."""
    found: dict[str, t.Any] = {
        "reachable": status.reachable,
        "failing": status.failing,
        "error": status.error,
        "read_seconds": status.seconds,
        "dead_letters": status.dead_letters,
    }
    if status.spool_on_disk is not None:
        stats = status.stats
        for key in ("spooled", "spooled_bytes", "replayed", "replaying"):
            found[key] = stats[key]
        found["spool_files"], found["spool_files_bytes"] = status.spool_on_disk
    return found


def spool_on_disk(folder: Path) -> tuple[int, int]:
    """How many spool files ``folder`` holds, and their bytes."""
    sizes = []
    for path in folder.glob("*.spool"):
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            continue  # replayed and removed meanwhile
    return len(sizes), sum(sizes)


def spool_text(status: SinkStatus) -> str:
    """The ``Spool`` cell: records waiting in this process, files on disk, replay."""
    if status.spool_on_disk is None:
        return "-"
    files, size = status.spool_on_disk
    stats = status.stats
    text = f"{stats['spooled']:,} rec, {files} file(s) {size / 1024:,.0f} kB"
    if stats["replaying"]:
        text += f", replaying ({stats['replayed']:,} done)"
    return text


def status_lines(statuses: Sequence[SinkStatus], dead_letter_path: Path | None) -> list[str]:
    """The table ``flask traffic status`` prints, and what to do next."""
    rows = []
    for status in statuses:
        if status.reachable is None:
            state = "sends only"
        elif status.failing:
            state = "FAILING"
        else:
            state = "ok"
        took = "-" if status.seconds is None else f"{status.seconds * 1000:.0f} ms"
        rows.append(
            [
                safe_text(status.name),
                state,
                took,
                f"{status.dead_letters:,}",
                safe_text(status.error, 70),
            ]
        )
    headers = ["Store", "State", "Read", "Dead letters", "Error"]
    if any(status.spool_on_disk is not None for status in statuses):
        # Only for sites whose stores spool.
        headers.insert(4, "Spool")
        for row, status in zip(rows, statuses, strict=True):
            row.insert(4, spool_text(status))
    lines = table(headers, rows, {2, 3})
    if any(status.dead_letters for status in statuses) and dead_letter_path is not None:
        lines.append(f"  Records set aside are in {dead_letter_path}.")
    return lines
