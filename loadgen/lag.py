"""Consumer lag during a run: end offsets minus committed offsets, per consumer group.

Sampled once a second by a background task: the committed offsets of each group from the
admin API, the end offsets of the same partitions from a group-less consumer. A group's lag is
the sum over its partitions. The agents commit about once a second and the materializer after
each batch, so a sample can overstate the true lag by up to one commit interval of traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from erynoa.kafka import start_consumer

log = logging.getLogger("loadgen.lag")


@dataclass
class LagSamples:
    """What the sampler saw: ``(wall-clock time, lag per group)`` and the maximum per group."""

    timeline: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    max_by_group: dict[str, int] = field(default_factory=dict)
    failures: int = 0

    def add(self, t: float, lags: Mapping[str, int]) -> None:
        self.timeline.append((t, dict(lags)))
        for group, lag in lags.items():
            self.max_by_group[group] = max(self.max_by_group.get(group, 0), lag)

    @property
    def max_lag(self) -> int:
        return max(self.max_by_group.values(), default=0)


class LagSampler:
    """Samples the lag of ``groups`` (name → group id) every ``interval_s`` while running."""

    def __init__(self, bootstrap: str, groups: Mapping[str, str], interval_s: float = 1.0) -> None:
        self._bootstrap = bootstrap
        self._groups = dict(groups)
        self._interval = interval_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.samples = LagSamples()

    async def start(self) -> None:
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap, client_id="loadgen-lag"
        )
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="loadgen-lag",
        )
        await start_consumer(self._consumer)
        self._task = asyncio.create_task(self._loop(), name="loadgen-lag")

    async def stop(self) -> None:
        """Stop sampling and disconnect (safe to call twice)."""
        task, consumer, admin = self._task, self._consumer, self._admin
        self._task = self._consumer = self._admin = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def sample(self) -> dict[str, int]:
        """One reading: each group's total lag."""
        if self._admin is None or self._consumer is None:
            raise RuntimeError("LagSampler.sample before start")
        committed: dict[str, dict[TopicPartition, int]] = {}
        for name, group_id in self._groups.items():
            offsets = await self._admin.list_consumer_group_offsets(group_id)
            # -1: the group has no commit for that partition yet; nothing to measure from.
            committed[name] = {tp: om.offset for tp, om in offsets.items() if om.offset >= 0}
        partitions = {tp for offsets in committed.values() for tp in offsets}
        ends = await self._consumer.end_offsets(list(partitions)) if partitions else {}
        return {
            name: sum(max(0, ends.get(tp, offset) - offset) for tp, offset in offsets.items())
            for name, offsets in committed.items()
        }

    async def until_caught_up(self, within_s: float) -> dict[str, int]:
        """Sample until every group has consumed to the end of its partitions, or ``within_s``
        has passed; returns the last reading (all zero when caught up).

        A saga's read model can show it settled while an agent has yet to consume its last
        event (the materializer and the agents read at their own pace), so whoever judges
        the agents' states waits here first. A failed sample counts as not caught up.
        """
        deadline = time.monotonic() + within_s
        lags: dict[str, int] = {}
        while True:
            try:
                lags = await self.sample()
                if not any(lags.values()):
                    return lags
            except Exception as exc:
                log.warning("consumer lag sample failed: %s", exc)
            if time.monotonic() >= deadline:
                return lags
            await asyncio.sleep(0.5)

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                lags = await self.sample()
                self.samples.add(time.time(), lags)
            except Exception as exc:  # a missed sample is not worth stopping the run for
                self.samples.failures += 1
                log.warning("consumer lag sample failed: %s", exc)
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))
