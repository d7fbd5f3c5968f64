"""The synthetic world of one run: its customers, providers, services and slots, and the plan
of which booking comes next.

Every run gets fresh ids (``lg-<run>-c17`` for customer 17, random uuids for services), so runs
never touch each other's data or anyone else's, and nothing is ever truncated. The services are
written straight into PostgreSQL rather than through ``POST /services``: the API requires a
provider deadline of at least 60 s, and "provider never answers" must expire within a short run.
Users get no e-mail address and no webhook, so even a notification that lost its synthetic
marker has nowhere real to go. ``retire`` deactivates the run's services afterwards, so they
drop out of the public catalog.

``World.build`` and ``Planner`` are pure (seeded); ``create``/``retire`` do the I/O.
"""

from __future__ import annotations

import bisect
import itertools
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from loadgen.profile import DEFAULT_PAYMENT_METHOD, PAYMENT_METHOD, Intent, Profile

# Fixed, so a run's service ids follow from its run id.
_SERVICE_NAMESPACE = uuid.UUID("8a1d2c3b-4e5f-5a6b-9c7d-0e1f2a3b4c5d")


@dataclass(frozen=True)
class Service:
    id: str
    rank: int  # 1 = the most popular
    provider_id: str
    price_minor: int
    currency: str
    duration_minutes: int
    response_deadline_seconds: int
    capacity_per_slot: int
    slots: tuple[datetime, ...]
    hot: bool


@dataclass(frozen=True)
class World:
    run_id: str
    profile: Profile
    customers: tuple[str, ...]
    providers: tuple[str, ...]
    services: tuple[Service, ...]

    @classmethod
    def build(cls, profile: Profile, run_id: str, seed: int, now: datetime) -> World:
        """Lay out the run's people and catalog; the same inputs give the same world."""
        rng = random.Random(seed)
        pop, cat = profile.population, profile.catalog
        customers = tuple(f"lg-{run_id}-c{i}" for i in range(pop.customers))
        providers = tuple(f"lg-{run_id}-p{i}" for i in range(pop.providers))
        # Slots start a week out, on the hour: far from "now" (always in the future while the
        # run lasts) and well inside the API's two-year booking horizon.
        first_slot = (now + timedelta(days=7)).replace(minute=0, second=0, microsecond=0)
        services = []
        for index in range(pop.services):
            rank = index + 1
            hot = rank <= cat.hot_services
            slot_count = cat.hot_slots if hot else pop.slots_per_service
            # From the run id, not the seed: a repeated seed must not reuse a service id.
            service_id = str(uuid.uuid5(_SERVICE_NAMESPACE, f"{run_id}/{rank}"))
            services.append(
                Service(
                    id=service_id,
                    rank=rank,
                    provider_id=providers[index % len(providers)],
                    price_minor=rng.randint(cat.price_min_minor, cat.price_max_minor),
                    currency=cat.currency,
                    duration_minutes=cat.duration_minutes,
                    response_deadline_seconds=cat.response_deadline_seconds,
                    capacity_per_slot=cat.hot_capacity_per_slot if hot else cat.capacity_per_slot,
                    slots=tuple(first_slot + timedelta(hours=h) for h in range(slot_count)),
                    hot=hot,
                )
            )
        return cls(run_id, profile, customers, providers, tuple(services))

    def service(self, service_id: str) -> Service:
        for service in self.services:
            if service.id == service_id:
                return service
        raise KeyError(service_id)


@dataclass(frozen=True)
class Planned:
    """One booking the run will request, and what its people will do."""

    index: int
    customer_id: str
    service: Service
    slot_start: datetime
    intent: Intent
    payment_method: str
    # How long the provider/customer takes once the booking is ready for them.
    reaction_delay_s: float


def zipf_weights(n: int, skew: float) -> list[float]:
    """Cumulative popularity of ranks 1..n with P(k) ∝ 1/k**skew (skew 0: uniform)."""
    return list(itertools.accumulate(1.0 / (k**skew) for k in range(1, n + 1)))


class Planner:
    """Draws the next booking: a customer, a service by popularity, a slot, an intent."""

    def __init__(self, world: World, seed: int) -> None:
        self.world = world
        self._rng = random.Random(seed)
        profile = world.profile
        skew = profile.catalog.popularity_skew
        self._hot = [s for s in world.services if s.hot]
        self._normal = [s for s in world.services if not s.hot]
        self._hot_share = profile.catalog.hot_traffic_share if self._hot else 0.0
        if not self._normal:  # every service is hot: all traffic goes there
            self._hot_share = 1.0
        self._hot_cumulative = zipf_weights(len(self._hot), skew)
        self._normal_cumulative = zipf_weights(len(self._normal), skew)
        shares = profile.outcomes.shares()
        self._intents = [i for i in Intent if shares[i] > 0]
        self._intent_cumulative = list(itertools.accumulate(shares[i] for i in self._intents))

    def _pick(self, cumulative: list[float]) -> int:
        point = self._rng.random() * cumulative[-1]
        return min(bisect.bisect_right(cumulative, point), len(cumulative) - 1)

    def _delay(self, intent: Intent) -> float:
        timing = self.world.profile.timing
        if intent is Intent.ACTION_REQUIRED:
            span = timing.action_delay
        elif intent is Intent.CUSTOMER_CANCELS:
            span = timing.cancel_delay
        else:
            span = timing.provider_delay
        return self._rng.uniform(span.min_ms, span.max_ms) / 1000.0

    def plan(self, index: int) -> Planned:
        # Decide hot or not first, so the hot share is exactly what the profile says
        # whatever the popularity skew; within each group popularity is Zipf-like by rank.
        if self._hot_share > 0 and self._rng.random() < self._hot_share:
            service = self._hot[self._pick(self._hot_cumulative)]
        else:
            service = self._normal[self._pick(self._normal_cumulative)]
        intent = self._intents[self._pick(self._intent_cumulative)]
        return Planned(
            index=index,
            customer_id=self._rng.choice(self.world.customers),
            service=service,
            slot_start=self._rng.choice(service.slots),
            intent=intent,
            payment_method=PAYMENT_METHOD.get(intent, DEFAULT_PAYMENT_METHOD),
            reaction_delay_s=self._delay(intent),
        )


async def create(pool: asyncpg.Pool, world: World) -> None:
    """Write the run's users and services (fresh ids: nothing else is touched)."""
    users = [(c, ["customer"]) for c in world.customers] + [
        (p, ["provider"]) for p in world.providers
    ]
    services = [
        (
            uuid.UUID(s.id),
            s.provider_id,
            f"loadgen {world.run_id} #{s.rank}",
            "Synthetic service of a load test run.",
            s.price_minor,
            s.currency,
            s.duration_minutes,
            s.capacity_per_slot,
            s.response_deadline_seconds,
        )
        for s in world.services
    ]
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table(
            "users",
            records=[(uid, f"loadgen {uid}", roles) for uid, roles in users],
            columns=["id", "display_name", "roles"],
        )
        await conn.copy_records_to_table(
            "services",
            records=services,
            columns=[
                "id",
                "provider_id",
                "name",
                "description",
                "price_amount_minor",
                "price_currency",
                "duration_minutes",
                "capacity_per_slot",
                "response_deadline_seconds",
            ],
        )


async def retire(pool: asyncpg.Pool, world: World) -> None:
    """Deactivate the run's services so they leave the public catalog (rows stay for audit)."""
    await pool.execute(
        "UPDATE services SET active = false, updated_at = now() WHERE id = ANY($1::uuid[])",
        [uuid.UUID(s.id) for s in world.services],
    )


def new_run_id() -> str:
    """A short id for the run, unique enough to never collide with another run's ids."""
    return uuid.uuid4().hex[:10]


def utcnow() -> datetime:
    return datetime.now(UTC)
