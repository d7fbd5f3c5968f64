"""``erynoa worker <agent>``: run one saga agent's Faust worker in the foreground.

    erynoa worker reservation        # or payment | notification | provider-response

More processes of the same agent join the same consumer group and share its partitions. The
worker logs JSON lines (``erynoa.logs``) with ``booking_id`` and ``correlation_id``; SIGTERM or
Ctrl-C stops it gracefully (the in-flight message finishes and its offset is committed).
"""

from __future__ import annotations

import gc
import logging
from typing import Annotated

import typer

from erynoa.logs import configure
from erynoa.settings import get_settings
from streams.app import AGENTS, check_agent, create_app


def worker(
    agent: Annotated[
        str,
        typer.Argument(help=f"The agent to run: {' | '.join(AGENTS)}."),
    ],
) -> None:
    """Run one saga agent's worker in the foreground until SIGTERM/Ctrl-C."""
    import faust

    try:
        name = check_agent(agent)
    except ValueError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    settings = get_settings()
    level = settings.log_level
    configure(f"agent-{name}", level)
    # Faust's own INFO chatter (every partition assignment, every table) drowns the saga's lines.
    logging.getLogger("faust").setLevel(logging.WARNING)
    logging.getLogger("mode").setLevel(logging.WARNING)
    app = create_app(name, settings)
    # Everything loaded so far lives as long as the worker: keep it out of full garbage
    # collections, which otherwise walk it all again and stall the event loop (see api/server.py).
    gc.freeze()
    # Programmatic worker: Faust's own CLI would want the argv. It installs SIGTERM/SIGINT
    # handlers that stop the app gracefully; override_logging keeps our JSON handler.
    runner = faust.Worker(
        app,
        loglevel=level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    runner.spinner = None  # terminal escape codes would break the JSON lines
    runner.execute_from_commandline()
