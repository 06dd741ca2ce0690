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
Stats lines and grids also go to the run's TensorBoard events when ``train.tensorboard`` says so
(:mod:`medsynth.train.tensorboard`, ``RUN/tensorboard/``).

The global batch is the batch the shared sampler actually draws: ``train.batch_size`` clamped to
the number of training images, summed over all torchrun processes. ``kimg`` in the stats lines is
``step * global batch / 1000``, the images shown per phase (one real batch per D update).

Differential privacy plugs in through :class:`~medsynth.train.dp.PrivacyHooks` (no-ops when off);
the time budget (``train.minutes`` on ``train.clock``) is :class:`~medsynth.train.clock.RunClock`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medsynth.atomic import write_text
from medsynth.config import RunConfig, save_config
from medsynth.data.stream import StreamedImages
from medsynth.errors import MedsynthError
from medsynth.models.base import GANVariant, Phase, StepInfo
from medsynth.models.registry import build_model
from medsynth.runs import RESUMES_FILE, discard_on_failure, run_lock
from medsynth.train import distributed as ddp
from medsynth.train import dp as dpmod
from medsynth.train.batches import Batches, BatchSampler, StreamBatches, loader_workers
from medsynth.train.checkpointer import Checkpointer
from medsynth.train.clock import RunClock
from medsynth.train.grid import GridWriter
from medsynth.train.speed import Speed, resolve_device, resolve_speed
from medsynth.train.stats import TickWriter, truncate_stats
from medsynth.train.tensorboard import open_run_board, summary_writer_class
from medsynth.train.update import LossGuard, PhaseUpdater

log = logging.getLogger(__name__)

#: The settings ``train --resume`` may change: how far and how long to go on, how often to write
#: stats, grids and checkpoints, CPU threads, and how the images are held (streamed or in memory,
#: where the stream cache lies, reader processes: both ways give the same batches bit for bit), and
#: whether TensorBoard files are written.
#: Everything else (model, data, batch, seed, speed, DP) stays the run's, so the resumed run is the
#: one the checkpoint continues exactly.
RESUME_CHANGEABLE: tuple[str, ...] = ("train.steps", "train.minutes", "train.checkpoint_every",
                                      "train.sample_every", "train.tick_every", "train.threads",
                                      "data.stream", "data.cache_dir", "data.memory_budget_mb", "data.workers",
                                      "train.tensorboard")


def check_config(cfg: RunConfig) -> RunConfig:
    """What a resolved and validated (:func:`~medsynth.config.validate`) config must also satisfy
    before any data is loaded: the variant builds with these settings (its ``model.params`` and
    size; built on the ``meta`` device: no memory, no compute), a named CT window exists, the
    device exists, a differentially private request suits the variant, and ``train.tensorboard:
    on`` finds the tensorboard package.

    Returns:
        ``cfg``, with the variant's DP-compatible ``model.params`` when DP is requested (what
        :func:`train` would make of it; passing it on saves doing it twice).

    Raises:
        MedsynthError: one line naming the setting at fault.
    """
    from medsynth.data.windows import CT_WINDOWS

    if dpmod.dp_requested(cfg.train):
        cfg = dpmod.prepare_config(cfg)
    window = cfg.data.ct_window
    if isinstance(window, str) and window not in CT_WINDOWS:
        raise MedsynthError("data.ct_window", f"unknown CT window {window!r}; known: {', '.join(CT_WINDOWS)} "
                                              "or [centre, width] in HU")
    resolve_device(str(cfg.train.device), 0)
    summary_writer_class(cfg.train.tensorboard)
    with torch.device("meta"):
        build_model(cfg.model)
    return cfg


def new_run_dir(out: str | Path, tag: str) -> Path:
    """Next free ``<out>/<NNNNN>-<tag>`` folder (created). Under ``torchrun`` rank 0 picks it
    and every rank gets the same path."""
    info = ddp.init_from_env()
    if info.enabled:
        return Path(ddp.broadcast_object(str(_new_run_dir(out, tag)) if info.is_main else None, info))
    return _new_run_dir(out, tag)


@contextmanager
def fresh_run_dir(out: str | Path, tag: str) -> Iterator[Path]:
    """A new run folder (:func:`new_run_dir`) for the block, removed again by rank 0 when the block
    fails (error or Ctrl-C) before the run's first checkpoint (:func:`medsynth.runs.discard_on_failure`)."""
    info = ddp.init_from_env()
    with discard_on_failure(new_run_dir(out, tag), enabled=info.is_main) as run:
        yield run


@contextmanager
def hold_run(run_dir: str | Path) -> Iterator[None]:
    """Hold the run's writer lock (:func:`medsynth.runs.run_lock`) for the block: rank 0 takes it
    (it alone writes); under ``torchrun`` every rank learns whether it got it, so all stop together
    with the same one-line error when another process holds it. Re-entrant."""
    info = ddp.init_from_env()
    if not info.enabled:
        with run_lock(run_dir):
            yield
        return
    with ExitStack() as stack:
        refused = None
        if info.is_main:
            try:
                stack.enter_context(run_lock(run_dir))
            except MedsynthError as exc:
                refused = (exc.path, exc.problem)
        refused = ddp.broadcast_object(refused, info)
        if refused is not None:
            raise MedsynthError(*refused)
        yield


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
    images: Tensor | StreamedImages,
    labels: Tensor | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    changes: dict[str, tuple[Any, Any]] | None = None,
    progress: bool = False,
    grid_size: int = 64,
    on_tick: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``cfg.model.name`` on ``images`` and write everything into ``run_dir``.

    Runs unchanged under ``torchrun`` (see :mod:`medsynth.train.distributed`): each process
    trains on its slice of every global batch of ``train.batch_size`` images, gradients are
    averaged, and rank 0 alone writes stats, grids and checkpoints. The run's writer lock
    (:func:`hold_run`) is held throughout: a second writer of the same run is refused in one line.

    Args:
        cfg: the resolved run config (saved as ``run_dir/config.yaml``).
        images: ``(N, C, *S)`` float32 in [-1, 1], matching ``cfg.data.size``/``spatial_dims``:
            a tensor, moved once to the training device (the data set is cached there), or
            :class:`~medsynth.data.stream.StreamedImages` on disk, read batch by batch by
            ``data.workers`` processes (:class:`~medsynth.train.batches.StreamBatches`; the same
            batches bit for bit).
        labels: ``(N,)`` int64 class labels (required when ``cfg.model.num_classes > 0``).
        run_dir: the run directory; with ``resume`` it must hold ``checkpoints/last.pt``.
        resume: continue exactly from the last checkpoint (step, optimisers, EMA, data order, RNG).
        changes: with ``resume``, the settings this resume changes, ``key -> (run's value, new
            value)`` (already applied to ``cfg``; only those that keep the resume exact, e.g.
            ``train.steps``): recorded in ``RUN/resumes.jsonl`` and the updated ``config.yaml``.
        progress: show a tqdm progress bar (the CLI turns it on; rank 0 only).
        grid_size: images per sample grid.
        on_tick: called with each stats line (rank 0 only).

    Returns:
        The run directory, the step reached, the run's wall seconds (before a resume included),
        the images per second of this call (steps x global batch / s) and the trained model.

    Raises:
        MedsynthError: bad data for the config, another process writing the run, a loss that
            became non-finite (one line each).
    """
    run_dir = Path(run_dir)
    if ddp.init_from_env().is_main:  # rank 0 alone writes the run (other nodes may not share its disk)
        run_dir.mkdir(parents=True, exist_ok=True)
    with hold_run(run_dir):
        return _train(cfg, images, labels, run_dir, resume=resume, changes=changes or {}, progress=progress,
                      grid_size=grid_size, on_tick=on_tick)


def _train(cfg: RunConfig, images: Tensor | StreamedImages, labels: Tensor | None, run_dir: Path, *, resume: bool,
           changes: dict[str, tuple[Any, Any]], progress: bool, grid_size: int,
           on_tick: Callable[[dict], None] | None) -> TrainResult:
    """:func:`train` with the run's lock held."""
    private = dpmod.dp_requested(cfg.train)  # differentially private D phase (medsynth/train/dp.py)
    if private:
        cfg = dpmod.prepare_config(cfg)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    check_data(cfg, images, labels)
    info = ddp.init_from_env()
    speed = _speed(cfg, info, private)
    dev = speed.device
    model, phases = _build_model(cfg, speed, info)
    opts = _optimizers(model, phases, speed.fused_adam)
    scaler = torch.amp.GradScaler(dev.type, enabled=speed.amp == "fp16")
    data = _batches(cfg, images, labels, info, speed)
    privacy = (dpmod.DPTraining(tc, model, phases, opts, images.shape[0], data.batch_size, images.shape[1:], dev)
               if private else dpmod.PrivacyHooks())
    clock = RunClock(tc)
    ckpt = Checkpointer(run_dir, cfg, model, opts, data.sampler, scaler, privacy, speed, info, clock)
    step = start_step = _open_run(run_dir, cfg, ckpt, clock, info, resume, changes)
    guard = LossGuard(run_dir, ckpt, info, dev)
    updater = PhaseUpdater(model, phases, opts, speed, scaler, data, privacy, guard, info)
    with open_run_board(run_dir, tc.tensorboard, info, start_step=step,
                        show_config=not resume or bool(changes)) as board:
        ticks = TickWriter(run_dir, tick_every=tc.tick_every, steps=tc.steps, batch_size=data.batch_size,
                           info=info, device=dev, extra=privacy.stats, on_tick=on_tick, progress=progress,
                           start_step=step, board=board)
        grids = GridWriter(model, cfg.model, run_dir, grid_size, tc.seed, info, dev, board)
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
        data.close()
        if step % tc.sample_every:
            grids.write(step)
        guard.checkpoint(step)
    ddp.barrier(info)
    rate = (step - start_step) * data.batch_size / max(clock.elapsed(), 1e-9)
    return TrainResult(run_dir, step, clock.seconds(), rate, model)


def _batches(cfg: RunConfig, images: Tensor | StreamedImages, labels: Tensor | None, info: ddp.DistInfo,
             speed: Speed) -> Batches | StreamBatches:
    """The run's batches: the images on the device, or streamed from the disk cache; one shared
    sampler (seeded ``train.seed + 1``) either way, so both give the same batches."""
    dev, tc = speed.device, cfg.train
    sampler = BatchSampler(images.shape[0], tc.batch_size, tc.seed + 1)
    fmt = speed.memory_format(cfg.model.spatial_dims)
    y = None if labels is None else labels.to(dev)
    if isinstance(images, StreamedImages):
        return StreamBatches(images, y, sampler, info, fmt, device=dev,
                             workers=loader_workers(cfg.data.workers, dev))
    return Batches(images.to(dev), y, sampler, info, fmt)


def check_data(cfg: RunConfig, images: Tensor | StreamedImages, labels: Tensor | None) -> None:
    """Whether the loaded images (and labels) suit the config: shape ``(N, channels, *size)``, and
    labels in ``0..num_classes-1`` for a class-conditional model.

    Raises:
        MedsynthError: one line saying what does not fit.
    """
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
              resume: bool, changes: dict[str, tuple[Any, Any]]) -> int:
    """Resume from the run's checkpoint (dropping stats lines written after it; recording the
    resume and its ``changes``) or start a new run directory (with its ``config.yaml``); start the
    clock. Returns the step training starts at."""
    if not resume:
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        clock.start()
        return 0
    resumed = ckpt.restore()
    clock.start(resumed.seconds, resumed.cpu_seconds)
    if info.is_main:
        truncate_stats(run_dir, resumed.step)
        _record_resume(run_dir, cfg, resumed.step, changes)
        log.info("resumed %s at step %d", run_dir, resumed.step)
    return resumed.step


def _record_resume(run_dir: Path, cfg: RunConfig, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append the resume to ``RUN/resumes.jsonl`` (UTC time, step resumed at, each change as
    ``{"from": run's value, "to": new value}``) and save the changed config as ``config.yaml``."""
    path = run_dir / RESUMES_FILE
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": int(step),
                       "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
    write_text(path, (path.read_text(encoding="utf-8") if path.is_file() else "") + line + "\n")
    if changes:
        save_config(cfg, run_dir / "config.yaml")


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
