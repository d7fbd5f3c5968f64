"""Stripe's webhook: verified, deduplicated, and handed to the payment agent through Kafka.

The signature is checked with the stripe library against ``settings.stripe_webhook_secret``
with a 300-second tolerance, so a replayed (old) delivery is refused. A verified webhook takes
effect exactly once, whatever fails after its 200: Stripe's event id is recorded in
``stripe_webhook_events`` and ``StripeEventReceived`` (its id derived from Stripe's) is written
to the API's outbox in ONE transaction, and the 200 comes only after its COMMIT; the event is
published after that, or by the outbox relay if Kafka is down (``api.outbox``). A redelivery
finds the record: acknowledged (200), nothing queued. A COMMIT that fails answers 503, so
Stripe redelivers.
Only ``payment_intent.*`` events that name one of our bookings (``metadata.booking_id``) are
forwarded; anything else is acknowledged and ignored, or Stripe would retry it for days.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Annotated, Any

import stripe
from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict

from api.deps import Context, Db, Outbox, SettingsDep
from api.envelopes import ApiError, Envelope, errors, ok
from api.outbox import OutboxEntry, queue_once
from api.routes.bookings import committing
from erynoa import events as ev

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

SIGNATURE_TOLERANCE_SECONDS = 300

log = logging.getLogger("erynoa.api")


class WebhookReceipt(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "received": True,
                    "forwarded": True,
                    "duplicate": False,
                    "ignored_reason": None,
                    "booking_id": "0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e",
                }
            ]
        }
    )

    received: bool = True
    forwarded: bool
    duplicate: bool = False
    ignored_reason: str | None = None
    booking_id: uuid.UUID | None = None


_STRIPE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Stripe event, exactly as Stripe sent it (the signature covers the raw bytes)",
    "example": {
        "id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
                "object": "payment_intent",
                "status": "succeeded",
                "metadata": {"booking_id": "0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e"},
            }
        },
    },
}


def _text(value: object, limit: int = 255) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= limit and "\x00" not in value:
        return value
    return None


@router.post(
    "/stripe",
    response_model=Envelope[WebhookReceipt],
    responses=errors(400, 413, 415, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _STRIPE_EVENT_SCHEMA}},
        }
    },
)
async def stripe_webhook(
    request: Request,
    conn: Db,
    outbox: Outbox,
    settings: SettingsDep,
    ctx: Context,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> Envelope[WebhookReceipt]:
    """Receive a Stripe event (signature verified; each event forwarded once)."""
    if not settings.stripe_webhook_secret_usable:
        # 503, not 400: the fault is ours, and Stripe redelivers once the secret is set.
        log.error(
            "stripe webhook refused: ERYNOA_STRIPE_WEBHOOK_SECRET is a placeholder and "
            "ERYNOA_ENVIRONMENT is not development or test"
        )
        raise ApiError(
            503, "Stripe webhooks are not configured on this server", code="WEBHOOK_NOT_CONFIGURED"
        )
    payload = await request.body()
    try:
        stripe.Webhook.construct_event(
            payload, stripe_signature, settings.stripe_webhook_secret, SIGNATURE_TOLERANCE_SECONDS
        )
        raw = json.loads(payload)
    except stripe.SignatureVerificationError as exc:
        raise ApiError(400, f"invalid Stripe signature: {exc}", code="INVALID_SIGNATURE") from None
    except ValueError:  # not UTF-8, not JSON, or not a Stripe event
        raise ApiError(400, "the body is not a Stripe event", code="INVALID_PAYLOAD") from None

    event = raw if isinstance(raw, dict) else {}
    stripe_event_id = _text(event.get("id"))
    event_type = _text(event.get("type"), 100) or ""
    if stripe_event_id is None:
        raise ApiError(400, "the Stripe event has no id", code="INVALID_PAYLOAD")
    if not event_type.startswith("payment_intent."):
        return ok(
            request, WebhookReceipt(forwarded=False, ignored_reason="not a payment_intent event")
        )
    data = event.get("data")
    intent = data.get("object") if isinstance(data, dict) else None
    intent = intent if isinstance(intent, dict) else {}
    metadata = intent.get("metadata")
    booking_ref = metadata.get("booking_id") if isinstance(metadata, dict) else None
    payment_id = _text(intent.get("id"))
    try:
        booking_id = uuid.UUID(str(booking_ref))
    except ValueError:
        return ok(
            request, WebhookReceipt(forwarded=False, ignored_reason="no Erynoa booking in metadata")
        )
    if payment_id is None:
        raise ApiError(400, "the PaymentIntent has no id", code="INVALID_PAYLOAD")

    # The saga keeps one correlation id; a booking the read model has not seen yet gets ours.
    correlation_id = (
        await conn.fetchval("SELECT correlation_id FROM bookings WHERE id = $1", booking_id)
        or ctx.request_id
    )
    received = ev.make(
        ev.StripeEventReceived,
        booking_id=str(booking_id),
        producer="api",
        # Derived from Stripe's id: the same delivery is the same event, whatever happens.
        event_id=ev.derived_event_id(str(booking_id), f"stripe.{stripe_event_id}"),
        correlation_id=correlation_id,
        stripe_event_id=stripe_event_id,
        stripe_event_type=event_type,
        payment_id=payment_id,
        payment_status=_text(intent.get("status"), 100) or "unknown",
    )
    entry = OutboxEntry.of(received, outbox.codec, ctx.headers)
    retry = "Stripe's redelivery is safe (each Stripe event is taken once)"
    async with committing(retry, booking_id=str(booking_id)):
        # A redelivery finds the webhook's record and queues nothing.
        fresh = await queue_once(
            conn,
            entry,
            """INSERT INTO stripe_webhook_events (stripe_event_id, booking_id)
               VALUES ($5, $2) ON CONFLICT (stripe_event_id) DO NOTHING
               RETURNING booking_id""",
            stripe_event_id,
        )
    if not fresh:
        return ok(request, WebhookReceipt(forwarded=False, duplicate=True, booking_id=booking_id))
    outbox.publish_soon(entry)
    return ok(request, WebhookReceipt(forwarded=True, booking_id=booking_id))
