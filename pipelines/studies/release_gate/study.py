"""The release gate's error rates on real data: fresh real images wrongly removed, copies caught.

For each data set (the phantom lung-spot radiographs, the phantom whole-chest radiographs, the
LIDC nodule crops when ``../shared/data`` is present), 64²: the gate is fitted on the training
split (its own feature encoder trained on the training images, 300 steps, as ``medsynth generate``
does) at ``--quantile``, then screens

* the held-out real images (validation + test patients): every removal is a false removal;
* copies of the training images: exact, with Gaussian noise (sd 0.02 / 0.05 / 0.1), brightened
  by +0.1, translated by 1 / 2 px, mirrored left-right: what a memorising generator could emit.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python -m pipelines.studies.release_gate --out reports/release_gate

Writes ``OUT/results.json`` and ``OUT/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from medsynth.atomic import atomic_path
from medsynth.data.dataset import load_image_set
from medsynth.metrics.fidelity import train_feature_encoder
from medsynth.metrics.gate import GateTally, fit_gate

ROOT = Path(__file__).resolve().parents[3]
SETS = (("lung-spot phantoms", ROOT / "sample_data" / "manifest.csv", "xray"),
        ("whole-chest phantoms", ROOT / "sample_data" / "chest", "xray"),
        ("LIDC nodule crops", ROOT.parent / "shared" / "data" / "lidc_nodules", "ct"))


def copies(x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Distorted copies of the training images ``x`` ``(N, 1, H, W)`` in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    out = {"exact copies": x}
    for sd in (0.02, 0.05, 0.1):
        out[f"copies + noise sd {sd}"] = (x + sd * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    out["copies + 0.1 brightness"] = (x + 0.1).clamp(-1, 1)
    for px in (1, 2):
        out[f"copies shifted {px} px"] = torch.roll(x, shifts=(px, px), dims=(-2, -1))
    out["mirrored copies"] = torch.flip(x, dims=[-1])
    return out


def measure(src: Path, modality: str, quantile: float, seed: int) -> dict:
    t0 = time.perf_counter()
    ds = load_image_set(src, modality=modality, size=64)
    tr = ds.split("train")
    fresh = ds.subset(np.array([s != "train" for s in ds.splits]))
    enc = train_feature_encoder(tr.images, seed=seed, steps=300)
    gate = fit_gate(tr.images, patient_ids=tr.patient_ids, encoder=enc, quantile=quantile)

    def rate(x: torch.Tensor) -> dict:
        t = GateTally()
        gate.screen(x, t)
        return {"n": t.screened, "removed": t.removed["total"], "rate": t.removed["total"] / t.screened,
                **{f"removed_{s}": t.removed[s] for s in gate.spaces}}

    out = {"n_train": len(tr), "n_train_patients": len(set(tr.patient_ids)), "n_fresh": len(fresh),
           "n_fresh_patients": len(set(fresh.patient_ids)), "quantile": quantile,
           "space_quantile": gate.space_quantile, "thresholds": gate.thresholds,
           "loo_removed_fraction": gate.context["loo_removed_fraction"],
           "fresh real (held-out patients)": rate(fresh.images)}
    out.update({k: rate(v) for k, v in copies(tr.images, seed).items()})
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(res: dict) -> str:
    lines = [f"# Release gate: false removals and caught copies ({res['date']})", "",
             f"Gate fitted on each set's training split at quantile {res['quantile']} (the target false-removal "
             "rate: per-space thresholds chosen so that the union of the two spaces removes that fraction of the "
             "training images leave-one-patient-out); removed = at or below the threshold in either space. "
             "Script: `pipelines/studies/release_gate/study.py`.", ""]
    names = list(res["sets"])
    rows = [k for k, v in next(iter(res["sets"].values())).items() if isinstance(v, dict) and "rate" in v]
    lines += ["| screened | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for r in rows:
        cells = [f"{res['sets'][n][r]['removed']}/{res['sets'][n][r]['n']} ({100 * res['sets'][n][r]['rate']:.1f} %)"
                 for n in names]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines += ["", "| set | training images (patients) | space quantile | thresholds (pixel / feature) |",
              "| --- | --- | --- | --- |"]
    for n in names:
        s = res["sets"][n]
        lines.append(f"| {n} | {s['n_train']} ({s['n_train_patients']}) | {s['space_quantile']:.4f} | "
                     f"{s['thresholds']['pixel']:.3f} / {s['thresholds']['feature']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipelines.studies.release_gate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantile", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/release_gate")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    res = {"date": _dt.date.today().isoformat(), "quantile": args.quantile, "seed": args.seed, "sets": {}}
    for name, src, modality in SETS:
        if src.exists():
            res["sets"][name] = measure(src, modality, args.quantile, args.seed)
    out = ROOT / args.out
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(res, indent=2))
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(markdown(res))
    return res
