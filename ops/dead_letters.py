"""Dead-letter topics: what is in them, read without moving any consumer group.

Every consumer in ``topics.yaml`` has a dead-letter topic ``<consumer>.dlq``. A message lands
there with headers saying why (``erynoa-error``, ``erynoa-error-class``), where from
(``erynoa-origin-topic/-partition/-offset``: its *first* failure's position), when
(``erynoa-first-failure``, ``erynoa-last-failure``), how often it was tried
(``erynoa-attempts``) and by whom (``erynoa-consumer``); see ``erynoa.kafka``. Try it on a
running stack::

    erynoa dlq ls
    erynoa dlq show --booking-id <id> --since 2h
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from erynoa import events as ev
from erynoa import kafka as k
from erynoa.codec import EventCodec, RegistryUnavailable, UndecodableEvent
from erynoa.topics import TopicCatalog
from ops import wire
from ops.errors import BadInput, check_booking_id
from ops.when import parse_time, parse_when


class DeadLetterError(BadInput):
    """Bad input from the caller: an unknown topic, an empty time window, a bad limit."""


_POLL_MS = 500


# Polls in a row that bring nothing before a scan gives up on reaching a partition's end offset
# (a transaction marker or an open transaction can sit between the last record and the end).
_IDLE_POLLS = 6


_PREVIEW_BYTES = 32
# Why a message that needs a schema id looked up is listed undecodable while the registry is
# down; it decodes on a later read.
REGISTRY_UNAVAILABLE = "schema registry unavailable: its schema id could not be looked up"


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _time(text: str | None) -> datetime | None:
    return parse_time(text) if text is not None else None


@dataclass(frozen=True)
class Failure:
    """What the failure headers say (None where a header is missing or garbled)."""

    error: str | None
    error_class: str | None
    error_kind: str | None
    consumer: str | None
    attempts: int | None
    origin_topic: str | None
    origin_partition: int | None
    origin_offset: int | None
    first_failure: datetime | None
    last_failure: datetime | None
    replay_id: str | None  # set when this message had been replayed before and failed again

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]] | None) -> Failure:
        def h(name: str) -> str | None:
            return k.header(headers, name)

        return cls(
            error=h(k.H_ERROR),
            error_class=h(k.H_ERROR_CLASS),
            error_kind=h(k.H_ERROR_KIND),
            consumer=h(k.H_CONSUMER),
            attempts=_int(h(k.H_ATTEMPTS)),
            origin_topic=h(k.H_ORIGIN_TOPIC),
            origin_partition=_int(h(k.H_ORIGIN_PARTITION)),
            origin_offset=_int(h(k.H_ORIGIN_OFFSET)),
            first_failure=_time(h(k.H_FIRST_FAILURE)),
            last_failure=_time(h(k.H_LAST_FAILURE)),
            replay_id=h(k.H_REPLAY),
        )


@dataclass(frozen=True)
class DeadLetter:
    """One message of a dead-letter topic, decoded where possible."""

    topic: str
    partition: int
    offset: int
    timestamp: datetime  # when it was dead-lettered (the record's timestamp)
    raw_key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    failure: Failure
    event: ev.BookingEvent | ev.CatalogEvent | None
    undecodable: str | None  # why ``value`` does not decode; None when ``event`` is set

    @property
    def key(self) -> str | None:
        return self.raw_key.decode("utf-8", "replace") if self.raw_key is not None else None

    @property
    def size(self) -> int:
        return len(self.value or b"")

    @property
    def event_type(self) -> str | None:
        return self.event.event_type if self.event else k.header(self.headers, k.H_EVENT_TYPE)

    @property
    def event_id(self) -> str | None:
        return self.event.event_id if self.event else None

    @property
    def booking_id(self) -> str | None:
        """The event's booking, or the key of an undecodable message (dead-letter topics are
        keyed by booking id)."""
        if isinstance(self.event, ev.BookingEvent):
            return self.event.booking_id
        if isinstance(self.event, ev.CatalogEvent):
            return None
        return self.key

    def hex_preview(self, length: int = _PREVIEW_BYTES) -> str:
        data = self.value or b""
        return data[:length].hex(" ") + (" …" if len(data) > length else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp.isoformat(),
            "key": self.key,
            "event_type": self.event_type,
            "event_id": self.event_id,
            "booking_id": self.booking_id,
            "size": self.size,
            "undecodable": self.undecodable,
            "hex_preview": self.hex_preview() if self.event is None else None,
            "event": wire.event_json(self.event),
            "failure": wire.plain(self.failure),
            "headers": [[name, value.decode("utf-8", "replace")] for name, value in self.headers],
        }


def read_dead_letter(
    record: ConsumerRecord[bytes, bytes], codec: EventCodec, *, ask_registry: bool = True
) -> DeadLetter:
    """A consumed dead-letter record as a ``DeadLetter``. Decoding a schema id the codec has
    not cached asks the registry (blocking; coroutines run this in a thread), unless
    ``ask_registry`` is False; with the registry down the message is listed as
    ``REGISTRY_UNAVAILABLE`` instead of failing the whole read."""
    headers = tuple((name, bytes(value)) for name, value in record.headers or ())
    event: ev.BookingEvent | ev.CatalogEvent | None = None
    why: str | None = None
    if record.value is None:
        why = "empty message (no value, or a tombstone)"
    elif not ask_registry and codec.needs_registry(record.value):
        why = REGISTRY_UNAVAILABLE
    else:
        try:
            event = codec.decode(record.value)
        except UndecodableEvent as exc:
            why = str(exc)
        except RegistryUnavailable:
            # Not the message's fault, and not remembered: the next read asks again.
            why = REGISTRY_UNAVAILABLE
    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=datetime.fromtimestamp(record.timestamp / 1000, UTC),
        raw_key=record.key,
        value=record.value,
        headers=headers,
        failure=Failure.from_headers(headers),
        event=event,
        undecodable=why,
    )


@dataclass(frozen=True)
class Query:
    """Which dead letters: every filter given must match. ``topics`` empty means all of them;
    ``since``/``until`` bound the time it was dead-lettered; ``limit`` stops the scan;
    ``at`` (partition, offset) names one message of the one topic given."""

    topics: tuple[str, ...] = ()
    booking_id: str | None = None
    event_type: str | None = None
    error_class: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    at: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.at is not None and len(self.topics) != 1:
            raise DeadLetterError("a message's position (partition, offset) needs its one topic")
        if self.at is not None and min(self.at) < 0:
            raise DeadLetterError(f"partition and offset are never negative, got {self.at}")
        if self.since and self.until and self.since >= self.until:
            raise DeadLetterError(
                f"empty time window: since {self.since.isoformat()} is not before "
                f"until {self.until.isoformat()}"
            )
        if self.limit is not None and self.limit < 1:
            raise DeadLetterError(f"limit must be at least 1, got {self.limit}")

    def could_match_key(self, raw_key: bytes | None) -> bool:
        """A cheap test before decoding: a message keyed by another booking cannot match."""
        if self.booking_id is None or raw_key is None:
            return True
        return raw_key.decode("utf-8", "replace").lower() == self.booking_id.lower()

    def matches(self, message: DeadLetter) -> bool:
        if self.at is not None and (message.partition, message.offset) != self.at:
            return False
        if self.booking_id is not None and (message.booking_id or "").lower() != (
            self.booking_id.lower()
        ):
            return False
        if self.event_type is not None and (message.event_type or "").lower() != (
            self.event_type.lower()
        ):
            return False
        if self.error_class is not None and (message.failure.error_class or "").lower() != (
            self.error_class.lower()
        ):
            return False
        if self.since is not None and message.timestamp < self.since:
            return False
        return not (self.until is not None and message.timestamp >= self.until)


def query_from(
    catalog: TopicCatalog,
    now: datetime,
    *,
    topics: Sequence[str] = (),
    booking_id: str | None = None,
    event_type: str | None = None,
    error_class: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> Query:
    """A ``Query`` from what an operator typed (topics or consumers, ``2h`` or ISO times, a
    message's partition and offset); ``BadInput`` names what cannot be understood."""
    if (partition is None) != (offset is None):
        raise DeadLetterError("a message's position is its partition and offset together")
    if booking_id is not None:
        booking_id = check_booking_id(booking_id)
    if event_type is not None and event_type not in catalog.event_types:
        known = ", ".join(sorted(catalog.event_types))
        raise DeadLetterError(f"unknown event type {event_type!r}; known: {known}")
    return Query(
        topics=resolve_topics(catalog, topics),
        booking_id=booking_id,
        event_type=event_type,
        error_class=error_class,
        since=parse_when(since, now) if since else None,
        until=parse_when(until, now) if until else None,
        limit=limit,
        at=(partition, offset) if partition is not None and offset is not None else None,
    )


def dead_letter_topics(catalog: TopicCatalog) -> dict[str, str | None]:
    """Every dead-letter topic of the catalog, with the consumer whose failures it holds."""
    owners = {c.dead_letter_topic: c.name for c in catalog.consumers.values()}
    return {t.name: owners.get(t.name) for t in catalog.by_kind("dead_letter")}


def resolve_topics(catalog: TopicCatalog, names: Sequence[str]) -> tuple[str, ...]:
    """Dead-letter topic names from what an operator typed: ``payment.dlq`` or just
    ``payment`` (the consumer). ``DeadLetterError`` names the known ones otherwise."""
    known = dead_letter_topics(catalog)
    resolved = []
    for name in names:
        if name in known:
            resolved.append(name)
        elif name in catalog.consumers:
            resolved.append(catalog.consumers[name].dead_letter_topic)
        else:
            raise DeadLetterError(
                f"unknown dead-letter topic {name!r}; known: {', '.join(sorted(known))}"
            )
    return tuple(dict.fromkeys(resolved))


def _reader(bootstrap: str) -> AIOKafkaConsumer:
    # No group: an inspection must never move any consumer group's offsets.
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        client_id="erynoa-dlq",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_poll_records=1000,
        fetch_max_wait_ms=100,
    )


@dataclass
class _ScanStats:
    read: int = 0
    incomplete: bool = False


async def _scan(
    consumer: AIOKafkaConsumer,
    ranges: Mapping[TopicPartition, tuple[int, int]],
    stats: _ScanStats,
    per_partition: int | None = None,
) -> AsyncGenerator[ConsumerRecord[bytes, bytes], None]:
    """The records at offsets ``[start, stop)`` of each partition (at most ``per_partition``
    each), partitions interleaved as the broker returns them."""
    active = {tp: stop for tp, (start, stop) in ranges.items() if start < stop}
    if not active:
        return
    consumer.assign(list(active))
    for tp in active:
        consumer.seek(tp, ranges[tp][0])
    taken: Counter[TopicPartition] = Counter()
    idle = 0
    while active:
        batches = await consumer.getmany(*active, timeout_ms=_POLL_MS)
        got = False
        for tp, records in batches.items():
            stop = active.get(tp)
            for record in records:
                if stop is None or record.offset >= stop:
                    break
                if per_partition is not None and taken[tp] >= per_partition:
                    break
                got = True
                taken[tp] += 1
                stats.read += 1
                yield record
        for tp in list(active):
            full = per_partition is not None and taken[tp] >= per_partition
            if full or await consumer.position(tp) >= active[tp]:
                del active[tp]
                consumer.pause(tp)
        idle = 0 if got else idle + 1
        if active and idle >= _IDLE_POLLS:
            stats.incomplete = True
            return


@dataclass(frozen=True)
class TopicSummary:
    """One dead-letter topic at a glance."""

    topic: str
    consumer: str | None
    exists: bool
    partitions: int
    depth: int  # messages retained: end minus beginning offsets (nothing is ever removed)
    oldest: datetime | None
    newest: datetime | None
    error_classes: dict[str, int]  # over the ``sampled`` newest messages
    sampled: int

    def to_json(self) -> dict[str, Any]:
        return wire.plain(self)  # type: ignore[no-any-return]


async def summarize(
    catalog: TopicCatalog,
    bootstrap: str,
    *,
    sample: int = 10_000,
) -> list[TopicSummary]:
    """Every dead-letter topic with its depth, oldest and newest message, and error classes
    counted over the newest ``sample`` messages (headers only: nothing is decoded)."""
    existing = await _partitions(bootstrap)
    consumer = _reader(bootstrap)
    await k.start_consumer(consumer)
    summaries = []
    try:
        for topic, owner in sorted(dead_letter_topics(catalog).items()):
            if topic not in existing:
                summaries.append(TopicSummary(topic, owner, False, 0, 0, None, None, {}, 0))
                continue
            tps = existing[topic]
            begins = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            depth = sum(ends[tp] - begins[tp] for tp in tps)
            per_partition = max(1, sample // max(1, len(tps)))
            tails = {tp: (max(begins[tp], ends[tp] - per_partition), ends[tp]) for tp in tps}
            classes: Counter[str] = Counter()
            stamps: list[int] = []
            stats = _ScanStats()
            async with aclosing(_scan(consumer, tails, stats)) as records:
                async for record in records:
                    classes[k.header(record.headers, k.H_ERROR_CLASS) or "(none)"] += 1
                    stamps.append(record.timestamp)
            # Partitions longer than their sample: their oldest message is one more read.
            heads = {tp: (begins[tp], ends[tp]) for tp in tps if tails[tp][0] > begins[tp]}
            async with aclosing(_scan(consumer, heads, _ScanStats(), 1)) as records:
                async for record in records:
                    stamps.append(record.timestamp)
            summaries.append(
                TopicSummary(
                    topic=topic,
                    consumer=owner,
                    exists=True,
                    partitions=len(tps),
                    depth=depth,
                    oldest=_from_ms(min(stamps)) if stamps else None,
                    newest=_from_ms(max(stamps)) if stamps else None,
                    error_classes=dict(classes.most_common()),
                    sampled=stats.read,
                )
            )
    finally:
        await consumer.stop()
    return summaries


async def _partitions(bootstrap: str) -> dict[str, list[TopicPartition]]:
    """Every topic on the cluster with its partitions."""
    found: dict[str, list[TopicPartition]] = {}
    for tp in await k.topic_partitions(bootstrap):
        found.setdefault(tp.topic, []).append(tp)
    return found


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True)
class ScanResult:
    messages: tuple[DeadLetter, ...]  # oldest first
    scanned: int
    limited: bool  # the query's limit stopped the scan: more may match
    truncated: bool  # ``max_scan`` (or a partition that never reached its end) stopped it
    missing_topics: tuple[str, ...] = ()  # dead-letter topics not created on the cluster

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": [m.to_json() for m in self.messages],
            "scanned": self.scanned,
            "limited": self.limited,
            "truncated": self.truncated,
            "missing_topics": list(self.missing_topics),
        }


async def find(
    catalog: TopicCatalog,
    bootstrap: str,
    query: Query,
    codec: EventCodec,
    *,
    max_scan: int = 100_000,
) -> ScanResult:
    """The dead letters matching ``query``, oldest first.

    Reads each partition from the first message at or after ``since`` (the broker's time index)
    to the end offset seen at the start, so messages dead-lettered meanwhile are left for the
    next run. Stops after ``query.limit`` matches or ``max_scan`` messages read.
    """
    topics = query.topics or tuple(sorted(dead_letter_topics(catalog)))
    unknown = [t for t in topics if t not in dead_letter_topics(catalog)]
    if unknown:
        raise DeadLetterError(f"not a dead-letter topic of the catalog: {', '.join(unknown)}")
    existing = await _partitions(bootstrap)
    missing = tuple(t for t in topics if t not in existing)
    tps = [tp for t in topics for tp in existing.get(t, ())]
    if query.at is not None:
        tps = [tp for tp in tps if tp.partition == query.at[0]]
    consumer = _reader(bootstrap)
    await k.start_consumer(consumer)
    found: list[DeadLetter] = []
    stats = _ScanStats()
    limited = truncated = False
    registry_answers = True
    try:
        ranges = await _ranges(consumer, tps, query.since, query.until)
        if query.at is not None:
            # One message: read its offset alone instead of scanning the partition.
            wanted = query.at[1]
            ranges = {
                tp: (max(start, wanted), min(stop, wanted + 1))
                for tp, (start, stop) in ranges.items()
            }
        async with aclosing(_scan(consumer, ranges, stats)) as records:
            async for record in records:
                if stats.read > max_scan:
                    truncated = True
                    break
                if not query.could_match_key(record.key):
                    continue
                message = await _read_off_loop(record, codec, registry_answers)
                if message.undecodable == REGISTRY_UNAVAILABLE:
                    # One timeout per scan is enough: the rest are listed without asking.
                    registry_answers = False
                if query.matches(message):
                    found.append(message)
                    if query.limit is not None and len(found) >= query.limit:
                        limited = True
                        break
    finally:
        await consumer.stop()
    found.sort(key=lambda m: (m.timestamp, m.topic, m.partition, m.offset))
    return ScanResult(
        tuple(found), min(stats.read, max_scan), limited, truncated or stats.incomplete, missing
    )


async def _read_off_loop(
    record: ConsumerRecord[bytes, bytes], codec: EventCodec, ask_registry: bool
) -> DeadLetter:
    """``read_dead_letter`` without blocking the event loop on a registry request."""
    if ask_registry and record.value is not None and codec.needs_registry(record.value):
        return await asyncio.to_thread(read_dead_letter, record, codec)
    return read_dead_letter(record, codec, ask_registry=ask_registry)


async def read_at(
    catalog: TopicCatalog,
    bootstrap: str,
    topic: str,
    partition: int,
    offset: int,
    codec: EventCodec,
) -> DeadLetter | None:
    """The dead letter at ``topic[partition]@offset`` (a topic or its consumer's name); None
    when no message is there (yet, or any more)."""
    query = Query(topics=resolve_topics(catalog, [topic]), at=(partition, offset))
    found = await find(catalog, bootstrap, query, codec, max_scan=1)
    return found.messages[0] if found.messages else None


async def _ranges(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    since: datetime | None,
    until: datetime | None,
) -> dict[TopicPartition, tuple[int, int]]:
    if not tps:
        return {}
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    starts, stops = dict(begins), dict(ends)
    # The time index finds the first offset at or after a time; a partition with nothing that
    # late answers None (start at its end: nothing to read).
    if since is not None:
        found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        starts = {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in tps}
    if until is not None:
        found = await consumer.offsets_for_times({tp: int(until.timestamp() * 1000) for tp in tps})
        stops = {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in tps}
    return {tp: (starts[tp], stops[tp]) for tp in tps}
