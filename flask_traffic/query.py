"""What :meth:`Store.read() <flask_traffic.stores.Store.read>` and
:meth:`Store.summary() <flask_traffic.stores.Store.summary>` select: a time
window and equality tests on fields."""

from __future__ import annotations

import functools
import re
import typing as t
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .record import FIELD_NAMES, iso_text

__all__ = ["Query", "TimeArg", "is_error", "iso_text", "parse_moment", "parse_time"]

_UTC = timezone.utc
_FIELD_SET = frozenset(FIELD_NAMES)

#: What ``since=`` and ``until=`` take.
TimeArg = datetime | str | None


def parse_time(value: TimeArg, name: str) -> datetime | None:
    """``since``/``until`` as an aware UTC datetime.

    Takes a :class:`~datetime.datetime` (a naive one is taken as UTC, as
    ``datetime.utcnow()`` gives) or ISO 8601 text (``"2026-11-25"``,
    ``"2026-11-25T08:00:00+01:00"``, ``"...Z"``).

    :raises ValueError: for anything else, naming ``name``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{name} must be a datetime or ISO 8601 text such as "
                f"'2026-11-25T08:00:00+00:00', got {value!r}."
            ) from None
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime or ISO 8601 text, got {value!r}.")
    if value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_moment(text: str | None, name: str, *, now: datetime | None = None) -> datetime | None:
    """What the ``flask traffic`` commands and the dashboard take for
    ``since``/``until``: a duration back from now (``30m``, ``24h``, ``7d``,
    ``2w``), a date, ISO 8601 text (naive is UTC), or ``all`` (and ``None``)
    for no bound.

    :param name: what the value is called where it came from (``--since``),
        for the messages of a parser that wraps this one; the
        :class:`ValueError` says what is wrong with ``text`` only, so a
        caller can put the name where its own errors put it.
    :param now: the moment durations go back from (the current time without
        it): one for both ends of a window, so ``3h`` to ``1h`` is two hours,
        not a few microseconds more.
    :raises ValueError: for text of none of these forms.
    """
    if text is None or text.strip().lower() in ("", "all"):
        return None
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match is not None:
        amount, unit = match.groups()
        try:
            start = datetime.now(_UTC) if now is None else now
            return start - timedelta(seconds=float(amount) * _UNIT_SECONDS[unit])
        except OverflowError:
            raise ValueError(f"{text!r} reaches back before the year 1.") from None
    try:
        return parse_time(text, name)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 24h, 7d, 2w), a date (2026-11-25), "
            f"ISO 8601 text (2026-11-25T08:00:00Z) nor 'all'."
        ) from None


_WHERE_TYPES = (str, int, float, type(None))


@dataclass(frozen=True)
class Query:
    """Which rows to give back: ``since <= request_date < until`` and every
    ``where`` field equal to its value, newest first, at most ``limit``.

    Build one with :meth:`make`, which checks the arguments against the
    fields a store keeps. Stores that can, push the query down (SQL
    ``WHERE``, Redis id ranges); any store can test a row with
    :meth:`matches`.

    :param limit: the most rows to give back; ``None`` for all.
    :param since: the earliest ``request_date`` (inclusive), aware UTC.
    :param until: the ``request_date`` to stop before (exclusive), aware UTC.
    :param where: field name -> value the row's field must equal.
    :param errors_only: only requests that failed: a ``response_status_code``
        of 500 or more, or a ``response_exception`` (what the dashboard lists
        as errors), so a store can leave the others unread.

    .. versionchanged:: 1.0
        ``errors_only``.
    """

    limit: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    where: Mapping[str, t.Any] = field(default_factory=dict)
    errors_only: bool = False

    @classmethod
    def make(
        cls,
        fields: Iterable[str],
        limit: int | None = None,
        since: TimeArg = None,
        until: TimeArg = None,
        where: Mapping[str, t.Any] | None = None,
    ) -> Query:
        """Check the arguments of ``read()``/``summary()`` and build a query.

        :param fields: the fields the store keeps (its policy's enabled ones).
        :raises ValueError, TypeError: in one sentence naming the argument.
        """
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}.")
        start = parse_time(since, "since")
        end = parse_time(until, "until")
        kept = tuple(fields)
        if (start is not None or end is not None) and "request_date" not in kept:
            raise ValueError(
                "since and until need the request_date field, which this store's "
                "LogPolicy leaves out."
            )
        if not isinstance(where, (Mapping, type(None))):
            raise TypeError(f"where must be a dict of field name to value, got {where!r}.")
        tests = dict(where or {})
        for name, value in tests.items():
            if name not in _FIELD_SET:
                raise ValueError(
                    f"where names unknown field {name!r}; valid fields are: "
                    f"{', '.join(FIELD_NAMES)}."
                )
            if name not in kept:
                raise ValueError(f"where names {name!r}, which this store's LogPolicy leaves out.")
            if isinstance(value, bool) or not isinstance(value, _WHERE_TYPES):
                raise TypeError(
                    f"where[{name!r}] must be a str, int, float or None, got {value!r}."
                )
        return cls(limit=limit, since=start, until=end, where=tests)

    @functools.cached_property
    def since_iso(self) -> str | None:
        """:attr:`since` as stored text (see :func:`iso_text`)."""
        return None if self.since is None else iso_text(self.since)

    @functools.cached_property
    def until_iso(self) -> str | None:
        """:attr:`until` as stored text (see :func:`iso_text`)."""
        return None if self.until is None else iso_text(self.until)

    @property
    def is_everything(self) -> bool:
        """Whether the query selects every row (no window, no test)."""
        return self.since is None and self.until is None and not self.where and not self.errors_only

    def matches(self, row: Mapping[str, t.Any]) -> bool:
        """Whether ``row`` (a dict as ``read()`` gives) is selected."""
        if self.since is not None or self.until is not None:
            date = row.get("request_date")
            if date is None:
                return False
            since, until = self.since_iso, self.until_iso
            if since is not None and date < since:
                return False
            if until is not None and date >= until:
                return False
        if self.errors_only and not is_error(row):
            return False
        return all(row.get(name) == value for name, value in self.where.items())


def is_error(row: Mapping[str, t.Any]) -> bool:
    """Whether ``row`` is of a request that failed: it raised, or answered
    with a status of 500 or more (see :attr:`Query.errors_only`)."""
    if row.get("response_exception") is not None:
        return True
    status = row.get("response_status_code")
    return status is not None and status >= 500
