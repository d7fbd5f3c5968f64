"""OpenTelemetry traces: one booking is one trace, from the REST request through Kafka to every
agent and the materializer.

The W3C trace context (``traceparent``/``tracestate``) travels in Kafka headers:

* the API continues a caller's ``traceparent`` (or starts a trace) with one span per request,
  and ``EventPublisher`` injects the current span's context into the headers of what it sends;
* an agent or the materializer extracts the context from the consumed message's headers and
  handles the event inside a child span (attributes ``booking_id``, ``event_type``,
  ``correlation_id``); the events it emits carry that span's context, so the next agent's span
  is its child.

Off by default (``ERYNOA_TRACING_EXPORTER=none``): no provider is installed, every helper here
returns at its first line and nothing is allocated; a caller's ``traceparent`` still passes
through the headers unchanged. ``console`` writes one JSON line per span to stderr; ``otlp``
exports over OTLP/HTTP to ``ERYNOA_OTLP_ENDPOINT``. While tracing is on, every JSON log line
written inside a span carries its ``trace_id`` and ``span_id`` (``erynoa.logs``).

    configure(settings, "erynoa-api")           # once per process, at start
    with consumer_span("streams", "reservation process", message.headers, attrs):
        ...                                     # events published here carry this span
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from erynoa.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from erynoa.events import BookingEvent

KafkaHeaders = Sequence[tuple[str, bytes]]

TRACE_HEADERS = ("traceparent", "tracestate")

_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None


class KafkaHeadersGetter(Getter[KafkaHeaders]):
    """Reads a header from a Kafka header list (names compared case-insensitively)."""

    def get(self, carrier: KafkaHeaders, key: str) -> list[str] | None:
        wanted = key.lower()
        values = [
            value.decode("utf-8", "replace")
            for name, value in carrier
            if name.lower() == wanted and value is not None
        ]
        return values or None

    def keys(self, carrier: KafkaHeaders) -> list[str]:
        return [name for name, _ in carrier]


class KafkaHeadersSetter(Setter[list[tuple[str, bytes]]]):
    """Writes a header into a Kafka header list, replacing any value it had."""

    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        wanted = key.lower()
        carrier[:] = [(name, raw) for name, raw in carrier if name.lower() != wanted]
        carrier.append((key, value.encode("utf-8")))


kafka_getter = KafkaHeadersGetter()
kafka_setter = KafkaHeadersSetter()


def configure(settings: Settings, service: str) -> bool:
    """Install this process's tracer provider from settings; False (and no cost) when off."""
    if settings.tracing_exporter == "none":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from erynoa import __version__

    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.version": __version__}),
        # A trace started upstream keeps its sampling decision, so a booking's trace is whole.
        sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio)),
    )
    if settings.tracing_exporter == "console":
        # One compact line per span, written synchronously from the thread that ended it: it
        # shares stderr with the JSON logs and must not interleave with them mid-line.
        console = ConsoleSpanExporter(
            out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + os.linesep
        )
        provider.add_span_processor(SimpleSpanProcessor(console))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    use(provider)
    return True


def use(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (None: off). Tests install an in-memory one here."""
    global _provider
    _provider = provider


def enabled() -> bool:
    return _provider is not None


def shutdown() -> None:
    """Export what is still buffered (a worker that stops gracefully)."""
    if _provider is not None:
        _provider.shutdown()


def tracer(name: str) -> Tracer:
    """A tracer of this process's provider (the no-op tracer while tracing is off)."""
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer(name)


def extract(headers: KafkaHeaders | Mapping[str, str] | None) -> Context:
    """The trace context some headers carry (an empty context if none): a Kafka header list, or
    headers kept as text (an HTTP request's, an agent's stored ones)."""
    if isinstance(headers, Mapping):
        return _propagator.extract(headers)
    return _propagator.extract(list(headers or ()), getter=kafka_getter)


def inject(headers: list[tuple[str, bytes]]) -> None:
    """Put the current span's context into a Kafka header list (nothing if there is none)."""
    if _provider is not None:
        _propagator.inject(headers, setter=kafka_setter)


def inject_into(headers: MutableMapping[str, str]) -> None:
    """Put the current span's context into headers kept as text (an agent's outbox)."""
    if _provider is not None:
        _propagator.inject(headers)


def event_attributes(event: BookingEvent) -> dict[str, str]:
    """The attributes every span about one booking event carries."""
    return {
        "booking_id": event.booking_id,
        "event_type": event.event_type,
        "event_id": event.event_id,
        "correlation_id": event.correlation_id,
    }


@contextmanager
def span(
    component: str,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Context | None = None,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[Span | None]:
    """A span made current for the block (``parent``: the current context if None); yields
    None, at no cost, while tracing is off."""
    if _provider is None:
        yield None
        return
    with tracer(component).start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes
    ) as current:
        yield current


@contextmanager
def consumer_span(
    component: str,
    name: str,
    headers: KafkaHeaders | Mapping[str, str] | None,
    attributes: Mapping[str, str | int] | None = None,
    kind: SpanKind = SpanKind.CONSUMER,
) -> Iterator[Span | None]:
    """Handle one consumed message (or a timer's work on stored headers) inside a child span of
    the context its headers carry.

    Yields None while tracing is off. Events published inside carry the new span's context.
    """
    if _provider is None:
        yield None
        return
    with span(
        component,
        name,
        kind=kind,
        parent=extract(headers),
        attributes={"messaging.system": "kafka", **(attributes or {})},
    ) as current:
        yield current


def annotate(event: BookingEvent) -> None:
    """Put the event's attributes on the current span (known only once the message decoded)."""
    if _provider is not None:
        trace.get_current_span().set_attributes(event_attributes(event))


def start_consumer_span(
    component: str,
    name: str,
    headers: KafkaHeaders | None,
    attributes: Mapping[str, str | int] | None = None,
) -> Span | None:
    """Like ``consumer_span`` but not made current; the caller ends it (a batch's events)."""
    if _provider is None:
        return None
    return tracer(component).start_span(
        name,
        context=extract(headers),
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "kafka", **(attributes or {})},
    )


def log_fields() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span, for log lines (empty when off)."""
    if _provider is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }
