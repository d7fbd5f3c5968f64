"""Measuring a run from hand-made event logs: when the read model first showed the outcome,
how long each step took, and what the report adds up to."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from erynoa import events as ev
from erynoa.saga import Status
from loadgen.model import RunData, RunOptions, Tracked
from loadgen.profile import Intent, parse_profile
from loadgen.report import Recorded, build_report, timeline
from loadgen.world import Planned, Planner, World
from tests.builders import booking_requested

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BOOKING = "3f2c8d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
PROFILE = parse_profile(
    {
        "population": {"customers": 3, "providers": 1, "services": 2},
        "outcomes": {"provider_accepts": 9, "card_declined": 1},
    },
    "test",
)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def happy_path(booking_id: str, start_ms: float = 0) -> list[tuple[ev.BookingEvent, float]]:
    """A confirmed booking's events and when each *occurred* (ms after T0)."""
    slot = T0 + timedelta(days=7)
    requested = booking_requested(booking_id=booking_id, occurred_at=at(start_ms), slot_start=slot)

    def then(cls: type[ev.BookingEvent], ms: float, **payload: Any) -> ev.BookingEvent:
        return ev.make(cls, cause=requested, producer="x", occurred_at=at(start_ms + ms), **payload)

    steps = [
        (requested, 0),
        (then(ev.ReservationHeld, 10, hold_id="h", service_id="s", slot_start=slot), 10),
        (then(ev.PaymentAuthorized, 30, payment_id="pi", amount=requested.price,
              gateway="sandbox"), 30),
        (then(ev.ProviderResponseRequested, 40, provider_id="p",
              deadline_at=at(60_000)), 40),
        (then(ev.NotificationSent, 45, notification_id="n1", recipient_role="provider",
              channel="email", template="provider_request"), 45),
        (then(ev.ProviderAnswerSubmitted, 100, provider_id="p", decision="accept"), 100),
        (then(ev.ProviderAccepted, 110, provider_id="p"), 110),
        (then(ev.PaymentCaptured, 130, payment_id="pi", amount=requested.price), 130),
        (then(ev.ReservationConverted, 140, hold_id="h"), 140),
        (then(ev.NotificationSent, 150, notification_id="n2", recipient_role="customer",
              channel="email", template="customer_confirmed"), 150),
    ]  # fmt: skip
    return [(e, start_ms + ms) for e, ms in steps]


def recorded(events: list[tuple[ev.BookingEvent, float]], lag_ms: float) -> list[Recorded]:
    return [Recorded(e, at(ms + lag_ms)) for e, ms in events]


def test_the_outcome_is_visible_when_the_deciding_event_is_recorded() -> None:
    tl = timeline(BOOKING, recorded(happy_path(BOOKING), lag_ms=20))
    assert tl.final is not None
    assert tl.final.status == Status.CONFIRMED
    assert tl.outcome_occurred_at == pytest.approx(at(130).timestamp(), abs=1e-6)
    assert tl.outcome_visible_at == pytest.approx(at(150).timestamp(), abs=1e-6)
    assert tl.events == 10
    assert tl.event_lags == pytest.approx([0.020] * 10, abs=1e-5)


def test_steps_are_measured_between_first_events() -> None:
    steps = timeline(BOOKING, recorded(happy_path(BOOKING), lag_ms=20)).steps
    assert steps["requested → held"] == pytest.approx(0.010, abs=1e-3)
    assert steps["held → authorized"] == pytest.approx(0.020, abs=1e-3)
    assert steps["authorized → provider answer"] == pytest.approx(0.080, abs=1e-3)
    assert steps["answer submitted → decided"] == pytest.approx(0.010, abs=1e-3)
    assert steps["accepted → captured"] == pytest.approx(0.020, abs=1e-3)
    assert steps["captured → confirmed in read model"] == pytest.approx(0.020, abs=1e-3)


def test_a_capture_recorded_before_its_authorization_shows_the_outcome_at_once() -> None:
    # The capture is recorded at 150 ms, the authorization only at 400 ms: a capture implies
    # its authorization, so the read model's fold is confirmed from 150 ms on.
    events = happy_path(BOOKING)
    rows = [
        Recorded(e, at(400) if e.event_type == "PaymentAuthorized" else at(ms + 20))
        for e, ms in events
    ]
    tl = timeline(BOOKING, rows)
    assert tl.final is not None
    assert tl.final.status == Status.CONFIRMED
    assert tl.outcome_visible_at == pytest.approx(at(150).timestamp(), abs=1e-6)


def test_a_booking_without_events_has_no_outcome() -> None:
    tl = timeline(BOOKING, [])
    assert tl.final is None
    assert tl.outcome_visible_at is None


def test_a_declined_card_ends_failed_when_the_failure_is_recorded() -> None:
    requested, _ = happy_path(BOOKING)[0]
    assert isinstance(requested, ev.BookingRequested)
    slot = requested.slot_start
    rows = [
        Recorded(requested, at(5)),
        Recorded(
            ev.make(ev.ReservationHeld, cause=requested, producer="r", occurred_at=at(10),
                    hold_id="h", service_id="s", slot_start=slot),
            at(30),
        ),
        Recorded(
            ev.make(ev.PaymentFailed, cause=requested, producer="p", occurred_at=at(50),
                    reason_code="card_declined", reason="declined"),
            at(70),
        ),
    ]  # fmt: skip
    tl = timeline(BOOKING, rows)
    assert tl.final is not None
    assert tl.final.status == Status.FAILED
    assert tl.outcome_visible_at == pytest.approx(at(70).timestamp(), abs=1e-6)
    assert "authorized → provider answer" not in tl.steps


def plan(world: World, index: int, intent: Intent) -> Planned:
    planned = Planner(world, seed=1).plan(index)
    return Planned(
        planned.index,
        planned.customer_id,
        planned.service,
        planned.slot_start,
        intent,
        planned.payment_method,
        0.0,
    )


def test_the_report_adds_up_a_run() -> None:
    world = World.build(PROFILE, "r1", seed=1, now=T0)
    tracked = {}
    timelines = {}
    for i in range(10):
        booking_id = f"00000000-0000-4000-8000-{i:012d}"
        # Sent at 0, 100, ... ms; each saga takes 150 ms plus 20 ms to the read model.
        events = happy_path(booking_id, start_ms=i * 100)
        tracked[booking_id] = Tracked(
            plan(world, i, Intent.PROVIDER_ACCEPTS),
            booking_id,
            sent_at=at(i * 100).timestamp(),
            acked_at=at(i * 100 + 5).timestamp(),
            settled_at=at(i * 100 + 200).timestamp(),
        )
        timelines[booking_id] = timeline(booking_id, recorded(events, lag_ms=20))
    data = RunData(
        run_id="r1",
        options=RunOptions(via="kafka", profile=PROFILE, rate=10, count=10, seed=1),
        world=world,
        started_at=at(-1000).timestamp(),
        send_started=at(0).timestamp(),
        send_ended=at(1000).timestamp(),
        ended_at=at(2000).timestamp(),
        tracked=tracked,
        planned=10,
        failed_requests=1,
        late_sends=0,
        max_lateness_s=0.0,
        errors=Counter({"POST /bookings 503": 1}),
        lag_timeline=[(at(500).timestamp(), {"payment": 3, "materializer": 7})],
        max_lag_by_group={"payment": 3, "materializer": 7},
    )
    report = build_report(data, timelines)

    e2e = report.latency["end_to_end"]
    assert e2e.count == 10
    assert e2e.p50_ms == pytest.approx(150.0, abs=1e-3)  # sent → capture recorded (130 + 20)
    assert report.latency["end_to_end_confirmed"].count == 10
    assert report.latency["request_ack"].p99_ms == pytest.approx(5.0, abs=1e-3)
    assert report.latency["event_to_read_model"].max_ms == pytest.approx(20.0, abs=1e-3)
    # The last outcome showed at 900 + 150 ms: 10 sagas in 1.05 s.
    assert report.throughput["completed_sagas_per_s"] == pytest.approx(10 / 1.05, abs=1e-3)
    assert report.throughput["offered_per_s"] == pytest.approx(10.0, abs=1e-3)
    # 100 events, the last recorded at 900 + 150 + 20 ms.
    assert report.throughput["saga_events_per_s"] == pytest.approx(100 / 1.07, abs=1e-3)
    assert report.outcomes["by_intent"] == {"provider_accepts": {"confirmed": 10}}
    assert report.outcomes["as_expected"] == 10
    assert report.unfinished == {}
    assert report.errors == {"POST /bookings 503": 1}
    assert report.consumer_lag["max"] == 7
    assert report.run["sent"] == 11
    assert report.run["failed_requests"] == 1
    assert report.series[0].sent == 10
    assert sum(r.completed for r in report.series) == 10
    assert report.series[0].max_lag == 7
    assert all(r.max_lag is None for r in report.series[1:])  # no sample: a gap, not zero
    document = report.to_json()
    assert document["latency_ms"]["end_to_end"]["p50_ms"] == pytest.approx(150.0, abs=1e-3)
    assert document["invariants"]["checked"] is False
    assert document["series"][0] == {
        "t_s": 0.0,
        "sent": 10,
        "completed": 9,
        "p50_ms": 150.0,
        "p99_ms": 150.0,
        "max_lag": 7,
    }
