"""Kafka numbers for operators: events per topic, consumer lag per group, dead-letter depth.

Uses aiokafka's admin client and a group-less consumer: pure Python in the API's event loop.
(confluent-kafka's admin client, run in a worker thread that a timeout abandons, crashed the
process when librdkafka tore it down under load.)

* events per topic: the sum of the partitions' end offsets (everything ever written);
* lag of a group: end offset minus the group's committed offset, summed over the partitions
  of the topics it consumes (a partition it never committed counts from the earliest offset);
* dead-letter depth: end minus earliest offset (what is still retained there).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError
from aiokafka.structs import OffsetAndMetadata

from erynoa.kafka import start_consumer, topic_partitions
from erynoa.topics import TopicCatalog


@dataclass
class KafkaStats:
    events_per_topic: dict[str, int] = field(default_factory=dict)
    partitions_per_topic: dict[str, int] = field(default_factory=dict)
    lag_per_group: dict[str, int] = field(default_factory=dict)
    lag_per_group_topic: dict[str, dict[str, int]] = field(default_factory=dict)
    dead_letter_depth: dict[str, int] = field(default_factory=dict)


async def collect(bootstrap: str, catalog: TopicCatalog) -> KafkaStats:
    """Offsets and committed positions of every catalog topic (the caller bounds the time)."""
    partitions = await topic_partitions(bootstrap, list(catalog.topics))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="erynoa-api-stats")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="erynoa-api-stats")
    await start_consumer(consumer)
    await admin.start()
    try:
        latest_tp, earliest_tp = await asyncio.gather(
            consumer.end_offsets(partitions), consumer.beginning_offsets(partitions)
        )
        latest = {(tp.topic, tp.partition): o for tp, o in latest_tp.items()}
        earliest = {(tp.topic, tp.partition): o for tp, o in earliest_tp.items()}
        stats = KafkaStats()
        for (topic, partition), end in latest.items():
            kind = catalog.topics[topic].kind
            if kind == "event":
                stats.events_per_topic[topic] = stats.events_per_topic.get(topic, 0) + end
            stats.partitions_per_topic[topic] = stats.partitions_per_topic.get(topic, 0) + 1
            if kind == "dead_letter":
                start = earliest.get((topic, partition), 0)
                stats.dead_letter_depth[topic] = stats.dead_letter_depth.get(topic, 0) + end - start

        for consumer_spec in catalog.consumers.values():
            consumed = [tp for tp in partitions if tp.topic in consumer_spec.consumes]
            committed = await _committed(admin, consumer_spec.group_id, consumed)
            per_topic: dict[str, int] = defaultdict(int)
            for tp in consumed:
                key = (tp.topic, tp.partition)
                position = committed.get(TopicPartition(tp.topic, tp.partition))
                # A partition the group never committed counts from the earliest offset.
                start = position.offset if position and position.offset >= 0 else earliest[key]
                per_topic[tp.topic] += max(latest[key] - start, 0)
            stats.lag_per_group_topic[consumer_spec.group_id] = dict(per_topic)
            stats.lag_per_group[consumer_spec.group_id] = sum(per_topic.values())
        return stats
    finally:
        await consumer.stop()
        await admin.close()


# On a new cluster the first coordinator lookup creates __consumer_offsets; until its
# partitions have leaders every group's coordinator is "not available" for a few seconds.
_COORDINATOR_WAIT_S = (0.2, 0.5, 1.0, 2.0, 3.0)


async def _committed(
    admin: AIOKafkaAdminClient, group_id: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    for pause in (*_COORDINATOR_WAIT_S, None):
        try:
            committed: dict[
                TopicPartition, OffsetAndMetadata
            ] = await admin.list_consumer_group_offsets(group_id, partitions=partitions)
            return committed
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
            if pause is None:
                raise
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")
