"""A rebuild never replaces the read model from a log that lost events the model holds.

Against the real broker: records are deleted from the start of a partition with the admin
client's deleteRecords (what retention does to old segments), then ``rebuild`` is asked, with
``force``, to replace the read model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import TopicPartition

from consumers.rebuild import TruncatedLog, rebuild
from erynoa.kafka import EventPublisher
from erynoa.settings import Settings
from erynoa.topic_admin import admin_client
from erynoa.topics import load_catalog
from tests.conftest import eventually, unique
from tests.integration.materializing import materializer_running, publisher_for
from tests.integration.read_model.test_materializer import saga_events

pytestmark = pytest.mark.integration


@pytest.fixture
async def publisher(isolated: Settings) -> AsyncIterator[EventPublisher]:
    """A publisher onto the test's own topics (a truncated log must not reach other tests), with
    the materializer folding what it publishes into the test's own read model."""
    async with publisher_for(isolated, "test-rebuild") as publisher, materializer_running(isolated):
        yield publisher


def _delete_records_before(settings: Settings, topic: str, partition: int, offset: int) -> None:
    admin = admin_client(settings.kafka_bootstrap)
    futures = admin.delete_records([TopicPartition(topic, partition, offset)])
    for future in futures.values():
        assert future.result(timeout=30).low_watermark == offset


async def _position(db: asyncpg.Pool, topic: str, partition: int) -> int:
    stored = await db.fetchval(
        "SELECT next_offset FROM consumer_positions "
        "WHERE consumer = 'materializer' AND topic = $1 AND partition = $2",
        topic,
        partition,
    )
    return int(stored or 0)


async def _rows(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM bookings ORDER BY id"))


async def _folded(db: asyncpg.Pool, booking_id: str, events: int) -> bool:
    """Every one of the booking's ``events`` is in the read model. Confirmed is not enough: the
    provider's answer travels on another topic and may be folded after the capture."""
    applied = await db.fetchval(
        "SELECT events_applied FROM bookings WHERE id = $1::uuid", booking_id
    )
    return bool(applied == events)


async def test_a_forced_rebuild_refuses_a_log_whose_start_was_deleted(
    isolated: Settings, pool: asyncpg.Pool, publisher: EventPublisher
) -> None:
    booking_id = unique()
    events = saga_events(booking_id)
    published = await publisher.publish_many(events)
    requested = published[0]

    await eventually(lambda: _folded(pool, booking_id, len(events)))
    before = await _rows(pool)
    # The booking's request is gone from the log, as after a retention of days.
    _delete_records_before(isolated, requested.topic, requested.partition, requested.offset + 1)

    with pytest.raises(TruncatedLog) as refused:
        await rebuild(isolated, force=True)

    message = str(refused.value)
    assert (
        f"{requested.topic} [{requested.partition}] starts at offset {requested.offset + 1}, "
        f"but the read model holds its events from offset {requested.offset}"
    ) in message
    assert [(g.topic, g.partition) for g in refused.value.gaps] == [
        (requested.topic, requested.partition)
    ]
    assert await _rows(pool) == before
    leftovers = await pool.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild\\_%'"
    )
    assert leftovers == 0


async def test_a_log_truncated_before_any_event_of_the_model_still_rebuilds(
    isolated: Settings, pool: asyncpg.Pool, publisher: EventPublisher
) -> None:
    """Deleted records the read model never held (here an undecodable message) lose nothing."""
    catalog = load_catalog(isolated.topics_file, isolated.topics_environment, isolated.topic_prefix)
    topic = catalog.topic_for("BookingRequested")
    producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    await producer.start()
    try:
        junk = await producer.send_and_wait(topic, b"not an event", key=b"junk", partition=0)
    finally:
        await producer.stop()
    booking_id = unique()
    events = saga_events(booking_id)
    await publisher.publish_many(events)

    async def settled() -> bool:
        folded = await _folded(pool, booking_id, len(events))
        return folded and await _position(pool, topic, 0) > junk.offset

    await eventually(settled)
    _delete_records_before(isolated, topic, 0, junk.offset + 1)
    before = await _rows(pool)

    report = await rebuild(isolated)

    assert report.differences == []
    assert report.swapped
    assert await _rows(pool) == before
