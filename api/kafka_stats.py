"""Kafka numbers for operators: events per topic, consumer lag per group, dead-letter depth.

Uses confluent-kafka's admin client (offset listing is not in aiokafka's admin API). It is
blocking, so ``collect`` runs in a worker thread with every request bounded by ``timeout``.

* events per topic: the sum of the partitions' end offsets (everything ever written);
* lag of a group: end offset minus the group's committed offset, summed over the partitions
  of the topics it consumes (a partition it never committed counts from the earliest offset);
* dead-letter depth: end minus earliest offset (what is still retained there).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from erynoa.topics import TopicCatalog


@dataclass
class KafkaStats:
    events_per_topic: dict[str, int] = field(default_factory=dict)
    partitions_per_topic: dict[str, int] = field(default_factory=dict)
    lag_per_group: dict[str, int] = field(default_factory=dict)
    lag_per_group_topic: dict[str, dict[str, int]] = field(default_factory=dict)
    dead_letter_depth: dict[str, int] = field(default_factory=dict)


def collect(bootstrap: str, catalog: TopicCatalog, timeout: float = 5.0) -> KafkaStats:
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000)})
    metadata = admin.list_topics(timeout=timeout)
    partitions: list[TopicPartition] = []
    for spec in catalog.topics.values():
        found = metadata.topics.get(spec.name)
        if found is None or found.error is not None:
            continue
        partitions += [TopicPartition(spec.name, p) for p in found.partitions]

    latest = _offsets(admin, partitions, OffsetSpec.latest(), timeout)  # type: ignore[no-untyped-call]
    earliest = _offsets(admin, partitions, OffsetSpec.earliest(), timeout)  # type: ignore[no-untyped-call]

    stats = KafkaStats()
    for (topic, partition), end in latest.items():
        kind = catalog.topics[topic].kind
        if kind == "event":
            stats.events_per_topic[topic] = stats.events_per_topic.get(topic, 0) + end
        stats.partitions_per_topic[topic] = stats.partitions_per_topic.get(topic, 0) + 1
        if kind == "dead_letter":
            start = earliest.get((topic, partition), 0)
            stats.dead_letter_depth[topic] = stats.dead_letter_depth.get(topic, 0) + end - start

    for consumer in catalog.consumers.values():
        consumed = [tp for tp in partitions if tp.topic in consumer.consumes]
        request = [ConsumerGroupTopicPartitions(consumer.group_id, consumed)]
        futures = admin.list_consumer_group_offsets(request, request_timeout=timeout)
        result = futures[consumer.group_id].result(timeout=timeout)
        per_topic: dict[str, int] = defaultdict(int)
        for tp in result.topic_partitions or []:
            key = (tp.topic, tp.partition)
            if key not in latest:
                continue
            committed = tp.offset if tp.offset >= 0 else earliest.get(key, 0)
            per_topic[tp.topic] += max(latest[key] - committed, 0)
        stats.lag_per_group_topic[consumer.group_id] = dict(per_topic)
        stats.lag_per_group[consumer.group_id] = sum(per_topic.values())
    return stats


def _offsets(
    admin: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec, timeout: float
) -> dict[tuple[str, int], int]:
    if not partitions:
        return {}
    futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout)
    return {
        (tp.topic, tp.partition): future.result(timeout=timeout).offset
        for tp, future in futures.items()
    }
