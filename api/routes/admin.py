"""Operators' endpoints (role admin): statistics, the sagas ("workflows") in flight with one
saga's timeline, cancel/retry with a dry run, and the dead-letter topics with replay.

Every answer comes from ``ops``, as ``erynoa saga|dlq`` does: a saga is in flight, waiting or
stuck by the same rules (``ops.assess``) with the deployment's ``Policy``, so the command line,
this API and the console report the same sagas.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import kafka_stats
from api.deps import AdminUser, Context, Db, Outbox, Publisher, RuntimeDep
from api.envelopes import (
    ACCEPTED_RESPONSE,
    ApiError,
    Envelope,
    Page,
    conflict,
    errors,
    not_found,
    ok,
    page,
    unavailable,
    utcnow,
)
from api.readmodel import BOOKING_COLUMNS, fetch_booking
from api.routes.bookings import (
    BOOKING_EXAMPLE,
    BookingSummary,
    action_accepted,
    booking_summary,
    request_cancellation,
)
from api.schemas import Body, Paging, Reason
from erynoa import kafka as k
from erynoa import saga
from erynoa.events import BookingEvent
from erynoa.kafka import Published
from erynoa.saga import Status
from ops import assess, dead_letters, replay, sagas
from ops.assess import Criteria
from ops.errors import BadInput

# Every route needs the admin role (401, 403) and PostgreSQL, Redis or Kafka (503).
router = APIRouter(prefix="/admin", tags=["admin"], responses=errors(401, 403, 503))
log = logging.getLogger("erynoa.api.admin")

KAFKA_STATS_TIMEOUT_SECONDS = 5.0
Step = Literal["all", saga.Agent]
Json = dict[str, Any]


def bad_input(exc: BadInput) -> ApiError:
    return ApiError(422, str(exc), code="VALIDATION_ERROR")


class Stats(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "bookings_by_status": {"confirmed": 120, "awaiting_provider": 4},
                    "bookings_total": 124,
                    "events_per_topic": {"bookings": 180, "payments": 240},
                    "consumer_lag": {"erynoa-materializer": 0, "erynoa-payment": 3},
                    "consumer_lag_per_topic": {"erynoa-payment": {"bookings": 3}},
                    "dead_letters": {"payment.dlq": 0},
                    "kafka_error": None,
                }
            ]
        }
    )

    bookings_by_status: dict[str, int]
    bookings_total: int
    events_per_topic: dict[str, int] | None
    consumer_lag: dict[str, int] | None
    consumer_lag_per_topic: dict[str, dict[str, int]] | None
    dead_letters: dict[str, int] | None
    kafka_error: str | None = Field(description="why the Kafka figures are missing, if they are")


class Waiting(BaseModel):
    who: str = Field(description="an agent, provider, customer or materializer")
    what: str
    until: datetime | None = None


class WorkflowSummary(BookingSummary):
    stuck: bool
    age_seconds: float
    stuck_reason: str | None = Field(description="why it counts as stuck (ops' rule)")
    idle_seconds: float = Field(description="time since the booking's last event")
    waiting: list[Waiting] = Field(description="who the saga waits for, and for what")


class TimelineEntry(BaseModel):
    event_id: uuid.UUID
    event_type: str
    producer: str
    occurred_at: datetime
    since_previous_ms: float | None = Field(description="time since the previous event")
    topic: str
    partition: int
    offset: int
    kind: Literal["request", "step", "failure", "compensation", "notification"]
    detail: str = Field(description="the event's own fields, for people")


class Workflow(BookingSummary):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **{k: v for k, v in BOOKING_EXAMPLE.items() if k != "history"},
                    "in_flight": True,
                    "timeline": [
                        {
                            "event_id": "6f1c0b8e-3c57-4a0e-9d55-4a1e2b7c9f10",
                            "event_type": "BookingRequested",
                            "producer": "api",
                            "occurred_at": "2026-01-28T10:00:00Z",
                            "since_previous_ms": None,
                            "topic": "bookings",
                            "partition": 3,
                            "offset": 1041,
                            "kind": "request",
                            "detail": "customer_id=alice, provider_id=bob, price=45.00 EUR",
                        }
                    ],
                    "stuck": False,
                    "stuck_reason": None,
                    "waiting": [
                        {
                            "who": "provider",
                            "what": "accept or reject",
                            "until": "2026-01-29T10:00:00Z",
                        }
                    ],
                    "elapsed_seconds": 5.2,
                }
            ]
        }
    )

    in_flight: bool
    timeline: list[TimelineEntry]
    stuck: bool
    stuck_reason: str | None
    waiting: list[Waiting]
    elapsed_seconds: float = Field(description="first event to the last, or to now in flight")


class WorkflowAction(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"action": "cancel", "reason": "customer called support"},
                {"action": "retry", "step": "payment"},
            ]
        }
    )

    action: Literal["cancel", "retry"]
    step: Step = Field(default="all", description="retry: which agent's step to re-run")
    reason: Reason | None = None
    dry_run: bool = Field(
        default=False, description="answer 200 with what would be published; publish nothing"
    )


@router.get("/stats", response_model=Envelope[Stats])
async def stats(
    request: Request, _admin: AdminUser, conn: Db, runtime: RuntimeDep
) -> Envelope[Stats]:
    """Bookings by status, events per topic, consumer lag per group, dead-letter depth."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM bookings GROUP BY status")
    by_status = {r["status"]: int(r["n"]) for r in rows}
    kafka: kafka_stats.KafkaStats | None = None
    error: str | None = None
    try:
        kafka = await asyncio.wait_for(
            kafka_stats.collect(runtime.settings.kafka_bootstrap, runtime.catalog),
            timeout=KAFKA_STATS_TIMEOUT_SECONDS * 3,
        )
    except Exception as exc:  # partial statistics beat none: report why Kafka's are missing
        log.warning("kafka statistics unavailable", extra={"error": str(exc)})
        error = str(exc) or type(exc).__name__
    return ok(
        request,
        Stats(
            bookings_by_status=by_status,
            bookings_total=sum(by_status.values()),
            events_per_topic=kafka.events_per_topic if kafka else None,
            consumer_lag=kafka.lag_per_group if kafka else None,
            consumer_lag_per_topic=kafka.lag_per_group_topic if kafka else None,
            dead_letters=kafka.dead_letter_depth if kafka else None,
            kafka_error=error,
        ),
    )


def _criteria(runtime: RuntimeDep, stuck_after_seconds: int | None) -> Criteria:
    stuck_after = None if stuck_after_seconds is None else timedelta(seconds=stuck_after_seconds)
    return Criteria.of(runtime.settings, stuck_after)


def _waiting(found: tuple[assess.Waiting, ...]) -> list[Waiting]:
    return [Waiting(who=w.who, what=w.what, until=w.until) for w in found]


@router.get("/workflows", response_model=Page[WorkflowSummary])
async def list_workflows(
    request: Request,
    _admin: AdminUser,
    conn: Db,
    runtime: RuntimeDep,
    paging: Paging,
    status: Annotated[Status | None, Query()] = None,
    min_age_seconds: Annotated[
        int, Query(ge=0, le=10**8, description="requested at least this long ago")
    ] = 0,
    stuck: Annotated[bool, Query(description="only sagas past their deadline or idle")] = False,
    stuck_after_seconds: Annotated[
        int | None,
        Query(
            ge=1,
            le=10**7,
            description="idle this long counts as stuck in any step (default: per step)",
        ),
    ] = None,
    provider_id: Annotated[
        str | None, Query(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
    ] = None,
    customer_id: Annotated[
        str | None, Query(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
    ] = None,
) -> Page[WorkflowSummary]:
    """Sagas in flight, oldest first; filter by status, age, stuck, provider or customer."""
    query = sagas.SagaQuery(
        stuck=stuck,
        status=status,
        older_than=timedelta(seconds=min_age_seconds),
        provider_id=provider_id,
        customer_id=customer_id,
        offset=paging.offset,
        limit=paging.per_page,
    )
    found = await sagas.page_sagas(
        conn,
        query,
        utcnow(),
        _criteria(runtime, stuck_after_seconds),
    )
    rows = await conn.fetch(
        f"SELECT {BOOKING_COLUMNS} FROM bookings b WHERE b.id = ANY($1::uuid[])",
        [s.booking_id for s in found.sagas],
    )
    by_id = {str(r["id"]): r for r in rows}
    items = [
        WorkflowSummary(
            **booking_summary(by_id[s.booking_id]).model_dump(),
            stuck=s.stuck,
            age_seconds=s.age.total_seconds(),
            stuck_reason=s.stuck_reason,
            idle_seconds=s.idle.total_seconds(),
            waiting=_waiting(s.waiting),
        )
        for s in found.sagas
        if s.booking_id in by_id
    ]
    return page(
        request,
        items,
        page=paging.page,
        per_page=paging.per_page,
        total=found.total,
        total_capped=found.total_capped,
    )


@router.get("/workflows/{booking_id}", response_model=Envelope[Workflow], responses=errors(404))
async def get_workflow(
    request: Request,
    booking_id: uuid.UUID,
    _admin: AdminUser,
    conn: Db,
    runtime: RuntimeDep,
    stuck_after_seconds: Annotated[
        int | None,
        Query(ge=1, le=10**7, description="idle this long counts as stuck (default: per step)"),
    ] = None,
) -> Envelope[Workflow]:
    """One saga's timeline: each event, who produced it, when, the time since the last, and
    what the saga waits for."""
    row = await fetch_booking(conn, str(booking_id))
    if row is None:
        raise not_found("workflow")
    # Decoding the saga's events needs the schema ids: 503 while the registry has not given them.
    await runtime.schema_ids.check()
    timeline = await sagas.saga_timeline(
        conn,
        str(booking_id),
        runtime.schema_ids.codec,
        utcnow(),
        _criteria(runtime, stuck_after_seconds),
    )
    entries = [
        TimelineEntry(
            event_id=uuid.UUID(e.event_id),
            event_type=e.event_type,
            producer=e.producer,
            occurred_at=e.occurred_at,
            since_previous_ms=(
                round(e.since_previous.total_seconds() * 1000, 3)
                if e.since_previous is not None
                else None
            ),
            topic=e.topic,
            partition=e.partition,
            offset=e.offset,
            kind=e.kind,
            detail=e.detail,
        )
        for e in timeline.entries
    ]
    workflow = Workflow(
        **booking_summary(row).model_dump(),
        in_flight=timeline.in_flight,
        timeline=entries,
        stuck=timeline.stuck,
        stuck_reason=timeline.stuck_reason,
        waiting=_waiting(timeline.waiting),
        elapsed_seconds=timeline.elapsed.total_seconds(),
    )
    return ok(request, workflow)


@router.post(
    "/workflows/{booking_id}",
    status_code=202,
    response_model=None,
    responses={
        **ACCEPTED_RESPONSE,
        200: {"description": "a dry run: what would be published (``ops`` OperatorRequest)"},
        **errors(404, 409, 413, 415),
    },
)
async def act_on_workflow(
    request: Request,
    booking_id: uuid.UUID,
    body: WorkflowAction,
    admin: AdminUser,
    conn: Db,
    runtime: RuntimeDep,
    kafka: Publisher,
    outbox: Outbox,
    ctx: Context,
) -> JSONResponse | Envelope[Json]:
    """Cancel a saga (compensations run) or retry one of its steps; ``dry_run`` shows what
    would be published."""
    row = await fetch_booking(conn, str(booking_id))
    if row is None:
        raise not_found("workflow")
    # Encoding the request needs the schema ids: 503 while the registry has not given them.
    await runtime.schema_ids.check()
    policy = saga.Policy.from_settings(runtime.settings)

    async def publish(event: BookingEvent) -> Published:
        return await kafka.publish(event, ctx)

    if body.dry_run or body.action == "retry":
        command: sagas.OperatorCommand = (
            sagas.RetrySaga(str(booking_id), admin.sub, body.step)
            if body.action == "retry"
            else sagas.CancelSaga(str(booking_id), admin.sub, body.reason)
        )
        answer = await sagas.request_saga(
            conn,
            publish if body.action == "retry" else None,
            command,
            codec=runtime.schema_ids.codec,
            now=utcnow(),
            dry_run=body.dry_run,
            policy=policy,
            producer="api",
        )
        if body.dry_run:
            return ok(request, answer.to_json())
    else:
        # Through the outbox with the customer's cancel: once per booking, whatever fails
        # after the 202.
        await request_cancellation(
            conn,
            outbox,
            row,
            requested_by=admin.sub,
            role="operator",
            reason=body.reason or "cancelled by an operator",
            ctx=ctx,
        )
    return action_accepted(booking_id)


# --- dead letters ---------------------------------------------------------------------------

_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"


@asynccontextmanager
async def _reading_dead_letters() -> AsyncIterator[None]:
    """Bad filters are the caller's (422); Kafka unreachable mid-scan is the cluster's state,
    not a bug (503)."""
    try:
        yield
    except BadInput as exc:
        raise bad_input(exc) from None
    except (KafkaError, OSError, TimeoutError) as exc:
        raise unavailable("kafka", exc) from exc


class DeadLetterFilter(Body):
    """Which dead letters: every filter given must match."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"topics": ["payment.dlq"], "error_class": "GatewayUnavailable", "since": "2h"},
                {"booking_id": "0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e", "limit": 10},
            ]
        }
    )

    topics: list[Annotated[str, Field(pattern=_TOPIC)]] = Field(
        default_factory=list,
        max_length=100,
        description="dead-letter topics (payment.dlq) or consumers (payment)",
    )
    booking_id: uuid.UUID | None = None
    event_type: str | None = Field(default=None, max_length=100)
    error_class: str | None = Field(default=None, max_length=200)
    since: str | None = Field(
        default=None, max_length=64, description="ISO time, or a duration ago: 90s, 15m, 2h, 7d"
    )
    until: str | None = Field(default=None, max_length=64)
    partition: int | None = Field(
        default=None, ge=0, le=10_000, description="with offset and one topic: one message"
    )
    offset: int | None = Field(default=None, ge=0, le=2**62)
    limit: int | None = Field(default=50, ge=1, le=10_000)
    max_scan: int = Field(default=100_000, ge=1, le=10_000_000)


class ReplayRequest(DeadLetterFilter):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error_class": "GatewayUnavailable", "since": "2h", "dry_run": True},
                {
                    "topics": ["payment.dlq"],
                    "partition": 0,
                    "offset": 12,
                    "dry_run": False,
                    "plan_id": "3f5a…",
                },
            ]
        }
    )

    dry_run: bool = Field(default=True, description="plan only: what would be replayed")
    plan_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="the dry run's plan_id: replay only while the plan is still that one",
    )
    again: bool = Field(default=False, description="re-drive messages replayed before")
    include_undecodable: bool = False
    rate: float | None = Field(default=None, gt=0, le=10_000, description="messages per second")


def _dlq_query(runtime: RuntimeDep, f: DeadLetterFilter) -> dead_letters.Query:
    try:
        return dead_letters.query_from(
            runtime.catalog,
            utcnow(),
            topics=f.topics,
            booking_id=str(f.booking_id) if f.booking_id else None,
            event_type=f.event_type,
            error_class=f.error_class,
            since=f.since,
            until=f.until,
            limit=f.limit,
            partition=f.partition,
            offset=f.offset,
        )
    except BadInput as exc:
        raise bad_input(exc) from None


@router.get("/dlq", response_model=Envelope[list[Json]])
async def dead_letter_topics(
    request: Request,
    _admin: AdminUser,
    runtime: RuntimeDep,
    sample: Annotated[int, Query(ge=1, le=1_000_000, description="newest messages read")] = 10_000,
) -> Envelope[list[Json]]:
    """Every dead-letter topic: depth, oldest and newest message, counts by error class."""
    async with _reading_dead_letters():
        found = await dead_letters.summarize(
            runtime.catalog, runtime.settings.kafka_bootstrap, sample=sample
        )
    return ok(request, [s.to_json() for s in found])


@router.post("/dlq/messages", response_model=Envelope[Json])
async def dead_letter_messages(
    request: Request, body: DeadLetterFilter, _admin: AdminUser, runtime: RuntimeDep
) -> Envelope[Json]:
    """Dead letters, decoded, with their headers: why, where from, when, how often."""
    query = _dlq_query(runtime, body)
    async with _reading_dead_letters():
        found = await dead_letters.find(
            runtime.catalog,
            runtime.settings.kafka_bootstrap,
            query,
            runtime.schema_ids.codec,
            max_scan=body.max_scan,
        )
    return ok(request, found.to_json())


@router.get(
    "/dlq/messages/{topic}/{partition}/{offset}",
    response_model=Envelope[Json],
    responses=errors(404),
)
async def dead_letter_message(
    request: Request,
    _admin: AdminUser,
    runtime: RuntimeDep,
    topic: Annotated[str, Path(pattern=_TOPIC, description="a dead-letter topic or consumer")],
    partition: Annotated[int, Path(ge=0, le=10_000)],
    offset: Annotated[int, Path(ge=0, le=2**62)],
) -> Envelope[Json]:
    """One dead letter at its position: its failure headers, every header, its decoded event."""
    async with _reading_dead_letters():
        found = await dead_letters.read_at(
            runtime.catalog,
            runtime.settings.kafka_bootstrap,
            topic,
            partition,
            offset,
            runtime.schema_ids.codec,
        )
    if found is None:
        raise not_found("dead letter")
    return ok(request, found.to_json())


@router.post("/dlq/replay", response_model=Envelope[Json], responses=errors(409, 413, 415))
async def replay_dead_letters(
    request: Request, body: ReplayRequest, admin: AdminUser, conn: Db, runtime: RuntimeDep
) -> Envelope[Json]:
    """Plan (``dry_run``, the default) or run a replay of the matching dead letters to their
    origin topics, audited under the admin's name. The dry run's ``plan_id``, sent with the
    replay, makes it run only if the plan is still the one shown (else 409 ``STALE_PLAN``)."""
    query = _dlq_query(runtime, body)
    codec = runtime.schema_ids.codec
    async with _reading_dead_letters():
        found = await dead_letters.find(
            runtime.catalog,
            runtime.settings.kafka_bootstrap,
            query,
            codec,
            max_scan=body.max_scan,
        )
    plan = await replay.plan_replay(
        conn,
        runtime.catalog,
        found.messages,
        codec,
        utcnow(),
        again=body.again,
        include_undecodable=body.include_undecodable,
        with_effects=body.dry_run or body.plan_id is not None,
        policy=saga.Policy.from_settings(runtime.settings),
    )
    if body.dry_run:
        would = sum(1 for p in plan if p.replay)
        return ok(
            request,
            {
                "dry_run": True,
                "plan_id": replay.plan_id(plan),
                "would_replay": would,
                "scanned": found.scanned,
                "truncated": found.truncated or found.limited,
                "plan": [p.to_json() for p in plan],
            },
        )
    try:
        replay.check_plan(plan, body.plan_id)
    except replay.StalePlan as exc:
        raise conflict(str(exc), code="STALE_PLAN", plan_id=exc.current) from None
    producer = AIOKafkaProducer(
        **k.producer_config(runtime.settings.kafka_bootstrap, "erynoa-api-dlq-replay")
    )
    async with _reading_dead_letters():
        await producer.start()
    try:
        report = await replay.replay(
            runtime.pool, producer, plan, operator=admin.sub, again=body.again, rate=body.rate
        )
    finally:
        await producer.stop()
    return ok(request, {"dry_run": False, "plan_id": body.plan_id, **report.to_json()})
