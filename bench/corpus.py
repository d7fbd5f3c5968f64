"""(d) A corpus for the rebuild: many finished sagas' events, folded in by the live materializer.

The rebuild replays the topics up to the live materializer's stored positions, so its events
must first have gone through the live materializer. With the agents and the API stopped (they
would react to the corpus), ``publish`` writes ``bookings`` complete happy-path sagas — the
ten events each, on their topics, marked synthetic — and ``caught_up`` waits until the
materializer has committed all of them. That also times the live materializer catching up
on a backlog, which the benchmark reports beside the rebuild.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench.sample import booking_requested
from erynoa import events as ev
from erynoa.codec import default_codec
from erynoa.kafka import H_SYNTHETIC, EventPublisher
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from loadgen.lag import LagSampler


def saga(booking_id: str, at: datetime) -> list[ev.BookingEvent]:
    """One confirmed booking's events, as the agents emit them, 10 ms apart."""
    slot = at.replace(microsecond=0) + timedelta(days=10)
    requested = booking_requested(
        booking_id,
        slot,
        producer="bench-corpus",
        occurred_at=at,
        customer_id="bench-customer",
        provider_id="bench-provider",
        response_deadline_seconds=3600,
    )
    price = requested.price
    step = iter(range(1, 20))

    def then(cls: type[ev.BookingEvent], **payload: object) -> ev.BookingEvent:
        return ev.make(
            cls,
            cause=requested,
            producer="bench-corpus",
            occurred_at=at + timedelta(milliseconds=10 * next(step)),
            **payload,  # type: ignore[arg-type]
        )

    hold = str(uuid.uuid4())
    return [
        requested,
        then(ev.ReservationHeld, hold_id=hold, service_id=requested.service_id, slot_start=slot),
        then(ev.PaymentAuthorized, payment_id=f"pi_{booking_id[:8]}", amount=price,
             gateway="sandbox"),
        then(ev.ProviderResponseRequested, provider_id="bench-provider",
             deadline_at=at + timedelta(hours=1)),
        then(ev.NotificationSent, notification_id=f"n1-{booking_id}",
             recipient_role="provider", channel="email", template="provider_request"),
        then(ev.ProviderAnswerSubmitted, provider_id="bench-provider", decision="accept"),
        then(ev.ProviderAccepted, provider_id="bench-provider"),
        then(ev.PaymentCaptured, payment_id=f"pi_{booking_id[:8]}", amount=price),
        then(ev.ReservationConverted, hold_id=hold),
        then(ev.NotificationSent, notification_id=f"n2-{booking_id}",
             recipient_role="customer", channel="email", template="customer_confirmed"),
    ]  # fmt: skip


async def publish(settings: Settings, catalog: TopicCatalog, bookings: int) -> int:
    """Publish ``bookings`` finished sagas; returns the number of events."""
    publisher = EventPublisher.create(
        settings.kafka_bootstrap, "bench-corpus", default_codec(), catalog
    )
    await publisher.start()
    sent = 0
    try:
        now = datetime.now(UTC)
        chunk: list[ev.BookingEvent] = []
        for _ in range(bookings):
            chunk.extend(saga(str(uuid.uuid4()), now))
            if len(chunk) >= 5000:
                sent += len(await publisher.publish_many(chunk, {H_SYNTHETIC: "1"}))
                chunk = []
        if chunk:
            sent += len(await publisher.publish_many(chunk, {H_SYNTHETIC: "1"}))
    finally:
        await publisher.stop()
    return sent


async def caught_up(settings: Settings, group_id: str, within_s: float) -> float | None:
    """Seconds until ``group_id`` has no lag left, or None if it still lags after ``within_s``."""
    sampler = LagSampler(settings.kafka_bootstrap, {"materializer": group_id})
    await sampler.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < within_s:
            if (await sampler.sample())["materializer"] == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        return None
    finally:
        await sampler.stop()
