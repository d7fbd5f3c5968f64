"""CPU time by process, from ``/proc``, and what it comes to per completed saga.

The benchmarks read every process's CPU seconds before and after a measured run; the
difference, by part of the system, divided by the sagas completed meanwhile, is the cost of
one saga. A shared machine's other load changes wall-clock rates, not these.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, float] | None:
    """(command line, CPU seconds used) of a process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of stat; [0] here is field 3.
    return cmdline, (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def processes() -> Iterator[tuple[int, str, float]]:
    """Every running process: (pid, command line, CPU seconds user + system so far)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            yield int(entry), *found


def per_completed_ms(
    before: dict[str, float], after: dict[str, float], completed: int
) -> dict[str, float]:
    """Milliseconds of CPU per completed saga, by part, largest first, with the total."""
    spent = {part: after[part] - before.get(part, 0.0) for part in after}
    result = {
        part: round(1000 * seconds / max(completed, 1), 2)
        for part, seconds in sorted(spent.items(), key=lambda item: -item[1])
    }
    result["total"] = round(sum(result.values()), 2)
    return result
