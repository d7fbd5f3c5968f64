"""Bring the local stack up and down, and report on it.

Services start in order (each prepared first: downloads, initdb, storage format), then are
waited for together until healthy. ``up`` on a running stack changes nothing, and starts
whatever is down (one killed broker, say); a failing ``up`` stops what it started. ``down``
stops every process group and checks the ports are closed; ``stop`` stops (or kills) named
services only. Kafka is one node (``kafka``) or a cluster (``kafka-1`` .. ``kafka-N``, see
:mod:`erynoa.stack.kafka`).
"""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from erynoa.settings import Settings
from erynoa.stack import kafka, procs
from erynoa.stack.base import Echo, Service, StackError, StackPaths, Unavailable, last_lines
from erynoa.stack.kafka import Kafka
from erynoa.stack.mail import MailSink
from erynoa.stack.postgres import Postgres
from erynoa.stack.redis import Redis
from erynoa.stack.registry import Registry
from erynoa.stack.stripe_mock import StripeMock

SERVICES: tuple[type[Service], ...] = (Kafka, Postgres, Redis, Registry, StripeMock, MailSink)
# The services of a stack with one Kafka node (a cluster names its nodes kafka-1 .. kafka-N).
SERVICE_NAMES: tuple[str, ...] = tuple(cls.name for cls in SERVICES)
MAX_BROKERS = 5


def services(settings: Settings, brokers: int | None = None) -> list[Service]:
    """The stack's services, with ``brokers`` Kafka nodes (default: as the state dir has)."""
    paths = StackPaths.from_settings(settings)
    nodes = brokers or kafka.recorded_brokers(paths) or 1
    found: list[Service] = []
    for cls in SERVICES:
        if cls is Kafka:
            found += [Kafka(settings, paths, node, nodes) for node in range(1, nodes + 1)]
        else:
            found.append(cls(settings, paths))
    return found


def _select(all_services: list[Service], names: Sequence[str] | None) -> list[Service]:
    """The services named (``kafka`` means every Kafka node), in start order."""
    if not names:
        return all_services
    known = [svc.name for svc in all_services]
    unknown = [n for n in names if n not in known and n != "kafka"]
    if unknown:
        raise StackError(
            f"no service {', '.join(map(repr, unknown))}; the services are {', '.join(known)}"
        )
    return [
        svc
        for svc in all_services
        if svc.name in names or ("kafka" in names and isinstance(svc, Kafka))
    ]


def service(settings: Settings, name: str) -> Service:
    return _select(services(settings), [name])[0]


def client_env(settings: Settings) -> dict[str, str]:
    """The ERYNOA_* settings a client of this stack's Kafka needs (every broker's address,
    and the topics' environment: ``production`` from three brokers on)."""
    paths = StackPaths.from_settings(settings)
    brokers = kafka.recorded_brokers(paths) or 1
    return {
        "ERYNOA_KAFKA_BOOTSTRAP": kafka.bootstrap_servers(settings, brokers),
        "ERYNOA_TOPICS_ENVIRONMENT": "production" if brokers >= 3 else "local",
    }


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # healthy | unhealthy | stopped | unavailable
    pid: int | None
    port: int
    detail: str | None = None

    @property
    def ok(self) -> bool:
        """Healthy, or an optional service that cannot run on this machine."""
        return self.state in ("healthy", "unavailable")

    def line(self) -> str:
        if self.state == "unavailable":
            return f"{self.name}: unavailable ({self.detail})"
        pid = f"pid {self.pid}" if self.pid else "pid -"
        text = f"{self.name + ':':<13}{self.state:<10} {pid:<11} port {self.port}"
        return f"{text}  {self.detail}" if self.detail else text


@contextmanager
def _locked(paths: StackPaths, echo: Echo) -> Iterator[None]:
    """One `up`/`down` at a time per state dir."""
    paths.run.mkdir(parents=True, exist_ok=True)
    with (paths.run / "stack.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo("waiting for another `erynoa stack` command on this state dir ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _running(svc: Service) -> procs.PidRecord | None:
    record = procs.PidRecord.load(svc.pid_path)
    return record if record is not None and record.alive() else None


def _leftovers(svc: Service) -> procs.PidRecord | None:
    """The pid record if any process of the service's group is still there (leader or not)."""
    record = procs.PidRecord.load(svc.pid_path)
    if record is not None and record.this_boot() and procs.members(record.pid):
        return record
    return None


def _check_ports_free(svc: Service) -> None:
    for field, port in svc.ports.items():
        owner = procs.describe_port_owner(port)
        if owner is not None:
            raise StackError(
                f"{svc.name}: port {port} is already in use by {owner}; stop that process "
                f"or pick another port with ERYNOA_{field.upper()}"
            )


def _wait_healthy(waiting: list[tuple[Service, procs.PidRecord, float]], echo: Echo) -> None:
    """Poll every service until healthy; an optional one that fails is marked unavailable."""
    pending = list(waiting)
    while pending:
        for item in list(pending):
            svc, record, started = item
            problem = None
            if not record.alive():
                problem = f"{svc.name} exited while starting"
            elif svc.healthy():
                pending.remove(item)
                svc.after_healthy(echo)
                ports = ", ".join(str(port) for port in svc.ports.values())
                took = time.monotonic() - started
                echo(f"{svc.name}: healthy after {took:.1f}s (pid {record.pid}, port {ports})")
            elif time.monotonic() - started > svc.start_timeout:
                problem = f"{svc.name} not healthy after {svc.start_timeout:.0f}s"
            if problem is None:
                continue
            if not svc.optional:
                raise StackError(
                    f"{problem}; last lines of {svc.log_path}:\n" + last_lines(svc.log_path)
                )
            pending.remove(item)
            _stop(svc, record, echo)
            svc.unavailable_path.write_text(f"{problem}\n")
            echo(f"{svc.name}: unavailable ({problem}, see {svc.log_path}); going on without it")
        time.sleep(0.3 if pending else 0)


def _stop(svc: Service, record: procs.PidRecord, echo: Echo) -> list[str]:
    """Stop one service; the problems left (ports still open), if any."""
    graceful = svc.stop(record)
    echo(f"{svc.name}: stopped (pid {record.pid})" + ("" if graceful else ", had to be killed"))
    svc.pid_path.unlink(missing_ok=True)
    problems = []
    if survivors := procs.members(record.pid):
        problems.append(f"{svc.name}: processes {sorted(survivors)} survived")
    for port in svc.ports.values():
        deadline = time.monotonic() + 5
        while (owner := procs.describe_port_owner(port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if owner:
            problems.append(f"{svc.name}: port {port} still in use by {owner}")
    return problems


def _choose_brokers(paths: StackPaths, brokers: int | None) -> int:
    recorded = kafka.recorded_brokers(paths)
    if brokers is None:
        return recorded or 1
    if not 1 <= brokers <= MAX_BROKERS:
        raise StackError(f"--brokers must be between 1 and {MAX_BROKERS}, not {brokers}")
    if recorded is not None and recorded != brokers:
        raise StackError(
            f"the stack in {paths.state_dir} has {recorded} Kafka broker(s), not {brokers}: "
            "run `erynoa stack clean` first (deletes its data) or use another ERYNOA_STATE_DIR"
        )
    return brokers


def up(
    settings: Settings,
    echo: Echo,
    brokers: int | None = None,
    only: Sequence[str] | None = None,
) -> None:
    """Start every service that is not running (or those ``only`` names) and wait until all
    are healthy; ``brokers`` Kafka nodes on a fresh state dir (later: as it was set up)."""
    paths = StackPaths.from_settings(settings)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(paths, echo):
        nodes = _choose_brokers(paths, brokers)
        chosen = _select(services(settings, nodes), only)
        if nodes > 1:
            kafka.record_cluster(paths, nodes)
        started: list[tuple[Service, procs.PidRecord]] = []
        waiting: list[tuple[Service, procs.PidRecord, float]] = []
        try:
            for svc in chosen:
                record = _running(svc)
                if record is not None:
                    echo(f"{svc.name}: already running (pid {record.pid})")
                    waiting.append((svc, record, time.monotonic()))
                    continue
                if (stale := _leftovers(svc)) is not None:
                    _stop(svc, stale, echo)
                svc.pid_path.unlink(missing_ok=True)
                _check_ports_free(svc)
                try:
                    svc.prepare(echo)
                except Unavailable as exc:
                    svc.unavailable_path.write_text(f"{exc}\n")
                    echo(f"{svc.name}: unavailable ({exc}); the stack runs without it")
                    continue
                svc.unavailable_path.unlink(missing_ok=True)
                record = procs.start(svc.command(), svc.log_path, cwd=svc.cwd(), env=svc.env())
                record.save(svc.pid_path)
                started.append((svc, record))
                waiting.append((svc, record, time.monotonic()))
                echo(f"{svc.name}: starting (pid {record.pid}, log {svc.log_path})")
            _wait_healthy(waiting, echo)
            if nodes > 1 and any(isinstance(svc, Kafka) for svc in chosen):
                env = " ".join(f"{k}={v}" for k, v in client_env(settings).items())
                echo(
                    f"kafka: {nodes} brokers; clients need {env} "
                    '(eval "$(erynoa stack env)"), then `erynoa topics apply`'
                )
        except BaseException:
            for svc, record in reversed(started):
                if _leftovers(svc) is not None:
                    _stop(svc, record, echo)
                svc.pid_path.unlink(missing_ok=True)
            raise


def _stop_all(chosen: list[Service], echo: Echo, kill: bool = False) -> None:
    problems: list[str] = []
    running = [(svc, _leftovers(svc)) for svc in reversed(chosen)]
    nodes = [(s, r) for s, r in running if r is not None and isinstance(s, Kafka)]
    if len(nodes) > 1 and not kill:
        # Together: a node stopped after the others would wait in its controlled shutdown
        # for a controller quorum that has already gone.
        for node, started in nodes:
            procs.signal_group(started.pid, node.stop_signal)
    for svc, record in running:
        if record is None:
            echo(f"{svc.name}: not running")
            svc.pid_path.unlink(missing_ok=True)
        elif kill:
            procs.kill_all(record.pid, procs.members(record.pid))
            svc.pid_path.unlink(missing_ok=True)
            echo(f"{svc.name}: killed (pid {record.pid}, SIGKILL)")
        else:
            problems += _stop(svc, record, echo)
    if problems:
        raise StackError("; ".join(problems))


def stop(settings: Settings, echo: Echo, names: Sequence[str], kill: bool = False) -> None:
    """Stop the named services only; ``kill``: SIGKILL at once, as a crash would (``up``
    starts them again, on their data as the crash left it)."""
    paths = StackPaths.from_settings(settings)
    chosen = _select(services(settings), names)
    with _locked(paths, echo):
        _stop_all(chosen, echo, kill)


def down(settings: Settings, echo: Echo) -> None:
    """Stop every service (process groups included) and check that their ports are closed."""
    paths = StackPaths.from_settings(settings)
    if not paths.state_dir.exists():
        echo(f"nothing to stop: no state dir {paths.state_dir}")
        return
    with _locked(paths, echo):
        _stop_all(services(settings), echo)


def status(settings: Settings) -> list[ServiceStatus]:
    result = []
    for svc in services(settings):
        record = _running(svc)
        if record is not None:
            state = "healthy" if svc.healthy() else "unhealthy"
            result.append(ServiceStatus(svc.name, state, record.pid, svc.port, svc.note()))
        elif svc.unavailable_path.exists():
            reason = svc.unavailable_path.read_text().strip()
            result.append(ServiceStatus(svc.name, "unavailable", None, svc.port, reason))
        else:
            result.append(ServiceStatus(svc.name, "stopped", None, svc.port))
    return result


def all_ok(settings: Settings) -> bool:
    return all(s.ok for s in status(settings))


def clean(settings: Settings, echo: Echo) -> None:
    """Stop the stack and delete its data (the download cache in ~/.cache/erynoa stays)."""
    down(settings, echo)
    paths = StackPaths.from_settings(settings)
    doomed: list[Path] = [paths.outside_dir]
    doomed += [
        paths.state_dir / name
        for name in ("kafka", "postgres", "redis", "registry", "mail", "logs", "run")
    ]
    doomed += sorted(paths.state_dir.glob("kafka-[0-9]*"))
    doomed += [paths.state_dir / "postgres.location", paths.state_dir / kafka.CLUSTER_FILE]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
            echo(f"removed {path}")
        elif path.exists():
            path.unlink()


def log_files(settings: Settings, name: str | None) -> list[Path]:
    chosen = services(settings) if name is None else [service(settings, name)]
    return [svc.log_path for svc in chosen]
