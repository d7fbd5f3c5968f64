"""The agents and the materializer as real worker processes, on topics and a database of their
own, with a payment agent that retries once after 1 s and then dead-letters: what the poison
and replay tests and the console's browser tests run against."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from erynoa.settings import PROJECT_ROOT, Settings
from erynoa.supervisor import AGENTS, System, commands
from tests.conftest import own_namespace


@dataclass(frozen=True)
class Workers:
    settings: Settings  # the namespace's
    env: dict[str, str]  # what the workers run with; the operator's CLI needs the same
    topics_file: Path


@contextlib.asynccontextmanager
async def workers_running(settings: Settings, folder: Path) -> AsyncIterator[Workers]:
    """Every worker but the API, started in ``folder`` (its topic catalog and logs)."""
    spec = yaml.safe_load((PROJECT_ROOT / "topics.yaml").read_text())
    spec["consumers"]["payment"]["retry"] = ["1s"]
    topics_file = folder / "topics.yaml"
    topics_file.write_text(yaml.safe_dump(spec))
    async with own_namespace(settings.model_copy(update={"topics_file": topics_file})) as ns:
        env = {
            **os.environ,
            "ERYNOA_TOPICS_FILE": str(topics_file),
            "ERYNOA_TOPIC_PREFIX": ns.topic_prefix,
            "ERYNOA_DATABASE_URL": ns.database_url,
            "ERYNOA_KAFKA_BOOTSTRAP": ns.kafka_bootstrap,
            "ERYNOA_PAYMENT_GATEWAY": "sandbox",
            "ERYNOA_METRICS_PORT_BASE": "0",
        }
        parts = {name: argv for name, argv in commands().items() if name != "api"}
        assert set(parts) == {*AGENTS, "materializer"}
        system = System(parts, env=env, log_dir=folder / "logs")
        system.start()
        try:
            yield Workers(ns, env, topics_file)
        finally:
            system.stop()
