"""A batch's transaction on the real PostgreSQL: begun with its locks in one round trip
(``streams.store.locked_transaction``), and ending with the group's positions moved in the same
commit — unless a failure is still to be routed after it.

The reservation agent's runtime is driven directly with consumed-message records (no Faust), on
its own topics and database (``own_namespace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping

import asyncpg
import pytest

from erynoa import events as ev
from erynoa import kafka as k
from erynoa import saga
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from streams import store
from streams.reservation import ReservationAdapter
from streams.runtime import Context, Decoded
from tests.integration.agents import records
from tests.integration.agents.records import StartRuntime
from tests.integration.saga.harness import create_service, create_user, read_topic


async def _held_elsewhere(pool: asyncpg.Pool, key: str) -> bool:
    """Whether another session holds the advisory lock of ``key`` (it cannot take it now)."""
    async with pool.acquire() as other, other.transaction():
        return not await other.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", key
        )


async def _processed(pool: asyncpg.Pool, event_id: str) -> bool:
    count = await pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer = 'test' AND event_id = $1", event_id
    )
    return bool(count)


async def _mark(conn: asyncpg.Connection, event_id: str) -> None:
    await conn.execute(
        "INSERT INTO processed_events (consumer, event_id) VALUES ('test', $1)", event_id
    )


@pytest.mark.parametrize(
    "booking_id",
    [
        str(uuid.uuid4()),
        # Not a UUID, and a quote that would end a literal: it must go as a parameter.
        "b'); DROP TABLE processed_events; --",
    ],
    ids=["uuid", "hostile"],
)
async def test_the_locks_are_held_from_the_start_until_the_commit(
    pool: asyncpg.Pool, booking_id: str
) -> None:
    event_id = str(uuid.uuid4())
    async with pool.acquire() as conn:
        async with store.locked_transaction(conn, "reservation", [booking_id, booking_id]):
            assert conn.is_in_transaction()
            assert await _held_elsewhere(pool, f"reservation:{booking_id}")
            await _mark(conn, event_id)
            assert not await _processed(pool, event_id)  # not committed yet
        assert not conn.is_in_transaction()
    assert not await _held_elsewhere(pool, f"reservation:{booking_id}")
    assert await _processed(pool, event_id)


async def test_a_block_that_raises_rolls_back_and_leaves_the_connection_usable(
    pool: asyncpg.Pool,
) -> None:
    event_id = str(uuid.uuid4())
    booking_id = str(uuid.uuid4())

    async def failing_batch(conn: asyncpg.Connection) -> None:
        async with store.locked_transaction(conn, "payment", [booking_id]):
            await _mark(conn, event_id)
            raise RuntimeError("handler failed")

    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="handler failed"):
            await failing_batch(conn)
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT 1") == 1
    assert not await _processed(pool, event_id)
    assert not await _held_elsewhere(pool, f"payment:{booking_id}")


async def test_a_failed_statement_swallowed_inside_is_no_commit(pool: asyncpg.Pool) -> None:
    """PostgreSQL answers COMMIT of a failed transaction with ROLLBACK, without an error."""
    event_id = str(uuid.uuid4())

    async def swallowing_batch(conn: asyncpg.Connection) -> None:
        async with store.locked_transaction(conn, "payment", [str(uuid.uuid4())]):
            await _mark(conn, event_id)
            with contextlib.suppress(asyncpg.UniqueViolationError):
                await _mark(conn, event_id)

    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.InterfaceError, match="did not commit"):
            await swallowing_batch(conn)
        assert not conn.is_in_transaction()
    assert not await _processed(pool, event_id)


async def test_a_nested_transaction_cannot_commit_the_batch_early(pool: asyncpg.Pool) -> None:
    event_id = str(uuid.uuid4())

    async def nesting_batch(conn: asyncpg.Connection) -> None:
        async with store.locked_transaction(conn, "payment", [str(uuid.uuid4())]):
            await _mark(conn, event_id)
            async with conn.transaction():
                await _mark(conn, str(uuid.uuid4()))

    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.InterfaceError, match="manually started transaction"):
            await nesting_batch(conn)
    assert not await _processed(pool, event_id)


class GivesUp(ReservationAdapter):
    """The real reservation adapter, which also records a failure it gave up on (as the
    notification agent does for an address that bounces on the last attempt)."""

    async def execute(self, action: saga.Action, ctx: Context) -> list[ev.BookingEvent]:
        ctx.gave_up.append(RuntimeError("gave up"))
        return await super().execute(action, ctx)


async def _positions(pool: asyncpg.Pool, consumer: str) -> Mapping[tuple[str, int], int]:
    rows = await pool.fetch(
        "SELECT topic, partition, next_offset FROM consumer_positions WHERE consumer = $1",
        consumer,
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


@pytest.mark.parametrize(
    ("adapter", "in_commit"),
    [(ReservationAdapter, True), (GivesUp, False)],
    ids=["handled", "failure-to-route"],
)
async def test_the_commit_moves_the_positions_unless_a_failure_is_still_to_be_routed(
    catalog: TopicCatalog,
    pool: asyncpg.Pool,
    start_runtime: StartRuntime,
    adapter: type[ReservationAdapter],
    in_commit: bool,
) -> None:
    service = await create_service(pool, capacity=5)
    customer = await create_user(pool, "customer")
    requests = [records.requested(customer, service) for _ in range(3)]
    messages = [records.message(catalog, event, offset) for offset, event in enumerate(requests)]
    runtime = await start_runtime("reservation", adapter())
    group = catalog.consumer("reservation").group_id
    topic = messages[0].topic
    decoded: list[Decoded] = [(m, e) for m, e in zip(messages, requests, strict=True)]

    # The handler's transaction alone, as if the worker died right after its commit.
    gave_up, recorded = await runtime.handle(decoded, {(topic, 0): 3})

    assert recorded is in_commit
    assert len(gave_up) == (0 if in_commit else 3)
    assert await _positions(pool, group) == ({(topic, 0): 3} if in_commit else {})
    held = await pool.fetchval(
        "SELECT count(*) FROM agent_state WHERE agent = 'reservation' AND state->>'hold' = $1",
        saga.Hold.HELD.value,
    )
    assert held == 3


async def test_a_published_event_waiting_for_its_deletion_is_not_published_again(
    isolated: Settings, catalog: TopicCatalog, pool: asyncpg.Pool, start_runtime: StartRuntime
) -> None:
    """The booking's next batch reads its whole outbox, the row published a moment ago
    included (deleted in the background a little later): it must not go out twice."""
    service = await create_service(pool, capacity=5)
    customer = await create_user(pool, "customer")
    request = records.requested(customer, service)
    failed = ev.make(
        ev.PaymentFailed,
        producer="payment",
        cause=request,
        payment_id="pi_x",
        reason_code="card_declined",
        reason="declined",
    )
    runtime = await start_runtime("reservation", ReservationAdapter())

    await runtime.process([records.message(catalog, request, 0)])
    await runtime.process([records.message(catalog, failed, 0)])
    await runtime.outbox_cleaned()

    on_topic = await records.published(isolated, catalog, "ReservationHeld")
    assert [e.event_type for e in on_topic] == ["ReservationHeld", "ReservationReleased"]
    assert await pool.fetchval("SELECT count(*) FROM agent_outbox") == 0


async def test_what_a_worker_left_unpublished_after_its_commit_goes_out_on_the_redelivery(
    isolated: Settings,
    catalog: TopicCatalog,
    pool: asyncpg.Pool,
    start_runtime: StartRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commit moved the positions; the worker died before publishing. Its messages come
    again and are skipped as done, so the redelivery itself must publish the outbox rows,
    not leave them to the relay's sweep of old rows (which this runtime does not run)."""
    service = await create_service(pool, capacity=5)
    customer = await create_user(pool, "customer")
    requests = [records.requested(customer, service) for _ in range(2)]
    messages = [records.message(catalog, event, offset) for offset, event in enumerate(requests)]
    runtime = await start_runtime("reservation", ReservationAdapter())
    topic = messages[0].topic

    async def died_before_publishing(rows: object) -> None:
        return None

    with monkeypatch.context() as patched:
        patched.setattr(runtime, "_publish", died_before_publishing)
        _, recorded = await runtime.handle(
            [(m, e) for m, e in zip(messages, requests, strict=True)], {(topic, 0): 2}
        )
    assert recorded
    assert await records.published(isolated, catalog, "ReservationHeld") == []
    await asyncio.sleep(1.5)  # older than what a live lane may still be publishing

    await runtime.process(messages)

    held = await records.published(isolated, catalog, "ReservationHeld")
    assert sorted(e.booking_id for e in held) == sorted(r.booking_id for r in requests)


async def test_a_failure_recorded_before_a_crash_is_routed_on_the_redelivery(
    isolated: Settings, catalog: TopicCatalog, pool: asyncpg.Pool, start_runtime: StartRuntime
) -> None:
    """The adapter gave up (recording the failure as an event) and the worker died after the
    commit, before copying the message to the retry topic. The redelivery is skipped as
    processed, yet it must make that copy, or operators never see the failure."""
    service = await create_service(pool, capacity=5)
    customer = await create_user(pool, "customer")
    request = records.requested(customer, service)
    message = records.message(catalog, request, 0)
    runtime = await start_runtime("reservation", GivesUp())

    gave_up, _ = await runtime.handle([(message, request)], {(message.topic, 0): 1})
    assert [g.event_id for g in gave_up] == [request.event_id]
    assert await pool.fetchval("SELECT count(*) FROM agent_gave_up") == 1

    await runtime.process([message])

    retry = catalog.topics[catalog.consumer("reservation").retry_topics[0]]
    routed = await read_topic(isolated.kafka_bootstrap, retry.name, retry.partitions)
    assert [r.value for r in routed] == [message.value]
    headers = dict(routed[0].headers)
    assert headers[k.H_ERROR_CLASS] == b"RuntimeError"
    assert b"gave up" in headers[k.H_ERROR]
    assert await pool.fetchval("SELECT count(*) FROM agent_gave_up") == 0
    held = await pool.fetchval("SELECT count(*) FROM agent_state WHERE agent = 'reservation'")
    assert held == 1  # handled once: the redelivery changed nothing but the copy
