"""The booking saga's rules: pure functions, no I/O.

Two questions, answered the same way everywhere:

* ``evolve(state, event)`` — what a booking looks like after an event. The materializer folds
  every event with it to build the read model; each agent folds the events it sees (and the
  ones it emits) to know where its booking stands.
* ``next_actions(agent, state, now)`` — what that agent must do now. The answer depends on the
  state only, not on which event arrived last, so events that arrive late, twice or out of
  order across topics lead to the same actions; once an agent's own result is folded back in,
  the action disappears. Compensations fall out of the same rule: a booking that became
  terminal while money or capacity is still held asks the owning agent to give it back.

Compensations run in reverse order of the steps done: the payment is voided or refunded
first, the hold is released once no money is held, and the customer is told once both ended.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from erynoa import events as ev
from erynoa.events import Money


class Status(StrEnum):
    """What a client sees."""

    REQUESTED = "requested"
    RESERVED = "reserved"
    PAYMENT_ACTION_REQUIRED = "payment_action_required"
    AWAITING_PROVIDER = "awaiting_provider"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL: frozenset[Status] = frozenset(
    {Status.REJECTED, Status.EXPIRED, Status.CANCELLED, Status.FAILED}
)
"""Ended without a booking. ``confirmed`` is an outcome too; a later cancel still moves it."""

OUTCOMES: frozenset[Status] = TERMINAL | {Status.CONFIRMED}


class Hold(StrEnum):
    NONE = "none"
    HELD = "held"
    CONVERTED = "converted"
    RELEASED = "released"
    REJECTED = "rejected"


class Payment(StrEnum):
    NONE = "none"
    ACTION_REQUIRED = "action_required"
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    CAPTURE_FAILED = "capture_failed"
    VOIDED = "voided"
    REFUNDED = "refunded"
    FAILED = "failed"


MONEY_HELD: frozenset[Payment] = frozenset(
    {Payment.ACTION_REQUIRED, Payment.AUTHORIZED, Payment.CAPTURE_FAILED}
)
"""An authorization exists (or may) and must be captured or voided."""

ProviderAnswer = Literal["accept", "reject"]
ProviderOutcome = Literal["accepted", "rejected", "timed_out"]
RefundPolicy = Literal["full", "none"]


@dataclass(frozen=True)
class BookingState:
    """One booking as the saga knows it. Serializable with ``to_json``/``from_json``."""

    booking_id: str
    customer_id: str
    provider_id: str
    service_id: str
    slot_start: datetime
    slot_end: datetime
    price: Money
    payment_method: str
    notes: str | None
    response_deadline_seconds: int
    correlation_id: str
    idempotency_key: str | None
    requested_at: datetime
    updated_at: datetime
    status: Status = Status.REQUESTED
    hold: Hold = Hold.NONE
    hold_id: str | None = None
    payment: Payment = Payment.NONE
    payment_id: str | None = None
    payment_action_since: datetime | None = None  # when the customer was asked to act
    provider_deadline_at: datetime | None = None
    provider_answer: ProviderAnswer | None = None
    provider_answered_at: datetime | None = None
    provider_answer_reason: str | None = None
    provider_outcome: ProviderOutcome | None = None
    notified: frozenset[str] = frozenset()
    failure_reason: str | None = None
    events_applied: int = 0

    @property
    def is_outcome(self) -> bool:
        return self.status in OUTCOMES

    @property
    def provider_notified(self) -> bool:
        return PROVIDER_REQUEST in self.notified

    @property
    def customer_notified(self) -> bool:
        return any(t.startswith("customer_") for t in self.notified)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Money):
                value = {"amount_minor": value.amount_minor, "currency": value.currency}
            elif isinstance(value, frozenset):
                value = sorted(value)
            data[f.name] = value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BookingState:
        values = dict(data)
        for name in (
            "slot_start",
            "slot_end",
            "requested_at",
            "updated_at",
            "provider_deadline_at",
            "provider_answered_at",
            "payment_action_since",
        ):
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        values["price"] = Money(**values["price"])
        values["status"] = Status(values["status"])
        values["hold"] = Hold(values["hold"])
        values["payment"] = Payment(values["payment"])
        values["notified"] = frozenset(values.get("notified", ()))
        return cls(**values)


# Notification templates; the customer's is named after the outcome it announces.
PROVIDER_REQUEST = "provider_request"


def customer_template(status: Status) -> str:
    return f"customer_{status.value}"


# --- the fold -------------------------------------------------------------------------


def start(event: ev.BookingRequested) -> BookingState:
    return BookingState(
        booking_id=event.booking_id,
        customer_id=event.customer_id,
        provider_id=event.provider_id,
        service_id=event.service_id,
        slot_start=event.slot_start,
        slot_end=event.slot_end,
        price=event.price,
        payment_method=event.payment_method,
        notes=event.notes,
        response_deadline_seconds=event.response_deadline_seconds,
        correlation_id=event.correlation_id,
        idempotency_key=event.idempotency_key,
        requested_at=event.occurred_at,
        updated_at=event.occurred_at,
        events_applied=1,
    )


class SagaError(ValueError):
    """An event that cannot apply to a booking at all (not merely late or repeated)."""


def evolve(state: BookingState | None, event: ev.BookingEvent) -> BookingState:
    """The booking after ``event``.

    Events that arrive out of place (late, repeated, after an outcome) never move a booking
    backwards: they only record facts that still need compensating (an authorization that
    raced a cancel, say). Only an event for a booking never requested is an error.
    """
    if isinstance(event, ev.BookingRequested):
        return state if state is not None else start(event)
    if state is None:
        raise SagaError(
            f"{event.event_type} for booking {event.booking_id} before BookingRequested"
        )
    new = _apply(state, event)
    return replace(
        new,
        events_applied=state.events_applied + 1,
        updated_at=max(state.updated_at, event.occurred_at),
    )


def fold(events: Iterable[ev.BookingEvent]) -> BookingState | None:
    state: BookingState | None = None
    for event in events:
        state = evolve(state, event)
    return state


# The forward path. Each step implies the ones before it, so an event folded before an
# earlier step's event (they travel on different topics) still moves the booking forward.
_FORWARD = (
    Status.REQUESTED,
    Status.RESERVED,
    Status.PAYMENT_ACTION_REQUIRED,
    Status.AWAITING_PROVIDER,
    Status.CONFIRMED,
)


def _advance(state: BookingState, to: Status) -> BookingState:
    """Move forward to ``to`` unless the booking is already there, further, or ended."""
    if state.is_outcome or _FORWARD.index(state.status) >= _FORWARD.index(to):
        return state
    return replace(state, status=to)


def _end(state: BookingState, status: Status, reason: str | None) -> BookingState:
    """Move to an outcome, unless the booking already reached one (the first one wins)."""
    if state.is_outcome:
        return state
    return replace(state, status=status, failure_reason=reason)


def _apply(s: BookingState, e: ev.BookingEvent) -> BookingState:
    match e:
        case ev.BookingCancellationRequested():
            if s.status in TERMINAL:
                return s
            return replace(s, status=Status.CANCELLED, failure_reason=e.reason or "cancelled")
        case ev.SagaRetryRequested():
            return s
        case ev.ReservationHeld():
            if s.hold != Hold.NONE:
                return s
            return _advance(replace(s, hold=Hold.HELD, hold_id=e.hold_id), Status.RESERVED)
        case ev.ReservationRejected():
            if s.hold != Hold.NONE:
                return s
            return _end(replace(s, hold=Hold.REJECTED), Status.REJECTED, e.reason)
        case ev.ReservationReleased():
            return replace(s, hold=Hold.RELEASED) if s.hold in (Hold.HELD, Hold.CONVERTED) else s
        case ev.ReservationConverted():
            return replace(s, hold=Hold.CONVERTED) if s.hold == Hold.HELD else s
        case ev.PaymentActionRequired():
            if s.payment != Payment.NONE:
                return s
            action = replace(
                s,
                payment=Payment.ACTION_REQUIRED,
                payment_id=e.payment_id,
                payment_action_since=e.occurred_at,
            )
            return _advance(action, Status.PAYMENT_ACTION_REQUIRED)
        case ev.PaymentAuthorized():
            # After a failure too: an authorization that still came through (a customer
            # finishing 3-D Secure late) must be recorded so that it gets voided.
            if s.payment not in (Payment.NONE, Payment.ACTION_REQUIRED, Payment.FAILED):
                return s
            authorized = replace(s, payment=Payment.AUTHORIZED, payment_id=e.payment_id)
            return _advance(authorized, Status.AWAITING_PROVIDER)
        case ev.PaymentFailed():
            if s.payment not in (Payment.NONE, Payment.ACTION_REQUIRED):
                return s
            failed = replace(s, payment=Payment.FAILED, payment_id=e.payment_id or s.payment_id)
            return _end(failed, Status.FAILED, f"payment failed: {e.reason}")
        case ev.PaymentCaptured():
            if s.payment != Payment.AUTHORIZED:
                return s
            return _advance(replace(s, payment=Payment.CAPTURED), Status.CONFIRMED)
        case ev.PaymentCaptureFailed():
            if s.payment != Payment.AUTHORIZED:
                return s
            return _end(
                replace(s, payment=Payment.CAPTURE_FAILED),
                Status.FAILED,
                f"capture failed: {e.reason}",
            )
        case ev.PaymentVoided():
            return (
                replace(s, payment=Payment.VOIDED)
                if s.payment in MONEY_HELD | {Payment.NONE}
                else s
            )
        case ev.PaymentRefunded():
            return replace(s, payment=Payment.REFUNDED) if s.payment == Payment.CAPTURED else s
        case ev.StripeEventReceived():
            return s  # the payment agent turns it into PaymentAuthorized or PaymentFailed
        case ev.NotificationSent() | ev.NotificationFailed():
            # A failed delivery counts as done for the saga: it was tried, retried and
            # dead-lettered, and the saga must not wait on an unreachable inbox.
            return replace(s, notified=s.notified | {e.template})
        case ev.ProviderResponseRequested():
            if s.provider_deadline_at is not None:
                return s
            return replace(s, provider_deadline_at=e.deadline_at)
        case ev.ProviderAnswerSubmitted():
            if s.provider_answer is not None:
                return s
            answer: ProviderAnswer = "accept" if e.decision == "accept" else "reject"
            return replace(
                s,
                provider_answer=answer,
                provider_answered_at=e.occurred_at,
                provider_answer_reason=e.reason,
            )
        case ev.ProviderAccepted():
            if s.provider_outcome is not None:
                return s
            return replace(s, provider_outcome="accepted")
        case ev.ProviderRejected():
            if s.provider_outcome is not None:
                return s
            return _end(
                replace(s, provider_outcome="rejected"),
                Status.REJECTED,
                f"provider rejected: {e.reason}" if e.reason else "provider rejected",
            )
        case ev.ProviderTimedOut():
            if s.provider_outcome is not None:
                return s
            return _end(
                replace(s, provider_outcome="timed_out"), Status.EXPIRED, "provider did not answer"
            )
    raise SagaError(f"no saga rule for {e.event_type}")


# --- what each agent must do ------------------------------------------------------------

Agent = Literal["reservation", "payment", "notification", "provider-response"]


@dataclass(frozen=True)
class HoldCapacity:
    """Take one seat of the booking's (service, slot), or reject the booking if none is left."""


@dataclass(frozen=True)
class ConvertHold:
    """The booking is confirmed: its held seat becomes a confirmed one."""


@dataclass(frozen=True)
class ReleaseHold:
    reason: str


@dataclass(frozen=True)
class AuthorizePayment:
    amount: Money


@dataclass(frozen=True)
class CapturePayment:
    amount: Money


@dataclass(frozen=True)
class VoidPayment:
    """Cancel the authorization; succeeds when there is nothing to void."""

    reason: str


@dataclass(frozen=True)
class RefundPayment:
    amount: Money


@dataclass(frozen=True)
class AbandonPayment:
    """The customer did not complete the payment's extra step in time: cancel it and fail."""

    reason: str


@dataclass(frozen=True)
class NotifyProvider:
    template: str = PROVIDER_REQUEST


@dataclass(frozen=True)
class NotifyCustomer:
    template: str


@dataclass(frozen=True)
class StartProviderDeadline:
    deadline_at: datetime


@dataclass(frozen=True)
class AcceptForProvider:
    """The provider's submitted 'accept' arrived in time: make it the outcome."""


@dataclass(frozen=True)
class RejectForProvider:
    """The provider's submitted 'reject' arrived in time: make it the outcome."""


@dataclass(frozen=True)
class TimeOutProvider:
    """The deadline passed with no answer."""


Action = (
    HoldCapacity
    | ConvertHold
    | ReleaseHold
    | AuthorizePayment
    | CapturePayment
    | VoidPayment
    | RefundPayment
    | AbandonPayment
    | NotifyProvider
    | NotifyCustomer
    | StartProviderDeadline
    | AcceptForProvider
    | RejectForProvider
    | TimeOutProvider
)


@dataclass(frozen=True)
class Policy:
    """The rules' settings (kept out of the state so a policy change needs no migration)."""

    refund_policy: RefundPolicy = "full"
    # How long a customer has to finish 3-D Secure (or similar) before the booking fails:
    # without it a booking could wait in payment_action_required forever (invariant 1).
    payment_action_timeout: timedelta = timedelta(minutes=30)


def money_settled(s: BookingState, policy: Policy) -> bool:
    """No money is held for a booking that did not (or no longer does) go ahead."""
    if s.payment in MONEY_HELD:
        return False
    return not (s.payment == Payment.CAPTURED and _should_refund(s, policy))


def _should_refund(s: BookingState, policy: Policy) -> bool:
    return s.status == Status.CANCELLED and policy.refund_policy == "full"


def next_actions(
    agent: Agent, s: BookingState, now: datetime, policy: Policy = Policy()
) -> list[Action]:
    """What ``agent`` must do for booking ``s`` now; empty when it has nothing left to do."""
    if agent == "reservation":
        return _reservation(s, policy)
    if agent == "payment":
        return _payment(s, policy, now)
    if agent == "notification":
        return _notification(s, policy)
    return _provider_response(s, now)


def _reservation(s: BookingState, policy: Policy) -> list[Action]:
    if s.hold == Hold.NONE and s.status == Status.REQUESTED:
        return [HoldCapacity()]
    if s.hold == Hold.HELD and s.status == Status.CONFIRMED:
        return [ConvertHold()]
    # Release only once no money is held, so compensations run in reverse order.
    if s.hold in (Hold.HELD, Hold.CONVERTED) and s.status in TERMINAL and money_settled(s, policy):
        return [ReleaseHold(reason=s.status.value)]
    return []


def payment_action_expires_at(s: BookingState, policy: Policy) -> datetime | None:
    """When a booking waiting for the customer's payment action fails, if it is waiting."""
    if s.status != Status.PAYMENT_ACTION_REQUIRED or s.payment != Payment.ACTION_REQUIRED:
        return None
    since = s.payment_action_since or s.updated_at
    return since + policy.payment_action_timeout


def _payment(s: BookingState, policy: Policy, now: datetime) -> list[Action]:
    if s.payment == Payment.NONE and s.status == Status.RESERVED:
        return [AuthorizePayment(amount=s.price)]
    expires_at = payment_action_expires_at(s, policy)
    if expires_at is not None and now >= expires_at:
        return [AbandonPayment(reason="payment action not completed in time")]
    if (
        s.payment == Payment.AUTHORIZED
        and s.status == Status.AWAITING_PROVIDER
        and s.provider_outcome == "accepted"
    ):
        return [CapturePayment(amount=s.price)]
    if s.payment in MONEY_HELD and s.status in TERMINAL:
        return [VoidPayment(reason=s.status.value)]
    if s.payment == Payment.CAPTURED and _should_refund(s, policy):
        return [RefundPayment(amount=s.price)]
    return []


def _notification(s: BookingState, policy: Policy) -> list[Action]:
    actions: list[Action] = []
    waiting = s.payment == Payment.AUTHORIZED and s.status == Status.AWAITING_PROVIDER
    if waiting and PROVIDER_REQUEST not in s.notified:
        actions.append(NotifyProvider())
    if s.is_outcome:
        template = customer_template(s.status)
        compensated = s.status == Status.CONFIRMED or (
            money_settled(s, policy) and s.hold not in (Hold.HELD, Hold.CONVERTED)
        )
        if template not in s.notified and compensated:
            actions.append(NotifyCustomer(template=template))
    return actions


def _provider_response(s: BookingState, now: datetime) -> list[Action]:
    if s.status != Status.AWAITING_PROVIDER or s.provider_outcome is not None:
        return []
    if s.provider_deadline_at is None:
        return [StartProviderDeadline(now + timedelta(seconds=s.response_deadline_seconds))]
    # An answer counts if it was given before the deadline, even if it is processed after;
    # an answer given after the deadline changes nothing.
    answered = s.provider_answered_at
    in_time = answered is not None and answered < s.provider_deadline_at
    if in_time and s.provider_answer == "accept":
        return [AcceptForProvider()]
    if in_time and s.provider_answer == "reject":
        return [RejectForProvider()]
    if now >= s.provider_deadline_at:
        return [TimeOutProvider()]
    return []


# --- what the API may ask for -----------------------------------------------------------


def can_cancel(s: BookingState) -> bool:
    return s.status not in TERMINAL


def can_answer(s: BookingState) -> bool:
    return s.status == Status.AWAITING_PROVIDER and s.provider_answer is None
