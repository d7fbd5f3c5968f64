"""The invariant checker (ops.invariants) on hand-made evidence: it passes a correct saga and
reports exactly the rule each broken piece of evidence breaks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.projection import booking_row
from erynoa import events as ev
from erynoa import saga
from erynoa.events import Money
from erynoa.saga import fold_log
from erynoa.settings import Settings
from erynoa.topics import load_catalog
from ops.invariants.evidence import (
    ClientRequest,
    Delivery,
    Evidence,
    LedgerRow,
    Parked,
    PaymentIntent,
    Received,
    Slot,
    Violation,
)
from ops.invariants.gather import agent_views
from ops.invariants.rules import agent_log, evaluate
from tests.builders import booking_requested

B = "3b9f1a52-8c0e-4d7b-9b1e-2f6a1c0d9e11"
B2 = "3b9f1a52-8c0e-4d7b-9b1e-2f6a1c0d9e22"
SERVICE = "7d1e2f3a-0000-4000-8000-000000000001"
SLOT = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DEADLINE = T0 + timedelta(hours=1)
PRICE = Money(4500, "EUR")
AGENTS = agent_views(load_catalog(Settings().topics_file))


class Story:
    """Events of one booking at increasing times (or the time given), as the agents emit them."""

    def __init__(
        self, booking_id: str = B, idempotency_key: str | None = None, customer: str = "alice"
    ) -> None:
        self.booking_id = booking_id
        self.clock = T0
        self.requested = booking_requested(
            booking_id=booking_id,
            occurred_at=T0,
            customer_id=customer,
            service_id=SERVICE,
            slot_start=SLOT,
            price=PRICE,
            response_deadline_seconds=3600,
            idempotency_key=idempotency_key,
        )
        self.events: list[ev.BookingEvent] = [self.requested]

    def add(
        self, cls: type[ev.BookingEvent], producer: str, at: datetime | None = None, **fields: Any
    ) -> Story:
        self.clock = at if at is not None else self.clock + timedelta(seconds=1)
        self.events.append(
            ev.make(cls, cause=self.requested, producer=producer, occurred_at=self.clock, **fields)
        )
        return self

    def notified(self, template: str, channel: str = "email") -> Story:
        role = "provider" if template == saga.PROVIDER_REQUEST else "customer"
        return self.add(
            ev.NotificationSent,
            "notification",
            notification_id=f"n-{template}",
            recipient_role=role,
            channel=channel,
            template=template,
        )

    def held(self, hold_id: str = "h1") -> Story:
        return self.add(
            ev.ReservationHeld, "reservation", hold_id=hold_id, service_id=SERVICE, slot_start=SLOT
        )

    def until_awaiting_provider(self) -> Story:
        self.held()
        self.add(
            ev.PaymentAuthorized, "payment", payment_id="pi_1", amount=PRICE, gateway="sandbox"
        )
        self.add(
            ev.ProviderResponseRequested,
            "provider-response",
            provider_id="bob",
            deadline_at=DEADLINE,
        )
        return self.notified(saga.PROVIDER_REQUEST)

    def answered(self, decision: str = "accept", at: datetime | None = None) -> Story:
        return self.add(
            ev.ProviderAnswerSubmitted, "api", at=at, provider_id="bob", decision=decision
        )

    def confirmed(self) -> Story:
        self.until_awaiting_provider()
        self.answered()
        self.add(ev.ProviderAccepted, "provider-response", provider_id="bob")
        self.add(ev.PaymentCaptured, "payment", payment_id="pi_1", amount=PRICE)
        self.add(ev.ReservationConverted, "reservation", hold_id="h1")
        return self.notified("customer_confirmed")

    def cancelled(self, at: datetime | None = None) -> Story:
        return self.add(
            ev.BookingCancellationRequested,
            "api",
            at=at,
            requested_by="alice",
            requested_by_role="customer",
        )

    def voided_and_released(self, outcome: str) -> Story:
        self.add(ev.PaymentVoided, "payment", payment_id="pi_1")
        self.add(ev.ReservationReleased, "reservation", hold_id="h1", reason=outcome)
        return self.notified(f"customer_{outcome}")


# A ledger operation and its outcome.
AUTHORIZED = ("authorize", "authorized")
CAPTURED = ("capture", "captured")
VOIDED = ("void", "voided")
REFUNDED = ("refund", "refunded")


def ledger(*ops: tuple[str, str], booking_id: str = B) -> list[LedgerRow]:
    return [LedgerRow(booking_id, "pi_1", op, outcome, PRICE.amount_minor) for op, outcome in ops]


def row_of(state: saga.BookingState) -> dict[str, Any]:
    """The read model's row as the materializer writes it."""
    return booking_row(state, (state.updated_at, "last-event"))


def consistent(
    logs: dict[str, list[ev.BookingEvent]],
    ledger_rows: list[LedgerRow],
    holds: dict[str, str],
    slots: list[Slot],
    deliveries: list[Delivery],
    requests: Sequence[ClientRequest] = (),
) -> Evidence:
    """Evidence whose derived parts (read model, agents' states and processed events, received
    mail) agree with ``logs``, as a correct system leaves them."""
    evidence = Evidence(
        events=logs,
        ledger={},
        holds=holds,
        slots=slots,
        deliveries=deliveries,
        received=[
            Received(d.booking_id, d.template, d.channel, f"<{d.notification_id}@erynoa>")
            for d in deliveries
        ],
        agents=AGENTS,
        parked=[],
        requests=list(requests),
    )
    for row in ledger_rows:
        evidence.ledger.setdefault(row.booking_id, []).append(row)
    for b, log in logs.items():
        state = fold_log(log)
        assert state is not None
        evidence.read_model[b] = row_of(state)
        for agent, view in AGENTS.items():
            mine = fold_log(agent_log(agent, view.consumes, log))
            assert mine is not None
            evidence.agent_states.setdefault(agent, {})[b] = mine
            evidence.processed.setdefault(agent, set()).update(
                e.event_id for e in log if e.event_type in view.consumes
            )
    return evidence


def created(booking_id: str = B, request_key: str = "r1") -> ClientRequest:
    return ClientRequest(
        "create",
        request_key,
        "acknowledged",
        T0,
        booking_id=booking_id,
        customer_id="alice",
        service_id=SERVICE,
        slot_start=SLOT,
    )


def happy() -> Evidence:
    return consistent(
        {B: Story().confirmed().events},
        ledger(AUTHORIZED, CAPTURED),
        {B: "converted"},
        [Slot(SERVICE, SLOT, capacity=2, held=0, confirmed=1)],
        [
            Delivery(B, "n-provider_request", "email", "provider_request"),
            Delivery(B, "n-customer_confirmed", "email", "customer_confirmed"),
        ],
        [created(), ClientRequest("accept", "r2", "acknowledged", T0 + timedelta(seconds=6), B)],
    )


def ended(story: Story, outcome: str, rows: list[LedgerRow]) -> Evidence:
    """A booking that ended without going ahead, everything compensated."""
    return consistent(
        {B: story.events},
        rows,
        {B: "released"},
        [Slot(SERVICE, SLOT, 2, 0, 0)],
        [
            Delivery(B, "n-provider_request", "email", "provider_request"),
            Delivery(B, f"n-customer_{outcome}", "email", f"customer_{outcome}"),
        ],
        [created()],
    )


def rejected() -> Evidence:
    story = Story().until_awaiting_provider().answered("reject")
    story.add(ev.ProviderRejected, "provider-response", provider_id="bob")
    story.voided_and_released("rejected")
    return ended(story, "rejected", ledger(AUTHORIZED, VOIDED))


NOW = T0 + timedelta(minutes=5)


def check(evidence: Evidence, now: datetime = NOW, **kw: Any) -> list[Violation]:
    return evaluate(evidence, [B], now, **kw)


def rules(violations: list[Violation]) -> set[int]:
    return {v.rule for v in violations}


def test_a_correct_saga_has_no_violation() -> None:
    assert check(happy()) == []
    assert check(rejected()) == []


# --- 1 -----------------------------------------------------------------------------------


def awaiting() -> Evidence:
    return consistent(
        {B: Story().until_awaiting_provider().events},
        ledger(AUTHORIZED),
        {B: "held"},
        [Slot(SERVICE, SLOT, 2, 1, 0)],
        [Delivery(B, "n-provider_request", "email", "provider_request")],
    )


def test_1_a_booking_stuck_past_its_deadline() -> None:
    assert check(awaiting()) == []  # still waiting in time
    late = check(awaiting(), now=DEADLINE + timedelta(minutes=1))
    assert rules(late) == {1}
    assert "stuck in awaiting_provider" in late[0].message


def test_1_a_booking_that_never_got_anywhere() -> None:
    evidence = consistent({B: Story().events}, [], {}, [], [])
    assert rules(check(evidence, now=T0 + timedelta(seconds=30))) == {1}


def test_1_payment_action_required_waits_only_until_its_timeout() -> None:
    story = Story().held()
    story.add(ev.PaymentActionRequired, "payment", payment_id="pi_1", client_secret=None)
    evidence = consistent(
        {B: story.events},
        ledger(("authorize", "action_required")),
        {B: "held"},
        [Slot(SERVICE, SLOT, 2, 1, 0)],
        [],
    )
    timeout = saga.Policy().payment_action_timeout
    assert check(evidence, now=T0 + timeout - timedelta(minutes=1)) == []
    late = check(evidence, now=T0 + timeout + timedelta(seconds=30))
    assert rules(late) == {1}
    assert "payment action expired" in late[0].message


def test_1_a_booking_missing_from_the_log() -> None:
    evidence = happy()
    evidence.events.pop(B)
    evidence.slots = []
    evidence.requests = []
    assert rules(check(evidence)) == {1}


# --- 2 -----------------------------------------------------------------------------------


def two_bookings(second_held_at: datetime) -> Evidence:
    """B held then released (rejected); B2 holds the same slot at ``second_held_at``."""
    first = rejected()
    second = Story(B2, customer="carol").add(
        ev.ReservationHeld,
        "reservation",
        at=second_held_at,
        hold_id="h2",
        service_id=SERVICE,
        slot_start=SLOT,
    )
    first.events[B2] = second.events
    first.holds[B2] = "held"
    first.slots = [Slot(SERVICE, SLOT, capacity=1, held=1, confirmed=0)]
    return first


def test_2_a_seat_taken_after_it_was_released_is_fine() -> None:
    released_at = next(e for e in rejected().events[B] if isinstance(e, ev.ReservationReleased))
    evidence = two_bookings(released_at.occurred_at + timedelta(seconds=1))
    assert rules(check(evidence)) == set()


def test_2_more_seats_in_use_than_the_slot_has() -> None:
    """The counters end right (one held), but in between two bookings held the only seat."""
    evidence = two_bookings(T0 + timedelta(seconds=3))
    violations = check(evidence)
    assert rules(violations) == {2}
    assert "2 seats in use from" in violations[0].message


def test_2_a_seat_retaken_by_another_process_within_the_clock_tolerance_is_fine() -> None:
    """Stamped when each handler started, not when it won the slot's row lock."""
    released_at = next(e for e in rejected().events[B] if isinstance(e, ev.ReservationReleased))
    close = two_bookings(released_at.occurred_at - timedelta(milliseconds=300))
    assert rules(check(close)) == set()
    apart = two_bookings(released_at.occurred_at - timedelta(seconds=2))
    assert rules(check(apart)) == {2}


def test_2_an_overbooking_that_lasts_to_the_end_of_the_log() -> None:
    evidence = two_bookings(T0 + timedelta(seconds=3))
    evidence.events[B] = [
        e for e in evidence.events[B] if not isinstance(e, ev.ReservationReleased)
    ]
    assert 2 in rules(check(evidence))


def test_2_one_booking_holding_two_seats() -> None:
    evidence = happy()
    evidence.events[B].append(
        replace(
            next(e for e in evidence.events[B] if isinstance(e, ev.ReservationHeld)),
            event_id="another-hold",
            hold_id="h9",
        )
    )
    assert 2 in rules(check(evidence))


def test_2_counters_that_do_not_match_the_log() -> None:
    evidence = happy()
    evidence.slots = [Slot(SERVICE, SLOT, capacity=3, held=1, confirmed=1)]
    assert rules(check(evidence)) == {2}


# --- 3 -----------------------------------------------------------------------------------


def test_3_an_authorization_left_behind_by_a_terminal_booking() -> None:
    story = Story().held()
    story.add(ev.PaymentAuthorized, "payment", payment_id="pi_1", amount=PRICE, gateway="sandbox")
    story.cancelled()
    story.voided_and_released("cancelled")
    evidence = ended(story, "cancelled", ledger(AUTHORIZED, VOIDED))
    evidence.deliveries = evidence.deliveries[1:]
    evidence.received = evidence.received[1:] if evidence.received else []
    assert check(evidence) == []
    evidence.ledger[B] = ledger(AUTHORIZED)  # the void never reached it
    assert rules(check(evidence)) == {3}


def cancelled_after_confirmation() -> Evidence:
    story = Story().confirmed().cancelled()
    story.add(ev.PaymentRefunded, "payment", payment_id="pi_1", refund_id="re_1", amount=PRICE)
    story.add(ev.ReservationReleased, "reservation", hold_id="h1", reason="cancelled")
    story.notified("customer_cancelled")
    return consistent(
        {B: story.events},
        ledger(AUTHORIZED, CAPTURED, REFUNDED),
        {B: "released"},
        [Slot(SERVICE, SLOT, 2, 0, 0)],
        [
            Delivery(B, "n-provider_request", "email", "provider_request"),
            Delivery(B, "n-customer_confirmed", "email", "customer_confirmed"),
            Delivery(B, "n-customer_cancelled", "email", "customer_cancelled"),
        ],
    )


def test_3_refunded_after_a_cancel_of_a_confirmed_booking_is_fine() -> None:
    assert check(cancelled_after_confirmation()) == []


# name: (the booking, its ledger, what the checker says)
LEDGER_DISAGREES: dict[str, tuple[Callable[[], Evidence], list[LedgerRow], str]] = {
    "captured twice": (happy, ledger(AUTHORIZED, CAPTURED, CAPTURED), "captured 2 times"),
    "authorized twice": (
        happy,
        [*ledger(AUTHORIZED, CAPTURED), LedgerRow(B, "pi_2", "authorize", "authorized", 4500)],
        "authorized 2 times",
    ),
    "confirmed without a capture": (happy, ledger(AUTHORIZED), "confirmed but captured 0 times"),
    "captured another amount than the price": (
        happy,
        [*ledger(AUTHORIZED), LedgerRow(B, "pi_1", "capture", "captured", 450)],
        "confirmed for 4500 but captured 450",
    ),
    "captured for a booking that did not happen": (
        rejected,
        ledger(AUTHORIZED, CAPTURED),
        "captured but rejected and not refunded",
    ),
    "a refund without a capture": (
        rejected,
        ledger(AUTHORIZED, VOIDED, REFUNDED),
        "refunded without a capture",
    ),
    "refunded twice": (
        cancelled_after_confirmation,
        ledger(AUTHORIZED, CAPTURED, REFUNDED, REFUNDED),
        "refunded 2 times",
    ),
    "the log says refunded but the gateway kept the money": (
        cancelled_after_confirmation,
        ledger(AUTHORIZED, CAPTURED),
        "the gateway refunded nothing",
    ),
}


@pytest.mark.parametrize("case", LEDGER_DISAGREES)
def test_3_a_gateway_ledger_that_disagrees_with_the_log(case: str) -> None:
    story, rows, says = LEDGER_DISAGREES[case]
    evidence = story()
    evidence.ledger[B] = rows
    violations = check(evidence)
    assert rules(violations) == {3}
    assert any(says in v.message for v in violations)


def stripe(evidence: Evidence, *intents: PaymentIntent) -> Evidence:
    evidence.events[B] = [
        replace(e, gateway="stripe") if isinstance(e, ev.PaymentAuthorized) else e
        for e in evidence.events[B]
    ]
    evidence.ledger = {}
    evidence.intents = {B: list(intents)}
    return evidence


def test_3_stripe_a_confirmed_booking_captured_once() -> None:
    captured = PaymentIntent(B, "pi_1", "succeeded", 4500, amount_received=4500)
    assert check(stripe(happy(), captured)) == []
    uncaptured = PaymentIntent(B, "pi_1", "requires_capture", 4500, amount_capturable=4500)
    assert rules(check(stripe(happy(), uncaptured))) == {3}


def test_3_stripe_two_payment_intents_charged() -> None:
    first = PaymentIntent(B, "pi_1", "succeeded", 4500, amount_received=4500)
    second = PaymentIntent(B, "pi_2", "succeeded", 4500, amount_received=4500)
    violations = check(stripe(happy(), first, second))
    assert rules(violations) == {3}
    assert any("captured 2 times" in v.message for v in violations)


def test_3_stripe_an_intent_the_log_never_heard_of_left_open() -> None:
    """An authorization whose answer was lost: Stripe holds it, nothing voids it."""
    voided = PaymentIntent(B, "pi_1", "canceled", 4500)
    assert check(stripe(rejected(), voided)) == []
    lost = PaymentIntent(B, "pi_lost", "requires_capture", 4500, amount_capturable=4500)
    assert rules(check(stripe(rejected(), voided, lost))) == {3}


def test_3_stripe_not_gathered_judges_nothing() -> None:
    evidence = stripe(happy())
    evidence.intents = None
    assert check(evidence) == []


# --- 4 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("story", "hold", "says"),
    [
        pytest.param(
            rejected,
            "held",
            "rejected but its hold is still held",
            id="a terminal booking still holding its seat",
        ),
        pytest.param(
            happy,
            "released",
            "confirmed but its hold is released",
            id="a confirmed booking whose hold was not converted",
        ),
    ],
)
def test_4_a_hold_that_disagrees_with_how_the_booking_ended(
    story: Callable[[], Evidence], hold: str, says: str
) -> None:
    evidence = story()
    evidence.holds[B] = hold
    violations = check(evidence)
    assert rules(violations) == {4}
    assert says in violations[0].message


def test_4_the_log_never_released_the_hold_of_a_terminal_booking() -> None:
    evidence = rejected()
    evidence.events[B] = [
        e for e in evidence.events[B] if not isinstance(e, ev.ReservationReleased)
    ]
    # Everything else follows the log (the counters, the agents, the read model) but rule 4.
    evidence = consistent(
        evidence.events,
        evidence.ledger[B],
        evidence.holds,
        [Slot(SERVICE, SLOT, 2, 1, 0)],
        evidence.deliveries,
    )
    assert rules(check(evidence, now=T0 + timedelta(minutes=1))) == {4}
    # Left like that, the saga needs an operator: the hold is never given back.
    assert rules(check(evidence, now=T0 + timedelta(minutes=10))) == {4, 9}


# --- 5 -----------------------------------------------------------------------------------


def test_5_a_notification_recorded_twice() -> None:
    evidence = happy()
    log = evidence.events[B]
    evidence = consistent(
        {B: [*log, replace(log[-1], event_id="another-id")]},  # same template, new id
        evidence.ledger[B],
        evidence.holds,
        evidence.slots,
        evidence.deliveries,
    )
    assert rules(check(evidence)) == {5}


def test_5_a_notification_received_twice() -> None:
    evidence = happy()
    assert evidence.received is not None
    copy = evidence.received[1]
    evidence.received.append(copy)  # a copy after a crash: the same Message-ID, one in effect
    assert check(evidence) == []
    evidence.received.append(replace(copy, message_id="<another@erynoa>"))
    violations = check(evidence)
    assert rules(violations) == {5}
    assert "received 2 times" in violations[0].message


def test_5_a_notification_recorded_as_delivered_but_never_received() -> None:
    evidence = happy()
    assert evidence.received is not None
    evidence.received = evidence.received[:1]
    assert rules(check(evidence)) == {5}


def test_5_a_customer_never_told_the_outcome() -> None:
    evidence = happy()
    evidence = consistent(
        {B: evidence.events[B][:-1]},
        evidence.ledger[B],
        evidence.holds,
        evidence.slots,
        evidence.deliveries[:1],
    )
    assert rules(check(evidence, now=T0 + timedelta(minutes=1))) == {5}


def test_5_a_provider_the_saga_outran_need_not_be_asked() -> None:
    """The notification agent lagged past the whole wait: a stale request is rightly skipped."""
    evidence = happy()
    evidence = consistent(
        {
            B: [
                e
                for e in evidence.events[B]
                if not (isinstance(e, ev.NotificationSent) and e.template == saga.PROVIDER_REQUEST)
            ]
        },
        evidence.ledger[B],
        evidence.holds,
        evidence.slots,
        evidence.deliveries[1:],
    )
    assert check(evidence) == []


# --- 6 -----------------------------------------------------------------------------------


def test_6_the_read_model_disagrees_with_the_log() -> None:
    evidence = happy()
    evidence.read_model[B]["status"] = "awaiting_provider"
    assert rules(check(evidence)) == {6}


def test_6_the_read_models_state_disagrees_with_the_log() -> None:
    evidence = happy()
    evidence.read_model[B]["state"]["hold"] = "held"
    violations = check(evidence)
    assert rules(violations) == {6}
    assert "state.hold held (log: converted)" in violations[0].message


def test_6_a_booking_missing_from_the_read_model() -> None:
    evidence = happy()
    evidence.read_model.pop(B)
    assert rules(check(evidence)) == {6}


def test_6_without_a_materializer_only_the_rows_it_folded_are_judged() -> None:
    evidence = happy()
    evidence.materializer = False
    evidence.read_model.pop(B)
    assert check(evidence) == []
    evidence.read_model[B] = {**row_of(fold_log(happy().events[B])), "status": "reserved"}  # type: ignore[arg-type]
    assert rules(check(evidence)) == {6}


def test_6_an_agent_whose_state_is_behind_the_log() -> None:
    evidence = happy()
    state = evidence.agent_states["reservation"][B]
    evidence.agent_states["reservation"][B] = replace(state, hold=saga.Hold.HELD)
    violations = check(evidence)
    assert rules(violations) == {6}
    assert "agent reservation" in violations[0].message


def test_6_an_agent_that_never_saw_the_booking() -> None:
    evidence = happy()
    evidence.agent_states["payment"].pop(B)
    assert rules(check(evidence)) == {6}


# --- 7 -----------------------------------------------------------------------------------


def captured_event(evidence: Evidence) -> ev.BookingEvent:
    return next(e for e in evidence.events[B] if isinstance(e, ev.PaymentCaptured))


def test_7_an_event_an_agent_never_processed() -> None:
    evidence = happy()
    evidence.processed["notification"].discard(captured_event(evidence).event_id)
    violations = check(evidence)
    assert rules(violations) == {7}
    assert "neither processed by notification" in violations[0].message


def test_7_an_unprocessed_event_parked_for_an_operator_is_not_lost() -> None:
    evidence = happy()
    event = captured_event(evidence)
    evidence.processed["notification"].discard(event.event_id)
    evidence.parked = [
        Parked("notification", event.event_id, B, event.event_type, "ValueError", "permanent")
    ]
    assert check(evidence) == []


def test_7_an_event_in_the_topics_missing_from_the_read_models_log() -> None:
    evidence = happy()
    evidence.materialized = {e.event_id for e in evidence.events[B]}
    assert check(evidence) == []
    evidence.materialized.discard(captured_event(evidence).event_id)
    assert rules(check(evidence)) == {7}


# --- 8 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "told",
    [
        created(B2, "r9"),
        ClientRequest("reject", "r7", "acknowledged", T0, B),
        ClientRequest("cancel", "r3", "acknowledged", NOW, B),
        ClientRequest("webhook", "evt_1", "acknowledged", T0, B),
    ],
    ids=lambda told: told.kind,
)
def test_8_an_acknowledged_request_that_took_no_effect(told: ClientRequest) -> None:
    evidence = happy()
    evidence.requests.append(told)
    violations = check(evidence)
    assert rules(violations) == {8}
    assert violations[0].subject == told.booking_id
    assert violations[0].message.startswith(f"acknowledged {told.kind} ")


def test_8_a_duplicate_booking_from_one_create_request() -> None:
    """A retry after a '503 nothing changed' that had in fact created the booking."""
    evidence = happy()
    duplicate = Story(B2).events
    evidence = consistent(
        {B: evidence.events[B], B2: duplicate},
        evidence.ledger[B],
        evidence.holds,
        evidence.slots,
        evidence.deliveries,
        [
            created(B, "r1"),
            ClientRequest(
                "create", "r1", "refused", T0, None, "alice", SERVICE, SLOT
            ),  # the first try, told nothing changed
        ],
    )
    violations = evaluate(evidence, [B], NOW)
    assert rules(violations) == {8}
    assert "2 bookings of alice" in violations[0].message
    # A booking of the same seat from before the client's request is not its duplicate.
    evidence.requests = [replace(r, sent_at=T0 + timedelta(seconds=1)) for r in evidence.requests]
    later = replace(evidence.events[B][0], occurred_at=T0 + timedelta(milliseconds=1500))
    evidence.events[B] = [later, *evidence.events[B][1:]]
    evidence.read_model[B] = row_of(fold_log(evidence.events[B]))  # type: ignore[arg-type]
    assert rules(evaluate(evidence, [B], NOW)) == set()
    # Two create requests (two seats wanted): two bookings are right.
    evidence.requests = [created(B, "r1"), created(B2, "r2")]
    assert rules(evaluate(evidence, [B], NOW)) == set()


def expired_despite(answer_at: datetime) -> Evidence:
    story = Story().until_awaiting_provider().answered("accept", at=answer_at)
    story.add(
        ev.ProviderTimedOut,
        "provider-response",
        at=DEADLINE + timedelta(seconds=1),
        deadline_at=DEADLINE,
    )
    story.voided_and_released("expired")
    evidence = ended(story, "expired", ledger(AUTHORIZED, VOIDED))
    evidence.requests.append(ClientRequest("accept", "r2", "acknowledged", answer_at, B))
    return evidence


def test_8_an_accept_given_before_the_deadline_lost_to_the_timeout() -> None:
    late = check(
        expired_despite(DEADLINE + timedelta(minutes=1)), now=DEADLINE + timedelta(minutes=5)
    )
    assert late == []
    in_time = expired_despite(DEADLINE - timedelta(minutes=10))
    violations = check(in_time, now=DEADLINE + timedelta(minutes=5))
    assert rules(violations) == {8}
    assert "before the deadline" in violations[0].message


def test_8_an_accept_taken_before_the_deadline_but_acknowledged_after_it_still_counts() -> None:
    # The COMMIT (and so the 202) ended after the deadline; PostgreSQL took the answer before.
    evidence = expired_despite(DEADLINE - timedelta(seconds=1))
    evidence.requests[-1] = replace(evidence.requests[-1], at=DEADLINE + timedelta(seconds=2))
    violations = check(evidence, now=DEADLINE + timedelta(minutes=5))
    assert rules(violations) == {8}
    assert "before the deadline" in violations[0].message


def test_8_a_cancel_acknowledged_while_waiting_that_ended_expired() -> None:
    story = Story().until_awaiting_provider()
    story.add(ev.ProviderTimedOut, "provider-response", at=DEADLINE, deadline_at=DEADLINE)
    story.cancelled(at=DEADLINE + timedelta(seconds=1))  # published late, after its 202
    story.voided_and_released("expired")
    evidence = ended(story, "expired", ledger(AUTHORIZED, VOIDED))
    later = DEADLINE + timedelta(minutes=5)
    evidence.requests.append(
        ClientRequest("cancel", "r3", "acknowledged", DEADLINE + timedelta(seconds=2), B)
    )
    assert check(evidence, now=later) == []  # it had ended before the cancel was acknowledged
    evidence.requests[-1] = replace(evidence.requests[-1], at=T0 + timedelta(minutes=10))
    violations = check(evidence, now=later)
    assert rules(violations) == {8}
    assert "while awaiting_provider, but it ended expired" in violations[0].message


def test_8_requests_refused_or_unanswered_are_not_judged_by_their_effect() -> None:
    evidence = happy()
    evidence.requests += [
        ClientRequest("cancel", "r4", "refused", NOW, B),
        ClientRequest("cancel", "r5", "unknown", NOW, B),
    ]
    assert check(evidence) == []


# --- 9 -----------------------------------------------------------------------------------


def test_9_a_message_parked_by_an_outage() -> None:
    evidence = happy()
    event = captured_event(evidence)
    evidence.parked = [
        Parked(
            "reservation",
            event.event_id,
            B,
            event.event_type,
            "ConnectionRefusedError",
            "retryable",
        )
    ]
    violations = check(evidence)
    assert rules(violations) == {9}
    assert "outage-class" in violations[0].message


def test_9_a_saga_with_work_pending_long_after_its_last_event() -> None:
    story = Story().held()
    evidence = consistent({B: story.events}, [], {B: "held"}, [Slot(SERVICE, SLOT, 2, 1, 0)], [])
    assert rules(check(evidence, now=T0 + timedelta(seconds=30))) == {1}  # not settled, not stuck
    violations = check(evidence, now=T0 + timedelta(minutes=10))
    assert rules(violations) == {1, 9}
    assert "payment has AuthorizePayment pending" in next(
        v.message for v in violations if v.rule == 9
    )


def test_9_a_provider_deadline_is_a_wait_not_a_stall() -> None:
    assert check(awaiting(), now=DEADLINE - timedelta(minutes=1)) == []


@pytest.mark.parametrize("violation", [Violation(3, B, "captured twice")])
def test_violations_read_as_sentences(violation: Violation) -> None:
    assert str(violation) == f"invariant 3 [{B}]: captured twice"
