"""Saga visibility for operators: one booking's timeline, the sagas in flight, the stuck ones,
and the two things an operator may do to a saga (cancel it, retry a step).

A library: functions take their connections and return frozen dataclasses (``to_json`` for
machines), so ``erynoa saga ...`` (``cli.ops``) and the admin API serve the same data.
Nothing here prints. Try it on a running stack::

    erynoa saga show <booking_id>
    erynoa saga ls --stuck
    erynoa saga cancel <booking_id> --reason "customer called" --dry-run

The event log (``booking_events``) is the truth: a timeline is the log in fold order
(``occurred_at``, then ``event_id``, as the materializer folds it) and the state is its fold with
``erynoa.saga``. Where a saga waits comes from the same rules the agents follow
(``saga.next_actions`` of every agent on the current state), so this view can never disagree
with what the agents would do next.

A saga is *in flight* while its booking has no outcome, or has one while a compensation or the
hold's conversion is still due (the admin API's rule). It is *stuck* when the provider deadline
passed without an outcome, or when nothing happened for longer than its step is expected to take
(``Expectations``): each step is a handful of Kafka hops and one external call, so a minute
without an event means an agent is down, lagging, or dead-lettered the booking's message.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from erynoa import events as ev
from erynoa import saga
from erynoa.codec import EventCodec, UndecodableEvent
from erynoa.kafka import EventPublisher, Published
from erynoa.saga import Action, BookingState, Hold, Payment, Policy, Status

AGENTS: tuple[saga.Agent, ...] = ("reservation", "payment", "notification", "provider-response")
"""Every saga agent, in the order of the steps they own."""

RETRY_STEPS: tuple[str, ...] = ("all", *AGENTS)
"""What ``SagaRetryRequested.step`` may name: one agent's step, or every agent (the admin API's
values too)."""

OPERATOR_PRODUCER = "operator"
"""The ``producer`` of events an operator asks for from the command line."""

_ENVELOPE = frozenset(
    {"event_id", "booking_id", "occurred_at", "correlation_id", "causation_id", "producer"}
)
_ACTION_TYPES: tuple[type, ...] = typing.get_args(Action)

EntryKind = Literal["request", "step", "failure", "compensation", "notification"]

# Which events start compensations, and which are compensations: the timeline marks both.
_FAILURES = frozenset(
    {
        "ReservationRejected",
        "PaymentFailed",
        "PaymentCaptureFailed",
        "ProviderRejected",
        "ProviderTimedOut",
        "NotificationFailed",
    }
)
_COMPENSATIONS = frozenset({"ReservationReleased", "PaymentVoided", "PaymentRefunded"})
_REQUESTS = frozenset(
    {
        "BookingRequested",
        "BookingCancellationRequested",
        "SagaRetryRequested",
        "ProviderAnswerSubmitted",
        "StripeEventReceived",
    }
)


DEFAULT_POLICY = Policy()


class SagaNotFound(LookupError):
    """No event and no read-model row for this booking id."""


class InvalidBookingId(ValueError):
    """Booking ids are uuids; anything else cannot name a booking."""


def check_booking_id(booking_id: str) -> str:
    """The booking id in canonical form (lower-case uuid); ``InvalidBookingId`` otherwise."""
    try:
        return str(uuid.UUID(booking_id.strip()))
    except ValueError:
        raise InvalidBookingId(f"{booking_id!r} is not a booking id (a uuid)") from None


# --- expectations and assessment (pure) -------------------------------------------------


@dataclass(frozen=True)
class Expectations:
    """How long a saga may sit in a step without an event before it counts as stuck."""

    requested: timedelta = timedelta(seconds=60)  # reservation holds or rejects
    reserved: timedelta = timedelta(seconds=60)  # payment authorizes or fails
    # The customer must finish 3-D Secure; Stripe's webhook resolves it, or it expires.
    payment_action_required: timedelta = timedelta(hours=1)
    # Authorized: notification tells the provider and provider-response starts the deadline.
    # Once the deadline runs, the provider deadline is the expectation instead.
    awaiting_provider: timedelta = timedelta(seconds=60)
    # An outcome was reached: voids, refunds, releases and the hold's conversion.
    finishing: timedelta = timedelta(seconds=60)

    def for_step(self, status: Status) -> timedelta:
        if status == Status.REQUESTED:
            return self.requested
        if status == Status.RESERVED:
            return self.reserved
        if status == Status.PAYMENT_ACTION_REQUIRED:
            return self.payment_action_required
        if status == Status.AWAITING_PROVIDER:
            return self.awaiting_provider
        return self.finishing

    @property
    def shortest(self) -> timedelta:
        values: list[timedelta] = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return min(values)


@dataclass(frozen=True)
class Waiting:
    """Who the saga waits for (an agent, ``provider``, ``customer`` or ``materializer``), for
    what, and until when if there is a deadline."""

    who: str
    what: str
    until: datetime | None = None
    action: Action | None = None


@dataclass(frozen=True)
class Assessment:
    in_flight: bool
    waiting: tuple[Waiting, ...]
    stuck_reason: str | None

    @property
    def stuck(self) -> bool:
        return self.stuck_reason is not None


def in_flight(state: BookingState, policy: Policy = DEFAULT_POLICY) -> bool:
    """No outcome yet, or one whose compensation (or hold conversion) is still due."""
    if not state.is_outcome:
        return True
    if state.status in saga.TERMINAL:
        return (
            state.hold in (Hold.HELD, Hold.CONVERTED)
            or state.payment in saga.MONEY_HELD
            or (
                state.status == Status.CANCELLED
                and state.payment == Payment.CAPTURED
                and policy.refund_policy == "full"
            )
        )
    return state.hold == Hold.HELD  # confirmed: the held seat must still be converted


def where_it_waits(
    state: BookingState, now: datetime, policy: Policy = DEFAULT_POLICY
) -> tuple[Waiting, ...]:
    """What each agent must do next (``saga.next_actions``), plus the outside world's part."""
    waiting = [
        Waiting(agent, describe_action(action), action=action)
        for agent in AGENTS
        for action in saga.next_actions(agent, state, now, policy)
    ]
    if waiting:
        return tuple(waiting)
    if state.status == Status.PAYMENT_ACTION_REQUIRED:
        return (Waiting("customer", "finish the payment action (3-D Secure); Stripe tells us"),)
    if (
        state.status == Status.AWAITING_PROVIDER
        and state.provider_outcome is None
        and state.provider_deadline_at is not None
    ):
        return (Waiting("provider", "accept or reject", until=state.provider_deadline_at),)
    return ()


def assess(
    state: BookingState,
    last_event_at: datetime,
    now: datetime,
    expectations: Expectations = Expectations(),
    policy: Policy = DEFAULT_POLICY,
) -> Assessment:
    """Whether the saga is in flight, what it waits for, and why it is stuck (if it is)."""
    waiting = where_it_waits(state, now, policy)
    flying = in_flight(state, policy)
    if not flying:
        return Assessment(False, waiting, None)
    deadline = state.provider_deadline_at
    if (
        state.status == Status.AWAITING_PROVIDER
        and state.provider_outcome is None
        and deadline is not None
        and now >= deadline
    ):
        return Assessment(
            True,
            waiting,
            f"provider deadline passed {format_duration(now - deadline)} ago "
            f"({deadline.isoformat(timespec='seconds')}) and provider-response recorded no outcome",
        )
    agents_owe = any(w.who in AGENTS for w in waiting)
    if not agents_owe and waiting and waiting[0].who == "provider":
        return Assessment(True, waiting, None)  # the provider's own deadline is the clock
    expected = expectations.for_step(state.status)
    idle = now - last_event_at
    if idle <= expected:
        return Assessment(True, waiting, None)
    step_name = state.status.value if not state.is_outcome else f"{state.status.value}, finishing"
    return Assessment(
        True,
        waiting,
        f"no event for {format_duration(idle)} in step {step_name} "
        f"(expected within {format_duration(expected)})",
    )


# --- the event log ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedEvent:
    """One row of ``booking_events``, decoded (``event`` is None if the body no longer decodes)."""

    event_id: str
    event_type: str
    producer: str
    occurred_at: datetime
    topic: str
    partition: int
    offset: int
    causation_id: str | None
    event: ev.BookingEvent | None


async def load_log(
    conn: asyncpg.Connection | asyncpg.Pool, booking_id: str, codec: EventCodec
) -> list[LoggedEvent]:
    """The booking's events in fold order: ``(occurred_at, event_id)``, as the materializer."""
    rows = await conn.fetch(
        'SELECT event_id::text, event_type, producer, occurred_at, topic, partition, "offset", '
        "causation_id, body FROM booking_events WHERE booking_id = $1::uuid "
        "ORDER BY occurred_at, event_id",
        booking_id,
    )
    logged = []
    for r in rows:
        try:
            decoded = codec.decode(bytes(r["body"]))
        except UndecodableEvent:
            decoded = None  # a schema removed since: still part of the timeline
        logged.append(
            LoggedEvent(
                event_id=r["event_id"],
                event_type=r["event_type"],
                producer=r["producer"],
                occurred_at=r["occurred_at"],
                topic=r["topic"],
                partition=r["partition"],
                offset=r["offset"],
                causation_id=r["causation_id"],
                event=decoded if isinstance(decoded, ev.BookingEvent) else None,
            )
        )
    return logged


def fold_log(events: Iterable[ev.BookingEvent]) -> BookingState | None:
    """The booking's state as the materializer folds its log: ``BookingRequested`` first
    (a clock skew must not make it look late), then every other event in
    ``(occurred_at, event_id)`` order. None while the request is not in the log."""
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.event_id))
    requested = next((e for e in ordered if isinstance(e, ev.BookingRequested)), None)
    if requested is None:
        return None
    state = saga.start(requested)
    for event in ordered:
        if not isinstance(event, ev.BookingRequested):
            state = saga.evolve(state, event)
    return state


# --- one saga ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineEntry:
    event_id: str
    event_type: str
    producer: str
    occurred_at: datetime
    since_previous: timedelta | None
    since_start: timedelta
    kind: EntryKind
    detail: str
    topic: str
    partition: int
    offset: int

    @property
    def compensation(self) -> bool:
        return self.kind == "compensation"


@dataclass(frozen=True)
class SagaTimeline:
    """One saga as an operator needs it: what happened, where it stands, what it waits for."""

    booking_id: str
    status: Status | None  # None: events exist but the booking's request is not in the log yet
    hold: Hold | None
    payment: Payment | None
    payment_id: str | None
    failure_reason: str | None
    correlation_id: str | None
    requested_at: datetime | None
    last_event_at: datetime | None
    provider_deadline_at: datetime | None
    in_flight: bool
    stuck_reason: str | None
    waiting: tuple[Waiting, ...]
    elapsed: timedelta  # first event to the last (finished) or to now (in flight)
    entries: tuple[TimelineEntry, ...]
    state: BookingState | None

    def to_json(self) -> dict[str, Any]:
        data = jsonable(self)
        data["stuck"] = self.stuck_reason is not None
        return data  # type: ignore[no-any-return]


def _entry_kind(event_type: str) -> EntryKind:
    if event_type in _COMPENSATIONS:
        return "compensation"
    if event_type in _FAILURES:
        return "failure"
    if event_type in _REQUESTS:
        return "request"
    if event_type == "NotificationSent":
        return "notification"
    return "step"


def describe_event(event: ev.Event | None) -> str:
    """The event's own fields (not the envelope) as ``name=value``, for one table cell."""
    if event is None:
        return "(body no longer decodes)"
    parts = []
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if f.name in _ENVELOPE or value is None:
            continue
        parts.append(f"{f.name}={_plain_text(value)}")
    return ", ".join(parts)


async def saga_timeline(
    conn: asyncpg.Connection | asyncpg.Pool,
    booking_id: str,
    codec: EventCodec,
    now: datetime,
    expectations: Expectations = Expectations(),
    policy: Policy = DEFAULT_POLICY,
) -> SagaTimeline:
    """The saga of ``booking_id``; ``SagaNotFound`` if nothing is known about it."""
    booking_id = check_booking_id(booking_id)
    logged = await load_log(conn, booking_id, codec)
    row = await conn.fetchrow(_BOOKING_SQL + " WHERE b.id = $1::uuid", booking_id)
    if not logged and row is None:
        raise SagaNotFound(f"no booking {booking_id}: no event in the log and no read-model row")
    state = fold_log(e.event for e in logged if e.event is not None)
    if state is None and row is not None:
        state = _row_state(row)

    entries = []
    previous: datetime | None = None
    start = logged[0].occurred_at if logged else None
    for item in logged:
        assert start is not None
        entries.append(
            TimelineEntry(
                event_id=item.event_id,
                event_type=item.event_type,
                producer=item.producer,
                occurred_at=item.occurred_at,
                since_previous=item.occurred_at - previous if previous is not None else None,
                since_start=item.occurred_at - start,
                kind=_entry_kind(item.event_type),
                detail=describe_event(item.event),
                topic=item.topic,
                partition=item.partition,
                offset=item.offset,
            )
        )
        previous = item.occurred_at

    last_event_at = logged[-1].occurred_at if logged else (row["updated_at"] if row else None)
    if state is not None:
        assessment = assess(state, last_event_at or state.updated_at, now, expectations, policy)
        finished = not assessment.in_flight
        started = state.requested_at
        return SagaTimeline(
            booking_id=booking_id,
            status=state.status,
            hold=state.hold,
            payment=state.payment,
            payment_id=state.payment_id,
            failure_reason=state.failure_reason,
            correlation_id=state.correlation_id,
            requested_at=state.requested_at,
            last_event_at=last_event_at,
            provider_deadline_at=state.provider_deadline_at,
            in_flight=assessment.in_flight,
            stuck_reason=assessment.stuck_reason,
            waiting=assessment.waiting,
            elapsed=((last_event_at or now) if finished else now) - started,
            entries=tuple(entries),
            state=state,
        )
    # Events without their BookingRequested, or a read-model row the API wrote at 202 time
    # that the materializer has not folded yet.
    requested_at = row["requested_at"] if row else None
    first = requested_at or (logged[0].occurred_at if logged else now)
    waiting = (Waiting("materializer", "fold the booking's BookingRequested into the read model"),)
    idle = now - (last_event_at or first)
    correlation_id = row["correlation_id"] if row else None
    if correlation_id is None and logged and logged[0].event is not None:
        correlation_id = logged[0].event.correlation_id
    stuck = None
    if idle > expectations.requested:
        stuck = (
            f"BookingRequested not in the event log after {format_duration(idle)} "
            f"(expected within {format_duration(expectations.requested)})"
        )
    return SagaTimeline(
        booking_id=booking_id,
        status=Status(row["status"]) if row else None,
        hold=Hold(row["hold"]) if row else None,
        payment=Payment(row["payment"]) if row else None,
        payment_id=row["payment_id"] if row else None,
        failure_reason=row["failure_reason"] if row else None,
        correlation_id=correlation_id,
        requested_at=requested_at,
        last_event_at=last_event_at,
        provider_deadline_at=row["provider_deadline_at"] if row else None,
        in_flight=True,
        stuck_reason=stuck,
        waiting=waiting,
        elapsed=now - first,
        entries=tuple(entries),
        state=None,
    )


# --- sagas in flight ----------------------------------------------------------------------


@dataclass(frozen=True)
class SagaQuery:
    """Which in-flight sagas to list. ``booking_ids`` narrows to some (tests, the admin API)."""

    stuck: bool = False
    status: Status | None = None
    older_than: timedelta | None = None  # requested at least this long ago
    limit: int = 50
    booking_ids: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SagaSummary:
    booking_id: str
    status: Status
    hold: Hold
    payment: Payment
    requested_at: datetime
    last_event_at: datetime
    provider_deadline_at: datetime | None
    events_applied: int
    age: timedelta
    idle: timedelta
    waiting: tuple[Waiting, ...]
    stuck_reason: str | None

    @property
    def stuck(self) -> bool:
        return self.stuck_reason is not None

    def to_json(self) -> dict[str, Any]:
        data = jsonable(self)
        data["stuck"] = self.stuck
        return data  # type: ignore[no-any-return]


_BOOKING_SQL = (
    "SELECT b.id::text AS booking_id, b.status, b.hold, b.payment, b.payment_id, "
    "b.failure_reason, b.correlation_id, b.provider_deadline_at, b.requested_at, b.updated_at, "
    "b.last_event_at, b.events_applied, b.state FROM bookings b"
)
_PAGE = 500


def _quoted(values: Iterable[str]) -> str:
    # Only our own enum values are ever quoted into SQL, never operator input.
    return ", ".join(f"'{v}'" for v in sorted(values))


def in_flight_sql(policy: Policy = DEFAULT_POLICY) -> str:
    """SQL true for a ``bookings b`` row whose saga is in flight (``in_flight`` in SQL)."""
    refund = (
        " OR (b.status = 'cancelled' AND b.payment = 'captured')"
        if policy.refund_policy == "full"
        else ""
    )
    return (
        f"(b.status NOT IN ({_quoted(saga.OUTCOMES)})"
        f" OR (b.status IN ({_quoted(saga.TERMINAL)})"
        f" AND (b.hold IN ('held', 'converted') OR b.payment IN ({_quoted(saga.MONEY_HELD)})))"
        f" OR (b.status = 'confirmed' AND b.hold = 'held'){refund})"
    )


def _row_state(row: Mapping[str, Any]) -> BookingState | None:
    raw = row["state"]
    if raw is None:
        return None
    # The runtime pool decodes jsonb; a bare connection hands over the text.
    return BookingState.from_json(json.loads(raw) if isinstance(raw, str) else raw)


def summarize_row(
    row: Mapping[str, Any],
    now: datetime,
    expectations: Expectations = Expectations(),
    policy: Policy = DEFAULT_POLICY,
) -> SagaSummary:
    """One ``bookings`` row as a saga summary (pure: the row carries the fold's state)."""
    last = row["last_event_at"] or row["updated_at"]
    state = _row_state(row)
    if state is None:
        idle = now - last
        waiting: tuple[Waiting, ...] = (
            Waiting("materializer", "fold the booking's BookingRequested into the read model"),
        )
        reason = None
        if idle > expectations.requested:
            reason = f"BookingRequested not in the event log after {format_duration(idle)}"
    else:
        assessment = assess(state, last, now, expectations, policy)
        waiting, reason = assessment.waiting, assessment.stuck_reason
    return SagaSummary(
        booking_id=row["booking_id"],
        status=Status(row["status"]),
        hold=Hold(row["hold"]),
        payment=Payment(row["payment"]),
        requested_at=row["requested_at"],
        last_event_at=last,
        provider_deadline_at=row["provider_deadline_at"],
        events_applied=row["events_applied"],
        age=now - row["requested_at"],
        idle=now - last,
        waiting=waiting,
        stuck_reason=reason,
    )


async def list_sagas(
    conn: asyncpg.Connection | asyncpg.Pool,
    query: SagaQuery,
    now: datetime,
    expectations: Expectations = Expectations(),
    policy: Policy = DEFAULT_POLICY,
) -> list[SagaSummary]:
    """In-flight sagas, oldest request first; with ``query.stuck`` only the stuck ones.

    SQL narrows to in-flight rows (and, for ``stuck``, to rows that could be stuck: deadline
    passed or idle for the shortest expectation); ``assess`` decides, page by page, so a
    ``limit`` counts stuck sagas, not candidates.
    """
    conditions = [
        in_flight_sql(policy),
        "($1::text IS NULL OR b.status = $1)",
        "($2::timestamptz IS NULL OR b.requested_at <= $2)",
        "($3::uuid[] IS NULL OR b.id = ANY($3::uuid[]))",
        "($4::timestamptz IS NULL OR (b.requested_at, b.id) > ($4, $5::uuid))",
    ]
    if query.stuck:
        conditions.append(
            "((b.status = 'awaiting_provider' AND b.provider_deadline_at <= $6)"
            " OR coalesce(b.last_event_at, b.updated_at) < $6 - $7::interval)"
        )
    sql = (
        f"{_BOOKING_SQL} WHERE {' AND '.join(conditions)} "
        f"ORDER BY b.requested_at, b.id LIMIT {_PAGE}"
    )
    ids = (
        [check_booking_id(b) for b in query.booking_ids] if query.booking_ids is not None else None
    )
    older = now - query.older_than if query.older_than is not None else None
    found: list[SagaSummary] = []
    after: tuple[datetime, str] | None = None
    while len(found) < query.limit:
        params: list[Any] = [
            query.status.value if query.status else None,
            older,
            ids,
            after[0] if after else None,
            after[1] if after else None,
        ]
        if query.stuck:
            params += [now, expectations.shortest]
        rows = await conn.fetch(sql, *params)
        for row in rows:
            summary = summarize_row(row, now, expectations, policy)
            if not query.stuck or summary.stuck:
                found.append(summary)
        if len(rows) < _PAGE:
            break
        after = (rows[-1]["requested_at"], rows[-1]["booking_id"])
    return found[: query.limit]


# --- operator actions ---------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorRequest:
    """What an operator asked for, and what was (or, on a dry run, would be) published."""

    booking_id: str
    action: Literal["cancel", "retry"]
    dry_run: bool
    event: ev.BookingEvent | None  # None when refused
    published: Published | None
    refused: str | None
    status_before: Status | None
    status_after: Status | None  # the fold with the request (what the agents will see)
    waiting_before: tuple[Waiting, ...]

    def to_json(self) -> dict[str, Any]:
        return jsonable(self)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _Current:
    state: BookingState | None
    status: Status | None
    correlation_id: str


async def _current(
    conn: asyncpg.Connection | asyncpg.Pool, booking_id: str, codec: EventCodec
) -> _Current:
    booking_id = check_booking_id(booking_id)
    logged = await load_log(conn, booking_id, codec)
    row = await conn.fetchrow(_BOOKING_SQL + " WHERE b.id = $1::uuid", booking_id)
    if not logged and row is None:
        raise SagaNotFound(f"no booking {booking_id}: no event in the log and no read-model row")
    state = fold_log(e.event for e in logged if e.event is not None)
    if state is None and row is not None:
        state = _row_state(row)
    if state is not None:
        return _Current(state, state.status, state.correlation_id)
    if row is not None:
        return _Current(None, Status(row["status"]), row["correlation_id"])
    first = next(e.event for e in logged if e.event is not None)
    return _Current(None, None, first.correlation_id)


async def _publish(
    publisher: EventPublisher | None,
    event: ev.BookingEvent,
    dry_run: bool,
) -> Published | None:
    if dry_run:
        return None
    if publisher is None:
        raise ValueError("a publisher is needed unless dry_run")
    return await publisher.publish(event)


async def cancel_saga(
    conn: asyncpg.Connection | asyncpg.Pool,
    publisher: EventPublisher | None,
    booking_id: str,
    *,
    operator: str,
    reason: str | None,
    codec: EventCodec,
    now: datetime,
    dry_run: bool = False,
    policy: Policy = DEFAULT_POLICY,
) -> OperatorRequest:
    """Publish ``BookingCancellationRequested`` (role ``operator``) unless the booking is terminal.

    The agents run the compensations (void or refund, release, tell the customer); the
    request only states the operator's wish, so a cancel that races an outcome is harmless.
    """
    current = await _current(conn, booking_id, codec)
    booking_id = check_booking_id(booking_id)
    waiting = where_it_waits(current.state, now, policy) if current.state else ()
    if current.status in saga.TERMINAL:
        assert current.status is not None
        return OperatorRequest(
            booking_id=booking_id,
            action="cancel",
            dry_run=dry_run,
            event=None,
            published=None,
            refused=f"booking is already {current.status.value} (terminal): nothing to cancel",
            status_before=current.status,
            status_after=current.status,
            waiting_before=waiting,
        )
    event = ev.make(
        ev.BookingCancellationRequested,
        booking_id=booking_id,
        producer=OPERATOR_PRODUCER,
        correlation_id=current.correlation_id,
        occurred_at=now,
        requested_by=operator,
        requested_by_role="operator",
        reason=reason,
    )
    after = saga.evolve(current.state, event).status if current.state else Status.CANCELLED
    published = await _publish(publisher, event, dry_run)
    return OperatorRequest(
        booking_id=booking_id,
        action="cancel",
        dry_run=dry_run,
        event=event,
        published=published,
        refused=None,
        status_before=current.status,
        status_after=after,
        waiting_before=waiting,
    )


async def retry_saga(
    conn: asyncpg.Connection | asyncpg.Pool,
    publisher: EventPublisher | None,
    booking_id: str,
    *,
    operator: str,
    step: str = "all",
    codec: EventCodec,
    now: datetime,
    dry_run: bool = False,
    policy: Policy = DEFAULT_POLICY,
) -> OperatorRequest:
    """Publish ``SagaRetryRequested(step=...)``: the named agent (or every agent, ``all``)
    re-runs what the rules say it owes the booking now.

    Each retry is a new request with a fresh event id, so two retries are two attempts (the
    agents' side effects still carry idempotency keys per booking and step).
    """
    if step not in RETRY_STEPS:
        raise ValueError(f"unknown step {step!r}; choose one of: {', '.join(RETRY_STEPS)}")
    current = await _current(conn, booking_id, codec)
    booking_id = check_booking_id(booking_id)
    waiting = where_it_waits(current.state, now, policy) if current.state else ()
    event = ev.make(
        ev.SagaRetryRequested,
        booking_id=booking_id,
        producer=OPERATOR_PRODUCER,
        correlation_id=current.correlation_id,
        occurred_at=now,
        step=step,
        requested_by=operator,
    )
    published = await _publish(publisher, event, dry_run)
    return OperatorRequest(
        booking_id=booking_id,
        action="retry",
        dry_run=dry_run,
        event=event,
        published=published,
        refused=None,
        status_before=current.status,
        status_after=current.status,
        waiting_before=waiting,
    )


# --- presentation helpers (pure) ---------------------------------------------------------

# ISO 4217 currencies without minor units; every other one shown here has two.
_ZERO_DECIMAL = frozenset({"JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "PYG"})


def format_money(money: ev.Money) -> str:
    if money.currency in _ZERO_DECIMAL:
        return f"{money.amount_minor} {money.currency}"
    whole, cents = divmod(money.amount_minor, 100)
    return f"{whole}.{cents:02d} {money.currency}"


def format_duration(delta: timedelta) -> str:
    """``2d 3h``, ``4m 05s``, ``1.250s``: the two largest units, for people."""
    seconds = delta.total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:.3f}s" if seconds < 10 else f"{sign}{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    return f"{sign}{minutes}m {secs:02d}s"


def describe_action(action: Action) -> str:
    """``AuthorizePayment(amount=45.00 EUR)``: an action as one line of text."""
    fields = dataclasses.fields(action)
    inner = ", ".join(f"{f.name}={_plain_text(getattr(action, f.name))}" for f in fields)
    return f"{type(action).__name__}({inner})" if inner else type(action).__name__


def _plain_text(value: Any) -> str:
    if isinstance(value, ev.Money):
        return format_money(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def jsonable(value: Any) -> Any:
    """Dataclasses, events, enums, datetimes and durations as plain JSON values.

    Durations become seconds (float); events carry their ``event_type``; saga actions their
    ``action`` name; bytes become hex.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, ev.Event):
            data = {"event_type": value.event_type, **data}
        elif isinstance(value, _ACTION_TYPES):
            data = {"action": type(value).__name__, **data}
        return data
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, frozenset | set):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [jsonable(v) for v in value]
    return value
