"""The AsyncAPI 3.0 document of every topic, message and operation, generated from the code.

``erynoa asyncapi`` writes ``asyncapi.yaml`` at the project root; ``erynoa asyncapi --check``
exits non-zero when the committed file differs from a fresh generation. Sources, none of them
restated here:

* ``topics.yaml`` (``erynoa.topics``): channels, keys, partitions, retention, consumer groups,
  retry and dead-letter topics. Production values; the local stack's overrides are noted.
* ``schemas/`` (``erynoa.codec``): one message per event type, its newest ``.avsc`` inline
  (every version is in ``schemas/``); an event type without a schema is refused.
* ``erynoa.kafka``'s header names, split by ``streams.failures`` into the headers every event
  carries and the bookkeeping of retry and dead-letter hops.
* ``contracts.sources``: who sends which event (API, operators, agents).
* ``contracts.saga_graph``: the saga graph, a Mermaid diagram in ``info.description``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from contracts.saga_graph import SagaGraph, explore
from contracts.sources import LOADGEN_SERVICE, OPS_SERVICE, CodeFacts, read_code
from erynoa import kafka
from erynoa.codec import EventCodec, require_complete
from erynoa.events import EVENT_TYPES
from erynoa.settings import PROJECT_ROOT
from erynoa.topics import Topic, TopicCatalog, load_catalog

DOCUMENT = PROJECT_ROOT / "asyncapi.yaml"
AVRO_FORMAT = "application/vnd.apache.avro;version=1.9.0"
KAFKA_BINDING = "0.5.0"
# The environment whose sizes the document states: what other systems subscribe to.
ENVIRONMENT = "production"
LOCAL_ENVIRONMENT = "local"
SUBSCRIBERS = "subscribers"
WIRE_FORMAT = (
    "The Confluent wire format: a `00` magic byte, the writer schema's 4-byte big-endian id in "
    "the Schema Registry, then the Avro binary body. Subjects follow the "
    "TopicRecordNameStrategy (`<topic>-<record full name>`), compatibility BACKWARD; read "
    "with any Confluent-compatible deserializer (`/apis/ccompat/v7` of the registry). During "
    "a migration from older releases a value may still be Avro single-object encoded (`C3 01`, "
    "the 8-byte CRC-64-AVRO fingerprint, the body): match the fingerprint among "
    "`schemas/*.avsc`."
)

HEADER_DOCS: dict[str, str] = {
    kafka.H_EVENT_TYPE: "The event type (the Avro record's name), to route without decoding.",
    kafka.H_REQUEST_ID: "The id of the API request that led to this event, when there was one.",
    kafka.H_TRACEPARENT: "W3C trace context of the span that produced the event.",
    kafka.H_TRACESTATE: "W3C trace state, beside `traceparent`.",
    kafka.H_SYNTHETIC: "`true` on load-test traffic; ignore such events in business reports.",
    kafka.H_REPLAY: "Set when an operator replayed the message from a dead-letter topic.",
    kafka.H_ATTEMPTS: "How often the consumer group has tried the message so far.",
    kafka.H_ERROR: "The last failure, as text.",
    kafka.H_ERROR_CLASS: "The last failure's exception class.",
    kafka.H_ERROR_KIND: "`retryable` or `permanent` (a permanent one skips the retry tiers).",
    kafka.H_ORIGIN_TOPIC: "The topic the message was first consumed from.",
    kafka.H_ORIGIN_PARTITION: "Its partition there.",
    kafka.H_ORIGIN_OFFSET: "Its offset there.",
    kafka.H_FIRST_FAILURE: "When it first failed (ISO 8601, UTC).",
    kafka.H_LAST_FAILURE: "When it last failed (ISO 8601, UTC).",
    kafka.H_NOT_BEFORE: "Not to be retried before this time (ISO 8601, UTC).",
    kafka.H_CONSUMER: "The consumer group (topics.yaml's consumer) that failed on it.",
}


SENDER_ROLES = {
    "api": "The API",
    OPS_SERVICE: "Operator tooling (`erynoa saga cancel|retry`)",
    LOADGEN_SERVICE: f"The load generator (synthetic traffic, header `{kafka.H_SYNTHETIC}`)",
}


class DocumentError(ValueError):
    """The code and its contracts disagree; the message says where."""


@dataclass(frozen=True)
class Sources:
    catalog: TopicCatalog
    local: TopicCatalog
    codec: EventCodec
    code: CodeFacts
    graph: SagaGraph


def header_names() -> dict[str, str]:
    """Every Kafka header name ``erynoa.kafka`` declares (``H_*``), by constant name."""
    return {
        name: value
        for name, value in vars(kafka).items()
        if name.startswith("H_") and isinstance(value, str)
    }


def failure_header_names() -> frozenset[str]:
    """The headers a retry or dead-letter hop sets (``erynoa.kafka.failure_headers``)."""
    return kafka.FAILURE_HEADERS | {kafka.H_ATTEMPTS}


def load_sources(root: Path = PROJECT_ROOT) -> Sources:
    """Everything the document is made of, read from the checkout at ``root``."""
    catalog = load_catalog(root / "topics.yaml", ENVIRONMENT)
    local = load_catalog(root / "topics.yaml", LOCAL_ENVIRONMENT)
    codec = require_complete(EventCodec(root / "schemas"))
    schemaless = sorted(catalog.event_types - set(codec.versions))
    if schemaless:
        raise DocumentError(
            f"{catalog.source}: declares {', '.join(schemaless)} but there is no schema for it "
            f"in {codec.schemas_dir} (expected {schemaless[0]}.v1.avsc)"
        )
    undeclared = sorted(set(codec.versions) - catalog.event_types)
    if undeclared:
        raise DocumentError(
            f"{catalog.source}: no topic carries {', '.join(undeclared)} (it has a schema in "
            f"{codec.schemas_dir}); add it to a topic's events"
        )
    code = read_code(root, EVENT_TYPES)
    for service, sent in code.senders.items():
        for event in sorted(set(sent) - catalog.event_types):
            files = ", ".join(sorted(str(p) for p in sent[event]))
            raise DocumentError(f"{files}: {service} sends {event}, which no topic declares")
    for agent in code.agents:
        if agent not in catalog.consumers:
            raise DocumentError(
                f"{code.agents[agent].path}: agent {agent!r} has no consumer in {catalog.source}"
            )
    consumes = {
        c.name: {e for t in c.consumes for e in catalog.topics[t].events}
        for c in catalog.consumers.values()
    }
    graph = explore(
        {a: c.emits_for_action for a, c in code.agents.items()},
        {a: c.emits_on_event for a, c in code.agents.items()},
        {s: set(e) for s, e in code.senders.items() if s not in code.agents},
        consumes,
    )
    return Sources(catalog, local, codec, code, graph)


def _retention(topic: Topic) -> str:
    ms = int(topic.configs["retention.ms"])
    if ms < 0:
        return "kept forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"kept {ms // size}{unit}"
    return f"kept {ms}ms"


def _channel_bindings(topic: Topic) -> dict[str, Any]:
    return {
        "kafka": {
            "topic": topic.name,
            "partitions": topic.partitions,
            "replicas": topic.replication_factor,
            "topicConfiguration": {
                "cleanup.policy": topic.configs["cleanup.policy"].split(","),
                "retention.ms": int(topic.configs["retention.ms"]),
            },
            "bindingVersion": KAFKA_BINDING,
        }
    }


def _headers_schema(names: list[str], title: str) -> dict[str, Any]:
    return {
        "type": "object",
        "title": title,
        "description": "Kafka record headers; every value is UTF-8 text.",
        "properties": {
            name: {"type": "string", "description": HEADER_DOCS[name]} for name in names
        },
    }


def _avsc(codec: EventCodec, event_type: str) -> dict[str, Any]:
    """The newest ``.avsc`` of ``event_type``, its named types' full names split (see below)."""
    version = codec.versions[event_type][-1]
    path = codec.schemas_dir / f"{event_type}.v{version}.avsc"
    loaded: dict[str, Any] = _split_full_names(json.loads(path.read_text()))
    return loaded


def _split_full_names(avro: Any) -> Any:
    """``{"name": "erynoa.Money"}`` as ``{"name": "Money", "namespace": "erynoa"}``.

    Avro allows a full name in ``name``; AsyncAPI's Avro meta-schema accepts only a simple name
    there. Both spell the same full name, so the schema's Parsing Canonical Form (and with it
    its fingerprint) is unchanged; a test holds the two to that.
    """
    if isinstance(avro, list):
        return [_split_full_names(item) for item in avro]
    if not isinstance(avro, dict):
        return avro
    converted = {key: _split_full_names(value) for key, value in avro.items()}
    name = converted.get("name")
    if converted.get("type") in ("record", "enum", "fixed") and isinstance(name, str):
        namespace, dot, simple = name.rpartition(".")
        if dot:
            converted["name"] = simple
            converted["namespace"] = namespace
    return converted


def _message(event_type: str, src: Sources, headers: str, failed: bool) -> dict[str, Any]:
    schema = _avsc(src.codec, event_type)
    versions = ", ".join(f"v{v}" for v in src.codec.versions[event_type])
    topic = src.catalog.topic_for(event_type)
    key = src.catalog.topics[topic].key
    summary = str(schema.get("doc") or f"{event_type} on {topic}.")
    description = (
        f"Key: `{key}`. Schema versions in `schemas/`: {versions} (the newest is shown).\n\n"
        + WIRE_FORMAT
    )
    if failed:
        summary = f"A {event_type} that failed, with the failure headers."
        description = (
            f"The original record of `{topic}`: key, value bytes and headers unchanged, with the "
            "failure bookkeeping headers added. A value that could not be decoded at all is "
            "kept byte for byte as well.\n\n" + description
        )
    return {
        "name": event_type,
        "title": event_type + (" (failed)" if failed else ""),
        "summary": summary,
        "description": description,
        "contentType": "avro/binary",
        "headers": {"$ref": f"#/components/schemas/{headers}"},
        "payload": {"$ref": f"#/components/schemas/{event_type}"},
        "correlationId": {"$ref": "#/components/correlationIds/correlationId"},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": f"The event's `{key}`."},
                "schemaIdLocation": "payload",
                "schemaIdPayloadEncoding": "confluent",
                "schemaLookupStrategy": "TopicRecordNameStrategy",
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }


def _group(name: str) -> dict[str, Any]:
    return {
        "kafka": {
            "groupId": {"type": "string", "enum": [f"erynoa-{name}"]},
            "bindingVersion": KAFKA_BINDING,
        }
    }


def _description(src: Sources) -> str:
    agents = ", ".join(f"`{a}`" for a in sorted(src.code.agents))
    return "\n".join(
        [
            "Every Kafka topic of Erynoa's booking backbone: what it carries, who sends it and "
            "who consumes it. Generated by `erynoa asyncapi` from `topics.yaml`, `schemas/` and "
            "the code; do not edit by hand.",
            "",
            "Every booking event is keyed by `booking_id`, so one booking's events are ordered "
            "within one partition; the booking topics are co-partitioned. Delivery is at least "
            "once: deduplicate on `event_id`.",
            "",
            f"Partitions and replication are production's; the local stack "
            f"(`ERYNOA_TOPICS_ENVIRONMENT={LOCAL_ENVIRONMENT}`) uses "
            f"{_local_sizes(src)}.",
            "",
            "## The saga",
            "",
            f"The agents ({agents}) each consume their topics and emit the next events. An arrow "
            "is an agent's action: the event it starts from, the events it may emit. Dotted "
            "arrows are compensations (taken for a booking that already ended); `deadline "
            "passed` is a timer, not an event.",
            "",
            "```mermaid",
            src.graph.mermaid(),
            "```",
        ]
    )


def _local_sizes(src: Sources) -> str:
    sizes = sorted({(t.partitions, t.replication_factor) for t in src.local.topics.values()})
    return "; ".join(f"{p} partitions, replication factor {r}" for p, r in sizes)


def build(src: Sources) -> dict[str, Any]:
    """The AsyncAPI document as plain data, in a stable order."""
    from erynoa import __version__

    catalog = src.catalog
    all_headers = header_names()
    undocumented = sorted(set(all_headers.values()) - set(HEADER_DOCS))
    if undocumented:
        raise DocumentError(
            f"erynoa/kafka.py: header {', '.join(undocumented)} has no description in "
            "contracts/asyncapi.py HEADER_DOCS"
        )
    failure_names = failure_header_names()
    event_headers = sorted(v for v in all_headers.values() if v not in failure_names)
    failure_headers = sorted(v for v in all_headers.values() if v in failure_names)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "EventHeaders": _headers_schema(event_headers, "Headers of every event"),
        "FailureHeaders": {
            "allOf": [
                {"$ref": "#/components/schemas/EventHeaders"},
                _headers_schema(failure_headers, "Failure bookkeeping"),
            ]
        },
    }
    for event_type in sorted(src.codec.versions):
        schemas[event_type] = {"schemaFormat": AVRO_FORMAT, "schema": _avsc(src.codec, event_type)}
        messages[event_type] = _message(event_type, src, "EventHeaders", failed=False)
        messages[f"{event_type}.failed"] = _message(event_type, src, "FailureHeaders", failed=True)

    def channel_ref(topic: str) -> dict[str, str]:
        return {"$ref": f"#/channels/{topic}"}

    def message_refs(topic: str, events: list[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{topic}/messages/{e}"} for e in events]

    for topic in catalog.by_kind("event"):
        channels[topic.name] = {
            "address": topic.name,
            "title": topic.name,
            "description": (
                f"{topic.description}\n\nKey: `{topic.key}`. {topic.partitions} partitions, "
                f"replication factor {topic.replication_factor}, {_retention(topic)} "
                f"(cleanup `{topic.configs['cleanup.policy']}`)."
            ),
            "messages": {e: {"$ref": f"#/components/messages/{e}"} for e in topic.events},
            "bindings": _channel_bindings(topic),
        }

    # Who sends: the API, operator tooling and the agents, as the code shows.
    for service, sent in sorted(src.code.senders.items()):
        by_topic: dict[str, list[str]] = {}
        for event in sorted(sent):
            by_topic.setdefault(catalog.topic_for(event), []).append(event)
        for name, events in sorted(by_topic.items()):
            operations[f"{service}.send.{name}"] = {
                "action": "send",
                "channel": channel_ref(name),
                "title": f"{service} sends to {name}",
                "summary": f"{SENDER_ROLES.get(service, 'The agent')} publishes "
                f"{', '.join(events)}.",
                "messages": message_refs(name, events),
            }

    # Who consumes: every consumer group of topics.yaml, with its retry and dead-letter topics.
    for consumer in sorted(catalog.consumers.values(), key=lambda c: c.name):
        role = "saga agent" if consumer.name in src.code.agents else "consumer"
        for name in consumer.consumes:
            events = list(catalog.topics[name].events)
            operations[f"{consumer.name}.receive.{name}"] = {
                "action": "receive",
                "channel": channel_ref(name),
                "title": f"{consumer.name} consumes {name}",
                "summary": f"The {role} {consumer.name} (group `{consumer.group_id}`).",
                "messages": message_refs(name, events),
                "bindings": _group(consumer.name),
            }
        failed_events = [e for t in consumer.consumes for e in catalog.topics[t].events]
        failed_messages = {
            e: {"$ref": f"#/components/messages/{e}.failed"} for e in sorted(failed_events)
        }
        for retry, delay_ms in zip(consumer.retry_topics, consumer.retry_delays_ms, strict=True):
            retry_topic = catalog.topics[retry]
            channels[retry] = {
                "address": retry,
                "title": retry,
                "description": (
                    f"{retry_topic.description} A message waits here at least {delay_ms} ms "
                    f"after its failure (header `{kafka.H_NOT_BEFORE}`), then {consumer.name} "
                    f"tries it again. Key: `{retry_topic.key}` (the original record's). "
                    f"{retry_topic.partitions} partitions, "
                    f"{_retention(retry_topic)}."
                ),
                "messages": failed_messages,
                "bindings": _channel_bindings(retry_topic),
            }
            for action in ("send", "receive"):
                operations[f"{consumer.name}.{action}.{retry}"] = {
                    "action": action,
                    "channel": channel_ref(retry),
                    "title": f"{consumer.name} {action}s {retry}",
                    "summary": (
                        f"{consumer.name} moves a failed message here"
                        if action == "send"
                        else f"{consumer.name} retries the messages due"
                    ),
                    "messages": message_refs(retry, sorted(failed_events)),
                    **({"bindings": _group(consumer.name)} if action == "receive" else {}),
                }
        dlq = catalog.topics[consumer.dead_letter_topic]
        channels[dlq.name] = {
            "address": dlq.name,
            "title": dlq.name,
            "description": (
                f"{dlq.description} A message lands here after its last retry tier, or at once "
                f"when its failure is permanent (`{kafka.H_ERROR_KIND}`). Key: `{dlq.key}` (the "
                f"original record's). {dlq.partitions} partitions, {_retention(dlq)}."
            ),
            "messages": failed_messages,
            "bindings": _channel_bindings(dlq),
        }
        operations[f"{consumer.name}.send.{dlq.name}"] = {
            "action": "send",
            "channel": channel_ref(dlq.name),
            "title": f"{consumer.name} dead-letters to {dlq.name}",
            "messages": message_refs(dlq.name, sorted(failed_events)),
        }
        operations[f"{OPS_SERVICE}.receive.{dlq.name}"] = {
            "action": "receive",
            "channel": channel_ref(dlq.name),
            "title": f"operators read {dlq.name}",
            "summary": (
                "`erynoa dlq` lists and replays dead letters: replay re-publishes the original "
                f"record to its origin topic (`{kafka.H_ORIGIN_TOPIC}`) with `{kafka.H_REPLAY}`."
            ),
            "messages": message_refs(dlq.name, sorted(failed_events)),
        }

    # Other systems: any group of their own, on any event topic.
    for topic in catalog.by_kind("event"):
        operations[f"{SUBSCRIBERS}.receive.{topic.name}"] = {
            "action": "receive",
            "channel": channel_ref(topic.name),
            "title": f"Other systems consume {topic.name}",
            "summary": (
                "Subscribers outside Erynoa, each with a consumer group of its own; decode with "
                "`schemas/` and deduplicate on `event_id`."
            ),
            "messages": message_refs(topic.name, list(topic.events)),
        }

    from erynoa.settings import Settings

    return {
        "asyncapi": "3.0.0",
        "id": "urn:erynoa:booking-backbone",
        "info": {
            "title": "Erynoa booking backbone: events",
            "version": __version__,
            "description": _description(src),
            "tags": [{"name": "booking"}, {"name": "saga"}],
        },
        "defaultContentType": "avro/binary",
        "servers": {
            "local": {
                "host": Settings.model_fields["kafka_bootstrap"].default,
                "protocol": "kafka",
                "description": "The local stack of `erynoa stack up` (no TLS, no auth).",
            }
        },
        "channels": channels,
        "operations": dict(sorted(operations.items())),
        "components": {
            "schemas": schemas,
            "messages": messages,
            "correlationIds": {
                "correlationId": {
                    "description": "Shared by every event of one saga run.",
                    "location": "$message.payload#/correlation_id",
                }
            },
        },
    }


def render(document: dict[str, Any]) -> str:
    header = (
        "# Generated by `erynoa asyncapi` from topics.yaml, schemas/ and the code: do not edit.\n"
        "# A test fails when this file is stale; regenerate it with `erynoa asyncapi`.\n"
    )
    return header + yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )


class _Dumper(yaml.SafeDumper):
    """Multi-line text (descriptions, the diagram) as literal blocks a reader can diff; no YAML
    anchors (a shared map is written out each time, as readers of AsyncAPI expect)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _text)


def generate(root: Path = PROJECT_ROOT) -> str:
    """The document's text for the checkout at ``root``."""
    return render(build(load_sources(root)))
