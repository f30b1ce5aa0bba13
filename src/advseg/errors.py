"""Errors that are the user's to fix (bad input), as opposed to bugs.

The CLI prints an :class:`InputError` as one line ``error: <file>: <problem>`` and exits with
status 2, without a traceback and before anything is written.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with a file or setting the user gave; ``path`` names it, ``problem`` says what."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class InputErrors(InputError):
    """Several input problems found by one check (e.g. dataset validation); one line each."""

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = list(errors)
        super().__init__(None, "\n".join(e.one_line() for e in self.errors))

    def one_line(self) -> str:
        return "\n".join(e.one_line() for e in self.errors)
