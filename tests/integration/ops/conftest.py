"""Operators' views over their own namespace (topics and database), so hand-made sagas never
reach the real agents: the read model, a materializer to fold into it, and readers of what
landed on a topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from typer.testing import CliRunner, Result

from cli.ops import saga_app
from erynoa import kafka as k
from erynoa.kafka import EventPublisher
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog, load_catalog
from tests.conftest import own_namespace
from tests.integration.materializing import materializer_running, pool_for, publisher_for


@pytest.fixture(scope="module")
async def settings(settings: Settings) -> AsyncIterator[Settings]:
    async with own_namespace(settings) as isolated:
        yield isolated


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with pool_for(settings) as pool:
        yield pool


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> TopicCatalog:
    return load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)


@pytest.fixture(scope="module")
async def publisher(settings: Settings) -> AsyncIterator[EventPublisher]:
    async with publisher_for(settings, "test-ops") as publisher:
        yield publisher


@pytest.fixture(scope="module")
async def running_materializer(settings: Settings) -> AsyncIterator[None]:
    async with materializer_running(settings):
        yield


async def end_offsets(
    settings: Settings, catalog: TopicCatalog, topic: str
) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await k.start_consumer(consumer)
    try:
        # The catalog's partition count: `erynoa topics apply` made the cluster match it.
        tps = [TopicPartition(topic, p) for p in range(catalog.topics[topic].partitions)]
        assert tps, topic
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def keyed_since(
    settings: Settings, since: dict[TopicPartition, int], key: str
) -> list[ConsumerRecord[bytes, bytes]]:
    """Records keyed ``key`` written after ``since`` (per partition), up to the end now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await k.start_consumer(consumer)
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        ends = await consumer.end_offsets(list(since))
        todo = {tp: ends[tp] for tp in since if ends[tp] > since[tp]}
        if not todo:
            return found
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, since[tp])
        deadline = asyncio.get_running_loop().time() + 20
        while todo and asyncio.get_running_loop().time() < deadline:
            for tp, records in (await consumer.getmany(*todo, timeout_ms=500)).items():
                found += [r for r in records if r.offset < todo[tp] and r.key == key.encode()]
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
        assert not todo, f"could not read to the end of {sorted(map(str, todo))}"
    finally:
        await consumer.stop()
    return found


async def saga_cli(settings: Settings, *args: str) -> Result:
    """Run ``erynoa saga <args>`` against ``settings``' namespace, in a thread (the command
    runs its own event loop). A wide terminal, so tables do not fold words."""
    env = {
        "ERYNOA_TOPIC_PREFIX": settings.topic_prefix,
        "ERYNOA_DATABASE_URL": settings.database_url,
        "COLUMNS": "200",
    }
    return await asyncio.to_thread(lambda: CliRunner().invoke(saga_app, list(args), env=env))
