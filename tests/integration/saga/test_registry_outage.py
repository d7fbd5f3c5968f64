"""An agent started while the Schema Registry is unreachable waits for it: it neither exits nor
dead-letters the booking it receives meanwhile, and handles it once the registry answers.

The worker reaches the real registry through a TCP forwarder of the test's own, which is not
listening at first (connections refused, as for a registry that is down or still starting)."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from erynoa.codec import default_codec
from erynoa.db import create_pool
from erynoa.kafka import EventPublisher
from erynoa.saga import Hold
from erynoa.settings import Settings
from erynoa.supervisor import System
from erynoa.topics import load_catalog
from tests.conftest import own_namespace
from tests.integration.saga.harness import (
    EventLog,
    create_service,
    create_user,
    free_port,
    request_booking,
)

pytestmark = pytest.mark.integration


@contextmanager
def forwarding(port: int, target: tuple[str, int]) -> Iterator[None]:
    """Forward 127.0.0.1:``port`` to ``target`` until the block ends."""
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        listener.close()


def wait_for_log(path: Path, text: str, system: System, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while text not in (path.read_text(errors="replace") if path.exists() else ""):
        assert not system.exited(), f"worker exited: {system.exited()}"
        assert time.monotonic() < deadline, f"no {text!r} in {path}"
        time.sleep(0.2)


async def test_an_agent_started_while_the_registry_is_down_waits_then_handles_the_booking(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.registry_url is not None
    registry = urlsplit(settings.registry_url)
    port = free_port()
    async with own_namespace(settings) as ns:
        catalog = load_catalog(ns.topics_file, ns.topics_environment, ns.topic_prefix)
        env = {
            "ERYNOA_TOPIC_PREFIX": ns.topic_prefix,
            "ERYNOA_DATABASE_URL": ns.database_url,
            "ERYNOA_KAFKA_BOOTSTRAP": ns.kafka_bootstrap,
            "ERYNOA_REGISTRY_URL": f"http://127.0.0.1:{port}{registry.path}",
            "ERYNOA_METRICS_PORT_BASE": "0",
        }
        worker = System(
            {"reservation": [sys.executable, "-m", "erynoa", "worker", "reservation"]},
            env=env,
            log_dir=tmp_path,
        )
        log = tmp_path / "reservation.log"
        pool = await create_pool(ns, min_size=1, max_size=2)
        publisher = EventPublisher.create(
            ns.kafka_bootstrap, "test-outage", default_codec(), catalog
        )
        events = EventLog(ns.kafka_bootstrap, catalog, default_codec())
        await publisher.start()
        await events.start()
        worker.start()
        try:
            service = await create_service(pool)
            customer = await create_user(pool, "customer")
            booking = await request_booking(publisher, service, customer)

            await asyncio.to_thread(wait_for_log, log, "lane paused, schema-registry", worker)
            assert events.state(booking).hold == Hold.NONE  # type: ignore[union-attr]

            with forwarding(port, (str(registry.hostname), int(registry.port or 80))):
                held = await events.wait(booking, lambda s: s is not None and s.hold == Hold.HELD)

            assert held.hold == Hold.HELD
            assert worker.exited() == []
            assert "dead-letter" not in log.read_text(errors="replace")
        finally:
            worker.stop(timeout=30)
            await events.stop()
            await publisher.stop()
            await pool.close()
