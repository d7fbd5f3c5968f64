"""The handler runtime's orchestration with in-memory fakes: emitting, settling the rules,
routing failures; and the Faust wiring, which must not connect to anything when built."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from aiokafka.errors import KafkaConnectionError

from erynoa import events as ev
from erynoa import kafka as k
from erynoa import saga
from erynoa.codec import local_codec
from erynoa.events import derived_event_id
from erynoa.settings import Settings
from erynoa.topics import load_catalog
from streams.app import AGENTS, _incoming, check_agent, create_app
from streams.provider_response import ProviderResponseAdapter
from streams.runtime import AgentRuntime, Context, Decoded, Handled, Incoming
from tests.builders import booking_requested, next_event

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings()
CATALOG = load_catalog(SETTINGS.topics_file, SETTINGS.topics_environment)


def requested(**overrides: Any) -> ev.BookingRequested:
    fields: dict[str, Any] = {
        "booking_id": "5c0a4f4e-1d2b-4c3a-8e9f-0a1b2c3d4e5f",
        "occurred_at": NOW,
        "slot_start": NOW + timedelta(days=3),
    }
    return booking_requested(**(fields | overrides))


def context(state: saga.BookingState, cause: ev.BookingEvent | None, agent: saga.Agent) -> Context:
    return Context(
        agent=agent,
        conn=None,  # the fake adapters never touch the database
        pool=None,
        state=state,
        cause=cause,
        now=NOW,
        headers={},
    )


def test_emitted_events_have_derived_ids_and_follow_their_cause() -> None:
    cause = requested(occurred_at=NOW + timedelta(seconds=5))  # a producer clock ahead of ours
    ctx = context(saga.start(cause), cause, "reservation")
    first = ctx.emit(ev.ReservationReleased, "released", hold_id=None, reason="x")
    second = ctx.emit(ev.ReservationReleased, "released-again", hold_id=None, reason="x")
    assert first.event_id == derived_event_id(cause.booking_id, "reservation:released")
    assert first.causation_id == cause.event_id
    assert first.correlation_id == cause.correlation_id
    assert first.producer == "reservation"
    # Strictly after the cause and after each other, so (occurred_at, id) order is causal.
    assert cause.occurred_at < first.occurred_at < second.occurred_at


def test_a_timer_emits_with_the_bookings_correlation_id() -> None:
    state = saga.start(requested())
    ctx = context(state, None, "provider-response")
    event = ctx.emit(ev.ProviderTimedOut, "timed_out", deadline_at=NOW)
    assert event.correlation_id == state.correlation_id
    assert event.causation_id is None
    assert event.occurred_at == NOW


class _RecordingAdapter(ProviderResponseAdapter):
    """The provider-response adapter's decisions, without its deadline table."""

    def __init__(self) -> None:
        self.actions: list[saga.Action] = []

    async def execute(self, action: saga.Action, ctx: Context) -> list[ev.BookingEvent]:
        self.actions.append(action)
        s = ctx.state
        match action:
            case saga.StartProviderDeadline(deadline_at=deadline_at):
                return [
                    ctx.emit(
                        ev.ProviderResponseRequested,
                        "requested",
                        provider_id=s.provider_id,
                        deadline_at=deadline_at,
                    )
                ]
            case saga.AcceptForProvider():
                return [ctx.emit(ev.ProviderAccepted, "accepted", provider_id=s.provider_id)]
        raise AssertionError(action)


class MemoryPositions:
    """``store.Positions`` in a dict."""

    def __init__(self, recorded: dict[tuple[str, int], int] | None = None) -> None:
        self.recorded = dict(recorded or {})

    async def get(self, partitions: Any) -> dict[tuple[str, int], int]:
        return {p: self.recorded[p] for p in partitions if p in self.recorded}

    async def advance(self, next_offsets: Any) -> None:
        for p, offset in next_offsets.items():
            self.recorded[p] = max(self.recorded.get(p, offset), offset)

    async def reset(self, partition: tuple[str, int], next_offset: int) -> None:
        self.recorded[partition] = next_offset


def make_runtime(adapter: Any, agent: str = "provider-response") -> AgentRuntime:
    async def no_pool() -> Any:
        raise AssertionError("unit tests do not connect")

    runtime = AgentRuntime(
        adapter=adapter,
        consumer=CATALOG.consumer(agent),
        codec=local_codec(),
        policy=saga.Policy(),
        connect_pool=no_pool,
        make_publisher=lambda: None,  # type: ignore[arg-type,return-value]
        clock=lambda: NOW,
    )
    runtime.positions = MemoryPositions()
    return runtime


async def test_actions_run_until_the_rules_ask_for_nothing_more() -> None:
    """An answer that arrives before the deadline started: start it, then accept, in one go."""
    base = requested()
    state = saga.start(base)
    authorized = next_event(base, ev.PaymentAuthorized, occurred_at=NOW)
    state = saga.evolve(state, authorized)
    answer = next_event(base, ev.ProviderAnswerSubmitted, occurred_at=NOW)
    state = replace(saga.evolve(state, answer), provider_answered_at=NOW - timedelta(seconds=1))
    adapter = _RecordingAdapter()
    runtime = make_runtime(adapter)
    ctx = context(state, answer, "provider-response")
    emitted = await runtime._advance(ctx)
    assert [e.event_type for e in emitted] == ["ProviderResponseRequested", "ProviderAccepted"]
    assert ctx.state.provider_outcome == "accepted"
    assert saga.next_actions("provider-response", ctx.state, NOW) == []


class _Producer:
    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = []
        self.failures = failures

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError()
        self.sent.append((topic, value, key, headers))


@dataclass
class _Publisher:
    producer: _Producer


def incoming(value: bytes, headers: list[tuple[str, bytes]] | None = None) -> Incoming:
    return Incoming("bookings", 2, 17, b"booking-1", value, headers or [])


def routing_runtime(
    agent: str, producer: _Producer | None = None
) -> tuple[AgentRuntime, _Producer]:
    """A runtime whose routed messages (retry tiers, dead letters) are sent to ``producer``."""
    runtime = make_runtime(_RecordingAdapter(), agent=agent)
    producer = producer or _Producer()
    runtime._publisher = _Publisher(producer)  # type: ignore[assignment]
    return runtime, producer


def every_batch_fails(
    monkeypatch: pytest.MonkeyPatch, runtime: AgentRuntime, error: BaseException, outage: str | None
) -> None:
    """Handling raises ``error``; probing the dependencies answers ``outage`` (``None``: they
    all answer, so the message itself is at fault)."""

    async def fail(batch: list[Decoded], ends: object = None) -> Handled:
        raise error

    async def probe(error: BaseException | None = None) -> str | None:
        return outage

    monkeypatch.setattr(runtime, "handle", fail)
    monkeypatch.setattr(runtime, "unavailable", probe)


async def test_a_failing_handler_sends_the_original_bytes_down_a_tier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, producer = routing_runtime("payment")
    # The gateway is slow for this message; every dependency answers.
    every_batch_fails(monkeypatch, runtime, TimeoutError("gateway slow"), outage=None)
    value = local_codec().encode(requested())
    await runtime.process([incoming(value, [("traceparent", b"00-abc-01")])])
    [(topic, sent_value, key, headers)] = producer.sent
    assert topic == "payment.retry.1s"
    assert sent_value == value
    assert key == b"booking-1"
    assert k.header(headers, k.H_ORIGIN_OFFSET) == "17"
    assert k.header(headers, "traceparent") == "00-abc-01"


async def test_an_outage_pauses_the_lane_and_the_same_batch_is_handled_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, producer = routing_runtime("reservation")
    handled: list[int] = []
    probes = iter(["postgresql: connection refused", "postgresql: connection refused", None])
    slept: list[float] = []

    async def down_then_up(batch: list[Decoded], ends: object = None) -> Handled:
        handled.append(len(batch))
        if len(handled) < 2:
            raise ConnectionRefusedError("127.0.0.1:15432")
        return [], False

    async def probe(error: BaseException | None = None) -> str | None:
        return next(probes)

    async def no_sleep(seconds: float) -> bool:
        slept.append(seconds)
        return True

    monkeypatch.setattr(runtime, "handle", down_then_up)
    monkeypatch.setattr(runtime, "unavailable", probe)
    monkeypatch.setattr(runtime, "_sleep", no_sleep)
    value = local_codec().encode(requested())
    await runtime.process([at(17, value), at(18, value)])
    # Nothing went down the retry tiers: the lane waited (backing off) and handled the same
    # batch again, whole, once the dependency answered.
    assert producer.sent == []
    assert handled == [2, 2]
    assert slept == [0.5, 1.0]


async def test_a_kafka_error_is_an_outage_without_probing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = make_runtime(_RecordingAdapter(), agent="reservation")
    assert await runtime.unavailable(KafkaConnectionError()) is not None


async def test_an_outage_during_a_stop_leaves_the_batch_unacked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, producer = routing_runtime("reservation")
    every_batch_fails(
        monkeypatch,
        runtime,
        ConnectionRefusedError("127.0.0.1:15432"),
        outage="postgresql: connection refused",
    )
    await runtime.drain(grace_s=0)
    value = local_codec().encode(requested())
    task = asyncio.create_task(runtime.process([incoming(value)]))
    await asyncio.sleep(0.05)
    # Parked (redelivered after the restart), never routed to a retry tier.
    assert not task.done()
    assert producer.sent == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def at(offset: int, value: bytes, partition: int = 2) -> Incoming:
    return Incoming("bookings", partition, offset, b"booking-1", value, [])


class _Seeks:
    def __init__(self, log_starts_at: int = 0) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.log_starts_at = log_starts_at

    async def __call__(self, topic: str, partition: int, offset: int) -> int:
        self.calls.append((topic, partition, offset))
        return max(offset, self.log_starts_at)


def handled_offsets(
    runtime: AgentRuntime, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []

    async def record(batch: list[Decoded], ends: object = None) -> Handled:
        seen.extend((m.partition, m.offset) for m, _ in batch)
        return [], False

    monkeypatch.setattr(runtime, "handle", record)
    return seen


def reading_from(
    monkeypatch: pytest.MonkeyPatch, recorded: dict[tuple[str, int], int], log_starts_at: int = 0
) -> tuple[AgentRuntime, MemoryPositions, _Seeks, list[tuple[int, int]]]:
    """A reservation runtime whose positions are ``recorded``: its positions, the seeks it
    asks for, and the (partition, offset) of every message it handles."""
    runtime = make_runtime(_RecordingAdapter(), agent="reservation")
    positions = MemoryPositions(recorded)
    runtime.positions = positions
    runtime.seek = seeks = _Seeks(log_starts_at)
    return runtime, positions, seeks, handled_offsets(runtime, monkeypatch)


async def test_a_batch_that_starts_past_the_recorded_position_moves_the_partition_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, positions, seeks, seen = reading_from(
        monkeypatch, {("bookings", 2): 10, ("bookings", 3): 5}
    )
    value = local_codec().encode(requested())

    # Offsets 10..11 of partition 2 were acked by the consumer library but never handled.
    await runtime.process([at(12, value), at(13, value), at(5, value, partition=3)])

    assert seeks.calls == [("bookings", 2, 10)]
    assert seen == [(3, 5)]  # the other partition goes on
    assert positions.recorded == {("bookings", 2): 10, ("bookings", 3): 6}
    # After the seek the partition comes again from the position, in order.
    await runtime.process([at(10, value), at(11, value), at(12, value), at(13, value)])
    assert seen == [(3, 5), (2, 10), (2, 11), (2, 12), (2, 13)]
    assert positions.recorded[("bookings", 2)] == 14


async def test_messages_fetched_before_a_move_back_wait_for_the_re_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, positions, seeks, seen = reading_from(monkeypatch, {("bookings", 2): 100})
    value = local_codec().encode(requested())

    await runtime.process([at(150, value), at(151, value)])  # 100..149 skipped by a commit
    assert seeks.calls == [("bookings", 2, 100)]
    # What was queued behind the hole comes first, then the re-read: only the re-read counts,
    # and the position must not jump over 102..149.
    await runtime.process([at(160, value), at(161, value), at(100, value), at(101, value)])
    assert seen == [(2, 100), (2, 101)]
    assert positions.recorded[("bookings", 2)] == 102
    assert seeks.calls == [("bookings", 2, 100)]  # no second move for the stale messages


async def test_a_hole_inside_a_batch_moves_the_partition_back_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, positions, seeks, seen = reading_from(monkeypatch, {("bookings", 2): 10})
    value = local_codec().encode(requested())

    await runtime.process([at(10, value), at(11, value), at(13, value), at(14, value)])
    assert seen == [(2, 10), (2, 11)]
    assert seeks.calls == [("bookings", 2, 12)]
    assert positions.recorded[("bookings", 2)] == 12
    # Offset 12 does not exist (the re-read starts at 13): taken as the continuation, once.
    await runtime.process([at(13, value), at(14, value)])
    assert seen == [(2, 10), (2, 11), (2, 13), (2, 14)]
    assert seeks.calls == [("bookings", 2, 12)]


async def test_redelivered_messages_before_the_position_are_not_handled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, _, seeks, seen = reading_from(monkeypatch, {("bookings", 2): 12})
    value = local_codec().encode(requested())
    await runtime.process([at(10, value), at(11, value), at(12, value)])
    assert seen == [(2, 12)]
    assert seeks.calls == []


async def test_a_truncated_log_moves_the_position_to_where_the_log_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, positions, _, seen = reading_from(monkeypatch, {("bookings", 2): 10}, log_starts_at=40)
    value = local_codec().encode(requested())
    await runtime.process([at(41, value)])
    assert positions.recorded[("bookings", 2)] == 40
    await runtime.process([at(40, value), at(41, value)])
    assert seen == [(2, 40), (2, 41)]


async def test_a_routed_message_moves_the_position_past_itself() -> None:
    runtime = make_runtime(_RecordingAdapter(), agent="notification")
    runtime._publisher = _Publisher(_Producer())  # type: ignore[assignment]
    positions = MemoryPositions({("bookings", 2): 17})
    runtime.positions = positions
    await runtime.process([incoming(b"garbage")])  # offset 17
    assert positions.recorded[("bookings", 2)] == 18


async def test_an_undecodable_message_is_dead_lettered_and_processing_goes_on() -> None:
    runtime, producer = routing_runtime("notification")
    await runtime.process([incoming(b"garbage")])
    [(topic, value, _, headers)] = producer.sent
    assert topic == "notification.dlq"
    assert value == b"garbage"
    assert k.header(headers, k.H_ERROR_CLASS) == "UndecodableEvent"


async def test_routing_waits_for_the_broker_instead_of_dropping_the_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime, producer = routing_runtime("reservation", _Producer(failures=3))
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    await runtime.process([incoming(b"garbage")])
    assert len(producer.sent) == 1
    assert len(slept) == 3


async def test_draining_lets_the_in_flight_message_finish() -> None:
    runtime = make_runtime(_RecordingAdapter())
    finished = asyncio.Event()

    async def work() -> None:
        await asyncio.sleep(0.05)
        finished.set()

    running = asyncio.create_task(runtime.run_tracked(work()))
    await asyncio.sleep(0)
    await runtime.drain(grace_s=5)
    assert finished.is_set()
    assert runtime.draining
    assert not await runtime.wait_until(NOW + timedelta(hours=1))  # retries stop waiting
    await running


def test_kafka_messages_become_incoming_messages() -> None:
    @dataclass
    class Message:
        topic: str = "bookings"
        partition: int = 1
        offset: int = 9
        key: bytes | None = b"k"
        value: bytes | None = b"v"
        headers: Any = None

    @dataclass
    class FaustEvent:
        message: Message

    converted = _incoming(FaustEvent(Message(headers=[("a", b"1"), ("b", None)])))
    assert converted == Incoming("bookings", 1, 9, b"k", b"v", [("a", b"1"), ("b", b"")])
    tombstone = _incoming(FaustEvent(Message(value=None, headers={"a": b"1"})))
    assert tombstone.value == b""
    assert tombstone.headers == [("a", b"1")]


def test_every_agent_builds_without_connecting() -> None:
    for agent in AGENTS:
        app = create_app(agent, SETTINGS)
        consumer = CATALOG.consumer(agent)
        assert app.conf.id == consumer.group_id
        assert app.conf.topic_allow_declare is False
        assert app.conf.topic_disable_leader is True
        subscribed = {t for a in app.agents.values() for t in a.channel.topics}
        assert subscribed == {*consumer.consumes, *consumer.retry_topics}


def test_an_unknown_agent_is_refused_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match="reservation, payment, notification, provider-response"):
        check_agent("billing")
    from streams.cli import worker

    with pytest.raises(typer.Exit):
        worker("billing")


def test_lanes_follow_what_an_agent_waits_on_unless_configured() -> None:
    from streams.app import lanes_for, make_adapter

    # All in PostgreSQL: one lane (one batch of whatever queued up); outside calls: several,
    # never more than the pool can hold transactions for.
    assert lanes_for(SETTINGS, make_adapter("reservation", SETTINGS)) == 1
    assert lanes_for(SETTINGS, make_adapter("provider-response", SETTINGS)) == 1
    notification = make_adapter("notification", SETTINGS)
    assert lanes_for(SETTINGS, notification) == SETTINGS.db_pool_max // 2 - 1
    stripe = SETTINGS.model_copy(update={"payment_gateway": "stripe", "stripe_api_key": "sk_x"})
    assert lanes_for(stripe, make_adapter("payment", stripe)) > 1
    assert lanes_for(SETTINGS, make_adapter("payment", SETTINGS)) == 1  # the sandbox
    pinned = SETTINGS.model_copy(update={"agent_lanes": 3, "db_pool_max": 20})
    assert lanes_for(pinned, make_adapter("reservation", pinned)) == 3
    assert lanes_for(pinned.model_copy(update={"db_pool_max": 4}), notification) == 1
