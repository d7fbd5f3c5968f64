"""Health, liveness, readiness and version: public, not rate limited (probes poll them).

Readiness checks Kafka (a metadata request), Postgres (``SELECT 1``) and Redis (``PING``)
concurrently, each bounded by ``CHECK_TIMEOUT_SECONDS``; it answers 503 naming exactly the
components that failed, so an orchestrator stops routing traffic here until they are back.
These routes are public: they name components and say "unreachable" or "timeout", never the
driver's text (hosts, ports, versions), which goes to the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from api.deps import RuntimeDep
from api.envelopes import ApiError, Envelope, errors, ok, request_id_of
from erynoa import __version__

router = APIRouter(tags=["health"])
log = logging.getLogger("erynoa.api")

CHECK_TIMEOUT_SECONDS = 2.0


class Health(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "service": "erynoa-api",
                    "version": "0.1.0",
                    "environment": "development",
                    "uptime_seconds": 3600.5,
                    "kafka_connected": True,
                }
            ]
        }
    )

    status: Literal["ok"] = "ok"
    service: str
    version: str
    environment: str | None  # None: not declared (see ERYNOA_ENVIRONMENT)
    uptime_seconds: float
    kafka_connected: bool


class Live(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "alive"}]})

    status: Literal["alive"] = "alive"


class Check(BaseModel):
    ok: bool
    latency_ms: float
    error: Literal["timeout", "unreachable"] | None = None


class Ready(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {
                        "kafka": {"ok": True, "latency_ms": 3.1, "error": None},
                        "postgres": {"ok": True, "latency_ms": 0.8, "error": None},
                        "redis": {"ok": True, "latency_ms": 0.4, "error": None},
                        "schema_registry": {"ok": True, "latency_ms": 0.0, "error": None},
                    },
                }
            ]
        }
    )

    status: Literal["ready"] = "ready"
    checks: dict[str, Check]


class Version(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"version": "0.1.0", "api_version": "v1"}]}
    )

    version: str
    api_version: Literal["v1"] = "v1"


@router.get("/health", response_model=Envelope[Health])
async def health(request: Request, runtime: RuntimeDep) -> Envelope[Health]:
    """A cheap summary: the process runs; no dependency is contacted."""
    return ok(
        request,
        Health(
            service="erynoa-api",
            version=__version__,
            environment=runtime.settings.environment,
            uptime_seconds=round(time.time() - runtime.started_at, 3),
            kafka_connected=runtime.kafka.connected,
        ),
    )


@router.get("/health/live", response_model=Envelope[Live])
async def live(request: Request) -> Envelope[Live]:
    """Liveness: the process is up and serving requests."""
    return ok(request, Live())


async def _timed(name: str, probe: Callable[[], Awaitable[object]]) -> Check:
    began = time.perf_counter()
    error: Literal["timeout", "unreachable"] | None = None
    try:
        await asyncio.wait_for(probe(), timeout=CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        error = "timeout"
        log.warning("readiness: %s gave no answer within %gs", name, CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure of the probe means "not ready", whatever its type
        error = "unreachable"
        log.warning(
            "readiness: %s unreachable",
            name,
            extra={"component": name, "error": str(exc) or type(exc).__name__},
        )
    latency = round((time.perf_counter() - began) * 1000, 2)
    return Check(ok=error is None, latency_ms=latency, error=error)


@router.get("/health/ready", response_model=Envelope[Ready], responses=errors(503))
async def ready(request: Request, runtime: RuntimeDep) -> Envelope[Ready] | JSONResponse:
    """Readiness: Kafka, Postgres and Redis all answer, and the Schema Registry's ids are
    resolved when one is configured (503 names the ones that are not)."""

    async def postgres() -> object:
        return await runtime.pool.fetchval("SELECT 1", timeout=CHECK_TIMEOUT_SECONDS)

    async def redis() -> object:
        return await runtime.redis.ping()

    probes: dict[str, Callable[[], Awaitable[object]]] = {
        "kafka": runtime.kafka.check,
        "postgres": postgres,
        "redis": redis,
    }
    if runtime.schema_ids.codec.registry is not None:
        # Ready once the schema ids are resolved: requests need no more of the registry.
        probes["schema_registry"] = runtime.schema_ids.check
    results = await asyncio.gather(*(_timed(name, probe) for name, probe in probes.items()))
    checks = dict(zip(probes, results, strict=True))
    down = [name for name, check in checks.items() if not check.ok]
    if down:
        return ApiError(
            503,
            f"not ready: {', '.join(down)} unavailable",
            code="NOT_READY",
            details=[
                {"component": name, "error": check.error, "latency_ms": check.latency_ms}
                for name, check in checks.items()
                if not check.ok
            ],
            headers={"Retry-After": "5"},
        ).response(request_id_of(request))
    return ok(request, Ready(checks=checks))


@router.get("/version", response_model=Envelope[Version])
async def version(request: Request) -> Envelope[Version]:
    """The API's version."""
    return ok(request, Version(version=__version__))
