"""Metrics and trace plumbing without the stack: the Kafka header getter/setter, trace context
carried into published headers, trace ids on log lines, metric labels and ports, and the API's
route-template labels."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from api.metrics import ApiMetrics, MetricsMiddleware
from api.middleware import BodyGuardMiddleware, RequestContextMiddleware
from erynoa import events as ev
from erynoa import metrics, tracing
from erynoa.codec import local_codec
from erynoa.kafka import EventPublisher
from erynoa.logs import JsonFormatter
from erynoa.settings import Settings
from erynoa.topics import load_catalog
from tests.builders import booking_requested

SETTINGS = Settings()
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, spans kept in memory; off again afterwards."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use(provider)
    yield spans
    tracing.use(None)
    provider.shutdown()


# --- the Kafka header getter and setter -----------------------------------------------------


def test_getter_reads_a_header_case_insensitively_and_every_value() -> None:
    headers = [("traceparent", b"a"), ("x", b"1"), ("TraceParent", b"b")]
    assert tracing.kafka_getter.get(headers, "traceparent") == ["a", "b"]
    assert tracing.kafka_getter.get(headers, "tracestate") is None
    assert tracing.kafka_getter.keys(headers) == ["traceparent", "x", "TraceParent"]


def test_setter_replaces_a_header_and_keeps_the_others() -> None:
    headers = [("traceparent", b"old"), ("x-request-id", b"r1"), ("TRACEPARENT", b"older")]
    tracing.kafka_setter.set(headers, "traceparent", "new")
    assert headers == [("x-request-id", b"r1"), ("traceparent", b"new")]


def test_context_survives_a_round_trip_through_kafka_headers(
    exporter: InMemorySpanExporter,
) -> None:
    headers: list[tuple[str, bytes]] = [("traceparent", TRACEPARENT.encode())]
    with tracing.consumer_span("test", "handle", headers, {"booking_id": "b1"}) as span:
        assert span is not None
        out: list[tuple[str, bytes]] = []
        tracing.inject(out)
    (finished,) = exporter.get_finished_spans()
    assert finished.context is not None
    assert finished.parent is not None
    # The child continues the caller's trace, and what it publishes points at the child.
    assert trace.format_trace_id(finished.context.trace_id) == TRACEPARENT.split("-")[1]
    assert trace.format_span_id(finished.parent.span_id) == TRACEPARENT.split("-")[2]
    assert finished.kind == trace.SpanKind.CONSUMER
    assert finished.attributes is not None
    assert finished.attributes["booking_id"] == "b1"
    context = trace.get_current_span(tracing.extract(out)).get_span_context()
    assert context.trace_id == finished.context.trace_id
    assert context.span_id == finished.context.span_id


def test_tracing_off_costs_nothing_and_passes_a_callers_context_through() -> None:
    assert not tracing.enabled()
    headers = [("traceparent", TRACEPARENT.encode())]
    with tracing.consumer_span("test", "handle", headers) as span:
        assert span is None
        tracing.inject(headers)
        text: dict[str, str] = {}
        tracing.inject_into(text)
    assert headers == [("traceparent", TRACEPARENT.encode())]
    assert text == {}
    assert tracing.log_fields() == {}
    assert tracing.start_consumer_span("test", "x", headers) is None


class _Sent:
    def __init__(self) -> None:
        self.headers: list[tuple[str, bytes]] = []

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
        self.headers = kwargs["headers"]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(type("Meta", (), {"topic": topic, "partition": 0, "offset": 7})())
        return future


def _requested() -> ev.BookingRequested:
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    return booking_requested(
        booking_id="5c0a4f4e-1d2b-4c3a-8e9f-0a1b2c3d4e5f",
        occurred_at=now,
        slot_start=now + timedelta(days=3),
    )


async def _publish_in_span(headers: dict[str, str]) -> tuple[list[tuple[str, bytes]], str | None]:
    producer = _Sent()
    publisher = EventPublisher(producer, local_codec(), load_catalog(SETTINGS.topics_file))  # type: ignore[arg-type]
    with tracing.span("test", "request") as span:
        await publisher.publish(_requested(), headers)
    trace_id = trace.format_trace_id(span.get_span_context().trace_id) if span is not None else None
    return producer.headers, trace_id


async def test_published_events_carry_the_current_span_not_the_passed_on_context(
    exporter: InMemorySpanExporter,
) -> None:
    sent, trace_id = await _publish_in_span({"traceparent": TRACEPARENT, "x-request-id": "r1"})
    values = [v.decode() for n, v in sent if n == "traceparent"]
    assert len(values) == 1
    assert values[0].split("-")[1] == trace_id
    assert ("x-request-id", b"r1") in sent


async def test_without_tracing_a_passed_on_context_is_published_unchanged() -> None:
    sent, _ = await _publish_in_span({"traceparent": TRACEPARENT})
    assert [v for n, v in sent if n == "traceparent"] == [TRACEPARENT.encode()]


def test_log_lines_inside_a_span_carry_its_trace_id(exporter: InMemorySpanExporter) -> None:
    formatter = JsonFormatter("test")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", (), None)
    record.booking_id = "b1"
    assert "trace_id" not in json.loads(formatter.format(record))
    with tracing.span("test", "work") as span:
        assert span is not None
        line = json.loads(formatter.format(record))
    assert line["trace_id"] == trace.format_trace_id(span.get_span_context().trace_id)
    assert line["span_id"] == trace.format_span_id(span.get_span_context().span_id)
    assert line["booking_id"] == "b1"


# --- metric helpers -------------------------------------------------------------------------


def test_labels_outside_the_known_set_become_other() -> None:
    known = {"BookingRequested", "ReservationHeld"}
    assert metrics.bounded("ReservationHeld", known) == "ReservationHeld"
    assert metrics.bounded("Evil{label}", known) == "other"
    assert metrics.bounded(None, known, other="undecodable") == "undecodable"


def test_each_process_has_its_port_and_zero_turns_them_off() -> None:
    settings = Settings(metrics_port_base=9300)
    ports = {part: metrics.port_for(settings, part) for part in metrics.PORT_OFFSETS}
    assert ports["materializer"] == 9300
    assert ports["reservation"] == 9301
    assert ports["provider-response"] == 9304
    assert len(set(ports.values())) == len(ports)
    assert metrics.port_for(Settings(metrics_port_base=0), "payment") is None


def test_lag_is_end_minus_position_when_both_are_known() -> None:
    assert metrics.lag(10, 4) == 6
    assert metrics.lag(10, 12) == 0  # a stale end offset is not negative lag
    assert metrics.lag(None, 4) is None
    assert metrics.lag(-1, 4) is None


def test_partition_lag_forgets_partitions_that_moved_away() -> None:
    registry = CollectorRegistry()
    lag = metrics.PartitionLag(registry, "erynoa-reservation")

    def sample(topic: str, partition: int) -> float | None:
        labels = {"group": "erynoa-reservation", "topic": topic, "partition": str(partition)}
        return registry.get_sample_value("erynoa_consumer_lag", labels)

    lag.update({("bookings", 0): 5, ("bookings", 1): 0})
    assert sample("bookings", 0) == 5
    lag.update({("bookings", 1): 2})
    assert sample("bookings", 0) is None
    assert sample("bookings", 1) == 2


def test_a_taken_metrics_port_is_a_warning_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert metrics.serve(metrics.new_registry(), "127.0.0.1", port) is None
    assert "unavailable" in caplog.text
    assert metrics.serve(metrics.new_registry(), "127.0.0.1", None) is None


def test_a_metrics_server_serves_its_registry() -> None:
    registry = metrics.new_registry()
    metrics.PartitionLag(registry, "g").update({("t", 3): 9})
    server = metrics.serve(registry, "127.0.0.1", 0)
    assert server is not None
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    finally:
        server.stop()
    assert 'erynoa_consumer_lag{group="g",partition="3",topic="t"} 9.0' in text
    assert "process_cpu_seconds_total" in text


# --- the API's request metrics --------------------------------------------------------------


def _app() -> tuple[FastAPI, ApiMetrics]:
    app = FastAPI()
    router = APIRouter(prefix="/things")

    @router.get("/{thing_id}")
    async def get_thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    @router.post("")
    async def add_thing() -> dict[str, int]:
        return {}

    app.include_router(router, prefix="/api/v1")
    api_metrics = ApiMetrics(CollectorRegistry())
    app.state.metrics = api_metrics
    app.add_middleware(BodyGuardMiddleware, max_bytes=10)
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=api_metrics)
    return app, api_metrics


def _count(m: ApiMetrics, method: str, route: str, status: int) -> float:
    labels = {"method": method, "route": route, "status": str(status)}
    return m.registry.get_sample_value("erynoa_http_requests_total", labels) or 0.0


async def test_requests_are_counted_by_route_template_never_by_raw_path() -> None:
    app, m = _app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/api/v1/things/1")
        await client.get("/api/v1/things/2")
        await client.get("/no/such/path/3")
        # Refused by a middleware before any routing, still under its route's template.
        await client.post(
            "/api/v1/things", content=b"x" * 100, headers={"content-type": "application/json"}
        )
        await client.delete("/api/v1/things/2")
    exposition = m.exposition().decode()
    assert _count(m, "GET", "/api/v1/things/{thing_id}", 200) == 2
    assert _count(m, "GET", "<unmatched>", 404) == 1
    assert _count(m, "POST", "/api/v1/things", 413) == 1
    assert _count(m, "DELETE", "/api/v1/things/{thing_id}", 405) == 1
    assert "/api/v1/things/1" not in exposition
    duration = m.registry.get_sample_value(
        "erynoa_http_request_duration_seconds_count",
        {"method": "GET", "route": "/api/v1/things/{thing_id}"},
    )
    assert duration == 2
    assert m.registry.get_sample_value("erynoa_http_requests_in_flight") == 0


async def test_a_request_span_continues_the_callers_trace(
    exporter: InMemorySpanExporter,
) -> None:
    app, _ = _app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/api/v1/things/7", headers={"traceparent": TRACEPARENT})
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /api/v1/things/{thing_id}"
    assert span.kind == trace.SpanKind.SERVER
    assert span.context is not None
    assert trace.format_trace_id(span.context.trace_id) == TRACEPARENT.split("-")[1]
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["http.route"] == "/api/v1/things/{thing_id}"


@pytest.mark.parametrize("exporter_name", ["console", "otlp"])
def test_settings_choose_the_exporter_and_none_installs_nothing(exporter_name: str) -> None:
    assert tracing.configure(Settings(tracing_exporter="none"), "erynoa-test") is False
    assert not tracing.enabled()
    # Building an exporter connects to nothing (OTLP sends only when spans are exported).
    settings = Settings(
        tracing_exporter=exporter_name, otlp_endpoint="http://127.0.0.1:9/v1/traces"
    )
    try:
        assert tracing.configure(settings, "erynoa-test") is True
        assert tracing.enabled()
    finally:
        tracing.use(None)
