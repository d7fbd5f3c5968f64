"""The real API, served by uvicorn in a background thread on a free port, against the real
local stack (Kafka, PostgreSQL, Redis from ``erynoa stack up``); tests talk to it over HTTP.

Each test makes its own users, services and bookings (uuid ids), so tests share one server and
one database without cleaning up. Tokens come from the development issuer (``issue_dev_token``),
whose key lives in a temporary file for the session.

A module that breaks the API's link to Kafka uses ``private`` instead: a server of its own, on
its own topics and database, whose publisher the test switches (``KafkaSwitch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg
import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

from api.app import create_app
from api.auth import issue_dev_token
from api.runtime import PublisherFactory
from api.server import uvicorn_config
from erynoa.codec import default_codec
from erynoa.db import create_pool
from erynoa.events import BookingEvent, CatalogEvent
from erynoa.kafka import EventPublisher, Published, start_consumer
from erynoa.settings import Settings
from erynoa.topics import load_catalog
from tests.builders import service_body
from tests.conftest import own_namespace, unique

E = TypeVar("E", bound=BookingEvent | CatalogEvent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def api_settings(key_file: Path, **overrides: Any) -> Settings:
    """Settings for one test server: its own port and issuer URL; the stack from the env."""
    port = overrides.pop("api_port", None) or free_port()
    values: dict[str, Any] = {
        "environment": "test",
        "api_host": "127.0.0.1",
        "api_port": port,
        "public_base_url": f"http://127.0.0.1:{port}",
        "oidc_issuer": f"http://127.0.0.1:{port}/api/v1/auth/dev",
        "dev_issuer_enabled": True,
        "dev_signing_key_file": key_file,
        # Generous: every test shares 127.0.0.1; the rate-limit tests use their own server.
        "rate_limit_per_minute_ip": 1_000_000,
        "rate_limit_per_minute_user": 100_000,
        "stripe_webhook_secret": "whsec_test_" + unique().replace("-", ""),
    }
    values.update(overrides)
    return Settings(**values)


class ServerThread:
    """uvicorn in a thread with its own event loop, so the tests' loop stays independent."""

    def __init__(
        self, settings: Settings, publisher_factory: PublisherFactory | None = None
    ) -> None:
        self.settings = settings
        app = (
            create_app(settings)
            if publisher_factory is None
            else create_app(settings, publisher_factory=publisher_factory)
        )
        config = uvicorn_config(app, settings, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api-under-test", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the API under test failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("the API under test did not start within 60s")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def running(
    settings: Settings, publisher_factory: PublisherFactory | None = None
) -> Iterator[ServerThread]:
    server = ServerThread(settings, publisher_factory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class LiveApi:
    settings: Settings
    base_url: str

    def token(self, sub: str, *roles: str, ttl: int = 3600, email: str | None = None) -> str:
        return issue_dev_token(self.settings, sub, roles or ("customer",), ttl, email)

    def auth(self, sub: str, *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, *roles)}"}

    def url(self, path: str) -> str:
        return f"{self.base_url}/api/v1{path}"


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dev-issuer") / "dev-signing-key.pem"


@pytest.fixture(scope="session")
def live_api(key_file: Path) -> Iterator[LiveApi]:
    settings = api_settings(key_file)
    with running(settings) as server:
        yield LiveApi(settings, server.base_url)


@pytest.fixture
async def http(live_api: LiveApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{live_api.base_url}/api/v1", timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
async def pg(live_api: LiveApi) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(live_api.settings, min_size=1, max_size=4)
    yield pool
    await pool.close()


@dataclass
class Actors:
    """A customer, a provider with one active service, and an admin — all fresh."""

    customer: str
    provider: str
    admin: str
    service_id: str
    customer_auth: dict[str, str]
    provider_auth: dict[str, str]
    admin_auth: dict[str, str]


async def create_service(
    http: httpx.AsyncClient, provider_auth: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    response = await http.post("/services", json=service_body(**overrides), headers=provider_auth)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def make_actors(live: LiveApi, http: httpx.AsyncClient) -> Actors:
    customer, provider, admin = unique("cust-"), unique("prov-"), unique("admin-")
    provider_auth = live.auth(provider, "provider")
    service = await create_service(http, provider_auth)
    return Actors(
        customer=customer,
        provider=provider,
        admin=admin,
        service_id=service["id"],
        customer_auth=live.auth(customer, "customer"),
        provider_auth=provider_auth,
        admin_auth=live.auth(admin, "admin"),
    )


@pytest.fixture
async def actors(live_api: LiveApi, http: httpx.AsyncClient) -> Actors:
    return await make_actors(live_api, http)


def future_slot(days: int = 7) -> str:
    slot = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=days)
    return slot.isoformat()


def booking_body(service: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service_id": service,
        "slot_start": future_slot(),
        "payment_method": "pm_card_visa",
    }
    body.update(overrides)
    return body


async def book(
    http: httpx.AsyncClient, actors: Actors, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    """The customer's create request for the actors' service (``body`` overrides fields)."""
    return await http.post(
        "/bookings",
        json=booking_body(actors.service_id, **body),
        headers={**actors.customer_auth, **(headers or {})},
    )


async def insert_booking(pg: asyncpg.Pool, actors: Actors, status: str, **columns: Any) -> str:
    """A read-model row in any state (as the materializer would have left it)."""
    booking_id = unique()
    now = datetime.now(UTC)
    slot = now + timedelta(days=3)
    row: dict[str, Any] = {
        "id": booking_id,
        "customer_id": actors.customer,
        "provider_id": actors.provider,
        "service_id": actors.service_id,
        "slot_start": slot,
        "slot_end": slot + timedelta(minutes=45),
        "amount_minor": 4500,
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "status": status,
        "hold": "held",
        "payment": "authorized",
        "payment_id": f"pi_test_{booking_id[:8]}",
        "correlation_id": unique("corr-"),
        "events_applied": 4,
        "requested_at": now - timedelta(minutes=5),
        "updated_at": now,
    }
    row.update(columns)
    names = ", ".join(row)
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    await pg.execute(f"INSERT INTO bookings ({names}) VALUES ({params})", *row.values())
    return booking_id


@dataclass(frozen=True)
class Seen:
    event: BookingEvent | CatalogEvent
    headers: dict[str, str]


def of_booking(seen: list[Seen], booking_id: str, event_type: type) -> list[Any]:
    """The probe's records of ``event_type`` for one booking (the rest of the topic is others')."""
    return [s for s in seen if isinstance(s.event, event_type) and s.event.key == booking_id]


def events_of(seen: list[Seen], event_type: type[E], **fields: object) -> list[E]:
    """The events of ``event_type`` whose ``fields`` have the given values, in topic order."""
    return [
        s.event
        for s in seen
        if isinstance(s.event, event_type)
        and all(getattr(s.event, name) == value for name, value in fields.items())
    ]


class TopicProbe:
    """Reads what was appended to a topic after the probe was started (no consumer group)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.codec = default_codec()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
        )
        self.start_offsets: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        await start_consumer(self.consumer)
        catalog = load_catalog(
            self.settings.topics_file, self.settings.topics_environment, self.settings.topic_prefix
        )
        partitions = catalog.topics[self.topic].partitions
        tps = [TopicPartition(self.topic, p) for p in range(partitions)]
        self.consumer.assign(tps)
        self.start_offsets = await self.consumer.end_offsets(tps)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def events(self, settle_seconds: float = 1.0) -> list[Seen]:
        """Everything appended since ``start`` (up to the end offsets now, after a pause)."""
        await asyncio.sleep(settle_seconds)
        tps = list(self.start_offsets)
        ends = await self.consumer.end_offsets(tps)
        found: list[Seen] = []
        for tp in tps:
            if ends[tp] <= self.start_offsets[tp]:
                continue
            self.consumer.seek(tp, self.start_offsets[tp])
            position = self.start_offsets[tp]
            while position < ends[tp]:
                batch = await self.consumer.getmany(tp, timeout_ms=2000)
                for record in batch.get(tp, []):
                    if record.offset < ends[tp]:
                        headers = {k: v.decode() for k, v in record.headers or ()}
                        found.append(Seen(self.codec.decode(record.value), headers))
                    position = record.offset + 1
                if not batch:
                    break
        return found


# What ``probe_topic`` gives a test: start a probe on a topic (named without the prefix).
Probe = Callable[[str], Awaitable[TopicProbe]]


@pytest.fixture
async def probe_topic(live_api: LiveApi) -> AsyncIterator[Probe]:
    probes: list[TopicProbe] = []

    async def start(topic: str) -> TopicProbe:
        probe = TopicProbe(live_api.settings, live_api.settings.topic_prefix + topic)
        probes.append(probe)
        await probe.start()
        return probe

    yield start
    for probe in probes:
        await probe.stop()


Mode = Literal["ok", "refuse", "lose_ack"]


@dataclass
class KafkaSwitch:
    """How the API's publisher behaves: ``ok``; ``refuse`` (the broker unreachable, nothing
    sent); ``lose_ack`` (the records reach the log, then the wait for the acknowledgement
    times out, so the sender cannot know)."""

    mode: Mode = "ok"
    attempts: list[Mode] = field(default_factory=list)
    refused_bookings: set[str] = field(default_factory=set)
    """Bookings whose records the broker refuses every time (as a record too large)."""

    def factory(self) -> type[EventPublisher]:
        switch = self

        class SwitchedPublisher(EventPublisher):
            async def publish_encoded(
                self,
                items: Sequence[
                    tuple[BookingEvent | CatalogEvent, bytes | None, Mapping[str, str] | None]
                ],
            ) -> list[Published]:
                mode = switch.mode
                switch.attempts.append(mode)
                if mode == "refuse":
                    raise KafkaConnectionError("switched off by the test")
                if any(
                    getattr(event, "booking_id", None) in switch.refused_bookings
                    for event, _, _ in items
                ):
                    raise MessageSizeTooLargeError("refused by the test")
                published = await super().publish_encoded(items)
                if mode == "lose_ack":
                    raise KafkaTimeoutError("acknowledgement lost (switched by the test)")
                return published

        return SwitchedPublisher


# Bodies for ``PrivateApi.at_commit``: fail the COMMIT, or kill the backend committing.
REFUSE_COMMIT = "RAISE EXCEPTION 'commit refused by the test';"
DIE_AT_COMMIT = "PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL;"


@dataclass
class PrivateApi:
    """A module's own API server and what its tests drive and inspect it with."""

    live: LiveApi
    http: httpx.AsyncClient
    pool: asyncpg.Pool
    kafka: KafkaSwitch
    probes: list[TopicProbe] = field(default_factory=list)

    async def actors(self) -> Actors:
        return await make_actors(self.live, self.http)

    async def book(self, actors: Actors, headers: dict[str, str] | None = None) -> httpx.Response:
        return await book(self.http, actors, headers)

    async def booked(self, actors: Actors) -> str:
        """A booking the API acknowledged (202); its id."""
        response = await self.book(actors)
        assert response.status_code == 202, response.text
        booking_id: str = response.json()["workflow_id"]
        return booking_id

    async def probe(self, topic: str) -> TopicProbe:
        """A probe on one of this API's topics, stopped after the test."""
        probe = TopicProbe(self.live.settings, self.live.settings.topic_prefix + topic)
        self.probes.append(probe)
        await probe.start()
        return probe

    async def at_commit(self, trigger: str, table: str, when: str, plpgsql: str) -> None:
        """Every transaction that inserts a row of ``table`` matching ``when`` runs ``plpgsql``
        at COMMIT (a deferred constraint trigger): a commit made to fail for real."""
        await self.pool.execute(
            f"""CREATE OR REPLACE FUNCTION "{trigger}"() RETURNS trigger
                LANGUAGE plpgsql AS $$ BEGIN {plpgsql} END $$"""
        )
        await self.pool.execute(
            f"""CREATE CONSTRAINT TRIGGER "{trigger}" AFTER INSERT ON {table}
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                WHEN ({when}) EXECUTE FUNCTION "{trigger}"()"""
        )

    async def outbox_drained(self, booking_id: str) -> None:
        """Wait until nothing of the booking waits in the outbox (published and deleted)."""
        for _ in range(600):
            left = await self.pool.fetchval(
                "SELECT count(*) FROM api_outbox WHERE booking_id = $1", booking_id
            )
            if left == 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"booking {booking_id}: outbox rows still unpublished after 60 s")


@contextlib.asynccontextmanager
async def private_api(settings: Settings, key_file: Path) -> AsyncIterator[PrivateApi]:
    """An API of its own (namespace, port) whose Kafka link a test can break."""
    switch = KafkaSwitch()
    async with own_namespace(settings) as namespace:
        api = api_settings(
            key_file, topic_prefix=namespace.topic_prefix, database_url=namespace.database_url
        )
        with running(api, switch.factory()) as server:
            pool = await create_pool(api, min_size=1, max_size=2)
            try:
                async with httpx.AsyncClient(
                    base_url=f"{server.base_url}/api/v1", timeout=30
                ) as http:
                    yield PrivateApi(LiveApi(api, server.base_url), http, pool, switch)
            finally:
                await pool.close()


@pytest.fixture(scope="module")
async def private_server(settings: Settings, key_file: Path) -> AsyncIterator[PrivateApi]:
    async with private_api(settings, key_file) as api:
        yield api


@pytest.fixture
async def private(private_server: PrivateApi) -> AsyncIterator[PrivateApi]:
    """The module's private API; after each test its Kafka works again and its probes stop."""
    yield private_server
    private_server.kafka.mode = "ok"
    private_server.kafka.refused_bookings.clear()
    for probe in private_server.probes:
        await probe.stop()
    private_server.probes.clear()
