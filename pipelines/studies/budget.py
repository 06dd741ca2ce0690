"""Run directories and CPU-budgeted ``medsynth train`` subprocesses, shared by the studies.

A study keeps one run per folder; :func:`train_to_budget` skips a run whose last checkpoint has
spent the budget, resumes an interrupted one and starts a new one otherwise, always on the process
clock with one thread (``train.clock=process``, ``train.threads=1``), logging to ``train.log``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from medsynth.runs import checkpoint_progress, find_run

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
BUDGET_SETS = ("train.clock=process", "train.threads=1")


def train_command(parent: Path, resume: Path | None, new_args: list[str], *, minutes: float, max_steps: int,
                  sets: list[str]) -> list[str]:
    """``medsynth train`` argv: ``--resume RUN`` or ``new_args`` (model, data, seed) with ``--out parent``,
    then the budget, ``--no-progress`` and ``--set`` for each of :data:`BUDGET_SETS` + ``sets``."""
    cmd = [sys.executable, "-m", "medsynth.cli", "train"]
    cmd += ["--resume", str(resume)] if resume is not None else [*new_args, "--out", str(parent)]
    cmd += ["--minutes", str(minutes), "--steps", str(max_steps), "--no-progress"]
    for s in (*BUDGET_SETS, *sets):
        cmd += ["--set", s]
    return cmd


def train_to_budget(parent: Path, new_args: list[str], *, minutes: float, max_steps: int, sets: list[str],
                    name: str) -> Path:
    """Train (skip, resume or start) the run under ``parent`` to ``minutes`` CPU-minutes.

    Returns:
        The run directory.

    Raises:
        RuntimeError: training exited non-zero (see ``parent/train.log``) or left no run directory.
    """
    run = find_run(parent)
    info = checkpoint_progress(run) if run is not None else None
    if info is not None and info["cpu_seconds"] >= 60.0 * minutes - 1.0:
        log.info("%s: finished (%d steps), skipped", name, info["step"])
        return run
    parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(parent, run if info is not None else None, new_args, minutes=minutes, max_steps=max_steps,
                        sets=sets)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.info("%s: %s", name, " ".join(cmd))
    with open(parent / "train.log", "a") as fh:
        res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if res.returncode:
        raise RuntimeError(f"{name}: training failed (exit {res.returncode}); see {parent / 'train.log'}")
    run = find_run(parent)
    if run is None:
        raise RuntimeError(f"{name}: no run directory under {parent}")
    return run
