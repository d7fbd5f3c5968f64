"""The Stripe gateway's classification of Stripe's answers, with stripe's own error classes."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from erynoa.events import Money
from streams.failures import PermanentError, classify
from streams.payment.gateway import (
    ActionRequired,
    Authorized,
    Captured,
    CaptureFailed,
    Declined,
    GatewayUnavailable,
    Refunded,
    Voided,
)
from streams.payment.stripe_gateway import StripeGateway, authorize_outcome, classify_error

AMOUNT = Money(4500, "EUR")


def err(cls: type[stripe.StripeError], *args: Any, **kwargs: Any) -> stripe.StripeError:
    """Build a Stripe error as the library raises it (its subclasses' __init__ are untyped)."""
    return cls(*args, **kwargs)


def test_manual_capture_statuses_map_to_outcomes() -> None:
    assert authorize_outcome({"id": "pi_1", "status": "requires_capture"}) == Authorized("pi_1")
    assert authorize_outcome(
        {"id": "pi_1", "status": "requires_action", "client_secret": "sec"}
    ) == ActionRequired("pi_1", "sec")
    declined = authorize_outcome(
        {
            "id": "pi_1",
            "status": "requires_payment_method",
            "last_payment_error": {"code": "card_declined", "message": "Declined."},
        }
    )
    assert declined == Declined("card_declined", "Declined.", "pi_1")
    assert isinstance(authorize_outcome({"id": "pi_1", "status": "canceled"}), Declined)


@pytest.mark.parametrize(
    "error",
    [
        err(stripe.APIConnectionError, "network down"),
        err(stripe.RateLimitError, "slow down", http_status=429),
        err(stripe.APIError, "boom", http_status=500),
        err(stripe.APIError, "bad gateway", http_status=502),
    ],
)
def test_network_rate_limits_and_5xx_are_retryable(error: stripe.StripeError) -> None:
    mapped = classify_error(error)
    assert isinstance(mapped, GatewayUnavailable)
    assert classify(mapped) == "retryable"


@pytest.mark.parametrize(
    "error",
    [
        err(stripe.AuthenticationError, "bad key", http_status=401),
        err(stripe.InvalidRequestError, "bad param", "amount", http_status=400),
        err(stripe.IdempotencyError, "key reused", http_status=400),
    ],
)
def test_request_errors_are_permanent(error: stripe.StripeError) -> None:
    mapped = classify_error(error)
    assert isinstance(mapped, PermanentError)
    assert classify(mapped) == "permanent"


class _PaymentIntents:
    def __init__(self, behaviour: dict[str, Any]) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[str, Any, Any]] = []

    async def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args[:-1], args[-1]))
        result = self.behaviour[name]
        if isinstance(result, BaseException):
            raise result
        return result

    async def create_async(self, params: Any, options: Any) -> Any:
        return await self._answer("create", params, options)

    async def capture_async(self, intent: str, params: Any, options: Any) -> Any:
        return await self._answer("capture", intent, params, options)

    async def cancel_async(self, intent: str, params: Any, options: Any) -> Any:
        return await self._answer("cancel", intent, params, options)


class _Refunds(_PaymentIntents):
    async def create_async(self, params: Any, options: Any) -> Any:
        return await self._answer("refund", params, options)


class _Client:
    def __init__(self, **behaviour: Any) -> None:
        class V1:
            payment_intents = _PaymentIntents(behaviour)
            refunds = _Refunds(behaviour)

        self.v1 = V1()


def gateway(**behaviour: Any) -> tuple[StripeGateway, _Client]:
    client = _Client(**behaviour)
    return StripeGateway("sk_test_123", client=client), client  # type: ignore[arg-type]


async def test_authorize_sends_a_manual_capture_confirm_with_the_idempotency_key() -> None:
    gw, client = gateway(create={"id": "pi_1", "status": "requires_capture"})
    result = await gw.authorize(
        booking_id="b1",
        amount=AMOUNT,
        payment_method="pm_card_visa",
        idempotency_key="b1:authorize",
    )
    assert result == Authorized("pi_1")
    name, (params,), options = client.v1.payment_intents.calls[0]
    assert name == "create"
    assert params["capture_method"] == "manual"
    assert params["confirm"] is True
    assert params["amount"] == 4500
    assert params["currency"] == "eur"
    assert params["payment_method"] == "pm_card_visa"
    assert params["metadata"] == {"booking_id": "b1"}
    assert options == {"idempotency_key": "b1:authorize"}


async def test_a_card_error_is_a_decline() -> None:
    error = err(stripe.CardError, "Your card was declined.", None, "card_declined", http_status=402)
    gw, _ = gateway(create=error)
    result = await gw.authorize(
        booking_id="b1", amount=AMOUNT, payment_method="pm_card_chargeDeclined", idempotency_key="k"
    )
    assert isinstance(result, Declined)
    assert result.code == "card_declined"


async def test_a_stripe_outage_while_authorizing_is_retryable() -> None:
    gw, _ = gateway(create=err(stripe.APIConnectionError, "timeout"))
    with pytest.raises(GatewayUnavailable):
        await gw.authorize(
            booking_id="b1", amount=AMOUNT, payment_method="pm_card_visa", idempotency_key="k"
        )


async def test_capture_of_an_expired_authorization_is_the_capture_failed_path() -> None:
    error = err(
        stripe.InvalidRequestError,
        "expired",
        None,
        code="charge_expired_for_capture",
        http_status=400,
    )
    gw, _ = gateway(capture=error)
    result = await gw.capture(
        booking_id="b1", payment_id="pi_1", amount=AMOUNT, idempotency_key="k"
    )
    assert result == CaptureFailed("charge_expired_for_capture", "expired")


async def test_capture_succeeds_with_the_idempotency_key() -> None:
    gw, client = gateway(capture={"id": "pi_1", "status": "succeeded"})
    result = await gw.capture(
        booking_id="b1", payment_id="pi_1", amount=AMOUNT, idempotency_key="b1:capture"
    )
    assert result == Captured("pi_1")
    assert client.v1.payment_intents.calls[0][2] == {"idempotency_key": "b1:capture"}


async def test_void_succeeds_when_there_is_nothing_to_void() -> None:
    gw, client = gateway()
    assert await gw.void(booking_id="b1", payment_id=None, idempotency_key="k") == Voided(None)
    assert client.v1.payment_intents.calls == []
    already = err(
        stripe.InvalidRequestError,
        "already canceled",
        None,
        code="payment_intent_unexpected_state",
        http_status=400,
        json_body={"error": {"payment_intent": {"id": "pi_1", "status": "canceled"}}},
    )
    gw, _ = gateway(cancel=already)
    assert await gw.void(booking_id="b1", payment_id="pi_1", idempotency_key="k") == Voided("pi_1")


async def test_refund_returns_the_refund_id() -> None:
    gw, client = gateway(refund={"id": "re_1"})
    result = await gw.refund(
        booking_id="b1", payment_id="pi_1", amount=AMOUNT, idempotency_key="b1:refund"
    )
    assert result == Refunded("re_1")
    _, (params,), options = client.v1.refunds.calls[0]
    assert params["payment_intent"] == "pi_1"
    assert options == {"idempotency_key": "b1:refund"}
