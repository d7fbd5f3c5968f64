"""The saga driven straight through Kafka (no API): each path's events, tables and ledger."""

from __future__ import annotations

import asyncpg
import pytest

from erynoa.kafka import EventPublisher
from erynoa.saga import Hold, Payment, Status
from tests.integration.saga.conftest import Agents
from tests.integration.saga.harness import (
    EventLog,
    Mailbox,
    create_service,
    create_user,
    request_booking,
)
from tests.invariants import check_invariants

pytestmark = pytest.mark.integration


async def test_payment_declined_releases_the_hold(
    agents: Agents,
    db: asyncpg.Pool,
    publisher: EventPublisher,
    event_log: EventLog,
    mailbox: Mailbox,
) -> None:
    service = await create_service(db)
    customer = await create_user(db, "customer")
    booking = await request_booking(
        publisher, service, customer, payment_method="pm_card_chargeDeclined"
    )
    state = await event_log.wait(booking)
    assert state.status == Status.FAILED
    assert state.hold == Hold.RELEASED
    assert state.payment == Payment.FAILED
    assert [m.template for m in mailbox.for_booking(booking)] == ["customer_failed"]
    assert await check_invariants(db, [booking], events=event_log.events) == []
