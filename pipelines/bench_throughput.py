"""Training throughput of every registered GAN variant on this machine (images/s), as JSON.

Each variant is built from its X-ray preset (``pipelines/xray_<name>.yaml``) when one exists,
else from the defaults, at 64² (``--size``) with batch 32, and trained for ``--steps`` steps of
the real loop semantics (every due phase, ``repeats`` fresh batches, Adam updates) after
``--warmup`` steps. ProGAN is measured at its full resolution (last stage, no fade).

Reported per model: ``img_per_s`` = steps x batch / s (training images per step, i.e. per G
update) and ``d_img_per_s`` = all images drawn by all phases / s (what ``stats.jsonl`` logs).

Usage::

    python pipelines/bench_throughput.py --threads 1 --out reports/throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch


def bench_model(name: str, *, size: int = 64, batch_size: int = 32, steps: int = 16, warmup: int = 2,
                seed: int = 0) -> dict:
    """Measure one variant; returns a dict of figures and the config used."""
    from medsynth.config import find_preset, resolve
    from medsynth.models.base import Batch
    from medsynth.models.registry import build_model

    preset = find_preset("xray", name)
    cfg = resolve(preset=preset, base={"model": {"name": name}, "data": {"size": size, "spatial_dims": 2}})
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    if hasattr(model, "set_stage"):
        model.set_stage(model.max_stage, 1.0)
    model.train()
    phases = model.phases()
    opts = {ph.name: torch.optim.Adam(list(model.sub_modules(ph.modules)), lr=ph.lr, betas=ph.betas) for ph in phases}
    trainable = {id(p): p for ph in phases for p in model.sub_modules(ph.modules)}
    ids = {ph.name: {id(p) for p in model.sub_modules(ph.modules)} for ph in phases}
    g = torch.Generator().manual_seed(seed)
    data = torch.rand((256,) + model.image_shape, generator=g) * 2 - 1
    labels = torch.randint(0, max(1, model.num_classes), (256,), generator=g) if model.num_classes else None

    def one_step(step: int) -> int:
        drawn = 0
        for ph in phases:
            if step % ph.every:
                continue
            for pid, p in trainable.items():
                p.requires_grad_(pid in ids[ph.name])
            for _ in range(ph.repeats):
                idx = torch.randint(0, data.shape[0], (batch_size,), generator=g)
                loss, _ = model.loss(ph.name, Batch(data[idx], None if labels is None else labels[idx]), step)
                opts[ph.name].zero_grad(set_to_none=True)
                loss.backward()
                opts[ph.name].step()
                drawn += batch_size
        for p in trainable.values():
            p.requires_grad_(True)
        model.on_step_end(step)
        if hasattr(model, "set_stage"):  # keep ProGAN at full resolution whatever its schedule says
            model.set_stage(model.max_stage, 1.0)
        return drawn

    for s in range(warmup):
        one_step(s)
    t0 = time.perf_counter()
    drawn = sum(one_step(warmup + s) for s in range(steps))
    dt = time.perf_counter() - t0
    with torch.no_grad():
        model.eval()
        t1 = time.perf_counter()
        model.sample(256, generator=torch.Generator().manual_seed(1))
        gen_dt = time.perf_counter() - t1
    return {
        "img_per_s": round(steps * batch_size / dt, 2),
        "d_img_per_s": round(drawn / dt, 2),
        "generate_img_per_s": round(256 / gen_dt, 1),
        "seconds_per_step": round(dt / steps, 4),
        "steps": steps,
        "phases": [{"name": ph.name, "every": ph.every, "repeats": ph.repeats} for ph in phases],
        "preset": None if preset is None else str(Path(preset).name),
        "width": cfg.model.width,
        "params": cfg.model.params,
        "parameters_G": sum(p.numel() for p in model.G.parameters()),
        "parameters_D": sum(p.numel() for p in model.D.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="variants to measure (default: all registered)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16, help="measured steps (>= 16 covers StyleGAN2's lazy R1)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from medsynth.models.registry import list_models

    names = args.models or list_models()
    result = {"device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)",
              "torch": torch.__version__, "threads": args.threads, "size": args.size,
              "batch_size": args.batch_size, "load_average_1m_start": round(os.getloadavg()[0], 2),
              "note": "shared machine: other processes may run; compare figures from one invocation only",
              "models": {}}
    for name in names:
        try:
            result["models"][name] = bench_model(name, size=args.size, batch_size=args.batch_size,
                                                 steps=args.steps, warmup=args.warmup)
        except Exception as exc:  # a variant that cannot train on plain images is reported, not fatal
            result["models"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({name: result["models"][name]}), file=sys.stderr, flush=True)
    result["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from medsynth.atomic import write_text

        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
