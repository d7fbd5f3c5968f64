"""What the booking routes tell a client when PostgreSQL fails while a change commits, and how
an event is kept in the API's outbox (no stack needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from api.envelopes import ApiError
from api.outbox import OutboxEntry
from api.routes.bookings import committing
from erynoa import events as ev
from erynoa.codec import local_codec


async def failure_while_committing(error: BaseException) -> ApiError:
    with pytest.raises(ApiError) as raised:
        async with committing("poll /api/v1/bookings/b1 first", booking_id="b1"):
            raise error
    return raised.value


async def test_an_error_postgresql_answered_means_nothing_was_changed() -> None:
    refused = await failure_while_committing(asyncpg.exceptions.RaiseError("refused"))
    assert refused.status == 503
    assert "nothing was changed" in refused.message
    assert refused.details[0]["component"] == "postgres"


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection lost"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        ConnectionResetError("reset by peer"),
        TimeoutError(),
    ],
    ids=type,
)
async def test_a_connection_lost_while_committing_leaves_the_outcome_unknown(
    error: BaseException,
) -> None:
    unknown = await failure_while_committing(error)
    assert (unknown.status, unknown.code) == (503, "OUTCOME_UNKNOWN")
    assert "nothing was changed" not in unknown.message
    assert "poll /api/v1/bookings/b1 first" in unknown.message
    assert unknown.details[0]["booking_id"] == "b1"


async def test_other_errors_pass_through_unchanged() -> None:
    conflict = ApiError(409, "already answered")
    with pytest.raises(ApiError) as raised:
        async with committing("retry"):
            raise conflict
    assert raised.value is conflict


def test_an_outbox_entry_keeps_the_encoded_event_and_its_headers() -> None:
    codec = local_codec()
    event = ev.make(
        ev.BookingCancellationRequested,
        booking_id="0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e",
        producer="api",
        event_id=ev.derived_event_id("0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e", "api.cancel"),
        occurred_at=datetime(2026, 1, 28, 10, 0, tzinfo=UTC),
        requested_by="alice",
        requested_by_role="customer",
    )
    headers = {"x-request-id": "req-1"}
    entry = OutboxEntry.of(event, codec, headers)
    headers["x-request-id"] = "changed later"
    assert entry.values == (
        event.event_id,
        event.booking_id,
        entry.payload,
        {"x-request-id": "req-1"},
    )
    assert codec.decode(entry.payload) == event
