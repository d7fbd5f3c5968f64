"""The booking backbone's invariants 1-9 as pure rules over ``Evidence`` (no I/O).

``evaluate(evidence, booking_ids, now)`` returns every violation for the checked bookings. Each
rule reads evidence that can show it broken: the event log and the agents' own records, the
gateway's records, what receivers got, what clients were told.

1. Every booking reached an outcome, or waits for its provider before the deadline, or for its
   customer's payment action before that times out.
2. Per (service, slot), replaying the log's holds and releases in time order never puts more
   seats in use than the slot has; no booking holds two seats; the slot's counters equal what
   the log leaves held and converted.
3. Money, judged by the gateway's own records (the sandbox ledger, counted per booking, or
   Stripe's PaymentIntents): authorized and captured at most once; captured ⇔ confirmed (or
   cancelled and refunded, or kept under refund policy "none") for the booking's price; once
   terminal, no authorization left open; refunded no more than captured; the log's "captured"
   and "refunded" match the gateway.
4. Once terminal, the hold is released (in the log and in ``reservation_holds``); a confirmed
   booking's hold is converted.
5. Each notification recorded once per channel in the log and received once in effect (copies
   share their Message-ID / Idempotency-Key); a delivery recorded as made reached the receiver;
   the customer told the outcome.
6. The read model's row, and each agent's kept state, equal the fold of the log (the agent's:
   of the events it consumes and produced).
7. Every event was processed by each agent that consumes it, or sits in that agent's
   dead-letter topic; with events read from the topics, each is in the read model's log.
8. Every acknowledged request took effect exactly once: a create has one ``BookingRequested``;
   an accept/reject its ``ProviderAnswerSubmitted``, and an answer given before the deadline
   never loses to a timeout; a cancel its ``BookingCancellationRequested``, and the booking ended
   cancelled unless it had already ended; a webhook its ``StripeEventReceived``; no more
   bookings than the client's create requests that may have taken effect.
9. No saga needs an operator: nothing parked in a dead-letter topic by an outage-class
   (retryable) error, and no booking with work pending for longer than ``stall_after``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from erynoa import events as ev
from erynoa import saga
from erynoa.events import BookingEvent
from erynoa.saga import BookingState, Hold, Payment, Status, fold_log
from ops.invariants.evidence import (
    ClientRequest,
    Delivery,
    Evidence,
    LedgerRow,
    PaymentIntent,
    Received,
    Slot,
    Violation,
)

DEFAULT_POLICY = saga.Policy()
DEFAULT_GRACE = timedelta(seconds=5)
DEFAULT_STALL = timedelta(minutes=2)
AGENTS = saga.AGENTS

# What the read model and an agent's state must agree with the log on.
_STATE_FIELDS = (
    "status",
    "hold",
    "hold_id",
    "payment",
    "payment_id",
    "provider_deadline_at",
    "provider_answer",
    "provider_outcome",
    "notified",
    "failure_reason",
)
_ROW_COLUMNS = (
    "status",
    "hold",
    "payment",
    "payment_id",
    "provider_deadline_at",
    "provider_notified",
    "customer_notified",
    "failure_reason",
    "events_applied",
)


def unique_events(events: Iterable[BookingEvent]) -> list[BookingEvent]:
    """One copy per event id, in (occurred_at, event_id) order."""
    found = {e.event_id: e for e in events}
    return sorted(found.values(), key=lambda e: (e.occurred_at, e.event_id))


def evaluate(
    evidence: Evidence,
    booking_ids: Iterable[str],
    now: datetime,
    policy: saga.Policy = DEFAULT_POLICY,
    deadline_grace: timedelta = DEFAULT_GRACE,
    stall_after: timedelta = DEFAULT_STALL,
) -> list[Violation]:
    """Every violation of invariants 1-9 for ``booking_ids`` (empty when all hold)."""
    ids = list(dict.fromkeys(booking_ids))
    logs = {b: unique_events(events) for b, events in evidence.events.items()}
    folds = {b: fold_log(events) for b, events in logs.items()}
    deliveries: dict[str, list[Delivery]] = defaultdict(list)
    for d in evidence.deliveries:
        deliveries[d.booking_id].append(d)
    received: dict[str, list[Received]] | None = None
    if evidence.received is not None:
        received = defaultdict(list)
        for r in evidence.received:
            received[r.booking_id].append(r)
    violations: list[Violation] = []
    for b in ids:
        state = folds.get(b)
        if state is None:
            violations.append(Violation(1, b, "no BookingRequested in the event log"))
            continue
        log = logs[b]
        intents = None if evidence.intents is None else evidence.intents.get(b, [])
        violations += _outcome(state, now, policy, deadline_grace)
        violations += _money(state, log, evidence.ledger.get(b, []), intents, policy)
        violations += _hold(state, evidence.holds.get(b))
        violations += _notifications(
            state, log, deliveries[b], None if received is None else received[b]
        )
        violations += _read_model(state, evidence.read_model.get(b), evidence.materializer)
        violations += _agent_states(state, log, evidence)
        violations += _processed(b, log, evidence)
        violations += _stalled(state, log, now, policy, stall_after)
    violations += _capacity(evidence.slots, logs)
    violations += _requests(evidence.requests, logs, folds)
    violations += _parked(evidence, set(ids))
    return violations


# --- 1 ------------------------------------------------------------------------------------


def _outcome(
    s: BookingState, now: datetime, policy: saga.Policy, grace: timedelta
) -> list[Violation]:
    if s.is_outcome:
        return []
    waiting_provider = (
        s.status == Status.AWAITING_PROVIDER
        and s.provider_outcome is None
        and s.provider_deadline_at is not None
        and now < s.provider_deadline_at + grace
    )
    action_expires = saga.payment_action_expires_at(s, policy)
    waiting_customer = action_expires is not None and now < action_expires + grace
    if waiting_provider or waiting_customer:
        return []
    if action_expires is not None:
        why = f" (payment action expired {action_expires.isoformat()})"
    elif s.provider_deadline_at is not None:
        why = f" (deadline {s.provider_deadline_at.isoformat()})"
    else:
        why = ""
    return [Violation(1, s.booking_id, f"stuck in {s.status.value}{why}")]


# --- 2 ------------------------------------------------------------------------------------


def _capacity(slots: Sequence[Slot], logs: Mapping[str, Sequence[BookingEvent]]) -> list[Violation]:
    out: list[Violation] = []
    # (service, slot) → timeline of (time, +1 | -1) and the holds still held / converted.
    changes: dict[tuple[str, datetime], list[tuple[datetime, int]]] = defaultdict(list)
    held: Counter[tuple[str, datetime]] = Counter()
    converted: Counter[tuple[str, datetime]] = Counter()
    for booking_id, log in logs.items():
        holds = {e.hold_id: e for e in log if isinstance(e, ev.ReservationHeld)}
        if len(holds) > 1:
            out.append(Violation(2, booking_id, f"{len(holds)} seats held for one booking"))
        released = {e.hold_id: e for e in reversed(log) if isinstance(e, ev.ReservationReleased)}
        conversions = {e.hold_id for e in log if isinstance(e, ev.ReservationConverted)}
        for hold_id, hold in holds.items():
            key = (str(hold.service_id), hold.slot_start)
            changes[key].append((hold.occurred_at, +1))
            if hold_id in released:
                changes[key].append((released[hold_id].occurred_at, -1))
            elif hold_id in conversions:
                converted[key] += 1
            else:
                held[key] += 1
    for slot in slots:
        key = (str(slot.service_id), slot.slot_start)
        subject = f"{slot.service_id}/{slot.slot_start.isoformat()}"
        over = _over_capacity(sorted(changes.get(key, [])), slot.capacity)
        if over is not None:
            seats, since = over
            out.append(
                Violation(
                    2,
                    subject,
                    f"{seats} seats in use from {since.isoformat()}, capacity {slot.capacity}",
                )
            )
        if (slot.held, slot.confirmed) != (held[key], converted[key]):
            out.append(
                Violation(
                    2,
                    subject,
                    f"counters held={slot.held} confirmed={slot.confirmed}, the log leaves "
                    f"held={held[key]} converted={converted[key]}",
                )
            )
    return out


# A seat one agent process released and another took at once can carry times up to this far
# apart in the wrong order (each stamps its event when its handler started, not when it won the
# slot's row lock); an overbooking is a state that lasts longer than that.
CLOCK_TOLERANCE = timedelta(seconds=1)


def _over_capacity(
    changes: Sequence[tuple[datetime, int]], capacity: int
) -> tuple[int, datetime] | None:
    """The most seats in use while over ``capacity`` for longer than ``CLOCK_TOLERANCE`` (or
    to the end of the log), and since when; None if never."""
    in_use = peak = 0
    since: datetime | None = None
    # Sorted by (time, change): at one instant releases count first, a seat freed and retaken
    # is one seat.
    for at, delta in changes:
        if since is not None and at - since > CLOCK_TOLERANCE:
            return peak, since
        in_use += delta
        if in_use > capacity:
            since = since or at
            peak = max(peak, in_use)
        else:
            since, peak = None, 0
    return (peak, since) if since is not None else None


# --- 3 ------------------------------------------------------------------------------------


@dataclass
class _Charge:
    """One payment at the gateway, whatever the gateway."""

    payment_id: str
    authorized: bool = False  # money was (or may be) reserved
    open: bool = False  # still reserved: neither captured nor cancelled
    captures: int = 0
    captured_minor: int = 0
    voided: bool = False
    refunds: int = 0
    refunded_minor: int = 0


def _ledger_charges(s: BookingState, rows: Sequence[LedgerRow]) -> list[_Charge]:
    charges: dict[str, _Charge] = {}
    for row in rows:
        c = charges.setdefault(row.payment_id, _Charge(row.payment_id))
        if row.operation == "authorize":
            # One that needed the customer's action holds money unless it failed.
            c.authorized = (
                c.authorized
                or row.outcome == "authorized"
                or (row.outcome == "action_required" and s.payment != Payment.FAILED)
            )
        elif row.operation == "capture" and row.outcome == "captured":
            c.captures += 1
            c.captured_minor += row.amount_minor
        elif row.operation == "void" and row.outcome == "voided":
            c.voided = True
        elif row.operation == "refund" and row.outcome == "refunded":
            c.refunds += 1
            c.refunded_minor += row.amount_minor
    for c in charges.values():
        c.open = c.authorized and not c.captures and not c.voided
    return list(charges.values())


_HELD_INTENT = frozenset(
    {"requires_capture", "requires_action", "requires_confirmation", "processing"}
)


def _intent_charges(intents: Sequence[PaymentIntent]) -> list[_Charge]:
    return [
        _Charge(
            i.payment_id,
            authorized=i.status in ("requires_capture", "succeeded", "processing")
            or i.amount_received > 0,
            open=i.status in _HELD_INTENT,
            captures=1 if i.amount_received > 0 else 0,
            captured_minor=i.amount_received,
            voided=i.status == "canceled",
            refunds=1 if i.amount_refunded > 0 else 0,
            refunded_minor=i.amount_refunded,
        )
        for i in intents
    ]


def _money(
    s: BookingState,
    log: Sequence[BookingEvent],
    ledger: Sequence[LedgerRow],
    intents: Sequence[PaymentIntent] | None,
    policy: saga.Policy,
) -> list[Violation]:
    gateways = {e.gateway for e in log if isinstance(e, ev.PaymentAuthorized)}
    if intents is not None:
        charges = _intent_charges(intents)
    elif "stripe" in gateways:
        return []  # Stripe's records were not gathered: nothing to judge the money by
    else:
        charges = _ledger_charges(s, ledger)
    out: list[Violation] = []
    b = s.booking_id
    authorize_calls = sum(1 for r in ledger if r.operation == "authorize") if intents is None else 0
    authorized = sum(1 for c in charges if c.authorized)
    if max(authorize_calls, authorized) > 1:
        out.append(Violation(3, b, f"authorized {max(authorize_calls, authorized)} times"))
    captures = sum(c.captures for c in charges)
    captured = sum(c.captured_minor for c in charges)
    refunds = sum(c.refunds for c in charges)
    refunded = sum(c.refunded_minor for c in charges)
    if captures > 1:
        out.append(Violation(3, b, f"captured {captures} times"))
    if refunds > 1:
        out.append(Violation(3, b, f"refunded {refunds} times"))
    if refunded and not captured:
        out.append(Violation(3, b, "refunded without a capture"))
    elif refunded > captured:
        out.append(Violation(3, b, f"refunded {refunded} of {captured} captured"))
    for c in charges:
        if c.captures and c.voided:
            out.append(Violation(3, b, f"{c.payment_id} both captured and voided"))
    price = s.price.amount_minor
    if s.status == Status.CONFIRMED:
        if captures != 1:
            out.append(Violation(3, b, f"confirmed but captured {captures} times"))
        elif captured != price:
            out.append(Violation(3, b, f"confirmed for {price} but captured {captured}"))
    elif captures:
        kept = s.status == Status.CANCELLED and policy.refund_policy == "none"
        paid_back = s.status == Status.CANCELLED and refunded >= captured
        if not (kept or paid_back):
            out.append(Violation(3, b, f"captured but {s.status.value} and not refunded"))
    if s.status in saga.TERMINAL:
        for c in charges:
            if c.open:
                out.append(
                    Violation(3, b, f"authorization {c.payment_id} neither captured nor voided")
                )
    if s.payment in (Payment.CAPTURED, Payment.REFUNDED) and not captures:
        out.append(Violation(3, b, f"the log says {s.payment.value}, the gateway has no capture"))
    if s.payment == Payment.REFUNDED and not refunded:
        out.append(Violation(3, b, "the log says refunded, the gateway refunded nothing"))
    return out


# --- 4 ------------------------------------------------------------------------------------


def _hold(s: BookingState, hold: str | None) -> list[Violation]:
    b = s.booking_id
    out: list[Violation] = []
    if s.status in saga.TERMINAL and s.hold in (Hold.HELD, Hold.CONVERTED):
        out.append(Violation(4, b, f"{s.status.value} but the log never released its hold"))
    if s.status in saga.TERMINAL and hold in ("held", "converted"):
        out.append(Violation(4, b, f"{s.status.value} but its hold is still {hold}"))
    if s.status == Status.CONFIRMED and hold != "converted":
        out.append(Violation(4, b, f"confirmed but its hold is {hold or 'missing'}"))
    if s.hold == Hold.HELD and hold is None:
        out.append(Violation(4, b, "the log says held but no hold exists"))
    return out


# --- 5 ------------------------------------------------------------------------------------


def _notifications(
    s: BookingState,
    log: Sequence[BookingEvent],
    deliveries: Sequence[Delivery],
    received: Sequence[Received] | None,
) -> list[Violation]:
    out: list[Violation] = []
    b = s.booking_id
    recorded: Counter[tuple[str, str]] = Counter(
        (e.template, e.channel)
        for e in log
        if isinstance(e, ev.NotificationSent | ev.NotificationFailed)
    )
    for (template, channel), count in sorted(recorded.items()):
        if count > 1:
            out.append(Violation(5, b, f"{template} via {channel} recorded {count} times"))
    if received is not None:
        ids: dict[tuple[str, str], set[str]] = defaultdict(set)
        for r in received:
            ids[(r.template, r.channel)].add(r.message_id)
        for (template, channel), distinct in sorted(ids.items()):
            if len(distinct) > 1:
                out.append(
                    Violation(5, b, f"{template} received {len(distinct)} times via {channel}")
                )
        for d in deliveries:
            if d.channel != "synthetic" and not ids.get((d.template, d.channel)):
                out.append(
                    Violation(
                        5, b, f"{d.template} recorded as delivered via {d.channel}, never received"
                    )
                )
    # The provider's request is not required: when the notification agent lags (a restart)
    # past the whole wait, telling the provider a request "is waiting" would be stale, and the
    # rules rightly skip it. The customer's outcome is never stale.
    if s.is_outcome and saga.customer_template(s.status) not in s.notified:
        out.append(Violation(5, b, f"the customer was never told the booking is {s.status.value}"))
    return out


# --- 6 ------------------------------------------------------------------------------------


def _differences(expected: BookingState, actual: BookingState) -> list[str]:
    return [
        f"{name} {getattr(actual, name)!s} (log: {getattr(expected, name)!s})"
        for name in _STATE_FIELDS
        if getattr(actual, name) != getattr(expected, name)
    ]


def _read_model(
    s: BookingState, row: Mapping[str, Any] | None, materializer: bool
) -> list[Violation]:
    b = s.booking_id
    if not materializer and (row is None or row.get("state", {}) is None):
        return []
    if row is None:
        return [Violation(6, b, "missing from the read model")]
    if "state" in row and row["state"] is None:
        return [Violation(6, b, "the read model never folded its events (row as the API wrote it)")]
    expected = {
        "status": s.status.value,
        "hold": s.hold.value,
        "payment": s.payment.value,
        "payment_id": s.payment_id,
        "provider_deadline_at": s.provider_deadline_at,
        "provider_notified": s.provider_notified,
        "customer_notified": s.customer_notified,
        "failure_reason": s.failure_reason,
        "events_applied": s.events_applied,
    }
    diffs = [
        f"{column} {row[column]!s} (log: {expected[column]!s})"
        for column in _ROW_COLUMNS
        if column in row and row[column] != expected[column]
    ]
    if row.get("state") is not None:
        diffs += [f"state.{d}" for d in _differences(s, BookingState.from_json(row["state"]))]
    if diffs:
        return [
            Violation(6, b, "the read model differs from the fold of the log: " + "; ".join(diffs))
        ]
    return []


def agent_log(
    agent: str, consumes: frozenset[str], log: Sequence[BookingEvent]
) -> list[BookingEvent]:
    """The events an agent folds: those it consumes and those it produced."""
    return [e for e in log if e.event_type in consumes or e.producer == agent]


def _agent_states(
    s: BookingState, log: Sequence[BookingEvent], evidence: Evidence
) -> list[Violation]:
    out: list[Violation] = []
    b = s.booking_id
    for agent, view in sorted(evidence.agents.items()):
        expected = fold_log(agent_log(agent, view.consumes, log))
        if expected is None:
            continue
        actual = evidence.agent_states.get(agent, {}).get(b)
        if actual is None:
            out.append(Violation(6, b, f"agent {agent} keeps no state for the booking"))
            continue
        diffs = _differences(expected, actual)
        if diffs:
            out.append(
                Violation(
                    6,
                    b,
                    f"agent {agent}'s state differs from its events' fold: " + "; ".join(diffs),
                )
            )
    return out


# --- 7 ------------------------------------------------------------------------------------


def _processed(b: str, log: Sequence[BookingEvent], evidence: Evidence) -> list[Violation]:
    out: list[Violation] = []
    parked: dict[str, set[str]] = defaultdict(set)
    for p in evidence.parked or ():
        if p.event_id is not None:
            parked[p.consumer].add(p.event_id)
    for agent, view in sorted(evidence.agents.items()):
        done = evidence.processed.get(agent, set())
        for e in log:
            if e.event_type in view.consumes and e.event_id not in done | parked[agent]:
                out.append(
                    Violation(
                        7,
                        b,
                        f"{e.event_type} {e.event_id} neither processed by {agent} "
                        "nor in its dead-letter topic",
                    )
                )
    if evidence.materialized is not None:
        for e in log:
            if e.event_id not in evidence.materialized:
                out.append(
                    Violation(
                        7, b, f"{e.event_type} {e.event_id} missing from the read model's log"
                    )
                )
    return out


# --- 8 ------------------------------------------------------------------------------------


def _requests(
    requests: Sequence[ClientRequest],
    logs: Mapping[str, Sequence[BookingEvent]],
    folds: Mapping[str, BookingState | None],
) -> list[Violation]:
    out: list[Violation] = []
    for r in requests:
        if r.outcome != "acknowledged" or r.booking_id is None:
            continue
        b = r.booking_id
        log = logs.get(b, [])
        state = folds.get(b)
        if r.kind == "create":
            count = sum(1 for e in log if isinstance(e, ev.BookingRequested))
            if count != 1:
                out.append(Violation(8, b, f"acknowledged create has {count} BookingRequested"))
        elif r.kind in ("accept", "reject"):
            out += _answer(r, log, state)
        elif r.kind == "cancel":
            out += _cancel(r, log, state)
        elif r.kind == "webhook" and not any(isinstance(e, ev.StripeEventReceived) for e in log):
            out.append(Violation(8, b, "acknowledged webhook has no StripeEventReceived"))
    out += _duplicates(requests, logs)
    return out


def _answer(
    r: ClientRequest, log: Sequence[BookingEvent], s: BookingState | None
) -> list[Violation]:
    b = r.booking_id or ""
    decision = "accept" if r.kind == "accept" else "reject"
    answers = [
        e for e in log if isinstance(e, ev.ProviderAnswerSubmitted) and e.decision == decision
    ]
    if not answers:
        return [Violation(8, b, f"acknowledged {r.kind} has no ProviderAnswerSubmitted")]
    # Judged by when PostgreSQL took the answer (the event's occurred_at is its submitted_at),
    # not when the 202 reached the client: a COMMIT that ends after the deadline still
    # answers an answer taken before it.
    taken = min(e.occurred_at for e in answers)
    if s is None or s.provider_deadline_at is None or taken >= s.provider_deadline_at:
        return []
    lost_to = {"accept": ("timed_out", "rejected"), "reject": ("timed_out", "accepted")}[r.kind]
    if s.provider_outcome in lost_to:
        return [
            Violation(
                8,
                b,
                f"{r.kind} taken at {taken.isoformat()}, before the deadline "
                f"{s.provider_deadline_at.isoformat()}, but the provider outcome is "
                f"{s.provider_outcome}",
            )
        ]
    return []


def _cancel(
    r: ClientRequest, log: Sequence[BookingEvent], s: BookingState | None
) -> list[Violation]:
    b = r.booking_id or ""
    if not any(isinstance(e, ev.BookingCancellationRequested) for e in log):
        return [Violation(8, b, "acknowledged cancel has no BookingCancellationRequested")]
    if s is None or s.status == Status.CANCELLED:
        return []
    before = fold_log([e for e in log if e.occurred_at <= r.at])
    if before is not None and before.status in saga.TERMINAL:
        return []  # it had already ended when the cancel was acknowledged
    was = before.status.value if before is not None else "unknown"
    return [
        Violation(
            8,
            b,
            f"cancel acknowledged at {r.at.isoformat()} while {was}, but it ended {s.status.value}",
        )
    ]


def _duplicates(
    requests: Sequence[ClientRequest], logs: Mapping[str, Sequence[BookingEvent]]
) -> list[Violation]:
    """More bookings for (customer, service, slot, idempotency key) than create requests that
    may have taken effect (acknowledged, or unanswered)."""
    Key = tuple[str, str, datetime, str | None]
    may_have: dict[Key, set[str]] = {}
    first_sent: dict[Key, datetime] = {}
    for r in requests:
        if r.kind != "create" or r.customer_id is None or r.service_id is None:
            continue
        if r.slot_start is None:
            continue
        key = (r.customer_id, str(r.service_id), r.slot_start, r.idempotency_key)
        may_have.setdefault(key, set())
        if r.outcome != "refused":
            may_have[key].add(r.request_key)
        if r.sent_at is not None:
            first_sent[key] = min(first_sent.get(key, r.sent_at), r.sent_at)
    bookings: dict[Key, set[str]] = defaultdict(set)
    for b, log in logs.items():
        for e in log:
            if isinstance(e, ev.BookingRequested):
                key = (e.customer_id, str(e.service_id), e.slot_start, e.idempotency_key)
                if key in may_have and (key not in first_sent or e.occurred_at >= first_sent[key]):
                    bookings[key].add(b)
    out: list[Violation] = []
    for key, found in sorted(bookings.items(), key=lambda kv: sorted(kv[1])):
        allowed = len(may_have[key])
        if len(found) > allowed:
            out.append(
                Violation(
                    8,
                    ",".join(sorted(found)),
                    f"{len(found)} bookings of {key[0]} for {key[1]}/{key[2].isoformat()} "
                    f"from {allowed} create request(s) that may have taken effect",
                )
            )
    return out


# --- 9 ------------------------------------------------------------------------------------


def _stalled(
    s: BookingState,
    log: Sequence[BookingEvent],
    now: datetime,
    policy: saga.Policy,
    stall_after: timedelta,
) -> list[Violation]:
    if not log:
        return []
    last = max(e.occurred_at for e in log)
    for agent in AGENTS:
        for action in saga.next_actions(agent, s, now, policy):
            due = last
            if isinstance(action, saga.TimeOutProvider) and s.provider_deadline_at is not None:
                due = max(due, s.provider_deadline_at)
            expires = saga.payment_action_expires_at(s, policy)
            if isinstance(action, saga.AbandonPayment) and expires is not None:
                due = max(due, expires)
            if now - due > stall_after:
                return [
                    Violation(
                        9,
                        s.booking_id,
                        f"needs an operator: {agent} has {type(action).__name__} pending "
                        f"since {due.isoformat()}",
                    )
                ]
    return []


def _parked(evidence: Evidence, ids: set[str]) -> list[Violation]:
    return [
        Violation(
            9,
            p.booking_id or "?",
            f"{p.event_type or 'a message'} parked in {p.consumer}'s dead-letter topic by "
            f"{p.error_class or 'an error'}, an outage-class (retryable) failure",
        )
        for p in evidence.parked or ()
        if p.booking_id in ids and p.error_kind == "retryable"
    ]
