"""The booking saga's pure rules (``erynoa.saga``): every (status, event) pair, every agent's
next step, every failure and its compensations, and order-independence across topics.

Run: ``python -m pytest tests/unit/test_saga.py -q`` (no network, well under a second).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest

from erynoa import events as ev
from erynoa import saga
from erynoa.events import Money, make
from erynoa.saga import (
    TERMINAL,
    AcceptForProvider,
    Action,
    Agent,
    AuthorizePayment,
    BookingState,
    CapturePayment,
    ConvertHold,
    HoldCapacity,
    NotifyCustomer,
    NotifyProvider,
    Policy,
    RefundPayment,
    RejectForProvider,
    ReleaseHold,
    SagaError,
    StartProviderDeadline,
    Status,
    TimeOutProvider,
    VoidPayment,
    can_answer,
    can_cancel,
    evolve,
    fold,
    next_actions,
)
from erynoa.saga import Hold as H
from erynoa.saga import Payment as P
from erynoa.saga import Status as S
from erynoa.settings import PROJECT_ROOT
from erynoa.topics import load_catalog
from tests.builders import booking_requested, next_event

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
PRICE = Money(amount_minor=4500, currency="EUR")
DEADLINE_SECONDS = 3600
AGENTS = saga.AGENTS

# Every booking event type the catalog knows; a new one fails the coverage check below until
# the (status, event) table says what it does.
BOOKING_EVENT_TYPES: dict[str, type[ev.BookingEvent]] = {
    name: cls
    for name, cls in ev.EVENT_TYPES.items()
    if issubclass(cls, ev.BookingEvent)  # ServiceChanged belongs to the catalog, not a saga
}

# Who emits each event (only the envelope's ``producer`` uses it).
_PRODUCER = {
    "Booking": "api",
    "Saga": "operator",
    "Reservation": "reservation",
    "Payment": "payment",
    "Stripe": "api",
    "Notification": "notification",
    "ProviderAnswer": "api",
    "Provider": "provider-response",
}


def _producer(cls: type[ev.BookingEvent]) -> str:
    for prefix in sorted(_PRODUCER, key=len, reverse=True):
        if cls.event_type.startswith(prefix):
            return _PRODUCER[prefix]
    raise AssertionError(f"no producer for {cls.event_type}")


class Story:
    """One booking's event log, written as the saga would write it, with its own ids and clock.

    ``add`` appends an event (default payloads below, overridable per call) one minute after the
    previous one and returns the fold so far.
    """

    def __init__(self, deadline_seconds: int = DEADLINE_SECONDS) -> None:
        self.booking_id = str(uuid.uuid4())
        self.correlation_id = str(uuid.uuid4())
        self.hold_id = f"hold-{uuid.uuid4()}"
        self.payment_id = f"pi_{uuid.uuid4().hex}"
        self.deadline_seconds = deadline_seconds
        self.clock = T0
        self.events: list[ev.BookingEvent] = []
        self.deadline: datetime | None = None

    def _payload(self, cls: type[ev.BookingEvent]) -> dict[str, Any]:
        slot_start = T0 + timedelta(days=7)
        defaults: dict[type[ev.BookingEvent], dict[str, Any]] = {
            ev.BookingRequested: {
                "customer_id": "cus-1",
                "service_id": "svc-1",
                "provider_id": "prov-1",
                "slot_start": slot_start,
                "slot_end": slot_start + timedelta(hours=1),
                "price": PRICE,
                "payment_method": "pm_card_visa",
                "notes": "window seat",
                "response_deadline_seconds": self.deadline_seconds,
                "idempotency_key": f"idem-{self.booking_id}",
            },
            ev.BookingCancellationRequested: {
                "requested_by": "cus-1",
                "requested_by_role": "customer",
            },
            ev.SagaRetryRequested: {"step": "payment", "requested_by": "op-1"},
            ev.ReservationHeld: {
                "hold_id": self.hold_id,
                "service_id": "svc-1",
                "slot_start": slot_start,
            },
            ev.ReservationRejected: {
                "service_id": "svc-1",
                "slot_start": slot_start,
                "reason": "no capacity left",
            },
            ev.ReservationReleased: {"hold_id": self.hold_id, "reason": "released"},
            ev.ReservationConverted: {"hold_id": self.hold_id},
            ev.PaymentAuthorized: {
                "payment_id": self.payment_id,
                "amount": PRICE,
                "gateway": "stripe",
            },
            ev.PaymentActionRequired: {"payment_id": self.payment_id, "client_secret": "cs_1"},
            ev.PaymentFailed: {
                "payment_id": self.payment_id,
                "reason_code": "card_declined",
                "reason": "card declined",
            },
            ev.PaymentCaptured: {"payment_id": self.payment_id, "amount": PRICE},
            ev.PaymentCaptureFailed: {
                "payment_id": self.payment_id,
                "reason_code": "expired",
                "reason": "authorization expired",
            },
            ev.PaymentVoided: {"payment_id": self.payment_id},
            ev.PaymentRefunded: {
                "payment_id": self.payment_id,
                "refund_id": f"re_{uuid.uuid4().hex}",
                "amount": PRICE,
            },
            ev.StripeEventReceived: {
                "stripe_event_id": f"evt_{uuid.uuid4().hex}",
                "stripe_event_type": "payment_intent.amount_capturable_updated",
                "payment_id": self.payment_id,
                "payment_status": "requires_capture",
            },
            ev.NotificationSent: {
                "notification_id": str(uuid.uuid4()),
                "recipient_role": "provider",
                "channel": "email",
                "template": "provider_request",
            },
            ev.NotificationFailed: {
                "notification_id": str(uuid.uuid4()),
                "recipient_role": "provider",
                "channel": "email",
                "template": "provider_request",
                "reason": "mailbox unavailable",
            },
            ev.ProviderResponseRequested: {
                "provider_id": "prov-1",
                "deadline_at": self.clock + timedelta(seconds=self.deadline_seconds),
            },
            ev.ProviderAccepted: {"provider_id": "prov-1"},
            ev.ProviderRejected: {"provider_id": "prov-1", "reason": "fully booked"},
            ev.ProviderTimedOut: {"deadline_at": self.deadline or self.clock},
            ev.ProviderAnswerSubmitted: {"provider_id": "prov-1", "decision": "accept"},
        }
        return defaults[cls]

    def event(
        self, cls: type[ev.BookingEvent], *, at: datetime | None = None, **fields: Any
    ) -> ev.BookingEvent:
        """A new event of this booking (not yet in the log)."""
        self.clock = at if at is not None else self.clock + timedelta(minutes=1)
        payload = {**self._payload(cls), **fields}
        return make(
            cls,
            booking_id=self.booking_id,
            producer=_producer(cls),
            correlation_id=self.correlation_id,
            occurred_at=self.clock,
            **payload,
        )

    def add(
        self, cls: type[ev.BookingEvent], *, at: datetime | None = None, **fields: Any
    ) -> BookingState:
        event = self.event(cls, at=at, **fields)
        if isinstance(event, ev.ProviderResponseRequested) and self.deadline is None:
            self.deadline = event.deadline_at  # the first deadline is the one that counts
        self.events.append(event)
        return self.state

    @property
    def state(self) -> BookingState:
        state = fold(self.events)
        assert state is not None
        return state


# --- building each status the way a real booking reaches it ---------------------------------


def _requested(b: Story) -> None:
    b.add(ev.BookingRequested)


def _reserved(b: Story) -> None:
    _requested(b)
    b.add(ev.ReservationHeld)


def _payment_action_required(b: Story) -> None:
    _reserved(b)
    b.add(ev.PaymentActionRequired)


def _awaiting_provider(b: Story) -> None:
    _reserved(b)
    b.add(ev.PaymentAuthorized)
    b.add(ev.NotificationSent, template="provider_request", recipient_role="provider")
    b.add(ev.ProviderResponseRequested)


def _confirmed(b: Story) -> None:
    _awaiting_provider(b)
    b.add(ev.ProviderAnswerSubmitted, decision="accept")
    b.add(ev.ProviderAccepted)
    b.add(ev.PaymentCaptured)


def _rejected(b: Story) -> None:
    _requested(b)
    b.add(ev.ReservationRejected)


def _expired(b: Story) -> None:
    _awaiting_provider(b)
    assert b.deadline is not None
    b.add(ev.ProviderTimedOut, at=b.deadline)


def _cancelled(b: Story) -> None:
    _reserved(b)
    b.add(ev.BookingCancellationRequested, reason="changed my mind")


def _failed(b: Story) -> None:
    _reserved(b)
    b.add(ev.PaymentFailed)


BUILD: dict[Status, Callable[[Story], None]] = {
    S.REQUESTED: _requested,
    S.RESERVED: _reserved,
    S.PAYMENT_ACTION_REQUIRED: _payment_action_required,
    S.AWAITING_PROVIDER: _awaiting_provider,
    S.CONFIRMED: _confirmed,
    S.REJECTED: _rejected,
    S.EXPIRED: _expired,
    S.CANCELLED: _cancelled,
    S.FAILED: _failed,
}

# (status, hold, payment) of each built booking.
BASE: dict[Status, tuple[Status, H, P]] = {
    S.REQUESTED: (S.REQUESTED, H.NONE, P.NONE),
    S.RESERVED: (S.RESERVED, H.HELD, P.NONE),
    S.PAYMENT_ACTION_REQUIRED: (S.PAYMENT_ACTION_REQUIRED, H.HELD, P.ACTION_REQUIRED),
    S.AWAITING_PROVIDER: (S.AWAITING_PROVIDER, H.HELD, P.AUTHORIZED),
    S.CONFIRMED: (S.CONFIRMED, H.HELD, P.CAPTURED),
    S.REJECTED: (S.REJECTED, H.REJECTED, P.NONE),
    S.EXPIRED: (S.EXPIRED, H.HELD, P.AUTHORIZED),
    S.CANCELLED: (S.CANCELLED, H.HELD, P.NONE),
    S.FAILED: (S.FAILED, H.HELD, P.FAILED),
}


def built(status: Status) -> tuple[Story, BookingState]:
    b = Story()
    BUILD[status](b)
    return b, b.state


def test_every_status_is_built_from_a_realistic_history() -> None:
    assert set(BUILD) == set(Status)
    for status in Status:
        _, state = built(status)
        assert (state.status, state.hold, state.payment) == BASE[status]


# --- every (status, event type) pair -------------------------------------------------------

# What each event does to (status, hold, payment) from each built status; a status not listed
# for an event leaves all three unchanged. The event occurred after everything folded so far.
# Each fact only moves forward along its own order (saga.HOLD_ORDER, saga.PAYMENT_ORDER), so a
# fact folded late still counts; a booking not yet ended only moves forward through the
# statuses, so every ending ends it, a confirmed one included; an ended booking keeps the
# ending that occurred first.
ChangeTable = dict[str, dict[Status, tuple[Status, H, P]]]
_NOT_ENDED = (S.REQUESTED, S.RESERVED, S.PAYMENT_ACTION_REQUIRED, S.AWAITING_PROVIDER, S.CONFIRMED)
_RANK = {
    S.REQUESTED: 0,
    S.RESERVED: 1,
    S.PAYMENT_ACTION_REQUIRED: 2,
    S.AWAITING_PROVIDER: 3,
    S.CONFIRMED: 4,
    **dict.fromkeys(TERMINAL, 5),
}


def _further(order: tuple[Any, ...], before: Any, to: Any) -> Any:
    """``to`` if it lies further along ``order`` than ``before``, else ``before``."""
    if to is None:
        return before
    return to if order.index(to) > order.index(before) else before


def _moves(hold: H | None = None, payment: P | None = None) -> dict[Status, Any]:
    """A fact: ``hold``/``payment`` move forward where they are not further already."""
    return {
        base: (status, hold_after, payment_after)
        for base, (status, hold_before, payment_before) in BASE.items()
        for hold_after in [_further(saga.HOLD_ORDER, hold_before, hold)]
        for payment_after in [_further(saga.PAYMENT_ORDER, payment_before, payment)]
        if (hold_after, payment_after) != (hold_before, payment_before)
    }


def _reaches(status: Status, hold: H | None = None, payment: P | None = None) -> dict[Status, Any]:
    """A step: every booking not yet ended and not further along moves to ``status`` (an
    ending ends every booking not yet ended; one that ended keeps its ending); ``hold`` and
    ``payment`` move forward where they are not further already."""
    table = _moves(hold=hold, payment=payment)
    for base in _NOT_ENDED:
        before, hold_before, payment_before = BASE[base]
        if _RANK[before] < _RANK[status]:
            table[base] = (
                status,
                _further(saga.HOLD_ORDER, hold_before, hold),
                _further(saga.PAYMENT_ORDER, payment_before, payment),
            )
    return table


CHANGES: ChangeTable = {
    "BookingRequested": {},  # a redelivery: the booking is already started
    "BookingCancellationRequested": _reaches(S.CANCELLED),  # a confirmed one is refunded per policy
    "SagaRetryRequested": {},  # the agents re-run; the state itself does not change
    # On a rejected booking the hold contradicts the rejection, but a seat that is held must be
    # released.
    "ReservationHeld": _reaches(S.RESERVED, hold=H.HELD),
    # A rejection ends the booking whenever it is folded; a seat held stays to be released.
    "ReservationRejected": _reaches(S.REJECTED, hold=H.REJECTED),
    # A release or conversion folded before the hold it acted on still counts.
    "ReservationReleased": _moves(hold=H.RELEASED),
    "ReservationConverted": _moves(hold=H.CONVERTED),
    # The payment agent only asks for payment once the seat is held, so this implies a hold
    # even when ReservationHeld (another topic) has not been folded yet; the booking then
    # waits for the customer.
    "PaymentActionRequired": _reaches(S.PAYMENT_ACTION_REQUIRED, payment=P.ACTION_REQUIRED),
    # Authorized implies held (see above): the booking now waits for its provider.
    # Authorizations that raced an outcome are recorded so that they get voided.
    "PaymentAuthorized": _reaches(S.AWAITING_PROVIDER, payment=P.AUTHORIZED),
    # A failure folded after the authorization it lost to still ends the booking (the same as
    # when it is folded first); the authorization is voided, a capture refunded afterwards.
    "PaymentFailed": _reaches(S.FAILED, payment=P.FAILED),
    # Captured for a booking that ended: refunded afterwards.
    "PaymentCaptured": _reaches(S.CONFIRMED, payment=P.CAPTURED),
    "PaymentCaptureFailed": _reaches(S.FAILED, payment=P.CAPTURE_FAILED),
    # A void succeeds when there was nothing to void, so it may be recorded on NONE too; it
    # outranks every payment state but a capture (only a refund gives captured money back).
    "PaymentVoided": _moves(payment=P.VOIDED),
    "PaymentRefunded": _moves(payment=P.REFUNDED),
    "StripeEventReceived": {},  # the payment agent turns it into a payment event
    "NotificationSent": {},
    "NotificationFailed": {},
    "ProviderResponseRequested": {},
    "ProviderAnswerSubmitted": {},  # judged by the provider-response agent, not by the fold
    "ProviderAccepted": {},  # confirmed only once the capture succeeds
    "ProviderRejected": _reaches(S.REJECTED),
    "ProviderTimedOut": _reaches(S.EXPIRED),
}

# The events that end a booking, and how.
ENDINGS: dict[str, Status] = {
    "BookingCancellationRequested": S.CANCELLED,
    "ReservationRejected": S.REJECTED,
    "PaymentFailed": S.FAILED,
    "PaymentCaptureFailed": S.FAILED,
    "ProviderRejected": S.REJECTED,
    "ProviderTimedOut": S.EXPIRED,
}

_ENDED_WAIT = ("rejected", "timed_out")


def assert_forward(before: BookingState, after: BookingState, *, later: bool = True) -> None:
    """Nothing moves a booking backwards. An event that occurred ``later`` than everything
    folded so far does not change how an ended booking ended either."""
    assert _RANK[after.status] >= _RANK[before.status]
    assert saga.HOLD_ORDER.index(after.hold) >= saga.HOLD_ORDER.index(before.hold)
    assert saga.PAYMENT_ORDER.index(after.payment) >= saga.PAYMENT_ORDER.index(before.payment)
    assert after.notified >= before.notified
    for name in ("provider_answer", "provider_outcome", "failure_reason"):
        if getattr(before, name) is not None:
            assert getattr(after, name) is not None, name
    if before.provider_outcome in _ENDED_WAIT:
        assert after.provider_outcome in _ENDED_WAIT
    if before.provider_deadline_at is not None:
        assert after.provider_deadline_at is not None
        assert after.provider_deadline_at <= before.provider_deadline_at
    if later:
        if before.status in TERMINAL:
            assert after.status == before.status, "the ending that occurred first wins"
        for name in ("provider_deadline_at", "provider_answer", "failure_reason"):
            if getattr(before, name) is not None:
                assert getattr(after, name) == getattr(before, name), name
        if before.provider_outcome is not None and after.provider_outcome != "rejected":
            assert after.provider_outcome in (before.provider_outcome, "timed_out")


def _without_counters(state: BookingState) -> BookingState:
    return replace(state, events_applied=0, updated_at=T0)


def _pairs() -> Iterator[Any]:
    for status in Status:
        for name in BOOKING_EVENT_TYPES:
            yield pytest.param(status, name, id=f"{status.value}-{name}")


def test_the_table_covers_every_booking_event_type() -> None:
    assert set(CHANGES) == set(BOOKING_EVENT_TYPES)
    assert "ServiceChanged" not in BOOKING_EVENT_TYPES


@pytest.mark.parametrize(("status", "event_type"), list(_pairs()))
def test_every_event_in_every_status(status: Status, event_type: str) -> None:
    b, before = built(status)
    event = b.event(BOOKING_EVENT_TYPES[event_type])

    after = evolve(before, event)

    expected = CHANGES[event_type].get(status, BASE[status])
    assert (after.status, after.hold, after.payment) == expected
    assert_forward(before, after)
    # Folding the same event again (at-least-once delivery) changes nothing more.
    assert _without_counters(evolve(after, event)) == _without_counters(after)
    if event_type == "BookingRequested":
        assert after is before
    else:
        assert after.events_applied == before.events_applied + 1
        assert after.updated_at == event.occurred_at
    assert can_cancel(after) == (after.status not in TERMINAL)


@pytest.mark.parametrize(("status", "event_type"), list(_pairs()))
def test_an_event_from_the_past_still_never_moves_a_booking_backwards(
    status: Status, event_type: str
) -> None:
    # The same pair, with an event that occurred before everything folded so far (a late
    # delivery): the clock of the booking does not go back either.
    b, before = built(status)
    event = b.event(BOOKING_EVENT_TYPES[event_type], at=T0 - timedelta(minutes=5))

    after = evolve(before, event)

    expected_status, hold, payment = CHANGES[event_type].get(status, BASE[status])
    if status in TERMINAL and event_type in ENDINGS:
        expected_status = ENDINGS[event_type]  # it occurred before the ending folded so far
    assert (after.status, after.hold, after.payment) == (expected_status, hold, payment)
    assert_forward(before, after, later=False)
    assert after.updated_at == before.updated_at


def test_an_event_before_the_booking_was_requested_is_an_error() -> None:
    b = Story()
    with pytest.raises(SagaError, match="before BookingRequested"):
        evolve(None, b.event(ev.ReservationHeld))


def test_fold_of_nothing_is_no_booking() -> None:
    assert fold([]) is None


def test_a_booking_starts_with_the_request_it_was_made_from() -> None:
    b = Story()
    state = b.add(ev.BookingRequested)
    request = b.events[0]
    assert isinstance(request, ev.BookingRequested)
    assert state.booking_id == b.booking_id
    assert state.price == PRICE
    assert state.correlation_id == b.correlation_id
    assert state.idempotency_key == request.idempotency_key
    assert state.requested_at == state.updated_at == request.occurred_at
    assert state.response_deadline_seconds == DEADLINE_SECONDS
    assert (state.status, state.hold, state.payment) == (S.REQUESTED, H.NONE, P.NONE)
    assert state.events_applied == 1


def test_failure_reasons_name_the_failure() -> None:
    _, cancelled = built(S.CANCELLED)
    assert cancelled.failure_reason == "changed my mind"
    _, failed = built(S.FAILED)
    assert failed.failure_reason == "payment failed: card declined"
    _, rejected = built(S.REJECTED)
    assert rejected.failure_reason == "no capacity left"
    _, expired = built(S.EXPIRED)
    assert expired.failure_reason == "provider did not answer"
    b, _ = built(S.REQUESTED)
    assert b.add(ev.BookingCancellationRequested).failure_reason == "cancelled"
    b, _ = built(S.AWAITING_PROVIDER)
    assert b.add(ev.ProviderRejected, reason=None).failure_reason == "provider rejected"


def test_the_first_outcome_folded_wins() -> None:
    b, _ = built(S.AWAITING_PROVIDER)
    b.add(ev.ProviderRejected, reason="on holiday")
    state = b.add(ev.ProviderTimedOut)
    assert state.status == S.REJECTED
    assert state.provider_outcome == "rejected"
    assert state.failure_reason == "provider rejected: on holiday"


@pytest.mark.parametrize("ending", [ev.ProviderTimedOut, ev.ProviderRejected])
def test_a_provider_outcome_that_ends_the_wait_outranks_an_accept(
    ending: type[ev.BookingEvent],
) -> None:
    # Folded in either order: the ending is never taken back, so the accept cannot revive the
    # booking after a void may already have run; the authorization is voided, not captured.
    b, _ = built(S.AWAITING_PROVIDER)
    accepted = b.event(ev.ProviderAccepted)
    ended = b.event(ending)
    for order in ([accepted, ended], [ended, accepted]):
        state = fold([*b.events, *order])
        assert state is not None
        assert state.status == (S.EXPIRED if ending is ev.ProviderTimedOut else S.REJECTED)
        assert state.provider_outcome == (
            "timed_out" if ending is ev.ProviderTimedOut else "rejected"
        )
        assert next_actions("payment", state, b.clock) == [VoidPayment(reason=state.status.value)]


def test_only_the_first_provider_answer_counts() -> None:
    b, _ = built(S.AWAITING_PROVIDER)
    first = b.add(ev.ProviderAnswerSubmitted, decision="reject")
    second = b.add(ev.ProviderAnswerSubmitted, decision="accept")
    assert second.provider_answer == "reject"
    assert second.provider_answered_at == first.provider_answered_at


def test_the_first_provider_deadline_stays() -> None:
    b, state = built(S.AWAITING_PROVIDER)
    again = b.add(ev.ProviderResponseRequested, deadline_at=T0 + timedelta(days=30))
    assert again.provider_deadline_at == state.provider_deadline_at == b.deadline


def test_each_notification_is_recorded_once_by_template() -> None:
    b, _ = built(S.AWAITING_PROVIDER)
    b.add(ev.NotificationSent, template="provider_request")
    state = b.add(ev.NotificationFailed, template="customer_rejected", recipient_role="customer")
    assert state.notified == frozenset({"provider_request", "customer_rejected"})
    assert state.provider_notified
    assert state.customer_notified


# --- what each agent does in each status ---------------------------------------------------

AGENT_ACTIONS: dict[Status, dict[Agent, list[Action]]] = {
    S.REQUESTED: {"reservation": [HoldCapacity()]},
    S.RESERVED: {"payment": [AuthorizePayment(amount=PRICE)]},
    S.PAYMENT_ACTION_REQUIRED: {},  # waiting for the customer's 3-D Secure
    S.AWAITING_PROVIDER: {},  # provider told, deadline running, no answer yet
    S.CONFIRMED: {
        "reservation": [ConvertHold()],
        "notification": [NotifyCustomer(template="customer_confirmed")],
    },
    S.REJECTED: {"notification": [NotifyCustomer(template="customer_rejected")]},
    S.EXPIRED: {"payment": [VoidPayment(reason="expired")]},
    S.CANCELLED: {"reservation": [ReleaseHold(reason="cancelled")]},
    S.FAILED: {"reservation": [ReleaseHold(reason="failed")]},
}


def pending(state: BookingState, now: datetime, policy: Policy | None = None) -> dict[Agent, Any]:
    """Every agent that has something to do, and what."""
    policy = policy or Policy()
    found = {agent: next_actions(agent, state, now, policy) for agent in AGENTS}
    return {agent: actions for agent, actions in found.items() if actions}


@pytest.mark.parametrize("status", list(Status), ids=str)
def test_each_agent_knows_its_next_step_in_each_status(status: Status) -> None:
    b, state = built(status)
    assert pending(state, b.clock) == AGENT_ACTIONS[status]


@pytest.mark.parametrize("status", list(Status), ids=str)
def test_only_a_booking_awaiting_an_unanswered_provider_can_be_answered(status: Status) -> None:
    _, state = built(status)
    assert can_answer(state) == (status == S.AWAITING_PROVIDER)


@pytest.mark.parametrize("status", list(Status), ids=str)
def test_any_booking_not_yet_ended_can_be_cancelled(status: Status) -> None:
    _, state = built(status)
    assert can_cancel(state) == (status not in TERMINAL)


def test_happy_path_asks_each_agent_once_for_each_step() -> None:
    b = Story()
    state = b.add(ev.BookingRequested)
    assert state.status == S.REQUESTED
    assert pending(state, b.clock) == {"reservation": [HoldCapacity()]}

    state = b.add(ev.ReservationHeld)
    assert state.status == S.RESERVED
    assert pending(state, b.clock) == {"payment": [AuthorizePayment(amount=PRICE)]}

    state = b.add(ev.PaymentAuthorized)
    assert state.status == S.AWAITING_PROVIDER
    deadline = b.clock + timedelta(seconds=DEADLINE_SECONDS)
    assert pending(state, b.clock) == {
        "notification": [NotifyProvider()],
        "provider-response": [StartProviderDeadline(deadline_at=deadline)],
    }

    state = b.add(ev.NotificationSent, template="provider_request")
    assert pending(state, b.clock) == {
        "provider-response": [StartProviderDeadline(deadline_at=b.clock + timedelta(hours=1))]
    }

    state = b.add(ev.ProviderResponseRequested)
    assert state.provider_deadline_at == b.deadline
    assert pending(state, b.clock) == {}
    assert can_answer(state)

    state = b.add(ev.ProviderAnswerSubmitted, decision="accept")
    assert not can_answer(state)
    assert pending(state, b.clock) == {"provider-response": [AcceptForProvider()]}

    state = b.add(ev.ProviderAccepted)
    assert state.status == S.AWAITING_PROVIDER
    assert pending(state, b.clock) == {"payment": [CapturePayment(amount=PRICE)]}

    state = b.add(ev.PaymentCaptured)
    assert state.status == S.CONFIRMED
    assert pending(state, b.clock) == {
        "reservation": [ConvertHold()],
        "notification": [NotifyCustomer(template="customer_confirmed")],
    }

    state = b.add(ev.ReservationConverted)
    assert pending(state, b.clock) == {
        "notification": [NotifyCustomer(template="customer_confirmed")]
    }

    state = b.add(ev.NotificationSent, template="customer_confirmed", recipient_role="customer")
    assert pending(state, b.clock) == {}
    assert pending(state, b.clock + timedelta(days=365)) == {}
    assert (state.status, state.hold, state.payment) == (S.CONFIRMED, H.CONVERTED, P.CAPTURED)
    assert state.notified == frozenset({"provider_request", "customer_confirmed"})
    assert can_cancel(state)
    assert not can_answer(state)


# --- failures and compensations ------------------------------------------------------------


def _result_of(b: Story, action: Action) -> ev.BookingEvent:
    """The event an agent emits once ``action`` succeeded."""
    match action:
        case ReleaseHold(reason=reason):
            return b.event(ev.ReservationReleased, reason=reason)
        case ConvertHold():
            return b.event(ev.ReservationConverted)
        case VoidPayment():
            return b.event(ev.PaymentVoided)
        case RefundPayment(amount=amount):
            return b.event(ev.PaymentRefunded, amount=amount)
        case NotifyCustomer(template=template):
            return b.event(ev.NotificationSent, template=template, recipient_role="customer")
        case NotifyProvider(template=template):
            return b.event(ev.NotificationSent, template=template, recipient_role="provider")
    raise AssertionError(f"not a compensation: {action}")


def compensate(b: Story, policy: Policy | None = None) -> list[Action]:
    """Run the agents until none has anything left to do; the actions in the order they ran.

    Compensations run one at a time, in reverse order of the steps done, so at every point
    exactly one agent may act.
    """
    done: list[Action] = []
    for _ in range(10):
        todo = pending(b.state, b.clock, policy)
        if not todo:
            return done
        assert len(todo) == 1, f"several agents would act at once: {todo}"
        [actions] = todo.values()
        assert len(actions) == 1, actions
        b.events.append(_result_of(b, actions[0]))
        done.append(actions[0])
    raise AssertionError(f"the compensations never settle: {done}")


def compensations(outcome: str, *money: Action) -> list[Action]:
    """What a booking that held a seat and ended ``outcome`` has undone, in the order the agents
    run it: the money given back (``money``: a void or a refund, when any was held), the hold
    released, the customer told."""
    return [*money, ReleaseHold(reason=outcome), NotifyCustomer(template=f"customer_{outcome}")]


def test_reservation_rejected_tells_the_customer_and_nothing_else() -> None:
    b, state = built(S.REJECTED)
    assert state.hold == H.REJECTED
    assert compensate(b) == [NotifyCustomer(template="customer_rejected")]
    assert b.state.notified == frozenset({"customer_rejected"})


def test_payment_declined_releases_the_hold() -> None:
    b, state = built(S.FAILED)
    assert (state.status, state.payment) == (S.FAILED, P.FAILED)
    assert compensate(b) == compensations("failed")
    assert (b.state.hold, b.state.payment) == (H.RELEASED, P.FAILED)


def test_payment_action_required_waits_for_the_customer_then_proceeds_once_authorized() -> None:
    b, state = built(S.PAYMENT_ACTION_REQUIRED)
    assert pending(state, b.clock) == {}
    assert can_cancel(state)
    # The Stripe webhook itself changes nothing; the payment agent turns it into an event.
    state = b.add(ev.StripeEventReceived)
    assert state.status == S.PAYMENT_ACTION_REQUIRED
    assert pending(state, b.clock) == {}

    state = b.add(ev.PaymentAuthorized)
    assert (state.status, state.payment) == (S.AWAITING_PROVIDER, P.AUTHORIZED)
    assert pending(state, b.clock) == {
        "notification": [NotifyProvider()],
        "provider-response": [
            StartProviderDeadline(deadline_at=b.clock + timedelta(seconds=DEADLINE_SECONDS))
        ],
    }


def test_payment_action_that_fails_releases_the_hold_without_a_void() -> None:
    b, _ = built(S.PAYMENT_ACTION_REQUIRED)
    state = b.add(ev.PaymentFailed, reason="authentication failed")
    assert (state.status, state.payment) == (S.FAILED, P.FAILED)
    assert compensate(b) == compensations("failed")


def test_provider_rejects_voids_then_releases_then_tells_the_customer() -> None:
    b, _ = built(S.AWAITING_PROVIDER)
    state = b.add(ev.ProviderAnswerSubmitted, decision="reject")
    assert pending(state, b.clock) == {"provider-response": [RejectForProvider()]}

    state = b.add(ev.ProviderRejected)
    assert state.status == S.REJECTED
    # The hold waits until no money is held, the customer until both ended.
    assert pending(state, b.clock) == {"payment": [VoidPayment(reason="rejected")]}
    assert compensate(b) == compensations("rejected", VoidPayment(reason="rejected"))
    final = b.state
    assert (final.status, final.hold, final.payment) == (S.REJECTED, H.RELEASED, P.VOIDED)
    assert not can_cancel(final)


def test_provider_timeout_after_the_deadline_expires_the_booking() -> None:
    b, state = built(S.AWAITING_PROVIDER)
    deadline = state.provider_deadline_at
    assert deadline is not None
    assert pending(state, deadline - timedelta(seconds=1)) == {}
    assert pending(state, deadline) == {"provider-response": [TimeOutProvider()]}
    assert pending(state, deadline + timedelta(days=2)) == {
        "provider-response": [TimeOutProvider()]
    }

    state = b.add(ev.ProviderTimedOut, at=deadline)
    assert (state.status, state.provider_outcome) == (S.EXPIRED, "timed_out")
    assert pending(state, deadline) == {"payment": [VoidPayment(reason="expired")]}
    assert compensate(b) == compensations("expired", VoidPayment(reason="expired"))
    assert (b.state.hold, b.state.payment) == (H.RELEASED, P.VOIDED)


@pytest.mark.parametrize("decision", ["accept", "reject"])
def test_an_answer_given_after_the_deadline_changes_nothing(decision: str) -> None:
    b, state = built(S.AWAITING_PROVIDER)
    deadline = state.provider_deadline_at
    assert deadline is not None
    late = b.add(ev.ProviderAnswerSubmitted, decision=decision, at=deadline + timedelta(minutes=5))
    assert late.status == S.AWAITING_PROVIDER
    assert pending(late, b.clock) == {"provider-response": [TimeOutProvider()]}


def test_an_answer_at_the_deadline_instant_is_too_late() -> None:
    b, state = built(S.AWAITING_PROVIDER)
    assert state.provider_deadline_at is not None
    at_deadline = b.add(
        ev.ProviderAnswerSubmitted, decision="accept", at=state.provider_deadline_at
    )
    assert pending(at_deadline, b.clock) == {"provider-response": [TimeOutProvider()]}


@pytest.mark.parametrize(
    ("decision", "expected"), [("accept", AcceptForProvider()), ("reject", RejectForProvider())]
)
def test_an_answer_given_before_the_deadline_but_processed_after_it_counts(
    decision: str, expected: Action
) -> None:
    b, state = built(S.AWAITING_PROVIDER)
    deadline = state.provider_deadline_at
    assert deadline is not None
    answered = b.add(
        ev.ProviderAnswerSubmitted, decision=decision, at=deadline - timedelta(minutes=1)
    )
    processed_at = deadline + timedelta(hours=6)
    assert pending(answered, processed_at) == {"provider-response": [expected]}


def test_an_answer_before_the_deadline_is_known_counts_once_the_deadline_starts() -> None:
    # The answer (provider-answers topic) can be folded before ProviderResponseRequested.
    b = Story()
    _reserved(b)
    b.add(ev.PaymentAuthorized)
    state = b.add(ev.ProviderAnswerSubmitted, decision="accept")
    assert pending(state, b.clock)["provider-response"] == [
        StartProviderDeadline(deadline_at=b.clock + timedelta(seconds=DEADLINE_SECONDS))
    ]
    state = b.add(ev.ProviderResponseRequested)
    assert next_actions("provider-response", state, b.clock) == [AcceptForProvider()]


def test_capture_failed_voids_releases_and_tells_the_customer() -> None:
    b, _ = built(S.AWAITING_PROVIDER)
    b.add(ev.ProviderAnswerSubmitted, decision="accept")
    b.add(ev.ProviderAccepted)
    state = b.add(ev.PaymentCaptureFailed)
    assert (state.status, state.payment) == (S.FAILED, P.CAPTURE_FAILED)
    assert state.failure_reason == "capture failed: authorization expired"
    assert compensate(b) == compensations("failed", VoidPayment(reason="failed"))
    assert (b.state.hold, b.state.payment) == (H.RELEASED, P.VOIDED)


CANCEL_COMPENSATIONS: dict[Status, list[Action]] = {
    S.REQUESTED: [NotifyCustomer(template="customer_cancelled")],
    S.RESERVED: compensations("cancelled"),
    S.PAYMENT_ACTION_REQUIRED: compensations("cancelled", VoidPayment(reason="cancelled")),
    S.AWAITING_PROVIDER: compensations("cancelled", VoidPayment(reason="cancelled")),
    S.CONFIRMED: compensations("cancelled", RefundPayment(amount=PRICE)),
}


@pytest.mark.parametrize("status", list(CANCEL_COMPENSATIONS), ids=str)
def test_cancel_undoes_every_step_done_in_reverse_order(status: Status) -> None:
    b, before = built(status)
    assert can_cancel(before)
    state = b.add(ev.BookingCancellationRequested, requested_by_role="operator")
    assert state.status == S.CANCELLED
    assert not can_cancel(state)
    assert not can_answer(state)
    assert compensate(b) == CANCEL_COMPENSATIONS[status]
    final = b.state
    assert final.status == S.CANCELLED
    assert final.hold in (H.NONE, H.RELEASED)
    assert final.payment in (P.NONE, P.VOIDED, P.REFUNDED)
    # A second cancel (a retried request) finds nothing more to do.
    assert pending(b.add(ev.BookingCancellationRequested), b.clock) == {}


@pytest.mark.parametrize("status", sorted(TERMINAL), ids=str)
def test_cancel_after_another_outcome_changes_nothing(status: Status) -> None:
    b, before = built(status)
    after = b.add(ev.BookingCancellationRequested)
    assert after.status == status
    assert after.failure_reason == before.failure_reason


def test_cancel_after_confirmed_refunds_in_full_then_releases() -> None:
    b, _ = built(S.CONFIRMED)
    b.add(ev.ReservationConverted)
    b.add(ev.NotificationSent, template="customer_confirmed", recipient_role="customer")
    state = b.add(ev.BookingCancellationRequested)
    policy = Policy(refund_policy="full")
    assert pending(state, b.clock, policy) == {"payment": [RefundPayment(amount=PRICE)]}
    assert compensate(b, policy) == compensations("cancelled", RefundPayment(amount=PRICE))
    final = b.state
    assert (final.status, final.hold, final.payment) == (S.CANCELLED, H.RELEASED, P.REFUNDED)
    assert final.notified == frozenset(
        {"provider_request", "customer_confirmed", "customer_cancelled"}
    )


def test_cancel_after_confirmed_without_refund_policy_only_releases() -> None:
    b, _ = built(S.CONFIRMED)
    b.add(ev.ReservationConverted)
    state = b.add(ev.BookingCancellationRequested)
    policy = Policy(refund_policy="none")
    assert "payment" not in pending(state, b.clock, policy)
    assert compensate(b, policy) == compensations("cancelled")
    final = b.state
    assert (final.status, final.hold, final.payment) == (S.CANCELLED, H.RELEASED, P.CAPTURED)


def test_payment_authorized_after_a_cancel_is_voided() -> None:
    b, _ = built(S.CANCELLED)  # cancelled while reserved, before any payment
    state = b.add(ev.PaymentAuthorized)
    assert (state.status, state.payment) == (S.CANCELLED, P.AUTHORIZED)
    assert next_actions("payment", state, b.clock) == [VoidPayment(reason="cancelled")]
    # The hold stays until the money is given back.
    assert next_actions("reservation", state, b.clock) == []
    assert compensate(b) == compensations("cancelled", VoidPayment(reason="cancelled"))


def test_payment_authorized_after_the_cancel_was_fully_compensated_is_still_voided() -> None:
    b, _ = built(S.CANCELLED)
    compensate(b)
    state = b.add(ev.PaymentAuthorized)
    assert (state.status, state.hold, state.payment) == (S.CANCELLED, H.RELEASED, P.AUTHORIZED)
    # Only the money: the hold is already released and the customer already told.
    assert pending(state, b.clock) == {"payment": [VoidPayment(reason="cancelled")]}


def test_a_hold_taken_after_a_cancel_is_released() -> None:
    b, _ = built(S.REQUESTED)
    b.add(ev.BookingCancellationRequested)
    assert compensate(b) == [NotifyCustomer(template="customer_cancelled")]
    state = b.add(ev.ReservationHeld)  # the reservation agent raced the cancel
    assert (state.status, state.hold) == (S.CANCELLED, H.HELD)
    assert pending(state, b.clock) == {"reservation": [ReleaseHold(reason="cancelled")]}


def test_capture_that_raced_a_cancel_is_refunded() -> None:
    b, _ = built(S.AWAITING_PROVIDER)
    b.add(ev.ProviderAccepted)
    b.add(ev.BookingCancellationRequested)
    state = b.add(ev.PaymentCaptured)
    assert (state.status, state.payment) == (S.CANCELLED, P.CAPTURED)
    assert compensate(b) == compensations("cancelled", RefundPayment(amount=PRICE))


def test_a_cancel_while_awaiting_the_provider_stops_the_capture_and_the_deadline() -> None:
    b, _ = built(S.AWAITING_PROVIDER)
    b.add(ev.ProviderAccepted)
    state = b.add(ev.BookingCancellationRequested)
    assert next_actions("payment", state, b.clock) == [VoidPayment(reason="cancelled")]
    assert next_actions("provider-response", state, b.clock + timedelta(days=3)) == []


def test_a_failed_notification_counts_as_done() -> None:
    b, _ = built(S.REJECTED)
    state = b.add(ev.NotificationFailed, template="customer_rejected", recipient_role="customer")
    assert pending(state, b.clock) == {}


# --- JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(Status), ids=str)
def test_booking_state_round_trips_through_json(status: Status) -> None:
    b, state = built(status)
    if status == S.CONFIRMED:  # carry every optional field
        state = b.add(ev.NotificationSent, template="customer_confirmed")
    data = state.to_json()
    text = json.dumps(data)
    restored = BookingState.from_json(json.loads(text))
    assert restored == state
    assert restored.to_json() == data
    assert json.loads(text)["price"] == {"amount_minor": 4500, "currency": "EUR"}


def test_booking_state_json_has_every_field_as_plain_json() -> None:
    b, state = built(S.CONFIRMED)
    data = json.loads(json.dumps(state.to_json()))
    assert data["status"] == "confirmed"
    assert data["hold"] == "held"
    assert data["payment"] == "captured"
    assert data["notified"] == ["provider_request"]
    assert data["provider_answer"] == "accept"
    assert data["provider_outcome"] == "accepted"
    assert b.deadline is not None
    assert data["provider_deadline_at"] == b.deadline.isoformat()
    assert data["notes"] == "window seat"
    assert datetime.fromisoformat(data["slot_start"]) == state.slot_start


def test_booking_state_from_json_without_notifications_defaults_to_none_sent() -> None:
    _, state = built(S.RESERVED)
    data = state.to_json()
    del data["notified"]
    assert BookingState.from_json(data).notified == frozenset()


# --- order-independence across topics ------------------------------------------------------


@cache
def _topic_of(event_type: str) -> str:
    return load_catalog(PROJECT_ROOT / "topics.yaml").topic_for(event_type)


def interleave(events: list[ev.BookingEvent], rng: random.Random) -> list[ev.BookingEvent]:
    """A random order that keeps each topic's own order (what a consumer of several topics may
    see). The booking's request stays first: before it every event is a SagaError and goes to
    the retry topics, so no consumer folds anything before it."""
    first, rest = events[0], events[1:]
    assert isinstance(first, ev.BookingRequested)
    queues: dict[str, list[ev.BookingEvent]] = {}
    for event in rest:
        queues.setdefault(_topic_of(event.event_type), []).append(event)
    out: list[ev.BookingEvent] = [first]
    while queues:
        topic = rng.choice(sorted(queues))
        out.append(queues[topic].pop(0))
        if not queues[topic]:
            del queues[topic]
    return out


def happy_path(b: Story) -> None:
    _confirmed(b)
    b.add(ev.ReservationConverted)
    b.add(ev.NotificationSent, template="customer_confirmed", recipient_role="customer")


def _happy_through_3ds(b: Story) -> None:
    _payment_action_required(b)
    b.add(ev.StripeEventReceived)
    b.add(ev.PaymentAuthorized)
    b.add(ev.NotificationSent, template="provider_request")
    b.add(ev.ProviderResponseRequested)
    b.add(ev.ProviderAnswerSubmitted, decision="accept")
    b.add(ev.ProviderAccepted)
    b.add(ev.PaymentCaptured)
    b.add(ev.ReservationConverted)
    b.add(ev.NotificationSent, template="customer_confirmed", recipient_role="customer")


def _settled(status: Status, then: Callable[[Story], None] | None = None) -> Any:
    def build(b: Story) -> None:
        BUILD[status](b)
        if then is not None:
            then(b)
        compensate(b)

    return build


def _provider_rejects(b: Story) -> None:
    _awaiting_provider(b)
    b.add(ev.ProviderAnswerSubmitted, decision="reject")
    b.add(ev.ProviderRejected)
    compensate(b)


def _capture_fails(b: Story) -> None:
    _awaiting_provider(b)
    b.add(ev.ProviderAnswerSubmitted, decision="accept")
    b.add(ev.ProviderAccepted)
    b.add(ev.PaymentCaptureFailed)
    compensate(b)


def _cancel_after_confirmed(b: Story) -> None:
    happy_path(b)
    b.add(ev.BookingCancellationRequested)
    compensate(b)


def _cancel_awaiting_provider(b: Story) -> None:
    _awaiting_provider(b)
    b.add(ev.BookingCancellationRequested)
    compensate(b)


SCENARIOS = [
    pytest.param(happy_path, (S.CONFIRMED, H.CONVERTED, P.CAPTURED), id="happy"),
    pytest.param(
        _happy_through_3ds,
        (S.CONFIRMED, H.CONVERTED, P.CAPTURED),
        id="happy-through-3ds",
    ),
    pytest.param(_settled(S.REJECTED), (S.REJECTED, H.REJECTED, P.NONE), id="no-capacity"),
    pytest.param(_settled(S.FAILED), (S.FAILED, H.RELEASED, P.FAILED), id="payment-declined"),
    pytest.param(_settled(S.EXPIRED), (S.EXPIRED, H.RELEASED, P.VOIDED), id="provider-timeout"),
    pytest.param(_provider_rejects, (S.REJECTED, H.RELEASED, P.VOIDED), id="provider-rejects"),
    pytest.param(_capture_fails, (S.FAILED, H.RELEASED, P.VOIDED), id="capture-fails"),
    pytest.param(
        _settled(S.CANCELLED), (S.CANCELLED, H.RELEASED, P.NONE), id="cancel-while-reserved"
    ),
    pytest.param(
        _cancel_awaiting_provider,
        (S.CANCELLED, H.RELEASED, P.VOIDED),
        id="cancel-awaiting-provider",
    ),
    pytest.param(
        _cancel_after_confirmed, (S.CANCELLED, H.RELEASED, P.REFUNDED), id="cancel-after-confirmed"
    ),
]
ITERATIONS = 200


@pytest.mark.parametrize(("scenario", "outcome"), SCENARIOS)
def test_any_cross_topic_interleaving_folds_to_the_same_booking(
    scenario: Callable[[Story], None], outcome: tuple[Status, H, P]
) -> None:
    b = Story()
    scenario(b)
    in_order = b.state
    assert (in_order.status, in_order.hold, in_order.payment) == outcome
    assert pending(in_order, b.clock) == {}, "the scenario must end with nothing left to do"

    rng = random.Random(20301125)
    orders = set()
    for _ in range(ITERATIONS):
        events = interleave(b.events, rng)
        orders.add(tuple(e.event_id for e in events))
        state = fold(events)
        assert state == fold(events), "folding is deterministic"
        assert state == in_order, [e.event_type for e in events]
        assert pending(state, b.clock) == {}
    assert len(orders) > 1, "the scenario spans several topics"


def test_interleaving_keeps_each_topics_order() -> None:
    b = Story()
    _cancel_after_confirmed(b)
    rng = random.Random(7)
    for _ in range(50):
        events = interleave(b.events, rng)
        assert sorted(e.event_id for e in events) == sorted(e.event_id for e in b.events)
        for topic in {_topic_of(e.event_type) for e in b.events}:
            mine = [e for e in b.events if _topic_of(e.event_type) == topic]
            theirs = [e for e in events if _topic_of(e.event_type) == topic]
            assert theirs == mine


def _agent_view(agent: Agent, events: list[ev.BookingEvent]) -> list[ev.BookingEvent]:
    """The events an agent folds: those on the topics it consumes, plus the ones it emits."""
    catalog = load_catalog(PROJECT_ROOT / "topics.yaml")
    own = {
        "reservation": "reservations",
        "payment": "payments",
        "notification": "notifications",
        "provider-response": "provider-responses",
    }[agent]
    topics = {*catalog.consumer(agent).consumes, own}
    return [e for e in events if _topic_of(e.event_type) in topics]


HAPPY_PATH_ACTIONS: dict[Agent, list[Action]] = {
    "reservation": [HoldCapacity(), ConvertHold()],
    "payment": [AuthorizePayment(amount=PRICE), CapturePayment(amount=PRICE)],
    "notification": [NotifyProvider(), NotifyCustomer(template="customer_confirmed")],
    "provider-response": [StartProviderDeadline(deadline_at=T0), AcceptForProvider()],
}


@pytest.mark.parametrize(
    "agent",
    [pytest.param(agent) for agent in AGENTS],
)
def test_each_agent_reaches_its_happy_path_steps_from_the_topics_it_consumes(
    agent: Agent,
) -> None:
    # The provider-response agent does not consume `reservations`: it must reach
    # awaiting_provider from PaymentAuthorized alone.
    b = Story()
    happy_path(b)
    asked: list[Action] = []
    state: BookingState | None = None
    for event in _agent_view(agent, b.events):
        state = evolve(state, event)
        for action in next_actions(agent, state, event.occurred_at):
            if isinstance(action, StartProviderDeadline):
                action = StartProviderDeadline(deadline_at=T0)  # compare kinds, not times
            if action not in asked:
                asked.append(action)
    assert asked == HAPPY_PATH_ACTIONS[agent]


def _action_required_state() -> BookingState:
    requested = booking_requested(
        booking_id="4b1d7c55-0f7e-4a52-9a8e-2d1c1c0b9f11",
        occurred_at=T0,
        slot_start=T0 + timedelta(days=2),
        price=Money(1000, "EUR"),
        payment_method="pm_card_authenticationRequired",
    )
    held = next_event(
        requested, ev.ReservationHeld, occurred_at=T0 + timedelta(seconds=1), hold_id="h"
    )
    action = next_event(
        requested, ev.PaymentActionRequired, cause=held, occurred_at=T0 + timedelta(seconds=2)
    )
    state = fold([requested, held, action])
    assert state is not None
    return state


def test_a_payment_action_not_completed_in_time_is_abandoned() -> None:
    state = _action_required_state()
    policy = saga.Policy(payment_action_timeout=timedelta(minutes=30))
    since = T0 + timedelta(seconds=2)

    assert saga.next_actions("payment", state, since + timedelta(minutes=29), policy) == []
    assert saga.next_actions("payment", state, since + timedelta(minutes=30), policy) == [
        saga.AbandonPayment(reason="payment action not completed in time")
    ]
    assert saga.payment_action_expires_at(state, policy) == since + timedelta(minutes=30)


def test_an_abandoned_payment_fails_the_booking_and_releases_the_hold() -> None:
    state = _action_required_state()
    failed = ev.make(ev.PaymentFailed, booking_id=state.booking_id, producer="payment",
                     correlation_id=state.correlation_id,
                     occurred_at=T0 + timedelta(minutes=31), payment_id="pi_1",
                     reason_code="action_timeout", reason="not completed")  # fmt: skip

    after = saga.evolve(state, failed)

    assert after.status == Status.FAILED
    far = T0 + timedelta(hours=2)
    assert saga.next_actions("payment", after, far) == []
    assert saga.next_actions("reservation", after, far) == [saga.ReleaseHold(reason="failed")]
