"""The reservation agent: holds a seat of (service, slot), converts it, releases it.

Run: ``erynoa worker reservation``. Consumes ``bookings``, ``payments`` and
``provider-responses``; emits ``ReservationHeld | ReservationRejected``, ``ReservationConverted``
and ``ReservationReleased`` (topic ``reservations``).

Capacity is decided by PostgreSQL's row lock on ``slot_capacity``: the conditional
``UPDATE ... SET held = held + 1 WHERE held + confirmed < capacity`` runs one at a time per row,
so of two requests for the last seat exactly one gets a row back, whichever worker handles it.
That is the "single owner per slot" the design asks for. It beat repartitioning by slot key
because a repartition needs an extra topic and hop per booking (a second consume-produce with
its own failure modes), a hot slot still serializes on one partition, and the hold would still
have to be stored somewhere; here the hold, the agent's state and its outbox commit in the
same transaction, so a redelivery can never hold twice.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from erynoa import saga
from erynoa.events import (
    BookingEvent,
    ReservationConverted,
    ReservationHeld,
    ReservationRejected,
    ReservationReleased,
    derived_event_id,
)
from streams.runtime import BaseAdapter, Context

SLOT_FULL = "slot full"
UNKNOWN_SERVICE = "unknown or inactive service"


def hold_id_for(booking_id: str) -> str:
    """A booking holds at most one seat, so its hold id is derived from the booking alone."""
    return derived_event_id(booking_id, "reservation:hold")


def _rejected(ctx: Context, reason: str) -> BookingEvent:
    s = ctx.state
    return ctx.emit(
        ReservationRejected,
        "rejected",
        service_id=s.service_id,
        slot_start=s.slot_start,
        reason=reason,
    )


class ReservationAdapter(BaseAdapter):
    agent: saga.Agent = "reservation"

    async def execute(self, action: saga.Action, ctx: Context) -> list[BookingEvent]:
        match action:
            case saga.HoldCapacity():
                return [await self._hold(ctx)]
            case saga.ConvertHold():
                return [await self._convert(ctx)]
            case saga.ReleaseHold(reason=reason):
                return [await self._release(ctx, reason)]
        raise TypeError(f"reservation cannot {action!r}")

    async def _hold(self, ctx: Context) -> BookingEvent:
        s = ctx.state
        existing = await ctx.conn.fetchrow(
            "SELECT hold_id FROM reservation_holds WHERE booking_id = $1", s.booking_id
        )
        if existing is not None:  # held before (state lost its event?): report the same hold
            return ctx.emit(
                ReservationHeld,
                "held",
                hold_id=str(existing["hold_id"]),
                service_id=s.service_id,
                slot_start=s.slot_start,
            )
        if not await _ensure_slot(ctx.conn, s.service_id, s.slot_start):
            return _rejected(ctx, UNKNOWN_SERVICE)
        taken = await ctx.conn.fetchval(
            """UPDATE slot_capacity SET held = held + 1
               WHERE service_id = $1 AND slot_start = $2 AND held + confirmed < capacity
               RETURNING held""",
            s.service_id,
            s.slot_start,
        )
        if taken is None:
            return _rejected(ctx, SLOT_FULL)
        hold_id = hold_id_for(s.booking_id)
        await ctx.conn.execute(
            """INSERT INTO reservation_holds (booking_id, hold_id, service_id, slot_start, status)
               VALUES ($1, $2, $3, $4, 'held')""",
            s.booking_id,
            hold_id,
            s.service_id,
            s.slot_start,
        )
        return ctx.emit(
            ReservationHeld,
            "held",
            hold_id=hold_id,
            service_id=s.service_id,
            slot_start=s.slot_start,
        )

    async def _convert(self, ctx: Context) -> BookingEvent:
        row = await ctx.conn.fetchrow(
            """UPDATE reservation_holds SET status = 'converted', updated_at = now()
               WHERE booking_id = $1 AND status = 'held'
               RETURNING hold_id, service_id, slot_start""",
            ctx.booking_id,
        )
        if row is not None:
            await ctx.conn.execute(
                """UPDATE slot_capacity SET held = held - 1, confirmed = confirmed + 1
                   WHERE service_id = $1 AND slot_start = $2""",
                row["service_id"],
                row["slot_start"],
            )
        hold_id = ctx.state.hold_id or hold_id_for(ctx.booking_id)
        return ctx.emit(ReservationConverted, "converted", hold_id=hold_id)

    async def _release(self, ctx: Context, reason: str) -> BookingEvent:
        # The CTE reads the status before the update: the seat goes back to `held` or to
        # `confirmed`, whichever it occupied. Only a status that actually changes moves a count,
        # so releasing twice (a redelivery) gives back one seat.
        row = await ctx.conn.fetchrow(
            """WITH before AS (
                   SELECT booking_id, status FROM reservation_holds
                   WHERE booking_id = $1 AND status IN ('held', 'converted') FOR UPDATE)
               UPDATE reservation_holds h SET status = 'released', updated_at = now()
               FROM before WHERE h.booking_id = before.booking_id
               RETURNING h.hold_id, h.service_id, h.slot_start, before.status AS was""",
            ctx.booking_id,
        )
        if row is not None:
            column = "held" if row["was"] == "held" else "confirmed"
            await ctx.conn.execute(
                f"""UPDATE slot_capacity SET {column} = {column} - 1
                    WHERE service_id = $1 AND slot_start = $2""",
                row["service_id"],
                row["slot_start"],
            )
            hold_id: str | None = str(row["hold_id"])
        else:
            hold_id = await ctx.conn.fetchval(
                "SELECT hold_id::text FROM reservation_holds WHERE booking_id = $1", ctx.booking_id
            )
        return ctx.emit(ReservationReleased, "released", hold_id=hold_id, reason=reason)


async def _ensure_slot(conn: asyncpg.Connection, service_id: str, slot_start: datetime) -> bool:
    """Create the slot's capacity row from the catalog on first use; False if no such service."""
    await conn.execute(
        """INSERT INTO slot_capacity (service_id, slot_start, capacity)
           SELECT id, $2, capacity_per_slot FROM services WHERE id = $1 AND active
           ON CONFLICT DO NOTHING""",
        service_id,
        slot_start,
    )
    found = await conn.fetchval(
        "SELECT 1 FROM slot_capacity WHERE service_id = $1 AND slot_start = $2",
        service_id,
        slot_start,
    )
    return found is not None
