"""The booking saga's events as typed, immutable Python values.

One frozen dataclass per event type, named in the past tense, mirroring ``schemas/<Type>.vN.avsc``
field for field (``erynoa.codec`` checks that at start-up). Every event carries the envelope
(``event_id``, ``booking_id`` or ``service_id``, ``occurred_at``, ``correlation_id``,
``causation_id``, ``producer``); ``event_type`` (the class name) and ``schema_version`` are class
constants.

Pure: no I/O. Producers build events with ``make`` (it fills in the envelope from the event being
handled) and give every event they may emit twice a ``derived_event_id``, so a redelivered message
re-emits the *same* event and downstream deduplication turns it into a no-op::

    held = make(
        ReservationHeld,
        cause=requested,
        producer="reservation",
        event_id=derived_event_id(requested.booking_id, "reservation.held"),
        hold_id=hold_id,
        service_id=requested.service_id,
        slot_start=requested.slot_start,
    )
"""

from __future__ import annotations

import re
import types
import typing
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

__all__ = [
    "EVENT_TYPES",
    "BookingCancellationRequested",
    "BookingEvent",
    "BookingRequested",
    "CatalogEvent",
    "Channel",
    "Decision",
    "Event",
    "FieldSpec",
    "Money",
    "NotificationFailed",
    "NotificationSent",
    "PaymentActionRequired",
    "PaymentAuthorized",
    "PaymentCaptureFailed",
    "PaymentCaptured",
    "PaymentFailed",
    "PaymentRefunded",
    "PaymentVoided",
    "ProviderAccepted",
    "ProviderAnswerSubmitted",
    "ProviderRejected",
    "ProviderResponseRequested",
    "ProviderTimedOut",
    "RecipientRole",
    "RequesterRole",
    "ReservationConverted",
    "ReservationHeld",
    "ReservationRejected",
    "ReservationReleased",
    "SagaRetryRequested",
    "ServiceChanged",
    "StripeEventReceived",
    "derived_event_id",
    "field_specs",
    "format_money",
    "make",
    "make_catalog",
    "minor_digits",
]

# The schemas carry these as plain strings (Avro enums are awkward to extend compatibly); the
# Literal types give producers a type check and the constructors reject anything else.
RequesterRole = Literal["customer", "provider", "admin", "operator"]
RecipientRole = Literal["provider", "customer"]
Channel = Literal["email", "webhook"]
Decision = Literal["accept", "reject"]

_CURRENCY = re.compile(r"[A-Z]{3}")
# ISO 4217 minor-unit exponents that are not 2 (the list's other currencies all use cents).
_MINOR_DIGITS: dict[str, int] = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}
# Avro `long` is a signed 64-bit integer; anything larger could never be encoded.
_MAX_LONG = 2**63 - 1

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units (cents; yen for JPY) and its ISO 4217 currency code.

    Never a float: 0.1 + 0.2 != 0.3, and a booking is charged exactly what it was quoted.
    """

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; Money(True, "EUR") is always a bug.
        if type(self.amount_minor) is not int:
            raise ValueError(
                f"Money.amount_minor must be an int number of minor units (cents), "
                f"got {type(self.amount_minor).__name__} {self.amount_minor!r}"
            )
        if not 0 <= self.amount_minor <= _MAX_LONG:
            raise ValueError(
                f"Money.amount_minor must be between 0 and 2**63-1, got {self.amount_minor}"
            )
        if not isinstance(self.currency, str) or not _CURRENCY.fullmatch(self.currency):
            raise ValueError(
                f"Money.currency must be an ISO 4217 code of three upper-case letters "
                f"like 'EUR', got {self.currency!r}"
            )


def minor_digits(currency: str) -> int:
    """How many digits of ``currency`` are minor units (ISO 4217: 2 for EUR, 0 for JPY)."""
    return _MINOR_DIGITS.get(currency, 2)


def format_money(money: Money) -> str:
    """``Money(4500, "EUR")`` → "45.00 EUR"; ``Money(4500, "JPY")`` → "4,500 JPY"."""
    digits = minor_digits(money.currency)
    major = Decimal(money.amount_minor).scaleb(-digits)
    return f"{major:,.{digits}f} {money.currency}"


class FieldSpec(NamedTuple):
    """What one event field may hold; derived from the dataclass annotations.

    ``kind`` is the Python type of a present value (``str``, ``int``, ``bool``, ``datetime`` or
    ``Money``); ``allowed`` lists the permitted values of a Literal-typed field.
    """

    name: str
    kind: type
    optional: bool
    allowed: frozenset[str] | None


_SPECS: dict[type, tuple[FieldSpec, ...]] = {}


def field_specs(cls: type[Event]) -> tuple[FieldSpec, ...]:
    """The fields of an event class (envelope included) with their kinds, in declaration order."""
    specs = _SPECS.get(cls)
    if specs is None:
        hints = typing.get_type_hints(cls)
        specs = tuple(_spec(cls, f.name, hints[f.name]) for f in fields(cls))
        _SPECS[cls] = specs
    return specs


def _spec(cls: type, name: str, annotation: Any) -> FieldSpec:
    optional = False
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) != 1:
            raise TypeError(f"{cls.__name__}.{name}: unions other than `X | None` are unsupported")
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"{cls.__name__}.{name}: only string Literals are supported")
        return FieldSpec(name, str, optional, frozenset(values))
    if annotation not in (str, int, bool, datetime, Money):
        raise TypeError(f"{cls.__name__}.{name}: unsupported field type {annotation!r}")
    return FieldSpec(name, annotation, optional, None)


def _check_fields(event: Event) -> None:
    """Reject values the schema could not carry, at construction rather than at encode time."""
    owner = type(event).__name__
    for name, kind, optional, allowed in field_specs(type(event)):
        value = getattr(event, name)
        if value is None:
            if optional:
                continue
            raise TypeError(f"{owner}.{name} is required, got None")
        if kind is datetime:
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise TypeError(f"{owner}.{name} must be a timezone-aware datetime, got {value!r}")
            if value.tzinfo is not UTC:
                # Normalise so that equal instants compare and print the same after a round trip
                # (the wire carries UTC microseconds, decoding always yields UTC).
                object.__setattr__(event, name, value.astimezone(UTC))
        elif kind is int:
            if type(value) is not int:
                raise TypeError(f"{owner}.{name} must be an int, got {value!r}")
        elif not isinstance(value, kind):
            raise TypeError(f"{owner}.{name} must be {kind.__name__}, got {value!r}")
        if allowed is not None and value not in allowed:
            raise ValueError(f"{owner}.{name} must be one of {sorted(allowed)}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Event:
    """The envelope every event carries; use a concrete subclass, never this class itself."""

    event_type: ClassVar[str]
    schema_version: ClassVar[int]

    event_id: str
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None = None
    producer: str

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        # A concrete event's type is its class name, so the two can never disagree; a class
        # that models a later version of an event subclasses it, keeping the type and setting
        # ``schema_version`` itself.
        if not hasattr(cls, "event_type"):
            cls.event_type = cls.__name__
        if not hasattr(cls, "schema_version"):
            cls.schema_version = 1

    def __post_init__(self) -> None:
        if not hasattr(type(self), "event_type"):
            raise TypeError(f"{type(self).__name__} is abstract; build a concrete event type")
        _check_fields(self)

    @property
    def key(self) -> str:
        """The Kafka message key (the aggregate's id)."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class BookingEvent(Event, abstract=True):
    """An event in one booking's saga; keyed, partitioned and ordered by ``booking_id``."""

    booking_id: str

    def __post_init__(self) -> None:
        super().__post_init__()
        # The booking id is the Kafka key (its partition), the agents' lock key and a uuid
        # column: another spelling of the same UUID (upper case, braces) would land in another
        # partition and take another lock than the booking's other events.
        if _CANONICAL_UUID.fullmatch(self.booking_id) is None:
            raise ValueError(
                f"{type(self).__name__}.booking_id must be a UUID in lower-case hyphenated form, "
                f"got {self.booking_id!r}"
            )

    @property
    def key(self) -> str:
        return self.booking_id


@dataclass(frozen=True, kw_only=True)
class CatalogEvent(Event, abstract=True):
    """A change to the service catalog; keyed by ``service_id`` (not part of any saga)."""

    service_id: str

    @property
    def key(self) -> str:
        return self.service_id


# --- bookings -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BookingRequested(BookingEvent):
    """A customer asked to book a slot; the API validated it against the catalog."""

    customer_id: str
    service_id: str
    provider_id: str
    slot_start: datetime
    slot_end: datetime
    price: Money
    payment_method: str
    notes: str | None = None
    response_deadline_seconds: int
    idempotency_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class BookingCancellationRequested(BookingEvent):
    """Someone asked to cancel the booking; compensations run for whatever was done so far."""

    requested_by: str
    requested_by_role: RequesterRole
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class SagaRetryRequested(BookingEvent):
    """An operator asked to re-run one step of a stuck or failed saga."""

    step: str
    requested_by: str


# --- reservations ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReservationHeld(BookingEvent):
    hold_id: str
    service_id: str
    slot_start: datetime


@dataclass(frozen=True, kw_only=True)
class ReservationRejected(BookingEvent):
    """No capacity was left for the slot (or the slot is unknown)."""

    service_id: str
    slot_start: datetime
    reason: str


@dataclass(frozen=True, kw_only=True)
class ReservationReleased(BookingEvent):
    """The hold was given back; ``hold_id`` is None when there was nothing to release."""

    hold_id: str | None = None
    reason: str


@dataclass(frozen=True, kw_only=True)
class ReservationConverted(BookingEvent):
    """The hold became a confirmed booking's seat."""

    hold_id: str


# --- payments -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PaymentAuthorized(BookingEvent):
    payment_id: str
    amount: Money
    gateway: str


@dataclass(frozen=True, kw_only=True)
class PaymentActionRequired(BookingEvent):
    """The customer must act (e.g. 3-D Secure); a Stripe webhook resolves it later."""

    payment_id: str
    client_secret: str | None = None


@dataclass(frozen=True, kw_only=True)
class PaymentFailed(BookingEvent):
    """Authorization failed; ``payment_id`` is None when the gateway never created a payment."""

    payment_id: str | None = None
    reason_code: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class PaymentCaptured(BookingEvent):
    payment_id: str
    amount: Money


@dataclass(frozen=True, kw_only=True)
class PaymentCaptureFailed(BookingEvent):
    payment_id: str
    reason_code: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class PaymentVoided(BookingEvent):
    """The authorization was cancelled; ``payment_id`` is None when nothing was authorized."""

    payment_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class PaymentRefunded(BookingEvent):
    payment_id: str
    refund_id: str
    amount: Money


# --- payment webhooks -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StripeEventReceived(BookingEvent):
    """A verified, deduplicated Stripe webhook about this booking's payment."""

    stripe_event_id: str
    stripe_event_type: str
    payment_id: str
    payment_status: str


# --- notifications --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NotificationSent(BookingEvent):
    notification_id: str
    recipient_role: RecipientRole
    channel: Channel
    template: str


@dataclass(frozen=True, kw_only=True)
class NotificationFailed(BookingEvent):
    """Delivery was given up on after its retries."""

    notification_id: str
    recipient_role: RecipientRole
    channel: Channel
    template: str
    reason: str


# --- provider responses ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProviderResponseRequested(BookingEvent):
    """The saga now waits for the provider's answer until ``deadline_at``."""

    provider_id: str
    deadline_at: datetime


@dataclass(frozen=True, kw_only=True)
class ProviderAccepted(BookingEvent):
    provider_id: str


@dataclass(frozen=True, kw_only=True)
class ProviderRejected(BookingEvent):
    provider_id: str
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class ProviderTimedOut(BookingEvent):
    deadline_at: datetime


@dataclass(frozen=True, kw_only=True)
class ProviderAnswerSubmitted(BookingEvent):
    """The provider answered through the API; the provider_response agent decides what it means
    (an answer after the deadline changes nothing)."""

    provider_id: str
    decision: Decision
    reason: str | None = None


# --- catalog --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServiceChanged(CatalogEvent):
    """The full current state of one service (created, edited or deactivated)."""

    provider_id: str
    name: str
    description: str
    price: Money
    duration_minutes: int
    capacity_per_slot: int
    response_deadline_seconds: int
    active: bool


EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        BookingRequested,
        BookingCancellationRequested,
        SagaRetryRequested,
        ReservationHeld,
        ReservationRejected,
        ReservationReleased,
        ReservationConverted,
        PaymentAuthorized,
        PaymentActionRequired,
        PaymentFailed,
        PaymentCaptured,
        PaymentCaptureFailed,
        PaymentVoided,
        PaymentRefunded,
        StripeEventReceived,
        NotificationSent,
        NotificationFailed,
        ProviderResponseRequested,
        ProviderAccepted,
        ProviderRejected,
        ProviderTimedOut,
        ProviderAnswerSubmitted,
        ServiceChanged,
    )
}
"""Every concrete event class by its ``event_type``."""


# A fixed namespace for derived ids. Never change it: ids derived before and after a change would
# differ, and a redelivery across a deploy would then emit a duplicate event.
_EVENT_ID_NAMESPACE = uuid.UUID("6f1c0b8e-3c57-5a0e-9d55-4a1e2b7c9f10")


def derived_event_id(booking_id: str, step: str) -> str:
    """A deterministic event id (uuid5) for the event a saga step emits for one booking.

    A handler that runs again for the same message (at-least-once delivery) derives the same id,
    so downstream deduplication drops the repeat. ``step`` must name the emitted event uniquely
    within the booking, e.g. ``"payment.authorized"``; when a step may legitimately run again
    (an operator retry), include what makes the run distinct, e.g. the retry event's id.
    """
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{booking_id}\x1f{step}"))


B = TypeVar("B", bound=BookingEvent)
C = TypeVar("C", bound=CatalogEvent)


def _envelope(
    *,
    producer: str,
    cause: Event | None,
    event_id: str | None,
    occurred_at: datetime | None,
    correlation_id: str | None,
) -> dict[str, Any]:
    if cause is not None:
        if correlation_id is not None and correlation_id != cause.correlation_id:
            raise ValueError("pass either cause or correlation_id: a saga keeps one correlation id")
        correlation_id = cause.correlation_id
    return {
        "event_id": event_id if event_id is not None else str(uuid.uuid4()),
        "occurred_at": occurred_at if occurred_at is not None else datetime.now(UTC),
        "correlation_id": correlation_id if correlation_id is not None else str(uuid.uuid4()),
        "causation_id": cause.event_id if cause is not None else None,
        "producer": producer,
    }


def make(
    cls: type[B],
    *,
    producer: str,
    booking_id: str | None = None,
    cause: Event | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    correlation_id: str | None = None,
    **payload: Any,
) -> B:
    """Build a booking event, filling in the envelope.

    With ``cause`` (the event being handled) the new event inherits its correlation id, points
    back at it through ``causation_id`` and, if ``booking_id`` is omitted, its booking. Without a
    cause (a client or operator request) the correlation id is ``correlation_id`` or a fresh one.
    ``event_id`` defaults to a random uuid4 and ``occurred_at`` to now (UTC).
    """
    if booking_id is None:
        if not isinstance(cause, BookingEvent):
            raise TypeError(f"make({cls.__name__}): booking_id is required without a booking cause")
        booking_id = cause.booking_id
    envelope = _envelope(
        producer=producer,
        cause=cause,
        event_id=event_id,
        occurred_at=occurred_at,
        correlation_id=correlation_id,
    )
    return cls(booking_id=booking_id, **envelope, **payload)


def make_catalog(
    cls: type[C],
    *,
    service_id: str,
    producer: str,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    correlation_id: str | None = None,
    **payload: Any,
) -> C:
    """Build a catalog event, filling in the envelope (like ``make``, without a cause)."""
    envelope = _envelope(
        producer=producer,
        cause=None,
        event_id=event_id,
        occurred_at=occurred_at,
        correlation_id=correlation_id,
    )
    return cls(service_id=service_id, **envelope, **payload)
