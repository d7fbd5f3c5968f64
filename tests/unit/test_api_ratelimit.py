"""The sliding-window rate limiter's arithmetic, against an in-memory stand-in for Redis."""

from __future__ import annotations

from typing import cast

import pytest
from redis.asyncio import Redis

from api.ratelimit import RateLimiter, client_bucket
from tests.unit.fake_redis import FakeRedis


def limiter(redis: FakeRedis) -> RateLimiter:
    return RateLimiter(cast(Redis, redis))


WINDOW_START = 1_800_000_000.0  # a multiple of 60


async def test_requests_up_to_the_limit_pass_then_429_until_the_window_fades() -> None:
    redis = FakeRedis()
    rl = limiter(redis)
    verdicts = [await rl.hit("user", "alice", 3, now=WINDOW_START + 10) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert redis.round_trips == 4  # one pipelined round trip per request
    # Over the limit within the window: wait for this window to end and its weight to fade.
    assert 50 <= verdicts[-1].retry_after_seconds <= 60 + 15


async def test_the_previous_window_counts_by_its_overlap() -> None:
    redis = FakeRedis()
    rl = limiter(redis)
    for _ in range(10):
        await rl.hit("ip", "1.2.3.4", 10, now=WINDOW_START + 59)
    # Just after the minute turns, the previous 10 still weigh ~fully: the next is refused.
    early = await rl.hit("ip", "1.2.3.4", 10, now=WINDOW_START + 61)
    assert not early.allowed
    assert 1 <= early.retry_after_seconds <= 60
    # Most of the way through the next minute, they hardly count.
    late = await rl.hit("ip", "1.2.3.4", 10, now=WINDOW_START + 115)
    assert late.allowed


async def test_identities_and_scopes_are_counted_apart() -> None:
    rl = limiter(FakeRedis())
    assert (await rl.hit("user", "a", 1, now=WINDOW_START)).allowed
    assert (await rl.hit("user", "b", 1, now=WINDOW_START)).allowed
    assert (await rl.hit("ip", "a", 1, now=WINDOW_START)).allowed
    assert not (await rl.hit("user", "a", 1, now=WINDOW_START)).allowed


async def test_redis_down_means_not_limited() -> None:
    verdict = await limiter(FakeRedis(down=True)).hit("user", "a", 1, now=WINDOW_START)
    assert verdict.allowed


@pytest.mark.parametrize(
    ("host", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:7:8::1", "2001:db8:7:8::/64"),
        ("2001:db8:7:8:ffff:ffff:ffff:ffff", "2001:db8:7:8::/64"),
        ("2001:db8:7:9::1", "2001:db8:7:9::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("testclient", "testclient"),
        ("x" * 500, "x" * 64),
    ],
)
def test_clients_are_counted_per_ipv4_address_and_per_ipv6_64(host: str, bucket: str) -> None:
    assert client_bucket(host) == bucket
