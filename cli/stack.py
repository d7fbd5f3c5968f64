"""``erynoa stack up|down|stop|status|env|logs|clean``: the local stack from the command line.

    erynoa stack up --brokers 3       a three-broker Kafka cluster (KRaft), not one node
    erynoa stack stop kafka-2 --kill  kill -9 one broker, data kept (`up` restarts it)
    eval "$(erynoa stack env)"        every broker's address and the topics' environment

Expected failures (a busy port, a missing tool, a service that does not become healthy) end
with a short message and exit code 1, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated

import typer

from cli.startup import fail, load_settings
from erynoa.settings import Settings
from erynoa.stack import manager, procs
from erynoa.stack.base import StackError

stack_app = typer.Typer(no_args_is_help=True, help="The local stack: Kafka, PostgreSQL, Redis.")


def _run(action: Callable[[Settings], None]) -> None:
    settings = load_settings()
    try:
        action(settings)
    except StackError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


@stack_app.command()
def up(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Only these services (kafka: every broker); default all.", metavar="[SERVICE]"
        ),
    ] = None,
    brokers: Annotated[
        int | None,
        typer.Option(
            help="Kafka brokers on a fresh state dir (3: a KRaft cluster, 512 MiB heap each); "
            "later the number it was set up with.",
            min=1,
        ),
    ] = None,
) -> None:
    """Start every service not yet running and wait until all are healthy."""
    _run(lambda settings: manager.up(settings, typer.echo, brokers=brokers, only=names))


@stack_app.command()
def stop(
    names: Annotated[
        list[str], typer.Argument(help="The services, e.g. kafka-2.", metavar="SERVICE")
    ],
    kill: Annotated[
        bool, typer.Option("--kill", help="SIGKILL at once, as a crash would (kill -9).")
    ] = False,
) -> None:
    """Stop the named services only (`erynoa stack up` starts them again)."""
    _run(lambda settings: manager.stop(settings, typer.echo, names, kill=kill))


@stack_app.command()
def env() -> None:
    """Print `export` lines for clients of this stack: every broker's address, and the
    topics' environment (production, replication 3, from three brokers on)."""
    settings = load_settings()
    for key, value in manager.client_env(settings).items():
        typer.echo(f"export {key}={value}")


@stack_app.command()
def down() -> None:
    """Stop every service; nothing of the stack keeps running."""
    _run(lambda settings: manager.down(settings, typer.echo))


@stack_app.command()
def status() -> None:
    """Each service's state, pid and port; exit code 0 only if all are healthy."""
    settings = load_settings()
    states = manager.status(settings)
    for state in states:
        typer.echo(state.line())
    if not all(state.ok for state in states):
        raise typer.Exit(1)


@stack_app.command()
def logs(
    service: Annotated[
        str | None, typer.Argument(help=f"One of: {', '.join(manager.SERVICE_NAMES)}.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines from the end.")] = 50,
) -> None:
    """Show a service's log (all services' when none is named)."""
    settings = load_settings()
    try:
        paths = manager.log_files(settings, service)
    except StackError as exc:
        fail(str(exc))
    if follow:
        argv = ["tail", "-n", str(lines), "-F", *map(str, paths)]
        os.execvp("tail", argv)
    for path in paths:
        if len(paths) > 1:
            typer.echo(f"==> {path} <==")
        if not path.exists():
            typer.echo(f"(no log yet: {path})")
        for line in procs.tail(path, lines):
            typer.echo(line)


@stack_app.command()
def clean() -> None:
    """Stop the stack and delete its data (downloads cached in ~/.cache/erynoa stay)."""
    _run(lambda settings: manager.clean(settings, typer.echo))
