"""The materializer: folds every booking event into PostgreSQL's read model.

Run it with ``erynoa materializer run`` (one of many in the consumer group
``erynoa-materializer``; partitions spread over them). Each ``getmany`` batch becomes one
transaction (``consumers.projection``). The positions in Postgres are the truth; the offsets
committed to Kafka (at most once a second, and on revocation and stop) only serve lag
monitoring and a first guess.

``erynoa materializer rebuild`` replays the log from offset 0 into a fresh schema, compares it
with the live tables and swaps them in only when they agree (or with ``--force``).

Observability: one INFO line per batch, one DEBUG line per event (``booking_id``,
``correlation_id``, ``request_id``); with tracing on, a span per event, the child of the
context its Kafka headers carry. ``/metrics`` on ``ERYNOA_METRICS_PORT_BASE`` + 0::

    erynoa_materializer_batch_size                    histogram (events per batch)
    erynoa_materializer_write_duration_seconds        histogram (one batch's transaction)
    erynoa_materializer_events_total{outcome}         applied | skipped | dead_lettered
    erynoa_consumer_lag{group, topic, partition}      end offset minus position, per partition
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from consumers.projection import BatchResult, Projection, Record
from erynoa import kafka as k
from erynoa import metrics, tracing
from erynoa.codec import EventCodec, UndecodableEvent, default_codec
from erynoa.db import wait_for_pool
from erynoa.events import BookingEvent
from erynoa.metrics import MetricsServer
from erynoa.settings import Settings
from erynoa.topics import Consumer, TopicCatalog, load_catalog

log = logging.getLogger("erynoa.materializer")

CONSUMER = "materializer"
BATCH_MAX_RECORDS = 2000
# While idle, lag is still refreshed this often; under load at most every LAG_REFRESH_BUSY_S
# (asking the position of every assigned partition after every small batch costs more than
# the batch's own work, and a scrape reads the gauge far less often).
LAG_REFRESH_S = 5.0
LAG_REFRESH_BUSY_S = 1.0
# Kafka's committed offsets only say where redelivery starts (PostgreSQL's positions are the
# truth): committed at most this often, not after every batch (a round trip to the group
# coordinator each), and on revocation and stop.
COMMIT_INTERVAL_S = 1.0
COMMIT_TIMEOUT_S = 3.0


class MaterializerMetrics:
    """The materializer process's metrics (module docstring), in its own registry."""

    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        self.registry = registry
        self.batch_size = Histogram(
            "erynoa_materializer_batch_size",
            "Events per batch (one transaction)",
            buckets=metrics.BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.write_seconds = Histogram(
            "erynoa_materializer_write_duration_seconds",
            "Time of one batch's read-model transaction",
            buckets=metrics.LATENCY_BUCKETS,
            registry=registry,
        )
        self.events = Counter(
            "erynoa_materializer_events",
            "Events by outcome: applied (new to the read model), skipped (redelivered), "
            "dead_lettered (undecodable)",
            ["outcome"],
            registry=registry,
        )
        self.lag = metrics.PartitionLag(registry, group)

    def record(self, batch: int, seconds: float, result: BatchResult, dead: int) -> None:
        self.batch_size.observe(batch)
        self.write_seconds.observe(seconds)
        self.events.labels("applied").inc(result.applied)
        self.events.labels("skipped").inc(result.skipped)
        self.events.labels("dead_lettered").inc(dead)


@dataclass
class MaterializerRuntime:
    """Everything the materializer's loop needs, wired once by ``start``."""

    settings: Settings
    catalog: TopicCatalog
    spec: Consumer
    codec: EventCodec
    pool: asyncpg.Pool
    consumer: AIOKafkaConsumer
    dead_letters: AIOKafkaProducer
    projection: Projection
    metrics: MaterializerMetrics
    metrics_server: MetricsServer | None = None
    uncommitted: dict[TopicPartition, int] = field(default_factory=dict)
    """Offsets applied to the read model but not yet committed to Kafka."""
    committed_at: float = 0.0


async def commit_offsets(
    runtime: MaterializerRuntime, only: Collection[TopicPartition] | None = None
) -> None:
    """Commit the applied offsets of the assigned partitions (of ``only`` those). Losing a
    commit loses nothing: the stored positions skip what was already applied. A commit that
    fails or hangs (no group coordinator) keeps its offsets for the next one."""
    assigned = runtime.consumer.assignment()
    offsets = {
        tp: offset
        for tp, offset in runtime.uncommitted.items()
        if tp in assigned and (only is None or tp in only)
    }
    for tp in set(runtime.uncommitted) - assigned:
        del runtime.uncommitted[tp]  # revoked: its next owner commits it
    if not offsets:
        return
    runtime.committed_at = time.monotonic()
    try:
        await asyncio.wait_for(runtime.consumer.commit(offsets), COMMIT_TIMEOUT_S)
    except (KafkaError, TimeoutError) as exc:
        log.warning("offset commit failed (%r); the stored positions still hold", exc)
        return
    for tp, offset in offsets.items():
        if runtime.uncommitted.get(tp) == offset:  # not moved on meanwhile
            del runtime.uncommitted[tp]


class _SeekToStoredPositions(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, continue from the positions stored with the read model."""

    def __init__(self, runtime: MaterializerRuntime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # While still a member: the next owner starts close to where this one stopped.
        await commit_offsets(self.runtime, set(revoked))

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


async def start(settings: Settings) -> MaterializerRuntime:
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    spec = catalog.consumer(CONSUMER)
    codec = default_codec()
    pool = await wait_for_pool(settings)
    consumer = AIOKafkaConsumer(**consumer_config(settings, spec.group_id))
    dead_letters = AIOKafkaProducer(
        **k.producer_config(settings.kafka_bootstrap, f"erynoa-{CONSUMER}-dlq")
    )
    runtime = MaterializerRuntime(
        settings, catalog, spec, codec, pool, consumer, dead_letters,
        Projection(CONSUMER, codec),
        MaterializerMetrics(metrics.new_registry(), spec.group_id),
    )  # fmt: skip
    consumer.subscribe(list(spec.consumes), listener=_SeekToStoredPositions(runtime))
    await dead_letters.start()
    await consumer.start()
    runtime.metrics_server = metrics.serve(
        runtime.metrics.registry, settings.metrics_host, metrics.port_for(settings, CONSUMER)
    )
    return runtime


async def stop(runtime: MaterializerRuntime) -> None:
    if runtime.metrics_server is not None:
        runtime.metrics_server.stop()
    with contextlib.suppress(Exception):
        await commit_offsets(runtime)
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


async def decode_batch_off_loop(
    codec: EventCodec, messages: Sequence[ConsumerRecord[bytes, bytes]]
) -> tuple[list[Record], list[tuple[ConsumerRecord[bytes, bytes], str]]]:
    """``decode_batch`` for the event loop: in a thread when a message needs the registry (a
    blocking request, up to its timeout), inline otherwise (the usual case: every id cached)."""
    if any(m.value is not None and codec.needs_registry(m.value) for m in messages):
        return await asyncio.to_thread(decode_batch, codec, messages)
    return decode_batch(codec, messages)


async def dead_letter(
    producer: AIOKafkaProducer,
    topic: str,
    message: ConsumerRecord[bytes, bytes],
    error: str,
    error_class: str,
) -> None:
    """Park ``message`` in ``topic`` with headers saying why, from where and when."""
    headers = k.failure_headers(
        list(message.headers or ()),
        origin=(message.topic, message.partition, message.offset),
        consumer=CONSUMER,
        error=error,
        error_class=error_class,
        error_kind="permanent",
        now=datetime.now(UTC),
    )
    await producer.send_and_wait(topic, value=message.value, key=message.key, headers=headers)


async def process_batch(
    runtime: MaterializerRuntime, messages: Sequence[ConsumerRecord[bytes, bytes]]
) -> None:
    records, bad = await decode_batch_off_loop(runtime.codec, messages)
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
    spans = _start_spans(messages, records)
    _log_events(records, messages, spans)
    started = time.perf_counter()
    try:
        async with runtime.pool.acquire() as conn:
            result = await runtime.projection.apply(conn, records, undecodable)
    except BaseException as exc:
        for span in spans.values():
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR)
            span.end()
        raise
    written_s = time.perf_counter() - started
    for span in spans.values():
        span.end()
    runtime.metrics.record(len(messages), written_s, result, len(bad))
    for (topic, partition), offset in result.rewind.items():
        runtime.consumer.seek(TopicPartition(topic, partition), offset)
    for message in messages:
        tp = TopicPartition(message.topic, message.partition)
        if (message.topic, message.partition) in result.rewind:
            runtime.uncommitted.pop(tp, None)
        else:
            runtime.uncommitted[tp] = max(runtime.uncommitted.get(tp, 0), message.offset + 1)
    if time.monotonic() - runtime.committed_at >= COMMIT_INTERVAL_S:
        await commit_offsets(runtime)
    log.info(
        "batch of %d applied",
        len(messages),
        extra={
            "events": result.applied,
            "skipped": result.skipped,
            "dead_lettered": len(bad),
            "bookings": result.bookings,
            "ms": round(written_s * 1000, 1),
        },
    )


def _key(message: ConsumerRecord[bytes, bytes] | Record) -> tuple[str, int, int]:
    return (message.topic, message.partition, message.offset)


def _start_spans(
    messages: Sequence[ConsumerRecord[bytes, bytes]], records: Sequence[Record]
) -> dict[tuple[str, int, int], trace.Span]:
    """A span per event, the child of its headers' context, open until the batch commits."""
    if not tracing.enabled():
        return {}
    headers = {_key(m): m.headers for m in messages}
    spans = {}
    for record in records:
        span = tracing.start_consumer_span(
            "erynoa.materializer",
            f"materialize {record.event.event_type}",
            headers[_key(record)],
            {**tracing.event_attributes(record.event), "messaging.destination.name": record.topic},
        )
        if span is not None:
            spans[_key(record)] = span
    return spans


def _log_events(
    records: Sequence[Record],
    messages: Sequence[ConsumerRecord[bytes, bytes]],
    spans: dict[tuple[str, int, int], trace.Span],
) -> None:
    if not log.isEnabledFor(logging.DEBUG):
        return
    headers = {_key(m): m.headers for m in messages}
    for record in records:
        event = record.event
        span = spans.get(_key(record))
        # Inside the event's span, so the line carries its trace_id.
        with trace.use_span(span, end_on_exit=False) if span else contextlib.nullcontext():
            log.debug(
                "%s from %s",
                event.event_type,
                event.producer,
                extra={
                    "booking_id": event.booking_id,
                    "correlation_id": event.correlation_id,
                    "request_id": k.header(headers[_key(record)], k.H_REQUEST_ID),
                    "event_id": event.event_id,
                    "event_type": event.event_type,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )


async def update_lag(runtime: MaterializerRuntime) -> None:
    """Lag of every partition this process is assigned: end offset minus position.

    The end is the last stable offset (we read committed), falling back to the high
    watermark; both are known locally once the partition was fetched from.
    """
    consumer = runtime.consumer
    lags: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        try:
            position = await asyncio.wait_for(consumer.position(tp), timeout=1.0)
        except (IllegalStateError, TimeoutError):
            continue  # revoked meanwhile, or no position yet: nothing to report
        end = consumer.last_stable_offset(tp)
        lag = metrics.lag(end if end is not None else consumer.highwater(tp), position)
        if lag is not None:
            lags[(tp.topic, tp.partition)] = lag
    runtime.metrics.lag.update(lags)


# What a dependency being away raises (PostgreSQL failing over, a connection cut mid-query, the
# broker refusing a dead letter): the batch waits and is tried again; anything else is a bug.
_OUTAGE: tuple[type[BaseException], ...] = (
    TimeoutError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    KafkaError,
)


async def run(settings: Settings, stopping: asyncio.Event | None = None) -> None:
    """Consume until ``stopping`` is set (or forever); a failed batch is retried in place."""
    stopping = stopping or asyncio.Event()
    runtime = await start(settings)
    # Everything loaded so far lives as long as the process: keep it out of full garbage
    # collections, which otherwise walk it all again and stall the loop (see api/server.py).
    gc.freeze()
    log.info("materializer started", extra={"group": runtime.spec.group_id})
    backoff = 0.5
    lag_updated = 0.0
    try:
        while not stopping.is_set():
            batches = await runtime.consumer.getmany(timeout_ms=200, max_records=BATCH_MAX_RECORDS)
            messages = [m for batch in batches.values() for m in batch]
            if not messages:
                if (
                    runtime.uncommitted
                    and time.monotonic() - runtime.committed_at >= COMMIT_INTERVAL_S
                ):
                    await commit_offsets(runtime)
                if time.monotonic() - lag_updated > LAG_REFRESH_S:
                    await update_lag(runtime)
                    lag_updated = time.monotonic()
                continue
            try:
                await process_batch(runtime, messages)
                backoff = 0.5
            except _OUTAGE as exc:
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
            if time.monotonic() - lag_updated > LAG_REFRESH_BUSY_S:
                await update_lag(runtime)
                lag_updated = time.monotonic()
    finally:
        await stop(runtime)
        log.info("materializer stopped")
