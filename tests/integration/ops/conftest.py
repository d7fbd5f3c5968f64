"""Operators' views over their own namespace (topics and database), so hand-made sagas never
reach the real agents: the read model, a materializer to fold into it, and readers of what
landed on a topic."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from typer.testing import CliRunner, Result

from cli.ops import saga_app
from erynoa import kafka as k
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog, load_catalog
from tests.integration import materializing

# The module's own read model, as the read model's tests have it. Bound by name (pytest finds
# fixtures by name) rather than imported, because the helpers below take a ``settings`` too.
settings = materializing.settings
db = materializing.db
publisher = materializing.publisher
running_materializer = materializing.running_materializer


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> TopicCatalog:
    return load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)


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
