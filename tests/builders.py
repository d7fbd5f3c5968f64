"""Builders for the events tests start from: one place that knows what a valid request holds, so a
test names only the fields its behaviour depends on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from erynoa import events as ev

A_SLOT = datetime(2030, 1, 2, 9, 0, tzinfo=UTC)
A_PRICE = ev.Money(4500, "EUR")


def service_body(**overrides: Any) -> dict[str, Any]:
    """A valid body for ``POST /services`` (and ``PUT``), with ``overrides`` applied."""
    body: dict[str, Any] = {
        "name": f"Service {uuid.uuid4().hex[:8]}",
        "description": "integration test",
        "price": {"amount": 4500, "currency": "EUR"},
        "duration_minutes": 45,
        "capacity_per_slot": 2,
        "response_deadline_seconds": 3600,
    }
    body.update(overrides)
    return body


def booking_requested(
    *,
    booking_id: str | None = None,
    slot_start: datetime = A_SLOT,
    duration: timedelta = timedelta(hours=1),
    customer_id: str = "alice",
    service_id: str = "svc",
    provider_id: str = "bob",
    price: ev.Money = A_PRICE,
    payment_method: str = "pm_card_visa",
    response_deadline_seconds: int = 60,
    producer: str = "api",
    **fields: Any,
) -> ev.BookingRequested:
    """A valid ``BookingRequested`` (a fresh booking id unless one is given); ``fields`` sets
    the envelope and the optional fields (``occurred_at``, ``event_id``, ``notes``...)."""
    return ev.make(
        ev.BookingRequested,
        booking_id=booking_id or str(uuid.uuid4()),
        producer=producer,
        customer_id=customer_id,
        service_id=service_id,
        provider_id=provider_id,
        slot_start=slot_start,
        slot_end=slot_start + duration,
        price=price,
        payment_method=payment_method,
        response_deadline_seconds=response_deadline_seconds,
        **fields,
    )


E = TypeVar("E", bound=ev.BookingEvent)


def next_event(
    requested: ev.BookingRequested,
    cls: type[E],
    *,
    cause: ev.BookingEvent | None = None,
    **fields: Any,
) -> E:
    """The next event of ``requested``'s booking, as the agent that owns it emits it, caused by
    ``cause`` (the request unless given). The payload is what the request says (its seat, its
    price, its provider) and plain values for the rest; ``fields`` overrides them and sets the
    envelope (``occurred_at``, ``event_id``...)."""
    producer, payload = _next_payload(requested)[cls]
    return ev.make(cls, cause=cause or requested, producer=producer, **(payload | fields))


def _next_payload(
    requested: ev.BookingRequested,
) -> dict[type[ev.BookingEvent], tuple[str, dict[str, Any]]]:
    """Who emits each event the builder knows, and its payload."""
    seat = {"service_id": requested.service_id, "slot_start": requested.slot_start}
    return {
        ev.ReservationHeld: ("reservation", {"hold_id": "hold-1", **seat}),
        ev.PaymentAuthorized: (
            "payment",
            {"payment_id": "pi_1", "amount": requested.price, "gateway": "sandbox"},
        ),
        ev.PaymentActionRequired: ("payment", {"payment_id": "pi_1"}),
        ev.ProviderAnswerSubmitted: (
            "api",
            {"provider_id": requested.provider_id, "decision": "accept"},
        ),
    }
