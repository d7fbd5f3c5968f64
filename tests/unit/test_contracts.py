"""The catalog and the contracts agree with the code: every event type the code can build is
declared on exactly one topic in topics.yaml and has a schema under schemas/, and every agent
the code runs is a consumer declared there."""

from __future__ import annotations

from erynoa.codec import local_codec
from erynoa.events import EVENT_TYPES
from erynoa.saga import Agent
from erynoa.settings import PROJECT_ROOT
from erynoa.supervisor import AGENTS
from erynoa.topics import load_catalog

CATALOG = load_catalog(PROJECT_ROOT / "topics.yaml")


def test_every_event_type_in_code_is_declared_on_a_topic_and_nothing_else_is() -> None:
    assert set(EVENT_TYPES) == set(CATALOG.event_types)


def test_every_event_type_has_a_schema() -> None:
    assert set(local_codec().versions) == set(EVENT_TYPES)


def test_every_agent_and_the_materializer_are_declared_consumers() -> None:
    declared = set(CATALOG.consumers)
    assert {*AGENTS, "materializer"} <= declared
    assert set(Agent.__args__) == set(AGENTS)  # type: ignore[attr-defined]


def test_every_consumer_reads_only_declared_event_topics() -> None:
    event_topics = {t.name for t in CATALOG.by_kind("event")}
    for consumer in CATALOG.consumers.values():
        assert set(consumer.consumes) <= event_topics, consumer.name
        assert consumer.dead_letter_topic in CATALOG.topics
        assert all(t in CATALOG.topics for t in consumer.retry_topics)
