"""The AsyncAPI document: current, valid, and complete against the code it is generated from."""

from __future__ import annotations

import copy
import shutil
import typing
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import pytest
import yaml

from contracts import DOCUMENT
from contracts.asyncapi import (
    AVRO_FORMAT,
    ENVIRONMENT,
    DocumentError,
    Sources,
    build,
    failure_header_names,
    generate,
    header_names,
    load_sources,
    render,
)
from contracts.saga_graph import DEADLINE_PASSED
from contracts.sources import read_code
from contracts.validate import schema_errors
from erynoa import saga
from erynoa.codec import SchemaError
from erynoa.events import EVENT_TYPES
from erynoa.settings import PROJECT_ROOT
from erynoa.topics import load_catalog

CODE_DIRS = ("api", "streams", "consumers", "erynoa", "ops", "loadgen")


@cache
def _sources() -> Sources:
    return load_sources()


@cache
def _document() -> dict[str, Any]:
    return build(_sources())


@cache
def _committed() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(DOCUMENT.read_text(), Loader=_LOADER)
    return loaded


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _checkout(tmp_path: Path) -> Path:
    """A copy of the checkout's contracts (topics.yaml, schemas/) beside links to its code."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "topics.yaml", root / "topics.yaml")
    shutil.copytree(PROJECT_ROOT / "schemas", root / "schemas")
    for name in CODE_DIRS:
        if (PROJECT_ROOT / name).is_dir():
            (root / name).symlink_to(PROJECT_ROOT / name)
    return root


def test_the_committed_document_is_what_the_code_generates() -> None:
    assert DOCUMENT.read_text() == render(_document()), (
        "asyncapi.yaml is stale: run `erynoa asyncapi` and commit it"
    )


def test_the_document_is_valid_against_the_official_asyncapi_3_schema() -> None:
    assert schema_errors(_committed()) == []


def test_a_broken_document_is_refused_by_the_schema() -> None:
    broken = copy.deepcopy(_committed())
    broken["channels"]["bookings"]["bindings"]["kafka"]["partitions"] = "twelve"
    del broken["operations"]["api.send.bookings"]["action"]
    problems = "\n".join(schema_errors(broken))
    assert "channels/bookings" in problems
    assert "operations/api.send.bookings" in problems


def test_every_topic_is_a_channel_with_its_key_partitions_and_retention() -> None:
    catalog = load_catalog(PROJECT_ROOT / "topics.yaml", ENVIRONMENT)
    channels = _committed()["channels"]
    assert set(channels) == set(catalog.topics)
    for topic in catalog.topics.values():
        kafka = channels[topic.name]["bindings"]["kafka"]
        assert kafka["topic"] == topic.name
        assert kafka["partitions"] == topic.partitions
        assert kafka["replicas"] == topic.replication_factor
        assert kafka["topicConfiguration"]["retention.ms"] == int(topic.configs["retention.ms"])
        assert f"`{topic.key}`" in channels[topic.name]["description"]


def test_every_event_type_is_a_message_with_its_avro_schema_unchanged() -> None:
    document = _committed()
    codec = _sources().codec
    for event_type in EVENT_TYPES:
        payload = document["components"]["schemas"][event_type]
        assert payload["schemaFormat"] == AVRO_FORMAT
        version = codec.versions[event_type][-1]
        original = yaml.safe_load((codec.schemas_dir / f"{event_type}.v{version}.avsc").read_text())
        # The same schema to every Avro reader: the same Parsing Canonical Form.
        assert fastavro.schema.to_parsing_canonical_form(
            fastavro.parse_schema(payload["schema"])
        ) == fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(original))
        message = document["components"]["messages"][event_type]
        assert message["payload"] == {"$ref": f"#/components/schemas/{event_type}"}
        assert message["bindings"]["kafka"]["key"]["type"] == "string"


def test_every_consumer_group_subscription_is_a_receive_operation() -> None:
    catalog = load_catalog(PROJECT_ROOT / "topics.yaml", ENVIRONMENT)
    operations = _committed()["operations"]
    agents = set(typing.get_args(saga.Agent))
    assert agents <= set(catalog.consumers)
    for consumer in catalog.consumers.values():
        for topic in (*consumer.consumes, *consumer.retry_topics):
            operation = operations[f"{consumer.name}.receive.{topic}"]
            assert operation["action"] == "receive"
            assert operation["channel"] == {"$ref": f"#/channels/{topic}"}
            assert operation["bindings"]["kafka"]["groupId"]["enum"] == [consumer.group_id]
        for topic in (*consumer.retry_topics, consumer.dead_letter_topic):
            assert operations[f"{consumer.name}.send.{topic}"]["action"] == "send"
        assert operations[f"ops.receive.{consumer.dead_letter_topic}"]["action"] == "receive"
    for topic in catalog.by_kind("event"):
        assert operations[f"subscribers.receive.{topic.name}"]["action"] == "receive"


def test_every_event_the_code_sends_is_a_send_operation_of_its_sender() -> None:
    catalog = load_catalog(PROJECT_ROOT / "topics.yaml", ENVIRONMENT)
    operations = _committed()["operations"]
    senders = read_code(PROJECT_ROOT, EVENT_TYPES).senders
    assert {"api", "reservation", "payment", "notification", "provider-response"} <= set(senders)
    sent_anywhere: set[str] = set()
    for service, events in senders.items():
        for event in events:
            topic = catalog.topic_for(event)
            refs = operations[f"{service}.send.{topic}"]["messages"]
            assert {"$ref": f"#/channels/{topic}/messages/{event}"} in refs
            sent_anywhere.add(event)
    # Every event someone consumes is sent by someone.
    assert sent_anywhere == set(EVENT_TYPES)


def test_every_header_the_code_names_is_documented_where_it_travels() -> None:
    schemas = _committed()["components"]["schemas"]
    event_headers = set(schemas["EventHeaders"]["properties"])
    failure_headers = set(schemas["FailureHeaders"]["allOf"][1]["properties"])
    assert event_headers | failure_headers == set(header_names().values())
    assert failure_headers == failure_header_names()
    document = _committed()
    for name, channel in document["channels"].items():
        expected = "FailureHeaders" if (".retry." in name or name.endswith(".dlq")) else None
        for message in channel["messages"].values():
            target = document["components"]["messages"][message["$ref"].rsplit("/", 1)[1]]
            headers = target["headers"]["$ref"].rsplit("/", 1)[1]
            assert headers == (expected or "EventHeaders"), name


def test_the_saga_graph_covers_every_action_of_the_rules_and_marks_compensations() -> None:
    graph = _sources().graph
    actions = {edge.action for edge in graph.edges}
    assert {cls.__name__ for cls in typing.get_args(saga.Action)} <= actions
    by_action = {(e.trigger, e.agent, e.action): e for e in graph.edges}
    assert by_action["BookingRequested", "reservation", "HoldCapacity"].emits == (
        "ReservationHeld",
        "ReservationRejected",
    )
    assert by_action["ReservationHeld", "payment", "AuthorizePayment"].compensation is False
    assert by_action["ProviderRejected", "payment", "VoidPayment"].compensation is True
    assert by_action["PaymentVoided", "reservation", "ReleaseHold"].compensation is True
    assert by_action[DEADLINE_PASSED, "provider-response", "TimeOutProvider"]
    assert by_action["StripeEventReceived", "payment", "react"].emits == (
        "PaymentAuthorized",
        "PaymentFailed",
    )
    # No agent reacts to an event it neither consumes nor emits itself.
    catalog = load_catalog(PROJECT_ROOT / "topics.yaml", ENVIRONMENT)
    code = read_code(PROJECT_ROOT, EVENT_TYPES)
    for edge in graph.edges:
        if edge.trigger == DEADLINE_PASSED:
            continue
        consumed = {
            e for t in catalog.consumer(edge.agent).consumes for e in catalog.topics[t].events
        }
        assert edge.trigger in consumed | code.agents[edge.agent].emits, edge


def test_the_description_shows_the_saga_graph_as_mermaid() -> None:
    description = _committed()["info"]["description"]
    assert "```mermaid\nflowchart TD\n" in description
    for event_type in EVENT_TYPES:
        if event_type != "ServiceChanged":
            assert f'["{event_type}"]' in description
    assert '-.->|"payment: VoidPayment (compensation)"|' in description


def test_a_topic_added_without_regenerating_makes_the_document_stale(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    catalog = yaml.safe_load((root / "topics.yaml").read_text())
    moved = catalog["topics"]["catalog-services"]
    catalog["topics"]["catalog-changes"] = {**moved, "description": "Catalog changes."}
    del catalog["topics"]["catalog-services"]
    (root / "topics.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    fresh = generate(root)
    assert fresh != DOCUMENT.read_text()
    assert "catalog-changes" in yaml.safe_load(fresh)["channels"]


def test_an_event_type_a_topic_declares_without_a_schema_is_refused(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    catalog = yaml.safe_load((root / "topics.yaml").read_text())
    catalog["topics"]["bookings"]["events"].append("BookingAudited")
    (root / "topics.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    with pytest.raises(DocumentError, match=r"topics\.yaml.*BookingAudited.*no schema"):
        load_sources(root)


def test_an_event_type_without_its_schema_file_is_refused(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    (root / "schemas" / "NotificationFailed.v1.avsc").unlink()
    with pytest.raises(SchemaError, match=r"NotificationFailed \(expected NotificationFailed"):
        load_sources(root)


def test_an_action_the_rules_give_an_agent_its_adapter_cannot_take_is_refused() -> None:
    from contracts.saga_graph import explore

    code = read_code(PROJECT_ROOT, EVENT_TYPES)
    catalog = load_catalog(PROJECT_ROOT / "topics.yaml", ENVIRONMENT)
    agents = {a: dict(c.emits_for_action) for a, c in code.agents.items()}
    del agents["reservation"]["ReleaseHold"]
    consumes = {
        c.name: {e for t in c.consumes for e in catalog.topics[t].events}
        for c in catalog.consumers.values()
    }
    with pytest.raises(ValueError, match=r"reservation the action ReleaseHold.*no `case"):
        explore(agents, {}, {"api": {"BookingCancellationRequested"}}, consumes)
