"""Training and generation throughput and peak memory of GAN variants, per speed option, as JSON.

Every measurement runs the real training loop (:func:`medsynth.train.loop.train`, so the speed
options ``train.amp``/``channels_last``/``compile``/``fused_adam`` are exactly the loop's) on
random images in [-1, 1]: ``--warmup`` steps, then ``--steps`` timed steps (rounded up to a
multiple of ``--warmup``; timed between the loop's stats ticks, one every ``--warmup`` steps), in
wall time and in the process's CPU time (``train_img_per_cpu_s``: on a shared machine with
``--threads 1`` the CPU-time figure is the one that other jobs hardly disturb). Then ``generate`` is timed on the training device under the same
autocast. Each variant is built from its X-ray preset (``medsynth/presets/xray_<name>.yaml``)
when one exists, at ``--size``; ProGAN is switched to its full resolution after the first step
(``kimg_per_stage`` tiny, no fade).

Reported per measurement: ``train_img_per_s`` = steps x batch / s (images per step, i.e. per G
update), ``d_img_per_s`` = all images drawn by all phases / s (what ``stats.jsonl`` logs),
``generate_img_per_s`` and peak memory:

* CPU: ``peak_rss_mb``, the process's peak resident set size (``resource.getrusage`` ``ru_maxrss``)
  — each configuration runs in a fresh subprocess, so the figure is that configuration's own
  (Python, torch and the data included).
* CUDA: ``peak_cuda_train_mb`` / ``peak_cuda_generate_mb`` from ``torch.cuda.max_memory_allocated``
  (reset before each part).

Named configurations (``--configs``): ``auto`` (the loop's defaults for the device), ``fp32``
(every option off: the baseline), ``fused`` / ``bf16`` / ``channels_last`` / ``compile`` (that one
option on top of fp32), ``bf16_cl`` (bf16 + channels-last), ``bf16_fused``. ``ratio_vs_fp32`` is
each configuration's training img/s over that of the most recent ``fp32`` run of the same model
in the same invocation: on a shared machine list ``fp32`` before every option (pairs) so load
drift between the two runs of a ratio stays small.

Usage::

    python -m pipelines.benches.throughput --threads 1 --out reports/throughput_cpu.json
    python -m pipelines.benches.throughput --threads 1 --models dcgan stylegan2 \\
        --configs fp32 bf16 fp32 channels_last fp32 fused fp32 bf16_cl fp32 compile \\
        --out reports/speed_options_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

OFF = {"amp": "off", "channels_last": False, "compile": False, "fused_adam": False}
CONFIGS: dict[str, dict] = {
    "auto": {"amp": "auto", "channels_last": "auto", "compile": "auto", "fused_adam": "auto"},
    "fp32": OFF,
    "fused": {**OFF, "fused_adam": True},
    "bf16": {**OFF, "amp": "bf16"},
    "fp16": {**OFF, "amp": "fp16"},
    "channels_last": {**OFF, "channels_last": True},
    "compile": {**OFF, "compile": True},
    "bf16_cl": {**OFF, "amp": "bf16", "channels_last": True},
    "bf16_fused": {**OFF, "amp": "bf16", "fused_adam": True},
    "bf16_cl_compile": {**OFF, "amp": "bf16", "channels_last": True, "compile": True},
}


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, " \
           f"capability {torch.backends.cpu.get_cpu_capability()})"


def versions() -> dict:
    from medsynth.runs import versions as v

    return {**v(), "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def build_cfg(name: str, size: int, spatial_dims: int, batch_size: int | None, speed: dict, *, preset: str | None = None,
              modality: str = "xray", overrides: list[str] | None = None):
    """The resolved RunConfig for one measurement (preset <- size/batch <- speed options)."""
    from medsynth.config import find_preset, locate_preset, resolve

    p = locate_preset(preset) if preset else find_preset(modality, name)
    params = {"kimg_per_stage": 1e-6, "fade_fraction": 0.0} if name == "progan" else {}
    cfg = resolve(preset=p, overrides=overrides,
                  base={"model": {"name": name, "params": params},
                        "data": {"size": size, "spatial_dims": spatial_dims, "modality": modality},
                        "train": {**({} if batch_size is None else {"batch_size": batch_size}), **speed}})
    return cfg, p


@torch.no_grad()
def generate_rate(model, n: int, batch: int, device: torch.device, amp: str) -> float:
    """Images/s of ``model.generate`` (EMA generator when present) on ``device``; latents drawn there."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    model.eval()

    def run(k: int) -> None:
        z = model.latent(k, device=device)
        lab = None if model.num_classes <= 0 else torch.arange(k, device=device) % model.num_classes
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model.generate(z, lab)

    run(min(batch, n))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(batch, n - done)
        run(k)
        done += k
    _sync(device)
    return n / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, *, size: int = 64, spatial_dims: int = 2, batch_size: int | None = 32, steps: int = 16,
            warmup: int = 5, speed: dict | None = None, preset: str | None = None, modality: str = "xray",
            device: str = "cpu", gen_images: int = 256, n_data: int = 256, overrides: list[str] | None = None,
            seed: int = 0) -> dict:
    """One measurement with the real loop; returns figures, the config and the resolved speed options.

    ``batch_size=None`` keeps the preset's; ``overrides`` are ``--set``-style ``key=value`` strings.
    """
    from medsynth.train.loop import train

    speed = dict(CONFIGS["auto"] if speed is None else speed)
    cfg, p = build_cfg(name, size, spatial_dims, batch_size, {**speed, "device": device}, preset=preset,
                       modality=modality, overrides=overrides)
    batch_size = cfg.train.batch_size  # None above: the preset's
    # stats ticks (one host sync each) every ``warmup`` steps; timing runs from the tick at ``warmup``
    steps = warmup * -(-steps // warmup)
    total = warmup + steps
    cfg.train.steps, cfg.train.tick_every, cfg.train.seed = total, warmup, seed
    cfg.train.sample_every = cfg.train.checkpoint_every = 10**9
    cfg.train.minutes = None
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.model.channels,) + (size,) * spatial_dims
    data = torch.rand((n_data,) + shape, generator=g) * 2 - 1
    labels = torch.randint(0, max(1, cfg.model.num_classes), (n_data,), generator=g) if cfg.model.num_classes else None
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    ticks: list[tuple[int, float, float, float]] = []

    def on_tick(line: dict) -> None:
        _sync(dev)
        ticks.append((line["step"], time.perf_counter(), line["img_per_s"], time.process_time()))

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory() as tmp:
        res = train(cfg, data, labels, Path(tmp) / "run", grid_size=1, on_tick=on_tick)
    peak_train = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    timed = [tk for tk in ticks if tk[0] >= warmup]
    dt = timed[-1][1] - timed[0][1]
    cpu_dt = timed[-1][3] - timed[0][3]
    drawn = sum(r * (t1 - t0) for (_, t0, _, _), (_, t1, r, _) in zip(timed, timed[1:]))
    model = res.model
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    from medsynth.train.speed import resolve_speed

    resolved = resolve_speed(cfg.train, spatial_dims=spatial_dims)
    gen = generate_rate(model, gen_images, min(64, gen_images), dev, resolved.amp)
    out = {
        "model": name, "size": size, "spatial_dims": spatial_dims, "batch_size": batch_size,
        "train_img_per_s": round(steps * batch_size / dt, 3),
        "d_img_per_s": round(drawn / dt, 3),
        "seconds_per_step": round(dt / steps, 4),
        # images per second of this process's CPU time (all its threads): with one thread on a shared
        # machine this is what the code costs, unlike wall time it hardly depends on other jobs
        "train_img_per_cpu_s": round(steps * batch_size / max(cpu_dt, 1e-9), 3),
        "generate_img_per_s": round(gen, 2),
        "steps": steps, "warmup": warmup,
        "requested": speed, "resolved": resolved.as_dict(),
        "preset": None if p is None else Path(p).name, "width": cfg.model.width, "params": cfg.model.params,
        "parameters_G": sum(q.numel() for q in model.G.parameters()),
        "parameters_D": sum(q.numel() for q in model.D.parameters()),
    }
    if dev.type == "cuda":
        out["peak_cuda_train_mb"] = round(peak_train, 1)
        out["peak_cuda_generate_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    else:
        import resource

        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    return out


def _subprocess_measure(kw: dict, threads: int, timeout: float) -> dict:
    """:func:`measure` in a fresh Python process (own peak RSS); errors come back as ``{"error": ...}``."""
    code = ("import json, sys, torch; torch.set_num_threads(%d); sys.path.insert(0, %r); "
            "from pipelines.benches.throughput import measure; "
            "print('@@' + json.dumps(measure(**json.loads(sys.argv[1]))))" % (threads, str(Path(__file__).resolve().parents[2])))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(kw)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:300]}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="variants to measure (default: all registered)")
    ap.add_argument("--configs", nargs="*", default=["auto"], choices=sorted(CONFIGS),
                    help="named speed configurations (fp32 = every option off; may repeat: ratios are "
                         "against the latest fp32)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--spatial-dims", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16, help="timed steps (>= 16 covers StyleGAN2's lazy R1)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    ap.add_argument("--out", default=None, help="also write the JSON here (atomically, after every measurement)")
    args = ap.parse_args(argv)
    from medsynth.atomic import write_text
    from medsynth.models.registry import list_models

    names = args.models or list_models()
    result = {"device": device_name("cpu"), "versions": versions(), "threads": args.threads,
              "size": args.size, "spatial_dims": args.spatial_dims, "batch_size": args.batch_size,
              "steps": args.steps, "warmup": args.warmup, "load_average_1m_start": round(os.getloadavg()[0], 2),
              "memory": "peak_rss_mb: ru_maxrss of a fresh subprocess per measurement (whole process)",
              "note": f"--threads {args.threads} on a shared 2-core machine (other jobs running: see load "
                      "averages); compare figures within one record only",
              "configs": {c: CONFIGS[c] for c in args.configs}, "order": args.configs,
              "ratios": "ratio_vs_fp32: training img/s (wall) over the most recent fp32 run of the same model; "
                        "cpu_time_ratio_vs_fp32: the same with img per CPU-second of the process (robust to "
                        "other jobs on a shared machine when --threads 1)",
              "results": []}
    for name in names:
        base = None
        for cname in args.configs:
            kw = dict(name=name, size=args.size, spatial_dims=args.spatial_dims, batch_size=args.batch_size,
                      steps=args.steps, warmup=args.warmup, speed=CONFIGS[cname], device="cpu")
            t0 = time.perf_counter()
            r = _subprocess_measure(kw, args.threads, args.timeout)
            r = {"config": cname, **r, "wall_s": round(time.perf_counter() - t0, 1),
                 "load_average_1m": round(os.getloadavg()[0], 2)}
            if cname == "fp32" and "error" not in r:
                base = r["train_img_per_s"], r["generate_img_per_s"], r["train_img_per_cpu_s"]
            if base and "error" not in r:
                r["ratio_vs_fp32"] = round(r["train_img_per_s"] / base[0], 3)
                r["cpu_time_ratio_vs_fp32"] = round(r["train_img_per_cpu_s"] / base[2], 3)
                r["generate_ratio_vs_fp32"] = round(r["generate_img_per_s"] / base[1], 3)
            if "model" not in r:
                r["model"] = name
            result["results"].append(r)
            print(json.dumps({k: r.get(k) for k in ("model", "config", "train_img_per_s", "train_img_per_cpu_s",
                                                     "generate_img_per_s", "peak_rss_mb", "ratio_vs_fp32",
                                                     "cpu_time_ratio_vs_fp32", "error")}),
                  file=sys.stderr, flush=True)
            if args.out:
                write_text(args.out, json.dumps(result, indent=2) + "\n")
    result["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
