"""An in-memory stand-in for the few Redis commands the rate limiter and admission use: a
pipeline of ``incr``/``expire``/``get``/``exists`` run in one round trip, and ``decr``."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.ops: list[tuple[str, str]] = []

    def incr(self, key: str) -> None:
        self.ops.append(("incr", key))

    def expire(self, key: str, _seconds: int) -> None:
        self.ops.append(("expire", key))

    def get(self, key: str) -> None:
        self.ops.append(("get", key))

    def exists(self, key: str) -> None:
        self.ops.append(("exists", key))

    async def execute(self) -> list[Any]:
        self.redis.round_trips += 1
        if self.redis.down:
            raise RedisConnectionError("redis is down")
        store = self.redis.store
        results: list[Any] = []
        for op, key in self.ops:
            if op == "incr":
                store[key] = store.get(key, 0) + 1
                results.append(store[key])
            elif op == "expire":
                results.append(True)
            elif op == "exists":
                results.append(1 if key in store else 0)
            else:
                value = store.get(key)
                results.append(None if value is None else str(value).encode())
        return results


class FakeRedis:
    """``down``: every command fails as if the server were unreachable."""

    def __init__(self, down: bool = False) -> None:
        self.store: dict[str, int] = {}
        self.down = down
        self.round_trips = 0

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    async def decr(self, key: str) -> int:
        self.round_trips += 1
        if self.down:
            raise RedisConnectionError("redis is down")
        self.store[key] = self.store.get(key, 0) - 1
        return self.store[key]
