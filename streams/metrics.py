"""One agent's Prometheus metrics, served on its own port (``erynoa.metrics``: the base port plus
the agent's offset; reservation 1, payment 2, notification 3, provider-response 4)::

    erynoa_agent_events_processed_total{agent, event_type}          handled (duplicates too)
    erynoa_agent_events_failed_total{agent, event_type, error_kind}  routed to a retry or the DLQ
    erynoa_agent_handler_duration_seconds{agent, event_type}         one message, end to end
    erynoa_agent_retries_total{agent, topic}                         sent to a retry tier
    erynoa_agent_dead_letters_total{agent, error_kind}               sent to the dead-letter topic
    erynoa_agent_deadlines_pending{agent}                            provider-response only
    erynoa_consumer_lag{group, topic, partition}                     per assigned partition

``event_type`` comes from the message's ``erynoa-event-type`` header (no second decode), limited
to the codec's event types (``other`` otherwise, ``undecodable`` when the header is missing).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from erynoa import kafka as k
from erynoa import metrics
from erynoa.metrics import LATENCY_BUCKETS, PartitionLag

UNDECODABLE = "undecodable"


class _AgentSeries:
    """Builds an agent's metrics: each in the agent's registry, labelled first by ``agent``
    (every agent process serves its own registry; the label tells them apart once scraped)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, ["agent", *labels], registry=self._registry)

    def gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, ["agent", *labels], registry=self._registry)

    def histogram(
        self, name: str, documentation: str, buckets: Sequence[float], *labels: str
    ) -> Histogram:
        return Histogram(
            name, documentation, ["agent", *labels], buckets=buckets, registry=self._registry
        )


class AgentMetrics:
    """The metrics of one agent process, in its own registry."""

    def __init__(
        self,
        agent: str,
        group: str,
        event_types: Collection[str],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.agent = agent
        self.registry = registry if registry is not None else metrics.new_registry()
        self._event_types = frozenset(event_types)
        own = _AgentSeries(self.registry)
        self._processed = own.counter(
            "erynoa_agent_events_processed",
            "Messages handled (the state committed and its events published), by event type",
            "event_type",
        )
        self._failed = own.counter(
            "erynoa_agent_events_failed",
            "Messages whose handling failed and went to a retry tier or the dead-letter topic",
            "event_type",
            "error_kind",
        )
        self._batch_size = own.histogram(
            "erynoa_agent_batch_size",
            "Messages handled together in one transaction (what queued up in a lane meanwhile)",
            (1, 2, 4, 8, 16, 32, 64, 128),
        )
        self._latency = own.histogram(
            "erynoa_agent_handler_duration_seconds",
            "Time to handle one message: decode, transaction, side effects, publish",
            LATENCY_BUCKETS,
            "event_type",
        )
        self._retries = own.counter(
            "erynoa_agent_retries", "Messages sent to a retry tier, by tier topic", "topic"
        )
        self._dead_letters = own.counter(
            "erynoa_agent_dead_letters", "Messages sent to the dead-letter topic", "error_kind"
        )
        self._deadlines = own.gauge(
            "erynoa_agent_deadlines_pending",
            "Provider deadlines still running (provider_deadlines rows with status pending)",
        )
        self._paused = own.gauge(
            "erynoa_agent_lanes_paused",
            "Lanes waiting in place for a dependency that is down (an outage, not a failure)",
        )
        self._pauses = own.counter(
            "erynoa_agent_outage_pauses", "Times a lane paused because a dependency was down"
        )
        self._rewinds = own.counter(
            "erynoa_agent_rewinds",
            "Partitions moved back because a batch started past the recorded position",
            "topic",
        )
        self.lag = PartitionLag(self.registry, group)

    def event_type(self, headers: list[tuple[str, bytes]]) -> str:
        """The label for a consumed message, from its header."""
        return metrics.bounded(k.header(headers, k.H_EVENT_TYPE), self._event_types, UNDECODABLE)

    def paused(self, change: int) -> None:
        """A lane paused for an outage (+1) or resumed (-1)."""
        self._paused.labels(self.agent).inc(change)
        if change > 0:
            self._pauses.labels(self.agent).inc()

    def rewound(self, topic: str) -> None:
        self._rewinds.labels(self.agent, topic).inc()

    def batch(self, size: int) -> None:
        self._batch_size.labels(self.agent).observe(size)

    def handled(self, event_type: str, seconds: float) -> None:
        """One message's handling took ``seconds`` (its whole batch's time: it waited for all)."""
        self._latency.labels(self.agent, event_type).observe(seconds)

    def processed(self, event_type: str) -> None:
        self._processed.labels(self.agent, event_type).inc()

    def failed(self, event_type: str, error_kind: str, topic: str, dead_letter: bool) -> None:
        self._failed.labels(self.agent, event_type, error_kind).inc()
        if dead_letter:
            self._dead_letters.labels(self.agent, error_kind).inc()
        else:
            self._retries.labels(self.agent, topic).inc()

    async def count_deadlines(self, pool: asyncpg.Pool) -> None:
        """Refresh the pending-deadline gauge (provider-response)."""
        async with pool.acquire(timeout=2) as conn:
            pending = await conn.fetchval(
                "SELECT count(*) FROM provider_deadlines WHERE status = 'pending'", timeout=2
            )
        self._deadlines.labels(self.agent).set(int(pending or 0))


def consumer_lag(app: Any) -> dict[tuple[str, int], int]:
    """Lag of each partition assigned to this worker: end offset minus processed position.

    The processed position is the offset this worker last committed (Faust's monitor keeps
    it; acks are manual, so it never runs ahead of the work); the end is the high watermark
    the consumer last fetched. Both are read locally, never through the consumer's thread (a
    ``position()`` call there can wait for a partition's reset and hold up its commits). A
    partition this worker has not committed or fetched yet is left out rather than guessed;
    the group's lag from the broker's side is in ``GET /api/v1/admin/stats``.
    """
    consumer = app.consumer
    committed = app.monitor.tp_committed_offsets or {}
    lags: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        lag = metrics.lag(consumer.highwater(tp), committed.get(tp))
        if lag is not None:
            lags[(tp.topic, tp.partition)] = lag
    return lags
