"""Fixtures for the saga against the real stack: topics, servers, and the four agent workers.

The session gets its own topic prefix (``ERYNOA_TOPIC_PREFIX``), so its topics and consumer
groups are fresh and nothing else on the cluster sees its messages, and its own migrated
database; both are deleted at the end.
The workers run as subprocesses exactly as deployed (``python -m erynoa worker <agent>``), with
a real SMTP server and a webhook receiver of the test's own; ``agents`` can stop, ``kill -9``
and restart each of them (logs under the session's tmp dir).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from erynoa.codec import default_codec
from erynoa.db import create_migrated_database, create_pool, drop_database
from erynoa.kafka import EventPublisher
from erynoa.settings import Settings
from erynoa.supervisor import System
from erynoa.topics import TopicCatalog, load_catalog
from streams.app import AGENTS
from tests.integration.materializing import publisher_for
from tests.integration.saga import harness
from tests.integration.saga.harness import EventLog, Mailbox, Service, User, WebhookInbox


def _reachable(settings: Settings) -> str | None:
    import socket
    from urllib.parse import urlsplit

    db = urlsplit(settings.database_url)
    checks = [tuple(settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)), (db.hostname, db.port)]
    for host, port in checks:
        try:
            socket.create_connection((str(host), int(str(port))), timeout=2).close()
        except OSError:
            return f"{host}:{port}"
    return None


@pytest.fixture(scope="session")
async def saga_settings(settings: Settings, mailbox: Mailbox) -> AsyncIterator[Settings]:
    down = _reachable(settings)
    if down is not None:
        pytest.skip(f"the local stack is not running ({down} unreachable): run `make stack`")
    name = f"it{uuid.uuid4().hex[:8]}"
    # Its own database too: agents of another copy of the system on the same server (a
    # benchmark, a concurrent session) would otherwise time out this session's bookings.
    url = await create_migrated_database(settings.database_url, name)
    try:
        yield settings.model_copy(
            update={
                "topic_prefix": f"{name}-",
                "database_url": url,
                "smtp_host": "127.0.0.1",
                "smtp_port": mailbox.port,
            }
        )
    finally:
        await drop_database(settings.database_url, name)


@pytest.fixture(scope="session")
async def db(saga_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session's own database (the one its workers, API and materializer use)."""
    pool = await create_pool(saga_settings, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def saga_env(saga_settings: Settings) -> dict[str, str]:
    """The environment the workers (and API, materializer) of this session run with."""
    return {
        "ERYNOA_TOPIC_PREFIX": saga_settings.topic_prefix,
        "ERYNOA_SMTP_HOST": saga_settings.smtp_host,
        "ERYNOA_SMTP_PORT": str(saga_settings.smtp_port),
        "ERYNOA_PAYMENT_GATEWAY": "sandbox",
        # Short enough for a test to watch a customer never finish 3-D Secure.
        "ERYNOA_PAYMENT_ACTION_TIMEOUT_SECONDS": "8",
        "ERYNOA_KAFKA_BOOTSTRAP": saga_settings.kafka_bootstrap,
        "ERYNOA_DATABASE_URL": saga_settings.database_url,
        "ERYNOA_WEBHOOK_SIGNING_SECRET": saga_settings.webhook_signing_secret,
        # The test's webhook receiver is on loopback, which the outbound guard refuses otherwise.
        "ERYNOA_OUTBOUND_ALLOW": "127.0.0.1",
    }


@pytest.fixture(scope="session")
def saga_catalog(saga_settings: Settings) -> Iterator[TopicCatalog]:
    from erynoa.topic_admin import admin_client, apply

    catalog = load_catalog(
        saga_settings.topics_file, saga_settings.topics_environment, saga_settings.topic_prefix
    )
    admin = admin_client(saga_settings.kafka_bootstrap)
    apply(admin, catalog)
    yield catalog
    futures = admin.delete_topics(list(catalog.topics), operation_timeout=30)
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result()


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    with Mailbox() as box:
        yield box


@pytest.fixture(scope="session")
def webhooks() -> Iterator[WebhookInbox]:
    with WebhookInbox() as inbox:
        yield inbox


class Agents:
    """The four workers as subprocesses of this test session."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        parts: dict[str, list[str]] = {
            a: [sys.executable, "-m", "erynoa", "worker", a] for a in AGENTS
        }
        self.system = System(parts, env={**os.environ, **env}, log_dir=log_dir)
        self.log_dir = log_dir
        self.starts: dict[str, int] = {}

    def start(self, name: str | None = None) -> None:
        self.system.start(name)

    def stop(self, name: str | None = None) -> None:
        self.system.stop(name, timeout=40)

    def kill(self, name: str) -> None:
        self.system.kill(name)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, name: str | None = None, timeout: float = 60) -> None:
        names = [name] if name else list(AGENTS)
        deadline = time.monotonic() + timeout
        for agent in names:
            marker = f'"msg": "agent {agent} ready"'
            while self.log(agent).count(marker) < self.starts.get(agent, 1):
                exited = dict(self.system.exited())
                if agent in exited:
                    raise AssertionError(
                        f"worker {agent} exited {exited[agent]}:\n{self.log(agent)[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker {agent} not ready:\n{self.log(agent)[-3000:]}")
                time.sleep(0.2)

    def restart(self, name: str) -> None:
        self.starts[name] = self.starts.get(name, 1) + 1
        self.start(name)
        self.wait_ready(name)


@pytest.fixture(scope="session")
def agents(
    saga_env: dict[str, str], saga_catalog: TopicCatalog, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agents]:
    workers = Agents(saga_env, tmp_path_factory.mktemp("agents"))
    workers.start()
    workers.wait_ready()
    yield workers
    workers.stop()


@pytest.fixture(scope="session")
async def publisher(
    saga_settings: Settings, saga_catalog: TopicCatalog
) -> AsyncIterator[EventPublisher]:
    async with publisher_for(saga_settings, "test-saga") as publisher:
        yield publisher


@pytest.fixture(scope="session")
async def event_log(saga_settings: Settings, saga_catalog: TopicCatalog) -> AsyncIterator[EventLog]:
    log = EventLog(saga_settings.kafka_bootstrap, saga_catalog, default_codec())
    await log.start()
    yield log
    await log.stop()


@dataclass(frozen=True)
class LiveSaga:
    """The session's running saga, as a test drives it: the agents, the database they use, a
    publisher for what the API would send, the log of every booking event and the mail sink."""

    agents: Agents
    db: asyncpg.Pool
    publisher: EventPublisher
    event_log: EventLog
    mailbox: Mailbox
    settings: Settings
    catalog: TopicCatalog

    # What the API would publish, and the invariants over what the log saw: the harness's steps
    # with this session's database, publisher and event log.

    async def book(self, **options: Any) -> tuple[Service, str]:
        """A new customer's request for a new service (``options`` as ``a_booking`` takes them);
        the service and the booking id."""
        return await harness.a_booking(self.db, self.publisher, **options)

    async def request(self, service: Service, customer: User, **options: Any) -> str:
        """``customer`` requests ``service`` (``options`` as ``request_booking`` takes them); the
        booking id."""
        return await harness.request_booking(self.publisher, service, customer, **options)

    async def answer(self, booking_id: str, decision: str, reason: str | None = None) -> None:
        await harness.answer(self.publisher, self.event_log, booking_id, decision, reason)

    async def cancel(self, booking_id: str) -> None:
        await harness.cancel(self.publisher, self.event_log, booking_id)

    async def stripe_webhook(self, booking_id: str, stripe_event_type: str) -> None:
        await harness.stripe_webhook(self.publisher, self.event_log, booking_id, stripe_event_type)

    async def assert_invariants(self, booking_ids: Sequence[str]) -> None:
        """The invariants hold over the bookings' rows and every event the log saw of them."""
        await harness.assert_invariants(self.db, booking_ids, self.event_log.events)


@pytest.fixture(scope="session")
def live(
    agents: Agents,
    db: asyncpg.Pool,
    publisher: EventPublisher,
    event_log: EventLog,
    mailbox: Mailbox,
    saga_settings: Settings,
    saga_catalog: TopicCatalog,
) -> LiveSaga:
    return LiveSaga(agents, db, publisher, event_log, mailbox, saga_settings, saga_catalog)


class Api:
    """The REST API and the materializer, as subprocesses of this session (same topics)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        from tests.integration.saga.harness import free_port

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            **env,
            "ERYNOA_API_PORT": str(self.port),
            "ERYNOA_PUBLIC_BASE_URL": self.base_url,
        }
        parts = {
            "api": [sys.executable, "-m", "erynoa", "api"],
            "materializer": [sys.executable, "-m", "erynoa", "materializer", "run"],
        }
        self.system = System(parts, env=env, log_dir=log_dir)
        self.log_dir = log_dir

    def start(self, timeout: float = 60) -> None:
        import urllib.request

        self.system.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/v1/health/live", timeout=1):
                    return
            except OSError:
                exited = self.system.exited()
                if exited or time.monotonic() > deadline:
                    log = (self.log_dir / "api.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"API did not come up ({exited}):\n{log}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        self.system.stop(timeout=30)


@pytest.fixture(scope="session")
def api(
    agents: Agents,
    saga_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    server = Api(saga_env, tmp_path_factory.mktemp("api"))
    server.start()
    yield server
    server.stop()
