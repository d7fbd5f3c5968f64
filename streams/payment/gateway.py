"""The payment gateway port: what the payment agent needs from a payment provider.

Every call takes an idempotency key derived from the booking and the step
(``<booking_id>:authorize``), so calling again after a crash or a timeout has the effect of one
call. Outcomes the business cares about are values (``Declined``, ``CaptureFailed``); trouble
that may pass (network, timeouts, 5xx, rate limits) is raised as ``GatewayUnavailable``, which the
runtime retries through the retry topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import asyncpg

from erynoa.events import Money
from streams.failures import RetryableError


class GatewayUnavailable(RetryableError):
    """The gateway could not be reached or answered 5xx / 429: try again later."""


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
