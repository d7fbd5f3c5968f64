"""The one Avro codec every runtime uses to put events on Kafka and read them back.

Two wire formats, both Avro binary after a header naming the writer schema:

* **Confluent** (written when a Schema Registry is configured, ``ERYNOA_REGISTRY_URL``)::

      0x00 | schema id (4 bytes, big-endian) | Avro binary body

  byte for byte what confluent-kafka's ``AvroSerializer`` writes, so Kafka's stock
  deserializers, Connect and stream processors read our topics. Subjects follow the
  TopicRecordNameStrategy (``<topic>-<namespace>.<EventType>``).
* **Avro single-object encoding** (written without a registry)::

      0xC3 0x01 | CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form
      (8 bytes, little-endian) | Avro binary body

The decoder reads both, so a running cluster can move from one to the other (README, "Moving a
cluster to the Confluent wire format").

``EventCodec`` loads every ``schemas/<EventType>.v<N>.avsc`` once, checks each against the
envelope contract and its dataclass in ``erynoa.events``, and precompiles them with fastavro.
It writes with the newest version of each type and reads any version it knows, resolved to the
newest version, so old events keep decoding after a schema change. With a registry it resolves
(or registers) the id of every local version once, when it is built; a schema id it has not
seen is asked of the registry once and cached (one it lacks, for a minute); registry requests
block, so coroutines decode with ``decode_off_loop``. Encoding and decoding a known id
never touch the network.

    codec = default_codec()
    data = codec.encode(event)       # bytes for the Kafka message value
    event = codec.decode(data)       # raises UndecodableEvent -> retry/dead-letter topic

Check a schema directory from a shell: ``python -m erynoa.codec [schemas-dir]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from erynoa.events import EVENT_TYPES, BookingEvent, CatalogEvent, Event, Money, field_specs
from erynoa.registry import RegistryError, RegistryUnavailable, SchemaRegistry, subject_name
from erynoa.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from erynoa.settings import Settings

__all__ = [
    "CONFLUENT_MAGIC",
    "MAGIC",
    "EventCodec",
    "RegistryUnavailable",
    "SchemaError",
    "UndecodableEvent",
    "UnencodableEvent",
    "WireFormat",
    "codec_for",
    "decode_off_loop",
    "default_codec",
    "local_codec",
    "operator_codec",
    "registry_codec",
    "warm_up",
]

log = logging.getLogger(__name__)

WireFormat = Literal["confluent", "single-object"]

MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_HEADER_LEN = len(MAGIC) + 8
_CONFLUENT_HEADER_LEN = len(CONFLUENT_MAGIC) + 4
# Ids the registry did not know (or that match no local schema) are remembered so a stream of
# them costs one request each; past this many the memory is dropped and refilled.
_MAX_UNKNOWN_IDS = 10_000
# ... but only for a while: an id missing for a moment (a registry being restored, a replica
# behind its primary) must decode once it is there.
UNKNOWN_ID_TTL_S = 60.0
_FILE_NAME = re.compile(r"(?P<type>[A-Z][A-Za-z0-9]*)\.v(?P<version>[1-9][0-9]*)\.avsc")
_NAMESPACES: dict[type[Event], str] = {
    BookingEvent: "erynoa.booking",
    CatalogEvent: "erynoa.catalog",
}
_TIMESTAMP = {"type": "long", "logicalType": "timestamp-micros"}
_OPTIONAL_STRING = ["null", "string"]
_MONEY_NAME = "erynoa.Money"
_MONEY_FIELDS = [("amount_minor", "long"), ("currency", "string")]


def _envelope(key: str) -> list[tuple[str, object]]:
    """The fields every schema starts with, in this order, with their exact types."""
    return [
        ("event_id", "string"),
        ("event_type", "string"),
        ("schema_version", "int"),
        (key, "string"),
        ("occurred_at", _TIMESTAMP),
        ("correlation_id", "string"),
        ("causation_id", _OPTIONAL_STRING),
        ("producer", "string"),
    ]


class SchemaError(ValueError):
    """An ``.avsc`` file breaks the contract; the message names the file and the problem."""


class UndecodableEvent(ValueError):
    """Bytes that are not an event this codec can read; ``reason`` says why (for DLQ headers)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnencodableEvent(ValueError):
    """An event the codec cannot write (no schema for its type, or a value the schema rejects)."""


@dataclass(frozen=True, slots=True)
class _Version:
    """One loaded schema version, ready for fastavro."""

    event_type: str
    version: int
    path: Path
    parsed: dict[str, Any]
    fingerprint: bytes
    # The file's text, exactly as registered: the registry keys ids by content.
    text: str
    full_name: str


@dataclass(frozen=True, slots=True)
class _Reader:
    """How to turn bytes written with one schema version into the current dataclass."""

    writer: _Version
    # None when the writer is the newest version: fastavro then skips schema resolution.
    reader_schema: dict[str, Any] | None
    cls: type[BookingEvent] | type[CatalogEvent]
    money_fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Writer:
    header: bytes
    parsed: dict[str, Any]
    money_fields: tuple[str, ...]
    constants: tuple[tuple[str, object], ...]


class EventCodec:
    """Encodes events to, and decodes them from, Avro in the Confluent wire format (with a
    registry) or single-object encoding (without one); decodes both either way."""

    def __init__(
        self,
        schemas_dir: Path | None = None,
        event_types: Mapping[str, type[Event]] | None = None,
        *,
        registry: SchemaRegistry | None = None,
        topic_for: Callable[[str], str] | None = None,
        auto_register: bool = True,
        write_format: WireFormat = "confluent",
    ) -> None:
        """Load and check every ``.avsc`` in ``schemas_dir``; raises ``SchemaError``.

        ``event_types`` maps each event type to its dataclass (default ``EVENT_TYPES``); tests pass
        their own to try out a new schema version. With a ``registry`` (and ``topic_for``, the
        topic of each event type, for the subject names) every version's id is looked up, or
        registered when ``auto_register``, on first use (see ``warm_up``). ``write_format``
        ``single-object`` keeps writing the old format while reading both (a cluster moving to
        the registry); without a registry it is always single-object.
        """
        self.schemas_dir = schemas_dir if schemas_dir is not None else PROJECT_ROOT / "schemas"
        types = dict(EVENT_TYPES if event_types is None else event_types)
        versions = _load_dir(self.schemas_dir, types)
        if registry is not None and topic_for is None:
            raise ValueError("a codec with a registry needs topic_for (for the subject names)")
        self.registry = registry
        self._topic_for = topic_for
        self._auto_register = auto_register
        self._write_format: WireFormat = "single-object" if registry is None else write_format
        self._files = versions
        self._lock = threading.Lock()
        # Without a registry there is nothing to resolve; with one, ``warm_up`` sets it.
        self._ready = registry is None
        # Whether encode can write without resolving ids first.
        self._writers_ready = self._ready or self._write_format != "confluent"

        self._readers: dict[bytes, _Reader] = {}
        self._by_id: dict[int, _Reader] = {}
        # schema id -> (why it cannot be read, monotonic time until which that holds)
        self._unknown_ids: dict[int, tuple[str, float]] = {}
        # Why the last registry request failed; None once one succeeded (see ``registry_down``).
        self._registry_failure: str | None = None
        self._clock: Callable[[], float] = time.monotonic
        self._ids: dict[tuple[str, int], int] = {}
        self._writers: dict[type[Event], _Writer] = {}
        self._versions: dict[str, tuple[int, ...]] = {}
        for event_type, by_version in sorted(versions.items()):
            cls = types[event_type]
            # _load_file refused any other class; this narrows the type for decode's return.
            assert issubclass(cls, BookingEvent | CatalogEvent)
            latest = by_version[max(by_version)]
            money = tuple(s.name for s in field_specs(cls) if s.kind is Money)
            self._versions[event_type] = tuple(sorted(by_version))
            for version in by_version.values():
                reader_schema = None if version is latest else latest.parsed
                self._readers[version.fingerprint] = _Reader(version, reader_schema, cls, money)
            self._writers[cls] = _Writer(
                header=MAGIC + latest.fingerprint,
                parsed=latest.parsed,
                money_fields=money,
                constants=(("event_type", event_type), ("schema_version", latest.version)),
            )

    def warm_up(self) -> None:
        """Look up (or register) the id of every local schema version, once; the encoder then
        writes the Confluent format. Raises ``RegistryUnavailable`` while the registry does not
        answer (call again later), ``SchemaError`` when it refuses or lacks a schema. Runs by
        itself on the first encode or decode; runtimes call it at start-up."""
        if self._ready:
            return
        registry, topic_for = self.registry, self._topic_for
        assert registry is not None
        assert topic_for is not None
        with self._lock:
            if self._ready:
                return
            try:
                ids = self._resolve_ids(registry, topic_for)
            except RegistryUnavailable as exc:
                self._registry_failure = str(exc)
                raise
            self._registry_failure = None
            for (event_type, number), schema_id in ids.items():
                self._by_id[schema_id] = self._readers[self._files[event_type][number].fingerprint]
            if self._write_format == "confluent":
                for cls, writer in list(self._writers.items()):
                    event_type = str(dict(writer.constants)["event_type"])
                    latest_id = ids[(event_type, self._versions[event_type][-1])]
                    self._writers[cls] = replace(
                        writer, header=CONFLUENT_MAGIC + latest_id.to_bytes(4, "big")
                    )
            self._ids = ids
            self._ready = self._writers_ready = True
        log.info(
            "schema ids resolved: %d versions from %s",
            len(ids),
            registry.url,
            extra={"dependency": "schema-registry"},
        )

    def _resolve_ids(
        self, registry: SchemaRegistry, topic_for: Callable[[str], str]
    ) -> dict[tuple[str, int], int]:
        ids: dict[tuple[str, int], int] = {}
        for event_type, by_version in sorted(self._files.items()):
            latest = by_version[max(by_version)]
            subject = subject_name(topic_for(event_type), latest.full_name)
            for number in sorted(by_version):
                ids[(event_type, number)] = _resolve_id(
                    registry, subject, by_version[number], self._auto_register
                )
        return ids

    @property
    def ready(self) -> bool:
        """Whether every local version's id is resolved (always, without a registry)."""
        return self._ready

    @property
    def writers_ready(self) -> bool:
        """Whether ``encode`` can write without asking the registry first."""
        return self._writers_ready

    def needs_registry(self, data: bytes) -> bool:
        """Whether decoding ``data`` may ask the registry (a blocking request): the codec is not
        warmed up yet, or the bytes carry a schema id it has neither resolved nor recently found
        missing. Cheap, so async callers decode inline unless this says otherwise."""
        if self.registry is None or data[:1] != CONFLUENT_MAGIC:
            return False
        if len(data) < _CONFLUENT_HEADER_LEN:
            return False
        if not self._ready:
            return True
        schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
        if schema_id in self._by_id:
            return False
        unknown = self._unknown_ids.get(schema_id)
        return unknown is None or unknown[1] <= self._clock()

    @property
    def registry_failure(self) -> str | None:
        """Why the last request to the registry failed; None if it answered (or none was made)."""
        return self._registry_failure

    def registry_down(self) -> str | None:
        """None when the registry serves this codec (warmed up, and its last request answered),
        else why not, after asking it once more: warming up when the codec is not ready, a cheap
        request otherwise. Blocking: async callers run it in a thread."""
        registry = self.registry
        if registry is None or (self._ready and self._registry_failure is None):
            return None
        try:
            if not self._ready:
                self.warm_up()
            else:
                registry.compatibility()
        except RegistryUnavailable as exc:
            self._registry_failure = str(exc)
            return str(exc)
        self._registry_failure = None
        return None

    @property
    def wire_format(self) -> WireFormat:
        """What ``encode`` writes."""
        return self._write_format

    @property
    def versions(self) -> dict[str, tuple[int, ...]]:
        """Every loaded event type and its schema versions, oldest first."""
        return dict(self._versions)

    def fingerprint(self, event_type: str, version: int | None = None) -> bytes:
        """The 8-byte CRC-64-AVRO fingerprint of one schema version (default: the newest)."""
        versions = self._versions[event_type]
        wanted = versions[-1] if version is None else version
        for reader in self._readers.values():
            if reader.writer.event_type == event_type and reader.writer.version == wanted:
                return reader.writer.fingerprint
        raise KeyError(f"{event_type} has no schema version {wanted}")

    def schema_id(self, event_type: str, version: int | None = None) -> int:
        """The registry's id of one schema version (default: the newest); KeyError without
        a registry."""
        self.warm_up()
        versions = self._versions[event_type]
        return self._ids[(event_type, versions[-1] if version is None else version)]

    def encode(self, event: Event) -> bytes:
        """The event in this codec's wire format, written with its type's newest schema."""
        if not self._writers_ready:
            self.warm_up()
        writer = self._writers.get(type(event))
        if writer is None:
            raise UnencodableEvent(f"no schema loaded for {type(event).__name__}")
        # The dataclasses are flat apart from Money, so a shallow copy of the instance dict is the
        # Avro record; fastavro converts the tz-aware datetimes itself.
        record: dict[str, object] = dict(vars(event))
        for name in writer.money_fields:
            money = record[name]
            if isinstance(money, Money):
                record[name] = {"amount_minor": money.amount_minor, "currency": money.currency}
        record.update(writer.constants)
        out = BytesIO()
        out.write(writer.header)
        try:
            schemaless_writer(out, writer.parsed, record)
        except (TypeError, ValueError, OverflowError) as exc:
            raise UnencodableEvent(f"cannot encode {type(event).__name__}: {exc}") from exc
        return out.getvalue()

    def encode_cached(self, event: Event) -> bytes:
        """``encode`` that never asks the registry: ``RegistryUnavailable`` while the schema ids
        are not resolved yet (for an event loop, which must not wait on the registry)."""
        if not self._writers_ready:
            raise RegistryUnavailable(
                self._registry_failure or "schema ids not resolved from the registry yet"
            )
        return self.encode(event)

    def decode(self, data: bytes) -> BookingEvent | CatalogEvent:
        """The event in ``data`` (either wire format); raises ``UndecodableEvent`` for anything
        else, and ``RegistryUnavailable`` when a schema id it has not seen arrives while the
        registry is down (an outage, not the message's fault)."""
        if not data:
            raise UndecodableEvent("empty message (no value, or a tombstone)")
        if data[:1] == CONFLUENT_MAGIC:
            if len(data) < _CONFLUENT_HEADER_LEN:
                raise UndecodableEvent(
                    f"{len(data)} bytes is shorter than the Confluent 5-byte header"
                )
            schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
            reader = self._by_id.get(schema_id) or self._look_up_id(schema_id)
            return self._read(reader, data, _CONFLUENT_HEADER_LEN)
        if data[:2] == MAGIC:
            if len(data) < _HEADER_LEN:
                raise UndecodableEvent(
                    f"{len(data)} bytes is shorter than the 10-byte header (single-object)"
                )
            fp = bytes(data[2:_HEADER_LEN])
            found = self._readers.get(fp)
            if found is None:
                raise UndecodableEvent(f"unknown schema fingerprint {fp.hex()}")
            return self._read(found, data, _HEADER_LEN)
        raise UndecodableEvent(
            f"not an event: starts with {bytes(data[:2]).hex()}, neither the Confluent magic "
            "byte 00 nor Avro single-object c301"
        )

    def _look_up_id(self, schema_id: int) -> _Reader:
        """The reader of a schema id not seen before, asked of the registry once."""
        if not self._ready:
            self.warm_up()
            if schema_id in self._by_id:
                return self._by_id[schema_id]
        unknown = self._unknown_ids.get(schema_id)
        if unknown is not None:
            if unknown[1] > self._clock():
                raise UndecodableEvent(unknown[0])
            del self._unknown_ids[schema_id]
        if self.registry is None:
            raise UndecodableEvent(
                f"Confluent wire format with schema id {schema_id}, but no schema registry is "
                "configured (ERYNOA_REGISTRY_URL) to look it up"
            )
        try:
            text = self.registry.schema_by_id(schema_id)
        except RegistryUnavailable as exc:  # an outage, not the message's fault: not remembered
            self._registry_failure = str(exc)
            raise
        self._registry_failure = None
        reason: str | None = None
        found = None
        if text is None:
            reason = f"unknown schema id {schema_id}: the registry has no such schema"
        else:
            try:
                parsed = parse_schema(json.loads(text))
                fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
            except Exception as exc:  # fastavro raises several types for a bad schema
                reason = f"schema id {schema_id}: the registry's schema does not parse ({exc})"
            else:
                found = self._readers.get(fp)
                if found is None:
                    name = parsed.get("name") if isinstance(parsed, dict) else None
                    reason = (
                        f"schema id {schema_id} ({name}) is none of the versions in "
                        f"{self.schemas_dir} (a newer producer? deploy its schema version first)"
                    )
        if found is None:
            assert reason is not None
            if len(self._unknown_ids) >= _MAX_UNKNOWN_IDS:
                self._unknown_ids.clear()
            self._unknown_ids[schema_id] = (reason, self._clock() + UNKNOWN_ID_TTL_S)
            raise UndecodableEvent(reason)
        self._by_id[schema_id] = found
        return found

    def _read(self, reader: _Reader, data: bytes, header_len: int) -> BookingEvent | CatalogEvent:
        writer = reader.writer
        body = BytesIO(data)
        body.seek(header_len)
        try:
            record = schemaless_reader(body, writer.parsed, reader.reader_schema)
        # fastavro signals a short or corrupt body with EOFError, IndexError, ValueError,
        # UnicodeDecodeError, ...; all of them mean the same thing to a consumer.
        except Exception as exc:
            raise UndecodableEvent(
                f"{writer.event_type} v{writer.version}: corrupt or truncated body "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if body.tell() != len(data):
            raise UndecodableEvent(
                f"{writer.event_type} v{writer.version}: {len(data) - body.tell()} bytes left "
                "after the record"
            )
        if not isinstance(record, dict):
            raise UndecodableEvent(f"{writer.event_type} v{writer.version}: not a record")
        event_type = record.pop("event_type")
        schema_version = record.pop("schema_version")
        if event_type != writer.event_type or schema_version != writer.version:
            raise UndecodableEvent(
                f"envelope says {event_type} v{schema_version} but the schema header is "
                f"{writer.event_type} v{writer.version}"
            )
        try:
            for name in reader.money_fields:
                value = record[name]
                if value is not None:
                    record[name] = Money(value["amount_minor"], value["currency"])
            return reader.cls(**record)
        # The dataclass refuses values the schema cannot express (a negative amount, an unknown
        # role): a producer bug, which must land in the dead-letter topic, not crash the consumer.
        except (TypeError, ValueError, KeyError) as exc:
            raise UndecodableEvent(f"{writer.event_type} v{writer.version}: {exc}") from exc


def _resolve_id(
    registry: SchemaRegistry, subject: str, version: _Version, auto_register: bool
) -> int:
    schema_id = registry.lookup(subject, version.text)
    if schema_id is not None:
        return schema_id
    if not auto_register:
        raise SchemaError(
            f"{version.path}: not registered under subject {subject} in {registry.url}; run "
            "`erynoa schemas register` (ERYNOA_REGISTRY_AUTO_REGISTER is off)"
        )
    # A new subject gets the registry-wide compatibility level (BACKWARD, set by the stack and
    # by `erynoa schemas register`, which also sets it per subject).
    try:
        return registry.register(subject, version.text)
    except RegistryError as exc:
        # Several processes starting together register the same schema at once; the loser of
        # that race finds the winner's id.
        if exc.status == 409 and (found := registry.lookup(subject, version.text)) is not None:
            return found
        raise SchemaError(f"{version.path}: {exc}") from None


@cache
def local_codec() -> EventCodec:
    """The codec of the configured ``schemas/`` without a registry, for code that must not touch
    the network: it writes single-object encoding and cannot look up Confluent schema ids."""
    from erynoa.settings import get_settings

    return require_complete(EventCodec(get_settings().schemas_dir))


@cache
def default_codec() -> EventCodec:
    """The codec of this process's settings, built once: with the Schema Registry when one is
    configured, else without. Nothing connects here: the registry is first asked on the first
    encode or decode (or ``warm_up``)."""
    from erynoa.settings import get_settings

    settings = get_settings()
    if settings.registry_url is None:
        return local_codec()
    return registry_codec(settings)


async def decode_off_loop(codec: EventCodec, data: bytes) -> BookingEvent | CatalogEvent:
    """``codec.decode(data)`` for a coroutine: inline when the codec can decode without the
    registry (the hot path), else in a thread, so a registry that times out never blocks the
    event loop."""
    if codec.needs_registry(data):
        return await asyncio.to_thread(codec.decode, data)
    return codec.decode(data)


def warm_up(codec: EventCodec, sleep: Callable[[float], None] = time.sleep) -> EventCodec:
    """``codec.warm_up()``, retried with backoff (0.5 s doubling to 10 s) for as long as the
    registry does not answer: a process started before the registry waits, it does not crash."""
    delay = 0.5
    began = time.monotonic()
    while True:
        try:
            codec.warm_up()
        except RegistryUnavailable as exc:
            log.warning(
                "schema registry unavailable for %.0f s (%s); retrying in %.1f s",
                time.monotonic() - began,
                exc,
                delay,
                extra={"dependency": "schema-registry"},
            )
            sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        return codec


def codec_for(settings: Settings) -> EventCodec:
    """A new codec of ``settings`` (``default_codec`` is the one of this process's settings)."""
    if settings.registry_url is None:
        return require_complete(EventCodec(settings.schemas_dir))
    return registry_codec(settings)


@cache
def operator_codec() -> EventCodec:
    """``default_codec`` for operator tools (``erynoa dlq``, ``erynoa saga``): it never
    registers a schema, since an operator's checkout may hold schema versions no runtime has
    deployed; only the runtimes and ``erynoa schemas register`` add to the shared registry."""
    from erynoa.settings import get_settings

    settings = get_settings()
    if settings.registry_url is None:
        return local_codec()
    return registry_codec(settings, auto_register=False)


def registry_codec(
    settings: Settings,
    registry: SchemaRegistry | None = None,
    *,
    auto_register: bool | None = None,
) -> EventCodec:
    """A codec with ``settings``' registry, not yet connected (it warms up on first use);
    ``auto_register`` overrides ``settings.registry_auto_register``."""
    from erynoa.topics import load_catalog

    if registry is None:
        if settings.registry_url is None:
            raise ValueError("no schema registry configured (ERYNOA_REGISTRY_URL)")
        registry = SchemaRegistry(settings.registry_url, settings.registry_timeout_seconds)
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    return require_complete(
        EventCodec(
            settings.schemas_dir,
            registry=registry,
            topic_for=catalog.topic_for,
            auto_register=(
                settings.registry_auto_register if auto_register is None else auto_register
            ),
            write_format=settings.wire_format,
        )
    )


def require_complete(codec: EventCodec) -> EventCodec:
    """``codec`` if every event type has a schema; a runtime must be able to write them all."""
    unwritten = sorted(set(EVENT_TYPES) - set(codec.versions))
    if unwritten:
        raise SchemaError(
            f"{codec.schemas_dir}: no schema for "
            + ", ".join(f"{t} (expected {t}.v1.avsc)" for t in unwritten)
        )
    return codec


# --- loading and checking schema files ------------------------------------------------------


def _load_dir(
    schemas_dir: Path, types: Mapping[str, type[Event]]
) -> dict[str, dict[int, _Version]]:
    if not schemas_dir.is_dir():
        raise SchemaError(f"{schemas_dir}: not a directory of .avsc files")
    versions: dict[str, dict[int, _Version]] = {}
    by_fingerprint: dict[bytes, Path] = {}
    for path in sorted(schemas_dir.glob("*.avsc")):
        loaded = _load_file(path, types)
        if loaded.fingerprint in by_fingerprint:
            raise SchemaError(
                f"{path}: same Parsing Canonical Form as "
                f"{by_fingerprint[loaded.fingerprint].name}; a new version must change what is "
                "written, not only docs"
            )
        by_fingerprint[loaded.fingerprint] = path
        versions.setdefault(loaded.event_type, {})[loaded.version] = loaded
    for event_type, by_version in versions.items():
        cls = types[event_type]
        latest = max(by_version)
        missing = sorted(set(range(1, latest + 1)) - set(by_version))
        if missing:
            raise SchemaError(
                f"{schemas_dir}: {event_type} has v{latest} but lacks "
                + ", ".join(f"{event_type}.v{v}.avsc" for v in missing)
                + " (every version is kept)"
            )
        if cls.schema_version != latest:
            raise SchemaError(
                f"{by_version[latest].path}: {cls.__name__}.schema_version is "
                f"{cls.schema_version} but the newest schema is v{latest}; update the dataclass "
                "together with the schema"
            )
        _check_matches_class(by_version[latest].path, by_version[latest].parsed, cls)
    return versions


def _load_file(path: Path, types: Mapping[str, type[Event]]) -> _Version:
    match = _FILE_NAME.fullmatch(path.name)
    if not match:
        raise SchemaError(
            f"{path}: file name must be <EventType>.v<N>.avsc, e.g. ReservationHeld.v1"
        )
    event_type, version = match["type"], int(match["version"])
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: cannot read: {exc}") from None

    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise SchemaError(f'{path}: the top level must be a record ("type": "record")')
    if schema.get("name") != event_type:
        raise SchemaError(
            f"{path}: record name {schema.get('name')!r} does not match the file name "
            f"({event_type!r})"
        )
    cls = types.get(event_type)
    if cls is None:
        raise SchemaError(f"{path}: no event class for {event_type} in erynoa.events")
    if issubclass(cls, BookingEvent):
        base: type[Event] = BookingEvent
    elif issubclass(cls, CatalogEvent):
        base = CatalogEvent
    else:
        raise SchemaError(f"{path}: {cls.__name__} is neither a BookingEvent nor a CatalogEvent")
    namespace = _NAMESPACES[base]
    if schema.get("namespace") != namespace:
        raise SchemaError(
            f"{path}: namespace must be {namespace!r}, found {schema.get('namespace')!r}"
        )
    raw_fields = schema.get("fields")
    if not isinstance(raw_fields, list):
        raise SchemaError(f'{path}: "fields" must be a list')
    for index, field in enumerate(raw_fields):
        if not isinstance(field, dict) or not isinstance(field.get("name"), str):
            raise SchemaError(f'{path}: field #{index + 1} must be an object with a "name"')
        if "type" not in field:
            raise SchemaError(f"{path}: field {field['name']!r} has no type")

    parsed = _parse(path, schema)
    _check_envelope(path, raw_fields, "booking_id" if base is BookingEvent else "service_id")
    _check_union_defaults(path, raw_fields)
    canonical = to_parsing_canonical_form(parsed)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    text = path.read_text(encoding="utf-8")
    return _Version(event_type, version, path, parsed, fp, text, f"{namespace}.{event_type}")


def _parse(path: Path, schema: dict[str, Any]) -> dict[str, Any]:
    try:
        parsed = parse_schema(schema)
    except Exception as whole:  # fastavro raises several types; all mean "invalid schema"
        # fastavro's message rarely says where the problem is. Parse growing prefixes of the
        # field list (earlier fields may define named types later ones use) to find the field.
        fields = schema["fields"]
        for end in range(1, len(fields) + 1):
            try:
                parse_schema({**schema, "fields": fields[:end]})
            except Exception as exc:
                raise SchemaError(
                    f"{path}: field {fields[end - 1]['name']!r}: {_describe(exc)}"
                ) from None
        raise SchemaError(f"{path}: {_describe(whole)}") from None
    if not isinstance(parsed, dict):  # a record schema always parses to a dict
        raise SchemaError(f"{path}: not a record schema")
    return parsed


def _describe(exc: Exception) -> str:
    if type(exc).__name__ == "UnknownType":
        return f"unknown type {exc}"
    return str(exc) or type(exc).__name__


def _strip_docs(avro_type: object) -> object:
    """A field type without docs (and aliases), so types compare by what they carry."""
    if isinstance(avro_type, dict):
        return {k: _strip_docs(v) for k, v in avro_type.items() if k not in ("doc", "aliases")}
    if isinstance(avro_type, list):
        return [_strip_docs(v) for v in avro_type]
    return avro_type


def _check_envelope(path: Path, fields: list[dict[str, Any]], key: str) -> None:
    for index, (name, avro_type) in enumerate(_envelope(key)):
        if index >= len(fields) or fields[index]["name"] != name:
            found = repr(fields[index]["name"]) if index < len(fields) else "nothing"
            raise SchemaError(
                f"{path}: envelope field #{index + 1} must be {name!r}, found {found} "
                "(every event starts with the same envelope fields, in order)"
            )
        if _strip_docs(fields[index]["type"]) != avro_type:
            raise SchemaError(
                f"{path}: envelope field {name!r} must have type {json.dumps(avro_type)}, "
                f"found {json.dumps(fields[index]['type'])}"
            )


def _check_union_defaults(path: Path, fields: list[dict[str, Any]]) -> None:
    # The spec says a union's default belongs to its first branch; fastavro does not enforce it
    # but other languages' readers do, so reject it here.
    for field in fields:
        avro_type = field["type"]
        starts_with_null = isinstance(avro_type, list) and avro_type[:1] == ["null"]
        if starts_with_null and field.get("default", None) is not None:
            raise SchemaError(
                f"{path}: field {field['name']!r}: the default of a union starting with "
                f'"null" must be null, found {json.dumps(field["default"])}'
            )


def _expected(kind: type) -> list[object]:
    """The Avro types a dataclass field of this kind may have (before any null union)."""
    if kind is str:
        return ["string"]
    if kind is int:
        return ["int", "long"]
    if kind is bool:
        return ["boolean"]
    if kind is datetime:
        return [_TIMESTAMP]
    return [_MONEY_NAME]  # Money: checked by name, its fields by _check_money


def _check_money(path: Path, field_name: str, avro_type: object) -> bool:
    if avro_type == _MONEY_NAME:
        return True  # a reference to the record defined inline earlier in the same schema
    if not isinstance(avro_type, dict) or avro_type.get("name") != _MONEY_NAME:
        return False
    fields = [(f.get("name"), _strip_docs(f.get("type"))) for f in avro_type.get("fields", [])]
    if fields != _MONEY_FIELDS or avro_type.get("type") != "record":
        raise SchemaError(
            f"{path}: field {field_name!r}: {_MONEY_NAME} must be a record with exactly "
            "amount_minor: long and currency: string"
        )
    return True


def _check_matches_class(path: Path, schema: dict[str, Any], cls: type[Event]) -> None:
    """The newest schema must carry exactly the dataclass's fields, with matching types."""
    envelope_extra = {"event_type", "schema_version"}
    schema_fields = {f["name"]: f for f in schema["fields"] if f["name"] not in envelope_extra}
    specs = {s.name: s for s in field_specs(cls)}
    extra = sorted(schema_fields.keys() - specs.keys())
    if extra:
        raise SchemaError(f"{path}: field {extra[0]!r} is not a field of {cls.__name__}")
    missing = sorted(specs.keys() - schema_fields.keys())
    if missing:
        raise SchemaError(f"{path}: {cls.__name__}.{missing[0]} has no field in the schema")
    for name, spec in specs.items():
        avro_type = _strip_docs(schema_fields[name]["type"])
        if spec.optional:
            if not (isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null"):
                raise SchemaError(
                    f"{path}: field {name!r}: {cls.__name__}.{name} may be None, so its type must "
                    f'be ["null", ...] with "default": null'
                )
            avro_type = avro_type[1]
        if spec.kind is Money:
            ok = _check_money(path, name, avro_type)
        else:
            ok = avro_type in _expected(spec.kind)
        if not ok:
            expected = " or ".join(json.dumps(t) for t in _expected(spec.kind))
            raise SchemaError(
                f"{path}: field {name!r}: {cls.__name__}.{name} is {spec.kind.__name__}, so its "
                f"type must be {expected}, found {json.dumps(avro_type)}"
            )


def _main(argv: list[str]) -> int:
    schemas_dir = Path(argv[0]) if argv else None
    try:
        codec = EventCodec(schemas_dir)
    except SchemaError as exc:
        print(f"schema error: {exc}", file=sys.stderr)
        return 1
    for event_type, versions in codec.versions.items():
        listed = ", ".join(f"v{v}" for v in versions)
        print(f"{event_type}: {listed}  fingerprint {codec.fingerprint(event_type).hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
