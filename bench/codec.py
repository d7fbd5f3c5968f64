"""Benchmark: encode + decode of one BookingRequested with ``erynoa.codec``.

1. Our fastavro codec against the `avro` package: the same work (dataclass -> single-object
   encoded bytes -> dataclass) with the same schema file; it backs the choice of fastavro.
2. The two wire formats of our codec: Avro single-object encoding (the codec without a
   registry) and the Confluent format (magic 0 + schema id, the codec with a Schema Registry),
   measured in alternating rounds, best of each, plus confluent-kafka's own
   ``AvroSerializer``/``AvroDeserializer`` on the same record for reference. The registry is
   the configured one (``ERYNOA_REGISTRY_URL``) when it answers, else an in-memory stand-in;
   either way the requests reaching it while measuring are counted (the hot path makes none).

    python -m bench.codec [--n 20000]

Prints a table, then one JSON line (the last line of stdout) for scripts.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import avro
import avro.io
import avro.schema
import fastavro
import httpx

from bench.sample import booking_requested
from erynoa.codec import MAGIC, EventCodec, local_codec
from erynoa.events import BookingRequested, Event, Money, derived_event_id
from erynoa.registry import SchemaRegistry
from erynoa.settings import get_settings
from erynoa.topics import load_catalog


def sample() -> BookingRequested:
    booking_id = "7d4c3b0e-0f8e-4a43-9d0b-2b3e2f3f1a11"
    return booking_requested(
        booking_id,
        datetime(2025, 3, 14, 8, 30, tzinfo=UTC),
        event_id=derived_event_id(booking_id, "api.requested"),
        service_id="svc_haircut_45",
        notes="Bitte klingeln, 2. OG",
        idempotency_key="idem-3f2a",
    )


class AvroPackageCodec:
    """The same wire format and the same dataclass conversions, written with the `avro` package."""

    def __init__(self, schema_json: str, header: bytes) -> None:
        self.schema = avro.schema.parse(schema_json)
        self.writer = avro.io.DatumWriter(self.schema)
        self.reader = avro.io.DatumReader(self.schema)
        self.header = header

    def encode(self, event: Event) -> bytes:
        record: dict[str, Any] = dict(vars(event))
        price = record["price"]
        record["price"] = {"amount_minor": price.amount_minor, "currency": price.currency}
        record["event_type"] = event.event_type
        record["schema_version"] = event.schema_version
        out = io.BytesIO()
        out.write(self.header)
        self.writer.write(record, avro.io.BinaryEncoder(out))
        return out.getvalue()

    def decode(self, data: bytes) -> BookingRequested:
        body = io.BytesIO(data)
        body.seek(len(self.header))
        record = cast(dict[str, Any], self.reader.read(avro.io.BinaryDecoder(body)))
        del record["event_type"], record["schema_version"]
        record["price"] = Money(record["price"]["amount_minor"], record["price"]["currency"])
        return BookingRequested(**record)


def timed(n: int, work: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        work()
    return time.perf_counter() - start


def measure(
    n: int, encode: Callable[[Event], bytes], decode: Callable[[bytes], Any], event: Event
) -> dict[str, float]:
    data = encode(event)
    assert decode(data) == event, "round trip changed the event"
    timed(min(n, 1_000), lambda: decode(encode(event)))  # warm up caches and lazy imports
    encode_s = timed(n, lambda: encode(event))
    decode_s = timed(n, lambda: decode(data))
    return {
        "encode_per_s": n / encode_s,
        "decode_per_s": n / decode_s,
        "round_trip_per_s": n / (encode_s + decode_s),
        "bytes": len(data),
    }


class CountingTransport(httpx.BaseTransport):
    """Every request to the registry, counted; served by ``inner``."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return self.inner.handle_request(request)


def in_memory_registry(request: httpx.Request) -> httpx.Response:
    """Just enough of the Confluent API for a codec to warm up: every schema gets an id."""
    ids = _IDS
    body = json.loads(request.content) if request.content else {}
    if request.url.path.endswith("/versions") or "/subjects/" in request.url.path:
        text = body.get("schema", "")
        return httpx.Response(200, json={"id": ids.setdefault(text, len(ids) + 1)})
    return httpx.Response(200, json={"compatibility": "BACKWARD"})


_IDS: dict[str, int] = {}


def registry_codec_for_bench() -> tuple[EventCodec, CountingTransport, str]:
    settings = get_settings()
    catalog = load_catalog(settings.topics_file, settings.topics_environment)
    url = settings.registry_url
    if url is not None:
        counting = CountingTransport(httpx.HTTPTransport())
        codec = EventCodec(
            settings.schemas_dir,
            registry=SchemaRegistry(url, 5.0, counting),
            topic_for=catalog.topic_for,
        )
        try:
            codec.warm_up()
            return codec, counting, url
        except Exception:
            pass  # not running: measure against the stand-in
    counting = CountingTransport(httpx.MockTransport(in_memory_registry))
    codec = EventCodec(
        settings.schemas_dir,
        registry=SchemaRegistry("http://in-memory/apis/ccompat/v7", 5.0, counting),
        topic_for=catalog.topic_for,
    )
    codec.warm_up()
    return codec, counting, "in-memory stand-in"


def confluent_kafka_reference(
    codec: EventCodec, event: BookingRequested, n: int
) -> dict[str, float] | None:
    """confluent-kafka's own serializer pair on the same record (dicts, no dataclasses)."""
    try:
        from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
            MockSchemaRegistryClient,
        )
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext
    except ImportError:  # the dev extra (confluent-kafka[avro,schemaregistry]) is not installed
        return None
    client = MockSchemaRegistryClient({"url": "mock://bench"})
    path = codec.schemas_dir / f"BookingRequested.v{BookingRequested.schema_version}.avsc"
    serialize = AvroSerializer(client, path.read_text(encoding="utf-8"))
    deserialize = AvroDeserializer(client)
    context = SerializationContext("bookings", MessageField.VALUE)
    single = local_codec().encode(event)
    record = fastavro.schemaless_reader(
        io.BytesIO(single[10:]), fastavro.parse_schema(json.loads(path.read_text())), None
    )
    data = serialize(record, context)
    timed(min(n, 1_000), lambda: deserialize(serialize(record, context), context))
    encode_s = timed(n, lambda: serialize(record, context))
    decode_s = timed(n, lambda: deserialize(data, context))
    return {
        "encode_per_s": n / encode_s,
        "decode_per_s": n / decode_s,
        "round_trip_per_s": n / (encode_s + decode_s),
        "bytes": len(data or b""),
    }


ROUNDS = 5


def formats(n: int, event: BookingRequested) -> dict[str, Any]:
    single = local_codec()
    confluent, counting, where = registry_codec_for_bench()
    before = counting.requests
    # Alternating rounds, best of each: on a shared machine the load changes between two
    # measurements more than the formats differ.
    results: dict[str, Any] = {}
    for _ in range(ROUNDS):
        for key, codec in (("single_object", single), ("confluent", confluent)):
            result = measure(n // ROUNDS, codec.encode, codec.decode, event)
            best = results.setdefault(key, result)
            for metric, value in result.items():
                best[metric] = max(best[metric], value)
    results["registry_requests_while_measuring"] = counting.requests - before
    results["warm_up_requests"] = before
    results["registry"] = where
    reference = confluent_kafka_reference(confluent, event, n)
    if reference is not None:
        results["confluent_kafka_serializer"] = reference
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="events per measurement")
    n = parser.parse_args().n

    codec = local_codec()
    event = sample()
    schema_path = codec.schemas_dir / f"BookingRequested.v{BookingRequested.schema_version}.avsc"
    reference = AvroPackageCodec(
        schema_path.read_text(encoding="utf-8"), MAGIC + codec.fingerprint("BookingRequested")
    )
    # Same schema, same fingerprint: the two must write identical bytes.
    assert reference.encode(event) == codec.encode(event), "the two codecs disagree on the bytes"

    ours = measure(n, codec.encode, codec.decode, event)
    theirs = measure(n, reference.encode, reference.decode, event)
    ratio = ours["round_trip_per_s"] / theirs["round_trip_per_s"]

    print(f"BookingRequested, {ours['bytes']:.0f} bytes, n={n}, Python {platform.python_version()}")
    print(f"{'':<22}{'encode/s':>12}{'decode/s':>12}{'round trip/s':>14}")
    for label, result in (
        (f"fastavro {fastavro.__version__}", ours),
        (f"avro {avro.__version__}", theirs),
    ):
        print(
            f"{label:<22}{result['encode_per_s']:>12,.0f}{result['decode_per_s']:>12,.0f}"
            f"{result['round_trip_per_s']:>14,.0f}"
        )
    print(f"fastavro is {ratio:.1f}x faster per encode+decode round trip")
    wire = formats(n, event)
    print()
    print(f"wire formats of erynoa.codec (registry: {wire['registry']})")
    print(f"{'':<30}{'encode/s':>12}{'decode/s':>12}{'round trip/s':>14}{'bytes':>7}")
    rows = [
        ("single-object (today)", wire["single_object"]),
        ("Confluent (with registry)", wire["confluent"]),
    ]
    if "confluent_kafka_serializer" in wire:
        rows.append(("confluent-kafka Avro(De)Ser.", wire["confluent_kafka_serializer"]))
    for label, result in rows:
        print(
            f"{label:<30}{result['encode_per_s']:>12,.0f}{result['decode_per_s']:>12,.0f}"
            f"{result['round_trip_per_s']:>14,.0f}{result['bytes']:>7.0f}"
        )
    print(
        f"registry requests: {wire['warm_up_requests']} to warm up, "
        f"{wire['registry_requests_while_measuring']} while measuring"
    )
    print(
        json.dumps(
            {
                "event": "BookingRequested",
                "n": n,
                "fastavro_events_per_s": round(ours["round_trip_per_s"]),
                "avro_events_per_s": round(theirs["round_trip_per_s"]),
                "ratio": round(ratio, 2),
                "fastavro": {k: round(v) for k, v in ours.items()},
                "avro": {k: round(v) for k, v in theirs.items()},
                "formats": {
                    k: ({m: round(x) for m, x in v.items()} if isinstance(v, dict) else v)
                    for k, v in wire.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
