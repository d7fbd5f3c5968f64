"""Operators' endpoints: statistics from Postgres and Kafka, in-flight sagas, one saga's
timeline, and cancel/retry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from erynoa import events as ev
from tests.conftest import unique
from tests.integration.api.conftest import Actors, Probe, insert_booking

pytestmark = pytest.mark.integration


async def test_admin_endpoints_are_403_for_everyone_else(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    booking_id = await insert_booking(pg, actors, "awaiting_provider")
    for auth in (actors.customer_auth, actors.provider_auth):
        for method, path, body in [
            ("GET", "/admin/stats", None),
            ("GET", "/admin/workflows", None),
            ("GET", f"/admin/workflows/{booking_id}", None),
            ("POST", f"/admin/workflows/{booking_id}", {"action": "cancel"}),
        ]:
            response = await http.request(method, path, json=body, headers=auth)
            assert response.status_code == 403, (path, response.text)
            assert response.json()["error"]["code"] == "FORBIDDEN"
    assert (await http.get("/admin/stats")).status_code == 401


async def test_stats_count_bookings_events_lag_and_dead_letters(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    await insert_booking(pg, actors, "confirmed", payment="captured", hold="converted")
    response = await http.get("/admin/stats", headers=actors.admin_auth)
    assert response.status_code == 200, response.text
    stats = response.json()["data"]
    assert stats["kafka_error"] is None
    assert stats["bookings_by_status"]["confirmed"] >= 1
    assert stats["bookings_total"] == sum(stats["bookings_by_status"].values())
    assert stats["events_per_topic"]["bookings"] >= 0
    assert "catalog-services" in stats["events_per_topic"]
    assert "erynoa-materializer" in stats["consumer_lag"]
    assert all(lag >= 0 for lag in stats["consumer_lag"].values())
    assert "payment.dlq" in stats["dead_letters"]


async def test_workflows_lists_in_flight_and_stuck_sagas(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    waiting = await insert_booking(
        pg, actors, "awaiting_provider", provider_deadline_at=now + timedelta(hours=1)
    )
    overdue = await insert_booking(
        pg, actors, "awaiting_provider", provider_deadline_at=now - timedelta(minutes=1)
    )
    idle = await insert_booking(
        pg, actors, "reserved", payment="none", updated_at=now - timedelta(minutes=10)
    )
    compensating = await insert_booking(pg, actors, "cancelled", hold="held", payment="voided")
    done = await insert_booking(pg, actors, "rejected", hold="released", payment="voided")
    confirmed = await insert_booking(pg, actors, "confirmed", hold="converted", payment="captured")

    async def ids(**params: str | int) -> set[str]:
        response = await http.get(
            "/admin/workflows",
            params={"provider_id": actors.provider, **params},
            headers=actors.admin_auth,
        )
        assert response.status_code == 200, response.text
        return {w["id"] for w in response.json()["data"]}

    assert await ids() == {waiting, overdue, idle, compensating}
    listed = await http.get(
        "/admin/workflows", params={"provider_id": actors.provider}, headers=actors.admin_auth
    )
    assert listed.json()["meta"]["total"] == 4
    assert listed.json()["meta"]["total_capped"] is False
    assert done not in await ids()
    assert confirmed not in await ids()
    assert await ids(stuck="true") == {overdue, idle}
    assert await ids(stuck="true", stuck_after_seconds=3600) == {overdue}
    assert await ids(status="reserved") == {idle}
    assert await ids(min_age_seconds=3600) == set()


async def test_a_workflows_timeline(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    booking_id = await insert_booking(pg, actors, "reserved", payment="none")
    start = datetime.now(UTC) - timedelta(seconds=30)
    for i, (event_type, producer, delay) in enumerate(
        [("BookingRequested", "api", 0.0), ("ReservationHeld", "reservation", 1.5)]
    ):
        await pg.execute(
            "INSERT INTO booking_events (event_id, booking_id, event_type, producer, occurred_at, "
            'correlation_id, topic, partition, "offset", payload, body) '
            "VALUES ($1, $2, $3, $4, $5, 'c', $6, 2, $7, '{}'::jsonb, ''::bytea)",
            unique(),
            booking_id,
            event_type,
            producer,
            start + timedelta(seconds=delay),
            "bookings" if i == 0 else "reservations",
            100 + i,
        )
    response = await http.get(f"/admin/workflows/{booking_id}", headers=actors.admin_auth)
    assert response.status_code == 200, response.text
    workflow = response.json()["data"]
    assert workflow["in_flight"] is True
    timeline = workflow["timeline"]
    assert [(t["event_type"], t["producer"], t["topic"]) for t in timeline] == [
        ("BookingRequested", "api", "bookings"),
        ("ReservationHeld", "reservation", "reservations"),
    ]
    assert timeline[0]["since_previous_ms"] is None
    assert timeline[1]["since_previous_ms"] == 1500.0
    missing = await http.get(f"/admin/workflows/{unique()}", headers=actors.admin_auth)
    assert missing.status_code == 404


async def test_operator_cancel_and_retry(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool, probe_topic: Probe
) -> None:
    bookings_topic = await probe_topic("bookings")
    booking_id = await insert_booking(pg, actors, "awaiting_provider")
    path = f"/admin/workflows/{booking_id}"
    retry = await http.post(
        path, json={"action": "retry", "step": "payment"}, headers=actors.admin_auth
    )
    assert retry.status_code == 202, retry.text
    assert retry.json()["poll_url"] == f"/api/v1/bookings/{booking_id}"
    default_retry = await http.post(path, json={"action": "retry"}, headers=actors.admin_auth)
    assert default_retry.status_code == 202
    cancel = await http.post(path, json={"action": "cancel"}, headers=actors.admin_auth)
    assert cancel.status_code == 202

    seen = [s.event for s in await bookings_topic.events() if s.event.key == booking_id]
    retries = [e for e in seen if isinstance(e, ev.SagaRetryRequested)]
    cancels = [e for e in seen if isinstance(e, ev.BookingCancellationRequested)]
    assert sorted(r.step for r in retries) == ["all", "payment"]
    assert all(r.requested_by == actors.admin for r in retries)
    assert [(c.requested_by_role, c.requested_by) for c in cancels] == [("operator", actors.admin)]

    bad = await http.post(path, json={"action": "explode"}, headers=actors.admin_auth)
    assert bad.status_code == 422
    ended = await insert_booking(pg, actors, "expired", hold="released", payment="voided")
    refused = await http.post(
        f"/admin/workflows/{ended}", json={"action": "cancel"}, headers=actors.admin_auth
    )
    assert refused.status_code == 409
    missing = await http.post(
        f"/admin/workflows/{unique()}", json={"action": "retry"}, headers=actors.admin_auth
    )
    assert missing.status_code == 404
