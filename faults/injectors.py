"""One class per fault: how to start it, how long it lasts, how to end it.

``start`` breaks something and returns at once; the matrix keeps the load running for
``hold_s``; ``end`` repairs it and returns once the broken part serves again (bounded), so the
time ``end`` returns is the moment of recovery the row measures from. Slow, blocking steps
(``pg_ctl``, ``erynoa stack up``) run in a thread so the load never stops.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

import asyncpg

from erynoa import saga
from erynoa.settings import Settings
from faults.client import Client
from faults.private import Echo, Parts, PrivateStack, supports_brokers, wait_until
from streams.payment.sandbox import WHOLE_GATEWAY

# How long a killed part may take to say it is ready again.
READY_TIMEOUT_S = 120.0


@dataclass
class Target:
    """What a fault acts on."""

    stack: PrivateStack
    parts: Parts
    pool: asyncpg.Pool  # the system's own database
    client: Client
    echo: Echo


class Fault:
    name: str = ""
    title: str = ""
    hold_s: float = 0.0  # how long the fault lasts when the matrix does not say
    brokers: int = 1  # the Kafka cluster the row needs

    def __init__(self, seconds: float | None = None) -> None:
        if seconds is not None:
            self.hold_s = seconds

    def skip_reason(self, settings: Settings) -> str | None:
        """Why this row cannot run here (None: it can)."""
        if self.brokers > 1 and not supports_brokers():
            return f"skipped: needs --brokers {self.brokers} support in erynoa.stack"
        return None

    async def start(self, target: Target) -> None:
        raise NotImplementedError

    async def end(self, target: Target) -> None:
        raise NotImplementedError


class StackServiceFault(Fault):
    """A fault in one of the stack's services: bringing the stack up again repairs it."""

    async def end(self, target: Target) -> None:
        await asyncio.to_thread(target.stack.up)


class PostgresStopped(StackServiceFault):
    name = "pg"
    title = "PostgreSQL stopped (pg_ctl stop -m immediate)"
    hold_s = 30.0

    async def start(self, target: Target) -> None:
        await asyncio.to_thread(target.stack.stop_postgres_immediate)


class ServiceDown(StackServiceFault):
    """A stack service down, started again later: killed (``kill -9``, a crash with no shutdown
    of any kind) or stopped cleanly (its port refuses connections)."""

    service: ClassVar[str]
    crash: ClassVar[bool] = False

    async def start(self, target: Target) -> None:
        down = target.stack.kill9 if self.crash else target.stack.stop
        await asyncio.to_thread(down, self.service)


class BrokerKilled(ServiceDown):
    name = "kafka-restart"
    title = "Kafka broker kill -9, then restarted (1 broker)"
    service = "kafka"
    crash = True
    hold_s = 5.0


class OneOfThreeBrokers(BrokerKilled):
    """On a three-broker cluster (replication 3, min ISR 2): one broker killed, back later."""

    name = "broker-of-3"
    title = "one of three brokers kill -9, back after 60 s"
    brokers = 3
    service = "kafka-2"
    hold_s = 60.0


class RedisStopped(ServiceDown):
    name = "redis"
    title = "Redis stopped"
    service = "redis"
    hold_s = 30.0


class SmtpDown(ServiceDown):
    name = "smtp"
    title = "SMTP sink down (connections refused)"
    service = "mail"
    hold_s = 90.0


class GatewayOutage(Fault):
    """The sandbox gateway's switch: the ``*`` row of ``sandbox_outages`` takes the whole
    gateway down (every call fails as an unreachable gateway's do, and its probe says so)."""

    name = "gateway"
    title = "payment gateway outage (sandbox switch)"
    hold_s = 90.0

    def __init__(self, seconds: float | None = None, payment_method: str = WHOLE_GATEWAY) -> None:
        super().__init__(seconds)
        self.payment_method = payment_method

    async def start(self, target: Target) -> None:
        await target.pool.execute(
            "INSERT INTO sandbox_outages (payment_method, reason) VALUES ($1, $2) "
            "ON CONFLICT DO NOTHING",
            self.payment_method,
            "fault harness",
        )

    async def end(self, target: Target) -> None:
        await target.pool.execute(
            "DELETE FROM sandbox_outages WHERE payment_method = $1", self.payment_method
        )


class PartKilled(Fault):
    """``kill -9`` of one process of the system; the harness's supervisor starts it again."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = "materializer-kill" if part == "materializer" else f"agent-kill-{part}"
        self.title = f"{part} kill -9 mid-load, restarted"
        self._marks = 0

    async def start(self, target: Target) -> None:
        self._marks = target.parts.ready_marks(self.part)
        target.parts.kill9(self.part)

    async def end(self, target: Target) -> None:
        ok = await asyncio.to_thread(
            wait_until, lambda: target.parts.is_ready(self.part, self._marks), READY_TIMEOUT_S
        )
        if not ok:
            target.echo(f"{self.part} not ready {READY_TIMEOUT_S:.0f} s after its restart")


class ApiKilled(Fault):
    """``kill -9`` of the API while requests are in flight; restarted by the supervisor."""

    name = "api-kill"
    title = "API kill -9 mid-request, restarted"

    async def start(self, target: Target) -> None:
        for _ in range(1000):  # up to ~5 s for a request to be on the wire
            if target.client.in_flight > 0:
                break
            await asyncio.sleep(0.005)
        target.echo(f"api-kill: {target.client.in_flight} request(s) in flight")
        target.parts.kill9("api")

    async def end(self, target: Target) -> None:
        await asyncio.sleep(1)  # the supervisor notices the exit first
        ok = await asyncio.to_thread(
            wait_until, lambda: target.parts.is_ready("api", 0), READY_TIMEOUT_S
        )
        if not ok:
            target.echo(f"the API is not ready {READY_TIMEOUT_S:.0f} s after its restart")


AGENT_PARTS = saga.AGENTS


def full_matrix() -> list[Fault]:
    return [
        PostgresStopped(30),
        BrokerKilled(),
        OneOfThreeBrokers(),
        RedisStopped(30),
        *(PartKilled(agent) for agent in AGENT_PARTS),
        PartKilled("materializer"),
        SmtpDown(90),
        GatewayOutage(90),
        ApiKilled(),
    ]


def quick_matrix() -> list[Fault]:
    return [PostgresStopped(15), BrokerKilled(), PartKilled("payment")]


def select(faults: list[Fault], only: list[str]) -> list[Fault]:
    """The rows named (exactly, or by prefix: ``agent-kill`` selects every agent's row)."""
    if not only:
        return faults
    return [f for f in faults if any(f.name == o or f.name.startswith(f"{o}-") for o in only)]
