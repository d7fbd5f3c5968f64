"""The dead-letter library's pure rules: time windows, filters, reading a record, which messages
a replay re-drives, the headers a replayed copy carries, and what it would do to its saga."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.structs import ConsumerRecord

from erynoa import events as ev
from erynoa import kafka as k
from erynoa import saga
from erynoa.codec import local_codec
from erynoa.settings import PROJECT_ROOT
from erynoa.topics import TopicCatalog, load_catalog
from ops import dead_letters, replay, when
from ops.dead_letters import DeadLetterError, Query
from ops.errors import BadInput
from ops.replay import PreviousReplay
from tests.builders import booking_requested, next_event

NOW = datetime(2026, 1, 28, 12, 0, tzinfo=UTC)
BOOKING = "0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e"
GARBAGE = b"\x00\x01garbage, not avro"


@pytest.fixture(scope="module")
def catalog() -> TopicCatalog:
    return load_catalog(PROJECT_ROOT / "topics.yaml")


def requested(booking_id: str = BOOKING, at: datetime = NOW) -> ev.BookingRequested:
    return booking_requested(
        booking_id=booking_id,
        occurred_at=at,
        event_id="9d2b7a4e-5f0c-4c1e-8a6b-2f3d4e5a6b7c",
        correlation_id="corr-1",
        service_id="6f1c0b8e-3c57-4a0e-9d55-4a1e2b7c9f10",
        slot_start=at + timedelta(days=2),
        response_deadline_seconds=3600,
    )


def failure_headers(
    consumer: str = "reservation", origin: str = "bookings", attempts: int = 3
) -> list[tuple[str, bytes]]:
    return [
        (k.H_TRACEPARENT, b"00-abc-def-01"),
        (k.H_EVENT_TYPE, b"BookingRequested"),
        (k.H_ATTEMPTS, str(attempts).encode()),
        (k.H_ERROR, b"GatewayUnavailable: timed out"),
        (k.H_ERROR_CLASS, b"GatewayUnavailable"),
        (k.H_ERROR_KIND, b"retryable"),
        (k.H_ORIGIN_TOPIC, origin.encode()),
        (k.H_ORIGIN_PARTITION, b"4"),
        (k.H_ORIGIN_OFFSET, b"1041"),
        (k.H_FIRST_FAILURE, b"2026-01-28T11:58:00+00:00"),
        (k.H_LAST_FAILURE, b"2026-01-28T11:59:10+00:00"),
        (k.H_NOT_BEFORE, b"1769601550000"),
        (k.H_CONSUMER, consumer.encode()),
    ]


def record(
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    key: bytes | None = BOOKING.encode(),
    offset: int = 7,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="reservation.dlq",
        partition=1,
        offset=offset,
        timestamp=int(NOW.timestamp() * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers,
    )


def decodable(**kwargs: object) -> dead_letters.DeadLetter:
    event = requested()
    headers = failure_headers(**kwargs)  # type: ignore[arg-type]
    return dead_letters.read_dead_letter(
        record(local_codec().encode(event), headers), local_codec()
    )


def garbage() -> dead_letters.DeadLetter:
    return dead_letters.read_dead_letter(record(GARBAGE, failure_headers()), local_codec())


# --- time windows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-01-28T10:00:00Z", datetime(2026, 1, 28, 10, tzinfo=UTC)),
        ("2026-01-28T11:00:00+01:00", datetime(2026, 1, 28, 10, tzinfo=UTC)),
        ("2026-01-28T10:00:00", datetime(2026, 1, 28, 10, tzinfo=UTC)),  # naive means UTC
    ],
)
def test_times_are_iso_or_a_duration_ago(text: str, expected: datetime) -> None:
    assert when.parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "forever", "-5m", "10 minutes", ""])
def test_an_unreadable_time_names_both_accepted_forms(text: str) -> None:
    with pytest.raises(BadInput, match="neither an ISO time"):
        when.parse_when(text, NOW)


def test_an_empty_time_window_is_refused() -> None:
    with pytest.raises(DeadLetterError, match="empty time window"):
        Query(since=NOW, until=NOW - timedelta(hours=1))


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(DeadLetterError, match="limit"):
        Query(limit=0)


def test_ages_are_durations() -> None:
    assert when.parse_age("10m") == timedelta(minutes=10)
    with pytest.raises(BadInput):
        when.parse_age("ten minutes")


# --- reading and filtering ------------------------------------------------------------------


def test_a_decodable_dead_letter_carries_its_event_and_failure() -> None:
    message = decodable()

    assert message.event == requested()
    assert message.event_type == "BookingRequested"
    assert message.booking_id == BOOKING
    assert message.undecodable is None
    f = message.failure
    assert (f.error_class, f.error_kind, f.consumer, f.attempts) == (
        "GatewayUnavailable", "retryable", "reservation", 3,
    )  # fmt: skip
    assert (f.origin_topic, f.origin_partition, f.origin_offset) == ("bookings", 4, 1041)
    assert f.first_failure == datetime(2026, 1, 28, 11, 58, tzinfo=UTC)
    assert message.timestamp == NOW


def test_an_undecodable_dead_letter_shows_size_hex_and_why() -> None:
    message = garbage()

    assert message.event is None
    assert message.undecodable is not None
    assert "schema id" in message.undecodable  # 00 reads as the Confluent magic byte
    assert message.size == len(GARBAGE)
    assert message.hex_preview() == GARBAGE.hex(" ")
    assert message.hex_preview(4) == "00 01 67 61 …"
    assert message.event_type == "BookingRequested"  # from the header
    assert message.booking_id == BOOKING  # from the key
    assert message.to_json()["hex_preview"] == GARBAGE.hex(" ")


def test_garbled_failure_headers_read_as_missing_not_as_errors() -> None:
    headers = [(k.H_ATTEMPTS, b"many"), (k.H_FIRST_FAILURE, b"last tuesday")]

    failure = dead_letters.Failure.from_headers(headers)

    assert failure.attempts is None
    assert failure.first_failure is None
    assert failure.origin_topic is None


def test_filters_match_booking_type_class_and_window_case_insensitively() -> None:
    message = decodable()

    assert Query(booking_id=BOOKING.upper()).matches(message)
    assert Query(event_type="bookingrequested", error_class="gatewayunavailable").matches(message)
    assert Query(since=NOW, until=NOW + timedelta(seconds=1)).matches(message)
    assert not Query(since=NOW + timedelta(seconds=1)).matches(message)
    assert not Query(until=NOW).matches(message)  # until is exclusive
    assert not Query(booking_id="6f1c0b8e-3c57-4a0e-9d55-4a1e2b7c9f10").matches(message)
    assert not Query(error_class="UndecodableEvent").matches(message)


def test_the_key_rules_out_other_bookings_before_decoding() -> None:
    query = Query(booking_id=BOOKING)

    assert query.could_match_key(BOOKING.encode())
    assert query.could_match_key(None)
    assert not query.could_match_key(b"another-booking")
    assert Query().could_match_key(b"anything")


def test_topics_are_named_by_topic_or_consumer(catalog: TopicCatalog) -> None:
    assert dead_letters.resolve_topics(catalog, ["payment", "payment.dlq", "reservation.dlq"]) == (
        "payment.dlq",
        "reservation.dlq",
    )
    with pytest.raises(DeadLetterError, match=r"known: materializer\.dlq"):
        dead_letters.resolve_topics(catalog, ["payments"])


def test_a_position_names_one_message_of_one_topic(catalog: TopicCatalog) -> None:
    message = decodable()
    at = (message.partition, message.offset)

    assert Query(topics=("payment.dlq",), at=at).matches(message)
    assert not Query(topics=("payment.dlq",), at=(at[0], at[1] + 1)).matches(message)
    query = dead_letters.query_from(catalog, NOW, topics=["payment"], partition=at[0], offset=at[1])
    assert (query.topics, query.at) == (("payment.dlq",), at)
    with pytest.raises(DeadLetterError, match="its one topic"):
        dead_letters.query_from(catalog, NOW, partition=0, offset=3)
    with pytest.raises(DeadLetterError, match="partition and offset together"):
        dead_letters.query_from(catalog, NOW, topics=["payment"], offset=3)


# --- replay decisions -----------------------------------------------------------------------


def previous(result: str, at: datetime = NOW) -> PreviousReplay:
    return PreviousReplay("5b0e4c1a-0000-4000-8000-000000000001", "alice", result, at, 1, None)


def test_a_decodable_message_from_an_event_topic_is_replayed(catalog: TopicCatalog) -> None:
    assert replay.skip_reason(decodable(), catalog, None, now=NOW) is None


def test_undecodable_messages_are_skipped_unless_asked_for(catalog: TopicCatalog) -> None:
    reason = replay.skip_reason(garbage(), catalog, None, now=NOW)

    assert reason is not None
    assert "--include-undecodable" in reason
    assert replay.skip_reason(garbage(), catalog, None, include_undecodable=True, now=NOW) is None


def test_a_message_already_replayed_is_skipped_unless_again(catalog: TopicCatalog) -> None:
    reason = replay.skip_reason(decodable(), catalog, previous("replayed"), now=NOW)

    assert reason is not None
    assert "already replayed" in reason
    assert "alice" in reason
    assert (
        replay.skip_reason(decodable(), catalog, previous("replayed"), again=True, now=NOW) is None
    )
    assert replay.skip_reason(decodable(), catalog, previous("pending"), now=NOW) is not None


def test_a_replay_that_failed_to_publish_may_be_tried_again(catalog: TopicCatalog) -> None:
    assert replay.skip_reason(decodable(), catalog, previous("failed"), now=NOW) is None


def test_a_pending_claim_abandoned_by_a_dead_replay_no_longer_hides_the_message(
    catalog: TopicCatalog,
) -> None:
    recent = previous("pending", at=NOW - replay.ABANDONED_AFTER + timedelta(seconds=1))
    abandoned = previous("pending", at=NOW - replay.ABANDONED_AFTER - timedelta(seconds=1))

    assert replay.skip_reason(decodable(), catalog, recent, now=NOW) is not None
    assert replay.replay_note(recent, NOW) is None
    assert replay.skip_reason(decodable(), catalog, abandoned, now=NOW) is None
    note = replay.replay_note(abandoned, NOW)
    assert note is not None
    assert "never finished" in note
    assert "alice" in note


def test_an_old_replayed_claim_is_still_skipped(catalog: TopicCatalog) -> None:
    long_ago = previous("replayed", at=NOW - timedelta(days=3))

    assert replay.skip_reason(decodable(), catalog, long_ago, now=NOW) is not None
    assert replay.replay_note(long_ago, NOW) is None


@pytest.mark.parametrize(
    ("origin", "why"),
    [
        ("no-such-topic", "not in the topic catalog"),
        ("reservation.retry.1s", "retry topic, not an event topic"),
        ("payments", "does not belong on 'payments'"),
    ],
)
def test_a_message_whose_origin_cannot_take_it_is_skipped(
    catalog: TopicCatalog, origin: str, why: str
) -> None:
    reason = replay.skip_reason(decodable(origin=origin), catalog, None, now=NOW)

    assert reason is not None
    assert why in reason


def test_a_message_without_an_origin_is_skipped(catalog: TopicCatalog) -> None:
    headers = [(n, v) for n, v in failure_headers() if n != k.H_ORIGIN_TOPIC]
    message = dead_letters.read_dead_letter(
        record(local_codec().encode(requested()), headers), local_codec()
    )

    reason = replay.skip_reason(message, catalog, None, now=NOW)

    assert reason is not None
    assert k.H_ORIGIN_TOPIC in reason


def test_a_tombstone_is_never_replayed(catalog: TopicCatalog) -> None:
    message = dead_letters.read_dead_letter(record(None, failure_headers()), local_codec())

    reason = replay.skip_reason(message, catalog, None, include_undecodable=True, now=NOW)

    assert reason is not None
    assert "tombstone" in reason


def test_a_replayed_copy_drops_the_failure_headers_and_keeps_the_attempts() -> None:
    original = [*failure_headers(), (k.H_REPLAY, b"an-earlier-replay")]

    headers = k.replay_headers(original, "replay-2")

    names = [n for n, _ in headers]
    assert not k.FAILURE_HEADERS & set(names)
    assert dict(headers)[k.H_ATTEMPTS] == b"3"
    assert dict(headers)[k.H_TRACEPARENT] == b"00-abc-def-01"
    assert dict(headers)[k.H_EVENT_TYPE] == b"BookingRequested"
    assert [v for n, v in headers if n == k.H_REPLAY] == [b"replay-2"]


# --- what a replay would do to its saga -----------------------------------------------------


def held(at: datetime) -> ev.ReservationHeld:
    return next_event(requested(), ev.ReservationHeld, occurred_at=at)


def test_a_lost_request_would_start_the_saga_and_the_failed_agent_would_act() -> None:
    effect = replay.replay_effect(decodable(), [], NOW)

    assert effect is not None
    assert (effect.status_before, effect.status_after) == (None, saga.Status.REQUESTED)
    assert effect.actions == (saga.HoldCapacity(),)
    assert "reservation would HoldCapacity" in effect.describe()


def test_a_lost_hold_would_move_the_booking_on_and_ask_payment_to_authorize() -> None:
    event = held(NOW + timedelta(seconds=1))
    message = dead_letters.read_dead_letter(
        record(local_codec().encode(event), failure_headers(consumer="payment")),
        local_codec(),
    )

    effect = replay.replay_effect(message, [requested()], NOW)

    assert effect is not None
    assert (effect.status_before, effect.status_after) == (
        saga.Status.REQUESTED,
        saga.Status.RESERVED,
    )
    assert effect.actions == (saga.AuthorizePayment(amount=ev.Money(4500, "EUR")),)
    assert not effect.already_in_log


def test_an_event_other_consumers_handled_is_noted_as_already_in_the_log() -> None:
    event = held(NOW + timedelta(seconds=1))
    message = dead_letters.read_dead_letter(
        record(local_codec().encode(event), failure_headers(consumer="payment")),
        local_codec(),
    )

    effect = replay.replay_effect(message, [requested(), event], NOW)

    assert effect is not None
    assert effect.already_in_log
    assert effect.status_before == saga.Status.REQUESTED  # the fold without it
    assert effect.note is not None
    assert "already in the event log" in effect.note


def test_an_event_before_its_request_waits() -> None:
    event = held(NOW)
    message = dead_letters.read_dead_letter(
        record(local_codec().encode(event), failure_headers()), local_codec()
    )

    effect = replay.replay_effect(message, [], NOW)

    assert effect is not None
    assert effect.status_after is None
    assert effect.note is not None
    assert "not in the log" in effect.note


def test_an_undecodable_message_has_no_saga_effect() -> None:
    assert replay.replay_effect(garbage(), [], NOW) is None


# --- the Schema Registry down while dead letters are read -----------------------------------


async def test_a_registry_outage_lists_dead_letters_instead_of_failing_the_read() -> None:
    import threading

    from tests.unit.test_codec_wire import FakeRegistry, codec_with

    fake = FakeRegistry()
    value = codec_with(fake).encode(requested())
    fake.down = True
    fake.threads.clear()
    codec = codec_with(fake)  # the operator's process: nothing cached yet
    letters = [record(value, failure_headers()), record(value, failure_headers())]

    first = await dead_letters._read_off_loop(letters[0], codec, ask_registry=True)
    asked = len(fake.requests)
    second = await dead_letters._read_off_loop(letters[1], codec, ask_registry=False)

    assert first.undecodable == dead_letters.REGISTRY_UNAVAILABLE
    assert second.undecodable == dead_letters.REGISTRY_UNAVAILABLE
    assert len(fake.requests) == asked  # the rest of a scan does not wait for the registry
    assert fake.threads
    assert threading.get_ident() not in fake.threads
    fake.down = False  # not remembered: the next read decodes it
    again = await dead_letters._read_off_loop(letters[0], codec, ask_registry=True)
    assert again.event == requested()
