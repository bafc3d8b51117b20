"""Finished spans made from traffic records, without a tracer.

:class:`SpanBuilder` makes the SDK's ``ReadableSpan`` directly, for the OTLP
span exporter: the sampler, id generator and limits are read from the
environment as the SDK's ``TracerProvider`` reads them; :func:`trace` makes
the same span through a tracer of the user's own.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    get_current_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from flask_traffic import TrafficRecord

from ._semconv import Attributes, SpanData

__all__ = ["SpanBuilder", "parent_of", "status_of", "trace"]

_EMPTY_CONTEXT = Context()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
_propagator = TraceContextTextMapPropagator()


class _Resource(Resource):
    """A resource whose hash is computed once: the OTLP encoder groups spans
    by resource, and ``Resource`` hashes its attributes as JSON every time."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


def _bounded(attributes: Attributes, limit: int | None) -> Attributes:
    """``attributes`` with text cut to ``limit`` characters, as the SDK's
    span limits cut it."""
    if limit is None:
        return attributes
    return {
        key: value[:limit] if isinstance(value, str) else value for key, value in attributes.items()
    }


class SpanBuilder:
    """Makes the finished span of each record, as a tracer of an SDK
    ``TracerProvider`` set up from the environment would.

    :param resource: the spans' resource.
    :param scope: their instrumentation scope.
    """

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self._resource = _Resource(resource)
        self._scope = scope
        # Never given a span processor: it only reads the sampler and the id
        # generator from the environment (OTEL_TRACES_SAMPLER...) as the SDK
        # does.
        self._settings = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._limits = SpanLimits()

    def span(self, record: TrafficRecord, data: SpanData) -> ReadableSpan | None:
        """The finished span of ``record``, or ``None`` when it is sampled out."""
        settings = self._settings
        limits = self._limits
        context = parent_of(record)
        parent: SpanContext | None = get_current_span(context).get_span_context()
        ids = settings.id_generator
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
        else:
            parent = None
            trace_id = ids.generate_trace_id()
        attributes = _bounded(data.attributes, limits.max_span_attribute_length)
        sampling = settings.sampler.should_sample(
            context, trace_id, data.name, SpanKind.SERVER, attributes
        )
        if sampling.decision is not Decision.RECORD_AND_SAMPLE:
            return None
        start = record.start_time_ns
        end = start + record.duration_ns
        events: tuple[Event, ...] = ()
        if data.exception_event is not None:
            event = _bounded(data.exception_event, limits.max_attribute_length)
            events = (Event("exception", event, timestamp=end),)
        return ReadableSpan(
            name=data.name,
            context=SpanContext(
                trace_id,
                ids.generate_span_id(),
                is_remote=False,
                trace_flags=_SAMPLED,
                trace_state=sampling.trace_state,
            ),
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            events=events,
            kind=SpanKind.SERVER,
            instrumentation_scope=self._scope,
            status=status_of(data),
            start_time=start,
            end_time=end,
        )


def trace(tracer: Tracer, record: TrafficRecord, data: SpanData) -> None:
    """The span of ``record`` through a ``tracer_provider`` of the user's."""
    start = record.start_time_ns
    end = start + record.duration_ns
    span = tracer.start_span(
        data.name,
        context=parent_of(record),
        kind=SpanKind.SERVER,
        attributes=data.attributes,
        start_time=start,
        record_exception=False,
        set_status_on_exception=False,
    )
    if data.failed and span.is_recording():
        span.set_status(status_of(data))
        if data.exception_event is not None:
            span.add_event("exception", data.exception_event, timestamp=end)
    span.end(end_time=end)


def status_of(data: SpanData) -> Status:
    """The span status of a record mapped to ``data``."""
    if not data.failed:
        return _UNSET
    return _ERROR if data.description is None else Status(StatusCode.ERROR, data.description)


def parent_of(record: TrafficRecord) -> Context:
    """The caller's trace context from the record's ``traceparent``, if any."""
    if record.traceparent is None:
        return _EMPTY_CONTEXT
    carrier = {"traceparent": record.traceparent}
    if record.tracestate is not None:
        carrier["tracestate"] = record.tracestate
    return _propagator.extract(carrier)
