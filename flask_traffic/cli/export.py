"""Records as CSV or JSON Lines: the writers, and ``flask traffic export``'s
streaming of a store to standard output or to a file that appears whole.

:func:`write_csv` and :func:`write_jsonl` take any rows (a store's
:meth:`~flask_traffic.stores.Store.scan`, a list of
:meth:`~flask_traffic.stores.Store.read` rows) and write to any text stream,
so whatever else exports a view writes the same files as the command.
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

from ..stores.base import Store
from ..stores.csvfile import escape_formula
from ._options import FLUSH_TIMEOUT

__all__ = ["WRITERS", "export_store", "format_of", "write_csv", "write_jsonl"]

_SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
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


def write_csv(out: t.TextIO, fields: Sequence[str], rows: Iterable[Mapping[str, t.Any]]) -> int:
    """Write ``rows`` as CSV (RFC 4180: minimal quoting, CRLF line ends) under
    a header of ``fields``.

    Cells are escaped as :class:`~flask_traffic.stores.CSVStore` writes them
    (:func:`~flask_traffic.stores.csvfile.escape_formula`): a text a
    spreadsheet would run as a formula (starting with ``= + - @``, a tab or a
    carriage return), or starting with an apostrophe, gets a leading
    apostrophe; an empty text is a lone apostrophe, a missing value an empty
    cell.

    :param out: a text stream; open files with ``newline=""``, so that the
        CRLF line ends and line breaks inside cells are written as they are.
    :param fields: the columns, in order; a row's other keys are left out.
    :param rows: mappings of field name to value, read once, one at a time.
    :return: how many rows were written (the header not counted).
    """
    writer = csv.writer(out)
    writer.writerow(fields)
    written = 0
    for row in rows:
        writer.writerow([_csv_cell(row.get(name)) for name in fields])
        written += 1
    return written


def write_jsonl(out: t.TextIO, fields: Sequence[str], rows: Iterable[Mapping[str, t.Any]]) -> int:
    """Write ``rows`` as JSON Lines: one compact, ASCII-only JSON object per
    line, each ended by ``\\n``.

    Each object is the row as it is, its keys in its own order (a store's rows
    hold exactly its fields); ``fields`` is taken so that both writers are
    called alike (see :data:`WRITERS`). ASCII keeps lone surrogates from
    undecodable headers valid JSON.

    :param out: a text stream.
    :param fields: the store's fields (not used: a line holds its row's keys).
    :param rows: JSON-serializable mappings, read once, one at a time.
    :return: how many rows (lines) were written.
    """
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


#: The writer of each format, by the name ``--format`` takes.
WRITERS: dict[str, Callable[[t.TextIO, Sequence[str], Iterable[Mapping[str, t.Any]]], int]] = {
    "csv": write_csv,
    "jsonl": write_jsonl,
}


def format_of(output: str) -> str | None:
    """The format a file's suffix names (``.csv``; ``.jsonl``, ``.ndjson`` or
    ``.json``), else ``None``, as for standard output (``-``)."""
    if output == "-":
        return None
    return _SUFFIX_FORMATS.get(Path(output).suffix.lower())


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


def export_store(
    store: Store, fmt: str, output: str, since: datetime | None, until: datetime | None
) -> int:
    """Stream ``store``'s records from ``since`` to ``until``, oldest first, to
    ``output``, with a progress bar on standard error when it is a terminal.

    A file only appears, whole, once the export succeeds: an export that
    fails leaves the file that was there before.

    :param store: the store to read; its queue is flushed first.
    :param fmt: a key of :data:`WRITERS`.
    :param output: a file path, or ``"-"`` for standard output.
    :param since: the first moment, or ``None``.
    :param until: the moment before which records end, or ``None``.
    :return: how many records were written.
    :raises click.ClickException: the store could not be read, or the file
        could not be written.
    """
    write = WRITERS[fmt]
    err = sys.stderr
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
    return written
