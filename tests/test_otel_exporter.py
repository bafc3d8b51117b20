"""OTelExporter: requests arrive at a real OTLP/HTTP receiver as spans and metrics.

The receiver (tests/otel_receiver.py) is an HTTP server on 127.0.0.1 that
decodes the protobuf requests the OpenTelemetry OTLP exporters send.
"""

from __future__ import annotations

import gc
import logging
import shutil
import socket
import subprocess
import threading
import time
import traceback
import typing as t
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import helpers
import pytest
from flask import Flask, abort
from flask_traffic_otel import OTelExporter
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_receiver import OTLPReceiver, ReceivedSpan, attributes

from flask_traffic import LogPolicy, Traffic, TrafficRecord, request_traffic
from flask_traffic.record import EXCEPTION_TEXT_LIMIT
from flask_traffic.stores import MemoryStore, Sink, Store

CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
OTEL_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS",
    "OTEL_TRACES_SAMPLER",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
)


class BrokenThing(Exception):
    def __repr__(self) -> str:
        return "<BrokenThing at the back>"


def make_app(instance: Path) -> Flask:
    """The shared test app, with what the span tests add: a 503, exceptions
    of other shapes and a route for a method of its own."""
    app = helpers.make_app(instance)

    @app.route("/unavailable")
    def unavailable() -> str:
        abort(503)

    @app.route("/many")
    def many() -> str:
        raise ValueError("a", 1)

    @app.route("/custom")
    def custom() -> str:
        raise BrokenThing()

    @app.route("/purge", methods=["PURGE"])
    def purge() -> str:
        return "purged"

    return app


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_ENV:
        monkeypatch.delenv(name, raising=False)
    # Flask logs the unhandled exceptions; that is expected here. (Not
    # caplog.set_level: it would raise caplog's own level for every logger.)
    monkeypatch.setattr(logging.getLogger("site"), "level", logging.CRITICAL)


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    receiver = OTLPReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def shutdown_later() -> Iterator[Callable[[t.Any], t.Any]]:
    """Shut down, at teardown, each store or provider passed to it."""
    things: list[t.Any] = []

    def keep(thing: t.Any) -> t.Any:
        things.append(thing)
        return thing

    yield keep
    for thing in reversed(things):
        thing.shutdown()


@pytest.fixture
def exporter(receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]) -> OTelExporter:
    return t.cast(OTelExporter, shutdown_later(OTelExporter(receiver.traces_endpoint)))


@pytest.fixture
def memory(shutdown_later: Callable[[t.Any], t.Any]) -> MemoryStore:
    return t.cast(MemoryStore, shutdown_later(MemoryStore()))


@pytest.fixture
def app(tmp_path: Path, exporter: OTelExporter, memory: MemoryStore) -> Flask:
    app = make_app(tmp_path)
    Traffic(app, stores=[memory, exporter])
    return app


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sent(exporter: OTelExporter, receiver: OTLPReceiver) -> list[ReceivedSpan]:
    assert exporter.flush(timeout=30)
    return receiver.spans()


def only_span(exporter: OTelExporter, receiver: OTLPReceiver) -> ReceivedSpan:
    spans = sent(exporter, receiver)
    assert len(spans) == 1, [s.span.name for s in spans]
    return spans[0]


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    named = {s.span.name: s for s in spans}
    assert len(named) == len(spans)
    return named


# Spans as the HTTP semantic conventions describe them.


def test_span_of_a_request(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver, memory: MemoryStore
) -> None:
    before = time.time_ns()
    response = app.test_client().get("/item/7?color=red", headers={"User-Agent": CHROME})
    after = time.time_ns()
    assert response.status_code == 200

    received = only_span(exporter, receiver)
    span = received.span
    assert span.name == "GET /item/<int:n>"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert received.attributes == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/item/7",
        "url.query": "color=red",
        "http.route": "/item/<int:n>",
        "http.response.status_code": 200,
        "server.address": "localhost",
        "server.port": 80,
        "client.address": "127.0.0.1",
        "user_agent.original": CHROME,
        "network.protocol.version": "1.1",
    }
    assert span.status.code == Status.STATUS_CODE_UNSET
    assert list(span.events) == []
    # A new trace: no parent.
    assert len(span.trace_id) == 16
    assert span.trace_id != bytes(16)
    assert span.parent_span_id == b""
    # The request's own times, not those of the export (which came later).
    assert before <= span.start_time_unix_nano <= span.end_time_unix_nano <= after
    (row,) = memory.read()
    duration_ns = span.end_time_unix_nano - span.start_time_unix_nano
    assert abs(duration_ns - row["response_time"] * 1_000_000) <= 1
    assert received.resource["service.name"] == "site"
    assert received.scope_name == "flask_traffic_otel"
    assert received.scope_version == "1.0.0.dev0"


def test_server_address_and_scheme_from_the_request(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    app.test_client().get("/", base_url="https://shop.example:8443")
    attrs = only_span(exporter, receiver).attributes
    assert attrs["url.scheme"] == "https"
    assert attrs["server.address"] == "shop.example"
    assert attrs["server.port"] == 8443
    assert "url.query" not in attrs


def test_names_status_and_errors_per_outcome(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    client = app.test_client()
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/forbidden").status_code == 403
    assert client.get("/unavailable").status_code == 503
    assert client.get("/boom").status_code == 500
    spans = by_name(sent(exporter, receiver))
    assert sorted(spans) == ["GET", "GET /boom", "GET /forbidden", "GET /unavailable"]

    # No route matched: the name is the method alone, and no http.route.
    not_found = spans["GET"]
    assert not_found.attributes["http.response.status_code"] == 404
    assert "http.route" not in not_found.attributes
    assert "error.type" not in not_found.attributes
    assert not_found.span.status.code == Status.STATUS_CODE_UNSET

    # 4xx is the client's error: the server span's status stays unset.
    forbidden = spans["GET /forbidden"]
    assert forbidden.attributes["http.response.status_code"] == 403
    assert "error.type" not in forbidden.attributes
    assert forbidden.span.status.code == Status.STATUS_CODE_UNSET

    # 5xx without an exception: error.type is the status code.
    unavailable = spans["GET /unavailable"]
    assert unavailable.attributes["error.type"] == "503"
    assert unavailable.span.status.code == Status.STATUS_CODE_ERROR
    assert list(unavailable.span.events) == []

    # An unhandled exception: its type, and an exception event.
    boom = spans["GET /boom"]
    assert boom.attributes["http.response.status_code"] == 500
    assert boom.attributes["error.type"] == "ValueError"
    assert boom.span.status.code == Status.STATUS_CODE_ERROR
    assert boom.span.status.message == "ValueError: boom"
    (event,) = boom.span.events
    assert event.name == "exception"
    event_attributes = attributes(event.attributes)
    assert event_attributes.pop("exception.stacktrace").endswith("ValueError: boom\n")
    assert event_attributes == {"exception.type": "ValueError", "exception.message": "boom"}
    assert event.time_unix_nano == boom.span.end_time_unix_nano


def test_exception_messages_read_from_the_record(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    client = app.test_client()
    client.get("/many")
    client.get("/custom")
    spans = by_name(sent(exporter, receiver))
    (many,) = spans["GET /many"].span.events
    many_attributes = attributes(many.attributes)
    assert many_attributes["exception.type"] == "ValueError"
    assert many_attributes["exception.message"] == str(ValueError("a", 1))
    custom = spans["GET /custom"]
    # Fully qualified, as OpenTelemetry's SDK names a class outside builtins.
    assert custom.attributes["error.type"] == "test_otel_exporter.BrokenThing"
    (event,) = custom.span.events
    assert attributes(event.attributes)["exception.type"] == "test_otel_exporter.BrokenThing"


def test_exception_that_propagates(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    app.testing = True  # PROPAGATE_EXCEPTIONS: the client sees the exception
    with pytest.raises(ValueError, match="boom"):
        app.test_client().get("/boom")
    span = only_span(exporter, receiver)
    assert span.attributes["error.type"] == "ValueError"
    assert span.span.status.code == Status.STATUS_CODE_ERROR


def test_unknown_method_is_other(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    assert app.test_client().open("/purge", method="PURGE").status_code == 200
    span = only_span(exporter, receiver)
    assert span.span.name == "HTTP /purge"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"


def test_known_methods_from_the_environment(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "GET,PURGE")
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().open("/purge", method="PURGE")
    span = only_span(exporter, receiver)
    assert span.span.name == "PURGE /purge"
    assert span.attributes["http.request.method"] == "PURGE"


def test_secrets_in_the_query_are_redacted(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    app.test_client().get("/item/1?sig=abc&page=2&X-Goog-Signature=def")
    span = only_span(exporter, receiver)
    assert span.attributes["url.query"] == "sig=REDACTED&page=2&X-Goog-Signature=REDACTED"


# Joining the caller's trace.


def test_span_joins_the_callers_trace(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    app.test_client().get(
        "/",
        headers={
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
            "tracestate": "vendor=value",
        },
    )
    span = only_span(exporter, receiver).span
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_ID
    assert span.span_id.hex() not in (PARENT_ID, "0" * 16)
    assert span.trace_state == "vendor=value"


def test_sampled_out_caller_gets_no_span(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    client = app.test_client()
    client.get("/", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    client.get("/item/1", headers={"traceparent": f"00-{'1' * 32}-{PARENT_ID}-01"})
    client.get("/item/2", headers={"traceparent": "00-garbage"})
    # flush() sends everything: the first request's span was never made.
    spans = sent(exporter, receiver)
    assert [s.attributes["url.path"] for s in spans] == ["/item/1", "/item/2"]
    joined, fresh = spans
    assert joined.span.trace_id.hex() == "1" * 32
    # A header that does not parse starts a new trace.
    assert fresh.span.trace_id.hex() not in (TRACE_ID, "1" * 32)
    assert fresh.span.parent_span_id == b""


# What the LogPolicy lets through.


def test_policy_fields_decide_the_attributes(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    policy = LogPolicy().set_from_true(
        request_user_agent=False, request_remote_address=False, request_host_url=False
    )
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, log_policy=policy))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/item/3?x=1", headers={"User-Agent": CHROME})
    attrs = only_span(exporter, receiver).attributes
    assert "user_agent.original" not in attrs
    assert "client.address" not in attrs
    assert "server.address" not in attrs
    assert "server.port" not in attrs
    assert attrs["url.path"] == "/item/3"
    assert attrs["http.route"] == "/item/<int:n>"


def test_policy_anonymizes_and_cuts(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    policy = LogPolicy(anonymize_ip=True, max_request_path_length=16)
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, log_policy=policy))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/a/very/long/path/indeed", environ_base={"REMOTE_ADDR": "203.0.113.77"})
    attrs = only_span(exporter, receiver).attributes
    assert attrs["client.address"] == "203.0.113.0"
    assert attrs["url.path"] == "/a/very...indeed"
    assert len(attrs["url.path"]) == 16


def test_policy_is_frozen_after_init(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    client = app.test_client()
    client.get("/", headers={"User-Agent": CHROME})
    assert "user_agent.original" in only_span(exporter, receiver).attributes
    with pytest.raises(RuntimeError, match="in use by OTelExporter since init_app"):
        exporter.log_policy.request_user_agent = False
    client.get("/item/1", headers={"User-Agent": CHROME})
    spans = by_name(sent(exporter, receiver))
    assert "user_agent.original" in spans["GET /item/<int:n>"].attributes


def test_policy_without_status_or_exception(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    policy = LogPolicy().set_from_true(response_status_code=False, response_exception=False)
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, log_policy=policy))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/boom")
    span = only_span(exporter, receiver)
    assert "http.response.status_code" not in span.attributes
    assert span.attributes["error.type"] == "_OTHER"
    assert span.span.status.code == Status.STATUS_CODE_ERROR
    assert list(span.span.events) == []


def test_policy_filters_requests(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    policy = LogPolicy(skip_endpoints=["index"], skip_status_codes=[404])
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, log_policy=policy))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    client = app.test_client()
    client.get("/")
    client.get("/nothing/here")
    client.get("/item/5")
    assert [s.span.name for s in sent(exporter, receiver)] == ["GET /item/<int:n>"]


# Providers, configuration and the environment.


def test_global_providers_are_left_alone(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    tracer_provider = trace.get_tracer_provider()
    meter_provider = metrics.get_meter_provider()
    app.test_client().get("/")
    only_span(exporter, receiver)
    assert trace.get_tracer_provider() is tracer_provider
    assert metrics.get_meter_provider() is meter_provider
    assert not isinstance(tracer_provider, TracerProvider)


def test_defaults_without_environment(tmp_path: Path) -> None:
    exporter = OTelExporter()
    try:
        assert exporter.endpoint == "http://localhost:4318/v1/traces"
        assert exporter.metrics_endpoint is None
        Traffic(make_app(tmp_path), stores=exporter)
        assert exporter.service_name == "site"
    finally:
        exporter.shutdown(timeout=5)


def test_environment_configures_the_exporter(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint + "/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret,x-team=web")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop")
    exporter = shutdown_later(OTelExporter())
    assert exporter.endpoint == receiver.traces_endpoint
    # The base endpoint turns metrics on as well.
    assert exporter.metrics_endpoint == receiver.metrics_endpoint
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/")
    span = only_span(exporter, receiver)
    assert span.resource["service.name"] == "shop"
    assert receiver.metrics("http.server.request.duration")
    assert all(h["x-api-key"] == "secret" and h["x-team"] == "web" for h in receiver.headers)
    assert {r["service.name"] for r in receiver.metric_resources()} == {"shop"}


def test_traces_endpoint_variable_wins(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.traces_endpoint)
    exporter = shutdown_later(OTelExporter(metrics=False))
    assert exporter.endpoint == receiver.traces_endpoint
    assert exporter.metrics_endpoint is None
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/")
    assert only_span(exporter, receiver).span.name == "GET /"


def test_arguments_win_over_the_environment(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    exporter = shutdown_later(
        OTelExporter(receiver.traces_endpoint, service_name="shop", headers={"x-key": "k"})
    )
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/")
    assert only_span(exporter, receiver).resource["service.name"] == "shop"
    assert receiver.headers[0]["x-key"] == "k"


def test_a_tracer_provider_of_your_own(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    provider = shutdown_later(TracerProvider(resource=Resource.create({"service.name": "mine"})))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(receiver.traces_endpoint)))
    exporter = OTelExporter(tracer_provider=provider)
    assert exporter.endpoint is None
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/")
    span = only_span(exporter, receiver)
    assert span.resource["service.name"] == "mine"
    assert span.scope_name == "flask_traffic_otel"

    # Shutting the exporter down flushes the provider but leaves it working.
    app.test_client().get("/item/1")
    exporter.shutdown()
    assert len(receiver.spans()) == 2
    provider.get_tracer("mine").start_span("after").end()
    assert provider.force_flush()
    assert [s.span.name for s in receiver.spans()][-1] == "after"


def test_sync_mode(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, sync=True))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/item/9")
    assert exporter.stats()["exported"] == 1  # the span is made in the request
    assert only_span(exporter, receiver).attributes["url.path"] == "/item/9"


# Metrics.


def test_request_duration_histogram(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    memory: MemoryStore,
) -> None:
    exporter = shutdown_later(
        OTelExporter(receiver.traces_endpoint, metrics_endpoint=receiver.metrics_endpoint)
    )
    app = make_app(tmp_path)
    Traffic(app, stores=[memory, exporter])
    client = app.test_client()
    for n in range(3):
        client.get(f"/item/{n}", headers={"User-Agent": CHROME})
    client.get("/nothing/here")
    client.get("/boom")
    assert exporter.flush(timeout=30)

    metric = receiver.metrics("http.server.request.duration")[-1]
    assert metric.unit == "s"
    points = {
        tuple(sorted(attributes(point.attributes).items())): point
        for point in metric.histogram.data_points
    }
    common = {"http.request.method": "GET", "url.scheme": "http", "network.protocol.version": "1.1"}
    item = {**common, "http.route": "/item/<int:n>", "http.response.status_code": 200}
    missing = {**common, "http.response.status_code": 404}
    boom = {**common, "http.route": "/boom", "http.response.status_code": 500}
    boom["error.type"] = "ValueError"
    assert set(points) == {tuple(sorted(a.items())) for a in (item, missing, boom)}
    assert [points[tuple(sorted(a.items()))].count for a in (item, missing, boom)] == [3, 1, 1]
    for point in points.values():
        assert list(point.explicit_bounds) == BUCKETS
        assert len(point.bucket_counts) == len(BUCKETS) + 1
    # The durations are the records' own, in seconds.
    total = sum(point.sum for point in points.values())
    assert total == pytest.approx(sum(row["response_time"] for row in memory.read()) / 1000)


def test_metrics_switch(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # metrics=True with no metrics endpoint: next to the traces endpoint.
    on = shutdown_later(OTelExporter(receiver.traces_endpoint, metrics=True))
    assert on.metrics_endpoint == receiver.metrics_endpoint
    app = make_app(tmp_path)
    Traffic(app, stores=on)
    app.test_client().get("/")
    assert on.flush(timeout=30)
    assert len(receiver.metrics("http.server.request.duration")) == 1

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", receiver.metrics_endpoint)
    assert OTelExporter(receiver.traces_endpoint).metrics_endpoint == receiver.metrics_endpoint
    assert OTelExporter(receiver.traces_endpoint, metrics=False).metrics_endpoint is None


# A collector that is down or hangs never holds up a request.


def test_collector_down(
    tmp_path: Path, memory: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    exporter = OTelExporter(
        f"http://127.0.0.1:{port}/v1/traces",
        metrics_endpoint=f"http://127.0.0.1:{port}/v1/metrics",
        timeout=2,
    )
    app = make_app(tmp_path)
    Traffic(app, stores=[memory, exporter])
    client = app.test_client()
    try:
        statuses = [client.get(f"/item/{n}").status_code for n in range(20)]
        assert statuses == [200] * 20
        assert len(memory.read()) == 20
        exporter.flush(timeout=10)
        assert exporter.stats()["exported"] == 20  # records became spans
    finally:
        stopped = threading.Event()

        def stop() -> None:
            exporter.shutdown(timeout=3)
            stopped.set()

        stopper = threading.Thread(target=stop, daemon=True)
        stopper.start()
        stopper.join(60)  # a bound for a hang, not a speed check
    assert stopped.is_set()
    # OpenTelemetry's exporter says the collector is down (its wording varies by version).
    assert any(
        record.name.startswith("opentelemetry")
        and record.levelno >= logging.ERROR
        and "export" in record.getMessage().lower()
        for record in caplog.records
    )


def test_hanging_collector_does_not_hold_requests(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, timeout=25))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    client = app.test_client()
    with receiver.hanging():
        client.get("/")
        flusher = threading.Thread(target=exporter.flush, daemon=True)
        flusher.start()
        assert receiver.wait_until_held(1)
        # An export is stuck at the collector; requests go on regardless.
        statuses = [client.get(f"/item/{n}").status_code for n in range(50)]
        assert statuses == [200] * 50
        assert flusher.is_alive()
    flusher.join(30)
    spans = sent(exporter, receiver)
    assert len(spans) == 51


def test_flush_with_a_timeout_returns_while_the_collector_hangs(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, timeout=25))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    with receiver.hanging():
        app.test_client().get("/")
        assert exporter.flush(timeout=0.5) is False
        assert receiver.wait_until_held(1)
    assert len(sent(exporter, receiver)) == 1


# Arguments, read(), shutdown.


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"endpoint": "localhost:4318"}, ValueError, "^endpoint must be the full http"),
        ({"endpoint": 4318}, ValueError, "^endpoint must be"),
        ({"metrics_endpoint": "ftp://x/v1/metrics"}, ValueError, "^metrics_endpoint must be"),
        ({"headers": "x-api-key=1"}, TypeError, "^headers must be a dict of str to str"),
        ({"headers": {"x-api-key": 1}}, TypeError, "^headers must be"),
        ({"service_name": ""}, ValueError, "^service_name must be a non-empty str"),
        ({"tracer_provider": object()}, TypeError, "^tracer_provider must be an opentelemetry"),
        ({"metrics": "yes"}, TypeError, "^metrics must be True, False or None"),
        (
            {"metrics": False, "metrics_endpoint": "http://127.0.0.1:4318/v1/metrics"},
            ValueError,
            "^metrics_endpoint was given with metrics=False",
        ),
        ({"timeout": 0}, ValueError, "^timeout must be a positive number"),
        ({"timeout": True}, ValueError, "^timeout must be a positive number"),
        ({"log_policy": "all"}, TypeError, "^log_policy must be a flask_traffic.LogPolicy"),
        ({"sync": "no"}, TypeError, "^sync must be True, False or None"),
    ],
)
def test_bad_arguments(kwargs: dict[str, t.Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        OTelExporter(**kwargs)
    assert str(info.value).endswith(".")
    assert "\n" not in str(info.value)


def test_provider_excludes_own_settings(shutdown_later: Callable[[t.Any], t.Any]) -> None:
    provider = shutdown_later(TracerProvider())
    with pytest.raises(ValueError, match=r"^endpoint and service_name configure"):
        OTelExporter("http://127.0.0.1:4318/v1/traces", tracer_provider=provider)
    with pytest.raises(ValueError, match=r"^endpoint and service_name configure"):
        OTelExporter(tracer_provider=provider, service_name="x")
    with pytest.raises(ValueError, match=r"^headers only configure"):
        OTelExporter(tracer_provider=provider, headers={"a": "b"})


def test_bad_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")
    with pytest.raises(ValueError, match=r"^The environment variable OTEL_EXPORTER_OTLP_ENDPOINT"):
        OTelExporter()


def test_the_exporter_is_a_sink_not_a_store(app: Flask, exporter: OTelExporter) -> None:
    app.test_client().get("/")
    assert isinstance(exporter, Sink)
    assert not isinstance(exporter, Store)
    assert not hasattr(exporter, "read")
    result = app.test_cli_runner().invoke(args=["traffic", "stats", "--store", "OTelExporter"])
    assert result.exit_code == 1
    assert "OTelExporter keeps no records to read back" in result.stderr


def test_flush_and_shutdown_are_safe(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    assert OTelExporter().flush() is True  # never attached
    OTelExporter().shutdown()
    app.test_client().get("/")
    exporter.shutdown()
    assert len(receiver.spans()) == 1  # shutdown sent what was queued
    exporter.shutdown()
    assert exporter.flush(timeout=5) is True


# The record properties the exporter reads.


@pytest.mark.parametrize(
    ("scheme", "host", "server", "address", "port"),
    [
        ("http", "localhost", None, "localhost", 80),
        ("https", "shop.example", ("10.0.0.1", 8000), "shop.example", 443),
        ("http", "shop.example:8080", None, "shop.example", 8080),
        ("http", "[::1]:5000", None, "::1", 5000),
        ("https", "[2001:db8::1]", None, "2001:db8::1", 443),
        ("http", None, ("internal", 8000), "internal", 8000),
        ("http", None, None, None, None),
    ],
)
def test_record_server_address_and_port(
    scheme: str,
    host: str | None,
    server: tuple[str, int] | None,
    address: str | None,
    port: int | None,
) -> None:
    record = TrafficRecord(
        start_time_ns=0, duration_ns=0, url_scheme=scheme, host_header=host, server=server
    )
    assert record.server_address == address
    assert record.server_port == port


# The example app.


@pytest.fixture
def otel_example(load_example: Callable[[str], ModuleType]) -> ModuleType:
    return load_example("otel_app")


def test_example_app(otel_example: ModuleType, tmp_path: Path, receiver: OTLPReceiver) -> None:
    app: Flask = otel_example.create_app(
        instance_path=str(tmp_path), endpoint=receiver.traces_endpoint
    )
    app.logger.setLevel(logging.CRITICAL)
    stores = otel_example.traffic.get_stores(app)
    try:
        client = app.test_client()
        assert client.get("/").status_code == 200
        assert client.get("/item/3").get_json() == {"item": 3}
        assert client.get("/missing").status_code == 404
        assert client.get("/error").status_code == 500
        rows = client.get("/traffic").get_json()
        assert [row["request_path"] for row in rows] == ["/error", "/missing", "/item/3", "/"]
        _, exporter = stores
        assert exporter.flush(timeout=30)
        spans = by_name(receiver.spans())
        assert sorted(spans) == ["GET /", "GET /error", "GET /item/<int:n>", "GET /missing"]
        assert all("client.address" not in s.attributes for s in spans.values())
        assert spans["GET /error"].attributes["error.type"] == "RuntimeError"
        assert spans["GET /"].resource["service.name"] == "otel_app"
        assert (tmp_path / "traffic.json").is_file()
    finally:
        for store in stores:
            store.shutdown()


def test_readme_maps_every_attribute_sent(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    client = app.test_client()
    client.get("/item/1?page=2", headers={"User-Agent": CHROME})
    client.get("/boom")
    client.open("/purge", method="PURGE")
    sent_names = {name for span in sent(exporter, receiver) for name in span.attributes}
    readme = (Path(__file__).parents[1] / "exporters/flask-traffic-otel/README.md").read_text()
    table = readme[readme.index("| attribute | value | LogPolicy field |") :]
    assert sorted(name for name in sent_names if f"`{name}`" not in table) == []


# What an exception really was: as OpenTelemetry's SDK records it natively.


class ShelfError(Exception):
    """A class with its own __repr__, which must not stand for its message."""

    def __repr__(self) -> str:
        return "<ShelfError on shelf 4>"


class QuotaFileMissing(FileNotFoundError):
    """An OSError subclass: str() is "[Errno 2] ...", repr() is not."""


def _chained() -> str:
    stock: dict[str, int] = {}
    try:
        stock["sku"]
    except KeyError as exc:
        raise RuntimeError("lookup failed") from exc
    return "unreachable"


ERRORS: dict[str, Callable[[], BaseException]] = {
    "/own-repr": lambda: ShelfError("shelf 4 is empty"),
    "/oserror": lambda: QuotaFileMissing(2, "No such file or directory", "quota.txt"),
    "/keyerror": lambda: KeyError("sku"),
    "/non-ascii": lambda: ValueError("prix: 12 € — café, 東京"),
    "/empty": lambda: ValueError(),
}


def native_exception(exc: BaseException) -> tuple[dict[str, t.Any], str | None]:
    """The exception event's attributes and the status message the SDK gives
    a span that ``exc`` escapes from, as ``opentelemetry-instrumentation-flask``
    records it."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    span = provider.get_tracer("native").start_span("native")
    span.__exit__(type(exc), exc, exc.__traceback__)
    (finished,) = memory.get_finished_spans()
    (event,) = finished.events
    found = dict(event.attributes or {})
    found.pop("exception.escaped", None)  # deprecated; the bridge leaves it out
    provider.shutdown()
    return found, finished.status.description


@pytest.fixture
def raised(app: Flask) -> dict[str, BaseException]:
    """The app with a route per entry of ERRORS (and /chained); maps each path
    to the exception its request raised."""
    from flask import got_request_exception, request

    seen: dict[str, BaseException] = {}

    def fail() -> str:
        if request.path == "/chained":
            return _chained()
        raise ERRORS[request.path]()

    for path in [*ERRORS, "/chained"]:
        app.add_url_rule(path, path, fail)

    def keep(sender: Flask, exception: BaseException, **extra: t.Any) -> None:
        seen[request.path] = exception

    got_request_exception.connect(keep, app, weak=False)
    return seen


def test_exception_event_as_the_sdk_records_it(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver, raised: dict[str, BaseException]
) -> None:
    client = app.test_client()
    for path in [*ERRORS, "/chained"]:
        assert client.get(path).status_code == 500
    spans = {s.attributes["url.path"]: s for s in sent(exporter, receiver)}
    for path, exc in raised.items():
        span = spans[path]
        (event,) = span.span.events
        sent_event = attributes(event.attributes)
        native_event, native_status = native_exception(exc)
        assert sent_event == native_event, path
        assert sent_event["exception.message"] == str(exc)
        assert sent_event["exception.stacktrace"] == "".join(traceback.format_exception(exc))
        assert span.span.status.message == native_status
        assert span.attributes["error.type"] == sent_event["exception.type"]
    assert attributes(spans["/own-repr"].span.events[0].attributes)["exception.type"] == (
        "test_otel_exporter.ShelfError"
    )
    oserror = attributes(spans["/oserror"].span.events[0].attributes)
    assert oserror["exception.message"] == "[Errno 2] No such file or directory: 'quota.txt'"
    assert spans["/keyerror"].span.status.message == "KeyError: 'sku'"
    assert spans["/non-ascii"].span.status.message == "ValueError: prix: 12 € — café, 東京"
    chained = attributes(spans["/chained"].span.events[0].attributes)["exception.stacktrace"]
    assert "KeyError: 'sku'" in chained
    assert "The above exception was the direct cause" in chained


def test_record_keeps_what_the_exception_was(
    app: Flask, memory: MemoryStore, raised: dict[str, BaseException]
) -> None:
    records: list[TrafficRecord] = []

    def keep(sender: Flask, record: TrafficRecord, **extra: t.Any) -> None:
        records.append(record)

    with request_traffic.connected_to(keep, app):
        app.test_client().get("/own-repr")
        app.test_client().get("/")
    failed, fine = records
    exc = raised["/own-repr"]
    assert failed.has_exception
    assert not fine.has_exception
    assert failed.exception_type == "test_otel_exporter.ShelfError"
    assert failed.exception_message == "shelf 4 is empty"
    assert failed.exception_stacktrace == "".join(traceback.format_exception(exc))
    # response_exception keeps its 0.8 meaning: the repr().
    assert failed.response_exception == repr(exc) == "<ShelfError on shelf 4>"
    row, _ = memory.read()[::-1]
    assert row["response_exception"] == "<ShelfError on shelf 4>"
    assert fine.exception_type is fine.exception_message is fine.exception_stacktrace is None
    # A record made from text alone has no exception object to describe.
    text_only = TrafficRecord(start_time_ns=0, duration_ns=0, response_exception="ValueError('x')")
    assert text_only.has_exception
    assert text_only.response_exception == "ValueError('x')"
    assert text_only.exception_type is None


def test_queued_record_lets_go_of_the_frames(app: Flask) -> None:
    class Marker:
        pass

    refs: list[weakref.ref[Marker]] = []

    @app.route("/frames")
    def frames() -> str:
        marker = Marker()  # a local of the failing frame
        refs.append(weakref.ref(marker))
        raise ValueError("with locals")

    records: list[TrafficRecord] = []

    def keep(sender: Flask, record: TrafficRecord, **extra: t.Any) -> None:
        records.append(record)

    with request_traffic.connected_to(keep, app):
        app.test_client().get("/frames")
    (record,) = records
    gc.collect()
    assert refs[0]() is not None  # held by the traceback until formatted
    assert record.exception_stacktrace is not None
    assert 'raise ValueError("with locals")' in record.exception_stacktrace
    gc.collect()
    assert refs[0]() is None  # formatted once; the frames are gone
    assert record.exception_message == "with locals"
    assert record.response_exception == "ValueError('with locals')"


def test_huge_message_is_bounded(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    huge = "é" * (EXCEPTION_TEXT_LIMIT * 3)

    def make(limit: str | None) -> OTelExporter:
        if limit is not None:
            monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", limit)
        exporter = t.cast(OTelExporter, shutdown_later(OTelExporter(receiver.traces_endpoint)))
        app = make_app(tmp_path)

        @app.route("/huge")
        def huge_error() -> str:
            raise ValueError(huge)

        Traffic(app, stores=exporter)
        app.test_client().get("/huge")
        assert exporter.flush(timeout=30)
        return exporter

    make(None)
    # The record keeps the first EXCEPTION_TEXT_LIMIT characters.
    (event,) = receiver.spans()[-1].span.events
    sent_event = attributes(event.attributes)
    assert sent_event["exception.message"] == huge[:EXCEPTION_TEXT_LIMIT]
    assert len(sent_event["exception.stacktrace"]) == EXCEPTION_TEXT_LIMIT
    assert sent_event["exception.stacktrace"].startswith("Traceback (most recent call last):")
    # The SDK's attribute length limit applies on top, as to native spans.
    make("100")
    span = receiver.spans()[-1]
    (event,) = span.span.events
    sent_event = attributes(event.attributes)
    assert sent_event["exception.message"] == huge[:100]
    assert len(sent_event["exception.stacktrace"]) == 100
    assert sent_event["exception.type"] == "ValueError"


def test_propagated_exception_stack_ends_at_the_request(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    app.testing = True
    with pytest.raises(ValueError, match="boom") as info:
        app.test_client().get("/boom")
    (event,) = only_span(exporter, receiver).span.events
    stack = attributes(event.attributes)["exception.stacktrace"]
    # The frames from the middleware down, not those of the caller above it.
    assert stack.endswith("ValueError: boom\n")
    assert "flask_traffic/middleware.py" in stack
    assert "werkzeug/test.py" not in stack
    assert "werkzeug/test.py" in "".join(traceback.format_exception(info.value))


# The instrumentation scope, extra redaction, sampling, delay.


def test_scope_has_a_schema_url(app: Flask, exporter: OTelExporter, receiver: OTLPReceiver) -> None:
    app.test_client().get("/")
    span = only_span(exporter, receiver)
    assert span.scope_name == "flask_traffic_otel"
    assert span.scope_schema_url == "https://opentelemetry.io/schemas/1.38.0"


def test_extra_query_keys_are_redacted(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    exporter = shutdown_later(
        OTelExporter(receiver.traces_endpoint, redact_query=["token", "api.key"])
    )
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/item/1?token=abc&page=2&sig=x&api.key=k&apixkey=keep")
    assert only_span(exporter, receiver).attributes["url.query"] == (
        "token=REDACTED&page=2&sig=REDACTED&api.key=REDACTED&apixkey=keep"
    )


@pytest.mark.parametrize("value", ["token", [""], ["a=b"], [1], None])
def test_redact_query_must_be_names(value: object) -> None:
    with pytest.raises(TypeError, match=r"^redact_query must be a list of query parameter names"):
        OTelExporter(redact_query=value)  # type: ignore[arg-type]


def test_sampler_from_the_environment(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/")
    assert sent(exporter, receiver) == []
    assert exporter.stats()["exported"] == 1


def test_span_reaches_the_collector_within_the_schedule_delay(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    delay = 0.5
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint))
    app = make_app(tmp_path)
    app.config["TRAFFIC_SCHEDULE_DELAY"] = delay
    Traffic(app, stores=exporter)
    client = app.test_client()
    count = 8
    for n in range(count):
        client.get(f"/item/{n}")
        time.sleep(0.13)
    spans = receiver.wait_for_spans(count, timeout=10)  # no flush: the worker's own timer
    assert len(spans) == count
    late = [(s.received_ns - s.span.end_time_unix_nano) / 1e9 for s in spans]
    # One export to a local collector takes milliseconds; the margin is for
    # a machine shared with other test runs, not for a second queue's delay.
    assert max(late) < delay + 0.5, late
    assert min(late) >= 0


# The bridge's own OTLP encoder and sender.


def _sample_spans() -> list[t.Any]:
    """Finished spans with every kind of field the OTLP encoder writes."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceState
    from opentelemetry.trace import Status as SpanStatus

    resource = Resource.create({"service.name": "shop", "replicas": 3})
    other = Resource({"flag": True}, "https://example.com/resource-schema")
    scope = InstrumentationScope("scope", "1.2", "https://example.com/schema", {"k": "v"})
    spans = []
    for n in range(24):
        parent = SpanContext(5, 7 + n, is_remote=bool(n % 2)) if n % 3 else None
        state = TraceState([("vendor", "value")]) if n % 4 == 0 else None
        spans.append(
            ReadableSpan(
                name="" if n == 5 else f"GET /café/{n % 3}",
                context=SpanContext(2**127 + n, 2**63 + n, False, trace_state=state),
                parent=parent,
                resource=resource if n < 16 else other,
                attributes={
                    "text": "prix: 12 € — 東京",
                    "n": n,
                    "negative": -5,
                    "big": 2**62,
                    "yes": True,
                    "one": 1,
                    "ratio": 1.5,
                    "list": ["a", "b"],
                    "numbers": [1, 2],
                    "raw": b"\x00\xff",
                    "status": 200,
                },
                events=(
                    (Event("exception", {"exception.type": "ValueError", "n": 1}, timestamp=9),)
                    if n % 5 == 0
                    else ()
                ),
                links=(Link(SpanContext(1, 2, True), {"linked": 1}),) if n == 7 else (),
                kind=SpanKind.SERVER if n else SpanKind.INTERNAL,
                status=(
                    SpanStatus(StatusCode.ERROR, "ValueError: boom" if n % 2 else None)
                    if n % 3 == 0
                    else SpanStatus(StatusCode.UNSET)
                ),
                start_time=10**18 + n,
                end_time=10**18 + 2 * n,
                instrumentation_scope=scope if n < 12 else None,
            )
        )
    return spans


def test_encoder_writes_what_the_sdk_encoder_writes() -> None:
    from flask_traffic_otel._protobuf import TraceEncoder
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    spans = _sample_spans()
    encoder = TraceEncoder()
    expected = encode_spans(spans)
    first = ExportTraceServiceRequest.FromString(encoder.encode(spans))
    assert first == expected
    # Again, from the bytes kept of the first batch.
    assert ExportTraceServiceRequest.FromString(encoder.encode(spans)) == expected
    assert ExportTraceServiceRequest.FromString(encoder.encode(spans[3:9])) == encode_spans(
        spans[3:9]
    )
    assert encoder.encode([]) == b""


def test_retries_on_overload_statuses(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    receiver.fail_next(429, 502, 503, 504, retry_after="0")
    app.test_client().get("/item/1")
    assert [s.attributes["url.path"] for s in sent(exporter, receiver)] == ["/item/1"]
    assert receiver.statuses == [429, 502, 503, 504, 200]


def test_retry_backs_off_without_retry_after(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver
) -> None:
    receiver.fail_next(503)
    app.test_client().get("/")
    started = time.monotonic()
    assert len(sent(exporter, receiver)) == 1
    # The first back-off is 1 s, give or take 20 %.
    assert time.monotonic() - started >= 0.8
    assert receiver.statuses == [503, 200]


def test_refused_export_is_not_retried(
    app: Flask, exporter: OTelExporter, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.fail_next(400)
    client = app.test_client()
    client.get("/")
    assert sent(exporter, receiver) == []
    assert receiver.statuses == [400]
    assert any(
        r.name == "flask_traffic" and r.levelno == logging.ERROR and "400" in r.getMessage()
        for r in caplog.records
    )
    client.get("/item/2")
    assert [s.span.name for s in sent(exporter, receiver)] == ["GET /item/<int:n>"]


def test_retries_end_within_the_timeout(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, timeout=1.5))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    receiver.fail_next(*[503] * 10)
    app.test_client().get("/")
    started = time.monotonic()
    assert sent(exporter, receiver) == []
    # Tried at once and after ~1 s; the next back-off (~2 s) would pass the timeout.
    assert receiver.statuses == [503, 503]
    assert time.monotonic() - started < 1.5 + 1
    assert any("not sent" in r.getMessage() for r in caplog.records if r.name == "flask_traffic")


def test_shutdown_ends_a_wait_to_retry(
    tmp_path: Path, receiver: OTLPReceiver, shutdown_later: Callable[[t.Any], t.Any]
) -> None:
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, timeout=25))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    receiver.fail_next(503, retry_after="20")
    app.test_client().get("/")
    threading.Thread(target=exporter.flush, daemon=True).start()
    deadline = time.monotonic() + 10
    while not receiver.statuses and time.monotonic() < deadline:
        time.sleep(0.01)
    assert receiver.statuses == [503]
    started = time.monotonic()
    exporter.shutdown(timeout=1)
    assert time.monotonic() - started < 5
    assert receiver.statuses == [503]


@pytest.mark.parametrize(
    ("variable", "argument", "encodings"),
    [
        # Traces, then metrics.
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", None, ["gzip", None]),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", None, ["gzip", "gzip"]),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "deflate", ["deflate", "deflate"]),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none", [None, None]),
    ],
)
def test_compression(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    argument: str | None,
    encodings: list[str | None],
) -> None:
    monkeypatch.setenv(variable, "gzip")
    exporter = shutdown_later(
        OTelExporter(
            receiver.traces_endpoint,
            metrics_endpoint=receiver.metrics_endpoint,
            compression=argument,
        )
    )
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/item/4?page=1", headers={"User-Agent": CHROME})
    span = only_span(exporter, receiver)
    assert span.attributes["url.query"] == "page=1"
    assert receiver.metrics("http.server.request.duration")
    assert [h.get("content-encoding") for h in receiver.headers] == encodings


def test_compression_must_be_known() -> None:
    with pytest.raises(ValueError, match=r"^compression must be one of 'gzip', 'deflate' or"):
        OTelExporter(compression="brotli")


def test_traces_variables_win_for_traces(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=all")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=traces,x-api-key=k%20ey")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.5")
    exporter = shutdown_later(OTelExporter(receiver.traces_endpoint, headers={"x-api-key": "arg"}))
    app = make_app(tmp_path)
    Traffic(app, stores=exporter)
    app.test_client().get("/")
    only_span(exporter, receiver)
    (headers,) = receiver.headers
    assert headers["x-team"] == "traces"
    assert headers["x-api-key"] == "arg"  # the argument wins over the environment
    assert headers["content-type"] == "application/x-protobuf"
    # OTEL_EXPORTER_OTLP_TRACES_TIMEOUT bounds an export to a collector that hangs.
    with receiver.hanging():
        app.test_client().get("/")
        started = time.monotonic()
        assert exporter.flush(timeout=20)
        assert time.monotonic() - started < 5


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def test_tls_from_the_url_scheme(
    tmp_path: Path,
    certificate: tuple[str, str],
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = OTLPReceiver(tls=certificate)
    try:
        assert receiver.traces_endpoint.startswith("https://127.0.0.1:")
        # Without the certificate trusted, the collector is not believed.
        untrusted = shutdown_later(OTelExporter(receiver.traces_endpoint, timeout=0.5))
        app = make_app(tmp_path / "a")
        Traffic(app, stores=untrusted)
        app.test_client().get("/")
        assert sent(untrusted, receiver) == []
        assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)

        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", certificate[0])
        trusted = shutdown_later(OTelExporter(receiver.traces_endpoint))
        app = make_app(tmp_path / "b")
        Traffic(app, stores=trusted)
        app.test_client().get("/item/5")
        assert only_span(trusted, receiver).attributes["url.path"] == "/item/5"
    finally:
        receiver.close()


class TunnelProxy:
    """An HTTP proxy on 127.0.0.1 that only knows CONNECT; counts tunnels."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(4096)
            target = head.split()[1].decode()
            self.tunnels.append(target)
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self._server.close()


def test_proxy_from_the_environment(
    tmp_path: Path,
    receiver: OTLPReceiver,
    shutdown_later: Callable[[t.Any], t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = TunnelProxy()
    try:
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        exporter = shutdown_later(OTelExporter(receiver.traces_endpoint))
        app = make_app(tmp_path)
        Traffic(app, stores=exporter)
        app.test_client().get("/item/8")
        assert only_span(exporter, receiver).attributes["url.path"] == "/item/8"
        assert proxy.tunnels == [f"127.0.0.1:{receiver.port}"]
    finally:
        proxy.close()
