"""``StripeGateway.find`` against stripe-mock: the requests it sends to look a PaymentIntent up
(by id, else by the booking's metadata) and that Stripe's answers parse. stripe-mock answers
with canned intents, so the statuses themselves are the unit tests' job."""

from __future__ import annotations

import pytest
import stripe

from streams.payment.gateway import IntentStatus
from streams.payment.stripe_gateway import StripeGateway
from tests.integration.saga.test_stripe_gateway import RecordingClient, stripe_mock

pytestmark = pytest.mark.integration

__all__ = ["stripe_mock"]  # the fixture, imported for pytest to find


async def test_find_retrieves_by_id_and_searches_by_booking(stripe_mock: str) -> None:
    recorder = RecordingClient()
    client = stripe.StripeClient(
        "sk_test_123", base_addresses={"api": stripe_mock}, http_client=recorder
    )
    gw = StripeGateway("sk_test_123", client=client)
    await gw.start(None)

    by_id = await gw.find(booking_id="b-5", payment_id="pi_123")
    assert by_id.status in set(IntentStatus)
    assert by_id.payment_id is not None
    by_booking = await gw.find(booking_id="b-5", payment_id=None)
    assert by_booking.status in set(IntentStatus)

    (m1, p1, _, _), (m2, p2, _, _) = recorder.requests
    assert (m1, p1) == ("GET", "/v1/payment_intents/pi_123")
    assert (m2, p2) == ("GET", "/v1/payment_intents/search")
