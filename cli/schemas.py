"""``erynoa schemas check|register``: the Avro event contracts from the command line.

erynoa schemas check                     # local contract + compatibility, and the registry's
erynoa schemas check --schemas-dir new/  # a proposed change, before it is merged
erynoa schemas register                  # every version of schemas/ into the registry
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.startup import fail, load_settings, load_topic_catalog

schemas_app = typer.Typer(no_args_is_help=True, help="The Avro event contracts.")


SchemasDir = Annotated[
    Path | None,
    typer.Option(help="The schema directory to check (default ERYNOA_SCHEMAS_DIR, schemas/)."),
]


@schemas_app.command("check")
def check(
    schemas_dir: SchemasDir = None,
    local_only: Annotated[
        bool, typer.Option("--local-only", help="Do not ask the Schema Registry.")
    ] = False,
) -> None:
    """Check every schema: the contract, each version reads all older ones, and the registry
    accepts every version it does not hold yet (BACKWARD). Exit 1 on any problem."""
    from erynoa.codec import EventCodec, SchemaError, require_complete
    from erynoa.registry import RegistryError, RegistryUnavailable, SchemaRegistry
    from erynoa.schemas import local_incompatibilities, registry_incompatibilities

    settings = load_settings()
    directory = schemas_dir or settings.schemas_dir
    problems: list[str] = []
    try:
        codec = require_complete(EventCodec(directory))
    except SchemaError as exc:
        problems.append(f"contract: {exc}")
    else:
        for event_type, versions in sorted(codec.versions.items()):
            listed = ", ".join(f"v{v}" for v in versions)
            typer.echo(f"{event_type:32} {listed:8} {codec.fingerprint(event_type).hex()}")
    problems += [f"compatibility: {p}" for p in local_incompatibilities(directory)]
    if local_only or settings.registry_url is None:
        typer.echo("registry: not asked (--local-only or no ERYNOA_REGISTRY_URL)")
    else:
        registry = SchemaRegistry(settings.registry_url, settings.registry_timeout_seconds)
        catalog = load_topic_catalog(settings)
        try:
            refused = registry_incompatibilities(directory, registry, catalog)
        except (RegistryUnavailable, RegistryError) as exc:
            # The local findings still count; the registry's verdict is missing, not a pass.
            problems.append(f"registry: {exc} (pass --local-only to check without it)")
        else:
            problems += [f"registry: {p}" for p in refused]
            if not refused:
                typer.echo(f"registry: {registry.url} accepts every version")
    for problem in problems:
        typer.secho(f"REFUSED  {problem}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)


@schemas_app.command("register")
def register(schemas_dir: SchemasDir = None) -> None:
    """Register every version of every schema (oldest first) under its subject,
    ``<topic>-<namespace>.<EventType>``, each subject held to BACKWARD compatibility."""
    from erynoa.codec import EventCodec, require_complete
    from erynoa.registry import RegistryError, RegistryUnavailable, SchemaRegistry
    from erynoa.schemas import register_all

    settings = load_settings()
    if settings.registry_url is None:
        fail("no schema registry configured: set ERYNOA_REGISTRY_URL")
    directory = schemas_dir or settings.schemas_dir
    require_complete(EventCodec(directory))  # only contract-valid schemas are registered
    catalog = load_topic_catalog(settings)
    registry = SchemaRegistry(settings.registry_url, settings.registry_timeout_seconds)
    try:
        done = register_all(directory, registry, catalog)
    except (RegistryUnavailable, RegistryError) as exc:
        fail(str(exc))
    for file, subject, schema_id, new in done:
        state = "registered" if new else "present   "
        typer.echo(f"{state}  id {schema_id:<5} {subject}  ({file.path.name})")
    added = sum(1 for *_, new in done if new)
    typer.echo(f"schemas: {len(done)} versions in {registry.url}, {added} newly registered")
