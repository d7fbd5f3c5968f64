"""A notification given up on its last retry is delivered when an operator replays it.

The notification agent's runtime is driven directly with consumed-message records (no Faust),
on its own topics and database. The customer's only channel is a webhook on a loopback port
that refuses connections at first: the last retry records ``NotificationFailed`` (the saga goes
on) and dead-letters the message. Once the endpoint is up, the replayed message must deliver the
notification — a replay that is deduplicated away would leave the customer never told.
"""

from __future__ import annotations

import asyncio

import asyncpg

from erynoa import events as ev
from erynoa import kafka as k
from erynoa import saga
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from streams.notification import IDEMPOTENCY_HEADER, NotificationAdapter
from tests.integration.agents import records
from tests.integration.agents.records import CODEC, StartRuntime, free_port, message
from tests.integration.saga.harness import create_service, create_user, read_topic


class Receiver:
    """A webhook endpoint on loopback that answers 200 and keeps the idempotency keys."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        lowered = {name.lower(): value for name, value in headers.items()}
        await reader.readexactly(int(lowered.get("content-length", "0")))
        self.keys.append(lowered[IDEMPOTENCY_HEADER.lower()])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def test_a_replayed_notification_that_was_given_up_is_delivered(
    isolated: Settings, catalog: TopicCatalog, pool: asyncpg.Pool, start_runtime: StartRuntime
) -> None:
    # The customer's webhook is on loopback, which the outbound guard refuses unless allowed.
    allowed = isolated.model_copy(update={"outbound_allow": ["127.0.0.1"]})
    runtime = await start_runtime("notification", NotificationAdapter.from_settings(allowed))
    port = free_port()
    customer = await create_user(
        pool, "customer", email=False, webhook_url=f"http://127.0.0.1:{port}/hook"
    )
    service = await create_service(pool)
    requested = records.requested(customer, service)
    rejected = records.rejected(requested)
    last_try = [(k.H_ATTEMPTS, str(len(runtime.consumer.retry_topics)).encode())]

    # The endpoint refuses connections: the last retry gives up and the saga goes on.
    await runtime.process(
        [message(catalog, requested, 0, []), message(catalog, rejected, 1, last_try)]
    )
    published = await records.published(isolated, catalog, "NotificationSent")
    assert [type(e).__name__ for e in published] == ["NotificationFailed"]
    dlq = catalog.topics[runtime.consumer.dead_letter_topic]
    parked = await read_topic(isolated.kafka_bootstrap, dlq.name, dlq.partitions)
    assert [CODEC.decode(r.value).event_id for r in parked] == [rejected.event_id]

    # The endpoint is back; an operator replays the dead letter (a new offset of the origin).
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", port)
    try:
        replayed = message(catalog, rejected, 2, [*last_try, (k.H_REPLAY, b"replay-1")])
        await runtime.process([replayed])
    finally:
        server.close()
        await server.wait_closed()

    template = saga.customer_template(saga.Status.REJECTED)
    assert receiver.keys, "the replay delivered nothing"
    published = await records.published(isolated, catalog, "NotificationSent")
    sent = [e for e in published if isinstance(e, ev.NotificationSent)]
    assert [(e.template, e.channel) for e in sent] == [(template, "webhook")]
    delivered = await pool.fetchval(
        "SELECT count(*) FROM notification_deliveries WHERE booking_id = $1::uuid",
        requested.booking_id,
    )
    assert delivered == 1
