"""What an operator needs to know about a saga, decided without I/O: whether it is in flight,
what it waits for, whether it is stuck, and what a replayed event would do to it.

A saga is *in flight* while its booking has no outcome, or has one while a compensation or the
hold's conversion is still due. Where it waits comes from the rules the agents follow
(``saga.next_actions`` of every agent on the current state), so this view never disagrees with
what the agents would do next. It is *stuck* when the provider deadline passed without an
outcome, or when nothing happened for longer than its step is expected to take
(``Expectations``): each step is a handful of Kafka hops and one external call, so a minute
without an event means an agent is down, lagging, or dead-lettered the booking's message.
Every face (``erynoa saga``, the admin API, the console) judges with these functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from erynoa import events as ev
from erynoa import saga
from erynoa.saga import AGENTS, Action, BookingState, Hold, Payment, Policy, Status
from erynoa.settings import Settings
from ops import wire

RETRY_STEPS: tuple[str, ...] = ("all", *AGENTS)
"""What ``SagaRetryRequested.step`` may name: one agent's step, or every agent (the admin API's
values too)."""


_ENVELOPE = frozenset(
    {"event_id", "booking_id", "occurred_at", "correlation_id", "causation_id", "producer"}
)


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

    @classmethod
    def uniform(cls, idle: timedelta) -> Expectations:
        """The same expectation for every step (an operator's "idle this long is stuck")."""
        return cls(*(idle for _ in dataclasses.fields(cls)))

    @property
    def shortest(self) -> timedelta:
        values: list[timedelta] = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return min(values)


DEFAULT_EXPECTATIONS = Expectations()


@dataclass(frozen=True)
class Criteria:
    """What a saga is judged by: how long each step may take, and the deployment's ``Policy``
    (which outcomes still owe compensations, when a payment action is abandoned)."""

    expectations: Expectations = DEFAULT_EXPECTATIONS
    policy: Policy = DEFAULT_POLICY

    @classmethod
    def of(cls, settings: Settings, stuck_after: timedelta | None = None) -> Criteria:
        """The deployment's criteria; ``stuck_after``, an operator's "idle this long is stuck",
        replaces every step's expectation."""
        expectations = DEFAULT_EXPECTATIONS
        if stuck_after is not None:
            expectations = Expectations.uniform(stuck_after)
        return cls(expectations, Policy.from_settings(settings))


DEFAULT_CRITERIA = Criteria()


@dataclass(frozen=True)
class Waiting:
    """Who the saga waits for (an agent, ``provider``, ``customer`` or ``materializer``), for
    what, and until when if there is a deadline."""

    who: str
    what: str
    until: datetime | None = None
    action: Action | None = None

    def to_json(self) -> dict[str, Any]:
        return {**wire.plain(self), "action": wire.action_json(self.action)}


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
    return status_in_flight(state.status, state.hold, state.payment, policy)


def status_in_flight(
    status: Status, hold: Hold, payment: Payment, policy: Policy = DEFAULT_POLICY
) -> bool:
    """``in_flight`` from a read-model row's columns (``ops.sagas.in_flight_sql`` in SQL)."""
    if status not in saga.OUTCOMES:
        return True
    if status in saga.TERMINAL:
        return (
            hold in (Hold.HELD, Hold.CONVERTED)
            or payment in saga.MONEY_HELD
            or (
                status == Status.CANCELLED
                and payment == Payment.CAPTURED
                and policy.refund_policy == "full"
            )
        )
    return hold == Hold.HELD  # confirmed: the held seat must still be converted


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
    criteria: Criteria = DEFAULT_CRITERIA,
) -> Assessment:
    """Whether the saga is in flight, what it waits for, and why it is stuck (if it is)."""
    waiting = where_it_waits(state, now, criteria.policy)
    flying = in_flight(state, criteria.policy)
    if not flying:
        return Assessment(False, waiting, None)
    deadline = state.provider_deadline_at
    if (
        state.status == Status.AWAITING_PROVIDER
        and state.provider_outcome is None
        and deadline is not None
        and now >= deadline
    ):
        return Assessment(True, waiting, _deadline_passed(deadline, now))
    agents_owe = any(w.who in AGENTS for w in waiting)
    if not agents_owe and waiting and waiting[0].who == "provider":
        return Assessment(True, waiting, None)  # the provider's own deadline is the clock
    return Assessment(
        True, waiting, _idle(state.status, now - last_event_at, criteria.expectations)
    )


def assess_row(
    status: Status,
    hold: Hold,
    payment: Payment,
    provider_deadline_at: datetime | None,
    last_event_at: datetime,
    now: datetime,
    criteria: Criteria = DEFAULT_CRITERIA,
) -> Assessment:
    """``assess`` for a read-model row without the fold's state: the API wrote it at 202 time
    and the materializer has not folded the booking's request yet. Its columns decide."""
    if not status_in_flight(status, hold, payment, criteria.policy):
        return Assessment(False, (), None)
    waiting = (Waiting("materializer", "fold the booking's BookingRequested into the read model"),)
    deadline = provider_deadline_at
    if status == Status.AWAITING_PROVIDER and deadline is not None and now >= deadline:
        return Assessment(True, waiting, _deadline_passed(deadline, now))
    return Assessment(True, waiting, _idle(status, now - last_event_at, criteria.expectations))


def _deadline_passed(deadline: datetime, now: datetime) -> str:
    return (
        f"provider deadline passed {format_duration(now - deadline)} ago "
        f"({deadline.isoformat(timespec='seconds')}) and provider-response recorded no outcome"
    )


def _idle(status: Status, idle: timedelta, expectations: Expectations) -> str | None:
    """Why a saga idle for ``idle`` in ``status`` is stuck; None while within expectations."""
    expected = expectations.for_step(status)
    if idle <= expected:
        return None
    step = status.value if status not in saga.OUTCOMES else f"{status.value}, finishing"
    return (
        f"no event for {format_duration(idle)} in step {step} "
        f"(expected within {format_duration(expected)})"
    )


def entry_kind(event_type: str) -> EntryKind:
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


@dataclass(frozen=True)
class SagaEffect:
    """A dry run's answer to "what would this message do to its booking?"."""

    booking_id: str
    consumer: str | None  # the consumer that failed it
    status_before: Status | None  # None: the booking's request is not in the event log
    status_after: Status | None
    already_in_log: bool  # other consumers handled it already (the read model has it)
    actions: tuple[Action, ...]  # what the failed consumer would do then (its next_actions)
    note: str | None = None

    def describe(self) -> str:
        before = self.status_before.value if self.status_before else "(not requested yet)"
        after = self.status_after.value if self.status_after else "(not requested yet)"
        text = f"{before} → {after}" if before != after else f"stays {after}"
        if self.actions:
            owner = self.consumer or "?"
            text += f"; {owner} would " + ", ".join(describe_action(a) for a in self.actions)
        elif self.consumer in AGENTS and self.status_after is not None:
            text += f"; {self.consumer} has nothing left to do"
        if self.note:
            text += f" ({self.note})"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            **wire.plain(self),
            "actions": [wire.action_json(a) for a in self.actions],
            "description": self.describe(),
        }


def effect_on_saga(
    event: ev.BookingEvent,
    consumer: str | None,
    log: Sequence[ev.BookingEvent],
    now: datetime,
    policy: Policy = DEFAULT_POLICY,
) -> SagaEffect:
    """What delivering ``event`` again to ``consumer`` would do: the booking's log folded
    without and with it."""
    others = [e for e in log if e.event_id != event.event_id]
    already = len(others) != len(log)
    try:
        before = saga.fold_log(others)
        after = saga.fold_log([*others, event])
    except saga.SagaError as exc:
        return SagaEffect(event.booking_id, consumer, None, None, already, (), str(exc))
    note = None
    if after is None:
        note = "its BookingRequested is not in the log yet; agents keep the event until it arrives"
    elif consumer == "materializer":
        note = "the materializer folds it into the read model"
    elif already:
        note = "already in the event log: other consumers handled it"
    actions: tuple[Action, ...] = ()
    if after is not None and consumer in AGENTS:
        actions = tuple(saga.next_actions(consumer, after, now, policy))
    return SagaEffect(
        booking_id=event.booking_id,
        consumer=consumer,
        status_before=before.status if before else None,
        status_after=after.status if after else None,
        already_in_log=already,
        actions=actions,
        note=note,
    )


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
        return ev.format_money(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)
