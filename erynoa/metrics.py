"""Prometheus metrics shared by every runtime: a registry per process, its HTTP port, labels.

Each process owns one ``CollectorRegistry`` (not prometheus-client's global one, so a test can
build several apps in one interpreter) and exposes it on ``/metrics``:

* every process on ``settings.metrics_port_base + PORT_OFFSETS[part]`` (the API too: its
  public port does not serve them):

  ============================  ======  ==================================
  part                          offset  default port
  ============================  ======  ==================================
  materializer                  0       9100
  reservation                   1       9101
  payment                       2       9102
  notification                  3       9103
  provider-response             4       9104
  api                           5       9105
  ============================  ======  ==================================

  ``ERYNOA_METRICS_PORT_BASE=0`` turns these ports off. A second process of the same part on
  the same host finds its port taken: it logs a warning and runs on without one (deployed one
  per container, every process has its port).

Label conventions (cardinality stays bounded whatever the traffic): HTTP routes by template
(``/api/v1/bookings/{booking_id}``), never the raw path; event types only from the codec's
known set (anything else is ``other``); consumer lag by ``group``, ``topic`` and ``partition``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, start_http_server

from erynoa.settings import Settings

log = logging.getLogger("erynoa.metrics")

PORT_OFFSETS: Mapping[str, int] = {
    "materializer": 0,
    "reservation": 1,
    "payment": 2,
    "notification": 3,
    "provider-response": 4,
    "api": 5,
}

OTHER = "other"
UNMATCHED_ROUTE = "<unmatched>"

# Seconds; from a fast in-memory handler to a slow external call (Stripe, SMTP) or a
# contended transaction. Prometheus' default buckets stop at 10 s with too little below 5 ms.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Events per materializer batch (``max_poll_records`` caps it at 2000).
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000)


def new_registry() -> CollectorRegistry:
    """A process's registry, with the standard process metrics (CPU, memory, open fds)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry


def port_for(settings: Settings, part: str) -> int | None:
    """The metrics port of ``part`` (a key of ``PORT_OFFSETS``), or None when turned off."""
    if settings.metrics_port_base <= 0:
        return None
    return settings.metrics_port_base + PORT_OFFSETS[part]


@dataclass
class MetricsServer:
    """``/metrics`` of one registry, served from a daemon thread."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(registry: CollectorRegistry, host: str, port: int | None) -> MetricsServer | None:
    """Serve ``registry`` on ``host:port``; None when off or the port is taken (logged)."""
    if port is None:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        # Metrics are worth a warning, not a worker that refuses to process events.
        log.warning(
            "metrics port %s:%d unavailable; running without /metrics",
            host,
            port,
            extra={"error": str(exc)},
        )
        return None
    log.info("metrics on http://%s:%d/metrics", host, port, extra={"metrics_port": port})
    return MetricsServer(server, thread)


def bounded(value: str | None, allowed: Collection[str], other: str = OTHER) -> str:
    """``value`` as a label if it is one of ``allowed``, else ``other`` (bounded cardinality)."""
    return value if value is not None and value in allowed else other


class PartitionLag:
    """``erynoa_consumer_lag{group, topic, partition}``: messages a group has yet to process.

    ``update`` takes the whole current assignment of this process: partitions that moved to
    another process lose their series here (the other process reports them), so a rebalance
    leaves no stale lag behind.
    """

    def __init__(self, registry: CollectorRegistry, group: str) -> None:
        self.group = group
        self._gauge = Gauge(
            "erynoa_consumer_lag",
            "Messages not yet processed (end offset minus position), per assigned partition",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self._reported: set[tuple[str, int]] = set()

    def update(self, lags: Mapping[tuple[str, int], int]) -> None:
        for topic, partition in self._reported - set(lags):
            self._gauge.remove(self.group, topic, str(partition))
        for (topic, partition), lag in lags.items():
            self._gauge.labels(self.group, topic, str(partition)).set(max(lag, 0))
        self._reported = set(lags)


def lag(end: int | None, position: int | None) -> int | None:
    """End offset minus position, or None while either is unknown (not fetched yet)."""
    if end is None or position is None or end < 0 or position < 0:
        return None
    return max(end - position, 0)
