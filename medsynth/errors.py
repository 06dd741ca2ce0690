"""The one error type users see: a file (or setting) and what is wrong with it, on one line."""

from __future__ import annotations

from pathlib import Path


class MedsynthError(Exception):
    """A problem with user input, reported by the CLI as one line: ``<path>: <problem>``.

    Args:
        path: the file, folder or setting at fault (may be ``None`` for general problems).
        problem: a short human sentence saying what is wrong.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
