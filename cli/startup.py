"""What every ``erynoa`` command loads first, and how a command ends on an expected failure.

A bad setting, an unreadable ``topics.yaml`` or a service that is down ends any command the same
way: one red line that names the problem, exit code 1, no traceback.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from pydantic import ValidationError

from erynoa.settings import Settings, describe_invalid
from erynoa.topics import CatalogError, TopicCatalog, load_catalog


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def load_settings() -> Settings:
    # Not the cached get_settings(): a command is a process of its own, and tests invoke
    # several with different environments in one interpreter.
    try:
        return Settings()
    except ValidationError as exc:
        fail(f"invalid settings: {describe_invalid(exc)}")


def load_topic_catalog(settings: Settings) -> TopicCatalog:
    try:
        return load_catalog(
            settings.topics_file, settings.topics_environment, settings.topic_prefix
        )
    except CatalogError as exc:
        fail(str(exc))
