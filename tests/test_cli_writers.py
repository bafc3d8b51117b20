"""The public CSV and JSON Lines writers of ``flask_traffic.cli.export``, on
their own: what ``flask traffic export`` writes, for any rows and any stream."""

from __future__ import annotations

import csv
import io
import json
import typing as t

import pytest

from flask_traffic.cli.export import WRITERS, write_csv, write_jsonl
from flask_traffic.stores.csvfile import unescape_formula

FIELDS = ["request_path", "response_status_code", "request_referrer"]
ROWS: list[dict[str, t.Any]] = [
    {"request_path": "/a", "response_status_code": 200, "request_referrer": None},
    {"request_path": "=1+2", "response_status_code": 404, "request_referrer": ""},
    {"request_path": '/line\nbreak, "quoted"', "response_status_code": 500},
]


def test_write_csv_returns_the_rows_written_under_a_header() -> None:
    out = io.StringIO(newline="")
    assert write_csv(out, FIELDS, iter(ROWS)) == 3
    text = out.getvalue()
    assert text.startswith("request_path,response_status_code,request_referrer\r\n")
    header, *cells = list(csv.reader(io.StringIO(text, newline="")))
    assert header == FIELDS
    assert cells[0] == ["/a", "200", ""]
    # The CSVStore rule: a formula and the empty text get a leading "'".
    assert cells[1] == ["'=1+2", "404", "'"]
    assert unescape_formula(cells[1][0]) == "=1+2"
    assert cells[2] == ['/line\nbreak, "quoted"', "500", ""]


def test_write_csv_of_no_rows_is_the_header() -> None:
    out = io.StringIO(newline="")
    assert write_csv(out, FIELDS, []) == 0
    assert out.getvalue() == "request_path,response_status_code,request_referrer\r\n"


@pytest.mark.parametrize("count", [0, 1, 999, 1000, 1001, 2500])
def test_write_jsonl_writes_a_line_per_row(count: int) -> None:
    rows = ({"request_path": f"/item/{n}", "note": "caf\u00e9 \ud800"} for n in range(count))
    out = io.StringIO()
    assert write_jsonl(out, FIELDS, rows) == count
    lines = out.getvalue().splitlines()
    assert len(lines) == count
    assert all(line.isascii() for line in lines)
    if count:
        assert json.loads(lines[-1]) == {
            "request_path": f"/item/{count - 1}",
            "note": "caf\u00e9 \ud800",
        }
        assert out.getvalue().endswith("\n")


def test_writers_by_format() -> None:
    assert list(WRITERS) == ["csv", "jsonl"]
    assert WRITERS["csv"] is write_csv
    assert WRITERS["jsonl"] is write_jsonl
