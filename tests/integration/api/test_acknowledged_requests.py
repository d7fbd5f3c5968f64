"""An acknowledged request takes effect exactly once, whatever fails around it: a 202 stands
although Kafka refuses or loses an acknowledgement (the outbox relay publishes later, with the
same event id), and a 503 means the saga does not run.

The module runs its own API server on its own database and topics (``private``), with a
publisher whose failures the tests switch on (``KafkaSwitch``). A commit is made to fail for
real: a deferred constraint trigger on one customer's rows raises at COMMIT.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from erynoa import events as ev
from tests.conftest import unique
from tests.integration.api.conftest import (
    DIE_AT_COMMIT,
    REFUSE_COMMIT,
    Actors,
    PrivateApi,
    Seen,
    TopicProbe,
    events_of,
    insert_booking,
    of_booking,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def actors(private: PrivateApi) -> Actors:
    """Users and a service of the module's own API (the shared API's ``actors`` are not)."""
    return await private.actors()


@pytest.fixture
async def bookings(private: PrivateApi) -> TopicProbe:
    return await private.probe("bookings")


@pytest.fixture
async def answers(private: PrivateApi) -> TopicProbe:
    return await private.probe("provider-answers")


def requested_by(seen: list[Seen], customer: str) -> list[ev.BookingRequested]:
    return events_of(seen, ev.BookingRequested, customer_id=customer)


def published_cancel(seen: list[Seen], booking_id: str) -> ev.BookingCancellationRequested:
    """The booking's one cancel, published after its one request: in the order they were
    accepted (one partition: the booking's)."""
    [requested] = of_booking(seen, booking_id, ev.BookingRequested)
    [cancel] = of_booking(seen, booking_id, ev.BookingCancellationRequested)
    assert seen.index(requested) < seen.index(cancel)
    assert isinstance(cancel.event, ev.BookingCancellationRequested)
    return cancel.event


async def outbox_rows(private: PrivateApi, booking_id: str) -> list[asyncpg.Record]:
    """The booking's outbox rows, in the order they were queued: set aside or not, and why."""
    rows: list[asyncpg.Record] = await private.pool.fetch(
        "SELECT refused_at, refusal FROM api_outbox WHERE booking_id = $1 ORDER BY seq",
        booking_id,
    )
    return rows


async def at_commit_of_bookings_by(private: PrivateApi, customer: str, plpgsql: str) -> None:
    """Every transaction that writes a booking of ``customer`` runs ``plpgsql`` at COMMIT."""
    literal = customer.replace("'", "''")
    await private.at_commit(
        f"at_commit_{customer}", "bookings", f"NEW.customer_id = '{literal}'", plpgsql
    )


async def two_bookings_queued_the_first_cancelled(
    private: PrivateApi, actors: Actors
) -> tuple[str, str]:
    """Two bookings and the first one's cancel, all acknowledged while Kafka refuses: their
    rows wait in the outbox and are relayed as one batch."""
    private.kafka.mode = "refuse"
    first, second = [await private.booked(actors) for _ in range(2)]
    cancelled = await private.http.post(f"/bookings/{first}/cancel", headers=actors.customer_auth)
    assert cancelled.status_code == 202, cancelled.text
    return first, second


@pytest.mark.parametrize("keyed", [False, True], ids=["without-key", "with-key"])
async def test_a_booking_whose_commit_fails_gets_503_and_its_saga_never_starts(
    private: PrivateApi, actors: Actors, bookings: TopicProbe, keyed: bool
) -> None:
    await at_commit_of_bookings_by(private, actors.customer, REFUSE_COMMIT)
    key = {"Idempotency-Key": unique("key-")} if keyed else {}
    response = await private.book(actors, key)
    # Nothing published: no saga runs for a booking the client was told failed.
    assert requested_by(await bookings.events(), actors.customer) == []
    assert response.status_code == 503, response.text
    assert response.json()["error"]["details"][0]["component"] == "postgres"
    written = await private.pool.fetchval(
        "SELECT count(*) FROM bookings WHERE customer_id = $1", actors.customer
    )
    assert written == 0


async def test_a_connection_lost_at_commit_gets_a_503_that_does_not_claim_nothing_changed(
    private: PrivateApi, actors: Actors, bookings: TopicProbe
) -> None:
    # The backend that commits the booking dies at COMMIT: the client cannot know whether the
    # COMMIT happened (here it did not), so the answer says how to find out.
    await at_commit_of_bookings_by(private, actors.customer, DIE_AT_COMMIT)
    response = await private.book(actors)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "OUTCOME_UNKNOWN"
    assert "nothing was changed" not in error["message"]
    poll_url = error["details"][0]["poll_url"]
    assert poll_url in error["message"]
    poll = await private.http.get(poll_url.removeprefix("/api/v1"), headers=actors.customer_auth)
    assert poll.status_code == 404
    assert requested_by(await bookings.events(), actors.customer) == []


async def test_a_lost_kafka_acknowledgement_still_answers_202_and_starts_one_saga(
    private: PrivateApi, actors: Actors, bookings: TopicProbe
) -> None:
    private.kafka.mode = "lose_ack"
    booking_id = await private.booked(actors)
    private.kafka.mode = "ok"
    await private.outbox_drained(booking_id)

    published = requested_by(await bookings.events(), actors.customer)
    # The record may be in the log twice (the lost acknowledgement, then the relay), but as
    # one event: consumers drop the repeat by its id.
    assert {(e.booking_id, e.event_id) for e in published} == {(booking_id, published[0].event_id)}
    mine = await private.http.get("/bookings", headers=actors.customer_auth)
    assert [b["id"] for b in mine.json()["data"]] == [booking_id]


async def test_with_kafka_down_the_202_stands_and_the_relay_publishes_once_kafka_is_back(
    private: PrivateApi, actors: Actors, bookings: TopicProbe
) -> None:
    private.kafka.mode = "refuse"
    booking_id = await private.booked(actors)
    poll = await private.http.get(f"/bookings/{booking_id}", headers=actors.customer_auth)
    assert poll.json()["data"]["status"] == "requested"
    cancelled = await private.http.post(
        f"/bookings/{booking_id}/cancel", headers=actors.customer_auth
    )
    assert cancelled.status_code == 202, cancelled.text
    assert requested_by(await bookings.events(), actors.customer) == []

    private.kafka.mode = "ok"
    await private.outbox_drained(booking_id)
    cancel = published_cancel(await bookings.events(), booking_id)
    assert cancel.requested_by == actors.customer


async def test_a_repeated_cancel_answers_202_and_publishes_one_event(
    private: PrivateApi, actors: Actors, bookings: TopicProbe
) -> None:
    booking_id = await private.booked(actors)
    answers = [
        await private.http.post(
            f"/bookings/{booking_id}/cancel", json={"reason": "plans"}, headers=auth
        )
        for auth in (actors.customer_auth, actors.customer_auth, actors.admin_auth)
    ]
    assert [a.status_code for a in answers] == [202, 202, 202], answers[-1].text
    await private.outbox_drained(booking_id)
    cancels = of_booking(await bookings.events(), booking_id, ev.BookingCancellationRequested)
    assert [(c.event.requested_by, c.event.reason) for c in cancels] == [(actors.customer, "plans")]
    recorded = await private.pool.fetchrow(
        "SELECT event_id, requested_by_role FROM booking_cancellations WHERE booking_id = $1",
        booking_id,
    )
    assert recorded is not None
    assert (str(recorded["event_id"]), recorded["requested_by_role"]) == (
        cancels[0].event.event_id,
        "customer",
    )


async def test_an_accepts_event_occurred_when_postgresql_recorded_the_answer(
    private: PrivateApi, actors: Actors, answers: TopicProbe
) -> None:
    deadline = datetime.now(UTC) + timedelta(hours=1)
    booking_id = await insert_booking(
        private.pool, actors, "awaiting_provider", provider_deadline_at=deadline
    )
    response = await private.http.post(
        f"/bookings/{booking_id}/accept", headers=actors.provider_auth
    )
    assert response.status_code == 202, response.text
    await private.outbox_drained(booking_id)
    [answer] = of_booking(await answers.events(), booking_id, ev.ProviderAnswerSubmitted)
    submitted_at = await private.pool.fetchval(
        "SELECT submitted_at FROM provider_answers WHERE booking_id = $1", booking_id
    )
    assert answer.event.occurred_at == submitted_at


async def test_concurrent_identical_answers_are_all_accepted_and_published_once(
    private: PrivateApi, actors: Actors, answers: TopicProbe
) -> None:
    booking_id = await insert_booking(private.pool, actors, "awaiting_provider")
    responses = await asyncio.gather(
        *(
            private.http.post(f"/bookings/{booking_id}/accept", headers=actors.provider_auth)
            for _ in range(5)
        )
    )
    assert [r.status_code for r in responses] == [202] * 5, [r.text for r in responses]
    await private.outbox_drained(booking_id)
    published = of_booking(await answers.events(), booking_id, ev.ProviderAnswerSubmitted)
    assert [s.event.decision for s in published] == ["accept"]


async def test_an_event_the_broker_always_refuses_is_set_aside_and_holds_back_no_other_booking(
    private: PrivateApi, actors: Actors, bookings: TopicProbe
) -> None:
    refused, fine = await two_bookings_queued_the_first_cancelled(private, actors)
    private.kafka.refused_bookings.add(refused)
    private.kafka.mode = "ok"

    await private.outbox_drained(fine)
    seen = await bookings.events()
    assert len(of_booking(seen, fine, ev.BookingRequested)) == 1
    assert of_booking(seen, refused, ev.BookingRequested) == []
    # Set aside with its reason; the booking's cancel waits behind it, unpublished.
    rows = await outbox_rows(private, refused)
    assert len(rows) == 2
    assert rows[0]["refused_at"] is not None
    assert "MessageSizeTooLargeError" in rows[0]["refusal"]
    assert rows[1]["refused_at"] is None
    assert of_booking(seen, refused, ev.BookingCancellationRequested) == []

    # An operator fixes the cause and clears the mark: the booking's events go, in order.
    private.kafka.refused_bookings.clear()
    await private.pool.execute(
        "UPDATE api_outbox SET refused_at = NULL WHERE booking_id = $1", refused
    )
    await private.outbox_drained(refused)
    published_cancel(await bookings.events(), refused)


async def test_an_event_that_cannot_be_decoded_is_set_aside_with_its_bookings_later_events(
    private: PrivateApi, actors: Actors, bookings: TopicProbe
) -> None:
    broken, fine = await two_bookings_queued_the_first_cancelled(private, actors)
    # The request's stored bytes are damaged: no codec can read them again.
    await private.pool.execute(
        """UPDATE api_outbox SET payload = '\\xff00deadbeef'::bytea
           WHERE seq = (SELECT min(seq) FROM api_outbox WHERE booking_id = $1)""",
        broken,
    )
    private.kafka.mode = "ok"

    await private.outbox_drained(fine)
    seen = await bookings.events()
    assert len(of_booking(seen, fine, ev.BookingRequested)) == 1
    rows = await outbox_rows(private, broken)
    assert [r["refused_at"] is not None for r in rows] == [True, False]
    assert "Undecodable" in rows[0]["refusal"]
    assert of_booking(seen, broken, ev.BookingCancellationRequested) == []
    # While a row is set aside, new bookings still go out (through the relay, which
    # keeps each booking's events in order).
    later_id = await private.booked(actors)
    await private.outbox_drained(later_id)
    assert len(of_booking(await bookings.events(), later_id, ev.BookingRequested)) == 1
