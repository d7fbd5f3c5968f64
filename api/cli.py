"""Command-line hooks for the API, registered in ``cli.main`` as ``erynoa api`` and
``erynoa token``::

    erynoa api                                         # serve on ERYNOA_API_HOST:ERYNOA_API_PORT
    erynoa token --sub alice --role customer           # a development token (stdout)
    curl -H "Authorization: Bearer $(erynoa token --sub bob --role provider)" \\
        http://127.0.0.1:8080/api/v1/users/me
"""

from __future__ import annotations

from typing import Annotated

import typer

from erynoa.settings import get_settings


def serve() -> None:
    """Run the REST API (uvicorn) with the process's settings."""
    from api.server import serve as run
    from erynoa.settings import UnsafeConfiguration

    try:
        run(get_settings())
    except UnsafeConfiguration as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def token(
    sub: Annotated[str, typer.Option("--sub", help="the user id (token subject)")],
    role: Annotated[
        list[str],
        typer.Option("--role", help="customer, provider or admin; repeat for several"),
    ],
    ttl: Annotated[
        int, typer.Option("--ttl", min=60, max=86_400, help="lifetime in seconds")
    ] = 3600,
    email: Annotated[str | None, typer.Option("--email", help="the email claim")] = None,
) -> None:
    """Print a development token the running API accepts (development issuer only)."""
    from api.auth import ROLES, DevIssuerDisabled, issue_dev_token

    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        typer.secho(
            f"unknown role(s) {', '.join(unknown)}; choose from {', '.join(ROLES)}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    try:
        typer.echo(issue_dev_token(get_settings(), sub, role, ttl, email))
    except DevIssuerDisabled as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
