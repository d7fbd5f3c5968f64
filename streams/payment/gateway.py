"""The payment gateway port: what the payment agent needs from a payment provider.

Every call takes an idempotency key derived from the booking and the step
(``<booking_id>:authorize``), so calling again after a crash or a timeout has the effect of one
call. Outcomes the business cares about are values (``Declined``, ``CaptureFailed``); trouble
that may pass (network, rate limits) is raised as ``GatewayUnavailable``, which the runtime
retries.

Two answers mean "I do not know what happened", and the agent then asks the gateway
(``find``) what the PaymentIntent's real state is instead of guessing:

* ``OutcomeUnknown``: the request may have taken effect but its answer was lost (a timeout, a
  connection dropped after sending, a 5xx);
* ``UnexpectedState``: the gateway refused the call because the PaymentIntent is not in the
  state the call needs (Stripe's ``payment_intent_unexpected_state``, or an idempotency key
  replayed after the gateway forgot it) — typically because an earlier attempt did succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import asyncpg

from erynoa.events import Money
from streams.failures import RetryableError


class GatewayUnavailable(RetryableError):
    """The gateway could not be reached or answered 5xx / 429: try again later."""


class OutcomeUnknown(GatewayUnavailable):
    """The call may have taken effect; its answer was lost. Look the PaymentIntent up."""


class UnexpectedState(Exception):
    """The PaymentIntent is not in the state the call needs. Look it up before concluding."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class IntentStatus(StrEnum):
    """A PaymentIntent's state as the saga cares about it (manual capture)."""

    NOT_FOUND = "not_found"
    """Nothing was created (or nothing the gateway can find)."""
    ACTION_REQUIRED = "action_required"
    AUTHORIZED = "authorized"
    """Capturable (Stripe's ``requires_capture``)."""
    CAPTURED = "captured"
    CANCELED = "canceled"
    FAILED = "failed"
    """Declined: nothing is held (``requires_payment_method``)."""


@dataclass(frozen=True)
class Found:
    """What ``PaymentGateway.find`` learned about a booking's PaymentIntent."""

    status: IntentStatus
    payment_id: str | None = None
    client_secret: str | None = None


@dataclass(frozen=True)
class Authorized:
    payment_id: str


@dataclass(frozen=True)
class ActionRequired:
    """The customer must authenticate (3-D Secure); a webhook reports the result."""

    payment_id: str
    client_secret: str | None = None


@dataclass(frozen=True)
class Declined:
    code: str
    message: str
    payment_id: str | None = None


@dataclass(frozen=True)
class Captured:
    payment_id: str


@dataclass(frozen=True)
class CaptureFailed:
    """The authorization can no longer be captured (expired, cancelled): the booking fails."""

    code: str
    message: str


@dataclass(frozen=True)
class Voided:
    payment_id: str | None


@dataclass(frozen=True)
class Refunded:
    refund_id: str


AuthorizeResult = Authorized | ActionRequired | Declined
CaptureResult = Captured | CaptureFailed


class PaymentGateway(Protocol):
    name: str
    """Recorded on ``PaymentAuthorized.gateway`` (``sandbox`` | ``stripe``)."""
    remote: bool
    """Its calls leave the process and PostgreSQL (they wait on the network)."""

    async def start(self, pool: asyncpg.Pool) -> None: ...

    async def close(self) -> None: ...

    async def authorize(
        self, *, booking_id: str, amount: Money, payment_method: str, idempotency_key: str
    ) -> AuthorizeResult:
        """Reserve ``amount`` on the payment method without taking it (manual capture)."""

    async def capture(
        self, *, booking_id: str, payment_id: str, amount: Money, idempotency_key: str
    ) -> CaptureResult: ...

    async def void(
        self, *, booking_id: str, payment_id: str | None, idempotency_key: str
    ) -> Voided:
        """Cancel the authorization; succeeds when there is nothing (left) to void."""

    async def refund(
        self, *, booking_id: str, payment_id: str, amount: Money, idempotency_key: str
    ) -> Refunded: ...

    async def probe(self) -> str | None:
        """Why the gateway cannot be reached now, or None when it answers. Asked after a
        retryable failure: a gateway that is down is an outage (the lane waits), not a failure
        of the payment that happened to be in flight."""

    async def find(self, *, booking_id: str, payment_id: str | None) -> Found:
        """The booking's PaymentIntent as the gateway knows it now: by ``payment_id`` when
        known, else the one created for ``booking_id`` (its metadata). Raises
        ``GatewayUnavailable`` when the gateway cannot say."""
