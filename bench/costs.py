"""What a booking costs: CPU time by part of the system (from ``/proc``), and the agents' batches.

Wall-clock rates on a shared 2-CPU machine swing with everything else that runs; the CPU seconds
each process spent per completed booking do not, and they say where a booking's cost goes.
The system's own processes are known by pid (``LocalSystem``); the services by command line
(PostgreSQL counts every backend on the server, so a concurrent user of the server adds to it).
"""

from __future__ import annotations

import os
import urllib.request

from bench import cpu
from erynoa import saga
from erynoa.settings import Settings
from loadgen.system import LocalSystem

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
    for pid, cmdline, seconds in cpu.processes():
        part = _part_of(pid, cmdline, ours)
        if part is not None:
            used[part] = used.get(part, 0.0) + seconds
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
