"""Typed dependencies the routes declare: the runtime, a database connection, the caller.

``CurrentUser`` verifies the bearer token, checks it is not revoked and counts the request
against the caller's rate limit (one Redis round trip, ``api.admission``) and makes sure their
``users`` row exists; ``AdminUser``, ``ProviderUser``, ``CustomerUser`` and ``MemberUser`` add a
role check (403). ``limit_ip`` is mounted on every router except health.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.admission import Limit, admit
from api.auth import AuthError, KeysUnavailable, Principal, RevocationUnavailable
from api.envelopes import ApiError, forbidden, request_id_of, unauthorized, unavailable
from api.outbox import ApiOutbox
from api.ratelimit import Verdict, client_bucket
from api.runtime import ApiRuntime, EventContext, KafkaLink
from erynoa.kafka import H_REQUEST_ID, H_SYNTHETIC, H_TRACEPARENT
from erynoa.settings import Settings

_bearer = HTTPBearer(
    auto_error=False,
    description="A JWT from the OIDC provider (in development: `erynoa token` or POST /auth/token)",
)


# These dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, and the four thread hops per request were the API's largest
# cost under load (profiled: run_in_threadpool / Condition.wait in every request).
async def _runtime(request: Request) -> ApiRuntime:
    runtime: ApiRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[ApiRuntime, Depends(_runtime)]


async def _settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(_settings)]


async def _kafka(runtime: RuntimeDep) -> KafkaLink:
    return runtime.kafka


Publisher = Annotated[KafkaLink, Depends(_kafka)]


async def _outbox(runtime: RuntimeDep) -> ApiOutbox:
    return runtime.outbox


Outbox = Annotated[ApiOutbox, Depends(_outbox)]
"""Where a route queues the events of a change it commits (``api.outbox``)."""


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


@asynccontextmanager
async def connection(runtime: ApiRuntime) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection for the block (503 if none can be had), for code that needs one
    only on some paths or only for part of the request."""
    try:
        conn = await runtime.pool.acquire(timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise unavailable("postgres", exc) from exc
    try:
        yield conn
    finally:
        await runtime.pool.release(conn)


async def _connection(runtime: RuntimeDep) -> AsyncIterator[asyncpg.Connection]:
    async with connection(runtime) as conn:
        yield conn


Db = Annotated[asyncpg.Connection, Depends(_connection)]


def rate_limited(verdict: Verdict, who: str) -> ApiError:
    return ApiError(
        429,
        f"too many requests for this {who}; retry after {verdict.retry_after_seconds} seconds",
        details=[{"limit_per_minute": verdict.limit, "scope": who}],
        headers={"Retry-After": str(verdict.retry_after_seconds)},
    )


def _ip_limit(request: Request, settings: Settings) -> Limit:
    ip = request.client.host if request.client else "unknown"
    return Limit("ip", client_bucket(ip), settings.rate_limit_per_minute_ip)


async def _count_ip(runtime: ApiRuntime, limit: Limit) -> None:
    verdict = await runtime.limiter.hit(limit.scope, limit.identity, limit.per_window)
    if not verdict.allowed:
        raise rate_limited(verdict, "client address")


async def limit_ip(request: Request, runtime: RuntimeDep) -> None:
    """Count the request against its client IP's limit.

    On a route that authenticates its caller, the count is left to ``_principal``, which
    sends it to Redis together with the revocation check and the user's limit (one round trip
    instead of two); it counts every request it sees, whatever the token's fate.
    """
    if _authenticates(request.scope.get("route")):
        request.state.ip_limit_deferred = True
        return
    await _count_ip(runtime, _ip_limit(request, runtime.settings))


async def _principal(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    ip = (
        _ip_limit(request, runtime.settings)
        if getattr(request.state, "ip_limit_deferred", False)
        else None
    )
    if credentials is None:
        if ip is not None:
            await _count_ip(runtime, ip)
        raise unauthorized()
    try:
        principal = await runtime.verifier.decode(credentials.credentials)
    except (AuthError, KeysUnavailable) as exc:
        if ip is not None:
            await _count_ip(runtime, ip)  # the address's limit comes first, as it always did
        if isinstance(exc, KeysUnavailable):
            raise unavailable("identity provider", exc) from exc
        raise unauthorized(str(exc)) from None
    user = Limit("user", principal.sub, runtime.settings.rate_limit_per_minute_user)
    try:
        admission = await admit(
            runtime.redis, runtime.limiter, runtime.revocations, principal, user=user, ip=ip
        )
    except RevocationUnavailable as exc:
        raise unavailable("redis", exc) from exc
    if admission.ip is not None and not admission.ip.allowed:
        raise rate_limited(admission.ip, "client address")
    if admission.revoked:
        raise unauthorized("the token was revoked")
    request.state.user_id = principal.sub
    if not admission.user.allowed:
        raise rate_limited(admission.user, "user")
    return principal


def _dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _dependency_calls(sub)


# id(route) -> (route, whether it resolves ``_principal``); the route is kept so its id stays
# its own. Routes are fixed once the app is built, so this holds one entry per route.
_authenticating: dict[int, tuple[object, bool]] = {}


def _authenticates(route: object) -> bool:
    """Whether the matched route (``scope["route"]``) resolves ``_principal``."""
    known = _authenticating.get(id(route))
    if known is not None and known[0] is route:
        return known[1]
    dependant = getattr(route, "dependant", None)
    answer = isinstance(dependant, Dependant) and any(
        call is _principal for call in _dependency_calls(dependant)
    )
    _authenticating[id(route)] = (route, answer)
    return answer


BearerToken = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
"""The bearer credentials as sent, unchecked (for a route that checks them its own way)."""

TokenUser = Annotated[Principal, Depends(_principal)]
"""The verified caller, without touching the database (for /auth routes)."""


async def _current_user(principal: TokenUser, runtime: RuntimeDep) -> Principal:
    # A connection only when the row is due a write: usually it was written moments ago.
    if not runtime.users.is_fresh(principal):
        async with connection(runtime) as conn:
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
# A customer's actions (booking, confirming a payment) are not an admin's: an operator acts
# through the admin routes, which say who did what.
CustomerUser = Annotated[Principal, Depends(require_role("customer"))]
# A verified token with none of our roles (an IdP account nobody let in) may read who it is,
# but not change anything.
MemberUser = Annotated[Principal, Depends(require_role("customer", "provider", "admin"))]
