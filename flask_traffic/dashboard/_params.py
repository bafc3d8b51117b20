"""The dashboard API's query parameters: a time window, filters, paging.

Every API call takes the same parameters, so the page can hand its own URL's
filters to each of them:

``since``, ``until``
    what the ``flask traffic`` commands take (``24h``, ``2026-11-25``, ISO
    8601, ``all``), read by :func:`flask_traffic.query.parse_moment`.
``FIELD=value``
    only requests whose field equals the value ("is"); the empty value
    stands for ``None`` (no referrer, no route matched).
``not.FIELD=value``
    only requests whose field differs from the value ("is not"); may repeat.
``limit``, ``offset``
    for ``/api/records``: how many rows, after skipping how many.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from werkzeug.datastructures import MultiDict

from ..query import parse_moment
from ..record import FIELDS

__all__ = ["NOT_PREFIX", "BadParameter", "View", "int_parameter", "parse_view"]

#: The prefix of an "is not" filter parameter.
NOT_PREFIX = "not."
_TYPES = {f.name: f.type for f in FIELDS}
_WINDOW = ("since", "until")


class BadParameter(ValueError):
    """A query parameter the API cannot use; answered with a 400.

    :param parameter: the parameter's name.
    :param message: why, in one sentence.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message

    def as_json(self) -> dict[str, str]:
        """The body of the 400 answer."""
        return {"error": "bad parameter", "parameter": self.parameter, "message": self.message}


@dataclass(frozen=True)
class View:
    """What one API call looks at: a window, "is" and "is not" filters.

    :param since: the window's start, or ``None``.
    :param until: the window's end, or ``None`` (now: the view is live).
    :param where: "is" filters, handed to the store (``where=``).
    :param exclude: "is not" filters, field -> values the row's field must
        not equal; applied by the dashboard over the store's rows.
    """

    since: datetime | None = None
    until: datetime | None = None
    where: Mapping[str, t.Any] = field(default_factory=dict)
    exclude: Mapping[str, frozenset[t.Any]] = field(default_factory=dict)

    @property
    def is_filtered(self) -> bool:
        """Whether any filter is set (then ``summary()`` cannot answer alone)."""
        return bool(self.where or self.exclude)

    def keeps(self, row: Mapping[str, t.Any]) -> bool:
        """Whether ``row`` passes the "is not" filters (the store applied the others)."""
        return not any(row.get(name) in values for name, values in self.exclude.items())

    def kept(self, rows: Iterable[dict[str, t.Any]]) -> Iterator[dict[str, t.Any]]:
        """The rows that pass the "is not" filters."""
        if not self.exclude:
            return iter(rows)
        return (row for row in rows if self.keeps(row))


def _value(name: str, text: str) -> t.Any:
    if text == "":
        return None
    kind = _TYPES[name]
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise BadParameter(name, f"{name} holds numbers ({kind}), not {text!r}.") from None
    return text


def _field(parameter: str, fields: tuple[str, ...]) -> str:
    name = parameter.removeprefix(NOT_PREFIX)
    if name not in _TYPES:
        raise BadParameter(
            parameter,
            f"unknown parameter {parameter!r}; the API takes since, until, limit, offset, "
            f"and a field name ({NOT_PREFIX}FIELD for 'is not') to filter on.",
        )
    if name not in fields:
        raise BadParameter(parameter, f"this store's LogPolicy leaves out {name!r}.")
    if _TYPES[name] == "datetime":
        raise BadParameter(parameter, f"filter {name} with since and until.")
    return name


def parse_view(
    args: MultiDict[str, str], fields: tuple[str, ...], allowed: Iterable[str] = ()
) -> View:
    """The :class:`View` the query string ``args`` asks for.

    :param fields: the fields the store keeps.
    :param allowed: further parameters the caller reads itself (``limit``).
    :raises BadParameter: for the first parameter it cannot use.
    """
    moments: dict[str, datetime | None] = {}
    # Both ends measured from one moment: 3h to 1h is two hours.
    now = datetime.now(timezone.utc)
    for name in _WINDOW:
        values = args.getlist(name)
        if len(values) > 1:
            raise BadParameter(name, f"{name} is given {len(values)} times.")
        try:
            moments[name] = parse_moment(values[0] if values else None, name, now=now)
        except ValueError as exc:
            raise BadParameter(name, str(exc)) from None
    since, until = moments["since"], moments["until"]
    if since is not None and until is not None and since >= until:
        raise BadParameter("until", "until must be later than since.")
    if (since is not None or until is not None) and "request_date" not in fields:
        raise BadParameter("since", "this store's LogPolicy leaves out request_date.")
    where: dict[str, t.Any] = {}
    exclude: dict[str, set[t.Any]] = {}
    skip = {*_WINDOW, *allowed}
    for parameter in args:
        if parameter in skip:
            continue
        name = _field(parameter, fields)
        values = [_value(name, text) for text in args.getlist(parameter)]
        if parameter.startswith(NOT_PREFIX):
            exclude.setdefault(name, set()).update(values)
        elif len(values) > 1:
            raise BadParameter(parameter, f"{parameter} can be given once ('is' one value).")
        else:
            where[name] = values[0]
    return View(
        since=since,
        until=until,
        where=where,
        exclude={name: frozenset(values) for name, values in exclude.items()},
    )


def int_parameter(args: MultiDict[str, str], name: str, default: int, maximum: int) -> int:
    """The integer parameter ``name``, from 0 to ``maximum``.

    :raises BadParameter: when it is anything else.
    """
    text = args.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or int(text) > maximum:
        raise BadParameter(
            name, f"{name} must be a whole number from 0 to {maximum}, not {text!r}."
        )
    return int(text)
