"""``erynoa schemas register|check`` against the stack's real Schema Registry (Apicurio): every
version registered under its TopicRecordNameStrategy subject and held to BACKWARD, and an
incompatible change refused by the registry as well as by the local check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from erynoa.registry import RegistryError, SchemaRegistry
from erynoa.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(settings: Settings) -> SchemaRegistry:
    if settings.registry_url is None:
        pytest.skip("no ERYNOA_REGISTRY_URL")
    client = SchemaRegistry(settings.registry_url)
    try:
        client.compatibility()
    except Exception as exc:
        pytest.skip(f"the registry is not running ({exc}): run `make stack`")
    return client


def erynoa(*args: str, prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "erynoa", *args],
        env={**os.environ, "ERYNOA_TOPIC_PREFIX": prefix},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROJECT_ROOT,
    )


def proposed(tmp_path: Path, event_type: str, change: dict[str, object]) -> Path:
    """schemas/ plus a v2 of ``event_type`` with one field's type replaced."""
    schemas = tmp_path / "schemas"
    shutil.copytree(PROJECT_ROOT / "schemas", schemas)
    schema = json.loads((schemas / f"{event_type}.v1.avsc").read_text())
    schema["fields"] = [
        {**f, **change} if f["name"] == change["name"] else f for f in schema["fields"]
    ]
    (schemas / f"{event_type}.v2.avsc").write_text(json.dumps(schema, indent=2))
    return schemas


def test_register_puts_every_version_under_its_subject_held_to_backward(
    registry: SchemaRegistry,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"

    first = erynoa("schemas", "register", prefix=prefix)
    again = erynoa("schemas", "register", prefix=prefix)

    assert first.returncode == 0, first.stderr
    assert "23 newly registered" in first.stdout
    assert again.returncode == 0, again.stderr
    assert "0 newly registered" in again.stdout
    subject = f"{prefix}reservations-erynoa.booking.ReservationHeld"
    assert registry.versions(subject) == [1]
    assert registry.compatibility(subject) == "BACKWARD"


def test_check_refuses_an_incompatible_change_by_asking_the_registry(
    registry: SchemaRegistry, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    assert erynoa("schemas", "register", prefix=prefix).returncode == 0
    # hold_id was a string: a reader of the new version cannot read what v1 wrote.
    schemas = proposed(tmp_path, "ReservationHeld", {"name": "hold_id", "type": "long"})

    result = erynoa("schemas", "check", "--schemas-dir", str(schemas), prefix=prefix)

    assert result.returncode == 1
    subject = f"{prefix}reservations-erynoa.booking.ReservationHeld"
    assert f"registry: ReservationHeld.v2.avsc: the registry refuses it under {subject}" in (
        result.stderr
    )
    assert "compatibility: ReservationHeld.v2 cannot read v1" in result.stderr
    with pytest.raises(RegistryError) as refused:
        registry.register(subject, (schemas / "ReservationHeld.v2.avsc").read_text())
    assert refused.value.status == 409


def test_check_lets_the_registry_accept_a_compatible_change(
    registry: SchemaRegistry, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    assert erynoa("schemas", "register", prefix=prefix).returncode == 0
    # An optional field with a default: v2 reads v1's data, so BACKWARD holds.
    schemas = proposed(
        tmp_path,
        "ReservationHeld",
        {"name": "causation_id", "type": ["null", "string"], "default": None, "doc": "changed"},
    )
    schema = json.loads((schemas / "ReservationHeld.v2.avsc").read_text())
    schema["fields"].append(
        {"name": "note", "type": ["null", "string"], "default": None, "doc": "new"}
    )
    (schemas / "ReservationHeld.v2.avsc").write_text(json.dumps(schema))

    result = erynoa("schemas", "check", "--schemas-dir", str(schemas), prefix=prefix)

    assert "registry: " not in result.stderr
    assert "compatibility: " not in result.stderr
