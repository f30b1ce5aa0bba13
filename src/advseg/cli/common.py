"""What every advseg command shares: turning bad input into one line per problem and exit status 2."""

from __future__ import annotations

from typing import NoReturn

import typer

from advseg.errors import InputError


def fail(exc: InputError) -> NoReturn:
    """Print ``error: <file>: <problem>`` per problem on stderr and exit 2 (no traceback)."""
    for line in exc.one_line().splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code=2)
