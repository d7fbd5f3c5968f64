"""Admitting a caller whose token verified: its revocation check and its rate limits, in one
Redis round trip.

An authenticated request needs three answers from Redis (the client address's limit, the
deny-list, the user's limit); each round trip costs the event loop a write and a wake-up and
holds the request for Redis's answer. ``admit`` sends all of them in one pipeline (not a
transaction: each command stands alone) and decides in this order: the address's limit, then
the revocation, then the user's limit.

The user's counter is incremented before Redis says
whether the token is revoked, so for a revoked token ``admit`` decrements it again — a stolen,
revoked token must not use up its owner's rate limit.

If Redis cannot answer, the token cannot be trusted: ``RevocationUnavailable`` (a 503). (The
limits alone fail open; see ``api.ratelimit``.)
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.auth import Principal, RevocationList, RevocationUnavailable
from api.ratelimit import PendingHit, RateLimiter, Verdict


@dataclass(frozen=True)
class Limit:
    """A rate limit to count a request against: ``scope`` and ``identity`` name the counter."""

    scope: str
    identity: str
    per_window: int


@dataclass(frozen=True)
class Admission:
    ip: Verdict | None  # None: the address was not counted here
    revoked: bool
    user: Verdict


async def admit(
    redis: Redis,
    limiter: RateLimiter,
    revocations: RevocationList,
    principal: Principal,
    *,
    user: Limit,
    ip: Limit | None = None,
    now: float | None = None,
) -> Admission:
    """Check ``principal``'s token against the deny-list and count the request against
    ``user`` (and ``ip``, if given), in one round trip."""
    pipe = redis.pipeline(transaction=False)
    ip_hit: PendingHit | None = None
    if ip is not None:
        ip_hit = limiter.queue(pipe, ip.scope, ip.identity, ip.per_window, now)
    revocations.queue(pipe, principal.token_id, principal.session_id)
    user_hit = limiter.queue(pipe, user.scope, user.identity, user.per_window, now)
    try:
        replies = await pipe.execute()
    except RedisError as exc:
        raise RevocationUnavailable(str(exc)) from exc
    at = 0
    ip_verdict: Verdict | None = None
    if ip_hit is not None:
        ip_verdict = ip_hit.verdict(replies[: PendingHit.REPLIES])
        at = PendingHit.REPLIES
    revoked = bool(replies[at])
    user_verdict = user_hit.verdict(replies[at + 1 : at + 1 + PendingHit.REPLIES])
    if revoked:
        await limiter.uncount(user_hit)
    return Admission(ip=ip_verdict, revoked=revoked, user=user_verdict)
