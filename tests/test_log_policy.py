"""LogPolicy: the 0.8 API, field selection, request filters, anonymised IPs."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from flask import Flask, abort

from flask_traffic import FIELD_NAMES, LogPolicy, Traffic
from flask_traffic.stores import MemoryStore


@pytest.fixture
def app(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Flask:
    caplog.set_level(logging.CRITICAL, logger="site")
    app = Flask("site", instance_path=str(tmp_path))
    app.add_url_rule("/", "index", lambda: "hello")
    app.add_url_rule("/health", "health", lambda: "ok")

    @app.route("/missing")
    def missing() -> str:
        abort(404)

    @app.route("/boom")
    def boom() -> str:
        raise KeyError("boom")

    @app.route("/<path:rest>")
    def anything(rest: str) -> str:
        return rest

    return app


def record_with(
    app: Flask, policy: LogPolicy, paths: list[str], **client_args: object
) -> list[dict[str, object]]:
    store = MemoryStore(log_policy=policy)
    Traffic(app, stores=store)
    client = app.test_client()
    for path in paths:
        client.get(path, **client_args)  # type: ignore[arg-type]
    rows = store.read()
    store.shutdown()
    return rows


def test_all_fields_by_default() -> None:
    policy = LogPolicy()
    assert policy.enabled_fields == FIELD_NAMES
    assert all(getattr(policy, name) is True for name in FIELD_NAMES)


def test_set_from_true_and_false_return_the_policy() -> None:
    policy = LogPolicy()
    assert policy.set_from_true(request_user_agent=False) is policy
    assert "request_user_agent" not in policy.enabled_fields
    assert len(policy.enabled_fields) == len(FIELD_NAMES) - 1
    assert policy.set_from_false(request_path=True, response_time=True) is policy
    assert policy.enabled_fields == ("request_path", "response_time")
    policy.request_method = True
    assert policy.enabled_fields == ("request_method", "request_path", "response_time")


def test_read_keys_are_the_enabled_fields(app: Flask) -> None:
    policy = LogPolicy().set_from_false(request_path=True, response_status_code=True)
    rows = record_with(app, policy, ["/"])
    assert rows == [{"request_path": "/", "response_status_code": 200}]


def test_unknown_field_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError, match="request_pth") as info:
        LogPolicy().set_from_true(request_pth=False)
    assert "request_path" in str(info.value)
    with pytest.raises(AttributeError):
        _ = LogPolicy().request_pth


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"on_endpoints": "index"}, TypeError),
        ({"skip_endpoints": [1]}, TypeError),
        ({"on_status_codes": [99]}, ValueError),
        ({"on_status_codes": ["abc"]}, ValueError),
        ({"skip_status_codes": 404}, TypeError),
        ({"only_on_exception": "yes"}, TypeError),
        ({"only_on_exception": True, "skip_on_exception": True}, ValueError),
        ({"max_request_path_length": 3}, ValueError),
        ({"anonymize_ip": 1}, TypeError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        LogPolicy(**kwargs)  # type: ignore[arg-type]


def test_field_switch_must_be_bool() -> None:
    with pytest.raises(TypeError, match="request_path"):
        LogPolicy().request_path = "no"  # type: ignore[assignment]


def paths(rows: list[dict[str, object]]) -> list[object]:
    return sorted(str(row["request_path"]) for row in rows)


def test_skip_endpoints(app: Flask) -> None:
    every = ["/", "/health", "/x"]
    assert paths(record_with(app, LogPolicy(skip_endpoints={"health"}), every)) == ["/", "/x"]


def test_on_endpoints(app: Flask) -> None:
    rows = record_with(app, LogPolicy(on_endpoints=["index", "health"]), ["/", "/health", "/x"])
    assert paths(rows) == ["/", "/health"]


def test_status_code_filters_take_ints_or_strings(app: Flask) -> None:
    every = ["/", "/missing", "/boom"]
    assert paths(record_with(app, LogPolicy(on_status_codes=["404", 500]), every)) == [
        "/boom",
        "/missing",
    ]


def test_skip_status_codes(app: Flask) -> None:
    rows = record_with(app, LogPolicy(skip_status_codes=[404]), ["/", "/missing"])
    assert paths(rows) == ["/"]


def test_only_on_exception(app: Flask) -> None:
    every = ["/", "/missing", "/boom"]
    assert paths(record_with(app, LogPolicy(only_on_exception=True), every)) == ["/boom"]


def test_skip_on_exception(app: Flask) -> None:
    rows = record_with(app, LogPolicy(skip_on_exception=True), ["/", "/missing", "/boom"])
    assert paths(rows) == ["/", "/missing"]


def test_long_path_keeps_head_and_tail(app: Flask) -> None:
    long_path = "/" + "a" * 50 + "b" * 50
    rows = record_with(app, LogPolicy(max_request_path_length=21), [long_path])
    stored = str(rows[0]["request_path"])
    assert len(stored) == 21
    assert stored == "/aaaaaaaa...bbbbbbbbb"


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_anonymize_ip(app: Flask, address: str, stored: str) -> None:
    rows = record_with(
        app, LogPolicy(anonymize_ip=True), ["/"], environ_base={"REMOTE_ADDR": address}
    )
    assert rows[0]["request_remote_address"] == stored


def test_each_store_has_its_own_policy(app: Flask) -> None:
    errors = MemoryStore(log_policy=LogPolicy(on_status_codes=[404]))
    everything = MemoryStore()
    Traffic(app, stores=[errors, everything])
    client = app.test_client()
    client.get("/")
    client.get("/missing")
    assert paths(errors.read()) == ["/missing"]
    assert paths(everything.read()) == ["/", "/missing"]
    for store in (errors, everything):
        store.shutdown()


GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


def test_sample_rate_keeps_about_that_share_and_marks_it(app: Flask) -> None:
    random.seed(1234)
    rows = record_with(app, LogPolicy(sample_rate=0.25), ["/"] * 800)
    # 800 draws at 0.25: 200 expected, outside 150..250 about once in 10**4 seeds.
    assert 150 <= len(rows) <= 250
    assert {row["request_sample_rate"] for row in rows} == {0.25}


def test_sampling_always_keeps_errors_unless_only_sampled(app: Flask) -> None:
    random.seed(99)
    every = ["/boom"] * 40 + ["/"] * 40
    rows = record_with(app, LogPolicy(sample_rate=0.1), every)
    boom = [row for row in rows if row["request_path"] == "/boom"]
    assert len(boom) == 40
    assert {row["request_sample_rate"] for row in boom} == {None}
    assert len(rows) - len(boom) < 20


def test_only_sampled_samples_errors_too(app: Flask) -> None:
    random.seed(99)
    rows = record_with(app, LogPolicy(sample_rate=0.1, only_sampled=True), ["/boom"] * 40)
    assert len(rows) < 20
    assert {row["request_sample_rate"] for row in rows} == {0.1}


def test_without_sampling_the_rate_is_none(app: Flask) -> None:
    rows = record_with(app, LogPolicy(), ["/"])
    assert rows[0]["request_sample_rate"] is None


def test_skip_paths_globs(app: Flask) -> None:
    policy = LogPolicy(skip_paths=["/static/*", "/health"])
    every = ["/", "/health", "/static/app.css", "/static/img/a.png", "/healthz", "/x/static/y"]
    assert paths(record_with(app, policy, every)) == ["/", "/healthz", "/x/static/y"]


def test_skip_bots(app: Flask) -> None:
    store = MemoryStore(log_policy=LogPolicy(skip_bots=True))
    everything = MemoryStore()
    Traffic(app, stores=[store, everything])
    client = app.test_client()
    client.get("/bot", headers={"User-Agent": GOOGLEBOT})
    client.get("/person", headers={"User-Agent": FIREFOX})
    client.get("/nobody")
    assert paths(store.read()) == ["/nobody", "/person"]
    assert paths(everything.read()) == ["/bot", "/nobody", "/person"]
    for each in (store, everything):
        each.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": "0.5"}, "sample_rate"),
        ({"skip_paths": "/static/*"}, "skip_paths"),
        ({"skip_paths": ["static/*"]}, "skip_paths"),
        ({"skip_bots": 1}, "skip_bots"),
        ({"only_sampled": "yes"}, "only_sampled"),
    ],
)
def test_bad_sampling_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        LogPolicy(**kwargs)  # type: ignore[arg-type]


def test_a_policy_in_use_is_frozen(app: Flask) -> None:
    policy = LogPolicy(skip_paths=["/x*"])
    store = MemoryStore(log_policy=policy)
    assert not policy.frozen
    Traffic(app, stores=store)
    assert policy.frozen
    client = app.test_client()
    client.get("/")
    client.get("/xyz")
    message = r"^This LogPolicy is in use by MemoryStore since init_app, so skip_paths cannot"
    with pytest.raises(RuntimeError, match=message):
        policy.skip_paths = []
    with pytest.raises(RuntimeError, match="so on_status_codes cannot change"):
        policy.on_status_codes = frozenset({404})
    with pytest.raises(RuntimeError, match="so request_path cannot change"):
        policy.request_path = False
    with pytest.raises(RuntimeError, match=r"so set_from_false\(\) cannot change"):
        policy.set_from_false(request_path=True)
    client.get("/xyz")
    client.get("/missing")
    # The policy as it was at init_app still applies, fields and filters alike.
    assert paths(store.read()) == ["/", "/missing"]
    assert set(store.read()[0]) == set(FIELD_NAMES)
    store.shutdown()
