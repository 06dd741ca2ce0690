"""The one error type users see: a file (or setting) and what is wrong with it, on one line."""

from __future__ import annotations

import re
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` with control characters (newlines in file names, escape sequences in headers)
    written as ``\\n``, ``\\x1b``...: what the user reads stays one line and cannot drive a terminal."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


class MedsynthError(Exception):
    """A problem with user input, reported by the CLI as one line: ``<path>: <problem>``.

    Args:
        path: the file, folder or setting at fault (may be ``None`` for general problems).
        problem: a short human sentence saying what is wrong.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else one_line(str(path))
        self.problem = one_line(str(problem))
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)
