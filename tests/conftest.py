"""Fixtures every tier shares. Integration tests run against the real local stack that
``make test`` brings up (``erynoa stack up``); nothing here mocks Kafka, Postgres or Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from erynoa.settings import Settings


def unique(prefix: str = "") -> str:
    """An id no other test (or earlier run) uses."""
    return f"{prefix}{uuid.uuid4()}"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    from erynoa.db import create_pool

    pool = await create_pool(settings, min_size=1, max_size=5)
    yield pool
    await pool.close()
