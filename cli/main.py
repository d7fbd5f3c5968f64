"""The ``erynoa`` command: one entry point for every runtime and operator task.

Run ``erynoa --help`` for the list. Each sub-command wires its own runtime; importing this
module connects to nothing. Expected failures (bad config, a service down) print one clear
line and exit 1; tracebacks are for bugs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from api import cli as api_cli
from cli.ops import dlq_app, saga_app
from cli.schemas import schemas_app
from cli.stack import stack_app
from cli.startup import fail, load_settings, load_topic_catalog
from consumers.cli import materializer_app
from contracts.cli import asyncapi
from erynoa.settings import Settings
from erynoa.topics import CatalogError, TopicCatalog
from faults.cli import faults
from loadgen.cli import loadgen

if TYPE_CHECKING:
    from erynoa.topic_admin import Change

app = typer.Typer(
    no_args_is_help=True, help="Erynoa booking backbone.", pretty_exceptions_enable=False
)
app.add_typer(
    stack_app, name="stack", help="The local stack: Kafka, PostgreSQL, Redis (no Docker)."
)
topics_app = typer.Typer(no_args_is_help=True, help="Make Kafka match topics.yaml.")
app.add_typer(topics_app, name="topics")
db_app = typer.Typer(no_args_is_help=True, help="The PostgreSQL schema.")
app.add_typer(db_app, name="db")
app.add_typer(schemas_app, name="schemas")
app.add_typer(materializer_app, name="materializer")
app.add_typer(dlq_app, name="dlq")
app.add_typer(saga_app, name="saga")
app.command("api")(api_cli.serve)
app.command("token")(api_cli.token)
app.command("loadgen")(loadgen)
app.command("faults")(faults)
app.command("asyncapi")(asyncapi)


def _topic_changes(verb: Literal["apply", "check"]) -> tuple[Settings, TopicCatalog, list[Change]]:
    """What ``topics apply`` changed or ``topics check`` found different on the configured
    cluster; a cluster that cannot be reached or refuses is one line, exit 1."""
    from erynoa import topic_admin

    settings = load_settings()
    catalog = load_topic_catalog(settings)
    work = topic_admin.apply if verb == "apply" else topic_admin.plan
    try:
        return settings, catalog, work(topic_admin.admin_client(settings.kafka_bootstrap), catalog)
    except Exception as exc:  # the admin client raises several kinds; all mean "not done"
        fail(f"topics {verb} failed against {settings.kafka_bootstrap}: {exc}")


@topics_app.command("apply")
def topics_apply() -> None:
    """Create or alter topics to match topics.yaml (idempotent); print what changed."""
    settings, catalog, changes = _topic_changes("apply")
    done = [c for c in changes if c.kind != "manual"]
    manual = [c for c in changes if c.kind == "manual"]
    for change in done:
        typer.echo(f"changed  {change}")
    for change in manual:
        typer.secho(f"MANUAL   {change}", fg=typer.colors.YELLOW)
    if not changes:
        typer.echo(f"topics: {len(catalog.topics)} topics match {settings.topics_file.name}")
    if manual:
        raise typer.Exit(1)


@topics_app.command("check")
def topics_check() -> None:
    """Exit non-zero and name every difference between the cluster and topics.yaml."""
    _, catalog, drift = _topic_changes("check")
    for change in drift:
        typer.secho(f"DRIFT  {change}", fg=typer.colors.YELLOW)
    if drift:
        raise typer.Exit(1)
    typer.echo(f"topics: no drift ({len(catalog.topics)} topics)")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending SQL migrations in order (idempotent, safe to run concurrently)."""
    from erynoa.db import MigrationError, migrate

    settings = load_settings()
    try:
        applied = asyncio.run(migrate(settings.database_url))
    except MigrationError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot reach PostgreSQL at {settings.database_url}: {exc}")
    for name in applied:
        typer.echo(f"applied  {name}")
    if not applied:
        typer.echo("db: schema up to date")


@app.command("run")
def run() -> None:
    """Run the whole system in the foreground: API, every agent, the materializer."""
    from erynoa.settings import UnsafeConfiguration
    from erynoa.supervisor import run_foreground

    settings = load_settings()
    try:
        # Checked here too, so a refusal is one clear message, not an API restarted until
        # the supervisor gives up.
        settings.require_safe_dev_issuer()
    except UnsafeConfiguration as exc:
        fail(str(exc))
    raise typer.Exit(run_foreground(settings.public_base_url))


@app.command("worker")
def worker(
    agent: Annotated[
        str, typer.Argument(help="reservation | payment | notification | provider-response")
    ],
) -> None:
    """Run one saga agent's worker (more processes = more partitions served)."""
    from erynoa.supervisor import AGENTS

    if agent not in AGENTS:
        fail(f"unknown agent {agent!r}; choose one of: {', '.join(AGENTS)}")
    from streams.cli import worker as run_worker

    run_worker(agent)


@app.command("version")
def version() -> None:
    """Print the version."""
    from erynoa import __version__

    typer.echo(__version__)


def main() -> None:
    from erynoa.codec import SchemaError
    from erynoa.db import MigrationError

    try:
        app()
    except (CatalogError, SchemaError, MigrationError) as exc:
        # A bad topics.yaml, .avsc or migration in any command: the message names the file
        # and the field; a traceback would only bury it.
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise SystemExit(1) from None
