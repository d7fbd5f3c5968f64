"""The invariant checker (tests/invariants.py) on hand-made evidence: it passes a correct saga
and catches each rule being broken."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from erynoa import events as ev
from erynoa import saga
from erynoa.events import Money
from erynoa.invariants import Delivery, Evidence, LedgerRow, Slot, Violation, evaluate

B = "3b9f1a52-8c0e-4d7b-9b1e-2f6a1c0d9e11"
SERVICE = "7d1e2f3a-0000-4000-8000-000000000001"
SLOT = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PRICE = Money(4500, "EUR")


class Story:
    """Events of one booking with increasing times, as the agents would emit them."""

    def __init__(self) -> None:
        self.events: list[ev.BookingEvent] = []
        self.requested = ev.make(
            ev.BookingRequested,
            booking_id=B,
            producer="api",
            occurred_at=T0,
            customer_id="alice",
            service_id=SERVICE,
            provider_id="bob",
            slot_start=SLOT,
            slot_end=SLOT + timedelta(hours=1),
            price=PRICE,
            payment_method="pm_card_visa",
            response_deadline_seconds=3600,
        )
        self.events.append(self.requested)

    def add(self, cls: type[ev.BookingEvent], producer: str, **fields: Any) -> Story:
        at = T0 + timedelta(seconds=len(self.events))
        self.events.append(
            ev.make(cls, cause=self.requested, producer=producer, occurred_at=at, **fields)
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

    def until_awaiting_provider(self) -> Story:
        self.add(
            ev.ReservationHeld, "reservation", hold_id="h1", service_id=SERVICE, slot_start=SLOT
        )
        self.add(
            ev.PaymentAuthorized, "payment", payment_id="pi_1", amount=PRICE, gateway="sandbox"
        )
        self.add(
            ev.ProviderResponseRequested,
            "provider-response",
            provider_id="bob",
            deadline_at=T0 + timedelta(hours=1),
        )
        return self.notified(saga.PROVIDER_REQUEST)

    def confirmed(self) -> Story:
        self.until_awaiting_provider()
        self.add(ev.ProviderAccepted, "provider-response", provider_id="bob")
        self.add(ev.PaymentCaptured, "payment", payment_id="pi_1", amount=PRICE)
        self.add(ev.ReservationConverted, "reservation", hold_id="h1")
        return self.notified("customer_confirmed")


def ledger(*ops: tuple[str, str]) -> list[LedgerRow]:
    return [LedgerRow(B, "pi_1", op, outcome, PRICE.amount_minor) for op, outcome in ops]


def happy() -> Evidence:
    return Evidence(
        events={B: Story().confirmed().events},
        read_model={B: {"status": "confirmed", "hold": "converted", "payment": "captured"}},
        ledger={B: ledger(("authorize", "authorized"), ("capture", "captured"))},
        holds={B: "converted"},
        slots=[
            Slot(SERVICE, SLOT, capacity=2, held=0, confirmed=1, holds_held=0, holds_converted=1)
        ],
        deliveries=[
            Delivery(B, "n-provider_request", "email", "provider_request"),
            Delivery(B, "n-customer_confirmed", "email", "customer_confirmed"),
        ],
    )


def check(evidence: Evidence, now: datetime = T0 + timedelta(minutes=5)) -> list[Violation]:
    return evaluate(evidence, [B], now)


def rules(violations: list[Violation]) -> set[int]:
    return {v.rule for v in violations}


def test_a_correct_saga_has_no_violation() -> None:
    assert check(happy()) == []


def test_1_a_booking_stuck_past_its_deadline() -> None:
    evidence = happy()
    evidence.events[B] = Story().until_awaiting_provider().events
    evidence.read_model[B]["status"] = "awaiting_provider"
    evidence.ledger[B] = ledger(("authorize", "authorized"))
    evidence.holds[B] = "held"
    evidence.slots = [Slot(SERVICE, SLOT, 2, 1, 0, 1, 0)]
    assert check(evidence, now=T0 + timedelta(minutes=5)) == []  # still waiting in time
    late = check(evidence, now=T0 + timedelta(hours=2))
    assert rules(late) == {1}
    assert "stuck in awaiting_provider" in late[0].message


def test_1_a_booking_that_never_got_anywhere() -> None:
    evidence = happy()
    evidence.events[B] = Story().events
    evidence.read_model.pop(B)
    evidence.ledger.pop(B)
    evidence.holds.pop(B)
    evidence.slots = []
    evidence.deliveries = []
    assert rules(check(evidence)) == {1}


def test_1_the_read_model_disagrees_with_the_log() -> None:
    evidence = happy()
    evidence.read_model[B]["status"] = "awaiting_provider"
    assert rules(check(evidence)) == {1}


def test_2_more_seats_taken_than_the_slot_has() -> None:
    evidence = happy()
    evidence.slots = [
        Slot(SERVICE, SLOT, capacity=1, held=1, confirmed=1, holds_held=1, holds_converted=1)
    ]
    assert rules(check(evidence)) == {2}


def test_2_counts_that_do_not_match_the_holds() -> None:
    evidence = happy()
    evidence.slots = [
        Slot(SERVICE, SLOT, capacity=3, held=1, confirmed=1, holds_held=0, holds_converted=1)
    ]
    assert rules(check(evidence)) == {2}


def test_3_captured_twice() -> None:
    evidence = happy()
    evidence.ledger[B] = ledger(
        ("authorize", "authorized"), ("capture", "captured"), ("capture", "captured")
    )
    assert rules(check(evidence)) == {3}


def test_3_confirmed_without_a_capture() -> None:
    evidence = happy()
    evidence.ledger[B] = ledger(("authorize", "authorized"))
    assert rules(check(evidence)) == {3}


def test_3_captured_for_a_booking_that_did_not_happen() -> None:
    story = Story().until_awaiting_provider()
    story.add(ev.ProviderRejected, "provider-response", provider_id="bob")
    story.add(ev.PaymentVoided, "payment", payment_id="pi_1")
    story.add(ev.ReservationReleased, "reservation", hold_id="h1", reason="rejected")
    story.notified("customer_rejected")
    evidence = replace(
        happy(),
        events={B: story.events},
        read_model={B: {"status": "rejected"}},
        ledger={B: ledger(("authorize", "authorized"), ("void", "voided"))},
        holds={B: "released"},
        slots=[Slot(SERVICE, SLOT, 2, 0, 0, 0, 0)],
    )
    assert check(evidence) == []
    evidence.ledger[B] = ledger(("authorize", "authorized"), ("capture", "captured"))
    assert rules(check(evidence)) == {3}


def test_3_an_authorization_left_behind_by_a_terminal_booking() -> None:
    story = Story()
    story.add(ev.ReservationHeld, "reservation", hold_id="h1", service_id=SERVICE, slot_start=SLOT)
    story.add(ev.PaymentAuthorized, "payment", payment_id="pi_1", amount=PRICE, gateway="sandbox")
    story.add(
        ev.BookingCancellationRequested, "api", requested_by="alice", requested_by_role="customer"
    )
    story.add(ev.ReservationReleased, "reservation", hold_id="h1", reason="cancelled")
    story.notified("customer_cancelled")
    evidence = replace(
        happy(),
        events={B: story.events},
        read_model={B: {"status": "cancelled"}},
        ledger={B: ledger(("authorize", "authorized"))},
        holds={B: "released"},
        slots=[Slot(SERVICE, SLOT, 2, 0, 0, 0, 0)],
    )
    assert rules(check(evidence)) == {3}
    evidence.ledger[B] = ledger(("authorize", "authorized"), ("void", "voided"))
    assert check(evidence) == []


def test_3_a_refund_without_a_capture() -> None:
    evidence = happy()
    evidence.ledger[B] = [*evidence.ledger[B][:1], *ledger(("refund", "refunded"))]
    assert 3 in rules(check(evidence))


def test_3_refunded_after_a_cancel_of_a_confirmed_booking_is_fine() -> None:
    story = Story().confirmed()
    story.add(
        ev.BookingCancellationRequested, "api", requested_by="alice", requested_by_role="customer"
    )
    story.add(ev.PaymentRefunded, "payment", payment_id="pi_1", refund_id="re_1", amount=PRICE)
    story.add(ev.ReservationReleased, "reservation", hold_id="h1", reason="cancelled")
    story.notified("customer_cancelled")
    evidence = replace(
        happy(),
        events={B: story.events},
        read_model={B: {"status": "cancelled"}},
        ledger={
            B: ledger(("authorize", "authorized"), ("capture", "captured"), ("refund", "refunded"))
        },
        holds={B: "released"},
        slots=[Slot(SERVICE, SLOT, 2, 0, 0, 0, 0)],
    )
    assert check(evidence) == []
    evidence.ledger[B] = evidence.ledger[B][:2]  # kept the money
    assert rules(check(evidence)) == {3}
    assert evaluate(evidence, [B], T0, saga.Policy(refund_policy="none")) == []


def test_4_a_terminal_booking_still_holding_its_seat() -> None:
    story = Story()
    story.add(ev.ReservationHeld, "reservation", hold_id="h1", service_id=SERVICE, slot_start=SLOT)
    story.add(ev.PaymentFailed, "payment", reason_code="card_declined", reason="declined")
    story.notified("customer_failed")
    evidence = replace(
        happy(),
        events={B: story.events},
        read_model={B: {"status": "failed"}},
        ledger={B: ledger(("authorize", "card_declined"))},
        holds={B: "held"},
        slots=[Slot(SERVICE, SLOT, 2, 1, 0, 1, 0)],
    )
    assert rules(check(evidence)) == {4}


def test_4_a_confirmed_booking_whose_hold_was_not_converted() -> None:
    evidence = happy()
    evidence.holds[B] = "released"
    assert 4 in rules(check(evidence))


def test_5_a_notification_recorded_twice() -> None:
    evidence = happy()
    evidence.events[B] = [
        *evidence.events[B],
        replace(evidence.events[B][-1], event_id="another-id"),  # same template, new id
    ]
    assert rules(check(evidence)) == {5}


def test_5_a_notification_delivered_twice_on_one_channel() -> None:
    evidence = happy()
    evidence.deliveries.append(evidence.deliveries[0])
    assert rules(check(evidence)) == {5}


def test_5_a_customer_never_told_the_outcome() -> None:
    evidence = happy()
    evidence.events[B] = evidence.events[B][:-1]
    assert rules(check(evidence)) == {5}


def test_5_a_provider_asked_twice() -> None:
    evidence = happy()
    asked = next(
        e
        for e in evidence.events[B]
        if isinstance(e, ev.NotificationSent) and e.template == saga.PROVIDER_REQUEST
    )
    evidence.events[B].append(replace(asked, event_id="asked-again"))
    assert rules(check(evidence)) == {5}


def test_5_a_provider_the_saga_outran_need_not_be_asked() -> None:
    """The notification agent lagged past the whole wait: a stale request is rightly skipped."""
    evidence = happy()
    evidence.events[B] = [
        e
        for e in evidence.events[B]
        if not (isinstance(e, ev.NotificationSent) and e.template == saga.PROVIDER_REQUEST)
    ]
    evidence.deliveries = evidence.deliveries[1:]
    assert check(evidence) == []


@pytest.mark.parametrize("violation", [Violation(3, B, "captured twice")])
def test_violations_read_as_sentences(violation: Violation) -> None:
    assert str(violation) == f"invariant 3 [{B}]: captured twice"
