"""The harness's own stack instance and the system's processes on it.

Faults stop PostgreSQL, kill the broker, stop Redis and the mail sink: never on the default
stack, which other work uses. ``PrivateStack`` is the same ``erynoa.stack`` services with every
port shifted by ``PORT_OFFSET`` and their state in ``.stack-faults/`` (git-ignored by a
``.gitignore`` of its own). The system (API, four agents, materializer, each a real
``erynoa`` process) runs on it through ``loadgen.system.LocalSystem``: its own topics, its own
database, its own API port.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from erynoa.settings import PROJECT_ROOT, Settings
from erynoa.stack import manager, procs
from erynoa.stack.base import Service
from erynoa.stack.postgres import Postgres, bin_dir
from erynoa.supervisor import answers
from loadgen.system import LocalSystem

PORT_OFFSET = 1000
STATE_DIR = PROJECT_ROOT / ".stack-faults"

Echo = Callable[[str], None]


def private_settings(
    base: Settings, state_dir: Path = STATE_DIR, offset: int = PORT_OFFSET
) -> Settings:
    """``base`` moved onto its own ports and state dir, clients pointed at them."""
    kafka, pg, redis = (
        base.kafka_port + offset,
        base.postgres_port + offset,
        base.redis_port + offset,
    )
    return base.model_copy(
        update={
            "state_dir": state_dir,
            "kafka_port": kafka,
            "kafka_controller_port": base.kafka_controller_port + offset,
            "postgres_port": pg,
            "redis_port": redis,
            "stripe_mock_port": base.stripe_mock_port + offset,
            "smtp_port": base.smtp_port + offset,
            "registry_port": base.registry_port + offset,
            "registry_management_port": base.registry_management_port + offset,
            "kafka_heap": "512m",
            "kafka_bootstrap": f"127.0.0.1:{kafka}",
            "database_url": f"postgresql://erynoa@127.0.0.1:{pg}/erynoa",
            "redis_url": f"redis://127.0.0.1:{redis}/0",
            "registry_url": f"http://127.0.0.1:{base.registry_port + offset}/apis/ccompat/v7",
        }
    )


def supports_brokers() -> bool:
    """Whether ``erynoa.stack`` can bring up a several-broker cluster."""
    return "brokers" in inspect.signature(manager.up).parameters and hasattr(manager, "client_env")


class PrivateStack:
    """Up, down, and breaking one service of the harness's own stack."""

    def __init__(self, settings: Settings, echo: Echo, brokers: int = 1) -> None:
        self.brokers = brokers
        self.echo = echo
        self.settings = settings

    def up(self) -> None:
        state = self.settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        ignore = state / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
        if self.brokers > 1:
            up: Any = manager.up
            up(self.settings, self.echo, brokers=self.brokers)
            env: dict[str, str] = getattr(manager, "client_env")(self.settings)  # noqa: B009
            self.settings = self.settings.model_copy(
                update={
                    "kafka_bootstrap": env["ERYNOA_KAFKA_BOOTSTRAP"],
                    "topics_environment": env["ERYNOA_TOPICS_ENVIRONMENT"],
                }
            )
        else:
            manager.up(self.settings, self.echo)

    def down(self) -> None:
        manager.down(self.settings, self.echo)

    def service(self, name: str) -> Service:
        return manager.service(self.settings, name)

    def record(self, name: str) -> procs.PidRecord | None:
        record = procs.PidRecord.load(self.service(name).pid_path)
        return record if record is not None and record.alive() else None

    def kill9(self, name: str) -> None:
        """SIGKILL the service's whole process group (a crash: no shutdown of any kind)."""
        record = self.record(name)
        if record is not None:
            procs.kill_all(record.pid, procs.members(record.pid))

    def stop(self, name: str) -> None:
        """A clean stop of one service (its port refuses connections afterwards)."""
        record = self.record(name)
        if record is not None:
            self.service(name).stop(record)

    def stop_postgres_immediate(self) -> None:
        """``pg_ctl stop -m immediate`` as the postgres user: no checkpoint, clients cut off."""
        svc = self.service("postgres")
        assert isinstance(svc, Postgres)
        argv = ["runuser", "-u", "postgres", "--", str(bin_dir() / "pg_ctl"), "stop",
                "-D", str(svc.data_dir), "-m", "immediate", "-w", "-t", "30"]  # fmt: skip
        subprocess.run(argv, capture_output=True, check=False, timeout=60)
        record = procs.PidRecord.load(svc.pid_path)
        if record is not None:  # the runuser wrapper ends with its child
            procs.wait_gone(record.pid, procs.members(record.pid), 10)


class Parts:
    """The system's processes on the private stack, supervised: a part that exits is started
    again (as ``erynoa run`` would), and every restart is counted."""

    def __init__(self, stack: PrivateStack, log_dir: Path, rate_limit_per_minute: int) -> None:
        settings = stack.settings
        self.local = LocalSystem(
            settings,
            log_dir,
            extra_env={
                "ERYNOA_STATE_DIR": str(settings.state_dir),
                "ERYNOA_TOPICS_ENVIRONMENT": settings.topics_environment,
                "ERYNOA_SMTP_PORT": str(settings.smtp_port),
                "ERYNOA_METRICS_PORT_BASE": "0",  # other systems on this machine use them
                "ERYNOA_LOG_LEVEL": "INFO",
            },
            rate_limit_per_minute=rate_limit_per_minute,
        )
        self.restarts: dict[str, int] = {}

    @property
    def settings(self) -> Settings:
        return self.local.settings

    def start(self) -> None:
        self.local.start()

    def stop(self) -> None:
        # Topics and the database go with the private stack; a broken stack must not stop
        # the processes from being stopped.
        self.local.system.stop(timeout=30)
        with contextlib.suppress(Exception):
            self.local.stop()

    def supervise(self) -> list[str]:
        """Start every part that exited; the names restarted."""
        restarted = []
        for name, _code in self.local.system.exited():
            self.local.system.start(name)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            restarted.append(name)
        return restarted

    def pid(self, name: str) -> int | None:
        process = self.local.system.parts[name].process
        return process.pid if process is not None and process.poll() is None else None

    def kill9(self, name: str) -> None:
        pid = self.pid(name)
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)

    def ready_marks(self, name: str) -> int:
        """How often the part said it was ready (its log keeps every start)."""
        mark = "materializer started" if name == "materializer" else f"agent {name} ready"
        return self.local.log(name).count(mark)

    def is_ready(self, name: str, marks_before: int) -> bool:
        if name == "api":
            return answers(f"{self.local.api_url}/api/v1/health/ready")
        return self.ready_marks(name) > marks_before


def wait_until(check: Callable[[], bool], timeout_s: float, every_s: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)
    return True
