"""(a) The raw ceiling: a plain consume → produce → commit loop through the same broker.

What a saga agent does at the least — read a batch, write one message per message read, wait
for the broker's acknowledgement, commit — with nothing else: no decoding, no database. The
messages are our own, an encoded ``BookingRequested`` (same size, same keys by booking id),
on bench-only topics (``bench-<uuid>-in`` / ``-out``, as many partitions as the booking
topics) that are deleted afterwards. Producers use the settings of ``erynoa.kafka``
(idempotent, ``acks=all``, 5 ms linger).

Two clients: aiokafka (what the agents run on) and confluent-kafka (librdkafka, the
C client), to show how much of the ceiling is the Python client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic

from bench.sample import booking_requested
from erynoa.codec import default_codec
from erynoa.kafka import producer_config, start_consumer
from erynoa.topic_admin import admin_client

BATCH = 2000


@dataclass(frozen=True)
class LoopResult:
    client: str
    messages: int
    seconds: float
    message_bytes: int

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def realistic_message(booking_id: str) -> bytes:
    """A ``BookingRequested`` as the API writes it, encoded with our codec."""
    event = booking_requested(
        booking_id, datetime(2026, 3, 14, 8, 30, tzinfo=UTC), idempotency_key=None
    )
    return default_codec().encode(event)


class BenchTopics:
    """Two fresh topics for one measurement; ``delete`` removes them."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        tag = uuid.uuid4().hex[:10]
        self.bootstrap = bootstrap
        self.source = f"bench-{tag}-in"
        self.sink = f"bench-{tag}-out"
        self.group = f"bench-{tag}"
        admin = admin_client(bootstrap)
        futures = admin.create_topics(
            [NewTopic(t, partitions, 1) for t in (self.source, self.sink)], operation_timeout=30
        )
        for future in futures.values():
            future.result()

    def delete(self) -> None:
        futures = admin_client(self.bootstrap).delete_topics(
            [self.source, self.sink], operation_timeout=30
        )
        for future in futures.values():
            with contextlib.suppress(Exception):  # already gone: nothing left to clean up
                future.result()


async def fill(bootstrap: str, topic: str, count: int) -> int:
    """Write ``count`` messages (keyed by fresh booking ids); returns the message size."""
    producer = AIOKafkaProducer(**producer_config(bootstrap, "bench-fill"))
    await producer.start()
    try:
        template = realistic_message(str(uuid.uuid4()))
        pending = []
        for _ in range(count):
            booking_id = str(uuid.uuid4())
            # Same size as a real one: only the id differs between messages.
            pending.append(await producer.send(topic, template, key=booking_id.encode()))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return len(template)
    finally:
        await producer.stop()


async def aiokafka_loop(topics: BenchTopics, count: int, size: int) -> LoopResult:
    consumer = AIOKafkaConsumer(
        topics.source,
        bootstrap_servers=topics.bootstrap,
        group_id=topics.group + "-aiokafka",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=BATCH,
    )
    producer = AIOKafkaProducer(**producer_config(topics.bootstrap, "bench-aiokafka"))
    await start_consumer(consumer)
    await producer.start()
    done = 0
    started: float | None = None
    try:
        while done < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            if not batches:
                continue
            if started is None:
                started = time.perf_counter()
            futures = [
                await producer.send(topics.sink, m.value, key=m.key)
                for messages in batches.values()
                for m in messages
            ]
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(futures)
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        await producer.stop()
        await consumer.stop()
    return LoopResult("aiokafka", done, elapsed, size)


def confluent_loop(topics: BenchTopics, count: int, size: int) -> LoopResult:
    consumer = Consumer(
        {
            "bootstrap.servers": topics.bootstrap,
            "group.id": topics.group + "-confluent",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": topics.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    consumer.subscribe([topics.source])
    done = 0
    started: float | None = None
    try:
        while done < count:
            messages = consumer.consume(num_messages=BATCH, timeout=1.0)
            messages = [m for m in messages if m.error() is None]
            if not messages:
                continue
            if started is None:
                started = time.perf_counter()
            for m in messages:
                producer.produce(topics.sink, m.value(), m.key())
            # Wait for every acknowledgement before committing, like the aiokafka loop.
            producer.flush()
            consumer.commit(asynchronous=False)
            done += len(messages)
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
    return LoopResult("confluent-kafka", done, elapsed, size)


def measure(bootstrap: str, count: int, partitions: int) -> list[LoopResult]:
    """Both loops, each on its own fresh topics filled with ``count`` messages."""
    results = []
    for client in ("aiokafka", "confluent-kafka"):
        topics = BenchTopics(bootstrap, partitions)
        try:
            size = asyncio.run(fill(bootstrap, topics.source, count))
            if client == "aiokafka":
                results.append(asyncio.run(aiokafka_loop(topics, count, size)))
            else:
                results.append(confluent_loop(topics, count, size))
        finally:
            topics.delete()
    return results
