"""The Faust app of one saga agent: the one place that wires the worker runtime.

``create_app("payment", settings)`` returns a ``faust.App`` whose id is the agent's consumer
group from ``topics.yaml`` (``erynoa-payment``), subscribed to the topics the catalog lists for
it plus its retry topics. Run it with ``erynoa worker <agent>`` (``streams.cli``); more
processes of the same agent share the partitions of its group.

Faust is used for what it is good at — group membership, fetching, per-partition offset
tracking, timers, worker lifecycle — and nothing else: no tables (so no changelog topics), no
leader topic, no topic creation (``topics.yaml`` is the truth and ``erynoa topics apply`` makes
the cluster match it). Messages are read as raw bytes and handed to ``streams.runtime``, which
decodes them with the project's codec. Acknowledgement is manual: a message is acked only after
its handler committed and published (or routed the message to a retry/dead-letter topic), so an
offset is never committed for work that did not happen.

Nothing connects at import or in ``create_app``: the pool, the Kafka publisher and the
agent's clients (payment gateway, SMTP, HTTP) are created when the app starts, and so are the
agent's ``/metrics`` port (``streams.metrics``; ``ERYNOA_METRICS_PORT_BASE`` + the agent's
offset) and its tracer (``erynoa.tracing``; off unless ``ERYNOA_TRACING_EXPORTER`` is set).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import faust
from aiokafka import AIOKafkaProducer
from faust.types import TP

from erynoa import metrics, saga, tracing
from erynoa.codec import default_codec
from erynoa.db import wait_for_pool
from erynoa.kafka import EventPublisher, producer_config
from erynoa.settings import Settings
from erynoa.topics import load_catalog
from streams.metrics import consumer_lag
from streams.runtime import Adapter, AgentRuntime, Incoming

log = logging.getLogger("streams.app")

AGENTS = saga.AGENTS
DEADLINE_SWEEP_INTERVAL_S = 1.0
MAX_LANES = 8
LANE_BUFFER = 256
MAX_BATCH = 128
OUTBOX_RELAY_INTERVAL_S = 5.0
METRICS_INTERVAL_S = 5.0


def make_adapter(agent: saga.Agent, settings: Settings) -> Adapter:
    """The agent-specific part; imported lazily so a worker loads only its own clients."""
    if agent == "reservation":
        from streams.reservation import ReservationAdapter

        return ReservationAdapter()
    if agent == "payment":
        from streams.payment.agent import PaymentAdapter
        from streams.payment.factory import gateway_factory

        return PaymentAdapter(gateway_factory(settings))
    if agent == "notification":
        from streams.notification import NotificationAdapter

        return NotificationAdapter.from_settings(settings)
    from streams.provider_response import ProviderResponseAdapter

    return ProviderResponseAdapter()


def check_agent(name: str) -> saga.Agent:
    for agent in AGENTS:
        if agent == name:
            return agent
    raise ValueError(f"unknown agent {name!r}; choose one of: {', '.join(AGENTS)}")


class AgentApp(faust.App):
    """A Faust app that starts the runtime's resources before its agents and drains them at stop."""

    runtime: AgentRuntime
    settings: Settings
    metrics_server: metrics.MetricsServer | None = None

    async def on_first_start(self) -> None:
        # Faust creates its data dir without parents (it holds nothing for us: no tables).
        Path(self.conf.datadir).parent.mkdir(parents=True, exist_ok=True)
        tracing.configure(self.settings, f"erynoa-{self.runtime.agent}")
        await super().on_first_start()

    async def on_start(self) -> None:
        await self.runtime.start()
        self.metrics_server = metrics.serve(
            self.runtime.metrics.registry,
            self.settings.metrics_host,
            metrics.port_for(self.settings, self.runtime.agent),
        )
        await super().on_start()

    async def on_stop(self) -> None:
        # Runs before Faust stops the consumer and the agents: the in-flight message finishes,
        # is acked, and the consumer's final commit includes it.
        await self.runtime.drain()
        await super().on_stop()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self.runtime.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        tracing.shutdown()


def _incoming(event: Any) -> Incoming:
    message = event.message
    raw_headers = message.headers or []
    if isinstance(raw_headers, dict):
        raw_headers = list(raw_headers.items())
    headers = [(str(name), bytes(value or b"")) for name, value in raw_headers]
    return Incoming(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value if message.value is not None else b"",
        headers=headers,
    )


def create_app(agent_name: str, settings: Settings, *, adapter: Adapter | None = None) -> faust.App:
    """The Faust app for one agent: reservation | payment | notification | provider-response."""
    agent = check_agent(agent_name)
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    consumer = catalog.consumer(agent)
    codec = default_codec()

    async def connect_pool() -> asyncpg.Pool:
        return await wait_for_pool(settings)

    def make_publisher() -> EventPublisher:
        config = producer_config(settings.kafka_bootstrap, f"{consumer.group_id}-publisher")
        # Each handler waits for its events' acknowledgement before it acks its message, so a
        # linger is pure latency here; the lanes' concurrent sends still share batches.
        return EventPublisher(AIOKafkaProducer(**{**config, "linger_ms": 0}), codec, catalog)

    runtime = AgentRuntime(
        adapter=adapter if adapter is not None else make_adapter(agent, settings),
        consumer=consumer,
        codec=codec,
        policy=saga.Policy.from_settings(settings),
        connect_pool=connect_pool,
        make_publisher=make_publisher,
    )
    app = AgentApp(
        consumer.group_id,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        # topics.yaml is the truth: Faust must not create or need topics of its own.
        topic_allow_declare=False,
        topic_disable_leader=True,
        autodiscover=False,
        web_enabled=False,
        store="memory://",
        datadir=str(settings.state_dir / "faust" / consumer.group_id),
        processing_guarantee="at_least_once",
        # Acked offsets are committed often, so a kill -9 redelivers little; on stop the
        # runtime drains itself (AgentApp.on_stop) instead of Faust waiting for every stream
        # (a retry stream may be sleeping for a minute).
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move to the others after 10s rather than Faust's 60s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
    )
    app.runtime = runtime
    app.settings = settings

    async def seek(topic: str, partition: int, offset: int) -> int:
        tp = TP(topic, partition)
        earliest = (await app.consumer.earliest_offsets(tp)).get(tp)
        target = max(offset, earliest or 0)
        await app.consumer.seek(tp, target)
        return target

    runtime.seek = seek

    main_topic = app.topic(*consumer.consumes, key_serializer="raw", value_serializer="raw")

    lanes = lanes_for(settings, runtime.adapter)
    app.agent(main_topic, name=f"{agent}.main")(_main_stream(runtime, lanes))

    for retry_topic in consumer.retry_topics:
        topic = app.topic(retry_topic, key_serializer="raw", value_serializer="raw")
        app.agent(topic, name=f"{agent}.{retry_topic}")(_retry_stream(runtime))

    async def relay_outbox() -> None:
        if runtime.draining:
            return
        try:
            await runtime.relay_outbox()
        except Exception:
            # Kafka or PostgreSQL is away: the rows stay and the next tick tries again.
            log.warning("outbox relay failed", exc_info=True)

    app.timer(interval=OUTBOX_RELAY_INTERVAL_S, name=f"{agent}.outbox-relay")(relay_outbox)

    async def refresh_metrics() -> None:
        # Gauges read from elsewhere, on their own timer so that nothing here can delay the
        # saga's own timers.
        try:
            runtime.metrics.lag.update(consumer_lag(app))
            if agent == "provider-response" and not runtime.draining:
                await runtime.metrics.count_deadlines(runtime.pool)
        except Exception:
            # Between assignments, or PostgreSQL away: the next tick tries again.
            log.debug("metrics refresh failed", exc_info=True)

    app.timer(interval=METRICS_INTERVAL_S, name=f"{agent}.metrics")(refresh_metrics)

    if agent == "provider-response":
        from streams.provider_response import sweep_deadlines

        async def deadlines() -> None:
            if runtime.draining:
                return
            try:
                await sweep_deadlines(runtime)
            except Exception:
                # The rows are durable: the next sweep finds them again.
                log.warning("deadline sweep failed", exc_info=True)

        app.timer(interval=DEADLINE_SWEEP_INTERVAL_S, name="provider-response.deadlines")(deadlines)

    if agent == "payment":
        from streams.payment.agent import sweep_abandoned_actions

        action_timeout = timedelta(seconds=settings.payment_action_timeout_seconds)

        async def abandoned_actions() -> None:
            if runtime.draining:
                return
            try:
                await sweep_abandoned_actions(runtime, action_timeout)
            except Exception:
                # The states are durable: the next sweep finds them again.
                log.warning("payment action sweep failed", exc_info=True)

        app.timer(interval=DEADLINE_SWEEP_INTERVAL_S, name="payment.action-timeouts")(
            abandoned_actions
        )
    return app


def lanes_for(settings: Settings, adapter: Adapter) -> int:
    """How many partitions one worker processes at once (``ERYNOA_AGENT_LANES``; 0: automatic).

    One lane when the agent's work is all in PostgreSQL: everything that queued up then goes
    into one batch, which costs less CPU per booking and answers sooner than several lanes
    competing for the same database (``bench/saga_only.py`` measures it). Several when it
    waits on outside services, so that one slow call does not hold every partition.

    A handler holds one pooled connection for its transaction and may briefly take a second
    (the sandbox ledger, a delivery record); with at most ``pool // 2 - 1`` lanes plus the
    retry streams, outer transactions can never hold every connection while waiting for one.
    """
    wanted = settings.agent_lanes or (MAX_LANES if adapter.waits_on_outside else 1)
    return max(1, min(wanted, settings.db_pool_max // 2 - 1))


def _main_stream(runtime: AgentRuntime, lanes: int) -> Callable[[Any], Awaitable[None]]:
    """The consumed topics' messages, handled in ``lanes`` parallel lanes by partition.

    One partition always goes to the same lane and a lane handles its messages one batch after
    another (what queued up while the last batch ran, in arrival order: ``AgentRuntime.process``),
    so each partition is processed — and acknowledged — in order: a booking's events keep
    their order, and an offset is never committed past an unfinished message (Faust's
    bookkeeping of out-of-order acks is not trusted with that). Acks are manual: see the
    module docstring.
    """

    async def main_stream(stream: Any) -> None:
        manual = stream.noack()
        queues: list[asyncio.Queue[tuple[Incoming, Any]]] = [
            asyncio.Queue(maxsize=LANE_BUFFER) for _ in range(lanes)
        ]

        async def lane(queue: asyncio.Queue[tuple[Incoming, Any]]) -> None:
            while True:
                # Whatever queued up while the last batch ran is the next batch: one message
                # when idle (no added latency), up to MAX_BATCH under load (one transaction).
                batch = [await queue.get()]
                while len(batch) < MAX_BATCH and not queue.empty():
                    batch.append(queue.get_nowait())
                if runtime.draining:
                    await runtime.park()
                await runtime.run_tracked(runtime.process([incoming for incoming, _ in batch]))
                for _, event in batch:
                    await manual.ack(event)

        async with asyncio.TaskGroup() as group:
            for queue in queues:
                group.create_task(lane(queue))
            async for event in manual.events():
                if runtime.draining:
                    await runtime.park()
                incoming = _incoming(event)
                which = zlib.crc32(f"{incoming.topic}\x1f{incoming.partition}".encode()) % lanes
                await queues[which].put((incoming, event))

    return main_stream


def _retry_stream(runtime: AgentRuntime) -> Callable[[Any], Awaitable[None]]:
    """A retry tier's messages wait until their ``not-before`` time, then run the same handler.

    Sleeping is fine here: a retry topic holds only retries, in the order they failed, so the
    wait delays nothing that is due sooner.
    """
    from streams.failures import not_before

    async def retry_stream(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            incoming = _incoming(event)
            due = not_before(incoming.headers)
            if runtime.draining or (due is not None and not await runtime.wait_until(due)):
                await runtime.park()
            await runtime.run_tracked(runtime.process([incoming]))
            await manual.ack(event)

    return retry_stream
