"""A small OTLP/HTTP collector for the tests and the benchmark.

An ``http.server`` on 127.0.0.1 and a free port that takes what an
OpenTelemetry OTLP/HTTP exporter sends to ``/v1/traces`` and ``/v1/metrics``,
decodes the real protobuf requests with ``opentelemetry-proto``, and keeps
them. It can also hold every export until released, to stand for a
collector that hangs; answer the next exports with error statuses, to stand
for one that is overloaded; and serve TLS with a certificate given.
"""

from __future__ import annotations

import gzip
import ssl
import threading
import time
import typing as t
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["OTLPReceiver", "ReceivedSpan", "attributes"]

_WAIT = 30.0


def _value(value: AnyValue) -> t.Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return None if kind is None else getattr(value, kind)


def attributes(pairs: t.Iterable[KeyValue]) -> dict[str, t.Any]:
    """OTLP key-values as a plain dict (ints as int, strings as str)."""
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass
class ReceivedSpan:
    """One span as it arrived, with its resource and scope."""

    span: Span
    resource: dict[str, t.Any]
    scope_name: str
    scope_version: str
    scope_schema_url: str = ""
    #: When the export that carried it arrived, ns since the epoch.
    received_ns: int = 0

    @property
    def attributes(self) -> dict[str, t.Any]:
        return attributes(self.span.attributes)


class OTLPReceiver:
    """Collects OTLP/HTTP exports on ``http://127.0.0.1:<port>``."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.trace_requests: list[ExportTraceServiceRequest] = []
        self.metric_requests: list[ExportMetricsServiceRequest] = []
        #: When each of trace_requests arrived, ns since the epoch.
        self.trace_arrivals: list[int] = []
        #: Headers of every export, lower-case names.
        self.headers: list[dict[str, str]] = []
        self._changed = threading.Condition()
        self._release = threading.Event()
        self._release.set()
        self._held = 0
        # (status, Retry-After) answers for the next exports, in order.
        self._failures: list[tuple[int, str | None]] = []
        #: Every export's answer, refused ones included, in order.
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                receiver._hold_here()
                failure = receiver._next_failure()
                if failure is not None:
                    status, retry_after = failure
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                reply = receiver._take(self.path, body, dict(self.headers.items()))
                if reply is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.traces_endpoint = f"{self.endpoint}/v1/traces"
        self.metrics_endpoint = f"{self.endpoint}/v1/metrics"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp receiver", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # A collector that refuses exports for a while.

    def fail_next(self, *statuses: int, retry_after: str | None = None) -> None:
        """Answer the next exports with ``statuses``, one each, then as usual."""
        with self._changed:
            self._failures.extend((status, retry_after) for status in statuses)

    def _next_failure(self) -> tuple[int, str | None] | None:
        with self._changed:
            if not self._failures:
                return None
            failure = self._failures.pop(0)
            self.statuses.append(failure[0])
            self._changed.notify_all()
            return failure

    def _take(self, path: str, body: bytes, headers: dict[str, str]) -> bytes | None:
        reply: bytes | None
        with self._changed:
            self.statuses.append(200)
            self.headers.append({key.lower(): value for key, value in headers.items()})
            if path == "/v1/traces":
                self.trace_requests.append(ExportTraceServiceRequest.FromString(body))
                self.trace_arrivals.append(time.time_ns())
                reply = ExportTraceServiceResponse().SerializeToString()
            elif path == "/v1/metrics":
                self.metric_requests.append(ExportMetricsServiceRequest.FromString(body))
                reply = ExportMetricsServiceResponse().SerializeToString()
            else:
                reply = None
            self._changed.notify_all()
        return reply

    # A collector that hangs: exports wait in the handler until released.

    def _hold_here(self) -> None:
        if self._release.is_set():
            return
        with self._changed:
            self._held += 1
            self._changed.notify_all()
        self._release.wait(_WAIT)

    @contextmanager
    def hanging(self) -> Iterator[None]:
        """Hold every export that arrives until the block ends."""
        self._release.clear()
        try:
            yield
        finally:
            self._release.set()

    def wait_until_held(self, count: int = 1, timeout: float = _WAIT) -> bool:
        """Wait until ``count`` exports are being held by :meth:`hanging`."""
        with self._changed:
            return self._changed.wait_for(lambda: self._held >= count, timeout)

    # What arrived.

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            requests = list(zip(self.trace_requests, self.trace_arrivals, strict=False))
        found = []
        for request, arrived in requests:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append(
                            ReceivedSpan(
                                span,
                                resource,
                                scope_spans.scope.name,
                                scope_spans.scope.version,
                                scope_spans.schema_url,
                                arrived,
                            )
                        )
        return found

    def wait_for_spans(self, count: int, timeout: float = _WAIT) -> list[ReceivedSpan]:
        """The spans once at least ``count`` arrived (or ``timeout`` ran out)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.spans()) < count and time.monotonic() < deadline:
                self._changed.wait(max(0.0, deadline - time.monotonic()))
        return self.spans()

    def metrics(self, name: str) -> list[Metric]:
        """Every export of the metric ``name``, oldest first."""
        with self._changed:
            requests = list(self.metric_requests)
        return [
            metric
            for request in requests
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
            if metric.name == name
        ]

    def metric_resources(self) -> list[dict[str, t.Any]]:
        with self._changed:
            requests = list(self.metric_requests)
        return [
            attributes(resource_metrics.resource.attributes)
            for request in requests
            for resource_metrics in request.resource_metrics
        ]
