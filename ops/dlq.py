"""Dead-letter topics: what is in them, and re-driving their messages to where they came from.

A library for ``erynoa dlq ls|show|replay`` (``cli.ops``) and the admin API alike:
functions take their connections and return frozen dataclasses; nothing here prints. Try it on a
running stack::

    erynoa dlq ls
    erynoa dlq show --booking-id <id>
    erynoa dlq replay --error-class GatewayUnavailable --since 2h --dry-run

Every consumer in ``topics.yaml`` has a dead-letter topic ``<consumer>.dlq``. A message lands
there with headers saying why (``erynoa-error``, ``erynoa-error-class``), where from
(``erynoa-origin-topic/-partition/-offset``: its *first* failure's position), when
(``erynoa-first-failure``, ``erynoa-last-failure``), how often it was tried
(``erynoa-attempts``) and by whom (``erynoa-consumer``); see ``erynoa.kafka``.

Replay re-publishes a message's original bytes and key to its origin topic, with the failure
headers removed, ``erynoa-replay: <replay id>`` added, and ``erynoa-attempts`` kept: a message
that fails again returns to the dead-letter topic with its attempt count continued instead of
starting the retry tiers over. The origin topic is read by *every* consumer group subscribed to
it, not only the one that failed; that is safe because every handler deduplicates by event id
(``processed_events``, the materializer's event log), so the groups that already handled the
event skip it and only the one that failed does the work.

Replaying the same dead-letter message twice has one effect: each replay claims the message's
position in ``dlq_replays`` (unique on topic, partition, offset) *before* publishing, so a second
replay, a concurrent one included, finds the claim and skips the message. ``again=True``
re-drives it anyway (still harmless downstream, by the same deduplication). Undecodable messages
would only fail again, so they are skipped unless asked for.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from erynoa import events as ev
from erynoa import kafka as k
from erynoa import saga
from erynoa.codec import EventCodec, UndecodableEvent
from erynoa.saga import Action, Policy, Status
from erynoa.topics import TopicCatalog, parse_duration_ms
from ops import sagas

# Written by the agents' failure routing (streams.failures) beside the shared headers: whether
# the error was judged retryable. A failure header like the others, so a replay drops it.

FAILURE_HEADERS: frozenset[str] = frozenset(
    {
        k.H_ERROR,
        k.H_ERROR_CLASS,
        k.H_ERROR_KIND,
        k.H_ORIGIN_TOPIC,
        k.H_ORIGIN_PARTITION,
        k.H_ORIGIN_OFFSET,
        k.H_FIRST_FAILURE,
        k.H_LAST_FAILURE,
        k.H_NOT_BEFORE,
        k.H_CONSUMER,
    }
)
"""Headers a replay removes: they describe the failure, not the event. ``erynoa-attempts`` is
not among them on purpose (see the module docstring)."""

_POLL_MS = 500
# Polls in a row that bring nothing before a scan gives up on reaching a partition's end offset
# (a transaction marker or an open transaction can sit between the last record and the end).
_IDLE_POLLS = 6
_PREVIEW_BYTES = 32


class DeadLetterError(ValueError):
    """Bad input from the caller: an unknown topic, a time window that cannot be parsed."""


# --- time windows -------------------------------------------------------------------------


def parse_when(text: str, now: datetime) -> datetime:
    """An ISO 8601 time (naive means UTC) or a relative one: ``90s``, ``15m``, ``2h``, ``7d``
    ago."""
    text = text.strip()
    try:
        ago = parse_duration_ms(text)
    except ValueError:
        ago = None
    if ago is not None and ago >= 0:
        return now - timedelta(milliseconds=ago)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DeadLetterError(
            f"{text!r} is neither an ISO time (2026-01-28T10:00:00Z) nor a duration ago "
            "(90s, 15m, 2h, 7d)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_age(text: str) -> timedelta:
    """A duration like ``10m`` (``erynoa saga ls --older-than``)."""
    try:
        ms = parse_duration_ms(text.strip())
    except ValueError as exc:
        raise DeadLetterError(str(exc)) from None
    if ms < 0:
        raise DeadLetterError(f"{text!r}: a duration like 90s, 10m, 2h or 7d")
    return timedelta(milliseconds=ms)


# --- one dead letter ----------------------------------------------------------------------


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


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
            "event": sagas.jsonable(self.event) if self.event else None,
            "failure": sagas.jsonable(self.failure),
            "headers": [[name, value.decode("utf-8", "replace")] for name, value in self.headers],
        }


def read_dead_letter(record: ConsumerRecord[bytes, bytes], codec: EventCodec) -> DeadLetter:
    """A consumed dead-letter record as a ``DeadLetter`` (pure)."""
    headers = tuple((name, bytes(value)) for name, value in record.headers or ())
    event: ev.BookingEvent | ev.CatalogEvent | None = None
    why: str | None = None
    if record.value is None:
        why = "empty message (no value, or a tombstone)"
    else:
        try:
            event = codec.decode(record.value)
        except UndecodableEvent as exc:
            why = str(exc)
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


# --- which messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """Which dead letters: every filter given must match. ``topics`` empty means all of them;
    ``since``/``until`` bound the time it was dead-lettered; ``limit`` stops the scan."""

    topics: tuple[str, ...] = ()
    booking_id: str | None = None
    event_type: str | None = None
    error_class: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
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


# --- reading topics -----------------------------------------------------------------------


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


async def _partitions(bootstrap: str) -> dict[str, list[TopicPartition]]:
    """Every topic on the cluster with its partitions.

    From the admin client's metadata for *all* topics: a consumer without a group never learns
    partitions (aiokafka's bootstrap asks for no topics on current brokers), and asking for
    named topics could auto-create them on a broker that allows it.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="erynoa-dlq")
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    return {
        t["topic"]: sorted(TopicPartition(t["topic"], p["partition"]) for p in t["partitions"])
        for t in described
        if t["error_code"] == 0
    }


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
        return sagas.jsonable(self)  # type: ignore[no-any-return]


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
    consumer = _reader(bootstrap)
    await k.start_consumer(consumer)
    found: list[DeadLetter] = []
    stats = _ScanStats()
    limited = truncated = False
    try:
        ranges = await _ranges(consumer, tps, query.since, query.until)
        async with aclosing(_scan(consumer, ranges, stats)) as records:
            async for record in records:
                if stats.read > max_scan:
                    truncated = True
                    break
                if not query.could_match_key(record.key):
                    continue
                message = read_dead_letter(record, codec)
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


# --- what a replay would do to its saga ---------------------------------------------------


@dataclass(frozen=True)
class SagaEffect:
    """A dry run's answer to "what would this message do to its booking?"."""

    booking_id: str
    consumer: str | None  # the consumer that failed it
    status_before: Status | None  # None: the booking's request is not in the event log
    status_after: Status | None
    already_in_log: bool  # other consumers handled it already (the read model has it)
    actions: tuple[Action, ...]  # what the failed consumer would do then (its next_actions)
    note: str | None = None

    def describe(self) -> str:
        before = self.status_before.value if self.status_before else "(not requested yet)"
        after = self.status_after.value if self.status_after else "(not requested yet)"
        text = f"{before} → {after}" if before != after else f"stays {after}"
        if self.actions:
            owner = self.consumer or "?"
            text += f"; {owner} would " + ", ".join(sagas.describe_action(a) for a in self.actions)
        elif self.consumer in sagas.AGENTS and self.status_after is not None:
            text += f"; {self.consumer} has nothing left to do"
        if self.note:
            text += f" ({self.note})"
        return text

    def to_json(self) -> dict[str, Any]:
        data = sagas.jsonable(self)
        data["description"] = self.describe()
        return data  # type: ignore[no-any-return]


def effect_on_saga(
    message: DeadLetter,
    log: Sequence[ev.BookingEvent],
    now: datetime,
    policy: Policy = sagas.DEFAULT_POLICY,
) -> SagaEffect | None:
    """Fold the booking's log without and with the message's event (pure); None for messages
    that are not booking events."""
    event = message.event
    if not isinstance(event, ev.BookingEvent):
        return None
    consumer = message.failure.consumer
    others = [e for e in log if e.event_id != event.event_id]
    already = len(others) != len(log)
    try:
        before = sagas.fold_log(others)
        after = sagas.fold_log([*others, event])
    except saga.SagaError as exc:
        return SagaEffect(event.booking_id, consumer, None, None, already, (), str(exc))
    note = None
    if after is None:
        note = "its BookingRequested is not in the log yet; agents keep the event until it arrives"
    elif consumer == "materializer":
        note = "the materializer folds it into the read model"
    elif already:
        note = "already in the event log: other consumers handled it"
    actions: tuple[Action, ...] = ()
    if after is not None and consumer in sagas.AGENTS:
        actions = tuple(saga.next_actions(consumer, after, now, policy))
    return SagaEffect(
        booking_id=event.booking_id,
        consumer=consumer,
        status_before=before.status if before else None,
        status_after=after.status if after else None,
        already_in_log=already,
        actions=actions,
        note=note,
    )


# --- replay -------------------------------------------------------------------------------


def replay_headers(headers: Sequence[tuple[str, bytes]], replay_id: str) -> list[tuple[str, bytes]]:
    """The headers a replayed message carries: the original ones without the failure headers
    (and without an earlier replay marker), ``erynoa-attempts`` kept, this replay's id added."""
    kept = [(n, v) for n, v in headers if n not in FAILURE_HEADERS and n != k.H_REPLAY]
    return [*kept, (k.H_REPLAY, replay_id.encode())]


@dataclass(frozen=True)
class PreviousReplay:
    """What ``dlq_replays`` knows about a message that was replayed before."""

    replay_id: str
    operator: str
    result: str  # pending | replayed | failed
    replayed_at: datetime
    replay_count: int
    detail: str | None

    def describe(self) -> str:
        return (
            f"{self.result} by {self.operator} at {self.replayed_at.isoformat(timespec='seconds')}"
            f" (replay {self.replay_id})"
        )


def skip_reason(
    message: DeadLetter,
    catalog: TopicCatalog,
    previous: PreviousReplay | None,
    *,
    again: bool = False,
    include_undecodable: bool = False,
) -> str | None:
    """Why ``message`` must not be replayed, or None to replay it (pure)."""
    if message.value is None:
        return "empty message (a tombstone): nothing to replay"
    if message.event is None and not include_undecodable:
        return (
            f"undecodable ({message.undecodable}): it would only fail again; "
            "--include-undecodable re-drives it anyway"
        )
    origin = message.failure.origin_topic
    if origin is None:
        return f"no {k.H_ORIGIN_TOPIC} header: where it came from is unknown"
    topic = catalog.topics.get(origin)
    if topic is None:
        return f"origin topic {origin!r} is not in the topic catalog"
    if topic.kind != "event":
        return f"origin {origin!r} is a {topic.kind.replace('_', '-')} topic, not an event topic"
    if message.event is not None and message.event.event_type not in topic.events:
        return f"{message.event.event_type} does not belong on {origin!r} (see topics.yaml)"
    if previous is not None and not again and previous.result != "failed":
        return f"already replayed: {previous.describe()}; --again re-drives it"
    return None


@dataclass(frozen=True)
class PlannedReplay:
    message: DeadLetter
    skip: str | None  # why it will not be replayed; None: it will
    previous: PreviousReplay | None
    effect: SagaEffect | None = None

    @property
    def replay(self) -> bool:
        return self.skip is None

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message.to_json(),
            "replay": self.replay,
            "skip": self.skip,
            "previous": sagas.jsonable(self.previous),
            "effect": self.effect.to_json() if self.effect else None,
        }


async def previous_replays(
    conn: asyncpg.Connection | asyncpg.Pool, messages: Sequence[DeadLetter]
) -> dict[tuple[str, int, int], PreviousReplay]:
    if not messages:
        return {}
    rows = await conn.fetch(
        "SELECT r.dlq_topic, r.dlq_partition, r.dlq_offset, r.replay_id::text, r.operator, "
        "r.result, r.replayed_at, r.replay_count, r.detail "
        "FROM dlq_replays r JOIN unnest($1::text[], $2::int[], $3::bigint[]) "
        "AS m(topic, partition, off) "
        "ON r.dlq_topic = m.topic AND r.dlq_partition = m.partition AND r.dlq_offset = m.off",
        [m.topic for m in messages],
        [m.partition for m in messages],
        [m.offset for m in messages],
    )
    return {
        (r["dlq_topic"], r["dlq_partition"], r["dlq_offset"]): PreviousReplay(
            r["replay_id"],
            r["operator"],
            r["result"],
            r["replayed_at"],
            r["replay_count"],
            r["detail"],
        )
        for r in rows
    }


async def plan_replay(
    conn: asyncpg.Connection | asyncpg.Pool,
    catalog: TopicCatalog,
    messages: Sequence[DeadLetter],
    codec: EventCodec,
    now: datetime,
    *,
    again: bool = False,
    include_undecodable: bool = False,
    with_effects: bool = False,
    policy: Policy = sagas.DEFAULT_POLICY,
) -> list[PlannedReplay]:
    """Decide for each message whether it will be replayed (reads, never writes); with
    ``with_effects``, what each replayed booking event would do to its saga."""
    previous = await previous_replays(conn, messages)
    logs: dict[str, list[ev.BookingEvent]] = {}
    plan = []
    for message in messages:
        before = previous.get((message.topic, message.partition, message.offset))
        skip = skip_reason(
            message, catalog, before, again=again, include_undecodable=include_undecodable
        )
        effect = None
        if with_effects and skip is None and isinstance(message.event, ev.BookingEvent):
            booking_id = message.event.booking_id
            if booking_id not in logs:
                logs[booking_id] = await _booking_log(conn, booking_id, codec)
            effect = effect_on_saga(message, logs[booking_id], now, policy)
        plan.append(PlannedReplay(message, skip, before, effect))
    return plan


async def _booking_log(
    conn: asyncpg.Connection | asyncpg.Pool, booking_id: str, codec: EventCodec
) -> list[ev.BookingEvent]:
    try:
        booking_id = sagas.check_booking_id(booking_id)
    except sagas.InvalidBookingId:
        return []  # not a uuid: no event of it can be in the log
    logged = await sagas.load_log(conn, booking_id, codec)
    return [e.event for e in logged if e.event is not None]


ReplayResult = Literal["replayed", "skipped", "failed"]


@dataclass(frozen=True)
class ReplayOutcome:
    message: DeadLetter
    result: ReplayResult
    detail: str | None = None
    partition: int | None = None  # where the copy landed in the origin topic
    offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.message.topic,
            "partition": self.message.partition,
            "offset": self.message.offset,
            "event_type": self.message.event_type,
            "event_id": self.message.event_id,
            "booking_id": self.message.booking_id,
            "origin_topic": self.message.failure.origin_topic,
            "result": self.result,
            "detail": self.detail,
            "replayed_partition": self.partition,
            "replayed_offset": self.offset,
        }


@dataclass(frozen=True)
class ReplayReport:
    replay_id: str
    operator: str
    outcomes: tuple[ReplayOutcome, ...]
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counted = Counter(o.result for o in self.outcomes)
        object.__setattr__(
            self, "counts", {r: counted.get(r, 0) for r in ("replayed", "skipped", "failed")}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "operator": self.operator,
            "seconds": round(self.seconds, 3),
            "counts": self.counts,
            "outcomes": [o.to_json() for o in self.outcomes],
        }


class _Pacer:
    """At most ``rate`` sends per second, evenly spaced (no bursts after a pause)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise DeadLetterError(f"rate must be positive, got {rate}")
        self._interval = 1 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(self._next, now) + self._interval


_CLAIM_SQL = """
INSERT INTO dlq_replays AS r (
    dlq_topic, dlq_partition, dlq_offset, replay_id, operator, origin_topic, origin_partition,
    origin_offset, event_id, event_type, booking_id, error_class, attempts, result)
VALUES ($1, $2, $3, $4::uuid, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending')
ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO UPDATE
SET replay_id = EXCLUDED.replay_id, operator = EXCLUDED.operator, result = 'pending',
    detail = NULL, replayed_partition = NULL, replayed_offset = NULL,
    replay_count = r.replay_count + 1, replayed_at = now()
WHERE r.result = 'failed' OR $14::boolean
RETURNING r.replay_count
"""

_FINISH_SQL = """
UPDATE dlq_replays SET result = $4, detail = $5, replayed_partition = $6, replayed_offset = $7,
    replayed_at = now()
WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3
"""

_LOG_SQL = """
INSERT INTO dlq_replay_log (replay_id, dlq_topic, dlq_partition, dlq_offset, operator, forced,
    result, detail, replayed_partition, replayed_offset)
VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""


async def replay(
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    plan: Sequence[PlannedReplay],
    *,
    operator: str,
    replay_id: str | None = None,
    again: bool = False,
    rate: float | None = None,
    on_progress: Callable[[ReplayOutcome], None] | None = None,
) -> ReplayReport:
    """Re-drive every planned message to its origin topic, audited in ``dlq_replays``.

    Per message: claim its dead-letter position (a message someone else claimed meanwhile is
    skipped), publish the original key and bytes with ``replay_headers``, wait for the broker's
    acknowledgement, then record the result. ``rate`` caps messages per second.
    """
    replay_id = replay_id or str(uuid.uuid4())
    pacer = _Pacer(rate)
    started = asyncio.get_running_loop().time()
    outcomes = []
    for item in plan:
        if item.skip is not None:
            outcome = ReplayOutcome(item.message, "skipped", item.skip)
        else:
            await pacer.wait()
            outcome = await _replay_one(pool, producer, item.message, replay_id, operator, again)
        outcomes.append(outcome)
        if on_progress is not None:
            on_progress(outcome)
    seconds = asyncio.get_running_loop().time() - started
    return ReplayReport(replay_id, operator, tuple(outcomes), seconds)


async def _replay_one(
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    message: DeadLetter,
    replay_id: str,
    operator: str,
    again: bool,
) -> ReplayOutcome:
    origin = message.failure.origin_topic
    assert origin is not None  # skip_reason refused messages without one
    position = (message.topic, message.partition, message.offset)
    claimed = await pool.fetchval(
        _CLAIM_SQL,
        *position,
        replay_id,
        operator,
        origin,
        message.failure.origin_partition,
        message.failure.origin_offset,
        message.event_id,
        message.event_type,
        message.booking_id,
        message.failure.error_class,
        message.failure.attempts,
        again,
    )
    if claimed is None:
        # Claimed since the plan was made (a concurrent replay): that one re-drives it.
        previous = (await previous_replays(pool, [message])).get(position)
        why = previous.describe() if previous else "claimed by another replay"
        return ReplayOutcome(message, "skipped", f"already replayed: {why}")
    try:
        metadata = await producer.send_and_wait(
            origin,
            value=message.value,
            key=message.raw_key,
            headers=replay_headers(message.headers, replay_id),
        )
    except (TimeoutError, KafkaError, OSError) as exc:
        detail = f"publishing to {origin} failed: {type(exc).__name__}: {exc}"
        await _finish(pool, position, replay_id, operator, again, "failed", detail, None, None)
        return ReplayOutcome(message, "failed", detail)
    detail = f"re-driven to {origin}[{metadata.partition}]@{metadata.offset}"
    await _finish(
        pool,
        position,
        replay_id,
        operator,
        again,
        "replayed",
        detail,
        metadata.partition,
        metadata.offset,
    )
    return ReplayOutcome(message, "replayed", detail, metadata.partition, metadata.offset)


async def _finish(
    pool: asyncpg.Pool,
    position: tuple[str, int, int],
    replay_id: str,
    operator: str,
    forced: bool,
    result: str,
    detail: str,
    partition: int | None,
    offset: int | None,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_FINISH_SQL, *position, result, detail, partition, offset)
        await conn.execute(
            _LOG_SQL, replay_id, *position, operator, forced, result, detail, partition, offset
        )
