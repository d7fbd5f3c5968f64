"""The booking request the benchmarks send: a ``BookingRequested`` shaped as the API writes it.

One 45-minute, 45 EUR booking paid by card, with a short note; each benchmark sets only what
its measurement depends on (ids, times, the producer).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from erynoa import events as ev

PRICE = ev.Money(4500, "EUR")


def booking_requested(booking_id: str, slot_start: datetime, **fields: Any) -> ev.BookingRequested:
    """The request for ``booking_id`` at ``slot_start``; ``fields`` set the envelope (``producer``,
    ``occurred_at``, ``event_id``) and override the request's own fields."""
    request: dict[str, Any] = {
        "producer": "api",
        "customer_id": "usr_customer_7",
        "service_id": str(uuid.uuid4()),
        "provider_id": "usr_provider_3",
        "price": PRICE,
        "payment_method": "pm_card_visa",
        "notes": "Second floor, ring twice.",
        "response_deadline_seconds": 86_400,
    }
    return ev.make(
        ev.BookingRequested,
        booking_id=booking_id,
        slot_start=slot_start,
        slot_end=slot_start + timedelta(minutes=45),
        **(request | fields),
    )
