"""The saga's fold is confluent: the same events folded in any delivery order give the same
booking (``erynoa.saga.evolve``), so agents, which fold in arrival order, and the materializer,
which folds in ``(occurred_at, event_id)`` order, always agree.

Retries reorder a booking's events even within one topic (a message parked in a retry topic is
handled after the ones behind it), so the property is checked for arbitrary orders, not only
for interleavings that keep each topic's order. The one fixed point is the booking's request:
before it every event is a ``SagaError`` that waits in the retry topics, so nothing folds ahead
of it.

The races below are the ones the rules must decide by a fixed precedence rather than by arrival:
a cancel against every other way a booking ends, a failed payment against a late authorization,
an authorization against its void, an answer against the deadline, two provider outcomes.

Run: ``python -m pytest tests/unit/test_saga_confluence.py -q`` (no network, a few seconds).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from erynoa import events as ev
from erynoa.saga import (
    TERMINAL,
    BookingState,
    Policy,
    RefundPayment,
    VoidPayment,
    fold,
    money_settled,
    next_actions,
)
from erynoa.saga import Hold as H
from erynoa.saga import Payment as P
from erynoa.saga import Status as S
from tests.unit.test_saga import (
    BUILD,
    PRICE,
    SCENARIOS,
    Story,
    compensate,
    compensations,
    interleave,
    pending,
)

Build = Callable[[Story], None]
Step = tuple[type[ev.BookingEvent], dict[str, Any]]  # an event to add, with its fields

# Enough shuffles to meet every relative order of any two events many times over.
SHUFFLES = 100
# Up to this many events after the request, every order is tried.
EXHAUSTIVE = 5


def _orders(events: list[ev.BookingEvent], seed: int) -> list[list[ev.BookingEvent]]:
    """Delivery orders to try: the log's own, its reverse, the materializer's, interleavings that
    keep each topic's order, and arbitrary ones (all of them when the log is short)."""
    first, rest = events[0], events[1:]
    assert isinstance(first, ev.BookingRequested)
    orders = [
        events,
        [first, *reversed(rest)],
        sorted(events, key=lambda e: (e.occurred_at, e.event_id)),
    ]
    rng = random.Random(seed)
    orders += [interleave(events, rng) for _ in range(SHUFFLES // 3)]
    if len(rest) <= EXHAUSTIVE:
        orders += [[first, *p] for p in itertools.permutations(rest)]
    else:
        for _ in range(SHUFFLES):
            shuffled = list(rest)
            rng.shuffle(shuffled)
            orders.append([first, *shuffled])
    return orders


def assert_confluent(events: list[ev.BookingEvent], seed: int = 20301125) -> BookingState:
    """Every delivery order folds to the booking the materializer's order folds to."""
    expected = fold(sorted(events, key=lambda e: (e.occurred_at, e.event_id)))
    assert expected is not None
    for order in _orders(events, seed):
        state = fold(order)
        assert state is not None
        if state != expected:
            got = (state.status, state.failure_reason, state.hold, state.payment, state.notified)
            want = (
                expected.status,
                expected.failure_reason,
                expected.hold,
                expected.payment,
                expected.notified,
            )
            raise AssertionError(
                f"delivered as {[e.event_type for e in order[1:]]}\n"
                f"  folds to {got}\n  not to   {want}\n"
                f"  (in full: {_diff(state, expected)})"
            )
    return expected


def _diff(a: BookingState, b: BookingState) -> dict[str, tuple[object, object]]:
    da, db = a.to_json(), b.to_json()
    return {k: (da[k], db[k]) for k in da if da[k] != db[k]}


# --- every scenario the saga's tests build ---------------------------------------------------


def _built_and_compensated(status: S) -> Build:
    def build(b: Story) -> None:
        BUILD[status](b)
        compensate(b)

    return build


EVERY_SCENARIO = [
    *(pytest.param(p.values[0], id=f"scenario-{p.id}") for p in SCENARIOS),
    *(pytest.param(BUILD[status], id=f"built-{status.value}") for status in S),
    *(
        pytest.param(_built_and_compensated(status), id=f"settled-{status.value}")
        for status in sorted(TERMINAL)
    ),
]


@pytest.mark.parametrize("scenario", EVERY_SCENARIO)
def test_every_scenario_folds_to_the_same_booking_in_any_delivery_order(scenario: Build) -> None:
    b = Story()
    scenario(b)
    assert_confluent(b.events)


# --- races ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Race:
    """Two (or more) events that can race, added after ``before`` in the order given."""

    before: Build
    racing: tuple[Step, ...]

    def story(self, reverse: bool = False) -> Story:
        b = Story()
        self.before(b)
        for cls, fields in reversed(self.racing) if reverse else self.racing:
            b.add(cls, **fields)
        return b


def _requested(b: Story) -> None:
    BUILD[S.REQUESTED](b)


def _reserved(b: Story) -> None:
    BUILD[S.RESERVED](b)


def _action_required(b: Story) -> None:
    BUILD[S.PAYMENT_ACTION_REQUIRED](b)


def _awaiting(b: Story) -> None:
    BUILD[S.AWAITING_PROVIDER](b)


def _accepted(b: Story) -> None:
    BUILD[S.AWAITING_PROVIDER](b)
    b.add(ev.ProviderAnswerSubmitted, decision="accept")
    b.add(ev.ProviderAccepted)


def _confirmed(b: Story) -> None:
    BUILD[S.CONFIRMED](b)
    b.add(ev.ReservationConverted)


CANCEL: Step = (ev.BookingCancellationRequested, {"reason": "changed my mind"})

RACES = {
    "cancel-vs-reservation-rejected": Race(_requested, (CANCEL, (ev.ReservationRejected, {}))),
    "cancel-vs-reservation-held": Race(_requested, (CANCEL, (ev.ReservationHeld, {}))),
    "cancel-vs-provider-rejected": Race(_awaiting, (CANCEL, (ev.ProviderRejected, {}))),
    "cancel-vs-provider-timed-out": Race(_awaiting, (CANCEL, (ev.ProviderTimedOut, {}))),
    "cancel-vs-provider-accepted": Race(_awaiting, (CANCEL, (ev.ProviderAccepted, {}))),
    "cancel-vs-payment-failed": Race(_reserved, (CANCEL, (ev.PaymentFailed, {}))),
    "cancel-vs-payment-authorized": Race(_reserved, (CANCEL, (ev.PaymentAuthorized, {}))),
    "cancel-vs-payment-action-failed": Race(_action_required, (CANCEL, (ev.PaymentFailed, {}))),
    "cancel-vs-capture-failed": Race(_accepted, (CANCEL, (ev.PaymentCaptureFailed, {}))),
    "cancel-vs-capture": Race(_accepted, (CANCEL, (ev.PaymentCaptured, {}))),
    "cancel-vs-cancel": Race(_awaiting, (CANCEL, (ev.BookingCancellationRequested, {}))),
    "payment-failed-vs-late-authorization": Race(
        _action_required, ((ev.PaymentFailed, {}), (ev.PaymentAuthorized, {}))
    ),
    "payment-failed-vs-late-authorization-and-void": Race(
        _action_required,
        ((ev.PaymentFailed, {}), (ev.PaymentAuthorized, {}), (ev.PaymentVoided, {})),
    ),
    "action-required-vs-authorized": Race(
        _reserved, ((ev.PaymentActionRequired, {}), (ev.PaymentAuthorized, {}))
    ),
    "authorized-vs-voided": Race(
        _reserved, (CANCEL, (ev.PaymentAuthorized, {}), (ev.PaymentVoided, {}))
    ),
    "captured-vs-refunded": Race(
        _confirmed, (CANCEL, (ev.PaymentRefunded, {}), (ev.ReservationReleased, {}))
    ),
    "held-vs-released": Race(
        _requested, (CANCEL, (ev.ReservationHeld, {}), (ev.ReservationReleased, {}))
    ),
    "held-vs-converted": Race(_accepted, ((ev.PaymentCaptured, {}), (ev.ReservationConverted, {}))),
    "answer-vs-timeout": Race(
        _awaiting, ((ev.ProviderAnswerSubmitted, {"decision": "accept"}), (ev.ProviderTimedOut, {}))
    ),
    "two-answers": Race(
        _awaiting,
        (
            (ev.ProviderAnswerSubmitted, {"decision": "reject", "reason": "away"}),
            (ev.ProviderAnswerSubmitted, {"decision": "accept"}),
        ),
    ),
    "two-deadlines": Race(_awaiting, ((ev.ProviderResponseRequested, {}),)),
    "accepted-vs-timed-out": Race(
        _awaiting, ((ev.ProviderAccepted, {}), (ev.ProviderTimedOut, {}))
    ),
    "rejected-vs-timed-out": Race(
        _awaiting, ((ev.ProviderRejected, {}), (ev.ProviderTimedOut, {}))
    ),
    "capture-failed-vs-captured": Race(
        _accepted, ((ev.PaymentCaptureFailed, {}), (ev.PaymentCaptured, {}))
    ),
    "payment-failed-vs-captured": Race(
        _awaiting, ((ev.ProviderAccepted, {}), (ev.PaymentCaptured, {}), (ev.PaymentFailed, {}))
    ),
    "provider-rejected-vs-reservation-released": Race(
        _awaiting,
        ((ev.ProviderRejected, {}), (ev.PaymentVoided, {}), (ev.ReservationReleased, {})),
    ),
}


def _race_params(*, ending_only: bool = False) -> list[object]:
    return [
        pytest.param(race, reverse, id=f"{name}-{'reversed' if reverse else 'as-written'}")
        for name, race in RACES.items()
        for reverse in (False, True)
        if not ending_only or race.story(reverse).state.status in TERMINAL
    ]


@pytest.mark.parametrize(("race", "reverse"), _race_params())
def test_a_race_ends_the_same_whichever_event_arrives_first(race: Race, reverse: bool) -> None:
    b = race.story(reverse)
    assert_confluent(b.events)


@pytest.mark.parametrize(("race", "reverse"), _race_params(ending_only=True))
def test_a_race_settles_whichever_event_arrives_first(race: Race, reverse: bool) -> None:
    # Once the compensations ran, nothing is held for a booking that did not go ahead, and the
    # settled booking is still the same in every delivery order.
    b = race.story(reverse)
    compensate(b)
    final = assert_confluent(b.events)
    assert pending(final, b.clock) == {}
    assert money_settled(final, Policy())
    assert final.hold not in (H.HELD, H.CONVERTED)
    assert f"customer_{final.status.value}" in final.notified


# --- the precedence, spelled out --------------------------------------------------------------


ENDINGS: dict[str, tuple[Step, S, str]] = {
    "reservation-rejected": ((ev.ReservationRejected, {}), S.REJECTED, "no capacity left"),
    "payment-failed": ((ev.PaymentFailed, {}), S.FAILED, "payment failed: card declined"),
    "capture-failed": (
        (ev.PaymentCaptureFailed, {}),
        S.FAILED,
        "capture failed: authorization expired",
    ),
    "provider-rejected": ((ev.ProviderRejected, {}), S.REJECTED, "provider rejected: fully booked"),
    "provider-timed-out": ((ev.ProviderTimedOut, {}), S.EXPIRED, "provider did not answer"),
}


@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel-first", "ending-first"])
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_of_a_cancel_and_an_ending_the_one_that_occurred_first_wins(
    ending: str, cancel_first: bool
) -> None:
    other, status, reason = ENDINGS[ending]
    b = Story()
    _awaiting(b)
    first, second = (CANCEL, other) if cancel_first else (other, CANCEL)
    b.add(first[0], **first[1])
    b.add(second[0], **second[1])
    state = assert_confluent(b.events)
    expected = (S.CANCELLED, "changed my mind") if cancel_first else (status, reason)
    assert (state.status, state.failure_reason) == expected


def test_endings_at_the_same_instant_are_ordered_by_event_id() -> None:
    b = Story()
    _awaiting(b)
    at = b.clock + timedelta(minutes=1)
    b.add(ev.BookingCancellationRequested, at=at, reason="changed my mind")
    b.add(ev.ProviderRejected, at=at)
    state = assert_confluent(b.events)
    first = min(b.events[-2:], key=lambda e: e.event_id)
    expected = S.CANCELLED if isinstance(first, ev.BookingCancellationRequested) else S.REJECTED
    assert state.status == expected


@pytest.mark.parametrize("reverse", [False, True], ids=["failed-first", "authorized-first"])
def test_a_late_authorization_after_a_failed_payment_fails_the_booking_and_is_voided(
    reverse: bool,
) -> None:
    b = RACES["payment-failed-vs-late-authorization"].story(reverse)
    state = assert_confluent(b.events)
    assert (state.status, state.payment) == (S.FAILED, P.AUTHORIZED)
    assert state.failure_reason == "payment failed: card declined"
    assert compensate(b) == compensations("failed", VoidPayment(reason="failed"))


def test_a_cancel_that_raced_the_capture_is_refunded_in_full_whatever_the_policy() -> None:
    # The customer cancelled before the booking was confirmed; the capture was already on its
    # way. The refund policy is for cancelling a confirmed booking, so it does not apply.
    b = RACES["cancel-vs-capture"].story()
    state = assert_confluent(b.events)
    assert (state.status, state.payment) == (S.CANCELLED, P.CAPTURED)
    assert next_actions("payment", state, b.clock, Policy(refund_policy="none")) == [
        RefundPayment(amount=PRICE)
    ]


def test_a_cancel_after_the_capture_follows_the_refund_policy() -> None:
    b = RACES["cancel-vs-capture"].story(reverse=True)
    state = assert_confluent(b.events)
    assert (state.status, state.payment) == (S.CANCELLED, P.CAPTURED)
    assert next_actions("payment", state, b.clock, Policy(refund_policy="none")) == []
    assert next_actions("payment", state, b.clock, Policy(refund_policy="full")) == [
        RefundPayment(amount=PRICE)
    ]


@pytest.mark.parametrize("refund_policy", ["full", "none"])
def test_money_captured_for_a_booking_that_ended_otherwise_is_refunded(refund_policy: str) -> None:
    # A capture failure recorded next to a capture that went through: the booking failed, so the
    # customer gets the money back whatever the cancellation policy says.
    b = RACES["capture-failed-vs-captured"].story()
    policy = Policy(refund_policy="full" if refund_policy == "full" else "none")
    state = assert_confluent(b.events)
    assert (state.status, state.payment) == (S.FAILED, P.CAPTURED)
    assert compensate(b, policy) == compensations("failed", RefundPayment(amount=PRICE))


def test_an_accept_then_a_timeout_ends_the_wait_either_way() -> None:
    # Both ended the wait; an ending is never taken back, so the timeout stands and the
    # authorization is voided rather than captured.
    b = RACES["accepted-vs-timed-out"].story()
    state = assert_confluent(b.events)
    assert (state.status, state.provider_outcome) == (S.EXPIRED, "timed_out")
    assert next_actions("payment", state, b.clock) == [VoidPayment(reason="expired")]


def test_the_earliest_answer_and_the_earliest_deadline_count() -> None:
    b = RACES["two-answers"].story()
    state = assert_confluent(b.events)
    assert (state.provider_answer, state.provider_answer_reason) == ("reject", "away")
    b = RACES["two-deadlines"].story()
    state = assert_confluent(b.events)
    assert state.provider_deadline_at == b.deadline
