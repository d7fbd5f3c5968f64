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

It refuses, ``--force`` or not, when a topic's log no longer starts where the live read
model's events do (retention or deleteRecords removed its beginning): the rebuilt model
would lack those bookings (``TruncatedLog``).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
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

# Messages fetched at a time from the partition furthest behind (see ``_replay``).
_STEP = 500

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
        # A booking's events lie on several topics. Read in log order per partition only, an
        # event could be folded long before an earlier one of the same booking reaches us,
        # which then refolds the booking from its stored log. So the partitions are read
        # side by side in time: a few hundred messages at a time from whichever is furthest
        # behind (by message timestamp), and a message is handed on once every partition
        # still being read has reached its timestamp.
        newest: dict[TopicPartition, int] = {}  # timestamp of the newest message fetched
        held: dict[TopicPartition, deque[ConsumerRecord[bytes, bytes]]] = defaultdict(deque)
        ready: list[ConsumerRecord[bytes, bytes]] = []
        while remaining or ready or any(held.values()):
            if remaining:
                slowest = min(newest.get(tp, -1) for tp in remaining)
                behind = [tp for tp in remaining if newest.get(tp, -1) <= slowest]
                batches = await consumer.getmany(*behind, timeout_ms=1000, max_records=_STEP)
                for tp, fetched in batches.items():
                    limit = until[(tp.topic, tp.partition)]
                    held[tp].extend(m for m in fetched if m.offset < limit)
                    if fetched:
                        newest[tp] = max(newest.get(tp, -1), fetched[-1].timestamp)
                    if (fetched and fetched[-1].offset + 1 >= limit) or await consumer.position(
                        tp
                    ) >= limit:
                        remaining.discard(tp)
                if not batches:
                    for tp in behind:
                        if await consumer.position(tp) >= until[(tp.topic, tp.partition)]:
                            remaining.discard(tp)
            # Every partition still being read is past ``cut``: nothing older can come.
            cut = min((newest.get(tp, -1) for tp in remaining), default=None)
            for queue in held.values():
                while queue and (cut is None or queue[0].timestamp <= cut):
                    ready.append(queue.popleft())
            if ready and (len(ready) >= batch or not (remaining or any(held.values()))):
                records, bad = decode_batch(projection.codec, ready)
                applied += await sink(
                    conn, records, [(m.topic, m.partition, m.offset) for m, _ in bad]
                )
                ready = []
        return applied
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class LogGap:
    """A partition whose log starts after an event the live read model holds."""

    topic: str
    partition: int
    log_start: int
    earliest_recorded: int

    def __str__(self) -> str:
        return (
            f"{self.topic} [{self.partition}] starts at offset {self.log_start}, but the read "
            f"model holds its events from offset {self.earliest_recorded}"
        )


class TruncatedLog(Exception):
    """The log lost events the live read model holds: a rebuild would lose bookings."""

    def __init__(self, gaps: list[LogGap]) -> None:
        self.gaps = gaps
        super().__init__(
            "refusing to rebuild: the log was truncated (retention or deleteRecords) and a "
            "rebuild from it would drop bookings the live read model holds; the live read "
            "model is left as it is\n  " + "\n  ".join(map(str, gaps))
        )


async def _truncated(
    settings: Settings, conn: asyncpg.Connection, until: dict[tuple[str, int], int]
) -> list[LogGap]:
    """Partitions whose log starts after the earliest event the live model recorded there.

    A log that starts later than 0 is fine when everything before its start never became a
    row (undecodable messages, or a log already truncated when the materializer first read
    it): only events the live model holds must be replayable.
    """
    wanted = [TopicPartition(t, p) for (t, p), offset in sorted(until.items()) if offset > 0]
    if not wanted:
        return []
    consumer = AIOKafkaConsumer(**consumer_config(settings, group_id=None))
    await start_consumer(consumer)
    try:
        starts = await consumer.beginning_offsets(wanted)
    finally:
        await consumer.stop()
    gaps = []
    for tp, start in sorted(starts.items()):
        if start == 0:
            continue
        earliest = await conn.fetchval(
            'SELECT min("offset") FROM public.booking_events WHERE topic = $1 AND partition = $2',
            tp.topic,
            tp.partition,
        )
        if earliest is not None and earliest < start:
            gaps.append(LogGap(tp.topic, tp.partition, start, earliest))
    return gaps


class _NotCoPartitioned(Exception):
    """A booking has events in partitions that different workers replayed."""


async def _bulk_load(
    settings: Settings,
    pool: asyncpg.Pool,
    schema: str,
    topics: list[str],
    until: dict[tuple[str, int], int],
    workers: int | None,
) -> int:
    """Replay the log up to ``until`` into the empty ``schema``; returns the events applied.

    The booking topics are co-partitioned (every event of a booking is in the same partition
    number of each topic), so the partition numbers split the replay into independent parts,
    one per worker process, each folding its own bookings (``BulkLoad``). Should a booking
    turn up in two parts after all, the parts are thrown away and one process replays all.
    """
    parts = max(1, min(workers or os.cpu_count() or 1, len({p for _, p in until})))
    if parts > 1:
        split: dict[int, dict[tuple[str, int], int]] = defaultdict(dict)
        for (topic, partition), offset in until.items():
            split[partition % parts][(topic, partition)] = offset
        loop = asyncio.get_running_loop()
        # fork, not spawn: a spawned worker would run ``__main__`` again, which for
        # ``python -m erynoa`` is the command itself. A forked worker touches nothing it
        # inherits (this loop, the pool): it starts its own loop and connection.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(len(split), mp_context=context) as executor:
            done = await asyncio.gather(
                *(
                    loop.run_in_executor(executor, _bulk_part, settings, schema, topics, part)
                    for part in split.values()
                )
            )
        seen: set[str] = set()
        try:
            for _, bookings in done:
                if bookings is None or not seen.isdisjoint(bookings):
                    raise _NotCoPartitioned
                seen.update(bookings)
            return sum(events for events, _ in done)
        except _NotCoPartitioned:
            log.warning("a booking's events span partitions of two workers: replaying in one")
            async with pool.acquire() as conn:
                for table in ("bookings", "booking_events", "consumer_positions"):
                    await conn.execute(f"TRUNCATE {schema}.{table}")
    async with pool.acquire() as conn:
        events, _ = await _load_part(settings, conn, schema, topics, until)
    return events


def _bulk_part(
    settings: Settings, schema: str, topics: list[str], until: dict[tuple[str, int], int]
) -> tuple[int, set[str] | None]:
    """One worker's part of ``_bulk_load``: the events applied and the bookings they touch
    (None when another part holds some of the same events)."""

    async def main() -> tuple[int, set[str] | None]:
        pool = await create_pool(settings, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                return await _load_part(settings, conn, schema, topics, until)
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            return 0, None
        finally:
            await pool.close()

    return asyncio.run(main())


async def _load_part(
    settings: Settings,
    conn: asyncpg.Connection,
    schema: str,
    topics: list[str],
    until: dict[tuple[str, int], int],
) -> tuple[int, set[str]]:
    projection = Projection(CONSUMER, default_codec(), schema=schema)
    async with conn.transaction():
        bulk = BulkLoad(projection)
        events = await _replay(settings, conn, projection, topics, until, bulk.add, BULK_BATCH)
        await bulk.finish(conn)
    return events, bulk.bookings


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


async def rebuild(
    settings: Settings, force: bool = False, keep: bool = False, workers: int | None = None
) -> RebuildReport:
    """Rebuild, compare, swap (module docstring); ``workers`` processes replay the log
    (default: one per CPU)."""
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
            if gaps := await _truncated(settings, conn, target):
                raise TruncatedLog(gaps)
        report.events += await _bulk_load(settings, pool, schema, topics, target, workers)

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
            # Again now the replay is done: a log's start only moves forward, so a start still
            # at or before the earliest recorded event was so throughout the replay.
            if gaps := await _truncated(settings, conn, target):
                raise TruncatedLog(gaps)
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
