"""Validation of the AsyncAPI document: the official JSON schema, and the official CLI.

``schema_errors(document)`` checks against ``asyncapi-3.0.0.schema.json``, a copy of
``schemas/3.0.0.json`` from the npm package ``@asyncapi/specs`` 6.11.1 (the version
``@asyncapi/cli`` 4.1.1 bundles; https://github.com/asyncapi/spec-json-schemas), committed so
the check needs no network. ``validate_with_cli`` runs ``asyncapi validate`` from
``@asyncapi/cli`` (installed on demand by ``contracts.tools``), which adds the parser's own
checks (references resolve, ids unique, the Avro payloads parse).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema

from contracts.tools import ToolUnavailable, bin_path, ensure

SCHEMA_FILE = Path(__file__).with_name("asyncapi-3.0.0.schema.json")
SPECS_VERSION = "6.11.1"


def schema_errors(document: dict[str, Any]) -> list[str]:
    """Every violation of the AsyncAPI 3.0.0 JSON schema, as ``path: message``; empty if none."""
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    found = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(document)"
        found.append(f"{where}: {error.message[:300]}")
    return found


def validate_with_cli(document: Path) -> str:
    """``asyncapi validate --fail-severity warn``; its report, or ``ToolUnavailable``."""
    prefix = ensure("cli")
    # The CLI sends usage metrics unless its config file says no; keep that file with the tool.
    config = prefix / "asyncapi-analytics.json"
    if not config.exists():
        config.write_text(
            json.dumps({"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "-"})
        )
    env = {**os.environ, "ASYNCAPI_METRICS_CONFIG_PATH": str(config)}
    command = [str(bin_path(prefix, "asyncapi")), "validate", str(document)]
    command += ["--fail-severity", "warn"]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    report = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise ToolUnavailable(f"asyncapi validate {document} failed:\n{report}")
    return report
