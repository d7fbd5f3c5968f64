"""Saga visibility against the real stack: events produced to Kafka, folded into PostgreSQL by the
materializer running in-process, then read back as timelines and in-flight lists; operator
cancel and retry publish exactly one request each (and nothing on a dry run).

The module has its own topics and database (``own_namespace``): these hand-made sagas must not
reach the real agents, and ``ls`` sees only this module's bookings.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from erynoa import events as ev
from erynoa.codec import default_codec
from erynoa.kafka import EventPublisher
from erynoa.saga import Hold, Payment, Status, TimeOutProvider
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from ops import sagas
from tests.conftest import eventually, unique
from tests.integration.ops.conftest import end_offsets, keyed_since, saga_cli
from tests.integration.saga_events import awaiting_provider, rejected_and_compensated, request

pytestmark = pytest.mark.integration


# --- building sagas -------------------------------------------------------------------------


Fold = Callable[[list[ev.BookingEvent]], Awaitable[None]]


@pytest.fixture
def publish_and_fold(
    db: asyncpg.Pool, publisher: EventPublisher, running_materializer: None
) -> Fold:
    """Publish a saga's events in a shuffled order (topics do not keep event order) and wait
    until the running materializer folded them all."""

    async def publish(events: list[ev.BookingEvent]) -> None:
        await publisher.publish_many(random.sample(events, len(events)))

        async def folded() -> bool:
            applied = await db.fetchval(
                "SELECT events_applied FROM bookings WHERE id = $1::uuid", events[0].booking_id
            )
            return bool(applied == len(events))

        await eventually(folded, within=30)

    return publish


async def wait_for_status(db: asyncpg.Pool, booking_id: str, status: Status) -> None:
    async def reached() -> bool:
        row = await db.fetchval("SELECT status FROM bookings WHERE id = $1::uuid", booking_id)
        return bool(row == status.value)

    await eventually(reached, within=30)


# --- show -----------------------------------------------------------------------------------


async def test_show_returns_the_timeline_in_event_order_with_compensations_marked(
    settings: Settings, db: asyncpg.Pool, publish_and_fold: Fold
) -> None:
    booking_id = unique()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    events = rejected_and_compensated(booking_id, start)
    await publish_and_fold(events)

    timeline = await sagas.saga_timeline(db, booking_id, default_codec(), datetime.now(UTC))

    assert [e.event_id for e in timeline.entries] == [e.event_id for e in events]
    assert [e.producer for e in timeline.entries] == [e.producer for e in events]
    assert timeline.entries[0].since_previous is None
    assert [e.since_previous for e in timeline.entries[1:3]] == [
        timedelta(seconds=1),
        timedelta(seconds=2),
    ]
    kinds = {e.event_type: e.kind for e in timeline.entries}
    assert kinds["ProviderRejected"] == "failure"
    assert kinds["PaymentVoided"] == kinds["ReservationReleased"] == "compensation"
    assert kinds["BookingRequested"] == "request"
    assert (timeline.status, timeline.hold, timeline.payment) == (
        Status.REJECTED,
        Hold.RELEASED,
        Payment.VOIDED,
    )
    assert timeline.failure_reason == "provider rejected: fully booked"
    assert not timeline.in_flight
    assert timeline.waiting == ()
    assert timeline.stuck_reason is None
    assert timeline.elapsed == timedelta(seconds=70)  # first event to last: it finished

    shown = await saga_cli(settings, "show", booking_id, "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert [e["event_type"] for e in data["entries"]] == [e.event_type for e in events]
    assert data["status"] == "rejected"
    assert data["elapsed"] == 70.0
    text = await saga_cli(settings, "show", booking_id)
    assert text.exit_code == 0, text.output
    assert "PaymentVoided  [compensation]" in text.stdout
    assert "nothing: the saga is done" in text.stdout


async def test_show_refuses_a_malformed_id_and_reports_an_unknown_one(
    settings: Settings,
) -> None:
    malformed = await saga_cli(settings, "show", "not-a-booking")
    unknown = await saga_cli(settings, "show", unique())

    assert malformed.exit_code == 2
    assert "not a booking id" in malformed.stderr
    assert unknown.exit_code == 1
    assert "no booking" in unknown.stderr


# --- ls ---------------------------------------------------------------------------------


async def test_ls_stuck_finds_a_passed_deadline_and_an_idle_step_but_not_a_waiting_provider(
    settings: Settings, db: asyncpg.Pool, publish_and_fold: Fold
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    overdue, idle, waiting = unique(), unique(), unique()
    await publish_and_fold(
        awaiting_provider(overdue, now - timedelta(minutes=10), now - timedelta(minutes=5))
    )
    await publish_and_fold([request(idle, now - timedelta(minutes=5))])
    await publish_and_fold(
        awaiting_provider(waiting, now - timedelta(seconds=30), now + timedelta(hours=1))
    )
    mine = (overdue, idle, waiting)

    stuck = await sagas.page_sagas(
        db, sagas.SagaQuery(stuck=True, booking_ids=mine), datetime.now(UTC)
    )
    in_flight = await sagas.page_sagas(db, sagas.SagaQuery(booking_ids=mine), datetime.now(UTC))

    assert [s.booking_id for s in stuck.sagas] == [overdue, idle]  # oldest request first
    assert (stuck.total, stuck.total_capped) == (2, False)
    late, quiet = stuck.sagas
    assert "provider deadline passed" in (late.stuck_reason or "")
    assert [w.action for w in late.waiting] == [TimeOutProvider()]
    assert "in step requested" in (quiet.stuck_reason or "")
    assert [w.who for w in quiet.waiting] == ["reservation"]
    assert {s.booking_id for s in in_flight.sagas} == set(mine)
    calm = next(s for s in in_flight.sagas if s.booking_id == waiting)
    assert not calm.stuck
    assert [(w.who, w.until) for w in calm.waiting] == [("provider", now + timedelta(hours=1))]

    listed = await saga_cli(settings, "ls", "--stuck", "--json")
    assert listed.exit_code == 0, listed.output
    ids = [s["booking_id"] for s in json.loads(listed.stdout)["sagas"]]
    assert overdue in ids
    assert idle in ids
    assert waiting not in ids
    requested = await saga_cli(settings, "ls", "--status", "requested", "--json")
    assert idle in [s["booking_id"] for s in json.loads(requested.stdout)["sagas"]]
    assert waiting not in [s["booking_id"] for s in json.loads(requested.stdout)["sagas"]]
    old = await saga_cli(settings, "ls", "--older-than", "8m", "--json")
    old_ids = [s["booking_id"] for s in json.loads(old.stdout)["sagas"]]
    assert overdue in old_ids
    assert idle not in old_ids
    table = await saga_cli(settings, "ls", "--stuck")
    assert table.exit_code == 0, table.output
    assert overdue in table.stdout
    assert "provider deadline passed" in table.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "--status", "sleeping"],
        ["ls", "--older-than", "a while"],
        ["ls", "--limit", "0"],
        ["ls", "--page", "0"],
    ],
)
async def test_ls_refuses_bad_filters_with_exit_2(settings: Settings, args: list[str]) -> None:
    result = await saga_cli(settings, *args)

    assert result.exit_code == 2, result.output


# --- operator actions -----------------------------------------------------------------------


async def test_cancel_dry_run_publishes_nothing_and_cancel_publishes_one_request(
    settings: Settings, catalog: TopicCatalog, db: asyncpg.Pool, publish_and_fold: Fold
) -> None:
    booking_id = unique()
    now = datetime.now(UTC).replace(microsecond=0)
    events = awaiting_provider(booking_id, now - timedelta(seconds=20), now + timedelta(hours=1))
    await publish_and_fold(events)
    bookings_topic = catalog.topic_for("BookingCancellationRequested")
    before = await end_offsets(settings, catalog, bookings_topic)

    dry = await saga_cli(settings, "cancel", booking_id, "--dry-run", "--json")

    assert dry.exit_code == 0, dry.output
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] is True
    assert planned["published"] is None
    assert planned["event"]["event_type"] == "BookingCancellationRequested"
    assert (planned["status_before"], planned["status_after"]) == ("awaiting_provider", "cancelled")
    assert await keyed_since(settings, before, booking_id) == []

    done = await saga_cli(
        settings, "cancel", booking_id, "--reason", "customer called", "--operator", "op-ann",
        "--json",
    )  # fmt: skip

    assert done.exit_code == 0, done.output
    published = await keyed_since(settings, before, booking_id)
    assert len(published) == 1
    event = default_codec().decode(published[0].value or b"")
    assert isinstance(event, ev.BookingCancellationRequested)
    assert (event.requested_by, event.requested_by_role) == ("op-ann", "operator")
    assert event.reason == "customer called"
    assert event.correlation_id == events[0].correlation_id
    assert event.event_id == json.loads(done.stdout)["event"]["event_id"]

    # The materializer folds it: compensations are now due, and a second cancel is refused.
    await wait_for_status(db, booking_id, Status.CANCELLED)
    timeline = await sagas.saga_timeline(db, booking_id, default_codec(), datetime.now(UTC))
    assert timeline.in_flight
    assert [w.who for w in timeline.waiting] == ["payment"]  # void first, then release
    after_cancel = await end_offsets(settings, catalog, bookings_topic)
    again = await saga_cli(settings, "cancel", booking_id)
    assert again.exit_code == 1
    assert "already cancelled" in again.stderr
    assert await keyed_since(settings, after_cancel, booking_id) == []


async def test_retry_publishes_a_fresh_request_each_time_and_nothing_on_a_dry_run(
    settings: Settings, catalog: TopicCatalog, db: asyncpg.Pool, publish_and_fold: Fold
) -> None:
    booking_id = unique()
    await publish_and_fold([request(booking_id, datetime.now(UTC))])
    before = await end_offsets(settings, catalog, catalog.topic_for("SagaRetryRequested"))

    dry = await saga_cli(settings, "retry", booking_id, "--step", "reservation", "--dry-run")
    bogus = await saga_cli(settings, "retry", booking_id, "--step", "everything")
    assert dry.exit_code == 0, dry.output
    assert "would publish SagaRetryRequested" in dry.stdout
    assert bogus.exit_code == 2
    assert await keyed_since(settings, before, booking_id) == []

    for _ in range(2):
        result = await saga_cli(
            settings, "retry", booking_id, "--step", "reservation", "--operator", "op-bo"
        )
        assert result.exit_code == 0, result.output

    retries = [
        default_codec().decode(r.value or b"")
        for r in await keyed_since(settings, before, booking_id)
    ]
    assert len(retries) == 2
    assert all(isinstance(r, ev.SagaRetryRequested) for r in retries)
    assert {(r.step, r.requested_by) for r in retries if isinstance(r, ev.SagaRetryRequested)} == {
        ("reservation", "op-bo")
    }
    assert retries[0].event_id != retries[1].event_id
