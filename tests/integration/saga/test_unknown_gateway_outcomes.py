"""Gateway calls whose outcome the payment agent did not learn: it looks the PaymentIntent up and
acts on its real state, so money taken is recorded and money held is given back.

The sandbox gateway's ``answer lost`` outage makes a call take effect and then fail like a
timeout; while it lasts the gateway cannot be asked either. Its idempotency window (like
Stripe's) is what a replay long after the first attempt runs into.
"""

from __future__ import annotations

import asyncpg
import pytest

from erynoa import events as ev
from erynoa.saga import Payment, Status
from streams.payment.sandbox import IDEMPOTENCY_WINDOW, MASTERCARD, outage_reason_answer_lost
from tests.conftest import eventually
from tests.integration.saga.conftest import LiveSaga
from tests.integration.saga.harness import deadline_started, ledger, status_is

pytestmark = pytest.mark.integration

# A card of its own, so that the outage touches no other test's bookings.
CARD = MASTERCARD


async def answers_lost(db: asyncpg.Pool, *operations: str) -> None:
    await db.execute(
        """INSERT INTO sandbox_outages (payment_method, reason) VALUES ($1, $2)
           ON CONFLICT (payment_method) DO UPDATE SET reason = EXCLUDED.reason""",
        CARD,
        outage_reason_answer_lost(operations),
    )


async def outage_over(db: asyncpg.Pool) -> None:
    await db.execute("DELETE FROM sandbox_outages WHERE payment_method = $1", CARD)


async def test_an_authorization_whose_answer_was_lost_is_voided_when_the_booking_is_cancelled(
    live: LiveSaga,
) -> None:
    await answers_lost(live.db, "authorize")
    try:
        _, booking = await live.book(payment_method=CARD)

        async def authorized_at_the_gateway() -> bool:
            return ("authorize", "authorized") in await ledger(live.db, booking)

        await eventually(authorized_at_the_gateway)
        # The customer cancels while the agent still does not know the authorization's fate.
        await live.cancel(booking)
        await live.event_log.wait(booking, status_is(Status.CANCELLED))
        [cancelled] = [
            e
            for e in live.event_log.events[booking]
            if isinstance(e, ev.BookingCancellationRequested)
        ]

        async def payment_agent_took_the_cancel() -> bool:
            done = await live.db.fetchval(
                """SELECT 1 FROM processed_events
                   WHERE consumer = 'payment' AND event_id = $1""",
                cancelled.event_id,
            )
            return done is not None

        await eventually(payment_agent_took_the_cancel)
    finally:
        await outage_over(live.db)

    # The retry tiers bring the authorization's message back; the booking is cancelled by then.
    state = await live.event_log.wait(
        booking, lambda s: s is not None and s.payment == Payment.VOIDED, within=150
    )
    assert state.status == Status.CANCELLED
    assert await ledger(live.db, booking) == [("authorize", "authorized"), ("void", "voided")]
    await live.event_log.wait(booking)
    await live.assert_invariants([booking])


async def test_a_capture_that_took_effect_confirms_once_when_replayed_after_the_key_expired(
    live: LiveSaga,
) -> None:
    _, booking = await live.book(payment_method=CARD)
    await live.event_log.wait(booking, deadline_started)
    await answers_lost(live.db, "capture")
    try:
        await live.answer(booking, "accept")

        async def captured_at_the_gateway() -> bool:
            return ("capture", "captured") in await ledger(live.db, booking)

        await eventually(captured_at_the_gateway)
        # The retry comes after the gateway forgot the capture's idempotency key.
        await live.db.execute(
            """UPDATE sandbox_ledger SET created_at = created_at - $2::interval - interval '1 hour'
               WHERE booking_id = $1 AND operation = 'capture'""",
            booking,
            IDEMPOTENCY_WINDOW,
        )
    finally:
        await outage_over(live.db)

    decided = await live.event_log.wait(
        booking, status_is(Status.CONFIRMED, Status.FAILED), within=60
    )
    assert decided.status == Status.CONFIRMED
    final = await live.event_log.wait(booking)
    assert final.payment == Payment.CAPTURED
    assert await ledger(live.db, booking) == [("authorize", "authorized"), ("capture", "captured")]
    assert live.event_log.count(booking, "PaymentCaptureFailed") == 0
    await live.assert_invariants([booking])
