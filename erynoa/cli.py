"""The ``erynoa`` command: one entry point for every runtime and operator task.

Run ``erynoa --help`` for the list. Each sub-command wires its own runtime; importing this
module connects to nothing.
"""

from __future__ import annotations

import typer

from erynoa.stack.cli import stack_app

app = typer.Typer(no_args_is_help=True, help="Erynoa booking backbone.", pretty_exceptions_enable=False)
app.add_typer(stack_app, name="stack", help="The local stack: Kafka, PostgreSQL, Redis (no Docker).")


def main() -> None:
    app()
