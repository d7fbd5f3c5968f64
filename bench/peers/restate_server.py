"""The Restate server for the benchmark's peer: the binary npm's ``@restatedev/restate-server``
ships, installed once into ``~/.cache/erynoa/restate``."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

from bench import peers

PACKAGE = "@restatedev/restate-server"
VERSION = "1.7.12"
PREFIX = Path.home() / ".cache" / "erynoa" / "restate"
_ARCH = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
BINARY = (
    PREFIX
    / "node_modules"
    / "@restatedev"
    / f"restate-server-linux-{_ARCH}"
    / "bin"
    / "restate-server"
)


def installed_version() -> str | None:
    """The version the cached binary reports, None if absent."""
    if not BINARY.exists():
        return None
    done = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, check=False)
    words = done.stdout.split()
    return words[1] if len(words) == 2 and words[0] == "restate-server" else None


def install(log_path: Path, timeout_s: float = 600) -> str | None:
    """Install the server once with npm; None when it is there, else why it cannot be had."""
    if installed_version() == VERSION:
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed, so the Restate server cannot be had"
    PREFIX.mkdir(parents=True, exist_ok=True)
    # --ignore-scripts: the package's only install script reports the download to a third party.
    argv = [
        npm, "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", "--ignore-scripts",
        f"{PACKAGE}@{VERSION}",
    ]  # fmt: skip
    failed = peers.run_installer(f"npm install {PACKAGE}@{VERSION}", argv, log_path, timeout_s)
    if failed is not None:
        return failed
    if installed_version() != VERSION:
        return f"npm install did not produce {BINARY} {VERSION}"
    return None
