"""The agents' bookkeeping in PostgreSQL: per-booking lock, state, dedup, outbox, early events.

Every function takes a connection inside the caller's transaction (``streams.runtime`` opens
one per message), so a handler's state, its "processed" mark and the events it emitted commit
together or not at all. Tables: ``agent_state``, ``processed_events`` (migrations 0002/0003),
``agent_outbox`` and ``agent_early_events`` (0005).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from erynoa.saga import BookingState


async def lock_booking(conn: asyncpg.Connection, agent: str, booking_id: str) -> None:
    """Serialize this agent's handlers for one booking until the transaction ends.

    An advisory lock rather than ``SELECT ... FOR UPDATE`` on ``agent_state``: it also works
    for the first event of a booking, when there is no row to lock yet. A hash collision only
    makes two unrelated bookings wait for each other.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{agent}:{booking_id}"
    )


async def try_lock_booking(conn: asyncpg.Connection, agent: str, booking_id: str) -> bool:
    """Like ``lock_booking`` but gives up at once when another worker holds it (timers)."""
    got = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", f"{agent}:{booking_id}"
    )
    return bool(got)


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


async def load_unprocessed(
    conn: asyncpg.Connection, agent: str, booking_id: str, event_id: str
) -> tuple[bool, Stored | None]:
    """``was_processed`` and ``load_state`` in one round trip (the handler's hot path).

    Call it after ``lock_booking``, in a statement of its own: a READ COMMITTED statement sees
    what was committed when it started, so it must start after the lock was granted.
    """
    row = await conn.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $3)
                  AS processed,
                  s.state, s.headers
           FROM (SELECT 1) AS one
           LEFT JOIN agent_state s ON s.agent = $1 AND s.booking_id = $2""",
        agent,
        booking_id,
        event_id,
    )
    assert row is not None  # the FROM clause always yields one row
    if row["state"] is None:
        return bool(row["processed"]), None
    stored = Stored(BookingState.from_json(row["state"]), dict(row["headers"]))
    return bool(row["processed"]), stored


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


async def was_processed(conn: asyncpg.Connection, agent: str, event_id: str) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2", agent, event_id
    )
    return found is not None


async def mark_processed(conn: asyncpg.Connection, agent: str, event_ids: Sequence[str]) -> None:
    await conn.executemany(
        """INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)
           ON CONFLICT DO NOTHING""",
        [(agent, event_id) for event_id in event_ids],
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


async def commit_step(
    conn: asyncpg.Connection,
    agent: str,
    state: BookingState,
    headers: Mapping[str, str],
    processed: Sequence[str],
    events: Sequence[tuple[str, bytes]],
) -> list[OutboxRow]:
    """``save_state`` + ``mark_processed`` + ``add_to_outbox`` + ``pending_outbox`` in ONE
    round trip: the end of every handled message (profiled: these four statements were a
    third of an agent's PostgreSQL waits). Returns the booking's outbox in publishing order:
    rows left by an earlier failed publish (read from the statement's snapshot) and then the
    ones queued here (``RETURNING``; a data-modifying CTE's rows are not visible to the
    statement's own reads). The emitted events are inserted in order, so their ``seq`` follows
    it.
    """
    rows = await conn.fetch(
        """WITH saved AS (
               INSERT INTO agent_state (agent, booking_id, state, headers, updated_at)
               VALUES ($1, $2, $3, $4, now())
               ON CONFLICT (agent, booking_id)
               DO UPDATE SET state = EXCLUDED.state, headers = EXCLUDED.headers,
                             updated_at = now()
           ), marked AS (
               INSERT INTO processed_events (consumer, event_id)
               SELECT $1, id FROM unnest($5::uuid[]) AS id
               ON CONFLICT DO NOTHING
           ), queued AS (
               INSERT INTO agent_outbox (agent, event_id, booking_id, payload, headers)
               SELECT $1, e.event_id, $2, e.payload, $4
               FROM unnest($6::uuid[], $7::bytea[]) WITH ORDINALITY AS e(event_id, payload, ord)
               ORDER BY e.ord
               ON CONFLICT DO NOTHING
               RETURNING event_id, booking_id, payload, headers, seq
           )
           SELECT event_id, booking_id, payload, headers, seq FROM agent_outbox
           WHERE agent = $1 AND booking_id = $2
           UNION ALL
           SELECT event_id, booking_id, payload, headers, seq FROM queued
           ORDER BY seq""",
        agent,
        state.booking_id,
        state.to_json(),
        dict(headers),
        list(processed),
        [event_id for event_id, _ in events],
        [payload for _, payload in events],
    )
    return _outbox_rows(rows)


async def stale_outbox(
    conn: asyncpg.Connection, agent: str, older_than_seconds: float, limit: int = 500
) -> list[OutboxRow]:
    """Rows a crashed or failed publish left behind (the relay sweep publishes them)."""
    rows = await conn.fetch(
        """SELECT event_id, booking_id, payload, headers FROM agent_outbox
           WHERE agent = $1 AND created_at < now() - make_interval(secs => $2)
           ORDER BY seq LIMIT $3""",
        agent,
        older_than_seconds,
        limit,
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


async def take_early(conn: asyncpg.Connection, agent: str, booking_id: str) -> list[bytes]:
    rows = await conn.fetch(
        """DELETE FROM agent_early_events WHERE agent = $1 AND booking_id = $2
           RETURNING seq, payload""",
        agent,
        booking_id,
    )
    return [bytes(r["payload"]) for r in sorted(rows, key=lambda r: int(r["seq"]))]


def text_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in headers.items()}
