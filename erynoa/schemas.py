"""Governing ``schemas/`` against the Schema Registry: register every version, check a change.

``erynoa schemas register`` (``register_all``) puts every version of every event type under its
TopicRecordNameStrategy subject, oldest first, and holds each subject to BACKWARD compatibility.
``erynoa schemas check`` refuses a change two ways: locally (each newer version of a type must
read data written with every older one, ``local_incompatibilities``) and by asking the registry
whether each version it does not hold yet may be registered (``registry_incompatibilities``).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import avro.errors
import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from erynoa.registry import Compatibility, RegistryError, SchemaRegistry, subject_name
from erynoa.topics import TopicCatalog

__all__ = [
    "SchemaFile",
    "local_incompatibilities",
    "register_all",
    "registry_incompatibilities",
    "schema_files",
]

COMPATIBILITY: Compatibility = "BACKWARD"
_FILE_NAME = re.compile(r"([A-Z][A-Za-z0-9]*)\.v([1-9][0-9]*)\.avsc")


@dataclass(frozen=True)
class SchemaFile:
    event_type: str
    version: int
    path: Path
    text: str
    full_name: str

    def subject(self, catalog: TopicCatalog) -> str:
        return subject_name(catalog.topic_for(self.event_type), self.full_name)


def schema_files(schemas_dir: Path) -> list[SchemaFile]:
    """Every ``<EventType>.v<N>.avsc`` in ``schemas_dir``, by type then version (no contract
    checks: ``erynoa.codec`` does those)."""
    found = []
    for path in sorted(schemas_dir.glob("*.avsc")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            continue
        text = path.read_text(encoding="utf-8")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            continue  # the codec's check names the file and the line
        namespace = raw.get("namespace") if isinstance(raw, dict) else None
        full_name = f"{namespace}.{match[1]}" if namespace else match[1]
        found.append(SchemaFile(match[1], int(match[2]), path, text, full_name))
    return sorted(found, key=lambda f: (f.event_type, f.version))


def local_incompatibilities(schemas_dir: Path) -> list[str]:
    """Every (newer reader, older writer) pair of one event type that cannot be resolved."""
    versions: dict[str, dict[int, avro.schema.Schema]] = defaultdict(dict)
    for file in schema_files(schemas_dir):
        try:
            versions[file.event_type][file.version] = avro.schema.parse(file.text)
        except avro.errors.AvroException:
            continue  # not a schema at all: the codec's contract check names the file and field
    problems = []
    for event_type, by_version in sorted(versions.items()):
        for new, reader in sorted(by_version.items()):
            for old, writer in sorted(by_version.items()):
                if old >= new:
                    continue
                checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
                result = checker.get_compatibility(reader, writer)
                if result.compatibility is not SchemaCompatibilityType.compatible:
                    where = ", ".join(sorted(result.locations))
                    what = ", ".join(sorted(result.messages))
                    problems.append(f"{event_type}.v{new} cannot read v{old} at {where}: {what}")
    return problems


def registry_incompatibilities(
    schemas_dir: Path, registry: SchemaRegistry, catalog: TopicCatalog
) -> list[str]:
    """What the registry refuses: each version it does not hold yet, tested against the latest
    version of its subject under the subject's compatibility level."""
    problems = []
    for file in schema_files(schemas_dir):
        if file.event_type not in catalog.event_types:
            continue
        subject = file.subject(catalog)
        if registry.lookup(subject, file.text) is not None:
            continue
        try:
            refused = registry.compatibility_problems(subject, file.text)
        except RegistryError as exc:  # the registry cannot even parse it
            refused = [str(exc)]
        if refused is not None:
            problems.append(
                f"{file.path.name}: the registry refuses it under {subject}: " + "; ".join(refused)
            )
    return problems


def register_all(
    schemas_dir: Path, registry: SchemaRegistry, catalog: TopicCatalog
) -> list[tuple[SchemaFile, str, int, bool]]:
    """Register every version oldest first; (file, subject, id, newly registered) for each.
    Raises ``RegistryError`` at the first version the registry refuses."""
    done = []
    configured: set[str] = set()
    for file in schema_files(schemas_dir):
        subject = file.subject(catalog)
        if subject not in configured:
            _set_compatibility(registry, subject)
            configured.add(subject)
        existing = registry.lookup(subject, file.text)
        if existing is not None:
            done.append((file, subject, existing, False))
            continue
        done.append((file, subject, registry.register(subject, file.text), True))
    return done


def _set_compatibility(registry: SchemaRegistry, subject: str) -> None:
    try:
        registry.set_compatibility(COMPATIBILITY, subject)
    except RegistryError as exc:
        # Apicurio answers 409 when a runtime created the subject's rule a moment before;
        # the second request updates it.
        if exc.status != 409:
            raise
        registry.set_compatibility(COMPATIBILITY, subject)
