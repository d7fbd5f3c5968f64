"""What a booking costs: CPU time by part of the system (from ``/proc``), and the agents' batches.

Wall-clock rates on a shared 2-CPU machine swing with everything else that runs; the CPU seconds
each process spent per completed booking do not, and they say where a booking's cost goes.
The system's own processes are known by pid (``LocalSystem``); the services by command line
(PostgreSQL counts every backend on the server, so a concurrent user of the server adds to it).
"""

from __future__ import annotations

import os
import urllib.request

from erynoa import saga
from erynoa.settings import Settings
from loadgen.system import LocalSystem

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
AGENT_NAMES = saga.AGENTS


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


def cpu_used(system: LocalSystem) -> dict[str, float]:
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


def cpu_per_booking(
    before: dict[str, float], after: dict[str, float], completed: int
) -> dict[str, float]:
    """Milliseconds of CPU per completed booking, by part, largest first, with the total."""
    spent = {part: after[part] - before.get(part, 0.0) for part in after}
    result = {
        part: round(1000 * seconds / max(completed, 1), 2)
        for part, seconds in sorted(spent.items(), key=lambda item: -item[1])
    }
    result["total"] = round(sum(result.values()), 2)
    return result


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
