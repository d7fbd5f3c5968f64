"""The agents' outbox on the real Kafka and PostgreSQL: a row the broker refuses every time holds
back its own booking only, and rows two lanes publish at once go out once, in order."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import asyncpg
import pytest

from erynoa import events as ev
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from streams import store
from streams.reservation import ReservationAdapter
from tests.integration.agents import records
from tests.integration.agents.records import StartRuntime
from tests.integration.saga.harness import create_service, create_user

pytestmark = pytest.mark.integration

# Larger than the producer's largest request (1 MiB by default): refused however often it is sent.
_TOO_LARGE = "x" * 1_200_000


async def _queue_stale(pool: asyncpg.Pool, events: list[ev.BookingEvent]) -> None:
    """Outbox rows a crashed worker left behind: written in order, a minute ago."""
    async with pool.acquire() as conn, conn.transaction():
        for event in events:
            await store.add_to_outbox(
                conn,
                "reservation",
                event.booking_id,
                [(event.event_id, records.CODEC.encode(event))],
                {},
            )
        await conn.execute("UPDATE agent_outbox SET created_at = now() - interval '1 minute'")


async def _left(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT event_id FROM agent_outbox WHERE agent = 'reservation'")
    return {str(r["event_id"]) for r in rows}


async def test_a_refused_row_holds_back_its_own_booking_and_no_other(
    isolated: Settings, catalog: TopicCatalog, pool: asyncpg.Pool, start_runtime: StartRuntime
) -> None:
    service = await create_service(pool, capacity=5)
    customer = await create_user(pool, "customer")
    stuck, other = (records.requested(customer, service) for _ in range(2))
    ahead = records.rejected(stuck)  # the booking's event before the refused one: goes out
    refused = replace(ahead, event_id=str(uuid.uuid4()), reason=_TOO_LARGE)
    behind = replace(ahead, event_id=str(uuid.uuid4()))  # must wait behind the refused one
    others = records.rejected(other)
    await _queue_stale(pool, [others, ahead, refused, behind])
    runtime = await start_runtime("reservation", ReservationAdapter())

    assert await runtime.relay_outbox(older_than_seconds=10) == 4
    await runtime.outbox_cleaned()
    published = await records.published(isolated, catalog, "ReservationRejected")
    # Handed to the producer before the refusal, then one by one: at most twice, in order.
    assert {e.event_id for e in published} == {others.event_id, ahead.event_id}
    assert await _left(pool) == {refused.event_id, behind.event_id}

    # Later sweeps leave the refused booking alone: nothing is sent again, nothing is stuck.
    assert await runtime.relay_outbox(older_than_seconds=10) == 0
    assert await runtime.relay_outbox(older_than_seconds=10) == 0
    assert len(await records.published(isolated, catalog, "ReservationRejected")) == len(published)
    assert await _left(pool) == {refused.event_id, behind.event_id}


async def test_rows_two_lanes_publish_at_once_go_out_once_and_in_order(
    isolated: Settings, catalog: TopicCatalog, pool: asyncpg.Pool, start_runtime: StartRuntime
) -> None:
    """Two lanes of one booking commit one after the other and each publishes the booking's
    whole outbox: the second must not publish again what the first is publishing."""
    service = await create_service(pool, capacity=5)
    customer = await create_user(pool, "customer")
    booking = records.requested(customer, service)
    first = records.rejected(booking)
    second = ev.make(
        ev.ReservationReleased, producer="reservation", cause=first, hold_id=None, reason="test"
    )
    await _queue_stale(pool, [first, second])
    rows = await store.stale_outbox(pool, "reservation", 10)
    runtime = await start_runtime("reservation", ReservationAdapter())

    await asyncio.gather(runtime._publish(rows[:1]), runtime._publish(rows))
    await runtime.outbox_cleaned()

    # Both types travel on the reservations topic, in the booking's one partition.
    published = await records.published(isolated, catalog, "ReservationReleased")
    assert [e.event_id for e in published] == [first.event_id, second.event_id]
    assert await _left(pool) == set()


async def test_the_relay_takes_a_bookings_rows_in_the_order_written_whatever_their_age(
    isolated: Settings, catalog: TopicCatalog, pool: asyncpg.Pool, start_runtime: StartRuntime
) -> None:
    """A row's age is its transaction's start: one that waited for the booking's lock writes
    its row after another whose transaction began later. Only that row is old enough for the
    sweep, yet it must not go out before the row written ahead of it."""
    service = await create_service(pool, capacity=5)
    customer = await create_user(pool, "customer")
    first = records.rejected(records.requested(customer, service))
    second = replace(first, event_id=str(uuid.uuid4()))
    await _queue_stale(pool, [first, second])
    await pool.execute(
        "UPDATE agent_outbox SET created_at = now() WHERE event_id = $1", first.event_id
    )
    runtime = await start_runtime("reservation", ReservationAdapter())

    assert await runtime.relay_outbox(older_than_seconds=10) == 2
    await runtime.outbox_cleaned()

    published = await records.published(isolated, catalog, "ReservationRejected")
    assert [e.event_id for e in published] == [first.event_id, second.event_id]
