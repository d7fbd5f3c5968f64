"""``create_app(settings)``: the FastAPI application, wired in one place.

The lifespan builds the ``ApiRuntime`` (Postgres pool, Kafka producer and the outbox relay,
Redis, JWKS cache) and stores it on ``app.state``; importing this module connects to nothing.
Middleware, from the outside in: Prometheus request metrics, request id + trace span + access
log + last-resort 500, CORS, gzip, the request-body guard. The process's metrics
(``api.metrics``) are served on their own port (``api.server``), not on the API's.

    uvicorn --factory api.app:app_from_env     # or: erynoa api
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api import console
from api.deps import limit_ip
from api.docs import install_docs
from api.envelopes import (
    ApiError,
    errors,
    install_error_handlers,
    log_unavailable,
    request_id_of,
)
from api.metrics import ApiMetrics, MetricsMiddleware
from api.middleware import BodyGuardMiddleware, RequestContextMiddleware
from api.routes import admin, auth, bookings, health, payments, services, users, webhooks
from api.routes.events import events_router
from api.runtime import ApiRuntime, KafkaUnavailable, PublisherFactory
from erynoa import __version__
from erynoa.codec import RegistryUnavailable
from erynoa.kafka import EventPublisher
from erynoa.metrics import new_registry
from erynoa.settings import Settings, get_settings

API_PREFIX = "/api/v1"

TAGS = [
    {"name": "health", "description": "Liveness, readiness and version (public)."},
    {
        "name": "auth",
        "description": "Tokens come from the OIDC provider; in development from the built-in "
        "issuer. Logout revokes a token until it expires.",
    },
    {"name": "users", "description": "The caller's profile; other users for admins."},
    {"name": "services", "description": "The catalog: public reads, providers manage their own."},
    {
        "name": "bookings",
        "description": "Create, answer and cancel bookings. Every change answers 202 with a "
        "poll URL; the booking saga runs on Kafka.",
    },
    {"name": "payments", "description": "Payment status and the intent a customer confirms."},
    {"name": "webhooks", "description": "Signed callbacks from Stripe."},
    {"name": "admin", "description": "Operators: statistics and in-flight sagas (role admin)."},
    {
        "name": "events",
        "description": "The Kafka topics other systems subscribe to: the AsyncAPI document, "
        "and its HTML docs at /api/v1/events/docs/ (public).",
    },
]

DESCRIPTION = """
Erynoa's booking API. Reads are plain queries of the read model; every change to a booking is
an event on Kafka, so it answers **202 Accepted** with `poll_url` (also in `Location`) and
`Retry-After`: poll `GET /api/v1/bookings/{id}` until the status is an outcome
(`confirmed`, `rejected`, `expired`, `cancelled`, `failed`).

* Success: `{"data": ..., "meta": {"timestamp", "request_id"}}`
* Accepted: `{"status": "processing", "workflow_id", "poll_url", "estimated_completion"}`
* Error: `{"error": {"code", "message", "details", "request_id"}}`

Send `X-Request-ID` to correlate your request with our logs and events (echoed back).
Money is `{"amount": <integer minor units>, "currency": "EUR"}`; times are RFC 3339 in UTC.
"""


def create_app(
    settings: Settings, *, publisher_factory: PublisherFactory = EventPublisher
) -> FastAPI:
    """The app; ``publisher_factory`` builds its Kafka publisher (tests pass one that fails).

    Raises ``UnsafeConfiguration`` for settings the API must not run with.
    """
    settings.require_safe_dev_issuer()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await ApiRuntime.start(settings, publisher_factory)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="Erynoa Booking API",
        version=__version__,
        description=DESCRIPTION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        # Swagger UI with assets served from this process (api.docs), never from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_tags=TAGS,
        lifespan=lifespan,
        # Every route may answer these (malformed input, a bug); documented with the envelope,
        # replacing FastAPI's default 422 schema, which is not what we send.
        responses=errors(422, 500),
        # Spans and metrics are ours (RequestContextMiddleware, api.metrics, erynoa.tracing):
        # FastAPI's built-in OpenTelemetry would add a second span per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    # One registry per app (not the global one): tests build several apps in one process.
    metrics = ApiMetrics(new_registry())
    app.state.metrics = metrics
    install_error_handlers(app)
    _install_dependency_errors(app)

    def include_limited(router: APIRouter) -> None:
        # Counted against the client address's limit: every route may answer 429.
        app.include_router(
            router, prefix=API_PREFIX, dependencies=[Depends(limit_ip)], responses=errors(429)
        )

    app.include_router(health.router, prefix=API_PREFIX)
    include_limited(auth.router)
    app.include_router(auth.dev_router, prefix=API_PREFIX)
    include_limited(users.router)
    include_limited(services.router)
    include_limited(bookings.router)
    include_limited(payments.router)
    include_limited(webhooks.router)
    include_limited(admin.router)
    app.include_router(console.router)
    install_docs(
        app,
        docs_url=f"{API_PREFIX}/docs",
        openapi_url=f"{API_PREFIX}/openapi.json",
        title="Erynoa Booking API",
    )
    # Public and not rate limited, like the OpenAPI docs.
    app.include_router(events_router(), prefix=API_PREFIX)

    # Added innermost first: the last one added sees the request first.
    app.add_middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "X-Request-ID",
            "traceparent",
            "tracestate",
        ],
        expose_headers=["X-Request-ID", "Location", "Retry-After"],
        max_age=600,
    )
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _install_dependency_errors(app: FastAPI) -> None:
    """A dependency that fails mid-request is a 503 naming it, not a 500."""

    async def kafka_down(request: Request, exc: Exception) -> JSONResponse:
        return _unavailable(request, "kafka", exc)

    async def postgres_down(request: Request, exc: Exception) -> JSONResponse:
        return _unavailable(request, "postgres", exc)

    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        return _unavailable(request, "redis", exc)

    async def registry_down(request: Request, exc: Exception) -> JSONResponse:
        return _unavailable(request, "schema_registry", exc)

    app.add_exception_handler(KafkaUnavailable, kafka_down)
    app.add_exception_handler(asyncpg.PostgresConnectionError, postgres_down)
    app.add_exception_handler(asyncpg.InterfaceError, postgres_down)
    app.add_exception_handler(RedisError, redis_down)
    app.add_exception_handler(RegistryUnavailable, registry_down)


def _unavailable(request: Request, component: str, exc: Exception) -> JSONResponse:
    # Raised wherever the request was, perhaps after a write: no claim about what changed
    # (routes that know say so themselves, see ``api.envelopes.unavailable``).
    request_id = request_id_of(request)
    log_unavailable(component, exc, request_id)
    return ApiError(
        503,
        f"{component} is unavailable; try again",
        details=[{"component": component}],
        headers={"Retry-After": "2"},
    ).response(request_id)


def app_from_env() -> FastAPI:
    """The app with the process's settings (for ``uvicorn --factory``)."""
    return create_app(get_settings())
