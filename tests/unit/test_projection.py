"""The read-model row the projection writes, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumers.projection import ROW_COLUMNS, booking_row, event_payload
from erynoa import events as ev
from erynoa import saga

T0 = datetime(2030, 1, 2, 9, 0, tzinfo=UTC)


def requested() -> ev.BookingRequested:
    return ev.make(
        ev.BookingRequested,
        booking_id="0b5f8f7e-3a57-4c7e-9d77-1f0c0c4d2a10",
        producer="api",
        occurred_at=T0,
        customer_id="cust-1",
        service_id="7d6f3b0e-5a3c-4c8e-8a53-2b1c9f0a7e11",
        provider_id="prov-1",
        slot_start=T0 + timedelta(days=1),
        slot_end=T0 + timedelta(days=1, hours=1),
        price=ev.Money(4500, "EUR"),
        payment_method="pm_card_visa",
        notes="Türcode 4711",
        response_deadline_seconds=3600,
    )


def test_a_row_fills_exactly_the_bookings_columns() -> None:
    event = requested()
    row = booking_row(saga.start(event), (event.occurred_at, event.event_id))

    assert tuple(row) == ROW_COLUMNS


def test_a_row_carries_the_fold_and_money_in_minor_units() -> None:
    event = requested()
    row = booking_row(saga.start(event), (event.occurred_at, event.event_id))

    assert row["status"] == "requested"
    assert row["amount_minor"] == 4500
    assert row["currency"] == "EUR"
    assert saga.BookingState.from_json(row["state"]) == saga.start(event)
    assert row["last_event_id"] == event.event_id


def test_the_payload_is_plain_json_with_the_event_type() -> None:
    payload = event_payload(requested())

    assert payload["event_type"] == "BookingRequested"
    assert payload["price"] == {"amount_minor": 4500, "currency": "EUR"}
    assert payload["slot_start"] == "2030-01-03T09:00:00+00:00"
    assert payload["notes"] == "Türcode 4711"
