"""Rebuild the read model from the event log and swap it in when it agrees with the live one.

``erynoa materializer rebuild [--force] [--keep]``:

1. builds ``bookings`` and ``booking_events`` in a fresh schema by replaying every booking
   topic from its first offset up to the live materializer's stored positions, with the
   same ``Projection`` the live materializer uses;
2. locks the live positions (the live materializer waits), catches up to where it got,
   and compares the two read models row by row;
3. swaps the rebuilt tables in only when they agree, or when ``--force`` is given (after a
   fix to the projection, say); the live materializer then carries on from the same
   positions, which the rebuilt tables match exactly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.materializer import BATCH_MAX_RECORDS, CONSUMER, consumer_config, decode_batch
from consumers.projection import ROW_COLUMNS, BulkLoad, Projection, Record
from erynoa.codec import default_codec
from erynoa.db import create_pool
from erynoa.kafka import start_consumer
from erynoa.settings import Settings
from erynoa.topics import load_catalog

log = logging.getLogger("erynoa.materializer.rebuild")

# Compared column by column; booking_events.recorded_at is when a row was written, not data.
_EVENT_COLUMNS = [
    "event_id", "booking_id", "event_type", "producer", "occurred_at", "correlation_id",
    "causation_id", "topic", "partition", '"offset"', "payload", "body",
]  # fmt: skip


@dataclass
class RebuildReport:
    schema: str
    events: int = 0
    seconds: float = 0.0
    bookings: int = 0
    differences: list[str] = field(default_factory=list)
    swapped: bool = False

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


# Records per bulk batch: larger batches refold fewer bookings whose events straddle two.
BULK_BATCH = 50_000

# Takes (connection, records, undecodable) and returns how many events were new.
Sink = Callable[[asyncpg.Connection, list[Record], list[tuple[str, int, int]]], Awaitable[int]]


async def _replay(
    settings: Settings,
    conn: asyncpg.Connection,
    projection: Projection,
    topics: list[str],
    until: dict[tuple[str, int], int],
    sink: Sink,
    batch: int,
) -> int:
    """Hand every message before ``until`` (per partition) to ``sink`` in batches of about
    ``batch``, from the rebuild schema's positions on; returns the number of new events."""
    consumer = AIOKafkaConsumer(**consumer_config(settings, group_id=None))
    await start_consumer(consumer)
    applied = 0
    try:
        wanted = [
            TopicPartition(topic, partition)
            for (topic, partition), offset in sorted(until.items())
            if topic in topics and offset > 0
        ]
        if not wanted:
            return 0
        consumer.assign(wanted)
        done = await projection.positions(conn)
        for tp in wanted:
            start = done.get((tp.topic, tp.partition))
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
        remaining = {
            tp
            for tp in wanted
            if done.get((tp.topic, tp.partition), 0) < until[(tp.topic, tp.partition)]
        }
        messages: list[ConsumerRecord[bytes, bytes]] = []
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, fetched in batches.items():
                limit = until[(tp.topic, tp.partition)]
                messages.extend(m for m in fetched if m.offset < limit)
                if (fetched and fetched[-1].offset + 1 >= limit) or await consumer.position(
                    tp
                ) >= limit:
                    remaining.discard(tp)
            if not batches:
                for tp in list(remaining):
                    if await consumer.position(tp) >= until[(tp.topic, tp.partition)]:
                        remaining.discard(tp)
            if messages and (len(messages) >= batch or not remaining):
                records, bad = decode_batch(projection.codec, messages)
                applied += await sink(
                    conn, records, [(m.topic, m.partition, m.offset) for m, _ in bad]
                )
                messages = []
        return applied
    finally:
        await consumer.stop()


async def _differences(conn: asyncpg.Connection, schema: str) -> list[str]:
    columns = ", ".join(ROW_COLUMNS)
    found: list[str] = []
    # API placeholders (state IS NULL) are rows the materializer has not reached yet.
    live_only = await conn.fetch(
        f"SELECT id FROM (SELECT {columns} FROM public.bookings WHERE state IS NOT NULL "
        f"EXCEPT SELECT {columns} FROM {schema}.bookings) d LIMIT 20"
    )
    rebuilt_only = await conn.fetch(
        f"SELECT id FROM (SELECT {columns} FROM {schema}.bookings "
        f"EXCEPT SELECT {columns} FROM public.bookings) d LIMIT 20"
    )
    found += [
        f"bookings {r['id']}: live row differs or is missing from the rebuild" for r in live_only
    ]
    found += [f"bookings {r['id']}: rebuilt row differs or is missing live" for r in rebuilt_only]
    events = ", ".join(_EVENT_COLUMNS)
    for a, b in (("public", schema), (schema, "public")):
        rows = await conn.fetch(
            f"SELECT event_id FROM (SELECT {events} FROM {a}.booking_events "
            f"EXCEPT SELECT {events} FROM {b}.booking_events) d LIMIT 20"
        )
        found += [f"booking_events {r['event_id']}: only in {a}" for r in rows]
    return found


async def rebuild(settings: Settings, force: bool = False, keep: bool = False) -> RebuildReport:
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    topics = list(catalog.consumer(CONSUMER).consumes)
    schema = "rebuild_" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    report = RebuildReport(schema=schema)
    pool = await create_pool(settings, max_size=4)
    live = Projection(CONSUMER, default_codec())
    projection = Projection(CONSUMER, default_codec(), schema=schema)
    started = time.perf_counter()
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"CREATE SCHEMA {schema}")
            for table in ("bookings", "booking_events", "consumer_positions"):
                await conn.execute(
                    f"CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)"
                )
        async with pool.acquire() as conn:
            target = await live.positions(conn)
        # Into empty tables: folded in memory, written with COPY (BulkLoad).
        async with pool.acquire() as conn, conn.transaction():
            bulk = BulkLoad(projection)
            report.events += await _replay(
                settings, conn, projection, topics, target, bulk.add, BULK_BATCH
            )
            await bulk.finish(conn)

        async with pool.acquire() as conn, conn.transaction():
            # The live materializer blocks on these rows until we commit: no batch lands
            # between the final catch-up, the comparison and the swap.
            await conn.execute(
                "SELECT 1 FROM public.consumer_positions WHERE consumer = $1 FOR UPDATE", CONSUMER
            )
            target = await live.positions(conn)
            # What the live materializer applied meanwhile: the live path, batch by batch.
            async with pool.acquire() as catch_up:

                async def apply(
                    c: asyncpg.Connection, records: list[Record], bad: list[tuple[str, int, int]]
                ) -> int:
                    return (await projection.apply(c, records, bad)).applied

                report.events += await _replay(
                    settings, catch_up, projection, topics, target, apply, BATCH_MAX_RECORDS
                )
            report.seconds = time.perf_counter() - started
            report.bookings = await conn.fetchval(f"SELECT count(*) FROM {schema}.bookings")
            report.differences = await _differences(conn, schema)
            if report.differences and not force:
                return report
            # Rows the API wrote at 202 time that the log has not reached the live model yet.
            await conn.execute(
                f"INSERT INTO {schema}.bookings SELECT * FROM public.bookings "
                "WHERE state IS NULL ON CONFLICT (id) DO NOTHING"
            )
            retired = schema.replace("rebuild_", "retired_")
            await conn.execute(f"CREATE SCHEMA {retired}")
            for table in ("bookings", "booking_events"):
                await conn.execute(f"ALTER TABLE public.{table} SET SCHEMA {retired}")
                await conn.execute(f"ALTER TABLE {schema}.{table} SET SCHEMA public")
            if not keep:
                await conn.execute(f"DROP SCHEMA {retired} CASCADE")
            report.swapped = True
        return report
    finally:
        if report.swapped or not keep:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.close()


def run_rebuild(settings: Settings, force: bool, keep: bool) -> RebuildReport:
    return asyncio.run(rebuild(settings, force=force, keep=keep))
