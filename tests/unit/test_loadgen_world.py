"""The synthetic world: fresh ids, skewed popularity, the hot services' share, the intent mix,
and the refusal to aim anywhere but this machine."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from loadgen.engine import check_loopback
from loadgen.model import RunOptions, RunRefused
from loadgen.profile import Intent, Profile, parse_profile
from loadgen.world import Planner, World, zipf_weights

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def profile(**catalog: object) -> Profile:
    return parse_profile(
        {
            "population": {"customers": 50, "providers": 5, "services": 20, "slots_per_service": 4},
            "catalog": catalog,
            "outcomes": {"provider_accepts": 7, "card_declined": 2, "customer_cancels": 1},
        },
        "test",
    )


def test_ids_are_fresh_per_run() -> None:
    a = World.build(profile(), "run-a", seed=1, now=NOW)
    b = World.build(profile(), "run-b", seed=2, now=NOW)
    assert not set(a.customers) & set(b.customers)
    assert not {s.id for s in a.services} & {s.id for s in b.services}
    assert all(c.startswith("lg-run-a-") for c in a.customers)


def test_the_same_seed_builds_the_same_world() -> None:
    a = World.build(profile(), "r", seed=7, now=NOW)
    b = World.build(profile(), "r", seed=7, now=NOW)
    assert a == b


def test_slots_are_in_the_future_on_the_hour() -> None:
    world = World.build(profile(), "r", seed=1, now=NOW)
    for service in world.services:
        for slot in service.slots:
            assert slot > NOW
            assert slot.minute == slot.second == 0


def test_popularity_is_skewed_towards_low_ranks() -> None:
    weights = zipf_weights(3, 1.0)
    assert weights == pytest.approx([1.0, 1.5, 1.0 + 1 / 2 + 1 / 3])
    world = World.build(profile(popularity_skew=1.2), "r", seed=1, now=NOW)
    planner = Planner(world, seed=3)
    ranks = Counter(planner.plan(i).service.rank for i in range(5000))
    assert ranks[1] > ranks[2] > ranks[10]


def test_hot_services_draw_their_share_and_have_tiny_slots() -> None:
    world = World.build(
        profile(hot_services=2, hot_capacity_per_slot=1, hot_slots=1, hot_traffic_share=0.1),
        "r",
        seed=1,
        now=NOW,
    )
    hot = [s for s in world.services if s.hot]
    assert len(hot) == 2
    assert all(s.capacity_per_slot == 1 and len(s.slots) == 1 for s in hot)
    planner = Planner(world, seed=5)
    share = sum(planner.plan(i).service.hot for i in range(10_000)) / 10_000
    assert share == pytest.approx(0.1, abs=0.015)


def test_intents_follow_the_profile_and_pick_their_card() -> None:
    world = World.build(profile(), "r", seed=1, now=NOW)
    planner = Planner(world, seed=9)
    plans = [planner.plan(i) for i in range(10_000)]
    counts = Counter(p.intent for p in plans)
    assert counts[Intent.PROVIDER_ACCEPTS] / 10_000 == pytest.approx(0.7, abs=0.02)
    assert counts[Intent.CARD_DECLINED] / 10_000 == pytest.approx(0.2, abs=0.02)
    assert Intent.PROVIDER_REJECTS not in counts
    declined = next(p for p in plans if p.intent is Intent.CARD_DECLINED)
    assert declined.payment_method == "pm_card_chargeDeclined"
    accepted = next(p for p in plans if p.intent is Intent.PROVIDER_ACCEPTS)
    assert accepted.payment_method == "pm_card_visa"


@pytest.mark.parametrize(
    ("api", "kafka", "db"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:9092", "postgresql://u@127.0.0.1:5432/d"),
        ("http://localhost:8080", "localhost:9092,127.0.0.2:9093", "postgresql://u@[::1]/d"),
    ],
)
def test_loopback_targets_are_accepted(api: str, kafka: str, db: str) -> None:
    check_loopback(api, kafka, db)


@pytest.mark.parametrize(
    ("api", "kafka", "db", "named"),
    [
        ("http://10.0.0.5:8080", "127.0.0.1:9092", "postgresql://u@127.0.0.1/d", "API"),
        ("http://127.0.0.1:80", "127.0.0.1:9092,kafka:9092", "postgresql://u@127.0.0.1/d", "Kafka"),
        ("http://127.0.0.1:80", "127.0.0.1:9092", "postgresql://u@db.example/d", "PostgreSQL"),
        ("http://api.example.com", "127.0.0.1:9092", "postgresql://u@127.0.0.1/d", "API"),
    ],
)  # fmt: skip
def test_anything_else_is_refused(api: str, kafka: str, db: str, named: str) -> None:
    with pytest.raises(RunRefused, match=f"refusing {named}"):
        check_loopback(api, kafka, db)


def test_a_run_needs_a_bound() -> None:
    options = RunOptions(via="kafka", profile=profile())
    with pytest.raises(RunRefused, match="--count or --duration"):
        options.total()
    assert RunOptions(via="kafka", profile=profile(), rate=10, duration_s=3).total() == 30
