"""Fixtures every tier shares. Integration tests run against the real local stack that
``make test`` brings up (``erynoa stack up``); nothing here mocks Kafka, Postgres or Redis."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TypeVar

import asyncpg
import pytest

from erynoa.settings import Settings

T = TypeVar("T")

# The tests are the test environment, and say so: it is what lets the servers and systems they
# start run the development issuer (on loopback). Subprocesses inherit it. A value set by the
# caller wins.
os.environ.setdefault("ERYNOA_ENVIRONMENT", "test")


def unique(prefix: str = "") -> str:
    """An id no other test (or earlier run) uses."""
    return f"{prefix}{uuid.uuid4()}"


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 90.0) -> T:
    """Ask ``check`` until its answer is truthy, and return that answer. The limit only ends
    a test that would otherwise wait forever; it is generous (real worker processes retry
    with backoff)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {within}s: {check}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    from erynoa.db import create_pool

    pool = await create_pool(settings, min_size=1, max_size=5)
    yield pool
    await pool.close()


@asynccontextmanager
async def own_namespace(settings: Settings) -> AsyncIterator[Settings]:
    """Settings with their own topics (a fresh prefix on every topic and consumer group) and
    their own migrated database, created on the real services for the duration and removed
    after: a test sees only its own messages and rows, and nothing else sees its messages."""
    from erynoa.db import create_migrated_database, drop_database
    from erynoa.topic_admin import admin_client, apply
    from erynoa.topics import load_catalog

    name = f"t{uuid.uuid4().hex[:10]}"
    catalog = load_catalog(settings.topics_file, settings.topics_environment, f"{name}-")
    admin = admin_client(settings.kafka_bootstrap)
    apply(admin, catalog)
    try:
        url = await create_migrated_database(settings.database_url, name)
        yield settings.model_copy(update={"topic_prefix": f"{name}-", "database_url": url})
    finally:
        await drop_database(settings.database_url, name)
        for future in admin.delete_topics(list(catalog.topics), request_timeout=30).values():
            with suppress(Exception):  # best effort: a leftover test topic harms nothing
                future.result(timeout=30)


@pytest.fixture
async def isolated(settings: Settings) -> AsyncIterator[Settings]:
    """The test's own topics and database (``own_namespace``)."""
    async with own_namespace(settings) as own:
        yield own


@pytest.fixture
async def pool(isolated: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's own database (``isolated``)."""
    from erynoa.db import create_pool

    pool = await create_pool(isolated, min_size=1, max_size=4)
    yield pool
    await pool.close()
