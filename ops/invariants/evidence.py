"""What the invariant checker judges: the evidence a run leaves behind, as plain dataclasses.

``ops.invariants.gather`` fills it from PostgreSQL (and, when asked, the mail sink, the
dead-letter topics and Stripe); tests build it by hand. Every field is evidence the system
could get wrong: counts come from logs and outside records, never from a table whose
constraints already forbid the violation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from erynoa.events import BookingEvent
from erynoa.saga import BookingState


@dataclass(frozen=True)
class Violation:
    rule: int
    subject: str  # a booking id, "service/slot", or an agent
    message: str

    def __str__(self) -> str:
        return f"invariant {self.rule} [{self.subject}]: {self.message}"


@dataclass(frozen=True)
class LedgerRow:
    """One operation in the sandbox gateway's ledger (``sandbox_ledger``)."""

    booking_id: str
    payment_id: str
    operation: str  # authorize | capture | void | refund
    outcome: str
    amount_minor: int


@dataclass(frozen=True)
class PaymentIntent:
    """A Stripe PaymentIntent as Stripe reports it (``metadata.booking_id`` names the booking)."""

    booking_id: str
    payment_id: str
    status: str  # requires_capture | succeeded | canceled | requires_action | …
    amount: int
    amount_capturable: int = 0
    amount_received: int = 0
    amount_refunded: int = 0


@dataclass(frozen=True)
class Slot:
    """One (service, slot) row of ``slot_capacity``: its capacity and the agent's counters."""

    service_id: str
    slot_start: datetime
    capacity: int
    held: int
    confirmed: int


@dataclass(frozen=True)
class Delivery:
    """A row of ``notification_deliveries``: what the notification agent believes it sent."""

    booking_id: str
    notification_id: str
    channel: str  # email | webhook | synthetic
    template: str


@dataclass(frozen=True)
class Received:
    """One message a receiver got (a Maildir file, a webhook call)."""

    booking_id: str
    template: str
    channel: str  # email | webhook
    message_id: str  # Message-ID / Idempotency-Key: copies of one notification share it


@dataclass(frozen=True)
class Parked:
    """A message in a dead-letter topic."""

    consumer: str  # whose dead-letter topic
    event_id: str | None  # None when undecodable
    booking_id: str | None
    event_type: str | None
    error_class: str | None
    error_kind: str | None  # retryable | permanent


RequestKind = Literal["create", "accept", "reject", "cancel", "webhook"]
RequestOutcome = Literal["acknowledged", "refused", "unknown"]


@dataclass(frozen=True)
class ClientRequest:
    """One request as the client saw it end, after its own retries.

    ``request_key`` names the logical request (the same for every retry of it).
    ``acknowledged``: 202 (or a verified webhook's 2xx); ``refused``: the API said nothing
    changed (503, 4xx); ``unknown``: no answer (timeout, dropped connection). ``at`` is when it
    ended (the acknowledgement's time). ``customer_id``/``service_id``/``slot_start``/
    ``idempotency_key`` (and ``sent_at``) describe a create, so duplicate bookings can be
    counted.
    """

    kind: RequestKind
    request_key: str
    outcome: RequestOutcome
    at: datetime
    booking_id: str | None = None
    customer_id: str | None = None
    service_id: str | None = None
    slot_start: datetime | None = None
    idempotency_key: str | None = None
    sent_at: datetime | None = None
    """When its first attempt left: bookings requested earlier are not its duplicates."""


@dataclass(frozen=True)
class AgentView:
    """Which events an agent folds: the types it consumes, plus whatever it produced itself."""

    consumes: frozenset[str]


@dataclass
class Evidence:
    events: dict[str, list[BookingEvent]] = field(default_factory=dict)
    """The event log by booking: the checked bookings, and the others that share their slots
    or look like duplicates of them."""
    read_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``bookings`` rows by id (``state`` may hold the materializer's ``BookingState``)."""
    ledger: dict[str, list[LedgerRow]] = field(default_factory=dict)
    intents: dict[str, list[PaymentIntent]] | None = None
    """Stripe's PaymentIntents by booking; None when not gathered (sandbox runs)."""
    holds: dict[str, str] = field(default_factory=dict)
    """``reservation_holds`` status by booking: held | converted | released."""
    slots: list[Slot] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    received: list[Received] | None = None
    """What the mail sink / webhook receiver got; None when not gathered."""
    agents: dict[str, AgentView] = field(default_factory=dict)
    agent_states: dict[str, dict[str, BookingState]] = field(default_factory=dict)
    """Agent → booking → the state it keeps (``agent_state``)."""
    processed: dict[str, set[str]] = field(default_factory=dict)
    """Agent → the event ids it processed (``processed_events``)."""
    materializer: bool = True
    """A materializer ran: every booking must have its row. When False (agents alone), only
    the rows it did fold are judged."""
    materialized: set[str] | None = None
    """Event ids in the read model's log (``booking_events``) when ``events`` came from the
    topics; None when ``events`` are that log."""
    parked: list[Parked] | None = None
    """Dead-letter messages; None when the topics were not read."""
    requests: list[ClientRequest] = field(default_factory=list)
