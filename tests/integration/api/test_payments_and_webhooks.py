"""Payments as a customer sees them, and Stripe's webhook: signature, tolerance, dedup."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import httpx
import pytest
import stripe

from erynoa import events as ev
from tests.conftest import unique
from tests.integration.api.conftest import Actors, LiveApi, Probe, events_of, insert_booking

pytestmark = pytest.mark.integration


async def add_history_event(
    pg: asyncpg.Pool, booking_id: str, event_type: str, payload: dict[str, Any]
) -> None:
    await pg.execute(
        "INSERT INTO booking_events (event_id, booking_id, event_type, producer, occurred_at, "
        'correlation_id, topic, partition, "offset", payload, body) '
        "VALUES ($1, $2, $3, 'payment', now(), 'c', 'payments', 0, 0, $4::jsonb, ''::bytea)",
        unique(),
        booking_id,
        event_type,
        payload,
    )


async def test_intent_hands_the_customer_the_client_secret(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool, live_api: LiveApi
) -> None:
    booking_id = await insert_booking(
        pg, actors, "payment_action_required", payment="action_required", payment_id="pi_sbx_1"
    )
    await add_history_event(
        pg, booking_id, "PaymentActionRequired", {"client_secret": "pi_sbx_1_secret_sandbox"}
    )
    response = await http.post(
        "/payments/intent", json={"booking_id": booking_id}, headers=actors.customer_auth
    )
    assert response.status_code == 200, response.text
    intent = response.json()["data"]
    assert intent["payment_id"] == "pi_sbx_1"
    assert intent["client_secret"] == "pi_sbx_1_secret_sandbox"
    assert intent["amount"] == {"amount": 4500, "currency": "EUR"}

    provider = await http.post(
        "/payments/intent", json={"booking_id": booking_id}, headers=actors.provider_auth
    )
    assert provider.status_code == 403
    stranger = live_api.auth(unique("cust-"), "customer")
    hidden = await http.post("/payments/intent", json={"booking_id": booking_id}, headers=stranger)
    assert hidden.status_code == 404


async def test_intent_for_a_booking_needing_no_action_is_409(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    booking_id = await insert_booking(pg, actors, "awaiting_provider")
    response = await http.post(
        "/payments/intent", json={"booking_id": booking_id}, headers=actors.customer_auth
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "NO_PAYMENT_ACTION"


async def test_payment_status_by_payment_id_or_booking_id(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool, live_api: LiveApi
) -> None:
    payment_id = f"pi_sbx_{unique()[:12]}"
    booking_id = await insert_booking(
        pg, actors, "cancelled", hold="released", payment="refunded", payment_id=payment_id
    )
    for operation, outcome in [
        ("authorize", "authorized"),
        ("capture", "captured"),
        ("refund", "refunded"),
    ]:
        await pg.execute(
            "INSERT INTO sandbox_ledger (idempotency_key, booking_id, payment_id, operation, "
            "amount_minor, currency, outcome) VALUES ($1, $2, $3, $4, 4500, 'EUR', $5)",
            unique(),
            booking_id,
            payment_id,
            operation,
            outcome,
        )
    for ref in (payment_id, booking_id):
        response = await http.get(f"/payments/{ref}", headers=actors.customer_auth)
        assert response.status_code == 200, response.text
        payment = response.json()["data"]
        assert (payment["status"], payment["booking_status"]) == ("refunded", "cancelled")
        assert payment["captured"] == payment["refunded"] == {"amount": 4500, "currency": "EUR"}
        assert [e["operation"] for e in payment["ledger"]] == ["authorize", "capture", "refund"]
    assert (
        await http.get(f"/payments/{payment_id}", headers=actors.provider_auth)
    ).status_code == 200
    stranger = live_api.auth(unique("cust-"), "customer")
    assert (await http.get(f"/payments/{payment_id}", headers=stranger)).status_code == 404
    assert (await http.get("/payments/pi_nope", headers=actors.admin_auth)).status_code == 404


def stripe_event(booking_id: str, event_type: str = "payment_intent.succeeded") -> dict[str, Any]:
    return {
        "id": f"evt_{unique().replace('-', '')}",
        "object": "event",
        "type": event_type,
        "data": {
            "object": {
                "id": f"pi_{unique().replace('-', '')[:24]}",
                "object": "payment_intent",
                "status": "succeeded",
                "metadata": {"booking_id": booking_id},
            }
        },
    }


async def deliver(
    http: httpx.AsyncClient,
    live_api: LiveApi,
    event: dict[str, Any],
    *,
    timestamp: int | None = None,
    secret: str | None = None,
) -> httpx.Response:
    payload = json.dumps(event)
    signature = stripe.WebhookSignature.generate_signature_header(
        payload, secret or live_api.settings.stripe_webhook_secret, timestamp
    )
    return await http.post(
        "/webhooks/stripe",
        content=payload,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )


async def test_a_signed_webhook_is_forwarded_once(
    http: httpx.AsyncClient, live_api: LiveApi, probe_topic: Probe
) -> None:
    webhooks = await probe_topic("payment-webhooks")
    booking_id = unique()
    event = stripe_event(booking_id)
    first = await deliver(http, live_api, event)
    assert first.status_code == 200, first.text
    assert first.json()["data"] | {"booking_id": None} == {
        "received": True,
        "forwarded": True,
        "duplicate": False,
        "ignored_reason": None,
        "booking_id": None,
    }
    # Stripe redelivers: acknowledged, not forwarded again.
    second = await deliver(http, live_api, event)
    assert second.status_code == 200
    assert second.json()["data"]["duplicate"] is True

    forwarded = events_of(await webhooks.events(), ev.StripeEventReceived, booking_id=booking_id)
    assert len(forwarded) == 1
    assert forwarded[0].stripe_event_id == event["id"]
    assert forwarded[0].stripe_event_type == "payment_intent.succeeded"
    assert forwarded[0].payment_id == event["data"]["object"]["id"]
    assert forwarded[0].payment_status == "succeeded"


async def test_bad_signatures_are_refused(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    event = stripe_event(unique())
    wrong_secret = await deliver(http, live_api, event, secret="whsec_someone_else")
    assert wrong_secret.status_code == 400
    assert wrong_secret.json()["error"]["code"] == "INVALID_SIGNATURE"
    unsigned = await http.post(
        "/webhooks/stripe", content=json.dumps(event), headers={"Content-Type": "application/json"}
    )
    assert unsigned.status_code == 400
    garbage = await http.post(
        "/webhooks/stripe",
        content=json.dumps(event),
        headers={"Stripe-Signature": "t=abc,v1=def", "Content-Type": "application/json"},
    )
    assert garbage.status_code == 400


async def test_a_replayed_old_delivery_is_refused(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    too_old = await deliver(
        http, live_api, stripe_event(unique()), timestamp=int(time.time()) - 301
    )
    assert too_old.status_code == 400
    assert "tolerance" in too_old.json()["error"]["message"]
    recent = await deliver(http, live_api, stripe_event(unique()), timestamp=int(time.time()) - 200)
    assert recent.status_code == 200


async def test_events_that_are_not_ours_are_acknowledged_and_ignored(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    charge = await deliver(http, live_api, stripe_event(unique(), "charge.refunded"))
    assert charge.status_code == 200
    assert charge.json()["data"]["forwarded"] is False
    no_booking = stripe_event("not-a-booking")
    response = await deliver(http, live_api, no_booking)
    assert response.status_code == 200
    assert response.json()["data"]["ignored_reason"] == "no Erynoa booking in metadata"
