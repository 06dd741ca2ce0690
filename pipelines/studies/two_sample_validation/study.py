"""Validate the classifier two-sample test before anyone ranks generators by it.

:func:`medsynth.metrics.two_sample.two_sample_test` trains a small CNN to tell real from synthetic
images and reports its out-of-fold AUROC. Here the "synthetic" set is real images with a known
distortion of known strength, so the right answer is known: the AUROC must rise with the strength
of each distortion, and be near 0.5 when nothing is changed.

Data: the real X-ray images of ``sample_data/manifest.csv`` (phantom lung-spot radiographs, split
``train``, loaded as ``medsynth evaluate`` loads them: :func:`medsynth.data.dataset.load_image_set`,
64², [-1, 1]). They are split at random into two disjoint halves A and B; A stays as it is (the
"real" set), B is distorted (the "synthetic" set):

* ``identity``: B unchanged (expected AUROC ≈ 0.5); this run also reports the test's own floor
  (two halves of A);
* ``blur``: Gaussian blur, sigma 0.5, 1, 2 px (``scipy.ndimage.gaussian_filter``, reflect);
* ``noise``: additive Gaussian noise, sd 0.05, 0.1, 0.2 in [-1, 1] units, clipped to [-1, 1];
* ``checkerboard``: ``+ a * (-1)^(row + col)`` (a 2-pixel-period pattern, the artefact of stride-2
  transposed convolutions), amplitude 0.02, 0.05, 0.1, clipped to [-1, 1];
* extra, weaker strengths (:data:`EXTRA`, marked ``extra``): noise sd 0.01, 0.02 and checkerboard
  0.005, 0.01, because the weakest strengths above are already separated perfectly.

Checks (recorded, not enforced): within each distortion the AUROC does not fall as the strength
rises; the identity AUROC's 95% CI covers 0.5. Also a timing of the test on 300 + 300 images at
64² (the cost target of ``medsynth evaluate``: seconds, not minutes, on 2 CPU cores).

Run: ``python -m pipelines.studies.two_sample_validation [--threads 2] [--timing-threads 1 2] [--seed 0]``;
writes ``reports/two_sample_validation.json``. On a machine shared with other jobs, ``--threads 1``
is much faster (two threads wait on each other when a core is taken).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]

#: distortion name -> strengths, weakest first (the brief's three per distortion)
DISTORTIONS: dict[str, tuple[float, ...]] = {
    "identity": (0.0,),
    "blur": (0.5, 1.0, 2.0),
    "noise": (0.05, 0.1, 0.2),
    "checkerboard": (0.02, 0.05, 0.1),
}
#: weaker strengths added where the brief's weakest is already detected perfectly in a first run (AUROC ≈ 1 for
#: noise 0.05 and checkerboard 0.02 on these smooth phantom images): they show where detection starts
EXTRA: dict[str, tuple[float, ...]] = {"noise": (0.01, 0.02), "checkerboard": (0.005, 0.01)}
UNITS = {"identity": "", "blur": "sigma (px)", "noise": "sd ([-1, 1] units)", "checkerboard": "amplitude ([-1, 1] units)"}


def distort(x, kind: str, strength: float, *, seed: int):
    """``x`` ``(N, 1, H, W)`` in [-1, 1] with a known distortion, clipped to [-1, 1].

    Args:
        kind: ``identity``, ``blur`` (sigma px), ``noise`` (sd) or ``checkerboard`` (amplitude).
        strength: the distortion's parameter.
        seed: seeds the noise.
    """
    import torch
    from scipy import ndimage

    if kind == "identity":
        return x.clone()
    if kind == "blur":
        a = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, strength, strength), mode="reflect")
        return torch.from_numpy(a).clamp(-1, 1)
    if kind == "noise":
        g = torch.Generator().manual_seed(seed)
        return (x + strength * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    if kind == "checkerboard":
        h, w = x.shape[-2:]
        board = 1.0 - 2.0 * ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2).float()
        return (x + strength * board).clamp(-1, 1)
    raise ValueError(f"unknown distortion {kind!r}")


def machine_info() -> dict:
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _timing(images, *, seed: int, kw: dict, threads: int) -> dict:
    """``two_sample_test`` on 300 + 300 images at the images' size with ``threads`` torch threads
    (wall and process CPU seconds; torch's thread count is restored afterwards)."""
    import torch

    from medsynth.metrics.two_sample import two_sample_test

    rng = np.random.default_rng([seed, 9])
    n = len(images)
    real = images[torch.as_tensor(rng.permutation(n)[:300] % n)]
    synth = distort(images[torch.as_tensor(rng.permutation(n)[:300] % n)], "noise", 0.1, seed=seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        c0, t0 = time.process_time(), time.perf_counter()
        res = two_sample_test(real, synth, seed=seed, **kw)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(before)
    return {"threads": threads, "n_real": len(real), "n_synthetic": len(synth), "image_shape": list(real.shape[1:]),
            "wall_seconds": round(wall, 1), "process_cpu_seconds": round(cpu, 1), "load_average_before": load,
            "auroc": res["auroc"], "floor_auroc": res["floor"]["auroc"]}


def run(*, seed: int = 0, size: int = 64, threads: int | None = 2, folds: int | None = None,
        epochs: int | None = None, width: int | None = None, timing_threads: tuple[int, ...] = (1, 2),
        extra: bool = True,
        manifest: Path = ROOT / "sample_data" / "manifest.csv",
        out: Path | None = ROOT / "reports" / "two_sample_validation.json") -> dict:
    """Run every distortion; returns (and writes to ``out``) the record."""
    import torch

    from medsynth.data.dataset import load_image_set
    from medsynth.metrics import two_sample as ts

    if threads is not None:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    info = machine_info()
    kw = {k: v for k, v in (("folds", folds), ("epochs", epochs), ("width", width)) if v is not None}
    ds = load_image_set(manifest, modality="xray", size=size, split="train")
    x = ds.images
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    h = len(x) // 2
    a, b = x[torch.as_tensor(perm[:h])], x[torch.as_tensor(perm[h: 2 * h])]
    log.info("two_sample_validation: %d real images (%d per half), %d threads", len(x), h, torch.get_num_threads())
    rows, floor = [], None
    for kind, brief in DISTORTIONS.items():
        strengths = sorted(set(brief) | set(EXTRA.get(kind, ()) if extra else ()))
        for i, s in enumerate(strengths):
            syn = distort(b, kind, s, seed=seed * 100 + i)
            res = ts.two_sample_test(a, syn, seed=seed, floor=kind == "identity", **kw)
            if kind == "identity":
                floor = res["floor"]
            rows.append({"distortion": kind, "strength": s, "units": UNITS[kind], "extra": s not in brief,
                         "auroc": res["auroc"],
                         "ci": res["ci"], "p_value": res["p_value"], "fold_aurocs": res["fold_aurocs"],
                         "mean_abs_change": float((syn - b).abs().mean()), "seconds": res["seconds"]})
            log.info("%-12s %-5g AUROC %.3f [%.3f, %.3f] p=%.2g (%.1f s)", kind, s, res["auroc"], *res["ci"],
                     res["p_value"], res["seconds"])
    checks: dict = {}
    for kind in DISTORTIONS:
        seq = [r["auroc"] for r in rows if r["distortion"] == kind]
        if len(seq) > 1:
            drops = [max(0.0, p - q) for p, q in itertools.pairwise(seq)]
            checks[f"{kind}_rises_with_strength"] = {"aurocs": seq, "non_decreasing": all(d == 0 for d in drops),
                                                     "largest_drop": max(drops)}
    ident = next(r for r in rows if r["distortion"] == "identity")
    checks["identity_ci_covers_half"] = bool(ident["ci"][0] <= 0.5 <= ident["ci"][1])
    checks["identity_within_0.1_of_half"] = bool(abs(ident["auroc"] - 0.5) < 0.1)
    checks["all_passed"] = bool(all(v["non_decreasing"] for k, v in checks.items() if k.endswith("strength"))
                                and checks["identity_ci_covers_half"])
    settings = {"folds": kw.get("folds", ts.DEFAULT_FOLDS), "epochs": kw.get("epochs", ts.DEFAULT_EPOCHS),
                "width": kw.get("width", ts.DEFAULT_WIDTH), "batch_size": ts.DEFAULT_BATCH, "lr": ts.DEFAULT_LR,
                "n_boot": 1000, "seed": seed}
    report = {
        "study": "two_sample_validation",
        "question": "does the classifier two-sample AUROC rank known distortions of real images by strength, "
                    "and sit near 0.5 for no distortion?",
        "data": {"manifest": "sample_data/manifest.csv", "modality": "xray", "split": "train", "size": size,
                 "n_images": len(x), "half_a": int(h), "half_b": int(h),
                 "protocol": "random halves A (real) and B (distorted = 'synthetic'); the test's own floor is "
                             "two halves of A"},
        "settings": settings,
        "method": ts.two_sample_test.__module__ + ".two_sample_test: " + ts.READING,
        "machine": info,
        "conditions": rows,
        "floor": floor,
        "checks": checks,
    }
    if timing_threads:
        everything = load_image_set(manifest, modality="xray", size=size).images
        report["timing_300_vs_300"] = {
            "note": ("two_sample_test (main test + floor, default settings unless given) on 300 real images (of the "
                     "sample-data X-ray images, all splits) against 300 others of them with noise sd 0.1 (another "
                     "draw, overlapping); load_average_before is that of the whole machine: other jobs share it"),
            "runs": []}
        for t in timing_threads:
            res = _timing(everything, seed=seed, kw=kw, threads=t)
            report["timing_300_vs_300"]["runs"].append(res)
            log.info("timing 300 + 300 at %d², %d thread(s): %.1f s wall, %.1f s CPU", size, t, res["wall_seconds"],
                     res["process_cpu_seconds"])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["date"] = _dt.date.today().isoformat()
    if out is not None:
        from medsynth.atomic import write_text

        write_text(out, json.dumps(report, indent=2) + "\n")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0 = leave torch's default)")
    ap.add_argument("--timing-threads", type=int, nargs="*", default=[1, 2],
                    help="torch threads of each 300 + 300 timing run (none: no timing)")
    ap.add_argument("--folds", type=int, default=None, help="default: the test's default")
    ap.add_argument("--epochs", type=int, default=None, help="default: the test's default")
    ap.add_argument("--width", type=int, default=None, help="default: the test's default")
    ap.add_argument("--no-extra", action="store_true", help="only the brief's strengths (no weaker extra ones)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "two_sample_validation.json")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rep = run(seed=a.seed, size=a.size, threads=a.threads or None, folds=a.folds, epochs=a.epochs, width=a.width,
              timing_threads=tuple(a.timing_threads), extra=not a.no_extra, out=a.out)
    print(json.dumps({k: rep[k] for k in ("conditions", "floor", "checks")}, indent=2))
