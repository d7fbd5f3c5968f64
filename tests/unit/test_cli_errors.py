"""Bad configuration files give one clear error naming the file and the field, never a
traceback — whichever command loads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from erynoa.settings import PROJECT_ROOT


def erynoa(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "erynoa", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=PROJECT_ROOT,
        timeout=60,
        check=False,
    )


def test_a_malformed_topics_yaml_names_the_file_and_the_field(tmp_path: Path) -> None:
    broken = tmp_path / "topics.yaml"
    text = (PROJECT_ROOT / "topics.yaml").read_text()
    broken.write_text(text.replace("partitions: 12", "partitions: twelve", 1))

    result = erynoa("topics", "check", ERYNOA_TOPICS_FILE=str(broken))

    assert result.returncode == 1
    assert str(broken) in result.stderr
    assert "defaults.partitions" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_avsc_names_the_file_and_the_field(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    for path in (PROJECT_ROOT / "schemas").glob("*.avsc"):
        (schemas / path.name).write_text(path.read_text())
    target = schemas / "PaymentCaptured.v1.avsc"
    schema = json.loads(target.read_text())
    for field in schema["fields"]:
        if field["name"] == "payment_id":
            field["type"] = "strnig"
    target.write_text(json.dumps(schema))

    # Unit tier: no registry; the local checks alone must find it.
    result = erynoa("schemas", "check", "--local-only", ERYNOA_SCHEMAS_DIR=str(schemas))

    assert result.returncode == 1
    assert "PaymentCaptured.v1.avsc" in result.stderr
    assert "payment_id" in result.stderr or "strnig" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_shipped_schemas_check_clean() -> None:
    result = erynoa("schemas", "check", "--local-only")

    assert result.returncode == 0, result.stderr
    assert "BookingRequested" in result.stdout
