"""Benchmark: encode + decode of one BookingRequested, our fastavro codec vs the `avro` package.

Both sides do the same work: dataclass -> single-object encoded bytes -> dataclass, with the same
schema file. It backs the choice of fastavro for ``erynoa.codec``.

    python bench/codec.py [--n 20000]

Prints a table, then one JSON line (the last line of stdout) for scripts.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import avro
import avro.io
import avro.schema
import fastavro

from erynoa.codec import MAGIC, default_codec
from erynoa.events import BookingRequested, Event, Money, derived_event_id, make


def sample() -> BookingRequested:
    start = datetime(2025, 3, 14, 8, 30, tzinfo=UTC)
    return make(
        BookingRequested,
        booking_id="7d4c3b0e-0f8e-4a43-9d0b-2b3e2f3f1a11",
        producer="api",
        event_id=derived_event_id("7d4c3b0e-0f8e-4a43-9d0b-2b3e2f3f1a11", "api.requested"),
        customer_id="usr_customer_7",
        service_id="svc_haircut_45",
        provider_id="usr_provider_3",
        slot_start=start,
        slot_end=start + timedelta(minutes=45),
        price=Money(4500, "EUR"),
        payment_method="pm_card_visa",
        notes="Bitte klingeln, 2. OG",
        response_deadline_seconds=86_400,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="events per measurement")
    n = parser.parse_args().n

    codec = default_codec()
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
            }
        )
    )


if __name__ == "__main__":
    main()
