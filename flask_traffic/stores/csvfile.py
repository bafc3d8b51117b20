"""CSVStore: RFC 4180 CSV with one header row, appended."""

from __future__ import annotations

import csv
import functools
import io
import os
import typing as t
from collections.abc import Callable, Sequence
from pathlib import Path

from ..policy import LogPolicy
from ..record import FIELDS, FieldType, TrafficRecord
from ._files import FileStore, field_encoders

__all__ = ["CSVStore"]

# A spreadsheet runs a cell that starts with one of these as a formula (CSV
# injection). Such cells get a leading apostrophe, which spreadsheets hide;
# a cell that already starts with one gets another, and the empty string is a
# lone apostrophe (an empty cell is None), so read() can undo it exactly.
_ESCAPE = "'"
_RISKY_FIRST = frozenset("=+-@\t\r" + _ESCAPE)
_NEEDS_QUOTES = frozenset(',"\r\n')


@functools.lru_cache(maxsize=8192)
def _text_cell(value: str) -> str:
    # Cached: text values repeat from request to request (user agents,
    # hosts, routes), and this is the costly part of writing a row.
    if not value or value[0] in _RISKY_FIRST:
        value = _ESCAPE + value
    if not _NEEDS_QUOTES.isdisjoint(value):
        return '"' + value.replace('"', '""') + '"'
    return value


_ENCODERS: dict[FieldType, Callable[[t.Any], str]] = {
    "str": _text_cell,
    # ISO 8601 text starts with a digit and holds no comma, quote or newline.
    "datetime": str,
    "int": int.__repr__,
    "float": float.__repr__,
}


def _text(cell: str) -> str:
    return cell[1:] if cell.startswith(_ESCAPE) else cell


_PARSERS: dict[str, Callable[[str], t.Any]] = {
    "int": int,
    "float": float,
    "str": _text,
    "datetime": _text,
}
_PARSER_FOR_FIELD = {field.name: _PARSERS[field.type] for field in FIELDS}


class CSVStore(FileStore):
    """Appends records as CSV rows under one header row of the enabled fields.

    Quoting follows RFC 4180 (cells with commas, quotes or newlines are
    quoted); rows end with ``\\n``. Cells a spreadsheet would run as a
    formula are stored with a leading ``'``, and :meth:`read` removes it and
    gives back ints, floats and ``None``. The header is written once, by the
    first writer of an empty file, even with several processes.

    :param filename: the file's name.
    :param location: its folder; the app's instance folder when ``None``.
    :param log_policy: which fields and requests to keep.
    :param sync: write in the request thread; ``None`` follows ``TRAFFIC_SYNC``.
    """

    _quoted_records = True
    _has_header = True

    def __init__(
        self,
        filename: str | os.PathLike[str] = "traffic.csv",
        location: str | os.PathLike[str] | None = None,
        log_policy: LogPolicy | None = None,
        *,
        sync: bool | None = None,
    ) -> None:
        super().__init__(filename, location, log_policy, sync=sync)

    def header(self) -> bytes:
        return (",".join(self.fields) + "\n").encode("ascii")

    def check_existing(self, fd: int, path: Path) -> None:
        if os.fstat(fd).st_size == 0:
            return
        found = self._read_header(fd).decode("utf-8", "replace").strip()
        expected = ",".join(self.fields)
        if found != expected:
            raise RuntimeError(
                f"{path} has the columns {found!r} but this CSVStore's policy "
                f"writes {expected!r}; move the file away or pass another filename=."
            )

    def encode(self, records: Sequence[TrafficRecord]) -> bytes:
        values = self.log_policy.values
        encoders = field_encoders(self.fields, _ENCODERS)
        lines = [
            ",".join(
                [
                    "" if value is None else encode(value)
                    for encode, value in zip(encoders, values(record), strict=True)
                ]
            )
            + "\n"
            for record in records
        ]
        return "".join(lines).encode("utf-8", "surrogatepass")

    def decode(self, raw: bytes, header: bytes) -> dict[str, t.Any] | None:
        names = header.decode("ascii", "replace").strip().split(",")
        try:
            cells = next(csv.reader(io.StringIO(raw.decode("utf-8", "surrogatepass"), newline="")))
            stored = {
                name: (_PARSER_FOR_FIELD[name](cell) if cell else None)
                for name, cell in zip(names, cells, strict=False)
                if name in _PARSER_FOR_FIELD
            }
        except (csv.Error, StopIteration, ValueError):
            return None
        return {name: stored.get(name) for name in self.fields}
