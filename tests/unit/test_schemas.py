"""The event contracts in ``schemas/``: their shape, their evolution, and that a subscriber who has
nothing but these files (and any Avro library) can read what we write."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import avro.io
import avro.schema
import pytest

from erynoa.codec import EventCodec, SchemaError, local_codec
from erynoa.events import (
    EVENT_TYPES,
    BookingEvent,
    Event,
    Money,
    ProviderAccepted,
    field_specs,
)
from erynoa.schemas import local_incompatibilities as incompatibilities
from erynoa.settings import PROJECT_ROOT

SCHEMAS = PROJECT_ROOT / "schemas"
SCHEMA_FILES = sorted(SCHEMAS.glob("*.avsc"))
FILE_NAME = re.compile(r"([A-Z][A-Za-z0-9]*)\.v([1-9][0-9]*)\.avsc")

TIMESTAMP = {"type": "long", "logicalType": "timestamp-micros"}
ENVELOPE = [
    ("event_id", "string"),
    ("event_type", "string"),
    ("schema_version", "int"),
    ("booking_id", "string"),
    ("occurred_at", TIMESTAMP),
    ("correlation_id", "string"),
    ("causation_id", ["null", "string"]),
    ("producer", "string"),
]


def load(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def without(obj: Any, *keys: str) -> Any:
    """``obj`` with the given attributes removed at every depth."""
    if isinstance(obj, dict):
        return {k: without(v, *keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [without(v, *keys) for v in obj]
    return obj


def _id(path: Path) -> str:
    return path.name


# --- shape ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_id)
def test_every_schema_file_is_named_after_its_record_and_version(path: Path) -> None:
    match = FILE_NAME.fullmatch(path.name)
    assert match, path.name
    schema = load(path)
    assert schema["type"] == "record"
    assert schema["name"] == match[1]
    namespace = "erynoa.catalog" if match[1] == "ServiceChanged" else "erynoa.booking"
    assert schema["namespace"] == namespace


def test_every_event_class_has_a_schema_and_every_schema_a_class() -> None:
    schema_types = {FILE_NAME.fullmatch(p.name)[1] for p in SCHEMA_FILES}  # type: ignore[index]
    assert schema_types == set(EVENT_TYPES)
    assert local_codec().versions.keys() == EVENT_TYPES.keys()


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_id)
def test_every_schema_starts_with_the_exact_envelope_fields(path: Path) -> None:
    schema = load(path)
    key = "service_id" if schema["namespace"] == "erynoa.catalog" else "booking_id"
    envelope = [(key if n == "booking_id" else n, t) for n, t in ENVELOPE]

    head = [(f["name"], without(f["type"], "doc")) for f in schema["fields"][: len(envelope)]]

    assert head == envelope
    causation = schema["fields"][6]
    assert "default" in causation
    assert causation["default"] is None


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_id)
def test_money_fields_use_the_money_record(path: Path) -> None:
    schema = load(path)
    cls = EVENT_TYPES[schema["name"]]
    money_fields = {s.name for s in field_specs(cls) if s.kind is Money}
    money_record = {
        "type": "record",
        "name": "erynoa.Money",
        "fields": [
            {"name": "amount_minor", "type": "long"},
            {"name": "currency", "type": "string"},
        ],
    }

    for field in schema["fields"]:
        carries_money = field["name"] in money_fields
        is_money = without(field["type"], "doc") in (money_record, "erynoa.Money")
        assert carries_money == is_money, field["name"]
    # No amount sneaks in as a floating-point number anywhere.
    assert not {"float", "double"} & primitive_types(schema)


def primitive_types(avro_type: Any) -> set[str]:
    """Every type name used anywhere in a schema (docs ignored)."""
    if isinstance(avro_type, str):
        return {avro_type}
    if isinstance(avro_type, list):
        return set().union(*(primitive_types(t) for t in avro_type))
    if avro_type.get("type") == "record":
        return set().union(*(primitive_types(f["type"]) for f in avro_type["fields"]))
    return primitive_types(avro_type["type"])


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_id)
def test_every_record_and_field_has_a_doc(path: Path) -> None:
    def records(avro_type: Any) -> list[dict[str, Any]]:
        if isinstance(avro_type, dict) and avro_type.get("type") == "record":
            return [avro_type] + [r for f in avro_type["fields"] for r in records(f["type"])]
        if isinstance(avro_type, list):
            return [r for t in avro_type for r in records(t)]
        return []

    for record in records(load(path)):
        assert record.get("doc"), record["name"]
        for field in record["fields"]:
            assert field.get("doc"), f"{record['name']}.{field['name']}"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_id)
def test_optional_fields_default_to_null_so_they_can_be_added_later(path: Path) -> None:
    for field in load(path)["fields"]:
        if isinstance(field["type"], list):
            assert field["type"][0] == "null", field["name"]
            assert "default" in field, field["name"]
            assert field["default"] is None, field["name"]


# --- a subscriber with nothing but schemas/ and the reference `avro` library ------------------


def independent_decoder(schemas_dir: Path) -> Callable[[bytes], tuple[str, dict[str, Any]]]:
    """Decode single-object encoded events using only the .avsc files and the `avro` package."""
    by_fingerprint: dict[bytes, avro.schema.Schema] = {}
    for path in schemas_dir.glob("*.avsc"):
        text = path.read_text(encoding="utf-8")
        # The Parsing Canonical Form strips every attribute but type, name, fields, symbols, items,
        # values and size, so `{"type": "long", "logicalType": ...}` becomes "long" (as in Java
        # and fastavro). avro 1.12.2's canonical_form keeps it as {"type":"long"} and so
        # fingerprints such schemas differently; strip logicalType before fingerprinting.
        plain = avro.schema.parse(json.dumps(without(json.loads(text), "logicalType")))
        by_fingerprint[plain.fingerprint("CRC-64-AVRO")] = avro.schema.parse(text)

    def decode(data: bytes) -> tuple[str, dict[str, Any]]:
        assert data[:2] == b"\xc3\x01", "single-object encoding marker"
        schema = by_fingerprint[data[2:10]]  # the fingerprint is 8 bytes, little-endian
        assert isinstance(schema, avro.schema.RecordSchema)
        body = io.BytesIO(data[10:])
        record = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(body))
        assert isinstance(record, dict)
        assert body.read() == b"", "the body is exactly one record"
        return schema.name, record

    return decode


def sample(cls: type[Event], *, optionals: bool) -> Event:
    """An event with a value in every field, picked by field kind (so new types are covered)."""
    values: dict[str, Any] = {}
    for spec in field_specs(cls):
        if spec.optional and not optionals:
            values[spec.name] = None
        elif spec.allowed:
            values[spec.name] = max(spec.allowed)
        elif spec.name == "booking_id":
            values[spec.name] = "3f2c8d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"  # a UUID, as events require
        elif spec.kind is str:
            values[spec.name] = f"{spec.name}/ünïcødé/名前"
        elif spec.kind is bool:
            values[spec.name] = True
        elif spec.kind is int:
            values[spec.name] = 2**31 - 1
        elif spec.kind is datetime:
            values[spec.name] = datetime(2031, 12, 31, 23, 59, 58, 999_999, tzinfo=UTC)
        else:
            values[spec.name] = Money(9_007_199_254_740_993, "JPY")  # beyond float precision
    return cls(**values)


def as_record(event: Event) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_type": event.event_type,
        "schema_version": event.schema_version,
    }
    for name, value in vars(event).items():
        if isinstance(value, Money):
            value = {"amount_minor": value.amount_minor, "currency": value.currency}
        record[name] = value
    return record


@pytest.mark.parametrize("optionals", [True, False], ids=["with-optionals", "with-nulls"])
@pytest.mark.parametrize("cls", EVENT_TYPES.values(), ids=lambda cls: cls.event_type)
def test_a_subscriber_with_only_the_avsc_files_reads_what_we_write(
    cls: type[Event], optionals: bool
) -> None:
    event = sample(cls, optionals=optionals)
    decode = independent_decoder(SCHEMAS)

    name, record = decode(local_codec().encode(event))

    assert name == cls.event_type
    assert record == as_record(event)


# --- evolution ------------------------------------------------------------------------------


def test_every_schema_version_reads_data_written_with_any_earlier_version() -> None:
    assert incompatibilities(SCHEMAS) == []


def _add_version(tmp_path: Path, event_type: str, new_field: dict[str, Any]) -> Path:
    """A copy of one real v1 schema plus a v2 that adds ``new_field``."""
    v1 = SCHEMAS / f"{event_type}.v1.avsc"
    shutil.copy(v1, tmp_path / v1.name)
    schema = load(v1)
    schema["fields"].append(new_field)
    (tmp_path / f"{event_type}.v2.avsc").write_text(json.dumps(schema, indent=2))
    return tmp_path


def test_the_compatibility_check_catches_a_new_field_without_a_default(tmp_path: Path) -> None:
    _add_version(tmp_path, "ProviderAccepted", {"name": "channel", "type": "string"})

    assert incompatibilities(tmp_path) == [
        "ProviderAccepted.v2 cannot read v1 at /fields/9: channel"
    ]


def test_the_compatibility_check_accepts_a_new_field_with_a_default(tmp_path: Path) -> None:
    _add_version(
        tmp_path, "ProviderAccepted", {"name": "note", "type": ["null", "string"], "default": None}
    )

    assert incompatibilities(tmp_path) == []


@dataclass(frozen=True, kw_only=True)
class ProviderAcceptedV2(ProviderAccepted):
    """What ProviderAccepted would look like after adding an optional field in v2."""

    schema_version: ClassVar[int] = 2

    note: str | None = None


def test_the_codec_reads_old_versions_into_the_newest_class(tmp_path: Path) -> None:
    _add_version(
        tmp_path, "ProviderAccepted", {"name": "note", "type": ["null", "string"], "default": None}
    )
    new_codec = EventCodec(tmp_path, {"ProviderAccepted": ProviderAcceptedV2})
    old_event = sample(ProviderAccepted, optionals=True)
    assert isinstance(old_event, BookingEvent)

    decoded = new_codec.decode(local_codec().encode(old_event))

    assert decoded == ProviderAcceptedV2(**vars(old_event), note=None)
    assert new_codec.versions == {"ProviderAccepted": (1, 2)}
    new_event = ProviderAcceptedV2(**vars(old_event), note="see you at 9")
    new_bytes = new_codec.encode(new_event)
    assert new_bytes[2:10] == new_codec.fingerprint("ProviderAccepted", 2)
    assert new_codec.decode(new_bytes) == new_event


# --- malformed schema files -----------------------------------------------------------------


def _mutated(event_type: str, change: Callable[[dict[str, Any]], object]) -> str:
    schema = load(SCHEMAS / f"{event_type}.v1.avsc")
    change(schema)
    return json.dumps(schema, indent=2)


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(f for f in schema["fields"] if f["name"] == name)
    return found


def _set(target: dict[str, Any], key: str, value: object) -> None:
    target[key] = value


MALFORMED: dict[str, tuple[str, str, str]] = {
    # case: (file name, content, what the message must name besides the file)
    "invalid json": (
        "ReservationHeld.v1.avsc",
        '{"type": "record", "name": "ReservationHeld",\n  "fields": [}',
        "invalid JSON at line 2",
    ),
    "unknown type": (
        "ReservationHeld.v1.avsc",
        _mutated("ReservationHeld", lambda s: _set(_field(s, "hold_id"), "type", "strng")),
        "field 'hold_id': unknown type erynoa.booking.strng",
    ),
    "field without a type": (
        "ReservationHeld.v1.avsc",
        _mutated("ReservationHeld", lambda s: _field(s, "service_id").pop("type")),
        "field 'service_id' has no type",
    ),
    "bad default": (
        "ReservationHeld.v1.avsc",
        _mutated("ReservationHeld", lambda s: _set(_field(s, "schema_version"), "default", "one")),
        "field 'schema_version': Default value <one> must match schema type: int",
    ),
    "optional field with a non-null default": (
        "ProviderRejected.v1.avsc",
        _mutated("ProviderRejected", lambda s: _set(_field(s, "reason"), "default", "none")),
        "field 'reason': the default of a union",
    ),
    "record name differs from file name": (
        "ReservationHeld.v1.avsc",
        _mutated("ReservationConverted", lambda s: None),
        "record name 'ReservationConverted' does not match the file name",
    ),
    "file name without a version": (
        "ReservationHeld.avsc",
        _mutated("ReservationHeld", lambda s: None),
        "file name must be <EventType>.v<N>.avsc",
    ),
    "envelope out of order": (
        "ReservationHeld.v1.avsc",
        _mutated("ReservationHeld", lambda s: s["fields"].insert(0, s["fields"].pop(3))),
        "envelope field #1 must be 'event_id', found 'booking_id'",
    ),
    "envelope field with another type": (
        "ReservationHeld.v1.avsc",
        _mutated("ReservationHeld", lambda s: _set(_field(s, "occurred_at"), "type", "long")),
        "envelope field 'occurred_at' must have type",
    ),
    "field the dataclass lacks": (
        "ReservationHeld.v1.avsc",
        _mutated(
            "ReservationHeld",
            lambda s: s["fields"].append({"name": "colour", "type": "string", "doc": "x"}),
        ),
        "field 'colour' is not a field of ReservationHeld",
    ),
    "money as a number": (
        "PaymentCaptured.v1.avsc",
        _mutated("PaymentCaptured", lambda s: _set(_field(s, "amount"), "type", "long")),
        "field 'amount': PaymentCaptured.amount is Money",
    ),
    "money with a float amount": (
        "PaymentCaptured.v1.avsc",
        _mutated(
            "PaymentCaptured",
            lambda s: _set(_field(s, "amount")["type"]["fields"][0], "type", "double"),
        ),
        "field 'amount': erynoa.Money must be a record with exactly amount_minor: long",
    ),
    "timestamp as a string": (
        "ReservationHeld.v1.avsc",
        _mutated("ReservationHeld", lambda s: _set(_field(s, "slot_start"), "type", "string")),
        "field 'slot_start': ReservationHeld.slot_start is datetime",
    ),
    "a version without its predecessors": (
        "ReservationHeld.v2.avsc",
        _mutated("ReservationHeld", lambda s: None),
        "lacks ReservationHeld.v1.avsc",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_schema_file_is_reported_by_file_and_field(tmp_path: Path, case: str) -> None:
    file_name, content, problem = MALFORMED[case]
    (tmp_path / file_name).write_text(content)

    with pytest.raises(SchemaError) as caught:
        EventCodec(tmp_path)

    message = str(caught.value)
    assert str(tmp_path) in message
    assert problem in message
    if "lacks" not in problem:
        assert file_name in message
    assert caught.value.__cause__ is None, "the library's exception is not chained into the CLI"


def test_a_new_version_without_its_dataclass_is_refused(tmp_path: Path) -> None:
    _add_version(
        tmp_path, "ProviderAccepted", {"name": "note", "type": ["null", "string"], "default": None}
    )

    with pytest.raises(
        SchemaError,
        match=r"ProviderAccepted\.v2\.avsc: ProviderAccepted\."
        r"schema_version is 1 but the newest schema is v2",
    ):
        EventCodec(tmp_path)


def test_a_version_that_only_changes_docs_is_refused(tmp_path: Path) -> None:
    v1 = SCHEMAS / "ProviderAccepted.v1.avsc"
    shutil.copy(v1, tmp_path / v1.name)
    (tmp_path / "ProviderAccepted.v2.avsc").write_text(
        _mutated("ProviderAccepted", lambda s: _set(s, "doc", "reworded"))
    )

    with pytest.raises(SchemaError, match=r"same Parsing Canonical Form as ProviderAccepted\.v1"):
        EventCodec(tmp_path, {"ProviderAccepted": ProviderAcceptedV2})


def test_a_schema_without_an_event_class_is_refused(tmp_path: Path) -> None:
    (tmp_path / "BookingTeleported.v1.avsc").write_text(
        _mutated("ProviderAccepted", lambda s: _set(s, "name", "BookingTeleported"))
    )

    with pytest.raises(SchemaError, match=r"BookingTeleported\.v1\.avsc: no event class"):
        EventCodec(tmp_path)
