"""Only part (c) of the benchmark: ``POST /bookings`` against the trivial endpoint, ≈ 1-2 min.

    .venv/bin/python bench/api_only.py                        # 15 s per phase, as bench/run.py
    .venv/bin/python bench/api_only.py --seconds 8 --profile /tmp/api.txt

It starts the system exactly as ``bench/run.py`` does (``loadgen.system.LocalSystem``: the API,
the agents and the materializer, with their own topics and port, on the running stack; the
stack is neither started nor stopped) and runs the same ``http_bench``. It prints each phase
and the two issue-6 ratios, and writes the JSON to the run's log directory.

``--api-alone`` starts the API without the agents and the materializer, to see what the API
itself can do (the benchmark's number is with them: they share the CPUs).

``--profile PATH`` samples the API process with py-spy (``pip install py-spy``) for the whole
run and writes collapsed stacks (one ``frame;frame;... count`` line each, idle samples left
out, so the trivial phases add next to nothing) for flame graphs or ``grep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import http_bench, say  # noqa: E402
from erynoa.settings import Settings  # noqa: E402
from erynoa.supervisor import System, commands  # noqa: E402
from loadgen.engine import check_loopback  # noqa: E402
from loadgen.system import LocalSystem  # noqa: E402


def _profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--format", "raw", "--nonblocking",
         "--rate", "200", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ApiAlone(LocalSystem):
    """The API without the agents and the materializer (``--api-alone``): what the API itself
    can do when it does not share the CPUs with the saga its requests start."""

    def __init__(self, base: Settings, log_dir: Path) -> None:
        super().__init__(base, log_dir)
        self.system = System(
            {"api": commands()["api"]}, env={**os.environ, **self.env}, log_dir=log_dir
        )

    def wait_ready(self, timeout_s: float = 90.0, parts: tuple[str, ...] = ("api",)) -> None:
        super().wait_ready(timeout_s, parts=("api",))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase (bench: 15)")
    parser.add_argument("--concurrency", type=int, default=32, help="bench: 32")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of the API here")
    parser.add_argument(
        "--api-alone", action="store_true", help="start no agents and no materializer"
    )
    args = parser.parse_args()

    settings = Settings()
    check_loopback(settings.public_base_url, settings.kafka_bootstrap, settings.database_url)
    log_dir = ROOT / "bench" / "results" / "logs" / datetime.now().strftime("%Y%m%dT%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    parts = "the API alone" if args.api_alone else "API, agents, materializer"
    say(f"system: starting {parts} (logs in {log_dir})")
    with (ApiAlone if args.api_alone else LocalSystem)(settings, log_dir) as system:
        api = system.system.parts["api"].process
        assert api is not None
        profiler = _profiler(api.pid, args.profile) if args.profile is not None else None
        cpu_before = _cpu_seconds(api.pid)
        try:
            results = asyncio.run(http_bench(system, args.seconds, args.concurrency, log_dir))
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
        # The API only works in the two POST /bookings phases (the trivial ones leave it idle).
        served = results["api_closed"]["requests"] + results["api_open_half"]["requests"]
        cpu = _cpu_seconds(api.pid) - cpu_before
        results["api_cpu_ms_per_request"] = round(1000 * cpu / max(served, 1), 2)
    (log_dir / "http.json").write_text(json.dumps(results, indent=2) + "\n")
    _report(results)
    if args.profile is not None:
        say(f"profile: {args.profile}")
    return 0


def _report(results: dict[str, Any]) -> None:
    for key in ("trivial_closed", "api_closed", "trivial_open_half", "api_open_half"):
        r = results[key]
        lat = r["latency_ms"]
        say(
            f"{key:18} {r['requests_per_s']:8.1f} req/s  p50 {lat['p50_ms']:7.1f} ms  "
            f"p99 {lat['p99_ms']:7.1f} ms  errors {r['errors'] or '-'}"
        )
    trivial = results["trivial_closed"]["requests_per_s"]
    api = results["api_closed"]["requests_per_s"]
    p99 = results["api_open_half"]["latency_ms"]["p99_ms"]
    say(f"API process CPU: {results['api_cpu_ms_per_request']} ms per POST /bookings")
    say(f"ratio {api / trivial:.2f} x trivial (target >= 0.5); p99 at 50% {p99:.1f} ms (<= 20)")


if __name__ == "__main__":
    sys.exit(main())
