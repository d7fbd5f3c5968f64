"""Redis from Debian's ``redis-server``: loopback only, no persistence, its own port and dir."""

from __future__ import annotations

import socket
from pathlib import Path

from erynoa.stack.base import Echo, Service, need_tool


class Redis(Service):
    name = "redis"
    port_settings = ("redis_port",)
    start_timeout = 20.0

    @property
    def home(self) -> Path:
        return self.paths.state_dir / "redis"

    def prepare(self, echo: Echo) -> None:
        need_tool("redis-server", "redis-server")
        self.home.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            need_tool("redis-server", "redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.home),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip

    def healthy(self) -> bool:
        """PING answered with PONG."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False
