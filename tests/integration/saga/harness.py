"""What the saga's integration tests share: test servers, catalog rows, the event log reader.

* ``Mailbox``: a real SMTP server (aiosmtpd) on a free port; collects what arrives.
* ``WebhookInbox``: a real HTTP server on a free port; records signed notification webhooks and
  can be told to answer 503 for a while.
* ``EventLog``: reads every booking topic (the session's prefixed ones) from the start without
  a consumer group and keeps each booking's events, so a test can wait for a saga to settle.
* ``Catalog``: users and a service with uuid ids in PostgreSQL, as the API would have made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import socket
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from typing import Any, Self

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiosmtpd.controller import Controller

from erynoa import events as ev
from erynoa import saga
from erynoa.codec import EventCodec, UndecodableEvent
from erynoa.kafka import EventPublisher, start_consumer
from erynoa.saga import BookingState, Hold, Payment, Status, fold_log
from erynoa.topics import TopicCatalog
from tests.builders import booking_requested

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- SMTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    message: Message

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    @property
    def booking_id(self) -> str:
        return str(self.message["X-Erynoa-Booking-Id"])

    @property
    def template(self) -> str:
        return str(self.message["X-Erynoa-Template"])


class _Server:
    """A test server: ``with`` starts it and stops it after."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Mailbox(_Server):
    """aiosmtpd in its own thread; ``refuse_next(n, code)`` makes the next n messages fail."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self._refusals: list[str] = []
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            if self._refusals:
                return self._refusals.pop(0)
            self.mails.append(
                Mail(tuple(envelope.rcpt_tos), message_from_bytes(envelope.original_content))
            )
        return "250 OK"

    def refuse_next(self, count: int, reply: str = "451 4.3.0 try again later") -> None:
        with self._lock:
            self._refusals = [reply] * count

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def for_booking(self, booking_id: str) -> list[Mail]:
        with self._lock:
            return [m for m in self.mails if m.booking_id == booking_id]


# --- webhooks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class WebhookInbox(_Server):
    """A threaded HTTP server recording POSTs; ``fail_next(n)`` answers 503 n times."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hooks: list[Hook] = []
        self._failures = 0
        self._lock = threading.Lock()
        inbox = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with inbox._lock:
                    failing = inbox._failures > 0
                    if failing:
                        inbox._failures -= 1
                    else:
                        inbox.hooks.append(Hook(self.path, dict(self.headers.items()), body))
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, count: int) -> None:
        with self._lock:
            self._failures = count

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def for_booking(self, booking_id: str) -> list[Hook]:
        with self._lock:
            return [h for h in self.hooks if h.payload.get("booking_id") == booking_id]


# --- the event log ------------------------------------------------------------------------------


def settled(state: BookingState | None) -> bool:
    """The saga has nothing left to do: an outcome, compensated, and the customer told."""
    if state is None or not state.is_outcome:
        return False
    if saga.customer_template(state.status) not in state.notified:
        return False
    if state.status == Status.CONFIRMED:
        return state.hold == Hold.CONVERTED and state.payment == Payment.CAPTURED
    return state.hold not in (Hold.HELD, Hold.CONVERTED) and state.payment not in saga.MONEY_HELD


class EventLog:
    """Every event on the session's booking topics, by booking, as they arrive."""

    def __init__(self, bootstrap: str, catalog: TopicCatalog, codec: EventCodec) -> None:
        self.catalog = catalog
        self.codec = codec
        topics = [t.name for t in catalog.by_kind("event") if t.key == "booking_id"]
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        self.events: dict[str, list[ev.BookingEvent]] = defaultdict(list)
        self.raw: dict[str, list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]]] = (
            defaultdict(list)
        )
        self.undecodable = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await start_consumer(self._consumer)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self._consumer.stop()
        except (Exception, asyncio.CancelledError) as exc:
            # aiokafka's fetcher can raise while closing when a fetch is in its retry backoff
            # (a slow broker at the end of the session): the log is done either way.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            logger.warning("event log consumer did not stop cleanly: %r", exc)

    async def _run(self) -> None:
        async for message in self._consumer:
            try:
                event = self.codec.decode(message.value or b"")
            except UndecodableEvent:
                self.undecodable += 1
                continue
            if isinstance(event, ev.BookingEvent):
                self.events[event.booking_id].append(event)
                self.raw[event.booking_id].append(
                    (message.topic, message.key, message.value or b"", list(message.headers or ()))
                )
                async with self._changed:
                    self._changed.notify_all()

    def state(self, booking_id: str) -> BookingState | None:
        return fold_log(self.events.get(booking_id, []))

    def types(self, booking_id: str) -> list[str]:
        """Event types in arrival order, each event id once."""
        seen: set[str] = set()
        out = []
        for event in self.events.get(booking_id, []):
            if event.event_id not in seen:
                seen.add(event.event_id)
                out.append(event.event_type)
        return out

    def count(self, booking_id: str, event_type: str) -> int:
        return self.types(booking_id).count(event_type)

    async def wait(
        self,
        booking_id: str,
        until: Callable[[BookingState | None], bool] = settled,
        within: float = 60.0,
    ) -> BookingState:
        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: until(self.state(booking_id)))

        try:
            await asyncio.wait_for(reached(), within)
        except TimeoutError:
            raise AssertionError(
                f"booking {booking_id} did not get there in {within}s; state "
                f"{self.state(booking_id)}; events {self.types(booking_id)}"
            ) from None
        state = self.state(booking_id)
        assert state is not None
        return state

    async def wait_all(
        self,
        booking_ids: Sequence[str],
        until: Callable[[BookingState | None], bool] = settled,
        within: float = 120.0,
    ) -> dict[str, BookingState]:
        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: all(until(self.state(b)) for b in booking_ids))

        try:
            await asyncio.wait_for(reached(), within)
        except TimeoutError:
            stuck = {
                b: (s.status.value if (s := self.state(b)) else None, self.types(b))
                for b in booking_ids
                if not until(self.state(b))
            }
            raise AssertionError(f"{len(stuck)} bookings did not settle: {stuck}") from None
        return {b: s for b in booking_ids if (s := self.state(b)) is not None}

    async def quiet(self, seconds: float = 2.0) -> None:
        """Wait until no new event arrived for ``seconds`` (stragglers of a redelivery)."""
        while True:
            before = sum(len(v) for v in self.events.values())
            await asyncio.sleep(seconds)
            if sum(len(v) for v in self.events.values()) == before:
                return


# --- the catalog --------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    id: str
    email: str | None
    webhook_url: str | None = None


@dataclass(frozen=True)
class Service:
    id: str
    provider: User
    capacity: int
    response_deadline_seconds: int
    price: ev.Money = field(default_factory=lambda: ev.Money(4500, "EUR"))


async def create_user(
    pool: asyncpg.Pool, role: str, *, email: bool = True, webhook_url: str | None = None
) -> User:
    user_id = f"{role}-{uuid.uuid4()}"
    address = f"{user_id}@example.test" if email else None
    await pool.execute(
        """INSERT INTO users (id, email, display_name, roles, webhook_url)
           VALUES ($1, $2, $3, $4, $5)""",
        user_id,
        address,
        f"Test {role}",
        [role],
        webhook_url,
    )
    return User(user_id, address, webhook_url)


async def create_service(
    pool: asyncpg.Pool,
    *,
    capacity: int = 5,
    response_deadline_seconds: int = 3600,
    provider: User | None = None,
) -> Service:
    provider = provider or await create_user(pool, "provider")
    service = Service(str(uuid.uuid4()), provider, capacity, response_deadline_seconds)
    await pool.execute(
        """INSERT INTO services (id, provider_id, name, price_amount_minor, price_currency,
                                 duration_minutes, capacity_per_slot, response_deadline_seconds)
           VALUES ($1, $2, $3, $4, $5, 60, $6, $7)""",
        service.id,
        provider.id,
        f"Test service {service.id[:8]}",
        service.price.amount_minor,
        service.price.currency,
        capacity,
        response_deadline_seconds,
    )
    return service


def a_slot(days: int = 7) -> datetime:
    """A slot start no other test uses (random minute offset within a far day)."""
    base = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=days)
    return base + timedelta(minutes=uuid.uuid4().int % 100_000)


# --- producing requests ---------------------------------------------------------------------


def booking_of(
    service: Service,
    customer_id: str,
    *,
    slot: datetime | None = None,
    response_deadline_seconds: int | None = None,
    **fields: Any,
) -> ev.BookingRequested:
    """A request for ``service`` (at a slot no other test uses unless one is given), with the
    service's own deadline unless one is given."""
    return booking_requested(
        customer_id=customer_id,
        service_id=service.id,
        provider_id=service.provider.id,
        slot_start=slot or a_slot(),
        price=service.price,
        response_deadline_seconds=response_deadline_seconds or service.response_deadline_seconds,
        **fields,
    )


async def request_booking(
    publisher: EventPublisher,
    service: Service,
    customer: User,
    *,
    slot: datetime | None = None,
    payment_method: str = "pm_card_visa",
    headers: Mapping[str, str] | None = None,
) -> str:
    """Publish ``BookingRequested`` as the API would; returns the booking id."""
    requested = booking_of(service, customer.id, slot=slot, payment_method=payment_method)
    booking_id = requested.booking_id
    await publisher.publish(requested, {"x-request-id": f"req-{booking_id}", **(headers or {})})
    return booking_id


async def a_booking(
    db: asyncpg.Pool,
    publisher: EventPublisher,
    *,
    payment_method: str = "pm_card_visa",
    **service_options: Any,
) -> tuple[Service, str]:
    """A new customer's request for a new service (``service_options`` as ``create_service``
    takes them); returns the service and the booking id."""
    service = await create_service(db, **service_options)
    customer = await create_user(db, "customer")
    return service, await request_booking(
        publisher, service, customer, payment_method=payment_method
    )


def _known(log: EventLog, booking_id: str) -> BookingState:
    state = log.state(booking_id)
    assert state is not None, f"no events of booking {booking_id} seen yet"
    return state


def from_api(cls: type[ev.B], state: BookingState, **fields: Any) -> ev.B:
    """An event the API writes about a booking it knows, in the booking's correlation."""
    return ev.make(
        cls,
        booking_id=state.booking_id,
        producer="api",
        correlation_id=state.correlation_id,
        **fields,
    )


async def answer(
    publisher: EventPublisher,
    log: EventLog,
    booking_id: str,
    decision: str,
    reason: str | None = None,
) -> None:
    """Publish ``ProviderAnswerSubmitted`` as the API would."""
    state = _known(log, booking_id)
    await publisher.publish(
        from_api(
            ev.ProviderAnswerSubmitted,
            state,
            provider_id=state.provider_id,
            decision=decision,
            reason=reason,
        )
    )


async def cancel(publisher: EventPublisher, log: EventLog, booking_id: str) -> None:
    state = _known(log, booking_id)
    await publisher.publish(
        from_api(
            ev.BookingCancellationRequested,
            state,
            requested_by=state.customer_id,
            requested_by_role="customer",
            reason="changed my mind",
        )
    )


async def stripe_webhook(
    publisher: EventPublisher, log: EventLog, booking_id: str, stripe_event_type: str
) -> None:
    """Publish ``StripeEventReceived`` as the API's verified webhook endpoint would."""
    state = _known(log, booking_id)
    assert state.payment_id is not None
    status = "requires_capture" if stripe_event_type.endswith("capturable_updated") else "failed"
    await publisher.publish(
        from_api(
            ev.StripeEventReceived,
            state,
            stripe_event_id=f"evt_{uuid.uuid4().hex}",
            stripe_event_type=stripe_event_type,
            payment_id=state.payment_id,
            payment_status=status,
        )
    )


def status_is(*statuses: Status) -> Callable[[BookingState | None], bool]:
    return lambda s: s is not None and s.status in statuses


def deadline_started(state: BookingState | None) -> bool:
    return state is not None and state.provider_deadline_at is not None


def provider_decided(state: BookingState | None) -> bool:
    return state is not None and state.provider_outcome is not None


async def ledger(db: asyncpg.Pool, booking_id: str) -> list[tuple[str, str]]:
    """What the sandbox gateway did for a booking: (operation, outcome), in order."""
    rows = await db.fetch(
        "SELECT operation, outcome FROM sandbox_ledger WHERE booking_id = $1 ORDER BY id",
        booking_id,
    )
    return [(r["operation"], r["outcome"]) for r in rows]


# --- Kafka bookkeeping ------------------------------------------------------------------------


async def caught_up(bootstrap: str, catalog: TopicCatalog, groups: Sequence[str]) -> bool:
    """Whether every group committed the end offset of every partition it consumes."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await start_consumer(probe)
    try:
        for group in groups:
            spec = next(c for c in catalog.consumers.values() if c.group_id == group)
            topics = [*spec.consumes, *spec.retry_topics]
            partitions = [
                TopicPartition(t, p) for t in topics for p in range(catalog.topics[t].partitions)
            ]
            ends = await probe.end_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            for tp in partitions:
                done = committed.get(tp)
                if ends[tp] > 0 and (done is None or done.offset < ends[tp]):
                    return False
        return True
    finally:
        await probe.stop()
        await admin.close()


async def wait_caught_up(
    bootstrap: str, catalog: TopicCatalog, groups: Sequence[str], within: float = 60.0
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await caught_up(bootstrap, catalog, groups):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"consumer groups {groups} did not catch up in {within}s")
        await asyncio.sleep(0.5)


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every message currently in ``topic`` (aiokafka ConsumerRecords)."""
    from aiokafka import TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await start_consumer(consumer)
    records: list[Any] = []
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


async def dead_letters(
    bootstrap: str, catalog: TopicCatalog, agent: str, key: bytes, within: float = 30.0
) -> list[Any]:
    """The messages keyed ``key`` in ``agent``'s dead-letter topic, once there is at least one."""
    dlq = catalog.topics[catalog.consumer(agent).dead_letter_topic]
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = [r for r in await read_topic(bootstrap, dlq.name, dlq.partitions) if r.key == key]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.5)


async def assert_invariants(
    pool: asyncpg.Pool,
    booking_ids: Sequence[str],
    events: Mapping[str, Sequence[ev.BookingEvent]] | None = None,
    within: float = 30.0,
) -> None:
    """The invariants hold once the system is quiet: the materializer folds asynchronously, so
    its read model may trail the topics for a moment; give it ``within`` seconds."""
    from ops.invariants import check_invariants

    deadline = asyncio.get_running_loop().time() + within
    while True:
        violations = await check_invariants(pool, booking_ids, events=events)
        if not violations:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("\n".join(map(str, violations)))
        await asyncio.sleep(0.5)
