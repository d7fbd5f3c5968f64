"""``erynoa asyncapi``: write (or check) asyncapi.yaml, validate it, render its HTML docs."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated

import typer

from contracts import DOCUMENT, HTML_DIR


def asyncapi(
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if asyncapi.yaml differs from the code.")
    ] = False,
    validate: Annotated[
        bool,
        typer.Option("--validate", help="Also run `asyncapi validate` (@asyncapi/cli, npm)."),
    ] = False,
    html: Annotated[
        bool, typer.Option("--html", help="Also render the HTML docs the API serves.")
    ] = False,
    write: Annotated[
        bool,
        typer.Option(
            "--write/--no-write",
            help="--no-write leaves asyncapi.yaml as it is (a stale one is only reported), "
            "e.g. to render the committed document.",
        ),
    ] = True,
    output: Annotated[Path, typer.Option(help="Where the document goes.")] = DOCUMENT,
    html_dir: Annotated[Path, typer.Option(help="Where the HTML docs go.")] = HTML_DIR,
) -> None:
    """Generate the AsyncAPI document from topics.yaml, schemas/ and the code."""
    from contracts.asyncapi import DocumentError, generate
    from contracts.tools import ToolUnavailable

    try:
        text = generate()
    except DocumentError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    current = output.read_text() if output.is_file() else ""
    if check:
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(output), "generated", lineterm=""
            )
            typer.echo("\n".join(list(diff)[:60]))
            typer.secho(
                f"{output} is stale: run `erynoa asyncapi` and commit it", fg=typer.colors.RED
            )
            raise typer.Exit(1)
        typer.echo(f"{output.name}: up to date")
    elif not write:
        if current != text:
            typer.secho(
                f"{output} is stale (not rewritten): run `erynoa asyncapi` and commit it",
                fg=typer.colors.YELLOW,
                err=True,
            )
    elif current != text:
        output.write_text(text)
        typer.echo(f"wrote {output}")
    else:
        typer.echo(f"{output.name}: unchanged")
    try:
        if validate:
            from contracts.validate import validate_with_cli

            typer.echo(validate_with_cli(output))
        if html:
            from contracts.html import ensure_rendered

            rendered = ensure_rendered(output, html_dir)
            typer.echo(f"{'rendered' if rendered else 'up to date'}: {html_dir}/index.html")
    except ToolUnavailable as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
