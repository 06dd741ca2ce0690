"""The one training loop. It runs the phases a variant declares and never asks which model it is.

Each step, with ``info = StepInfo(step, global batch, world size)`` built once and given to the
variant: for every phase due (``step % every == 0``), ``repeats`` updates, each through the one
update path (:class:`~medsynth.train.update.PhaseUpdater`: batch, ``model.loss(phase, batch,
info)`` under autocast, loss check, backward, gradient all-reduce, optimiser step), with only
that phase's parameters requiring grad. Then the tensors of ``model.cross_rank_sums()`` are
summed over all processes, ``model.on_step_end(info)`` runs, and rank 0's buffers are broadcast.
Every ``tick_every`` steps a stats line (:mod:`medsynth.train.stats`), every ``sample_every`` a
grid of fixed latents (:class:`~medsynth.train.grid.GridWriter`), every ``checkpoint_every`` an
atomic checkpoint of everything exact resume needs (:class:`~medsynth.train.checkpointer.Checkpointer`).

The global batch is the batch the shared sampler actually draws: ``train.batch_size`` clamped to
the number of training images, summed over all torchrun processes. ``kimg`` in the stats lines is
``step * global batch / 1000``, the images shown per phase (one real batch per D update).

Differential privacy plugs in through :class:`~medsynth.train.dp.PrivacyHooks` (no-ops when off);
the time budget (``train.minutes`` on ``train.clock``) is :class:`~medsynth.train.clock.RunClock`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from medsynth.config import RunConfig, save_config
from medsynth.errors import MedsynthError
from medsynth.models.base import GANVariant, Phase, StepInfo
from medsynth.models.registry import build_model
from medsynth.train import distributed as ddp
from medsynth.train import dp as dpmod
from medsynth.train.batches import Batches, BatchSampler
from medsynth.train.checkpointer import Checkpointer
from medsynth.train.clock import RunClock
from medsynth.train.grid import GridWriter
from medsynth.train.speed import Speed, resolve_speed
from medsynth.train.stats import TickWriter, truncate_stats
from medsynth.train.update import LossGuard, PhaseUpdater

log = logging.getLogger(__name__)


def new_run_dir(out: str | Path, tag: str) -> Path:
    """Next free ``<out>/<NNNNN>-<tag>`` folder (created). Under ``torchrun`` rank 0 picks it
    and every rank gets the same path."""
    info = ddp.init_from_env()
    if info.enabled:
        return Path(ddp.broadcast_object(str(_new_run_dir(out, tag)) if info.is_main else None, info))
    return _new_run_dir(out, tag)


def _new_run_dir(out: str | Path, tag: str) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    while True:  # two runs started at once may pick the same number: mkdir decides, the loser retries
        nums = [int(m.group(1)) for p in out.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
        run = out / f"{(max(nums) + 1) if nums else 0:05d}-{tag}"
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue


@dataclass
class TrainResult:
    """What :func:`train` returns: where, how far, how long (wall seconds over the whole run) and how
    fast (images per second of this call: steps x global batch / s)."""

    run_dir: Path
    step: int
    seconds: float
    images_per_second: float
    #: the trained variant (on the training device; this rank's copy under torchrun)
    model: GANVariant | None = None


def train(
    cfg: RunConfig,
    images: Tensor,
    labels: Tensor | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    grid_size: int = 64,
    on_tick: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``cfg.model.name`` on ``images`` and write everything into ``run_dir``.

    Runs unchanged under ``torchrun`` (see :mod:`medsynth.train.distributed`): each process
    trains on its slice of every global batch of ``train.batch_size`` images, gradients are
    averaged, and rank 0 alone writes stats, grids and checkpoints.

    Args:
        cfg: the resolved run config (saved as ``run_dir/config.yaml``).
        images: ``(N, C, *S)`` float32 in [-1, 1], matching ``cfg.data.size``/``spatial_dims``;
            moved once to the training device (the data set is cached there).
        labels: ``(N,)`` int64 class labels (required when ``cfg.model.num_classes > 0``).
        run_dir: the run directory; with ``resume`` it must hold ``checkpoints/last.pt``.
        resume: continue exactly from the last checkpoint (step, optimisers, EMA, data order, RNG).
        progress: show a tqdm progress bar (the CLI turns it on; rank 0 only).
        grid_size: images per sample grid.
        on_tick: called with each stats line (rank 0 only).

    Returns:
        The run directory, the step reached, the run's wall seconds (before a resume included),
        the images per second of this call (steps x global batch / s) and the trained model.
    """
    run_dir = Path(run_dir)
    private = dpmod.dp_requested(cfg.train)  # differentially private D phase (medsynth/train/dp.py)
    if private:
        cfg = dpmod.prepare_config(cfg)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    _check_data(cfg, images, labels)
    info = ddp.init_from_env()
    speed = _speed(cfg, info, private)
    dev = speed.device
    model, phases = _build_model(cfg, speed, info)
    opts = _optimizers(model, phases, speed.fused_adam)
    scaler = torch.amp.GradScaler(dev.type, enabled=speed.amp == "fp16")
    data = Batches(images.to(dev), None if labels is None else labels.to(dev),
                   BatchSampler(images.shape[0], tc.batch_size, tc.seed + 1), info,
                   speed.memory_format(cfg.model.spatial_dims))
    privacy = (dpmod.DPTraining(tc, model, phases, opts, images.shape[0], data.batch_size, images.shape[1:], dev)
               if private else dpmod.PrivacyHooks())
    clock = RunClock(tc)
    ckpt = Checkpointer(run_dir, cfg, model, opts, data.sampler, scaler, privacy, speed, info, clock)
    step = start_step = _open_run(run_dir, cfg, ckpt, clock, info, resume)
    guard = LossGuard(run_dir, ckpt, info, dev)
    updater = PhaseUpdater(model, phases, opts, speed, scaler, data, privacy, guard, info)
    ticks = TickWriter(run_dir, tick_every=tc.tick_every, steps=tc.steps, batch_size=data.batch_size, info=info,
                       device=dev, extra=privacy.stats, on_tick=on_tick, progress=progress, start_step=step)
    grids = GridWriter(model, cfg.model, run_dir, grid_size, tc.seed, info, dev)
    if step == 0:
        grids.write(0)
    while step < tc.steps and not clock.out_of_time(info, dev):
        step_info = StepInfo(step, data.batch_size, info.world)
        for ph in phases:
            if step % ph.every == 0:
                updater.run_phase(ph, step_info)
        updater.end_step()
        _end_step(model, step_info, info)
        step += 1
        if ticks.step_done(step):
            guard.verify(step)
            ticks.write(step, updater.tally, clock.seconds(), clock.cpu_seconds())
        if step % tc.sample_every == 0:
            grids.write(step)
        if step % tc.checkpoint_every == 0:
            guard.checkpoint(step)
    ticks.close()
    if step % tc.sample_every:
        grids.write(step)
    guard.checkpoint(step)
    ddp.barrier(info)
    rate = (step - start_step) * data.batch_size / max(clock.elapsed(), 1e-9)
    return TrainResult(run_dir, step, clock.seconds(), rate, model)


def _check_data(cfg: RunConfig, images: Tensor, labels: Tensor | None) -> None:
    expected = (cfg.model.channels,) + (cfg.model.size,) * cfg.model.spatial_dims
    if tuple(images.shape[1:]) != expected:
        raise MedsynthError("data", f"images have shape {tuple(images.shape[1:])}, model expects {expected}")
    if cfg.model.num_classes > 0 and (labels is None or (labels < 0).any() or (labels >= cfg.model.num_classes).any()):
        raise MedsynthError("data", f"class-conditional model needs labels in 0..{cfg.model.num_classes - 1} "
                                    "for every image (set model.num_classes=0 for unconditional training)")


def _speed(cfg: RunConfig, info: ddp.DistInfo, private: bool) -> Speed:
    """The run's speed options (DP: float32, eager, contiguous), their reasons logged by rank 0."""
    speed = resolve_speed(cfg.train, info.local_rank, cfg.model.spatial_dims)
    if private:
        if info.enabled:
            raise MedsynthError("train.dp_noise_multiplier", "differentially private training runs in one process")
        speed = dpmod.speed_for_dp(speed)
    if info.is_main:
        for note in speed.notes:
            log.info("speed: %s", note)
    return speed


def _build_model(cfg: RunConfig, speed: Speed, info: ddp.DistInfo) -> tuple[GANVariant, list[Phase]]:
    """The variant on the training device, identical on every rank: synchronised BatchNorm under
    torchrun, channels-last weights, compiled phase modules as ``speed`` says; and its phases.
    Leaves each rank with its own noise stream (seeded from ``train.seed`` and the rank)."""
    seed = int(cfg.train.seed)
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    model.train()
    model.to(speed.device)
    if info.enabled:
        model, n_bn = ddp.convert_sync_batchnorm(model, speed.device)
        if n_bn and info.is_main:
            log.info("distributed: %d BatchNorm layers synchronised over %d processes", n_bn, info.world)
    fmt = speed.memory_format(cfg.model.spatial_dims)
    if fmt is not None:  # only tensors of the image rank (StyleGAN2 3D keeps 4D modulation weights)
        rank = 2 + cfg.model.spatial_dims
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.dim() == rank:
                    t.data = t.data.contiguous(memory_format=fmt)
    phases = model.phases()
    ddp.broadcast_tensors(list(model.parameters()) + list(model.buffers()), info)
    if info.enabled:  # a different noise stream per rank (init above was identical on all ranks)
        torch.manual_seed(seed + 1_000_003 * (info.rank + 1))
    if speed.compile:
        for name in dict.fromkeys(m for ph in phases for m in ph.modules):
            getattr(model, name).compile()
    return model, phases


def _open_run(run_dir: Path, cfg: RunConfig, ckpt: Checkpointer, clock: RunClock, info: ddp.DistInfo,
              resume: bool) -> int:
    """Resume from the run's checkpoint (dropping stats lines written after it) or start a new run
    directory (with its ``config.yaml``); start the clock. Returns the step training starts at."""
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        if info.is_main:
            save_config(cfg, run_dir / "config.yaml")
        clock.start()
        return 0
    resumed = ckpt.restore()
    clock.start(resumed.seconds, resumed.cpu_seconds)
    if info.is_main:
        truncate_stats(run_dir, resumed.step)
        log.info("resumed %s at step %d", run_dir, resumed.step)
    return resumed.step


def _optimizers(model: GANVariant, phases: list[Phase], fused: bool) -> dict[str, torch.optim.Optimizer]:
    """One Adam per optimiser key; phases naming the same optimiser share one (settings from the first)."""
    opts: dict[str, torch.optim.Optimizer] = {}
    for ph in phases:
        if ph.opt_key not in opts:
            owners = [q for q in phases if q.opt_key == ph.opt_key]
            params = list({id(p): p for q in owners for p in model.sub_modules(q.modules)}.values())
            opts[ph.opt_key] = torch.optim.Adam(params, lr=ph.lr, betas=ph.betas, **({"fused": True} if fused else {}))
    return opts


def _end_step(model: GANVariant, step_info: StepInfo, info: ddp.DistInfo) -> None:
    """The variant's end of step, the same on every rank: its cross-rank statistics summed over
    processes, ``on_step_end``, then rank 0's buffers everywhere (BN running stats, schedules, as DDP)."""
    ddp.all_reduce_sum(model.cross_rank_sums(), info)
    model.on_step_end(step_info)
    ddp.broadcast_tensors(model.buffers(), info)
