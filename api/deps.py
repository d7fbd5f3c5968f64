"""Typed dependencies the routes declare: the runtime, a database connection, the caller.

``CurrentUser`` verifies the bearer token, counts the request against the caller's rate limit
and makes sure their ``users`` row exists; ``AdminUser`` and ``ProviderUser`` add a role check
(403). ``limit_ip`` is mounted on every router except health.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import AuthError, KeysUnavailable, Principal, RevocationUnavailable
from api.envelopes import ApiError, forbidden, request_id_of, unauthorized, unavailable
from api.ratelimit import Verdict
from api.runtime import EventContext, KafkaLink, Runtime
from erynoa.kafka import H_REQUEST_ID, H_SYNTHETIC, H_TRACEPARENT
from erynoa.settings import Settings

_bearer = HTTPBearer(
    auto_error=False,
    description="A JWT from the OIDC provider (in development: `erynoa token` or POST /auth/token)",
)


# These dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, and the four thread hops per request were the API's largest
# cost under load (profiled: run_in_threadpool / Condition.wait in every request).
async def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


async def _settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(_settings)]


async def _kafka(runtime: RuntimeDep) -> KafkaLink:
    return runtime.kafka


Publisher = Annotated[KafkaLink, Depends(_kafka)]


# W3C trace context (version 00): passed on only if well-formed.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_TRACESTATE = re.compile(r"^[\x20-\x7e]{1,512}$")
SYNTHETIC_HTTP_HEADER = "x-erynoa-synthetic"


async def _event_context(request: Request, settings: SettingsDep) -> EventContext:
    request_id = request_id_of(request)
    headers = {H_REQUEST_ID: request_id}
    traceparent = request.headers.get(H_TRACEPARENT, "")
    if _TRACEPARENT.match(traceparent):
        headers[H_TRACEPARENT] = traceparent
        tracestate = request.headers.get("tracestate", "")
        if _TRACESTATE.match(tracestate):
            headers["tracestate"] = tracestate
    # Load tests mark their traffic so agents keep it out of real inboxes. Outside production
    # only: in production a client must not be able to silence its own notifications.
    synthetic = request.headers.get(SYNTHETIC_HTTP_HEADER, "").lower() in ("1", "true", "yes")
    if synthetic and settings.environment != "production":
        headers[H_SYNTHETIC] = "1"
    return EventContext(request_id=request_id, headers=headers)


Context = Annotated[EventContext, Depends(_event_context)]
"""The request's id and the Kafka headers its events carry."""


async def _connection(runtime: RuntimeDep) -> AsyncIterator[asyncpg.Connection]:
    try:
        conn = await runtime.pool.acquire(timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise unavailable("postgres", exc) from exc
    try:
        yield conn
    finally:
        await runtime.pool.release(conn)


Db = Annotated[asyncpg.Connection, Depends(_connection)]


def rate_limited(verdict: Verdict, who: str) -> ApiError:
    return ApiError(
        429,
        f"too many requests for this {who}; retry after {verdict.retry_after_seconds} seconds",
        details=[{"limit_per_minute": verdict.limit, "scope": who}],
        headers={"Retry-After": str(verdict.retry_after_seconds)},
    )


async def limit_ip(request: Request, runtime: RuntimeDep) -> None:
    """Count the request against its client IP's limit."""
    ip = request.client.host if request.client else "unknown"
    verdict = await runtime.limiter.hit("ip", ip, runtime.settings.rate_limit_per_minute_ip)
    if not verdict.allowed:
        raise rate_limited(verdict, "client address")


async def _principal(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise unauthorized()
    try:
        principal = await runtime.verifier.verify(credentials.credentials)
    except AuthError as exc:
        raise unauthorized(str(exc)) from None
    except KeysUnavailable as exc:
        raise unavailable("identity provider", exc) from exc
    except RevocationUnavailable as exc:
        raise unavailable("redis", exc) from exc
    request.state.user_id = principal.sub
    verdict = await runtime.limiter.hit(
        "user", principal.sub, runtime.settings.rate_limit_per_minute_user
    )
    if not verdict.allowed:
        raise rate_limited(verdict, "user")
    return principal


TokenUser = Annotated[Principal, Depends(_principal)]
"""The verified caller, without touching the database (for /auth routes)."""


async def _current_user(principal: TokenUser, runtime: RuntimeDep, conn: Db) -> Principal:
    await runtime.users.ensure(conn, principal)
    return principal


CurrentUser = Annotated[Principal, Depends(_current_user)]
"""The verified caller, whose ``users`` row exists."""


def require_role(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through callers holding any of ``roles`` (403 otherwise)."""

    async def dependency(user: CurrentUser) -> Principal:
        if not user.has(*roles):
            raise forbidden(f"this needs the role {' or '.join(roles)}")
        return user

    return dependency


AdminUser = Annotated[Principal, Depends(require_role("admin"))]
ProviderUser = Annotated[Principal, Depends(require_role("provider", "admin"))]
