"""Apache Kafka in KRaft mode, run from Maven Central's jars: one node, or a cluster of several.

Every node is both broker and controller. One node (the default) is ``kafka`` with its data
in ``<state dir>/kafka`` and a dynamic quorum of itself. A cluster (``erynoa stack up
--brokers 3``) is ``kafka-1`` .. ``kafka-N``, each with its own data dir ``<state dir>/kafka-<n>``
and ports (``ERYNOA_KAFKA_PORT`` and ``ERYNOA_KAFKA_CONTROLLER_PORT`` plus 2·(n-1)), one cluster
id and a static controller quorum of all N; ``<state dir>/kafka-cluster.json`` remembers the
size, so a plain ``up`` later restarts whichever node is down. Each node of a cluster gets a
512 MiB heap (three JVMs on a small box) unless ``ERYNOA_KAFKA_HEAP`` says otherwise.

The jars are resolved once with ``mvn dependency:copy-dependencies`` on ``kafka-pom.xml`` into
``~/.cache/erynoa/kafka-<version>`` (a marker file says the copy is complete), so every checkout
of the project shares them. The storage is formatted once per node and state dir.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from erynoa.settings import Settings
from erynoa.stack.base import Echo, Service, StackError, StackPaths, need_tool, run_tool

POM = Path(__file__).with_name("kafka-pom.xml")
LOG4J2_CONFIG = Path(__file__).with_name("log4j2.properties")
_MARKER = ".complete"
CLUSTER_FILE = "kafka-cluster.json"
# Heap of each node of a cluster, unless ERYNOA_KAFKA_HEAP is set.
CLUSTER_NODE_HEAP = "512m"


def kafka_version() -> str:
    """The Kafka version pinned in kafka-pom.xml (its ``kafka.version`` property)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not node.text:
        raise StackError(f"{POM} has no <kafka.version> property")
    return node.text.strip()


def _cluster_id() -> str:
    """A random id as Kafka writes them: url-safe base64 of 16 bytes, never starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def node_ports(settings: Settings, node: int) -> tuple[int, int]:
    """The client and controller ports of cluster node ``node`` (1-based)."""
    step = 2 * (node - 1)
    return settings.kafka_port + step, settings.kafka_controller_port + step


def bootstrap_servers(settings: Settings, brokers: int) -> str:
    """Every node's client address, for ``ERYNOA_KAFKA_BOOTSTRAP``."""
    return ",".join(f"127.0.0.1:{node_ports(settings, n)[0]}" for n in range(1, brokers + 1))


def recorded_brokers(paths: StackPaths) -> int | None:
    """How many nodes the state dir's Kafka was set up with (None: not set up yet)."""
    cluster = paths.state_dir / CLUSTER_FILE
    if cluster.exists():
        return int(json.loads(cluster.read_text())["brokers"])
    return 1 if (paths.state_dir / "kafka").exists() else None


def record_cluster(paths: StackPaths, brokers: int) -> None:
    """Remember a cluster's size and its one cluster id, before any node is formatted."""
    cluster = paths.state_dir / CLUSTER_FILE
    if not cluster.exists():
        cluster.write_text(json.dumps({"brokers": brokers, "cluster_id": _cluster_id()}) + "\n")


def under_replicated(bootstrap: str, topics: list[str] | None = None) -> list[str]:
    """``topic [partition]`` of every partition whose in-sync replicas are fewer than its
    replicas (all topics when ``topics`` is None); raises if the cluster does not answer."""
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    metadata = client.list_topics(timeout=10)
    found = []
    for name, topic in sorted(metadata.topics.items()):
        if topics is not None and name not in topics:
            continue
        for number, partition in sorted(topic.partitions.items()):
            if len(partition.isrs) < len(partition.replicas):
                found.append(f"{name} [{number}]")
    return found


class Kafka(Service):
    name = "kafka"
    port_settings = ("kafka_port", "kafka_controller_port")
    stop_timeout = 30.0
    start_timeout = 120.0

    def __init__(
        self, settings: Settings, paths: StackPaths, node: int = 1, nodes: int = 1
    ) -> None:
        super().__init__(settings, paths)
        self.node = node
        self.nodes = nodes
        if nodes > 1:
            self.name = f"kafka-{node}"

    @property
    def ports(self) -> dict[str, int]:
        return dict(zip(self.port_settings, node_ports(self.settings, self.node), strict=True))

    @property
    def controller_port(self) -> int:
        return self.ports["kafka_controller_port"]

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def jars_dir(self) -> Path:
        return self.paths.cache_dir / f"kafka-{kafka_version()}"

    @property
    def java(self) -> str:
        return need_tool("java", "openjdk-17-jre-headless")

    def _classpath(self) -> str:
        return f"{self.jars_dir}/*"

    def prepare(self, echo: Echo) -> None:
        self._resolve_jars(echo)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._server_properties())
        self._format_storage(echo)

    def _resolve_jars(self, echo: Echo) -> None:
        jars = self.jars_dir
        if (jars / _MARKER).exists():
            return
        mvn = need_tool("mvn", "maven")
        echo(f"kafka: resolving Kafka {kafka_version()} jars with mvn into {jars} (once)")
        shutil.rmtree(jars, ignore_errors=True)
        jars.mkdir(parents=True)
        run_tool(
            [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={jars}", "-DincludeScope=runtime"],
            self.paths.logs / "kafka-jars.log",
            "resolving the Kafka jars with mvn",
        )  # fmt: skip
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise StackError(f"mvn finished but {jars} holds no kafka_2.13 jar")
        (jars / _MARKER).write_text(kafka_version() + "\n")

    def _voters(self) -> str:
        return ",".join(
            f"{n}@127.0.0.1:{node_ports(self.settings, n)[1]}" for n in range(1, self.nodes + 1)
        )

    def _server_properties(self) -> str:
        port, cport = self.port, self.controller_port
        # The cluster's own topics get three replicas (two in sync) once there are three
        # nodes; the catalog's topics say their own (topics.yaml, production environment).
        # No broker-wide min.insync.replicas: a client's own topic of one replica (Faust
        # creates some) would refuse every acks=all write.
        replicas = min(3, self.nodes)
        min_isr = 2 if self.nodes >= 3 else 1
        quorum = (
            [f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}"]
            if self.nodes == 1
            else [f"controller.quorum.voters={self._voters()}"]
        )
        return "\n".join(
            [
                "# Generated by `erynoa stack up` from erynoa.settings; edits are overwritten.",
                "process.roles=broker,controller",
                f"node.id={self.node}",
                *quorum,
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.data_dir}",
                f"offsets.topic.replication.factor={replicas}",
                f"transaction.state.log.replication.factor={replicas}",
                f"transaction.state.log.min.isr={min_isr}",
                f"share.coordinator.state.topic.replication.factor={replicas}",
                f"share.coordinator.state.topic.min.isr={min_isr}",
                f"default.replication.factor={replicas}",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "",
            ]
        )

    def _format_storage(self, echo: Echo) -> None:
        stamp = self.home / "formatted-for"
        wanted = (
            f"controller 127.0.0.1:{self.controller_port}\n"
            if self.nodes == 1
            else f"voters {self._voters()}\n"
        )
        if (self.data_dir / "meta.properties").exists():
            if stamp.exists() and stamp.read_text() != wanted:
                raise StackError(
                    f"{self.name}: storage in {self.data_dir} was formatted for other "
                    f"controller ports ({stamp.read_text().strip()}); run `erynoa stack clean` "
                    "to start afresh"
                )
            return
        shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-formatted dir
        if self.nodes == 1:
            cluster_id, quorum = _cluster_id(), ["--standalone"]
        else:
            # Every node of one cluster is formatted with the same id; the voters are static.
            cluster = json.loads((self.paths.state_dir / CLUSTER_FILE).read_text())
            cluster_id, quorum = str(cluster["cluster_id"]), []
        echo(f"{self.name}: formatting storage in {self.data_dir} (cluster id {cluster_id})")
        run_tool(
            # A short-lived tool: the quick compiler only and a small heap start it sooner.
            [self.java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx128m",
             "-cp", self._classpath(), f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
             "kafka.tools.StorageTool", "format", *quorum, "-t", cluster_id,
             "-c", str(self.config_path)],
            self.paths.logs / f"{self.name}-format.log",
            f"formatting the storage of {self.name}",
        )  # fmt: skip
        stamp.write_text(wanted)

    @property
    def heap(self) -> str:
        if self.nodes == 1 or "kafka_heap" in self.settings.model_fields_set:
            return self.settings.kafka_heap
        return CLUSTER_NODE_HEAP

    def command(self) -> list[str]:
        return [
            self.java,
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.config_path),
        ]

    def cwd(self) -> Path:
        return self.home

    def healthy(self) -> bool:
        """A metadata request answered on this node's port that lists this node."""
        from confluent_kafka.admin import AdminClient

        try:  # fail fast while nothing listens yet
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False

        client = AdminClient(
            {
                "bootstrap.servers": f"127.0.0.1:{self.port}",
                "log_level": 0,  # librdkafka would print every refused connection
                "socket.connection.setup.timeout.ms": 2000,
            }
        )
        try:
            metadata = client.list_topics(timeout=3)
        except Exception:
            return False
        return self.node in metadata.brokers
