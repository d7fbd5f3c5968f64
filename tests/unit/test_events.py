"""Events as values and on the wire: Money, the envelope helpers, and the codec's round trip."""

from __future__ import annotations

import contextlib
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer

from erynoa import events as ev
from erynoa.codec import MAGIC, EventCodec, UndecodableEvent, UnencodableEvent, local_codec
from tests.builders import booking_requested

BERLIN_WINTER = timezone(timedelta(hours=1))
SLOT = datetime(2025, 3, 14, 9, 30, tzinfo=BERLIN_WINTER)
PRICE = ev.Money(4500, "EUR")
BOOKING = "3f2c8d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"


def booking_story() -> list[ev.Event]:
    """One of every event type, as a real saga would emit them (each caused by the request)."""
    booking_id = str(uuid.uuid4())
    requested = ev.make(
        ev.BookingRequested,
        booking_id=booking_id,
        producer="api",
        correlation_id=str(uuid.uuid4()),
        customer_id="usr_customer_7",
        service_id="svc_haircut_45",
        provider_id="usr_provider_3",
        slot_start=SLOT,
        slot_end=SLOT + timedelta(minutes=45),
        price=PRICE,
        payment_method="pm_card_visa",
        notes="Bitte klingeln, 2. OG, Tür links 🚪 (予約)",
        response_deadline_seconds=86_400,
        idempotency_key="idem-3f2a",
    )

    def step(cls: type[ev.BookingEvent], producer: str, **payload: Any) -> ev.BookingEvent:
        return ev.make(
            cls,
            cause=requested,
            producer=producer,
            event_id=ev.derived_event_id(booking_id, cls.event_type),
            **payload,
        )

    deadline = SLOT - timedelta(days=1)
    return [
        requested,
        booking_requested(
            customer_id="usr_customer_8",
            service_id="svc_massage_60",
            provider_id="usr_provider_4",
            slot_start=SLOT,
            price=ev.Money(0, "JPY"),
            response_deadline_seconds=600,
        ),
        step(
            ev.BookingCancellationRequested,
            "api",
            requested_by="usr_customer_7",
            requested_by_role="customer",
            reason="Plans changed",
        ),
        step(ev.SagaRetryRequested, "operator", step="payment", requested_by="usr_ops_1"),
        step(
            ev.ReservationHeld,
            "reservation",
            hold_id="hold_91",
            service_id="svc_haircut_45",
            slot_start=SLOT,
        ),
        step(
            ev.ReservationRejected,
            "reservation",
            service_id="svc_haircut_45",
            slot_start=SLOT,
            reason="no capacity left",
        ),
        step(ev.ReservationReleased, "reservation", hold_id=None, reason="nothing was held"),
        step(ev.ReservationConverted, "reservation", hold_id="hold_91"),
        step(ev.PaymentAuthorized, "payment", payment_id="pi_3Nx", amount=PRICE, gateway="stripe"),
        step(
            ev.PaymentActionRequired, "payment", payment_id="pi_3Nx", client_secret="pi_3Nx_secret"
        ),
        step(
            ev.PaymentFailed,
            "payment",
            reason_code="card_declined",
            reason="Your card was declined",
        ),
        step(ev.PaymentCaptured, "payment", payment_id="pi_3Nx", amount=PRICE),
        step(
            ev.PaymentCaptureFailed,
            "payment",
            payment_id="pi_3Nx",
            reason_code="expired",
            reason="authorization expired",
        ),
        step(ev.PaymentVoided, "payment"),
        step(ev.PaymentRefunded, "payment", payment_id="pi_3Nx", refund_id="re_1", amount=PRICE),
        step(
            ev.StripeEventReceived,
            "api",
            stripe_event_id="evt_1",
            stripe_event_type="payment_intent.amount_capturable_updated",
            payment_id="pi_3Nx",
            payment_status="requires_capture",
        ),
        step(
            ev.NotificationSent,
            "notification",
            notification_id="ntf_1",
            recipient_role="provider",
            channel="email",
            template="booking_requested_provider",
        ),
        step(
            ev.NotificationFailed,
            "notification",
            notification_id="ntf_2",
            recipient_role="customer",
            channel="webhook",
            template="booking_confirmed_customer",
            reason="HTTP 503 after 5 attempts",
        ),
        step(
            ev.ProviderResponseRequested,
            "provider_response",
            provider_id="usr_provider_3",
            deadline_at=deadline,
        ),
        step(ev.ProviderAccepted, "provider_response", provider_id="usr_provider_3"),
        step(ev.ProviderRejected, "provider_response", provider_id="usr_provider_3", reason=None),
        step(ev.ProviderTimedOut, "provider_response", deadline_at=deadline),
        step(
            ev.ProviderAnswerSubmitted,
            "api",
            provider_id="usr_provider_3",
            decision="reject",
            reason="Urlaub, on holiday",
        ),
        ev.make_catalog(
            ev.ServiceChanged,
            service_id="svc_haircut_45",
            producer="api",
            provider_id="usr_provider_3",
            name="Haarschnitt",
            description="Waschen, Schneiden, Föhnen",
            price=PRICE,
            duration_minutes=45,
            capacity_per_slot=2,
            response_deadline_seconds=86_400,
            active=True,
        ),
    ]


STORY = booking_story()


def _name(event: ev.Event) -> str:
    return event.event_type


# --- the codec on the wire ------------------------------------------------------------------


def test_the_story_covers_every_event_type() -> None:
    assert {type(event) for event in STORY} == set(ev.EVENT_TYPES.values())


@pytest.mark.parametrize("event", STORY, ids=_name)
def test_every_event_type_survives_a_round_trip(event: ev.Event) -> None:
    codec = local_codec()

    data = codec.encode(event)

    assert data[:2] == MAGIC
    assert data[2:10] == codec.fingerprint(event.event_type)
    assert codec.decode(data) == event


def test_round_trip_keeps_none_and_non_ascii_text() -> None:
    with_notes, without_notes = STORY[0], STORY[1]
    assert isinstance(with_notes, ev.BookingRequested)
    assert isinstance(without_notes, ev.BookingRequested)

    decoded = local_codec().decode(local_codec().encode(with_notes))
    assert isinstance(decoded, ev.BookingRequested)
    assert decoded.notes == "Bitte klingeln, 2. OG, Tür links 🚪 (予約)"
    empty = local_codec().decode(local_codec().encode(without_notes))
    assert isinstance(empty, ev.BookingRequested)
    assert (empty.notes, empty.idempotency_key, empty.causation_id) == (None, None, None)


def test_decoded_timestamps_are_utc_with_microseconds() -> None:
    event = ev.make(
        ev.ProviderTimedOut,
        booking_id=BOOKING,
        producer="provider_response",
        occurred_at=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=BERLIN_WINTER),
        deadline_at=datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    )

    decoded = local_codec().decode(local_codec().encode(event))

    assert decoded.occurred_at == datetime(2025, 1, 2, 2, 4, 5, 678901, tzinfo=UTC)
    assert decoded.occurred_at.tzinfo is UTC
    assert isinstance(decoded, ev.ProviderTimedOut)
    assert decoded.deadline_at == datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)


def test_encoding_the_same_event_twice_gives_the_same_bytes() -> None:
    # A redelivered handler re-emits byte-identical messages, so log compaction and dedup agree.
    assert local_codec().encode(STORY[3]) == local_codec().encode(STORY[3])


def test_encoding_an_event_without_a_loaded_schema_is_refused(tmp_path: Path) -> None:
    source = local_codec().schemas_dir / "ProviderAccepted.v1.avsc"
    (tmp_path / source.name).write_text(source.read_text())
    codec = EventCodec(tmp_path)

    with pytest.raises(UnencodableEvent, match="no schema loaded for PaymentVoided"):
        codec.encode(
            ev.PaymentVoided(
                event_id="e",
                booking_id=BOOKING,
                occurred_at=SLOT,
                correlation_id="c",
                producer="payment",
            )
        )


def _write_raw(kind: str, **overrides: object) -> bytes:
    """Bytes with a valid header but a body written straight with fastavro, bypassing checks."""
    codec = local_codec()
    event = next(e for e in STORY if e.event_type == kind)
    record: dict[str, object] = dict(vars(event))
    for name, value in record.items():
        if isinstance(value, ev.Money):
            record[name] = {"amount_minor": value.amount_minor, "currency": value.currency}
    record |= {"event_type": kind, "schema_version": 1} | overrides
    body = BytesIO()
    schemaless_writer(body, codec._writers[type(event)].parsed, record)
    return MAGIC + codec.fingerprint(kind) + body.getvalue()


VALID = local_codec().encode(STORY[0])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty message"),
        (b"\xc3\x01\x00", "shorter than the 10-byte header"),
        (b'{"event_type": "BookingRequested"}', "neither the Confluent magic byte 00 nor"),
        (b"\x01\x00\x00\x00\x01" + VALID[10:], "neither the Confluent magic byte 00 nor"),
        (b"\x00\x00\x00\x00\x01" + VALID[10:], "schema id 1, but no schema registry"),
        (b"\x00\x00\x01", "shorter than the Confluent 5-byte header"),
        (MAGIC + b"\xff" * 8 + VALID[10:], "unknown schema fingerprint ffffffffffffffff"),
        (VALID[:10], "corrupt or truncated body"),
        (VALID[:-1], "corrupt or truncated body"),
        (VALID[: len(VALID) // 2], "corrupt or truncated body"),
        (VALID + b"\x00", "1 bytes left after the record"),
        (_write_raw("PaymentCaptured", event_type="PaymentRefunded"), "envelope says"),
        (_write_raw("PaymentCaptured", schema_version=2), "envelope says"),
        (
            _write_raw("PaymentCaptured", amount={"amount_minor": -5, "currency": "EUR"}),
            "amount_minor must be between 0",
        ),
        (_write_raw("NotificationSent", channel="pigeon"), "channel must be one of"),
        (_write_raw("PaymentCaptured", booking_id=BOOKING.upper()), "booking_id must be a UUID"),
        (_write_raw("PaymentCaptured", booking_id="b-1"), "booking_id must be a UUID"),
        (VALID.replace(b"pm_card_visa", b"\xffm_card_visa"), "corrupt or truncated body"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_undecodable_bytes_raise_undecodable_event(data: bytes, reason: str) -> None:
    with pytest.raises(UndecodableEvent, match=reason) as caught:
        local_codec().decode(data)
    assert caught.value.reason == str(caught.value)


def test_decoding_random_garbage_never_raises_anything_but_undecodable_event() -> None:
    rng = random.Random(20250314)
    codec = local_codec()
    header = VALID[:10]
    for _ in range(2_000):
        body = rng.randbytes(rng.randrange(0, 80))
        for data in (body, header + body, VALID[: rng.randrange(len(VALID))] + body):
            with contextlib.suppress(UndecodableEvent):
                codec.decode(data)


# --- Money ----------------------------------------------------------------------------------


def test_money_holds_integer_minor_units_and_a_currency() -> None:
    assert ev.Money(0, "JPY").amount_minor == 0
    assert ev.Money(4500, "EUR") == ev.Money(4500, "EUR")


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        (45.0, "EUR", "must be an int number of minor units"),
        (True, "EUR", "must be an int number of minor units"),
        ("4500", "EUR", "must be an int number of minor units"),
        (-1, "EUR", "between 0 and 2\\*\\*63-1"),
        (2**63, "EUR", "between 0 and 2\\*\\*63-1"),
        (4500, "eur", "three upper-case letters"),
        (4500, "EURO", "three upper-case letters"),
        (4500, "€", "three upper-case letters"),
        (4500, "ÄÖÜ", "three upper-case letters"),
        (4500, None, "three upper-case letters"),
    ],
)
def test_money_rejects_floats_negatives_and_bad_currencies(
    amount: object, currency: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ev.Money(amount, currency)  # type: ignore[arg-type]


# --- events as values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "booking_id", [BOOKING.upper(), "{" + BOOKING + "}", BOOKING.replace("-", ""), "b-1", ""]
)
def test_a_booking_id_is_a_uuid_in_its_one_canonical_spelling(booking_id: str) -> None:
    """It is the partition key and the agents' lock key: two spellings of one booking would
    land in two partitions and take two locks."""
    with pytest.raises(ValueError, match="booking_id must be a UUID in lower-case hyphenated"):
        ev.make(ev.ProviderAccepted, booking_id=booking_id, producer="api", provider_id="p")


def _envelope(**overrides: object) -> dict[str, object]:
    return {
        "event_id": "e-1",
        "booking_id": BOOKING,
        "occurred_at": SLOT,
        "correlation_id": "c-1",
        "producer": "test",
    } | overrides


def test_events_refuse_naive_datetimes() -> None:
    with pytest.raises(TypeError, match="occurred_at must be a timezone-aware datetime"):
        ev.ProviderAccepted(**_envelope(occurred_at=datetime(2025, 1, 1)), provider_id="p")  # type: ignore[arg-type]


def test_events_store_timestamps_in_utc() -> None:
    event = ev.ProviderAccepted(**_envelope(), provider_id="p")  # type: ignore[arg-type]
    assert event.occurred_at.tzinfo is UTC
    assert event.occurred_at == SLOT


@pytest.mark.parametrize(
    ("cls", "payload", "error", "message"),
    [
        (
            ev.BookingCancellationRequested,
            {"requested_by": "u", "requested_by_role": "guest"},
            ValueError,
            "requested_by_role must be one of",
        ),
        (
            ev.ProviderAnswerSubmitted,
            {"provider_id": "p", "decision": "maybe"},
            ValueError,
            "decision",
        ),
        (ev.ProviderAccepted, {"provider_id": None}, TypeError, "provider_id is required"),
        (
            ev.PaymentCaptured,
            {"payment_id": "pi", "amount": 4500},
            TypeError,
            "amount must be Money",
        ),
        (
            ev.ServiceChanged,
            {
                "provider_id": "p",
                "name": "n",
                "description": "d",
                "price": PRICE,
                "duration_minutes": 45.0,
                "capacity_per_slot": 1,
                "response_deadline_seconds": 1,
                "active": True,
            },
            TypeError,
            "duration_minutes must be an int",
        ),
    ],
)
def test_events_refuse_values_their_schema_cannot_carry(
    cls: type[ev.Event], payload: dict[str, object], error: type[Exception], message: str
) -> None:
    envelope = _envelope()
    if cls is ev.ServiceChanged:
        envelope["service_id"] = envelope.pop("booking_id")
    with pytest.raises(error, match=message):
        cls(**envelope, **payload)  # type: ignore[arg-type]


def test_the_abstract_envelope_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError, match="abstract"):
        ev.BookingEvent(**_envelope())  # type: ignore[arg-type]


def test_events_are_immutable() -> None:
    with pytest.raises(AttributeError):
        STORY[0].producer = "someone else"  # type: ignore[misc]


def test_event_types_registry_is_keyed_by_each_class_event_type() -> None:
    assert all(cls.event_type == name for name, cls in ev.EVENT_TYPES.items())
    assert len(ev.EVENT_TYPES) == 23


def test_booking_events_are_keyed_by_booking_and_catalog_events_by_service() -> None:
    assert STORY[0].key == STORY[0].booking_id  # type: ignore[attr-defined]
    assert STORY[-1].key == "svc_haircut_45"


# --- make and derived ids -------------------------------------------------------------------


def test_an_event_made_from_a_cause_continues_its_saga() -> None:
    requested = STORY[0]
    assert isinstance(requested, ev.BookingRequested)

    held = ev.make(
        ev.ReservationHeld,
        cause=requested,
        producer="reservation",
        hold_id="hold_1",
        service_id=requested.service_id,
        slot_start=requested.slot_start,
    )

    assert held.booking_id == requested.booking_id
    assert held.correlation_id == requested.correlation_id
    assert held.causation_id == requested.event_id
    assert held.producer == "reservation"
    assert held.event_id != requested.event_id


def test_an_event_made_without_a_cause_starts_a_new_correlation() -> None:
    before = datetime.now(UTC)
    first = ev.make(ev.ProviderAccepted, booking_id=BOOKING, producer="api", provider_id="p")
    second = ev.make(ev.ProviderAccepted, booking_id=BOOKING, producer="api", provider_id="p")

    assert first.causation_id is None
    assert first.correlation_id != second.correlation_id
    uuid.UUID(first.correlation_id)
    uuid.UUID(first.event_id)
    assert before <= first.occurred_at <= datetime.now(UTC)


def test_make_keeps_an_explicit_correlation_id_event_id_and_time() -> None:
    event = ev.make(
        ev.ProviderAccepted,
        booking_id=BOOKING,
        producer="api",
        correlation_id="req-42",
        event_id="e-42",
        occurred_at=SLOT,
        provider_id="p",
    )
    assert (event.correlation_id, event.event_id, event.occurred_at) == ("req-42", "e-42", SLOT)


def test_make_refuses_a_correlation_id_that_contradicts_the_cause() -> None:
    with pytest.raises(ValueError, match="either cause or correlation_id"):
        ev.make(
            ev.ProviderAccepted,
            cause=STORY[0],
            producer="x",
            correlation_id="other",
            provider_id="p",
        )


def test_make_needs_a_booking_id_without_a_booking_cause() -> None:
    with pytest.raises(TypeError, match="booking_id is required"):
        ev.make(ev.ProviderAccepted, producer="x", provider_id="p")


def test_make_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError, match="colour"):
        ev.make(
            ev.ProviderAccepted, booking_id=BOOKING, producer="x", provider_id="p", colour="red"
        )


def test_a_redelivered_step_derives_the_same_event_id() -> None:
    first = ev.derived_event_id("booking-1", "payment.authorized")

    assert ev.derived_event_id("booking-1", "payment.authorized") == first
    assert uuid.UUID(first).version == 5
    assert ev.derived_event_id("booking-1", "payment.captured") != first
    assert ev.derived_event_id("booking-2", "payment.authorized") != first
    # The separator keeps ("a/b", "c") and ("a", "b/c") apart.
    assert ev.derived_event_id("a/b", "c") != ev.derived_event_id("a", "b/c")
