"""What a run measured, computed from the event log the materializer wrote.

For each booking the run requested, ``booking_events`` holds every event with two times:
``occurred_at`` (when the producing agent made the event) and ``recorded_at`` (when the
materializer's transaction wrote it, i.e. when the read model could first show it). From them:

* **end to end**: the request's send time (loadgen's clock, same machine) to the moment the
  read model first showed the booking's final status. The read model at a moment is the fold
  of the events recorded by then, in ``(occurred_at, event_id)`` order — exactly what the
  materializer stores — so the outcome's moment is found by folding the booking's events
  batch by batch in the order they were recorded (``erynoa.saga.evolve``).
* **per step**: ``occurred_at`` differences between the first event of each step.
* **event → read model**: ``recorded_at - occurred_at`` over every event (materializer lag).
* **throughput**: outcomes in the read model per second, and saga events per second.

``timeline`` and ``build_report`` are pure (unit-tested with hand-made events); ``analyze``
fetches and decodes the rows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from erynoa import saga
from erynoa.codec import EventCodec
from erynoa.events import BookingEvent
from erynoa.saga import OUTCOMES, BookingState, Status
from loadgen import stats
from loadgen.model import RunData
from loadgen.profile import EXPECTED_STATUS, Intent
from loadgen.stats import LatencySummary, rate, series, steady_rate

# (name, from event types, to event types): first occurrence of each, by occurred_at.
STEPS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("requested → held", ("BookingRequested",), ("ReservationHeld",)),
    ("held → authorized", ("ReservationHeld",), ("PaymentAuthorized",)),
    (
        "authorized → provider answer",
        ("PaymentAuthorized",),
        ("ProviderAccepted", "ProviderRejected", "ProviderTimedOut"),
    ),
    (
        "answer submitted → decided",
        ("ProviderAnswerSubmitted",),
        ("ProviderAccepted", "ProviderRejected"),
    ),
    ("accepted → captured", ("ProviderAccepted",), ("PaymentCaptured",)),
)
STEP_NOTES = {
    "authorized → provider answer": "includes the simulated provider's delay, its wait "
    "for the read model and the watcher's poll interval",
}


@dataclass(frozen=True)
class Recorded:
    """One row of ``booking_events``, decoded."""

    event: BookingEvent
    recorded_at: datetime


@dataclass
class Timeline:
    """One booking's measured life."""

    booking_id: str
    final: BookingState | None
    outcome_visible_at: float | None  # epoch s: the read model first showed the final outcome
    outcome_occurred_at: float | None  # epoch s: the event that decided it was made
    steps: dict[str, float] = field(default_factory=dict)  # step name → seconds
    event_lags: list[float] = field(default_factory=list)  # recorded_at - occurred_at, s
    events: int = 0
    last_recorded_at: float | None = None


def _order(events: Iterable[BookingEvent]) -> list[BookingEvent]:
    """The materializer's order: the request first, the rest by (occurred_at, event_id)."""
    unique = {e.event_id: e for e in events}
    ordered = sorted(unique.values(), key=lambda e: (e.occurred_at, e.event_id))
    requested = [e for e in ordered if e.event_type == "BookingRequested"]
    rest = [e for e in ordered if e.event_type != "BookingRequested"]
    return [*requested[:1], *rest] if requested else []


def timeline(booking_id: str, rows: Sequence[Recorded]) -> Timeline:
    """Measure one booking from its recorded events (any order)."""
    result = Timeline(booking_id, None, None, None, events=len(rows))
    if not rows:
        return result
    result.event_lags = [
        max(0.0, (r.recorded_at - r.event.occurred_at).total_seconds()) for r in rows
    ]
    result.last_recorded_at = max(r.recorded_at for r in rows).timestamp()
    ordered = _order(r.event for r in rows)
    states: list[BookingState] = []
    state: BookingState | None = None
    for event in ordered:
        state = saga.evolve(state, event)
        states.append(state)
    final = states[-1] if states else None
    result.final = final
    if final is None:
        return result

    if final.status in OUTCOMES:
        # The event that decided the outcome: from it on, the status stays the final one.
        decider = len(states) - 1
        while decider > 0 and states[decider - 1].status == final.status:
            decider -= 1
        decided_by = ordered[decider]
        result.outcome_occurred_at = decided_by.occurred_at.timestamp()
        # When did the read model first show it? It is the fold of what was recorded by then
        # (one materializer transaction shares one recorded_at), so fold batch by batch from
        # the batch that recorded the deciding event; usually that batch is the answer.
        recorded_at = {r.event.event_id: r.recorded_at for r in rows}
        since = recorded_at[decided_by.event_id]
        moments = sorted({r.recorded_at for r in rows if r.recorded_at >= since})
        for moment in moments:
            seen = [r.event for r in rows if r.recorded_at <= moment]
            folded = saga.fold(_order(seen))
            if folded is not None and folded.status == final.status:
                result.outcome_visible_at = moment.timestamp()
                break

    first: dict[str, float] = {}
    for r in rows:
        t = r.event.occurred_at.timestamp()
        if r.event.event_type not in first or t < first[r.event.event_type]:
            first[r.event.event_type] = t
    for name, starts, ends in STEPS:
        begin = min((first[t] for t in starts if t in first), default=None)
        end = min((first[t] for t in ends if t in first), default=None)
        if begin is not None and end is not None:
            result.steps[name] = max(0.0, end - begin)
    captured = [r for r in rows if r.event.event_type == "PaymentCaptured"]
    if captured and result.outcome_visible_at is not None and final.status == Status.CONFIRMED:
        occurred = min(r.event.occurred_at.timestamp() for r in captured)
        result.steps["captured → confirmed in read model"] = max(
            0.0, result.outcome_visible_at - occurred
        )
    return result


@dataclass(frozen=True)
class SeriesPoint:
    """One second of the run (from the first send): what was sent and completed in it, the
    completed sagas' latency, and the largest consumer lag sampled (None: no sample)."""

    t_s: float
    sent: int
    completed: int
    p50_ms: float
    p99_ms: float
    max_lag: int | None


@dataclass
class Report:
    """The run's results; ``to_json`` is what the JSON file holds."""

    run: dict[str, Any]
    throughput: dict[str, float]
    latency: dict[str, LatencySummary]
    latency_by_status: dict[str, LatencySummary]
    steps: dict[str, LatencySummary]
    outcomes: dict[str, Any]
    unfinished: dict[str, int]
    errors: dict[str, int]
    consumer_lag: dict[str, Any]
    series: list[SeriesPoint]
    invariants: dict[str, Any] = field(
        default_factory=lambda: {"checked": False, "error": "not run", "violations": []}
    )

    @property
    def violations(self) -> list[str]:
        return list(self.invariants.get("violations", []))

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "throughput": {k: round(v, 2) for k, v in self.throughput.items()},
            "latency_ms": {k: v.to_json() for k, v in self.latency.items()},
            "latency_ms_by_status": {k: v.to_json() for k, v in self.latency_by_status.items()},
            "steps_ms": {k: v.to_json() for k, v in self.steps.items()},
            "step_notes": STEP_NOTES,
            "outcomes": self.outcomes,
            "unfinished": self.unfinished,
            "errors": self.errors,
            "consumer_lag": self.consumer_lag,
            "invariants": self.invariants,
            "series": [asdict(point) for point in self.series],
        }


def build_report(data: RunData, timelines: dict[str, Timeline]) -> Report:
    """The report of a run from its records and its bookings' timelines (pure)."""
    tracked = data.tracked
    t0 = data.send_started
    e2e: list[float] = []
    by_status: dict[str, list[float]] = defaultdict(list)
    visible_times: list[float] = []
    points: list[tuple[float, float]] = []
    steps: dict[str, list[float]] = defaultdict(list)
    event_lags: list[float] = []
    total_events = 0
    last_recorded = t0
    for booking_id, tr in tracked.items():
        tl = timelines.get(booking_id)
        if tl is None:
            continue
        total_events += tl.events
        event_lags.extend(tl.event_lags)
        if tl.last_recorded_at is not None:
            last_recorded = max(last_recorded, tl.last_recorded_at)
        for name, seconds in tl.steps.items():
            steps[name].append(seconds)
        if tl.outcome_visible_at is not None and tl.final is not None:
            took = max(0.0, tl.outcome_visible_at - tr.sent_at)
            e2e.append(took)
            by_status[tl.final.status.value].append(took)
            visible_times.append(tl.outcome_visible_at)
            points.append((tl.outcome_visible_at - t0, took))

    # Does latency climb over the run? The median of the first and the last fifth of the
    # bookings by send time: a backlog that grows shows as a last fifth far above the first.
    by_send = sorted(
        (tr.sent_at, timelines[b].outcome_visible_at)
        for b, tr in tracked.items()
        if b in timelines and timelines[b].outcome_visible_at is not None
    )
    fifth = max(1, len(by_send) // 5)
    first_fifth = stats.summarize(v - s for s, v in by_send[:fifth] if v is not None)
    last_fifth = stats.summarize(v - s for s, v in by_send[-fifth:] if v is not None)

    send_seconds = max(data.send_ended - data.send_started, 1e-9)
    last_outcome = max(visible_times, default=t0)
    acked = len(tracked)
    throughput = {
        "offered_per_s": rate(acked, send_seconds),
        "completed_sagas_per_s": rate(len(visible_times), last_outcome - t0),
        "steady_completed_sagas_per_s": steady_rate(visible_times),
        "saga_events_per_s": rate(total_events, last_recorded - t0),
    }
    confirmed = by_status.get(Status.CONFIRMED.value, [])
    latency = {
        "end_to_end": summarize_latencies(e2e),
        "end_to_end_confirmed": summarize_latencies(confirmed),
        "request_ack": summarize_latencies(tr.acked_at - tr.sent_at for tr in tracked.values()),
        "settled_seen_by_watcher": summarize_latencies(
            tr.settled_at - tr.sent_at for tr in tracked.values() if tr.settled_at is not None
        ),
        "event_to_read_model": summarize_latencies(event_lags),
    }

    outcomes = _outcomes(data, timelines)
    unfinished: Counter[str] = Counter()
    for booking_id, tr in tracked.items():
        tl = timelines.get(booking_id)
        if tl is None or tl.final is None:
            unfinished["not in the read model"] += 1
        elif not tl.final.is_outcome:
            unfinished[tl.final.status.value] += 1
        elif tr.settled_at is None:
            unfinished[f"{tl.final.status.value}, compensation or notice pending"] += 1

    sent_series = Counter(int(max(0.0, tr.sent_at - t0)) for tr in tracked.values())
    lag_series: dict[int, int] = {}
    for t, lags in data.lag_timeline:
        second = int(max(0.0, t - t0))
        lag_series[second] = max(lag_series.get(second, 0), max(lags.values(), default=0))
    buckets = series(points, 1.0)
    horizon = max([len(buckets) - 1, *sent_series.keys(), *lag_series.keys(), 0])
    rows = []
    for second in range(horizon + 1):
        bucket = buckets[second] if second < len(buckets) else None
        rows.append(
            SeriesPoint(
                t_s=float(second),
                sent=sent_series.get(second, 0),
                completed=bucket.count if bucket else 0,
                p50_ms=round(bucket.p50_ms, 2) if bucket else 0.0,
                p99_ms=round(bucket.p99_ms, 2) if bucket else 0.0,
                max_lag=lag_series.get(second),
            )
        )

    options = data.options
    run = {
        "run_id": data.run_id,
        "via": options.via,
        "profile": options.profile.name,
        "target_rate_per_s": options.rate,
        "max_rate": options.rate is None,
        "count": options.count,
        "duration_s": options.duration_s,
        "in_flight_cap": options.in_flight,
        "seed": options.seed,
        "started_at": datetime.fromtimestamp(data.started_at).astimezone().isoformat(),
        "send_seconds": round(send_seconds, 3),
        "run_seconds": round(data.ended_at - data.started_at, 3),
        "planned": data.planned,
        "sent": acked + data.failed_requests,
        "accepted": acked,
        "failed_requests": data.failed_requests,
        "completed": len(visible_times),
        "settled": sum(1 for tr in tracked.values() if tr.settled_at is not None),
        "late_sends": data.late_sends,
        "max_send_lateness_ms": round(data.max_lateness_s * 1000, 2),
        "saga_events": total_events,
        "e2e_p50_first_fifth_ms": round(first_fifth.p50_ms, 2),
        "e2e_p50_last_fifth_ms": round(last_fifth.p50_ms, 2),
        "get_checked": data.get_checked,
    }
    return Report(
        run=run,
        throughput=throughput,
        latency=latency,
        latency_by_status={k: summarize_latencies(v) for k, v in sorted(by_status.items())},
        steps={name: summarize_latencies(steps[name]) for name in _step_names() if steps[name]},
        outcomes=outcomes,
        unfinished=dict(unfinished),
        errors=dict(data.errors.most_common()),
        consumer_lag={
            "max": max(data.max_lag_by_group.values(), default=0),
            "max_by_group": dict(sorted(data.max_lag_by_group.items())),
            "samples": len(data.lag_timeline),
        },
        series=rows,
    )


def summarize_latencies(seconds: Iterable[float]) -> LatencySummary:
    return stats.summarize(seconds)


def _step_names() -> list[str]:
    return [name for name, _, _ in STEPS] + ["captured → confirmed in read model"]


def _outcomes(data: RunData, timelines: dict[str, Timeline]) -> dict[str, Any]:
    shares = data.options.profile.outcomes.shares()
    matrix: dict[str, Counter[str]] = defaultdict(Counter)
    status_counts: Counter[str] = Counter()
    as_expected = 0
    slot_full = 0
    for booking_id, tr in data.tracked.items():
        tl = timelines.get(booking_id)
        final = tl.final if tl else None
        status = final.status.value if final else "missing"
        matrix[tr.plan.intent.value][status] += 1
        status_counts[status] += 1
        if final is not None and final.status == EXPECTED_STATUS[tr.plan.intent]:
            as_expected += 1
        elif (
            final is not None
            and final.status == Status.REJECTED
            and final.failure_reason is not None
            and "slot full" in final.failure_reason
        ):
            slot_full += 1
    accepted = len(data.tracked)
    return {
        "profile_share": {i.value: round(s, 4) for i, s in shares.items() if s > 0},
        "observed_share": {
            intent: round(sum(c.values()) / accepted, 4) if accepted else 0.0
            for intent, c in sorted(matrix.items())
        },
        "by_intent": {intent: dict(c) for intent, c in sorted(matrix.items())},
        "expected_status": {i.value: EXPECTED_STATUS[i].value for i in Intent if shares[i] > 0},
        "status_counts": dict(status_counts.most_common()),
        "as_expected": as_expected,
        "rejected_slot_full": slot_full,
        "other": accepted - as_expected - slot_full,
    }


async def fetch_recorded(
    pool: asyncpg.Pool, booking_ids: Sequence[str], codec: EventCodec, chunk: int = 2000
) -> dict[str, list[Recorded]]:
    """Every event of the given bookings from ``booking_events``, decoded."""
    found: dict[str, list[Recorded]] = defaultdict(list)
    for start in range(0, len(booking_ids), chunk):
        rows = await pool.fetch(
            """SELECT booking_id::text AS booking_id, recorded_at, body FROM booking_events
               WHERE booking_id = ANY($1::uuid[])""",
            list(booking_ids[start : start + chunk]),
        )
        for row in rows:
            event = codec.decode(bytes(row["body"]))
            if isinstance(event, BookingEvent):
                found[row["booking_id"]].append(Recorded(event, row["recorded_at"]))
    return found


async def analyze(pool: asyncpg.Pool, data: RunData, codec: EventCodec) -> Report:
    """Fetch the run's events and measure (see the module docstring)."""
    recorded = await fetch_recorded(pool, list(data.tracked), codec)
    timelines = {b: timeline(b, recorded.get(b, [])) for b in data.tracked}
    return build_report(data, timelines)
