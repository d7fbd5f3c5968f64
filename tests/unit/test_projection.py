"""The read-model row the projection writes, without a database."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from consumers.projection import (
    ROW_COLUMNS,
    Fold,
    Projection,
    booking_row,
    event_payload,
    fold_history,
)
from erynoa import events as ev
from erynoa import saga
from erynoa.codec import local_codec
from tests.builders import booking_requested, next_event

T0 = datetime(2030, 1, 2, 9, 0, tzinfo=UTC)


def requested() -> ev.BookingRequested:
    return booking_requested(
        booking_id="0b5f8f7e-3a57-4c7e-9d77-1f0c0c4d2a10",
        occurred_at=T0,
        service_id="7d6f3b0e-5a3c-4c8e-8a53-2b1c9f0a7e11",
        slot_start=T0 + timedelta(days=1),
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


def later_events(first: ev.BookingRequested) -> list[ev.BookingEvent]:
    held = next_event(first, ev.ReservationHeld, occurred_at=T0 + timedelta(seconds=1))
    authorized = next_event(
        first, ev.PaymentAuthorized, cause=held, occurred_at=T0 + timedelta(seconds=2)
    )
    return [held, authorized]


def test_a_history_folds_with_its_request_first_whatever_the_clocks_say() -> None:
    first = requested()
    held, authorized = later_events(first)
    # The request's clock ran late: it sorts after the hold.
    skewed = dataclasses.replace(first, occurred_at=T0 + timedelta(seconds=1, milliseconds=1))

    folded = fold_history(sorted([authorized, skewed, held], key=lambda e: e.occurred_at))

    assert folded is not None
    assert folded.state == saga.evolve(saga.evolve(saga.start(skewed), held), authorized)
    assert folded.last == (authorized.occurred_at, authorized.event_id)


def test_a_history_without_its_request_folds_to_nothing_yet() -> None:
    held, authorized = later_events(requested())

    assert fold_history([held, authorized]) is None


async def test_new_events_of_a_booking_never_logged_fold_without_reading_the_log() -> None:
    first = requested()
    held, authorized = later_events(first)
    projection = Projection("materializer", local_codec())
    new = {first.booking_id: [authorized, first, held]}

    # No connection: nothing may be read back for a booking named as having no stored log.
    folded = await projection.fold(None, new, {}, unlogged={first.booking_id})  # type: ignore[arg-type]

    assert folded[first.booking_id] == fold_history([first, held, authorized])


async def test_later_events_extend_the_current_fold_without_reading_the_log() -> None:
    first = requested()
    held, authorized = later_events(first)
    projection = Projection("materializer", local_codec())
    current = {first.booking_id: Fold(saga.start(first), (first.occurred_at, first.event_id))}

    folded = await projection.fold(None, {first.booking_id: [authorized, held]}, current)  # type: ignore[arg-type]

    assert folded[first.booking_id] == fold_history([first, held, authorized])


async def test_events_of_a_booking_whose_request_is_missing_wait_for_it() -> None:
    held, authorized = later_events(requested())
    projection = Projection("materializer", local_codec())

    folded = await projection.fold(None, {held.booking_id: [held, authorized]}, {})  # type: ignore[arg-type]

    assert folded == {}
