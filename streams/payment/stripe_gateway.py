"""The Stripe payment gateway: PaymentIntents with manual capture, through the ``stripe`` library.

Selected with ``ERYNOA_PAYMENT_GATEWAY=stripe``; ``ERYNOA_STRIPE_API_KEY`` and, for Stripe's
emulator (``erynoa stack`` runs stripe-mock where Go can build it),
``ERYNOA_STRIPE_API_BASE=http://127.0.0.1:12111``.

* authorize = ``PaymentIntent.create(capture_method=manual, confirm=True, payment_method=…,
  metadata.booking_id)``; ``requires_capture`` → authorized, ``requires_action`` → action
  required (the webhook finishes it), ``requires_payment_method``/``canceled`` or a
  ``CardError`` → declined;
* capture = ``PaymentIntent.capture``; an authorization that expired or was cancelled
  (``charge_expired_for_capture``, ``payment_intent_unexpected_state``) → capture failed;
* void = ``PaymentIntent.cancel``; an intent already cancelled counts as voided;
* refund = ``Refund.create(payment_intent=…)``.

Every call carries the idempotency key the agent derived from booking and step. Network
errors, timeouts, rate limits and 5xx raise ``GatewayUnavailable`` (retried through the retry
topics); other errors are permanent (dead-lettered for an operator).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import stripe

from erynoa.events import Money
from streams.failures import PermanentError
from streams.payment.gateway import (
    ActionRequired,
    Authorized,
    AuthorizeResult,
    Captured,
    CaptureFailed,
    CaptureResult,
    Declined,
    GatewayUnavailable,
    Refunded,
    Voided,
)

# Capture errors that mean "this authorization can no longer be captured", not "try again".
_CAPTURE_GONE = frozenset(
    {
        "charge_expired_for_capture",
        "payment_intent_unexpected_state",
        "payment_intent_invalid_parameter",
    }
)


def classify_error(error: stripe.StripeError) -> Exception:
    """The exception the agent should see for a Stripe error (retryable or permanent)."""
    status = error.http_status or 0
    if (
        isinstance(error, stripe.APIConnectionError | stripe.RateLimitError)
        or status >= 500
        or status == 429
    ):
        return GatewayUnavailable(f"stripe: {error.user_message or error}")
    if isinstance(error, stripe.APIError) and not status:
        return GatewayUnavailable(f"stripe: {error.user_message or error}")
    return PermanentError(
        f"stripe {type(error).__name__} ({status}): {error.user_message or error}"
    )


def _field(obj: Any, name: str) -> Any:
    try:
        return obj[name]
    except (KeyError, TypeError):
        return getattr(obj, name, None)


class StripeGateway:
    name = "stripe"
    remote = True

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        client: stripe.StripeClient | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        self._api_key = api_key
        self._api_base = api_base
        self._timeout_s = timeout_s
        self._given = client
        self._stripe: stripe.StripeClient | None = client

    @property
    def _client(self) -> stripe.StripeClient:
        if self._stripe is None:
            raise RuntimeError("StripeGateway not started")
        return self._stripe

    async def start(self, pool: asyncpg.Pool) -> None:
        if self._stripe is None:
            self._stripe = stripe.StripeClient(
                self._api_key,
                base_addresses={"api": self._api_base} if self._api_base else None,
                # Retries are ours (retry topics with backoff, same idempotency key).
                max_network_retries=0,
                http_client=stripe.HTTPXClient(timeout=self._timeout_s),
            )

    async def close(self) -> None:
        self._stripe = self._given

    async def authorize(
        self, *, booking_id: str, amount: Money, payment_method: str, idempotency_key: str
    ) -> AuthorizeResult:
        try:
            intent = await self._client.v1.payment_intents.create_async(
                {
                    "amount": amount.amount_minor,
                    "currency": amount.currency.lower(),
                    "capture_method": "manual",
                    "confirm": True,
                    "payment_method": payment_method,
                    # Cards only, no redirects: anything needing the customer is requires_action.
                    "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                    "metadata": {"booking_id": booking_id},
                },
                {"idempotency_key": idempotency_key},
            )
        except stripe.CardError as exc:
            payment_intent = _field(exc.error, "payment_intent") if exc.error else None
            return Declined(
                exc.code or "card_declined",
                exc.user_message or str(exc),
                _field(payment_intent, "id") if payment_intent else None,
            )
        except stripe.StripeError as exc:
            raise classify_error(exc) from exc
        return authorize_outcome(intent)

    async def capture(
        self, *, booking_id: str, payment_id: str, amount: Money, idempotency_key: str
    ) -> CaptureResult:
        try:
            intent = await self._client.v1.payment_intents.capture_async(
                payment_id,
                {"amount_to_capture": amount.amount_minor},
                {"idempotency_key": idempotency_key},
            )
        except (stripe.InvalidRequestError, stripe.CardError) as exc:
            if (exc.code or "") in _CAPTURE_GONE or isinstance(exc, stripe.CardError):
                return CaptureFailed(exc.code or "capture_failed", exc.user_message or str(exc))
            raise classify_error(exc) from exc
        except stripe.StripeError as exc:
            raise classify_error(exc) from exc
        status = _field(intent, "status")
        if status in ("succeeded", "processing"):
            return Captured(payment_id)
        return CaptureFailed(f"status_{status}", f"PaymentIntent is {status} after capture")

    async def void(
        self, *, booking_id: str, payment_id: str | None, idempotency_key: str
    ) -> Voided:
        if payment_id is None:
            return Voided(None)
        try:
            await self._client.v1.payment_intents.cancel_async(
                payment_id,
                {"cancellation_reason": "abandoned"},
                {"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as exc:
            # Cancelling what is already cancelled (or never went through) leaves nothing held.
            intent = _field(exc.error, "payment_intent") if exc.error else None
            if (
                exc.code == "payment_intent_unexpected_state"
                and _field(intent, "status")
                in (
                    "canceled",
                    "requires_payment_method",
                )
            ) or exc.code == "resource_missing":
                return Voided(payment_id)
            raise classify_error(exc) from exc
        except stripe.StripeError as exc:
            raise classify_error(exc) from exc
        return Voided(payment_id)

    async def refund(
        self, *, booking_id: str, payment_id: str, amount: Money, idempotency_key: str
    ) -> Refunded:
        try:
            refund = await self._client.v1.refunds.create_async(
                {
                    "payment_intent": payment_id,
                    "amount": amount.amount_minor,
                    "metadata": {"booking_id": booking_id},
                },
                {"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as exc:
            if exc.code == "charge_already_refunded":
                return Refunded(f"already_refunded:{payment_id}")
            raise classify_error(exc) from exc
        except stripe.StripeError as exc:
            raise classify_error(exc) from exc
        return Refunded(str(_field(refund, "id")))


def authorize_outcome(intent: Any) -> AuthorizeResult:
    """What a confirmed manual-capture PaymentIntent's status means for the booking."""
    payment_id = str(_field(intent, "id"))
    status = _field(intent, "status")
    if status in ("requires_capture", "succeeded"):
        return Authorized(payment_id)
    if status in ("requires_action", "requires_confirmation", "processing"):
        # The customer (or the bank) still has to act; a webhook reports how it ended.
        return ActionRequired(payment_id, _field(intent, "client_secret"))
    error = _field(intent, "last_payment_error")
    code = (_field(error, "code") or _field(error, "type") or status) if error else status
    message = (_field(error, "message") if error else None) or f"PaymentIntent is {status}"
    return Declined(str(code), str(message), payment_id)
