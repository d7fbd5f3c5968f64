"""The handler loop every agent shares: decode, decide, act, emit — idempotently.

A batch of consumed messages (what queued up in one partition lane while the previous batch
ran: one message when idle, up to ``streams.app.MAX_BATCH`` under load) is handled in ONE
PostgreSQL transaction:

1. decode each message with the one codec (an undecodable one goes to the dead-letter topic at
   once, alone, never retried);
2. begin, and take the per-booking locks of every booking in the batch, in one round trip
   (``streams.store.locked_transaction``), and skip the events this agent already processed
   (``processed_events``);
3. for each booking, in slot order, fold its new events into the agent's ``BookingState`` with
   ``erynoa.saga.evolve`` and ask ``erynoa.saga.next_actions`` what to do; the agent's adapter
   carries each action out (side effects carry idempotency keys derived from booking and step)
   and returns the resulting events, which are folded back in until nothing is left to do;
4. write the states, the processed marks, the emitted events (the *outbox*) and the group's
   positions past the batch in one statement, and COMMIT;
5. publish the outbox to Kafka (event ids derived from booking and step, so a redelivery
   publishes identical ids that downstream deduplicates) and delete it.

A batch costs about as many round trips as one message did, so under load the cost per message
falls with the batch size; the result is the same as handling the messages one by one (a
booking's events keep their partition order, bookings of one slot keep theirs). When a batch
fails, its messages are handled again one by one, so a bad message takes only itself down the
failure path.

Why at-least-once plus structural idempotency, and not Faust's ``exactly_once``: the handlers'
effects reach outside Kafka (the reservation's row in PostgreSQL, a Stripe charge, an e-mail), so
a Kafka transaction cannot make them atomic with the offset commit anyway; what makes a
redelivery harmless is the processed-event row, committed with the state, plus idempotency keys
on every external call. Kafka transactions would add a second commit protocol (and
faust-streaming's EOS has open duplicate-delivery bugs) without removing either.

A crash anywhere is a redelivery: before COMMIT nothing happened that a retry would not repeat
identically; after COMMIT the outbox still holds what must be published. A failure routes the
original bytes of the failing message to a retry tier or the dead-letter topic
(``streams.failures``), so the partition keeps moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import asyncpg
from aiokafka.errors import KafkaError
from opentelemetry.trace import SpanKind

from erynoa import kafka as k
from erynoa import saga, tracing
from erynoa.codec import EventCodec, RegistryUnavailable, UndecodableEvent, decode_off_loop
from erynoa.db import GatheredDeletes
from erynoa.events import (
    BookingEvent,
    BookingRequested,
    CatalogEvent,
    SagaRetryRequested,
    derived_event_id,
    make,
)
from erynoa.kafka import KAFKA_REFUSALS, EventPublisher
from erynoa.topics import Consumer
from streams import failures, store
from streams.metrics import AgentMetrics

log = logging.getLogger("streams.runtime")

# Headers that travel from a consumed message to every event it causes.
PROPAGATED_HEADERS = (k.H_REQUEST_ID, k.H_TRACEPARENT, "tracestate", k.H_SYNTHETIC)
# More rounds than any saga step needs (provider-response: start deadline, then accept); a
# loop that does not settle is a bug in the rules, stopped here rather than spinning.
_MAX_ROUNDS = 6
_PUBLISH_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
_TICK = timedelta(microseconds=1)  # the timestamps' resolution on the wire
_PROBE_TIMEOUT_S = 5.0
_REWIND_REARM_S = 30.0
_REDELIVERY_RELAY_AGE_S = 1.0
_REDELIVERY_RELAY_GAP_S = 2.0
_REFUSED_RETRY_S = 300.0
_OUTAGE_BACKOFF_FIRST_S = 0.5
_OUTAGE_BACKOFF_MAX_S = 10.0


def _outage_backoff() -> Iterator[float]:
    """0.5 s, doubling to 10 s, then every 10 s for as long as the outage lasts."""
    delay = _OUTAGE_BACKOFF_FIRST_S
    while True:
        yield delay
        delay = min(delay * 2, _OUTAGE_BACKOFF_MAX_S)


E = TypeVar("E", bound=BookingEvent)
T = TypeVar("T")

Seek = Callable[[str, int, int], Awaitable[int]]
"""Move the consumer of (topic, partition) to an offset; returns the offset it moved to (later
than asked when the log no longer starts that early)."""


@dataclass(frozen=True)
class Incoming:
    """One consumed Kafka message, independent of the consumer library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def origin(self) -> failures.Origin:
        return failures.Origin(self.topic, self.partition, self.offset)


Decoded = tuple[Incoming, BookingEvent | CatalogEvent]
"""A consumed message and the event it holds."""


@dataclass(frozen=True)
class GaveUpOn:
    """A failure an adapter recorded as an event instead of raising, with its message: the
    message still goes to the retry or dead-letter topic, for operators to see."""

    incoming: Incoming
    event_id: str
    error: BaseException


Handled = tuple[list[GaveUpOn], bool]
"""What ``AgentRuntime.handle`` returns: the failures its adapters recorded as events (and those
a worker that died after its commit left unrouted), and whether the commit moved the group's
positions past the batch."""


@dataclass
class Context:
    """What an adapter sees while it carries out one booking's actions."""

    agent: saga.Agent
    conn: asyncpg.Connection
    """The handler's connection, inside its transaction (rolled back if anything fails)."""
    pool: asyncpg.Pool
    """For writes that must survive a rollback (a delivery that really happened)."""
    state: saga.BookingState
    cause: BookingEvent | None
    """The consumed event; None when a timer acts (a provider deadline)."""
    now: datetime
    headers: dict[str, str]
    final_attempt: bool = False
    """A retryable failure now would dead-letter the message (its retry tiers are used up)."""
    gave_up: list[BaseException] = field(default_factory=list)
    """Failures the adapter recorded as events instead of raising (the saga goes on); the
    runtime still dead-letters the message so operators see them."""
    _emitted: int = 0

    @property
    def booking_id(self) -> str:
        return self.state.booking_id

    @property
    def synthetic(self) -> bool:
        """Load-test traffic: never delivered anywhere real."""
        return self.headers.get(k.H_SYNTHETIC, "").lower() in ("1", "true", "yes")

    def idempotency_key(self, step: str) -> str:
        """The key for one external call of this booking's ``step`` (same on every retry)."""
        return f"{self.booking_id}:{step}"

    def emit(self, cls: type[E], step: str, **fields: Any) -> E:
        """An event for this booking whose id is derived from ``agent:step``."""
        return make(
            cls,
            booking_id=self.booking_id,
            producer=self.agent,
            cause=self.cause,
            correlation_id=None if self.cause is not None else self.state.correlation_id,
            event_id=derived_event_id(self.booking_id, f"{self.agent}:{step}"),
            occurred_at=self._next_time(),
            **fields,
        )

    def _next_time(self) -> datetime:
        # Readers order a booking's events by (occurred_at, event_id) (the materializer, the
        # invariant checker), so a handler's events get strictly increasing times after their
        # cause's: a capture failure and the void it causes must never fold the other way round.
        base = self.now
        if self.cause is not None:
            base = max(base, self.cause.occurred_at + _TICK)
        emitted_at = base + _TICK * self._emitted
        self._emitted += 1
        return emitted_at


class Adapter(Protocol):
    """An agent: how to carry out the saga's actions it owns (the only agent-specific code)."""

    agent: saga.Agent
    waits_on_outside: bool
    """Its actions wait on services outside PostgreSQL (Stripe, SMTP): it gets several lanes,
    so one slow call does not hold every partition of the worker."""

    async def start(self, pool: asyncpg.Pool) -> None: ...

    async def stop(self) -> None: ...

    async def execute(self, action: saga.Action, ctx: Context) -> list[BookingEvent]:
        """Do ``action`` (idempotently) and return the events that record its result."""

    async def react(self, event: BookingEvent, ctx: Context) -> list[BookingEvent]:
        """Events that translate an outside fact the rules do not act on (a Stripe webhook)."""

    async def settle(self, ctx: Context) -> None:
        """Bring the agent's own tables in line with the final state (deadline rows)."""

    async def redrive(self, ctx: Context) -> list[BookingEvent]:
        """An operator replayed a message this agent processed already, after recording a
        failure so that the saga could go on: try again what was given up on."""

    async def probe(self) -> str | None:
        """Which outside service this agent needs is down ("smtp: connection refused"), or
        None when all answer. Asked only after a retryable failure, to tell an outage (the
        lane waits) from a message that fails on its own (it goes down the retry tiers)."""


class BaseAdapter:
    """Defaults for the optional parts of ``Adapter``."""

    waits_on_outside: bool = False

    async def start(self, pool: asyncpg.Pool) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def react(self, event: BookingEvent, ctx: Context) -> list[BookingEvent]:
        return []

    async def settle(self, ctx: Context) -> None:
        return None

    async def redrive(self, ctx: Context) -> list[BookingEvent]:
        return []

    async def probe(self) -> str | None:
        return None


def log_extra(event: BookingEvent | None = None, **more: object) -> dict[str, object]:
    extra: dict[str, object] = dict(more)
    if event is not None:
        extra.update(
            booking_id=event.booking_id,
            correlation_id=event.correlation_id,
            event_id=event.event_id,
            event_type=event.event_type,
        )
    return extra


class AgentRuntime:
    """One agent's processing: resources, the handler, failure routing, graceful drain."""

    def __init__(
        self,
        adapter: Adapter,
        consumer: Consumer,
        codec: EventCodec,
        policy: saga.Policy,
        connect_pool: Callable[[], Awaitable[asyncpg.Pool]],
        make_publisher: Callable[[], EventPublisher],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.adapter = adapter
        self.agent: saga.Agent = adapter.agent
        self.consumer = consumer
        self.codec = codec
        self.metrics = metrics or AgentMetrics(self.agent, consumer.group_id, codec.versions)
        self.policy = policy
        self._connect_pool = connect_pool
        self._make_publisher = make_publisher
        self.clock = clock
        self._pool: asyncpg.Pool | None = None
        self._publisher: EventPublisher | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._draining = asyncio.Event()
        self._cleanup: GatheredDeletes | None = None
        self._publishing: dict[str, asyncio.Future[None]] = {}
        self._refused: dict[str, float] = {}
        """Bookings whose outbox row the broker refused, with when: left out of relay sweeps."""
        """Outbox rows being published now, by event id: done when that publish ends."""
        self.positions: store.Positions | None = None
        self.seek: Seek | None = None
        """Moves the consumer of a partition back (set by the app that owns the consumer)."""
        self._predecessor_may_have_died = False
        self._relayed_after_redelivery = 0.0
        self._rewinding: dict[store.Partition, _Rewind] = {}
        """Partitions moved back whose re-read has not arrived yet."""
        self._positions: dict[store.Partition, int] = {}
        """The next offset of each partition as this process last recorded it (a cache: the
        table is the truth, asked whenever a batch does not start where this says)."""

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("runtime not started")
        return self._pool

    @property
    def publisher(self) -> EventPublisher:
        if self._publisher is None:
            raise RuntimeError("runtime not started")
        return self._publisher

    async def start(self) -> None:
        self._pool = await self._connect_pool()
        self._publisher = self._make_publisher()
        await self._publisher.start()
        await self.adapter.start(self._pool)
        pool = self._pool

        async def delete_published(event_ids: list[str]) -> None:
            # Left over (a failed delete, a crash first), a published row is only published
            # again by the relay, with the same event id, which every consumer deduplicates.
            await store.remove_from_outbox(pool, self.agent, event_ids)

        self._cleanup = GatheredDeletes(f"{self.agent}.outbox-cleanup", delete_published)
        self.positions = store.PgPositions(self._pool, self.consumer.group_id)
        log.info("agent %s ready", self.agent, extra={"agent": self.agent})

    async def drain(self, grace_s: float = 30.0) -> None:
        """Stop taking messages and let the in-flight ones finish (their offsets then commit)."""
        self._draining.set()
        if self._in_flight:
            log.info("draining %d in-flight message(s)", len(self._in_flight))
            await asyncio.wait(set(self._in_flight), timeout=grace_s)
        if self._cleanup is not None:
            await self._cleanup.flush()

    async def stop(self) -> None:
        if self._cleanup is not None:
            await self._cleanup.close()
            self._cleanup = None
        await self.adapter.stop()
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    async def park(self) -> None:
        """Wait (unacked) until the worker stops; the message is redelivered after a restart."""
        await asyncio.Future()

    async def wait_until(self, due: datetime) -> bool:
        """Sleep until ``due``; False if the worker started draining meanwhile."""
        delay = (due - self.clock()).total_seconds()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), timeout=delay)
        return not self.draining

    async def run_tracked(self, work: Awaitable[None]) -> None:
        """Run one message's work so that a shutdown lets it finish instead of cutting it."""
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        await asyncio.shield(task)

    # --- a batch of messages -------------------------------------------------------------

    async def process(self, batch: Sequence[Incoming]) -> None:
        """Handle consecutive messages of one lane; failures go to a retry tier or the DLQ.
        Never raises, except when the worker stops (the messages are then redelivered).

        An undecodable message goes to the dead-letter topic at once, alone. The rest is one
        transaction; when it fails, each of its messages is handled again on its own, so one bad
        message sends only itself to a retry tier and holds back nothing else (the others' side
        effects repeat with the same idempotency keys).
        """
        batch = await self._continuous(batch)
        if self._predecessor_may_have_died:
            await self._relay_after_redelivery()
        if not batch:
            return
        self.metrics.batch(len(batch))
        decoded: list[Decoded] = []
        for incoming in batch:
            try:
                decoded.append((incoming, await self._decode(incoming)))
            except UndecodableEvent as exc:
                self.metrics.handled(self.metrics.event_type(incoming.headers), 0.0)
                await self._route_failure(incoming, exc)
        ends = _ends(batch)
        recorded = False
        if decoded:
            if not self.codec.writers_ready:
                # Handling encodes; the first encode would ask the registry on the event loop.
                await self._through_outages(lambda: asyncio.to_thread(self.codec.warm_up))
            recorded = await self._process_decoded(decoded, ends)
        await self._record_done(ends, recorded)

    async def _decode(self, incoming: Incoming) -> BookingEvent | CatalogEvent:
        """The message's event. A schema id the codec has not seen is asked of the registry;
        while the registry is down that is an outage, so the lane waits in place for it."""
        try:
            return await decode_off_loop(self.codec, incoming.value)
        except RegistryUnavailable:
            return await self._through_outages(lambda: decode_off_loop(self.codec, incoming.value))

    # --- positions: no message is skipped, whatever the consumer library acks ------------

    async def _continuous(self, batch: Sequence[Incoming]) -> list[Incoming]:
        """The messages of ``batch`` that continue, without a hole, where this group stopped.

        The group's position in each partition is recorded in PostgreSQL once a batch is done
        (handled, or routed to a retry or dead-letter topic). Kafka's committed offsets are
        only where redelivery starts: Faust can commit past a message that was never handled
        (an ack of a skipped message during a rebalance, its gap arithmetic, a lane that died
        with messages queued). So each partition's messages are taken only as an unbroken run
        from the position: one *before* it was done already (a redelivery) and is dropped; one
        *past* the next expected offset means a hole, and the partition is moved back to the
        expected offset (``_rewind``), its messages here dropped until the re-read arrives.
        """
        firsts: dict[store.Partition, int] = {}
        for m in batch:
            firsts.setdefault((m.topic, m.partition), m.offset)
        unsure = [
            key
            for key, first in firsts.items()
            if self._positions.get(key) != first and key not in self._rewinding
        ]
        if unsure:
            positions = self._stored_positions()
            self._positions.update(await self._through_outages(lambda: positions.get(unsure)))
        expected: dict[store.Partition, int] = {}
        kept: list[Incoming] = []
        for m in batch:
            key = (m.topic, m.partition)
            if not await self._resumes(key, m.offset):
                continue
            want = expected.get(key, self._positions.get(key))
            if want is None or m.offset == want:
                kept.append(m)
                expected[key] = m.offset + 1
            elif m.offset < want:
                # Done already: a redelivery. Whoever did it may have died between its COMMIT
                # (which moved the position) and publishing its outbox.
                self._predecessor_may_have_died = True
                continue
            elif not await self._rewind(key, want, m.offset):
                kept.append(m)  # nothing to move back (a test driving the runtime directly)
                expected[key] = m.offset + 1
        if len(kept) < len(batch):
            log.debug("%d message(s) skipped or awaiting a re-read", len(batch) - len(kept))
        return kept

    async def _resumes(self, key: store.Partition, offset: int) -> bool:
        """False for a message fetched before its partition was moved back (it comes again)."""
        rewind = self._rewinding.get(key)
        if rewind is None:
            return True
        if offset > rewind.hole_at:
            if time.monotonic() - rewind.since > _REWIND_REARM_S:
                # Still no re-read (the partition moved to another worker and back, say): ask
                # again rather than drop this partition's messages for ever.
                del self._rewinding[key]
                await self._rewind(key, rewind.to, rewind.hole_at)
            return False
        if offset < rewind.to:
            return False
        # The re-read has begun; offsets between rewind.to and this one do not exist.
        del self._rewinding[key]
        self._positions[key] = offset
        return True

    def _stored_positions(self) -> store.Positions:
        if self.positions is None:
            raise RuntimeError("runtime not started")
        return self.positions

    async def _rewind(self, key: store.Partition, to: int, hole_at: int) -> bool:
        """Move the partition back to ``to`` (a message at ``hole_at`` came with ``to`` never
        handled); False if there is no consumer to move."""
        topic, partition = key
        log.error(
            "%s[%d]: offsets %d..%d were never handled by %s; consuming again from %d",
            topic,
            partition,
            to,
            hole_at - 1,
            self.consumer.group_id,
            to,
            extra={"topic": topic, "partition": partition, "agent": self.agent},
        )
        if self.seek is None:
            return False
        self.metrics.rewound(topic)
        try:
            target = await self.seek(topic, partition, to)
        except Exception as exc:
            # No longer assigned here (a rebalance): its new owner checks the position itself.
            log.warning("%s[%d]: cannot move back (%s)", topic, partition, failures.describe(exc))
            return True
        if target > to:
            # The log starts later than the position: those records are gone for good.
            log.error(
                "%s[%d]: offsets %d..%d were deleted from the log before %s handled them",
                topic,
                partition,
                to,
                target - 1,
                self.consumer.group_id,
                extra={"topic": topic, "partition": partition, "agent": self.agent},
            )
            await self._stored_positions().reset(key, target)
            self._positions[key] = target
        self._rewinding[key] = _Rewind(
            to=target, hole_at=max(hole_at, target), since=time.monotonic()
        )
        return True

    async def _record_done(self, ends: Mapping[store.Partition, int], recorded: bool) -> None:
        """Every message before ``ends`` was handled or routed: move the positions past them.

        Usually the handler's transaction did it (``recorded``). Otherwise (a batch handled
        message by message, a failure routed after the commit, nothing for this agent in it) it
        happens here, after the work: a crash in between only means the messages are delivered
        again, and ``processed_events`` turns that into no-ops.
        """
        if not recorded:
            positions = self._stored_positions()
            await self._through_outages(lambda: positions.advance(ends))
        for key, end in ends.items():
            self._positions[key] = max(self._positions.get(key, end), end)

    async def _process_decoded(
        self, batch: Sequence[Decoded], ends: Mapping[store.Partition, int] | None = None
    ) -> bool:
        """Handle, or route what fails; True when the handler's commit also moved the positions
        to ``ends``."""
        began = time.perf_counter()
        try:
            gave_up, recorded = await self._handle_through_outages(batch, ends)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(batch) > 1:
                log.warning(
                    "a batch of %d failed (%s); handling its messages one by one",
                    len(batch),
                    failures.describe(exc),
                )
                for one in batch:
                    await self._process_decoded([one])
                return False
            incoming = batch[0][0]
            self.metrics.handled(
                self.metrics.event_type(incoming.headers), time.perf_counter() - began
            )
            await self._route_failure(incoming, exc)
            return False
        elapsed = time.perf_counter() - began
        for incoming, _ in batch:
            event_type = self.metrics.event_type(incoming.headers)
            self.metrics.handled(event_type, elapsed)
            self.metrics.processed(event_type)
        for failure in gave_up:
            # The saga moved on (the adapter recorded the failure as an event); the message still
            # goes to the dead-letter topic so operators see what could not be delivered.
            await self._route_failure(failure.incoming, failure.error, kind="retryable")
        if gave_up:
            try:
                await store.forget_gave_up(self.pool, self.agent, [g.event_id for g in gave_up])
            except Exception as exc:
                # Routed already: a row left over only copies the message again on a redelivery.
                log.warning("recorded failures not forgotten: %s", failures.describe(exc))
        return recorded

    async def _handle_through_outages(
        self, batch: Sequence[Decoded], ends: Mapping[store.Partition, int] | None = None
    ) -> Handled:
        """``handle``, repeated in place for as long as a dependency is down.

        A failure is the message's own only if everything the agent depends on answers: an
        outage (PostgreSQL failing over, a broker gone, the SMTP relay or the gateway away) would
        otherwise send every message of its window down the retry tiers into the dead-letter
        topic, and the sagas would wait for an operator. So after a retryable failure the
        runtime probes its dependencies; while one is down the lane waits (nothing is acked,
        so the partition stays where it is), then handles the same batch again. Handling is
        idempotent, so a batch whose commit did happen before the outage is a no-op the second
        time. Raises what ``handle`` raised when the dependencies are fine (the message's own
        failure) or when the failure is not retryable.
        """
        return await self._through_outages(lambda: self.handle(batch, ends))

    async def _through_outages(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``, repeated while a dependency is down (see ``_handle_through_outages``)."""
        while True:
            try:
                return await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if failures.classify(exc) != "retryable" and not _from_postgresql(exc):
                    raise
                down = await self.unavailable(exc)
                if down is None:
                    raise
                if not await self._wait_out(down, exc):
                    await self.park()  # stopping: the batch is redelivered after the restart

    async def unavailable(self, error: BaseException | None = None) -> str | None:
        """The dependency that is down (with why), or None when the Schema Registry (while the
        codec needs it), PostgreSQL, Kafka and the adapter's own services all answer."""
        if isinstance(error, RegistryUnavailable):
            return f"schema-registry: {failures.describe(error)}"
        if self.codec.registry is not None and (
            not self.codec.ready or self.codec.registry_failure is not None
        ):
            # Asked in a thread: the registry client blocks, up to its timeout.
            registry_down = await asyncio.to_thread(self.codec.registry_down)
            if registry_down is not None:
                return f"schema-registry: {registry_down}"
        return await self._services_down(error)

    async def _services_down(self, error: BaseException | None) -> str | None:
        """``unavailable`` without the registry: PostgreSQL, Kafka, the adapter's services."""
        if isinstance(error, KafkaError) and not isinstance(error, KAFKA_REFUSALS):
            # Sending is the one thing a message cannot make fail (a record the broker refuses
            # is a permanent error): this means the cluster cannot take writes just now.
            return f"kafka: {failures.describe(error)}"
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                # A server that answers but is in recovery is an old primary after a failover
                # (or a replica): it cannot take the agent's writes.
                if await self.pool.fetchval("SELECT pg_is_in_recovery()"):
                    return "postgresql: read-only (in recovery)"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return f"postgresql: {failures.describe(exc)}"
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                await self.publisher.producer.client.fetch_all_metadata()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return f"kafka: {failures.describe(exc)}"
        try:
            return await self.adapter.probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return f"{self.agent} dependency: {failures.describe(exc)}"

    async def _wait_out(self, down: str, error: BaseException) -> bool:
        """Back off until every dependency answers again; False if the worker stops first."""
        began = time.monotonic()
        log.warning(
            "lane paused, %s (%s); retrying in place",
            down,
            failures.describe(error),
            extra={"agent": self.agent, "dependency": down.split(":", 1)[0]},
        )
        self.metrics.paused(+1)
        try:
            for delay in _outage_backoff():
                if not await self._sleep(delay):
                    return False
                still_down = await self.unavailable()
                if still_down is None:
                    log.warning(
                        "lane resumed after %.1f s",
                        time.monotonic() - began,
                        extra={"agent": self.agent},
                    )
                    return True
                down = still_down
        finally:
            self.metrics.paused(-1)
        return False  # unreachable: the backoff never ends

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the worker starts draining; False if it did."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._draining.wait(), timeout=seconds)
        return not self.draining

    async def handle(
        self, batch: Sequence[Decoded], ends: Mapping[store.Partition, int] | None = None
    ) -> Handled:
        """The transaction described in the module docstring, for a whole batch of decoded
        messages. Raises on any failure (nothing is committed then). Returns the failures
        adapters recorded as events instead of raising, with the message each belongs to, and
        whether the commit moved the group's positions to ``ends`` — only when nothing failed:
        a failure is routed to a retry or dead-letter topic after the commit, and a crash
        before that must deliver its message again."""
        by_booking: dict[str, list[_Message]] = {}
        for incoming, event in batch:
            if not isinstance(event, BookingEvent):
                continue  # a catalog event on a shared topic: not this saga's business
            final = failures.is_final_attempt(self.consumer, incoming.headers)
            by_booking.setdefault(event.booking_id, []).append(_Message(incoming, event, final))
        if not by_booking:
            return [], False
        bookings = list(by_booking)
        gave_up: list[GaveUpOn] = []
        async with (
            self.pool.acquire() as conn,
            store.locked_transaction(conn, self.agent, bookings),
        ):
            loaded = await store.load_batch(
                conn,
                self.agent,
                bookings,
                [m.event.event_id for messages in by_booking.values() for m in messages],
            )
            result = _BatchResult()
            for booking_id in _in_slot_order(by_booking, loaded.stored):
                gave_up += await self._apply(
                    conn,
                    _fresh(by_booking[booking_id], loaded.processed),
                    loaded.stored.get(booking_id),
                    loaded.early.get(booking_id, []),
                    result,
                    replayed=_replayed(by_booking[booking_id], loaded.processed),
                )
            if gave_up:
                recorded = {
                    g.event_id: store.GaveUp(
                        failures.error_class(g.error), failures.describe(g.error)
                    )
                    for g in gave_up
                }
                await store.record_gave_up(conn, self.agent, recorded)
            gave_up += _left_unrouted(by_booking, loaded)
            advance = None
            if ends and not gave_up:
                advance = store.Advance(self.consumer.group_id, ends)
            outbox = await store.commit_batch(
                conn,
                self.agent,
                bookings,
                result.states,
                result.processed,
                result.queued,
                started=result.started,
                advance=advance,
            )
        await self._publish(outbox)
        return gave_up, advance is not None

    async def _apply(
        self,
        conn: asyncpg.Connection,
        messages: list[_Message],
        stored: store.Stored | None,
        early: list[bytes],
        result: _BatchResult,
        replayed: Sequence[_Message] = (),
    ) -> list[GaveUpOn]:
        """Fold one booking's new messages, act, and add what to write to ``result``; returns
        the failures its adapter recorded as events (with the message they belong to).

        ``replayed`` are messages an operator re-drove from the dead-letter topic that this
        agent had processed already (it recorded a failure and the saga went on): the adapter
        gets to redo what it gave up on (``Adapter.redrive``)."""
        if not messages and (not replayed or stored is None):
            return []
        requested = next((m for m in messages if isinstance(m.event, BookingRequested)), None)
        if stored is None and requested is None:
            # Another topic ran ahead of `bookings`: keep the events until the booking starts.
            for m in messages:
                await store.keep_early(
                    conn, self.agent, m.event.booking_id, m.event.event_id, m.incoming.value
                )
                log.info(
                    "%s before its booking; kept", m.event.event_type, extra=log_extra(m.event)
                )
            result.processed += [m.event.event_id for m in messages]
            return []
        inputs = [m.event for m in messages]
        if stored is None:
            assert requested is not None
            result.started.append(requested.event.booking_id)
            # The request first, then what was kept for it, then the rest in partition order.
            inputs = [requested.event]
            inputs += [e for e in map(self.codec.decode, early) if isinstance(e, BookingEvent)]
            inputs += [m.event for m in messages if m is not requested]
        elif any(
            isinstance(m.event, SagaRetryRequested) and m.event.step in ("all", self.agent)
            for m in messages
        ):
            # An operator's retry re-runs this agent's step: fold in whatever of the booking's
            # log it never processed (a message parked in the DLQ, say), then act as usual.
            seen = {e.event_id for e in inputs}
            for payload in await store.missed_events(
                conn, self.agent, messages[0].event.booking_id, self.consumer.consumes
            ):
                missed = self.codec.decode(payload)
                if (
                    isinstance(missed, BookingEvent)
                    and not isinstance(missed, BookingRequested)
                    and missed.event_id not in seen
                ):
                    inputs.append(missed)
        state = stored.state if stored is not None else None
        for item in inputs:
            state = saga.evolve(state, item)
        assert state is not None  # inputs holds at least one event
        headers = dict(stored.headers) if stored is not None else {}
        for m in messages or replayed:
            headers.update(_propagated(m.incoming.headers))
        last = (messages or replayed)[-1]
        # A child span of the context the latest message carries; what the handler emits (the
        # state and the outbox rows share ``headers``) carries it on.
        with tracing.consumer_span(
            "streams",
            f"{self.agent} {last.event.event_type}",
            last.incoming.headers,
            {
                "event_type": last.event.event_type,
                "messaging.destination.name": last.incoming.topic,
            },
        ):
            tracing.annotate(last.event)
            tracing.inject_into(headers)
            ctx = Context(
                agent=self.agent,
                conn=conn,
                pool=self.pool,
                state=state,
                cause=last.event,
                now=self.clock(),
                headers=headers,
                final_attempt=all(m.final_attempt for m in messages),
            )
            emitted: list[BookingEvent] = []
            if replayed:
                emitted += self._fold(ctx, await self.adapter.redrive(ctx))
            for item in inputs:
                emitted += self._fold(ctx, await self.adapter.react(item, ctx))
            emitted += await self._advance(ctx)
            await self.adapter.settle(ctx)
            # Most messages only fold in (every agent reads most topics): those log at DEBUG,
            # or the line would cost more than the handling (profiled: 10% of an agent's CPU).
            # Inside the span: the line carries its trace id.
            log.log(
                logging.INFO if emitted else logging.DEBUG,
                "%s → %s",
                ", ".join(m.event.event_type for m in messages),
                ", ".join(e.event_type for e in emitted) or "nothing to do",
                extra=log_extra(last.event, status=ctx.state.status.value),
            )
        result.states.append((ctx.state, headers))
        result.processed += [e.event_id for e in inputs]
        result.queued += [
            store.OutboxRow(e.event_id, ctx.booking_id, self.codec.encode(e), headers)
            for e in emitted
        ]
        return [GaveUpOn(last.incoming, last.event.event_id, error) for error in ctx.gave_up[:1]]

    async def tick(self, booking_id: str) -> bool:
        """Re-evaluate one booking without a message (a provider deadline may have passed).

        Skips the booking (returns False) when another handler or worker holds its lock: that
        one evaluates the same rules with a fresh ``now``.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if not await store.try_lock_booking(conn, self.agent, booking_id):
                return False
            stored = await store.load_state(conn, self.agent, booking_id)
            if stored is None:
                return False
            # The timer's work belongs to the booking's trace: a child of its stored context.
            with tracing.consumer_span(
                "streams",
                f"{self.agent} timer",
                stored.headers,
                {"booking_id": booking_id, "correlation_id": stored.state.correlation_id},
                kind=SpanKind.INTERNAL,
            ):
                headers = dict(stored.headers)
                tracing.inject_into(headers)
                ctx = Context(
                    agent=self.agent,
                    conn=conn,
                    pool=self.pool,
                    state=stored.state,
                    cause=None,
                    now=self.clock(),
                    headers=headers,
                )
                emitted = await self._advance(ctx)
                await self.adapter.settle(ctx)
                if emitted:
                    await store.save_state(conn, self.agent, ctx.state, stored.headers)
                    await self._queue(conn, ctx, emitted)
                    log.info(
                        "timer → %s",
                        ", ".join(e.event_type for e in emitted),
                        extra={
                            "booking_id": booking_id,
                            "correlation_id": stored.state.correlation_id,
                        },
                    )
            outbox = await store.pending_outbox(conn, self.agent, booking_id)
        await self._publish(outbox)
        return True

    async def tick_each(self, booking_ids: Iterable[str], timer: str) -> int:
        """``tick`` each booking a timer found due, until the runtime drains; returns how many
        it handled. One booking's trouble must not stop the others: it is logged, and the
        timer's next sweep tries again."""
        handled = 0
        for booking_id in booking_ids:
            if self.draining:
                break
            try:
                if await self.tick(booking_id):
                    handled += 1
            except Exception:
                log.exception(
                    "%s of booking %s", timer, booking_id, extra={"booking_id": booking_id}
                )
        return handled

    def _fold(self, ctx: Context, events: Sequence[BookingEvent]) -> list[BookingEvent]:
        for event in events:
            ctx.state = saga.evolve(ctx.state, event)
        return list(events)

    async def _advance(self, ctx: Context) -> list[BookingEvent]:
        """Carry out next_actions until the rules ask for nothing more."""
        emitted: list[BookingEvent] = []
        for _ in range(_MAX_ROUNDS):
            actions = saga.next_actions(self.agent, ctx.state, ctx.now, self.policy)
            if not actions:
                return emitted
            produced: list[BookingEvent] = []
            for action in actions:
                produced += self._fold(ctx, await self.adapter.execute(action, ctx))
            if not produced:
                log.error(
                    "actions %s produced no event; stopping",
                    actions,
                    extra={"booking_id": ctx.booking_id},
                )
                return emitted
            emitted += produced
        log.error(
            "saga rules did not settle after %d rounds",
            _MAX_ROUNDS,
            extra={"booking_id": ctx.booking_id},
        )
        return emitted

    async def _queue(
        self, conn: asyncpg.Connection, ctx: Context, events: Sequence[BookingEvent]
    ) -> None:
        encoded = [(e.event_id, self.codec.encode(e)) for e in events]
        await store.add_to_outbox(conn, self.agent, ctx.booking_id, encoded, ctx.headers)

    # --- publishing ---------------------------------------------------------------------

    async def _publish(self, rows: Sequence[store.OutboxRow]) -> None:
        """Publish outbox rows in order, then delete them. Raises if Kafka refuses.

        Rows published already and waiting for their deletion are skipped: a batch reads its
        bookings' whole outbox (to publish what an earlier failed publish left), and
        publishing them again would only make every consumer handle a duplicate."""
        # Another lane of this booking (the same agent consumes several topics) may be
        # publishing some of these rows right now: wait for it, so they go out once, and before
        # this batch's own rows, in order. A lane registers its rows only once it waits for
        # none, so two lanes never wait for each other.
        while waiting := {
            self._publishing[r.event_id] for r in rows if r.event_id in self._publishing
        }:
            await asyncio.wait(waiting)
        cleanup = self._cleanup
        if cleanup is not None:
            rows = [row for row in rows if row.event_id not in cleanup]
        if not rows:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for row in rows:
            self._publishing[row.event_id] = done
        try:
            items: list[tuple[BookingEvent, bytes | None, Mapping[str, str] | None]] = []
            for row in rows:
                event = self.codec.decode(row.payload)
                assert isinstance(event, BookingEvent)
                items.append((event, row.payload, row.headers))
            await self.publisher.publish_encoded(items)
        finally:
            for row in rows:
                self._publishing.pop(row.event_id, None)
            done.set_result(None)
        published = [r.event_id for r in rows]
        if self._cleanup is not None:
            self._cleanup.add(published)
        else:  # not started: delete in line
            await store.remove_from_outbox(self.pool, self.agent, published)

    async def outbox_cleaned(self) -> None:
        """Wait until every published row queued for deletion so far is deleted."""
        if self._cleanup is not None:
            await self._cleanup.flush()

    async def _relay_after_redelivery(self) -> None:
        """Publish at once what a worker that died after its COMMIT left in the outbox.

        Its messages come again, but its positions say they are done, so they are skipped and
        nothing would publish the rows but the relay's next sweep of old rows. Bookings whose
        rows are all younger than ``_REDELIVERY_RELAY_AGE_S`` are left out: this worker's own
        lanes are publishing those (and ``_publish`` waits for a lane publishing a row it
        shares). Once per ``_REDELIVERY_RELAY_GAP_S`` at most; a failure is left to the sweep.
        """
        self._predecessor_may_have_died = False
        if time.monotonic() - self._relayed_after_redelivery < _REDELIVERY_RELAY_GAP_S:
            return
        self._relayed_after_redelivery = time.monotonic()
        try:
            await self.relay_outbox(older_than_seconds=_REDELIVERY_RELAY_AGE_S)
        except Exception as exc:
            log.warning("outbox relay after a redelivery failed: %s", failures.describe(exc))

    async def relay_outbox(self, older_than_seconds: float = 10.0) -> int:
        """Publish outbox rows nobody published (a crash after COMMIT of a timer's work).

        A row the broker refuses every time (``KAFKA_REFUSALS``: too large, say) holds back
        only its own booking, whose later events must not overtake it: the sweep's other rows
        are then published one by one, and the refused booking is left out of the sweeps for
        ``_REFUSED_RETRY_S`` (an operator may fix the topic meanwhile), so that it can neither
        fill the sweep nor have its rows sent again each time. Rows handed to the producer
        before the refusal may go out twice, which consumers deduplicate. Only a refusal the
        client makes itself (a record too large) keeps the booking's later rows back; one the
        broker answers for a whole request may come after them. Raises on anything else (the
        broker away), and the next sweep tries every row again."""
        now = time.monotonic()
        for booking_id, refused_at in list(self._refused.items()):
            if now - refused_at >= _REFUSED_RETRY_S:
                del self._refused[booking_id]
        async with self.pool.acquire() as conn:
            rows = await store.stale_outbox(
                conn, self.agent, older_than_seconds, skip_bookings=list(self._refused)
            )
        if not rows:
            return 0
        log.warning("relaying %d unpublished event(s)", len(rows))
        try:
            await self._publish(rows)
        except KAFKA_REFUSALS:
            for booking_rows in _by_booking(rows):
                await self._publish_until_refused(booking_rows)
        return len(rows)

    async def _publish_until_refused(self, rows: Sequence[store.OutboxRow]) -> None:
        """One booking's rows, one at a time, up to the first the broker refuses."""
        for row in rows:
            try:
                await self._publish([row])
            except KAFKA_REFUSALS as exc:
                self._refused[row.booking_id] = time.monotonic()
                log.error(
                    "outbox event %s is refused by the broker (%s); the booking's later events "
                    "wait behind it until the cause is fixed or an operator removes the row",
                    row.event_id,
                    failures.describe(exc),
                    extra={"booking_id": row.booking_id, "agent": self.agent},
                )
                return

    async def _route_failure(
        self, incoming: Incoming, error: BaseException, kind: failures.ErrorKind | None = None
    ) -> None:
        hop = failures.next_hop(
            self.consumer, incoming.origin, incoming.headers, error, self.clock(), kind
        )
        self.metrics.failed(
            self.metrics.event_type(incoming.headers),
            kind or failures.classify(error),
            hop.topic,
            hop.dead_letter,
        )
        extra = _describe_for_log(self.codec, incoming)
        level = logging.ERROR if hop.dead_letter else logging.WARNING
        log.log(
            level,
            "%s → %s (attempt %d): %s",
            extra.get("event_type", "message"),
            hop.topic,
            hop.attempts,
            failures.describe(error),
            extra={**extra, "error_class": failures.error_class(error)},
            exc_info=failures.classify(error) == "permanent"
            and not isinstance(error, UndecodableEvent | failures.RecordedFailure),
        )
        attempt = 0
        while True:
            try:
                await self.publisher.producer.send_and_wait(
                    hop.topic, value=incoming.value, key=incoming.key, headers=hop.headers
                )
                return
            except KafkaError as exc:
                # Without this hop the message must not be acknowledged: keep trying (the
                # partition waits, as everything does while the broker is away); a stop
                # cancels us and the message is redelivered after the restart.
                log.error("cannot send to %s (try %d): %s", hop.topic, attempt + 1, exc)
                await asyncio.sleep(_PUBLISH_BACKOFF_S[min(attempt, len(_PUBLISH_BACKOFF_S) - 1)])
                attempt += 1


@dataclass(frozen=True)
class _Rewind:
    """A partition moved back to ``to``; messages past ``hole_at`` were fetched before that."""

    to: int
    hole_at: int
    since: float


@dataclass(frozen=True)
class _Message:
    """A decoded message of a batch."""

    incoming: Incoming
    event: BookingEvent
    final_attempt: bool


@dataclass
class _BatchResult:
    """What a batch writes at its end, in one statement (``store.commit_batch``)."""

    states: list[tuple[saga.BookingState, dict[str, str]]] = field(default_factory=list)
    processed: list[str] = field(default_factory=list)
    queued: list[store.OutboxRow] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    """Bookings whose request is folded in now: the events kept for them are used up."""


def _by_booking(rows: Sequence[store.OutboxRow]) -> list[list[store.OutboxRow]]:
    """``rows`` grouped by booking, each group in the rows' order."""
    groups: dict[str, list[store.OutboxRow]] = {}
    for row in rows:
        groups.setdefault(row.booking_id, []).append(row)
    return list(groups.values())


def _ends(batch: Sequence[Incoming]) -> dict[store.Partition, int]:
    """The next offset after ``batch`` in each of its partitions."""
    ends: dict[store.Partition, int] = {}
    for m in batch:
        key = (m.topic, m.partition)
        ends[key] = max(ends.get(key, -1), m.offset + 1)
    return ends


def _fresh(messages: list[_Message], processed: frozenset[str]) -> list[_Message]:
    """The messages not processed before (nor earlier in the batch), in partition order."""
    fresh: list[_Message] = []
    seen: set[str] = set()
    for m in messages:
        if m.event.event_id in processed or m.event.event_id in seen:
            log.info("duplicate %s skipped", m.event.event_type, extra=log_extra(m.event))
            continue
        seen.add(m.event.event_id)
        fresh.append(m)
    return fresh


def _from_postgresql(error: BaseException) -> bool:
    """Raised by the database driver or the socket under it: worth asking whether the server
    is there before blaming the message (a shutdown's error codes look permanent)."""
    return isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError | OSError)


def _left_unrouted(
    by_booking: Mapping[str, list[_Message]], loaded: store.Loaded
) -> list[GaveUpOn]:
    """Redelivered messages whose failure their first handling recorded but never routed (the
    worker died after its commit): skipped as processed, they are routed now. Not a message an
    operator re-drove: the adapter redoes that (``Adapter.redrive``)."""
    found: dict[str, GaveUpOn] = {}
    for messages in by_booking.values():
        for m in messages:
            recorded = loaded.gave_up.get(m.event.event_id)
            if recorded is None or k.header(m.incoming.headers, k.H_REPLAY) is not None:
                continue
            failure = failures.RecordedFailure(recorded.error_class, recorded.error)
            found.setdefault(m.event.event_id, GaveUpOn(m.incoming, m.event.event_id, failure))
    return list(found.values())


def _replayed(messages: list[_Message], processed: frozenset[str]) -> list[_Message]:
    """Messages re-driven from a dead-letter topic whose event this agent processed already."""
    return [
        m
        for m in messages
        if m.event.event_id in processed and k.header(m.incoming.headers, k.H_REPLAY) is not None
    ]


def _in_slot_order(
    by_booking: Mapping[str, list[_Message]], stored: Mapping[str, store.Stored]
) -> list[str]:
    """The batch's bookings ordered by slot.

    Actions lock rows outside the bookings' own (the reservation's ``slot_capacity``); when
    every batch takes them in the same order, two batches sharing slots cannot deadlock.
    Bookings of one slot keep their order in the partition (a stable sort), so the last seat
    still goes to the earlier request.
    """

    def slot(booking_id: str) -> tuple[str, str]:
        known = stored.get(booking_id)
        if known is not None:
            return known.state.service_id, known.state.slot_start.isoformat()
        for m in by_booking[booking_id]:
            if isinstance(m.event, BookingRequested):
                return m.event.service_id, m.event.slot_start.isoformat()
        return "", ""  # events kept until their booking starts: no action, no row lock

    return sorted(by_booking, key=slot)


def _propagated(
    headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None,
) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    return {
        name: value.decode("utf-8", "replace")
        for name, value in items
        if name in PROPAGATED_HEADERS and value is not None
    }


def _describe_for_log(codec: EventCodec, incoming: Incoming) -> dict[str, object]:
    extra: dict[str, object] = {
        "topic": incoming.topic,
        "partition": incoming.partition,
        "offset": incoming.offset,
    }
    try:
        event = codec.decode(incoming.value)
    except UndecodableEvent:
        if incoming.key:
            extra["booking_id"] = incoming.key.decode("utf-8", "replace")
        return extra
    if isinstance(event, BookingEvent):
        extra.update(log_extra(event))
    return extra
