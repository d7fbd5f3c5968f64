"""``erynoa materializer run|rebuild``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from erynoa import logs, tracing
from erynoa.settings import get_settings

materializer_app = typer.Typer(no_args_is_help=True, help="The read model's materializer.")


@materializer_app.command("run")
def run() -> None:
    """Fold every booking event into PostgreSQL's read model (until Ctrl-C / SIGTERM)."""
    from consumers.materializer import run as run_materializer

    settings = get_settings()
    logs.configure("materializer", settings.log_level)
    tracing.configure(settings, "erynoa-materializer")

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await run_materializer(settings, stopping)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    tracing.shutdown()


@materializer_app.command("rebuild")
def rebuild(
    force: Annotated[
        bool, typer.Option(help="Swap in even when they differ (never from a truncated log).")
    ] = False,
    keep: Annotated[
        bool, typer.Option(help="Keep the replaced (or unswapped rebuilt) tables for inspection.")
    ] = False,
) -> None:
    """Rebuild the read model from offset 0 into a fresh schema; swap it in if it agrees."""
    from consumers.rebuild import TruncatedLog, run_rebuild

    settings = get_settings()
    logs.configure("materializer-rebuild", "WARNING")
    try:
        report = run_rebuild(settings, force=force, keep=keep)
    except TruncatedLog as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"rebuilt {report.bookings} bookings from {report.events} events in "
        f"{report.seconds:.1f}s ({report.events_per_second:,.0f} events/s)"
    )
    for difference in report.differences:
        typer.secho(f"DIFF  {difference}", fg=typer.colors.YELLOW)
    if report.swapped:
        typer.echo("swapped: the rebuilt read model is live")
    else:
        typer.secho(
            "not swapped: the rebuild differs from the live read model", fg=typer.colors.RED
        )
        raise typer.Exit(1)
