"""Booking sagas as their events, for tests of what operators see: built with ``ev.make``,
one second or so apart, and written straight into the read model and its event log."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg

from consumers.projection import booking_row
from erynoa import events as ev
from erynoa import saga
from erynoa.codec import default_codec
from tests.conftest import unique


def request(booking_id: str, at: datetime, **fields: Any) -> ev.BookingRequested:
    slot = at.replace(microsecond=0) + timedelta(days=3)
    values: dict[str, Any] = {
        "customer_id": unique("cust-"),
        "service_id": unique(),
        "provider_id": unique("prov-"),
        "slot_start": slot,
        "slot_end": slot + timedelta(hours=1),
        "price": ev.Money(4500, "EUR"),
        "payment_method": "pm_card_visa",
        "response_deadline_seconds": 3600,
        **fields,
    }
    return ev.make(
        ev.BookingRequested, booking_id=booking_id, producer="api", occurred_at=at, **values
    )


def emailed(cause: ev.BookingEvent, at: datetime, role: str, template: str) -> ev.NotificationSent:
    return ev.make(
        ev.NotificationSent, cause=cause, producer="notification", occurred_at=at,
        notification_id=unique(), recipient_role=role, channel="email", template=template,
    )  # fmt: skip


def awaiting_provider(
    booking_id: str, start: datetime, deadline: datetime, **fields: Any
) -> list[ev.BookingEvent]:
    """Requested, held, authorized, provider told, deadline running: one second apart.
    ``fields`` go to the request (``provider_id``, ``customer_id``, ...)."""
    requested = request(booking_id, start, **fields)
    held = ev.make(
        ev.ReservationHeld, cause=requested, producer="reservation",
        occurred_at=start + timedelta(seconds=1), hold_id=unique(),
        service_id=requested.service_id, slot_start=requested.slot_start,
    )  # fmt: skip
    authorized = ev.make(
        ev.PaymentAuthorized, cause=held, producer="payment",
        occurred_at=start + timedelta(seconds=3), payment_id=f"pi_{booking_id[:8]}",
        amount=requested.price, gateway="sandbox",
    )  # fmt: skip
    told = emailed(authorized, start + timedelta(seconds=4), "provider", "provider_request")
    waiting = ev.make(
        ev.ProviderResponseRequested, cause=authorized, producer="provider-response",
        occurred_at=start + timedelta(seconds=5), provider_id=requested.provider_id,
        deadline_at=deadline,
    )  # fmt: skip
    return [requested, held, authorized, told, waiting]


def rejected_and_compensated(
    booking_id: str, start: datetime, **fields: Any
) -> list[ev.BookingEvent]:
    events = awaiting_provider(booking_id, start, start + timedelta(hours=1), **fields)
    authorized = events[2]
    assert isinstance(authorized, ev.PaymentAuthorized)
    rejected = ev.make(
        ev.ProviderRejected, cause=events[-1], producer="provider-response",
        occurred_at=start + timedelta(seconds=65), provider_id="prov", reason="fully booked",
    )  # fmt: skip
    voided = ev.make(
        ev.PaymentVoided, cause=rejected, producer="payment",
        occurred_at=start + timedelta(seconds=66), payment_id=authorized.payment_id,
    )  # fmt: skip
    released = ev.make(
        ev.ReservationReleased, cause=voided, producer="reservation",
        occurred_at=start + timedelta(seconds=68), hold_id=None, reason="rejected",
    )  # fmt: skip
    told = emailed(released, start + timedelta(seconds=70), "customer", "customer_rejected")
    return [*events, rejected, voided, released, told]


async def write_folded(pg: asyncpg.Pool, events: list[ev.BookingEvent]) -> str:
    """The saga's read-model row and event log as the materializer leaves them, written
    directly (no Kafka); its booking id."""
    state = saga.fold_log(events)
    assert state is not None, "the events need their BookingRequested"
    last = max(events, key=lambda e: (e.occurred_at, e.event_id))
    row = booking_row(state, (last.occurred_at, last.event_id))
    names = ", ".join(row)
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    codec = default_codec()
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(f"INSERT INTO bookings ({names}) VALUES ({params})", *row.values())
        for n, e in enumerate(events):
            await conn.execute(
                "INSERT INTO booking_events (event_id, booking_id, event_type, producer, "
                'occurred_at, correlation_id, topic, partition, "offset", payload, body) '
                "VALUES ($1, $2, $3, $4, $5, $6, 'bookings', 0, $7, '{}'::jsonb, $8)",
                e.event_id, e.booking_id, e.event_type, e.producer, e.occurred_at,
                e.correlation_id, n, codec.encode(e),
            )  # fmt: skip
    return state.booking_id
