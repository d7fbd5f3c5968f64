"""The Temporal dev server for the benchmark's peer: built once from source with the machine's Go.

``go install`` of Temporal's CLI (``temporal server start-dev`` is its dev server) into
``~/.cache/erynoa/bin``, a few minutes and about 250 MB the first time; Temporal's Python SDK
would download a prebuilt one from a host this machine cannot reach.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench import peers

MODULE = "github.com/temporalio/cli/cmd/temporal"
# Later versions of the CLI do not build from the module proxy.
VERSION = "v1.5.1"
BIN_DIR = Path.home() / ".cache" / "erynoa" / "bin"
BINARY = BIN_DIR / "temporal"
_GO_FALLBACK = Path("/usr/local/go/bin/go")


def built_version(binary: Path = BINARY) -> str | None:
    """The module version the cached binary was built from (``go version -m``), None if absent."""
    go = _go()
    if not binary.exists() or go is None:
        return None
    done = subprocess.run(
        [go, "version", "-m", str(binary)], capture_output=True, text=True, check=False
    )
    for line in done.stdout.splitlines():
        words = line.split()
        if words[:2] == ["mod", "github.com/temporalio/cli"] and len(words) > 2:
            return words[2]
    return None


def build(log_path: Path, timeout_s: float = 900) -> str | None:
    """Build the dev server once (``go install``, a few minutes); None when it is there, else why
    it cannot be had."""
    if built_version() == VERSION:
        return None
    go = _go()
    if go is None:
        return "Go is not installed, so the Temporal dev server cannot be built"
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(BIN_DIR), "CGO_ENABLED": "0"}
    what = f"go install {MODULE}@{VERSION}"
    failed = peers.run_installer(
        what, [go, "install", f"{MODULE}@{VERSION}"], log_path, timeout_s, env
    )
    if failed is not None:
        return failed
    if built_version() != VERSION:
        return f"go install did not produce {BINARY} {VERSION}"
    return None


def _go() -> str | None:
    return shutil.which("go") or (str(_GO_FALLBACK) if _GO_FALLBACK.exists() else None)
