"""Bookings: create, read, list, and the three actions (accept, reject, cancel).

Every change is one event on Kafka and an answer of ``202`` with the seed's body; the saga's
agents do the work and the materializer folds their events into the read model the GETs query.

What a 202 guarantees: the change takes effect exactly once, whatever fails after it. Create,
accept, reject and cancel write their rows and the event (encoded, its id fixed) into the
``api_outbox`` table in ONE transaction, and answer 202 only after its COMMIT. The event is
published after that, off the request's path; if Kafka is down or the process dies first, the
outbox relay of any API process publishes it later (``api.outbox``), with the same event id,
which consumers deduplicate. So Kafka being down does not refuse these requests.

- Create writes the booking's first read-model row (the pure fold of ``BookingRequested``, so a
  poll right after the 202 sees ``requested``) with the event, in one statement. With an
  ``Idempotency-Key`` the same statement claims the key first; a repeated key (even after a
  lost answer) gets the same booking and writes and publishes nothing. The booking id and event
  id are derived from (customer, key).
- Accept/reject: the first answer is the answer (``provider_answers``); the same answer again is
  a 202 with nothing new, the other a 409. The answer's time is PostgreSQL's (``submitted_at``),
  the deadline is checked against PostgreSQL's ``now()`` in the statement that records it, and
  ``ProviderAnswerSubmitted.occurred_at`` is that ``submitted_at``: one clock.
- Cancel is recorded once per booking (``booking_cancellations``, event id derived from the
  booking): a repeated cancel, by anyone, answers 202 and publishes nothing.

What a 503 means: PostgreSQL could not be reached before anything was written, or refused the
write (rolled back): nothing changed and nothing is published, so try again. If the connection
is lost while the write commits, the outcome is unknown and the 503 says so
(``OUTCOME_UNKNOWN``, with the booking's poll URL): a retry with the same Idempotency-Key, a
repeated answer or cancel is safe; a create without a key should poll first.

Who may see a booking: its customer, its service's provider, and admins; anyone else gets 404
(not 403), so booking ids cannot be probed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from api.auth import Principal
from api.deps import Context, CurrentUser, CustomerUser, Db, Outbox, RuntimeDep, connection
from api.envelopes import (
    ACCEPTED_RESPONSE,
    ApiError,
    Envelope,
    Page,
    accepted,
    conflict,
    errors,
    forbidden,
    not_found,
    ok,
    outcome_unknown,
    unavailable,
    utcnow,
)
from api.outbox import ApiOutbox, OutboxEntry, queue, queue_once
from api.readmodel import (
    BOOKING_COLUMNS,
    Listing,
    claim_key_and_insert_initial_booking,
    fetch_booking,
    fetch_history,
    insert_initial_booking,
)
from api.runtime import EventContext, ServiceTerms
from api.schemas import Body, Money, Notes, Paging, Reason
from erynoa import events as ev
from erynoa import saga
from erynoa.saga import TERMINAL, BookingState, Hold, Payment, Status

# Every route needs a verified caller (401) and PostgreSQL and Redis (503).
router = APIRouter(prefix="/bookings", tags=["bookings"], responses=errors(401, 503))

# How far ahead a slot may be booked; also keeps slot arithmetic far from datetime's limits.
BOOKING_HORIZON = timedelta(days=2 * 365)
# How soon the saga usually reacts to an accept, reject or cancel (the 202's estimate).
REACTION_ESTIMATE = timedelta(seconds=10)
# uuid5 namespace for booking ids derived from (customer, Idempotency-Key). Never change it.
_BOOKING_ID_NAMESPACE = uuid.UUID("0d6c4f3e-2b1a-5e9d-8c7b-6a5f4e3d2c1b")


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 has no UTC equivalent
        raise ValueError("is out of range") from None


SlotStart = Annotated[AwareDatetime, AfterValidator(_to_utc)]
PaymentMethod = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        pattern=r"^[\x21-\x7e]{1,200}$",
        description="Repeat a POST with the same key to get the same booking back (<= 200 chars)",
    ),
]


def poll_path(booking_id: object) -> str:
    return f"/api/v1/bookings/{booking_id}"


def action_accepted(booking_id: uuid.UUID) -> JSONResponse:
    """The 202 of an accept, reject or cancel: poll the booking for the saga's reaction."""
    return accepted(poll_path(booking_id), str(booking_id), utcnow() + REACTION_ESTIMATE)


class BookingCreate(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "service_id": "5e3f2a4b-7c1d-4e8f-9a0b-1c2d3e4f5a6b",
                    "slot_start": "2026-02-03T14:30:00+01:00",
                    "payment_method": "pm_card_visa",
                    "notes": "Second floor, ring twice.",
                }
            ]
        }
    )

    service_id: uuid.UUID
    slot_start: SlotStart = Field(description="RFC 3339 with a UTC offset; in the future")
    payment_method: PaymentMethod = Field(description="the payment method to authorize")
    notes: Notes | None = Field(default=None, description="for the provider, <= 2000 characters")


class ReasonBody(Body):
    """An optional reason, kept with the event (shown to the other party)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "Fully booked that day"}]})

    reason: Reason | None = None


class HistoryEntry(BaseModel):
    event_id: uuid.UUID
    event_type: str
    producer: str
    occurred_at: datetime


class BookingSummary(BaseModel):
    id: uuid.UUID
    status: Status
    service_id: uuid.UUID
    customer_id: str
    provider_id: str
    slot_start: datetime
    slot_end: datetime
    price: Money
    payment_method: str
    notes: str | None
    hold: Hold = Field(description="the capacity hold: how it ended, for a terminal booking")
    payment: Payment = Field(description="the payment: how it ended, for a terminal booking")
    payment_id: str | None
    provider_deadline_at: datetime | None
    failure_reason: str | None
    requested_at: datetime
    updated_at: datetime


BOOKING_EXAMPLE: dict[str, Any] = {
    "id": "0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e",
    "status": "awaiting_provider",
    "service_id": "5e3f2a4b-7c1d-4e8f-9a0b-1c2d3e4f5a6b",
    "customer_id": "alice",
    "provider_id": "bob",
    "slot_start": "2026-02-03T13:30:00Z",
    "slot_end": "2026-02-03T14:15:00Z",
    "price": {"amount": 4500, "currency": "EUR"},
    "payment_method": "pm_card_visa",
    "notes": "Second floor, ring twice.",
    "hold": "held",
    "payment": "authorized",
    "payment_id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    "provider_deadline_at": "2026-01-29T10:00:05Z",
    "failure_reason": None,
    "requested_at": "2026-01-28T10:00:00Z",
    "updated_at": "2026-01-28T10:00:05Z",
    "history": [
        {
            "event_id": "6f1c0b8e-3c57-4a0e-9d55-4a1e2b7c9f10",
            "event_type": "BookingRequested",
            "producer": "api",
            "occurred_at": "2026-01-28T10:00:00Z",
        }
    ],
}


class Booking(BookingSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [BOOKING_EXAMPLE]})

    history: list[HistoryEntry] = Field(description="the saga's events, oldest first")


def booking_summary(row: asyncpg.Record) -> BookingSummary:
    # The columns carry the fields' names, but for the price's two.
    price = Money(amount=row["amount_minor"], currency=row["currency"].strip())
    return BookingSummary.model_validate({**row, "price": price})


_LISTING = Listing(
    booking_summary, BOOKING_COLUMNS, "bookings b", order_by="b.requested_at DESC, b.id"
)


def can_see(row: asyncpg.Record, user: Principal) -> bool:
    return user.sub in (row["customer_id"], row["provider_id"]) or user.is_admin


async def visible_booking(
    conn: asyncpg.Connection, booking_id: uuid.UUID, user: Principal
) -> asyncpg.Record:
    """The booking's row if ``user`` may see it; 404 otherwise (existence is not revealed)."""
    row = await fetch_booking(conn, str(booking_id))
    if row is None or not can_see(row, user):
        raise not_found("booking")
    return row


def folded_state(row: asyncpg.Record) -> BookingState | None:
    """The materializer's fold of the booking, once it has seen the booking's events."""
    state = row["state"]
    if not isinstance(state, dict):
        return None
    try:
        return BookingState.from_json(state)
    except (KeyError, TypeError, ValueError):
        return None


def _request_hash(body: BookingCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@router.post(
    "",
    status_code=202,
    response_model=None,
    responses={
        **ACCEPTED_RESPONSE,
        **errors(403, 404, 413, 415),
    },
)
async def create_booking(
    request: Request,
    body: BookingCreate,
    user: CustomerUser,
    runtime: RuntimeDep,
    ctx: Context,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Request a booking of a service's slot; poll the returned URL for its outcome."""
    now = utcnow()
    slot_start = body.slot_start  # already UTC
    if slot_start <= now:
        raise _invalid("body.slot_start", "must be in the future")
    if slot_start > now + BOOKING_HORIZON:
        raise _invalid("body.slot_start", "must be within two years")

    async def load(service_id: uuid.UUID) -> ServiceTerms | None:
        async with connection(runtime) as conn:
            return await fetch_service_terms(conn, service_id)

    service = await runtime.services.get(body.service_id, load)
    if service is None:
        raise not_found("service")
    if not service.active:
        raise ApiError(422, "the service is no longer offered", code="SERVICE_INACTIVE")
    if service.provider_id == user.sub:
        # Booking yourself and accepting would confirm a booking with no customer behind it
        # (fake reviews, capacity taken from real customers).
        raise forbidden("a provider cannot book its own service")

    if idempotency_key is not None:
        booking_id = str(uuid.uuid5(_BOOKING_ID_NAMESPACE, f"{user.sub}\x1f{idempotency_key}"))
        event_id: str | None = ev.derived_event_id(booking_id, "api.booking-requested")
    else:
        booking_id, event_id = str(uuid.uuid4()), None
    event = ev.make(
        ev.BookingRequested,
        booking_id=booking_id,
        producer="api",
        event_id=event_id,
        occurred_at=now,
        correlation_id=ctx.request_id,
        customer_id=user.sub,
        service_id=str(body.service_id),
        provider_id=service.provider_id,
        slot_start=slot_start,
        slot_end=slot_start + timedelta(minutes=service.duration_minutes),
        price=ev.Money(service.price_amount_minor, service.price_currency),
        payment_method=body.payment_method,
        notes=body.notes,
        response_deadline_seconds=service.response_deadline_seconds,
        idempotency_key=idempotency_key,
    )
    estimate = now + timedelta(seconds=service.response_deadline_seconds)
    initial = saga.start(event)
    requested = OutboxEntry.of(event, runtime.outbox.codec, ctx.headers)
    poll = poll_path(booking_id)
    if idempotency_key is None:
        retry = f"poll {poll} (404: it was not) before asking again"
    else:
        retry = "a retry with the same Idempotency-Key is safe"

    # The connection only from here: it is the scarce resource (the pool's size bounds the
    # requests at this point at once). One statement, so one implicit transaction.
    async with connection(runtime) as conn:
        if idempotency_key is None:
            async with committing(retry, booking_id=booking_id, poll_url=poll):
                await insert_initial_booking(conn, initial, requested)
        else:
            request_hash = _request_hash(body)
            async with committing(retry, booking_id=booking_id, poll_url=poll):
                claimed = await claim_key_and_insert_initial_booking(
                    conn, initial, requested, key=idempotency_key, request_hash=request_hash
                )
            if not claimed:
                return await _replay(
                    conn,
                    user,
                    idempotency_key,
                    request_hash,
                    estimate,
                    runtime.settings.idempotency_key_ttl_seconds,
                )
    runtime.outbox.publish_soon(requested)
    return accepted(poll, booking_id, estimate)


@asynccontextmanager
async def committing(retry: str, **about: str) -> AsyncIterator[None]:
    """Around the statements that commit a change: PostgreSQL failing there is a 503 that
    says what is known. An error the server answered with means the transaction rolled back
    (nothing changed, nothing will be published); a lost connection leaves the COMMIT's fate
    unknown, so the client is told how to find out (``retry``)."""
    try:
        yield
    except (
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,  # the server shutting down mid-request
        asyncpg.InterfaceError,
        OSError,
        TimeoutError,
    ) as exc:
        raise outcome_unknown("postgres", exc, retry, **about) from exc
    except asyncpg.PostgresError as exc:
        raise unavailable("postgres", exc) from exc


async def fetch_service_terms(
    conn: asyncpg.Connection, service_id: uuid.UUID
) -> ServiceTerms | None:
    row = await conn.fetchrow(
        "SELECT provider_id, price_amount_minor, price_currency, duration_minutes, "
        "response_deadline_seconds, active FROM services WHERE id = $1",
        service_id,
    )
    if row is None:
        return None
    return ServiceTerms(
        provider_id=row["provider_id"],
        price_amount_minor=row["price_amount_minor"],
        price_currency=row["price_currency"].strip(),
        duration_minutes=row["duration_minutes"],
        response_deadline_seconds=row["response_deadline_seconds"],
        active=row["active"],
    )


async def _replay(
    conn: asyncpg.Connection,
    user: Principal,
    key: str,
    request_hash: str,
    estimate: datetime,
    ttl_seconds: int,
) -> JSONResponse:
    """The answer to a repeated ``Idempotency-Key``: the same booking, nothing published; or
    422 once the key has expired (its row is old, or already deleted while its booking stays)."""
    existing = await conn.fetchrow(
        "SELECT request_hash, booking_id, created_at < now() - make_interval(secs => $3) "
        "AS expired FROM idempotency_keys WHERE customer_id = $1 AND key = $2",
        user.sub,
        key,
        float(ttl_seconds),
    )
    if existing is None or existing["expired"]:
        raise ApiError(
            422,
            f"this Idempotency-Key expired (keys are kept for {ttl_seconds} seconds); "
            "send a new key for a new request",
            code="IDEMPOTENCY_KEY_EXPIRED",
        )
    if existing["request_hash"] != request_hash:
        raise ApiError(
            422,
            "this Idempotency-Key was already used for a different request",
            code="IDEMPOTENCY_KEY_REUSED",
        )
    booking_id = str(existing["booking_id"])
    return accepted(poll_path(booking_id), booking_id, estimate)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, "Invalid input", details=[{"field": field, "message": message, "type": "value_error"}]
    )


@router.get("/{booking_id}", response_model=Envelope[Booking], responses=errors(404))
async def get_booking(
    request: Request, booking_id: uuid.UUID, user: CurrentUser, conn: Db
) -> Envelope[Booking]:
    """A booking's status, price, slot, compensation outcome and event history."""
    row = await visible_booking(conn, booking_id, user)
    history = [
        HistoryEntry.model_validate(dict(h)) for h in await fetch_history(conn, str(booking_id))
    ]
    booking = Booking(**booking_summary(row).model_dump(), history=history)
    return ok(request, booking)


@router.get("", response_model=Page[BookingSummary], responses=errors(403))
async def list_bookings(
    request: Request,
    user: CurrentUser,
    conn: Db,
    paging: Paging,
    as_: Annotated[
        Literal["customer", "provider", "all"],
        Query(
            alias="as",
            description="customer: the caller's own bookings; provider: incoming bookings for "
            "the caller's services; all: every booking (admin)",
        ),
    ] = "customer",
    status: Annotated[Status | None, Query()] = None,
) -> Page[BookingSummary]:
    """The caller's bookings (or a provider's incoming ones), newest first."""
    conditions: list[str] = ["$1::text IS NULL OR b.status = $1"]
    params: list[object] = [status.value if status else None]
    if as_ == "customer":
        params.append(user.sub)
        conditions.append("b.customer_id = $2")
    elif as_ == "provider":
        if not user.has("provider", "admin"):
            raise forbidden("listing incoming bookings needs the role provider")
        params.append(user.sub)
        conditions.append("b.provider_id = $2")
    elif not user.is_admin:
        raise forbidden("listing every booking needs the role admin")
    return await _LISTING.page(request, conn, paging, where=conditions, params=params)


@dataclass(frozen=True)
class BookingAction:
    """What accept, reject and cancel each act on: the booking, who asks, why, and where the
    change is written and queued."""

    booking_id: uuid.UUID
    user: Principal
    conn: asyncpg.Connection
    outbox: ApiOutbox
    ctx: EventContext
    reason: str | None


async def _booking_action(
    booking_id: uuid.UUID,
    user: CurrentUser,
    conn: Db,
    outbox: Outbox,
    ctx: Context,
    body: ReasonBody | None = None,
) -> BookingAction:
    return BookingAction(booking_id, user, conn, outbox, ctx, body.reason if body else None)


ActionRequest = Annotated[BookingAction, Depends(_booking_action)]


async def _answer(decision: ev.Decision, action: BookingAction) -> JSONResponse:
    booking_id, user, conn, outbox = action.booking_id, action.user, action.conn, action.outbox
    row = await visible_booking(conn, booking_id, user)
    if row["provider_id"] != user.sub or not user.has("provider"):
        raise forbidden("only the service's provider may accept or reject the booking")
    if row["customer_id"] == user.sub:
        raise forbidden("a provider cannot answer a booking of its own")
    state = folded_state(row)
    status = Status(row["status"])
    awaiting = saga.can_answer(state) if state is not None else status == Status.AWAITING_PROVIDER
    deadline = row["provider_deadline_at"]
    reason = action.reason
    event_id = ev.derived_event_id(str(booking_id), "api.provider-answer")
    retry = "repeating the same answer is safe (it is taken once)"
    async with committing(retry, booking_id=str(booking_id)), conn.transaction():
        previous = await _answer_given(conn, booking_id)
        if previous is not None:
            return _answered_before(decision, previous, booking_id)
        # The deadline row is the provider-response agent's: it times a booking out under a
        # FOR UPDATE lock on it, after looking for an answer. Sharing that lock makes the two
        # wait for each other: either this answer commits first and the agent sees it, or the
        # timeout commits first and the answer is refused here, never both taken. A pending
        # row is also the truth about waiting: the read model may lag behind it.
        timer = await conn.fetchrow(
            "SELECT status, deadline_at FROM provider_deadlines WHERE booking_id = $1 FOR SHARE",
            booking_id,
        )
        if not awaiting and (timer is None or timer["status"] != "pending"):
            raise conflict(
                f"the booking is {status.value}, not awaiting the provider's answer",
                code="NOT_AWAITING_PROVIDER",
                status=status.value,
            )
        if timer is not None:
            if timer["status"] == "timed_out":
                raise conflict(
                    "the provider's deadline has passed",
                    code="DEADLINE_PASSED",
                    deadline_at=timer["deadline_at"].astimezone(UTC).isoformat(),
                )
            if timer["status"] != "pending":
                raise conflict(
                    f"the booking is no longer awaiting the provider's answer ({timer['status']})",
                    code="NOT_AWAITING_PROVIDER",
                    status=timer["status"],
                )
            deadline = timer["deadline_at"]
        # One clock judges the answer: PostgreSQL's. The row's submitted_at (DEFAULT now(), the
        # transaction's time) is compared with the deadline in the same statement, and it is
        # the event's occurred_at, which the provider_response agent holds against its deadline.
        answered = await conn.fetchrow(
            """WITH answer AS (
                   INSERT INTO provider_answers
                       (booking_id, provider_id, decision, reason, event_id)
                   SELECT $1, $2, $3, $4, $5 WHERE $6::timestamptz IS NULL OR now() < $6
                   ON CONFLICT DO NOTHING RETURNING submitted_at
               )
               SELECT (SELECT submitted_at FROM answer) AS submitted_at,
                      $6::timestamptz IS NOT NULL AND now() >= $6 AS late""",
            booking_id,
            user.sub,
            decision,
            reason,
            event_id,
            deadline,
        )
        if answered["late"]:
            raise conflict(
                "the provider's deadline has passed",
                code="DEADLINE_PASSED",
                deadline_at=deadline.astimezone(UTC).isoformat(),
            )
        if answered["submitted_at"] is None:
            # A concurrent answer won the race (its row is committed now): judged like a repeat.
            winner = await _answer_given(conn, booking_id)
            return _answered_before(decision, winner, booking_id)
        event = ev.make(
            ev.ProviderAnswerSubmitted,
            booking_id=str(booking_id),
            producer="api",
            event_id=event_id,
            occurred_at=answered["submitted_at"],
            correlation_id=row["correlation_id"],
            provider_id=user.sub,
            decision=decision,
            reason=reason,
        )
        submitted = OutboxEntry.of(event, outbox.codec, action.ctx.headers)
        await queue(conn, submitted)
    outbox.publish_soon(submitted)
    return action_accepted(booking_id)


def _answered_before(
    decision: ev.Decision, given: str | None, booking_id: uuid.UUID
) -> JSONResponse:
    """The booking has an answer already: the same one again is a retry (accepted, with
    nothing more to publish), the other one a conflict."""
    if given == decision:
        return action_accepted(booking_id)
    raise conflict(
        f"the provider already answered {given!r}", code="ALREADY_ANSWERED", decision=given
    )


async def _answer_given(conn: asyncpg.Connection, booking_id: uuid.UUID) -> str | None:
    decision: str | None = await conn.fetchval(
        "SELECT decision FROM provider_answers WHERE booking_id = $1", booking_id
    )
    return decision


_ACTION_RESPONSES = {
    **ACCEPTED_RESPONSE,
    **errors(403, 404, 409, 413, 415),
}


@router.post(
    "/{booking_id}/accept", status_code=202, response_model=None, responses=_ACTION_RESPONSES
)
async def accept_booking(action: ActionRequest) -> JSONResponse:
    """The service's provider accepts the booking (while it awaits their answer)."""
    return await _answer("accept", action)


@router.post(
    "/{booking_id}/reject", status_code=202, response_model=None, responses=_ACTION_RESPONSES
)
async def reject_booking(action: ActionRequest) -> JSONResponse:
    """The service's provider rejects the booking (while it awaits their answer)."""
    return await _answer("reject", action)


@router.post(
    "/{booking_id}/cancel", status_code=202, response_model=None, responses=_ACTION_RESPONSES
)
async def cancel_booking(action: ActionRequest) -> JSONResponse:
    """Cancel the booking (its customer or an admin) unless it already ended."""
    user = action.user
    row = await visible_booking(action.conn, action.booking_id, user)
    is_customer = row["customer_id"] == user.sub and user.has("customer")
    if not (is_customer or user.is_admin):
        raise forbidden("only the booking's customer or an admin may cancel it")
    await request_cancellation(
        action.conn,
        action.outbox,
        row,
        requested_by=user.sub,
        role="customer" if is_customer else "admin",
        reason=action.reason,
        ctx=action.ctx,
    )
    return action_accepted(action.booking_id)


async def request_cancellation(
    conn: asyncpg.Connection,
    outbox: ApiOutbox,
    row: asyncpg.Record,
    *,
    requested_by: str,
    role: ev.RequesterRole,
    reason: str | None,
    ctx: EventContext,
) -> None:
    """Record the cancel and queue ``BookingCancellationRequested``, once per booking: a
    repeated cancel (whoever sends it) is accepted and publishes nothing. A booking that
    already ended without a cancel recorded here answers 409."""
    booking_id = str(row["id"])
    state = folded_state(row)
    status = Status(row["status"])
    allowed = saga.can_cancel(state) if state is not None else status not in TERMINAL
    if not allowed:
        recorded = await conn.fetchval(
            "SELECT EXISTS (SELECT FROM booking_cancellations WHERE booking_id = $1)", booking_id
        )
        if recorded:
            return
        raise conflict(
            f"the booking already ended as {status.value}",
            code="BOOKING_ENDED",
            status=status.value,
        )
    event = ev.make(
        ev.BookingCancellationRequested,
        booking_id=booking_id,
        producer="api",
        event_id=ev.derived_event_id(booking_id, "api.cancellation-requested"),
        correlation_id=row["correlation_id"],
        requested_by=requested_by,
        requested_by_role=role,
        reason=reason,
    )
    cancellation = OutboxEntry.of(event, outbox.codec, ctx.headers)
    retry = "repeating the cancel is safe (a booking is cancelled once)"
    async with committing(retry, booking_id=booking_id):
        queued = await queue_once(
            conn,
            cancellation,
            """INSERT INTO booking_cancellations
                   (booking_id, event_id, requested_by, requested_by_role, reason)
               VALUES ($2, $1, $5, $6, $7) ON CONFLICT (booking_id) DO NOTHING
               RETURNING booking_id""",
            requested_by,
            role,
            reason,
        )
    if queued:
        outbox.publish_soon(cancellation)
