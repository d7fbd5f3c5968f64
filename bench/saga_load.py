"""(b) The saga's maximum sustained rate, and its latency at half of it, via loadgen.

Happy path (``loadgen/profiles/happy.yaml``): every card authorizes, every provider accepts
as soon as the read model shows the request, no slot ever fills. Bookings go straight into
Kafka (``--via kafka``), so this measures the saga and the read model, not the API (that is
part (c)).

The search starts from a probe: a short run as fast as 300 open sagas allow, whose steady
completion rate estimates the capacity C. It then tries 0.8 C and moves up or down by a
factor of 1.25 until one rate holds and the next does not, and bisects between the two. A step
is *sustained* when

* every saga reached its outcome within the drain window,
* the generator was not held back (at most 5% late sends),
* sagas completed at ≥ 80% of the offered rate (steady part of the run), and
* latency did not climb: the median of the last fifth of bookings is at most twice the first
  fifth's plus 0.5 s (a growing backlog shows there first), and at most 1 s (a backlog that
  grew within the first fifth already shows in the median itself).

Before each step it waits (a bounded time) until every consumer group is idle again, so one
step's backlog does not weigh on the next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from loadgen.engine import run
from loadgen.lag import LagSampler
from loadgen.model import RunOptions
from loadgen.profile import PROFILES_DIR, load_profile
from loadgen.report import Report

HAPPY = PROFILES_DIR / "happy.yaml"
# Enough open sagas to saturate a system doing 1,000/s at 300 ms, few enough that a slow
# system drains the probe's backlog in a minute.
PROBE_IN_FLIGHT = 300
# The end-to-end median above which a step counts as queueing, not keeping up.
QUEUEING_MEDIAN_MS = 1000.0


@dataclass
class Step:
    rate: float
    report: Report
    sustained: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        run_info = self.report.run
        return {
            "rate_per_s": self.rate,
            "sustained": self.sustained,
            "why": self.why,
            "completed_per_s": round(self.report.throughput["steady_completed_sagas_per_s"], 1),
            "saga_events_per_s": round(self.report.throughput["saga_events_per_s"], 1),
            "e2e_p50_ms": round(self.report.latency["end_to_end"].p50_ms, 1),
            "e2e_p99_ms": round(self.report.latency["end_to_end"].p99_ms, 1),
            "e2e_p50_first_fifth_ms": run_info["e2e_p50_first_fifth_ms"],
            "e2e_p50_last_fifth_ms": run_info["e2e_p50_last_fifth_ms"],
            "accepted": run_info["accepted"],
            "completed": run_info["completed"],
            "late_sends": run_info["late_sends"],
            "max_consumer_lag": self.report.consumer_lag["max"],
        }


def judge(report: Report, rate: float) -> tuple[bool, str]:
    """Whether a step kept up with ``rate`` (see the module docstring), and why not."""
    run_info = report.run
    unfinished = sum(report.unfinished.values())
    if unfinished:
        return False, f"{unfinished} sagas unfinished after the drain"
    if run_info["failed_requests"]:
        return False, f"{run_info['failed_requests']} requests failed"
    # Not 0: on a busy 2-core machine the generator itself is sometimes scheduled late.
    if run_info["late_sends"] > 0.05 * max(run_info["sent"], 1):
        return False, f"{run_info['late_sends']} late sends: the generator was held back"
    steady = report.throughput["steady_completed_sagas_per_s"]
    # Loose on purpose: completions come in materializer batches, so a short step's steady
    # rate is noisy; a system that really falls behind is caught by the climbing latency.
    if steady < 0.8 * rate:
        return False, f"completed {steady:.0f}/s, under 80% of {rate:.0f}/s"
    first, last = run_info["e2e_p50_first_fifth_ms"], run_info["e2e_p50_last_fifth_ms"]
    if last > 2 * first + 500:
        return False, f"latency climbed: median {first:.0f} ms → {last:.0f} ms"
    # A queue that built up within the first fifth already does not climb any more: the
    # median itself says so (unloaded, a happy-path saga takes about 200-300 ms here).
    if last > QUEUEING_MEDIAN_MS:
        return False, f"median {last:.0f} ms at the end: a queue built up"
    return True, "kept up"


async def wait_idle(settings: Settings, catalog: TopicCatalog, within_s: float = 60.0) -> int:
    """Wait until no consumer group lags; returns the lag left when time ran out (0: idle)."""
    sampler = LagSampler(
        settings.kafka_bootstrap, {c.name: c.group_id for c in catalog.consumers.values()}
    )
    await sampler.start()
    try:
        deadline = time.monotonic() + within_s
        while True:
            lag = sum((await sampler.sample()).values())
            if lag == 0 or time.monotonic() > deadline:
                return lag
            await asyncio.sleep(1.0)
    finally:
        await sampler.stop()


async def step(
    settings: Settings,
    rate: float | None,
    seconds: float,
    *,
    check_invariants: bool = False,
    in_flight: int = 100_000,
    drain_s: float | None = None,
) -> Report:
    """One loadgen run of the happy path at ``rate`` (None: as fast as ``in_flight`` allows)."""
    options = RunOptions(
        via="kafka",
        profile=load_profile(HAPPY),
        rate=rate,
        duration_s=seconds,
        in_flight=in_flight,  # the default is never the limit: the system has to be
        concurrency=512,
        drain_s=seconds + 15 if drain_s is None else drain_s,
        # The simulated provider answers on the poll after the read model shows the request:
        # a short interval keeps the watcher out of the latency being measured.
        poll_interval_s=0.05,
        check_invariants=check_invariants,
    )
    return await run(settings, options)


async def saturate(settings: Settings, seconds: float) -> Report:
    """The probe: as fast as ``PROBE_IN_FLIGHT`` open sagas allow, for ``seconds``."""
    # The in-flight cap bounds the backlog the probe leaves; its drain is short on purpose:
    # only the completion rate while saturated matters here.
    return await step(settings, None, seconds, in_flight=PROBE_IN_FLIGHT, drain_s=5)


async def search(
    settings: Settings,
    catalog: TopicCatalog,
    *,
    seconds: float,
    probe_seconds: float,
    bisections: int,
    budget_s: float,
    idle_wait_s: float,
    log: Callable[[str], None],
    probe: Report | None = None,
) -> tuple[Report, list[Step]]:
    """Probe (unless ``probe`` is one already run), ramp, bisect; returns the probe's report
    and every step run."""
    steps: list[Step] = []
    ends = time.monotonic() + budget_s

    if probe is None:
        await wait_idle(settings, catalog, idle_wait_s)
        probe = await saturate(settings, probe_seconds)
    capacity = max(probe.throughput["steady_completed_sagas_per_s"], 1.0)
    log(f"saga probe: {capacity:.0f} completed/s at saturation")

    async def measure(rate: float) -> Step:
        await wait_idle(settings, catalog, idle_wait_s)
        report = await step(settings, rate, seconds)
        ok, why = judge(report, rate)
        result = Step(rate, report, ok, why)
        steps.append(result)
        log(
            f"saga {rate:7.0f}/s: {'sustained' if ok else 'NOT sustained'} ({why}); "
            f"completed {report.throughput['steady_completed_sagas_per_s']:.0f}/s, "
            f"e2e p50 {report.latency['end_to_end'].p50_ms:.0f} ms "
            f"p99 {report.latency['end_to_end'].p99_ms:.0f} ms"
        )
        return result

    good: float | None = None
    bad: float | None = None
    rate = max(1.0, round(0.8 * capacity))
    while time.monotonic() < ends and (good is None or bad is None) and rate >= 1:
        if (await measure(rate)).sustained:
            good = rate
            rate = round(rate * 1.25)
        else:
            bad = rate
            rate = round(rate / 1.25)
        if rate in (good, bad):
            break
    for _ in range(bisections):
        if good is None or bad is None or time.monotonic() >= ends or bad - good <= 2:
            break
        middle = round((good + bad) / 2)
        if (await measure(middle)).sustained:
            good = middle
        else:
            bad = middle
    return probe, steps


def best(steps: list[Step]) -> Step | None:
    """The highest sustained step."""
    sustained = [s for s in steps if s.sustained]
    return max(sustained, key=lambda s: s.rate) if sustained else None
