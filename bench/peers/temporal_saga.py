"""The booking saga on Temporal: one workflow, seven activities that do nothing, the dev server.

    .venv/bin/python -m bench.peers.temporal_saga --seconds 10 --concurrency 100

The dev server is Temporal's CLI (``temporal server start-dev``, in-memory SQLite), built once
from source (``bench/peers/temporal_server.py``). The client and the worker share this
process; the CPU per saga counts it and the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from bench import peers
    from bench.peers.temporal_server import BINARY, VERSION, built_version

TASK_QUEUE = "bench-booking-saga"
# Whether the activities note that they ran (``--one`` only: the loop measures the bare engine).
trace = False


@workflow.defn(name="BookingSaga")
class BookingSaga:
    """The happy path: each step a durable activity, in the order our saga takes them."""

    @workflow.run
    async def run(self, booking_id: str) -> list[str]:
        done: list[str] = []
        for step in peers.STEPS:
            result = await workflow.execute_activity(
                step, booking_id, start_to_close_timeout=timedelta(seconds=30)
            )
            done.append(str(result))
        return done


def activities() -> list[Callable[[str], Awaitable[str]]]:
    """One activity per step; each answers with its own name, so the order can be checked."""

    def make(name: str) -> Callable[[str], Awaitable[str]]:
        @activity.defn(name=name)
        async def step(booking_id: str) -> str:
            if trace:
                peers.EXECUTED.append(name)
            return name

        return step

    return [make(name) for name in peers.STEPS]


async def run_saga(client: Client, booking_id: str) -> list[str]:
    """One booking's saga, start to end; the steps as the activities reported them."""
    result: list[str] = await client.execute_workflow(
        BookingSaga.run, booking_id, id=booking_id, task_queue=TASK_QUEUE
    )
    return result


async def _one(client: Client, booking_id: str) -> int:
    global trace
    trace = True
    returned = await run_saga(client, booking_id)
    history = await client.get_workflow_handle(booking_id).fetch_history()
    # The activities the server recorded as completed, in order, by their scheduled event.
    scheduled: dict[int, str] = {}
    recorded: list[str] = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attributes = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attributes.activity_type.name
        elif event.HasField("activity_task_completed_event_attributes"):
            completed = event.activity_task_completed_event_attributes
            recorded.append(scheduled[completed.scheduled_event_id])
    return peers.one_report("temporal", returned, recorded)


async def _main(args: argparse.Namespace) -> int:
    if built_version() != VERSION:
        return peers.unavailable(
            "temporal", f"the dev server is not built ({BINARY} {VERSION}; make bench builds it)"
        )
    async with (
        await WorkflowEnvironment.start_local(dev_server_existing_path=str(BINARY)) as env,
        Worker(env.client, task_queue=TASK_QUEUE, workflows=[BookingSaga], activities=activities()),
    ):
        if args.one:
            return await _one(env.client, args.one)
        parts = {
            "worker+client": peers.this_process,
            "server": lambda _pid, cmdline: cmdline.startswith(str(BINARY)),
        }
        return await peers.loop_report(
            "temporal",
            lambda b: run_saga(env.client, b),
            args,
            parts,
            f"CLI {VERSION} dev server, in-memory SQLite",
        )


if __name__ == "__main__":
    code = asyncio.run(_main(peers.arguments(__doc__.splitlines()[0])))
    sys.stdout.flush()
    sys.stderr.flush()
    # The SDK's core threads can still call into Python while the interpreter finalizes (an
    # abort or a segfault at exit, after the work is done): leave without finalizing.
    os._exit(code)
