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

from collections import defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

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

    # vars(): the dataclass's fields in declaration order, read faster than through fields()
    # (this runs for every event a rebuild replays).
    payload = dict(vars(event))
    for name, value in payload.items():
        if isinstance(value, datetime):
            payload[name] = value.isoformat()
        elif isinstance(value, Money):
            payload[name] = {"amount_minor": value.amount_minor, "currency": value.currency}
    payload["event_type"] = event.event_type
    return payload


# Where an event sits in its booking's history: (occurred_at, event_id).
OrderKey = tuple[datetime, str]


def _order_key(event: BookingEvent) -> OrderKey:
    return (event.occurred_at, event.event_id)


class Fold(NamedTuple):
    """A booking's state and the last event folded into it (its ``bookings`` row)."""

    state: BookingState
    last: OrderKey


def group_by_booking(events: Iterable[BookingEvent]) -> dict[str, list[BookingEvent]]:
    by_booking: dict[str, list[BookingEvent]] = defaultdict(list)
    for event in events:
        by_booking[event.booking_id].append(event)
    return by_booking


def booking_row(state: BookingState, last_event: OrderKey) -> dict[str, Any]:
    """The ``bookings`` row for a state, in ``ROW_COLUMNS`` order (COPY takes its values;
    the upsert takes it as JSON, ``_json_ready``)."""
    return {
        "id": state.booking_id,
        "customer_id": state.customer_id,
        "provider_id": state.provider_id,
        "service_id": state.service_id,
        "slot_start": state.slot_start,
        "slot_end": state.slot_end,
        "amount_minor": state.price.amount_minor,
        "currency": state.price.currency,
        "payment_method": state.payment_method,
        "notes": state.notes,
        "status": state.status.value,
        "hold": state.hold.value,
        "payment": state.payment.value,
        "payment_id": state.payment_id,
        "provider_deadline_at": state.provider_deadline_at,
        "provider_notified": state.provider_notified,
        "customer_notified": state.customer_notified,
        "failure_reason": state.failure_reason,
        "correlation_id": state.correlation_id,
        "idempotency_key": state.idempotency_key,
        "events_applied": state.events_applied,
        "requested_at": state.requested_at,
        "updated_at": state.updated_at,
        "state": state.to_json(),
        "last_event_at": last_event[0],
        "last_event_id": last_event[1],
    }


# The columns of ``booking_events`` that ``event_record`` fills (recorded_at is the default).
EVENT_COLUMNS = (
    "event_id", "booking_id", "event_type", "producer", "occurred_at", "correlation_id",
    "causation_id", "topic", "partition", "offset", "payload", "body",
)  # fmt: skip


# The column types of ``EVENT_COLUMNS``, as in migrations/0002_read_model.sql.
_EVENT_COLUMN_TYPES = (
    "uuid", "uuid", "text", "text", "timestamptz", "text",
    "text", "text", "integer", "bigint", "jsonb", "bytea",
)  # fmt: skip


def event_record(record: Record) -> tuple[Any, ...]:
    """The ``booking_events`` row of one message, in ``EVENT_COLUMNS`` order."""
    event = record.event
    return (
        event.event_id,
        event.booking_id,
        event.event_type,
        event.producer,
        event.occurred_at,
        event.correlation_id,
        event.causation_id,
        record.topic,
        record.partition,
        record.offset,
        event_payload(event),
        record.body,
    )


# The columns ``booking_row`` fills: every column of ``bookings``.
ROW_COLUMNS = (
    "id", "customer_id", "provider_id", "service_id", "slot_start", "slot_end",
    "amount_minor", "currency", "payment_method", "notes", "status", "hold", "payment",
    "payment_id", "provider_deadline_at", "provider_notified", "customer_notified",
    "failure_reason", "correlation_id", "idempotency_key", "events_applied",
    "requested_at", "updated_at", "state", "last_event_at", "last_event_id",
)  # fmt: skip


def _json_ready(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


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

    async def positions(
        self, conn: asyncpg.Connection, *, for_update: bool = False
    ) -> dict[tuple[str, int], int]:
        """The next offset to apply per (topic, partition); ``for_update`` locks the rows."""
        rows = await conn.fetch(
            f"SELECT topic, partition, next_offset FROM {self.schema}.consumer_positions "
            "WHERE consumer = $1" + (" FOR UPDATE" if for_update else ""),
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
            # Locked: serializes two materializers that briefly own a partition together
            # (during a rebalance) and a rebuild's swap.
            stored = await self.positions(conn, for_update=True)
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
            await self.write_positions(conn, {key: o + 1 for key, o in high.items()})
        return BatchResult(len(new_events), skipped, written, rewind)

    async def write_positions(
        self, conn: asyncpg.Connection, next_offsets: Mapping[tuple[str, int], int]
    ) -> None:
        if next_offsets:
            await conn.executemany(
                f"INSERT INTO {self.schema}.consumer_positions "
                "(consumer, topic, partition, next_offset, updated_at) "
                "VALUES ($1, $2, $3, $4, now()) ON CONFLICT (consumer, topic, partition) "
                "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                [(self.consumer, t, p, o) for (t, p), o in next_offsets.items()],
            )

    async def _insert_events(
        self, conn: asyncpg.Connection, records: Sequence[Record]
    ) -> list[BookingEvent]:
        if not records:
            return []
        rows = [event_record(r) for r in records]
        listed = ", ".join(_quoted_columns(list(EVENT_COLUMNS)))
        arrays = ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_EVENT_COLUMN_TYPES, 1))
        # One statement: the batch's rows travel as one array per column.
        inserted = await conn.fetch(
            f"INSERT INTO {self.schema}.booking_events ({listed}) "
            f"SELECT DISTINCT ON (event_id) {listed} FROM unnest({arrays}) AS e({listed}) "
            # The first copy in log order wins, so a redelivery never moves an event.
            'ORDER BY event_id, "offset" ON CONFLICT (event_id) DO NOTHING RETURNING event_id',
            *(list(column) for column in zip(*rows, strict=True)),
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
        by_booking = group_by_booking(events)
        rows = await conn.fetch(
            f"SELECT id, state, last_event_at, last_event_id FROM {self.schema}.bookings "
            "WHERE id = ANY($1::uuid[]) FOR UPDATE",
            list(by_booking),
        )
        current = {
            str(r["id"]): Fold(
                BookingState.from_json(r["state"]), (r["last_event_at"], str(r["last_event_id"]))
            )
            for r in rows
            if r["state"] is not None  # the API's placeholder: the log was not folded yet
        }
        folded = await self.fold(conn, by_booking, current)
        if folded:
            await self.write_bookings(conn, folded.values())
        return len(folded)

    async def fold(
        self,
        conn: asyncpg.Connection,
        by_booking: Mapping[str, list[BookingEvent]],
        current: Mapping[str, Fold],
        unlogged: Container[str] = (),
    ) -> dict[str, Fold]:
        """The new fold of each booking with new events (already in ``booking_events``).

        Events later than a booking's last folded one apply to its ``current`` fold; an
        earlier one, or a booking without a fold yet, refolds from its stored log. The caller
        may name bookings ``unlogged`` that had no events stored before these: their log is
        the new events, so it need not be read back.
        """
        out: dict[str, Fold] = {}
        refold: list[str] = []
        for booking_id, new in by_booking.items():
            new.sort(key=_order_key)
            known = current.get(booking_id)
            if known is not None and _order_key(new[0]) > known.last:
                state = known.state
                for event in new:
                    state = saga.evolve(state, event)
                out[booking_id] = Fold(state, _order_key(new[-1]))
            elif booking_id in unlogged:
                folded = fold_history(new)
                if folded is not None:
                    out[booking_id] = folded
            # Every booking whose BookingRequested is stored has a fold, so without one in
            # the new events a refold would find none either: it waits for its request.
            elif known is not None or any(isinstance(e, BookingRequested) for e in new):
                refold.append(booking_id)
        if refold:
            out.update(await self._refold(conn, refold, by_booking))
        return out

    async def write_bookings(self, conn: asyncpg.Connection, folds: Iterable[Fold]) -> None:
        """Insert or replace the ``bookings`` rows of ``folds`` (one statement)."""
        rows = [_json_ready(booking_row(f.state, f.last)) for f in folds]
        await conn.execute(self._upsert_sql, rows)

    async def _refold(
        self,
        conn: asyncpg.Connection,
        booking_ids: list[str],
        new: Mapping[str, list[BookingEvent]],
    ) -> dict[str, Fold]:
        rows = await conn.fetch(
            f"SELECT booking_id, event_id, body FROM {self.schema}.booking_events "
            "WHERE booking_id = ANY($1::uuid[]) ORDER BY booking_id, occurred_at, event_id",
            booking_ids,
        )
        # The new events are decoded already; only the older ones are decoded again.
        decoded = {e.event_id: e for b in booking_ids for e in new[b]}
        history: dict[str, list[BookingEvent]] = defaultdict(list)
        for r in rows:
            event = decoded.get(str(r["event_id"])) or self.codec.decode(r["body"])
            assert isinstance(event, BookingEvent)  # only booking topics reach this table
            history[str(r["booking_id"])].append(event)
        out = {}
        for booking_id, events in history.items():
            folded = fold_history(events)
            if folded is not None:
                out[booking_id] = folded
        return out


def fold_history(events: Sequence[BookingEvent]) -> Fold | None:
    """A booking's fold from its whole log (``saga.fold_log``); None while its
    BookingRequested has not arrived (it refolds when it does)."""
    state = saga.fold_log(events)
    if state is None:
        return None
    return Fold(state, max(_order_key(e) for e in events))


class BulkLoad:
    """A replay of the log into an empty schema (``rebuild``), in large batches.

    The same fold as ``Projection.apply`` (``Projection.fold``), minus what only a live read
    model shared with other writers needs: the folds stay in memory between batches instead
    of being read back and upserted each time, each batch's events are copied straight into
    ``booking_events`` (duplicates dropped here, the first copy in log order kept, as
    ``apply`` keeps it), and the ``bookings`` rows and positions are written once by
    ``finish``. Memory grows with the number of bookings (one state each), not of events.
    """

    def __init__(self, projection: Projection) -> None:
        self.projection = projection
        self.folds: dict[str, Fold] = {}
        self.bookings: set[str] = set()  # every booking with events in booking_events
        self._written: set[str] = set()  # event ids in booking_events
        self._next: dict[tuple[str, int], int] = {}

    async def add(
        self,
        conn: asyncpg.Connection,
        records: Sequence[Record],
        undecodable: Sequence[tuple[str, int, int]] = (),
    ) -> int:
        """Fold one batch in (any size; larger batches refold less); returns new events."""
        first: dict[str, Record] = {}
        for record in records:
            event_id = record.event.event_id
            if event_id in self._written:
                continue
            chosen = first.get(event_id)
            if chosen is None or record.offset < chosen.offset:
                first[event_id] = record
        for topic, partition, offset in undecodable:
            self._advance(topic, partition, offset)
        for record in records:
            self._advance(record.topic, record.partition, record.offset)
        if not first:
            return 0
        self._written.update(first)
        await conn.copy_records_to_table(
            "booking_events",
            schema_name=self.projection.schema,
            records=[event_record(r) for r in first.values()],
            columns=EVENT_COLUMNS,
        )
        events = [r.event for r in first.values()]
        by_booking = group_by_booking(events)
        unlogged = by_booking.keys() - self.bookings
        self.bookings.update(unlogged)
        self.folds.update(await self.projection.fold(conn, by_booking, self.folds, unlogged))
        return len(events)

    def _advance(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        if offset >= self._next.get(key, 0):
            self._next[key] = offset + 1

    async def finish(self, conn: asyncpg.Connection) -> int:
        """Write every booking's row and the positions reached; returns the rows written."""
        await conn.copy_records_to_table(
            "bookings",
            schema_name=self.projection.schema,
            records=[tuple(booking_row(f.state, f.last).values()) for f in self.folds.values()],
            columns=ROW_COLUMNS,
        )
        await self.projection.write_positions(conn, self._next)
        return len(self.folds)


def _quoted_columns(columns: list[str]) -> list[str]:
    return [f'"{c}"' for c in columns]
