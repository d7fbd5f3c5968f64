"""Publishing events to Kafka, the same way from every runtime.

``EventPublisher`` wraps an idempotent aiokafka producer (``acks=all``): it encodes with the
one codec, picks the topic from the catalog, keys by booking (or service) id, and puts the
cross-cutting context into Kafka headers, the current trace span's W3C context included
(``erynoa.tracing``; nothing while tracing is off). ``publish`` returns only after the broker
acknowledged, so a caller that answers a client after it has a durable fact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient

from erynoa import tracing
from erynoa.codec import EventCodec
from erynoa.events import BookingEvent, CatalogEvent
from erynoa.topics import TopicCatalog

KAFKA_REFUSALS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.UnsupportedVersionError,
    kafka_errors.CorruptRecordException,
)
"""What a broker answers the same way however often it is asked: not an outage."""

# Header names (ASCII, lower-case): what travels beside every event.
H_REQUEST_ID = "x-request-id"
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"
H_EVENT_TYPE = "erynoa-event-type"
H_SYNTHETIC = "erynoa-synthetic"
H_REPLAY = "erynoa-replay"
# Failure bookkeeping for retry and dead-letter topics.
H_ATTEMPTS = "erynoa-attempts"
H_ERROR = "erynoa-error"
H_ERROR_CLASS = "erynoa-error-class"
H_ORIGIN_TOPIC = "erynoa-origin-topic"
H_ORIGIN_PARTITION = "erynoa-origin-partition"
H_ORIGIN_OFFSET = "erynoa-origin-offset"
H_FIRST_FAILURE = "erynoa-first-failure"
H_LAST_FAILURE = "erynoa-last-failure"
H_NOT_BEFORE = "erynoa-not-before"
H_CONSUMER = "erynoa-consumer"
H_ERROR_KIND = "erynoa-error-kind"  # retryable | permanent

Headers = list[tuple[str, bytes]]

FAILURE_HEADERS: frozenset[str] = frozenset(
    {
        H_ERROR,
        H_ERROR_CLASS,
        H_ERROR_KIND,
        H_ORIGIN_TOPIC,
        H_ORIGIN_PARTITION,
        H_ORIGIN_OFFSET,
        H_FIRST_FAILURE,
        H_LAST_FAILURE,
        H_NOT_BEFORE,
        H_CONSUMER,
    }
)
"""Headers that describe a failure, not the event: a replay removes them. ``erynoa-attempts``
is not among them: a replayed message that fails again continues its count."""

MAX_ERROR_LEN = 1000


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    """The last value of header ``name`` as text, or None."""
    value = None
    for key, raw in headers or ():
        if key == name:
            value = raw.decode("utf-8", "replace")
    return value


def attempts_so_far(headers: Sequence[tuple[str, bytes]] | None) -> int:
    raw = header(headers, H_ATTEMPTS)
    try:
        return max(0, int(raw)) if raw is not None else 0
    except ValueError:
        return 0


def failure_headers(
    headers: Sequence[tuple[str, bytes]] | None,
    *,
    origin: tuple[str, int, int],
    consumer: str,
    error: str,
    error_class: str,
    error_kind: str,
    now: datetime,
    not_before: datetime | None = None,
) -> Headers:
    """``headers`` after one more failed attempt of ``consumer`` at the message: the other
    headers kept, the attempt counted, and the origin (topic, partition, offset) and first
    failure time of the *first* failure kept across retry tiers and replays."""

    def first(name: str, value: str) -> tuple[str, bytes]:
        previous = header(headers, name)
        return (name, (previous if previous is not None else value).encode())

    topic, partition, offset = origin
    now_iso = now.astimezone(UTC).isoformat()
    due = not_before or now
    kept = [(n, v) for n, v in headers or () if n not in FAILURE_HEADERS and n != H_ATTEMPTS]
    return [
        *kept,
        (H_ATTEMPTS, str(attempts_so_far(headers) + 1).encode()),
        (H_ERROR, error[:MAX_ERROR_LEN].encode()),
        (H_ERROR_CLASS, error_class.encode()),
        (H_ERROR_KIND, error_kind.encode()),
        first(H_ORIGIN_TOPIC, topic),
        first(H_ORIGIN_PARTITION, str(partition)),
        first(H_ORIGIN_OFFSET, str(offset)),
        first(H_FIRST_FAILURE, now_iso),
        (H_LAST_FAILURE, now_iso.encode()),
        (H_NOT_BEFORE, str(int(due.timestamp() * 1000)).encode()),
        (H_CONSUMER, consumer.encode()),
    ]


def replay_headers(headers: Sequence[tuple[str, bytes]], replay_id: str) -> Headers:
    """The headers a replayed message carries: the original ones without the failure headers
    (and without an earlier replay marker), ``erynoa-attempts`` kept, this replay's id added."""
    kept = [(n, v) for n, v in headers if n not in FAILURE_HEADERS and n != H_REPLAY]
    return [*kept, (H_REPLAY, replay_id.encode())]


async def start_consumer(consumer: AIOKafkaConsumer) -> None:
    """Start ``consumer``, working around an aiokafka 0.14 shutdown bug.

    A consumer without a group that is stopped before its coordinator task first ran gets
    ``CancelledError`` out of ``stop()``; one loop turn after ``start()`` lets the task run.
    """
    await consumer.start()
    await asyncio.sleep(0)


async def topic_partitions(
    bootstrap: str, topics: Sequence[str] | None = None
) -> list[TopicPartition]:
    """The partitions of ``topics`` (None: of every topic) that exist, from the brokers'
    metadata.

    A consumer's ``partitions_for_topic`` knows only topics it subscribed to (one without a
    group learns none); the admin client asks the cluster, and never auto-creates a topic by
    asking about it.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="erynoa-metadata")
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics) if topics is not None else None)
    finally:
        await admin.close()
    return sorted(
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in t["partitions"]
    )


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """The end offset (the next offset to be written) of each partition of ``topics``."""
    partitions = await topic_partitions(bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await start_consumer(consumer)
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return ends


@dataclass(frozen=True)
class LogPosition:
    """Where a message stands in the log: the record a publish wrote, or one a consumer read."""

    topic: str
    partition: int
    offset: int


Published = LogPosition
"""Where a publish put an event, as the broker acknowledged it."""


def producer_config(bootstrap: str, client_id: str) -> dict[str, object]:
    """Settings for every producer: no duplicates on retry, nothing acknowledged early."""
    return {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 15_000,
    }


class EventPublisher:
    def __init__(
        self, producer: AIOKafkaProducer, codec: EventCodec, catalog: TopicCatalog
    ) -> None:
        self._producer = producer
        self._codec = codec
        self._catalog = catalog

    @classmethod
    def create(
        cls, bootstrap: str, client_id: str, codec: EventCodec, catalog: TopicCatalog
    ) -> EventPublisher:
        return cls(AIOKafkaProducer(**producer_config(bootstrap, client_id)), codec, catalog)

    @property
    def producer(self) -> AIOKafkaProducer:
        return self._producer

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    def topic_for(self, event: BookingEvent | CatalogEvent) -> str:
        return self._catalog.topic_for(event.event_type)

    async def publish(
        self,
        event: BookingEvent | CatalogEvent,
        headers: Mapping[str, str] | None = None,
    ) -> Published:
        """Send one event and wait for the broker's acknowledgement."""
        return (await self.publish_many([event], headers))[0]

    async def publish_many(
        self,
        events: Sequence[BookingEvent | CatalogEvent],
        headers: Mapping[str, str] | None = None,
    ) -> list[Published]:
        """Send events (batched by the producer) and wait until every one is acknowledged."""
        return await self.publish_encoded([(event, None, headers) for event in events])

    async def publish_encoded(
        self,
        items: Sequence[tuple[BookingEvent | CatalogEvent, bytes | None, Mapping[str, str] | None]],
    ) -> list[Published]:
        """Send ``(event, payload, headers)`` items in order and wait until every one is
        acknowledged. ``payload`` is the event already encoded (an outbox row), or None.

        Everything is handed to the producer before the first wait, so one batch's events share
        the producer's requests instead of waiting for each other's acknowledgements.
        """
        pending = []
        for event, payload, headers in items:
            key = event.booking_id if isinstance(event, BookingEvent) else event.service_id
            kafka_headers: Headers = [(H_EVENT_TYPE, event.event_type.encode())]
            kafka_headers += [(k, v.encode()) for k, v in (headers or {}).items()]
            # The span publishing this event is its cause's: it replaces a passed-on context.
            tracing.inject(kafka_headers)
            pending.append(
                await self._producer.send(
                    self.topic_for(event),
                    value=payload if payload is not None else self._codec.encode(event),
                    key=key.encode(),
                    headers=kafka_headers,
                )
            )
        published = []
        for future in pending:
            metadata = await future
            published.append(LogPosition(metadata.topic, metadata.partition, metadata.offset))
        return published
