"""Bookings over HTTP: the 202 contract, idempotency, visibility, and which actions each
status allows. Read-model rows in later states are inserted directly, as the materializer
would have written them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from erynoa import events as ev
from tests.conftest import unique
from tests.integration.api.conftest import (
    Actors,
    LiveApi,
    Probe,
    book,
    booking_body,
    create_service,
    insert_booking,
    of_booking,
)

pytestmark = pytest.mark.integration


async def test_create_answers_202_and_a_poll_right_after_sees_requested(
    http: httpx.AsyncClient, actors: Actors, probe_topic: Probe
) -> None:
    bookings_topic = await probe_topic("bookings")
    response = await book(http, actors, headers={"X-Request-ID": "req-it-create-1"}, notes="hi")
    assert response.status_code == 202, response.text
    body = response.json()
    booking_id = body["workflow_id"]
    assert body["status"] == "processing"
    assert body["poll_url"] == f"/api/v1/bookings/{booking_id}"
    assert response.headers["location"] == body["poll_url"]
    assert response.headers["retry-after"] == "1"
    assert datetime.fromisoformat(body["estimated_completion"]) > datetime.now(UTC)

    poll = await http.get(f"/bookings/{booking_id}", headers=actors.customer_auth)
    assert poll.status_code == 200, poll.text
    booking = poll.json()["data"]
    assert booking["status"] == "requested"
    assert booking["price"] == {"amount": 4500, "currency": "EUR"}
    assert booking["provider_id"] == actors.provider
    slot_start = datetime.fromisoformat(booking["slot_start"])
    assert datetime.fromisoformat(booking["slot_end"]) - slot_start == timedelta(minutes=45)
    assert booking["notes"] == "hi"

    published = of_booking(await bookings_topic.events(), booking_id, ev.BookingRequested)
    assert len(published) == 1
    event = published[0].event
    assert event.correlation_id == "req-it-create-1"
    assert event.producer == "api"
    assert event.price == ev.Money(4500, "EUR")
    assert published[0].headers["x-request-id"] == "req-it-create-1"
    assert "traceparent" not in published[0].headers


async def test_trace_context_and_the_synthetic_marker_travel_into_kafka(
    http: httpx.AsyncClient, actors: Actors, probe_topic: Probe
) -> None:
    bookings_topic = await probe_topic("bookings")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await book(
        http,
        actors,
        headers={
            "traceparent": traceparent,
            "tracestate": "vendor=opaque",
            "X-Erynoa-Synthetic": "1",
        },
    )
    booking_id = response.json()["workflow_id"]
    [seen] = of_booking(await bookings_topic.events(), booking_id, ev.BookingRequested)
    assert seen.headers["traceparent"] == traceparent
    assert seen.headers["tracestate"] == "vendor=opaque"
    assert seen.headers["erynoa-synthetic"] == "1"
    assert seen.headers["x-request-id"] == response.headers["x-request-id"]

    garbled = await book(http, actors, headers={"traceparent": "not-a-trace"})
    [plain] = of_booking(
        await bookings_topic.events(), garbled.json()["workflow_id"], ev.BookingRequested
    )
    assert "traceparent" not in plain.headers
    assert "erynoa-synthetic" not in plain.headers


async def test_same_idempotency_key_gives_one_booking_and_one_event(
    http: httpx.AsyncClient, actors: Actors, probe_topic: Probe
) -> None:
    bookings_topic = await probe_topic("bookings")
    key = {"Idempotency-Key": unique("key-")}
    slot = (datetime.now(UTC) + timedelta(days=9)).replace(microsecond=0).isoformat()
    first = await book(http, actors, headers=key, slot_start=slot)
    second = await book(http, actors, headers=key, slot_start=slot)
    assert first.status_code == second.status_code == 202
    booking_id = first.json()["workflow_id"]
    assert second.json()["workflow_id"] == booking_id
    assert second.headers["location"] == first.headers["location"]

    published = of_booking(await bookings_topic.events(), booking_id, ev.BookingRequested)
    assert len(published) == 1
    assert published[0].event.idempotency_key == key["Idempotency-Key"]

    mine = await http.get("/bookings", headers=actors.customer_auth)
    assert [b["id"] for b in mine.json()["data"]] == [booking_id]


async def test_reusing_a_key_for_another_request_is_refused(
    http: httpx.AsyncClient, actors: Actors
) -> None:
    key = {"Idempotency-Key": unique("key-")}
    assert (await book(http, actors, headers=key, notes="one")).status_code == 202
    again = await book(http, actors, headers=key, notes="two")
    assert again.status_code == 422
    assert again.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_the_same_key_from_another_customer_is_another_booking(
    http: httpx.AsyncClient, actors: Actors, live_api: LiveApi
) -> None:
    key = {"Idempotency-Key": unique("key-")}
    body = booking_body(actors.service_id)
    mine = await http.post("/bookings", json=body, headers={**actors.customer_auth, **key})
    other_auth = live_api.auth(unique("cust-"), "customer")
    theirs = await http.post("/bookings", json=body, headers={**other_auth, **key})
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["workflow_id"] != theirs.json()["workflow_id"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"slot_start": "2020-01-01T10:00:00Z"}, "body.slot_start"),
        ({"slot_start": "2031-01-01T10:00:00"}, "body.slot_start"),  # no UTC offset
        ({"slot_start": "next tuesday"}, "body.slot_start"),
        ({"notes": "x" * 2001}, "body.notes"),
        ({"payment_method": ""}, "body.payment_method"),
        ({"service_id": "not-a-uuid"}, "body.service_id"),
        ({"surprise": True}, "body.surprise"),
    ],
)
async def test_invalid_booking_requests_get_422(
    http: httpx.AsyncClient, actors: Actors, change: dict[str, Any], field: str
) -> None:
    response = await book(http, actors, **change)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert field in [d["field"] for d in error["details"]]


async def test_unknown_service_gets_404_and_inactive_service_422(
    http: httpx.AsyncClient, actors: Actors
) -> None:
    missing = await book(http, actors, service_id=unique())
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"

    service = await create_service(http, actors.provider_auth)
    deleted = await http.delete(f"/services/{service['id']}", headers=actors.provider_auth)
    assert deleted.status_code == 200
    inactive = await book(http, actors, service_id=service["id"])
    assert inactive.status_code == 422
    assert inactive.json()["error"]["code"] == "SERVICE_INACTIVE"


async def test_a_service_changed_through_this_api_applies_to_the_next_booking_at_once(
    http: httpx.AsyncClient, actors: Actors
) -> None:
    # The first booking puts the service's terms in the API's cache; its own changes drop them.
    service = await create_service(http, actors.provider_auth)
    assert (await book(http, actors, service_id=service["id"])).status_code == 202
    update = {
        key: service[key]
        for key in ("name", "description", "duration_minutes", "capacity_per_slot")
    }
    update |= {
        "price": {"amount": 5100, "currency": "EUR"},
        "response_deadline_seconds": service["response_deadline_seconds"],
    }
    path = f"/services/{service['id']}"
    assert (await http.put(path, json=update, headers=actors.provider_auth)).status_code == 200
    repriced = await book(http, actors, service_id=service["id"])
    assert repriced.status_code == 202, repriced.text
    booking_id = repriced.json()["workflow_id"]
    poll = await http.get(f"/bookings/{booking_id}", headers=actors.customer_auth)
    assert poll.json()["data"]["price"] == {"amount": 5100, "currency": "EUR"}

    assert (await http.delete(path, headers=actors.provider_auth)).status_code == 200
    refused = await book(http, actors, service_id=service["id"])
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "SERVICE_INACTIVE"


async def test_only_customer_provider_and_admin_see_a_booking(
    http: httpx.AsyncClient, actors: Actors, live_api: LiveApi
) -> None:
    booking_id = (await book(http, actors)).json()["workflow_id"]
    for auth in (actors.customer_auth, actors.provider_auth, actors.admin_auth):
        assert (await http.get(f"/bookings/{booking_id}", headers=auth)).status_code == 200
    stranger = live_api.auth(unique("cust-"), "customer")
    other_provider = live_api.auth(unique("prov-"), "provider")
    for auth in (stranger, other_provider):
        response = await http.get(f"/bookings/{booking_id}", headers=auth)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
    assert (await http.get(f"/bookings/{unique()}", headers=actors.admin_auth)).status_code == 404


async def test_listing_shows_own_incoming_or_all_by_role(
    http: httpx.AsyncClient, actors: Actors, live_api: LiveApi, pg: asyncpg.Pool
) -> None:
    mine = (await book(http, actors)).json()["workflow_id"]
    confirmed = await insert_booking(pg, actors, "confirmed", payment="captured")

    own = await http.get("/bookings", headers=actors.customer_auth)
    assert {b["id"] for b in own.json()["data"]} == {mine, confirmed}
    assert own.json()["meta"]["total"] == 2

    only_confirmed = await http.get(
        "/bookings", params={"status": "confirmed"}, headers=actors.customer_auth
    )
    assert [b["id"] for b in only_confirmed.json()["data"]] == [confirmed]

    paged = await http.get(
        "/bookings", params={"per_page": 1, "page": 2}, headers=actors.customer_auth
    )
    assert len(paged.json()["data"]) == 1
    assert paged.json()["meta"] | {"timestamp": None, "request_id": None} == {
        "timestamp": None,
        "request_id": None,
        "page": 2,
        "per_page": 1,
        "total": 2,
        "total_capped": False,
    }

    incoming = await http.get("/bookings", params={"as": "provider"}, headers=actors.provider_auth)
    assert {b["id"] for b in incoming.json()["data"]} == {mine, confirmed}

    stranger = live_api.auth(unique("cust-"), "customer")
    assert (await http.get("/bookings", headers=stranger)).json()["data"] == []
    for scope in ("provider", "all"):
        denied = await http.get("/bookings", params={"as": scope}, headers=stranger)
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "FORBIDDEN"
    everyone = await http.get(
        "/bookings", params={"as": "all", "per_page": 100}, headers=actors.admin_auth
    )
    assert everyone.status_code == 200
    assert everyone.json()["meta"]["total"] >= 2


async def test_provider_accepts_a_booking_awaiting_them(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool, probe_topic: Probe
) -> None:
    answers = await probe_topic("provider-answers")
    deadline = datetime.now(UTC) + timedelta(hours=1)
    booking_id = await insert_booking(
        pg, actors, "awaiting_provider", provider_deadline_at=deadline
    )
    response = await http.post(
        f"/bookings/{booking_id}/accept", json={"reason": "see you"}, headers=actors.provider_auth
    )
    assert response.status_code == 202, response.text
    assert response.json()["workflow_id"] == booking_id
    assert response.headers["location"] == f"/api/v1/bookings/{booking_id}"

    # The same answer again is a no-op; the other answer is a conflict.
    again = await http.post(f"/bookings/{booking_id}/accept", headers=actors.provider_auth)
    assert again.status_code == 202
    other = await http.post(f"/bookings/{booking_id}/reject", headers=actors.provider_auth)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "ALREADY_ANSWERED"

    published = of_booking(await answers.events(), booking_id, ev.ProviderAnswerSubmitted)
    assert [(s.event.decision, s.event.provider_id, s.event.reason) for s in published] == [
        ("accept", actors.provider, "see you")
    ]


async def test_provider_rejects_without_a_body(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool, probe_topic: Probe
) -> None:
    answers = await probe_topic("provider-answers")
    booking_id = await insert_booking(pg, actors, "awaiting_provider")
    response = await http.post(f"/bookings/{booking_id}/reject", headers=actors.provider_auth)
    assert response.status_code == 202, response.text
    published = of_booking(await answers.events(), booking_id, ev.ProviderAnswerSubmitted)
    assert [s.event.decision for s in published] == ["reject"]


@pytest.mark.parametrize("status", ["requested", "reserved", "confirmed", "cancelled", "expired"])
async def test_answering_a_booking_not_awaiting_the_provider_is_409(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool, status: str
) -> None:
    booking_id = await insert_booking(pg, actors, status)
    for action in ("accept", "reject"):
        response = await http.post(f"/bookings/{booking_id}/{action}", headers=actors.provider_auth)
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "NOT_AWAITING_PROVIDER"
        assert error["details"] == [{"status": status}]


async def test_an_answer_counts_when_the_deadline_runs_though_the_read_model_lags(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    # The provider-response agent started the deadline (so the provider was asked); the
    # materializer has not folded that in yet and the read model still says "reserved".
    booking_id = await insert_booking(pg, actors, "reserved")
    await pg.execute(
        """INSERT INTO provider_deadlines (booking_id, provider_id, deadline_at, status,
                                           correlation_id)
           VALUES ($1::uuid, $2, now() + interval '1 hour', 'pending', 'c')""",
        booking_id,
        actors.provider,
    )
    response = await http.post(f"/bookings/{booking_id}/accept", headers=actors.provider_auth)
    assert response.status_code == 202, response.text


async def test_answering_after_the_deadline_is_409(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    booking_id = await insert_booking(pg, actors, "awaiting_provider", provider_deadline_at=past)
    response = await http.post(f"/bookings/{booking_id}/accept", headers=actors.provider_auth)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "DEADLINE_PASSED"


async def test_only_the_services_provider_may_answer(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool, live_api: LiveApi
) -> None:
    booking_id = await insert_booking(pg, actors, "awaiting_provider")
    other_provider = live_api.auth(unique("prov-"), "provider")
    for action in ("accept", "reject"):
        # Another provider cannot even see it; the customer and an admin see it but may not answer.
        hidden = await http.post(f"/bookings/{booking_id}/{action}", headers=other_provider)
        assert hidden.status_code == 404
        for auth in (actors.customer_auth, actors.admin_auth):
            denied = await http.post(f"/bookings/{booking_id}/{action}", headers=auth)
            assert denied.status_code == 403
            assert denied.json()["error"]["code"] == "FORBIDDEN"


async def test_customer_cancels_and_the_event_is_published(
    http: httpx.AsyncClient, actors: Actors, probe_topic: Probe
) -> None:
    bookings_topic = await probe_topic("bookings")
    booking_id = (await book(http, actors)).json()["workflow_id"]
    response = await http.post(
        f"/bookings/{booking_id}/cancel",
        json={"reason": "changed plans"},
        headers=actors.customer_auth,
    )
    assert response.status_code == 202, response.text
    cancels = of_booking(await bookings_topic.events(), booking_id, ev.BookingCancellationRequested)
    assert [(s.event.requested_by, s.event.requested_by_role, s.event.reason) for s in cancels] == [
        (actors.customer, "customer", "changed plans")
    ]


async def test_admin_may_cancel_the_provider_may_not(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    booking_id = await insert_booking(pg, actors, "awaiting_provider")
    denied = await http.post(f"/bookings/{booking_id}/cancel", headers=actors.provider_auth)
    assert denied.status_code == 403
    allowed = await http.post(f"/bookings/{booking_id}/cancel", headers=actors.admin_auth)
    assert allowed.status_code == 202


async def test_a_customer_cannot_cancel_anothers_booking(
    http: httpx.AsyncClient, actors: Actors, live_api: LiveApi
) -> None:
    booking_id = (await book(http, actors)).json()["workflow_id"]
    stranger = live_api.auth(unique("cust-"), "customer")
    response = await http.post(f"/bookings/{booking_id}/cancel", headers=stranger)
    assert response.status_code == 404


@pytest.mark.parametrize("status", ["rejected", "expired", "cancelled", "failed"])
async def test_cancelling_an_ended_booking_is_409(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool, status: str
) -> None:
    booking_id = await insert_booking(pg, actors, status, hold="released", payment="voided")
    response = await http.post(f"/bookings/{booking_id}/cancel", headers=actors.customer_auth)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "BOOKING_ENDED"


async def test_booking_shows_history_and_compensation_outcome(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    booking_id = await insert_booking(
        pg,
        actors,
        "rejected",
        hold="released",
        payment="voided",
        failure_reason="provider rejected",
    )
    base = datetime.now(UTC) - timedelta(minutes=3)
    for i, (event_type, producer) in enumerate(
        [
            ("BookingRequested", "api"),
            ("ReservationHeld", "reservation"),
            ("ProviderRejected", "provider-response"),
        ]
    ):
        await pg.execute(
            "INSERT INTO booking_events (event_id, booking_id, event_type, producer, occurred_at, "
            'correlation_id, topic, partition, "offset", payload, body) '
            "VALUES ($1, $2, $3, $4, $5, 'c', 'bookings', 0, $6, '{}'::jsonb, ''::bytea)",
            unique(),
            booking_id,
            event_type,
            producer,
            base + timedelta(seconds=i),
            i,
        )
    booking = (await http.get(f"/bookings/{booking_id}", headers=actors.customer_auth)).json()[
        "data"
    ]
    assert (booking["status"], booking["hold"], booking["payment"]) == (
        "rejected",
        "released",
        "voided",
    )
    assert booking["failure_reason"] == "provider rejected"
    assert [h["event_type"] for h in booking["history"]] == [
        "BookingRequested",
        "ReservationHeld",
        "ProviderRejected",
    ]
    assert booking["history"][1]["producer"] == "reservation"
