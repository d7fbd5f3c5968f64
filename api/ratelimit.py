"""Request rate limits per user and per client IP, counted in Redis so every API replica
shares them.

A sliding-window approximation: the current minute's counter plus the previous minute's,
weighted by how much of it still overlaps the last 60 seconds. Three pipelined commands
(INCR + EXPIRE on the current window, GET of the previous one) per check, either in their
own round trip (``hit``) or added to a caller's pipeline (``queue``: an authenticated request
checks its token's revocation and both of its limits in one round trip, ``api.admission``);
no Lua, no library — the whole algorithm is the ten lines of ``PendingHit.verdict``.

When Redis is unreachable the limit is not enforced (the API stays up; the failure is
logged): rate limiting protects capacity, it is not a security boundary.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

log = logging.getLogger("erynoa.api.ratelimit")


# One IPv6 subscriber usually gets a whole /64 (SLAAC, privacy addresses): counted per /128,
# each client could rotate through 2**64 addresses, each with a fresh limit.
IPV6_CLIENT_PREFIX = 64


def client_bucket(host: str) -> str:
    """The rate-limit identity of a client address: an IPv4 address as it is, an IPv6
    address's /64 (an IPv4-mapped one as its IPv4 address); anything else, as given."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # not an address (a unix socket, a test client): bounded, as is
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    retry_after_seconds: int


@dataclass(frozen=True)
class PendingHit:
    """One count queued on a caller's pipeline (``RateLimiter.queue``): three commands whose
    replies, in order, ``verdict`` turns into the answer."""

    key: str  # the current window's counter
    limit: int
    window_seconds: int
    elapsed: float  # seconds into the current window

    REPLIES = 3

    def verdict(self, replies: Sequence[Any]) -> Verdict:
        current_reply, _, previous_reply = replies
        current, previous = int(current_reply), int(previous_reply or 0)
        overlap = 1.0 - self.elapsed / self.window_seconds
        estimated = current + previous * overlap
        if estimated <= self.limit:
            return Verdict(True, self.limit, 0)
        # When does the estimate drop back under the limit (if the client waits quietly)?
        # While this window lasts, the previous window's weight fades; after it, this window
        # becomes the previous one and fades in turn.
        if current <= self.limit:
            retry_after = (estimated - self.limit) / (previous / self.window_seconds)
        else:
            retry_after = (self.window_seconds - self.elapsed) + self.window_seconds * (
                1 - self.limit / current
            )
        return Verdict(False, self.limit, max(1, math.ceil(retry_after)))


class RateLimiter:
    def __init__(
        self, redis: Redis, *, window_seconds: int = 60, prefix: str = "erynoa:rl"
    ) -> None:
        self._redis = redis
        self._window = window_seconds
        self._prefix = prefix

    def queue(
        self, pipe: Pipeline, scope: str, identity: str, limit: int, now: float | None = None
    ) -> PendingHit:
        """Add one request of ``identity`` to ``pipe`` (INCR + EXPIRE, GET of the previous
        window), for a caller that sends other commands in the same round trip."""
        now = time.time() if now is None else now
        window = int(now // self._window)
        current_key = f"{self._prefix}:{scope}:{identity}:{window}"
        pipe.incr(current_key)
        pipe.expire(current_key, self._window * 2 + 1)
        pipe.get(f"{self._prefix}:{scope}:{identity}:{window - 1}")
        return PendingHit(current_key, limit, self._window, now - window * self._window)

    async def hit(self, scope: str, identity: str, limit: int, now: float | None = None) -> Verdict:
        """Count one request of ``identity`` against ``limit`` per window."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            pending = self.queue(pipe, scope, identity, limit, now)
            replies = await pipe.execute()
        except RedisError as exc:
            log.warning("rate limit not enforced: redis unavailable", extra={"error": str(exc)})
            return Verdict(True, limit, 0)
        return pending.verdict(replies)

    async def uncount(self, pending: PendingHit) -> None:
        """Take back a counted request that turned out not to be its identity's (best effort)."""
        try:
            await self._redis.decr(pending.key)
        except RedisError as exc:
            log.warning("rate limit count not taken back", extra={"error": str(exc)})
