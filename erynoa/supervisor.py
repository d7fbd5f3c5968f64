"""Run the whole system on one machine: the API, the four saga agents, the materializer.

``erynoa run`` uses it in the foreground (Ctrl-C stops everything); the end-to-end tests use
it to start the same processes and to ``kill -9`` one of them. Each part is its own process
running its own ``erynoa`` sub-command, exactly as it would be deployed one per container;
a part that dies unexpectedly is restarted with backoff.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from erynoa import saga

AGENTS = saga.AGENTS


def commands() -> dict[str, list[str]]:
    """Every part of the system and the ``erynoa`` command that runs it."""
    erynoa = [sys.executable, "-m", "erynoa"]
    parts = {"api": [*erynoa, "api"], "materializer": [*erynoa, "materializer", "run"]}
    for agent in AGENTS:
        parts[agent] = [*erynoa, "worker", agent]
    return parts


@dataclass
class Part:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


class System:
    """A set of child processes started, watched and stopped together."""

    def __init__(
        self,
        parts: Mapping[str, list[str]] | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.parts = {name: Part(name, argv) for name, argv in (parts or commands()).items()}
        self.env = {**os.environ, **(env or {})}
        self.log_dir = log_dir

    def start(self, name: str | None = None) -> None:
        for part in self._select(name):
            if part.process is not None and part.process.poll() is None:
                continue
            output = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                output = open(self.log_dir / f"{part.name}.log", "ab")  # noqa: SIM115 - child owns it
            part.process = subprocess.Popen(
                part.argv, env=self.env, stdout=output, stderr=output, start_new_session=True
            )
            if output is not None:
                output.close()

    def kill(self, name: str) -> None:
        """``kill -9``: no shutdown hooks, no commits (what a crash looks like)."""
        process = self.parts[name].process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self, name: str | None = None, timeout: float = 20.0) -> None:
        """SIGTERM (graceful: finish in-flight work, commit), then SIGKILL after ``timeout``."""
        running = [p for p in self._select(name) if p.process and p.process.poll() is None]
        for part in running:
            assert part.process is not None
            os.killpg(part.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for part in running:
            assert part.process is not None
            try:
                part.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(part.process.pid, signal.SIGKILL)
                part.process.wait()

    def exited(self) -> list[tuple[str, int]]:
        return [
            (p.name, p.process.returncode)
            for p in self.parts.values()
            if p.process is not None and p.process.poll() is not None
        ]

    def restart_exited(self, max_per_minute: int = 5) -> list[str]:
        """Restart parts that died; a part dying too often is left down and reported."""
        given_up = []
        now = time.monotonic()
        for name, _code in self.exited():
            part = self.parts[name]
            part.restarts = [t for t in part.restarts if now - t < 60] + [now]
            if len(part.restarts) > max_per_minute:
                given_up.append(name)
                continue
            self.start(name)
        return given_up

    def _select(self, name: str | None) -> list[Part]:
        return list(self.parts.values()) if name is None else [self.parts[name]]


def run_foreground(api_url: str) -> int:
    """Run everything until Ctrl-C or SIGTERM; returns the exit code."""
    system = System()
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    system.start()
    print(f"erynoa: starting {', '.join(system.parts)}", file=sys.stderr, flush=True)
    announced = False
    code = 0
    while not stopping:
        time.sleep(0.5)
        if not announced and answers(f"{api_url}/api/v1/health/live", timeout=1):
            announced = True
            print(
                f"erynoa: API at {api_url}/api/v1  docs at {api_url}/api/v1/docs  "
                "(Ctrl-C stops all)",
                file=sys.stderr,
                flush=True,
            )
        for name, status in system.exited():
            print(f"erynoa: {name} exited with {status}; restarting", file=sys.stderr, flush=True)
        given_up = system.restart_exited()
        if given_up:
            print(f"erynoa: {', '.join(given_up)} keep crashing; stopping", file=sys.stderr)
            code = 1
            break
    print("erynoa: stopping", file=sys.stderr, flush=True)
    system.stop()
    return code


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers 200 now (one try: callers poll)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False
