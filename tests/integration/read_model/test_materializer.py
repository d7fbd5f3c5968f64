"""The materializer against the real stack: events produced to Kafka become read-model rows;
redelivery and a replay from offset 0 change nothing; ``rebuild`` produces identical rows, also
from a log with late, repeated and undecodable messages, in parts or in one process."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from consumers.rebuild import rebuild
from erynoa import events as ev
from erynoa.codec import default_codec
from erynoa.kafka import EventPublisher, end_offsets
from erynoa.settings import Settings
from erynoa.topics import load_catalog
from tests.conftest import eventually, unique
from tests.integration.materializing import materializer_running

pytestmark = pytest.mark.integration


def saga_events(booking_id: str) -> list[ev.BookingEvent]:
    """A happy path, as the agents would emit it."""
    slot = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    requested = ev.make(
        ev.BookingRequested,
        booking_id=booking_id,
        producer="api",
        customer_id=unique("cust-"),
        service_id=unique(),
        provider_id=unique("prov-"),
        slot_start=slot,
        slot_end=slot + timedelta(hours=1),
        price=ev.Money(4500, "EUR"),
        payment_method="pm_card_visa",
        notes="Bitte klingeln, zweiter Stock (Türcode 4711)",
        response_deadline_seconds=3600,
        idempotency_key=None,
    )
    held = ev.make(
        ev.ReservationHeld,
        producer="reservation",
        cause=requested,
        hold_id=unique(),
        service_id=requested.service_id,
        slot_start=slot,
    )
    authorized = ev.make(
        ev.PaymentAuthorized,
        producer="payment",
        cause=held,
        payment_id="pi_" + booking_id[:8],
        amount=requested.price,
        gateway="sandbox",
    )
    accepted = ev.make(
        ev.ProviderAccepted,
        producer="provider-response",
        cause=authorized,
        provider_id=requested.provider_id,
    )
    captured = ev.make(
        ev.PaymentCaptured,
        producer="payment",
        cause=accepted,
        payment_id=authorized.payment_id,
        amount=requested.price,
    )
    return [requested, held, authorized, accepted, captured]


async def booking(db: asyncpg.Pool, booking_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM bookings WHERE id = $1::uuid", booking_id)


async def snapshot(db: asyncpg.Pool, booking_ids: list[str]) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT * FROM bookings WHERE id = ANY($1::uuid[]) ORDER BY id", booking_ids
    )
    return [dict(r) for r in rows]


def all_confirmed(db: asyncpg.Pool, ids: list[str]) -> Callable[[], Awaitable[bool]]:
    """For ``eventually``: every one of the bookings is in the read model, confirmed, with every
    event of its happy path folded (the provider's answer travels on another topic than the
    capture, and may be folded after the booking is confirmed)."""
    events = len(saga_events(unique()))

    async def check() -> bool:
        rows = await snapshot(db, ids)
        return len(rows) == len(ids) and all(
            r["status"] == "confirmed" and r["events_applied"] == events for r in rows
        )

    return check


async def happy_sagas(publisher: EventPublisher, count: int) -> list[str]:
    """``count`` bookings' happy paths, published; their ids."""
    ids = [unique() for _ in range(count)]
    for booking_id in ids:
        await publisher.publish_many(saga_events(booking_id))
    return ids


async def test_booking_requested_in_kafka_appears_in_postgres(
    db: asyncpg.Pool, publisher: EventPublisher, running_materializer: None
) -> None:
    booking_id = unique()
    requested = saga_events(booking_id)[0]
    await publisher.publish(requested)

    row = await eventually(lambda: booking(db, booking_id))

    assert row["status"] == "requested"
    assert row["amount_minor"] == 4500
    assert row["currency"] == "EUR"
    assert row["notes"] == "Bitte klingeln, zweiter Stock (Türcode 4711)"
    assert row["correlation_id"] == requested.correlation_id


async def _committed(settings: Settings) -> dict[TopicPartition, int]:
    """The materializer group's committed offsets."""
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(catalog.consumer("materializer").group_id)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def _written(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    """The end offsets of the partitions of ``topics`` that hold anything."""
    ends = await end_offsets(settings.kafka_bootstrap, topics)
    return {tp: end for tp, end in ends.items() if end}


async def test_offsets_are_committed_once_idle_and_at_stop_not_after_every_batch(
    settings: Settings, db: asyncpg.Pool, publisher: EventPublisher
) -> None:
    """Committed offsets only guide a restart (the stored positions are the truth), so they are
    paced; but they must reach what was applied once the stream pauses, and at stop."""
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    topics = [catalog.topics[name].name for name in catalog.consumer("materializer").consumes]
    async with materializer_running(settings):
        await eventually(all_confirmed(db, await happy_sagas(publisher, 3)))
        ends = await _written(settings, topics)

        async def caught_up() -> bool:
            committed = await _committed(settings)
            return all(committed.get(tp) == end for tp, end in ends.items())

        await eventually(caught_up, within=10)
        await eventually(all_confirmed(db, await happy_sagas(publisher, 2)))
    ends = await _written(settings, topics)
    committed = await _committed(settings)
    assert {tp: committed.get(tp) for tp in ends} == ends


async def test_events_fold_into_the_current_state_whatever_their_topic_order(
    db: asyncpg.Pool, publisher: EventPublisher, running_materializer: None
) -> None:
    booking_id = unique()
    events = saga_events(booking_id)
    # The capture first, the request last: consumption order is not event order.
    await publisher.publish_many(list(reversed(events)))

    async def confirmed() -> asyncpg.Record | None:
        row = await booking(db, booking_id)
        return row if row and row["status"] == "confirmed" else None

    row = await eventually(confirmed)
    assert row["payment"] == "captured"
    assert row["hold"] == "held"
    assert row["events_applied"] == 5
    history = await db.fetch(
        "SELECT event_type FROM booking_events WHERE booking_id = $1::uuid ORDER BY occurred_at",
        booking_id,
    )
    assert [r["event_type"] for r in history] == [e.event_type for e in events]


async def test_redelivery_and_replay_from_offset_zero_change_nothing(
    db: asyncpg.Pool, publisher: EventPublisher, settings: Settings
) -> None:
    ids = await happy_sagas(publisher, 3)
    async with materializer_running(settings):
        await eventually(all_confirmed(db, ids))
        before = await snapshot(db, ids)

        # Redelivery: every event of these sagas produced again, with the same event ids.
        codec = default_codec()
        for booking_id in ids:
            rows = await db.fetch(
                "SELECT body FROM booking_events WHERE booking_id = $1::uuid", booking_id
            )
            replayed = [codec.decode(r["body"]) for r in rows]
            await publisher.publish_many([e for e in replayed if isinstance(e, ev.BookingEvent)])
        ends = await _end_offsets(settings)
        await eventually(lambda: _caught_up(db, ends))
    assert await snapshot(db, ids) == before

    # Replay from offset 0: with its positions forgotten the materializer re-reads the log.
    await db.execute("DELETE FROM consumer_positions WHERE consumer = 'materializer'")
    async with materializer_running(settings):
        await eventually(lambda: _caught_up(db, ends), within=90)

    assert await snapshot(db, ids) == before


async def _end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    ends = await end_offsets(settings.kafka_bootstrap, catalog.consumer("materializer").consumes)
    assert ends, "the materializer's topics have no partitions"
    found = {(tp.topic, tp.partition): end for tp, end in ends.items() if end}
    assert found, "nothing was produced to the materializer's topics"
    return found


async def _caught_up(db: asyncpg.Pool, ends: dict[tuple[str, int], int]) -> bool:
    """The stored positions reached ``ends`` in every partition."""
    rows = await db.fetch(
        "SELECT topic, partition, next_offset FROM consumer_positions "
        "WHERE consumer = 'materializer'"
    )
    stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    return all(stored.get(key, 0) >= end for key, end in ends.items())


async def test_rebuild_produces_identical_rows_and_swaps(
    db: asyncpg.Pool, publisher: EventPublisher, running_materializer: None, settings: Settings
) -> None:
    ids = await happy_sagas(publisher, 2)
    await eventually(all_confirmed(db, ids))
    before = await snapshot(db, ids)

    report = await rebuild(settings)

    assert report.differences == []
    assert report.swapped
    assert report.events >= 10
    assert await snapshot(db, ids) == before


async def test_rebuild_refuses_to_swap_when_the_live_model_differs(
    db: asyncpg.Pool, publisher: EventPublisher, running_materializer: None, settings: Settings
) -> None:
    booking_id = unique()
    await publisher.publish_many(saga_events(booking_id))

    await eventually(all_confirmed(db, [booking_id]))
    # Corrupt the live read model the way a projection bug would.
    await db.execute("UPDATE bookings SET failure_reason = 'bug' WHERE id = $1::uuid", booking_id)

    report = await rebuild(settings)

    assert not report.swapped
    assert any(booking_id in d for d in report.differences)
    row = await booking(db, booking_id)
    assert row is not None
    assert row["failure_reason"] == "bug"
    # --force repairs it from the log.
    forced = await rebuild(settings, force=True)
    assert forced.swapped
    repaired = await booking(db, booking_id)
    assert repaired is not None
    assert repaired["failure_reason"] is None


async def _publish_raw(
    settings: Settings, topic: str, value: bytes, key: bytes, partition: int | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()


async def _publish_messy_log(
    settings: Settings, publisher: EventPublisher, db: asyncpg.Pool
) -> list[str]:
    """Sagas whose events reach the log out of order, late, twice, or before their request,
    beside an undecodable message; returns their booking ids once the live model has them."""
    ids = [unique() for _ in range(4)]
    reversed_order, duplicated, late, unrequested = (saga_events(b) for b in ids)
    await publisher.publish_many(list(reversed(reversed_order)))
    await publisher.publish_many(duplicated)
    await publisher.publish_many(duplicated[1:3])  # the same event ids again
    # The capture is folded before the steps that happened earlier: a refold.
    await publisher.publish_many([late[0], late[-1]])
    await publisher.publish_many(late[1:-1])
    # Everything but the request first; the request after an undecodable message.
    await publisher.publish_many(unrequested[1:])
    bookings_topic = publisher.topic_for(unrequested[0])
    await _publish_raw(settings, bookings_topic, b"not an event", ids[3].encode())
    await publisher.publish(unrequested[0])
    await eventually(all_confirmed(db, ids))
    return ids


async def test_a_rebuild_in_parts_equals_the_live_model_on_a_messy_log(
    db: asyncpg.Pool, publisher: EventPublisher, running_materializer: None, settings: Settings
) -> None:
    ids = await _publish_messy_log(settings, publisher, db)
    before = await snapshot(db, ids)
    assert all(r["events_applied"] == 5 for r in before)  # repeated events fold once

    for workers in (1, 2):
        report = await rebuild(settings, workers=workers)

        assert report.differences == []
        assert report.swapped
        assert await snapshot(db, ids) == before


async def test_a_booking_spread_over_two_parts_falls_back_to_one_replay(
    db: asyncpg.Pool,
    publisher: EventPublisher,
    running_materializer: None,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    booking_id = unique()
    events = saga_events(booking_id)
    published = await publisher.publish_many(events[:-1])
    # The capture on a partition of the other parity than its booking's: the topics are not
    # co-partitioned for this booking, so two workers would each see half of it.
    other = published[0].partition ^ 1
    await _publish_raw(
        settings,
        publisher.topic_for(events[-1]),
        default_codec().encode(events[-1]),
        booking_id.encode(),
        partition=other,
    )

    await eventually(all_confirmed(db, [booking_id]))
    before = await snapshot(db, [booking_id])

    with caplog.at_level(logging.WARNING, logger="erynoa.materializer.rebuild"):
        report = await rebuild(settings, workers=2)

    assert "replaying in one" in caplog.text
    assert report.differences == []
    assert report.swapped
    assert await snapshot(db, [booking_id]) == before
