"""Reading the evidence the invariants are judged on, from where the system left it.

``gather(pool, booking_ids, ...)`` reads PostgreSQL: the event log (``booking_events``, unless
the caller read the topics itself and passes ``events``), the read model, the agents' states
and processed events, the sandbox ledger, the holds and slot counters, the delivery records.
It adds the bookings that share a slot with the checked ones (capacity is a property of the
slot) and those that look like the same create request (duplicates).

What lives outside PostgreSQL is read by the helpers here and passed in: ``read_maildir``
(what the development mail sink received), ``read_parked`` (the dead-letter topics),
``stripe_intents`` (Stripe's PaymentIntents of the checked bookings).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import asyncpg

from erynoa.codec import EventCodec, default_codec
from erynoa.events import BookingEvent, BookingRequested
from erynoa.saga import BookingState
from erynoa.topics import TopicCatalog
from ops import dead_letters
from ops.invariants import evidence
from ops.invariants.rules import AGENTS


def agent_views(catalog: TopicCatalog) -> dict[str, evidence.AgentView]:
    """What each saga agent consumes, from the topic catalog."""
    return {
        name: evidence.AgentView(
            frozenset(
                event
                for topic in catalog.consumer(name).consumes
                for event in catalog.topics[topic].events
            )
        )
        for name in AGENTS
        if name in catalog.consumers
    }


async def _decode_log(
    pool: asyncpg.Pool, ids: Sequence[str], codec: EventCodec
) -> dict[str, list[BookingEvent]]:
    found: dict[str, list[BookingEvent]] = defaultdict(list)
    for row in await pool.fetch(
        "SELECT booking_id::text, body FROM booking_events WHERE booking_id = ANY($1::uuid[])",
        list(ids),
    ):
        event = codec.decode(bytes(row["body"]))
        if isinstance(event, BookingEvent):
            found[row["booking_id"]].append(event)
    return found


async def _related(
    pool: asyncpg.Pool,
    ids: Sequence[str],
    events: Mapping[str, Sequence[BookingEvent]],
    requests: Sequence[evidence.ClientRequest],
) -> set[str]:
    """Bookings besides ``ids`` that share their slots or their customers' create requests
    (the materializer writes a row for every booking in the log, whatever the API wrote)."""
    slots = {
        (str(e.service_id), e.slot_start)
        for b in ids
        for e in events.get(b, ())
        if isinstance(e, BookingRequested)
    }
    slots |= {
        (str(r.service_id), r.slot_start)
        for r in requests
        if r.kind == "create" and r.service_id is not None and r.slot_start is not None
    }
    if not slots:
        return set()
    services = sorted({s for s, _ in slots})
    starts = sorted({t for _, t in slots})
    rows = await pool.fetch(
        """SELECT id::text AS id, service_id::text AS service_id, slot_start FROM bookings
           WHERE service_id = ANY($1::uuid[]) AND slot_start = ANY($2::timestamptz[])
           UNION
           SELECT booking_id::text, service_id::text, slot_start FROM reservation_holds
           WHERE service_id = ANY($1::uuid[]) AND slot_start = ANY($2::timestamptz[])
""",
        services,
        starts,
    )
    return {r["id"] for r in rows if (r["service_id"], r["slot_start"]) in slots} - set(ids)


async def gather(
    pool: asyncpg.Pool,
    booking_ids: Iterable[str],
    events: Mapping[str, Sequence[BookingEvent]] | None = None,
    codec: EventCodec | None = None,
    *,
    catalog: TopicCatalog | None = None,
    requests: Sequence[evidence.ClientRequest] = (),
    materializer: bool | None = None,
) -> evidence.Evidence:
    """Everything the invariants need for ``booking_ids`` (events from the log unless given).

    Without ``catalog`` the agents' states and processed events are not judged (rules 6 and 7
    for agents). ``requests`` (what clients were told) widen the bookings read: theirs, and
    those in their slots. What lives outside PostgreSQL (``received``, ``parked``, ``intents``)
    is left unread (None).
    ``materializer``: whether one ran (the read model and its log are judged in full); by
    default, when the events come from its log, not when the caller read them from the topics.
    """
    ids = sorted(set(booking_ids) | {r.booking_id for r in requests if r.booking_id})
    codec = codec or default_codec()
    found = evidence.Evidence(
        requests=list(requests),
        materializer=materializer if materializer is not None else events is None,
    )
    if events is None:
        log = await _decode_log(pool, ids, codec)
    else:
        log = {b: list(events.get(b, ())) for b in ids}
        if found.materializer:
            rows = await pool.fetch(
                "SELECT event_id::text FROM booking_events WHERE booking_id = ANY($1::uuid[])",
                ids,
            )
            found.materialized = {r["event_id"] for r in rows}
    others = await _related(pool, ids, log, requests)
    log.update(await _decode_log(pool, sorted(others), codec))
    found.events = {b: list(log.get(b, ())) for b in sorted(set(ids) | others)}
    every = sorted(found.events)

    for row in await pool.fetch(
        """SELECT id::text, status, hold, payment, payment_id, provider_deadline_at,
                  provider_notified, customer_notified, failure_reason, events_applied, state
           FROM bookings WHERE id = ANY($1::uuid[])""",
        ids,
    ):
        found.read_model[row["id"]] = dict(row)
    ledger: dict[str, list[evidence.LedgerRow]] = defaultdict(list)
    for row in await pool.fetch(
        """SELECT booking_id::text, payment_id, operation, outcome, amount_minor
           FROM sandbox_ledger WHERE booking_id = ANY($1::uuid[]) ORDER BY id""",
        ids,
    ):
        ledger[row["booking_id"]].append(
            evidence.LedgerRow(
                row["booking_id"],
                row["payment_id"],
                row["operation"],
                row["outcome"],
                int(row["amount_minor"]),
            )
        )
    found.ledger = dict(ledger)
    hold_rows = await pool.fetch(
        """SELECT booking_id::text, status, service_id::text, slot_start FROM reservation_holds
           WHERE booking_id = ANY($1::uuid[])""",
        every,
    )
    found.holds = {r["booking_id"]: r["status"] for r in hold_rows}
    slot_keys = sorted({(r["service_id"], r["slot_start"]) for r in hold_rows})
    if slot_keys:
        for row in await pool.fetch(
            """SELECT c.service_id::text, c.slot_start, c.capacity, c.held, c.confirmed
               FROM slot_capacity c
               JOIN unnest($1::uuid[], $2::timestamptz[]) AS k(service_id, slot_start)
                 ON k.service_id = c.service_id AND k.slot_start = c.slot_start""",
            [s for s, _ in slot_keys],
            [t for _, t in slot_keys],
        ):
            found.slots.append(
                evidence.Slot(
                    row["service_id"],
                    row["slot_start"],
                    row["capacity"],
                    row["held"],
                    row["confirmed"],
                )
            )
    for row in await pool.fetch(
        """SELECT booking_id::text, notification_id, channel, template
           FROM notification_deliveries WHERE booking_id = ANY($1::uuid[])""",
        ids,
    ):
        found.deliveries.append(
            evidence.Delivery(
                row["booking_id"], row["notification_id"], row["channel"], row["template"]
            )
        )
    if catalog is not None:
        found.agents = agent_views(catalog)
        await _agents(pool, ids, found)
    return found


async def _agents(pool: asyncpg.Pool, ids: Sequence[str], found: evidence.Evidence) -> None:
    states: dict[str, dict[str, BookingState]] = defaultdict(dict)
    for row in await pool.fetch(
        "SELECT agent, state FROM agent_state WHERE booking_id = ANY($1::uuid[])", list(ids)
    ):
        state = BookingState.from_json(row["state"])
        states[row["agent"]][state.booking_id] = state
    found.agent_states = dict(states)
    event_ids = sorted({e.event_id for b in ids for e in found.events.get(b, ())})
    processed: dict[str, set[str]] = defaultdict(set)
    for row in await pool.fetch(
        """SELECT consumer, event_id::text FROM processed_events
           WHERE event_id = ANY($1::uuid[])""",
        event_ids,
    ):
        processed[row["consumer"]].add(row["event_id"])
    found.processed = dict(processed)


# --- outside PostgreSQL -----------------------------------------------------------------------


def read_maildir(
    maildir: Path, booking_ids: Iterable[str] | None = None
) -> list[evidence.Received]:
    """The notifications a Maildir received (``erynoa.stack.mail``), by their headers."""
    wanted = None if booking_ids is None else {b.lower() for b in booking_ids}
    parser = BytesHeaderParser()
    found: list[evidence.Received] = []
    for sub in ("new", "cur"):
        folder = maildir / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            with path.open("rb") as f:
                headers = parser.parse(f)
            booking = (headers.get("X-Erynoa-Booking-Id") or "").strip().lower()
            template = (headers.get("X-Erynoa-Template") or "").strip()
            if not booking or not template or (wanted is not None and booking not in wanted):
                continue
            message_id = (headers.get("Message-ID") or path.name).strip()
            found.append(evidence.Received(booking, template, "email", message_id))
    return found


async def read_parked(
    catalog: TopicCatalog,
    bootstrap: str,
    since: datetime | None = None,
    codec: EventCodec | None = None,
) -> list[evidence.Parked]:
    """Every message in the catalog's dead-letter topics (dead-lettered after ``since``)."""
    result = await dead_letters.find(
        catalog, bootstrap, dead_letters.Query(since=since), codec or default_codec()
    )
    owners = dead_letters.dead_letter_topics(catalog)
    return [
        evidence.Parked(
            consumer=m.failure.consumer or owners.get(m.topic) or m.topic,
            event_id=m.event_id,
            booking_id=m.booking_id,
            event_type=m.event_type,
            error_class=m.failure.error_class,
            error_kind=m.failure.error_kind,
        )
        for m in result.messages
    ]


def _field(obj: Any, name: str) -> Any:
    try:
        return obj[name]
    except (KeyError, TypeError):
        return getattr(obj, name, None)


async def stripe_intents(
    client: Any, booking_ids: Iterable[str], created_since: datetime
) -> dict[str, list[evidence.PaymentIntent]]:
    """The PaymentIntents Stripe holds for ``booking_ids`` (by ``metadata.booking_id``), created
    since ``created_since``: every one, also those the log never heard of (an authorization
    whose answer was lost). ``client`` is a ``stripe.StripeClient``."""
    wanted = set(booking_ids)
    found: dict[str, list[evidence.PaymentIntent]] = {b: [] for b in wanted}
    params = {
        "created": {"gte": int(created_since.timestamp())},
        "limit": 100,
        "expand": ["data.latest_charge"],
    }
    page = await client.v1.payment_intents.list_async(params)
    async for intent in page.auto_paging_iter():
        metadata = _field(intent, "metadata") or {}
        booking = _field(metadata, "booking_id")
        if booking not in wanted:
            continue
        charge = _field(intent, "latest_charge")
        refunded = (
            int(_field(charge, "amount_refunded") or 0)
            if charge and not isinstance(charge, str)
            else 0
        )
        found[booking].append(
            evidence.PaymentIntent(
                booking_id=booking,
                payment_id=str(_field(intent, "id")),
                status=str(_field(intent, "status")),
                amount=int(_field(intent, "amount") or 0),
                amount_capturable=int(_field(intent, "amount_capturable") or 0),
                amount_received=int(_field(intent, "amount_received") or 0),
                amount_refunded=refunded,
            )
        )
    return found
