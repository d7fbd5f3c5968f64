"""An agent and the Schema Registry: a registry that is down when the agent meets its first
message pauses the lane (the message is handled once the registry answers, not dead-lettered),
and a schema id the registry does not know sends the message to the dead-letter topic with why."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from erynoa import kafka as k
from erynoa.codec import CONFLUENT_MAGIC
from streams.runtime import Decoded, Handled
from tests.unit.test_codec_wire import FakeRegistry, codec_with
from tests.unit.test_streams_runtime import (
    _Producer,
    _Publisher,
    _RecordingAdapter,
    at,
    make_runtime,
    requested,
)


def runtime_with(codec: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, _Producer]:
    runtime = make_runtime(_RecordingAdapter(), agent="reservation")
    runtime.codec = codec
    producer = _Producer()
    runtime._publisher = _Publisher(producer)

    async def services_up(error: BaseException | None = None) -> str | None:
        # PostgreSQL and Kafka answer; the registry is what the codec finds it to be.
        return None

    monkeypatch.setattr(runtime, "_services_down", services_up)
    return runtime, producer


async def test_a_registry_down_at_the_first_message_pauses_the_lane_until_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeRegistry()
    event = requested()
    value = codec_with(fake).encode(event)  # written by another process, while it was up
    fake.down = True
    fake.threads.clear()
    runtime, producer = runtime_with(codec_with(fake), monkeypatch)
    handled: list[list[Decoded]] = []
    slept: list[float] = []

    async def handle(batch: list[Decoded], ends: object = None) -> Handled:
        handled.append(batch)
        return [], False

    async def sleep(seconds: float) -> bool:
        slept.append(seconds)
        if len(slept) == 3:
            fake.down = False
        return True

    monkeypatch.setattr(runtime, "handle", handle)
    monkeypatch.setattr(runtime, "_sleep", sleep)

    await runtime.process([at(17, value)])

    assert producer.sent == []  # neither a retry tier nor the dead-letter topic
    assert [[e for _, e in batch] for batch in handled] == [[event]]
    # The lane probes the registry itself, so it backs off as for any other dependency.
    assert slept == [0.5, 1.0, 2.0]
    # Every registry request ran in a worker thread, never on the event loop's.
    assert fake.threads
    assert threading.get_ident() not in fake.threads


async def test_a_cached_schema_id_decodes_on_the_loop_without_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeRegistry()
    codec = codec_with(fake)
    codec.warm_up()
    value = codec.encode(requested())
    runtime, _ = runtime_with(codec, monkeypatch)
    fake.requests.clear()
    assert not codec.needs_registry(value)
    handled: list[list[Decoded]] = []

    async def handle(batch: list[Decoded], ends: object = None) -> Handled:
        handled.append(batch)
        return [], False

    monkeypatch.setattr(runtime, "handle", handle)
    await runtime.process([at(17, value)])
    assert len(handled) == 1
    assert fake.requests == []


async def test_an_unknown_schema_id_goes_to_the_dead_letter_topic_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeRegistry()
    codec = codec_with(fake)
    body = codec.encode(requested())[5:]
    runtime, producer = runtime_with(codec, monkeypatch)

    async def handle(batch: list[Decoded], ends: object = None) -> Handled:
        raise AssertionError("an undecodable message is never handled")

    monkeypatch.setattr(runtime, "handle", handle)
    garbled = [CONFLUENT_MAGIC + (4_000_000).to_bytes(4, "big") + body, b"\x17garbage"]

    await runtime.process([at(17, garbled[0]), at(18, garbled[1])])

    assert [topic for topic, *_ in producer.sent] == ["reservation.dlq", "reservation.dlq"]
    errors = [k.header(headers, k.H_ERROR) or "" for *_, headers in producer.sent]
    assert "unknown schema id 4000000: the registry has no such schema" in errors[0]
    assert "neither the Confluent magic byte 00 nor Avro single-object c301" in errors[1]
