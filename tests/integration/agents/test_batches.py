"""An agent handles what queued up in a lane as one batch, in one transaction, on the real stack.

The reservation agent's runtime is driven directly with consumed-message records (no Faust), on
its own topics and database (``own_namespace``): a batch must give exactly what handling its
messages one by one gives — the last seat to the earlier request, a duplicate skipped, an event
that ran ahead of its booking in the same batch folded in after the request — and a redelivered
batch must change nothing. A batch with a failing message falls back to one-by-one, so only
that message takes the failure path (retry tier or dead-letter topic).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
import pytest

from erynoa import events as ev
from erynoa import kafka as k
from erynoa import saga
from erynoa.codec import default_codec
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from streams.reservation import SLOT_FULL, ReservationAdapter
from streams.runtime import AgentRuntime, Context, Incoming
from tests.integration.agents import records
from tests.integration.agents.records import StartRuntime
from tests.integration.saga.harness import (
    Service,
    a_slot,
    booking_of,
    create_service,
    read_topic,
)

CODEC = default_codec()


class FailsFor(ReservationAdapter):
    """The real reservation adapter, except that one booking's actions raise (a bug, say)."""

    def __init__(self, booking_id: str) -> None:
        self.booking_id = booking_id

    async def execute(self, action: saga.Action, ctx: Context) -> list[ev.BookingEvent]:
        if ctx.booking_id == self.booking_id:
            raise RuntimeError("injected failure")
        return await super().execute(action, ctx)


MakeRuntime = Callable[..., Awaitable[AgentRuntime]]


@pytest.fixture
def make_runtime(start_runtime: StartRuntime) -> MakeRuntime:
    """Reservation runtimes on the test's topics and database, stopped afterwards."""

    async def make(adapter: ReservationAdapter | None = None) -> AgentRuntime:
        return await start_runtime("reservation", adapter or ReservationAdapter())

    return make


def request(service: Service, slot_start: datetime) -> ev.BookingRequested:
    return booking_of(service, "customer-1", slot=slot_start, response_deadline_seconds=60)


def as_messages(catalog: TopicCatalog, events: list[ev.BookingEvent]) -> list[Incoming]:
    return [
        Incoming(
            topic=catalog.topic_for(event.event_type),
            partition=0,
            offset=offset,
            key=event.booking_id.encode(),
            value=CODEC.encode(event),
            headers=[(k.H_EVENT_TYPE, event.event_type.encode())],
        )
        for offset, event in enumerate(events)
    ]


async def test_a_batch_decides_as_one_by_one_would_and_a_redelivery_changes_nothing(
    isolated: Settings, catalog: TopicCatalog, pool: asyncpg.Pool, make_runtime: MakeRuntime
) -> None:
    service = await create_service(pool, capacity=3)
    slot = a_slot()
    first, second, third, fourth, fifth = (request(service, slot) for _ in range(5))
    elsewhere = request(service, slot + timedelta(days=1))
    # Its payment failed before the reservation agent saw the request (another topic ran ahead).
    failed_early = ev.make(
        ev.PaymentFailed,
        booking_id=elsewhere.booking_id,
        producer="payment",
        payment_id="pi_x",
        reason_code="card_declined",
        reason="declined",
    )
    batch = as_messages(
        catalog, [first, second, failed_early, third, first, fourth, elsewhere, fifth]
    )
    runtime = await make_runtime()

    await runtime.process(batch)

    emitted = await records.published(isolated, catalog, "ReservationHeld")
    by_booking: dict[str, list[str]] = {}
    for event in emitted:
        by_booking.setdefault(event.booking_id, []).append(event.event_type)
    for held in (first, second, third):
        assert by_booking[held.booking_id] == ["ReservationHeld"]
    for rejected in (fourth, fifth):
        assert by_booking[rejected.booking_id] == ["ReservationRejected"]
    # The failed payment folded in after its request: the booking failed, no seat was held.
    assert elsewhere.booking_id not in by_booking
    status = await pool.fetchval(
        "SELECT state->>'status' FROM agent_state WHERE agent = 'reservation' AND booking_id = $1",
        elsewhere.booking_id,
    )
    assert status == saga.Status.FAILED
    reasons = {e.booking_id: getattr(e, "reason", None) for e in emitted}
    assert reasons[fourth.booking_id] == SLOT_FULL
    counts = await pool.fetchrow(
        "SELECT held, confirmed FROM slot_capacity WHERE service_id = $1 AND slot_start = $2",
        service.id,
        slot,
    )
    assert counts is not None
    assert (counts["held"], counts["confirmed"]) == (3, 0)
    # Published rows leave the outbox (in the background, off the lane's path).
    await runtime.outbox_cleaned()
    assert await pool.fetchval("SELECT count(*) FROM agent_outbox") == 0

    # The whole batch again (a crash before the offsets were committed): same ids, no change.
    await runtime.process(batch)
    again = await records.published(isolated, catalog, "ReservationHeld")
    assert sorted(e.event_id for e in again) == sorted(e.event_id for e in emitted)
    counts = await pool.fetchrow(
        "SELECT held FROM slot_capacity WHERE service_id = $1 AND slot_start = $2",
        service.id,
        slot,
    )
    assert counts is not None
    assert counts["held"] == 3


async def test_a_failing_message_sends_only_itself_to_the_failure_path(
    isolated: Settings, catalog: TopicCatalog, pool: asyncpg.Pool, make_runtime: MakeRuntime
) -> None:
    service = await create_service(pool, capacity=10)
    slot = a_slot()
    good_before, bad, good_after = (request(service, slot) for _ in range(3))
    runtime = await make_runtime(FailsFor(bad.booking_id))

    await runtime.process(as_messages(catalog, [good_before, bad, good_after]))

    emitted = await records.published(isolated, catalog, "ReservationHeld")
    assert {e.booking_id for e in emitted} == {good_before.booking_id, good_after.booking_id}
    assert all(isinstance(e, ev.ReservationHeld) for e in emitted)
    # A bug is not worth retrying: the message goes to the dead-letter topic, alone.
    dlq = catalog.topics[catalog.consumer("reservation").dead_letter_topic]
    parked = await read_topic(isolated.kafka_bootstrap, dlq.name, dlq.partitions)
    assert [r.key for r in parked] == [bad.booking_id.encode()]
    assert parked[0].value == CODEC.encode(bad)
    # Nothing of the failed booking was committed: its state and its hold do not exist.
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM agent_state WHERE agent = 'reservation' AND booking_id = $1",
            bad.booking_id,
        )
        == 0
    )
    assert (
        await pool.fetchval(
            "SELECT held FROM slot_capacity WHERE service_id = $1 AND slot_start = $2",
            service.id,
            slot,
        )
        == 2
    )


async def test_an_undecodable_message_goes_alone_to_the_dead_letter_topic(
    isolated: Settings,
    catalog: TopicCatalog,
    pool: asyncpg.Pool,
    make_runtime: MakeRuntime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await create_service(pool, capacity=10)
    slot = a_slot()
    before, after = request(service, slot), request(service, slot)
    [first, second] = as_messages(catalog, [before, after])
    # The garbage sits between the two in the partition.
    garbage = Incoming(first.topic, 0, 1, b"not-a-booking", b"\x00garbage", [])
    second = Incoming(second.topic, 0, 2, second.key, second.value, second.headers)
    runtime = await make_runtime()

    with caplog.at_level("WARNING", logger="streams.runtime"):
        await runtime.process([first, garbage, second])

    emitted = await records.published(isolated, catalog, "ReservationHeld")
    assert sorted(e.booking_id for e in emitted) == sorted([before.booking_id, after.booking_id])
    dlq = catalog.topics[catalog.consumer("reservation").dead_letter_topic]
    parked = await read_topic(isolated.kafka_bootstrap, dlq.name, dlq.partitions)
    assert [(r.key, r.value) for r in parked] == [(b"not-a-booking", b"\x00garbage")]
    # The poison did not cost the others a second pass.
    assert not [r for r in caplog.records if "one by one" in r.getMessage()]
