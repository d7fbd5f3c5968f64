"""The payment agent: authorize, capture, void and refund a booking's payment.

Run: ``erynoa worker payment``. Consumes ``bookings``, ``reservations``, ``provider-responses``
and ``payment-webhooks``; emits on ``payments``. Each gateway call carries the idempotency key
``<booking_id>:<step>`` (authorize, capture, void, refund), so a redelivered message reaches the
gateway again but charges, voids or refunds once.

A Stripe webhook (``StripeEventReceived``, published by the API after verifying its signature)
finishes an authorization that needed customer action: succeeded/amount_capturable_updated →
``PaymentAuthorized``; payment_failed/canceled → ``PaymentFailed``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg

from erynoa import saga
from erynoa.events import (
    BookingEvent,
    PaymentActionRequired,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentCaptureFailed,
    PaymentFailed,
    PaymentRefunded,
    PaymentVoided,
    StripeEventReceived,
)
from streams.payment.gateway import (
    ActionRequired,
    Authorized,
    Captured,
    Declined,
    PaymentGateway,
)
from streams.runtime import BaseAdapter, Context, Runtime

log = logging.getLogger("streams.payment")

WEBHOOK_AUTHORIZED = frozenset(
    {"payment_intent.succeeded", "payment_intent.amount_capturable_updated"}
)
WEBHOOK_FAILED = frozenset({"payment_intent.payment_failed", "payment_intent.canceled"})


class PaymentAdapter(BaseAdapter):
    agent: saga.Agent = "payment"

    def __init__(self, gateway: PaymentGateway) -> None:
        self.gateway = gateway
        self.waits_on_outside = gateway.remote

    async def start(self, pool: asyncpg.Pool) -> None:
        await self.gateway.start(pool)

    async def stop(self) -> None:
        await self.gateway.close()

    async def execute(self, action: saga.Action, ctx: Context) -> list[BookingEvent]:
        s = ctx.state
        match action:
            case saga.AuthorizePayment(amount=amount):
                result = await self.gateway.authorize(
                    booking_id=s.booking_id,
                    amount=amount,
                    payment_method=s.payment_method,
                    idempotency_key=ctx.idempotency_key("authorize"),
                )
                if isinstance(result, Authorized):
                    return [self._authorized(ctx, result.payment_id)]
                if isinstance(result, ActionRequired):
                    return [
                        ctx.emit(
                            PaymentActionRequired,
                            "action_required",
                            payment_id=result.payment_id,
                            client_secret=result.client_secret,
                        )
                    ]
                assert isinstance(result, Declined)
                return [self._failed(ctx, result.payment_id, result.code, result.message)]
            case saga.CapturePayment(amount=amount):
                payment_id = _require_payment_id(s)
                captured = await self.gateway.capture(
                    booking_id=s.booking_id,
                    payment_id=payment_id,
                    amount=amount,
                    idempotency_key=ctx.idempotency_key("capture"),
                )
                if isinstance(captured, Captured):
                    return [
                        ctx.emit(PaymentCaptured, "captured", payment_id=payment_id, amount=amount)
                    ]
                return [
                    ctx.emit(
                        PaymentCaptureFailed,
                        "capture_failed",
                        payment_id=payment_id,
                        reason_code=captured.code,
                        reason=captured.message,
                    )
                ]
            case saga.VoidPayment():
                voided = await self.gateway.void(
                    booking_id=s.booking_id,
                    payment_id=s.payment_id,
                    idempotency_key=ctx.idempotency_key("void"),
                )
                return [ctx.emit(PaymentVoided, "voided", payment_id=voided.payment_id)]
            case saga.AbandonPayment(reason=reason):
                # Cancel the intent first, so a late 3-D Secure success cannot authorize it.
                voided = await self.gateway.void(
                    booking_id=s.booking_id,
                    payment_id=s.payment_id,
                    idempotency_key=ctx.idempotency_key("abandon"),
                )
                return [
                    ctx.emit(
                        PaymentFailed,
                        "abandoned",
                        payment_id=voided.payment_id or s.payment_id,
                        reason_code="action_timeout",
                        reason=reason,
                    )
                ]
            case saga.RefundPayment(amount=amount):
                payment_id = _require_payment_id(s)
                refunded = await self.gateway.refund(
                    booking_id=s.booking_id,
                    payment_id=payment_id,
                    amount=amount,
                    idempotency_key=ctx.idempotency_key("refund"),
                )
                return [
                    ctx.emit(
                        PaymentRefunded,
                        "refunded",
                        payment_id=payment_id,
                        refund_id=refunded.refund_id,
                        amount=amount,
                    )
                ]
        raise TypeError(f"payment cannot {action!r}")

    async def react(self, event: BookingEvent, ctx: Context) -> list[BookingEvent]:
        """Turn a Stripe webhook about an authorization that needed action into its outcome."""
        if not isinstance(event, StripeEventReceived):
            return []
        s = ctx.state
        if s.payment_id is not None and event.payment_id != s.payment_id:
            log.warning(
                "webhook for payment %s, booking pays with %s; ignored",
                event.payment_id,
                s.payment_id,
                extra={"booking_id": s.booking_id, "correlation_id": s.correlation_id},
            )
            return []
        waiting = s.payment == saga.Payment.ACTION_REQUIRED
        if event.stripe_event_type in WEBHOOK_AUTHORIZED and (
            waiting or s.payment == saga.Payment.FAILED
        ):
            # After a failure too: Stripe does not promise the order of its events, and money
            # that did get authorized must be recorded so that the rules void it.
            return [self._authorized(ctx, event.payment_id)]
        if event.stripe_event_type in WEBHOOK_FAILED and waiting:
            return [
                self._failed(
                    ctx,
                    event.payment_id,
                    event.payment_status or "payment_failed",
                    f"Stripe reported {event.stripe_event_type}",
                )
            ]
        return []  # already decided: a repeated webhook changes nothing

    def _authorized(self, ctx: Context, payment_id: str) -> BookingEvent:
        # The same step id whether the authorization came back at once or through the webhook:
        # a booking is authorized once, so the event is the same event.
        return ctx.emit(
            PaymentAuthorized,
            "authorized",
            payment_id=payment_id,
            amount=ctx.state.price,
            gateway=self.gateway.name,
        )

    def _failed(
        self, ctx: Context, payment_id: str | None, code: str, message: str
    ) -> BookingEvent:
        return ctx.emit(
            PaymentFailed, "failed", payment_id=payment_id, reason_code=code, reason=message
        )


def _require_payment_id(state: saga.BookingState) -> str:
    if state.payment_id is None:
        # The rules only capture or refund an authorized payment, which always has an id.
        raise saga.SagaError(f"booking {state.booking_id}: no payment id to act on")
    return state.payment_id


SWEEP_BATCH = 100


async def sweep_abandoned_actions(runtime: Runtime, allowed: timedelta) -> int:
    """Fail every booking whose customer did not finish the payment action in time.

    The same rules decide (``saga.next_actions`` with the current time); this only finds the
    candidates, like the provider-response agent's deadline sweep. Returns how many it handled.
    """
    rows = await runtime.pool.fetch(
        """SELECT booking_id::text FROM agent_state
           WHERE agent = $1 AND state->>'status' = 'payment_action_required'
             AND (state->>'payment_action_since')::timestamptz <= $2
           LIMIT $3""",
        runtime.agent,
        runtime.clock() - allowed,
        SWEEP_BATCH,
    )
    handled = 0
    for row in rows:
        if runtime.draining:
            break
        try:
            if await runtime.tick(row["booking_id"]):
                handled += 1
        except Exception:
            # One booking's trouble must not stop the others; the next sweep tries again.
            log.exception("payment action timeout of booking %s", row["booking_id"])
    return handled
