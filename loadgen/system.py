"""A private copy of the whole system for a benchmark or a smoke test, on the shared stack.

    with LocalSystem(Settings(), log_dir=Path("/tmp/x")) as system:
        settings = system.settings   # points at its API, its topics, its consumer groups
        ...

It gives the run its own topic prefix (fresh topics and consumer groups, created from
``topics.yaml`` and deleted afterwards), its own migrated database (dropped afterwards: two
copies of the system on one database would run each other's timers) and a free loopback port
for the API, starts the API, the four agents and the materializer with
``erynoa.supervisor.System`` (each its own process, as deployed), and waits until the API is
ready and every agent said so.

The API's rate limits are raised for these processes: a load test from one address would
otherwise measure the limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from pathlib import Path
from types import TracebackType

from erynoa.db import create_migrated_database, drop_database, sibling_url
from erynoa.settings import Settings
from erynoa.supervisor import AGENTS, System, answers, commands
from erynoa.topics import TopicCatalog, load_catalog

READY_TIMEOUT_S = 90.0


class SystemFailed(RuntimeError):
    """A part of the system exited or never became ready; the message quotes its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalSystem:
    """API + agents + materializer with their own topics and port (a context manager)."""

    def __init__(
        self,
        base: Settings,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        rate_limit_per_minute: int = 100_000_000,
    ) -> None:
        self.port = free_port()
        self.name = f"lg{uuid.uuid4().hex[:8]}"
        self.prefix = f"{self.name}-"
        self._base_database_url = base.database_url
        database_url = sibling_url(base.database_url, self.name)
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.env = {
            # A throwaway system on loopback whose tokens come from the development issuer.
            "ERYNOA_ENVIRONMENT": "test",
            "ERYNOA_API_HOST": "127.0.0.1",
            "ERYNOA_API_PORT": str(self.port),
            "ERYNOA_PUBLIC_BASE_URL": self.api_url,
            "ERYNOA_OIDC_ISSUER": f"{self.api_url}/api/v1/auth/dev",
            "ERYNOA_TOPIC_PREFIX": self.prefix,
            "ERYNOA_KAFKA_BOOTSTRAP": base.kafka_bootstrap,
            "ERYNOA_DATABASE_URL": database_url,
            "ERYNOA_REDIS_URL": base.redis_url,
            "ERYNOA_REGISTRY_URL": base.registry_url or "",
            "ERYNOA_PAYMENT_GATEWAY": "sandbox",
            "ERYNOA_RATE_LIMIT_PER_MINUTE_IP": str(rate_limit_per_minute),
            "ERYNOA_RATE_LIMIT_PER_MINUTE_USER": str(rate_limit_per_minute),
            **(extra_env or {}),
        }
        self.settings = base.model_copy(
            update={
                "api_port": self.port,
                "public_base_url": self.api_url,
                "oidc_issuer": f"{self.api_url}/api/v1/auth/dev",
                "topic_prefix": self.prefix,
                "database_url": database_url,
                "payment_gateway": "sandbox",
            }
        )
        self.catalog: TopicCatalog = load_catalog(
            base.topics_file, base.topics_environment, self.prefix
        )
        self.system = System(commands(), env={**os.environ, **self.env}, log_dir=log_dir)

    def __enter__(self) -> LocalSystem:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        from erynoa.topic_admin import admin_client, apply

        apply(admin_client(self.settings.kafka_bootstrap), self.catalog)
        asyncio.run(create_migrated_database(self._base_database_url, self.name))
        try:
            self.system.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def log(self, part: str) -> str:
        path = self.log_dir / f"{part}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(
        self, timeout_s: float = READY_TIMEOUT_S, parts: tuple[str, ...] = ("api", *AGENTS)
    ) -> None:
        """Until the API answers ready and every agent said so (or only ``parts``)."""
        deadline = time.monotonic() + timeout_s
        waiting = set(parts)
        whole_system = waiting >= {"api", *AGENTS}  # else the materializer may be stopped
        while waiting:
            exited = dict(self.system.exited())
            for part in list(waiting):
                if part in exited:
                    raise SystemFailed(
                        f"{part} exited with {exited[part]}:\n{self.log(part)[-3000:]}"
                    )
                if part == "api":
                    if answers(f"{self.api_url}/api/v1/health/ready"):
                        waiting.discard(part)
                elif f"agent {part} ready" in self.log(part):
                    waiting.discard(part)
            if "materializer" in exited and whole_system:
                raise SystemFailed(f"materializer exited:\n{self.log('materializer')[-3000:]}")
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise SystemFailed(
                    f"not ready after {timeout_s:.0f} s: {', '.join(sorted(waiting))}\n"
                    + "\n".join(f"--- {p}\n{self.log(p)[-1500:]}" for p in sorted(waiting))
                )
            time.sleep(0.3)

    def stop(self) -> None:
        self.system.stop(timeout=30)
        from erynoa.topic_admin import admin_client

        asyncio.run(drop_database(self._base_database_url, self.name))
        admin = admin_client(self.settings.kafka_bootstrap)
        futures = admin.delete_topics(list(self.catalog.topics), operation_timeout=30)
        for future in futures.values():
            with contextlib.suppress(Exception):
                future.result()
