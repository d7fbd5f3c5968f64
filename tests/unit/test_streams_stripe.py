"""The Stripe gateway's classification of Stripe's answers, with stripe's own error classes."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from erynoa.events import Money
from streams.failures import PermanentError, classify
from streams.payment import gateway as gw
from streams.payment.stripe_gateway import StripeGateway, authorize_outcome, classify_error

AMOUNT = Money(4500, "EUR")


def err(cls: type[stripe.StripeError], *args: Any, **kwargs: Any) -> stripe.StripeError:
    """Build a Stripe error as the library raises it (its subclasses' __init__ are untyped)."""
    return cls(*args, **kwargs)


def refused_request(message: str, code: str, **kwargs: Any) -> stripe.StripeError:
    """A 400 from Stripe with an error code, as for a request the intent's state refuses."""
    return err(stripe.InvalidRequestError, message, None, code=code, http_status=400, **kwargs)


def test_manual_capture_statuses_map_to_outcomes() -> None:
    assert authorize_outcome({"id": "pi_1", "status": "requires_capture"}) == gw.Authorized("pi_1")
    assert authorize_outcome(
        {"id": "pi_1", "status": "requires_action", "client_secret": "sec"}
    ) == gw.ActionRequired("pi_1", "sec")
    declined = authorize_outcome(
        {
            "id": "pi_1",
            "status": "requires_payment_method",
            "last_payment_error": {"code": "card_declined", "message": "Declined."},
        }
    )
    assert declined == gw.Declined("card_declined", "Declined.", "pi_1")
    assert isinstance(authorize_outcome({"id": "pi_1", "status": "canceled"}), gw.Declined)


@pytest.mark.parametrize(
    "error",
    [
        err(stripe.APIConnectionError, "network down"),
        err(stripe.RateLimitError, "slow down", http_status=429),
        err(stripe.APIError, "boom", http_status=500),
        err(stripe.APIError, "bad gateway", http_status=502),
        err(stripe.IdempotencyError, "key in use", http_status=409),
    ],
)
def test_network_rate_limits_and_5xx_are_retryable(error: stripe.StripeError) -> None:
    mapped = classify_error(error)
    assert isinstance(mapped, gw.GatewayUnavailable)
    assert classify(mapped) == "retryable"


@pytest.mark.parametrize(
    ("error", "unknown"),
    [
        (err(stripe.APIConnectionError, "read timeout"), True),
        (err(stripe.APIError, "boom", http_status=500), True),
        (err(stripe.RateLimitError, "slow down", http_status=429), False),
    ],
)
def test_a_lost_answer_is_an_unknown_outcome_a_refusal_is_not(
    error: stripe.StripeError, unknown: bool
) -> None:
    # A timeout or a 5xx may come after Stripe applied the request; a rate limit applied nothing.
    assert isinstance(classify_error(error), gw.OutcomeUnknown) == unknown


@pytest.mark.parametrize(
    "error",
    [
        err(stripe.AuthenticationError, "bad key", http_status=401),
        err(stripe.InvalidRequestError, "bad param", "amount", http_status=400),
    ],
)
def test_request_errors_are_permanent(error: stripe.StripeError) -> None:
    mapped = classify_error(error)
    assert isinstance(mapped, PermanentError)
    assert classify(mapped) == "permanent"


@pytest.mark.parametrize(
    "error",
    [
        err(stripe.IdempotencyError, "key reused with other parameters", http_status=400),
        refused_request("status succeeded", "payment_intent_unexpected_state"),
    ],
)
def test_an_intent_not_in_the_expected_state_is_looked_up_not_failed(
    error: stripe.StripeError,
) -> None:
    assert isinstance(classify_error(error), gw.UnexpectedState)


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

    async def retrieve_async(self, intent: str) -> Any:
        return await self._answer("retrieve", intent, None)

    async def search_async(self, params: Any) -> Any:
        return await self._answer("search", params, None)


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
    stripe_gw, client = gateway(create={"id": "pi_1", "status": "requires_capture"})
    result = await stripe_gw.authorize(
        booking_id="b1",
        amount=AMOUNT,
        payment_method="pm_card_visa",
        idempotency_key="b1:authorize",
    )
    assert result == gw.Authorized("pi_1")
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
    stripe_gw, _ = gateway(create=error)
    result = await stripe_gw.authorize(
        booking_id="b1", amount=AMOUNT, payment_method="pm_card_chargeDeclined", idempotency_key="k"
    )
    assert isinstance(result, gw.Declined)
    assert result.code == "card_declined"


async def test_a_stripe_outage_while_authorizing_is_retryable() -> None:
    stripe_gw, _ = gateway(create=err(stripe.APIConnectionError, "timeout"))
    with pytest.raises(gw.GatewayUnavailable):
        await stripe_gw.authorize(
            booking_id="b1", amount=AMOUNT, payment_method="pm_card_visa", idempotency_key="k"
        )


async def test_capture_of_an_expired_authorization_is_the_capture_failed_path() -> None:
    error = refused_request("expired", "charge_expired_for_capture")
    stripe_gw, _ = gateway(capture=error)
    result = await stripe_gw.capture(
        booking_id="b1", payment_id="pi_1", amount=AMOUNT, idempotency_key="k"
    )
    assert result == gw.CaptureFailed("charge_expired_for_capture", "expired")


async def test_capture_succeeds_with_the_idempotency_key() -> None:
    stripe_gw, client = gateway(capture={"id": "pi_1", "status": "succeeded"})
    result = await stripe_gw.capture(
        booking_id="b1", payment_id="pi_1", amount=AMOUNT, idempotency_key="b1:capture"
    )
    assert result == gw.Captured("pi_1")
    assert client.v1.payment_intents.calls[0][2] == {"idempotency_key": "b1:capture"}


async def test_void_succeeds_when_there_is_nothing_to_void() -> None:
    stripe_gw, client = gateway()
    assert await stripe_gw.void(booking_id="b1", payment_id=None, idempotency_key="k") == gw.Voided(
        None
    )
    assert client.v1.payment_intents.calls == []
    already = refused_request(
        "already canceled",
        "payment_intent_unexpected_state",
        json_body={"error": {"payment_intent": {"id": "pi_1", "status": "canceled"}}},
    )
    stripe_gw, _ = gateway(cancel=already)
    assert await stripe_gw.void(
        booking_id="b1", payment_id="pi_1", idempotency_key="k"
    ) == gw.Voided("pi_1")


async def test_refund_returns_the_refund_id() -> None:
    stripe_gw, client = gateway(refund={"id": "re_1"})
    result = await stripe_gw.refund(
        booking_id="b1", payment_id="pi_1", amount=AMOUNT, idempotency_key="b1:refund"
    )
    assert result == gw.Refunded("re_1")
    _, (params,), options = client.v1.refunds.calls[0]
    assert params["payment_intent"] == "pi_1"
    assert options == {"idempotency_key": "b1:refund"}


async def test_a_capture_refused_for_the_intents_state_is_raised_for_a_lookup() -> None:
    # Replayed after Stripe forgot the key, a capture that did happen is refused like this.
    refused = refused_request(
        "This PaymentIntent could not be captured because it has a status of succeeded.",
        "payment_intent_unexpected_state",
    )
    stripe_gw, _ = gateway(capture=refused)
    with pytest.raises(gw.UnexpectedState):
        await stripe_gw.capture(
            booking_id="b1", payment_id="pi_1", amount=AMOUNT, idempotency_key="k"
        )


async def test_a_capture_whose_connection_dropped_has_an_unknown_outcome() -> None:
    stripe_gw, _ = gateway(capture=err(stripe.APIConnectionError, "read timeout"))
    with pytest.raises(gw.OutcomeUnknown):
        await stripe_gw.capture(
            booking_id="b1", payment_id="pi_1", amount=AMOUNT, idempotency_key="k"
        )


@pytest.mark.parametrize(
    ("status", "found"),
    [
        ("requires_capture", gw.IntentStatus.AUTHORIZED),
        ("succeeded", gw.IntentStatus.CAPTURED),
        ("requires_action", gw.IntentStatus.ACTION_REQUIRED),
        ("canceled", gw.IntentStatus.CANCELED),
        ("requires_payment_method", gw.IntentStatus.FAILED),
    ],
)
async def test_find_by_id_reads_the_intents_status(status: str, found: gw.IntentStatus) -> None:
    stripe_gw, client = gateway(retrieve={"id": "pi_1", "status": status, "client_secret": "sec"})
    result = await stripe_gw.find(booking_id="b1", payment_id="pi_1")
    assert result.status == found
    assert result.payment_id == "pi_1"
    assert client.v1.payment_intents.calls == [("retrieve", ("pi_1",), None)]


async def test_find_without_an_id_searches_by_the_bookings_metadata() -> None:
    page = {
        "data": [
            {"id": "pi_old", "status": "canceled"},
            {"id": "pi_held", "status": "requires_capture"},
        ]
    }
    stripe_gw, client = gateway(search=page)
    assert await stripe_gw.find(booking_id="b1", payment_id=None) == gw.Found(
        gw.IntentStatus.AUTHORIZED, "pi_held"
    )
    [(name, (params,), _)] = client.v1.payment_intents.calls
    assert name == "search"
    assert params["query"] == "metadata['booking_id']:'b1'"
    stripe_gw, _ = gateway(search={"data": []})
    assert await stripe_gw.find(booking_id="b1", payment_id=None) == gw.Found(
        gw.IntentStatus.NOT_FOUND
    )


async def test_find_of_a_missing_intent_is_not_found_and_an_outage_is_retryable() -> None:
    missing = err(
        stripe.InvalidRequestError, "No such payment_intent", None, code="resource_missing"
    )
    stripe_gw, _ = gateway(retrieve=missing)
    found = await stripe_gw.find(booking_id="b1", payment_id="pi_x")
    assert found == gw.Found(gw.IntentStatus.NOT_FOUND, "pi_x")
    stripe_gw, _ = gateway(retrieve=err(stripe.APIConnectionError, "down"))
    with pytest.raises(gw.GatewayUnavailable):
        await stripe_gw.find(booking_id="b1", payment_id="pi_1")
