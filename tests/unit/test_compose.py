"""compose.yaml cannot run here (no Docker engine); at least every service it declares must
run a real ``erynoa`` command, and the topology must match the local stack's."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer.main
import yaml

from cli.main import app
from erynoa.settings import PROJECT_ROOT
from erynoa.supervisor import commands

COMPOSE = PROJECT_ROOT / "compose.yaml"


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(Path(COMPOSE).read_text())["services"]
    return services


def _is_erynoa_command(argv: list[str]) -> bool:
    """Resolve argv through the real CLI tree, as the container's ENTRYPOINT would."""
    command: Any = typer.main.get_command(app)
    args = list(argv)
    # typer vendors its own click, so walk its command tree by duck typing.
    while hasattr(command, "get_command") and args:
        sub = command.get_command(command.context_class(command), args[0])
        if sub is None:
            return False
        command, args = sub, args[1:]
    if hasattr(command, "get_command"):
        return False  # a group alone runs nothing
    try:
        command.make_context("erynoa", args)
    except Exception:  # the vendored click's UsageError
        return False
    return True


def _erynoa_argvs(service: dict[str, Any]) -> list[list[str]]:
    if "command" in service:
        return [service["command"]]
    entrypoint = service.get("entrypoint")
    if entrypoint and entrypoint[:2] == ["sh", "-c"]:
        return [shlex.split(part)[1:] for part in entrypoint[2].split("&&")]
    return []


def test_every_application_service_runs_a_real_erynoa_command() -> None:
    checked = 0
    for name, service in _services().items():
        if "build" not in service and "<<" not in service:
            continue
        for argv in _erynoa_argvs(service):
            assert _is_erynoa_command(argv), f"compose service {name}: `erynoa {' '.join(argv)}`"
            checked += 1
    assert checked >= 8


def test_compose_runs_every_part_the_local_stack_runs() -> None:
    services = _services()
    for part in commands():
        assert part in services, f"compose.yaml lacks the {part} service"
    for infrastructure in ("kafka", "postgres", "redis"):
        assert infrastructure in services


def test_a_made_up_command_is_caught() -> None:
    assert not _is_erynoa_command(["worker"])
    assert not _is_erynoa_command(["no-such-command"])
