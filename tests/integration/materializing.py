"""Running pieces for tests of the read model: a materializer, a publisher, a raw producer (for
bytes no publisher would write) and a pool over a namespace's settings, each a context manager
that stops what it started; and the fixtures of a test module whose read model is its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from consumers import materializer
from erynoa import kafka
from erynoa.codec import default_codec
from erynoa.db import create_pool
from erynoa.kafka import EventPublisher
from erynoa.settings import Settings
from erynoa.topics import load_catalog
from tests.conftest import own_namespace


@contextlib.asynccontextmanager
async def materializer_running(settings: Settings) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    task = asyncio.create_task(materializer.run(settings, stopping))
    try:
        yield
    finally:
        stopping.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def publisher_for(settings: Settings, client_id: str) -> AsyncIterator[EventPublisher]:
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    publisher = EventPublisher.create(settings.kafka_bootstrap, client_id, default_codec(), catalog)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()


@contextlib.asynccontextmanager
async def pool_for(settings: Settings, max_size: int = 5) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings, min_size=1, max_size=max_size)
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def raw_producer(settings: Settings, client_id: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(**kafka.producer_config(settings.kafka_bootstrap, client_id))
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


# The fixtures of a module that folds hand-made sagas into a read model of its own: its conftest
# takes them (pytest finds fixtures by name). The namespace lasts the module, so its sagas
# never reach the real agents and the whole read model is the module's; the materializer runs
# for each test that asks for it, so a test may also start and stop one of its own.


@pytest.fixture(scope="module")
async def settings(settings: Settings) -> AsyncIterator[Settings]:
    async with own_namespace(settings) as isolated:
        yield isolated


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with pool_for(settings) as pool:
        yield pool


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[EventPublisher]:
    async with publisher_for(settings, "test-read-model") as publisher:
        yield publisher


@pytest.fixture
async def running_materializer(settings: Settings) -> AsyncIterator[None]:
    async with materializer_running(settings):
        yield
