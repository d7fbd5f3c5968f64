"""DESIGN.md's invariants 1-5, checked over the evidence a run leaves behind.

    violations = await check_invariants(pool, booking_ids)
    assert not violations, "\n".join(map(str, violations))

Evidence (``gather``): the event log (``booking_events``, written by the materializer; or the
events a test read from the topics itself, passed as ``events``), the read model
(``bookings``), the sandbox gateway's ledger, ``slot_capacity`` with ``reservation_holds``, and
``notification_deliveries``. ``evaluate`` is pure, so the unit tests feed it hand-made evidence
that breaks each rule (a checker that cannot fail proves nothing).

1. Every booking reached an outcome (``confirmed`` or a terminal status), or waits in
   ``awaiting_provider`` before its deadline (or in ``payment_action_required`` for the
   customer); the read model shows the same status as the fold of the log.
2. Per (service, slot): held + confirmed ≤ capacity, and the counts equal the holds in state
   held / converted.
3. Money: captured at most once; captured ⇔ confirmed (or cancelled and refunded, or kept under
   refund policy "none"); once terminal, every authorization was captured or voided; a refund
   only of a capture, at most once.
4. Once terminal, a booking's hold is released (confirmed: converted).
5. Each notification delivered at most once per channel (and recorded once); the customer told
   the outcome. (Not the provider's request: it is rightly skipped when the notification agent
   lags past the whole wait, e.g. after a restart.)

Used by the saga's integration tests and, later, by the load tests.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from erynoa import saga
from erynoa.codec import EventCodec, default_codec
from erynoa.events import BookingEvent, NotificationFailed, NotificationSent
from erynoa.saga import BookingState, Hold, Payment, Status

DEFAULT_POLICY = saga.Policy()


@dataclass(frozen=True)
class Violation:
    rule: int
    subject: str  # a booking id, or "service/slot"
    message: str

    def __str__(self) -> str:
        return f"invariant {self.rule} [{self.subject}]: {self.message}"


@dataclass(frozen=True)
class LedgerRow:
    booking_id: str
    payment_id: str
    operation: str  # authorize | capture | void | refund
    outcome: str
    amount_minor: int


@dataclass(frozen=True)
class Slot:
    service_id: str
    slot_start: datetime
    capacity: int
    held: int
    confirmed: int
    holds_held: int
    holds_converted: int


@dataclass(frozen=True)
class Delivery:
    booking_id: str
    notification_id: str
    channel: str
    template: str


@dataclass
class Evidence:
    events: dict[str, list[BookingEvent]] = field(default_factory=dict)
    read_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger: dict[str, list[LedgerRow]] = field(default_factory=dict)
    holds: dict[str, str] = field(default_factory=dict)  # booking → held|converted|released
    slots: list[Slot] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)


async def gather(
    pool: asyncpg.Pool,
    booking_ids: Iterable[str],
    events: Mapping[str, Sequence[BookingEvent]] | None = None,
    codec: EventCodec | None = None,
) -> Evidence:
    """Everything the invariants need for ``booking_ids`` (events from the log unless given)."""
    ids = sorted(set(booking_ids))
    codec = codec or default_codec()
    evidence = Evidence()
    if events is None:
        rows = await pool.fetch(
            "SELECT booking_id::text, body FROM booking_events WHERE booking_id = ANY($1::uuid[])",
            ids,
        )
        found: dict[str, list[BookingEvent]] = defaultdict(list)
        for row in rows:
            event = codec.decode(bytes(row["body"]))
            assert isinstance(event, BookingEvent)
            found[row["booking_id"]].append(event)
        evidence.events = dict(found)
    else:
        evidence.events = {b: list(events.get(b, ())) for b in ids}
    for row in await pool.fetch(
        "SELECT id::text, status, hold, payment FROM bookings WHERE id = ANY($1::uuid[])", ids
    ):
        evidence.read_model[row["id"]] = dict(row)
    ledger: dict[str, list[LedgerRow]] = defaultdict(list)
    for row in await pool.fetch(
        """SELECT booking_id::text, payment_id, operation, outcome, amount_minor
           FROM sandbox_ledger WHERE booking_id = ANY($1::uuid[]) ORDER BY id""",
        ids,
    ):
        ledger[row["booking_id"]].append(
            LedgerRow(
                row["booking_id"],
                row["payment_id"],
                row["operation"],
                row["outcome"],
                int(row["amount_minor"]),
            )
        )
    evidence.ledger = dict(ledger)
    hold_rows = await pool.fetch(
        """SELECT booking_id::text, status, service_id, slot_start FROM reservation_holds
           WHERE booking_id = ANY($1::uuid[])""",
        ids,
    )
    evidence.holds = {r["booking_id"]: r["status"] for r in hold_rows}
    slot_keys = {(r["service_id"], r["slot_start"]) for r in hold_rows}
    for service_id, slot_start in sorted(slot_keys):
        row = await pool.fetchrow(
            """SELECT c.capacity, c.held, c.confirmed,
                      count(*) FILTER (WHERE h.status = 'held') AS holds_held,
                      count(*) FILTER (WHERE h.status = 'converted') AS holds_converted
               FROM slot_capacity c
               LEFT JOIN reservation_holds h
                 ON h.service_id = c.service_id AND h.slot_start = c.slot_start
               WHERE c.service_id = $1 AND c.slot_start = $2
               GROUP BY c.capacity, c.held, c.confirmed""",
            service_id,
            slot_start,
        )
        if row is not None:
            evidence.slots.append(
                Slot(
                    str(service_id),
                    slot_start,
                    row["capacity"],
                    row["held"],
                    row["confirmed"],
                    row["holds_held"],
                    row["holds_converted"],
                )
            )
    for row in await pool.fetch(
        """SELECT booking_id::text, notification_id, channel, template
           FROM notification_deliveries WHERE booking_id = ANY($1::uuid[])""",
        ids,
    ):
        evidence.deliveries.append(
            Delivery(row["booking_id"], row["notification_id"], row["channel"], row["template"])
        )
    return evidence


async def check_invariants(
    pool: asyncpg.Pool,
    booking_ids: Iterable[str],
    *,
    events: Mapping[str, Sequence[BookingEvent]] | None = None,
    now: datetime | None = None,
    policy: saga.Policy = DEFAULT_POLICY,
    deadline_grace: timedelta = timedelta(seconds=5),
) -> list[Violation]:
    """Every violation of invariants 1-5 for ``booking_ids`` (empty when all hold)."""
    ids = list(booking_ids)
    evidence = await gather(pool, ids, events)
    return evaluate(evidence, ids, now or datetime.now(UTC), policy, deadline_grace)


def fold_log(events: Sequence[BookingEvent]) -> BookingState | None:
    """The booking as the log says, in (occurred_at, event_id) order like the materializer."""
    unique = {e.event_id: e for e in events}
    ordered = sorted(unique.values(), key=lambda e: (e.occurred_at, e.event_id))
    requested = [e for e in ordered if e.event_type == "BookingRequested"]
    rest = [e for e in ordered if e.event_type != "BookingRequested"]
    return saga.fold([*requested[:1], *rest]) if requested else None


def evaluate(
    evidence: Evidence,
    booking_ids: Iterable[str],
    now: datetime,
    policy: saga.Policy = DEFAULT_POLICY,
    deadline_grace: timedelta = timedelta(seconds=5),
) -> list[Violation]:
    violations: list[Violation] = []
    for booking_id in booking_ids:
        state = fold_log(evidence.events.get(booking_id, []))
        if state is None:
            violations.append(Violation(1, booking_id, "no BookingRequested in the event log"))
            continue
        violations += _outcome(state, evidence.read_model.get(booking_id), now, deadline_grace)
        violations += _money(state, evidence.ledger.get(booking_id, []), policy)
        violations += _hold(state, evidence.holds.get(booking_id))
        violations += _notifications(
            state,
            evidence.events.get(booking_id, []),
            [d for d in evidence.deliveries if d.booking_id == booking_id],
        )
    violations += _capacity(evidence.slots)
    return violations


def _outcome(
    s: BookingState, row: Mapping[str, Any] | None, now: datetime, grace: timedelta
) -> list[Violation]:
    out: list[Violation] = []
    waiting = (
        s.status == Status.AWAITING_PROVIDER
        and s.provider_deadline_at is not None
        and now < s.provider_deadline_at + grace
    ) or s.status == Status.PAYMENT_ACTION_REQUIRED
    if not s.is_outcome and not waiting:
        deadline = (
            f" (deadline {s.provider_deadline_at.isoformat()})" if s.provider_deadline_at else ""
        )
        out.append(Violation(1, s.booking_id, f"stuck in {s.status.value}{deadline}"))
    if row is not None and row["status"] != s.status.value:
        out.append(
            Violation(
                1,
                s.booking_id,
                f"read model says {row['status']}, the event log folds to {s.status.value}",
            )
        )
    return out


def _money(s: BookingState, ledger: Sequence[LedgerRow], policy: saga.Policy) -> list[Violation]:
    out: list[Violation] = []
    b = s.booking_id
    ops = Counter(r.operation for r in ledger)
    captured = [r for r in ledger if r.operation == "capture" and r.outcome == "captured"]
    voided = [r for r in ledger if r.operation == "void" and r.outcome == "voided"]
    refunded = [r for r in ledger if r.operation == "refund" and r.outcome == "refunded"]
    # An authorization that needed customer action holds money only if it went through.
    authorized = [
        r
        for r in ledger
        if r.operation == "authorize"
        and (
            r.outcome == "authorized"
            or (r.outcome == "action_required" and s.payment != Payment.FAILED)
        )
    ]
    if ops["authorize"] > 1:
        out.append(Violation(3, b, f"authorized {ops['authorize']} times"))
    if len(captured) > 1:
        out.append(Violation(3, b, f"captured {len(captured)} times"))
    if len(refunded) > 1:
        out.append(Violation(3, b, f"refunded {len(refunded)} times"))
    if refunded and not captured:
        out.append(Violation(3, b, "refunded without a capture"))
    if captured and voided:
        out.append(Violation(3, b, "both captured and voided"))
    if s.status == Status.CONFIRMED and len(captured) != 1:
        out.append(Violation(3, b, f"confirmed but captured {len(captured)} times"))
    if captured and s.status != Status.CONFIRMED:
        kept = s.status == Status.CANCELLED and policy.refund_policy == "none"
        if not (s.status == Status.CANCELLED and refunded) and not kept:
            out.append(Violation(3, b, f"captured but {s.status.value} and not refunded"))
    if s.status in saga.TERMINAL:
        for auth in authorized:
            if not captured and not voided:
                out.append(
                    Violation(3, b, f"authorization {auth.payment_id} neither captured nor voided")
                )
    return out


def _hold(s: BookingState, hold: str | None) -> list[Violation]:
    if s.status in saga.TERMINAL and hold in ("held", "converted"):
        return [Violation(4, s.booking_id, f"{s.status.value} but its hold is still {hold}")]
    if s.status == Status.CONFIRMED and hold != "converted":
        return [Violation(4, s.booking_id, f"confirmed but its hold is {hold or 'missing'}")]
    if s.hold == Hold.HELD and hold is None:
        return [Violation(4, s.booking_id, "the log says held but no hold exists")]
    return []


def _notifications(
    s: BookingState, events: Sequence[BookingEvent], deliveries: Sequence[Delivery]
) -> list[Violation]:
    out: list[Violation] = []
    b = s.booking_id
    unique = {e.event_id: e for e in events}.values()
    outcomes: Counter[tuple[str, str]] = Counter(
        (e.template, e.channel)
        for e in unique
        if isinstance(e, NotificationSent | NotificationFailed)
    )
    for (template, channel), count in outcomes.items():
        if count > 1:
            out.append(Violation(5, b, f"{template} via {channel} recorded {count} times"))
    per_channel = Counter((d.notification_id, d.channel) for d in deliveries)
    for (nid, via), count in per_channel.items():
        if count > 1:
            out.append(Violation(5, b, f"notification {nid} delivered {count} times via {via}"))
    # The provider's request is not required: when the notification agent lags (a restart)
    # past the whole wait, telling the provider a request "is waiting" would be stale, and the
    # rules rightly skip it. The customer's outcome is never stale.
    if s.is_outcome and saga.customer_template(s.status) not in s.notified:
        out.append(Violation(5, b, f"the customer was never told the booking is {s.status.value}"))
    return out


def _capacity(slots: Sequence[Slot]) -> list[Violation]:
    out: list[Violation] = []
    for slot in slots:
        subject = f"{slot.service_id}/{slot.slot_start.isoformat()}"
        if slot.held + slot.confirmed > slot.capacity:
            out.append(
                Violation(
                    2, subject, f"held {slot.held} + confirmed {slot.confirmed} > {slot.capacity}"
                )
            )
        if slot.held != slot.holds_held or slot.confirmed != slot.holds_converted:
            out.append(
                Violation(
                    2,
                    subject,
                    f"counts held={slot.held} confirmed={slot.confirmed} but holds "
                    f"held={slot.holds_held} converted={slot.holds_converted}",
                )
            )
    return out
