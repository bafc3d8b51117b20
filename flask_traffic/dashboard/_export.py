"""The current view as CSV or JSON Lines, written by the CLI's export code."""

from __future__ import annotations

import io
import itertools
import typing as t
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

__all__ = ["FORMATS", "export_chunks"]

Writer = Callable[[t.TextIO, Sequence[str], Iterable[Mapping[str, t.Any]]], int]

#: format name -> (mimetype, file extension)
FORMATS: dict[str, tuple[str, str]] = {
    "csv": ("text/csv", "csv"),
    "jsonl": ("application/x-ndjson", "jsonl"),
}


def _writer(format_name: str) -> Writer:
    # Imported here: the CLI registers this package's dashboard-password
    # command, so importing it at the top would be circular.
    from ..cli.export import WRITERS

    return WRITERS[format_name]


# Rows written per piece of the streamed answer.
_CHUNK = 2000


def export_chunks(
    format_name: str, fields: Sequence[str], rows: Iterable[Mapping[str, t.Any]]
) -> Iterator[str]:
    """The export of ``rows`` in pieces, for a streamed response.

    The writers write whole files: each piece is written as one, and what a
    file of no rows holds (the CSV header) is kept from the first piece only.
    """
    writer = _writer(format_name)
    empty = io.StringIO()
    writer(empty, fields, ())
    head = empty.getvalue()
    yield head
    rows = iter(rows)
    while True:
        chunk = list(itertools.islice(rows, _CHUNK))
        if not chunk:
            return
        out = io.StringIO()
        writer(out, fields, chunk)
        yield out.getvalue()[len(head) :]
