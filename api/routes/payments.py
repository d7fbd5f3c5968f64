"""Payments as the booking's customer sees them; the payment agent does the actual work.

``POST /payments/intent`` hands a customer whose booking needs them to act (3-D Secure) what
their client needs to confirm the PaymentIntent the payment agent created: its id and client
secret, read from the ``PaymentActionRequired`` event in the booking's history. Nothing is
created here. ``GET /payments/{id}`` reports the payment's state from the read model, and the
sandbox gateway's ledger entries where it is the gateway.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CurrentUser, CustomerUser, Db, SettingsDep
from api.envelopes import Envelope, conflict, errors, forbidden, not_found, ok
from api.readmodel import BOOKING_COLUMNS
from api.routes.bookings import can_see, visible_booking
from api.schemas import Body, Money
from erynoa.saga import Payment, Status

# Every route needs a verified caller (401) and PostgreSQL and Redis (503).
router = APIRouter(prefix="/payments", tags=["payments"], responses=errors(401, 503))


class IntentRequest(Body):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"booking_id": "0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e"}]}
    )

    booking_id: uuid.UUID


class Intent(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "booking_id": "0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e",
                    "payment_id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
                    "client_secret": "pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH",
                    "status": "requires_action",
                    "amount": {"amount": 4500, "currency": "EUR"},
                    "gateway": "stripe",
                }
            ]
        }
    )

    booking_id: uuid.UUID
    payment_id: str
    client_secret: str | None = Field(description="confirm the intent with it in Stripe.js")
    status: str = "requires_action"
    amount: Money
    gateway: str


class LedgerEntry(BaseModel):
    operation: str
    outcome: str
    amount: Money
    at: datetime


class PaymentStatus(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "booking_id": "0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e",
                    "payment_id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
                    "status": "captured",
                    "booking_status": "confirmed",
                    "amount": {"amount": 4500, "currency": "EUR"},
                    "captured": {"amount": 4500, "currency": "EUR"},
                    "refunded": {"amount": 0, "currency": "EUR"},
                    "ledger": [
                        {
                            "operation": "authorize",
                            "outcome": "authorized",
                            "amount": {"amount": 4500, "currency": "EUR"},
                            "at": "2026-01-28T10:00:01Z",
                        }
                    ],
                }
            ]
        }
    )

    booking_id: uuid.UUID
    payment_id: str | None
    status: Payment = Field(description="the payment's state in the booking saga")
    booking_status: Status
    amount: Money
    captured: Money
    refunded: Money
    ledger: list[LedgerEntry] = Field(description="the sandbox gateway's record (empty for Stripe)")


@router.post("/intent", response_model=Envelope[Intent], responses=errors(403, 404, 409, 413, 415))
async def payment_intent(
    request: Request, body: IntentRequest, user: CustomerUser, conn: Db, settings: SettingsDep
) -> Envelope[Intent]:
    """The PaymentIntent a customer must confirm (only while the booking needs their action)."""
    row = await visible_booking(conn, body.booking_id, user)
    if row["customer_id"] != user.sub:
        raise forbidden("only the booking's customer confirms its payment")
    if row["status"] != Status.PAYMENT_ACTION_REQUIRED or row["payment_id"] is None:
        raise conflict(
            f"the booking is {row['status']}; its payment needs no action from the customer",
            code="NO_PAYMENT_ACTION",
            status=row["status"],
        )
    secret = await conn.fetchval(
        "SELECT payload->>'client_secret' FROM booking_events "
        "WHERE booking_id = $1 AND event_type = 'PaymentActionRequired' "
        "ORDER BY occurred_at DESC LIMIT 1",
        body.booking_id,
    )
    intent = Intent(
        booking_id=row["id"],
        payment_id=row["payment_id"],
        client_secret=secret,
        amount=Money(amount=row["amount_minor"], currency=row["currency"].strip()),
        gateway=settings.payment_gateway,
    )
    return ok(request, intent)


PaymentRef = Annotated[
    str,
    Path(
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="a payment id (pi_...) or the booking's id",
    ),
]


async def _booking_of_payment(conn: asyncpg.Connection, ref: str) -> asyncpg.Record | None:
    try:
        booking_id: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        booking_id = None
    row: asyncpg.Record | None
    if booking_id is not None:
        row = await conn.fetchrow(
            f"SELECT {BOOKING_COLUMNS} FROM bookings b WHERE b.id = $1", booking_id
        )
        if row is not None:
            return row
    row = await conn.fetchrow(
        f"SELECT {BOOKING_COLUMNS} FROM bookings b WHERE b.payment_id = $1", ref
    )
    return row


@router.get("/{payment_id}", response_model=Envelope[PaymentStatus], responses=errors(404))
async def get_payment(
    request: Request, payment_id: PaymentRef, user: CurrentUser, conn: Db
) -> Envelope[PaymentStatus]:
    """A payment's state: amount, what is captured and refunded (customer, provider or admin)."""
    row = await _booking_of_payment(conn, payment_id)
    if row is None or not can_see(row, user):
        raise not_found("payment")
    currency = row["currency"].strip()
    price = Money(amount=row["amount_minor"], currency=currency)
    nothing = Money(amount=0, currency=currency)
    state = Payment(row["payment"])
    ledger = [
        LedgerEntry(
            operation=e["operation"],
            outcome=e["outcome"],
            amount=Money(amount=e["amount_minor"], currency=e["currency"].strip()),
            at=e["created_at"],
        )
        for e in await conn.fetch(
            "SELECT operation, outcome, amount_minor, currency, created_at FROM sandbox_ledger "
            "WHERE booking_id = $1 ORDER BY id",
            row["id"],
        )
    ]
    status = PaymentStatus(
        booking_id=row["id"],
        payment_id=row["payment_id"],
        status=state,
        booking_status=Status(row["status"]),
        amount=price,
        # The saga captures and refunds the whole price or nothing (no partial captures).
        captured=price if state in (Payment.CAPTURED, Payment.REFUNDED) else nothing,
        refunded=price if state == Payment.REFUNDED else nothing,
        ledger=ledger,
    )
    return ok(request, status)
