"""Redis from Debian's ``redis-server``: loopback only, no persistence, its own port and dir."""

from __future__ import annotations

from erynoa.stack.base import Echo, Service, need_tool, tcp_answers


class Redis(Service):
    name = "redis"
    port_settings = ("redis_port",)
    start_timeout = 20.0

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
        return tcp_answers(self.port, b"+PONG", send=b"PING\r\n")
