"""Background processes: start detached in their own session, remember them, stop their group.

A service is remembered by a small JSON pid file holding the pid, the process's start time and
the boot id, so that a reused pid (or a pid file left from before a reboot) is never mistaken for
the service. Each service runs in its own session, so its pid is also its process-group id and
stopping it signals the whole group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class PidRecord:
    """What identifies one started process: its pid, its start time and the boot it ran in."""

    pid: int
    start_ticks: int
    boot_id: str

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["start_ticks"]), str(data["boot_id"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def this_boot(self) -> bool:
        return self.boot_id == boot_id()

    def alive(self) -> bool:
        """True while the very process that was started runs (not a zombie, not a reused pid)."""
        stat = _stat(self.pid)
        return (
            stat is not None
            and self.this_boot()
            and stat.state != "Z"
            and stat.start_ticks == self.start_ticks
        )


@dataclass(frozen=True)
class _Stat:
    state: str
    ppid: int
    pgrp: int
    start_ticks: int


def boot_id() -> str:
    return (_PROC / "sys/kernel/random/boot_id").read_text().strip()


def _stat(pid: int) -> _Stat | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Stat(fields[0], ppid=int(fields[1]), pgrp=int(fields[2]), start_ticks=int(fields[19]))


def cmdline(pid: int, limit: int = 120) -> str:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _live_processes() -> dict[int, _Stat]:
    table = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat.state != "Z":
                table[int(entry.name)] = stat
    return table


def members(pgid: int) -> dict[int, int]:
    """Live processes of group ``pgid`` and all their descendants, as pid -> start time.

    Descendants count too: PostgreSQL's server processes each call setsid().
    """
    table = _live_processes()
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    found = {pid for pid, stat in table.items() if stat.pgrp == pgid}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid: table[pid].start_ticks for pid in found}


def _remaining(pgid: int, tracked: dict[int, int]) -> dict[int, int]:
    """``members(pgid)`` plus those of ``tracked`` still alive (they may have been re-parented)."""
    left = members(pgid)
    for pid, ticks in tracked.items():
        stat = _stat(pid)
        if stat is not None and stat.state != "Z" and stat.start_ticks == ticks:
            left[pid] = ticks
    return left


def start(
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> PidRecord:
    """Start ``argv`` in a new session, its output to ``log_path`` (the old log kept as .1)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists():
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    with log_path.open("ab") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    stat = _stat(proc.pid)
    return PidRecord(proc.pid, stat.start_ticks if stat else -1, boot_id())


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def wait_gone(pgid: int, tracked: dict[int, int], timeout: float) -> bool:
    """Wait until the group and every ``tracked`` process have ended; False on timeout."""
    deadline = time.monotonic() + timeout
    while _remaining(pgid, tracked):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def kill_all(pgid: int, tracked: dict[int, int]) -> None:
    """SIGKILL the group and whatever is left of ``tracked``, and wait for them to go."""
    signal_group(pgid, signal.SIGKILL)
    for pid in _remaining(pgid, tracked):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(pgid, tracked, 5)


def stop_group(pgid: int, sig: signal.Signals, timeout: float) -> bool:
    """Signal the group, wait up to ``timeout`` s, then SIGKILL. True if it ended gracefully."""
    tracked = members(pgid)
    signal_group(pgid, sig)
    if wait_gone(pgid, tracked, timeout):
        return True
    kill_all(pgid, tracked)
    return False


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def port_listeners(port: int) -> list[int] | None:
    """Pids listening on TCP ``port`` (None if nothing listens, [] if the owner is not visible)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    owners = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in targets:
                    owners.append(int(entry.name))
                    break
            except OSError:
                continue
    return owners


def describe_port_owner(port: int) -> str | None:
    """'pid N (command line)' of whoever listens on ``port``, or None when the port is free."""
    owners = port_listeners(port)
    if owners is None:
        return None
    if not owners:
        return "a process this user cannot see"
    return ", ".join(f"pid {pid} ({cmdline(pid)})" for pid in owners)


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file ([] if it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-lines:] if lines > 0 else []
