"""Make a Kafka cluster match the topic catalog, or report how it differs.

``plan`` compares the cluster with the catalog and returns the changes; ``apply`` carries out
the safe ones (create, alter configs) and leaves the rest as drift a person must resolve.
A partition count that differs is always drift: every topic here is keyed, and Kafka's "add
partitions" moves keys to other partitions, so a booking's later events would no longer sit
after its earlier ones (nor beside them on the co-partitioned topics). Another count or
replication factor needs new topics and a migration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from erynoa.topics import Topic, TopicCatalog

ChangeKind = Literal["create", "alter_config", "manual"]


@dataclass(frozen=True)
class Change:
    topic: str
    kind: ChangeKind
    detail: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.detail}"


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000})


def plan(admin: AdminClient, catalog: TopicCatalog, timeout: float = 15.0) -> list[Change]:
    """Every difference between the catalog and the cluster, as the change that would fix it."""
    metadata = admin.list_topics(timeout=timeout)
    changes: list[Change] = []
    existing: list[Topic] = []
    for topic in catalog.topics.values():
        found = metadata.topics.get(topic.name)
        if found is None or found.error is not None:
            changes.append(
                Change(
                    topic.name,
                    "create",
                    f"create with {topic.partitions} partitions, replication "
                    f"{topic.replication_factor}, {topic.configs}",
                )
            )
            continue
        existing.append(topic)
        partitions = len(found.partitions)
        if partitions < topic.partitions:
            changes.append(
                Change(
                    topic.name,
                    "manual",
                    f"has {partitions} partitions, catalog says {topic.partitions}; not added: "
                    f"the topic is keyed by {topic.key} and more partitions would move keys to "
                    "other partitions, apart from their earlier events (create new topics with "
                    f"{topic.partitions} and migrate, or keep {partitions} in topics.yaml)",
                )
            )
        elif partitions > topic.partitions:
            changes.append(
                Change(
                    topic.name,
                    "manual",
                    f"has {partitions} partitions, catalog says {topic.partitions} "
                    "(Kafka cannot remove partitions: recreate the topic)",
                )
            )
        replication = len(next(iter(found.partitions.values())).replicas) if partitions else 0
        if replication != topic.replication_factor:
            changes.append(
                Change(
                    topic.name,
                    "manual",
                    f"replication factor {replication}, catalog says {topic.replication_factor} "
                    "(reassign partitions to change it)",
                )
            )
    if existing:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in existing]
        futures = admin.describe_configs(resources, request_timeout=timeout)
        for topic, resource in zip(existing, resources, strict=True):
            actual = futures[resource].result(timeout=timeout)
            for key, wanted in topic.configs.items():
                have = actual[key].value if key in actual else None
                if have != wanted:
                    changes.append(Change(topic.name, "alter_config", f"{key} {have} -> {wanted}"))
    return changes


def apply(admin: AdminClient, catalog: TopicCatalog, timeout: float = 30.0) -> list[Change]:
    """Carry out every change Kafka allows; returns what was done plus what stays manual."""
    changes = plan(admin, catalog, timeout)
    topics = catalog.topics
    creates = [
        NewTopic(
            c.topic,
            num_partitions=topics[c.topic].partitions,
            replication_factor=topics[c.topic].replication_factor,
            config=topics[c.topic].configs,
        )
        for c in changes
        if c.kind == "create"
    ]
    if creates:
        for name, future in admin.create_topics(creates, request_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                # Another process created it between plan and apply: that is the goal reached.
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise RuntimeError(f"{name}: could not create: {exc}") from None
    alter = sorted({c.topic for c in changes if c.kind == "alter_config"})
    if alter:
        resources = [
            ConfigResource(
                ConfigResource.Type.TOPIC,
                name,
                incremental_configs=[
                    ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                    for key, value in topics[name].configs.items()
                ],
            )
            for name in alter
        ]
        for _resource, future in admin.incremental_alter_configs(resources).items():
            future.result(timeout=timeout)
    return changes
