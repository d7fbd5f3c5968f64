"""The booking backbone's invariants 1-9, checked over the evidence a run leaves behind.

    violations = await check_invariants(pool, booking_ids, catalog=catalog, requests=requests)
    assert not violations, "\\n".join(map(str, violations))

``gather`` reads the evidence (``ops.invariants.gather``), ``evaluate`` judges it with pure
rules (``ops.invariants.rules``, where each invariant is spelled out), so the unit tests feed
hand-made evidence that breaks each rule (a checker that cannot fail proves nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from erynoa import saga
from erynoa.codec import EventCodec
from erynoa.events import BookingEvent
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog, load_catalog
from ops.invariants.evidence import ClientRequest, Parked, PaymentIntent, Received, Violation
from ops.invariants.gather import gather, read_maildir, read_parked, stripe_intents
from ops.invariants.rules import DEFAULT_GRACE, DEFAULT_POLICY, DEFAULT_STALL, evaluate

# What callers of the checker name: what they pass in, what they get back, and the readers of
# the evidence that lives outside PostgreSQL. The evidence's parts are ``ops.invariants.evidence``.
__all__ = [
    "ClientRequest",
    "Violation",
    "check_invariants",
    "read_maildir",
    "read_parked",
    "stripe_intents",
]


async def check_invariants(
    pool: asyncpg.Pool,
    booking_ids: Iterable[str],
    *,
    events: Mapping[str, Sequence[BookingEvent]] | None = None,
    now: datetime | None = None,
    policy: saga.Policy = DEFAULT_POLICY,
    deadline_grace: timedelta = DEFAULT_GRACE,
    stall_after: timedelta = DEFAULT_STALL,
    catalog: TopicCatalog | None = None,
    requests: Sequence[ClientRequest] = (),
    received: list[Received] | None = None,
    parked: list[Parked] | None = None,
    intents: dict[str, list[PaymentIntent]] | None = None,
    materializer: bool | None = None,
    codec: EventCodec | None = None,
) -> list[Violation]:
    """Every violation of invariants 1-9 for ``booking_ids`` (empty when all hold).

    ``catalog`` says which agent consumes what (``topics.yaml`` by default), for the agents'
    states and processed events. The optional evidence widens what is judged: ``requests`` what
    clients were told, ``received`` what receivers got (``read_maildir``), ``parked`` the
    dead-letter topics (``read_parked``), ``intents`` Stripe's PaymentIntents
    (``stripe_intents``). ``materializer``: whether one ran (by default: when ``events`` are
    not given). ``codec``: the one of the system judged (its Schema Registry); by default this
    process's.
    """
    ids = list(booking_ids)
    if catalog is None:
        # Only which agent consumes which event types is read: no environment or prefix needed.
        catalog = load_catalog(Settings().topics_file)
    evidence = await gather(
        pool, ids, events, codec, catalog=catalog, requests=requests, materializer=materializer
    )
    # The caller read what lives outside PostgreSQL (read_maildir, read_parked, stripe_intents);
    # None leaves that part unjudged.
    evidence.received = received
    evidence.parked = parked
    evidence.intents = intents
    return evaluate(
        evidence,
        ids,
        now or datetime.now(UTC),
        policy,
        deadline_grace=deadline_grace,
        stall_after=stall_after,
    )
