"""OTelExporter: every recorded request as an OpenTelemetry HTTP server span."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import typing as t
import weakref
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Tracer

from flask_traffic import LogPolicy, TrafficRecord
from flask_traffic.processors import SyncProcessor
from flask_traffic.stores import Sink

from ._semconv import (
    DURATION_BUCKETS,
    SCHEMA_URL,
    SpanMapper,
    known_methods,
    redacted_query_keys,
)
from ._span_exporter import SpanSender
from ._spans import SpanBuilder, trace
from ._transport import OTLPSender, check_compression
from ._version import __version__

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = ["OTelExporter"]

logger = logging.getLogger("flask_traffic")

_SCOPE = "flask_traffic_otel"
_DEFAULT_BASE = "http://localhost:4318"
_TRACES_PATH = "/v1/traces"
_METRICS_PATH = "/v1/metrics"
_ENV_BASE = "OTEL_EXPORTER_OTLP_ENDPOINT"
_ENV_TRACES = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
_ENV_METRICS = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
_ENV_SERVICE = "OTEL_SERVICE_NAME"
# What "no timeout" means to the SDK's millisecond-based calls.
_FOREVER_MS = 24 * 3600 * 1000
_DEFAULT_SHUTDOWN_MS = 30_000


def _check_url(value: object, name: str) -> str:
    example = f"http://localhost:4318{_METRICS_PATH if 'METRICS' in name.upper() else _TRACES_PATH}"
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.netloc:
            return value
    raise ValueError(
        f"{name} must be the full http:// or https:// URL of an OTLP/HTTP endpoint, "
        f"e.g. {example!r}, got {value!r}."
    )


def _from_environ(signal_env: str, path: str) -> str | None:
    """The endpoint the environment gives for one signal, or ``None``."""
    value = os.environ.get(signal_env, "").strip()
    if value:
        return _check_url(value, f"The environment variable {signal_env}")
    base = os.environ.get(_ENV_BASE, "").strip()
    if base:
        _check_url(base, f"The environment variable {_ENV_BASE}")
        return base.rstrip("/") + path
    return None


def _check_headers(headers: object) -> dict[str, str] | None:
    if headers is None:
        return None
    if not isinstance(headers, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in headers.items()
    ):
        raise TypeError(
            f"headers must be a dict of str to str, such as {{'x-api-key': 'secret'}}, "
            f"got {headers!r}."
        )
    return dict(headers)


def _shutdown_at_exit(ref: weakref.ref[OTelExporter]) -> None:
    exporter = ref()
    if exporter is not None:
        exporter.shutdown()


class OTelExporter(Sink):
    """Sends each recorded request to an OpenTelemetry collector as an HTTP
    server span, over OTLP/HTTP; optionally also the
    ``http.server.request.duration`` histogram.

    ::

        traffic.init_app(app, stores=[JSONStore(), OTelExporter()])

    Spans follow the stable HTTP semantic conventions: kind ``SERVER``, named
    ``"GET /item/<int:n>"`` (method and route), with the request's own start
    and end times. A request that carries a W3C ``traceparent`` header gets a
    span in the caller's trace, and none when the caller sampled it out. The
    exporter's :class:`~flask_traffic.LogPolicy` decides which requests are
    sent and which fields become attributes.

    One queue, one thread: in the store's worker, each batch of records
    becomes finished spans, encoded as one OTLP/HTTP request by the
    exporter's own protobuf writer and posted to the collector (with the
    OTLP exporters' settings, environment variables and retries), so a span
    reaches the collector within ``TRAFFIC_SCHEDULE_DELAY`` plus the export's
    own time. No tracer and no span processor of OpenTelemetry's is
    involved, unless you pass a ``tracer_provider``: then the spans are made
    by its tracer and go through its span processors (slower: the SDK's
    span objects and OTLP encoder). The exporter never
    touches OpenTelemetry's global providers, so it works beside
    ``opentelemetry-instrument`` or your own set-up. It is a
    :class:`~flask_traffic.stores.Sink`: it keeps nothing to read back, so it
    has no ``read()``, and the ``flask traffic`` commands skip it.

    :param endpoint: full URL of the collector's OTLP/HTTP traces endpoint.
        Default: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``, else
        ``http://localhost:4318/v1/traces``.
    :param headers: HTTP headers sent with every export, e.g. an API key.
        Default: ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` /
        ``OTEL_EXPORTER_OTLP_HEADERS`` (``METRICS`` for metrics).
    :param service_name: the ``service.name`` resource attribute. Default:
        ``OTEL_SERVICE_NAME``, else the Flask app's name.
    :param tracer_provider: an OpenTelemetry SDK ``TracerProvider`` of your
        own to create the spans with, instead of the exporter's; then
        ``endpoint`` and ``service_name`` do not apply. :meth:`flush` and
        :meth:`shutdown` force-flush it but never shut it down: it is yours.
    :param log_policy: which requests to send and which fields become span
        attributes; all of them when ``None``.
    :param metrics: record the ``http.server.request.duration`` histogram.
        ``None`` (default): when a metrics endpoint is set, by
        ``metrics_endpoint``, ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or
        ``OTEL_EXPORTER_OTLP_ENDPOINT``.
    :param metrics_endpoint: full URL of the OTLP/HTTP metrics endpoint.
        With ``metrics=True`` and no metrics endpoint set anywhere, the traces
        endpoint with ``/v1/metrics`` for ``/v1/traces``.
    :param timeout: seconds one export to the collector may take, retries
        included; the OTLP exporters' default (10 s, or
        ``OTEL_EXPORTER_OTLP_TIMEOUT``) when ``None``.
    :param compression: ``"gzip"``, ``"deflate"`` or ``"none"`` for the
        requests to the collector; ``None`` (default):
        ``OTEL_EXPORTER_OTLP_TRACES_COMPRESSION`` /
        ``OTEL_EXPORTER_OTLP_COMPRESSION`` (``METRICS`` for metrics), else
        none.
    :param redact_query: more query parameter names, e.g. ``("token",)``,
        whose values ``url.query`` shows as ``REDACTED``, beyond the four the
        conventions name.
    :param sync: create spans in the request thread; ``None`` follows the
        app's ``TRAFFIC_SYNC``. Sending to the collector is always done in
        the background (in sync mode by an SDK batch span processor, the
        only queue there is then).
    :param name: how log messages and ``flask traffic`` name the exporter;
        ``OTelExporter`` by default.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        service_name: str | None = None,
        tracer_provider: TracerProvider | None = None,
        log_policy: LogPolicy | None = None,
        metrics: bool | None = None,
        metrics_endpoint: str | None = None,
        timeout: float | None = None,
        compression: str | None = None,
        redact_query: t.Iterable[str] = (),
        sync: bool | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(log_policy, sync=sync, name=name)
        self._redacted = redacted_query_keys(redact_query)
        if tracer_provider is not None and not isinstance(tracer_provider, TracerProvider):
            raise TypeError(
                f"tracer_provider must be an opentelemetry.sdk.trace.TracerProvider, "
                f"got {type(tracer_provider).__name__}."
            )
        if tracer_provider is not None and (endpoint is not None or service_name is not None):
            raise ValueError(
                "endpoint and service_name configure the exporter's own TracerProvider: "
                "leave them out when you pass tracer_provider, and set them on yours."
            )
        if service_name is not None and (not isinstance(service_name, str) or not service_name):
            raise ValueError(f"service_name must be a non-empty str, got {service_name!r}.")
        if metrics is not None and not isinstance(metrics, bool):
            raise TypeError(f"metrics must be True, False or None, got {metrics!r}.")
        if metrics is False and metrics_endpoint is not None:
            raise ValueError("metrics_endpoint was given with metrics=False: drop one of the two.")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        self._headers = _check_headers(headers)
        self._compression = None if compression is None else check_compression(compression)
        self._timeout = None if timeout is None else float(timeout)
        self._service_name = service_name
        self._given_provider = tracer_provider

        if tracer_provider is not None:
            self._endpoint: str | None = None
        elif endpoint is not None:
            self._endpoint = _check_url(endpoint, "endpoint")
        else:
            self._endpoint = _from_environ(_ENV_TRACES, _TRACES_PATH) or (
                _DEFAULT_BASE + _TRACES_PATH
            )

        self._metrics_endpoint: str | None = None
        if metrics_endpoint is not None:
            self._metrics_endpoint = _check_url(metrics_endpoint, "metrics_endpoint")
        elif metrics is not False:
            self._metrics_endpoint = _from_environ(_ENV_METRICS, _METRICS_PATH)
            if self._metrics_endpoint is None and metrics:
                traces = self._endpoint or ""
                self._metrics_endpoint = (
                    traces[: -len(_TRACES_PATH)] + _METRICS_PATH
                    if traces.endswith(_TRACES_PATH)
                    else _DEFAULT_BASE + _METRICS_PATH
                )
        if tracer_provider is not None and self._headers is not None and not self._metrics_endpoint:
            raise ValueError(
                "headers only configure the exporter's own exporters: with tracer_provider "
                "and no metrics they would be ignored, so set them on your provider's exporter."
            )

        self._methods = known_methods()
        self._mapper: SpanMapper | None = None
        self._tracer: Tracer | None = None
        self._span_exporter: SpanSender | None = None
        # Set up with the exporter's own span exporter; see setup().
        self._builder: SpanBuilder | None = None
        self._sync_processor: BatchSpanProcessor | None = None
        self._meter_provider: MeterProvider | None = None
        self._histogram: Histogram | None = None
        self._closed = False
        self._close_lock = threading.Lock()

    def __repr__(self) -> str:
        where = self._endpoint or "the given tracer_provider"
        return f"<{type(self).__name__} to {where}>"

    @property
    def endpoint(self) -> str | None:
        """The OTLP/HTTP traces URL spans go to; ``None`` with a ``tracer_provider``."""
        return self._endpoint

    @property
    def metrics_endpoint(self) -> str | None:
        """The OTLP/HTTP metrics URL, or ``None`` when metrics are off."""
        return self._metrics_endpoint

    @property
    def service_name(self) -> str | None:
        """The ``service.name`` sent; known once the exporter is attached to an app."""
        return self._service_name

    def setup(self, app: Flask) -> None:
        """Build the exporter's span exporter (or tracer) and metrics; the app
        names the service by default."""
        if self._service_name is None and self._given_provider is None:
            self._service_name = os.environ.get(_ENV_SERVICE, "").strip() or app.name
        if self._given_provider is not None:
            resource = self._given_provider.resource
            self._tracer = self._given_provider.get_tracer(
                _SCOPE, __version__, schema_url=SCHEMA_URL
            )
        else:
            resource = Resource.create({"service.name": t.cast(str, self._service_name)})
            self._builder = SpanBuilder(
                resource, InstrumentationScope(_SCOPE, __version__, SCHEMA_URL)
            )
            sender = OTLPSender(
                t.cast(str, self._endpoint),
                headers=self._headers,
                timeout=self._timeout,
                compression=self._compression,
                name=self.name,
            )
            self._span_exporter = SpanSender(sender)
        if self._metrics_endpoint is not None:
            compression = None if self._compression is None else Compression(self._compression)
            reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(
                    endpoint=self._metrics_endpoint,
                    headers=self._headers,
                    timeout=self._timeout,
                    compression=compression,
                )
            )
            self._meter_provider = MeterProvider(
                metric_readers=[reader], resource=resource, shutdown_on_exit=False
            )
            self._histogram = self._meter_provider.get_meter(
                _SCOPE, __version__, schema_url=SCHEMA_URL
            ).create_histogram(
                "http.server.request.duration",
                unit="s",
                description="Duration of HTTP server requests.",
                explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
            )
        # Registered after flask-traffic's own exit hook, so it runs first:
        # queued records become spans before the exporters stop.
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    def _current_mapper(self) -> SpanMapper:
        # The policy can be changed after construction; follow it.
        mapper = self._mapper
        if mapper is None or mapper.key != SpanMapper.key_of(self.log_policy):
            mapper = self._mapper = SpanMapper(self.log_policy, self._methods, self._redacted)
        return mapper

    def export(self, records: Sequence[TrafficRecord]) -> None:
        """Turn the records into spans (and histogram points) and send them.

        With the exporter's own span exporter the spans are sent here, in the
        store's worker; a collector that is down or refuses them is logged on
        the ``flask_traffic`` logger after the sender's own retries, and the
        batch is not retried. With a
        ``tracer_provider``, its span processors take the spans.
        """
        if self._span_exporter is None and self._tracer is None:
            raise RuntimeError("OTelExporter.export() ran before setup(app).")
        histogram = self._histogram
        mapper = self._current_mapper()
        spans: list[ReadableSpan] = []
        for record in records:
            data = mapper.map(record)
            if histogram is not None:
                histogram.record(record.duration_ns / 1e9, data.metric_attributes)
            if self._tracer is not None:
                trace(self._tracer, record, data)
            else:
                span = t.cast(SpanBuilder, self._builder).span(record, data)
                if span is not None:
                    spans.append(span)
        if spans:
            self._send(spans)

    def _send(self, spans: list[ReadableSpan]) -> None:
        exporter = t.cast(SpanSender, self._span_exporter)
        if isinstance(self.processor, SyncProcessor):
            # In the request thread: an SDK batch processor sends for us.
            processor = self._sync_processor
            if processor is None:
                processor = self._sync_processor = BatchSpanProcessor(exporter)
            for span in spans:
                processor.on_end(span)
            return
        # A failure is logged by the sender; not raised, so the batch is not
        # retried on top of the sender's own retries.
        exporter.export(spans)

    def flush(self, timeout: float | None = None) -> bool:
        """Turn every queued record into a span and send it.

        :return: ``False`` if that did not finish within ``timeout`` seconds
            (for example while the collector does not answer).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        done = super().flush(timeout)
        if self._closed:
            return done
        processor = self._given_provider or self._sync_processor
        if processor is not None:
            # The SDK's batch processor ignores force_flush's time limit.
            done = _within(lambda: processor.force_flush(_FOREVER_MS), deadline) and done
        meter_provider = self._meter_provider
        if meter_provider is not None:
            done = meter_provider.force_flush(_millis_left(deadline, _FOREVER_MS)) and done
        return done

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Send what is queued, then stop; safe to call twice.

        The exporter's own exporters are shut down; a ``tracer_provider``
        passed in is only force-flushed. Records not sent within ``timeout``
        seconds are dropped, with a warning.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        super().shutdown(timeout)
        with self._close_lock:
            if self._closed or (self._span_exporter is None and self._tracer is None):
                return
            self._closed = True
        given, exporter = self._given_provider, self._span_exporter
        sync_processor = self._sync_processor
        if sync_processor is not None and not _within(
            lambda: sync_processor.force_flush(_FOREVER_MS), deadline
        ):
            logger.warning(
                "%s: the collector at %s did not take every span within %ss; the rest are dropped.",
                self.name,
                self._endpoint,
                timeout,
            )
        if exporter is not None:
            # Also ends the retries of an export still waiting on the collector.
            exporter.shutdown()
        elif given is not None and not _within(lambda: given.force_flush(_FOREVER_MS), deadline):
            logger.warning("%s: the tracer_provider did not flush within %ss.", self.name, timeout)
        if self._meter_provider is not None:
            self._meter_provider.shutdown(_millis_left(deadline, _DEFAULT_SHUTDOWN_MS))


def _millis_left(deadline: float | None, default: int) -> int:
    if deadline is None:
        return default
    return max(0, int((deadline - time.monotonic()) * 1000))


def _within(call: t.Callable[[], object], deadline: float | None) -> bool:
    """Run ``call``, giving up waiting at ``deadline``; whether it finished.

    A call that runs over goes on in a daemon thread: the SDK's span
    processor takes no time limit for flush and shutdown.
    """
    if deadline is None:
        return call() is not False
    result: list[object] = []
    thread = threading.Thread(
        target=lambda: result.append(call()), name="flask-traffic OTel flush", daemon=True
    )
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    return bool(result) and result[0] is not False
