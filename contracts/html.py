"""HTML docs of ``asyncapi.yaml``, rendered with ``@asyncapi/generator`` and its HTML template.

``render(document, out)`` renders into ``out`` (``index.html``, ``css/``, ``js/``; every asset
local, nothing loaded from elsewhere) and records the document's SHA-256 in ``out/.source``,
so ``is_current`` can tell a stale rendering and ``ensure_rendered`` renders only when the
document changed. The tools come from ``contracts.tools`` (npm, pinned, cached per user).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from contracts import DOCS_PATH
from contracts.tools import ToolUnavailable, bin_path, ensure

SOURCE_STAMP = ".source"
TEMPLATE = Path("node_modules") / "@asyncapi" / "html-template"


def digest(document: Path) -> str:
    return hashlib.sha256(document.read_bytes()).hexdigest()


def is_current(document: Path, out: Path) -> bool:
    stamp = out / SOURCE_STAMP
    return (
        (out / "index.html").is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == digest(document)
    )


def render(document: Path, out: Path) -> None:
    """Render ``document`` into ``out``, replacing what was there only once the render worked."""
    prefix = ensure("generator")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".render-") as scratch:
        # Render a snapshot, so the stamp names what was rendered even if the file changes.
        source = Path(scratch) / "asyncapi.yaml"
        shutil.copyfile(document, source)
        staging = Path(scratch) / "html"
        command = [
            str(bin_path(prefix, "ag")),
            str(source),
            str(prefix / TEMPLATE),
            "--output",
            str(staging),
            "--force-write",
            "--param",
            f"baseHref={DOCS_PATH}",
        ]
        env = {**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"}
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not (staging / "index.html").is_file():
            raise ToolUnavailable(
                f"rendering {document} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        (staging / SOURCE_STAMP).write_text(digest(source) + "\n")
        previous = Path(scratch) / "previous"
        if out.exists():
            out.rename(previous)
        staging.rename(out)
        shutil.rmtree(previous, ignore_errors=True)


def ensure_rendered(document: Path, out: Path) -> bool:
    """Render unless ``out`` already shows ``document``; True when it rendered."""
    if is_current(document, out):
        return False
    render(document, out)
    return True
