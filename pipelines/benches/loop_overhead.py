"""The training loop's own overhead: DCGAN steps through ``medsynth.train.loop.train`` against a
hand-written minimal loop over the same modules and loss functions, as JSON.

Both sides train the registered ``dcgan`` variant (width 32, 64², batch 64, unconditional, no EMA
so that both do exactly the same arithmetic; float32, autocast, channels-last, compile and fused
Adam off) on the same in-memory random images in [-1, 1], with ``--threads`` torch threads:

* **loop**: :func:`medsynth.train.loop.train` (phases D then G, a stats line every ``--tick``
  steps; sample grids and checkpoints only at the start and end, outside the timed steps). Each
  segment of ``--tick`` steps is timed from the end of one ``on_tick`` call to the start of the
  next, so the loop's per-step and per-tick work (the stats line included) is inside the timing.
* **plain**: pytorch/examples' DCGAN loop over ``model.G`` / ``model.D`` with
  :func:`medsynth.losses.bce_d_loss` (real target 0.9) and :func:`~medsynth.losses.bce_g_loss`:
  a shuffled batch, ``zero_grad``, D loss on ``G(z)`` under ``no_grad``, backward, step; D frozen
  (``requires_grad_(False)``), ``zero_grad``, G loss on a fresh ``G(z)``, backward, step; no host
  reads at all. Its segments of ``--tick`` steps run inside the loop's ``on_tick`` callback.
  It does the variant's arithmetic: two G forward passes per step and no D weight gradients in
  G's update. (pytorch/examples' own order, one fake reused by both updates with D's weight
  gradients computed and thrown away in G's, ran at the same speed here: loop/plain 1.006.)

Images per second = steps x batch / s. The machine may be shared: the two alternate every
``--tick`` steps (a few seconds), after ``--warmup`` untimed steps of each, so a change of load
hits both alike; the record carries every pair's ratio (loop img/s / plain img/s, in wall time
and in the process's CPU time), their medians (``ratio_median`` is the figure to read) and the
load average before and after.

Usage::

    python -m pipelines.benches.loop_overhead --out reports/loop_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODEL = {"name": "dcgan", "width": 32, "latent_dim": 128, "num_classes": 0, "ema_beta": 0.0}
SPEED = {"amp": "off", "channels_last": False, "compile": False, "fused_adam": False, "device": "cpu"}


def _cfg(steps: int, tick: int, batch: int, threads: int, size: int, width: int):
    from medsynth.config import resolve

    return resolve(base={"model": {**MODEL, "width": width}, "data": {"size": size},
                         "train": {"steps": steps, "batch_size": batch, "tick_every": tick, "sample_every": steps,
                                   "checkpoint_every": steps, "threads": threads, "seed": 0, **SPEED}})


class Plain:
    """A minimal hand-written DCGAN loop over the variant's ``G``/``D`` and medsynth's BCE losses."""

    def __init__(self, cfg, images: torch.Tensor, batch: int):
        from medsynth.models.registry import build_model

        torch.manual_seed(0)
        model = build_model(cfg.model).train()
        self.G, self.D = model.G, model.D
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.model.lr_d, betas=tuple(cfg.model.betas))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.model.lr_g, betas=tuple(cfg.model.betas))
        self.images, self.batch, self.nz = images, batch, cfg.model.latent_dim
        self.gen = torch.Generator().manual_seed(1)
        self.perm, self.pos = torch.randperm(images.shape[0], generator=self.gen), 0

    def run(self, steps: int) -> None:
        from medsynth import losses

        G, D, b, n = self.G, self.D, self.batch, self.images.shape[0]
        for _ in range(steps):
            if self.pos + b > n:
                self.perm, self.pos = torch.randperm(n, generator=self.gen), 0
            real = self.images[self.perm[self.pos: self.pos + b]]
            self.pos += b
            self.opt_d.zero_grad(set_to_none=True)
            with torch.no_grad():
                fake = G(torch.randn(b, self.nz, generator=self.gen))
            losses.bce_d_loss(D(real), D(fake), 0.9).backward()
            self.opt_d.step()
            D.requires_grad_(False)
            self.opt_g.zero_grad(set_to_none=True)
            losses.bce_g_loss(D(G(torch.randn(b, self.nz, generator=self.gen)))).backward()
            self.opt_g.step()
            D.requires_grad_(True)


def measure(images: torch.Tensor, *, pairs: int, tick: int, warmup: int, batch: int, threads: int,
            width: int = 32) -> list[dict]:
    """``pairs`` alternations of ``tick`` loop steps and ``tick`` plain steps, after ``warmup`` steps of each.

    The plain segments run inside the loop's ``on_tick`` callback, so the two alternate every
    ``tick`` steps (a few seconds) and a change of the machine's load hits both alike. Each loop
    segment is timed from the end of one callback to the start of the next.
    """
    from medsynth.train.loop import train

    torch.set_num_threads(threads)
    cfg = _cfg(warmup + pairs * tick, tick, batch, threads, images.shape[-1], width)
    plain = Plain(cfg, images, batch)
    plain.run(warmup)
    out: list[dict] = []
    mark = {"wall": 0.0, "cpu": 0.0}

    def on_tick(line: dict) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        if line["step"] > warmup:
            loop_wall, loop_cpu = wall - mark["wall"], cpu - mark["cpu"]
            plain.run(tick)
            p_wall, p_cpu = time.perf_counter() - wall, time.process_time() - cpu
            n = tick * batch
            out.append({"loop_img_per_s": round(n / loop_wall, 2), "plain_img_per_s": round(n / p_wall, 2),
                        "ratio": round(p_wall / loop_wall, 4), "cpu_ratio": round(p_cpu / loop_cpu, 4)})
            print(f"pair {len(out)}/{pairs}: loop {n / loop_wall:.1f} img/s, plain "
                  f"{n / p_wall:.1f} img/s, ratio {p_wall / loop_wall:.3f} (CPU time {p_cpu / loop_cpu:.3f})",
                  flush=True)
        mark["wall"], mark["cpu"] = time.perf_counter(), time.process_time()

    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, images, None, Path(tmp) / "run", grid_size=1, on_tick=on_tick)
    return out


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=24, help="loop/plain alternations")
    ap.add_argument("--tick", type=int, default=4, help="steps per segment (the loop's stats tick)")
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps of each first (a multiple of --tick)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32, help="model.width (a tiny model exposes the per-step overhead)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-data", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=None, help="JSON record (default: print only)")
    a = ap.parse_args()
    a.warmup = a.tick * -(-a.warmup // a.tick)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(a.n_data, 1, a.size, a.size, generator=g) * 2 - 1
    load_before = _load()
    pairs = measure(images, pairs=a.pairs, tick=a.tick, warmup=a.warmup, batch=a.batch, threads=a.threads,
                    width=a.width)

    def med(key: str) -> float:
        return round(statistics.median(p[key] for p in pairs), 4)

    rec = {
        "what": "DCGAN steps through medsynth.train.loop.train vs a minimal hand-written loop over the same "
                "modules and losses, alternating every `tick` steps (img/s = steps x batch / wall s); "
                "ratio = loop img/s / plain img/s per pair, cpu_ratio the same in process CPU time",
        "model": {**MODEL, "width": a.width}, "size": a.size, "batch_size": a.batch, "speed": SPEED, "threads": a.threads,
        "tick": a.tick, "warmup": a.warmup, "n_data": a.n_data,
        "loop_img_per_s_median": med("loop_img_per_s"), "plain_img_per_s_median": med("plain_img_per_s"),
        "ratio_median": med("ratio"), "cpu_ratio_median": med("cpu_ratio"),
        "pairs": pairs,
        "load_average_before": load_before, "load_average_after": _load(),
        "torch": torch.__version__, "cpu": _cpu_name(), "logical_cores": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps({k: rec[k] for k in ("loop_img_per_s_median", "plain_img_per_s_median", "ratio_median",
                                          "cpu_ratio_median", "load_average_before", "load_average_after")}))
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rec, indent=2) + "\n")


if __name__ == "__main__":
    main()
