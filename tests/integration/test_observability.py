"""Operating the system: one booking made through the REST API shows up in the Prometheus metrics
of the API, an agent and the materializer, in the JSON logs of every process (by its
correlation id), and as one trace from the API's span into every agent's and the
materializer's spans.

The whole system runs as subprocesses (``erynoa.supervisor.System``: the API, the four agents,
the materializer) on this module's own topics and database, with console tracing on and the
materializer logging each event (DEBUG).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from erynoa.metrics import PORT_OFFSETS
from erynoa.settings import Settings
from erynoa.supervisor import AGENTS, System
from tests.builders import service_body
from tests.conftest import own_namespace
from tests.integration.saga.harness import Mailbox, a_slot, free_port

pytestmark = pytest.mark.integration

BOOKINGS_POST = {"method": "POST", "route": "/api/v1/bookings", "status": "202"}
WAIT_S = 90.0


def free_port_block(size: int) -> int:
    """The first of ``size`` consecutive free ports (the metrics ports of the processes)."""
    for _ in range(50):
        base = 20_000 + uuid.uuid4().int % 40_000
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports")


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy (not a timing assertion: a bound)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


class Running:
    """The system's processes, their settings, ports and log files."""

    def __init__(self, settings: Settings, metrics_base: int, log_dir: Path) -> None:
        self.settings = settings
        self.metrics_base = metrics_base
        self.log_dir = log_dir
        self.base_url = settings.public_base_url

    def metrics_url(self, part: str) -> str:
        return f"http://127.0.0.1:{self.metrics_base + PORT_OFFSETS[part]}/metrics"

    def scrape(self, part: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = httpx.get(self.metrics_url(part), timeout=5).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, part: str, name: str, **labels: str) -> float:
        return self.scrape(part).get((name, frozenset(labels.items())), 0.0)

    def log_lines(self, part: str) -> list[dict[str, Any]]:
        path = self.log_dir / f"{part}.log"
        lines = []
        for raw in path.read_text(errors="replace").splitlines() if path.exists() else []:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                lines.append(entry)
        return lines

    def token(self, sub: str, role: str) -> str:
        from api.auth import issue_dev_token

        return issue_dev_token(self.settings, sub, [role], 3600, email=f"{sub}@example.test")


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    with Mailbox() as box:
        yield box


@pytest.fixture(scope="module")
async def running(
    settings: Settings, mailbox: Mailbox, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    async with own_namespace(settings) as isolated:
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        issuer = f"{base_url}/api/v1/auth/dev"
        metrics_base = free_port_block(len(PORT_OFFSETS))
        env = {
            "ERYNOA_TOPIC_PREFIX": isolated.topic_prefix,
            "ERYNOA_DATABASE_URL": isolated.database_url,
            "ERYNOA_KAFKA_BOOTSTRAP": isolated.kafka_bootstrap,
            "ERYNOA_API_PORT": str(port),
            "ERYNOA_PUBLIC_BASE_URL": base_url,
            "ERYNOA_OIDC_ISSUER": issuer,
            "ERYNOA_METRICS_PORT_BASE": str(metrics_base),
            "ERYNOA_SMTP_HOST": "127.0.0.1",
            "ERYNOA_SMTP_PORT": str(mailbox.port),
            "ERYNOA_PAYMENT_GATEWAY": "sandbox",
            "ERYNOA_TRACING_EXPORTER": "console",
            "ERYNOA_LOG_LEVEL": "DEBUG",
        }
        log_dir = tmp_path_factory.mktemp("observability")
        system = System(env={**os.environ, **env}, log_dir=log_dir)
        here = Running(
            isolated.model_copy(
                update={"api_port": port, "public_base_url": base_url, "oidc_issuer": issuer}
            ),
            metrics_base,
            log_dir,
        )
        system.start()
        try:
            _wait_until_up(system, here)
            yield here
        finally:
            system.stop(timeout=30)


def _wait_until_up(system: System, running: Running) -> None:
    def up() -> bool:
        exited = system.exited()
        if exited:
            name = exited[0][0]
            tail = (running.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{name} exited {exited[0][1]}:\n{tail}")
        ready = {
            *(f"agent {a} ready" for a in AGENTS),
            "materializer started",
        }
        seen = {
            line.get("msg")
            for part in (*AGENTS, "materializer")
            for line in running.log_lines(part)
        }
        if not ready <= seen:
            return False
        try:
            return httpx.get(f"{running.base_url}/api/v1/health/live", timeout=1).is_success
        except httpx.HTTPError:
            return False

    wait_for("the system to start", up, timeout=120)


@pytest.fixture(scope="module")
def booking(running: Running) -> dict[str, str]:
    """One booking through the REST API, with the metrics scraped before and after it."""
    provider, customer = f"prov-{uuid.uuid4().hex[:8]}", f"cust-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=running.base_url, timeout=30) as http:
        created = http.post(
            "/api/v1/services",
            json=service_body(name="Observed haircut"),
            headers={"Authorization": f"Bearer {running.token(provider, 'provider')}"},
        )
        assert created.status_code == 201, created.text
        service_id = created.json()["data"]["id"]

        before = {
            "api": running.value("api", "erynoa_http_requests_total", **BOOKINGS_POST),
            "reservation": running.value(
                "reservation",
                "erynoa_agent_events_processed_total",
                agent="reservation",
                event_type="BookingRequested",
            ),
            "materializer": running.value(
                "materializer", "erynoa_materializer_events_total", outcome="applied"
            ),
        }
        correlation_id = f"obs-{uuid.uuid4().hex}"
        customer_auth = {"Authorization": f"Bearer {running.token(customer, 'customer')}"}
        response = http.post(
            "/api/v1/bookings",
            json={
                "service_id": service_id,
                "slot_start": a_slot().isoformat(),
                "payment_method": "pm_card_visa",
            },
            # The request id of the request that starts a saga is its correlation id.
            headers={**customer_auth, "X-Request-ID": correlation_id},
        )
        assert response.status_code == 202, response.text
        booking_id = response.json()["workflow_id"]

        def awaiting_provider() -> bool:
            got = http.get(f"/api/v1/bookings/{booking_id}", headers=customer_auth)
            return got.status_code == 200 and got.json()["data"]["status"] == "awaiting_provider"

        # Every agent has handled one of its events once the booking waits for the provider.
        wait_for("the booking to await its provider", awaiting_provider)
    return {
        "booking_id": booking_id,
        "correlation_id": correlation_id,
        **{f"before_{part}": str(value) for part, value in before.items()},
    }


def test_metrics_of_the_api_an_agent_and_the_materializer_count_the_booking(
    running: Running, booking: dict[str, str]
) -> None:
    api = running.value("api", "erynoa_http_requests_total", **BOOKINGS_POST)
    assert api == float(booking["before_api"]) + 1
    latency = running.value(
        "api",
        "erynoa_http_request_duration_seconds_count",
        method="POST",
        route="/api/v1/bookings",
    )
    assert latency >= 1

    def reservation_counted() -> bool:
        processed = running.value(
            "reservation",
            "erynoa_agent_events_processed_total",
            agent="reservation",
            event_type="BookingRequested",
        )
        return processed >= float(booking["before_reservation"]) + 1

    def materializer_counted() -> bool:
        applied = running.value(
            "materializer", "erynoa_materializer_events_total", outcome="applied"
        )
        return applied >= float(booking["before_materializer"]) + 1

    # The processes count right after the work the test already saw; poll, don't sleep.
    wait_for("the reservation agent's count", reservation_counted, timeout=10)
    wait_for("the materializer's count", materializer_counted, timeout=10)

    reservation = running.scrape("reservation")
    assert any(name == "erynoa_agent_handler_duration_seconds_count" for name, _ in reservation)
    materializer = running.scrape("materializer")
    assert any(name == "erynoa_materializer_batch_size_count" for name, _ in materializer)
    lag = [dict(labels) for name, labels in materializer if name == "erynoa_consumer_lag"]
    assert lag, "the materializer reports lag for its partitions"
    assert all(entry["group"].endswith("erynoa-materializer") for entry in lag)

    def deadline_counted() -> bool:
        pending = running.value(
            "provider-response", "erynoa_agent_deadlines_pending", agent="provider-response"
        )
        return pending >= 1  # this booking's deadline, at least

    def agent_lag_reported() -> bool:
        return any(
            name == "erynoa_consumer_lag" and dict(labels)["group"].endswith("erynoa-reservation")
            for name, labels in running.scrape("reservation")
        )

    # Both are refreshed every few seconds by the agents' timers.
    wait_for("provider-response's pending deadlines", deadline_counted, timeout=15)
    wait_for("the reservation agent's consumer lag", agent_lag_reported, timeout=15)


def test_one_correlation_id_leads_through_the_logs_of_every_process(
    running: Running, booking: dict[str, str]
) -> None:
    correlation_id = booking["correlation_id"]
    for part in ("api", *AGENTS, "materializer"):

        def mentioned(part: str = part) -> list[dict[str, Any]]:
            return [
                line
                for line in running.log_lines(part)
                if line.get("correlation_id") == correlation_id
            ]

        lines = wait_for(f"{part} to log {correlation_id}", mentioned, timeout=15)
        assert all(line["booking_id"] == booking["booking_id"] for line in lines), part


def _api_trace_id(running: Running, correlation_id: str) -> str:
    published = [
        line
        for line in running.log_lines("api")
        if line.get("correlation_id") == correlation_id and line.get("event_type")
    ]
    assert published, "the API logs what it published"
    trace_id = published[0].get("trace_id")
    assert isinstance(trace_id, str), published[0]
    return trace_id


def _exported_spans(running: Running, part: str) -> list[dict[str, Any]]:
    # The console exporter writes one JSON object per span, beside the log lines.
    return [line for line in running.log_lines(part) if "context" in line and "kind" in line]


def test_one_booking_is_one_trace_from_the_api_into_every_agent_and_the_materializer(
    running: Running, booking: dict[str, str]
) -> None:
    trace_id = _api_trace_id(running, booking["correlation_id"])
    api_spans = [
        s for s in _exported_spans(running, "api") if s["context"]["trace_id"] == f"0x{trace_id}"
    ]
    assert {s["kind"] for s in api_spans} >= {"SpanKind.SERVER", "SpanKind.PRODUCER"}

    for part in (*AGENTS, "materializer"):

        def traced(part: str = part) -> list[dict[str, Any]]:
            return [
                span
                for span in _exported_spans(running, part)
                if span["context"]["trace_id"] == f"0x{trace_id}"
                and span["attributes"].get("booking_id") == booking["booking_id"]
            ]

        spans = wait_for(f"{part}'s spans in the API's trace", traced, timeout=15)
        assert all(s["kind"] == "SpanKind.CONSUMER" for s in spans), part
        assert all(s["parent_id"] for s in spans), part  # children, never new roots
        assert all(s["attributes"]["correlation_id"] == booking["correlation_id"] for s in spans), (
            part
        )
        # The handler's log lines carry the same trace id.
        lines = [
            line
            for line in running.log_lines(part)
            if line.get("correlation_id") == booking["correlation_id"] and "msg" in line
        ]
        assert any(line.get("trace_id") == trace_id for line in lines), part
