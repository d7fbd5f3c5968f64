"""The payment agent: authorize, capture, void and refund a booking's payment.

Run: ``erynoa worker payment``. Consumes ``bookings``, ``reservations``, ``provider-responses``
and ``payment-webhooks``; emits on ``payments``. Each gateway call carries the idempotency key
``<booking_id>:<step>`` (authorize, capture, void, refund), so a redelivered message reaches the
gateway again but charges, voids or refunds once.

A Stripe webhook (``StripeEventReceived``, published by the API after verifying its signature)
finishes an authorization that needed customer action: succeeded/amount_capturable_updated →
``PaymentAuthorized``; payment_failed/canceled → ``PaymentFailed``.

When a call's outcome is unknown (its answer was lost) or the gateway says the PaymentIntent is
not in the state the call needs, the agent does not guess: it asks the gateway
(``PaymentGateway.find``) and records what really happened — an intent already captured is
``PaymentCaptured``, one already cancelled ``PaymentVoided``, a capturable one an authorization.
A booking that ended after it was reserved with no payment recorded (an authorization whose
answer was lost, then a cancel) is looked up by the booking, and what is found is voided.
Before failing a booking whose customer did not finish 3-D Secure in time, it asks too: a
customer who did finish it (the webhook may still be on its way) is authorized, not abandoned.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg

from erynoa import saga
from erynoa.events import (
    BookingEvent,
    Money,
    PaymentActionRequired,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentCaptureFailed,
    PaymentFailed,
    PaymentRefunded,
    PaymentVoided,
    StripeEventReceived,
)
from streams.payment import gateway as gw
from streams.runtime import AgentRuntime, BaseAdapter, Context

log = logging.getLogger("streams.payment")

# Stripe keeps an idempotency key for at least 24 hours; a request older than half that is
# looked up before it is authorized again.
IDEMPOTENCY_KEY_TRUSTED = timedelta(hours=12)

WEBHOOK_AUTHORIZED = frozenset(
    {"payment_intent.succeeded", "payment_intent.amount_capturable_updated"}
)
WEBHOOK_FAILED = frozenset({"payment_intent.payment_failed", "payment_intent.canceled"})


class PaymentAdapter(BaseAdapter):
    agent: saga.Agent = "payment"

    def __init__(self, gateway: gw.PaymentGateway) -> None:
        self.gateway = gateway
        self.waits_on_outside = gateway.remote

    async def start(self, pool: asyncpg.Pool) -> None:
        await self.gateway.start(pool)

    async def stop(self) -> None:
        await self.gateway.close()

    async def probe(self) -> str | None:
        return await self.gateway.probe()

    async def execute(self, action: saga.Action, ctx: Context) -> list[BookingEvent]:
        s = ctx.state
        match action:
            case saga.AuthorizePayment(amount=amount):
                result = await self._authorize(s, amount, ctx)
                if isinstance(result, gw.Authorized):
                    return [self._authorized(ctx, result.payment_id)]
                if isinstance(result, gw.ActionRequired):
                    return [
                        ctx.emit(
                            PaymentActionRequired,
                            "action_required",
                            payment_id=result.payment_id,
                            client_secret=result.client_secret,
                        )
                    ]
                assert isinstance(result, gw.Declined)
                return [self._failed(ctx, result.payment_id, result.code, result.message)]
            case saga.CapturePayment(amount=amount):
                payment_id = _require_payment_id(s)
                captured = await self._capture(s, payment_id, amount, ctx)
                if isinstance(captured, gw.Captured):
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
                voided = await self._void(s, ctx, "void")
                if isinstance(voided, gw.Found):  # it was captured after all
                    return [self._captured_after_all(ctx, voided)]
                return [ctx.emit(PaymentVoided, "voided", payment_id=voided.payment_id)]
            case saga.AbandonPayment(reason=reason):
                # The customer may have finished 3-D Secure with the webhook not processed yet:
                # what the gateway says now decides, not how long the agent waited.
                found = await self.gateway.find(booking_id=s.booking_id, payment_id=s.payment_id)
                if found.status in (gw.IntentStatus.AUTHORIZED, gw.IntentStatus.CAPTURED):
                    return [self._authorized(ctx, found.payment_id or _require_payment_id(s))]
                # Cancel the intent first, so a late 3-D Secure success cannot authorize it.
                abandoned = await self._void(s, ctx, "abandon")
                if isinstance(abandoned, gw.Found):  # authenticated just now: authorized after all
                    return [self._authorized(ctx, abandoned.payment_id or _require_payment_id(s))]
                return [
                    ctx.emit(
                        PaymentFailed,
                        "abandoned",
                        payment_id=abandoned.payment_id or s.payment_id,
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

    # --- calls whose outcome may be unknown --------------------------------------------------

    async def _authorize(
        self, s: saga.BookingState, amount: Money, ctx: Context
    ) -> gw.AuthorizeResult:
        if _key_may_be_forgotten(ctx):
            # An earlier attempt may have authorized with a key the gateway no longer
            # remembers; the same key would now create a second PaymentIntent.
            known = _as_authorization(
                await self.gateway.find(booking_id=s.booking_id, payment_id=None)
            )
            if known is not None:
                log.warning(
                    "authorize for a booking requested %s ago: the gateway already has %s",
                    ctx.now - s.requested_at,
                    known,
                    extra={"booking_id": s.booking_id},
                )
                return known
        try:
            return await self.gateway.authorize(
                booking_id=s.booking_id,
                amount=amount,
                payment_method=s.payment_method,
                idempotency_key=ctx.idempotency_key("authorize"),
            )
        except (gw.OutcomeUnknown, gw.UnexpectedState) as exc:
            found = await self.gateway.find(booking_id=s.booking_id, payment_id=None)
            _log_lookup(s, "authorize", exc, found)
            known = _as_authorization(found)
            if known is None:
                # Nothing was created: a retry with the same key is a first attempt.
                raise _retry_later(exc) from exc
            return known

    async def _capture(
        self, s: saga.BookingState, payment_id: str, amount: Money, ctx: Context
    ) -> gw.CaptureResult:
        try:
            return await self.gateway.capture(
                booking_id=s.booking_id,
                payment_id=payment_id,
                amount=amount,
                idempotency_key=ctx.idempotency_key("capture"),
            )
        except (gw.OutcomeUnknown, gw.UnexpectedState) as exc:
            found = await self.gateway.find(booking_id=s.booking_id, payment_id=payment_id)
            _log_lookup(s, "capture", exc, found)
            if found.status == gw.IntentStatus.CAPTURED:
                return gw.Captured(payment_id)
            if found.status in (gw.IntentStatus.AUTHORIZED, gw.IntentStatus.ACTION_REQUIRED):
                # Still capturable: the capture did not happen; try it again later.
                raise _retry_later(exc) from exc
            return gw.CaptureFailed(
                f"payment_intent_{found.status.value}", f"the PaymentIntent is {found.status}"
            )

    async def _void(self, s: saga.BookingState, ctx: Context, step: str) -> gw.Voided | gw.Found:
        """Cancel the booking's authorization, if any: ``Voided``, or the ``Found`` intent when
        it turns out to be captured (void) or capturable after all (abandon)."""
        payment_id = s.payment_id
        try:
            return await self.gateway.void(
                booking_id=s.booking_id,
                payment_id=payment_id,
                idempotency_key=ctx.idempotency_key(step),
            )
        except (gw.OutcomeUnknown, gw.UnexpectedState) as exc:
            found = await self.gateway.find(booking_id=s.booking_id, payment_id=payment_id)
            _log_lookup(s, step, exc, found)
            if found.status in (
                gw.IntentStatus.CANCELED,
                gw.IntentStatus.FAILED,
                gw.IntentStatus.NOT_FOUND,
            ):
                return gw.Voided(payment_id)
            if found.status == gw.IntentStatus.CAPTURED:
                return found
            if found.status == gw.IntentStatus.AUTHORIZED and step == "abandon":
                return found
            raise _retry_later(exc) from exc

    def _captured_after_all(self, ctx: Context, found: gw.Found) -> BookingEvent:
        # The money was taken (a capture whose answer was lost or misread): recorded as
        # captured, the rules refund it when the booking ended.
        s = ctx.state
        return ctx.emit(
            PaymentCaptured, "captured", payment_id=found.payment_id or s.payment_id, amount=s.price
        )

    async def react(self, event: BookingEvent, ctx: Context) -> list[BookingEvent]:
        """Turn outside facts into events: a Stripe webhook about an authorization that needed
        action, and an authorization the booking never heard of (``_void_unrecorded``)."""
        if isinstance(event, StripeEventReceived):
            return self._webhook(event, ctx)
        if may_hold_unrecorded_authorization(ctx.state):
            return await self._void_unrecorded(ctx)
        return []

    async def _void_unrecorded(self, ctx: Context) -> list[BookingEvent]:
        """Void the authorization a booking that ended may have without knowing it.

        The booking was reserved, so the authorization was asked for; when its answer was lost
        and the booking ended (a cancel) before a retry learned it, the rules see no payment
        and ask for nothing, while the gateway may hold the customer's money. Found by the
        booking, it is voided like any other; nothing found, nothing is recorded.
        """
        s = ctx.state
        found = await self.gateway.find(booking_id=s.booking_id, payment_id=None)
        if found.payment_id is not None and found.status == gw.IntentStatus.CAPTURED:
            return [self._captured_after_all(ctx, found)]
        if found.payment_id is None or found.status not in (
            gw.IntentStatus.AUTHORIZED,
            gw.IntentStatus.ACTION_REQUIRED,
        ):
            return []
        log.warning(
            "an authorization the booking never recorded: payment %s %s; voiding it",
            found.payment_id,
            found.status.value,
            extra={"booking_id": s.booking_id, "correlation_id": s.correlation_id},
        )
        await self.gateway.void(
            booking_id=s.booking_id,
            payment_id=found.payment_id,
            idempotency_key=ctx.idempotency_key("void"),
        )
        return [ctx.emit(PaymentVoided, "voided", payment_id=found.payment_id)]

    def _webhook(self, event: StripeEventReceived, ctx: Context) -> list[BookingEvent]:
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


def _key_may_be_forgotten(ctx: Context) -> bool:
    """Whether the gateway may have forgotten this booking's authorize key. The key is first
    used after the booking was requested, so a booking younger than the window has its key
    remembered; an older one (a dead letter replayed late, a worker that died after the call,
    an operator's retry days later) is looked up first. Half the window leaves room for
    clocks that disagree."""
    return ctx.now - ctx.state.requested_at > IDEMPOTENCY_KEY_TRUSTED


def _as_authorization(found: gw.Found) -> gw.AuthorizeResult | None:
    """What an authorization the gateway already has came to; None when it has none."""
    if found.payment_id is None or found.status == gw.IntentStatus.NOT_FOUND:
        return None
    if found.status in (gw.IntentStatus.AUTHORIZED, gw.IntentStatus.CAPTURED):
        return gw.Authorized(found.payment_id)
    if found.status == gw.IntentStatus.ACTION_REQUIRED:
        return gw.ActionRequired(found.payment_id, found.client_secret)
    return gw.Declined(found.status.value, f"the PaymentIntent is {found.status}", found.payment_id)


def may_hold_unrecorded_authorization(s: saga.BookingState) -> bool:
    """The booking ended after it was reserved with no payment recorded: its authorization was
    asked for, and its answer may have been lost."""
    return (
        s.payment == saga.Payment.NONE
        and s.status in saga.TERMINAL
        and s.hold in (saga.Hold.HELD, saga.Hold.RELEASED)
    )


def _retry_later(exc: Exception) -> gw.GatewayUnavailable:
    return exc if isinstance(exc, gw.GatewayUnavailable) else gw.GatewayUnavailable(str(exc))


def _log_lookup(s: saga.BookingState, step: str, exc: Exception, found: gw.Found) -> None:
    log.warning(
        "%s: %s; the gateway has payment %s %s",
        step,
        exc,
        found.payment_id,
        found.status.value,
        extra={"booking_id": s.booking_id, "correlation_id": s.correlation_id},
    )


def _require_payment_id(state: saga.BookingState) -> str:
    if state.payment_id is None:
        # The rules only capture or refund an authorized payment, which always has an id.
        raise saga.SagaError(f"booking {state.booking_id}: no payment id to act on")
    return state.payment_id


SWEEP_BATCH = 100


async def sweep_abandoned_actions(runtime: AgentRuntime, allowed: timedelta) -> int:
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
    return await runtime.tick_each((row["booking_id"] for row in rows), "payment action timeout")
