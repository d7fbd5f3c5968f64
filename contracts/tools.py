"""The AsyncAPI tools from npm, installed on demand into a per-user cache, pinned.

``ensure("cli")`` returns the directory of an ``npm install`` of ``@asyncapi/cli`` at the pinned
version, installing it the first time (through npm's configured registry). Each tool gets its own
prefix, so versions never mix; a lock file makes parallel callers (test workers, ``make``) wait
for one install instead of racing. The cache is ``$ERYNOA_NPM_CACHE``, else
``$XDG_CACHE_HOME/erynoa/npm``, else ``~/.cache/erynoa/npm``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NpmTool:
    name: str
    packages: tuple[str, ...]

    @property
    def key(self) -> str:
        return "+".join(p.replace("/", "_").replace("@", "") for p in self.packages)


# @asyncapi/cli 5.x needs Node >= 24; 4.1.1 is the newest that runs on Node 20.
TOOLS: dict[str, NpmTool] = {
    "cli": NpmTool("cli", ("@asyncapi/cli@4.1.1",)),
    "generator": NpmTool(
        "generator", ("@asyncapi/generator@2.8.4", "@asyncapi/html-template@3.5.6")
    ),
}


class ToolUnavailable(RuntimeError):
    """Node or npm is missing, or the install failed; the message says which and how to fix it."""


def cache_root() -> Path:
    explicit = os.environ.get("ERYNOA_NPM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "erynoa" / "npm"


def node_available() -> str | None:
    """None when node and npm are both on PATH, else what is missing."""
    missing = [name for name in ("node", "npm") if shutil.which(name) is None]
    return f"{' and '.join(missing)} not found on PATH" if missing else None


def ensure(name: str) -> Path:
    """The install prefix of tool ``name`` (``cli`` or ``generator``), installed when missing."""
    tool = TOOLS[name]
    problem = node_available()
    if problem:
        raise ToolUnavailable(f"cannot install {', '.join(tool.packages)}: {problem}")
    prefix = cache_root() / tool.key
    done = prefix / ".installed"
    if done.exists():
        return prefix
    prefix.mkdir(parents=True, exist_ok=True)
    with (prefix.parent / f"{tool.key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return prefix
        # The HTML template depends on Puppeteer only for PDF output, which is never made here.
        env = {**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"}
        command = [
            "npm",
            "install",
            "--prefix",
            str(prefix),
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            *tool.packages,
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ToolUnavailable(
                f"npm install {' '.join(tool.packages)} into {prefix} failed "
                f"(exit {result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        done.write_text("\n".join(tool.packages) + "\n")
    return prefix


def bin_path(prefix: Path, command: str) -> Path:
    return prefix / "node_modules" / ".bin" / command
