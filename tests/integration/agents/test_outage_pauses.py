"""An outside service down is an outage: the agent's lane waits in place, nothing is parked.

Agents' runtimes are driven directly with consumed-message records (no Faust), on their own
topics and database. The payment gateway is taken down whole (the sandbox's ``*`` outage) and
the SMTP relay is a loopback port nobody listens on; while they are down a message must stay in
flight — not go down the retry tiers into the dead-letter topic — and once they are back the same
message completes its step.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink

from erynoa import events as ev
from erynoa import kafka as k
from erynoa import saga
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from streams.notification import NotificationAdapter, SmtpSender, WebhookSender
from streams.payment.agent import PaymentAdapter
from streams.payment.sandbox import WHOLE_GATEWAY, SandboxGateway
from streams.runtime import AgentRuntime
from tests.integration.agents import records
from tests.integration.agents.records import StartRuntime, free_port, message
from tests.integration.saga.harness import create_service, create_user, read_topic

# The last retry: any failure now that is taken for the message's own would park it.
LAST_TRY = [(k.H_ATTEMPTS, b"9")]


async def parked_or_retried(isolated: Settings, catalog: TopicCatalog, agent: str) -> int:
    consumer = catalog.consumer(agent)
    count = 0
    for name in (*consumer.retry_topics, consumer.dead_letter_topic):
        topic = catalog.topics[name]
        count += len(await read_topic(isolated.kafka_bootstrap, topic.name, topic.partitions))
    return count


async def paused(runtime: AgentRuntime) -> bool:
    """Whether the runtime reports a lane waiting on an outage (its own metric)."""
    for _ in range(300):
        value = runtime.metrics.registry.get_sample_value(
            "erynoa_agent_lanes_paused", {"agent": runtime.agent}
        )
        if value == 1:
            return True
        await asyncio.sleep(0.05)
    return False


async def booking(
    pool: asyncpg.Pool, *, email: bool
) -> tuple[ev.BookingRequested, ev.ReservationHeld]:
    customer = await create_user(pool, "customer", email=email)
    service = await create_service(pool)
    requested = records.requested(customer, service, response_deadline_seconds=3600)
    held = ev.make(
        ev.ReservationHeld,
        booking_id=requested.booking_id,
        producer="reservation",
        cause=requested,
        hold_id=str(uuid.uuid4()),
        service_id=service.id,
        slot_start=requested.slot_start,
    )
    return requested, held


async def test_a_gateway_outage_pauses_the_payment_lane_and_parks_nothing(
    isolated: Settings,
    catalog: TopicCatalog,
    pool: asyncpg.Pool,
    start_runtime: StartRuntime,
) -> None:
    runtime = await start_runtime("payment", PaymentAdapter(SandboxGateway()))
    requested, held = await booking(pool, email=True)
    await pool.execute(
        "INSERT INTO sandbox_outages (payment_method, reason) VALUES ($1, 'gateway down')",
        WHOLE_GATEWAY,
    )
    work = asyncio.create_task(
        runtime.process(
            [message(catalog, requested, 0, LAST_TRY), message(catalog, held, 1, LAST_TRY)]
        )
    )
    try:
        assert await paused(runtime), "the lane did not pause for the gateway outage"
        assert not work.done()
        assert await parked_or_retried(isolated, catalog, "payment") == 0
        await pool.execute("DELETE FROM sandbox_outages WHERE payment_method = $1", WHOLE_GATEWAY)
        await asyncio.wait_for(work, timeout=60)
    finally:
        work.cancel()
    assert await parked_or_retried(isolated, catalog, "payment") == 0
    state = await pool.fetchval(
        "SELECT state->>'payment' FROM agent_state WHERE agent = 'payment' AND booking_id = $1",
        requested.booking_id,
    )
    assert state == saga.Payment.AUTHORIZED


async def test_an_smtp_relay_outage_pauses_the_notification_lane_and_parks_nothing(
    isolated: Settings,
    catalog: TopicCatalog,
    pool: asyncpg.Pool,
    start_runtime: StartRuntime,
) -> None:
    port = free_port()
    adapter = NotificationAdapter(
        SmtpSender("127.0.0.1", port, "bookings@example.test", timeout_s=2.0),
        WebhookSender(isolated.webhook_signing_secret),
    )
    runtime = await start_runtime("notification", adapter)
    requested, _ = await booking(pool, email=True)
    rejected = records.rejected(requested)
    work = asyncio.create_task(
        runtime.process(
            [message(catalog, requested, 0, LAST_TRY), message(catalog, rejected, 1, LAST_TRY)]
        )
    )
    relay = Controller(Sink(), hostname="127.0.0.1", port=port)
    try:
        assert await paused(runtime), "the lane did not pause for the SMTP outage"
        assert not work.done()
        assert await parked_or_retried(isolated, catalog, "notification") == 0
        relay.start()
        await asyncio.wait_for(work, timeout=60)
    finally:
        work.cancel()
        relay.stop(no_assert=True)
    assert await parked_or_retried(isolated, catalog, "notification") == 0
    sent = await records.published(isolated, catalog, "NotificationSent")
    assert [type(e).__name__ for e in sent] == ["NotificationSent"]
