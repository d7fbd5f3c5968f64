"""The local stack's Kafka layout, one node or a cluster, checked with tmp state dirs only
(nothing is started).

Run: ``python -m pytest tests/unit/test_stack_cluster.py -q``
"""

from __future__ import annotations

from pathlib import Path

import pytest

from erynoa.settings import Settings
from erynoa.stack import manager
from erynoa.stack.base import StackError, StackPaths
from erynoa.stack.kafka import Kafka, record_cluster, recorded_brokers


def _settings(tmp_path: Path, **extra: str) -> Settings:
    base = Settings(state_dir=tmp_path, kafka_port=30000, kafka_controller_port=30001)
    return base.model_copy(update=extra) if extra else base


def _kafka_nodes(settings: Settings, brokers: int | None = None) -> list[Kafka]:
    return [s for s in manager.services(settings, brokers) if isinstance(s, Kafka)]


def test_one_node_keeps_the_names_ports_and_dirs_of_the_single_broker(tmp_path: Path) -> None:
    (node,) = _kafka_nodes(_settings(tmp_path))
    assert node.name == "kafka"
    assert node.ports == {"kafka_port": 30000, "kafka_controller_port": 30001}
    assert node.data_dir == tmp_path / "kafka" / "data"
    assert node.pid_path == tmp_path / "run" / "kafka.pid"
    props = node._server_properties()
    assert "controller.quorum.bootstrap.servers=127.0.0.1:30001" in props
    assert "offsets.topic.replication.factor=1" in props
    assert "-Xmx768m" in node.command()


def test_three_nodes_have_their_own_ports_dirs_and_one_quorum(tmp_path: Path) -> None:
    nodes = _kafka_nodes(_settings(tmp_path), brokers=3)
    assert [n.name for n in nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    ports = [p for n in nodes for p in n.ports.values()]
    assert ports == [30000, 30001, 30002, 30003, 30004, 30005]
    assert len({n.data_dir for n in nodes}) == 3
    assert all(n.data_dir.parent == tmp_path / n.name for n in nodes)
    voters = "controller.quorum.voters=1@127.0.0.1:30001,2@127.0.0.1:30003,3@127.0.0.1:30005"
    for number, node in enumerate(nodes, start=1):
        props = node._server_properties()
        assert f"node.id={number}" in props
        assert voters in props
        assert f"listeners=PLAINTEXT://127.0.0.1:{30000 + 2 * (number - 1)}," in props
        assert "offsets.topic.replication.factor=3" in props
        assert "transaction.state.log.min.isr=2" in props
        # Broker-wide min ISR would refuse acks=all on a client's own one-replica topic.
        assert "\nmin.insync.replicas" not in props
        assert "-Xmx512m" in node.command()


def test_an_explicit_heap_applies_to_every_node(tmp_path: Path) -> None:
    nodes = _kafka_nodes(_settings(tmp_path, kafka_heap="384m"), brokers=3)
    assert all("-Xmx384m" in n.command() for n in nodes)


def test_the_client_env_names_every_broker_and_production_topics(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert manager.client_env(settings) == {
        "ERYNOA_KAFKA_BOOTSTRAP": "127.0.0.1:30000",
        "ERYNOA_TOPICS_ENVIRONMENT": "local",
    }
    record_cluster(StackPaths.from_settings(settings), 3)
    assert manager.client_env(settings) == {
        "ERYNOA_KAFKA_BOOTSTRAP": "127.0.0.1:30000,127.0.0.1:30002,127.0.0.1:30004",
        "ERYNOA_TOPICS_ENVIRONMENT": "production",
    }


def test_a_recorded_cluster_is_what_later_commands_see(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    paths = StackPaths.from_settings(settings)
    assert recorded_brokers(paths) is None
    record_cluster(paths, 3)
    assert recorded_brokers(paths) == 3
    names = [s.name for s in manager.services(settings)]
    assert names[:3] == ["kafka-1", "kafka-2", "kafka-3"]
    assert manager.service(settings, "kafka-2").name == "kafka-2"


def test_up_refuses_another_broker_count_than_the_state_dir_has(tmp_path: Path) -> None:
    (tmp_path / "kafka").mkdir()  # what a one-node `up` leaves
    with pytest.raises(StackError, match=r"has 1 Kafka broker\(s\), not 3.*erynoa stack clean"):
        manager.up(_settings(tmp_path), lambda line: None, brokers=3, only=["kafka"])


def test_unknown_service_names_are_refused_with_the_known_ones(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    record_cluster(StackPaths.from_settings(settings), 3)
    with pytest.raises(StackError, match=r"no service 'kafka-4'.*kafka-1, kafka-2, kafka-3"):
        manager.stop(settings, lambda line: None, ["kafka-4"])


def test_kafka_selects_every_node(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    record_cluster(StackPaths.from_settings(settings), 3)
    said: list[str] = []
    manager.stop(settings, said.append, ["kafka"], kill=True)
    assert said == ["kafka-3: not running", "kafka-2: not running", "kafka-1: not running"]
