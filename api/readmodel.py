"""SQL the routes share: paged queries, and the bookings read model's rows.

The bookings row the API writes at 202 time comes from the same pure fold the materializer
uses (``erynoa.saga.start``), with ``INSERT ... ON CONFLICT DO NOTHING``: whichever of the two
writes first, the row is the same, so a client polling right after its 202 sees ``requested``.
The materializer later fills in its own bookkeeping columns (``state``, ``last_event_*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from api.schemas import Pagination
from erynoa.saga import BookingState


async def fetch_page(
    conn: asyncpg.Connection,
    *,
    columns: str,
    from_where: str,
    order_by: str,
    params: Sequence[Any],
    paging: Pagination,
) -> tuple[list[asyncpg.Record], int]:
    """One page of rows and the total count, in one query (two only past the last page)."""
    n = len(params)
    rows = await conn.fetch(
        f"SELECT {columns}, count(*) OVER () AS total_count {from_where} "
        f"ORDER BY {order_by} LIMIT ${n + 1} OFFSET ${n + 2}",
        *params,
        paging.per_page,
        paging.offset,
    )
    if rows:
        return list(rows), int(rows[0]["total_count"])
    if paging.offset == 0:
        return [], 0
    total = await conn.fetchval(f"SELECT count(*) {from_where}", *params)
    return [], int(total)


async def insert_initial_booking(conn: asyncpg.Connection, state: BookingState) -> None:
    """The booking's first read-model row (no-op if the materializer was faster)."""
    await conn.execute(
        """
        INSERT INTO bookings (
            id, customer_id, provider_id, service_id, slot_start, slot_end,
            amount_minor, currency, payment_method, notes, status, hold, payment, payment_id,
            provider_deadline_at, provider_notified, customer_notified, failure_reason,
            correlation_id, idempotency_key, events_applied, requested_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                $15, $16, $17, $18, $19, $20, $21, $22, $23)
        ON CONFLICT (id) DO NOTHING
        """,
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
