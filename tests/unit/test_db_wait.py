"""Long-running consumers wait for PostgreSQL at start instead of exiting while it is down."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from erynoa import db
from erynoa.settings import Settings


async def test_waits_while_postgresql_is_unreachable_then_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[int] = []
    slept: list[float] = []
    pool = object()

    async def down_twice(settings: Settings, **overrides: Any) -> Any:
        attempts.append(1)
        if len(attempts) <= 2:
            raise ConnectionRefusedError("127.0.0.1:15432")
        return pool

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(db, "create_pool", down_twice)
    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    assert await db.wait_for_pool(Settings()) is pool
    assert len(attempts) == 3
    assert slept == [0.5, 1.0]


async def test_a_refused_login_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async def wrong_password(settings: Settings, **overrides: Any) -> Any:
        raise asyncpg.InvalidPasswordError("password authentication failed")

    monkeypatch.setattr(db, "create_pool", wrong_password)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await db.wait_for_pool(Settings())
