"""What every advseg command shares: its Typer app's settings, and turning bad input into one line per
problem and exit status 2."""

from __future__ import annotations

from typing import NoReturn

import typer

from advseg.errors import InputError


def fail(exc: InputError) -> NoReturn:
    """Print ``error: <file>: <problem>`` per problem on stderr and exit 2 (no traceback)."""
    for line in exc.one_line().splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code=2)


def command_app(help: str, name: str | None = None) -> typer.Typer:
    """A Typer app with advseg's settings: help without arguments, no shell-completion options, and no
    rich traceback (an unexpected error prints Python's own; bad input never reaches one: :func:`fail`)."""
    return typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)
