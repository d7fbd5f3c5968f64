"""A client that behaves like a real one, and the record of what the system acknowledged.

Customers create bookings through ``POST /api/v1/bookings`` at a steady rate, each logical
request with its own ``Idempotency-Key`` kept across retries. A 503 or 429 is retried after
``Retry-After`` (or exponential backoff with jitter, whichever is longer); a dropped
connection or a timeout is retried the same way with the same key. Providers accept once the
booking waits for them, retrying the accept with the same semantics: a 202, or a 409
``ALREADY_ANSWERED`` naming the same decision, counts as acknowledged. Every tenth customer
cancels instead. Every loop is bounded in attempts and time.

Providers learn that a booking waits for them from the read model (one query per poll for
every booking of the run) instead of polling each booking through the API: in production the
notification tells them, and a harness that polled per booking would load the two CPUs it is
measuring.

``parse_retry_after``, ``next_delay`` and ``classify`` are pure and unit-tested.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Literal

import httpx

from erynoa.saga import TERMINAL, Status
from loadgen.clients import HttpPool, Tokens
from loadgen.world import Planned, Planner
from ops.invariants import ClientRequest

Operation = Literal["create", "accept", "cancel"]
Outcome = Literal["acknowledged", "refused", "unknown"]

# The longest a client waits between two attempts, and the longest Retry-After it honours.
MAX_DELAY_S = 10.0
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
SETTLED = frozenset({*TERMINAL, Status.CONFIRMED})
# Every tenth customer cancels (deterministic, so runs compare).
CANCEL_EVERY = 10


class Intent(StrEnum):
    ACCEPT = "accept"  # the provider accepts: expected confirmed
    CANCEL = "cancel"  # the customer cancels before any answer: expected cancelled


EXPECTED: dict[Intent, Status] = {Intent.ACCEPT: Status.CONFIRMED, Intent.CANCEL: Status.CANCELLED}


def intent_of(index: int) -> Intent:
    return Intent.CANCEL if index % CANCEL_EVERY == CANCEL_EVERY - 1 else Intent.ACCEPT


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110).

    None when absent or unreadable; never negative; capped at ``MAX_DELAY_S``.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_DELAY_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds: float = (when - now).total_seconds()
    return min(max(0.0, seconds), MAX_DELAY_S)


def next_delay(
    attempt: int,
    retry_after: float | None,
    rng: random.Random,
    base_s: float = 0.25,
    cap_s: float = MAX_DELAY_S,
) -> float:
    """How long to wait before attempt ``attempt + 1``: exponential backoff with jitter (half
    to all of ``base * 2**attempt``, capped), but never sooner than the server asked."""
    backoff: float = min(cap_s, base_s * 2.0 ** min(attempt, 16)) * rng.uniform(0.5, 1.0)
    return max(backoff, retry_after) if retry_after is not None else backoff


class Answer(StrEnum):
    ACK = "ack"  # the system took the request
    RETRY = "retry"  # try again later, same request
    REFUSED = "refused"  # a final no


def classify(
    operation: Operation, status: int, body: Any, decision: str = "accept"
) -> tuple[Answer, str]:
    """What a response means to the client, and a short code for the record."""
    error = body.get("error") if isinstance(body, dict) else None
    code = str(error.get("code") or "") if isinstance(error, dict) else ""
    details = error.get("details") if isinstance(error, dict) else None
    detail = details[0] if isinstance(details, list) and details else {}
    detail = detail if isinstance(detail, dict) else {}
    label = f"{status} {code}".strip()
    if status == 202:
        return Answer.ACK, label
    if status in RETRYABLE_STATUSES:
        return Answer.RETRY, label
    if status == 404 and operation != "create":
        # The read model may not show a booking the API acknowledged a moment ago.
        return Answer.RETRY, label
    if status == 409 and operation == "accept":
        if code == "ALREADY_ANSWERED" and detail.get("decision", decision) == decision:
            return Answer.ACK, label
        if code == "NOT_AWAITING_PROVIDER" and detail.get("status") in (
            Status.REQUESTED.value,
            Status.RESERVED.value,
        ):
            return Answer.RETRY, label  # the read model lags the saga
    return Answer.REFUSED, label


@dataclass(frozen=True)
class Ack:
    operation: Operation
    booking_id: str
    at_s: float  # seconds since the row started


@dataclass(frozen=True)
class Refusal:
    operation: Operation
    answer: str  # "503 ...", "429 ...", a final 4xx
    at_s: float
    final: bool


@dataclass(frozen=True)
class Failure:
    """No clean answer: a dropped connection, a timeout, a 5xx that is not a 503."""

    operation: Operation
    what: str
    at_s: float


@dataclass
class Ledger:
    """Everything the client saw, per logical request."""

    acks: list[Ack] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    abandoned: list[tuple[Operation, str]] = field(default_factory=list)  # gave up, key/id
    intents: dict[str, Intent] = field(default_factory=dict)  # acknowledged booking -> intent
    # How each logical request ended, after all its retries (the checker's evidence).
    ended: list[ClientRequest] = field(default_factory=list)

    def acknowledged(self, operation: Operation) -> dict[str, float]:
        """booking id -> when ``operation`` was first acknowledged for it."""
        out: dict[str, float] = {}
        for ack in self.acks:
            if ack.operation == operation and ack.booking_id not in out:
                out[ack.booking_id] = ack.at_s
        return out


Fetch = Callable[[list[str]], Awaitable[Mapping[str, str]]]


@dataclass
class StatusWatch:
    """The read model's status of each acknowledged booking, and when each first settled."""

    fetch: Fetch
    clock: Callable[[], float]
    status: dict[str, str] = field(default_factory=dict)
    settled_at: dict[str, float] = field(default_factory=dict)
    polls_failed: int = 0

    async def poll(self, booking_ids: list[str]) -> bool:
        """Read the statuses once; False (and nothing changed) when the read fails."""
        try:
            found = await self.fetch(booking_ids)
        except Exception:  # the database may be the fault; the next poll tries again
            self.polls_failed += 1
            return False
        now = self.clock()
        for booking_id, status in found.items():
            self.status[booking_id] = status
            if status in SETTLED and booking_id not in self.settled_at:
                self.settled_at[booking_id] = now
        return True

    def unsettled(self, booking_ids: list[str]) -> list[str]:
        return [b for b in booking_ids if self.status.get(b) not in SETTLED]


@dataclass(eq=False)
class Client:
    """Customers and providers of one row: steady creates, accepts and cancels."""

    http: HttpPool
    tokens: Tokens
    planner: Planner
    run_id: str
    clock: Callable[[], float]
    seed: InitVar[int] = 7
    request_budget_s: float = 60.0
    answer_budget_s: float = 50.0
    rng: random.Random = field(init=False)
    ledger: Ledger = field(init=False, default_factory=Ledger)
    in_flight: int = field(init=False, default=0)
    sent: int = field(init=False, default=0)
    _plans: dict[str, Planned] = field(init=False, default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _answered: set[str] = field(init=False, default_factory=set)
    _counter: int = field(init=False, default=0)

    def __post_init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    # --- the load ------------------------------------------------------------------------

    async def run(self, rate_per_s: float, until: Callable[[], bool], max_count: int) -> None:
        """Start one booking every ``1/rate`` s until ``until()`` or ``max_count`` were sent."""
        interval = 1.0 / rate_per_s
        started = time.monotonic()
        while not until() and self.sent < max_count:
            plan = self.planner.plan(self.sent)
            self.sent += 1
            self._spawn(self._booking(plan))
            wait = started + self.sent * interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    @property
    def busy(self) -> bool:
        """Some request is still being made (or retried)."""
        return bool(self._tasks)

    def on_status(self, booking_id: str, status: str) -> None:
        """The provider hears that a booking waits for them (once)."""
        if status != Status.AWAITING_PROVIDER.value or booking_id in self._answered:
            return
        if self.ledger.intents.get(booking_id) is not Intent.ACCEPT:
            return
        self._answered.add(booking_id)
        plan = self._plans[booking_id]
        self._spawn(self._accept(booking_id, plan.service.provider_id))

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for the requests already started; cancel what is left."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _booking(self, plan: Planned) -> None:
        booking_id = await self.create(plan)
        if booking_id is None:
            return
        intent = intent_of(plan.index)
        self._plans[booking_id] = plan
        self.ledger.intents[booking_id] = intent
        if intent is Intent.CANCEL:
            await asyncio.sleep(1.0)
            await self.cancel(booking_id, plan.customer_id)

    # --- one logical request each ----------------------------------------------------------

    def _headers(self, sub: str, role: str) -> dict[str, str]:
        self._counter += 1
        return {
            "Authorization": f"Bearer {self.tokens(sub, role)}",
            "X-Request-ID": f"faults-{self.run_id}-{self._counter}",
        }

    async def create(self, plan: Planned) -> str | None:
        key = f"faults-{self.run_id}-{plan.index}"
        body = {
            "service_id": plan.service.id,
            "slot_start": plan.slot_start.isoformat(),
            "payment_method": plan.payment_method,
        }

        def headers() -> dict[str, str]:
            return {**self._headers(plan.customer_id, "customer"), "Idempotency-Key": key}

        result, outcome = await self._attempts(
            "create", "/api/v1/bookings", headers, body, key, self.request_budget_s
        )
        booking_id = result.get("workflow_id") if isinstance(result, dict) else None
        if outcome == "acknowledged" and not isinstance(booking_id, str):
            self.ledger.failures.append(Failure("create", "202 without workflow_id", self.clock()))
            outcome, booking_id = "unknown", None
        self.ledger.ended.append(
            ClientRequest(
                "create",
                key,
                outcome,
                datetime.now(UTC),
                booking_id if isinstance(booking_id, str) else None,
                plan.customer_id,
                plan.service.id,
                plan.slot_start,
                key,
            )
        )
        if not isinstance(booking_id, str):
            return None
        self.ledger.acks.append(Ack("create", booking_id, self.clock()))
        return booking_id

    async def accept(self, booking_id: str, provider_id: str) -> bool:
        return await self._act("accept", booking_id, provider_id, "provider", None)

    async def _accept(self, booking_id: str, provider_id: str) -> None:
        await self.accept(booking_id, provider_id)

    async def cancel(self, booking_id: str, customer_id: str) -> bool:
        reason = {"reason": "fault harness: the customer changed their mind"}
        return await self._act("cancel", booking_id, customer_id, "customer", reason)

    async def _act(
        self,
        action: Literal["accept", "cancel"],
        booking_id: str,
        user_id: str,
        role: str,
        body: dict[str, str] | None,
    ) -> bool:
        """One action on a booking, retried like the rest; True once the API acknowledged it."""
        _result, outcome = await self._attempts(
            action,
            f"/api/v1/bookings/{booking_id}/{action}",
            lambda: self._headers(user_id, role),
            body,
            booking_id,
            self.answer_budget_s,
        )
        self.ledger.ended.append(
            ClientRequest(action, f"{action}-{booking_id}", outcome, datetime.now(UTC), booking_id)
        )
        if outcome != "acknowledged":
            return False
        self.ledger.acks.append(Ack(action, booking_id, self.clock()))
        return True

    async def _attempts(
        self,
        operation: Operation,
        path: str,
        headers: Callable[[], dict[str, str]],
        body: dict[str, str] | None,
        subject: str,
        budget_s: float,
    ) -> tuple[Any, Outcome]:
        """POST until acknowledged (the 202's body, or {} for an equivalent 409), refused, or
        out of time; with how the logical request ended."""
        give_up_at = time.monotonic() + budget_s
        attempt = 0
        while True:
            retry_after: float | None = None
            answered = False
            self.in_flight += 1
            try:
                response = await self.http.request("POST", path, headers=headers(), json=body)
            except httpx.HTTPError as exc:
                self.ledger.failures.append(Failure(operation, type(exc).__name__, self.clock()))
            else:
                try:
                    payload: Any = response.json()
                except ValueError:
                    payload = None
                answer, label = classify(operation, response.status_code, payload)
                if answer is Answer.ACK:
                    return (payload if response.status_code == 202 else {}), "acknowledged"
                answered = response.status_code in (429, 503) or answer is Answer.REFUSED
                if answered:
                    final = answer is Answer.REFUSED
                    self.ledger.refusals.append(Refusal(operation, label, self.clock(), final))
                    if final:
                        return None, "refused"
                else:
                    self.ledger.failures.append(Failure(operation, label, self.clock()))
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), datetime.now(UTC)
                )
            finally:
                self.in_flight -= 1
            delay = next_delay(attempt, retry_after, self.rng)
            attempt += 1
            if time.monotonic() + delay > give_up_at:
                self.ledger.abandoned.append((operation, subject))
                # A clean 503 last: nothing changed. No answer last: the client cannot know.
                return None, "refused" if answered else "unknown"
            await asyncio.sleep(delay)
