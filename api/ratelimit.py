"""Request rate limits per user and per client IP, counted in Redis so every API replica
shares them.

A sliding-window approximation: the current minute's counter plus the previous minute's,
weighted by how much of it still overlaps the last 60 seconds. One pipelined round trip
(INCR + EXPIRE on the current window, GET of the previous one) per check; no Lua, no
library — the whole algorithm is the ten lines of ``hit``.

When Redis is unreachable the limit is not enforced (the API stays up; the failure is
logged): rate limiting protects capacity, it is not a security boundary.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("erynoa.api.ratelimit")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    retry_after_seconds: int


class RateLimiter:
    def __init__(
        self, redis: Redis, *, window_seconds: int = 60, prefix: str = "erynoa:rl"
    ) -> None:
        self._redis = redis
        self._window = window_seconds
        self._prefix = prefix

    async def hit(self, scope: str, identity: str, limit: int, now: float | None = None) -> Verdict:
        """Count one request of ``identity`` against ``limit`` per window."""
        now = time.time() if now is None else now
        window = int(now // self._window)
        elapsed = now - window * self._window
        current_key = f"{self._prefix}:{scope}:{identity}:{window}"
        previous_key = f"{self._prefix}:{scope}:{identity}:{window - 1}"
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.incr(current_key)
            pipe.expire(current_key, self._window * 2 + 1)
            pipe.get(previous_key)
            current, _, previous = await pipe.execute()
        except RedisError as exc:
            log.warning("rate limit not enforced: redis unavailable", extra={"error": str(exc)})
            return Verdict(True, limit, 0)
        overlap = 1.0 - elapsed / self._window
        estimated = int(current) + int(previous or 0) * overlap
        if estimated <= limit:
            return Verdict(True, limit, 0)
        # When does the estimate drop back under the limit (if the client waits quietly)?
        # While this window lasts, the previous window's weight fades; after it, this window
        # becomes the previous one and fades in turn.
        if int(current) <= limit:
            retry_after = (estimated - limit) / (int(previous or 0) / self._window)
        else:
            retry_after = (self._window - elapsed) + self._window * (1 - limit / int(current))
        return Verdict(False, limit, max(1, math.ceil(retry_after)))
