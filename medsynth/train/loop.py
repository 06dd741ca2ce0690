"""The one training loop. It runs the phases a variant declares and never asks which model it is.

Each step: for every phase due (``step % every == 0``), ``repeats`` times: draw a batch, make
only that phase's parameters require grad, ``loss = model.loss(phase, batch, step)``,
backward, optimiser step. Then ``model.on_step_end(step)``. Every tick it appends a stats line;
at intervals it writes a sample grid of fixed latents and an atomic checkpoint holding the
model, optimisers, step, data-order state and RNG state, so ``resume`` continues exactly.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from medsynth.config import RunConfig, from_dict, save_config
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, GANVariant
from medsynth.models.registry import build_model
from medsynth.train.checkpoint import load_checkpoint, save_checkpoint
from medsynth.train.grid import save_grid

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/last.pt"


def new_run_dir(out: str | Path, tag: str) -> Path:
    """Next free ``<out>/<NNNNN>-<tag>`` folder (created)."""
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


class BatchSampler:
    """Shuffled epochs over ``n`` items drawn with its own seeded generator; its whole state
    (generator, current permutation, position) is checkpointed for exact resume."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n == 0:
            raise MedsynthError("data", "no training images")
        self.n, self.batch_size = n, min(batch_size, n)
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos: self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, sd: dict) -> None:
        self.gen.set_state(sd["gen"])
        self.perm = sd["perm"].clone()
        self.pos = int(sd["pos"])


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    seconds: float
    images_per_second: float


def _grid_labels(model: GANVariant, n: int) -> Tensor | None:
    return None if model.num_classes <= 0 else torch.arange(n) % model.num_classes


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

    Args:
        cfg: the resolved run config (saved as ``run_dir/config.yaml``).
        images: ``(N, C, *S)`` float32 in [-1, 1], matching ``cfg.data.size``/``spatial_dims``.
        labels: ``(N,)`` int64 class labels (required when ``cfg.model.num_classes > 0``).
        run_dir: the run directory; with ``resume`` it must hold ``checkpoints/last.pt``.
        resume: continue exactly from the last checkpoint (step, optimisers, EMA, data order, RNG).
        progress: show a tqdm progress bar (the CLI turns it on).
    """
    run_dir = Path(run_dir)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    expected = (cfg.model.channels,) + (cfg.model.size,) * cfg.model.spatial_dims
    if tuple(images.shape[1:]) != expected:
        raise MedsynthError("data", f"images have shape {tuple(images.shape[1:])}, model expects {expected}")
    if cfg.model.num_classes > 0:
        if labels is None or (labels < 0).any() or (labels >= cfg.model.num_classes).any():
            raise MedsynthError("data", f"class-conditional model needs labels in 0..{cfg.model.num_classes - 1} "
                                        "for every image (set model.num_classes=0 for unconditional training)")
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model)
    model.train()
    phases = model.phases()
    opts: dict[str, torch.optim.Optimizer] = {}
    for ph in phases:  # phases naming the same optimiser share one (settings from the first)
        if ph.opt_key not in opts:
            owners = [q for q in phases if q.opt_key == ph.opt_key]
            params = list({id(p): p for q in owners for p in model.sub_modules(q.modules)}.values())
            opts[ph.opt_key] = torch.optim.Adam(params, lr=ph.lr, betas=ph.betas)
    trainable = {id(p): p for ph in phases for p in model.sub_modules(ph.modules)}
    phase_ids = {ph.name: {id(p) for p in model.sub_modules(ph.modules)} for ph in phases}
    sampler = BatchSampler(images.shape[0], tc.batch_size, tc.seed + 1)
    step, seconds_before = 0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    if resume:
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        for name, sd in ck["optimizers"].items():
            opts[name].load_state_dict(sd)
        sampler.load_state_dict(ck["sampler"])
        torch.set_rng_state(ck["rng"])
        step, seconds_before = int(ck["step"]), float(ck["seconds"])
        _truncate_stats(run_dir / "stats.jsonl", step)
        log.info("resumed %s at step %d", run_dir, step)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizers": {k: o.state_dict() for k, o in opts.items()},
            "step": step, "seconds": seconds_before + (time.perf_counter() - t0),
            "sampler": sampler.state_dict(), "rng": torch.get_rng_state(), "config": cfg.to_dict(),
        })

    def grid() -> None:
        g = torch.Generator().manual_seed(tc.seed + 12345)
        x = model.sample(grid_size, labels=_grid_labels(model, grid_size), generator=g)
        save_grid(x, run_dir / "samples" / f"step_{step:06d}.png", nrow=8)

    t0 = time.perf_counter()
    deadline = None if tc.minutes is None else t0 + 60.0 * float(tc.minutes) - seconds_before
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=step, unit="step", dynamic_ncols=True)
    acc: dict[str, float] = {}
    acc_n: dict[str, int] = {}
    tick_t, imgs_seen = time.perf_counter(), 0
    start_step = step
    if step == 0:
        grid()
    while step < tc.steps and (deadline is None or time.perf_counter() < deadline):
        for ph in phases:
            if step % ph.every:
                continue
            ids = phase_ids[ph.name]
            for pid, p in trainable.items():
                p.requires_grad_(pid in ids)
            for _ in range(ph.repeats):
                idx = sampler.next()
                batch = Batch(images[idx], None if labels is None else labels[idx])
                imgs_seen += len(idx)
                loss, stats = model.loss(ph.name, batch, step)
                if not torch.isfinite(loss):
                    checkpoint()
                    raise MedsynthError(run_dir, f"loss of phase {ph.name} became {loss.item()} at step {step}; "
                                                 "last good state is in checkpoints/last.pt (try a lower learning rate)")
                opts[ph.opt_key].zero_grad(set_to_none=True)
                loss.backward()
                opts[ph.opt_key].step()
                for k, v in stats.items():
                    acc[k] = acc.get(k, 0.0) + float(v)
                    acc_n[k] = acc_n.get(k, 0) + 1
        for p in trainable.values():
            p.requires_grad_(True)
        model.on_step_end(step)
        step += 1
        if bar is not None:
            bar.update(1)
        if step % tc.tick_every == 0 or step == tc.steps:
            now = time.perf_counter()
            line = {"step": step, "kimg": round(step * tc.batch_size / 1000, 3),
                    "seconds": round(seconds_before + now - t0, 3),
                    "img_per_s": round(imgs_seen / max(now - tick_t, 1e-9), 2),
                    **{k: round(acc[k] / acc_n[k], 6) for k in acc}}
            with open(run_dir / "stats.jsonl", "a") as fh:
                fh.write(json.dumps(line) + "\n")
            if bar is not None:
                bar.set_postfix({k: f"{v:.3f}" for k, v in line.items() if k.startswith("loss/")})
            if on_tick is not None:
                on_tick(line)
            acc.clear(), acc_n.clear()
            tick_t, imgs_seen = now, 0
        if step % tc.sample_every == 0:
            grid()
        if step % tc.checkpoint_every == 0:
            checkpoint()
    if bar is not None:
        bar.close()
    if step % tc.sample_every:
        grid()
    checkpoint()
    seconds = time.perf_counter() - t0
    done = step - start_step
    return TrainResult(run_dir, step, seconds_before + seconds, done * tc.batch_size / max(seconds, 1e-9))


def _truncate_stats(path: Path, step: int) -> None:
    """Drop stats lines written after the checkpoint we resume from (nothing is counted twice)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def load_trained(run: str | Path, *, map_location: str = "cpu") -> tuple[RunConfig, GANVariant, dict]:
    """Rebuild a trained variant from a run directory (or a checkpoint file).

    Returns:
        (config, model in eval mode, checkpoint dict).
    """
    run = Path(run)
    ckpt = run / CHECKPOINT if run.is_dir() else run
    ck = load_checkpoint(ckpt)
    cfg = from_dict(ck["config"], str(ckpt))
    model = build_model(cfg.model)
    model.load_state_dict(ck["model"])
    model.eval()
    return cfg, model, ck
