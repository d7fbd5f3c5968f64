"""The saga driven straight through Kafka (no API): each path's events, tables, ledger, mail.

Requests are produced as the API would produce them (``BookingRequested``,
``ProviderAnswerSubmitted``, ``BookingCancellationRequested``, ``StripeEventReceived``); the
four agents run as worker processes; the test reads the session's topics to know where each
booking stands, and checks the agents' tables, the sandbox ledger and the SMTP server.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from erynoa.saga import BookingState, Hold, Payment, Status
from tests.integration.saga.conftest import LiveSaga
from tests.integration.saga.harness import (
    Mailbox,
    a_slot,
    create_service,
    create_user,
    deadline_started,
    ledger,
    status_is,
)

pytestmark = pytest.mark.integration


async def hold_status(db: asyncpg.Pool, booking_id: str) -> str | None:
    status: str | None = await db.fetchval(
        "SELECT status FROM reservation_holds WHERE booking_id = $1", booking_id
    )
    return status


def mails(mailbox: Mailbox, booking_id: str) -> list[str]:
    return sorted(m.template for m in mailbox.for_booking(booking_id))


async def waiting_for_3ds(live: LiveSaga) -> str:
    """A booking whose card asks for 3-D Secure, waiting for the customer to complete it."""
    _, booking = await live.book(payment_method="pm_card_authenticationRequired")
    await live.event_log.wait(booking, status_is(Status.PAYMENT_ACTION_REQUIRED))
    return booking


async def answered(
    live: LiveSaga, booking: str, decision: str, reason: str | None = None
) -> BookingState:
    """The provider answers ``decision`` once it is asked; the booking as it ends."""
    await live.event_log.wait(booking, deadline_started)
    await live.answer(booking, decision, reason=reason)
    return await live.event_log.wait(booking)


async def test_happy_path_confirms_captures_once_and_tells_both(live: LiveSaga) -> None:
    service, booking = await live.book()
    await live.event_log.wait(booking, status_is(Status.AWAITING_PROVIDER))
    state = await answered(live, booking, "accept")
    assert state.status == Status.CONFIRMED
    assert state.hold == Hold.CONVERTED
    assert state.payment == Payment.CAPTURED
    assert await ledger(live.db, booking) == [("authorize", "authorized"), ("capture", "captured")]
    assert await hold_status(live.db, booking) == "converted"
    assert mails(live.mailbox, booking) == ["customer_confirmed", "provider_request"]
    provider_mail = next(
        m for m in live.mailbox.for_booking(booking) if m.template == "provider_request"
    )
    assert provider_mail.to == (service.provider.email,)
    await live.assert_invariants([booking])


async def test_slot_full_rejects_without_authorizing(live: LiveSaga) -> None:
    service = await create_service(live.db, capacity=1)
    customer = await create_user(live.db, "customer")
    slot = a_slot()
    first = await live.request(service, customer, slot=slot)
    await live.event_log.wait(first, status_is(Status.AWAITING_PROVIDER))
    second = await live.request(service, customer, slot=slot)

    state = await live.event_log.wait(second)
    assert state.status == Status.REJECTED
    assert state.failure_reason == "slot full"
    assert await ledger(live.db, second) == []
    assert await hold_status(live.db, second) is None
    assert mails(live.mailbox, second) == ["customer_rejected"]

    await live.cancel(first)  # leave nothing held behind
    await live.event_log.wait(first)
    await live.assert_invariants([first, second])


async def test_payment_declined_releases_the_hold(live: LiveSaga) -> None:
    _, booking = await live.book(payment_method="pm_card_chargeDeclined")
    state = await live.event_log.wait(booking)
    assert state.status == Status.FAILED
    assert state.hold == Hold.RELEASED
    assert state.payment == Payment.FAILED
    assert await hold_status(live.db, booking) == "released"
    assert mails(live.mailbox, booking) == ["customer_failed"]
    await live.assert_invariants([booking])


async def test_action_required_then_webhook_continues_to_awaiting_provider(live: LiveSaga) -> None:
    booking = await waiting_for_3ds(live)
    await live.stripe_webhook(booking, "payment_intent.amount_capturable_updated")
    await live.event_log.wait(booking, status_is(Status.AWAITING_PROVIDER))
    await live.event_log.wait(booking, lambda s: s is not None and "provider_request" in s.notified)

    await live.answer(booking, "accept")
    state = await live.event_log.wait(booking)
    assert state.status == Status.CONFIRMED
    assert await ledger(live.db, booking) == [
        ("authorize", "action_required"),
        ("capture", "captured"),
    ]
    await live.assert_invariants([booking])


async def test_action_required_then_failed_webhook_fails_and_releases(live: LiveSaga) -> None:
    booking = await waiting_for_3ds(live)
    await live.stripe_webhook(booking, "payment_intent.payment_failed")
    state = await live.event_log.wait(booking)
    assert state.status == Status.FAILED
    assert state.hold == Hold.RELEASED
    assert mails(live.mailbox, booking) == ["customer_failed"]
    await live.assert_invariants([booking])


async def test_action_never_completed_fails_voids_and_releases(live: LiveSaga) -> None:
    booking = await waiting_for_3ds(live)
    # No webhook ever comes: the payment agent's sweep gives up after the timeout.
    state = await live.event_log.wait(booking)
    assert state.status == Status.FAILED
    assert state.hold == Hold.RELEASED
    assert await ledger(live.db, booking) == [("authorize", "action_required"), ("void", "voided")]
    assert mails(live.mailbox, booking) == ["customer_failed"]
    await live.assert_invariants([booking])


async def test_provider_rejects_voids_and_releases(live: LiveSaga) -> None:
    _, booking = await live.book()
    state = await answered(live, booking, "reject", reason="fully booked that day")
    assert state.status == Status.REJECTED
    assert state.payment == Payment.VOIDED
    assert state.hold == Hold.RELEASED
    assert await ledger(live.db, booking) == [("authorize", "authorized"), ("void", "voided")]
    assert mails(live.mailbox, booking) == ["customer_rejected", "provider_request"]
    rejected = next(e for e in live.event_log.events[booking] if e.event_type == "ProviderRejected")
    assert getattr(rejected, "reason", None) == "fully booked that day"
    deadline = await live.db.fetchval(
        "SELECT status FROM provider_deadlines WHERE booking_id = $1", booking
    )
    assert deadline == "rejected"
    await live.assert_invariants([booking])


async def test_provider_times_out_expires_voids_and_releases(live: LiveSaga) -> None:
    _, booking = await live.book(response_deadline_seconds=2)
    state = await live.event_log.wait(booking, within=30)
    assert state.status == Status.EXPIRED
    assert state.payment == Payment.VOIDED
    assert state.hold == Hold.RELEASED
    assert mails(live.mailbox, booking) == ["customer_expired", "provider_request"]

    # An answer given after the deadline changes nothing.
    before = live.event_log.types(booking)
    await live.answer(booking, "accept")
    await live.event_log.quiet(2.0)
    assert live.event_log.types(booking) == [*before, "ProviderAnswerSubmitted"]
    after = live.event_log.state(booking)
    assert after is not None
    assert (after.status, after.payment, after.hold) == (state.status, state.payment, state.hold)
    assert await ledger(live.db, booking) == [("authorize", "authorized"), ("void", "voided")]
    await live.assert_invariants([booking])


async def test_capture_fails_fails_releases_and_tells_the_customer(live: LiveSaga) -> None:
    _, booking = await live.book(payment_method="pm_card_captureFails")
    state = await answered(live, booking, "accept")
    assert state.status == Status.FAILED
    assert state.hold == Hold.RELEASED
    assert state.payment == Payment.VOIDED
    assert await ledger(live.db, booking) == [
        ("authorize", "authorized"),
        ("capture", "charge_expired_for_capture"),
        ("void", "voided"),
    ]
    assert "customer_failed" in mails(live.mailbox, booking)
    await live.assert_invariants([booking])


@pytest.mark.parametrize(
    ("payment_method", "cancel_in", "paused", "expected_ledger"),
    [
        # A paused agent keeps the booking where the cancel must find it.
        ("pm_card_visa", Status.REQUESTED, "reservation", []),
        ("pm_card_visa", Status.RESERVED, "payment", []),
        (
            "pm_card_authenticationRequired",
            Status.PAYMENT_ACTION_REQUIRED,
            None,
            ["authorize", "void"],
        ),
        ("pm_card_visa", Status.AWAITING_PROVIDER, None, ["authorize", "void"]),
        ("pm_card_visa", Status.CONFIRMED, None, ["authorize", "capture", "refund"]),
    ],
)
async def test_customer_cancels_and_everything_is_given_back(
    live: LiveSaga,
    payment_method: str,
    cancel_in: Status,
    paused: str | None,
    expected_ledger: list[str],
) -> None:
    if paused:
        live.agents.stop(paused)
    try:
        _, booking = await live.book(payment_method=payment_method)
        if cancel_in == Status.CONFIRMED:
            await answered(live, booking, "accept")
        else:
            await live.event_log.wait(booking, status_is(cancel_in))
        await live.cancel(booking)
        await live.event_log.wait(booking, status_is(Status.CANCELLED))
    finally:
        if paused:
            live.agents.restart(paused)

    state = await live.event_log.wait(booking)
    assert state.status == Status.CANCELLED
    assert state.hold in (Hold.RELEASED, Hold.NONE)
    assert [op for op, _ in await ledger(live.db, booking)] == expected_ledger
    assert "customer_cancelled" in mails(live.mailbox, booking)
    if cancel_in == Status.CONFIRMED:
        assert state.payment == Payment.REFUNDED
        assert await hold_status(live.db, booking) == "released"
        assert mails(live.mailbox, booking) == [
            "customer_cancelled",
            "customer_confirmed",
            "provider_request",
        ]
    await live.assert_invariants([booking])


async def test_fifty_concurrent_requests_for_three_seats(live: LiveSaga) -> None:
    service = await create_service(live.db, capacity=3)
    customer = await create_user(live.db, "customer")
    slot = a_slot()
    bookings = await asyncio.gather(
        *(live.request(service, customer, slot=slot) for _ in range(50))
    )
    states = await live.event_log.wait_all(
        bookings, status_is(Status.AWAITING_PROVIDER, Status.REJECTED), within=120
    )
    winners = [b for b, s in states.items() if s.status == Status.AWAITING_PROVIDER]
    assert len(winners) == 3
    capacity = await live.db.fetchrow(
        """SELECT capacity, held, confirmed FROM slot_capacity
           WHERE service_id = $1 AND slot_start = $2""",
        service.id,
        slot,
    )
    assert dict(capacity) == {"capacity": 3, "held": 3, "confirmed": 0}

    for booking in winners:
        await live.event_log.wait(booking, deadline_started)
        await live.answer(booking, "accept")
    final = await live.event_log.wait_all(bookings, within=120)
    assert sorted(s.status.value for s in final.values()).count("confirmed") == 3
    assert sum(s.status == Status.REJECTED for s in final.values()) == 47
    capacity = await live.db.fetchrow(
        "SELECT held, confirmed FROM slot_capacity WHERE service_id = $1 AND slot_start = $2",
        service.id,
        slot,
    )
    assert dict(capacity) == {"held": 0, "confirmed": 3}
    await live.assert_invariants(bookings)
