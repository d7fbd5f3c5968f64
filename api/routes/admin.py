"""Operators' endpoints (role admin): statistics and the sagas ("workflows") in flight.

A saga is in flight while its booking has no outcome yet, or has one but a compensation is
still pending (money still held or to refund, a hold not yet released) — the same rules the
agents follow (``erynoa.saga``). It is *stuck* when its provider deadline passed without a
timeout, or nothing happened to it for ``stuck_after_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import kafka_stats
from api.deps import AdminUser, Context, Db, Outbox, Publisher, RuntimeDep
from api.envelopes import (
    ACCEPTED_RESPONSE,
    Envelope,
    Page,
    accepted,
    errors,
    not_found,
    ok,
    page,
    utcnow,
)
from api.readmodel import BOOKING_COLUMNS, fetch_booking, fetch_history, fetch_page
from api.routes.bookings import (
    BOOKING_EXAMPLE,
    REACTION_ESTIMATE,
    BookingSummary,
    booking_summary,
    poll_path,
    request_cancellation,
)
from api.schemas import Body, Paging, Reason
from erynoa import events as ev
from erynoa import saga
from erynoa.saga import MONEY_HELD, OUTCOMES, TERMINAL, Status

router = APIRouter(prefix="/admin", tags=["admin"])
log = logging.getLogger("erynoa.api.admin")

KAFKA_STATS_TIMEOUT_SECONDS = 5.0
Step = Literal["all", saga.Agent]


def _quoted(values: Iterable[str]) -> str:
    # Only our own enum values are ever quoted here, never client input.
    return ", ".join(f"'{v}'" for v in sorted(values))


def in_flight_sql(refund_policy: str) -> str:
    """SQL true for a booking whose saga still has work to do (see the module docstring)."""
    refund_pending = (
        " OR (b.status = 'cancelled' AND b.payment = 'captured')" if refund_policy == "full" else ""
    )
    return (
        f"(b.status NOT IN ({_quoted(OUTCOMES)})"
        f" OR (b.status IN ({_quoted(TERMINAL)})"
        f" AND (b.hold IN ('held', 'converted') OR b.payment IN ({_quoted(MONEY_HELD)})))"
        f" OR (b.status = 'confirmed' AND b.hold = 'held'){refund_pending})"
    )


STUCK_SQL = (
    "COALESCE(b.status = 'awaiting_provider' AND b.provider_deadline_at < now(), false)"
    " OR b.updated_at < now() - make_interval(secs => {param})"
)


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


class WorkflowSummary(BookingSummary):
    stuck: bool
    age_seconds: float


class TimelineEntry(BaseModel):
    event_id: uuid.UUID
    event_type: str
    producer: str
    occurred_at: datetime
    since_previous_ms: float | None = Field(description="time since the previous event")
    topic: str
    partition: int
    offset: int


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
                        }
                    ],
                }
            ]
        }
    )

    in_flight: bool
    timeline: list[TimelineEntry]


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


@router.get("/stats", response_model=Envelope[Stats], responses=errors(401, 403, 429, 500, 503))
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


@router.get(
    "/workflows",
    response_model=Page[WorkflowSummary],
    responses=errors(401, 403, 422, 429, 500, 503),
)
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
        int, Query(ge=1, le=10**7, description="idle for this long counts as stuck")
    ] = 300,
    provider_id: Annotated[
        str | None, Query(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
    ] = None,
    customer_id: Annotated[
        str | None, Query(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
    ] = None,
) -> Page[WorkflowSummary]:
    """Sagas in flight, oldest first; filter by status, age, stuck, provider or customer."""
    stuck_sql = "(" + STUCK_SQL.format(param="$1") + ")"
    conditions = [
        in_flight_sql(runtime.settings.refund_policy),
        "($2::text IS NULL OR b.status = $2)",
        "b.requested_at <= now() - make_interval(secs => $3)",
        "($4::text IS NULL OR b.provider_id = $4)",
        "($5::text IS NULL OR b.customer_id = $5)",
        # Always present (even when not filtering) so every parameter is used in the count.
        f"($6::bool IS FALSE OR {stuck_sql})",
    ]
    rows, total = await fetch_page(
        conn,
        columns=f"{BOOKING_COLUMNS}, {stuck_sql} AS stuck, "
        "extract(epoch FROM now() - b.requested_at)::float8 AS age_seconds",
        from_where="FROM bookings b WHERE " + " AND ".join(conditions),
        order_by="b.requested_at, b.id",
        params=[
            float(stuck_after_seconds),
            status.value if status else None,
            float(min_age_seconds),
            provider_id,
            customer_id,
            stuck,
        ],
        paging=paging,
    )
    items = [
        WorkflowSummary(
            **booking_summary(r).model_dump(), stuck=r["stuck"], age_seconds=r["age_seconds"]
        )
        for r in rows
    ]
    return page(request, items, page=paging.page, per_page=paging.per_page, total=total)


@router.get(
    "/workflows/{booking_id}",
    response_model=Envelope[Workflow],
    responses=errors(401, 403, 404, 422, 429, 500, 503),
)
async def get_workflow(
    request: Request, booking_id: uuid.UUID, _admin: AdminUser, conn: Db, runtime: RuntimeDep
) -> Envelope[Workflow]:
    """One saga's timeline: each event, who produced it, when, and the time since the last."""
    row = await fetch_booking(conn, str(booking_id))
    if row is None:
        raise not_found("workflow")
    in_flight = await conn.fetchval(
        f"SELECT {in_flight_sql(runtime.settings.refund_policy)} FROM bookings b WHERE b.id = $1",
        booking_id,
    )
    timeline: list[TimelineEntry] = []
    previous: datetime | None = None
    for h in await fetch_history(conn, str(booking_id)):
        gap = (h["occurred_at"] - previous).total_seconds() * 1000 if previous else None
        timeline.append(
            TimelineEntry(
                event_id=h["event_id"],
                event_type=h["event_type"],
                producer=h["producer"],
                occurred_at=h["occurred_at"],
                since_previous_ms=round(gap, 3) if gap is not None else None,
                topic=h["topic"],
                partition=h["partition"],
                offset=h["offset"],
            )
        )
        previous = h["occurred_at"]
    workflow = Workflow(
        **booking_summary(row).model_dump(), in_flight=bool(in_flight), timeline=timeline
    )
    return ok(request, workflow)


@router.post(
    "/workflows/{booking_id}",
    status_code=202,
    response_model=None,
    responses={**ACCEPTED_RESPONSE, **errors(401, 403, 404, 409, 413, 415, 422, 429, 500, 503)},
)
async def act_on_workflow(
    booking_id: uuid.UUID,
    body: WorkflowAction,
    admin: AdminUser,
    conn: Db,
    kafka: Publisher,
    outbox: Outbox,
    ctx: Context,
) -> JSONResponse:
    """Cancel a saga (compensations run) or retry one of its steps."""
    row = await fetch_booking(conn, str(booking_id))
    if row is None:
        raise not_found("workflow")
    if body.action == "cancel":
        await request_cancellation(
            conn,
            outbox,
            row,
            requested_by=admin.sub,
            role="operator",
            reason=body.reason or "cancelled by an operator",
            ctx=ctx,
        )
    else:
        event = ev.make(
            ev.SagaRetryRequested,
            booking_id=str(booking_id),
            producer="api",
            correlation_id=row["correlation_id"],
            step=body.step,
            requested_by=admin.sub,
        )
        await kafka.publish(event, ctx)
    return accepted(poll_path(booking_id), str(booking_id), utcnow() + REACTION_ESTIMATE)
