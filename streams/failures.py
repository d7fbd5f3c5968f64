"""What happens to a message an agent could not process: classify the error, pick the next hop.

Pure bookkeeping, no I/O (``streams.runtime`` does the sending). A failed message is never
retried in place, so one poison message cannot block its partition:

* **retryable** errors (network, timeouts, a gateway's 5xx, an SMTP 4xx, a lost database
  connection, a deadlock) move the *original bytes* down the consumer's retry tiers from
  ``topics.yaml`` (``<consumer>.retry.<delay>``), then to ``<consumer>.dlq``;
* **permanent** errors (undecodable bytes, an event no saga rule accepts, a bug) go to the
  dead-letter topic at once, where ``erynoa dlq`` can inspect and replay them.

Headers say why, where from and how often (names in ``erynoa.kafka``). The origin
(topic, partition, offset) and the first failure time are those of the *first* failure and
are kept across tiers, and the attempt count survives a DLQ replay (``ops.dlq``), whose
``erynoa-replay`` marker sends a message that fails again straight back to the dead-letter topic
instead of starting the tiers over.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg
from aiokafka.errors import KafkaError

from erynoa import kafka as k
from erynoa.codec import UndecodableEvent
from erynoa.kafka import KAFKA_REFUSALS
from erynoa.saga import SagaError
from erynoa.topics import Consumer

ErrorKind = Literal["retryable", "permanent"]


class RetryableError(Exception):
    """A failure that may well succeed later: raise it (or a subclass) from adapters."""


class PermanentError(Exception):
    """A failure that will fail the same way every time (bad input, a refused request)."""


_RETRYABLE: tuple[type[BaseException], ...] = (
    RetryableError,
    TimeoutError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,  # socket errors from any client library
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.QueryCanceledError,
    # The server going away under us: a shutdown (pg_ctl stop, a failover's switchover, an
    # administrator's pg_terminate_backend), or writes reaching an old primary now read-only.
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
)


def classify(error: BaseException) -> ErrorKind:
    """Retryable or permanent. Anything unknown is permanent: a bug does not heal with time,
    and the dead-letter topic keeps the message for a replay once it is fixed."""
    if isinstance(error, UndecodableEvent | SagaError | PermanentError):
        return "permanent"
    if isinstance(error, KafkaError):
        # Publishing the handler's result failed: the broker is unwell, not the message —
        # unless the broker refused the record itself, which it will do every time.
        return "permanent" if isinstance(error, KAFKA_REFUSALS) else "retryable"
    if isinstance(error, smtplib.SMTPResponseException):
        return "retryable" if 400 <= error.smtp_code < 500 else "permanent"
    return "retryable" if isinstance(error, _RETRYABLE) else "permanent"


class RecordedFailure(Exception):
    """A failure an adapter gave up on, as its batch's commit recorded it (``agent_gave_up``):
    what a redelivery routes when the worker died before routing the failure itself."""

    def __init__(self, error_class: str, description: str) -> None:
        super().__init__(description)
        self.error_class = error_class
        self.description = description


def error_class(error: BaseException) -> str:
    """The class name the failure headers and logs carry (the original's, for a recorded one)."""
    return error.error_class if isinstance(error, RecordedFailure) else type(error).__name__


def describe(error: BaseException) -> str:
    if isinstance(error, RecordedFailure):
        return error.description[: k.MAX_ERROR_LEN]
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text[: k.MAX_ERROR_LEN]


Origin = k.LogPosition
"""Where a failed message was consumed from."""


@dataclass(frozen=True)
class Hop:
    """Where a failed message goes next, with the headers it carries there."""

    topic: str
    headers: list[tuple[str, bytes]]
    attempts: int
    dead_letter: bool
    not_before: datetime


def is_final_attempt(consumer: Consumer, headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Whether a retryable failure of this delivery would go to the dead-letter topic."""
    return k.attempts_so_far(headers) >= len(consumer.retry_topics) or _replayed(headers)


def _replayed(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    # `erynoa dlq replay` marks what it re-drives: it already had its retries, so failing
    # again sends it straight back to the dead-letter topic (its attempt count continued).
    return k.header(headers, k.H_REPLAY) is not None


def not_before(headers: Sequence[tuple[str, bytes]] | None) -> datetime | None:
    raw = k.header(headers, k.H_NOT_BEFORE)
    try:
        return datetime.fromtimestamp(int(raw) / 1000, UTC) if raw is not None else None
    except (ValueError, OverflowError):
        return None


def next_hop(
    consumer: Consumer,
    origin: Origin,
    headers: Sequence[tuple[str, bytes]] | None,
    error: BaseException,
    now: datetime,
    kind: ErrorKind | None = None,
) -> Hop:
    """The retry tier (or the DLQ) for a message whose handling raised ``error``."""
    kind = kind or classify(error)
    attempts = k.attempts_so_far(headers) + 1
    tier = attempts - 1
    dead = kind == "permanent" or tier >= len(consumer.retry_topics) or _replayed(headers)
    if dead:
        topic, delay_ms = consumer.dead_letter_topic, 0
    else:
        topic, delay_ms = consumer.retry_topics[tier], consumer.retry_delays_ms[tier]
    due = now + timedelta(milliseconds=delay_ms)
    kept = k.failure_headers(
        headers,
        origin=(origin.topic, origin.partition, origin.offset),
        consumer=consumer.name,
        error=describe(error),
        error_class=error_class(error),
        error_kind=kind,
        now=now,
        not_before=due,
    )
    return Hop(topic=topic, headers=kept, attempts=attempts, dead_letter=dead, not_before=due)
