"""Progress of long commands: a bar on a terminal, plain log lines elsewhere.

Every command that can run longer than a few seconds (train, benchmark, evaluate, report,
generate) reports what it is doing as ``n of N`` with the time elapsed and left. On a terminal
(stderr is a TTY) that is a tqdm bar on stderr; otherwise (a log file, CI, ``nohup``) it is a
plain line through :mod:`logging` at most every ``every_s`` seconds, and always at the end::

    benchmark: 12/75 classifiers, 2:31 elapsed, about 9:40 left

Library code never prints: it calls :func:`track` or :class:`Progress`; the CLI decides whether
bars are wanted (:func:`set_mode`). Tests and library callers get log lines by default.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

logger = logging.getLogger("medsynth.progress")

T = TypeVar("T")

#: ``"auto"`` (bar when stderr is a terminal, log lines otherwise), ``"bar"``, ``"log"``, ``"off"``
_MODE = "log"
#: seconds between two plain progress lines
EVERY_S = 10.0


def set_mode(mode: str) -> None:
    """Choose how progress is shown: ``auto``, ``bar``, ``log`` or ``off`` (the CLI sets ``auto``)."""
    global _MODE
    if mode not in ("auto", "bar", "log", "off"):
        raise ValueError(f"progress mode must be auto, bar, log or off, got {mode!r}")
    _MODE = mode


def use_bar() -> bool:
    """Whether progress is drawn as a bar now (mode ``bar``, or ``auto`` with stderr a terminal)."""
    if _MODE == "bar":
        return True
    if _MODE == "auto":
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False
    return False


def fmt_seconds(s: float) -> str:
    """``75.3`` -> ``"1:15"``; ``3725`` -> ``"1:02:05"``."""
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Counts ``n`` of ``total`` units of one task and reports it (bar or log lines).

    Args:
        desc: what is being done, e.g. ``"benchmark"``.
        total: number of units (``None`` when unknown: no time left is given).
        unit: unit name for the line, e.g. ``"classifiers"``.
        initial: units already done (a resumed run): excluded from the rate.
        every_s: seconds between plain lines (default :data:`EVERY_S`).
        log: the logger for plain lines (default ``medsynth.progress``).

    Use as a context manager, or call :meth:`close`; :meth:`update` adds done units and
    :meth:`set_postfix` attaches a short status (``loss/D=0.61``) to the bar or the next line.
    """

    def __init__(self, desc: str, total: int | None, unit: str = "it", *, initial: int = 0,
                 every_s: float | None = None, log: logging.Logger | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.n = self.initial = int(initial)
        self.every_s = EVERY_S if every_s is None else float(every_s)
        self.log = log or logger
        self.t0 = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False
        self.bar = None
        if _MODE != "off" and use_bar():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                            file=sys.stderr, leave=True)

    def line(self) -> str:
        """The plain progress line: ``desc: n/N unit, elapsed, about left`` (+ status)."""
        el = time.monotonic() - self.t0
        done = self.n - self.initial
        parts = [f"{self.desc}: {self.n}/{self.total if self.total is not None else '?'} {self.unit}",
                 f"{fmt_seconds(el)} elapsed"]
        if self.total is not None and done > 0 and self.n < self.total:
            parts.append(f"about {fmt_seconds(el / done * (self.total - self.n))} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def update(self, k: int = 1) -> None:
        """Add ``k`` done units; a plain line goes out when ``every_s`` has passed."""
        self.n += int(k)
        if _MODE == "off":
            return
        if self.bar is not None:
            self.bar.update(k)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s and (self.total is None or self.n < self.total):  # close() logs the last
            self.last = now
            self.log.info(self.line())

    def set_postfix(self, text: str) -> None:
        """Attach a short status to the bar / the next line."""
        self.postfix = str(text)
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix, refresh=False)

    def close(self) -> None:
        """Finish: close the bar, or log the final line once."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif _MODE != "off":
            self.log.info(self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kw) -> Iterator[T]:
    """Iterate over ``items`` reporting progress (see :class:`Progress`).

    Args:
        items: the iterable.
        desc, unit: as :class:`Progress`.
        total: defaults to ``len(items)`` when it has one.
    """
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(desc, total, unit, **kw) as p:
        for x in items:
            yield x
            p.update(1)
