"""An operator's day with poison messages, end to end on the real stack.

A booking whose payment keeps failing (the sandbox gateway has an outage for its card) and an
undecodable message both reach dead-letter topics with complete headers while other bookings
keep flowing. ``erynoa dlq replay --dry-run`` changes nothing; after the outage is fixed,
``erynoa dlq replay`` completes the stuck saga and the invariants hold; replaying again changes
nothing. The agents and the materializer run as real worker processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from erynoa import events as ev
from erynoa import kafka as k
from erynoa.kafka import EventPublisher, start_consumer, topic_partitions
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog, load_catalog
from ops.invariants import check_invariants
from tests.conftest import eventually
from tests.integration.materializing import pool_for, publisher_for, raw_producer
from tests.integration.saga.harness import (
    Service,
    User,
    a_slot,
    create_service,
    create_user,
    request_booking,
)
from tests.integration.worker_system import workers_running

pytestmark = pytest.mark.integration

FLAKY_CARD = "pm_card_mastercard"


@pytest.fixture(scope="module")
async def world(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Settings, dict[str, str]]]:
    """Own topics and database; the payment agent retries once after 1 s, then dead-letters."""
    async with workers_running(settings, tmp_path_factory.mktemp("poison")) as workers:
        yield workers.settings, workers.env


@pytest.fixture(scope="module")
async def db(world: tuple[Settings, dict[str, str]]) -> AsyncIterator[asyncpg.Pool]:
    async with pool_for(world[0], max_size=4) as pool:
        yield pool


@pytest.fixture(scope="module")
async def publisher(world: tuple[Settings, dict[str, str]]) -> AsyncIterator[EventPublisher]:
    async with publisher_for(world[0], "test-poison") as publisher:
        yield publisher


def catalog(s: Settings) -> TopicCatalog:
    return load_catalog(s.topics_file, s.topics_environment, s.topic_prefix)


def erynoa(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command line, exactly as typed."""
    return subprocess.run(
        [sys.executable, "-m", "erynoa", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def status(db: asyncpg.Pool, booking_id: str) -> str | None:
    value: str | None = await db.fetchval(
        "SELECT status FROM bookings WHERE id = $1::uuid", booking_id
    )
    return value


def status_becomes(db: asyncpg.Pool, booking_id: str, wanted: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await status(db, booking_id) == wanted

    return check


async def accept(publisher: EventPublisher, db: asyncpg.Pool, booking_id: str) -> None:
    row = await db.fetchrow(
        "SELECT provider_id, correlation_id FROM bookings WHERE id = $1::uuid", booking_id
    )
    await publisher.publish(
        ev.make(
            ev.ProviderAnswerSubmitted,
            booking_id=booking_id,
            producer="api",
            correlation_id=row["correlation_id"],
            provider_id=row["provider_id"],
            decision="accept",
        )
    )


async def end_offsets(s: Settings, topics: list[str]) -> dict[str, int]:
    """The sum of end offsets per topic (what a dry run must leave untouched)."""
    ends = await k.end_offsets(s.kafka_bootstrap, topics)
    totals = dict.fromkeys(topics, 0)
    for tp, end in ends.items():
        totals[tp.topic] += end
    return totals


@dataclass(frozen=True)
class Stuck:
    service: Service
    customer: User
    booking_id: str


@pytest.fixture
async def stuck_booking(db: asyncpg.Pool, publisher: EventPublisher) -> AsyncIterator[Stuck]:
    """A booking whose payment cannot be authorized: the sandbox gateway is down for its card
    until ``outage_over``, at the latest when the test ends."""
    service: Service = await create_service(db, capacity=5)
    customer: User = await create_user(db, "customer", email=False)
    await db.execute(
        "INSERT INTO sandbox_outages (payment_method, reason) VALUES ($1, 'test outage') "
        "ON CONFLICT DO NOTHING",
        FLAKY_CARD,
    )
    try:
        booking_id = await request_booking(publisher, service, customer, payment_method=FLAKY_CARD)
        yield Stuck(service, customer, booking_id)
    finally:
        await outage_over(db)


async def outage_over(db: asyncpg.Pool) -> None:
    await db.execute("DELETE FROM sandbox_outages WHERE payment_method = $1", FLAKY_CARD)


async def accepted_until_confirmed(
    db: asyncpg.Pool, publisher: EventPublisher, booking_id: str
) -> None:
    """Wait for the booking to reach its provider, who accepts; then wait for it to confirm."""
    await eventually(status_becomes(db, booking_id, "awaiting_provider"))
    await accept(publisher, db, booking_id)
    await eventually(status_becomes(db, booking_id, "confirmed"))


async def gateway_operations(db: asyncpg.Pool, booking_id: str) -> list[str]:
    """What the sandbox gateway did for the booking, in order."""
    ledger = await db.fetch(
        "SELECT operation FROM sandbox_ledger WHERE booking_id = $1::uuid ORDER BY id", booking_id
    )
    return [r["operation"] for r in ledger]


def dead_letters_for(env: dict[str, str], booking_id: str) -> list[dict[str, Any]]:
    result = erynoa(env, "dlq", "show", "--booking-id", booking_id, "--json")
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)["messages"]
    return found


async def test_poison_messages_park_in_the_dlq_and_replay_completes_the_saga(
    world: tuple[Settings, dict[str, str]],
    db: asyncpg.Pool,
    publisher: EventPublisher,
    stuck_booking: Stuck,
) -> None:
    s, env = world
    stuck = stuck_booking.booking_id
    # An undecodable message on the same topic, between the two bookings.
    poison_key = str(uuid.uuid4()).encode()
    async with raw_producer(s, "test-poison-raw") as raw:
        await raw.send_and_wait(
            catalog(s).topic_for("BookingRequested"), b"\x00not avro", key=poison_key
        )
    flowing = await request_booking(
        publisher, stuck_booking.service, stuck_booking.customer, slot=a_slot(9)
    )

    # Other bookings keep flowing while the poison sits in the dead-letter topics.
    await accepted_until_confirmed(db, publisher, flowing)

    # The stuck booking's payment step tried, retried once, and parked in payment.dlq. The
    # message parked is the one whose handling asked for the authorization: ReservationHeld,
    # or BookingRequested when the payment agent read `reservations` first (the held seat was
    # kept until its request came, and the request completed the picture).
    parked = await eventually(lambda: _parked(env, stuck))
    headers = dict(parked["headers"])
    assert parked["topic"] == f"{s.topic_prefix}payment.dlq"
    origin = {"ReservationHeld": "reservations", "BookingRequested": "bookings"}
    assert parked["event_type"] in origin
    assert headers[k.H_ORIGIN_TOPIC] == f"{s.topic_prefix}{origin[parked['event_type']]}"
    assert int(headers[k.H_ORIGIN_OFFSET]) >= 0
    assert headers[k.H_ORIGIN_PARTITION].isdigit()
    assert headers[k.H_ATTEMPTS] == "2"
    assert "sandbox outage" in headers[k.H_ERROR]
    assert headers[k.H_ERROR_CLASS] == "GatewayUnavailable"
    assert headers[k.H_FIRST_FAILURE] <= headers[k.H_LAST_FAILURE]
    assert await status(db, stuck) == "reserved"

    # The undecodable message is parked by every consumer of the topic, none retried it.
    poison = await eventually(lambda: _poison_parked(s, poison_key))
    assert poison[k.H_ERROR_CLASS] == "UndecodableEvent"
    assert poison[k.H_ORIGIN_TOPIC] == f"{s.topic_prefix}bookings"
    assert poison[k.H_ATTEMPTS] == "1"

    # A dry run shows the plan and changes nothing.
    watched = [f"{s.topic_prefix}{topic}" for topic in ("bookings", "reservations", "payment.dlq")]
    before = await end_offsets(s, watched)
    dry = erynoa(env, "dlq", "replay", "--booking-id", stuck, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert parked["event_type"] in dry.stdout
    assert await end_offsets(s, watched) == before
    assert await db.fetchval("SELECT count(*) FROM dlq_replays") == 0

    # Fix the cause, replay, and the saga completes.
    await outage_over(db)
    done = erynoa(env, "dlq", "replay", "--booking-id", stuck, "--operator", "on-call")
    assert done.returncode == 0, done.stdout + done.stderr
    await accepted_until_confirmed(db, publisher, stuck)
    assert await db.fetchval("SELECT count(*) FROM dlq_replays") == 1
    assert not await check_invariants(db, [stuck, flowing])

    # Replaying again has no effect: nothing is re-driven, nothing changes.
    state_before = dict(await db.fetchrow("SELECT * FROM bookings WHERE id = $1::uuid", stuck))
    offsets_before = await end_offsets(s, watched)
    again = erynoa(env, "dlq", "replay", "--booking-id", stuck)
    assert again.returncode == 0, again.stderr
    assert await end_offsets(s, watched) == offsets_before
    await asyncio.sleep(2)
    state_after = dict(await db.fetchrow("SELECT * FROM bookings WHERE id = $1::uuid", stuck))
    assert state_after == state_before
    assert await gateway_operations(db, stuck) == ["authorize", "capture"]


async def _parked(env: dict[str, str], booking_id: str) -> dict[str, Any] | None:
    found = await asyncio.to_thread(dead_letters_for, env, booking_id)
    payment = [m for m in found if m["topic"].endswith("payment.dlq")]
    return payment[0] if payment else None


async def _poison_parked(s: Settings, key: bytes) -> dict[str, str] | None:
    """The failure headers of the undecodable message in the reservation agent's DLQ."""
    topic = f"{s.topic_prefix}reservation.dlq"
    partitions = await topic_partitions(s.kafka_bootstrap, [topic])
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, auto_offset_reset="earliest")
    await start_consumer(consumer)
    try:
        consumer.assign(partitions)
        batches = await consumer.getmany(timeout_ms=1000)
    finally:
        await consumer.stop()
    for batch in batches.values():
        for message in batch:
            if message.key == key:
                return {name: value.decode() for name, value in message.headers}
    return None


async def test_an_operators_retry_reruns_the_failed_step_from_the_log(
    world: tuple[Settings, dict[str, str]],
    db: asyncpg.Pool,
    publisher: EventPublisher,
    stuck_booking: Stuck,
) -> None:
    _, env = world
    stuck = stuck_booking.booking_id
    await eventually(lambda: _parked(env, stuck))
    assert await status(db, stuck) == "reserved"

    # Fixed; instead of replaying the dead letter, the operator retries the payment step.
    await outage_over(db)
    retried = erynoa(env, "saga", "retry", stuck, "--step", "payment", "--operator", "on-call")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    await accepted_until_confirmed(db, publisher, stuck)
    assert not await check_invariants(db, [stuck])

    # The dead letter is still there; replaying it now changes nothing (already processed).
    replayed = erynoa(env, "dlq", "replay", "--booking-id", stuck)
    assert replayed.returncode == 0, replayed.stderr
    await asyncio.sleep(2)
    assert await status(db, stuck) == "confirmed"
    assert await gateway_operations(db, stuck) == ["authorize", "capture"]
