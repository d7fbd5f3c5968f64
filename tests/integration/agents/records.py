"""Consumed-message records and small helpers for tests that drive an agent's ``AgentRuntime``."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from erynoa import events as ev
from erynoa import kafka as k
from erynoa.codec import default_codec
from erynoa.topics import TopicCatalog
from streams.runtime import Adapter, AgentRuntime, Incoming

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


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
