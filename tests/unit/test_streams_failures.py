"""Retry and dead-letter bookkeeping: which error goes where, with which headers."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError

from erynoa import kafka as k
from erynoa.codec import UndecodableEvent
from erynoa.saga import SagaError
from erynoa.topics import Consumer
from streams import failures
from streams.failures import Origin, RetryableError, classify, next_hop

CONSUMER = Consumer(
    name="payment",
    group_id="erynoa-payment",
    consumes=("bookings",),
    retry_topics=("payment.retry.1s", "payment.retry.10s", "payment.retry.60s"),
    retry_delays_ms=(1_000, 10_000, 60_000),
    dead_letter_topic="payment.dlq",
)
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ORIGIN = Origin("bookings", 3, 42)


def header(hop: failures.Hop, name: str) -> str | None:
    return k.header(hop.headers, name)


@pytest.mark.parametrize(
    "error",
    [
        RetryableError("gateway 503"),
        TimeoutError(),
        ConnectionRefusedError(),
        OSError("network unreachable"),
        asyncpg.DeadlockDetectedError("deadlock"),
        asyncpg.SerializationError("could not serialize"),
        KafkaConnectionError(),
        smtplib.SMTPServerDisconnected(),
        smtplib.SMTPDataError(451, b"try later"),
    ],
)
def test_transient_errors_are_retryable(error: BaseException) -> None:
    assert classify(error) == "retryable"


@pytest.mark.parametrize(
    "error",
    [
        UndecodableEvent("not avro"),
        SagaError("no booking"),
        failures.PermanentError("refused"),
        smtplib.SMTPDataError(550, b"no such mailbox"),
        ValueError("a bug"),
        KeyError("a bug"),
    ],
)
def test_bad_input_and_bugs_are_permanent(error: BaseException) -> None:
    assert classify(error) == "permanent"


def test_a_first_failure_goes_to_the_first_tier_with_its_origin() -> None:
    hop = next_hop(CONSUMER, ORIGIN, [("x-request-id", b"req-1")], TimeoutError("slow"), NOW)
    assert hop.topic == "payment.retry.1s"
    assert not hop.dead_letter
    assert hop.attempts == 1
    assert header(hop, k.H_ATTEMPTS) == "1"
    assert header(hop, k.H_ERROR) == "TimeoutError: slow"
    assert header(hop, k.H_ERROR_CLASS) == "TimeoutError"
    assert header(hop, k.H_ERROR_KIND) == "retryable"
    assert header(hop, k.H_ORIGIN_TOPIC) == "bookings"
    assert header(hop, k.H_ORIGIN_PARTITION) == "3"
    assert header(hop, k.H_ORIGIN_OFFSET) == "42"
    assert header(hop, k.H_FIRST_FAILURE) == NOW.isoformat()
    assert header(hop, k.H_LAST_FAILURE) == NOW.isoformat()
    assert header(hop, k.H_NOT_BEFORE) == str(int((NOW + timedelta(seconds=1)).timestamp() * 1000))
    assert header(hop, k.H_CONSUMER) == "payment"
    assert header(hop, "x-request-id") == "req-1"  # context travels on


def test_later_failures_keep_the_first_origin_and_time_and_move_down_the_tiers() -> None:
    first = next_hop(CONSUMER, ORIGIN, [], TimeoutError(), NOW)
    later = NOW + timedelta(seconds=5)
    second = next_hop(
        CONSUMER, Origin("payment.retry.1s", 3, 7), first.headers, OSError("down"), later
    )
    assert second.topic == "payment.retry.10s"
    assert header(second, k.H_ATTEMPTS) == "2"
    assert header(second, k.H_ORIGIN_TOPIC) == "bookings"
    assert header(second, k.H_ORIGIN_OFFSET) == "42"
    assert header(second, k.H_FIRST_FAILURE) == NOW.isoformat()
    assert header(second, k.H_LAST_FAILURE) == later.isoformat()
    assert header(second, k.H_ERROR) == "OSError: down"
    # Each header appears once, however many hops a message made.
    names = [name for name, _ in second.headers]
    assert len(names) == len(set(names))


def test_after_the_last_tier_a_message_is_dead_lettered() -> None:
    headers: list[tuple[str, bytes]] = []
    topics = []
    for _ in range(4):
        hop = next_hop(CONSUMER, ORIGIN, headers, TimeoutError(), NOW)
        headers = hop.headers
        topics.append(hop.topic)
    assert topics == ["payment.retry.1s", "payment.retry.10s", "payment.retry.60s", "payment.dlq"]
    assert hop.dead_letter
    assert header(hop, k.H_ATTEMPTS) == "4"


def test_a_permanent_failure_is_dead_lettered_at_once() -> None:
    hop = next_hop(CONSUMER, ORIGIN, [], UndecodableEvent("garbage"), NOW)
    assert hop.topic == "payment.dlq"
    assert hop.dead_letter
    assert header(hop, k.H_ERROR_KIND) == "permanent"
    assert header(hop, k.H_ERROR_CLASS) == "UndecodableEvent"


def test_a_replayed_dead_letter_that_fails_again_goes_straight_back() -> None:
    # What `erynoa dlq replay` publishes: failure headers gone, attempts kept, a replay marker.
    replayed = [("x-request-id", b"req-1"), (k.H_ATTEMPTS, b"1"), (k.H_REPLAY, b"replay-7")]
    assert failures.is_final_attempt(CONSUMER, replayed)
    # Retryable or not, no tier starts over.
    hop = next_hop(CONSUMER, Origin("bookings", 3, 99), replayed, TimeoutError(), NOW)
    assert hop.topic == "payment.dlq"
    assert header(hop, k.H_ATTEMPTS) == "2"
    assert header(hop, k.H_ORIGIN_OFFSET) == "99"
    assert header(hop, k.H_REPLAY) == "replay-7"


def test_the_last_tier_is_the_final_attempt() -> None:
    assert not failures.is_final_attempt(CONSUMER, [])
    assert not failures.is_final_attempt(CONSUMER, [(k.H_ATTEMPTS, b"2")])
    assert failures.is_final_attempt(CONSUMER, [(k.H_ATTEMPTS, b"3")])
    assert not failures.is_final_attempt(CONSUMER, [(k.H_ATTEMPTS, b"garbage")])


def test_not_before_is_read_back_from_its_header() -> None:
    hop = next_hop(CONSUMER, ORIGIN, [], TimeoutError(), NOW)
    assert failures.not_before(hop.headers) == NOW + timedelta(seconds=1)
    assert failures.not_before([]) is None
    assert failures.not_before([(k.H_NOT_BEFORE, b"soon")]) is None


def test_long_error_messages_are_cut() -> None:
    hop = next_hop(CONSUMER, ORIGIN, [], RetryableError("x" * 5000), NOW)
    assert len(header(hop, k.H_ERROR) or "") <= 1000


def test_a_database_going_away_is_retryable_not_a_poison_message() -> None:
    # pg_ctl stop -m fast, a switchover, pg_terminate_backend; writes reaching an old primary.
    for error in (
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CrashShutdownError("crash"),
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
    ):
        assert classify(error) == "retryable", error


def test_a_record_the_broker_refuses_is_permanent_but_a_broker_away_is_not() -> None:
    from aiokafka import errors as kafka_errors

    assert classify(kafka_errors.MessageSizeTooLargeError()) == "permanent"
    assert classify(kafka_errors.KafkaTimeoutError()) == "retryable"
    assert classify(kafka_errors.NotEnoughReplicasError()) == "retryable"
