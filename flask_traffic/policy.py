"""Which fields a store keeps, and which requests it keeps at all."""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import operator
import random
import re
import typing as t
from collections.abc import Callable, Iterable

from ._useragent import is_bot
from .record import FIELD_NAMES, TrafficRecord

__all__ = ["LogPolicy"]

_FIELD_SET = frozenset(FIELD_NAMES)
_CHOICES = ", ".join(FIELD_NAMES)
_MIN_PATH_LENGTH = 8


def _check_field_names(names: Iterable[str], where: str) -> None:
    unknown = sorted(set(names) - _FIELD_SET)
    if unknown:
        raise TypeError(
            f"{where} got unknown field name(s) {', '.join(unknown)}; valid fields are: {_CHOICES}."
        )


def _endpoint_set(value: Iterable[str] | None, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        raise TypeError(f"{name} takes a collection of endpoint names, not a str: use [{value!r}].")
    items = frozenset(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} takes endpoint names (str), got {item!r}.")
    return items


def _status_set(value: Iterable[int | str] | None, name: str) -> frozenset[int]:
    if value is None:
        return frozenset()
    if isinstance(value, (str, int)):
        raise TypeError(f"{name} takes a collection of status codes, not one: use [{value!r}].")
    codes = set()
    for item in value:
        # 0.8 documented the codes as strings; accept both.
        try:
            code = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"{name} takes HTTP status codes, got {item!r}.") from None
        if isinstance(item, bool) or not 100 <= code <= 599:
            raise ValueError(f"{name} takes HTTP status codes from 100 to 599, got {item!r}.")
        codes.add(code)
    return frozenset(codes)


def _path_pattern(value: Iterable[str] | None) -> re.Pattern[str] | None:
    """One regular expression for all ``skip_paths`` globs: one match per request."""
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(
            f"skip_paths takes a collection of glob patterns, not a str: use [{value!r}]."
        )
    globs = list(value)
    for glob in globs:
        if not isinstance(glob, str) or not glob.startswith("/"):
            raise ValueError(
                f"skip_paths takes glob patterns of paths starting with /, got {glob!r}."
            )
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


def _check_rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"sample_rate must be a number above 0 and at most 1, got {value!r}.")
    return float(value)


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return value


def cut_path(path: str, limit: int) -> str:
    """Shorten ``path`` to ``limit`` characters, keeping its head and tail."""
    if len(path) <= limit:
        return path
    keep = limit - 3
    head = keep - keep // 2
    return f"{path[:head]}...{path[len(path) - keep // 2 :]}"


@functools.lru_cache(maxsize=4096)
def anonymize_address(address: str) -> str:
    """Zero the last octet of an IPv4 address or the last 80 bits of IPv6.

    Anything that is not an IP address (a Unix socket name) is returned as is.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 4:
        return str(ipaddress.ip_network(f"{ip}/24", strict=False).network_address)
    return str(ipaddress.ip_network(f"{ip}/48", strict=False).network_address)


class LogPolicy:
    """Which fields a store keeps and which requests it records.

    Every field is on by default; switch fields with :meth:`set_from_true`
    (all on, name the ones to turn off) or :meth:`set_from_false` (all off,
    name the ones to turn on). Each field is also a boolean attribute,
    ``policy.request_user_agent = False``.

    A request is recorded when it passes every filter given:

    :param on_endpoints: only requests to these endpoint names.
    :param skip_endpoints: never requests to these endpoint names.
    :param on_status_codes: only responses with these status codes.
    :param skip_status_codes: never responses with these status codes.
    :param only_on_exception: only requests that raised an unhandled exception.
    :param skip_on_exception: never requests that raised an unhandled exception.
    :param max_request_path_length: longer paths are stored as their head and
        tail around ``...``, this many characters in all.
    :param anonymize_ip: store ``request_remote_address`` with the last IPv4
        octet, or the last 80 bits of an IPv6 address, set to zero.
    :param sample_rate: keep this share of requests, chosen at random (1.0
        keeps all). A kept request's ``request_sample_rate`` field holds the
        rate, so summaries count it ``1 / sample_rate`` times. Responses with
        status 500 and up and unhandled exceptions are always kept (with
        ``request_sample_rate`` ``None``), unless ``only_sampled``.
    :param only_sampled: sample errors too, like every other request.
    :param skip_paths: never requests whose path matches one of these glob
        patterns (``fnmatch`` rules: ``"/static/*"``, ``"/health"``).
    :param skip_bots: never requests whose user agent the parser knows as a
        bot or crawler. Decided in the store's worker thread, where the user
        agent is parsed, so such records still pass through the queue.

    .. versionadded:: 1.0
        ``anonymize_ip``, ``sample_rate``, ``only_sampled``, ``skip_paths``,
        ``skip_bots``, and the ``request_route`` and ``request_sample_rate``
        fields.
    """

    on_endpoints: frozenset[str]
    skip_endpoints: frozenset[str]
    on_status_codes: frozenset[int]
    skip_status_codes: frozenset[int]
    only_on_exception: bool
    skip_on_exception: bool
    max_request_path_length: int
    anonymize_ip: bool
    sample_rate: float
    only_sampled: bool
    skip_paths: tuple[str, ...]
    skip_bots: bool
    _fields: dict[str, bool]
    _passes_all: bool
    _skip_path: re.Pattern[str] | None

    def __init__(
        self,
        on_endpoints: Iterable[str] | None = None,
        skip_endpoints: Iterable[str] | None = None,
        on_status_codes: Iterable[int | str] | None = None,
        skip_status_codes: Iterable[int | str] | None = None,
        only_on_exception: bool = False,
        skip_on_exception: bool = False,
        max_request_path_length: int = 512,
        *,
        anonymize_ip: bool = False,
        sample_rate: float = 1.0,
        only_sampled: bool = False,
        skip_paths: Iterable[str] | None = None,
        skip_bots: bool = False,
    ) -> None:
        only = _check_bool(only_on_exception, "only_on_exception")
        skip = _check_bool(skip_on_exception, "skip_on_exception")
        if only and skip:
            raise ValueError(
                "only_on_exception and skip_on_exception cannot both be True: "
                "nothing would be recorded."
            )
        if (
            isinstance(max_request_path_length, bool)
            or not isinstance(max_request_path_length, int)
            or max_request_path_length < _MIN_PATH_LENGTH
        ):
            raise ValueError(
                f"max_request_path_length must be an integer of at least "
                f"{_MIN_PATH_LENGTH}, got {max_request_path_length!r}."
            )
        object.__setattr__(self, "_fields", dict.fromkeys(FIELD_NAMES, True))
        self.on_endpoints = _endpoint_set(on_endpoints, "on_endpoints")
        self.skip_endpoints = _endpoint_set(skip_endpoints, "skip_endpoints")
        self.on_status_codes = _status_set(on_status_codes, "on_status_codes")
        self.skip_status_codes = _status_set(skip_status_codes, "skip_status_codes")
        self.only_on_exception = only
        self.skip_on_exception = skip
        self.max_request_path_length = max_request_path_length
        self.anonymize_ip = _check_bool(anonymize_ip, "anonymize_ip")
        self.sample_rate = _check_rate(sample_rate)
        self.only_sampled = _check_bool(only_sampled, "only_sampled")
        self.skip_paths = skip_paths  # type: ignore[assignment]  # kept as a tuple
        self.skip_bots = _check_bool(skip_bots, "skip_bots")
        object.__setattr__(self, "_passes_all", self._filters_nothing())

    # Field switches live in one dict keyed by FIELD_NAMES, so there is no
    # attribute per field to keep in step with the schema.
    def __getattr__(self, name: str) -> bool:
        fields: dict[str, bool] = self.__dict__["_fields"]
        if name in fields:
            return fields[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: t.Any) -> None:
        self._check_not_frozen(name)
        if name in _FIELD_SET:
            self._fields[name] = _check_bool(value, name)
        else:
            if name == "skip_paths":
                # Checked and compiled into one expression whenever set.
                object.__setattr__(self, "_skip_path", _path_pattern(value))
                value = tuple(value or ())
            object.__setattr__(self, name, value)
            if "_passes_all" in self.__dict__:  # set up: a filter may have changed
                object.__setattr__(self, "_passes_all", self._filters_nothing())
        self.__dict__.pop("_row_plan", None)

    def _filters_nothing(self) -> bool:
        # The default policy records every request; accepts() then returns
        # at once, which every request of every store pays for.
        return not (
            self.on_endpoints
            or self.skip_endpoints
            or self.on_status_codes
            or self.skip_status_codes
            or self.only_on_exception
            or self.skip_on_exception
            or self._skip_path is not None
            or self.sample_rate < 1.0
        )

    def __repr__(self) -> str:
        return f"<LogPolicy fields={list(self.enabled_fields)}>"

    def _check_not_frozen(self, what: str) -> None:
        owner = self.__dict__.get("_frozen_by")
        if owner is not None:
            raise RuntimeError(
                f"This LogPolicy is in use by {owner} since init_app, so {what} cannot "
                f"change: what is already stored and queued would no longer match it. "
                f"Set the policy up before passing it to the store, or give a new store "
                f"a new LogPolicy."
            )

    def freeze(self, owner: str) -> None:
        """Refuse every later change; called when a store using this policy is
        attached to an app (``owner`` names the store in the error).

        A store decides its columns, header and encoders from the policy once;
        a change after that would break what it writes, so it raises a
        :class:`RuntimeError` instead.

        .. versionadded:: 1.0
        """
        if "_frozen_by" not in self.__dict__:
            object.__setattr__(self, "_frozen_by", owner)

    @property
    def frozen(self) -> bool:
        """Whether a store in use holds this policy (see :meth:`freeze`)."""
        return "_frozen_by" in self.__dict__

    def _set(self, default: bool, where: str, fields: dict[str, bool]) -> LogPolicy:
        self._check_not_frozen(where)
        _check_field_names(fields, where)
        for name, value in fields.items():
            _check_bool(value, name)
        self._fields.update(dict.fromkeys(FIELD_NAMES, default))
        self._fields.update(fields)
        self.__dict__.pop("_row_plan", None)
        return self

    def set_from_true(self, **fields: bool) -> LogPolicy:
        """Turn every field on, then turn off those passed as ``False``.

        ``LogPolicy().set_from_true(request_user_agent=False)``

        :return: this policy.
        """
        return self._set(True, "set_from_true()", fields)

    def set_from_false(self, **fields: bool) -> LogPolicy:
        """Turn every field off, then turn on those passed as ``True``.

        ``LogPolicy().set_from_false(request_path=True, response_time=True)``

        :return: this policy.
        """
        return self._set(False, "set_from_false()", fields)

    @property
    def enabled_fields(self) -> tuple[str, ...]:
        """The names of the fields this policy keeps, in schema order."""
        fields = self._fields
        return tuple(name for name in FIELD_NAMES if fields[name])

    def accepts(self, record: TrafficRecord) -> bool:
        """Whether a store with this policy records ``record``.

        Runs on the request thread for every request, so it only compares.
        """
        if self._passes_all:
            return True
        endpoint = record.request_endpoint
        if self.on_endpoints and endpoint not in self.on_endpoints:
            return False
        if endpoint in self.skip_endpoints:
            return False
        status = record.response_status_code
        if self.on_status_codes and status not in self.on_status_codes:
            return False
        if status in self.skip_status_codes:
            return False
        if self.only_on_exception or self.skip_on_exception:
            failed = record.has_exception
            if failed != self.only_on_exception:
                return False
        skip_path = self._skip_path
        if skip_path is not None:
            path = record.request_path
            if path is not None and skip_path.match(path):
                return False
        rate = self.sample_rate
        if rate < 1.0 and not self._always_kept(record):
            return random.random() < rate
        return True

    def _always_kept(self, record: TrafficRecord) -> bool:
        """Whether sampling keeps ``record`` whatever the dice say."""
        if self.only_sampled:
            return False
        status = record.response_status_code
        return record.has_exception or (status is not None and status >= 500)

    def keeps_in_worker(self, record: TrafficRecord) -> bool:
        """The part of :meth:`accepts` too costly for the request thread
        (``skip_bots`` parses the user agent); runs in the store's worker."""
        return not (self.skip_bots and is_bot(record.request_user_agent))

    def _plan(self) -> _RowPlan:
        plan = self.__dict__.get("_row_plan")
        if plan is None:
            plan = _RowPlan(self)
            object.__setattr__(self, "_row_plan", plan)
        return t.cast(_RowPlan, plan)

    @property
    def values_key(self) -> str:
        """The key :meth:`values` keeps its tuple under on a record
        (:meth:`~flask_traffic.TrafficRecord.computed`): text naming the fields
        and the options that shape them, equal for equal policies in any
        process. A disk spool keeps it beside the values it spills, so that
        they are only reused under the same policy.

        .. versionadded:: 1.0
        """
        return self._plan().key

    def values(self, record: TrafficRecord) -> tuple[t.Any, ...]:
        """The enabled fields of ``record``, in schema order, JSON-ready.

        Dates become ISO 8601 text; the path is cut and the address
        anonymised as this policy says. Runs in a store's worker thread. The
        tuple is kept on the record, so stores whose policies keep the same
        fields compute it once between them.
        """
        plan = self._plan()
        return record.computed(plan.key, plan.values)

    def row(self, record: TrafficRecord) -> dict[str, t.Any]:
        """:meth:`values` as a dict keyed by the enabled field names."""
        plan = self._plan()
        return dict(zip(plan.fields, self.values(record), strict=True))


class _RowPlan:
    """How a policy turns a record into values, decided once per policy.

    Rows are made for every record in every store, so the per-field choices
    are made here, and the plain fields are read with one ``attrgetter``
    call (C code) instead of one Python call each.
    """

    __slots__ = (
        "address_index",
        "fields",
        "get",
        "key",
        "path_index",
        "path_limit",
        "policy",
        "rate_index",
    )

    def __init__(self, policy: LogPolicy) -> None:
        fields = policy.enabled_fields
        self.fields = fields
        # A str, whose hash Python caches: looked up for every record and store.
        self.key = repr(
            (
                "values",
                fields,
                policy.max_request_path_length,
                policy.anonymize_ip,
                policy.sample_rate,
                policy.only_sampled,
            )
        )
        # request_date is stored as text; the record keeps that text too.
        names = ["request_date_iso" if name == "request_date" else name for name in fields]
        # attrgetter of one name returns the value itself, not a 1-tuple.
        getter = operator.attrgetter(*names) if names else None
        if len(names) == 1:
            single = operator.attrgetter(names[0])
            self.get: Callable[[TrafficRecord], tuple[t.Any, ...]] = lambda r: (single(r),)
        elif getter is not None:
            self.get = getter
        else:
            self.get = lambda r: ()
        self.path_index = fields.index("request_path") if "request_path" in fields else None
        self.path_limit = policy.max_request_path_length
        self.address_index = (
            fields.index("request_remote_address")
            if policy.anonymize_ip and "request_remote_address" in fields
            else None
        )
        self.policy = policy
        self.rate_index = (
            fields.index("request_sample_rate")
            if policy.sample_rate < 1.0 and "request_sample_rate" in fields
            else None
        )

    def values(self, record: TrafficRecord) -> tuple[t.Any, ...]:
        values = self.get(record)
        path_index = self.path_index
        if path_index is not None:
            path = values[path_index]
            if path is not None and len(path) > self.path_limit:
                values = _replace(values, path_index, cut_path(path, self.path_limit))
        address_index = self.address_index
        if address_index is not None and values[address_index] is not None:
            address = anonymize_address(values[address_index])
            values = _replace(values, address_index, address)
        rate_index = self.rate_index
        if rate_index is not None and not self.policy._always_kept(record):
            values = _replace(values, rate_index, self.policy.sample_rate)
        return values


def _replace(values: tuple[t.Any, ...], index: int, value: t.Any) -> tuple[t.Any, ...]:
    return (*values[:index], value, *values[index + 1 :])
