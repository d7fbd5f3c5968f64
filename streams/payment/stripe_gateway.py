"""The Stripe payment gateway: PaymentIntents with manual capture, through the ``stripe`` library.

Selected with ``ERYNOA_PAYMENT_GATEWAY=stripe``; ``ERYNOA_STRIPE_API_KEY`` and, for Stripe's
emulator (``erynoa stack`` runs stripe-mock where Go can build it),
``ERYNOA_STRIPE_API_BASE=http://127.0.0.1:12111``.

* authorize = ``PaymentIntent.create(capture_method=manual, confirm=True, payment_method=…,
  metadata.booking_id)``; ``requires_capture`` → authorized, ``requires_action`` → action
  required (the webhook finishes it), ``requires_payment_method``/``canceled`` or a
  ``CardError`` → declined;
* capture = ``PaymentIntent.capture``; an authorization that expired
  (``charge_expired_for_capture``) or a card error → capture failed;
  ``payment_intent_unexpected_state`` → ``UnexpectedState`` (the agent looks the intent up: a
  capture replayed after Stripe forgot its key finds the intent already ``succeeded``);
* void = ``PaymentIntent.cancel``; an intent already cancelled (or never authorized) counts as
  voided;
* refund = ``Refund.create(payment_intent=…)``; an already refunded charge counts as refunded;
* find = ``PaymentIntent.retrieve`` by id, else ``PaymentIntent.search`` by
  ``metadata['booking_id']`` (Stripe's search index trails writes by up to a minute).

Every call carries the idempotency key the agent derived from booking and step. Timeouts,
dropped connections and 5xx raise ``OutcomeUnknown`` (the request may have been applied; the
agent looks the intent up), rate limits and a key still in use ``GatewayUnavailable``; both are
retried. Other errors are permanent (dead-lettered for an operator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import stripe

from erynoa.events import Money
from streams.failures import PermanentError, describe
from streams.payment import gateway as gw

# Capture errors that mean "this authorization can no longer be captured", not "try again".
_CAPTURE_GONE = frozenset({"charge_expired_for_capture", "payment_intent_invalid_parameter"})
UNEXPECTED_STATE = "payment_intent_unexpected_state"


def classify_error(error: stripe.StripeError) -> Exception:
    """The exception the agent should see for a Stripe error.

    A dropped connection or a timeout may come after Stripe applied the request, and Stripe
    says a 5xx may have been applied too: those are ``OutcomeUnknown``. A rate limit or a key
    whose first request is still running (409) applied nothing: ``GatewayUnavailable``. A key
    reused with other parameters means our picture of the intent is wrong: ``UnexpectedState``.
    """
    status = error.http_status or 0
    text = f"stripe: {error.user_message or error}"
    if isinstance(error, stripe.RateLimitError) or status in (409, 429):
        return gw.GatewayUnavailable(text)
    if isinstance(error, stripe.APIConnectionError) or status >= 500:
        return gw.OutcomeUnknown(text)
    if isinstance(error, stripe.APIError) and not status:
        return gw.OutcomeUnknown(text)
    if isinstance(error, stripe.IdempotencyError):
        return gw.UnexpectedState("idempotency_error", str(error.user_message or error))
    if error.code == UNEXPECTED_STATE:
        return gw.UnexpectedState(UNEXPECTED_STATE, str(error.user_message or error))
    return PermanentError(
        f"stripe {type(error).__name__} ({status}): {error.user_message or error}"
    )


def _field(obj: Any, name: str) -> Any:
    try:
        return obj[name]
    except (KeyError, TypeError):
        return getattr(obj, name, None)


@dataclass(eq=False)
class StripeGateway:
    """Stripe's API; ``client``, when given, is used instead of one built at ``start``."""

    name = "stripe"
    remote = True

    api_key: str = field(repr=False)
    api_base: str | None = None
    client: stripe.StripeClient | None = None
    timeout_s: float = 20.0
    _stripe: stripe.StripeClient | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._stripe = self.client

    @property
    def _client(self) -> stripe.StripeClient:
        if self._stripe is None:
            raise RuntimeError("StripeGateway not started")
        return self._stripe

    async def start(self, pool: asyncpg.Pool) -> None:
        if self._stripe is None:
            self._stripe = stripe.StripeClient(
                self.api_key,
                base_addresses={"api": self.api_base} if self.api_base else None,
                # Retries are ours (retry topics with backoff, same idempotency key).
                max_network_retries=0,
                http_client=stripe.HTTPXClient(timeout=self.timeout_s),
            )

    async def close(self) -> None:
        self._stripe = self.client

    async def authorize(
        self, *, booking_id: str, amount: Money, payment_method: str, idempotency_key: str
    ) -> gw.AuthorizeResult:
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
            return gw.Declined(
                exc.code or "card_declined",
                exc.user_message or str(exc),
                _field(payment_intent, "id") if payment_intent else None,
            )
        except stripe.StripeError as exc:
            raise classify_error(exc) from exc
        return authorize_outcome(intent)

    async def capture(
        self, *, booking_id: str, payment_id: str, amount: Money, idempotency_key: str
    ) -> gw.CaptureResult:
        try:
            intent = await self._client.v1.payment_intents.capture_async(
                payment_id,
                {"amount_to_capture": amount.amount_minor},
                {"idempotency_key": idempotency_key},
            )
        except (stripe.InvalidRequestError, stripe.CardError) as exc:
            if (exc.code or "") in _CAPTURE_GONE or isinstance(exc, stripe.CardError):
                return gw.CaptureFailed(exc.code or "capture_failed", exc.user_message or str(exc))
            # payment_intent_unexpected_state among them: perhaps captured by an earlier try.
            raise classify_error(exc) from exc
        except stripe.StripeError as exc:
            raise classify_error(exc) from exc
        status = _field(intent, "status")
        if status in ("succeeded", "processing"):
            return gw.Captured(payment_id)
        return gw.CaptureFailed(f"status_{status}", f"PaymentIntent is {status} after capture")

    async def void(
        self, *, booking_id: str, payment_id: str | None, idempotency_key: str
    ) -> gw.Voided:
        if payment_id is None:
            return gw.Voided(None)
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
                return gw.Voided(payment_id)
            raise classify_error(exc) from exc
        except stripe.StripeError as exc:
            raise classify_error(exc) from exc
        return gw.Voided(payment_id)

    async def refund(
        self, *, booking_id: str, payment_id: str, amount: Money, idempotency_key: str
    ) -> gw.Refunded:
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
                return gw.Refunded(f"already_refunded:{payment_id}")
            raise classify_error(exc) from exc
        except stripe.StripeError as exc:
            raise classify_error(exc) from exc
        return gw.Refunded(str(_field(refund, "id")))

    async def probe(self) -> str | None:
        try:
            await self._client.v1.balance.retrieve_async()
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
            # Unreachable, throttling us, or failing itself (5xx).
            return f"stripe: {describe(exc)}"
        except stripe.StripeError:
            return None  # it answered (a refusal of this call says nothing about an outage)
        return None

    async def find(self, *, booking_id: str, payment_id: str | None) -> gw.Found:
        try:
            if payment_id is not None:
                intent = await self._client.v1.payment_intents.retrieve_async(payment_id)
                return found_from_intent(intent)
            quoted = booking_id.replace("\\", "\\\\").replace("'", "\\'")
            page = await self._client.v1.payment_intents.search_async(
                {"query": f"metadata['booking_id']:'{quoted}'", "limit": 10}
            )
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing":
                return gw.Found(gw.IntentStatus.NOT_FOUND, payment_id)
            raise classify_error(exc) from exc
        except stripe.StripeError as exc:
            raise classify_error(exc) from exc
        found = [found_from_intent(i) for i in _field(page, "data") or ()]
        if not found:
            return gw.Found(gw.IntentStatus.NOT_FOUND)
        # One booking, one intent; should there be more, the one holding money matters most.
        return min(found, key=lambda f: _PRECEDENCE.index(f.status))


def authorize_outcome(intent: Any) -> gw.AuthorizeResult:
    """What a confirmed manual-capture PaymentIntent's status means for the booking."""
    payment_id = str(_field(intent, "id"))
    status = _field(intent, "status")
    if status in ("requires_capture", "succeeded"):
        return gw.Authorized(payment_id)
    if status in ("requires_action", "requires_confirmation", "processing"):
        # The customer (or the bank) still has to act; a webhook reports how it ended.
        return gw.ActionRequired(payment_id, _field(intent, "client_secret"))
    error = _field(intent, "last_payment_error")
    code = (_field(error, "code") or _field(error, "type") or status) if error else status
    message = (_field(error, "message") if error else None) or f"PaymentIntent is {status}"
    return gw.Declined(str(code), str(message), payment_id)


_PRECEDENCE = (
    gw.IntentStatus.CAPTURED,
    gw.IntentStatus.AUTHORIZED,
    gw.IntentStatus.ACTION_REQUIRED,
    gw.IntentStatus.CANCELED,
    gw.IntentStatus.FAILED,
    gw.IntentStatus.NOT_FOUND,
)

_INTENT_STATUS = {
    "requires_capture": gw.IntentStatus.AUTHORIZED,
    "succeeded": gw.IntentStatus.CAPTURED,
    "requires_action": gw.IntentStatus.ACTION_REQUIRED,
    "requires_confirmation": gw.IntentStatus.ACTION_REQUIRED,
    "processing": gw.IntentStatus.ACTION_REQUIRED,
    "canceled": gw.IntentStatus.CANCELED,
    "requires_payment_method": gw.IntentStatus.FAILED,
}


def found_from_intent(intent: Any) -> gw.Found:
    """A manual-capture PaymentIntent's status as the saga reads it."""
    status = _INTENT_STATUS.get(str(_field(intent, "status")), gw.IntentStatus.FAILED)
    secret = _field(intent, "client_secret") if status == gw.IntentStatus.ACTION_REQUIRED else None
    return gw.Found(status, str(_field(intent, "id")), secret)
