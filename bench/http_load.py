"""(c) ``POST /bookings``: the real API against a trivial endpoint, same box, same client.

One client loop (httpx, async, ``loadgen.clients.HttpPool``: a bounded set of one-connection
clients, because one pooled httpx client slows down as connections are added) drives either
server:

* ``closed_loop``: ``concurrency`` requests always in flight, for ``seconds`` — the most the
  server (and this client, on the same two cores) can do: requests/s.
* ``open_loop``: requests sent on a schedule at ``rate`` per second (``erynoa.pacing``), at
  most ``concurrency`` in flight — the latency at a given load (p50/p99).

The client shares the machine with the server, so both numbers include its cost; it is the
same cost for both servers, which is what the ratio needs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from erynoa.pacing import Pacer
from loadgen.clients import HttpPool
from loadgen.stats import LatencySummary, summarize

Request = Callable[[int], tuple[str, dict[str, str], dict[str, Any]]]
"""Request number → (path, headers, JSON body)."""


@dataclass(frozen=True)
class HttpResult:
    name: str
    mode: str  # "closed" or "open"
    requests: int
    ok: int
    errors: dict[str, int]
    seconds: float
    latency: LatencySummary
    target_rate: float | None = None

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "target_rate_per_s": self.target_rate,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.per_second, 1),
            "latency_ms": self.latency.to_json(),
        }


async def _one(
    client: HttpPool,
    request: Request,
    index: int,
    latencies: list[float],
    errors: dict[str, int],
) -> bool:
    path, headers, body = request(index)
    started = time.perf_counter()
    try:
        response = await client.request("POST", path, headers=headers, json=body)
    except httpx.HTTPError as exc:
        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        return False
    latencies.append(time.perf_counter() - started)
    if response.status_code != 202:
        key = f"HTTP {response.status_code}"
        errors[key] = errors.get(key, 0) + 1
        return False
    return True


async def closed_loop(
    name: str, base_url: str, request: Request, concurrency: int, seconds: float
) -> HttpResult:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(10**9))
    ok = 0
    client = HttpPool(base_url, concurrency, timeout_s=30)
    try:
        await _warm(client, concurrency)
        ends = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal ok
            while time.perf_counter() < ends:
                if await _one(client, request, next(counter), latencies, errors):
                    ok += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
    return HttpResult(
        name, "closed", len(latencies) + sum(errors.values()), ok, errors, elapsed,
        summarize(latencies),
    )  # fmt: skip


async def open_loop(
    name: str, base_url: str, request: Request, rate: float, seconds: float, concurrency: int
) -> HttpResult:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    ok = 0
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    client = HttpPool(base_url, concurrency, timeout_s=30)
    try:
        await _warm(client, concurrency)
        loop = asyncio.get_running_loop()
        pacer = Pacer(rate, max(1, int(rate * seconds)), loop.time())

        async def send(index: int) -> None:
            nonlocal ok
            try:
                if await _one(client, request, index, latencies, errors):
                    ok += 1
            finally:
                slots.release()

        started = time.perf_counter()
        while not pacer.done:
            if pacer.ready(loop.time()) == 0:
                await asyncio.sleep(min(pacer.next_wait(loop.time()), 0.01))
                continue
            await slots.acquire()
            task = asyncio.create_task(send(pacer.take(loop.time())))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
    requests = len(latencies) + sum(errors.values())
    if pacer.late:
        errors["late sends (client or server fell behind)"] = pacer.late
    return HttpResult(
        name, "open", requests, ok, errors, elapsed, summarize(latencies), target_rate=rate
    )


async def _warm(client: HttpPool, connections: int) -> None:
    """Open every connection before the clock starts (any answer will do)."""
    await asyncio.gather(*(client.request("GET", "/") for _ in range(connections)))


class TrivialServer:
    """``bench/trivial_api.py`` under uvicorn in a subprocess (a context manager)."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TrivialServer:
        bench_dir = Path(__file__).resolve().parent
        log = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "trivial_api:app",
                "--app-dir", str(bench_dir),
                "--host", "127.0.0.1", "--port", str(self.port),
                "--no-access-log", "--log-level", "warning",
            ],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/docs", timeout=1):
                    return self
            except OSError:
                if self._process.poll() is not None:
                    raise RuntimeError(f"the trivial API exited; see {self.log_path}") from None
                time.sleep(0.2)
        raise RuntimeError(f"the trivial API did not start; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
