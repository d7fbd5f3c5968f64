"""What a subscriber of another system sees: the saga's topics, read with nothing but
confluent-kafka's stock ``AvroDeserializer`` and ``SchemaRegistryClient`` (no project code in
the consumer), and the ``examples/`` subscriber that follows one booking."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from erynoa.codec import UndecodableEvent, default_codec
from erynoa.saga import Status
from erynoa.settings import PROJECT_ROOT, Settings
from tests.integration.saga.conftest import LiveSaga
from tests.integration.saga.harness import status_is

pytestmark = pytest.mark.integration

READ_LIMIT_S = 120.0


def read_every_topic(
    settings: Settings, topics: list[str]
) -> list[tuple[str, bytes, bytes, Any | Exception]]:
    """(topic, key, value, record or why not) of every message of ``topics``, read to their
    ends from offset 0."""
    assert settings.registry_url is not None
    # A timeout: a registry connection that stops answering fails the request (the client then
    # retries) instead of hanging the test and, through its thread, the session's teardown.
    deserialize = AvroDeserializer(
        SchemaRegistryClient({"url": settings.registry_url, "timeout": 10})
    )
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"stock-subscriber-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe(topics)
    found: list[tuple[str, bytes, bytes, Any | Exception]] = []
    ended: set[tuple[str, int]] = set()
    assigned: set[tuple[str, int]] = set()
    deadline = time.monotonic() + READ_LIMIT_S
    try:
        while not assigned or ended < assigned:
            assert time.monotonic() < deadline, f"topics not read to their ends in {READ_LIMIT_S}s"
            message = consumer.poll(1.0)
            assigned |= {(p.topic, p.partition) for p in consumer.assignment()}
            if message is None:
                continue
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                ended.add((message.topic(), message.partition()))
                continue
            ended.discard((message.topic(), message.partition()))
            context = SerializationContext(message.topic(), MessageField.VALUE)
            try:
                record = deserialize(message.value(), context)
            except Exception as exc:  # the session's poison-message tests publish garbage
                record = exc
            found.append((message.topic(), message.key(), message.value(), record))
    finally:
        consumer.close()
    return found


async def answered(live: LiveSaga, decision: str, ends: Status) -> str:
    """A new booking its provider answered ``decision``, once it ended as ``ends`` and the agents
    fell quiet (everything it caused is on the topics)."""
    _, booking = await live.book()
    await live.event_log.wait(booking, status_is(Status.AWAITING_PROVIDER))
    await live.answer(booking, decision)
    assert (await live.event_log.wait(booking)).status == ends
    await live.event_log.quiet()
    return booking


async def test_a_stock_deserializer_decodes_every_event_of_a_booking_on_every_topic(
    live: LiveSaga,
) -> None:
    booking = await answered(live, "accept", Status.CONFIRMED)

    topics = [t.name for t in live.catalog.by_kind("event")]
    messages = await asyncio.to_thread(read_every_topic, live.settings, topics)

    mine = [(topic, record) for topic, key, _, record in messages if key == booking.encode()]
    # At least once: a redelivered event is the same event_id again, which a subscriber drops.
    assert {r["event_id"] for _, r in mine} == {e.event_id for e in live.event_log.events[booking]}
    for topic, record in mine:
        assert record["booking_id"] == booking
        assert live.catalog.topic_for(record["event_type"]) == topic
    decoded_types = {r["event_type"] for _, r in mine}
    assert {"BookingRequested", "ReservationHeld", "PaymentAuthorized", "PaymentCaptured"} <= (
        decoded_types
    )
    # Every message on every topic that our own codec decodes, the stock deserializer decodes
    # too, to the same event (the rest is the session's deliberately garbled messages).
    codec = default_codec()
    for _, _, value, record in messages:
        try:
            ours = codec.decode(value)
        except UndecodableEvent:
            assert isinstance(record, Exception), record
            continue
        assert isinstance(record, dict), record
        assert (record["event_id"], record["event_type"]) == (ours.event_id, ours.event_type)
    assert sum(isinstance(record, dict) for *_, record in messages) >= len(mine)


async def test_the_example_subscriber_follows_one_booking(live: LiveSaga) -> None:
    booking = await answered(live, "reject", Status.REJECTED)

    assert live.settings.registry_url is not None
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(Path(PROJECT_ROOT, "examples", "follow_booking.py")),
            "--booking-id", booking,
            "--bootstrap", live.settings.kafka_bootstrap,
            "--registry", live.settings.registry_url,
            "--topic-prefix", live.settings.topic_prefix,
            "--idle", "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(e["event_id"] for e in printed) == sorted(
        {e.event_id for e in live.event_log.events[booking]}
    )
    assert {"BookingRequested", "ProviderRejected"} <= {e["event_type"] for e in printed}


async def test_kcat_shows_each_events_key_and_type_as_the_readme_says(live: LiveSaga) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (make setup installs it)")
    _, booking = await live.book()
    await live.event_log.wait(booking, status_is(Status.AWAITING_PROVIDER))

    done = await asyncio.to_thread(
        subprocess.run,
        [kcat, "-C", "-b", live.settings.kafka_bootstrap, "-t",
         f"{live.settings.topic_prefix}payments", "-o", "beginning", "-e", "-q",
         "-f", "%k %p/%o %h\\n"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    mine = [line for line in done.stdout.splitlines() if line.startswith(booking)]
    assert any("erynoa-event-type=PaymentAuthorized" in line for line in mine), done.stdout
