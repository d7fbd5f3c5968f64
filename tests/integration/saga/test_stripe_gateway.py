"""The Stripe gateway against stripe-mock, Stripe's own API emulator (``erynoa stack`` builds it
where Go is available; skipped otherwise).

stripe-mock validates every request against Stripe's OpenAPI spec but answers with canned
objects (a PaymentIntent in ``requires_payment_method`` whatever was asked), so these tests check
what we send — endpoints, parameters, the idempotency key on every call — and that the answers
parse into our outcome types; the business outcomes are the sandbox's and the unit tests' job.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

import pytest
import stripe

from erynoa.events import Money
from erynoa.settings import Settings
from streams.payment.gateway import ActionRequired, Authorized, Captured, CaptureFailed, Declined
from streams.payment.stripe_gateway import StripeGateway

pytestmark = pytest.mark.integration

AMOUNT = Money(4500, "EUR")


class RecordingClient(stripe.HTTPXClient):
    """Stripe's own async HTTP client, keeping each request it sends."""

    def __init__(self) -> None:
        super().__init__(timeout=10)
        self.requests: list[tuple[str, str, dict[str, str], dict[str, list[str]]]] = []

    async def request_async(  # type: ignore[no-untyped-def]
        self, method: str, url: str, headers: Mapping[str, str], post_data=None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        form = parse_qs(post_data.decode() if isinstance(post_data, bytes) else post_data or "")
        self.requests.append((method.upper(), urlsplit(url).path, dict(headers), form))
        result: tuple[bytes, int, Mapping[str, str]] = await super().request_async(
            method, url, headers, post_data
        )
        return result


@pytest.fixture
def stripe_mock(settings: Settings) -> str:
    base = f"http://127.0.0.1:{settings.stripe_mock_port}"
    conn = http.client.HTTPConnection("127.0.0.1", settings.stripe_mock_port, timeout=2)
    try:
        conn.request("GET", "/v1/customers", headers={"Authorization": "Bearer sk_test_123"})
        conn.getresponse()
    except OSError:
        pytest.skip(f"stripe-mock is not running at {base} (`erynoa stack status`)")
    finally:
        conn.close()
    return base


@pytest.fixture
async def gateway(stripe_mock: str) -> tuple[StripeGateway, RecordingClient]:
    recorder = RecordingClient()
    client = stripe.StripeClient(
        "sk_test_123", base_addresses={"api": stripe_mock}, http_client=recorder
    )
    gw = StripeGateway("sk_test_123", client=client)
    await gw.start(None)
    return gw, recorder


def single(form: dict[str, list[str]]) -> dict[str, str]:
    return {key: values[0] for key, values in form.items()}


async def test_authorize_creates_a_confirmed_manual_capture_payment_intent(
    gateway: tuple[StripeGateway, RecordingClient],
) -> None:
    gw, recorder = gateway
    result = await gw.authorize(
        booking_id="b-1",
        amount=AMOUNT,
        payment_method="pm_card_visa",
        idempotency_key="b-1:authorize",
    )
    # stripe-mock's canned intent says requires_payment_method; a real one requires_capture.
    assert isinstance(result, Authorized | ActionRequired | Declined)
    method, path, headers, form = recorder.requests[-1]
    assert (method, path) == ("POST", "/v1/payment_intents")
    assert headers["Idempotency-Key"] == "b-1:authorize"
    assert single(form) == {
        "amount": "4500",
        "currency": "eur",
        "capture_method": "manual",
        "confirm": "true",
        "payment_method": "pm_card_visa",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
        "metadata[booking_id]": "b-1",
    }


async def test_capture_void_and_refund_carry_their_own_idempotency_keys(
    gateway: tuple[StripeGateway, RecordingClient],
) -> None:
    gw, recorder = gateway
    captured = await gw.capture(
        booking_id="b-2", payment_id="pi_123", amount=AMOUNT, idempotency_key="b-2:capture"
    )
    assert isinstance(captured, Captured | CaptureFailed)
    voided = await gw.void(booking_id="b-2", payment_id="pi_123", idempotency_key="b-2:void")
    assert voided.payment_id == "pi_123"
    refunded = await gw.refund(
        booking_id="b-2", payment_id="pi_123", amount=AMOUNT, idempotency_key="b-2:refund"
    )
    assert refunded.refund_id.startswith("re_")

    calls = [(m, p, h["Idempotency-Key"], single(f)) for m, p, h, f in recorder.requests]
    assert calls == [
        (
            "POST",
            "/v1/payment_intents/pi_123/capture",
            "b-2:capture",
            {"amount_to_capture": "4500"},
        ),
        (
            "POST",
            "/v1/payment_intents/pi_123/cancel",
            "b-2:void",
            {"cancellation_reason": "abandoned"},
        ),
        (
            "POST",
            "/v1/refunds",
            "b-2:refund",
            {"payment_intent": "pi_123", "amount": "4500", "metadata[booking_id]": "b-2"},
        ),
    ]


async def test_a_repeated_call_sends_the_same_key(
    gateway: tuple[StripeGateway, RecordingClient],
) -> None:
    gw, recorder = gateway
    for _ in range(2):
        await gw.authorize(
            booking_id="b-3",
            amount=AMOUNT,
            payment_method="pm_card_visa",
            idempotency_key="b-3:authorize",
        )
    keys = [h["Idempotency-Key"] for _, _, h, _ in recorder.requests]
    assert keys == ["b-3:authorize", "b-3:authorize"]


async def test_voiding_nothing_calls_nothing(
    gateway: tuple[StripeGateway, RecordingClient],
) -> None:
    gw, recorder = gateway
    assert (
        await gw.void(booking_id="b-4", payment_id=None, idempotency_key="k")
    ).payment_id is None
    assert recorder.requests == []
