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
    """Next free ``<out>/<NNNNN>-<tag>`` folder (created). Under ``torchrun`` rank 0 picks it
    and every rank gets the same path."""
    from medsynth.train import distributed as ddp

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
    #: the trained variant (on the training device; this rank's copy under torchrun)
    model: GANVariant | None = None


@dataclass(frozen=True)
class Speed:
    """The speed options a run actually uses (``TrainConfig``'s ``"auto"`` resolved for the device).

    Attributes:
        device: where the model and the (cached) images live.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` (autocast of each phase's forward pass).
        channels_last: channels-last (``channels_last_3d`` for volumes) memory format.
        compile: ``torch.compile`` of the modules the phases update.
        fused_adam: Adam's fused kernel.
        notes: why each ``"auto"`` went the way it did, and options that could not be used.
    """

    device: torch.device
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    fused_adam: bool = False
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"device": str(self.device), "amp": self.amp, "channels_last": self.channels_last,
                "compile": self.compile, "fused_adam": self.fused_adam, "notes": list(self.notes)}


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported()) or bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch without the probes: do not guess
        return False


def _flag(value, name: str) -> bool | None:
    if value == "auto":
        return None
    if isinstance(value, bool):
        return value
    raise MedsynthError(f"train.{name}", f"must be auto, true or false, got {value!r}")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``train.device`` -> a torch device (``auto``: CUDA if available; under torchrun on GPUs
    ``cuda:LOCAL_RANK``)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise MedsynthError("train.device", f"not a device: {spec!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MedsynthError("train.device", f"{spec!r} asked for but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def resolve_speed(tc, local_rank: int = 0, spatial_dims: int = 2) -> Speed:
    """Resolve ``TrainConfig``'s speed options for the device this process trains on.

    ``"auto"`` turns an option on only where it was measured to help (``reports/speed_options_cpu.json``
    for this project's CPU; the GPU record from ``pipelines/gpu_bench.py``):

    * ``amp``: bf16 on CUDA devices with bf16 support and on CPUs with AVX512-BF16/AMX (training
      images per CPU-second 1.28x StyleGAN2, 1.56x DCGAN at 64² on this project's CPU); otherwise
      off. fp16 is never chosen automatically.
    * ``channels_last``: on for 2D models (CPU: 1.15x / 1.17x alone, 1.26x / 1.27x on top of bf16;
      H100, ``reports/gpu_bench_h100.json``, on top of bf16 at 256²: StyleGAN2 1.13x, ProGAN 0.99x);
      off for 3D (not measured).
    * ``compile``: off (CPU: 1.14x for DCGAN but minutes of compilation under load, and R1/gradient
      penalty phases cannot run compiled; H100: StyleGAN2 256² did not finish compiling in 60 s).
    * ``fused_adam``: on where torch has a fused Adam kernel for the device (CPU: 1.10x DCGAN,
      1.01x StyleGAN2).
    """
    dev = resolve_device(str(tc.device), local_rank)
    notes: list[str] = []
    amp = "off" if tc.amp is False else str(tc.amp)  # YAML reads a bare `off` as false
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise MedsynthError("train.amp", f"must be auto, off, bf16 or fp16, got {amp!r}")
    if amp == "auto":
        if dev.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "off"
            notes.append(f"amp auto -> {amp} (CUDA bf16 support: {amp == 'bf16'})")
        elif dev.type == "cpu":
            amp = "bf16" if _cpu_has_bf16() else "off"
            notes.append(f"amp auto -> {amp} (CPU AVX512-BF16/AMX: {amp == 'bf16'})")
        else:
            amp = "off"
            notes.append(f"amp auto -> off (not measured on {dev.type})")
    cl = _flag(tc.channels_last, "channels_last")
    if cl is None:
        cl = dev.type in ("cpu", "cuda") and int(spatial_dims) == 2
        notes.append(f"channels_last auto -> {'on' if cl else 'off'} (measured gain: 2D models on CPU and H100)")
    comp = _flag(tc.compile, "compile")
    if comp is None:
        comp = False
        notes.append("compile auto -> off (small CPU gain, minutes of compilation; H100 compile > 60 s)")
    fused = _flag(tc.fused_adam, "fused_adam")
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    has_fused = dev.type in _get_fused_kernels_supported_devices()
    if fused is None:
        fused = has_fused
        notes.append(f"fused_adam auto -> {fused} (fused Adam kernel for {dev.type}: {has_fused})")
    elif fused and not has_fused:
        notes.append(f"fused_adam requested but torch has no fused Adam for {dev.type}: using the foreach Adam")
        fused = False
    return Speed(dev, amp, bool(cl), bool(comp), bool(fused), tuple(notes))


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
        on_tick: called with each stats line (rank 0 only).
    """
    from medsynth.train import distributed as ddp

    run_dir = Path(run_dir)
    from medsynth.train import dp as dpmod

    dp_on = dpmod.dp_requested(cfg.train)  # differentially private D phase (medsynth/train/dp.py)
    if dp_on:
        cfg = dpmod.prepare_config(cfg)
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
    info = ddp.init_from_env()
    speed = resolve_speed(tc, info.local_rank, cfg.model.spatial_dims)
    if dp_on:
        if info.enabled:
            raise MedsynthError("train.dp_noise_multiplier", "differentially private training runs in one process")
        speed = dpmod.speed_for_dp(speed)
    dev = speed.device
    if info.is_main:
        for note in speed.notes:
            log.info("speed: %s", note)
    mem_format = torch.channels_last if cfg.model.spatial_dims == 2 else torch.channels_last_3d
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model)
    model.train()
    model.to(dev)
    if info.enabled:
        model, n_bn = ddp.convert_sync_batchnorm(model, dev)
        if n_bn and info.is_main:
            log.info("distributed: %d BatchNorm layers synchronised over %d processes", n_bn, info.world)
    if speed.channels_last:  # only tensors of the image rank (StyleGAN2 3D keeps 4D modulation weights)
        rank = 2 + cfg.model.spatial_dims
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.dim() == rank:
                    t.data = t.data.contiguous(memory_format=mem_format)
    phases = model.phases()
    ddp.broadcast_tensors(list(model.parameters()) + list(model.buffers()), info)
    if info.enabled:  # a different noise stream per rank (init above was identical on all ranks)
        torch.manual_seed(tc.seed + 1_000_003 * (info.rank + 1))
    if speed.compile:
        for name in dict.fromkeys(m for ph in phases for m in ph.modules):
            getattr(model, name).compile()
    opts: dict[str, torch.optim.Optimizer] = {}
    for ph in phases:  # phases naming the same optimiser share one (settings from the first)
        if ph.opt_key not in opts:
            owners = [q for q in phases if q.opt_key == ph.opt_key]
            params = list({id(p): p for q in owners for p in model.sub_modules(q.modules)}.values())
            opts[ph.opt_key] = torch.optim.Adam(params, lr=ph.lr, betas=ph.betas,
                                                **({"fused": True} if speed.fused_adam else {}))
    trainable = {id(p): p for ph in phases for p in model.sub_modules(ph.modules)}
    phase_ids = {ph.name: {id(p) for p in model.sub_modules(ph.modules)} for ph in phases}
    phase_params = {ph.name: list({id(p): p for p in model.sub_modules(ph.modules)}.values()) for ph in phases}
    scaler = torch.amp.GradScaler(dev.type) if speed.amp == "fp16" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(speed.amp)
    sampler = BatchSampler(images.shape[0], tc.batch_size, tc.seed + 1)
    if sampler.batch_size % info.world:
        raise MedsynthError("train.batch_size", f"global batch {sampler.batch_size} is not divisible by the "
                                                f"{info.world} processes")
    dp = dpmod.DPTraining(tc, model, phases, opts, images.shape[0], sampler.batch_size, expected, dev) if dp_on else None
    images = images.to(dev)
    labels = None if labels is None else labels.to(dev)
    if tc.clock not in ("wall", "process"):
        raise MedsynthError("train.clock", f"must be 'wall' or 'process', got {tc.clock!r}")
    budget_clock = time.process_time if tc.clock == "process" else time.perf_counter
    step, seconds_before, cpu_before = 0, 0.0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    if resume:
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        for name, sd in ck["optimizers"].items():
            opts[name].load_state_dict(sd)
        sampler.load_state_dict(ck["sampler"])
        if dp is not None:
            dp.load_state_dict(ck["dp"])
        if scaler is not None and "scaler" in ck:
            scaler.load_state_dict(ck["scaler"])
        _restore_rng(ck, info, dev, tc.seed)
        step, seconds_before = int(ck["step"]), float(ck["seconds"])
        cpu_before = float(ck.get("cpu_seconds", 0.0))
        if info.is_main:
            _truncate_stats(run_dir / "stats.jsonl", step)
            log.info("resumed %s at step %d", run_dir, step)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        if info.is_main:
            save_config(cfg, run_dir / "config.yaml")

    def raise_if_bad() -> None:  # non-CPU devices: the finiteness flag is read per tick and before checkpoints
        if not check_each_update and ddp.any_rank(bool(bad), info, dev):
            raise MedsynthError(run_dir, f"a loss became non-finite before step {step}; the last good state is "
                                         "the previous checkpoint in checkpoints/last.pt (try a lower learning "
                                         "rate or train.amp=off)")

    def checkpoint() -> None:  # collective under torchrun (per-rank RNG states), written by rank 0
        raise_if_bad()
        rng = ddp.gather_objects(torch.get_rng_state(), info)
        cuda_rng = ddp.gather_objects(torch.cuda.get_rng_state(dev), info) if dev.type == "cuda" else None
        if not info.is_main:
            return
        payload = {
            "model": model.state_dict(), "optimizers": {k: o.state_dict() for k, o in opts.items()},
            "step": step, "seconds": seconds_before + (time.perf_counter() - t0),
            "cpu_seconds": cpu_before + (time.process_time() - c0),
            "sampler": sampler.state_dict(), "rng": rng[0], "config": cfg.to_dict(),
            "speed": speed.as_dict() | {"world_size": info.world},
        }
        if info.enabled:
            payload["rng_ranks"] = rng
        if cuda_rng is not None:
            payload["cuda_rng_ranks"] = cuda_rng
        if scaler is not None:
            payload["scaler"] = scaler.state_dict()
        if dp is not None:
            payload["dp"] = dp.state_dict()
            dp.write(run_dir)
        save_checkpoint(ckpt_path, payload)

    cpu_twin: list[GANVariant] = []

    def grid() -> None:  # the global CPU RNG is restored afterwards: grids never shift training's noise
        if not info.is_main:
            return
        with torch.random.fork_rng(devices=[]):
            _grid()

    def _grid() -> None:
        g = torch.Generator().manual_seed(tc.seed + 12345)
        src = model
        if dev.type != "cpu":  # sample() draws latents on the CPU: grids come from a CPU copy
            if not cpu_twin:
                cpu_twin.append(build_model(cfg.model))
            src = cpu_twin[0]
            src.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
        x = src.sample(grid_size, labels=_grid_labels(src, grid_size), generator=g)
        save_grid(x, run_dir / "samples" / f"step_{step:06d}.png", nrow=8)

    def run_phase(ph) -> tuple[Tensor, dict]:
        if dp is not None and not dp.is_private(ph):  # DP: phases other than the private one see no data
            batch = dp.public_batch()
        else:
            idx = dp.indices() if dp is not None else ddp.shard(sampler.next(), info)
            x = images[idx]
            if speed.channels_last:
                x = x.contiguous(memory_format=mem_format)
            batch = Batch(x, None if labels is None else labels[idx])
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, stats = model.loss(ph.name, batch, step)
        return loss, stats

    t0, c0 = time.perf_counter(), time.process_time()
    spent = seconds_before if tc.clock == "wall" else cpu_before
    deadline = None if tc.minutes is None else budget_clock() + 60.0 * float(tc.minutes) - spent
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=step, unit="step", dynamic_ncols=True)
    check_each_update = dev.type == "cpu"  # elsewhere a per-update check is a host sync: check per tick
    bad = torch.zeros((), dtype=torch.bool, device=dev)
    acc: dict[str, float | Tensor] = {}
    acc_n: dict[str, int] = {}
    tick_t, imgs_seen = time.perf_counter(), 0
    start_step = step
    eager_phases: set[str] = set()
    if step == 0:
        grid()
    while step < tc.steps and not _stop(deadline, budget_clock, info, dev):
        for ph in phases:
            if step % ph.every:
                continue
            ids = phase_ids[ph.name]
            for pid, p in trainable.items():
                p.requires_grad_(pid in ids)
            for _ in range(ph.repeats):
                if dp is not None and not dp.begin(ph):  # empty Poisson batch: noise-only update made
                    continue
                if speed.compile and ph.name not in eager_phases:
                    try:
                        loss, stats = run_phase(ph)
                        opts[ph.opt_key].zero_grad(set_to_none=True)
                        (loss if scaler is None else scaler.scale(loss)).backward()
                    except Exception as exc:  # e.g. double backward (R1, gradient penalty) under compile
                        eager_phases.add(ph.name)
                        log.warning("compile: phase %s failed compiled (%s: %s); it runs eagerly from now on",
                                    ph.name, type(exc).__name__, str(exc).splitlines()[0][:160])
                if not speed.compile or ph.name in eager_phases:
                    with _eager(speed.compile):
                        loss, stats = run_phase(ph)
                        opts[ph.opt_key].zero_grad(set_to_none=True)
                        if check_each_update:
                            _check_finite(bool(torch.isfinite(loss)), loss, ph, step, info, dev, checkpoint, run_dir)
                        (loss if scaler is None else scaler.scale(loss)).backward()
                elif check_each_update:
                    _check_finite(bool(torch.isfinite(loss)), loss, ph, step, info, dev, checkpoint, run_dir)
                if not check_each_update:
                    bad |= ~torch.isfinite(loss.detach())
                imgs_seen += sampler.batch_size // info.world
                ddp.all_reduce_gradients(phase_params[ph.name], info)
                if scaler is None:
                    opts[ph.opt_key].step()
                else:
                    scaler.step(opts[ph.opt_key])
                    scaler.update()
                if dp is not None:
                    dp.after_update(ph)
                for k, v in stats.items():
                    v = v.detach().float() if isinstance(v, Tensor) else float(v)
                    acc[k] = acc.get(k, 0.0) + v
                    acc_n[k] = acc_n.get(k, 0) + 1
        for p in trainable.values():
            p.requires_grad_(True)
        if dp is not None:
            dp.end_step()
        model.on_step_end(step)
        if info.enabled:  # BN running stats, ADA p, schedules: rank 0's values everywhere (as DDP does)
            ddp.broadcast_tensors(list(model.buffers()), info)
        step += 1
        if bar is not None:
            bar.update(1)
        if step % tc.tick_every == 0 or step == tc.steps:
            raise_if_bad()
            now = time.perf_counter()
            means = _tick_means(acc, acc_n, info, dev)
            line = {"step": step, "kimg": round(step * tc.batch_size / 1000, 3),
                    "seconds": round(seconds_before + now - t0, 3),
                    "cpu_seconds": round(cpu_before + time.process_time() - c0, 3),
                    "img_per_s": round(imgs_seen * info.world / max(now - tick_t, 1e-9), 2),
                    **{k: round(v, 6) for k, v in means.items()}, **({} if dp is None else dp.stats())}
            if info.is_main:
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
    ddp.barrier(info)
    seconds = time.perf_counter() - t0
    done = step - start_step
    return TrainResult(run_dir, step, seconds_before + seconds, done * tc.batch_size / max(seconds, 1e-9), model)


def _eager(compiled: bool):
    """Context forcing eager execution of compiled modules (a no-op context when nothing is compiled)."""
    import contextlib

    return torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()


def _stop(deadline: float | None, clock, info, dev: torch.device) -> bool:
    """Whether the time cap is reached on ``clock`` (all ranks agree, so none waits on a finished peer)."""
    if deadline is None:
        return False
    from medsynth.train.distributed import any_rank

    return any_rank(clock() >= deadline, info, dev)


def _check_finite(ok: bool, loss: Tensor, ph, step: int, info, dev, checkpoint, run_dir: Path) -> None:
    from medsynth.train.distributed import any_rank

    if any_rank(not ok, info, dev):
        checkpoint()
        raise MedsynthError(run_dir, f"loss of phase {ph.name} became {loss.item()} at step {step}; "
                                     "last good state is in checkpoints/last.pt (try a lower learning rate)")


def _tick_means(acc: dict, acc_n: dict, info, dev: torch.device) -> dict[str, float]:
    """Means of the accumulated stats: one host read per tick (over all ranks under torchrun)."""
    if not info.enabled and all(isinstance(v, float) for v in acc.values()):
        return {k: acc[k] / acc_n[k] for k in acc}
    from medsynth.train.distributed import gather_objects

    keys = sorted(set().union(*gather_objects(sorted(acc), info))) if info.enabled else list(acc)
    sums = torch.stack([torch.as_tensor(acc.get(k, 0.0), dtype=torch.float64, device=dev).reshape(())
                        for k in keys]) if keys else torch.zeros(0, dtype=torch.float64, device=dev)
    counts = torch.tensor([float(acc_n.get(k, 0)) for k in keys], dtype=torch.float64, device=dev)
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(sums)
        dist.all_reduce(counts)
    vals = (sums / counts.clamp_min(1)).tolist()
    return dict(zip(keys, vals))


def _restore_rng(ck: dict, info, dev: torch.device, seed: int) -> None:
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
