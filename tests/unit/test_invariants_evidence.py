"""Evidence read outside PostgreSQL: what a Maildir received, who consumes what."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from erynoa import saga
from erynoa.events import Money
from erynoa.settings import Settings
from erynoa.topics import load_catalog
from ops.invariants.evidence import PaymentIntent
from ops.invariants.gather import agent_views, read_maildir, stripe_intents
from streams.notification import SmtpSender, compose

B = "3b9f1a52-8c0e-4d7b-9b1e-2f6a1c0d9e11"
OTHER = "3b9f1a52-8c0e-4d7b-9b1e-2f6a1c0d9e22"


def state(booking_id: str) -> saga.BookingState:
    at = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    return saga.BookingState(
        booking_id=booking_id,
        customer_id="alice",
        provider_id="bob",
        service_id="7d1e2f3a-0000-4000-8000-000000000001",
        slot_start=at + timedelta(days=30),
        slot_end=at + timedelta(days=30, hours=1),
        price=Money(4500, "EUR"),
        payment_method="pm_card_visa",
        notes=None,
        response_deadline_seconds=3600,
        correlation_id="c",
        idempotency_key=None,
        requested_at=at,
        updated_at=at,
        status=saga.Status.CONFIRMED,
    )


def deliver(maildir: Path, booking_id: str, template: str, name: str) -> None:
    message = SmtpSender("127.0.0.1", 25, "erynoa@example.test").message(
        compose(state(booking_id), template, "customer"), "alice@example.test"
    )
    (maildir / "new" / name).write_bytes(bytes(message))


def test_the_maildir_tells_each_message_and_copies_of_one_apart(tmp_path: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    deliver(tmp_path, B, "customer_confirmed", "1")
    deliver(tmp_path, B, "customer_confirmed", "2")  # a copy after a crash: same Message-ID
    deliver(tmp_path, OTHER, "customer_confirmed", "3")
    (tmp_path / "new" / "4").write_bytes(b"Subject: not ours\n\nhello\n")
    got = read_maildir(tmp_path, [B])
    assert [(r.booking_id, r.template, r.channel) for r in got] == [
        (B, "customer_confirmed", "email")
    ] * 2
    assert len({r.message_id for r in got}) == 1
    assert len(read_maildir(tmp_path)) == 3


def test_each_agent_folds_what_topics_yaml_has_it_consume() -> None:
    views = agent_views(load_catalog(Settings().topics_file))
    assert set(views) == {"reservation", "payment", "notification", "provider-response"}
    assert "BookingRequested" in views["provider-response"].consumes
    assert "NotificationSent" not in views["provider-response"].consumes
    assert "ReservationHeld" in views["payment"].consumes


class _Page:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    async def auto_paging_iter(self) -> AsyncIterator[dict[str, Any]]:
        for item in self.items:
            yield item


class _Intents:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.params: dict[str, Any] = {}

    async def list_async(self, params: dict[str, Any]) -> _Page:
        self.params = params
        return _Page(self.items)


class FakeStripe:
    """The part of ``stripe.StripeClient`` the evidence reads: ``v1.payment_intents``."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.v1 = SimpleNamespace(payment_intents=_Intents(items))


def intent(
    pi: str, booking: str, status: str, received: int = 0, refunded: int = 0
) -> dict[str, Any]:
    return {
        "id": pi,
        "metadata": {"booking_id": booking},
        "status": status,
        "amount": 4500,
        "amount_capturable": 4500 if status == "requires_capture" else 0,
        "amount_received": received,
        "latest_charge": {"amount_refunded": refunded},
    }


async def test_stripe_intents_are_every_intent_of_the_booking_by_its_metadata() -> None:
    since = datetime(2026, 6, 1, tzinfo=UTC)
    client = FakeStripe(
        [
            intent("pi_1", B, "succeeded", received=4500, refunded=4500),
            intent("pi_2", B, "requires_capture"),  # one the log never heard of
            intent("pi_3", OTHER, "succeeded", received=4500),
        ]
    )
    found = await stripe_intents(client, [B], since)
    assert found == {
        B: [
            PaymentIntent(B, "pi_1", "succeeded", 4500, 0, 4500, 4500),
            PaymentIntent(B, "pi_2", "requires_capture", 4500, 4500, 0, 0),
        ]
    }
    assert client.v1.payment_intents.params["created"] == {"gte": int(since.timestamp())}
