"""The sandbox payment gateway: deterministic outcomes, a ledger instead of a bank.

The default for development and load tests (``ERYNOA_PAYMENT_GATEWAY=sandbox``). Outcomes follow
Stripe's test payment methods, so a test can ask for any path by the card it books with:

=============================== ===========================================================
``pm_card_visa``                 authorized; capture, void and refund succeed
``pm_card_mastercard``           the same (a second good card, e.g. to break one of two)
``pm_card_chargeDeclined``       declined (``card_declined``)
``pm_card_authenticationRequired`` action required: a (simulated) Stripe webhook finishes it
``pm_card_captureFails``         authorized, but the capture fails (``charge_expired_for_capture``),
                                 as when an authorization expired before the provider answered —
                                 not a Stripe test method; ours, to drive the capture-failed path
anything else                    declined (``unknown_payment_method``)
=============================== ===========================================================

Every operation is a row in ``sandbox_ledger`` with a UNIQUE idempotency key, written with
``INSERT ... ON CONFLICT DO NOTHING RETURNING``: a repeated call returns the outcome recorded the
first time and adds nothing, exactly like a gateway's idempotency keys. The ledger commits on
its own connection, not in the agent's transaction — it stands for the outside world, which
does not roll back when the agent crashes. ``ERYNOA_SANDBOX_LATENCY_MS`` adds a delay per call.

Outages: while ``sandbox_outages`` has a row for a payment method, every call for it (authorize,
capture, void, refund of a payment made with it, and ``find``) raises ``GatewayUnavailable``
(retryable, like a gateway that does not answer); delete the row and the gateway works again.
A row for ``*`` (``WHOLE_GATEWAY``) is the gateway itself down: every call for every payment
method fails that way, and ``probe`` says so.
A row whose reason starts with ``answer lost`` (``outage_reason_answer_lost``) is the nastier
outage: the listed operations take effect, then raise ``OutcomeUnknown`` (a timeout after the
request was sent), and ``find`` still fails until the row is deleted.

Like Stripe, the sandbox forgets idempotency keys after ``IDEMPOTENCY_WINDOW``: a capture
replayed with a key older than that, for a payment already captured, is refused with
``payment_intent_unexpected_state``. ``complete_authentication`` is the customer finishing
3-D Secure: the PaymentIntent becomes capturable, as Stripe's does before it sends the
``payment_intent.amount_capturable_updated`` webhook.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import asyncpg

from erynoa.events import Money
from streams.payment import gateway as gw

VISA = "pm_card_visa"
MASTERCARD = "pm_card_mastercard"
DECLINED = "pm_card_chargeDeclined"
AUTHENTICATION_REQUIRED = "pm_card_authenticationRequired"
CAPTURE_FAILS = "pm_card_captureFails"

_NAMESPACE = uuid.UUID("2b0f4a8e-7c1d-5e59-b3a4-9d0c6e1f2a77")

IDEMPOTENCY_WINDOW = timedelta(hours=24)
"""How long a key's first answer is replayed (Stripe keeps keys at least 24 hours)."""
WHOLE_GATEWAY = "*"
"""The ``sandbox_outages.payment_method`` that takes the whole gateway down."""

ANSWER_LOST = "answer lost"
OPERATIONS = ("authorize", "capture", "void", "refund")
# What the ledger records for an undo: it always takes effect.
_UNDONE = {"void": "voided", "refund": "refunded"}


def outage_reason_answer_lost(operations: Iterable[str] = OPERATIONS) -> str:
    """The ``sandbox_outages.reason`` of an outage in which ``operations`` take effect but
    their answers are lost."""
    ops = sorted(set(operations))
    unknown = set(ops) - set(OPERATIONS)
    if unknown:
        raise ValueError(f"not sandbox operations: {sorted(unknown)}")
    return f"{ANSWER_LOST}: {','.join(ops)}"


def _answer_lost_for(reason: str) -> frozenset[str]:
    if not reason.startswith(ANSWER_LOST):
        return frozenset()
    _, _, listed = reason.partition(":")
    ops = frozenset(op.strip() for op in listed.split(",") if op.strip())
    return ops or frozenset(OPERATIONS)


async def complete_authentication(pool: asyncpg.Pool, payment_id: str) -> bool:
    """The customer finished 3-D Secure: the PaymentIntent waiting for it becomes capturable.
    False when it was not waiting (declined, cancelled, already done)."""
    done = await pool.fetchval(
        """UPDATE sandbox_ledger SET outcome = 'authorized'
           WHERE payment_id = $1 AND operation = 'authorize' AND outcome = 'action_required'
           RETURNING true""",
        payment_id,
    )
    return bool(done)


def _object_id(prefix: str, idempotency_key: str) -> str:
    """Stable ids (``pi_sbx_…``) so a retried call returns the very same object."""
    return f"{prefix}_sbx_{uuid.uuid5(_NAMESPACE, idempotency_key).hex[:24]}"


@dataclass(frozen=True)
class _Recorded:
    payment_id: str
    outcome: str
    expired: bool = False
    """The key was recorded longer ago than ``IDEMPOTENCY_WINDOW``."""


class _Lost:
    """Where an ``answer lost`` outage applies: the call's effect happens, then this raises."""

    def __init__(self, operation: str, reason: str | None) -> None:
        self.operation = operation
        self.reason = reason

    def check(self) -> None:
        if self.reason is not None:
            raise gw.OutcomeUnknown(
                f"sandbox outage ({self.reason}): the {self.operation} was sent, its answer lost"
            )


class SandboxGateway:
    name = "sandbox"
    remote = False

    def __init__(self, latency_ms: int = 0) -> None:
        self.latency_ms = latency_ms
        # With a simulated latency it waits like a remote gateway, and gets lanes like one.
        self.remote = latency_ms > 0
        self._pool: asyncpg.Pool | None = None

    async def start(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def close(self) -> None:
        self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("SandboxGateway not started")
        return self._pool

    async def _delay(self) -> None:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)

    async def _record(
        self,
        *,
        idempotency_key: str,
        booking_id: str,
        payment_id: str,
        operation: str,
        amount: Money,
        outcome: str,
        payment_method: str | None = None,
    ) -> _Recorded:
        """Write the operation once; a repeated key returns what the first call recorded."""
        row = await self.pool.fetchrow(
            """INSERT INTO sandbox_ledger
                   (idempotency_key, booking_id, payment_id, operation, amount_minor, currency,
                    outcome, payment_method)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (idempotency_key) DO NOTHING
               RETURNING payment_id, outcome""",
            idempotency_key,
            booking_id,
            payment_id,
            operation,
            amount.amount_minor,
            amount.currency,
            outcome,
            payment_method,
        )
        if row is None:
            row = await self.pool.fetchrow(
                """SELECT payment_id, outcome, created_at < now() - $2::interval AS expired
                   FROM sandbox_ledger WHERE idempotency_key = $1""",
                idempotency_key,
                IDEMPOTENCY_WINDOW,
            )
            assert row is not None  # the conflict means it exists
            return _Recorded(row["payment_id"], row["outcome"], bool(row["expired"]))
        return _Recorded(row["payment_id"], row["outcome"])

    async def _outage(self, payment_method: str | None, operation: str) -> _Lost:
        """Raise as an unreachable gateway does while an outage is on for ``payment_method``;
        for an ``answer lost`` outage covering ``operation``, what to raise after the effect."""
        if payment_method is None:
            return _Lost(operation, None)
        reason = await self._outage_reason(payment_method)
        if reason is None:
            return _Lost(operation, None)
        if operation in _answer_lost_for(reason):
            return _Lost(operation, reason)
        raise gw.GatewayUnavailable(f"sandbox outage for {payment_method}: {reason}")

    async def authorize(
        self, *, booking_id: str, amount: Money, payment_method: str, idempotency_key: str
    ) -> gw.AuthorizeResult:
        await self._delay()
        lost = await self._outage(payment_method, "authorize")
        if payment_method in (VISA, MASTERCARD, CAPTURE_FAILS):
            outcome = "authorized"
        elif payment_method == AUTHENTICATION_REQUIRED:
            outcome = "action_required"
        elif payment_method == DECLINED:
            outcome = "card_declined"
        else:
            outcome = "unknown_payment_method"
        recorded = await self._record(
            idempotency_key=idempotency_key,
            booking_id=booking_id,
            payment_id=_object_id("pi", idempotency_key),
            operation="authorize",
            amount=amount,
            outcome=outcome,
            payment_method=payment_method,
        )
        lost.check()
        if recorded.outcome == "authorized":
            return gw.Authorized(recorded.payment_id)
        if recorded.outcome == "action_required":
            return gw.ActionRequired(recorded.payment_id, f"{recorded.payment_id}_secret_sandbox")
        message = (
            "Your card was declined."
            if recorded.outcome == "card_declined"
            else f"The sandbox does not know payment method {payment_method!r}."
        )
        return gw.Declined(recorded.outcome, message, recorded.payment_id)

    async def _authorization(self, payment_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            """SELECT payment_id, outcome, payment_method, amount_minor, currency
               FROM sandbox_ledger WHERE payment_id = $1 AND operation = 'authorize'""",
            payment_id,
        )

    async def _done(self, payment_id: str, operation: str, outcome: str) -> bool:
        found = await self.pool.fetchval(
            """SELECT 1 FROM sandbox_ledger
               WHERE payment_id = $1 AND operation = $2 AND outcome = $3""",
            payment_id,
            operation,
            outcome,
        )
        return found is not None

    async def capture(
        self, *, booking_id: str, payment_id: str, amount: Money, idempotency_key: str
    ) -> gw.CaptureResult:
        await self._delay()
        auth = await self._authorization(payment_id)
        lost = await self._outage(auth["payment_method"] if auth else None, "capture")
        voided = await self._done(payment_id, "void", "voided")
        if auth is None or auth["outcome"] not in ("authorized", "action_required"):
            outcome = "no_authorization"
        elif voided:
            outcome = "payment_intent_canceled"
        elif auth["payment_method"] == CAPTURE_FAILS:
            outcome = "charge_expired_for_capture"
        else:
            outcome = "captured"
        recorded = await self._record(
            idempotency_key=idempotency_key,
            booking_id=booking_id,
            payment_id=payment_id,
            operation="capture",
            amount=amount,
            outcome=outcome,
        )
        lost.check()
        if recorded.expired and recorded.outcome == "captured":
            # The key is forgotten: this is a new capture of a payment no longer capturable.
            raise gw.UnexpectedState(
                "payment_intent_unexpected_state",
                "This PaymentIntent could not be captured because it has a status of succeeded.",
            )
        if recorded.outcome == "captured":
            return gw.Captured(payment_id)
        return gw.CaptureFailed(recorded.outcome, f"sandbox capture failed: {recorded.outcome}")

    async def void(
        self, *, booking_id: str, payment_id: str | None, idempotency_key: str
    ) -> gw.Voided:
        await self._delay()
        if payment_id is None:
            return gw.Voided(None)  # nothing was ever authorized: nothing to record
        auth = await self._authorization(payment_id)
        if auth is None:
            return gw.Voided(payment_id)
        amount = Money(int(auth["amount_minor"]), str(auth["currency"]).strip())
        await self._undo("void", auth, idempotency_key, booking_id, payment_id, amount)
        return gw.Voided(payment_id)

    async def refund(
        self, *, booking_id: str, payment_id: str, amount: Money, idempotency_key: str
    ) -> gw.Refunded:
        await self._delay()
        auth = await self._authorization(payment_id)
        await self._undo("refund", auth, idempotency_key, booking_id, payment_id, amount)
        return gw.Refunded(_object_id("re", idempotency_key))

    async def _undo(
        self,
        operation: Literal["void", "refund"],
        auth: asyncpg.Record | None,
        idempotency_key: str,
        booking_id: str,
        payment_id: str,
        amount: Money,
    ) -> None:
        """A void or a refund always succeeds (there may be nothing left to undo); an outage of
        the payment method it was authorized with stops it as it would the other calls."""
        lost = await self._outage(auth["payment_method"] if auth else None, operation)
        await self._record(
            idempotency_key=idempotency_key,
            booking_id=booking_id,
            payment_id=payment_id,
            operation=operation,
            amount=amount,
            outcome=_UNDONE[operation],
        )
        lost.check()

    async def probe(self) -> str | None:
        reason = await self.pool.fetchval(
            "SELECT reason FROM sandbox_outages WHERE payment_method = $1", WHOLE_GATEWAY
        )
        return None if reason is None else f"sandbox gateway down: {reason}"

    async def _outage_reason(self, payment_method: str) -> str | None:
        """The outage on for this payment method (or the whole gateway), if any."""
        reason: str | None = await self.pool.fetchval(
            """SELECT reason FROM sandbox_outages WHERE payment_method IN ($1, $2)
               ORDER BY payment_method = $2 LIMIT 1""",
            payment_method,
            WHOLE_GATEWAY,
        )
        return reason

    async def find(self, *, booking_id: str, payment_id: str | None) -> gw.Found:
        await self._delay()
        if payment_id is not None:
            auth = await self._authorization(payment_id)
        else:
            auth = await self.pool.fetchrow(
                """SELECT payment_id, outcome, payment_method FROM sandbox_ledger
                   WHERE booking_id = $1 AND operation = 'authorize' ORDER BY id LIMIT 1""",
                booking_id,
            )
        if auth is None:
            return gw.Found(gw.IntentStatus.NOT_FOUND, payment_id)
        found_id = str(auth["payment_id"])
        reason = await self._outage_reason(auth["payment_method"])
        if reason is not None:
            raise gw.GatewayUnavailable(f"sandbox outage for {auth['payment_method']}: {reason}")
        if await self._done(found_id, "capture", "captured"):
            return gw.Found(gw.IntentStatus.CAPTURED, found_id)
        if await self._done(found_id, "void", "voided"):
            return gw.Found(gw.IntentStatus.CANCELED, found_id)
        if auth["outcome"] == "authorized":
            return gw.Found(gw.IntentStatus.AUTHORIZED, found_id)
        if auth["outcome"] == "action_required":
            return gw.Found(gw.IntentStatus.ACTION_REQUIRED, found_id, f"{found_id}_secret_sandbox")
        return gw.Found(gw.IntentStatus.FAILED, found_id)
