"""Request bodies refuse what could not be stored; every documented example is valid; the
admin's notion of "in flight" matches the saga's statuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from api.envelopes import Accepted
from api.routes.admin import Stats, Workflow, WorkflowAction
from api.routes.auth import Discovery, Jwks, LoggedOut, Token, TokenRequest, UserInfo
from api.routes.bookings import Booking, BookingCreate, ReasonBody
from api.routes.health import Health, Live, Ready, Version
from api.routes.payments import Intent, IntentRequest, PaymentStatus
from api.routes.services import Service, ServiceIn, ServiceUpdate
from api.routes.users import ProfileUpdate, User
from api.routes.webhooks import WebhookReceipt
from api.schemas import Money

DOCUMENTED: list[type[BaseModel]] = [
    Accepted,
    Stats,
    Workflow,
    WorkflowAction,
    Discovery,
    Jwks,
    LoggedOut,
    Token,
    TokenRequest,
    UserInfo,
    ReasonBody,
    Booking,
    BookingCreate,
    Health,
    Live,
    Ready,
    Version,
    Intent,
    IntentRequest,
    PaymentStatus,
    Service,
    ServiceIn,
    ServiceUpdate,
    ProfileUpdate,
    User,
    WebhookReceipt,
    Money,
]


@pytest.mark.parametrize("model", DOCUMENTED, ids=lambda m: m.__name__)
def test_documented_examples_are_valid(model: type[BaseModel]) -> None:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict), f"{model.__name__} documents no example"
    examples = extra["examples"]
    assert isinstance(examples, list)
    assert examples
    for example in examples:
        model.model_validate(example)


BOOKING = {
    "service_id": "5e3f2a4b-7c1d-4e8f-9a0b-1c2d3e4f5a6b",
    "slot_start": "2030-02-03T14:30:00+01:00",
    "payment_method": "pm_card_visa",
}


@pytest.mark.parametrize(
    "change",
    [
        {"slot_start": "2030-02-03T14:30:00"},  # no offset
        {"slot_start": "0001-01-01T00:00:00+01:00"},  # no UTC equivalent
        {"slot_start": "9999-12-31T23:59:59-01:00"},
        {"notes": "nul\x00"},
        {"notes": "lone \ud800 surrogate"},
        {"notes": "x" * 2001},
        {"payment_method": "pm card"},
        {"unknown": 1},
    ],
)
def test_booking_bodies_refuse_unstorable_input(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BookingCreate.model_validate(BOOKING | change)


def test_a_valid_booking_body() -> None:
    body = BookingCreate.model_validate(BOOKING | {"notes": "Zweiter Stock, Türcode 4711"})
    assert body.slot_start.isoformat() == "2030-02-03T13:30:00+00:00"


@pytest.mark.parametrize(
    "amount", [10.0, "100", True, -1, 10**12 + 1], ids=["float", "str", "bool", "neg", "huge"]
)
def test_money_is_strict_integer_minor_units(amount: object) -> None:
    with pytest.raises(ValidationError):
        Money.model_validate({"amount": amount, "currency": "EUR"})
