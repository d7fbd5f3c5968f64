"""A group's committed offset past a message that was never handled does not lose that message.

Faust can commit an offset beyond a message no agent handled (an ack of a message skipped during a
rebalance, its commit arithmetic, a lane that died with messages queued). The reservation worker
runs here as deployed (``python -m erynoa worker reservation``) on its own topics and database
(``own_namespace``): after it handled one request and stopped, two more requests arrive in the
same partition and the group's offset is committed past the first of them, as such a faulty
commit would leave it. The restarted worker must notice that its batch starts past the position
it recorded in PostgreSQL, move the partition back and hold both requests.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from erynoa import events as ev
from erynoa.codec import default_codec
from erynoa.db import create_pool
from erynoa.kafka import EventPublisher, Published, start_consumer
from erynoa.metrics import PORT_OFFSETS
from erynoa.saga import BookingState, Hold
from erynoa.settings import Settings
from erynoa.supervisor import System
from erynoa.topics import TopicCatalog, load_catalog
from tests.conftest import own_namespace
from tests.integration.saga.harness import (
    EventLog,
    Service,
    booking_of,
    create_service,
    create_user,
    free_port,
)

CODEC = default_codec()
AGENT = "reservation"
READY = f'"msg": "agent {AGENT} ready"'


def held(state: BookingState | None) -> bool:
    return state is not None and state.hold == Hold.HELD


@contextmanager
def worker(own: Settings, log_dir: Path, run: str) -> Iterator[tuple[Path, int]]:
    """The reservation worker as a subprocess on ``own``'s topics and database, until it is
    ready; stopped with SIGTERM (Faust commits what was acked) on the way out. Yields its log
    file and its metrics port."""
    port = free_port()
    env = {
        "ERYNOA_TOPIC_PREFIX": own.topic_prefix,
        "ERYNOA_DATABASE_URL": own.database_url,
        "ERYNOA_KAFKA_BOOTSTRAP": own.kafka_bootstrap,
        "ERYNOA_STATE_DIR": str(log_dir / "state"),
        "ERYNOA_METRICS_PORT_BASE": str(port - PORT_OFFSETS[AGENT]),
    }
    system = System(
        {run: [sys.executable, "-m", "erynoa", "worker", AGENT]},
        env={**os.environ, **env},
        log_dir=log_dir,
    )
    log = log_dir / f"{run}.log"
    system.start()
    try:
        deadline = time.monotonic() + 60
        while READY not in (log.read_text(errors="replace") if log.exists() else ""):
            if system.exited() or time.monotonic() > deadline:
                raise AssertionError(
                    f"worker not ready ({system.exited()}):\n"
                    f"{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.2)
        yield log, port
    finally:
        system.stop(timeout=40)


@asynccontextmanager
async def started_log(own: Settings, catalog: TopicCatalog) -> AsyncIterator[EventLog]:
    log = EventLog(own.kafka_bootstrap, catalog, CODEC)
    await log.start()
    try:
        yield log
    finally:
        await log.stop()


def requested(service: Service, customer: str, booking_id: str) -> ev.BookingRequested:
    return booking_of(service, customer, booking_id=booking_id)


def booking_id_in(partition: int, partitions: int) -> str:
    """A fresh booking id that the producer's key partitioning puts in ``partition``."""
    choose = DefaultPartitioner()
    every = list(range(partitions))
    while True:
        booking_id = str(uuid.uuid4())
        if choose(booking_id.encode(), every, every) == partition:
            return booking_id


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await start_consumer(consumer)
    try:
        offset: int | None = await consumer.committed(tp)
        return offset
    finally:
        await consumer.stop()


async def commit(bootstrap: str, group: str, tp: TopicPartition, offset: int) -> None:
    """Commit ``offset`` for ``group`` from a plain consumer (the group has no member now)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await start_consumer(consumer)
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


def rewinds(port: int, topic: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    prefix = f'erynoa_agent_rewinds_total{{agent="{AGENT}",topic="{topic}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


async def test_a_request_behind_a_committed_offset_is_held_after_a_restart(
    settings: Settings, tmp_path: Path
) -> None:
    async with own_namespace(settings) as own:
        catalog = load_catalog(own.topics_file, own.topics_environment, own.topic_prefix)
        group = catalog.consumer(AGENT).group_id
        bookings = catalog.topics[catalog.topic_for("BookingRequested")]
        pool: asyncpg.Pool = await create_pool(own, min_size=1, max_size=2)
        publisher = EventPublisher.create(own.kafka_bootstrap, "test-positions", CODEC, catalog)
        await publisher.start()
        try:
            async with started_log(own, catalog) as log:
                service = await create_service(pool, capacity=5)
                customer = (await create_user(pool, "customer")).id

                first = requested(service, customer, str(uuid.uuid4()))
                with worker(own, tmp_path, "first-run"):
                    a: Published = await publisher.publish(first)
                    await log.wait(first.booking_id, held, within=30)
                tp = TopicPartition(a.topic, a.partition)

                # B and C land right behind A in its partition, while no worker runs.
                skipped, after = (
                    requested(service, customer, booking_id_in(a.partition, bookings.partitions))
                    for _ in range(2)
                )
                b, c = await publisher.publish_many([skipped, after])
                assert (b.partition, c.partition) == (a.partition, a.partition)
                assert (b.offset, c.offset) == (a.offset + 1, a.offset + 2)

                # Both the group's offset and the recorded position stop right after A ...
                assert await committed(own.kafka_bootstrap, group, tp) == b.offset
                recorded = await pool.fetchval(
                    """SELECT next_offset FROM consumer_positions
                       WHERE consumer = $1 AND topic = $2 AND partition = $3""",
                    group,
                    tp.topic,
                    tp.partition,
                )
                assert recorded == b.offset
                # ... until a faulty commit moves the group's offset past B, never handled.
                await commit(own.kafka_bootstrap, group, tp, c.offset)
                assert await committed(own.kafka_bootstrap, group, tp) == c.offset

                with worker(own, tmp_path, "second-run") as (worker_log, port):
                    await log.wait(after.booking_id, held, within=45)
                    # B precedes C in the partition, so its hold was decided first; one
                    # transaction per batch publishes their events in that order.
                    await log.wait(skipped.booking_id, held, within=10)
                    assert rewinds(port, tp.topic) == 1.0
                text = worker_log.read_text(errors="replace")
                assert f"offsets {b.offset}..{b.offset} were never handled by {group}" in text
                assert log.count(skipped.booking_id, "ReservationHeld") == 1
                assert log.count(after.booking_id, "ReservationHeld") == 1
        finally:
            await publisher.stop()
            await pool.close()
