"""Notification content, webhook signing and the senders' error classification (no network)."""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from erynoa import saga
from erynoa.events import Money
from streams.failures import classify
from streams.notification import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    DeliveryFailed,
    DeliveryUnavailable,
    SmtpSender,
    WebhookSender,
    compose,
    notification_id,
    sign,
    verify_signature,
)
from tests.builders import booking_requested

SLOT = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def a_state(status: saga.Status = saga.Status.CONFIRMED) -> saga.BookingState:
    requested = booking_requested(
        booking_id="0f8b7d1e-7a40-4c8a-9a55-3c7b0b2f1e11",
        customer_id="alice",
        service_id="svc-1",
        provider_id="bob",
        slot_start=SLOT,
        price=Money(4550, "EUR"),
    )
    from dataclasses import replace

    return replace(saga.start(requested), status=status)


def test_the_notification_id_is_the_same_for_the_same_booking_and_template() -> None:
    assert notification_id("b1", "customer_confirmed") == notification_id(
        "b1", "customer_confirmed"
    )
    assert notification_id("b1", "customer_confirmed") != notification_id("b1", "provider_request")
    assert notification_id("b1", "customer_confirmed") != notification_id(
        "b2", "customer_confirmed"
    )


def test_the_provider_is_asked_and_the_customer_told() -> None:
    state = a_state()
    provider = compose(state, saga.PROVIDER_REQUEST, "provider")
    customer = compose(state, "customer_confirmed", "customer")
    assert provider.recipient_id == "bob"
    assert customer.recipient_id == "alice"
    assert "waiting for your answer" in provider.subject
    assert customer.subject == "Your booking is confirmed"
    assert "45.50 EUR" in customer.body
    assert customer.payload["booking_id"] == state.booking_id
    assert customer.payload["amount_minor"] == 4550


def test_a_failed_booking_tells_the_customer_why() -> None:
    from dataclasses import replace

    state = replace(a_state(saga.Status.FAILED), failure_reason="payment failed: declined")
    assert "payment failed: declined" in compose(state, "customer_failed", "customer").body


@pytest.mark.parametrize(
    ("price", "shown"),
    [
        (Money(4550, "EUR"), "45.50 EUR"),
        (Money(4500, "JPY"), "4,500 JPY"),  # yen have no minor unit: 4,500, not 45.00
        (Money(1234, "KWD"), "1.234 KWD"),  # three minor digits
        (Money(12345678, "USD"), "123,456.78 USD"),
    ],
)
def test_the_price_is_shown_in_the_currencys_own_minor_units(price: Money, shown: str) -> None:
    from dataclasses import replace

    state = replace(a_state(), price=price)
    assert f"Price:   {shown}" in compose(state, "customer_confirmed", "customer").body


def test_the_mail_carries_the_notification_id_as_message_id() -> None:
    notice = compose(a_state(), "customer_confirmed", "customer")
    msg = SmtpSender("127.0.0.1", 25, "bookings@erynoa.local").message(notice, "alice@example.test")
    assert msg["Message-ID"] == f"<{notice.notification_id}@erynoa>"
    assert msg["To"] == "alice@example.test"
    assert msg["X-Erynoa-Template"] == "customer_confirmed"


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret", 1_700_000_000, body) == f"t=1700000000,v1={expected}"


def test_a_receiver_accepts_a_fresh_signature_and_refuses_anything_else() -> None:
    body = b'{"id":"n1"}'
    header = sign("s3cret", 1_700_000_000, body)
    assert verify_signature("s3cret", header, body, now=1_700_000_010)
    assert not verify_signature("other", header, body, now=1_700_000_010)
    assert not verify_signature("s3cret", header, body + b" ", now=1_700_000_010)
    assert not verify_signature("s3cret", header, body, now=1_700_000_000 + 3600)  # replayed
    assert not verify_signature("s3cret", "v1=abc", body, now=1_700_000_000)


def test_the_webhook_request_is_signed_json_with_an_idempotency_key() -> None:
    notice = compose(a_state(), "customer_confirmed", "customer")
    body, headers = WebhookSender("s3cret").request(notice, now=1_700_000_000)
    assert json.loads(body)["id"] == notice.notification_id
    assert headers[IDEMPOTENCY_HEADER] == notice.notification_id
    assert verify_signature("s3cret", headers[SIGNATURE_HEADER], body, now=1_700_000_000)


def _sender_answering(
    status: int | Exception, received: list[httpx.Request] | None = None
) -> WebhookSender:
    """A sender whose receiver answers ``status``; it appends what it got to ``received``."""

    def respond(request: httpx.Request) -> httpx.Response:
        if received is not None:
            received.append(request)
        if isinstance(status, Exception):
            raise status
        return httpx.Response(status)

    sender = WebhookSender("s3cret")
    sender._client = httpx.AsyncClient(transport=httpx.MockTransport(respond))
    return sender


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        # Server trouble is retried...
        *((status, DeliveryUnavailable, "retryable") for status in (500, 502, 503, 429, 408)),
        # ... a refusal is not.
        *((status, DeliveryFailed, "permanent") for status in (400, 401, 404, 410)),
    ],
)
async def test_a_webhooks_answer_decides_whether_the_delivery_is_retried(
    status: int, error: type[Exception], kind: str
) -> None:
    sender = _sender_answering(status)
    with pytest.raises(error) as caught:
        await sender.send(compose(a_state(), "customer_confirmed", "customer"), "http://hooks")
    assert classify(caught.value) == kind
    await sender.close()


async def test_an_unreachable_webhook_is_retried() -> None:
    sender = _sender_answering(httpx.ConnectError("refused"))
    with pytest.raises(DeliveryUnavailable):
        await sender.send(compose(a_state(), "customer_confirmed", "customer"), "http://hooks")
    await sender.close()


async def test_a_2xx_webhook_is_delivered() -> None:
    received: list[httpx.Request] = []
    sender = _sender_answering(204, received)
    notice = compose(a_state(), "customer_confirmed", "customer")

    await sender.send(notice, "http://hooks/erynoa")
    await sender.close()

    [request] = received
    assert (request.method, str(request.url)) == ("POST", "http://hooks/erynoa")
    assert json.loads(request.content)["id"] == notice.notification_id
    assert request.headers[IDEMPOTENCY_HEADER] == notice.notification_id
    assert verify_signature(
        "s3cret", request.headers[SIGNATURE_HEADER], request.content, now=int(time.time())
    )


class _Smtp:
    """Stands in for ``smtplib.SMTP`` and fails the way it is told to."""

    error: BaseException | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _Smtp:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send_message(self, msg: Any) -> None:
        if _Smtp.error is not None:
            raise _Smtp.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (smtplib.SMTPDataError(451, b"later"), DeliveryUnavailable),
        (smtplib.SMTPServerDisconnected("gone"), DeliveryUnavailable),
        (ConnectionRefusedError(), DeliveryUnavailable),
        (smtplib.SMTPDataError(554, b"rejected"), DeliveryFailed),
        (smtplib.SMTPRecipientsRefused({"a@x": (550, b"no such user")}), DeliveryFailed),
        (smtplib.SMTPRecipientsRefused({"a@x": (450, b"greylisted")}), DeliveryUnavailable),
    ],
)
async def test_smtp_errors_are_told_apart(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, expected: type[Exception]
) -> None:
    monkeypatch.setattr(smtplib, "SMTP", _Smtp)
    monkeypatch.setattr(_Smtp, "error", error)
    sender = SmtpSender("127.0.0.1", 25, "bookings@erynoa.local")
    with pytest.raises(expected):
        await sender.send(compose(a_state(), "customer_confirmed", "customer"), "a@x")
