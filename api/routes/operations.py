"""Operators' endpoints beside ``api.routes.admin`` (role admin): dead-letter topics and their
replay, and the dry runs and assessments the operator console shows before an action.

Thin adapters over the operations library (``consumers.dlq``, ``consumers.saga_view``), the
same functions ``erynoa dlq|saga`` call, so the console and the command line agree. Every
change goes through an audited path: a replay is claimed and recorded in ``dlq_replays`` with
the caller's subject as operator; cancel and retry stay ``POST /admin/workflows/{id}``.

A replay must name the dry run it follows (``plan_id``): the plan is computed again, and if
anything in it changed since (a message replayed meanwhile, a saga that moved on) the replay is
refused with 409 and the new plan, so an operator never confirms one plan and runs another.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Path, Query, Request
from pydantic import ConfigDict, Field

from api.deps import AdminUser, Db, RuntimeDep
from api.envelopes import ApiError, Envelope, conflict, errors, not_found, ok, unavailable
from api.routes.admin import WorkflowAction
from api.runtime import Runtime
from api.schemas import Body
from consumers import dlq, saga_view
from erynoa import kafka as k
from erynoa.codec import EventCodec, default_codec
from erynoa.saga import Policy
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog

router = APIRouter(prefix="/admin", tags=["admin"])

# Printable, bounded text: these values only ever filter, but they reach Kafka scans and logs.
_FILTER = r"^[^\x00-\x1f]+$"
_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"
MAX_MESSAGES = 500
MAX_SCAN = 100_000


@cache
def _codec() -> EventCodec:
    return default_codec()


def _policy(settings: Settings) -> Policy:
    # The agents' policy (streams.app): the dry run must judge a saga by the same timeouts.
    return Policy(
        refund_policy=settings.refund_policy,
        payment_action_timeout=timedelta(seconds=settings.payment_action_timeout_seconds),
    )


def _kafka_down(exc: BaseException) -> ApiError:
    return unavailable("kafka", exc)


def _now() -> datetime:
    return datetime.now(UTC)


# --- dead letters -------------------------------------------------------------------------


@router.get(
    "/dead-letters",
    response_model=Envelope[list[dict[str, Any]]],
    responses=errors(401, 403, 429, 500, 503),
)
async def dead_letter_topics(
    request: Request,
    _admin: AdminUser,
    runtime: RuntimeDep,
    sample: Annotated[
        int, Query(ge=1, le=10_000, description="error classes over this many newest messages")
    ] = 1000,
) -> Envelope[list[dict[str, Any]]]:
    """Every dead-letter topic: depth, oldest and newest message, error classes."""
    try:
        summaries = await dlq.summarize(
            runtime.catalog, runtime.settings.kafka_bootstrap, sample=sample
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        raise _kafka_down(exc) from exc
    return ok(request, [s.to_json() for s in summaries])


TopicFilter = Annotated[
    str | None, Query(pattern=_TOPIC, description="a dead-letter topic, or its consumer's name")
]
TextFilter = Annotated[str | None, Query(min_length=1, max_length=255, pattern=_FILTER)]


def _query(
    catalog: TopicCatalog,
    topic: str | None,
    booking_id: str | None,
    event_type: str | None,
    error_class: str | None,
    since: str | None,
    limit: int | None,
) -> dlq.Query:
    try:
        return dlq.Query(
            topics=dlq.resolve_topics(catalog, [topic]) if topic else (),
            booking_id=booking_id,
            event_type=event_type,
            error_class=error_class,
            since=dlq.parse_when(since, _now()) if since else None,
            limit=limit,
        )
    except dlq.DeadLetterError as exc:
        raise ApiError(422, str(exc)) from None


async def _find(runtime: Runtime, query: dlq.Query) -> dlq.ScanResult:
    try:
        return await dlq.find(
            runtime.catalog,
            runtime.settings.kafka_bootstrap,
            query,
            _codec(),
            max_scan=MAX_SCAN,
        )
    except dlq.DeadLetterError as exc:
        raise ApiError(422, str(exc)) from None
    except (KafkaError, OSError, TimeoutError) as exc:
        raise _kafka_down(exc) from exc


@router.get(
    "/dead-letters/messages",
    response_model=Envelope[dict[str, Any]],
    responses=errors(401, 403, 422, 429, 500, 503),
)
async def dead_letters(
    request: Request,
    _admin: AdminUser,
    runtime: RuntimeDep,
    topic: TopicFilter = None,
    booking_id: TextFilter = None,
    event_type: TextFilter = None,
    error_class: TextFilter = None,
    since: Annotated[
        str | None,
        Query(max_length=64, pattern=_FILTER, description="ISO time, or a duration ago: 2h"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_MESSAGES)] = 100,
) -> Envelope[dict[str, Any]]:
    """Dead letters matching every filter given, oldest first, with headers and decoded event."""
    query = _query(runtime.catalog, topic, booking_id, event_type, error_class, since, limit)
    return ok(request, (await _find(runtime, query)).to_json())


@router.get(
    "/dead-letters/messages/{topic}/{partition}/{offset}",
    response_model=Envelope[dict[str, Any]],
    responses=errors(401, 403, 404, 422, 429, 500, 503),
)
async def dead_letter(
    request: Request,
    _admin: AdminUser,
    runtime: RuntimeDep,
    topic: Annotated[str, Path(pattern=_TOPIC)],
    partition: Annotated[int, Path(ge=0, le=10_000)],
    offset: Annotated[int, Path(ge=0, le=2**62)],
) -> Envelope[dict[str, Any]]:
    """One dead letter: its failure headers, every header, and its decoded event."""
    query = _query(runtime.catalog, topic, None, None, None, None, None)
    found = await _find(runtime, query)
    for message in found.messages:
        if message.partition == partition and message.offset == offset:
            return ok(request, message.to_json())
    raise not_found("dead letter")


class ReplayRequest(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"topic": "payment.dlq", "error_class": "GatewayUnavailable", "dry_run": True},
                {
                    "topic": "payment.dlq",
                    "partition": 0,
                    "offset": 12,
                    "dry_run": False,
                    "plan_id": "3f5a…",
                },
            ]
        }
    )

    topic: str | None = Field(default=None, pattern=_TOPIC)
    partition: int | None = Field(default=None, ge=0, le=10_000)
    offset: int | None = Field(default=None, ge=0, le=2**62)
    booking_id: str | None = Field(default=None, min_length=1, max_length=255, pattern=_FILTER)
    event_type: str | None = Field(default=None, min_length=1, max_length=255, pattern=_FILTER)
    error_class: str | None = Field(default=None, min_length=1, max_length=255, pattern=_FILTER)
    limit: int = Field(default=100, ge=1, le=MAX_MESSAGES)
    again: bool = Field(default=False, description="re-drive messages replayed before")
    dry_run: bool = Field(default=True, description="only say what would happen")
    plan_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="the dry run's plan_id; required to replay for real",
    )


def plan_id(plan: list[dlq.PlannedReplay]) -> str:
    """A fingerprint of everything an operator saw in a dry run: which messages, the decision
    for each and why, what was replayed before, and what each would do to its saga."""
    seen = [
        {
            "at": [p.message.topic, p.message.partition, p.message.offset],
            "skip": p.skip,
            "previous": [p.previous.replay_id, p.previous.result] if p.previous else None,
            "effect": p.effect.describe() if p.effect else None,
        }
        for p in plan
    ]
    return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()


@router.post(
    "/dead-letters/replay",
    response_model=Envelope[dict[str, Any]],
    responses=errors(401, 403, 409, 413, 415, 422, 429, 500, 503),
)
async def replay_dead_letters(
    request: Request, body: ReplayRequest, admin: AdminUser, conn: Db, runtime: RuntimeDep
) -> Envelope[dict[str, Any]]:
    """Dry run (the default): the plan and its ``plan_id``. Then replay with that ``plan_id``."""
    if (body.partition is None) != (body.offset is None) or (
        body.partition is not None and body.topic is None
    ):
        raise ApiError(422, "a single message is named by topic, partition and offset together")
    if not body.dry_run and body.plan_id is None:
        raise ApiError(422, "a replay names the dry run it follows: send its plan_id")
    query = _query(
        runtime.catalog,
        body.topic,
        body.booking_id,
        body.event_type,
        body.error_class,
        None,
        None if body.offset is not None else body.limit,
    )
    found = await _find(runtime, query)
    messages = [
        m
        for m in found.messages
        if body.offset is None or (m.partition == body.partition and m.offset == body.offset)
    ]
    plan = await dlq.plan_replay(
        conn,
        runtime.catalog,
        messages,
        _codec(),
        _now(),
        again=body.again,
        with_effects=True,
        policy=_policy(runtime.settings),
    )
    current = plan_id(plan)
    dry = {
        "dry_run": True,
        "plan_id": current,
        "would_replay": sum(1 for p in plan if p.replay),
        "scanned": found.scanned,
        "truncated": found.truncated or found.limited,
        "plan": [p.to_json() for p in plan],
    }
    if body.dry_run:
        return ok(request, dry)
    if body.plan_id != current:
        raise conflict(
            "the dry run is out of date: the messages or their sagas changed since; "
            "review the new plan and confirm it",
            code="STALE_PLAN",
            plan_id=current,
        )
    producer = AIOKafkaProducer(
        **k.producer_config(runtime.settings.kafka_bootstrap, "erynoa-api-dlq-replay")
    )
    try:
        await producer.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        raise _kafka_down(exc) from exc
    try:
        report = await dlq.replay(
            runtime.pool, producer, plan, operator=admin.sub, again=body.again
        )
    finally:
        await producer.stop()
    return ok(request, {"dry_run": False, "plan_id": current, **report.to_json()})


# --- sagas --------------------------------------------------------------------------------

BookingId = Annotated[str, Path(min_length=1, max_length=64, pattern=_FILTER)]


def _booking(booking_id: str) -> str:
    try:
        return saga_view.check_booking_id(booking_id)
    except saga_view.InvalidBookingId as exc:
        raise ApiError(422, str(exc)) from None


@router.get(
    "/workflows/{booking_id}/assessment",
    response_model=Envelope[dict[str, Any]],
    responses=errors(401, 403, 404, 422, 429, 500, 503),
)
async def assess_workflow(
    request: Request, booking_id: BookingId, _admin: AdminUser, conn: Db, runtime: RuntimeDep
) -> Envelope[dict[str, Any]]:
    """What one saga waits for, whether it is stuck and why, and each event's kind
    (step, failure, compensation), from the event log folded by the saga's rules."""
    try:
        timeline = await saga_view.saga_timeline(
            conn, _booking(booking_id), _codec(), _now(), policy=_policy(runtime.settings)
        )
    except saga_view.SagaNotFound:
        raise not_found("workflow") from None
    data = timeline.to_json()
    data.pop("state", None)  # the fold's internals: the fields above say what matters
    return ok(request, data)


@router.post(
    "/workflows/{booking_id}/dry-run",
    response_model=Envelope[dict[str, Any]],
    responses=errors(401, 403, 404, 413, 415, 422, 429, 500, 503),
)
async def dry_run_workflow_action(
    request: Request,
    booking_id: BookingId,
    body: WorkflowAction,
    admin: AdminUser,
    conn: Db,
    runtime: RuntimeDep,
) -> Envelope[dict[str, Any]]:
    """What ``POST /admin/workflows/{id}`` would publish for this action, and the saga's
    status before and after; changes nothing."""
    booking = _booking(booking_id)
    policy = _policy(runtime.settings)
    try:
        if body.action == "cancel":
            result = await saga_view.cancel_saga(
                conn,
                None,
                booking,
                operator=admin.sub,
                reason=body.reason or "cancelled by an operator",
                codec=_codec(),
                now=_now(),
                dry_run=True,
                policy=policy,
            )
        else:
            result = await saga_view.retry_saga(
                conn,
                None,
                booking,
                operator=admin.sub,
                step=body.step,
                codec=_codec(),
                now=_now(),
                dry_run=True,
                policy=policy,
            )
    except saga_view.SagaNotFound:
        raise not_found("workflow") from None
    return ok(request, result.to_json())
