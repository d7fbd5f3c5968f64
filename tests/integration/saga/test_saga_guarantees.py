"""What the agents guarantee beyond the happy paths: redelivery is harmless, a kill -9 loses
nothing, poison messages are dead-lettered without blocking, deliveries retry and give up."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid

import asyncpg
import pytest

from erynoa import events as ev
from erynoa import kafka as k
from erynoa.saga import Status
from streams.app import AGENTS
from streams.notification import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_signature
from tests.integration.saga.conftest import LiveSaga
from tests.integration.saga.harness import (
    Service,
    User,
    WebhookInbox,
    create_service,
    create_user,
    dead_letters,
    deadline_started,
    settled,
    status_is,
    wait_caught_up,
)

pytestmark = pytest.mark.integration


async def snapshot(db: asyncpg.Pool, bookings: list[str]) -> dict[str, object]:
    """Everything an agent's side effect could change, for before/after comparisons."""
    ledger = await db.fetch(
        """SELECT booking_id, operation, outcome, amount_minor FROM sandbox_ledger
           WHERE booking_id = ANY($1::uuid[]) ORDER BY id""",
        bookings,
    )
    deliveries = await db.fetch(
        """SELECT notification_id, channel FROM notification_deliveries
           WHERE booking_id = ANY($1::uuid[]) ORDER BY notification_id, channel""",
        bookings,
    )
    holds = await db.fetch(
        "SELECT booking_id, status FROM reservation_holds WHERE booking_id = ANY($1::uuid[])",
        bookings,
    )
    states = await db.fetch(
        """SELECT agent, booking_id, state->>'status' AS status, state->>'payment' AS payment,
                  state->>'hold' AS hold, state->'notified' AS notified
           FROM agent_state WHERE booking_id = ANY($1::uuid[]) ORDER BY agent, booking_id""",
        bookings,
    )
    return {
        "ledger": [tuple(r) for r in ledger],
        "deliveries": [tuple(r) for r in deliveries],
        "holds": sorted(tuple(r) for r in holds),
        "states": [tuple(r) for r in states],
    }


async def finished_sagas(live: LiveSaga) -> list[str]:
    """One booking per kind of ending, all settled."""
    service = await create_service(live.db, response_deadline_seconds=2)
    customer = await create_user(live.db, "customer")
    confirmed = await live.request(service, customer)
    declined = await live.request(service, customer, payment_method="pm_card_chargeDeclined")
    expired = await live.request(service, customer)
    refunded = await live.request(service, customer)
    for booking in (confirmed, refunded):
        await live.event_log.wait(booking, deadline_started)
        await live.answer(booking, "accept")
    await live.event_log.wait(refunded, status_is(Status.CONFIRMED))
    await live.cancel(refunded)
    bookings = [confirmed, declined, expired, refunded]
    await live.event_log.wait_all(bookings, within=60)
    return bookings


async def test_redelivering_every_event_of_finished_sagas_changes_nothing(live: LiveSaga) -> None:
    bookings = await finished_sagas(live)
    groups = [live.catalog.consumer(a).group_id for a in AGENTS]
    await wait_caught_up(live.settings.kafka_bootstrap, live.catalog, groups)
    before = await snapshot(live.db, bookings)
    event_ids = {b: {e.event_id for e in live.event_log.events[b]} for b in bookings}
    mails_before = sorted(m.message_id for b in bookings for m in live.mailbox.for_booking(b))

    producer = live.publisher.producer
    for booking in bookings:
        for topic, key, value, headers in list(live.event_log.raw[booking]):
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    await wait_caught_up(live.settings.kafka_bootstrap, live.catalog, groups)
    await live.event_log.quiet(2.0)

    assert await snapshot(live.db, bookings) == before  # no second charge, hold or delivery
    assert (
        sorted(m.message_id for b in bookings for m in live.mailbox.for_booking(b)) == mails_before
    )
    for booking in bookings:
        assert {e.event_id for e in live.event_log.events[booking]} == event_ids[booking]
        assert settled(live.event_log.state(booking))
    await live.assert_invariants(bookings)


async def test_kill_9_of_every_worker_mid_run_loses_nothing(live: LiveSaga) -> None:
    service = await create_service(live.db, capacity=50, response_deadline_seconds=4)
    customer = await create_user(live.db, "customer")
    methods = ["pm_card_visa"] * 6 + ["pm_card_chargeDeclined", "pm_card_captureFails"] * 2
    to_accept: set[str] = set()
    bookings: list[str] = []
    stop_answering = asyncio.Event()

    async def answer_when_asked() -> None:
        answered: set[str] = set()
        while not stop_answering.is_set():
            for booking in to_accept - answered:
                if deadline_started(live.event_log.state(booking)):
                    answered.add(booking)
                    await live.answer(booking, "accept")
            await asyncio.sleep(0.1)

    answering = asyncio.create_task(answer_when_asked())
    try:
        rng = random.Random(7)
        for wave in range(3):
            for agent in AGENTS:
                for method in rng.sample(methods, 4):
                    booking = await live.request(service, customer, payment_method=method)
                    bookings.append(booking)
                    # Some visa bookings are left to time out, the rest accepted.
                    if method != "pm_card_chargeDeclined" and rng.random() < 0.7:
                        to_accept.add(booking)
                await asyncio.sleep(0.3 + 0.2 * wave)
                live.agents.kill(agent)  # no shutdown hook, no commit: a crash
                await asyncio.sleep(0.5)
                live.agents.restart(agent)
        await live.event_log.wait_all(bookings, within=180)
    finally:
        stop_answering.set()
        with contextlib.suppress(asyncio.CancelledError):
            await answering

    await live.assert_invariants(bookings)
    for booking in bookings:
        # Once in effect: a crash between sending and recording may resend, but then with the
        # same Message-ID; distinct messages are one per notification.
        ids = {m.message_id for m in live.mailbox.for_booking(booking)}
        state = live.event_log.state(booking)
        assert state is not None
        expected = {t for t in state.notified}
        assert len(ids) == len(expected), (booking, ids, expected)


async def test_undecodable_message_is_dead_lettered_and_others_keep_flowing(live: LiveSaga) -> None:
    bookings_topic = live.catalog.topic_for("BookingRequested")
    poison_key = str(uuid.uuid4()).encode()
    sent = await live.publisher.producer.send_and_wait(
        bookings_topic,
        value=b"\x00 not avro",
        key=poison_key,
        headers=[("x-request-id", b"poison")],
    )
    _, booking = await live.book(payment_method="pm_card_chargeDeclined")
    await live.event_log.wait(booking)

    for agent in AGENTS:
        found = await dead_letters(live.settings.kafka_bootstrap, live.catalog, agent, poison_key)
        assert len(found) == 1, agent
        headers = list(found[0].headers)
        assert k.header(headers, k.H_ERROR_CLASS) == "UndecodableEvent"
        assert k.header(headers, k.H_ATTEMPTS) == "1"
        assert k.header(headers, k.H_ORIGIN_TOPIC) == bookings_topic
        assert k.header(headers, k.H_ORIGIN_PARTITION) == str(sent.partition)
        assert k.header(headers, k.H_ORIGIN_OFFSET) == str(sent.offset)
        assert k.header(headers, k.H_CONSUMER) == agent
        assert k.header(headers, k.H_FIRST_FAILURE) is not None
        assert k.header(headers, k.H_LAST_FAILURE) is not None
        assert k.header(headers, k.H_REQUEST_ID) == "poison"
        assert found[0].value == b"\x00 not avro"


async def declined_booking(
    live: LiveSaga, customer: User | None = None, headers: dict[str, str] | None = None
) -> tuple[str, Service]:
    service = await create_service(live.db)
    customer = customer or await create_user(live.db, "customer")
    booking = await live.request(
        service, customer, payment_method="pm_card_chargeDeclined", headers=headers
    )
    return booking, service


async def test_smtp_temporary_failures_are_retried_then_delivered_once(live: LiveSaga) -> None:
    live.mailbox.refuse_next(2)
    booking, _ = await declined_booking(live)
    state = await live.event_log.wait(booking, within=40)  # tiers of 1s and 10s
    assert state.status == Status.FAILED
    mails = live.mailbox.for_booking(booking)
    assert [m.template for m in mails] == ["customer_failed"]
    assert live.event_log.count(booking, "NotificationSent") == 1
    await live.assert_invariants([booking])


async def test_notification_gives_up_after_its_last_retry_and_the_saga_goes_on(
    live: LiveSaga,
) -> None:
    live.mailbox.refuse_next(1000)
    try:
        booking, _ = await declined_booking(live)
        await live.event_log.wait(booking, status_is(Status.FAILED))
        await live.event_log.wait(booking, lambda s: s is not None and s.hold.value == "released")
        # Skip the minute-long tiers: put the event the agent keeps failing on into the last
        # tier as if it had been there twice already; its failure there is final.
        topic, key, value, _ = next(
            raw
            for event, raw in zip(
                live.event_log.events[booking], live.event_log.raw[booking], strict=True
            )
            if isinstance(event, ev.ReservationReleased)
        )
        consumer = live.catalog.consumer("notification")
        await live.publisher.producer.send_and_wait(
            consumer.retry_topics[-1],
            value=value,
            key=key,
            headers=[
                (k.H_ATTEMPTS, str(len(consumer.retry_topics)).encode()),
                (k.H_ORIGIN_TOPIC, topic.encode()),
                (k.H_NOT_BEFORE, b"0"),
            ],
        )
        state = await live.event_log.wait(booking, within=30)
    finally:
        live.mailbox.refuse_next(0)
    assert state.status == Status.FAILED
    failed = [e for e in live.event_log.events[booking] if isinstance(e, ev.NotificationFailed)]
    assert len(failed) == 1
    assert failed[0].reason.startswith("gave up:")
    assert live.mailbox.for_booking(booking) == []
    dead = await dead_letters(
        live.settings.kafka_bootstrap, live.catalog, "notification", booking.encode()
    )
    assert len(dead) == 1
    assert k.header(list(dead[0].headers), k.H_ERROR_CLASS) == "DeliveryUnavailable"


async def test_webhook_notifications_are_signed_retried_and_delivered_once(
    live: LiveSaga,
    webhooks: WebhookInbox,
) -> None:
    customer = await create_user(live.db, "customer", email=False, webhook_url=webhooks.url())
    webhooks.fail_next(1)
    booking, _ = await declined_booking(live, customer)
    state = await live.event_log.wait(booking, within=30)
    assert state.status == Status.FAILED
    hooks = webhooks.for_booking(booking)
    assert len(hooks) == 1
    hook = hooks[0]
    assert verify_signature(
        live.settings.webhook_signing_secret, hook.headers[SIGNATURE_HEADER], hook.body
    )
    assert hook.headers[IDEMPOTENCY_HEADER] == hook.payload["id"]
    assert hook.payload["type"] == "customer_failed"
    assert live.mailbox.for_booking(booking) == []
    sent = [e for e in live.event_log.events[booking] if isinstance(e, ev.NotificationSent)]
    assert [(e.channel, e.template) for e in sent] == [("webhook", "customer_failed")]


async def test_a_user_without_any_address_is_recorded_as_failed(live: LiveSaga) -> None:
    customer = await create_user(live.db, "customer", email=False)
    booking, _ = await declined_booking(live, customer)
    state = await live.event_log.wait(booking)
    assert state.status == Status.FAILED
    failed = [e for e in live.event_log.events[booking] if isinstance(e, ev.NotificationFailed)]
    assert [e.reason for e in failed] == ["no address"]


async def test_synthetic_traffic_is_never_delivered(live: LiveSaga) -> None:
    booking, _ = await declined_booking(live, headers={k.H_SYNTHETIC: "1"})
    state = await live.event_log.wait(booking)
    assert state.status == Status.FAILED
    assert live.mailbox.for_booking(booking) == []
    channels = await live.db.fetch(
        "SELECT channel FROM notification_deliveries WHERE booking_id = $1", booking
    )
    assert [r["channel"] for r in channels] == ["synthetic"]
