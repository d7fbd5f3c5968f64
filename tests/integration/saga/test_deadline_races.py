"""A timely answer is never overridden by a timer that fires before the answer is processed.

The API acknowledges a provider's answer (202, a ``provider_answers`` row) and a verified Stripe
webhook before the agents process them; an agent that lags (or was down) across the deadline
still sees the timer's due row. Both timers must honour what was acknowledged in time. Each
test holds the acknowledged event back from Kafka until the timer has acted, which is what a
lagging agent sees, and then delivers it as the API would have.
"""

from __future__ import annotations

import uuid

import pytest

from erynoa import events as ev
from erynoa.saga import Payment, Status
from streams.payment.sandbox import complete_authentication
from tests.integration.saga.conftest import LiveSaga
from tests.integration.saga.harness import (
    deadline_started,
    from_api,
    ledger,
    provider_decided,
    status_is,
)

pytestmark = pytest.mark.integration


async def test_an_accept_taken_before_the_deadline_wins_though_processed_after_it(
    live: LiveSaga,
) -> None:
    service, booking = await live.book(response_deadline_seconds=3)
    state = await live.event_log.wait(booking, deadline_started)

    # The API takes the accept (its row commits with the 202) ...
    event_id = str(uuid.uuid4())
    submitted_at = await live.db.fetchval(
        """INSERT INTO provider_answers (booking_id, provider_id, decision, reason, event_id)
           VALUES ($1, $2, 'accept', NULL, $3) RETURNING submitted_at""",
        booking,
        service.provider.id,
        event_id,
    )
    deadline_at = await live.db.fetchval(
        "SELECT deadline_at FROM provider_deadlines WHERE booking_id = $1", booking
    )
    assert submitted_at < deadline_at  # the answer is in time by the database's clock

    # ... but the agent has not processed it when the deadline passes.
    decided = await live.event_log.wait(booking, provider_decided, within=30)
    await live.publisher.publish(
        from_api(
            ev.ProviderAnswerSubmitted,
            state,
            event_id=event_id,
            occurred_at=submitted_at,
            provider_id=service.provider.id,
            decision="accept",
        )
    )
    assert decided.provider_outcome == "accepted"
    final = await live.event_log.wait(booking)
    assert final.status == Status.CONFIRMED
    assert live.event_log.count(booking, "ProviderTimedOut") == 0
    await live.assert_invariants([booking])


async def test_a_3ds_success_acknowledged_in_time_is_not_abandoned_by_the_sweep(
    live: LiveSaga,
) -> None:
    _, booking = await live.book(payment_method="pm_card_authenticationRequired")
    state = await live.event_log.wait(booking, status_is(Status.PAYMENT_ACTION_REQUIRED))
    assert state.payment_id is not None

    # The customer authenticates; Stripe's webhook is verified and acknowledged (recorded) ...
    assert await complete_authentication(live.db, state.payment_id)
    await live.db.execute(
        "INSERT INTO stripe_webhook_events (stripe_event_id, booking_id) VALUES ($1, $2)",
        f"evt_{uuid.uuid4().hex}",
        booking,
    )
    # ... and the payment agent processes it only after the action timeout's sweep ran.
    moved = await live.event_log.wait(
        booking, lambda s: s is not None and s.status != Status.PAYMENT_ACTION_REQUIRED, within=40
    )
    await live.stripe_webhook(booking, "payment_intent.amount_capturable_updated")
    assert moved.status == Status.AWAITING_PROVIDER
    assert moved.payment == Payment.AUTHORIZED

    await live.event_log.wait(booking, deadline_started)
    await live.answer(booking, "accept")
    final = await live.event_log.wait(booking)
    assert final.status == Status.CONFIRMED
    assert await ledger(live.db, booking) == [("authorize", "authorized"), ("capture", "captured")]
    await live.assert_invariants([booking])
