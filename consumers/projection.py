"""The read model's projection: a batch of events into ``bookings`` and ``booking_events``.

Used by the live materializer and by ``rebuild`` alike, against any schema, so both produce
the same rows by construction. Exactly-once in effect: the partition positions in
``consumer_positions`` are read (locked) and written in the same transaction as the rows, so a
redelivered batch is recognised and skipped; ``booking_events`` is keyed by event id.

Events of one booking arrive on several topics, so their consumption order is not their
order. Each booking's state is the fold of its events sorted by ``(occurred_at, event_id)``:
an event later than the last one folded is applied incrementally; an earlier one (or a
booking whose ``BookingRequested`` was not seen yet) makes the booking refold from its log.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from erynoa import saga
from erynoa.codec import EventCodec
from erynoa.events import BookingEvent, BookingRequested, Money
from erynoa.saga import BookingState


@dataclass(frozen=True)
class Record:
    """One decoded message with where it came from."""

    topic: str
    partition: int
    offset: int
    event: BookingEvent
    body: bytes


@dataclass(frozen=True)
class BatchResult:
    applied: int  # events new to the log
    skipped: int  # events already applied (redelivery)
    bookings: int  # booking rows written
    # Partitions whose batch started past the stored position: seek back there.
    rewind: dict[tuple[str, int], int]


def event_payload(event: BookingEvent) -> dict[str, Any]:
    """The event as JSON for people and the API (the Avro ``body`` is what refolds)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, Money):
            return {"amount_minor": value.amount_minor, "currency": value.currency}
        return value

    payload = {f.name: plain(getattr(event, f.name)) for f in dataclasses.fields(event)}
    payload["event_type"] = event.event_type
    return payload


def _order_key(event: BookingEvent) -> tuple[datetime, str]:
    return (event.occurred_at, event.event_id)


def booking_row(state: BookingState, last_event: tuple[datetime, str]) -> dict[str, Any]:
    """The ``bookings`` row for a state (also what the API writes at 202 time)."""
    return {
        "id": state.booking_id,
        "customer_id": state.customer_id,
        "provider_id": state.provider_id,
        "service_id": state.service_id,
        "slot_start": state.slot_start.isoformat(),
        "slot_end": state.slot_end.isoformat(),
        "amount_minor": state.price.amount_minor,
        "currency": state.price.currency,
        "payment_method": state.payment_method,
        "notes": state.notes,
        "status": state.status.value,
        "hold": state.hold.value,
        "payment": state.payment.value,
        "payment_id": state.payment_id,
        "provider_deadline_at": (
            state.provider_deadline_at.isoformat() if state.provider_deadline_at else None
        ),
        "provider_notified": state.provider_notified,
        "customer_notified": state.customer_notified,
        "failure_reason": state.failure_reason,
        "correlation_id": state.correlation_id,
        "idempotency_key": state.idempotency_key,
        "events_applied": state.events_applied,
        "requested_at": state.requested_at.isoformat(),
        "updated_at": state.updated_at.isoformat(),
        "state": state.to_json(),
        "last_event_at": last_event[0].isoformat(),
        "last_event_id": last_event[1],
    }


# The columns ``booking_row`` fills: every column of ``bookings``.
ROW_COLUMNS = (
    "id", "customer_id", "provider_id", "service_id", "slot_start", "slot_end",
    "amount_minor", "currency", "payment_method", "notes", "status", "hold", "payment",
    "payment_id", "provider_deadline_at", "provider_notified", "customer_notified",
    "failure_reason", "correlation_id", "idempotency_key", "events_applied",
    "requested_at", "updated_at", "state", "last_event_at", "last_event_id",
)  # fmt: skip


def upsert_bookings_sql(schema: str) -> str:
    # One statement for the whole batch: the rows travel as one JSON array parameter.
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in ROW_COLUMNS if c != "id")
    columns = ", ".join(ROW_COLUMNS)
    return (
        f"INSERT INTO {schema}.bookings ({columns}) "
        f"SELECT {columns} FROM jsonb_populate_recordset(NULL::{schema}.bookings, $1::jsonb) "
        f"ON CONFLICT (id) DO UPDATE SET {updates}"
    )


class Projection:
    """Applies batches for one consumer name into one schema."""

    def __init__(self, consumer: str, codec: EventCodec, schema: str = "public") -> None:
        self.consumer = consumer
        self.codec = codec
        self.schema = schema
        self._upsert_sql = upsert_bookings_sql(schema)

    async def positions(self, conn: asyncpg.Connection) -> dict[tuple[str, int], int]:
        rows = await conn.fetch(
            f"SELECT topic, partition, next_offset FROM {self.schema}.consumer_positions "
            "WHERE consumer = $1",
            self.consumer,
        )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def apply(
        self,
        conn: asyncpg.Connection,
        records: Sequence[Record],
        undecodable: Sequence[tuple[str, int, int]] = (),
    ) -> BatchResult:
        """Apply one batch in one transaction (the caller commits Kafka offsets after).

        ``undecodable`` are (topic, partition, offset) of messages sent to the dead-letter
        topic: they only advance the position.
        """
        async with conn.transaction():
            stored = await self._lock_positions(conn)
            fresh: list[Record] = []
            rewind: dict[tuple[str, int], int] = {}
            high: dict[tuple[str, int], int] = {}
            skipped = 0
            first_seen: dict[tuple[str, int], int] = {}
            for topic, partition, offset in [
                (r.topic, r.partition, r.offset) for r in records
            ] + list(undecodable):
                key = (topic, partition)
                first_seen[key] = min(first_seen.get(key, offset), offset)
            for key, first in first_seen.items():
                if key in stored and first > stored[key]:
                    # A gap: positions are the truth (a rebuild swap may have moved them).
                    rewind[key] = stored[key]
            for record in records:
                key = (record.topic, record.partition)
                if key in rewind:
                    continue
                if record.offset < stored.get(key, 0):
                    skipped += 1
                    continue
                fresh.append(record)
                high[key] = max(high.get(key, -1), record.offset)
            for topic, partition, offset in undecodable:
                key = (topic, partition)
                if key not in rewind and offset >= stored.get(key, 0):
                    high[key] = max(high.get(key, -1), offset)

            new_events = await self._insert_events(conn, fresh)
            written = await self._fold(conn, new_events)
            if high:
                await conn.executemany(
                    f"INSERT INTO {self.schema}.consumer_positions "
                    "(consumer, topic, partition, next_offset, updated_at) "
                    "VALUES ($1, $2, $3, $4, now()) ON CONFLICT (consumer, topic, partition) "
                    "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                    [(self.consumer, t, p, o + 1) for (t, p), o in high.items()],
                )
        return BatchResult(len(new_events), skipped, written, rewind)

    async def _lock_positions(self, conn: asyncpg.Connection) -> dict[tuple[str, int], int]:
        # FOR UPDATE serializes two materializers that briefly own a partition together
        # (during a rebalance) and a rebuild's swap.
        rows = await conn.fetch(
            f"SELECT topic, partition, next_offset FROM {self.schema}.consumer_positions "
            "WHERE consumer = $1 FOR UPDATE",
            self.consumer,
        )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def _insert_events(
        self, conn: asyncpg.Connection, records: Sequence[Record]
    ) -> list[BookingEvent]:
        if not records:
            return []
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS incoming_events "
            f"(LIKE {self.schema}.booking_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        rows = [
            (
                r.event.event_id,
                r.event.booking_id,
                r.event.event_type,
                r.event.producer,
                r.event.occurred_at,
                r.event.correlation_id,
                r.event.causation_id,
                r.topic,
                r.partition,
                r.offset,
                event_payload(r.event),
                r.body,
            )
            for r in records
        ]
        columns = [
            "event_id", "booking_id", "event_type", "producer", "occurred_at", "correlation_id",
            "causation_id", "topic", "partition", "offset", "payload", "body",
        ]  # fmt: skip
        await conn.copy_records_to_table("incoming_events", records=rows, columns=columns)
        inserted = await conn.fetch(
            f"INSERT INTO {self.schema}.booking_events ({', '.join(_quoted(columns))}) "
            f"SELECT DISTINCT ON (event_id) {', '.join(_quoted(columns))} FROM incoming_events "
            # The first copy in log order wins, so a redelivery never moves an event.
            'ORDER BY event_id, "offset" ON CONFLICT (event_id) DO NOTHING RETURNING event_id'
        )
        new_ids = {str(r["event_id"]) for r in inserted}
        seen: set[str] = set()
        fresh: list[BookingEvent] = []
        for record in records:
            if record.event.event_id in new_ids and record.event.event_id not in seen:
                seen.add(record.event.event_id)
                fresh.append(record.event)
        return fresh

    async def _fold(self, conn: asyncpg.Connection, events: Sequence[BookingEvent]) -> int:
        if not events:
            return 0
        by_booking: dict[str, list[BookingEvent]] = defaultdict(list)
        for event in events:
            by_booking[event.booking_id].append(event)
        rows = await conn.fetch(
            f"SELECT id, state, last_event_at, last_event_id FROM {self.schema}.bookings "
            "WHERE id = ANY($1::uuid[]) FOR UPDATE",
            list(by_booking),
        )
        current = {str(r["id"]): r for r in rows}
        out: list[dict[str, Any]] = []
        refold: list[str] = []
        for booking_id, new in by_booking.items():
            new.sort(key=_order_key)
            row = current.get(booking_id)
            state = BookingState.from_json(row["state"]) if row and row["state"] else None
            if state is None or row is None:
                refold.append(booking_id)
                continue
            last = (row["last_event_at"], str(row["last_event_id"]))
            if _order_key(new[0]) <= last:
                refold.append(booking_id)
                continue
            for event in new:
                state = saga.evolve(state, event)
            out.append(booking_row(state, _order_key(new[-1])))
        if refold:
            out.extend(await self._refold(conn, refold))
        if out:
            await conn.execute(self._upsert_sql, out)
        return len(out)

    async def _refold(
        self, conn: asyncpg.Connection, booking_ids: list[str]
    ) -> list[dict[str, Any]]:
        rows = await conn.fetch(
            f"SELECT booking_id, body FROM {self.schema}.booking_events "
            "WHERE booking_id = ANY($1::uuid[]) ORDER BY booking_id, occurred_at, event_id",
            booking_ids,
        )
        history: dict[str, list[BookingEvent]] = defaultdict(list)
        for r in rows:
            event = self.codec.decode(r["body"])
            assert isinstance(event, BookingEvent)  # only booking topics reach this table
            history[str(r["booking_id"])].append(event)
        out = []
        for _booking_id, events in history.items():
            requested = [e for e in events if isinstance(e, BookingRequested)]
            if not requested:
                continue  # its BookingRequested has not arrived yet; refold when it does
            # BookingRequested always comes first: a clock skew must not make it look late.
            state = saga.start(requested[0])
            for event in events:
                if not isinstance(event, BookingRequested):
                    state = saga.evolve(state, event)
            out.append(booking_row(state, _order_key(events[-1])))
        return out


def _quoted(columns: list[str]) -> list[str]:
    return [f'"{c}"' for c in columns]
