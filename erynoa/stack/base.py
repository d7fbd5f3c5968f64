"""What every service of the local stack has in common, and the stack's error types."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from erynoa.settings import Settings
from erynoa.stack import procs

Echo = Callable[[str], None]


class StackError(Exception):
    """An expected failure, shown to the user as one line (no traceback)."""


class Unavailable(Exception):
    """An optional service cannot run on this machine; the stack works without it."""


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps things: per-checkout state and a per-user download cache."""

    state_dir: Path
    cache_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> StackPaths:
        return cls(settings.state_dir.resolve(), Path.home() / ".cache" / "erynoa")

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run(self) -> Path:
        return self.state_dir / "run"

    @property
    def outside_dir(self) -> Path:
        """A world-traversable dir owned by this state dir, for users that cannot reach it."""
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"erynoa-{digest}"


class Service:
    """One background service. Subclasses say how to prepare, run and probe it."""

    name: str  # a class attribute; one of several instances (a cluster's nodes) may set its own
    port_settings: ClassVar[tuple[str, ...]]  # the Settings fields of its ports, clients' first
    optional: ClassVar[bool] = False
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    stop_timeout: ClassVar[float] = 20.0
    start_timeout: ClassVar[float] = 60.0

    def __init__(self, settings: Settings, paths: StackPaths) -> None:
        self.settings = settings
        self.paths = paths

    @property
    def ports(self) -> dict[str, int]:
        """Every port the service listens on, by Settings field."""
        ports = {field: getattr(self.settings, field) for field in self.port_settings}
        assert all(isinstance(port, int) for port in ports.values())
        return ports

    @property
    def port(self) -> int:
        """The port clients use."""
        return self.ports[self.port_settings[0]]

    @property
    def home(self) -> Path:
        """The service's own dir in the state dir, named after it."""
        return self.paths.state_dir / self.name

    @property
    def log_path(self) -> Path:
        return self.paths.logs / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.paths.run / f"{self.name}.pid"

    @property
    def unavailable_path(self) -> Path:
        return self.paths.run / f"{self.name}.unavailable"

    def prepare(self, echo: Echo) -> None:
        """Download, build or initialise whatever the service needs; idempotent and quick twice."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> Mapping[str, str] | None:
        return None

    def cwd(self) -> Path | None:
        return None

    def healthy(self) -> bool:
        raise NotImplementedError

    def after_healthy(self, echo: Echo) -> None:
        """Idempotent set-up that needs the running service (e.g. creating a database)."""

    def note(self) -> str | None:
        """Something worth showing in ``status`` besides health."""
        return None

    def stop(self, record: procs.PidRecord) -> bool:
        """Stop the service's process group. True if it ended without SIGKILL."""
        return procs.stop_group(record.pid, self.stop_signal, self.stop_timeout)


def tcp_answers(port: int, expected: bytes, send: bytes = b"") -> bool:
    """Whether the server on loopback ``port`` answers (``send``, when given) with a reply
    that starts with ``expected``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            if send:
                conn.sendall(send)
            return conn.recv(128).startswith(expected)
    except OSError:
        return False


def http_status(port: int, path: str, headers: Mapping[str, str] | None = None) -> int | None:
    """The status of ``GET path`` on loopback ``port``, or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def need_tool(tool: str, package: str) -> str:
    """The path of ``tool``, or a StackError naming the Debian package to install."""
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"`{tool}` not found: install it with `apt-get install -y {package}`")
    return path


def run_tool(
    argv: Sequence[str],
    log_path: Path,
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> None:
    """Run a set-up command to completion, its output appended to ``log_path``.

    Raises StackError naming ``what`` and showing the output's last lines when it fails.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"=== {' '.join(argv)}\n".encode())
        log.flush()
        try:
            code = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
            what += f" (timed out after {timeout:.0f}s)"
    if code != 0:
        raise StackError(f"{what} failed; see {log_path}:\n" + last_lines(log_path, 15))


def last_lines(path: Path, lines: int = 20) -> str:
    return "\n".join("  | " + line for line in procs.tail(path, lines)) or f"  ({path} is empty)"
