"""The store contract as a kit: check that a store, ours or yours, keeps it.

Every store shipped with flask-traffic passes the checks of
:class:`StoreContract`; a store written elsewhere can run them from its own
test suite. Each check builds a small Flask app, attaches a
:class:`~flask_traffic.stores.JSONStore` (the reference) and the store under
test with :class:`~flask_traffic.Traffic`, sends both the same requests
(:data:`CONTRACT_REQUESTS`: a 10 kB user agent, CSV formula prefixes, CR and
LF, non-ASCII text, invalid UTF-8, lone surrogates, an unhandled exception, a
404, a 405...) and compares what the store gives back with what the
reference gives:

- ``read_back``: :meth:`~flask_traffic.stores.Store.read` gives the same
  rows, with the same values and types, newest first, keyed by every field;
  ``shutdown()`` is safe to call twice;
- ``limit_and_fields``: ``read(limit=...)`` of a store whose policy keeps four
  fields gives those, in schema order;
- ``queries``: ``read()`` with ``since``, ``until``, ``where`` and ``limit``;
- ``oldest_first_scan``: :meth:`~flask_traffic.stores.Store.scan`, newest and
  oldest first;
- ``summary``: :meth:`~flask_traffic.stores.Store.summary`, whole and windowed;
- ``frozen_policy``: once attached, the store's
  :class:`~flask_traffic.LogPolicy` refuses changes (:class:`RuntimeError`,
  "in use by ..."), and the store goes on writing every enabled field.

A check that fails raises :class:`AssertionError` saying what differed. Each
check shuts down the stores it attached; what a store leaves behind outside
``folder`` (a table, a stream) is for the test that made it to remove. The
module needs no test framework. With pytest, one test per check::

    import pytest
    from flask_traffic.testing import StoreContract

    contract = StoreContract(lambda folder, log_policy: MyStore(folder, log_policy=log_policy))

    @pytest.mark.parametrize("check", StoreContract.CHECKS)
    def test_my_store_keeps_the_contract(check, tmp_path):
        contract.run(check, tmp_path)

.. versionadded:: 1.0
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
import tempfile
import typing as t

import flask

import flask_traffic
import flask_traffic.stores

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = ["CONTRACT_REQUESTS", "StoreContract", "StoreFactory"]

_CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)

#: What every check sends, oldest first: (method, path, WSGI environ
#: overrides). The overrides go straight into the environ, as a server would
#: put them there, so headers can hold what a client would refuse to send.
CONTRACT_REQUESTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("GET", "/", {"HTTP_USER_AGENT": _CHROME, "HTTP_REFERER": "https://example.com/a?b=c"}),
    ("GET", "/item/3", {}),
    ("GET", "/missing", {"HTTP_USER_AGENT": "curl/8.5.0"}),
    ("GET", "/forbidden", {"HTTP_REFERER": ""}),
    ("GET", "/boom", {"HTTP_USER_AGENT": _CHROME}),
    ("POST", "/item/4", {}),
    ("GET", "/echo/=1+2", {"HTTP_USER_AGENT": '=HYPERLINK("http://x")'}),
    ("GET", "/echo/-x", {"HTTP_USER_AGENT": "+1", "HTTP_REFERER": "@SUM(A1)"}),
    ("GET", "/echo/'quoted", {"HTTP_USER_AGENT": "\tTab", "HTTP_REFERER": "\rcarriage"}),
    ("GET", "/echo/lines", {"HTTP_USER_AGENT": 'line one\r\nline two\n"quoted", comma'}),
    ("GET", "/echo/é/漢字/🙂", {"HTTP_USER_AGENT": "Ünïcødé ✓"}),
    ("GET", "/echo/%2F%25%20", {}),
    # A server hands header bytes over as latin-1 text: invalid UTF-8 arrives so.
    ("GET", "/echo/latin", {"HTTP_USER_AGENT": b"\xff\xfe\xc3(bad".decode("latin-1")}),
    # A server decoding with surrogateescape (PEP 383) leaves lone surrogates.
    (
        "GET",
        "/echo/escaped",
        {"HTTP_USER_AGENT": "Firefox/133.0 \udcff\udcfe", "HTTP_REFERER": "\udc80"},
    ),
    ("GET", "/echo/big", {"HTTP_USER_AGENT": "A" * 10_000}),
    ("GET", "/echo/" + "p" * 2_000, {}),
)

# The requests before and after the moment the window checks split at.
_FIRST_HALF = 8
# The status codes CONTRACT_REQUESTS get from the contract app.
_STATUSES = {200, 308, 403, 404, 405, 500}
_BOOM = "boom, with a 'quote'"
# The fields of the limit_and_fields check, and the order read() gives them in.
_FOUR_FIELDS = ("request_date", "request_path", "response_time", "response_status_code")
_SHOWN_CHARS = 80


class StoreFactory(t.Protocol):
    """What :class:`StoreContract` takes: a callable that makes a new store
    that holds nothing yet, for one check."""

    def __call__(
        self, folder: pathlib.Path, log_policy: flask_traffic.LogPolicy
    ) -> flask_traffic.stores.Store:
        """:param folder: an empty folder, also the app's instance folder,
            for the store's files.
        :param log_policy: the policy to give the store (the checks choose
            its fields); the store must keep this very object.
        """


class _ContractApp(flask.Flask):
    def log_exception(self, exc_info: t.Any) -> None:
        # /boom raises on purpose; its traceback would only be noise.
        pass


def _contract_app(instance: pathlib.Path) -> flask.Flask:
    app = _ContractApp("flask_traffic.testing", instance_path=str(instance))
    app.config["TRAFFIC_SCHEDULE_DELAY"] = 0.05

    @app.route("/")
    def index() -> str:
        return "hello"

    @app.route("/item/<int:n>")
    def item(n: int) -> dict[str, int]:
        return {"n": n}

    @app.route("/forbidden")
    def forbidden() -> str:
        flask.abort(403)

    @app.route("/boom")
    def boom() -> str:
        raise ValueError(_BOOM)

    @app.route("/echo/<path:rest>")
    def echo(rest: str) -> str:
        return rest

    return app


def _policy(fields: Sequence[str]) -> flask_traffic.LogPolicy:
    return flask_traffic.LogPolicy().set_from_false(**dict.fromkeys(fields, True))


def _shown(value: t.Any) -> str:
    text = repr(value)
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _difference(got: t.Any, expected: t.Any, where: str, same_types: bool) -> str | None:
    """Where ``got`` first differs from ``expected``, or ``None``; the items
    of a top-level list are called rows."""
    if isinstance(got, dict) and isinstance(expected, dict):
        if set(got) != set(expected):
            missing = sorted(set(expected) - set(got), key=str)
            extra = sorted(set(got) - set(expected), key=str)
            return f"{where} lacks the keys {missing} and has the extra keys {extra}"
        for key, value in expected.items():
            found = _difference(got[key], value, f"{where}[{key!r}]", same_types)
            if found is not None:
                return found
        return None
    if isinstance(got, list) and isinstance(expected, list):
        if len(got) != len(expected):
            return f"{where or 'it'} has {len(got)} items, the reference's {len(expected)}"
        for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
            found = _difference(
                mine, theirs, f"{where}[{index}]" if where else f"row {index}", same_types
            )
            if found is not None:
                return found
        return None
    if got != expected or (same_types and type(got) is not type(expected)):
        return (
            f"{where or 'it'} is {_shown(got)} ({type(got).__name__}), "
            f"the reference's {_shown(expected)} ({type(expected).__name__})"
        )
    return None


def _same(got: t.Any, expected: t.Any, what: str, *, same_types: bool = True) -> None:
    """Raise if ``got`` differs from ``expected``, in its types too when ``same_types``."""
    found = _difference(got, expected, "", same_types)
    _expect(found is None, f"{what} differs from the reference: {found}.")


def _call(name: str, arguments: Mapping[str, t.Any]) -> str:
    return f"{name}({', '.join(f'{key}={_shown(value)}' for key, value in arguments.items())})"


@dataclasses.dataclass
class _Session:
    app: flask.Flask
    store: flask_traffic.stores.Store
    reference: flask_traffic.stores.Store
    policy: flask_traffic.LogPolicy

    def send(self, requests: Sequence[tuple[str, str, dict[str, str]]]) -> None:
        client = self.app.test_client()
        for method, path, environ in requests:
            client.open(path, method=method, environ_overrides=environ)

    def send_in_halves(self) -> datetime.datetime:
        """Send every request; return a moment between the first and the rest."""
        self.send(CONTRACT_REQUESTS[:_FIRST_HALF])
        middle = datetime.datetime.now(datetime.timezone.utc)
        self.send(CONTRACT_REQUESTS[_FIRST_HALF:])
        return middle

    def compare_reads(self, **arguments: t.Any) -> list[dict[str, t.Any]]:
        """``read(**arguments)`` of the store, checked against the reference's
        and for its keys: the policy's enabled fields in schema order."""
        expected = self.reference.read(**arguments)
        what = _call("read", arguments)
        _expect(bool(expected), f"The reference's {what} selects nothing: the check is broken.")
        got = self.store.read(**arguments)
        _same(got, expected, what)
        fields = list(self.policy.enabled_fields)
        for index, row in enumerate(got):
            _expect(
                list(row) == fields,
                f"{what} row {index} has the keys {list(row)}, not the fields in "
                f"schema order {fields}.",
            )
        return got


class StoreContract:
    """The checks of the store contract, for the stores ``make_store`` makes.

    Call one check (:meth:`run`, or a ``check_...`` method) or all of them
    (:meth:`check_all`); each takes a folder to work in and makes one store.

    :param make_store: makes a new, empty store for each check; see
        :class:`StoreFactory`.

    .. versionadded:: 1.0
    """

    #: The check names, in the order :meth:`check_all` runs them; for
    #: ``pytest.mark.parametrize``.
    CHECKS: t.ClassVar[tuple[str, ...]] = (
        "read_back",
        "limit_and_fields",
        "queries",
        "oldest_first_scan",
        "summary",
        "frozen_policy",
    )

    def __init__(self, make_store: StoreFactory) -> None:
        if not callable(make_store):
            raise TypeError(
                f"make_store must be a callable (folder, log_policy) -> Store, got {make_store!r}."
            )
        self.make_store = make_store

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.make_store!r}>"

    def run(self, check: str, folder: str | os.PathLike[str]) -> None:
        """Run the check named ``check`` (one of :attr:`CHECKS`) in ``folder``.

        :raises AssertionError: when the store breaks the contract.
        """
        if check not in self.CHECKS:
            raise ValueError(f"check must be one of {', '.join(self.CHECKS)}; got {check!r}.")
        method: Callable[[str | os.PathLike[str]], None] = getattr(self, f"check_{check}")
        method(folder)

    def check_all(self, folder: str | os.PathLike[str]) -> None:
        """Run every check, one after the other, each in a folder of its own
        inside ``folder``.

        :raises AssertionError: at the first check the store fails.
        """
        for check in self.CHECKS:
            self.run(check, folder)

    @contextlib.contextmanager
    def _attached(
        self, folder: str | os.PathLike[str], fields: Sequence[str], check: str
    ) -> Iterator[_Session]:
        """An app with the reference and a new store attached, both keeping
        ``fields``; both are shut down afterwards."""
        # A fresh folder each time, even when the caller passes one twice.
        pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
        run = pathlib.Path(tempfile.mkdtemp(prefix=f"{check}-", dir=folder))
        instance = run / "instance"
        instance.mkdir()
        app = _contract_app(instance)
        # The reference counts its summaries from its records, with no
        # rollups to fold or to answer from.
        reference = flask_traffic.stores.JSONStore(
            location=run / "reference", log_policy=_policy(fields), name="reference", rollups=False
        )
        policy = _policy(fields)
        store: flask_traffic.stores.Store | None = None
        try:
            made = self.make_store(instance, policy)
            _expect(
                isinstance(made, flask_traffic.stores.Store),
                f"make_store must return a flask_traffic.stores.Store, got {made!r}.",
            )
            store = made
            _expect(
                store.log_policy is policy,
                f"make_store must give {store.name} the log_policy it is passed.",
            )
            flask_traffic.Traffic(app, stores=[reference, store])
            held = len(store.read())
            _expect(
                not held,
                f"make_store must return a store that holds nothing yet; {store.name} "
                f"already holds {held} row(s).",
            )
            yield _Session(app, store, reference, policy)
        finally:
            reference.shutdown()
            if store is not None:
                store.shutdown()

    def check_read_back(self, folder: str | os.PathLike[str]) -> None:
        """``read()`` gives what the reference gives: the same rows, values
        and types, newest first, every field in schema order; the unhandled
        exception's repr, ``response_time`` a float, ``response_size`` an
        int. ``shutdown()`` can then be called twice."""
        with self._attached(folder, flask_traffic.FIELD_NAMES, "read_back") as session:
            session.send(CONTRACT_REQUESTS)
            got = session.compare_reads()
            _expect(
                len(got) == len(CONTRACT_REQUESTS),
                f"read() gives {len(got)} rows for {len(CONTRACT_REQUESTS)} requests.",
            )
            methods = [row["request_method"] for row in reversed(got)]
            _expect(
                methods == [method for method, _, _ in CONTRACT_REQUESTS],
                "read() does not give the newest rows first.",
            )
            statuses = {row["response_status_code"] for row in got}
            _expect(
                statuses == _STATUSES,
                f"read() gives the status codes {sorted(statuses)}, not {sorted(_STATUSES)}.",
            )
            boom = next(row for row in got if row["request_path"] == "/boom")
            _expect(
                boom["response_exception"] == repr(ValueError(_BOOM)),
                f"read() gives the exception of /boom as {_shown(boom['response_exception'])}.",
            )
            for name, kind in (("response_time", float), ("response_size", int)):
                _expect(
                    type(boom[name]) is kind,
                    f"read() gives {name} as {_shown(boom[name])}, not a {kind.__name__}.",
                )
            session.store.shutdown()
            try:
                session.store.shutdown()
            except Exception as error:
                raise AssertionError(
                    f"A second shutdown() of {session.store.name} raised {error!r}; "
                    f"it must be safe to call twice."
                ) from error

    def check_limit_and_fields(self, folder: str | os.PathLike[str]) -> None:
        """``read(limit=5)`` and ``read(limit=0)`` of a store whose policy
        keeps four fields: those fields, in schema order, as the reference."""
        with self._attached(folder, _FOUR_FIELDS, "limit_and_fields") as session:
            session.send(CONTRACT_REQUESTS)
            got = session.compare_reads(limit=5)
            _expect(len(got) == 5, f"read(limit=5) gives {len(got)} rows.")
            _expect(tuple(got[0]) == _FOUR_FIELDS, f"read(limit=5) gives the keys {list(got[0])}.")
            nothing = session.store.read(limit=0)
            _expect(nothing == [], f"read(limit=0) gives {len(nothing)} rows, not [].")

    def check_queries(self, folder: str | os.PathLike[str]) -> None:
        """``read()`` with ``since``, ``until`` (datetimes and ISO 8601 text),
        ``where`` (a status, ``None``, a hostile user agent, two fields) and
        ``limit`` gives what the reference gives, and something."""
        with self._attached(folder, flask_traffic.FIELD_NAMES, "queries") as session:
            middle = session.send_in_halves()
            now = datetime.datetime.now(datetime.timezone.utc)
            hostile_agent = CONTRACT_REQUESTS[9][2]["HTTP_USER_AGENT"]
            queries: list[dict[str, t.Any]] = [
                {"since": middle},
                {"until": middle},
                {"since": middle.isoformat(), "until": now},
                {"where": {"response_status_code": 404}},
                {"where": {"request_route": None}},
                {"where": {"request_user_agent": hostile_agent}},
                {"where": {"request_method": "GET", "response_status_code": 200}, "since": middle},
                {"limit": 3, "since": middle},
            ]
            for query in queries:
                session.compare_reads(**query)

    def check_oldest_first_scan(self, folder: str | os.PathLike[str]) -> None:
        """``scan()`` of everything and of a window, newest and oldest first,
        gives the reference's rows in that order."""
        with self._attached(folder, flask_traffic.FIELD_NAMES, "oldest_first_scan") as session:
            middle = session.send_in_halves()
            store = session.store
            windows: tuple[dict[str, t.Any], ...] = ({}, {"since": middle})
            for window in windows:
                # read() flushes, scan() does not.
                expected = session.compare_reads(**window)
                query = _call("query", window)
                newest = list(store.scan(store.query(**window)))
                _same(newest, expected, f"scan({query})")
                oldest = list(store.scan(store.query(**window), oldest_first=True))
                _same(oldest, expected[::-1], f"scan({query}, oldest_first=True)")

    def check_summary(self, folder: str | os.PathLike[str]) -> None:
        """``summary()``, ``summary(since=...)`` and ``summary(until=...)``
        give what the reference gives, and count something."""
        with self._attached(folder, flask_traffic.FIELD_NAMES, "summary") as session:
            middle = session.send_in_halves()
            windows: tuple[dict[str, t.Any], ...] = ({}, {"since": middle}, {"until": middle})
            for window in windows:
                expected = session.reference.summary(**window)
                what = _call("summary", window)
                _expect(expected["total"] > 0, f"The reference's {what} counts nothing.")
                _same(session.store.summary(**window), expected, what, same_types=False)

    def check_frozen_policy(self, folder: str | os.PathLike[str]) -> None:
        """Once ``init_app`` has attached the store, its policy refuses to
        change (``RuntimeError``, "in use by ..."), and the store goes on
        writing every enabled field as the reference does."""
        fields = tuple(name for name in flask_traffic.FIELD_NAMES if name != "request_referrer")
        with self._attached(folder, fields, "frozen_policy") as session:
            policy = session.policy

            def drop_user_agent() -> None:
                policy.request_user_agent = False

            changes: tuple[tuple[str, Callable[[], t.Any]], ...] = (
                ("policy.request_user_agent = False", drop_user_agent),
                ("policy.set_from_true()", policy.set_from_true),
            )
            for change, make_change in changes:
                try:
                    make_change()
                except RuntimeError as error:
                    _expect(
                        "in use by" in str(error),
                        f"{change} after init_app raised {error!r}, which does not say "
                        f"the policy is in use by a store.",
                    )
                else:
                    raise AssertionError(
                        f"{change} after init_app did not raise: a store's LogPolicy must "
                        f"be frozen once the store is attached."
                    )
            _expect(
                session.store.fields == fields,
                f"{session.store.name}.fields is {list(session.store.fields)}, not {list(fields)}.",
            )
            session.send(CONTRACT_REQUESTS)
            got = session.compare_reads()
            _expect(
                len(got) == len(CONTRACT_REQUESTS),
                f"read() gives {len(got)} rows for {len(CONTRACT_REQUESTS)} requests.",
            )
            sent = [environ.get("HTTP_USER_AGENT") for _, _, environ in CONTRACT_REQUESTS]
            for row, agent in zip(reversed(got), sent, strict=True):
                _expect(
                    agent is None or row["request_user_agent"] == agent,
                    f"read() gives the user agent {_shown(agent)} of "
                    f"{_shown(row['request_path'])} as {_shown(row['request_user_agent'])}.",
                )
