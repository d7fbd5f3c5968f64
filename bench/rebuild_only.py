"""The read-model rebuild alone, on its own topics and database, in a minute or two.

    .venv/bin/python -m bench.rebuild_only --bookings 4000 [--rebuilds 2] [--workers N] \
        [--keep NAME]

Creates a topic prefix and a migrated database of its own (as the integration tests do, so
the shared stack's topics and rows are untouched), publishes ``--bookings`` finished sagas
(``bench.corpus``), lets an in-process live materializer fold them (timed: its catch-up),
then runs ``consumers.rebuild.rebuild`` ``--rebuilds`` times and prints events/s for each.
``--keep NAME`` keeps (or reuses, when it exists) the namespace ``NAME``, so a second run
skips the publishing; without it everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg

from bench import corpus
from consumers import materializer
from consumers.rebuild import rebuild
from erynoa.db import migrate
from erynoa.kafka import end_offsets
from erynoa.settings import Settings
from erynoa.topic_admin import admin_client, apply
from erynoa.topics import TopicCatalog, load_catalog


def _catalog(settings: Settings) -> TopicCatalog:
    return load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)


@contextlib.asynccontextmanager
async def namespace(base: Settings, name: str, keep: bool) -> AsyncIterator[tuple[Settings, bool]]:
    """Settings with topic prefix ``name-`` and database ``name``; True when they existed."""
    server_url, _, _ = base.database_url.rpartition("/")
    own = base.model_copy(
        update={
            "topic_prefix": f"{name}-",
            "database_url": f"{server_url}/{name}",
            "metrics_port_base": 0,  # the shared stack's materializer owns the default port
        }
    )
    server = await asyncpg.connect(base.database_url)
    existed = bool(await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    admin = admin_client(own.kafka_bootstrap)
    catalog = _catalog(own)
    if not existed:
        apply(admin, catalog)
        await server.execute(f'CREATE DATABASE "{name}"')
        await migrate(own.database_url)
    try:
        yield own, existed
    finally:
        if not keep:
            await server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for future in admin.delete_topics(list(catalog.topics), request_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=30)
        await server.close()


async def _end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    ends = await end_offsets(
        settings.kafka_bootstrap, _catalog(settings).consumer("materializer").consumes
    )
    return {(tp.topic, tp.partition): end for tp, end in ends.items() if end}


async def _caught_up(settings: Settings, ends: dict[tuple[str, int], int]) -> bool:
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM consumer_positions "
            "WHERE consumer = 'materializer'"
        )
    finally:
        await conn.close()
    stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    # Transaction markers take offsets too: within a couple of the end is caught up.
    return all(stored.get(key, 0) >= end - 2 for key, end in ends.items())


async def live_catch_up(settings: Settings, bookings: int) -> None:
    """Publish the corpus while no materializer runs, then time one catching up on it."""
    started = time.perf_counter()
    events = await corpus.publish(settings, _catalog(settings), bookings)
    print(f"published {events:,} events in {time.perf_counter() - started:.1f}s", flush=True)
    ends = await _end_offsets(settings)
    stopping = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(materializer.run(settings, stopping))
    try:
        while not await _caught_up(settings, ends):
            if task.done():
                task.result()
            await asyncio.sleep(0.1)
        seconds = time.perf_counter() - started
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)
    print(
        f"live materializer: {events:,} events in {seconds:.2f}s "
        f"({events / seconds:,.0f} events/s, including its start-up)",
        flush=True,
    )


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=4000)
    parser.add_argument("--rebuilds", type=int, default=2)
    parser.add_argument("--workers", type=int, help="replay processes (default: one per CPU)")
    parser.add_argument("--keep", metavar="NAME", help="keep (or reuse) this namespace")
    args = parser.parse_args(argv)
    name = args.keep or f"rb{uuid.uuid4().hex[:10]}"
    async with namespace(Settings(), name, keep=bool(args.keep)) as (settings, existed):
        print(f"namespace {name} ({'reused' if existed else 'new'})", flush=True)
        if not existed:
            await live_catch_up(settings, args.bookings)
        for _ in range(args.rebuilds):
            report = await (
                rebuild(settings)
                if args.workers is None
                else rebuild(settings, workers=args.workers)
            )
            print(
                f"rebuild: {report.events:,} events, {report.bookings:,} bookings in "
                f"{report.seconds:.2f}s = {report.events_per_second:,.0f} events/s; "
                f"differences {len(report.differences)}, swapped {report.swapped}",
                flush=True,
            )
            if report.differences:
                print("\n".join(report.differences[:5]), flush=True)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
