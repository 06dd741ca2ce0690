"""The run's time: wall and CPU seconds spent (carried over a resume) and the ``train.minutes`` budget."""

from __future__ import annotations

import time

import torch

from medsynth.errors import MedsynthError
from medsynth.train import distributed as ddp


class RunClock:
    """Seconds a run has spent and whether its time budget is used up.

    ``train.minutes`` caps the run on ``train.clock``: ``wall`` (elapsed time) or ``process``
    (this process's CPU time, all threads). Time spent before a resume counts.

    Raises:
        MedsynthError: ``train.clock`` is neither ``wall`` nor ``process``.
    """

    def __init__(self, tc):
        if tc.clock not in ("wall", "process"):
            raise MedsynthError("train.clock", f"must be 'wall' or 'process', got {tc.clock!r}")
        self.wall = tc.clock == "wall"
        self.minutes = None if tc.minutes is None else float(tc.minutes)
        self.start()

    def start(self, seconds_before: float = 0.0, cpu_seconds_before: float = 0.0) -> None:
        """Start counting now, after ``seconds_before`` wall and ``cpu_seconds_before`` CPU seconds
        spent earlier (a resumed run's)."""
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.before, self.cpu_before = float(seconds_before), float(cpu_seconds_before)
        spent = self.before if self.wall else self.cpu_before
        self.deadline = None if self.minutes is None else self._budget_now() + 60.0 * self.minutes - spent

    def _budget_now(self) -> float:
        return time.perf_counter() if self.wall else time.process_time()

    def elapsed(self) -> float:
        """Wall seconds since :meth:`start`."""
        return time.perf_counter() - self.t0

    def seconds(self) -> float:
        """Wall seconds of the whole run (before a resume included)."""
        return self.before + self.elapsed()

    def cpu_seconds(self) -> float:
        """CPU seconds of the whole run (before a resume included)."""
        return self.cpu_before + time.process_time() - self.c0

    def out_of_time(self, info: ddp.DistInfo, device: torch.device) -> bool:
        """Whether the budget is used up (all ranks agree, so none waits on a finished peer)."""
        if self.deadline is None:
            return False
        return ddp.any_rank(self._budget_now() >= self.deadline, info, device)
