"""The booking saga on Restate: one service handler, seven journaled steps that do nothing.

    .venv/bin/python -m bench.peers.restate_saga --seconds 10 --concurrency 100

The server is the ``restate-server`` binary from npm (``bench/peers/restate_server.py``),
started here on free loopback ports with its own data directory and its default settings.
The handler is served from this process (uvicorn, HTTP/1.1, Restate's request-response
protocol), and the client (HTTP calls to the server's ingress) runs here too; the CPU per saga
counts this process and the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import restate
import uvicorn

from bench import peers
from bench.peers.restate_server import BINARY, VERSION, installed_version

# Whether the steps note that they ran (``--one`` only: the loop measures the bare engine).
trace = False


def _step(name: str) -> Any:
    async def step() -> str:
        if trace:
            peers.EXECUTED.append(name)
        return name

    return step


STEP_ACTIONS = {name: _step(name) for name in peers.STEPS}
saga = restate.Service("BookingSaga")


@saga.handler()
async def run(ctx: restate.Context, booking_id: str) -> list[str]:
    """The happy path: each step journaled by the server, in the order our saga takes them."""
    return [await ctx.run_typed(name, STEP_ACTIONS[name]) for name in peers.STEPS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """``restate-server`` on free loopback ports, its data in a temporary directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="restate-bench-"))
        self.ingress, self.admin, fabric = _free_port(), _free_port(), _free_port()
        env = {
            **os.environ,
            "RESTATE_BASE_DIR": str(self.dir),
            "RESTATE_LISTEN_MODE": "tcp",
            "RESTATE_DISABLE_TELEMETRY": "true",
            "RESTATE_BIND_ADDRESS": f"127.0.0.1:{fabric}",
            "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{fabric}",
            "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{self.admin}",
            "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{self.ingress}",
        }
        self.log = (self.dir / "server.log").open("wb")
        self.process = subprocess.Popen(
            [str(BINARY), "--no-logo"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    async def ready(self, http: httpx.AsyncClient, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"restate-server exited; see {self.dir / 'server.log'}")
            try:
                admin = await http.get(f"http://127.0.0.1:{self.admin}/health")
                ingress = await http.get(f"http://127.0.0.1:{self.ingress}/restate/health")
                if admin.status_code == ingress.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"restate-server not ready in {within_s:.0f} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _serve_handler(port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    app = restate.app(services=[saga], protocol="request_response")
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    return server, task


async def _one(http: httpx.AsyncClient, server: Server, booking_id: str) -> int:
    global trace
    trace = True
    response = await http.post(
        f"http://127.0.0.1:{server.ingress}/BookingSaga/run", json=booking_id
    )
    response.raise_for_status()
    invocation = response.headers["x-restate-id"]
    query = (
        "SELECT name, entry_type FROM sys_journal "
        f"WHERE id = '{invocation}' AND entry_type LIKE '%: Run' ORDER BY index"
    )
    answer = await http.post(
        f"http://127.0.0.1:{server.admin}/query",
        json={"query": query},
        headers={"accept": "application/json"},
    )
    answer.raise_for_status()
    rows = answer.json()["rows"]
    # Each step is a Run command in the journal, and its result a Run notification.
    commands = [row["name"] for row in rows if row["entry_type"] == "Command: Run"]
    results = sum(row["entry_type"] == "Notification: Run" for row in rows)
    recorded = commands[:results]
    return peers.one_report("restate", response.json(), recorded)


async def _main(args: argparse.Namespace) -> int:
    if installed_version() != VERSION:
        return peers.unavailable(
            "restate", f"the server is not installed ({BINARY} {VERSION}; make bench installs it)"
        )
    server = Server()
    limits = httpx.Limits(max_connections=args.concurrency + 10)
    try:
        async with httpx.AsyncClient(limits=limits, timeout=60) as http:
            await server.ready(http)
            port = _free_port()
            handler, serving = await _serve_handler(port)
            try:
                registered = await http.post(
                    f"http://127.0.0.1:{server.admin}/deployments",
                    json={"uri": f"http://127.0.0.1:{port}", "use_http_11": True},
                )
                registered.raise_for_status()
                if args.one:
                    return await _one(http, server, args.one)

                async def one_saga(booking_id: str) -> list[str]:
                    response = await http.post(
                        f"http://127.0.0.1:{server.ingress}/BookingSaga/run", json=booking_id
                    )
                    response.raise_for_status()
                    steps: list[str] = response.json()
                    return steps

                parts = {
                    "handler+client": peers.this_process,
                    "server": lambda pid, _cmdline: pid == server.process.pid,
                }
                return await peers.loop_report(
                    "restate", one_saga, args, parts, f"restate-server {VERSION}, default settings"
                )
            finally:
                handler.should_exit = True
                await serving
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(peers.arguments(__doc__.splitlines()[0]))))
