"""The payment agent's decisions with an in-memory gateway: which event each gateway answer and
each Stripe webhook becomes, and the idempotency keys it hands the gateway."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from erynoa import events as ev
from erynoa import saga
from erynoa.events import Money
from streams.payment import gateway as gw
from streams.payment.agent import PaymentAdapter
from streams.runtime import Context
from tests.builders import booking_requested

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PRICE = Money(4500, "EUR")


@dataclass
class FakeGateway:
    """Answers as told; an exception as an answer is raised (a lost answer, a refusal)."""

    authorize_result: gw.AuthorizeResult | Exception = field(
        default_factory=lambda: gw.Authorized("pi_1")
    )
    capture_result: gw.CaptureResult | Exception = field(
        default_factory=lambda: gw.Captured("pi_1")
    )
    void_error: Exception | None = None
    found: gw.Found = field(default_factory=lambda: gw.Found(gw.IntentStatus.NOT_FOUND))
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    name: str = "fake"
    remote: bool = False

    async def start(self, pool: Any) -> None:
        return None

    async def close(self) -> None:
        return None

    async def authorize(self, **kwargs: Any) -> gw.AuthorizeResult:
        self.calls.append(("authorize", kwargs))
        if isinstance(self.authorize_result, Exception):
            raise self.authorize_result
        return self.authorize_result

    async def capture(self, **kwargs: Any) -> gw.CaptureResult:
        self.calls.append(("capture", kwargs))
        if isinstance(self.capture_result, Exception):
            raise self.capture_result
        return self.capture_result

    async def void(self, **kwargs: Any) -> gw.Voided:
        self.calls.append(("void", kwargs))
        if self.void_error is not None:
            raise self.void_error
        return gw.Voided(kwargs["payment_id"])

    async def find(self, **kwargs: Any) -> gw.Found:
        self.calls.append(("find", kwargs))
        return self.found

    def called(self) -> list[str]:
        return [name for name, _ in self.calls]

    async def refund(self, **kwargs: Any) -> gw.Refunded:
        self.calls.append(("refund", kwargs))
        return gw.Refunded("re_1")


REQUESTED = booking_requested(
    booking_id="8a1c3f0e-2b4d-4e6f-8a9b-0c1d2e3f4a5b",
    occurred_at=NOW,
    slot_start=NOW + timedelta(days=2),
    price=PRICE,
)


def ctx_for(state: saga.BookingState, cause: ev.BookingEvent = REQUESTED) -> Context:
    return Context(
        agent="payment", conn=None, pool=None, state=state, cause=cause, now=NOW, headers={}
    )


def reserved() -> saga.BookingState:
    return replace(saga.start(REQUESTED), status=saga.Status.RESERVED, hold=saga.Hold.HELD)


@pytest.mark.parametrize(
    ("answer", "event_type"),
    [
        (gw.Authorized("pi_1"), "PaymentAuthorized"),
        (gw.ActionRequired("pi_1", "secret"), "PaymentActionRequired"),
        (gw.Declined("card_declined", "Declined.", "pi_1"), "PaymentFailed"),
    ],
)
async def test_each_authorization_answer_becomes_its_event(
    answer: gw.AuthorizeResult, event_type: str
) -> None:
    gateway = FakeGateway(authorize_result=answer)
    [event] = await PaymentAdapter(gateway).execute(
        saga.AuthorizePayment(PRICE), ctx_for(reserved())
    )
    assert event.event_type == event_type
    [(name, kwargs)] = gateway.calls
    assert name == "authorize"
    assert kwargs["idempotency_key"] == f"{REQUESTED.booking_id}:authorize"
    assert kwargs["payment_method"] == "pm_card_visa"
    assert kwargs["amount"] == PRICE


async def test_a_failed_capture_is_recorded_not_raised() -> None:
    gateway = FakeGateway(capture_result=gw.CaptureFailed("charge_expired_for_capture", "expired"))
    state = replace(reserved(), payment=saga.Payment.AUTHORIZED, payment_id="pi_1")
    [event] = await PaymentAdapter(gateway).execute(saga.CapturePayment(PRICE), ctx_for(state))
    assert isinstance(event, ev.PaymentCaptureFailed)
    assert event.reason_code == "charge_expired_for_capture"
    assert gateway.calls[0][1]["idempotency_key"] == f"{REQUESTED.booking_id}:capture"


async def test_void_and_refund_use_their_own_keys() -> None:
    gateway = FakeGateway()
    state = replace(reserved(), payment=saga.Payment.AUTHORIZED, payment_id="pi_1")
    adapter = PaymentAdapter(gateway)
    [voided] = await adapter.execute(saga.VoidPayment("cancelled"), ctx_for(state))
    [refunded] = await adapter.execute(saga.RefundPayment(PRICE), ctx_for(state))
    assert isinstance(voided, ev.PaymentVoided)
    assert isinstance(refunded, ev.PaymentRefunded)
    assert [kw["idempotency_key"] for _, kw in gateway.calls] == [
        f"{REQUESTED.booking_id}:void",
        f"{REQUESTED.booking_id}:refund",
    ]


def webhook(stripe_event_type: str, payment_id: str = "pi_1") -> ev.StripeEventReceived:
    return ev.make(
        ev.StripeEventReceived,
        cause=REQUESTED,
        producer="api",
        stripe_event_id="evt_1",
        stripe_event_type=stripe_event_type,
        payment_id=payment_id,
        payment_status="x",
    )


def with_payment(status: saga.Status, payment: saga.Payment) -> saga.BookingState:
    """A held booking whose payment ``pi_1`` got as far as ``payment``."""
    return replace(reserved(), status=status, payment=payment, payment_id="pi_1")


def waiting_for_customer() -> saga.BookingState:
    return with_payment(saga.Status.PAYMENT_ACTION_REQUIRED, saga.Payment.ACTION_REQUIRED)


@pytest.mark.parametrize(
    ("stripe_event_type", "event_type"),
    [
        ("payment_intent.succeeded", "PaymentAuthorized"),
        ("payment_intent.amount_capturable_updated", "PaymentAuthorized"),
        ("payment_intent.payment_failed", "PaymentFailed"),
        ("payment_intent.canceled", "PaymentFailed"),
    ],
)
async def test_a_webhook_finishes_an_authorization_that_needed_action(
    stripe_event_type: str, event_type: str
) -> None:
    hook = webhook(stripe_event_type)
    events = await PaymentAdapter(FakeGateway()).react(hook, ctx_for(waiting_for_customer(), hook))
    assert [e.event_type for e in events] == [event_type]
    # The same id as an immediate authorization: a booking is authorized once.
    if event_type == "PaymentAuthorized":
        assert events[0].event_id == ev.derived_event_id(REQUESTED.booking_id, "payment:authorized")


async def test_webhooks_that_change_nothing_are_ignored() -> None:
    adapter = PaymentAdapter(FakeGateway())
    other = webhook("payment_intent.succeeded", payment_id="pi_other")
    assert await adapter.react(other, ctx_for(waiting_for_customer(), other)) == []
    authorized = replace(waiting_for_customer(), payment=saga.Payment.AUTHORIZED)
    hook = webhook("payment_intent.succeeded")
    assert await adapter.react(hook, ctx_for(authorized, hook)) == []
    failed_again = webhook("payment_intent.payment_failed")
    assert await adapter.react(failed_again, ctx_for(authorized, failed_again)) == []
    assert await adapter.react(REQUESTED, ctx_for(authorized)) == []


async def test_a_success_after_a_failure_is_recorded_so_it_gets_voided() -> None:
    failed = replace(waiting_for_customer(), status=saga.Status.FAILED, payment=saga.Payment.FAILED)
    hook = webhook("payment_intent.succeeded")
    [event] = await PaymentAdapter(FakeGateway()).react(hook, ctx_for(failed, hook))
    state = saga.evolve(failed, event)
    assert saga.next_actions("payment", state, NOW) == [saga.VoidPayment(reason="failed")]


# --- outcomes the agent did not learn: it asks the gateway ------------------------------------

LOST = gw.OutcomeUnknown("read timeout")
REFUSED = gw.UnexpectedState("payment_intent_unexpected_state", "status succeeded")


def authorized() -> saga.BookingState:
    return with_payment(saga.Status.AWAITING_PROVIDER, saga.Payment.AUTHORIZED)


@pytest.mark.parametrize(
    ("found", "event_type"),
    [
        (gw.Found(gw.IntentStatus.AUTHORIZED, "pi_9"), "PaymentAuthorized"),
        (gw.Found(gw.IntentStatus.ACTION_REQUIRED, "pi_9", "secret"), "PaymentActionRequired"),
        (gw.Found(gw.IntentStatus.FAILED, "pi_9"), "PaymentFailed"),
    ],
)
async def test_an_authorization_whose_answer_was_lost_is_what_the_gateway_has(
    found: gw.Found, event_type: str
) -> None:
    gateway = FakeGateway(authorize_result=LOST, found=found)
    [event] = await PaymentAdapter(gateway).execute(
        saga.AuthorizePayment(PRICE), ctx_for(reserved())
    )
    assert event.event_type == event_type
    assert getattr(event, "payment_id", None) == "pi_9"
    assert gateway.calls[1] == ("find", {"booking_id": REQUESTED.booking_id, "payment_id": None})


async def test_an_authorization_the_gateway_never_saw_is_tried_again() -> None:
    gateway = FakeGateway(authorize_result=LOST)
    with pytest.raises(gw.GatewayUnavailable):
        await PaymentAdapter(gateway).execute(saga.AuthorizePayment(PRICE), ctx_for(reserved()))


@pytest.mark.parametrize(
    ("status", "event_type", "reason_code"),
    [
        # It already happened: a capture.
        (gw.IntentStatus.CAPTURED, ev.PaymentCaptured, None),
        # The intent was cancelled: the capture failed.
        (gw.IntentStatus.CANCELED, ev.PaymentCaptureFailed, "payment_intent_canceled"),
    ],
)
async def test_a_capture_refused_for_the_intents_state_is_what_the_gateway_has(
    status: gw.IntentStatus, event_type: type[ev.BookingEvent], reason_code: str | None
) -> None:
    gateway = FakeGateway(capture_result=REFUSED, found=gw.Found(status, "pi_1"))
    [event] = await PaymentAdapter(gateway).execute(
        saga.CapturePayment(PRICE), ctx_for(authorized())
    )
    assert isinstance(event, event_type)
    assert getattr(event, "reason_code", None) == reason_code
    assert gateway.calls[1] == ("find", {"booking_id": REQUESTED.booking_id, "payment_id": "pi_1"})


async def test_a_capture_whose_answer_was_lost_and_is_still_capturable_is_tried_again() -> None:
    gateway = FakeGateway(capture_result=LOST, found=gw.Found(gw.IntentStatus.AUTHORIZED, "pi_1"))
    with pytest.raises(gw.GatewayUnavailable):
        await PaymentAdapter(gateway).execute(saga.CapturePayment(PRICE), ctx_for(authorized()))


async def test_a_void_whose_answer_was_lost_is_voided_when_the_intent_is_cancelled() -> None:
    gateway = FakeGateway(void_error=LOST, found=gw.Found(gw.IntentStatus.CANCELED, "pi_1"))
    cancelled = replace(authorized(), status=saga.Status.CANCELLED)
    [event] = await PaymentAdapter(gateway).execute(
        saga.VoidPayment("cancelled"), ctx_for(cancelled)
    )
    assert isinstance(event, ev.PaymentVoided)
    assert event.payment_id == "pi_1"


async def test_a_customer_who_finished_3ds_is_authorized_not_abandoned() -> None:
    gateway = FakeGateway(found=gw.Found(gw.IntentStatus.AUTHORIZED, "pi_1"))
    [event] = await PaymentAdapter(gateway).execute(
        saga.AbandonPayment("too late"), ctx_for(waiting_for_customer())
    )
    assert isinstance(event, ev.PaymentAuthorized)
    assert gateway.called() == ["find"]  # nothing cancelled


async def test_a_customer_still_asked_to_act_is_abandoned_and_the_intent_cancelled() -> None:
    gateway = FakeGateway(found=gw.Found(gw.IntentStatus.ACTION_REQUIRED, "pi_1", "secret"))
    [event] = await PaymentAdapter(gateway).execute(
        saga.AbandonPayment("too late"), ctx_for(waiting_for_customer())
    )
    assert isinstance(event, ev.PaymentFailed)
    assert event.reason_code == "action_timeout"
    assert gateway.called() == ["find", "void"]
    assert gateway.calls[1][1]["idempotency_key"] == f"{REQUESTED.booking_id}:abandon"


def cancelled_while_reserved() -> saga.BookingState:
    return replace(reserved(), status=saga.Status.CANCELLED)


async def test_an_authorization_a_cancelled_booking_never_recorded_is_voided() -> None:
    gateway = FakeGateway(found=gw.Found(gw.IntentStatus.AUTHORIZED, "pi_9"))
    state = cancelled_while_reserved()
    [event] = await PaymentAdapter(gateway).react(REQUESTED, ctx_for(state))
    assert isinstance(event, ev.PaymentVoided)
    assert event.payment_id == "pi_9"
    assert gateway.calls == [
        ("find", {"booking_id": REQUESTED.booking_id, "payment_id": None}),
        (
            "void",
            {
                "booking_id": REQUESTED.booking_id,
                "payment_id": "pi_9",
                "idempotency_key": f"{REQUESTED.booking_id}:void",
            },
        ),
    ]
    assert saga.evolve(state, event).payment == saga.Payment.VOIDED


async def test_a_cancelled_booking_with_nothing_at_the_gateway_records_nothing() -> None:
    gateway = FakeGateway()
    assert await PaymentAdapter(gateway).react(REQUESTED, ctx_for(cancelled_while_reserved())) == []
    assert gateway.called() == ["find"]
    # Never reserved: nothing was asked of the gateway, so nothing is looked up.
    never = replace(saga.start(REQUESTED), status=saga.Status.CANCELLED)
    assert await PaymentAdapter(gateway).react(REQUESTED, ctx_for(never)) == []
    assert gateway.called() == ["find"]


async def test_a_void_that_finds_the_money_captured_records_the_capture_to_refund_it() -> None:
    gateway = FakeGateway(void_error=REFUSED, found=gw.Found(gw.IntentStatus.CAPTURED, "pi_1"))
    failed = replace(authorized(), status=saga.Status.FAILED, payment=saga.Payment.CAPTURE_FAILED)
    [event] = await PaymentAdapter(gateway).execute(saga.VoidPayment("failed"), ctx_for(failed))
    assert isinstance(event, ev.PaymentCaptured)
    state = saga.evolve(failed, event)
    assert saga.next_actions("payment", state, NOW) == [saga.RefundPayment(PRICE)]


@pytest.mark.parametrize(
    ("found", "event_type"),
    [
        (gw.Found(gw.IntentStatus.AUTHORIZED, "pi_9"), "PaymentAuthorized"),
        (gw.Found(gw.IntentStatus.ACTION_REQUIRED, "pi_9", "secret"), "PaymentActionRequired"),
    ],
)
async def test_an_authorization_redelivered_after_the_key_window_asks_the_gateway_first(
    found: gw.Found, event_type: str
) -> None:
    # The gateway forgets an idempotency key after a day: a booking that old (a dead letter
    # replayed late, an operator's retry) would be authorized a second time.
    old = replace(reserved(), requested_at=NOW - timedelta(hours=25))
    gateway = FakeGateway(found=found)
    [event] = await PaymentAdapter(gateway).execute(saga.AuthorizePayment(PRICE), ctx_for(old))
    assert event.event_type == event_type
    assert getattr(event, "payment_id", None) == "pi_9"
    assert gateway.called() == ["find"]


async def test_an_old_authorization_the_gateway_never_saw_is_made() -> None:
    old = replace(reserved(), requested_at=NOW - timedelta(hours=25))
    gateway = FakeGateway()
    [event] = await PaymentAdapter(gateway).execute(saga.AuthorizePayment(PRICE), ctx_for(old))
    assert event.event_type == "PaymentAuthorized"
    assert gateway.called() == ["find", "authorize"]


async def test_a_fresh_authorization_does_not_pay_for_a_lookup() -> None:
    gateway = FakeGateway()
    await PaymentAdapter(gateway).execute(saga.AuthorizePayment(PRICE), ctx_for(reserved()))
    assert gateway.called() == ["authorize"]
