"""The agents' bookkeeping in PostgreSQL: per-booking lock, state, dedup, outbox, early events.

Every function takes a connection inside the caller's transaction (``streams.runtime`` opens
one per batch of messages), so a handler's states, its "processed" marks and the events it
emitted commit together or not at all. Tables: ``agent_state``, ``processed_events``
(migrations 0002/0003), ``agent_outbox`` and ``agent_early_events`` (0005), ``agent_gave_up``
(0012); and how far the
agent's group got in each partition it consumes (``consumer_positions``, 0002).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from erynoa.saga import BookingState

_LOCK_STATEMENT = "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest({keys}) AS k"
# What a lock key may contain to be written into a statement as a literal: an agent's name and
# a booking id (a UUID) leave nothing that could end the literal.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9:_-]+")


def _lock_keys(agent: str, booking_ids: Iterable[str]) -> list[str]:
    """Sorted: every transaction takes its locks in the same order, so two batches sharing
    bookings can never wait for each other in a cycle (``unnest`` yields the array's order and
    the scan calls the function row by row)."""
    return sorted(f"{agent}:{booking_id}" for booking_id in set(booking_ids))


@contextlib.asynccontextmanager
async def locked_transaction(
    conn: asyncpg.Connection, agent: str, booking_ids: Iterable[str]
) -> AsyncIterator[None]:
    """A transaction holding this agent's locks of ``booking_ids`` from its start, begun in ONE
    round trip: it serializes the agent's handlers for these bookings until it ends.

    Advisory locks rather than ``SELECT ... FOR UPDATE`` on ``agent_state``: they also work for
    the first event of a booking, when there is no row to lock yet. Taken in one statement, in
    the order of their keys (``_lock_keys``). A hash collision only makes two unrelated
    bookings wait for each other.

    ``conn.transaction()`` sends its BEGIN on its own: a round trip per batch that does nothing.
    Here BEGIN and the lock statement travel as one simple-protocol query. That protocol takes
    no parameters, so the keys are written in as literals, which is safe only for keys made of
    plain characters (``_PLAIN_KEY``); any other key takes the two round trips.

    Ends with COMMIT, or ROLLBACK when the block raises. A COMMIT of a transaction that had
    failed is answered "ROLLBACK" by the server; that raises here rather than pass for a commit.
    A nested ``conn.transaction()`` inside the block raises (asyncpg refuses one in a manually
    started transaction), so nothing can commit this one early.
    """
    keys = _lock_keys(agent, booking_ids)
    try:
        if all(_PLAIN_KEY.fullmatch(key) for key in keys):
            literal = "ARRAY[" + ",".join(f"'{key}'" for key in keys) + "]::text[]"
            await conn.execute("BEGIN; " + _LOCK_STATEMENT.format(keys=literal))
        else:
            await conn.execute("BEGIN")
            await conn.execute(_LOCK_STATEMENT.format(keys="$1::text[]"), keys)
        yield
    except BaseException:
        # Also when the connection does not know yet that it is in a transaction (cancelled
        # while BEGIN was on its way): outside one, ROLLBACK only warns.
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise
    status = await conn.execute("COMMIT")
    if status != "COMMIT":
        raise asyncpg.InterfaceError(f"the transaction did not commit (the server said {status})")


async def try_lock_booking(conn: asyncpg.Connection, agent: str, booking_id: str) -> bool:
    """``locked_transaction``'s lock for one booking, in a transaction begun already, but
    giving up at once when another worker holds it (timers)."""
    got = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", f"{agent}:{booking_id}"
    )
    return bool(got)


Partition = tuple[str, int]
"""(topic, partition)."""

# Positions only move forward: a late writer that lost the partition cannot undo. Rows in key
# order (``_position_columns``), so two writers of the same rows lock them in the same order.
_ADVANCE_POSITIONS = """
    INSERT INTO consumer_positions (consumer, topic, partition, next_offset, updated_at)
    SELECT {consumer}, t, p, o, now()
    FROM unnest({topics}::text[], {partitions}::int[], {offsets}::bigint[]) AS x(t, p, o)
    ON CONFLICT (consumer, topic, partition) DO UPDATE
    SET next_offset = GREATEST(consumer_positions.next_offset, EXCLUDED.next_offset),
        updated_at = now()"""


def _position_columns(
    next_offsets: Mapping[Partition, int],
) -> tuple[list[str], list[int], list[int]]:
    items = sorted(next_offsets.items())
    return [t for (t, _), _ in items], [p for (_, p), _ in items], [o for _, o in items]


@dataclass(frozen=True)
class Advance:
    """A consumer group's positions to move forward in the same transaction (``commit_batch``)."""

    consumer: str
    next_offsets: Mapping[Partition, int]


@dataclass(frozen=True)
class Stored:
    state: BookingState
    headers: dict[str, str]


async def load_state(conn: asyncpg.Connection, agent: str, booking_id: str) -> Stored | None:
    row = await conn.fetchrow(
        "SELECT state, headers FROM agent_state WHERE agent = $1 AND booking_id = $2",
        agent,
        booking_id,
    )
    if row is None:
        return None
    return Stored(BookingState.from_json(row["state"]), dict(row["headers"]))


@dataclass(frozen=True)
class Loaded:
    """What a batch's transaction starts from: the stored states, the events already done, and
    the events kept for bookings that had not started."""

    stored: dict[str, Stored]
    """By booking id; a booking without a row has not started for this agent."""
    processed: frozenset[str]
    """The batch's event ids this agent processed before (redeliveries)."""
    early: dict[str, list[bytes]]
    """Events kept by ``keep_early`` for the batch's bookings, each booking's in arrival order;
    ``commit_batch`` deletes those of the bookings that start."""
    gave_up: dict[str, GaveUp]
    """Failures recorded for the batch's events (``record_gave_up``) whose copy to the retry or
    dead-letter topic was not confirmed (``forget_gave_up``), by event id."""


@dataclass(frozen=True)
class GaveUp:
    """A failure an adapter gave up on, as kept in ``agent_gave_up``."""

    error_class: str
    error: str


async def load_batch(
    conn: asyncpg.Connection, agent: str, booking_ids: Sequence[str], event_ids: Sequence[str]
) -> Loaded:
    """The bookings' states, which of the events were processed and the kept early events, in
    ONE round trip.

    Call it inside ``locked_transaction``, in a statement of its own: a READ COMMITTED
    statement sees what was committed when it started, so it must start after the locks were
    granted.
    """
    rows = await conn.fetch(
        """SELECT 'state' AS kind, s.booking_id, s.state, s.headers,
                  NULL::uuid AS event_id, NULL::bytea AS payload, NULL::bigint AS seq
           FROM agent_state s
           WHERE s.agent = $1 AND s.booking_id = ANY($2::uuid[])
           UNION ALL
           SELECT 'processed', NULL, NULL, NULL, p.event_id, NULL, NULL FROM processed_events p
           WHERE p.consumer = $1 AND p.event_id = ANY($3::uuid[])
           UNION ALL
           SELECT 'early', e.booking_id, NULL, NULL, NULL, e.payload, e.seq
           FROM agent_early_events e
           WHERE e.agent = $1 AND e.booking_id = ANY($2::uuid[])
           UNION ALL
           SELECT 'gave_up', NULL, NULL,
                  jsonb_build_object('error_class', g.error_class, 'error', g.error),
                  g.event_id, NULL, NULL
           FROM agent_gave_up g
           WHERE g.agent = $1 AND g.event_id = ANY($3::uuid[])""",
        agent,
        list(booking_ids),
        list(event_ids),
    )
    stored: dict[str, Stored] = {}
    processed: set[str] = set()
    early: list[tuple[int, str, bytes]] = []
    gave_up: dict[str, GaveUp] = {}
    for row in rows:
        if row["kind"] == "processed":
            processed.add(str(row["event_id"]))
        elif row["kind"] == "gave_up":
            failure = row["headers"]
            gave_up[str(row["event_id"])] = GaveUp(failure["error_class"], failure["error"])
        elif row["kind"] == "early":
            early.append((int(row["seq"]), str(row["booking_id"]), bytes(row["payload"])))
        else:
            state = BookingState.from_json(row["state"])
            stored[state.booking_id] = Stored(state, dict(row["headers"]))
    kept: dict[str, list[bytes]] = {}
    for _, booking_id, payload in sorted(early):
        kept.setdefault(booking_id, []).append(payload)
    return Loaded(stored, frozenset(processed), kept, gave_up)


async def record_gave_up(
    conn: asyncpg.Connection, agent: str, failures: Mapping[str, GaveUp]
) -> None:
    """Keep failures adapters gave up on, by event id, in the batch's transaction: its commit
    marks their messages processed, so a redelivery after a crash could copy them nowhere
    else."""
    await conn.execute(
        """INSERT INTO agent_gave_up (agent, event_id, error_class, error)
           SELECT $1, e, c, m FROM unnest($2::uuid[], $3::text[], $4::text[]) AS x(e, c, m)
           ON CONFLICT DO NOTHING""",
        agent,
        list(failures),
        [f.error_class for f in failures.values()],
        [f.error for f in failures.values()],
    )


async def forget_gave_up(pool: asyncpg.Pool, agent: str, event_ids: Sequence[str]) -> None:
    """Their messages are on the retry or dead-letter topic now."""
    await pool.execute(
        "DELETE FROM agent_gave_up WHERE agent = $1 AND event_id = ANY($2::uuid[])",
        agent,
        list(event_ids),
    )


async def save_state(
    conn: asyncpg.Connection, agent: str, state: BookingState, headers: Mapping[str, str]
) -> None:
    await conn.execute(
        """INSERT INTO agent_state (agent, booking_id, state, headers, updated_at)
           VALUES ($1, $2, $3, $4, now())
           ON CONFLICT (agent, booking_id)
           DO UPDATE SET state = EXCLUDED.state, headers = EXCLUDED.headers, updated_at = now()""",
        agent,
        state.booking_id,
        state.to_json(),
        dict(headers),
    )


@dataclass(frozen=True)
class OutboxRow:
    event_id: str
    booking_id: str
    payload: bytes
    headers: dict[str, str]


async def add_to_outbox(
    conn: asyncpg.Connection,
    agent: str,
    booking_id: str,
    events: Sequence[tuple[str, bytes]],
    headers: Mapping[str, str],
) -> None:
    """Queue encoded events (``(event_id, payload)``, in order) for publishing after COMMIT."""
    await conn.executemany(
        """INSERT INTO agent_outbox (agent, event_id, booking_id, payload, headers)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
        [(agent, event_id, booking_id, payload, dict(headers)) for event_id, payload in events],
    )


def _outbox_rows(rows: Sequence[asyncpg.Record]) -> list[OutboxRow]:
    return [
        OutboxRow(str(r["event_id"]), str(r["booking_id"]), bytes(r["payload"]), dict(r["headers"]))
        for r in rows
    ]


async def pending_outbox(conn: asyncpg.Connection, agent: str, booking_id: str) -> list[OutboxRow]:
    rows = await conn.fetch(
        """SELECT event_id, booking_id, payload, headers FROM agent_outbox
           WHERE agent = $1 AND booking_id = $2 ORDER BY seq""",
        agent,
        booking_id,
    )
    return _outbox_rows(rows)


async def commit_batch(
    conn: asyncpg.Connection,
    agent: str,
    bookings: Sequence[str],
    states: Sequence[tuple[BookingState, Mapping[str, str]]],
    processed: Sequence[str],
    events: Sequence[OutboxRow],
    started: Sequence[str] = (),
    advance: Advance | None = None,
) -> list[OutboxRow]:
    """``save_state``, the ``processed_events`` marks, ``add_to_outbox`` and
    ``pending_outbox`` for a whole batch in one statement: the end of every handled batch, so
    its cost must not grow with the number of messages in it. The events kept early for the
    ``started`` bookings (folded in now) are deleted in the same statement, and ``advance``
    moves the consumer's positions past the batch: done in the transaction that did the work,
    rather than in one more round trip after it.

    Returns the outbox of ``bookings`` in publishing order: rows left by an earlier failed
    publish (read from the statement's snapshot) and then the ones queued here (``RETURNING``;
    a data-modifying CTE's rows are not visible to the statement's own reads). The events are
    inserted in the given order, so their ``seq`` follows it.
    """
    rows = await conn.fetch(
        """WITH saved AS (
               INSERT INTO agent_state (agent, booking_id, state, headers, updated_at)
               SELECT $1, s.booking_id, s.state, s.headers, now()
               FROM unnest($3::uuid[], $4::jsonb[], $5::jsonb[]) AS s(booking_id, state, headers)
               ON CONFLICT (agent, booking_id)
               DO UPDATE SET state = EXCLUDED.state, headers = EXCLUDED.headers,
                             updated_at = now()
           ), marked AS (
               INSERT INTO processed_events (consumer, event_id)
               SELECT $1, id FROM unnest($6::uuid[]) AS id
               ON CONFLICT DO NOTHING
           ), queued AS (
               INSERT INTO agent_outbox (agent, event_id, booking_id, payload, headers)
               SELECT $1, e.event_id, e.booking_id, e.payload, e.headers
               FROM unnest($7::uuid[], $8::uuid[], $9::bytea[], $10::jsonb[])
                    WITH ORDINALITY AS e(event_id, booking_id, payload, headers, ord)
               ORDER BY e.ord
               ON CONFLICT DO NOTHING
               RETURNING event_id, booking_id, payload, headers, seq
           ), taken AS (
               DELETE FROM agent_early_events
               WHERE agent = $1 AND booking_id = ANY($11::uuid[])
           ), advanced AS (
               """
        + _ADVANCE_POSITIONS.format(consumer="$12", topics="$13", partitions="$14", offsets="$15")
        + """
           )
           SELECT event_id, booking_id, payload, headers, seq FROM agent_outbox
           WHERE agent = $1 AND booking_id = ANY($2::uuid[])
           UNION ALL
           SELECT event_id, booking_id, payload, headers, seq FROM queued
           ORDER BY seq""",
        agent,
        list(bookings),
        [state.booking_id for state, _ in states],
        [state.to_json() for state, _ in states],
        [dict(headers) for _, headers in states],
        list(processed),
        [e.event_id for e in events],
        [e.booking_id for e in events],
        [e.payload for e in events],
        [dict(e.headers) for e in events],
        list(started),
        advance.consumer if advance is not None else "",
        *_position_columns(advance.next_offsets if advance is not None else {}),
    )
    return _outbox_rows(rows)


async def stale_outbox(
    conn: asyncpg.Connection,
    agent: str,
    older_than_seconds: float,
    limit: int = 500,
    skip_bookings: Sequence[str] = (),
) -> list[OutboxRow]:
    """What a crashed or failed publish left behind (the relay sweep publishes it): every row of
    each booking that has one older than ``older_than_seconds``, in the order written, except
    the bookings in ``skip_bookings``.

    Whole bookings, not only their old rows: ``created_at`` is the writing transaction's start,
    and a transaction that waited for the booking's lock writes a row after one whose
    ``created_at`` is later. Selecting by age alone could publish that row before the one
    written ahead of it."""
    rows = await conn.fetch(
        """SELECT event_id, booking_id, payload, headers FROM agent_outbox
           WHERE agent = $1
             AND booking_id IN (SELECT booking_id FROM agent_outbox
                                WHERE agent = $1 AND created_at < now() - make_interval(secs => $2))
             AND booking_id <> ALL($4::uuid[])
           ORDER BY seq LIMIT $3""",
        agent,
        older_than_seconds,
        limit,
        list(skip_bookings),
    )
    return _outbox_rows(rows)


async def remove_from_outbox(
    conn: asyncpg.Connection | asyncpg.Pool, agent: str, event_ids: Sequence[str]
) -> None:
    await conn.execute(
        "DELETE FROM agent_outbox WHERE agent = $1 AND event_id = ANY($2::uuid[])",
        agent,
        list(event_ids),
    )


async def keep_early(
    conn: asyncpg.Connection, agent: str, booking_id: str, event_id: str, payload: bytes
) -> None:
    await conn.execute(
        """INSERT INTO agent_early_events (agent, event_id, booking_id, payload)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
        agent,
        event_id,
        booking_id,
        payload,
    )


async def missed_events(
    conn: asyncpg.Connection, agent: str, booking_id: str, topics: Sequence[str]
) -> list[bytes]:
    """The booking's events in the read model's log (``booking_events``) on ``topics`` that
    this agent never processed — e.g. one parked in a dead-letter topic — in log order."""
    rows = await conn.fetch(
        """SELECT e.body FROM booking_events e
           WHERE e.booking_id = $2 AND e.topic = ANY($3::text[])
             AND NOT EXISTS (SELECT 1 FROM processed_events p
                             WHERE p.consumer = $1 AND p.event_id = e.event_id)
           ORDER BY e.occurred_at, e.event_id""",
        agent,
        booking_id,
        list(topics),
    )
    return [bytes(r["body"]) for r in rows]


class Positions(Protocol):
    """How far a consumer group got in each partition: everything before the offset is done."""

    async def get(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The next offset to handle of each partition that has one recorded."""

    async def advance(self, next_offsets: Mapping[Partition, int]) -> None:
        """Move forward (never back: a late writer that lost the partition cannot undo)."""

    async def reset(self, partition: Partition, next_offset: int) -> None:
        """Move to where the log now starts (its earlier records were deleted)."""


class PgPositions:
    """``Positions`` in ``consumer_positions``, the table the materializer uses too."""

    def __init__(self, pool: asyncpg.Pool, consumer: str) -> None:
        self._pool = pool
        self._consumer = consumer

    async def get(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        wanted = sorted(set(partitions))
        rows = await self._pool.fetch(
            """SELECT topic, partition, next_offset FROM consumer_positions
               WHERE consumer = $1
                 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[]))""",
            self._consumer,
            [t for t, _ in wanted],
            [p for _, p in wanted],
        )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def advance(self, next_offsets: Mapping[Partition, int]) -> None:
        if not next_offsets:
            return
        await self._pool.execute(
            _ADVANCE_POSITIONS.format(consumer="$1", topics="$2", partitions="$3", offsets="$4"),
            self._consumer,
            *_position_columns(next_offsets),
        )

    async def reset(self, partition: Partition, next_offset: int) -> None:
        await self._pool.execute(
            """INSERT INTO consumer_positions (consumer, topic, partition, next_offset, updated_at)
               VALUES ($1, $2, $3, $4, now())
               ON CONFLICT (consumer, topic, partition) DO UPDATE
               SET next_offset = EXCLUDED.next_offset, updated_at = now()""",
            self._consumer,
            partition[0],
            partition[1],
            next_offset,
        )
