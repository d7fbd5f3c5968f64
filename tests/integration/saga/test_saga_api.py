"""The saga end to end: every path driven through the REST API, asserted on the read model (the
materializer's ``bookings`` rows, read back through ``GET /api/v1/bookings/{id}``), the mail
that arrived, and the invariants over the event log the materializer wrote.

Runs the whole system as subprocesses of the session: the API, the materializer and the four
agent workers, on the session's own topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from erynoa.saga import BookingState, Status
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from tests.integration.saga.conftest import Api
from tests.integration.saga.harness import (
    Mailbox,
    Service,
    User,
    a_slot,
    assert_invariants,
    create_service,
    create_user,
    settled,
    wait_caught_up,
)

pytestmark = pytest.mark.integration


class Client:
    """A REST client acting as whichever user it is told to."""

    def __init__(self, api: Api, settings: Settings, http: httpx.AsyncClient) -> None:
        self.api = api
        self.settings = settings
        self.http = http

    def _auth(self, user: User, role: str) -> dict[str, str]:
        from api.auth import issue_dev_token

        token = issue_dev_token(self.settings, user.id, [role], 3600, email=user.email)
        return {"Authorization": f"Bearer {token}"}

    async def book(
        self,
        customer: User,
        service: Service,
        *,
        slot: datetime | None = None,
        payment_method: str = "pm_card_visa",
        key: str | None = None,
    ) -> str:
        headers = self._auth(customer, "customer")
        if key is not None:
            headers["Idempotency-Key"] = key
        response = await self.http.post(
            "/api/v1/bookings",
            json={
                "service_id": service.id,
                "slot_start": (slot or a_slot()).isoformat(),
                "payment_method": payment_method,
            },
            headers=headers,
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert response.headers["Location"] == body["poll_url"]
        return str(body["workflow_id"])

    async def act(self, user: User, role: str, booking_id: str, action: str) -> httpx.Response:
        return await self.http.post(
            f"/api/v1/bookings/{booking_id}/{action}",
            json={"reason": f"{action} by the test"},
            headers=self._auth(user, role),
        )

    async def get(self, user: User, role: str, booking_id: str) -> dict[str, Any]:
        response = await self.http.get(
            f"/api/v1/bookings/{booking_id}", headers=self._auth(user, role)
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def stripe_webhook(self, booking_id: str, payment_id: str, event_type: str) -> None:
        payload = json.dumps(
            {
                "id": f"evt_{uuid.uuid4().hex}",
                "object": "event",
                "type": event_type,
                "data": {
                    "object": {
                        "id": payment_id,
                        "object": "payment_intent",
                        "status": "requires_capture"
                        if event_type.endswith("amount_capturable_updated")
                        else "requires_payment_method",
                        "metadata": {"booking_id": booking_id},
                    }
                },
            }
        ).encode()
        timestamp = int(time.time())
        signature = hmac.new(
            self.settings.stripe_webhook_secret.encode(),
            f"{timestamp}.".encode() + payload,
            hashlib.sha256,
        ).hexdigest()
        response = await self.http.post(
            "/api/v1/webhooks/stripe",
            content=payload,
            headers={
                "Content-Type": "application/json",
                "Stripe-Signature": f"t={timestamp},v1={signature}",
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["forwarded"] is True, response.text


@pytest.fixture
async def client(api: Api, saga_settings: Settings) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as http:
        yield Client(api, saga_settings, http)


async def read_model(db: asyncpg.Pool, booking_id: str) -> BookingState | None:
    state = await db.fetchval("SELECT state FROM bookings WHERE id = $1", booking_id)
    return BookingState.from_json(state) if isinstance(state, dict) else None


async def until(
    db: asyncpg.Pool,
    booking_id: str,
    check: Callable[[BookingState | None], bool] = settled,
    within: float = 60.0,
) -> BookingState:
    """Poll the read model until ``check`` holds."""
    deadline = time.monotonic() + within
    while True:
        state = await read_model(db, booking_id)
        if check(state):
            assert state is not None
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"booking {booking_id} in the read model: {state}")
        await asyncio.sleep(0.2)


def is_(*statuses: Status) -> Callable[[BookingState | None], bool]:
    return lambda s: s is not None and s.status in statuses


def waits_for_provider(state: BookingState | None) -> bool:
    return (
        state is not None
        and state.status == Status.AWAITING_PROVIDER
        and state.provider_deadline_at is not None
    )


async def ledger(db: asyncpg.Pool, booking_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT operation FROM sandbox_ledger WHERE booking_id = $1 ORDER BY id", booking_id
    )
    return [r["operation"] for r in rows]


async def test_happy_path_through_the_api(
    client: Client, db: asyncpg.Pool, mailbox: Mailbox
) -> None:
    service = await create_service(db)
    customer = await create_user(db, "customer")
    booking = await client.book(customer, service)
    first = await client.get(customer, "customer", booking)  # right after the 202: no 404
    assert first["status"] in ("requested", "reserved", "awaiting_provider")

    await until(db, booking, waits_for_provider)
    accepted = await client.act(service.provider, "provider", booking, "accept")
    assert accepted.status_code == 202, accepted.text
    await until(db, booking)

    seen = await client.get(customer, "customer", booking)
    assert seen["status"] == "confirmed"
    assert await ledger(db, booking) == ["authorize", "capture"]
    templates = sorted(m.template for m in mailbox.for_booking(booking))
    assert templates == ["customer_confirmed", "provider_request"]
    await assert_invariants(db, [booking])


async def test_slot_full_through_the_api(client: Client, db: asyncpg.Pool) -> None:
    service = await create_service(db, capacity=1)
    customer = await create_user(db, "customer")
    slot = a_slot()
    first = await client.book(customer, service, slot=slot)
    await until(db, first, waits_for_provider)
    second = await client.book(customer, service, slot=slot)
    state = await until(db, second)
    assert state.status == Status.REJECTED
    assert (await client.get(customer, "customer", second))["status"] == "rejected"
    assert await ledger(db, second) == []  # nothing authorized
    assert (await client.act(customer, "customer", first, "cancel")).status_code == 202
    await until(db, first)
    await assert_invariants(db, [first, second])


async def test_declined_through_the_api(client: Client, db: asyncpg.Pool) -> None:
    service = await create_service(db)
    customer = await create_user(db, "customer")
    booking = await client.book(customer, service, payment_method="pm_card_chargeDeclined")
    state = await until(db, booking)
    assert state.status == Status.FAILED
    seen = await client.get(customer, "customer", booking)
    assert (seen["status"], seen["hold"], seen["payment"]) == ("failed", "released", "failed")
    await assert_invariants(db, [booking])


async def test_action_required_then_the_stripe_webhook_through_the_api(
    client: Client, db: asyncpg.Pool
) -> None:
    service = await create_service(db)
    customer = await create_user(db, "customer")
    booking = await client.book(customer, service, payment_method="pm_card_authenticationRequired")
    state = await until(db, booking, is_(Status.PAYMENT_ACTION_REQUIRED))
    assert (await client.get(customer, "customer", booking))["status"] == "payment_action_required"
    assert state.payment_id is not None
    await client.stripe_webhook(
        booking, state.payment_id, "payment_intent.amount_capturable_updated"
    )
    await until(db, booking, waits_for_provider)
    assert (await client.get(customer, "customer", booking))["status"] == "awaiting_provider"
    await client.act(customer, "customer", booking, "cancel")
    await until(db, booking)
    await assert_invariants(db, [booking])


async def test_provider_rejects_through_the_api(client: Client, db: asyncpg.Pool) -> None:
    service = await create_service(db)
    customer = await create_user(db, "customer")
    booking = await client.book(customer, service)
    await until(db, booking, waits_for_provider)
    rejected = await client.act(service.provider, "provider", booking, "reject")
    assert rejected.status_code == 202, rejected.text
    state = await until(db, booking)
    assert (state.status.value, state.payment.value, state.hold.value) == (
        "rejected",
        "voided",
        "released",
    )
    assert await ledger(db, booking) == ["authorize", "void"]
    await assert_invariants(db, [booking])


async def test_provider_times_out_through_the_api(client: Client, db: asyncpg.Pool) -> None:
    service = await create_service(db, response_deadline_seconds=2)
    customer = await create_user(db, "customer")
    booking = await client.book(customer, service)
    state = await until(db, booking, within=30)
    assert (state.status.value, state.payment.value, state.hold.value) == (
        "expired",
        "voided",
        "released",
    )
    late = await client.act(service.provider, "provider", booking, "accept")
    assert late.status_code == 409  # the API refuses an answer to an expired booking
    await assert_invariants(db, [booking])


async def test_capture_fails_through_the_api(
    client: Client, db: asyncpg.Pool, mailbox: Mailbox
) -> None:
    service = await create_service(db)
    customer = await create_user(db, "customer")
    booking = await client.book(customer, service, payment_method="pm_card_captureFails")
    await until(db, booking, waits_for_provider)
    await client.act(service.provider, "provider", booking, "accept")
    state = await until(db, booking)
    assert (state.status.value, state.hold.value) == ("failed", "released")
    assert "customer_failed" in {m.template for m in mailbox.for_booking(booking)}
    await assert_invariants(db, [booking])


@pytest.mark.parametrize(
    ("payment_method", "cancel_in"),
    [
        ("pm_card_visa", None),  # as soon as the 202 is back: requested or reserved
        ("pm_card_authenticationRequired", Status.PAYMENT_ACTION_REQUIRED),
        ("pm_card_visa", Status.AWAITING_PROVIDER),
        ("pm_card_visa", Status.CONFIRMED),
    ],
)
async def test_customer_cancels_through_the_api(
    client: Client, db: asyncpg.Pool, payment_method: str, cancel_in: Status | None
) -> None:
    service = await create_service(db)
    customer = await create_user(db, "customer")
    booking = await client.book(customer, service, payment_method=payment_method)
    if cancel_in == Status.CONFIRMED:
        await until(db, booking, waits_for_provider)
        await client.act(service.provider, "provider", booking, "accept")
        await until(db, booking)
    elif cancel_in is not None:
        await until(db, booking, is_(cancel_in))
    response = await client.act(customer, "customer", booking, "cancel")
    assert response.status_code == 202, response.text
    state = await until(
        db, booking, lambda s: settled(s) and s is not None and s.status == Status.CANCELLED
    )
    assert (await client.get(customer, "customer", booking))["status"] == "cancelled"
    if cancel_in == Status.CONFIRMED:
        assert state.payment.value == "refunded"
        assert await ledger(db, booking) == ["authorize", "capture", "refund"]
    await assert_invariants(db, [booking])


async def test_fifty_concurrent_requests_for_three_seats_through_the_api(
    client: Client, db: asyncpg.Pool
) -> None:
    service = await create_service(db, capacity=3)
    customers = [await create_user(db, "customer") for _ in range(5)]
    slot = a_slot()
    bookings = await asyncio.gather(
        *(client.book(customers[i % 5], service, slot=slot) for i in range(50))
    )
    assert len(set(bookings)) == 50
    decided = [
        await until(db, b, is_(Status.AWAITING_PROVIDER, Status.REJECTED), within=120)
        for b in bookings
    ]
    winners = [s.booking_id for s in decided if s.status == Status.AWAITING_PROVIDER]
    assert len(winners) == 3
    for booking in winners:
        await until(db, booking, waits_for_provider)
        assert (
            await client.act(service.provider, "provider", booking, "accept")
        ).status_code == 202
    final = [await until(db, b, within=120) for b in bookings]
    assert sum(s.status == Status.CONFIRMED for s in final) == 3
    assert sum(s.status == Status.REJECTED for s in final) == 47
    row = await db.fetchrow(
        "SELECT held, confirmed FROM slot_capacity WHERE service_id = $1 AND slot_start = $2",
        service.id,
        slot,
    )
    assert dict(row) == {"held": 0, "confirmed": 3}
    await assert_invariants(db, bookings)


async def test_repeating_a_request_with_its_idempotency_key_books_once(
    client: Client, db: asyncpg.Pool
) -> None:
    service = await create_service(db)
    customer = await create_user(db, "customer")
    slot = a_slot()
    key = f"key-{uuid.uuid4()}"
    first = await client.book(customer, service, slot=slot, key=key)
    again = await client.book(customer, service, slot=slot, key=key)
    assert first == again
    await until(db, first, waits_for_provider)
    await client.act(customer, "customer", first, "cancel")
    await until(db, first)
    assert await ledger(db, first) == ["authorize", "void"]
    await assert_invariants(db, [first])


async def test_redelivering_finished_sagas_leaves_the_read_model_alone(
    client: Client,
    db: asyncpg.Pool,
    mailbox: Mailbox,
    saga_settings: Settings,
    saga_catalog: TopicCatalog,
) -> None:
    service = await create_service(db)
    customer = await create_user(db, "customer")
    confirmed = await client.book(customer, service)
    declined = await client.book(customer, service, payment_method="pm_card_chargeDeclined")
    refunded = await client.book(customer, service)
    for booking in (confirmed, refunded):
        await until(db, booking, waits_for_provider)
        await client.act(service.provider, "provider", booking, "accept")
    await until(db, refunded)
    await client.act(customer, "customer", refunded, "cancel")
    bookings = [confirmed, declined, refunded]
    await until(db, confirmed)
    await until(db, declined)
    await until(
        db, refunded, lambda s: settled(s) and s is not None and s.status == Status.CANCELLED
    )
    groups = [c.group_id for c in saga_catalog.consumers.values()]
    await wait_caught_up(saga_settings.kafka_bootstrap, saga_catalog, groups)

    async def everything() -> tuple[object, ...]:
        rows = await db.fetch(
            "SELECT * FROM bookings WHERE id = ANY($1::uuid[]) ORDER BY id", bookings
        )
        ledger_rows = await db.fetch(
            "SELECT * FROM sandbox_ledger WHERE booking_id = ANY($1::uuid[]) ORDER BY id", bookings
        )
        events = await db.fetchval(
            "SELECT count(*) FROM booking_events WHERE booking_id = ANY($1::uuid[])", bookings
        )
        mails = sorted(m.message_id for b in bookings for m in mailbox.for_booking(b))
        return [dict(r) for r in rows], [dict(r) for r in ledger_rows], events, mails

    before = await everything()
    log = await db.fetch(
        """SELECT topic, booking_id::text AS key, body FROM booking_events
           WHERE booking_id = ANY($1::uuid[]) ORDER BY "offset" """,
        bookings,
    )
    assert len(log) > 20
    async with contextlib.AsyncExitStack() as stack:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=saga_settings.kafka_bootstrap)
        await producer.start()
        stack.push_async_callback(producer.stop)
        for row in log:
            await producer.send_and_wait(
                row["topic"], value=bytes(row["body"]), key=row["key"].encode()
            )
    await wait_caught_up(saga_settings.kafka_bootstrap, saga_catalog, groups)
    await asyncio.sleep(1.0)
    assert await everything() == before
    await assert_invariants(db, bookings)
