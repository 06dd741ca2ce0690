"""Peak memory of multi-scale (tiled) generation vs whole-image generation, as JSON.

Both modes use the same trained-or-not ``multiscale`` model (``medsynth/models/multiscale.py``):
the coarse whole image from ``Gc``, then per level either fixed-size windows through the patch
generator (``tiled``) or the *same* fully convolutional patch generator run on the whole padded
level at once (``whole``: a whole-image generator of identical depth and width). Each
(dims, size, mode) is measured in a fresh Python subprocess generating one image:

* CPU: peak resident-set growth (glibc ``MALLOC_MMAP_THRESHOLD_=65536`` in the subprocess, so
  freed buffers go back to the system and RSS follows live memory) during generation, ``VmHWM`` after minus ``VmRSS`` before, with
  the high-water mark reset through ``/proc/self/clear_refs`` just before (Linux); where that
  reset is refused, ``ru_maxrss`` minus ``VmRSS`` before is used and the method says so.
* CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated()`` minus the memory allocated
  before generation (model weights excluded), after ``reset_peak_memory_stats``; the CPU RSS
  growth (the output is assembled on the CPU) is recorded beside it.

A training-step check runs three steps (every phase, Adam) of the multi-scale presets on random
images at their full size (``*_gpu.yaml`` on CUDA: 1024² batch 32, 256³ batch 8) and records peak
memory and seconds per step.

The seam check runs tiled and whole generation of the smallest size in one subprocess and
records the largest absolute difference. A failing or timed-out subprocess records its error and
the benchmark continues.

Usage::

    OMP_NUM_THREADS=1 python -m pipelines.benches.multiscale_memory       # -> reports/multiscale_memory_cpu.json
    python -m pipelines.benches.multiscale_memory --device cuda --out reports/gpu   # 128²..1024², 64³..256³
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Model settings per (device, dims): the CPU ones are small; the CUDA ones are the GPU presets'.
CONFIGS = {
    ("cpu", 2): {"coarse": 32, "patch": 32, "depth": 5, "hidden": 32, "tile_batch": 8, "width": 8},
    ("cpu", 3): {"coarse": 16, "patch": 32, "depth": 5, "hidden": 16, "tile_batch": 2, "width": 8},
    ("cuda", 2): {"coarse": 64, "patch": 128, "depth": 8, "hidden": 64, "tile_batch": 16, "width": 32},
    ("cuda", 3): {"coarse": 32, "patch": 64, "depth": 8, "hidden": 32, "tile_batch": 8, "width": 16},
}
SIZES = {("cpu", 2): [128, 256, 512], ("cpu", 3): [32, 64, 128],
         ("cuda", 2): [128, 256, 512, 1024], ("cuda", 3): [64, 128, 256]}


#: glibc's dynamic mmap threshold keeps freed multi-MB activation buffers in the heap, so RSS drifts
#: with the number of calls rather than with live memory (seen: 2D tiled 6 -> 21 MB over 128²..512²
#: without it, 6 -> 9 MB with it). A fixed threshold returns every buffer over 64 KiB on free.
MMAP_THRESHOLD = "65536"


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _build(spec: dict):
    import torch

    from medsynth.config import resolve
    from medsynth.models.registry import build_model

    c = spec["config"]
    params = {k: c[k] for k in ("coarse", "patch", "depth", "hidden", "tile_batch")}
    cfg = resolve(base={"model": {"name": "multiscale", "width": c["width"], "latent_dim": 64, "num_classes": 2,
                                  "params": params},
                        "data": {"size": spec["size"], "spatial_dims": spec["dims"]}})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval().to(spec["device"])
    with torch.no_grad():  # a visible residual, as after training
        for net in (model.Gp, model.Gp_ema):
            net.convs[-1].weight.mul_(10.0)
    return model


def train_worker(spec: dict) -> dict:
    """A few training steps (every phase, Adam) of a preset on random images at its full size;
    peak memory and seconds per step after one warm-up step."""
    import torch

    from medsynth.config import resolve
    from medsynth.models.base import Batch, StepInfo
    from medsynth.models.registry import build_model

    dev = spec["device"]
    cfg = resolve(preset=spec["preset"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(dev).train()
    phases = model.phases()
    opts = {ph.name: torch.optim.Adam(list(model.sub_modules(ph.modules)), lr=ph.lr, betas=ph.betas) for ph in phases}
    n = int(cfg.train.batch_size)
    x = torch.rand((n,) + model.image_shape, device=dev) * 2 - 1
    y = torch.randint(0, max(1, model.num_classes), (n,), device=dev) if model.num_classes else None

    def step(k: int) -> dict:
        stats = {}
        for ph in phases:
            loss, st = model.loss(ph.name, Batch(x, y), StepInfo(k, 8))
            opts[ph.name].zero_grad(set_to_none=True)
            loss.backward()
            opts[ph.name].step()
            stats.update(st)
        model.on_step_end(StepInfo(k, 8))
        return stats

    step(0)
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _status_kb("VmRSS")
    reset = _reset_hwm()
    t0 = time.perf_counter()
    steps = int(spec.get("steps", 3))
    for k in range(1, steps + 1):
        stats = step(k)
    if dev == "cuda":
        torch.cuda.synchronize()
    res = {"preset": spec["preset"], "size": cfg.data.size, "spatial_dims": cfg.data.spatial_dims, "batch_size": n,
           "seconds_per_step": round((time.perf_counter() - t0) / steps, 3),
           "losses_finite": all(v == v and abs(v) != float("inf") for v in stats.values()),
           "cpu_peak_rss_delta_mb": round(((_status_kb("VmHWM") if reset else
                                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) - rss0) / 1024, 2)}
    if dev == "cuda":
        res["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 2)
        res["cuda_note"] = "peak of all allocations (weights, Adam state, the random batch at full size included)"
    return res


def worker(spec: dict) -> dict:
    """Run one measurement in this (fresh) process; returns the figures."""
    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    dev = spec["device"]
    if spec["mode"] == "train":
        return train_worker(spec)
    model = _build(spec)
    z = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1])
    if spec["mode"] == "check":
        a = model.generate(z, y, tiled=True)
        b = model.generate(z, y, tiled=False)
        return {"max_abs_diff_tiled_vs_whole": float((a - b).abs().max()), "shape": list(a.shape)}
    # warm-up on a different, small input: kernel selection and thread pools are set up outside the window
    warm = model.__class__(dataclasses.replace(model.cfg, size=2 * model.coarse)).eval().to(dev)
    with torch.no_grad():
        warm.generate(z, y, tiled=True)
    del warm
    tiled = spec["mode"] == "tiled"
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = _status_kb("VmRSS")
    reset = _reset_hwm()
    t0 = time.perf_counter()
    out = model.generate(z, y, tiled=tiled)
    if dev == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = {"cpu_peak_rss_delta_mb": round((peak_kb - rss0) / 1024, 2),
           "cpu_method": "VmHWM reset via /proc/self/clear_refs minus VmRSS before" if reset
           else "ru_maxrss (lifetime peak; clear_refs refused) minus VmRSS before",
           "seconds": round(seconds, 3), "output_mb": round(out.numel() * 4 / 2**20, 3),
           "finite": bool(torch.isfinite(out).all())}
    if dev == "cuda":
        res["cuda_peak_allocated_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 2)
    return res


def _run_worker(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.get("threads", 1)), "PYTHONPATH": str(ROOT)}
    env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit code %d" % p.returncode])[-1][:500]}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"no result line; stderr: {p.stderr.strip()[-300:]}"}


def _device_info(device: str) -> dict:
    import torch

    info = {"device": device, "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        pass
    if device == "cuda":
        try:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_total_mb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**20)
        except Exception as exc:  # recorded, not fatal: the workers will report their own errors
            info["gpu_error"] = str(exc)
    return info


def _versions() -> dict:
    import torch

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "medsynth_git": rev.stdout.strip() or None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", default=str(ROOT / "reports"), help="output folder (multiscale_memory_<device>.json)")
    ap.add_argument("--sizes2d", default=None, help="comma-separated 2D output edges (default per device)")
    ap.add_argument("--sizes3d", default=None, help="comma-separated 3D output edges (default per device)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=0,
                    help="measurement subprocesses at a time (default: 4 on cuda, 1 on cpu)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement subprocess")
    ap.add_argument("--no-train-check", action="store_true",
                    help="skip the training-step check of the presets (CPU presets on cpu, *_gpu presets on cuda)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    sizes = {2: SIZES[(args.device, 2)], 3: SIZES[(args.device, 3)]}
    for dims, text in ((2, args.sizes2d), (3, args.sizes3d)):
        if text is not None:
            sizes[dims] = [int(s) for s in text.split(",") if s.strip()]
    t_start = time.perf_counter()
    specs = []
    for dims in (2, 3):
        conf = CONFIGS[(args.device, dims)]
        for size in sizes[dims]:
            for mode in ("tiled", "whole"):
                specs.append({"dims": dims, "size": size, "mode": mode, "device": args.device, "config": conf,
                              "threads": args.threads})
        if sizes[dims]:
            specs.append({"dims": dims, "size": sizes[dims][0], "mode": "check", "device": args.device,
                          "config": conf, "threads": args.threads})
    if not args.no_train_check:
        suffix = "_gpu" if args.device == "cuda" else ""
        for preset in (f"xray_multiscale{suffix}.yaml", f"ct3d_multiscale{suffix}.yaml"):
            specs.append({"mode": "train", "preset": preset, "device": args.device, "threads": args.threads})
    jobs = args.jobs or (4 if args.device == "cuda" else 1)

    def one(spec: dict) -> dict:
        res = _run_worker(spec, args.timeout)
        print(f"{spec['mode']} {spec.get('dims', '')}D {spec.get('size', spec.get('preset'))}: {res}", file=sys.stderr)
        return res

    # Peaks are per process (CUDA allocator stats, RSS), so parallel subprocesses do not disturb
    # the memory figures; their "seconds" are then indicative only.
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, specs))
    figures, checks, training, rows = [], [], [], {}
    for spec, res in zip(specs, results):
        if spec["mode"] in ("tiled", "whole"):
            key_ = (spec["dims"], spec["size"])
            if key_ not in rows:
                rows[key_] = {"dims": spec["dims"], "size": spec["size"]}
                figures.append(rows[key_])
            rows[key_][spec["mode"]] = res
        elif spec["mode"] == "check":
            checks.append({"dims": spec["dims"], "size": spec["size"], **res})
        else:
            training.append({"preset": spec["preset"], **res})
    key = "cuda_peak_allocated_mb" if args.device == "cuda" else "cpu_peak_rss_delta_mb"
    record = {
        "what": "peak memory of generating one image: multi-scale tiled vs the same patch generator on the whole "
                "image at once (medsynth/models/multiscale.py); fresh subprocess per figure",
        "measure": key, "device": _device_info(args.device), "versions": _versions(),
        "configs": {f"{d}d": CONFIGS[(args.device, d)] for d in (2, 3)}, "threads": args.threads,
        "parallel_jobs": jobs, "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD),
        "figures": figures, "seam_check": checks, "training_step_check": training, "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out) / f"multiscale_memory_{args.device}.json"
    sys.path.insert(0, str(ROOT))
    from medsynth.atomic import write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(record, indent=1) + "\n")
    for row in figures:
        t, w = (f"{row[m][key]} MB" if key in row[m] else f"error: {row[m].get('error')}" for m in ("tiled", "whole"))
        print(f"{row['dims']}D {row['size']}: tiled {t}, whole {w}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
