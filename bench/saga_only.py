"""The saga part of the benchmark alone: start the system, probe its saturation rate, and run
the happy path at a fixed rate — for measuring one change to the agents in about a minute.

    .venv/bin/python bench/saga_only.py                 # probe only (as fast as it goes)
    .venv/bin/python bench/saga_only.py --rate 40       # and a run at 40 bookings/s

The stack must be up (``make stack``). Prints one JSON line per measurement, with the CPU time
each part of the system spent per completed booking during the probe (from ``/proc``: a number
that other load on the machine does not inflate, unlike wall-clock rates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import saga_load  # noqa: E402
from erynoa.settings import Settings  # noqa: E402
from loadgen.engine import check_loopback  # noqa: E402
from loadgen.report import Report  # noqa: E402
from loadgen.system import LocalSystem  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
AGENT_NAMES = ("reservation", "payment", "notification", "provider-response")


def _part_of(pid: int, cmdline: str, ours: dict[int, str]) -> str | None:
    """Which part of the system a process is (None: not ours). ``ours``: the system's
    processes by pid; the services are told by their command line."""
    if pid == os.getpid():
        return "load generator"
    if pid in ours:
        return ours[pid]
    if cmdline.startswith("postgres"):
        return "postgres"
    if "kafka.Kafka" in cmdline:
        return "kafka"
    if "redis-server" in cmdline:
        return "redis"
    if "stripe-mock" in cmdline:
        return "stripe-mock"
    return None


def cpu_seconds(system: LocalSystem) -> dict[str, float]:
    """CPU seconds (user + system) every part of the system used so far, summed by part."""
    ours = {
        part.process.pid: name
        for name, part in system.system.parts.items()
        if part.process is not None
    }
    used: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        part = _part_of(int(entry), cmdline, ours)
        if part is not None:
            # utime and stime are fields 14 and 15 of stat; [0] here is field 3.
            ticks = int(fields[11]) + int(fields[12])
            used[part] = used.get(part, 0.0) + ticks / TICKS_PER_S
    return used


def mean_batch_sizes(settings: Settings) -> dict[str, float]:
    """Each agent's mean batch size so far, from its /metrics (absent: no metrics port)."""
    from erynoa.metrics import port_for

    means: dict[str, float] = {}
    for agent in AGENT_NAMES:
        port = port_for(settings, agent)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            continue
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("erynoa_agent_batch_size_sum"):
                total = float(line.split()[-1])
            elif line.startswith("erynoa_agent_batch_size_count"):
                count = float(line.split()[-1])
        if count:
            means[agent] = round(total / count, 1)
    return means


def _summary(label: str, report: Report) -> dict[str, object]:
    return {
        "run": label,
        "completed_per_s": round(report.throughput["steady_completed_sagas_per_s"], 1),
        "e2e_p50_ms": round(report.latency["end_to_end"].p50_ms, 1),
        "e2e_p99_ms": round(report.latency["end_to_end"].p99_ms, 1),
        "steps_p50_ms": {k: round(v.p50_ms, 1) for k, v in report.steps.items()},
    }


async def _measure(settings: Settings, args: argparse.Namespace, system: LocalSystem) -> None:
    await saga_load.wait_idle(system.settings, system.catalog, 30)
    before = cpu_seconds(system)
    probe = await saga_load.step(
        system.settings, None, args.seconds, in_flight=args.in_flight, drain_s=5
    )
    after = cpu_seconds(system)
    batches = mean_batch_sizes(system.settings)
    completed = max(int(probe.run["completed"]), 1)
    per_booking = {
        part: round(1000 * (after[part] - before.get(part, 0.0)) / completed, 2)
        for part in sorted(after, key=lambda p: before.get(p, 0.0) - after[p])
    }
    print(
        json.dumps(
            {
                **_summary("probe", probe),
                "completed": completed,
                "cpu_ms_per_booking": {**per_booking, "total": round(sum(per_booking.values()), 2)},
                "mean_batch": batches,
            }
        ),
        flush=True,
    )
    if args.rate:
        await saga_load.wait_idle(system.settings, system.catalog, 60)
        fixed = await saga_load.step(system.settings, args.rate, args.seconds)
        print(json.dumps(_summary(f"{args.rate}/s", fixed)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--rate", type=float, default=0.0, help="also run at this rate (/s)")
    parser.add_argument("--in-flight", type=int, default=saga_load.PROBE_IN_FLIGHT)
    args = parser.parse_args()
    settings = Settings()
    check_loopback(settings.public_base_url, settings.kafka_bootstrap, settings.database_url)
    started = time.monotonic()
    with LocalSystem(settings, Path(tempfile.mkdtemp(prefix="saga-only-"))) as system:
        asyncio.run(_measure(settings, args, system))
    print(f"# {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
