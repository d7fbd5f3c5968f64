"""The materializer: folds every booking event into PostgreSQL's read model.

Run it with ``erynoa materializer run`` (one of many in the consumer group
``erynoa-materializer``; partitions spread over them). Each ``getmany`` batch becomes one
transaction (``consumers.projection``) and one offset commit. The positions in Postgres are
the truth; the offsets committed to Kafka only serve lag monitoring and a first guess.

``erynoa materializer rebuild`` replays the log from offset 0 into a fresh schema, compares it
with the live tables and swaps them in only when they agree (or with ``--force``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.projection import Projection, Record
from erynoa import kafka as k
from erynoa.codec import EventCodec, UndecodableEvent, default_codec
from erynoa.db import create_pool
from erynoa.events import BookingEvent
from erynoa.settings import Settings
from erynoa.topics import Consumer, TopicCatalog, load_catalog

log = logging.getLogger("erynoa.materializer")

CONSUMER = "materializer"
BATCH_MAX_RECORDS = 2000


@dataclass
class Runtime:
    """Everything the materializer's loop needs, wired once by ``start``."""

    settings: Settings
    catalog: TopicCatalog
    spec: Consumer
    codec: EventCodec
    pool: asyncpg.Pool
    consumer: AIOKafkaConsumer
    dead_letters: AIOKafkaProducer
    projection: Projection


class _SeekToStoredPositions(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, continue from the positions stored with the read model."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        async with self.runtime.pool.acquire() as conn:
            stored = await self.runtime.projection.positions(conn)
        unseen = [tp for tp in assigned if (tp.topic, tp.partition) not in stored]
        # A partition without a stored position starts at the beginning of its log. An
        # explicit offset, not seek_to_beginning(): aiokafka may let the group's committed
        # offset win over a pending reset.
        beginnings = await self.runtime.consumer.beginning_offsets(unseen) if unseen else {}
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition), beginnings.get(tp))
            if offset is not None:
                self.runtime.consumer.seek(tp, offset)


def consumer_config(settings: Settings, group_id: str | None) -> dict[str, object]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "client_id": f"erynoa-{CONSUMER}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": BATCH_MAX_RECORDS,
        "fetch_max_wait_ms": 100,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }


async def start(settings: Settings) -> Runtime:
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    spec = catalog.consumer(CONSUMER)
    codec = default_codec()
    pool = await create_pool(settings)
    consumer = AIOKafkaConsumer(**consumer_config(settings, spec.group_id))
    dead_letters = AIOKafkaProducer(
        **k.producer_config(settings.kafka_bootstrap, f"erynoa-{CONSUMER}-dlq")
    )
    runtime = Runtime(
        settings, catalog, spec, codec, pool, consumer, dead_letters,
        Projection(CONSUMER, codec),
    )  # fmt: skip
    consumer.subscribe(list(spec.consumes), listener=_SeekToStoredPositions(runtime))
    await dead_letters.start()
    await consumer.start()
    return runtime


async def stop(runtime: Runtime) -> None:
    with contextlib.suppress(Exception):
        await runtime.consumer.stop()
    with contextlib.suppress(Exception):
        await runtime.dead_letters.stop()
    await runtime.pool.close()


def decode_batch(
    codec: EventCodec, messages: Sequence[ConsumerRecord[bytes, bytes]]
) -> tuple[list[Record], list[tuple[ConsumerRecord[bytes, bytes], str]]]:
    """Decoded records, and the messages that cannot be decoded with why."""
    records: list[Record] = []
    bad: list[tuple[ConsumerRecord[bytes, bytes], str]] = []
    for message in messages:
        if message.value is None:
            bad.append((message, "empty message (tombstone) on an event topic"))
            continue
        try:
            event = codec.decode(message.value)
        except UndecodableEvent as exc:
            bad.append((message, str(exc)))
            continue
        if not isinstance(event, BookingEvent):
            bad.append((message, f"{event.event_type} is not a booking event"))
            continue
        records.append(
            Record(message.topic, message.partition, message.offset, event, message.value)
        )
    return records, bad


async def dead_letter(
    producer: AIOKafkaProducer,
    topic: str,
    message: ConsumerRecord[bytes, bytes],
    error: str,
    error_class: str,
) -> None:
    """Park ``message`` in ``topic`` with headers saying why, from where and when."""
    now = datetime.now(UTC).isoformat()
    origin = list(message.headers or ())
    first = k.header(origin, k.H_FIRST_FAILURE) or now
    attempts = int(k.header(origin, k.H_ATTEMPTS) or "0") + 1
    replaced = {
        k.H_ERROR, k.H_ERROR_CLASS, k.H_ATTEMPTS, k.H_FIRST_FAILURE, k.H_LAST_FAILURE,
        k.H_ORIGIN_TOPIC, k.H_ORIGIN_PARTITION, k.H_ORIGIN_OFFSET, k.H_CONSUMER,
    }  # fmt: skip
    headers = [(key, value) for key, value in origin if key not in replaced]
    headers += [
        (k.H_ERROR, error[:1000].encode()),
        (k.H_ERROR_CLASS, error_class.encode()),
        (k.H_ATTEMPTS, str(attempts).encode()),
        (k.H_FIRST_FAILURE, first.encode()),
        (k.H_LAST_FAILURE, now.encode()),
        (k.H_ORIGIN_TOPIC, (k.header(origin, k.H_ORIGIN_TOPIC) or message.topic).encode()),
        (
            k.H_ORIGIN_PARTITION,
            (k.header(origin, k.H_ORIGIN_PARTITION) or str(message.partition)).encode(),
        ),
        (k.H_ORIGIN_OFFSET, (k.header(origin, k.H_ORIGIN_OFFSET) or str(message.offset)).encode()),
        (k.H_CONSUMER, CONSUMER.encode()),
    ]
    await producer.send_and_wait(topic, value=message.value, key=message.key, headers=headers)


async def process_batch(runtime: Runtime, messages: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
    records, bad = decode_batch(runtime.codec, messages)
    for message, why in bad:
        log.warning(
            "dead-lettering undecodable message",
            extra={
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
            },
        )
        await dead_letter(
            runtime.dead_letters, runtime.spec.dead_letter_topic, message, why, "undecodable"
        )
    undecodable = [(m.topic, m.partition, m.offset) for m, _ in bad]
    started = time.perf_counter()
    async with runtime.pool.acquire() as conn:
        result = await runtime.projection.apply(conn, records, undecodable)
    for (topic, partition), offset in result.rewind.items():
        runtime.consumer.seek(TopicPartition(topic, partition), offset)
    # Kafka's committed offsets follow Postgres (for lag monitoring); losing this commit
    # loses nothing: the stored positions skip what was already applied.
    offsets: dict[TopicPartition, int] = {}
    for message in messages:
        tp = TopicPartition(message.topic, message.partition)
        if (message.topic, message.partition) not in result.rewind:
            offsets[tp] = max(offsets.get(tp, 0), message.offset + 1)
    if offsets:
        await runtime.consumer.commit(offsets)
    log.debug(
        "batch applied",
        extra={
            "events": result.applied,
            "skipped": result.skipped,
            "bookings": result.bookings,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )


async def run(settings: Settings, stopping: asyncio.Event | None = None) -> None:
    """Consume until ``stopping`` is set (or forever); a failed batch is retried in place."""
    stopping = stopping or asyncio.Event()
    runtime = await start(settings)
    log.info("materializer started", extra={"group": runtime.spec.group_id})
    backoff = 0.5
    try:
        while not stopping.is_set():
            batches = await runtime.consumer.getmany(timeout_ms=200, max_records=BATCH_MAX_RECORDS)
            messages = [m for batch in batches.values() for m in batch]
            if not messages:
                continue
            try:
                await process_batch(runtime, messages)
                backoff = 0.5
            except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
                # Nothing was committed: go back to where this batch started and try again.
                log.warning(
                    "batch failed, retrying", extra={"error": repr(exc), "backoff": backoff}
                )
                firsts: dict[TopicPartition, int] = {}
                for m in messages:
                    tp = TopicPartition(m.topic, m.partition)
                    firsts[tp] = min(firsts.get(tp, m.offset), m.offset)
                for tp, offset in firsts.items():
                    runtime.consumer.seek(tp, offset)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
    finally:
        await stop(runtime)
        log.info("materializer stopped")
