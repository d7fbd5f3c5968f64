"""SQL the routes share: paged listings, and the bookings read model's rows.

The bookings row the API writes at 202 time comes from the same pure fold the materializer
uses (``erynoa.saga.start``), with ``INSERT ... ON CONFLICT DO NOTHING``: whichever of the two
writes first, the row is the same, so a client polling right after its 202 sees ``requested``.
The row is written in the same statement as the booking's first event in the outbox
(``api.outbox``).
The materializer later fills in its own bookkeeping columns (``state``, ``last_event_*``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from fastapi import Request

from api.envelopes import Page, page
from api.outbox import OUTBOX_COLUMNS, OutboxEntry
from api.schemas import Pagination
from erynoa.saga import BookingState

T = TypeVar("T")


@dataclass(frozen=True)
class Listing(Generic[T]):
    """What a list endpoint pages through: ``columns`` of ``source`` (a table, perhaps with an
    alias) in ``order_by`` order, each row answered as ``item`` of it."""

    item: Callable[[asyncpg.Record], T]
    columns: str
    source: str
    order_by: str

    async def page(
        self,
        request: Request,
        conn: asyncpg.Connection,
        paging: Pagination,
        *,
        where: Sequence[str] = (),
        params: Sequence[Any] = (),
    ) -> Page[T]:
        """One page of the rows meeting every condition in ``where`` (``params`` fill their
        placeholders), and the total count, in one query (two only past the last page)."""
        from_where = f"FROM {self.source}"
        if where:
            from_where += " WHERE " + " AND ".join(f"({condition})" for condition in where)
        n = len(params)
        rows = await conn.fetch(
            f"SELECT {self.columns}, count(*) OVER () AS total_count {from_where} "
            f"ORDER BY {self.order_by} LIMIT ${n + 1} OFFSET ${n + 2}",
            *params,
            paging.per_page,
            paging.offset,
        )
        if rows:
            total = int(rows[0]["total_count"])
        elif paging.offset == 0:
            total = 0
        else:
            total = int(await conn.fetchval(f"SELECT count(*) {from_where}", *params))
        items = [self.item(row) for row in rows]
        return page(request, items, page=paging.page, per_page=paging.per_page, total=total)


_INITIAL_COLUMNS = (
    "id, customer_id, provider_id, service_id, slot_start, slot_end, "
    "amount_minor, currency, payment_method, notes, status, hold, payment, payment_id, "
    "provider_deadline_at, provider_notified, customer_notified, failure_reason, "
    "correlation_id, idempotency_key, events_applied, requested_at, updated_at"
)


def _initial_values(state: BookingState) -> tuple[Any, ...]:
    return (
        state.booking_id,
        state.customer_id,
        state.provider_id,
        state.service_id,
        state.slot_start,
        state.slot_end,
        state.price.amount_minor,
        state.price.currency,
        state.payment_method,
        state.notes,
        state.status.value,
        state.hold.value,
        state.payment.value,
        state.payment_id,
        state.provider_deadline_at,
        state.provider_notified,
        state.customer_notified,
        state.failure_reason,
        state.correlation_id,
        state.idempotency_key,
        state.events_applied,
        state.requested_at,
        state.updated_at,
    )


def _placeholders(first: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(first, first + count))


_INITIAL_COUNT = len(_INITIAL_COLUMNS.split(","))

_OUTBOX_COUNT = len(OUTBOX_COLUMNS.split(","))

# The booking's first row and its BookingRequested in the outbox, in one statement: one round
# trip, and one implicit transaction, so both are written or neither.
_INSERT_INITIAL = f"""
    WITH booking AS (
        INSERT INTO bookings ({_INITIAL_COLUMNS})
        VALUES ({_placeholders(1, _INITIAL_COUNT)}) ON CONFLICT (id) DO NOTHING
    )
    INSERT INTO api_outbox ({OUTBOX_COLUMNS})
    VALUES ({_placeholders(_INITIAL_COUNT + 1, _OUTBOX_COUNT)}) ON CONFLICT (event_id) DO NOTHING
"""

# Every write of an idempotent request in one statement: the key's claim and, only if this
# statement made it, the booking's row and its event in the outbox. A key whose booking exists
# while its own row does not has expired and was deleted: it is not claimed again (the booking
# id derives from the key, so it would name the old booking). A concurrent claim of the
# same key makes the INSERT wait for that transaction, as a separate statement would.
_CLAIM_AND_INSERT_INITIAL = f"""
    WITH claimed AS (
        INSERT INTO idempotency_keys (customer_id, key, request_hash, booking_id)
        SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT FROM bookings WHERE id = $4)
        ON CONFLICT DO NOTHING RETURNING booking_id
    ), booking AS (
        INSERT INTO bookings ({_INITIAL_COLUMNS})
        SELECT {_placeholders(5, _INITIAL_COUNT)} WHERE EXISTS (SELECT FROM claimed)
        ON CONFLICT (id) DO NOTHING
    ), queued AS (
        INSERT INTO api_outbox ({OUTBOX_COLUMNS})
        SELECT {_placeholders(5 + _INITIAL_COUNT, _OUTBOX_COUNT)}
        WHERE EXISTS (SELECT FROM claimed)
        ON CONFLICT (event_id) DO NOTHING
    )
    SELECT EXISTS (SELECT FROM claimed)
"""


async def insert_initial_booking(
    conn: asyncpg.Connection, state: BookingState, requested: OutboxEntry
) -> None:
    """The booking's first read-model row (kept if the materializer was faster) and the
    ``requested`` event in the outbox, both or neither."""
    await conn.execute(_INSERT_INITIAL, *_initial_values(state), *requested.values)


async def claim_key_and_insert_initial_booking(
    conn: asyncpg.Connection,
    state: BookingState,
    requested: OutboxEntry,
    *,
    key: str,
    request_hash: str,
) -> bool:
    """Claim the customer's ``Idempotency-Key`` for this booking, write the booking's first row
    and queue ``requested``, in one statement; False (and nothing written) if the key was
    claimed before."""
    claimed: bool = await conn.fetchval(
        _CLAIM_AND_INSERT_INITIAL,
        state.customer_id,
        key,
        request_hash,
        state.booking_id,
        *_initial_values(state),
        *requested.values,
    )
    return claimed


BOOKING_COLUMNS = (
    "b.id, b.customer_id, b.provider_id, b.service_id, b.slot_start, b.slot_end, "
    "b.amount_minor, b.currency, b.payment_method, b.notes, b.status, b.hold, b.payment, "
    "b.payment_id, b.provider_deadline_at, b.failure_reason, b.correlation_id, "
    "b.requested_at, b.updated_at, b.state"
)


async def fetch_booking(conn: asyncpg.Connection, booking_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {BOOKING_COLUMNS} FROM bookings b WHERE b.id = $1", booking_id
    )
    return row


async def fetch_history(conn: asyncpg.Connection, booking_id: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            'SELECT event_id, event_type, producer, occurred_at, topic, partition, "offset" '
            "FROM booking_events WHERE booking_id = $1 ORDER BY occurred_at, event_id",
            booking_id,
        )
    )


async def delete_expired_idempotency_keys(
    db: asyncpg.Pool | asyncpg.Connection, ttl_seconds: int, batch: int = 5000
) -> int:
    """Delete idempotency keys older than ``ttl_seconds``, at most ``batch`` of them (oldest
    first, so a backlog shrinks over several calls without one long lock); how many went."""
    deleted: int = await db.fetchval(
        """WITH expired AS (
               DELETE FROM idempotency_keys WHERE ctid IN (
                   SELECT ctid FROM idempotency_keys
                   WHERE created_at < now() - make_interval(secs => $1)
                   ORDER BY created_at LIMIT $2
               ) RETURNING 1
           )
           SELECT count(*) FROM expired""",
        float(ttl_seconds),
        batch,
    )
    return deleted
