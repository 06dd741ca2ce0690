"""Exact resume: everything a run needs to continue as if it had never stopped, in one checkpoint.

``checkpoints/last.pt`` (written atomically by rank 0, :func:`medsynth.runs.save_checkpoint`)
holds the model's ``state_dict`` (EMA weights and schedules included), every optimiser, the
step, the wall and CPU seconds spent, the sampler's state, every rank's CPU (and CUDA) RNG state,
the fp16 grad scaler, the privacy hooks' state (DP accountant and generators), the resolved
config and speed options. Restoring it in a run with the same number of processes continues
bit-exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from medsynth.runs import CHECKPOINT, load_checkpoint, save_checkpoint
from medsynth.train import distributed as ddp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resumed:
    """Where a restored checkpoint left off."""

    step: int
    seconds: float
    cpu_seconds: float


class Checkpointer:
    """Saves and restores a run's whole training state (see the module docstring).

    Args:
        run_dir: the run directory (the checkpoint is ``run_dir/checkpoints/last.pt``).
        cfg: the resolved :class:`~medsynth.config.RunConfig` (stored in the checkpoint).
        model: the variant.
        opts: the optimisers by key (as the variant's phases name them).
        sampler: the shared :class:`~medsynth.train.batches.BatchSampler`.
        scaler: the grad scaler (saved only when enabled, i.e. fp16).
        privacy: the privacy hooks (:class:`~medsynth.train.dp.PrivacyHooks`).
        speed: the resolved :class:`~medsynth.train.speed.Speed` (stored as a record).
        info: this process's place under torchrun.
        clock: the run's :class:`~medsynth.train.clock.RunClock` (seconds spent, saved with the state).
    """

    def __init__(self, run_dir: Path, cfg, model, opts: dict, sampler, scaler: torch.amp.GradScaler, privacy,
                 speed, info: ddp.DistInfo, clock):
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / CHECKPOINT
        self.cfg, self.model, self.opts, self.sampler, self.scaler = cfg, model, opts, sampler, scaler
        self.privacy, self.speed, self.info, self.clock = privacy, speed, info, clock

    def save(self, step: int) -> None:
        """Checkpoint the state after ``step`` steps. Collective under torchrun (every rank's RNG
        state is gathered); rank 0 writes."""
        info, dev = self.info, self.speed.device
        rng = ddp.gather_objects(torch.get_rng_state(), info)
        cuda_rng = ddp.gather_objects(torch.cuda.get_rng_state(dev), info) if dev.type == "cuda" else None
        if not info.is_main:
            return
        payload = {
            "model": self.model.state_dict(), "optimizers": {k: o.state_dict() for k, o in self.opts.items()},
            "step": step, "seconds": self.clock.seconds(), "cpu_seconds": self.clock.cpu_seconds(),
            "sampler": self.sampler.state_dict(), "rng": rng[0], "config": self.cfg.to_dict(),
            "speed": self.speed.as_dict() | {"world_size": info.world},
        }
        if info.enabled:
            payload["rng_ranks"] = rng
        if cuda_rng is not None:
            payload["cuda_rng_ranks"] = cuda_rng
        if self.scaler.is_enabled():
            payload["scaler"] = self.scaler.state_dict()
        payload |= self.privacy.checkpoint(self.run_dir)
        save_checkpoint(self.path, payload)

    def restore(self) -> Resumed:
        """Load the run's checkpoint into the model, optimisers, sampler, scaler, privacy hooks and
        this rank's RNG."""
        ck = load_checkpoint(self.path)
        self.model.load_state_dict(ck["model"])
        for name, sd in ck["optimizers"].items():
            self.opts[name].load_state_dict(sd)
        self.sampler.load_state_dict(ck["sampler"])
        self.privacy.restore(ck)
        if self.scaler.is_enabled() and "scaler" in ck:
            self.scaler.load_state_dict(ck["scaler"])
        _restore_rng(ck, self.info, self.speed.device, int(self.cfg.train.seed))
        return Resumed(int(ck["step"]), float(ck["seconds"]), float(ck.get("cpu_seconds", 0.0)))


def _restore_rng(ck: dict, info: ddp.DistInfo, dev: torch.device, seed: int) -> None:
    """This rank's RNG state from a checkpoint (per-rank states under torchrun)."""
    ranks = ck.get("rng_ranks")
    cuda = ck.get("cuda_rng_ranks")
    if not info.enabled:
        torch.set_rng_state(ck["rng"])
    elif ranks is not None and len(ranks) == info.world:
        torch.set_rng_state(ranks[info.rank])
    else:
        log.warning("checkpoint written by %d process(es), this run has %d: noise streams restart from "
                    "per-rank seeds (resume is not bit-exact)", len(ranks or [0]), info.world)
        torch.manual_seed(seed + 1_000_003 * (info.rank + 1))
        return
    if dev.type == "cuda" and cuda is not None and len(cuda) > info.rank:
        torch.cuda.set_rng_state(cuda[info.rank], dev)
