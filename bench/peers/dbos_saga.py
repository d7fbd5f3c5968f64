"""The booking saga on DBOS Transact: one workflow, seven steps that do nothing, on PostgreSQL.

    .venv/bin/python -m bench.peers.dbos_saga --database-url postgresql://erynoa@127.0.0.1:15432/erynoa

DBOS checkpoints every step in its system database: a database of its own (``DATABASE``,
created here when missing) on the server of ``--database-url``. The workflows run in this
process; the CPU per saga counts it and the PostgreSQL backends serving that database (and the
server's WAL writer and checkpointer, which other databases' writes also keep busy).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from importlib import metadata

import asyncpg
from dbos import DBOS, SetWorkflowID

from bench import peers
from erynoa.db import sibling_url

DATABASE = "erynoa_bench_dbos"
# Whether the steps note that they ran (``--one`` only: the loop measures the bare engine).
trace = False


def _step(name: str) -> Callable[[str], Awaitable[str]]:
    async def step(booking_id: str) -> str:
        if trace:
            peers.EXECUTED.append(name)
        return name

    step.__qualname__ = step.__name__ = name
    wrapped: Callable[[str], Awaitable[str]] = DBOS.step(name=name)(step)
    return wrapped


# Registered at import, as DBOS wants: it finds a workflow's code by name when it recovers one.
STEPS = {name: _step(name) for name in peers.STEPS}


@DBOS.workflow(name="booking_saga")
async def booking_saga(booking_id: str) -> list[str]:
    """The happy path: each step checkpointed, in the order our saga takes them."""
    return [await STEPS[name](booking_id) for name in peers.STEPS]


def _version() -> str:
    return metadata.version("dbos")


async def ensure_database(database_url: str, name: str = DATABASE) -> str:
    """Create database ``name`` next to ``database_url``'s if it is missing; its URL."""
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return sibling_url(database_url, name)


def launch(system_database_url: str, pool_size: int) -> DBOS:
    dbos = DBOS(
        config={
            "name": "erynoa-bench-peer",
            "system_database_url": system_database_url,
            "sys_db_pool_size": pool_size,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    return dbos


async def _one(booking_id: str) -> int:
    global trace
    trace = True
    with SetWorkflowID(booking_id):
        returned = await booking_saga(booking_id)
    recorded = [s["function_name"] for s in await DBOS.list_workflow_steps_async(booking_id)]
    return peers.one_report("dbos", returned, recorded)


async def _main(args: argparse.Namespace) -> int:
    if not args.database_url:
        return peers.unavailable("dbos", "no --database-url: DBOS needs a PostgreSQL server")
    url = await ensure_database(args.database_url, args.database)
    launch(url, pool_size=20)
    try:
        if args.one:
            return await _one(args.one)
        parts = {
            "workflows+client": peers.this_process,
            "postgres": peers.postgres_of(args.database),
        }
        return await peers.loop_report(
            "dbos", booking_saga, args, parts, f"{_version()} on PostgreSQL, own database"
        )
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(peers.arguments(__doc__.splitlines()[0], database=DATABASE))))
