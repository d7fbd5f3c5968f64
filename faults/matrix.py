"""Run the rows: one private system, one fault at a time under steady load, then measure.

Each row: load for ``warmup_s``; start the fault; keep the load for the fault's ``hold_s``;
end it (the part serves again: recovery); load ``after_s`` more; stop creating bookings and
wait until every acknowledged booking has settled (confirmed or terminal) or ``drain_s``
passed. Then: the client's record, the read model's outcomes, the invariant checker, the
messages that reached a dead-letter topic during the row, the sagas still unsettled.

Every row uses a fresh synthetic world (its own users and services), so a row measures only its
own bookings; the system and the stack stay up between rows, and a part that exits is started
again at once by the harness (as ``erynoa run`` does), each restart counted.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from erynoa.codec import codec_for
from erynoa.db import create_pool
from erynoa.kafka import H_ERROR_CLASS
from erynoa.settings import Settings
from erynoa.supervisor import answers
from faults.client import EXPECTED, SETTLED, Client, Fetch, Ledger, StatusWatch
from faults.injectors import Fault, Target
from faults.private import (
    PORT_OFFSET,
    STATE_DIR,
    Echo,
    Parts,
    PrivateStack,
    private_settings,
    wait_until,
)
from faults.report import RowResult, Second
from loadgen import world as worlds
from loadgen.clients import HttpPool, Tokens
from loadgen.lag import LagSampler
from loadgen.profile import Catalog, Outcomes, Population, Profile


@dataclass(frozen=True)
class Timing:
    rate_per_s: float = 5.0
    warmup_s: float = 10.0
    after_s: float = 15.0
    drain_s: float = 120.0
    # Providers answer within this, so an answer delayed by an outage still beats the deadline.
    response_deadline_s: int = 60


QUICK_TIMING = Timing(warmup_s=5.0, after_s=10.0, drain_s=60.0)

PROFILE = Profile(
    name="faults",
    description="every provider accepts; capacity never runs out",
    population=Population(customers=50, providers=5, services=10, slots_per_service=24),
    catalog=Catalog(capacity_per_slot=10_000, response_deadline_seconds=60),
    outcomes=Outcomes(provider_accepts=1),
)


def run_matrix(
    faults: list[Fault], base: Settings, timing: Timing, log_dir: Path, echo: Echo
) -> list[RowResult]:
    """Every row in order; the private stack and system are torn down whatever happens."""
    results: dict[str, RowResult] = {}
    runnable = []
    for fault in faults:
        reason = fault.skip_reason(base)
        if reason is None:
            runnable.append(fault)
        else:
            results[fault.name] = RowResult(fault.name, fault.title, skipped=reason)
    for brokers in sorted({f.brokers for f in runnable}):
        group = [f for f in runnable if f.brokers == brokers]
        # A cluster gets its own state dir and ports: a state dir keeps its broker count.
        state_dir = (
            STATE_DIR if brokers == 1 else STATE_DIR.with_name(f"{STATE_DIR.name}-{brokers}")
        )
        settings = private_settings(base, state_dir, PORT_OFFSET * (1 if brokers == 1 else 2))
        results.update(
            _run_group(group, PrivateStack(settings, echo, brokers), timing, log_dir, echo)
        )
    return [results[f.name] for f in faults]


def _run_group(
    faults: list[Fault], stack: PrivateStack, timing: Timing, log_dir: Path, echo: Echo
) -> dict[str, RowResult]:
    results: dict[str, RowResult] = {}
    parts: Parts | None = None
    try:
        echo(f"faults: private stack in {stack.settings.state_dir} ({stack.brokers} broker(s))")
        stack.up()
        parts = Parts(
            stack, log_dir / f"brokers-{stack.brokers}", rate_limit_per_minute=100_000_000
        )
        echo(f"faults: starting the system (logs in {parts.local.log_dir})")
        parts.start()
        for fault in faults:
            echo(f"faults: row {fault.name}: {fault.title}")
            results[fault.name] = asyncio.run(_row(fault, stack, parts, timing, echo))
            echo(f"faults: row {fault.name} done")
    finally:
        echo("faults: tearing down the private system and stack")
        try:
            if parts is not None:
                parts.stop()
        finally:
            stack.down()
    return results


def _profile(timing: Timing) -> Profile:
    catalog = PROFILE.catalog.model_copy(
        update={"response_deadline_seconds": timing.response_deadline_s}
    )
    return PROFILE.model_copy(update={"catalog": catalog})


async def _row(
    fault: Fault, stack: PrivateStack, parts: Parts, timing: Timing, echo: Echo
) -> RowResult:
    await asyncio.to_thread(stack.up)  # the previous row may have left a service down
    api_ready = f"{parts.local.api_url}/api/v1/health/ready"
    if not await asyncio.to_thread(wait_until, lambda: answers(api_ready), 120):
        return RowResult(fault.name, fault.title, skipped="the system was not ready")
    t0 = time.monotonic()
    started_at = datetime.now(UTC)

    def clock() -> float:
        return time.monotonic() - t0

    settings = parts.settings
    # The project's pool: its connections decode jsonb as the checker expects.
    pool = await create_pool(settings, min_size=0, max_size=4, command_timeout=10)
    http = HttpPool(parts.local.api_url, size=16, timeout_s=10.0)
    run_id = uuid.uuid4().hex[:8]
    world = worlds.World.build(_profile(timing), f"f{run_id}", 7, datetime.now(UTC))
    await worlds.create(pool, world)
    tokens = Tokens(settings, 3600)
    tokens.warm([(c, "customer") for c in world.customers])
    tokens.warm([(p, "provider") for p in world.providers])
    client = Client(http, tokens, worlds.Planner(world, 7), run_id, clock)
    watch = StatusWatch(_fetcher(pool), clock)
    target = Target(stack, parts, pool, client, echo)
    dlq_topics = sorted(t.name for t in parts.local.catalog.by_kind("dead_letter"))
    dlq_before = await asyncio.to_thread(end_offsets, settings.kafka_bootstrap, dlq_topics)
    restarts_before = dict(parts.restarts)
    row = RowResult(fault.name, fault.title)
    stopping = False
    load_stopped = False

    async def supervise() -> None:
        while not stopping:
            for name in parts.supervise():
                echo(f"faults: {name} exited; started again")
            await asyncio.sleep(0.5)

    async def observe() -> None:
        while not stopping:
            ids = list(client.ledger.intents)
            if ids and await watch.poll(ids):
                for booking_id, status in watch.status.items():
                    client.on_status(booking_id, status)
            await asyncio.sleep(0.5)

    background = [asyncio.ensure_future(supervise()), asyncio.ensure_future(observe())]
    load = asyncio.ensure_future(
        client.run(timing.rate_per_s, lambda: load_stopped, max_count=100_000)
    )
    try:
        await asyncio.sleep(timing.warmup_s)
        row.fault_start_s = clock()
        await fault.start(target)
        await asyncio.sleep(fault.hold_s)
        await fault.end(target)
        row.fault_end_s = clock()
        echo(f"faults: {fault.name} ended after {row.fault_end_s - row.fault_start_s:.1f} s")
        await asyncio.sleep(timing.after_s)
        load_stopped = True
        await load
        row.load_end_s = clock()
        while clock() < row.load_end_s + timing.drain_s:
            await asyncio.sleep(1.0)
            ids = list(client.ledger.intents)
            if not client.busy and await watch.poll(ids) and not watch.unsettled(ids):
                break
        await client.drain(5.0)
        row.finished_s = clock()
        stopping = True
        await asyncio.gather(*background)
        behind = await _until_agents_caught_up(parts, within_s=max(10.0, timing.drain_s / 2))
        if behind:
            row.notes.append(f"consumers still behind when checked: {behind}")
        await _measure(row, client.ledger, watch, pool, client.sent, parts, started_at)
        dlq_after = await asyncio.to_thread(end_offsets, settings.kafka_bootstrap, dlq_topics)
        row.parked, classes = await asyncio.to_thread(
            count_messages, settings.kafka_bootstrap, dlq_before, dlq_after
        )
        row.notes += [f"dead letters: {c} x{n}" for c, n in classes.items()]
        row.restarts = {
            p: n - restarts_before.get(p, 0)
            for p, n in parts.restarts.items()
            if n > restarts_before.get(p, 0)
        }
        if watch.polls_failed:
            row.notes.append(
                f"{watch.polls_failed} status polls failed (expected during the fault)"
            )
    finally:
        stopping = load_stopped = True
        for task in [*background, load]:
            task.cancel()
        await asyncio.gather(*background, load, return_exceptions=True)
        await client.drain(1.0)
        await http.aclose()
        await pool.close()
    return row


async def _until_agents_caught_up(parts: Parts, within_s: float) -> dict[str, int]:
    """Wait until every consumer group has read to the end of its topics; returns the groups
    still behind (empty when all caught up). A booking's status settles with the
    materializer, but an agent may not yet have consumed the saga's last event, and the
    checker compares each agent's state with the log."""
    groups = {c.name: c.group_id for c in parts.local.catalog.consumers.values()}
    sampler = LagSampler(parts.settings.kafka_bootstrap, groups)
    await sampler.start()
    try:
        lags = await sampler.until_caught_up(within_s)
    finally:
        await sampler.stop()
    return {group: lag for group, lag in lags.items() if lag}


def _fetcher(pool: asyncpg.Pool) -> Fetch:
    async def fetch(ids: list[str]) -> dict[str, str]:
        rows = await pool.fetch(
            "SELECT id::text, status FROM bookings WHERE id = ANY($1::uuid[])", ids, timeout=5
        )
        return {r["id"]: r["status"] for r in rows}

    return fetch


async def _measure(
    row: RowResult,
    ledger: Ledger,
    watch: StatusWatch,
    pool: asyncpg.Pool,
    sent: int,
    parts: Parts,
    since: datetime,
) -> None:
    created = ledger.acknowledged("create")
    accepted = ledger.acknowledged("accept")
    cancelled = ledger.acknowledged("cancel")
    ids = list(created)
    for _ in range(10):  # the final read must succeed: the fault has ended
        if await watch.poll(ids):
            break
        await asyncio.sleep(2)
    row.sent = sent
    row.acknowledged = {"create": len(created), "accept": len(accepted), "cancel": len(cancelled)}
    row.refused = len(ledger.refusals)
    row.failed = len(ledger.failures)
    row.abandoned = len(ledger.abandoned)
    final = {b: watch.status.get(b) for b in ids}
    row.outcomes = dict(Counter(s or "(missing)" for s in final.values()))
    for booking_id, status in final.items():
        intended = EXPECTED[ledger.intents[booking_id]].value
        if status is None:
            row.lost.append(f"{booking_id}: create acknowledged, no booking in the read model")
            continue
        if status not in SETTLED:
            row.needing_operator.append(f"{booking_id}: {status}")
            continue
        row.settled += 1
        if status == intended:
            row.as_expected += 1
        else:
            row.unexpected.append(f"{booking_id}: intended {intended}, ended {status}")
        if booking_id in cancelled and status != "cancelled":
            row.lost.append(f"{booking_id}: cancel acknowledged, ended {status}")
        elif booking_id in accepted and booking_id not in cancelled and status != "confirmed":
            row.lost.append(f"{booking_id}: accept acknowledged, ended {status}")
    before = [b for b, at in created.items() if at <= row.fault_end_s]
    if before and all(b in watch.settled_at for b in before):
        row.recovery_to_settled_s = max(
            0.0, max(watch.settled_at[b] for b in before) - row.fault_end_s
        )
    row.violations = await _check(pool, ids, row, ledger, parts, since)
    row.series = _series(ledger, watch, row.finished_s)


async def _check(
    pool: asyncpg.Pool,
    ids: list[str],
    row: RowResult,
    ledger: Ledger,
    parts: Parts,
    since: datetime,
) -> list[str]:
    """The invariant checker over the row's acknowledged bookings, with every kind of
    evidence its ``check_invariants`` accepts (the client's requests, the dead letters, what
    the mail sink received, the agents' states through the catalog)."""
    from ops import invariants

    module: Any = invariants
    check = module.check_invariants
    params = inspect.signature(check).parameters
    kwargs: dict[str, Any] = {}
    catalog = parts.local.catalog
    # The private stack's registry: its schema ids are not the default stack's.
    codec = codec_for(parts.settings)
    try:
        if "catalog" in params:
            kwargs["catalog"] = catalog
        if "requests" in params:
            kwargs["requests"] = list(ledger.ended)
        if "received" in params and hasattr(module, "read_maildir"):
            maildir = parts.settings.state_dir / "mail"
            kwargs["received"] = module.read_maildir(maildir, ids)
        if "parked" in params and hasattr(module, "read_parked"):
            kwargs["parked"] = await module.read_parked(
                catalog, parts.settings.kafka_bootstrap, since=since, codec=codec
            )
        if "codec" in params:
            kwargs["codec"] = codec
        found = await check(pool, ids, **kwargs)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        row.notes.append(
            f"the checker failed with {', '.join(sorted(kwargs))}: {type(exc).__name__}: {exc} "
            f"({Path(where.filename).name}:{where.lineno}); checked with the bookings alone"
        )
        kwargs = {}
        try:
            found = await check(pool, ids)
        except Exception as again:  # a checker that cannot run is a finding, not a pass
            row.notes.append(f"the checker failed: {type(again).__name__}: {again}")
            return [f"checker failed: {type(again).__name__}"]
    if kwargs:
        row.notes.append("checker evidence: bookings, " + ", ".join(sorted(kwargs)))
    return [str(v) for v in found]


def _series(ledger: Ledger, watch: StatusWatch, until_s: float) -> list[Second]:
    seconds = int(until_s) + 1
    acked = Counter(int(a.at_s) for a in ledger.acks if a.operation == "create")
    refused = Counter(int(r.at_s) for r in ledger.refusals if not r.final)
    failed = Counter(int(f.at_s) for f in ledger.failures)
    confirmed: Counter[int] = Counter()
    other: Counter[int] = Counter()
    for booking_id, at in watch.settled_at.items():
        if watch.status.get(booking_id) == "confirmed":
            confirmed[int(at)] += 1
        else:
            other[int(at)] += 1
    return [
        Second(t, acked[t], refused[t], failed[t], confirmed[t], other[t]) for t in range(seconds)
    ]


# --- dead-letter topics --------------------------------------------------------------------


def _consumer(bootstrap: str) -> object:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"faults-probe-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "log_level": 0,
        }
    )


def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Each partition's end offset (retried while a restarted broker comes back)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    for attempt in range(10):
        consumer = _consumer(bootstrap)
        assert isinstance(consumer, Consumer)
        try:
            metadata = consumer.list_topics(timeout=10)
            out = {}
            for topic in topics:
                meta = metadata.topics.get(topic)
                if meta is None or meta.error is not None:
                    continue
                for p in meta.partitions:
                    _low, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=10
                    )
                    out[(topic, p)] = high
            return out
        except KafkaException:
            if attempt == 9:
                raise
            time.sleep(3)
        finally:
            consumer.close()
    return {}


def count_messages(
    bootstrap: str,
    before: dict[tuple[str, int], int],
    after: dict[tuple[str, int], int],
    timeout_s: float = 30.0,
) -> tuple[dict[str, int], dict[str, int]]:
    """Committed messages between the offsets (transaction markers take offsets too), per
    topic, and their error classes."""
    from confluent_kafka import KafkaError, TopicPartition

    ranges = {tp: (before.get(tp, 0), end) for tp, end in after.items() if end > before.get(tp, 0)}
    if not ranges:
        return {}, {}
    consumer = _consumer(bootstrap)
    per_topic: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    try:
        consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _) in ranges.items()])  # type: ignore[attr-defined]
        remaining = set(ranges)
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(0.5)  # type: ignore[attr-defined]
            if msg is None:
                continue
            tp = (msg.topic(), msg.partition())
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(tp)
                continue
            if tp not in ranges or msg.offset() >= ranges[tp][1]:
                remaining.discard(tp)
                continue
            per_topic[tp[0]] += 1
            headers = dict(msg.headers() or [])
            raw = headers.get(H_ERROR_CLASS)
            classes[raw.decode() if isinstance(raw, bytes) else "(none)"] += 1
    finally:
        consumer.close()  # type: ignore[attr-defined]
    return dict(per_topic), dict(classes.most_common())
