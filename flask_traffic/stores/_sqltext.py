"""Text in a traffic table: how it is stored, and how SQL compares it.

Text that a database cannot hold (PostgreSQL rejects NUL characters, and no
driver encodes a lone surrogate as UTF-8) is stored as
``"\\ufffe" + <the value as an ASCII JSON string>`` and decoded when read, so
every value reads back exactly as :class:`~flask_traffic.stores.JSONStore`
returns it. A value that itself starts with U+FFFE (a Unicode noncharacter)
is stored the same way, so the rule stays reversible. Everything else is
stored as is.
"""

from __future__ import annotations

import json
import typing as t
from json.encoder import encode_basestring_ascii

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import FromClause
from sqlalchemy.sql.visitors import InternalTraversal

from .._textcache import text_cache

__all__ = [
    "ESCAPED",
    "decode_optional_text",
    "decode_text",
    "encode_optional_text",
    "encode_text",
    "exact_text",
]

#: Starts a stored text value that is escaped (see the module docstring);
#: it sorts after every text that is stored as is.
ESCAPED = "\ufffe"

_decode_json = json.JSONDecoder().decode


# Text values repeat from request to request (hosts, routes, user agents).
@text_cache(8192)
def encode_text(value: str) -> str:
    """``value`` as stored: itself, or escaped when a database cannot hold it."""
    if value.isascii():
        if "\x00" not in value:
            return value
    elif not value.startswith(ESCAPED) and "\x00" not in value:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return value
    return ESCAPED + encode_basestring_ascii(value)


def decode_text(value: str) -> str:
    """The value :func:`encode_text` was given."""
    if value.startswith(ESCAPED):
        return t.cast(str, _decode_json(value[1:]))
    return value


def encode_optional_text(value: str | None) -> str | None:
    """:func:`encode_text`, passing ``None`` through."""
    # Most text is ASCII without a NUL: kept as it is, in one call, not two
    # (a dozen fields of every record written).
    if value is None or (value.isascii() and "\x00" not in value):
        return value
    return encode_text(value)


def decode_optional_text(value: str | None) -> str | None:
    """:func:`decode_text`, passing ``None`` through."""
    if value is None or not value.startswith(ESCAPED):
        return value
    return decode_text(value)


class _ExactText(sa.ColumnElement[str]):
    """A text expression compared, grouped and ordered by its bytes (see
    :func:`exact_text`)."""

    inherit_cache = True
    # A list, as SQLAlchemy declares it; it makes the statement cache key.
    _traverse_internals = [("text", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, text: sa.ColumnElement[t.Any]) -> None:
        self.text = text
        self.type = text.type

    @property
    def _from_objects(self) -> list[FromClause]:
        return self.text._from_objects


@compiles(_ExactText)
def _compile_exact_text(element: _ExactText, compiler: SQLCompiler, **kw: t.Any) -> str:
    # SQLite compares text by its bytes.
    return compiler.process(element.text, **kw)


@compiles(_ExactText, "postgresql")
def _compile_exact_text_postgresql(element: _ExactText, compiler: SQLCompiler, **kw: t.Any) -> str:
    return compiler.process(element.text.collate("C"), **kw)


@compiles(_ExactText, "mysql")
@compiles(_ExactText, "mariadb")
def _compile_exact_text_mysql(element: _ExactText, compiler: SQLCompiler, **kw: t.Any) -> str:
    mariadb = getattr(compiler.dialect, "is_mariadb", False)
    collation = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
    return compiler.process(element.text.collate(collation), **kw)


def exact_text(expression: sa.ColumnElement[t.Any]) -> sa.ColumnElement[str]:
    """``expression`` compared, grouped and ordered by its bytes, as Python compares
    str: MariaDB's and MySQL's default collations ignore case and trailing
    spaces, and PostgreSQL's may order by language rules."""
    return _ExactText(expression)
