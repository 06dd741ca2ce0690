"""Kill -9 and resume, StyleGAN2 (issue 17): a `medsynth train` process killed with SIGKILL right
after its first checkpoint, then `train --resume`, ends bit-identical to the same run left alone:
every model tensor (G, D, EMA G, path-length mean, ADA's p), every optimiser tensor, the
sampler, the RNG state, and the same stats lines (none written twice).

The runs are real processes (`python -m medsynth.cli train`, one thread each), tiny: 16 px,
width 8, batch 4, 24 steps, a checkpoint every 2 steps; lazy R1 every 3 steps, path length every
4 and ADA on, so every phase and every piece of state crosses the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import fuzz_files as F
from conftest import kill_at_first_checkpoint
from medsynth.runs import CHECKPOINT, load_checkpoint

STEPS = 24
ARGS = ["train", "--model", "stylegan2", "--size", "16", "--steps", str(STEPS), "--batch-size", "4", "--seed", "3",
        "--set", "model.width=8", "--set", "train.checkpoint_every=2", "--set", "train.tick_every=2",
        "--set", "train.sample_every=1000", "--set", "model.params.r1_every=3", "--set", "model.params.pl_every=4",
        "--set", "model.params.pl_weight=2.0", "--set", "model.params.style_mixing=0.5",
        "--set", "model.params.augment=ada", "--set", "model.params.ada_kimg=1", "--no-progress"]
#: keys of a checkpoint that are wall-clock measurements or environment, not training state
NOT_STATE = {"seconds", "cpu_seconds", "versions"}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MEDSYNTH_VERBOSE": "0"}


def _train(*extra) -> list[str]:
    return [sys.executable, "-m", "medsynth.cli", *ARGS, *extra]


def _same(a, b, where="checkpoint") -> list[str]:
    """Paths inside two checkpoint payloads where they differ (tensors bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if ok else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a for d in _same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _stats_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]


def test_stylegan2_killed_after_its_first_checkpoint_resumes_bit_exactly(tmp_path):
    images = np.stack([F.radiograph(i, lesion=i % 2 == 1, size=16) for i in range(48)])
    data = tmp_path / "tiny.npz"
    np.savez(data, images=images, labels=np.arange(48) % 2, patient_ids=[f"p{i}" for i in range(48)],
             splits=["train"] * 32 + ["val"] * 8 + ["test"] * 8)

    full = subprocess.run(_train("--data", data, "--out", tmp_path / "full"), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    full_run = tmp_path / "full" / "00000-xray-stylegan2"

    # the same run, killed with SIGKILL the moment its first checkpoint exists
    half_run = tmp_path / "half" / "00000-xray-stylegan2"
    rc = kill_at_first_checkpoint(_train("--data", data, "--out", tmp_path / "half"), half_run, _env(), 240)
    assert rc == -signal.SIGKILL
    killed_at = int(load_checkpoint(half_run / CHECKPOINT)["step"])
    assert 0 < killed_at < STEPS, f"the kill came at step {killed_at} of {STEPS}: nothing left to resume"

    resumed = subprocess.run([sys.executable, "-m", "medsynth.cli", "train", "--resume", str(half_run),
                              "--no-progress"], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    a, b = load_checkpoint(full_run / CHECKPOINT), load_checkpoint(half_run / CHECKPOINT)
    assert a["step"] == b["step"] == STEPS
    state_a = {k: v for k, v in a.items() if k not in NOT_STATE}
    state_b = {k: v for k, v in b.items() if k not in NOT_STATE}
    assert {"model", "optimizers", "sampler", "rng"} <= state_a.keys()
    for state in (state_a, state_b):  # the two runs were written into different --out folders
        train_cfg = {k: v for k, v in state["config"]["train"].items() if k != "out"}
        state["config"] = {**state["config"], "train": train_cfg}
    diff = _same(state_a, state_b)
    assert not diff, f"killed at step {killed_at} and resumed, differs from the uninterrupted run at: {diff[:10]}"
    # the optimisers really stepped (a comparison of two untouched models would prove nothing)
    assert a["optimizers"] and all(opt["state"] for opt in a["optimizers"].values())
    # stats lines the killed process wrote after its checkpoint were dropped on resume, not doubled
    assert _stats_steps(half_run) == _stats_steps(full_run) == list(range(2, STEPS + 1, 2))

