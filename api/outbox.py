"""The API's transactional outbox: an event is written with the change it announces, in one
transaction, and published after COMMIT.

A route that changes a booking (create, accept, reject, cancel) writes its rows and an
``api_outbox`` row holding the encoded event in one transaction, and answers 202 only after
COMMIT; then ``ApiOutbox.publish_soon`` hands the event to Kafka in the background and deletes
the row (shortly after: the rows of many requests in one statement). If Kafka refuses, or the
process dies first, the row stays: ``ApiOutbox``'s relay (in
every API process, ``FOR UPDATE SKIP LOCKED`` so processes share the work) publishes rows
older than ``RELAY_AFTER_SECONDS``. The event id is fixed when the row is written, so a row
published twice (the relay and a slow first attempt, a deletion that failed) is the same event
twice, which every consumer deduplicates. The agents keep their own outbox the same way
(``agent_outbox``, ``streams.runtime``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from aiokafka import errors as kafka_errors

from erynoa import tracing
from erynoa.codec import EventCodec, UndecodableEvent, decode_off_loop
from erynoa.db import GatheredDeletes
from erynoa.events import BookingEvent

log = logging.getLogger("erynoa.api.outbox")

# A row this old was not published by the request that wrote it (Kafka refused, the process
# died): the relay publishes it. Younger rows are still the writer's to publish.
RELAY_AFTER_SECONDS = 5.0
RELAY_INTERVAL_SECONDS = 2.0
RELAY_BATCH = 500
# How long stopping waits for committed events still being published.
STOP_WAIT_SECONDS = 5.0


# Records the broker refuses however often they are sent: set aside, so that the rows behind
# them go on. Authorization and version refusals are not among them: those are the cluster's
# configuration, refuse every row alike, and end when an operator fixes it, so the relay waits.
SET_ASIDE_REFUSALS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordException,
)


@dataclass(frozen=True)
class Refused:
    """An outbox row to set aside, and why."""

    event_id: str
    booking_id: str
    reason: str


@dataclass(frozen=True)
class OutboxEntry:
    """One event as the outbox keeps it: encoded, with the Kafka headers it travels with."""

    event: BookingEvent
    payload: bytes
    headers: Mapping[str, str]

    @classmethod
    def of(cls, event: BookingEvent, codec: EventCodec, headers: Mapping[str, str]) -> OutboxEntry:
        headers = dict(headers)
        # The trace context of the request that caused the event, taken now: the publish
        # happens later, outside the request's span.
        tracing.inject_into(headers)
        # A request never waits on the registry: 503 while the ids are not resolved yet.
        return cls(event, codec.encode_cached(event), headers)

    @property
    def item(self) -> tuple[BookingEvent, bytes, Mapping[str, str]]:
        """The entry as ``EventPublisher.publish_encoded`` takes it."""
        return (self.event, self.payload, self.headers)

    @property
    def values(self) -> tuple[str, str, bytes, dict[str, str]]:
        """``(event_id, booking_id, payload, headers)``, the order of ``OUTBOX_COLUMNS``."""
        return (self.event.event_id, self.event.booking_id, self.payload, dict(self.headers))


OUTBOX_COLUMNS = "event_id, booking_id, payload, headers"


async def queue(conn: asyncpg.Connection, entry: OutboxEntry) -> None:
    """Write ``entry`` (in the caller's transaction; see ``ApiOutbox.publish_soon`` after it)."""
    await conn.execute(
        f"INSERT INTO api_outbox ({OUTBOX_COLUMNS}) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (event_id) DO NOTHING",
        *entry.values,
    )


async def queue_once(
    conn: asyncpg.Connection, entry: OutboxEntry, record: str, *record_args: object
) -> bool:
    """Write a request's record and, only if this statement wrote it, ``entry``: one statement
    (one implicit transaction), so both are written or neither, and a repeat queues nothing.

    ``record`` is an ``INSERT ... ON CONFLICT DO NOTHING RETURNING ...``; its parameters are
    ``$1``-``$4``, the entry's ``values``, then ``$5`` on, ``record_args``. True when the
    record is new (and ``entry`` is queued).
    """
    fresh = await conn.fetchval(
        f"""WITH record AS ({record}), queued AS (
                INSERT INTO api_outbox ({OUTBOX_COLUMNS})
                SELECT $1, $2, $3, $4 FROM record ON CONFLICT (event_id) DO NOTHING
            )
            SELECT EXISTS (SELECT FROM record)""",
        *entry.values,
        *record_args,
    )
    return bool(fresh)


class EncodedPublisher(Protocol):
    """What publishes outbox rows (``api.runtime.KafkaLink``): returns once Kafka acknowledged
    every event, raises otherwise."""

    async def publish_encoded(
        self, items: Sequence[tuple[BookingEvent, bytes, Mapping[str, str]]]
    ) -> object: ...


class ApiOutbox:
    """Publishes what the routes committed, and relays what nobody published."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        kafka: EncodedPublisher,
        codec: EventCodec,
        *,
        relay_after_seconds: float = RELAY_AFTER_SECONDS,
        relay_interval_seconds: float = RELAY_INTERVAL_SECONDS,
    ) -> None:
        self._pool = pool
        self._kafka = kafka
        self._codec = codec
        self._relay_after = relay_after_seconds
        self._relay_interval = relay_interval_seconds
        self._pending: list[OutboxEntry] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._deletes: GatheredDeletes | None = None
        # Whether any row is set aside (refreshed by every relay pass): while one is, new
        # events go through the relay, which keeps each booking's events in order.
        self._set_aside_exists = False

    @property
    def codec(self) -> EventCodec:
        return self._codec

    def start(self) -> None:
        pool = self._pool

        async def delete_published(event_ids: list[str]) -> None:
            await pool.execute("DELETE FROM api_outbox WHERE event_id = ANY($1::uuid[])", event_ids)

        # Off the publishing path, many requests' rows in one statement; a row left over is
        # only published again by the relay, with the same event id.
        self._deletes = GatheredDeletes("api-outbox-cleanup", delete_published)
        self._tasks = [
            asyncio.create_task(self._publish_committed(), name="api-outbox-publish"),
            asyncio.create_task(self._relay_forever(), name="api-outbox-relay"),
        ]

    async def stop(self) -> None:
        # What is not published by then stays in the table for the relay of any API process.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_WAIT_SECONDS)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._deletes is not None:
            await self._deletes.close(STOP_WAIT_SECONDS)
            self._deletes = None

    def publish_soon(self, *entries: OutboxEntry) -> None:
        """Publish committed entries now, off the request's path (the 202 does not wait)."""
        self._pending.extend(entries)
        self._idle.clear()
        self._wake.set()

    async def relay_once(self, older_than_seconds: float | None = None) -> int:
        """Publish and delete the rows older than ``older_than_seconds``; how many.

        The rows stay locked (``SKIP LOCKED``: another process's relay takes other rows) until
        they are deleted, in the same transaction, after Kafka acknowledged them all. A row
        whose record the broker refuses every time (``SET_ASIDE_REFUSALS``), or whose payload
        cannot be decoded at all, is set aside with its reason instead of failing the batch
        forever; the rows of its booking wait with it, so a booking's events are never
        published out of order. Anything else (the broker or the registry away) fails the
        pass, and every row is tried again.
        """
        older = self._relay_after if older_than_seconds is None else older_than_seconds
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT {OUTBOX_COLUMNS} FROM api_outbox o "
                "WHERE created_at < now() - make_interval(secs => $1) AND refused_at IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM api_outbox r "
                "                WHERE r.booking_id = o.booking_id AND r.refused_at IS NOT NULL) "
                "ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED",
                older,
                RELAY_BATCH,
            )
            self._set_aside_exists = bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM api_outbox WHERE refused_at IS NOT NULL)"
                )
            )
            if not rows:
                return 0
            entries: list[OutboxEntry] = []
            refused: list[Refused] = []
            held_back: set[str] = set()
            for row in rows:
                booking_id = str(row["booking_id"])
                if booking_id in held_back:
                    continue  # behind a row set aside: stays, in order, for later
                try:
                    event = await decode_off_loop(self._codec, bytes(row["payload"]))
                    if not isinstance(event, BookingEvent):
                        raise UndecodableEvent(f"a {type(event).__name__} is not a booking event")
                except UndecodableEvent as exc:
                    refused.append(Refused(str(row["event_id"]), booking_id, _reason(exc)))
                    held_back.add(booking_id)
                    continue
                entries.append(OutboxEntry(event, bytes(row["payload"]), dict(row["headers"])))
            try:
                await self._kafka.publish_encoded([e.item for e in entries])
            except SET_ASIDE_REFUSALS:
                entries, one_by_one = await self._publish_each(entries)
                refused += one_by_one
            if refused:
                await self._set_aside(conn, refused)
            await conn.execute(
                "DELETE FROM api_outbox WHERE event_id = ANY($1::uuid[])",
                [e.event.event_id for e in entries],
            )
        if entries:
            log.warning("relayed %d event(s) the API had not published", len(entries))
        return len(rows)

    async def _publish_each(
        self, entries: list[OutboxEntry]
    ) -> tuple[list[OutboxEntry], list[Refused]]:
        """Publish one by one: which were published, which the broker refused. Anything
        but a refusal (the broker gone) propagates, and the whole batch is tried again."""
        published: list[OutboxEntry] = []
        refused: list[Refused] = []
        held_back: set[str] = set()
        for entry in entries:
            booking_id = entry.event.booking_id
            if booking_id in held_back:
                continue  # published after the refused one, once an operator cleared it
            try:
                await self._kafka.publish_encoded([entry.item])
            except SET_ASIDE_REFUSALS as exc:
                refused.append(Refused(entry.event.event_id, booking_id, _reason(exc)))
                held_back.add(booking_id)
                continue
            published.append(entry)
        return published, refused

    async def _set_aside(self, conn: asyncpg.Connection, refused: list[Refused]) -> None:
        self._set_aside_exists = True
        for row in refused:
            await conn.execute(
                "UPDATE api_outbox SET refused_at = now(), refusal = $2 WHERE event_id = $1",
                row.event_id,
                row.reason,
            )
            log.error(
                "outbox event %s set aside, it is refused every time: %s "
                "(the booking's events wait until refused_at is cleared)",
                row.event_id,
                row.reason,
                extra={"booking_id": row.booking_id},
            )

    async def _publish_committed(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            taken, self._pending = self._pending, []
            if self._set_aside_exists:
                # A booking of this batch may have a row set aside: its new events must not
                # overtake it. The relay, which checks per booking, publishes them shortly.
                if not self._pending:
                    self._idle.set()
                continue
            try:
                await self._kafka.publish_encoded([e.item for e in taken])
                if self._deletes is not None:
                    self._deletes.add([e.event.event_id for e in taken])
            except Exception as exc:
                # Not lost: the rows are in the table, and the relay takes them from there.
                log.warning(
                    "%d committed event(s) left to the outbox relay: %s",
                    len(taken),
                    str(exc) or type(exc).__name__,
                )
            if not self._pending:
                self._idle.set()

    async def _relay_forever(self) -> None:
        while True:
            await asyncio.sleep(self._relay_interval)
            try:
                while await self.relay_once() == RELAY_BATCH:
                    pass
            except Exception as exc:
                log.warning("outbox relay: %s (next try shortly)", str(exc) or type(exc).__name__)


def _reason(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:500]
