"""Consumed-message records and small helpers for tests that drive an agent's ``AgentRuntime``."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from erynoa import events as ev
from erynoa import kafka as k
from erynoa.codec import default_codec
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from streams.runtime import Adapter, AgentRuntime, Incoming
from tests.integration.saga.harness import Service, User, booking_of, read_topic

CODEC = default_codec()

StartRuntime = Callable[[str, Adapter], Awaitable[AgentRuntime]]
"""Start the runtime of ``agent`` with ``adapter`` on the test's namespace (stopped after)."""


def message(
    catalog: TopicCatalog,
    event: ev.BookingEvent,
    offset: int,
    headers: list[tuple[str, bytes]] | None = None,
) -> Incoming:
    """``event`` as consumed from partition 0 of its topic at ``offset``."""
    return Incoming(
        topic=catalog.topic_for(event.event_type),
        partition=0,
        offset=offset,
        key=event.booking_id.encode(),
        value=CODEC.encode(event),
        headers=[(k.H_EVENT_TYPE, event.event_type.encode()), *(headers or [])],
    )


async def published(
    isolated: Settings, catalog: TopicCatalog, event_type: str
) -> list[ev.BookingEvent]:
    """Every booking event on the topic of ``event_type`` so far, in partition order."""
    topic = catalog.topics[catalog.topic_for(event_type)]
    records = await read_topic(isolated.kafka_bootstrap, topic.name, topic.partitions)
    decoded = [CODEC.decode(r.value) for r in records]
    return [e for e in decoded if isinstance(e, ev.BookingEvent)]


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def requested(
    customer: User, service: Service, response_deadline_seconds: int = 60
) -> ev.BookingRequested:
    """A booking of the next free test slot of ``service`` by ``customer``."""
    return booking_of(service, customer.id, response_deadline_seconds=response_deadline_seconds)


def rejected(requested: ev.BookingRequested) -> ev.ReservationRejected:
    """The reservation's answer that the slot is full."""
    return ev.make(
        ev.ReservationRejected,
        booking_id=requested.booking_id,
        producer="reservation",
        cause=requested,
        service_id=requested.service_id,
        slot_start=requested.slot_start,
        reason="slot full",
    )
