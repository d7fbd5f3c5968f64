"""The Confluent wire format: byte for byte what confluent-kafka's ``AvroSerializer`` writes,
subjects by the TopicRecordNameStrategy, both formats read, and a registry asked only when the
codec warms up or meets a schema id it has not seen (counted at a fake transport)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from aiokafka.structs import ConsumerRecord
from confluent_kafka.schema_registry import Schema, topic_record_subject_name_strategy
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_reader

from consumers.materializer import decode_batch, decode_batch_off_loop
from erynoa.codec import (
    CONFLUENT_MAGIC,
    MAGIC,
    EventCodec,
    RegistryUnavailable,
    UndecodableEvent,
    local_codec,
    warm_up,
)
from erynoa.registry import SchemaRegistry
from erynoa.settings import PROJECT_ROOT
from erynoa.topics import load_catalog
from tests.unit.test_events import STORY

CATALOG = load_catalog(PROJECT_ROOT / "topics.yaml")
SCHEMAS = PROJECT_ROOT / "schemas"


class FakeRegistry:
    """The registry API the codec uses, over a confluent-kafka mock registry (same ids as its
    serializer gets), counting every request and able to go down."""

    def __init__(self, client: MockSchemaRegistryClient | None = None) -> None:
        self.client = client or MockSchemaRegistryClient({"url": "mock://"})
        self.requests: list[str] = []
        self.down = False
        self.subject_levels: dict[str, str] = {}
        self.threads: set[int] = set()
        # Schemas served by id beyond the mock client's (an id registered elsewhere).
        self.extra: dict[int, str] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        self.threads.add(threading.get_ident())
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        parts = request.url.path.removeprefix("/apis/ccompat/v7/").split("/")
        body = json.loads(request.content) if request.content else {}
        if parts[0] == "subjects" and len(parts) == 2:
            try:
                found = self.client.lookup_schema(parts[1], Schema(body["schema"], "AVRO"))
            except Exception:
                return httpx.Response(404, json={"error_code": 40401, "message": "not found"})
            return httpx.Response(200, json={"id": found.schema_id})
        if parts[0] == "subjects" and parts[2:] == ["versions"]:
            schema_id = self.client.register_schema(parts[1], Schema(body["schema"], "AVRO"))
            return httpx.Response(200, json={"id": schema_id})
        if parts[:2] == ["schemas", "ids"]:
            if int(parts[2]) in self.extra:
                return httpx.Response(200, json={"schema": self.extra[int(parts[2])]})
            try:
                schema = self.client.get_schema(int(parts[2]))
            except Exception:
                return httpx.Response(404, json={"error_code": 40403, "message": "not found"})
            return httpx.Response(200, json={"schema": schema.schema_str})
        if parts[0] == "config":
            self.subject_levels[parts[1]] = body["compatibility"]
            return httpx.Response(200, json=body)
        return httpx.Response(500, json={"message": f"fake: {request.url.path}"})

    def api(self) -> SchemaRegistry:
        return SchemaRegistry(
            "http://registry.test/apis/ccompat/v7", 1.0, httpx.MockTransport(self.handle)
        )


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


def codec_with(fake: FakeRegistry, schemas: Path = SCHEMAS) -> EventCodec:
    return EventCodec(schemas, registry=fake.api(), topic_for=CATALOG.topic_for)


def record_of(codec: EventCodec, data: bytes) -> dict[str, object]:
    """The Avro record in single-object bytes, as a plain dict (what a serializer is given)."""
    schema = codec._readers[data[2:10]].writer.parsed
    record = schemaless_reader(BytesIO(data[10:]), schema, None)
    assert isinstance(record, dict)
    return record


@pytest.mark.parametrize("event", STORY, ids=lambda e: type(e).__name__)
def test_the_confluent_bytes_are_identical_to_confluent_kafkas_serializer(
    fake: FakeRegistry, event: object
) -> None:
    codec = codec_with(fake)
    codec.warm_up()
    event_type = type(event).__name__
    topic = CATALOG.topic_for(event_type)
    path = SCHEMAS / f"{event_type}.v{codec.versions[event_type][-1]}.avsc"
    serializer = AvroSerializer(
        fake.client,
        path.read_text(),
        # The registry's latest version under the TopicRecordNameStrategy subject, as a
        # producer that does not register schemas itself would be set up.
        conf={
            "auto.register.schemas": False,
            "use.latest.version": True,
            "subject.name.strategy": topic_record_subject_name_strategy,
        },
    )
    theirs = serializer(
        record_of(codec, local_codec().encode(event)),  # type: ignore[arg-type]
        SerializationContext(topic, MessageField.VALUE),
    )

    ours = codec.encode(event)  # type: ignore[arg-type]

    assert ours == theirs
    assert ours[:1] == CONFLUENT_MAGIC
    assert int.from_bytes(ours[1:5], "big") == codec.schema_id(event_type)
    assert f"{topic}-erynoa.booking.{event_type}" in fake.client.get_subjects() or (
        f"{topic}-erynoa.catalog.{event_type}" in fake.client.get_subjects()
    )


def test_subjects_follow_the_topic_record_name_strategy(fake: FakeRegistry) -> None:
    codec_with(fake).warm_up()

    subjects = set(fake.client.get_subjects())
    assert "reservations-erynoa.booking.ReservationHeld" in subjects
    assert "catalog-services-erynoa.catalog.ServiceChanged" in subjects
    assert len(subjects) == len(local_codec().versions)


def test_a_stock_deserializer_reads_what_the_codec_writes(fake: FakeRegistry) -> None:
    codec = codec_with(fake)
    deserialize = AvroDeserializer(fake.client)
    for event in STORY:
        topic = CATALOG.topic_for(event.event_type)
        record = deserialize(codec.encode(event), SerializationContext(topic, MessageField.VALUE))
        assert isinstance(record, dict)
        assert record["event_id"] == event.event_id
        assert record["event_type"] == event.event_type


def test_the_decoder_reads_both_formats_into_the_same_event(fake: FakeRegistry) -> None:
    confluent = codec_with(fake)
    for event in STORY:
        old = local_codec().encode(event)
        new = confluent.encode(event)
        assert old[:2] == MAGIC
        assert new[:1] == CONFLUENT_MAGIC
        assert confluent.decode(old) == confluent.decode(new) == event
        # A reader deployed before the switch that knows the registry reads the new bytes too.
        assert codec_with(fake).decode(new) == event


def test_after_warm_up_encoding_and_decoding_never_ask_the_registry(fake: FakeRegistry) -> None:
    codec = codec_with(fake)
    codec.warm_up()
    asked = len(fake.requests)
    assert asked > 0

    for _ in range(200):
        for event in STORY:
            assert codec.decode(codec.encode(event)) == event

    assert len(fake.requests) == asked


def test_with_the_registry_down_mid_run_cached_ids_keep_the_hot_path_going(
    fake: FakeRegistry,
) -> None:
    codec = codec_with(fake)
    codec.warm_up()
    fake.down = True

    for event in STORY:
        assert codec.decode(codec.encode(event)) == event


def test_a_codec_that_starts_while_the_registry_is_down_waits_then_warms_up(
    fake: FakeRegistry,
) -> None:
    codec = codec_with(fake)
    fake.down = True
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 4:
            fake.down = False  # the registry comes back

    warm_up(codec, sleep=sleep)

    assert slept == [0.5, 1.0, 2.0, 4.0]
    assert codec.wire_format == "confluent"
    assert codec.decode(codec.encode(STORY[0])) == STORY[0]


def test_a_first_encode_while_the_registry_is_down_is_an_outage_not_a_bad_event(
    fake: FakeRegistry,
) -> None:
    codec = codec_with(fake)
    fake.down = True

    with pytest.raises(RegistryUnavailable):
        codec.encode(STORY[0])


def confluent_bytes(schema_id: int, body: bytes) -> bytes:
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + body


def test_an_unknown_schema_id_is_undecodable_with_a_reason_and_asked_once(
    fake: FakeRegistry,
) -> None:
    codec = codec_with(fake)
    body = codec.encode(STORY[0])[5:]
    codec.warm_up()
    asked = len(fake.requests)

    for _ in range(3):
        with pytest.raises(UndecodableEvent, match="unknown schema id 999999: the registry has no"):
            codec.decode(confluent_bytes(999_999, body))

    assert fake.requests[asked:] == ["GET /apis/ccompat/v7/schemas/ids/999999"]


def test_a_registered_schema_that_is_no_local_version_is_undecodable(
    fake: FakeRegistry,
) -> None:
    codec = codec_with(fake)
    stranger = {"type": "record", "name": "Stranger", "namespace": "x", "fields": []}
    schema_id = fake.client.register_schema("x-Stranger", Schema(json.dumps(stranger), "AVRO"))

    with pytest.raises(UndecodableEvent, match=f"schema id {schema_id} \\(x.Stranger\\) is none"):
        codec.decode(confluent_bytes(schema_id, b""))


def test_an_unknown_id_while_the_registry_is_down_is_an_outage(fake: FakeRegistry) -> None:
    codec = codec_with(fake)
    codec.warm_up()
    fake.down = True

    with pytest.raises(RegistryUnavailable):
        codec.decode(confluent_bytes(424_242, b"\x00"))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00", "shorter than the Confluent 5-byte header"),
        (b"\xff\xfe\xfd\xfc\xfb\xfa", "neither the Confluent magic byte 00 nor"),
        (b"\x01" + bytes(20), "neither the Confluent magic byte 00 nor"),
        (b"\xc3\x02" + bytes(20), "neither the Confluent magic byte 00 nor"),
    ],
)
def test_a_garbled_magic_byte_is_undecodable_not_a_crash(
    fake: FakeRegistry, data: bytes, reason: str
) -> None:
    with pytest.raises(UndecodableEvent, match=reason):
        codec_with(fake).decode(data)


def test_the_materializer_dead_letters_an_unknown_schema_id_with_the_reason(
    fake: FakeRegistry,
) -> None:

    codec = codec_with(fake)
    good = codec.encode(STORY[0])
    make: Callable[[int, bytes], ConsumerRecord[bytes, bytes]] = lambda offset, value: (  # noqa: E731
        ConsumerRecord("bookings", 0, offset, 0, 0, b"k", value, None, 1, len(value), [])
    )

    records, bad = decode_batch(codec, [make(0, good), make(1, confluent_bytes(77_777, good[5:]))])

    assert [r.offset for r in records] == [0]
    assert [(m.offset, why) for m, why in bad] == [
        (1, "unknown schema id 77777: the registry has no such schema")
    ]


def test_during_a_migration_writers_keep_single_object_while_reading_both(
    fake: FakeRegistry,
) -> None:
    migrating = EventCodec(
        SCHEMAS, registry=fake.api(), topic_for=CATALOG.topic_for, write_format="single-object"
    )
    switched = codec_with(fake)
    fake.down = True  # writing the old format needs no registry at all

    for event in STORY:
        assert migrating.encode(event)[:2] == MAGIC
    fake.down = False
    for event in STORY:
        assert migrating.wire_format == "single-object"
        assert migrating.decode(switched.encode(event)) == event
        assert switched.decode(migrating.encode(event)) == event


async def test_the_materializer_asks_the_registry_off_the_event_loop(fake: FakeRegistry) -> None:
    value = codec_with(fake).encode(STORY[0])
    fake.threads.clear()
    codec = codec_with(fake)  # a fresh process: not warmed up, the id not cached
    message = ConsumerRecord("bookings", 0, 0, 0, 0, b"k", value, None, 1, len(value), [])

    records, bad = await decode_batch_off_loop(codec, [message])

    assert [r.event for r in records] == [STORY[0]]
    assert bad == []
    assert fake.threads
    assert threading.get_ident() not in fake.threads
    fake.threads.clear()
    await decode_batch_off_loop(codec, [message])  # cached now: decoded inline, no request
    assert fake.threads == set()


def test_a_missing_schema_id_is_asked_again_after_a_minute(fake: FakeRegistry) -> None:
    codec = codec_with(fake)
    codec.warm_up()
    now = [1000.0]
    codec._clock = lambda: now[0]
    event = STORY[0]
    value = confluent_bytes(4242, codec.encode(event)[5:])
    # The registry lacks the id for a moment (restored from a backup, a lagging replica).
    with pytest.raises(UndecodableEvent, match="unknown schema id 4242"):
        codec.decode(value)
    fake.extra[4242] = codec._files[event.event_type][event.schema_version].text
    fake.requests.clear()
    with pytest.raises(UndecodableEvent, match="unknown schema id 4242"):
        codec.decode(value)  # remembered: a stream of them costs one request
    assert fake.requests == []
    assert not codec.needs_registry(value)
    now[0] += 61
    assert codec.needs_registry(value)
    assert codec.decode(value) == event
    assert fake.requests == ["GET /apis/ccompat/v7/schemas/ids/4242"]


def test_operator_tools_read_without_registering_their_checkouts_schemas(
    fake: FakeRegistry,
) -> None:
    from erynoa.codec import SchemaError, operator_codec, registry_codec
    from erynoa.settings import get_settings

    assert operator_codec()._auto_register is False
    operator = registry_codec(get_settings(), fake.api(), auto_register=False)
    with pytest.raises(SchemaError, match="not registered under subject"):
        operator.warm_up()  # nothing registered yet: an operator's tool does not register
    assert not [r for r in fake.requests if r.endswith("/versions")]
    value = codec_with(fake).encode(STORY[0])  # a runtime registers as it writes
    assert operator.decode(value) == STORY[0]
