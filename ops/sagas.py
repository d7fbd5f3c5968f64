"""Sagas for operators: one booking's timeline, the sagas in flight (the stuck ones among
them), and what an operator may do to a saga (cancel it, retry a step), each with a dry run.

Functions take their connections and return frozen dataclasses (``to_json`` for machines); the
judgement is ``ops.assess``. Nothing here prints. Try it on a running stack::

    erynoa saga show <booking_id>
    erynoa saga ls --stuck
    erynoa saga cancel <booking_id> --reason "customer called" --dry-run

The event log (``booking_events``) is the truth: a timeline is the log in fold order
(``saga.log_order``) and the state is its fold (``saga.fold_log``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import asyncpg

from erynoa import events as ev
from erynoa import saga
from erynoa.codec import EventCodec, UndecodableEvent
from erynoa.kafka import Published
from erynoa.saga import BookingState, Hold, Payment, Policy, Status
from ops import wire
from ops.assess import (
    DEFAULT_CRITERIA,
    DEFAULT_POLICY,
    RETRY_STEPS,
    Assessment,
    Criteria,
    EntryKind,
    Waiting,
    assess,
    assess_row,
    describe_event,
    entry_kind,
    where_it_waits,
)
from ops.errors import BadInput, check_booking_id

OPERATOR_PRODUCER = "operator"
"""The ``producer`` of events an operator asks for from the command line."""

Publish = Callable[[ev.BookingEvent], Awaitable[Published | None]]
"""How a face publishes an operator's request (the CLI straight to Kafka, the API through its
outbox)."""


class SagaNotFound(LookupError):
    """No event and no read-model row for this booking id."""


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
        # The columns selected are the fields' names; the body is decoded into ``event``.
        columns = {name: value for name, value in r.items() if name != "body"}
        event = decoded if isinstance(decoded, ev.BookingEvent) else None
        logged.append(LoggedEvent(**columns, event=event))
    return logged


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


class Judged:
    """A saga with ops' verdict on it: what it waits for and why it is stuck (if it is)."""

    waiting: tuple[Waiting, ...]
    stuck_reason: str | None

    @property
    def stuck(self) -> bool:
        return self.stuck_reason is not None

    def to_json(self) -> dict[str, Any]:
        return {
            **wire.plain(self),
            "waiting": [w.to_json() for w in self.waiting],
            "stuck": self.stuck,
        }


@dataclass(frozen=True)
class SagaTimeline(Judged):
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


async def saga_timeline(
    conn: asyncpg.Connection | asyncpg.Pool,
    booking_id: str,
    codec: EventCodec,
    now: datetime,
    criteria: Criteria = DEFAULT_CRITERIA,
) -> SagaTimeline:
    """The saga of ``booking_id``; ``SagaNotFound`` if nothing is known about it."""
    booking_id = check_booking_id(booking_id)
    logged, row, state = await _load(conn, booking_id, codec)

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
                kind=entry_kind(item.event_type),
                detail=describe_event(item.event),
                topic=item.topic,
                partition=item.partition,
                offset=item.offset,
            )
        )
        previous = item.occurred_at

    last_event_at = logged[-1].occurred_at if logged else (row["updated_at"] if row else None)
    if state is not None:
        assessment = assess(state, last_event_at or state.updated_at, now, criteria)
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
    correlation_id = row["correlation_id"] if row else None
    if correlation_id is None and logged and logged[0].event is not None:
        correlation_id = logged[0].event.correlation_id
    if row is not None:
        assessment = _assess_row(row, now, criteria)
    else:
        assessment = assess_row(
            Status.REQUESTED, Hold.NONE, Payment.NONE, None, last_event_at or first, now,
            criteria,
        )  # fmt: skip
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
        in_flight=assessment.in_flight,
        stuck_reason=assessment.stuck_reason,
        waiting=assessment.waiting,
        elapsed=now - first,
        entries=tuple(entries),
        state=None,
    )


@dataclass(frozen=True)
class SagaQuery:
    """Which in-flight sagas to list, oldest request first: every filter given must match.
    ``offset`` and ``limit`` count matching sagas (stuck ones, with ``stuck``)."""

    stuck: bool = False
    status: Status | None = None
    older_than: timedelta | None = None  # requested at least this long ago
    provider_id: str | None = None
    customer_id: str | None = None
    booking_ids: tuple[str, ...] | None = None
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class SagaSummary(Judged):
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


@dataclass(frozen=True)
class SagaPage:
    sagas: tuple[SagaSummary, ...]
    total: int  # every saga the query matches, past this page too
    total_capped: bool = False  # counting stopped at a cap: ``total`` is a lower bound

    @property
    def total_text(self) -> str:
        """The total as the console shows it: ``10,000+`` when counting stopped at a cap."""
        return f"{self.total:,}{'+' if self.total_capped else ''}"

    def to_json(self) -> dict[str, Any]:
        return {
            "sagas": [s.to_json() for s in self.sagas],
            "total": self.total,
            "total_capped": self.total_capped,
        }


_BOOKING_SQL = (
    "SELECT b.id::text AS booking_id, b.status, b.hold, b.payment, b.payment_id, "
    "b.failure_reason, b.correlation_id, b.provider_deadline_at, b.requested_at, b.updated_at, "
    "b.last_event_at, b.events_applied, b.state FROM bookings b"
)
_PAGE = 500


def _sql_literals(values: Iterable[str]) -> str:
    # Only our own enum values are ever quoted into SQL, never operator input.
    return ", ".join(f"'{v}'" for v in sorted(values))


def in_flight_sql(policy: Policy = DEFAULT_POLICY) -> str:
    """SQL true for a ``bookings b`` row whose saga is in flight (``assess.status_in_flight``)."""
    refund = (
        " OR (b.status = 'cancelled' AND b.payment = 'captured')"
        if policy.refund_policy == "full"
        else ""
    )
    return (
        f"(b.status NOT IN ({_sql_literals(saga.OUTCOMES)})"
        f" OR (b.status IN ({_sql_literals(saga.TERMINAL)})"
        f" AND (b.hold IN ('held', 'converted')"
        f" OR b.payment IN ({_sql_literals(saga.MONEY_HELD)})))"
        f" OR (b.status = 'confirmed' AND b.hold = 'held'){refund})"
    )


def _row_state(row: Mapping[str, Any]) -> BookingState | None:
    raw = row["state"]
    if raw is None:
        return None
    # The runtime pool decodes jsonb; a bare connection hands over the text.
    return BookingState.from_json(json.loads(raw) if isinstance(raw, str) else raw)


def _last_event_at(row: Mapping[str, Any]) -> datetime:
    last: datetime = row["last_event_at"] or row["updated_at"]
    return last


def _assess_row(row: Mapping[str, Any], now: datetime, criteria: Criteria) -> Assessment:
    state = _row_state(row)
    if state is not None:
        return assess(state, _last_event_at(row), now, criteria)
    return assess_row(
        Status(row["status"]),
        Hold(row["hold"]),
        Payment(row["payment"]),
        row["provider_deadline_at"],
        _last_event_at(row),
        now,
        criteria,
    )


def summarize_row(
    row: Mapping[str, Any],
    now: datetime,
    criteria: Criteria = DEFAULT_CRITERIA,
) -> SagaSummary:
    """One ``bookings`` row as a saga summary (pure: the row carries the fold's state)."""
    last = _last_event_at(row)
    assessment = _assess_row(row, now, criteria)
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
        waiting=assessment.waiting,
        stuck_reason=assessment.stuck_reason,
    )


def _where(query: SagaQuery, now: datetime, criteria: Criteria) -> tuple[str, list[Any]]:
    """The SQL condition (``bookings b``) narrowing to the sagas ``query`` could match, and its
    parameters ``$1``-``$7`` (``$8``-``$9`` with ``stuck``); ``$4``/``$5`` resume after a
    ``(requested_at, id)`` and are left NULL here."""
    conditions = [
        in_flight_sql(criteria.policy),
        "($1::text IS NULL OR b.status = $1)",
        "($2::timestamptz IS NULL OR b.requested_at <= $2)",
        "($3::uuid[] IS NULL OR b.id = ANY($3::uuid[]))",
        "($4::timestamptz IS NULL OR (b.requested_at, b.id) > ($4, $5::uuid))",
        "($6::text IS NULL OR b.provider_id = $6)",
        "($7::text IS NULL OR b.customer_id = $7)",
    ]
    ids = (
        [check_booking_id(b) for b in query.booking_ids] if query.booking_ids is not None else None
    )
    params: list[Any] = [
        query.status.value if query.status else None,
        now - query.older_than if query.older_than is not None else None,
        ids,
        None,
        None,
        query.provider_id,
        query.customer_id,
    ]
    if query.stuck:
        conditions.append(
            "((b.status = 'awaiting_provider' AND b.provider_deadline_at <= $8)"
            " OR coalesce(b.last_event_at, b.updated_at) < $8 - $9::interval)"
        )
        params += [now, criteria.expectations.shortest]
    return " AND ".join(conditions), params


async def _candidates(
    conn: asyncpg.Connection | asyncpg.Pool,
    query: SagaQuery,
    now: datetime,
    criteria: Criteria,
    at_most: int | None,
) -> AsyncIterator[SagaSummary]:
    """The sagas the SQL narrowing lets through (with ``stuck``, those that *could* be stuck:
    deadline passed or idle for the shortest expectation), oldest request first, read
    ``_PAGE`` rows at a time, at most ``at_most`` (None: all); the assessment decides."""
    where, params = _where(query, now, criteria)
    read = 0
    while at_most is None or read < at_most:
        chunk = _PAGE if at_most is None else min(_PAGE, at_most - read)
        sql = f"{_BOOKING_SQL} WHERE {where} ORDER BY b.requested_at, b.id LIMIT {chunk}"
        rows = await conn.fetch(sql, *params)
        read += len(rows)
        for row in rows:
            yield summarize_row(row, now, criteria)
        if len(rows) < chunk:
            return
        params[3], params[4] = rows[-1]["requested_at"], rows[-1]["booking_id"]


# A live console polls the page every few seconds while hundreds of thousands of sagas may be in
# flight (provider answers take days): counting stops here and the page says "10,000+".
TOTAL_CAP = 10_000
# The stuck filter is decided per row in Python, so it reads at most this many candidates per
# page; past it, the total is a lower bound.
STUCK_SCAN_CAP = 10_000


async def page_sagas(
    conn: asyncpg.Connection | asyncpg.Pool,
    query: SagaQuery,
    now: datetime,
    criteria: Criteria = DEFAULT_CRITERIA,
    *,
    total_cap: int | None = TOTAL_CAP,
    scan_cap: int | None = STUCK_SCAN_CAP,
) -> SagaPage:
    """The page of in-flight sagas ``query`` asks for (oldest request first; with ``stuck``
    only the stuck ones) and how many match in all. Without ``stuck`` SQL counts (up to
    ``total_cap``) and only the page's rows are read; with ``stuck`` at most ``scan_cap``
    candidates are read and assessed. ``total_capped`` says the total is a lower bound. The
    one listing behind every face: the admin API and the console, polled, keep the caps;
    ``erynoa saga ls``, run once, passes None for an exact answer (a backlog of sagas waiting
    days for providers must not hide the one that is stuck behind it)."""
    if query.stuck:
        return await _page_stuck(conn, query, now, criteria, scan_cap)
    where, params = _where(query, now, criteria)
    limit = "" if total_cap is None else f" LIMIT {total_cap + 1}"
    counted = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM bookings b WHERE {where}{limit}) c", *params
    )
    rows = await conn.fetch(
        f"{_BOOKING_SQL} WHERE {where} ORDER BY b.requested_at, b.id "
        f"OFFSET ${len(params) + 1} LIMIT ${len(params) + 2}",
        *params,
        query.offset,
        query.limit,
    )
    found = tuple(summarize_row(row, now, criteria) for row in rows)
    if total_cap is not None and counted > total_cap:
        return SagaPage(found, total_cap, total_capped=True)
    return SagaPage(found, counted)


async def _page_stuck(
    conn: asyncpg.Connection | asyncpg.Pool,
    query: SagaQuery,
    now: datetime,
    criteria: Criteria,
    scan_cap: int | None,
) -> SagaPage:
    found: list[SagaSummary] = []
    total = read = 0
    # One row past the cap tells a scan that stopped at it from one that read everything.
    at_most = None if scan_cap is None else scan_cap + 1
    async for summary in _candidates(conn, query, now, criteria, at_most=at_most):
        read += 1
        if scan_cap is not None and read > scan_cap:
            return SagaPage(tuple(found), total, total_capped=True)
        if not summary.stuck:
            continue
        if query.offset <= total < query.offset + query.limit:
            found.append(summary)
        total += 1
    return SagaPage(tuple(found), total)


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
        return {
            **wire.plain(self),
            "event": wire.event_json(self.event),
            "waiting_before": [w.to_json() for w in self.waiting_before],
        }


async def _load(
    conn: asyncpg.Connection | asyncpg.Pool, booking_id: str, codec: EventCodec
) -> tuple[list[LoggedEvent], asyncpg.Record | None, BookingState | None]:
    """The booking's log, its read-model row and its state: the log's fold, else the row's."""
    logged = await load_log(conn, booking_id, codec)
    row = await conn.fetchrow(_BOOKING_SQL + " WHERE b.id = $1::uuid", booking_id)
    if not logged and row is None:
        raise SagaNotFound(f"no booking {booking_id}: no event in the log and no read-model row")
    state = saga.fold_log(e.event for e in logged if e.event is not None)
    if state is None and row is not None:
        state = _row_state(row)
    return logged, row, state


Req = TypeVar("Req", ev.BookingCancellationRequested, ev.SagaRetryRequested)


@dataclass(frozen=True)
class _Current:
    booking_id: str
    state: BookingState | None
    status: Status | None
    correlation_id: str

    def request(self, kind: type[Req], producer: str, now: datetime, **fields: Any) -> Req:
        """An operator's request event about this booking, in its correlation."""
        return ev.make(
            kind,
            booking_id=self.booking_id,
            producer=producer,
            correlation_id=self.correlation_id,
            occurred_at=now,
            **fields,
        )


async def _current(
    conn: asyncpg.Connection | asyncpg.Pool,
    booking_id: str,
    codec: EventCodec,
    now: datetime,
    policy: Policy,
) -> tuple[_Current, tuple[Waiting, ...]]:
    """The booking as a request about it needs it, and what it waits for now."""
    booking_id = check_booking_id(booking_id)
    logged, row, state = await _load(conn, booking_id, codec)
    if state is not None:
        current = _Current(booking_id, state, state.status, state.correlation_id)
        return current, where_it_waits(state, now, policy)
    if row is not None:
        return _Current(booking_id, None, Status(row["status"]), row["correlation_id"]), ()
    first = next(e.event for e in logged if e.event is not None)
    return _Current(booking_id, None, None, first.correlation_id), ()


def cancel_refusal(state: BookingState | None, status: Status | None) -> str | None:
    """Why an operator's cancel is refused (the booking ended), or None: the rule the API's
    customer cancel follows (``saga.can_cancel``)."""
    allowed = saga.can_cancel(state) if state is not None else status not in saga.TERMINAL
    if allowed or status is None:
        return None
    return f"booking is already {status.value} (terminal): nothing to cancel"


def check_step(step: str) -> str:
    if step not in RETRY_STEPS:
        raise BadInput(f"unknown step {step!r}; choose one of: {', '.join(RETRY_STEPS)}")
    return step


@dataclass(frozen=True)
class CancelSaga:
    """Cancel the booking unless it ended: the agents run the compensations (void or refund,
    release, tell the customer). The request only states the operator's wish, so a cancel
    that races an outcome is harmless."""

    booking_id: str
    operator: str
    reason: str | None = None


@dataclass(frozen=True)
class RetrySaga:
    """The named agent (or every agent, ``all``) re-runs what the rules say it owes the
    booking now. Each retry is a new request with a fresh event id, so two retries are two
    attempts (the agents' side effects still carry idempotency keys per booking and step)."""

    booking_id: str
    operator: str
    step: str = "all"


OperatorCommand = CancelSaga | RetrySaga


async def request_saga(
    conn: asyncpg.Connection | asyncpg.Pool,
    publish: Publish | None,
    command: OperatorCommand,
    *,
    codec: EventCodec,
    now: datetime,
    dry_run: bool = False,
    policy: Policy = DEFAULT_POLICY,
    producer: str = OPERATOR_PRODUCER,
) -> OperatorRequest:
    """Publish the operator's request about one saga (``BookingCancellationRequested`` with
    role ``operator``, or ``SagaRetryRequested``) unless it is a dry run or refused, and say
    what it is and does."""
    if isinstance(command, RetrySaga):
        check_step(command.step)
    current, waiting = await _current(conn, command.booking_id, codec, now, policy)
    match command:
        case CancelSaga():
            refused = cancel_refusal(current.state, current.status)
            if refused is not None:
                return await _answer(
                    "cancel", current, waiting, None, current.status, None, dry_run, refused
                )
            event: ev.BookingEvent = current.request(
                ev.BookingCancellationRequested,
                producer,
                now,
                requested_by=command.operator,
                requested_by_role="operator",
                reason=command.reason,
            )
            after = saga.evolve(current.state, event).status if current.state else Status.CANCELLED
            return await _answer("cancel", current, waiting, event, after, publish, dry_run)
        case RetrySaga():
            event = current.request(
                ev.SagaRetryRequested,
                producer,
                now,
                step=command.step,
                requested_by=command.operator,
            )
            return await _answer("retry", current, waiting, event, current.status, publish, dry_run)


async def _answer(
    action: Literal["cancel", "retry"],
    current: _Current,
    waiting: tuple[Waiting, ...],
    event: ev.BookingEvent | None,
    status_after: Status | None,
    publish: Publish | None,
    dry_run: bool,
    refused: str | None = None,
) -> OperatorRequest:
    """Publish ``event`` (unless a dry run or refused) and say what was done."""
    published = None
    if event is not None and not dry_run:
        if publish is None:
            raise ValueError("a publisher is needed unless dry_run")
        published = await publish(event)
    return OperatorRequest(
        booking_id=current.booking_id,
        action=action,
        dry_run=dry_run,
        event=event,
        published=published,
        refused=refused,
        status_before=current.status,
        status_after=status_after,
        waiting_before=waiting,
    )
