"""Fixtures for tests that drive an agent's ``AgentRuntime`` directly with consumed-message records
(no Faust), each test on its own topics and database (``isolated`` and its ``pool``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from erynoa import saga
from erynoa.db import create_pool
from erynoa.kafka import EventPublisher
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog, load_catalog
from streams.runtime import Adapter, AgentRuntime
from tests.integration.agents.records import CODEC, StartRuntime


@pytest.fixture
def catalog(isolated: Settings) -> TopicCatalog:
    return load_catalog(isolated.topics_file, isolated.topics_environment, isolated.topic_prefix)


@pytest.fixture
async def start_runtime(isolated: Settings, catalog: TopicCatalog) -> AsyncIterator[StartRuntime]:
    started: list[AgentRuntime] = []

    async def start(agent: str, adapter: Adapter) -> AgentRuntime:
        async def connect_pool() -> asyncpg.Pool:
            return await create_pool(isolated, min_size=1, max_size=4)

        runtime = AgentRuntime(
            adapter=adapter,
            consumer=catalog.consumer(agent),
            codec=CODEC,
            policy=saga.Policy(),
            connect_pool=connect_pool,
            make_publisher=lambda: EventPublisher.create(
                isolated.kafka_bootstrap, f"test-{agent}", CODEC, catalog
            ),
        )
        await runtime.start()
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        await runtime.stop()
