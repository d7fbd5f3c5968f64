"""A development mail sink: a real SMTP server (aiosmtpd) on loopback that stores every message
it receives in a Maildir under the stack's state dir (``.stack/mail``), so the notification
agent delivers for real and a person can read what was sent. Production points
``ERYNOA_SMTP_HOST``/``ERYNOA_SMTP_PORT`` at a real relay instead."""

from __future__ import annotations

import sys
from pathlib import Path

from erynoa.stack.base import Echo, Service, tcp_answers


class MailSink(Service):
    name = "mail"
    port_settings = ("smtp_port",)
    start_timeout = 20.0

    @property
    def maildir(self) -> Path:
        return self.home

    def prepare(self, echo: Echo) -> None:
        for sub in ("tmp", "new", "cur"):  # a Maildir; aiosmtpd's Mailbox writes into it
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "aiosmtpd", "--nosetuid",
            "--listen", f"127.0.0.1:{self.port}",
            "--class", "aiosmtpd.handlers.Mailbox", str(self.maildir),
        ]  # fmt: skip

    def healthy(self) -> bool:
        """The server greets with 220."""
        return tcp_answers(self.port, b"220")

    def note(self) -> str | None:
        return f"messages in {self.maildir}"
