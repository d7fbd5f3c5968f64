"""stripe-mock, Stripe's API emulator, built from source with the machine's Go (optional).

Built once with ``go install`` into ``~/.cache/erynoa/bin``. Where Go is missing or the build
fails, the stack runs without it and ``status`` says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from erynoa.stack.base import Echo, Service, StackError, Unavailable, http_status, run_tool

MODULE = "github.com/stripe/stripe-mock"
VERSION = "v0.203.0"
_GO_FALLBACK = Path("/usr/local/go/bin/go")


class StripeMock(Service):
    name = "stripe-mock"
    port_settings = ("stripe_mock_port",)
    optional = True
    start_timeout = 30.0

    @property
    def bin_dir(self) -> Path:
        return self.paths.cache_dir / "bin"

    @property
    def binary(self) -> Path:
        return self.bin_dir / "stripe-mock"

    def prepare(self, echo: Echo) -> None:
        if self.built_version() == VERSION:
            return
        go = shutil.which("go") or (str(_GO_FALLBACK) if _GO_FALLBACK.exists() else None)
        if go is None:
            raise Unavailable("Go is not installed, so stripe-mock cannot be built")
        echo(f"stripe-mock: building {MODULE}@{VERSION} with {go} (once)")
        env = {**os.environ, "GOBIN": str(self.bin_dir), "CGO_ENABLED": "0"}
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        try:
            run_tool(
                [go, "install", f"-ldflags=-X main.version={VERSION}", f"{MODULE}@{VERSION}"],
                self.paths.logs / "stripe-mock-build.log",
                "go install stripe-mock",
                env=env,
                timeout=900,
            )
        except StackError as exc:
            raise Unavailable(str(exc).splitlines()[0]) from None
        if self.built_version() != VERSION:
            raise Unavailable(f"go install did not produce {self.binary} {VERSION}")

    def built_version(self) -> str | None:
        """The version the cached binary reports (``stripe-mock -version``), None if absent."""
        if not self.binary.exists():
            return None
        done = subprocess.run(
            [str(self.binary), "-version"], capture_output=True, text=True, check=False
        )
        words = done.stdout.split()
        return words[1] if len(words) == 2 and words[0] == "stripe-mock" else None

    def command(self) -> list[str]:
        # HTTPS is on unless asked for by port, and -http-addr does not count: give it a free
        # loopback port of the system's choosing, so it never collides with anything.
        return [
            str(self.binary),
            "-http-addr", f"127.0.0.1:{self.port}",
            "-https-addr", "127.0.0.1:0",
        ]  # fmt: skip

    def healthy(self) -> bool:
        """Any HTTP answer from the emulator."""
        status = http_status(self.port, "/v1/customers", {"Authorization": "Bearer sk_test_123"})
        return status is not None and status < 500
