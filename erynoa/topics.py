"""The topic catalog: ``topics.yaml`` parsed, validated and resolved for one environment.

This module is pure (no Kafka I/O): it answers "which topic carries event X", "what must
topic Y look like on this cluster", and "which retry and dead-letter topics does consumer Z
have". ``erynoa.topic_admin`` applies the result to a real cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

TopicKind = Literal["event", "retry", "dead_letter"]

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_TOPIC_NAME = re.compile(r"^[a-z][a-z0-9.-]{0,200}$")


class CatalogError(ValueError):
    """``topics.yaml`` is malformed; the message names the file and the field."""


def parse_duration_ms(text: str) -> int:
    """``"7d"`` → milliseconds; ``"forever"`` → -1 (Kafka's "never delete")."""
    if text == "forever":
        return -1
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 500ms, 10s, 5m, 2h, 7d or 'forever'")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Settings(_Strict):
    partitions: int | None = Field(default=None, ge=1, le=10_000)
    replication_factor: int | None = Field(default=None, ge=1, le=15)
    min_insync_replicas: int | None = Field(default=None, ge=1, le=15)
    retention: str | None = None
    cleanup_policy: Literal["delete", "compact", "compact,delete"] | None = None

    @field_validator("retention")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration_ms(value)
        return value


class _TopicSpec(_Settings):
    description: str
    key: Literal["booking_id", "service_id"]
    events: list[str] = Field(min_length=1)


class _ConsumerSpec(_Strict):
    consumes: list[str] = Field(min_length=1)
    retry: list[str] = Field(default_factory=list)

    @field_validator("retry")
    @classmethod
    def _durations(cls, values: list[str]) -> list[str]:
        for value in values:
            if parse_duration_ms(value) <= 0:
                raise ValueError("a retry delay must be positive")
        return values


class _RetentionOnly(_Strict):
    retention: str = "7d"

    @field_validator("retention")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration_ms(value)
        return value


class _CatalogFile(_Strict):
    defaults: _Settings
    environments: dict[str, _Settings] = Field(default_factory=dict)
    topics: dict[str, _TopicSpec]
    consumers: dict[str, _ConsumerSpec]
    retry_topics: _RetentionOnly = _RetentionOnly()
    dead_letter_topics: _RetentionOnly = _RetentionOnly(retention="forever")


@dataclass(frozen=True)
class Topic:
    """One topic as it must exist on the cluster of the chosen environment."""

    name: str
    kind: TopicKind
    partitions: int
    replication_factor: int
    configs: dict[str, str]
    key: str
    events: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Consumer:
    """A consumer group, the topics it reads, and where its failures go."""

    name: str
    group_id: str
    consumes: tuple[str, ...]
    retry_topics: tuple[str, ...]
    retry_delays_ms: tuple[int, ...]
    dead_letter_topic: str


@dataclass(frozen=True)
class TopicCatalog:
    topics: dict[str, Topic]
    consumers: dict[str, Consumer]
    source: Path

    @cached_property
    def _topic_of_event(self) -> dict[str, str]:
        return {event: t.name for t in self.topics.values() for event in t.events}

    def topic_for(self, event_type: str) -> str:
        """The topic that carries ``event_type``; ``KeyError`` if the catalog lacks it."""
        try:
            return self._topic_of_event[event_type]
        except KeyError:
            raise KeyError(f"event type {event_type!r} is not declared in {self.source}") from None

    def consumer(self, name: str) -> Consumer:
        try:
            return self.consumers[name]
        except KeyError:
            raise KeyError(f"consumer {name!r} is not declared in {self.source}") from None

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self._topic_of_event)

    def by_kind(self, kind: TopicKind) -> list[Topic]:
        return [t for t in self.topics.values() if t.kind == kind]


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid topic catalog"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def load_catalog(path: Path, environment: str = "local", prefix: str = "") -> TopicCatalog:
    """Read and validate ``topics.yaml``, resolved for ``environment``.

    ``prefix`` is put before every topic and group name, so separate stacks (or test runs)
    can share one cluster without seeing each other's messages.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    try:
        spec = _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(_format_validation_error(path, exc)) from None

    if environment not in spec.environments:
        known = ", ".join(sorted(spec.environments)) or "none"
        raise CatalogError(f"{path}: environments.{environment}: not declared (known: {known})")
    merged = spec.defaults.model_copy(
        update=spec.environments[environment].model_dump(exclude_none=True)
    )

    def setting(topic: _Settings, name: str) -> object:
        value = getattr(topic, name)
        return value if value is not None else getattr(merged, name)

    problems: list[str] = []
    seen_events: dict[str, str] = {}
    topics: dict[str, Topic] = {}
    for name, t in spec.topics.items():
        if not _TOPIC_NAME.match(name):
            problems.append(f"topics.{name}: not a valid topic name (lower case, digits, . and -)")
        for event in t.events:
            if event in seen_events:
                problems.append(f"topics.{name}.events: {event} is also on {seen_events[event]}")
            seen_events[event] = name
        replication = int(str(setting(t, "replication_factor")))
        min_isr = int(str(setting(t, "min_insync_replicas")))
        if min_isr > replication:
            problems.append(
                f"topics.{name}: min_insync_replicas {min_isr} exceeds replication {replication}"
            )
        retention, cleanup = str(setting(t, "retention")), str(setting(t, "cleanup_policy"))
        if t.key == "booking_id" and (parse_duration_ms(retention) != -1 or cleanup != "delete"):
            # The read model is the fold of these logs: an event deleted by age or compacted
            # away is a booking lost at the next rebuild.
            problems.append(
                f"topics.{name}: a booking topic must keep every event (retention forever, "
                f"cleanup_policy delete), not retention {retention}, cleanup_policy {cleanup}"
            )
        topics[prefix + name] = Topic(
            name=prefix + name,
            kind="event",
            partitions=int(str(setting(t, "partitions"))),
            replication_factor=replication,
            configs=_configs(retention, cleanup, min_isr),
            key=t.key,
            events=tuple(t.events),
            description=t.description,
        )

    booking_partitions = {t.partitions for t in topics.values() if t.key == "booking_id"}
    if len(booking_partitions) > 1:
        problems.append("topics: booking topics must share one partition count (co-partitioning)")

    consumers: dict[str, Consumer] = {}
    replication = int(str(merged.replication_factor))
    min_isr = int(str(merged.min_insync_replicas))
    partitions = max(booking_partitions or {int(str(merged.partitions))})

    def operational(name: str, kind: TopicKind, retention: str, description: str) -> Topic:
        """A consumer's retry or dead-letter topic: as wide as the booking topics, so a
        booking's messages keep their order there too."""
        configs = _configs(retention, "delete", min_isr)
        return Topic(
            name, kind, partitions, replication, configs, key="booking_id", description=description
        )

    for name, c in spec.consumers.items():
        for topic in c.consumes:
            if topic not in spec.topics:
                problems.append(f"consumers.{name}.consumes: {topic} is not a declared topic")
        retry_names = tuple(f"{prefix}{name}.retry.{delay}" for delay in c.retry)
        dlq_name = f"{prefix}{name}.dlq"
        for retry_name in retry_names:
            topics[retry_name] = operational(
                retry_name,
                "retry",
                spec.retry_topics.retention,
                f"Delayed retries of {name}'s failed messages.",
            )
        topics[dlq_name] = operational(
            dlq_name,
            "dead_letter",
            spec.dead_letter_topics.retention,
            f"Messages {name} could not process; inspect and replay with `erynoa dlq`.",
        )
        consumers[name] = Consumer(
            name=name,
            group_id=f"{prefix}erynoa-{name}",
            consumes=tuple(prefix + t for t in c.consumes),
            retry_topics=retry_names,
            retry_delays_ms=tuple(parse_duration_ms(d) for d in c.retry),
            dead_letter_topic=dlq_name,
        )
    if problems:
        raise CatalogError(f"{path}: invalid topic catalog\n  " + "\n  ".join(problems))
    return TopicCatalog(topics=topics, consumers=consumers, source=path)


def _configs(retention: str, cleanup_policy: str, min_insync_replicas: int) -> dict[str, str]:
    return {
        "retention.ms": str(parse_duration_ms(retention)),
        "cleanup.policy": cleanup_policy,
        "min.insync.replicas": str(min_insync_replicas),
    }
