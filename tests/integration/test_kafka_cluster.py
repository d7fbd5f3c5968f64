"""A private three-broker Kafka cluster (``erynoa stack up kafka --brokers 3``) loses nothing
acknowledged with acks=all when one broker is killed with SIGKILL, and heals when it returns.

It brings up its OWN cluster (its own state dir and free ports), never the default stack, and
tears it down after. Slow (about a minute): select it with ``-m cluster``.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from typer.testing import CliRunner

from cli.main import app
from erynoa.settings import PROJECT_ROOT
from erynoa.stack.kafka import under_replicated
from erynoa.topics import load_catalog

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _free_port_block(size: int) -> int:
    """A port with the ``size`` ports from it free on loopback."""
    for _ in range(200):
        base = 40_000 + (uuid.uuid4().int % 20_000)
        try:
            for port in range(base, base + size):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no block of free ports found")


class Cluster:
    """The CLI against one private state dir and port block."""

    def __init__(self, state_dir: Path, base_port: int) -> None:
        self.env = {
            "ERYNOA_STATE_DIR": str(state_dir),
            "ERYNOA_KAFKA_PORT": str(base_port),
            "ERYNOA_KAFKA_CONTROLLER_PORT": str(base_port + 1),
        }
        self.bootstrap = ",".join(f"127.0.0.1:{base_port + 2 * n}" for n in range(3))

    def stack(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["stack", *args], env=self.env)
        return result.exit_code, result.output


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    private = Cluster(tmp_path / "stack", _free_port_block(6))
    try:
        yield private
    finally:
        code, output = private.stack("down")
        assert code == 0, output


def _states(cluster: Cluster) -> dict[str, str]:
    _, output = cluster.stack("status")
    return {line.split(":")[0]: line.split()[1] for line in output.splitlines()}


class Traffic:
    """acks=all writes with their acknowledgements, and one group reading them back."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.acked: set[bytes] = set()
        self.failed: list[KafkaError] = []
        self.seen: set[bytes] = set()
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True}
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"cluster-test-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.subscribe([topic])

    def produce(self, count: int) -> None:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.failed.append(err)
            else:
                self.acked.add(msg.value() or b"")

        for _ in range(count):
            value = uuid.uuid4().bytes
            self.producer.produce(self.topic, value, key=value[:4], on_delivery=delivered)
            self.producer.poll(0)
        assert self.producer.flush(90) == 0, "writes still unacknowledged after 90s"
        assert self.failed == []

    def consume_all_acked(self) -> None:
        deadline = time.monotonic() + 90
        while not self.acked <= self.seen:
            assert time.monotonic() < deadline, f"{len(self.acked - self.seen)} acked never read"
            msg = self.consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                self.seen.add(msg.value() or b"")

    def close(self) -> None:
        self.consumer.close()


def _wait_fully_replicated(bootstrap: str, topic: str) -> None:
    deadline = time.monotonic() + 90
    while lagging := under_replicated(bootstrap, [topic]):
        assert time.monotonic() < deadline, f"still under-replicated: {lagging}"
        time.sleep(0.5)


def test_one_of_three_brokers_killed_loses_no_acknowledged_write(cluster: Cluster) -> None:
    code, output = cluster.stack("up", "kafka", "--brokers", "3")
    assert code == 0, output
    for node in ("kafka-1", "kafka-2", "kafka-3"):
        assert f"{node}: healthy after" in output
    assert "-Xmx512m" in (Path(cluster.env["ERYNOA_STATE_DIR"]) / "logs/kafka-2.log").read_text()
    code, output = cluster.stack("env")
    assert code == 0
    assert f"export ERYNOA_KAFKA_BOOTSTRAP={cluster.bootstrap}" in output
    assert "export ERYNOA_TOPICS_ENVIRONMENT=production" in output

    # A booking topic as topics.yaml declares it for production: 3 replicas, 2 in sync.
    catalog = load_catalog(PROJECT_ROOT / "topics.yaml", "production", f"t{uuid.uuid4().hex[:8]}-")
    spec = catalog.topics[catalog.topic_for("BookingRequested")]
    assert (spec.replication_factor, spec.configs["min.insync.replicas"]) == (3, "2")
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    new = NewTopic(spec.name, spec.partitions, spec.replication_factor, config=spec.configs)
    admin.create_topics([new])[spec.name].result(timeout=60)
    _wait_fully_replicated(cluster.bootstrap, spec.name)

    traffic = Traffic(cluster.bootstrap, spec.name)
    try:
        traffic.produce(300)
        traffic.consume_all_acked()

        code, output = cluster.stack("stop", "kafka-2", "--kill")
        assert code == 0, output
        assert "kafka-2: killed" in output
        assert _states(cluster)["kafka-2"] == "stopped"
        assert cluster.stack("status")[0] == 1  # not all healthy

        # Two replicas still meet min ISR 2: writes go on once the dead one is fenced.
        traffic.produce(300)
        traffic.consume_all_acked()
        assert under_replicated(cluster.bootstrap, [spec.name])

        code, output = cluster.stack("up", "kafka")
        assert code == 0, output
        assert "kafka-1: already running" in output
        assert "kafka-2: starting" in output
        assert {_states(cluster)[f"kafka-{n}"] for n in (1, 2, 3)} == {"healthy"}
        _wait_fully_replicated(cluster.bootstrap, spec.name)

        traffic.produce(300)
        traffic.consume_all_acked()
    finally:
        traffic.close()
    assert len(traffic.acked) == 900
    assert traffic.seen == traffic.acked
