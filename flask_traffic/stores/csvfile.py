"""CSVStore: RFC 4180 CSV with one header row, appended."""

from __future__ import annotations

import csv
import io
import logging
import os
import typing as t
from collections.abc import Callable, Sequence
from pathlib import Path

from .._textcache import text_cache
from ..record import FIELDS, FieldType, TrafficRecord
from ..summary import SUMMARY_FIELDS
from ._framing import encode_lines, field_encoders, read_header, split_records
from .filestore import FileStore

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = ["CSVStore", "escape_formula", "unescape_formula"]

logger = logging.getLogger("flask_traffic")

# A spreadsheet runs a cell that starts with one of these as a formula (CSV
# injection). Such cells get a leading apostrophe, which spreadsheets hide;
# a cell that already starts with one gets another, and the empty string is a
# lone apostrophe (an empty cell is None), so read() can undo it exactly.
_ESCAPE = "'"
_RISKY_FIRST = frozenset("=+-@\t\r" + _ESCAPE)
_NEEDS_QUOTES = frozenset(',"\r\n')
# The largest field csv may read: what a C long holds on every platform.
_FIELD_SIZE_LIMIT = 2**31 - 1


def escape_formula(value: str) -> str:
    """``value`` as a CSV cell that no spreadsheet runs: the one rule for
    :class:`CSVStore` and ``flask traffic export``. :func:`unescape_formula`
    undoes it exactly."""
    if not value or value[0] in _RISKY_FIRST:
        return _ESCAPE + value
    return value


def unescape_formula(cell: str) -> str:
    """The text :func:`escape_formula` was given."""
    return cell.removeprefix(_ESCAPE)


@text_cache(8192)
def _text_cell(value: str | None) -> str:
    # Cached: text values repeat from request to request (user agents,
    # hosts, routes), and this is the costly part of writing a row.
    if value is None:
        return ""
    value = escape_formula(value)
    if not _NEEDS_QUOTES.isdisjoint(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def _plain(value: str | None) -> str:
    # ISO 8601 text starts with a digit and holds no comma, quote or newline.
    return "" if value is None else value


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)


_ENCODERS: dict[FieldType, Callable[[t.Any], str]] = {
    "str": _text_cell,
    "datetime": _plain,
    "int": _number,
    "float": _number,
}


_PARSERS: dict[str, Callable[[str], t.Any]] = {
    "int": int,
    "float": float,
    "str": unescape_formula,
    "datetime": unescape_formula,
}
_PARSER_FOR_FIELD = {field.name: _PARSERS[field.type] for field in FIELDS}


class CSVStore(FileStore):
    """Appends records as CSV rows under one header row of the enabled fields.

    Quoting follows RFC 4180 (cells with commas, quotes or newlines are
    quoted); rows end with ``\\n``. Cells a spreadsheet would run as a
    formula are stored with a leading ``'``, and :meth:`read` removes it and
    gives back ints, floats and ``None``. The header is written once, by the
    first writer of an empty file, even with several processes.

    An existing file whose header names other fields (one written by
    flask-traffic 0.8, or under another policy) is appended to in its own
    columns, with a warning naming the fields it cannot hold.

    Written by default to ``traffic.csv``; the parameters are
    :class:`FileStore`'s (a dated file retention rotates out keeps its
    header row). Its rollups (unless ``rollups=False``) are kept beside it
    in a SQLite file named after it, ``traffic.csv.rollups.sqlite``.
    """

    default_filename = "traffic.csv"
    quoted_records = True
    has_header = True
    # The existing file's columns, when they are not the policy's fields.
    _columns: tuple[str, ...] | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The file's columns: the policy's fields, or an existing file's header."""
        return self.fields if self._columns is None else self._columns

    def header(self) -> bytes:
        return (",".join(self.columns) + "\n").encode("ascii")

    def setup(self, app: Flask) -> None:
        # The csv module refuses fields over 131,072 characters by default,
        # and this store writes user agents and exception texts of any
        # length: read() must give back what was written. The limit is the
        # module's (process-wide); raising it only lets other readers accept
        # longer fields too.
        if csv.field_size_limit() < _FIELD_SIZE_LIMIT:
            csv.field_size_limit(_FIELD_SIZE_LIMIT)
        super().setup(app)

    def check_existing(self, fd: int, path: Path) -> None:
        if os.fstat(fd).st_size == 0:
            return
        found = read_header(fd).decode("utf-8", "replace").strip().split(",")
        if tuple(found) == self.fields:
            return
        if not set(found) <= _PARSER_FOR_FIELD.keys() or len(set(found)) != len(found):
            raise RuntimeError(
                f"{path} does not start with a header of flask-traffic fields "
                f"({','.join(found)[:200]!r}); move the file away or pass another filename=."
            )
        self._columns = tuple(found)
        missing = [name for name in self.fields if name not in found]
        if missing:
            logger.warning(
                "%s has no column for %s: those fields are not stored there. "
                "Start a new file (another filename=) to keep them.",
                path,
                ", ".join(missing),
            )

    def encode(self, records: Sequence[TrafficRecord]) -> bytes:
        values: Callable[[TrafficRecord], tuple[t.Any, ...]] = self.log_policy.values
        if self._columns is not None:
            values = self._in_file_columns(values)
        columns = self.columns
        text = encode_lines(
            list(map(values, records)),
            field_encoders(columns, _ENCODERS),
            [""] * len(columns),
            "",
            "",
        )
        return text.encode("utf-8", "surrogatepass")

    def _in_file_columns(
        self, values: Callable[[TrafficRecord], tuple[t.Any, ...]]
    ) -> Callable[[TrafficRecord], tuple[t.Any, ...]]:
        where = {name: index for index, name in enumerate(self.fields)}
        picks = [where.get(name) for name in self.columns]

        def in_columns(record: TrafficRecord) -> tuple[t.Any, ...]:
            row = values(record)
            return tuple(None if index is None else row[index] for index in picks)

        return in_columns

    def decode(self, raw: bytes, header: bytes) -> dict[str, t.Any] | None:
        rows = self._rows_of(raw + b"\n", header)
        return rows[0] if rows is not None and len(rows) == 1 else None

    def decode_block(self, block: bytes, header: bytes) -> list[dict[str, t.Any] | None]:
        # One csv.reader over the whole block rather than one per record.
        rows = self._rows_of(block, header)
        if rows is None:
            return [self.decode(raw, header) for raw in split_records(block, quoted=True)]
        return rows

    def decode_stored(self, block: bytes, header: bytes) -> list[t.Any]:
        # Only what a summary reads: a third fewer cells to parse.
        rows = self._rows_of(block, header, self._summary_fields())
        if rows is None:
            return self.decode_block(block, header)
        return rows

    def _summary_fields(self) -> tuple[str, ...]:
        return tuple(name for name in self.fields if name in SUMMARY_FIELDS)

    def _rows_of(
        self, block: bytes, header: bytes, fields: tuple[str, ...] | None = None
    ) -> list[dict[str, t.Any] | None] | None:
        """The rows of whole records (of ``fields``, by default the enabled
        ones), ``None`` if csv cannot split them."""
        names = header.decode("ascii", "replace").strip().split(",")
        parsers = [_PARSER_FOR_FIELD.get(name) for name in names]
        if fields is None:
            fields = self.fields
        try:
            text = block.decode("utf-8", "surrogatepass")
            records = list(csv.reader(io.StringIO(text, newline="")))
        except (csv.Error, UnicodeDecodeError):
            return None
        width = len(names)
        if any(len(cells) != width for cells in records):
            return self._rows_one_by_one(records, names, parsers, fields)
        # A column at a time: one comprehension per field instead of a
        # Python loop over every cell.
        columns = dict(zip(names, zip(*records, strict=True), strict=True)) if records else {}
        count = len(records)
        if not fields:
            return [{} for _ in records]
        values = []
        for name in fields:
            column = columns.get(name)
            parse = _PARSER_FOR_FIELD.get(name)
            values.append(
                [None] * count if column is None or parse is None else _parse_column(column, parse)
            )
        return [dict(zip(fields, row, strict=True)) for row in zip(*values, strict=True)]

    def _rows_one_by_one(
        self,
        records: list[list[str]],
        names: list[str],
        parsers: list[Callable[[str], t.Any] | None],
        fields: tuple[str, ...],
    ) -> list[dict[str, t.Any] | None]:
        rows: list[dict[str, t.Any] | None] = []
        for cells in records:
            if len(cells) != len(names):
                rows.append(None)  # a record cut off by a crash
                continue
            stored = {}
            for name, parse, cell in zip(names, parsers, cells, strict=True):
                if parse is None or not cell:
                    continue
                try:
                    stored[name] = parse(cell)
                except ValueError:
                    # Older files hold "None" or text where a number belongs.
                    stored[name] = None
            rows.append({name: stored.get(name) for name in fields})
        return rows


def _parse_column(column: tuple[str, ...], parse: Callable[[str], t.Any]) -> list[t.Any]:
    """The cells of one column as values: an empty cell is ``None``."""
    if parse is unescape_formula:
        return [cell.removeprefix(_ESCAPE) if cell else None for cell in column]
    try:
        return [parse(cell) if cell else None for cell in column]
    except ValueError:
        return [_parse_or_none(cell, parse) for cell in column]


def _parse_or_none(cell: str, parse: Callable[[str], t.Any]) -> t.Any:
    if not cell:
        return None
    try:
        return parse(cell)
    except ValueError:
        # Older files hold "None" or text where a number belongs.
        return None
