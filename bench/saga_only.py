"""The saga part of the benchmark alone: start the system, probe its saturation rate, and run
the happy path at a fixed rate — for measuring one change to the agents in about a minute.

    .venv/bin/python bench/saga_only.py                 # probe only (as fast as it goes)
    .venv/bin/python bench/saga_only.py --rate 40       # a run at 40 bookings/s, then the probe
    .venv/bin/python bench/saga_only.py --rate 9 --no-probe

The stack must be up (``make stack``). Prints one JSON line per measurement, with the CPU time
each part of the system spent per completed booking during the probe (from ``/proc``: a number
that other load on the machine does not inflate, unlike wall-clock rates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import costs, cpu, saga_load  # noqa: E402
from erynoa.settings import Settings  # noqa: E402
from loadgen.engine import check_loopback  # noqa: E402
from loadgen.report import Report  # noqa: E402
from loadgen.system import LocalSystem  # noqa: E402


def _summary(label: str, report: Report) -> dict[str, object]:
    return {
        "run": label,
        "completed_per_s": round(report.throughput["steady_completed_sagas_per_s"], 1),
        "e2e_p50_ms": round(report.latency["end_to_end"].p50_ms, 1),
        "e2e_p99_ms": round(report.latency["end_to_end"].p99_ms, 1),
        "steps_p50_ms": {k: round(v.p50_ms, 1) for k, v in report.steps.items()},
        "steps_p99_ms": {k: round(v.p99_ms, 1) for k, v in report.steps.items()},
    }


async def _measure(settings: Settings, args: argparse.Namespace, system: LocalSystem) -> None:
    if args.rate:
        # The fixed rate first: a probe's backlog would still be draining behind it.
        await saga_load.wait_idle(system.settings, system.catalog, 30)
        before = costs.cpu_used(system)
        fixed = await saga_load.step(system.settings, args.rate, args.seconds)
        after = costs.cpu_used(system)
        completed = max(int(fixed.run["completed"]), 1)
        print(
            json.dumps(
                {
                    **_summary(f"{args.rate}/s", fixed),
                    "completed": completed,
                    "cpu_ms_per_booking": cpu.per_completed_ms(before, after, completed),
                    "mean_batch": costs.mean_batch_sizes(system.settings),
                }
            ),
            flush=True,
        )
    if args.no_probe:
        return
    await saga_load.wait_idle(system.settings, system.catalog, 60)
    before = costs.cpu_used(system)
    probe = await saga_load.step(
        system.settings, None, args.seconds, in_flight=args.in_flight, drain_s=5
    )
    after = costs.cpu_used(system)
    batches = costs.mean_batch_sizes(system.settings)
    completed = max(int(probe.run["completed"]), 1)
    per_booking = cpu.per_completed_ms(before, after, completed)
    print(
        json.dumps(
            {
                **_summary("probe", probe),
                "completed": completed,
                "cpu_ms_per_booking": per_booking,
                "mean_batch": batches,
            }
        ),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--rate", type=float, default=0.0, help="also run at this rate (/s)")
    parser.add_argument("--in-flight", type=int, default=saga_load.PROBE_IN_FLIGHT)
    parser.add_argument("--no-probe", action="store_true", help="only the run at --rate")
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
