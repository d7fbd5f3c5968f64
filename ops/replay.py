"""Re-driving dead letters to the topic they came from, audited in ``dlq_replays``.

Replay re-publishes a message's original bytes and key to its origin topic, with the failure
headers removed, ``erynoa-replay: <replay id>`` added, and ``erynoa-attempts`` kept: a message
that fails again returns to the dead-letter topic with its attempt count continued instead of
starting the retry tiers over. The origin topic is read by *every* consumer group subscribed to
it, not only the one that failed; that is safe because every handler deduplicates by event id
(``processed_events``, the materializer's event log), so the groups that already handled the
event skip it and only the one that failed does the work.

Replaying the same dead-letter message twice has one effect: each replay claims the message's
position in ``dlq_replays`` (unique on topic, partition, offset) *before* publishing, so a second
replay, a concurrent one included, finds the claim and skips the message. ``again=True``
re-drives it anyway (still harmless downstream, by the same deduplication). Undecodable messages
would only fail again, so they are skipped unless asked for. Dry-run first::

    erynoa dlq replay --error-class GatewayUnavailable --since 2h --dry-run
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from erynoa import events as ev
from erynoa import kafka as k
from erynoa.codec import EventCodec
from erynoa.pacing import Pacer
from erynoa.saga import Policy
from erynoa.topics import TopicCatalog
from ops import sagas, wire
from ops.assess import DEFAULT_POLICY, SagaEffect, effect_on_saga
from ops.dead_letters import DeadLetter
from ops.errors import BadInput, InvalidBookingId, check_booking_id

# A replay claims a message, publishes it and records the result within seconds; a claim still
# ``pending`` long after was left by a replay that died in between (the API or CLI stopped), so it
# counts as failed: a later replay may claim the message again instead of skipping it forever.
# Re-driving a message that was in fact published before the crash is harmless downstream
# (every handler deduplicates by event id).
ABANDONED_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class PreviousReplay:
    """What ``dlq_replays`` knows about a message that was replayed before."""

    replay_id: str
    operator: str
    result: str  # pending | replayed | failed
    replayed_at: datetime
    replay_count: int
    detail: str | None

    def describe(self) -> str:
        return (
            f"{self.result} by {self.operator} at {self.replayed_at.isoformat(timespec='seconds')}"
            f" (replay {self.replay_id})"
        )

    def abandoned(self, now: datetime) -> bool:
        """A ``pending`` claim older than ``ABANDONED_AFTER``: its replay died before finishing."""
        return self.result == "pending" and now - self.replayed_at > ABANDONED_AFTER


def replay_note(previous: PreviousReplay | None, now: datetime) -> str | None:
    """What an operator should know about a message that is replayed although it was claimed
    before (pure); None when there is nothing to say."""
    if previous is None or not previous.abandoned(now):
        return None
    minutes = int(ABANDONED_AFTER.total_seconds() // 60)
    return (
        f"an earlier replay claimed it and never finished ({previous.describe()}, "
        f"pending for more than {minutes} min): treated as failed, replayed again"
    )


def skip_reason(
    message: DeadLetter,
    catalog: TopicCatalog,
    previous: PreviousReplay | None,
    *,
    now: datetime,
    again: bool = False,
    include_undecodable: bool = False,
) -> str | None:
    """Why ``message`` must not be replayed, or None to replay it (pure). A previous replay
    that failed, or whose ``pending`` claim was abandoned, does not stop a new one."""
    if message.value is None:
        return "empty message (a tombstone): nothing to replay"
    if message.event is None and not include_undecodable:
        return (
            f"undecodable ({message.undecodable}): it would only fail again; "
            "--include-undecodable re-drives it anyway"
        )
    origin = message.failure.origin_topic
    if origin is None:
        return f"no {k.H_ORIGIN_TOPIC} header: where it came from is unknown"
    topic = catalog.topics.get(origin)
    if topic is None:
        return f"origin topic {origin!r} is not in the topic catalog"
    if topic.kind != "event":
        return f"origin {origin!r} is a {topic.kind.replace('_', '-')} topic, not an event topic"
    if message.event is not None and message.event.event_type not in topic.events:
        return f"{message.event.event_type} does not belong on {origin!r} (see topics.yaml)"
    if (
        previous is not None
        and not again
        and previous.result != "failed"
        and not previous.abandoned(now)
    ):
        return f"already replayed: {previous.describe()}; --again re-drives it"
    return None


@dataclass(frozen=True)
class PlannedReplay:
    message: DeadLetter
    skip: str | None  # why it will not be replayed; None: it will
    previous: PreviousReplay | None
    effect: SagaEffect | None = None
    note: str | None = None  # e.g. an abandoned claim that this replay takes over

    @property
    def replay(self) -> bool:
        return self.skip is None

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message.to_json(),
            "replay": self.replay,
            "skip": self.skip,
            "note": self.note,
            "previous": wire.plain(self.previous),
            "effect": self.effect.to_json() if self.effect else None,
        }


def plan_id(plan: Sequence[PlannedReplay]) -> str:
    """A fingerprint of everything an operator saw in a dry run: which messages, the decision
    for each and why, what was replayed before, and what each would do to its saga. A replay
    that names it runs only while the plan computed again has the same one."""
    seen = [
        {
            "at": [p.message.topic, p.message.partition, p.message.offset],
            "skip": p.skip,
            "previous": [p.previous.replay_id, p.previous.result] if p.previous else None,
            "effect": p.effect.describe() if p.effect else None,
        }
        for p in plan
    ]
    return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()


class StalePlan(Exception):
    """The plan changed since the dry run the caller confirms (a message replayed meanwhile,
    a saga that moved on): nothing was replayed."""

    def __init__(self, current: str) -> None:
        super().__init__(
            "the dry run is out of date: the messages or their sagas changed since; "
            "review the new plan and confirm it"
        )
        self.current = current


def check_plan(plan: Sequence[PlannedReplay], expected: str | None) -> str:
    """The plan's id; ``StalePlan`` when ``expected`` (a dry run's id) is given and differs."""
    current = plan_id(plan)
    if expected is not None and expected != current:
        raise StalePlan(current)
    return current


async def previous_replays(
    conn: asyncpg.Connection | asyncpg.Pool, messages: Sequence[DeadLetter]
) -> dict[tuple[str, int, int], PreviousReplay]:
    if not messages:
        return {}
    rows = await conn.fetch(
        "SELECT r.dlq_topic, r.dlq_partition, r.dlq_offset, r.replay_id::text, r.operator, "
        "r.result, r.replayed_at, r.replay_count, r.detail "
        "FROM dlq_replays r JOIN unnest($1::text[], $2::int[], $3::bigint[]) "
        "AS m(topic, partition, off) "
        "ON r.dlq_topic = m.topic AND r.dlq_partition = m.partition AND r.dlq_offset = m.off",
        [m.topic for m in messages],
        [m.partition for m in messages],
        [m.offset for m in messages],
    )
    return {
        (r["dlq_topic"], r["dlq_partition"], r["dlq_offset"]): PreviousReplay(
            r["replay_id"],
            r["operator"],
            r["result"],
            r["replayed_at"],
            r["replay_count"],
            r["detail"],
        )
        for r in rows
    }


async def plan_replay(
    conn: asyncpg.Connection | asyncpg.Pool,
    catalog: TopicCatalog,
    messages: Sequence[DeadLetter],
    codec: EventCodec,
    now: datetime,
    *,
    again: bool = False,
    include_undecodable: bool = False,
    with_effects: bool = False,
    policy: Policy = DEFAULT_POLICY,
) -> list[PlannedReplay]:
    """Decide for each message whether it will be replayed (reads, never writes); with
    ``with_effects``, what each replayed booking event would do to its saga."""
    previous = await previous_replays(conn, messages)
    logs: dict[str, list[ev.BookingEvent]] = {}
    plan = []
    for message in messages:
        before = previous.get((message.topic, message.partition, message.offset))
        skip = skip_reason(
            message,
            catalog,
            before,
            now=now,
            again=again,
            include_undecodable=include_undecodable,
        )
        effect = None
        if with_effects and skip is None and isinstance(message.event, ev.BookingEvent):
            booking_id = message.event.booking_id
            if booking_id not in logs:
                logs[booking_id] = await _booking_log(conn, booking_id, codec)
            effect = replay_effect(message, logs[booking_id], now, policy)
        note = replay_note(before, now) if skip is None else None
        plan.append(PlannedReplay(message, skip, before, effect, note))
    return plan


def replay_effect(
    message: DeadLetter,
    log: Sequence[ev.BookingEvent],
    now: datetime,
    policy: Policy = DEFAULT_POLICY,
) -> SagaEffect | None:
    """What replaying ``message`` would do to its booking (pure); None for a message that is
    not a booking event."""
    if not isinstance(message.event, ev.BookingEvent):
        return None
    return effect_on_saga(message.event, message.failure.consumer, log, now, policy)


async def _booking_log(
    conn: asyncpg.Connection | asyncpg.Pool, booking_id: str, codec: EventCodec
) -> list[ev.BookingEvent]:
    try:
        booking_id = check_booking_id(booking_id)
    except InvalidBookingId:
        return []  # not a uuid: no event of it can be in the log
    logged = await sagas.load_log(conn, booking_id, codec)
    return [e.event for e in logged if e.event is not None]


ReplayResult = Literal["replayed", "skipped", "failed"]


@dataclass(frozen=True)
class ReplayOutcome:
    message: DeadLetter
    result: ReplayResult
    detail: str | None = None
    partition: int | None = None  # where the copy landed in the origin topic
    offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.message.topic,
            "partition": self.message.partition,
            "offset": self.message.offset,
            "event_type": self.message.event_type,
            "event_id": self.message.event_id,
            "booking_id": self.message.booking_id,
            "origin_topic": self.message.failure.origin_topic,
            "result": self.result,
            "detail": self.detail,
            "replayed_partition": self.partition,
            "replayed_offset": self.offset,
        }


@dataclass(frozen=True)
class ReplayReport:
    replay_id: str
    operator: str
    outcomes: tuple[ReplayOutcome, ...]
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counted = Counter(o.result for o in self.outcomes)
        object.__setattr__(
            self, "counts", {r: counted.get(r, 0) for r in ("replayed", "skipped", "failed")}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "operator": self.operator,
            "seconds": round(self.seconds, 3),
            "counts": self.counts,
            "outcomes": [o.to_json() for o in self.outcomes],
        }


_CLAIM_SQL = """
INSERT INTO dlq_replays AS r (
    dlq_topic, dlq_partition, dlq_offset, replay_id, operator, origin_topic, origin_partition,
    origin_offset, event_id, event_type, booking_id, error_class, attempts, result)
VALUES ($1, $2, $3, $4::uuid, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending')
ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO UPDATE
SET replay_id = EXCLUDED.replay_id, operator = EXCLUDED.operator, result = 'pending',
    detail = NULL, replayed_partition = NULL, replayed_offset = NULL,
    replay_count = r.replay_count + 1, replayed_at = now()
WHERE r.result = 'failed' OR $14::boolean
    OR (r.result = 'pending' AND r.replayed_at < now() - $15::interval)
RETURNING r.replay_count
"""


_FINISH_SQL = """
UPDATE dlq_replays SET result = $4, detail = $5, replayed_partition = $6, replayed_offset = $7,
    replayed_at = now()
WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3
"""


_LOG_SQL = """
INSERT INTO dlq_replay_log (replay_id, dlq_topic, dlq_partition, dlq_offset, operator, forced,
    result, detail, replayed_partition, replayed_offset)
VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""


async def replay(
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    plan: Sequence[PlannedReplay],
    *,
    operator: str,
    replay_id: str | None = None,
    again: bool = False,
    rate: float | None = None,
    on_progress: Callable[[ReplayOutcome], None] | None = None,
) -> ReplayReport:
    """Re-drive every planned message to its origin topic, audited in ``dlq_replays``.

    Per message: claim its dead-letter position (a message someone else claimed meanwhile is
    skipped), publish the original key and bytes with ``erynoa.kafka.replay_headers``, wait
    for the broker's acknowledgement, then record the result. ``rate`` caps messages per second.
    """
    replay_id = replay_id or str(uuid.uuid4())
    if rate is not None and rate <= 0:
        raise BadInput(f"rate must be positive, got {rate}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    pacer = Pacer(rate, sum(1 for item in plan if item.replay), started)
    outcomes = []
    for item in plan:
        if item.skip is not None:
            outcome = ReplayOutcome(item.message, "skipped", item.skip)
        else:
            await asyncio.sleep(pacer.next_wait(loop.time()))
            pacer.take(loop.time())
            outcome = await _replay_one(pool, producer, item.message, replay_id, operator, again)
        outcomes.append(outcome)
        if on_progress is not None:
            on_progress(outcome)
    seconds = asyncio.get_running_loop().time() - started
    return ReplayReport(replay_id, operator, tuple(outcomes), seconds)


async def _replay_one(
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    message: DeadLetter,
    replay_id: str,
    operator: str,
    again: bool,
) -> ReplayOutcome:
    origin = message.failure.origin_topic
    assert origin is not None  # skip_reason refused messages without one
    position = (message.topic, message.partition, message.offset)
    claimed = await pool.fetchval(
        _CLAIM_SQL,
        *position,
        replay_id,
        operator,
        origin,
        message.failure.origin_partition,
        message.failure.origin_offset,
        message.event_id,
        message.event_type,
        message.booking_id,
        message.failure.error_class,
        message.failure.attempts,
        again,
        ABANDONED_AFTER,
    )
    if claimed is None:
        # Claimed since the plan was made (a concurrent replay): that one re-drives it.
        previous = (await previous_replays(pool, [message])).get(position)
        why = previous.describe() if previous else "claimed by another replay"
        return ReplayOutcome(message, "skipped", f"already replayed: {why}")
    try:
        metadata = await producer.send_and_wait(
            origin,
            value=message.value,
            key=message.raw_key,
            headers=k.replay_headers(message.headers, replay_id),
        )
    except (TimeoutError, KafkaError, OSError) as exc:
        detail = f"publishing to {origin} failed: {type(exc).__name__}: {exc}"
        await _finish(pool, position, replay_id, operator, again, "failed", detail, None, None)
        return ReplayOutcome(message, "failed", detail)
    detail = f"re-driven to {origin}[{metadata.partition}]@{metadata.offset}"
    await _finish(
        pool,
        position,
        replay_id,
        operator,
        again,
        "replayed",
        detail,
        metadata.partition,
        metadata.offset,
    )
    return ReplayOutcome(message, "replayed", detail, metadata.partition, metadata.offset)


async def _finish(
    pool: asyncpg.Pool,
    position: tuple[str, int, int],
    replay_id: str,
    operator: str,
    forced: bool,
    result: str,
    detail: str,
    partition: int | None,
    offset: int | None,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_FINISH_SQL, *position, result, detail, partition, offset)
        await conn.execute(
            _LOG_SQL, replay_id, *position, operator, forced, result, detail, partition, offset
        )
