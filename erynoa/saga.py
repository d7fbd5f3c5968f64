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

The fold is confluent: a booking's events folded in any order (after its request) give the
same booking. Retries reorder events even within a topic, and the materializer folds in
``(occurred_at, event_id)`` order while each agent folds in arrival order; a fixed precedence,
not arrival, decides every race, so they all agree:

* **Endings.** A cancel, ``ReservationRejected``, ``PaymentFailed``, ``PaymentCaptureFailed``,
  ``ProviderRejected`` and ``ProviderTimedOut`` each end a booking, whenever they are folded and
  whatever else is known. All rank the same: the ending that *occurred* first wins, by
  ``(occurred_at, event_id)``, and brings its status and ``failure_reason``. An ending that
  occurred later changes nothing (as the API refuses a cancel once a booking ended); one that
  occurred earlier but was folded later takes over. An ended booking never goes back to a
  waiting status, so a compensation started for it is never contradicted, only relabelled.
* **Progress.** ``requested < reserved < payment_action_required < awaiting_provider <
  confirmed``: each step's event implies the ones before it, the furthest wins, and any ending
  outranks all of them. A confirmation is not an ending: a cancel after it still ends the
  booking (and refunds it, below).
* **Facts only move forward**, each along its own fixed order, the furthest one folded wins:
  hold ``none < rejected < held < converted < released``; payment ``none < action_required <
  failed < authorized < capture_failed < voided < captured < refunded``. So an authorization is
  recorded (to be voided) whether it arrived before or after the failure that ended the
  booking, a void or refund folded before what it undid still counts, and a capture outranks a
  void because only a refund gives captured money back.
* **The provider.** The earliest answer submitted counts, and the earliest deadline announced;
  a rejection or a timeout outranks an accept as the provider's outcome (it ended the booking),
  between two of them the earlier wins.
* **Money captured for a booking that ended** is refunded. The refund policy applies only to a
  cancel that occurred after the capture (a confirmed booking the customer called off); a
  cancel that occurred before the capture raced it, the customer never held a confirmed
  booking, and gets the money back in full. This is the one place the true order of two
  events decides an outcome, and it is taken from the events' own times, so it too is the same
  in every delivery order.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from erynoa import events as ev
from erynoa.events import Money

if TYPE_CHECKING:
    from erynoa.settings import Settings


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


# The order each fact moves in (see the module docstring): the furthest one folded wins.
HOLD_ORDER: tuple[Hold, ...] = (
    Hold.NONE,
    Hold.REJECTED,
    Hold.HELD,
    Hold.CONVERTED,
    Hold.RELEASED,
)
PAYMENT_ORDER: tuple[Payment, ...] = (
    Payment.NONE,
    Payment.ACTION_REQUIRED,
    Payment.FAILED,
    Payment.AUTHORIZED,
    Payment.CAPTURE_FAILED,
    Payment.VOIDED,
    Payment.CAPTURED,
    Payment.REFUNDED,
)
_HOLD_RANK = {hold: rank for rank, hold in enumerate(HOLD_ORDER)}
_PAYMENT_RANK = {payment: rank for rank, payment in enumerate(PAYMENT_ORDER)}

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
    # Which ending decided the status, by (occurred_at, event_id): an earlier one takes over.
    ended_at: datetime | None = None
    ended_by: str | None = None
    provider_outcome_at: datetime | None = None
    captured_at: datetime | None = None  # a cancel before it raced the capture

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
            "ended_at",
            "provider_outcome_at",
            "captured_at",
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

    Order-insensitive (see the module docstring): each field moves along a fixed order or is
    decided by the events' own times, so events that arrive late, repeated or out of order lead
    to the same booking. Only an event for a booking never requested is an error.
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


def log_order(events: Iterable[ev.BookingEvent]) -> list[ev.BookingEvent]:
    """A booking's log in fold order, one copy per event id: its ``BookingRequested`` first
    (a clock skew must not make the request look late), then ``(occurred_at, event_id)``."""
    unique = sorted(
        {e.event_id: e for e in events}.values(), key=lambda e: (e.occurred_at, e.event_id)
    )
    requested = next((e for e in unique if isinstance(e, ev.BookingRequested)), None)
    if requested is None:
        return unique
    return [requested, *(e for e in unique if not isinstance(e, ev.BookingRequested))]


def fold_log(events: Iterable[ev.BookingEvent]) -> BookingState | None:
    """The booking's state from its log, in ``log_order``; None while the log holds no
    ``BookingRequested``. The materializer, the operators' views and the invariant checker
    all fold with it, so they agree on every booking."""
    ordered = log_order(events)
    if not ordered or not isinstance(ordered[0], ev.BookingRequested):
        return None
    return fold(ordered)


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
    if state.status in TERMINAL or _FORWARD.index(state.status) >= _FORWARD.index(to):
        return state
    return replace(state, status=to)


def _end(state: BookingState, status: Status, reason: str | None, e: ev.Event) -> BookingState:
    """End the booking with ``status``, unless an ending that occurred earlier already did.

    A stored state that ended without a recorded time keeps its ending: nothing says which
    occurred first, and keeping it never moves the booking.
    """
    if state.status in TERMINAL and (
        state.ended_at is None
        or (state.ended_at, state.ended_by or "") <= (e.occurred_at, e.event_id)
    ):
        return state
    return replace(
        state,
        status=status,
        failure_reason=reason,
        ended_at=e.occurred_at,
        ended_by=e.event_id,
    )


def _hold(state: BookingState, hold: Hold, hold_id: str | None) -> BookingState:
    """Record ``hold`` unless the hold already moved as far or further."""
    ids = [i for i in (state.hold_id, hold_id) if i is not None]
    hold_id = min(ids) if ids else None  # one hold per booking; min keeps any order equal
    if _HOLD_RANK[hold] <= _HOLD_RANK[state.hold]:
        return state if hold_id == state.hold_id else replace(state, hold_id=hold_id)
    return replace(state, hold=hold, hold_id=hold_id)


def _pay(state: BookingState, payment: Payment, payment_id: str | None) -> BookingState:
    """Record ``payment`` unless the payment already moved as far or further.

    The payment named is the one the furthest payment event names: an authorization retried
    after a failed one is the one to void.
    """
    rank, current = _PAYMENT_RANK[payment], _PAYMENT_RANK[state.payment]
    named = state.payment_id
    if payment_id is not None and (
        named is None or rank > current or (rank == current and payment_id < named)
    ):
        named = payment_id
    if rank <= current:
        return state if named == state.payment_id else replace(state, payment_id=named)
    return replace(state, payment=payment, payment_id=named)


def _earliest(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None else min(current, candidate)


_PROVIDER_OUTCOME_RANK: dict[ProviderOutcome, int] = {
    "rejected": 0,
    "timed_out": 0,
    "accepted": 1,
}


def _provider_outcome(state: BookingState, outcome: ProviderOutcome, e: ev.Event) -> BookingState:
    """Record the provider's outcome: one that ended the wait outranks an accept, and between
    two of the same rank the earlier wins (a stored outcome without a time stays)."""
    if state.provider_outcome is not None:
        if state.provider_outcome_at is None:
            return state
        held = (
            _PROVIDER_OUTCOME_RANK[state.provider_outcome],
            state.provider_outcome_at,
            state.provider_outcome,
        )
        if held <= (_PROVIDER_OUTCOME_RANK[outcome], e.occurred_at, outcome):
            return state
    return replace(state, provider_outcome=outcome, provider_outcome_at=e.occurred_at)


def _apply(s: BookingState, e: ev.BookingEvent) -> BookingState:
    match e:
        case ev.BookingCancellationRequested():
            return _end(s, Status.CANCELLED, e.reason or "cancelled", e)
        case ev.SagaRetryRequested():
            return s
        case ev.ReservationHeld():
            return _advance(_hold(s, Hold.HELD, e.hold_id), Status.RESERVED)
        case ev.ReservationRejected():
            return _end(_hold(s, Hold.REJECTED, None), Status.REJECTED, e.reason, e)
        case ev.ReservationReleased():
            # A release folded before the hold it released still counts: the hold existed.
            return _hold(s, Hold.RELEASED, e.hold_id)
        case ev.ReservationConverted():
            return _hold(s, Hold.CONVERTED, e.hold_id)
        case ev.PaymentActionRequired():
            action = _pay(s, Payment.ACTION_REQUIRED, e.payment_id)
            since = _earliest(s.payment_action_since, e.occurred_at)
            return _advance(
                replace(action, payment_action_since=since), Status.PAYMENT_ACTION_REQUIRED
            )
        case ev.PaymentAuthorized():
            # After a failure too: an authorization that still came through (a customer
            # finishing 3-D Secure late) is recorded so that it gets voided.
            return _advance(_pay(s, Payment.AUTHORIZED, e.payment_id), Status.AWAITING_PROVIDER)
        case ev.PaymentFailed():
            failed = _pay(s, Payment.FAILED, e.payment_id)
            return _end(failed, Status.FAILED, f"payment failed: {e.reason}", e)
        case ev.PaymentCaptured():
            captured = _pay(s, Payment.CAPTURED, e.payment_id)
            captured = replace(captured, captured_at=_earliest(s.captured_at, e.occurred_at))
            return _advance(captured, Status.CONFIRMED)
        case ev.PaymentCaptureFailed():
            failed = _pay(s, Payment.CAPTURE_FAILED, e.payment_id)
            return _end(failed, Status.FAILED, f"capture failed: {e.reason}", e)
        case ev.PaymentVoided():
            # A void succeeds when there was nothing to void, so it may be recorded on NONE.
            return _pay(s, Payment.VOIDED, e.payment_id)
        case ev.PaymentRefunded():
            return _pay(s, Payment.REFUNDED, e.payment_id)
        case ev.StripeEventReceived():
            return s  # the payment agent turns it into PaymentAuthorized or PaymentFailed
        case ev.NotificationSent() | ev.NotificationFailed():
            # A failed delivery counts as done for the saga: it was tried, retried and
            # dead-lettered, and the saga must not wait on an unreachable inbox.
            return replace(s, notified=s.notified | {e.template})
        case ev.ProviderResponseRequested():
            # A deadline once announced is never pushed back by a later request.
            return replace(s, provider_deadline_at=_earliest(s.provider_deadline_at, e.deadline_at))
        case ev.ProviderAnswerSubmitted():
            answer: ProviderAnswer = "accept" if e.decision == "accept" else "reject"
            if s.provider_answer is not None and s.provider_answered_at is not None:
                held = (s.provider_answered_at, s.provider_answer, s.provider_answer_reason or "")
                if held <= (e.occurred_at, answer, e.reason or ""):
                    return s  # the earliest answer counts
            return replace(
                s,
                provider_answer=answer,
                provider_answered_at=e.occurred_at,
                provider_answer_reason=e.reason,
            )
        case ev.ProviderAccepted():
            return _provider_outcome(s, "accepted", e)
        case ev.ProviderRejected():
            return _end(
                _provider_outcome(s, "rejected", e),
                Status.REJECTED,
                f"provider rejected: {e.reason}" if e.reason else "provider rejected",
                e,
            )
        case ev.ProviderTimedOut():
            return _end(
                _provider_outcome(s, "timed_out", e), Status.EXPIRED, "provider did not answer", e
            )
    raise SagaError(f"no saga rule for {e.event_type}")


# --- what each agent must do ------------------------------------------------------------

Agent = Literal["reservation", "payment", "notification", "provider-response"]
AGENTS: tuple[Agent, ...] = typing.get_args(Agent)
"""Every saga agent, in the order of the steps they own."""


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

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy a deployment runs with: every face judges a saga as its agents do."""
        return cls(
            refund_policy=settings.refund_policy,
            payment_action_timeout=timedelta(seconds=settings.payment_action_timeout_seconds),
        )


def money_settled(s: BookingState, policy: Policy) -> bool:
    """No money is held for a booking that did not (or no longer does) go ahead."""
    if s.payment in MONEY_HELD:
        return False
    return not refund_owed(s, policy)


def refund_owed(s: BookingState, policy: Policy) -> bool:
    """Captured money the customer must get back: the booking ended after all.

    The refund policy covers a confirmed booking the customer called off. A booking that ended
    any other way, or by a cancel that occurred before the capture (it raced the capture, the
    booking was never confirmed for the customer), is refunded in full.
    """
    if s.payment != Payment.CAPTURED or s.status not in TERMINAL:
        return False
    if s.status != Status.CANCELLED or policy.refund_policy == "full":
        return True
    return s.ended_at is not None and s.captured_at is not None and s.ended_at < s.captured_at


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
    if refund_owed(s, policy):
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
