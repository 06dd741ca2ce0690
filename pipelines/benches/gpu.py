"""One prepared GPU throughput run: StyleGAN2 and ProGAN at 256², DCGAN at 64², ProGAN 3D at 64³.

Measures, with the real training loop (:func:`pipelines.benches.throughput.measure`), training
images/s, generation images/s and peak CUDA memory (``torch.cuda.max_memory_allocated``, reset
before training and before generation) for fp32 (every speed option off), bf16 autocast, and
bf16 + channels-last, then the loop's ``auto`` defaults for the device at 256²; then, if enough of
the budget is left, StyleGAN2 with ``torch.compile`` on top of bf16 + channels-last, in a
subprocess killed at its own timeout. GPU presets (``medsynth/presets/*_gpu.yaml``) give the
architectures and batch sizes.

Built for a hard wall-clock budget (``--budget``, default 300 s, imports and compile warm-ups
included; a watchdog exits 20 s after it): measurements run in priority order and are skipped once the budget is spent; each
is guarded (an exception becomes an ``error`` string and the rest still run); a progress line is
printed and flushed, and the JSON record rewritten atomically, after every measurement, so a
run cut short still leaves its data in ``<out>/gpu_bench.json``. Nothing is downloaded.

``--smoke`` runs the same plan on the CPU at tiny sizes (about a minute) to catch mistakes
before GPU time is spent.

Usage (from the repository root)::

    python -m pipelines.benches.gpu --out "$OUT"
    python -m pipelines.benches.gpu --smoke --out /tmp/gpu_bench_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runs from a plain checkout: no install needed
    sys.path.insert(0, str(ROOT))

T_START = time.perf_counter()

import torch  # noqa: E402

from pipelines.benches.throughput import CONFIGS, _subprocess_measure, device_name, measure, versions  # noqa: E402


def plan(smoke: bool) -> list[dict]:
    """Measurements in priority order: (label, kwargs for ``measure``)."""
    if smoke:
        tiny = ["model.width=4", "model.latent_dim=32"]
        sg = dict(name="stylegan2", preset="xray_stylegan2_gpu", size=16, batch_size=4,
                  overrides=tiny + ["model.params.mapping_layers=2", "model.params.channel_cap=32"])
        pg = dict(name="progan", preset="xray_progan_gpu", size=16, batch_size=4,
                  overrides=tiny)
        dc = dict(name="dcgan", size=16, batch_size=4, overrides=tiny)
        p3 = dict(name="progan", preset="ct3d_progan_gpu", size=8, spatial_dims=3,
                  modality="ct", batch_size=2, overrides=tiny)
        steps = dict(steps=2, warmup=1, gen_images=4, n_data=16)
    else:
        sg = dict(name="stylegan2", preset="xray_stylegan2_gpu", size=256, batch_size=None)
        pg = dict(name="progan", preset="xray_progan_gpu", size=256, batch_size=None)
        dc = dict(name="dcgan", size=64, batch_size=64)
        p3 = dict(name="progan", preset="ct3d_progan_gpu", size=64, spatial_dims=3,
                  modality="ct", batch_size=None)
        # >= 16 timed steps so StyleGAN2's lazy R1 (every 16) and path-length (every 4) terms are included
        steps = dict(steps=16, warmup=4, gen_images=256, n_data=512)
    out = []
    for label, kw in (("stylegan2_256", sg), ("progan_256", pg)):
        for cfg in ("fp32", "bf16", "bf16_cl"):
            out.append({"label": f"{label}_{cfg}", "config": cfg, **kw, **steps})
    for label, kw in (("dcgan_64", dc), ("progan3d_64" if not smoke else "progan3d_8", p3)):
        for cfg in ("fp32", "bf16"):
            out.append({"label": f"{label}_{cfg}", "config": cfg, **kw, **steps})
    for label, kw in (("stylegan2_256", sg), ("progan_256", pg)):  # the loop's defaults on this device
        out.append({"label": f"{label}_auto", "config": "auto", **kw, **steps})
    out.append({"label": "stylegan2_256_bf16_cl_compile", "config": "bf16_cl_compile", "subprocess": True, **sg,
                **steps})
    return out


def write_json(path: Path, record: dict) -> None:
    from medsynth.atomic import write_text

    write_text(path, json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_bench.json (the lead passes $OUT)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check the script end to end")
    ap.add_argument("--budget", type=float, default=None,
                    help="wall-clock seconds for everything (default 300 on GPU, 240 with --smoke); a "
                         "watchdog ends the process 20 s after it")
    ap.add_argument("--compile-timeout", type=float, default=None,
                    help="seconds for the compiled measurement (default 150 on GPU, 60 with --smoke)")
    ap.add_argument("--only", default=None,
                    help="comma-separated labels to run (e.g. stylegan2_256_fp32,stylegan2_256_bf16); default all")
    args = ap.parse_args(argv)
    budget = args.budget or (240.0 if args.smoke else 300.0)
    compile_timeout = args.compile_timeout or (60.0 if args.smoke else 150.0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_bench.json"
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: run with --smoke on a CPU machine", flush=True)
        return 2
    if args.smoke:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    record = {
        "device": device_name(device), "smoke": args.smoke, "versions": versions(),
        "budget_s": budget, "cpu_count": os.cpu_count(),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "memory": ("peak_cuda_train_mb / peak_cuda_generate_mb: torch.cuda.max_memory_allocated, reset before each"
                   if device == "cuda" else "peak_rss_mb: ru_maxrss of this process (cumulative over measurements)"),
        "configs": {k: CONFIGS[k] for k in ("fp32", "bf16", "bf16_cl", "auto", "bf16_cl_compile")},
        "results": [],
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        record["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}"}
    write_json(path, record)
    # last resort: whatever hangs, the process ends shortly after the budget (the JSON is already on disk)
    watchdog = threading.Timer(budget + 20.0, lambda: (print("[gpu_bench] watchdog: budget exceeded, exiting",
                                                             flush=True), os._exit(3)))
    watchdog.daemon = True
    watchdog.start()
    print(f"[gpu_bench] {record['device']} torch {torch.__version__} cuda {torch.version.cuda} "
          f"-> {path}", flush=True)
    fp32_rate: dict[str, float] = {}
    only = set(args.only.split(",")) if args.only else None
    for item in plan(args.smoke):
        if only is not None and item["label"] not in only:
            continue
        label, cname = item.pop("label"), item.pop("config")
        sub = item.pop("subprocess", False)
        elapsed = time.perf_counter() - T_START
        left = budget - elapsed
        entry = {"label": label, "config": cname}
        need = 60.0 if sub else 40.0
        if left < need:
            entry["skipped"] = f"budget: {left:.0f} s left of {budget:.0f} s"
        else:
            t0 = time.perf_counter()
            try:
                kw = {**item, "speed": CONFIGS[cname], "device": device}
                if sub:  # compile can take minutes: a subprocess we can kill at the timeout
                    r = _subprocess_measure(kw, torch.get_num_threads(), min(compile_timeout, left - 15.0))
                else:
                    r = measure(**kw)
                entry.update(r)
            except Exception as exc:  # one failure must not stop the rest
                entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                entry["traceback_tail"] = traceback.format_exc().splitlines()[-4:]
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
            entry["wall_s"] = round(time.perf_counter() - t0, 1)
            key = label.rsplit("_", 1)[0] if cname == "fp32" else None
            if key and "train_img_per_s" in entry:
                fp32_rate[key] = entry["train_img_per_s"]
            base = next((v for k, v in fp32_rate.items() if label.startswith(k + "_")), None)
            if base and "train_img_per_s" in entry:
                entry["ratio_vs_fp32"] = round(entry["train_img_per_s"] / base, 3)
        record["results"].append(entry)
        record["elapsed_s"] = round(time.perf_counter() - T_START, 1)
        write_json(path, record)
        figs = {k: entry.get(k) for k in ("train_img_per_s", "generate_img_per_s", "peak_cuda_train_mb",
                                          "peak_rss_mb", "ratio_vs_fp32", "error", "skipped") if entry.get(k) is not None}
        print(f"[gpu_bench] {record['elapsed_s']:6.1f}s {label}: {json.dumps(figs)}", flush=True)
    print(f"[gpu_bench] done in {time.perf_counter() - T_START:.1f} s -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
