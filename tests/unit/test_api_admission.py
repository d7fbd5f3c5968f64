"""One Redis round trip admits an authenticated request: revocation, the user's and the client
address's limits; against an in-memory stand-in for Redis. Also the per-process caches that
spare ``POST /bookings`` its other round trips (service terms, seen users)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from api.admission import Admission, Limit, admit
from api.auth import Principal, RevocationList, RevocationUnavailable
from api.ratelimit import RateLimiter
from api.runtime import SeenUsers, ServiceTerms, ServiceTermsCache
from tests.unit.fake_redis import FakeRedis

WINDOW_START = 1_800_000_000.0  # a multiple of 60


def principal(sub: str = "alice", token_id: str = "jti-1") -> Principal:
    return Principal(
        sub=sub,
        roles=frozenset({"customer"}),
        email=None,
        name=None,
        token_id=token_id,
        issuer="http://issuer.test",
        issued_at=None,
        expires_at=datetime.now(UTC) + timedelta(minutes=10),
        claims={},
    )


async def admit_once(
    redis: FakeRedis, who: Principal, *, user_limit: int = 10, ip_limit: int | None = None
) -> Admission:
    return await admit(
        cast(Redis, redis),
        RateLimiter(cast(Redis, redis)),
        RevocationList(cast(Redis, redis)),
        who,
        user=Limit("user", who.sub, user_limit),
        ip=Limit("ip", "10.0.0.1", ip_limit) if ip_limit is not None else None,
        now=WINDOW_START + 5,
    )


def revoke(redis: FakeRedis, token_id: str) -> None:
    redis.store["erynoa:revoked:" + token_id] = 1


async def test_revocation_and_both_limits_take_one_round_trip() -> None:
    redis = FakeRedis()
    admission = await admit_once(redis, principal(), ip_limit=10)
    assert redis.round_trips == 1
    assert admission.ip is not None
    assert admission.ip.allowed
    assert admission.user.allowed
    assert not admission.revoked


async def test_the_user_limit_still_refuses_past_its_count() -> None:
    redis = FakeRedis()
    verdicts = [(await admit_once(redis, principal(), user_limit=3)).user for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[-1].retry_after_seconds >= 1


async def test_the_address_limit_still_refuses_past_its_count() -> None:
    redis = FakeRedis()
    users = [principal(sub=f"user-{i}") for i in range(3)]
    admissions = [await admit_once(redis, who, ip_limit=2) for who in users]
    assert [a.ip.allowed for a in admissions] == [True, True, False]
    assert all(a.user.allowed for a in admissions)  # each user made one request


async def test_a_revoked_token_is_reported_and_does_not_use_up_its_owners_limit() -> None:
    redis = FakeRedis()
    revoke(redis, "stolen")
    for _ in range(5):
        admission = await admit_once(redis, principal(token_id="stolen"), user_limit=2)
        assert admission.revoked
    # The owner's own (unrevoked) token still has its whole limit.
    fresh = [(await admit_once(redis, principal(token_id="fresh"), user_limit=2)).user]
    fresh.append((await admit_once(redis, principal(token_id="fresh"), user_limit=2)).user)
    assert [v.allowed for v in fresh] == [True, True]


async def test_a_revoked_tokens_requests_still_count_against_the_address() -> None:
    redis = FakeRedis()
    revoke(redis, "stolen")
    admissions = [
        await admit_once(redis, principal(token_id="stolen"), ip_limit=2) for _ in range(3)
    ]
    assert all(a.revoked for a in admissions)
    assert [a.ip.allowed for a in admissions] == [True, True, False]


async def test_redis_down_means_the_token_cannot_be_trusted() -> None:
    redis = FakeRedis()
    redis.down = True
    with pytest.raises(RevocationUnavailable):
        await admit_once(redis, principal(), ip_limit=10)


# --- the service terms cache ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def terms(active: bool = True, price: int = 4500) -> ServiceTerms:
    return ServiceTerms(
        provider_id="bob",
        price_amount_minor=price,
        price_currency="EUR",
        duration_minutes=45,
        response_deadline_seconds=60,
        active=active,
    )


class Table:
    """The ``services`` table as the loader sees it, counting reads."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, ServiceTerms] = {}
        self.reads = 0

    async def load(self, service_id: uuid.UUID) -> ServiceTerms | None:
        self.reads += 1
        return self.rows.get(service_id)


async def test_a_service_read_moments_ago_is_not_read_again() -> None:
    clock, table, sid = Clock(), Table(), uuid.uuid4()
    table.rows[sid] = terms()
    cache = ServiceTermsCache(ttl_seconds=2.0, clock=clock)
    assert await cache.get(sid, table.load) == terms()
    clock.now += 1.9
    assert await cache.get(sid, table.load) == terms()
    assert table.reads == 1


async def test_a_service_deactivated_elsewhere_is_refused_once_the_ttl_has_passed() -> None:
    clock, table, sid = Clock(), Table(), uuid.uuid4()
    table.rows[sid] = terms(active=True)
    cache = ServiceTermsCache(ttl_seconds=2.0, clock=clock)
    first = await cache.get(sid, table.load)
    assert first is not None
    assert first.active
    table.rows[sid] = terms(active=False)  # another process deactivates it
    clock.now += 2.0  # the documented bound
    seen = await cache.get(sid, table.load)
    assert seen is not None
    assert not seen.active
    assert table.reads == 2


async def test_this_process_sees_its_own_change_at_once() -> None:
    clock, table, sid = Clock(), Table(), uuid.uuid4()
    table.rows[sid] = terms(price=4500)
    cache = ServiceTermsCache(ttl_seconds=2.0, clock=clock)
    await cache.get(sid, table.load)
    table.rows[sid] = terms(price=5000)
    cache.forget(sid)
    assert (await cache.get(sid, table.load)) == terms(price=5000)


async def test_an_unknown_service_is_not_remembered() -> None:
    clock, table, sid = Clock(), Table(), uuid.uuid4()
    cache = ServiceTermsCache(ttl_seconds=2.0, clock=clock)
    assert await cache.get(sid, table.load) is None
    table.rows[sid] = terms()  # created just after
    assert await cache.get(sid, table.load) == terms()


async def test_the_cache_stays_bounded() -> None:
    clock, table = Clock(), Table()
    cache = ServiceTermsCache(ttl_seconds=2.0, max_entries=3, clock=clock)
    ids = [uuid.uuid4() for _ in range(10)]
    for sid in ids:
        table.rows[sid] = terms()
        await cache.get(sid, table.load)
    await cache.get(ids[0], table.load)
    assert table.reads == 11  # the oldest entry made room long ago


class RecordingConnection:
    def __init__(self) -> None:
        self.writes = 0

    async def execute(self, *_args: object) -> str:
        self.writes += 1
        return "INSERT 0 1"


async def test_a_user_seen_moments_ago_needs_no_connection_until_their_token_changes() -> None:
    users, conn = SeenUsers(ttl_seconds=60.0), RecordingConnection()
    alice = principal()
    assert not users.is_fresh(alice)
    await users.ensure(cast(Any, conn), alice)
    assert users.is_fresh(alice)
    await users.ensure(cast(Any, conn), alice)
    assert conn.writes == 1
    promoted = Principal(**{**vars(alice), "roles": frozenset({"customer", "provider"})})
    assert not users.is_fresh(promoted)
