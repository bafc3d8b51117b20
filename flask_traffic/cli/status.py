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
from ..stores._rollupstore import FoldState, read_fold_state
from ..stores.base import Sink, Store
from .render import safe_text, table

__all__ = [
    "SinkStatus",
    "check_sinks",
    "count_dead_letters",
    "rollups_text",
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
    #: For a store that keeps rollups, its fold state, or the ``"Type:
    #: message"`` of the failed read of it; ``None`` for the others.
    rollups: FoldState | str | None = None

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
        rollups: FoldState | str | None = None
        if reachable and isinstance(sink, Store) and sink.keeps_rollups:
            # Not when the read failed: this one would wait out the same outage.
            state, failure = read_fold_state(sink)
            rollups = state if failure is None else failure
        found.append(
            SinkStatus(
                sink.name, reachable, error, seconds, letters[sink.name], stats, spool, rollups
            )
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
    if isinstance(status.rollups, FoldState):
        found["rollups"] = status.rollups.as_json()
    elif status.rollups is not None:
        found["rollups"] = {"error": status.rollups}
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


def rollups_text(status: SinkStatus) -> str:
    """The ``Rollups`` cell: records to fold and since when, a rebuild under
    way, or the error of the read."""
    state = status.rollups
    if state is None:
        return "-"
    if not isinstance(state, FoldState):
        return "error: " + safe_text(state, 60)
    if not state.pending:
        text = "folded"
    else:
        count = f"{state.pending:,}" if state.pending_exact else f"over {state.pending:,}"
        if not state.pending_exact and state.pending_at_most is not None:
            count += f" (at most {state.pending_at_most:,})"
        text = f"{count} rec to fold"
        if state.pending_bytes is not None:
            text += f" ({state.pending_bytes / 1024:,.0f} kB)"
        lag = state.lag()
        if lag is not None:
            text += f", oldest {_age_text(lag)} ago"
    if state.rebuilding:
        progress = state.rebuild_progress
        text += ", rebuild " + ("under way" if progress is None else f"{progress:.0%}")
    return text


def _age_text(seconds: float) -> str:
    """``12 s``, ``5 min``, ``3 h``, ``2 d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds:,.0f} s"


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
    if any(status.rollups is not None for status in statuses):
        # Only for sites whose stores keep rollups: before the errors.
        headers.insert(-1, "Rollups")
        for row, status in zip(rows, statuses, strict=True):
            row.insert(-1, rollups_text(status))
    lines = table(headers, rows, {2, 3})
    if any(status.dead_letters for status in statuses) and dead_letter_path is not None:
        lines.append(f"  Records set aside are in {dead_letter_path}.")
    return lines
