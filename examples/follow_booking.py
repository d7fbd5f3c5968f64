"""Follow one booking's events from Kafka, as any subscriber would: confluent-kafka's stock
``AvroDeserializer`` and ``SchemaRegistryClient``, and ``topics.yaml`` for the topic names.
Nothing here imports the project's code.

    python examples/follow_booking.py --booking-id 7c0e... \\
        [--bootstrap 127.0.0.1:19092] [--registry http://127.0.0.1:18081/apis/ccompat/v7] \\
        [--topics-file topics.yaml] [--topic-prefix ""] [--idle 5]

It reads every topic keyed by ``booking_id`` from the beginning, keeps the booking's events
(the message key is the booking id, so one booking's events are in one partition of each
topic, in order), drops redeliveries by ``event_id`` (delivery is at least once), and prints
one JSON line per event. It stops when nothing new has arrived for ``--idle`` seconds after
the end of every partition was reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

ROOT = Path(__file__).resolve().parent.parent


def booking_topics(topics_file: Path, prefix: str) -> list[str]:
    """The event topics keyed by booking id (retry and dead-letter topics are the agents')."""
    catalog = yaml.safe_load(topics_file.read_text())
    return [
        f"{prefix}{name}"
        for name, spec in catalog["topics"].items()
        if spec.get("key") == "booking_id"
    ]


def follow(
    bootstrap: str, registry_url: str, topics: list[str], booking_id: str, idle: float
) -> list[dict[str, Any]]:
    # Without a timeout the client waits for ever on a registry connection that stopped
    # answering; with one, the request fails and the client retries on a new connection.
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url, "timeout": 10}))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"follow-booking-{uuid.uuid4()}",  # a throwaway reader, no commits
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe(topics)
    seen: set[str] = set()
    events: list[dict[str, Any]] = []
    at_end: set[tuple[str, int]] = set()
    last_news = time.monotonic()
    try:
        while True:
            message = consumer.poll(0.5)
            if message is None:
                if at_end and time.monotonic() - last_news > idle:
                    break
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add((message.topic(), message.partition()))
                    continue
                raise SystemExit(f"kafka: {error}")
            if message.key() != booking_id.encode():
                continue
            event = deserialize(
                message.value(), SerializationContext(message.topic(), MessageField.VALUE)
            )
            if event is None or event["event_id"] in seen:
                continue
            seen.add(event["event_id"])
            events.append({"topic": message.topic(), **event})
            last_news = time.monotonic()
    finally:
        consumer.close()
    return events


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--booking-id", required=True)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--registry", default="http://127.0.0.1:18081/apis/ccompat/v7")
    parser.add_argument("--topics-file", type=Path, default=ROOT / "topics.yaml")
    parser.add_argument("--topic-prefix", default="")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds without news to stop")
    args = parser.parse_args(argv)
    topics = booking_topics(args.topics_file, args.topic_prefix)
    events = follow(args.bootstrap, args.registry, topics, args.booking_id, args.idle)
    # Topics are ordered each on its own; occurred_at puts the saga's steps in one line.
    for event in sorted(events, key=lambda e: e["occurred_at"]):
        print(json.dumps(event, default=str, sort_keys=True))
    return 0 if events else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
