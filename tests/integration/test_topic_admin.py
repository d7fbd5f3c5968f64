"""``erynoa topics apply`` against the real broker: it creates and alters what Kafka allows
and reports, never fixes, what would move a booking's events to another partition.

Each test uses its own topic prefix on the default stack's broker and deletes its topics after.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import suppress

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from erynoa.settings import Settings
from erynoa.topic_admin import admin_client, apply, plan
from erynoa.topics import TopicCatalog, load_catalog

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(settings: Settings) -> AdminClient:
    return admin_client(settings.kafka_bootstrap)


@pytest.fixture
def catalog(settings: Settings, admin: AdminClient) -> Iterator[TopicCatalog]:
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    catalog = load_catalog(settings.topics_file, settings.topics_environment, prefix)
    yield catalog
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [name for name in catalog.topics if name in existing]
    if doomed:
        for future in admin.delete_topics(doomed, request_timeout=30).values():
            with suppress(Exception):  # best effort: a leftover test topic harms nothing
                future.result(timeout=30)


def _partitions(admin: AdminClient, topic: str) -> int:
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def test_apply_creates_every_topic_and_then_finds_no_drift(
    admin: AdminClient, catalog: TopicCatalog
) -> None:
    created = apply(admin, catalog)

    assert {c.topic for c in created if c.kind == "create"} == set(catalog.topics)
    assert plan(admin, catalog) == []
    bookings = next(t for t in catalog.topics.values() if t.name.endswith("-bookings"))
    assert _partitions(admin, bookings.name) == bookings.partitions


@pytest.mark.parametrize("suffix", ["reservations", "payment.retry.1s", "catalog-services"])
def test_apply_never_adds_partitions_to_a_keyed_topic(
    admin: AdminClient, catalog: TopicCatalog, suffix: str
) -> None:
    """More partitions move keys: a booking's next events would land on another partition
    than its earlier ones (and a compacted key would live on twice)."""
    topic = catalog.topics[next(name for name in catalog.topics if name.endswith(suffix))]
    fewer = topic.partitions - 1
    futures = admin.create_topics(
        [NewTopic(topic.name, num_partitions=fewer, replication_factor=1, config=topic.configs)]
    )
    futures[topic.name].result(timeout=30)
    while topic.name not in admin.list_topics(timeout=10).topics:  # metadata lags the create
        time.sleep(0.1)

    changes = apply(admin, catalog)

    about = [c for c in changes if c.topic == topic.name]
    assert [c.kind for c in about] == ["manual"], about
    assert f"has {fewer} partitions, catalog says {topic.partitions}" in about[0].detail
    assert f"keyed by {topic.key}" in about[0].detail
    assert _partitions(admin, topic.name) == fewer
    # Reported again, not fixed, on every later apply and check.
    assert [c.kind for c in plan(admin, catalog) if c.topic == topic.name] == ["manual"]
