"""Diffusion against StyleGAN2 at equal CPU budget: fidelity, memorisation, membership attack, speed.

Protocol (declared here before any run; issue 19, point 1):

* **Arms**: ``stylegan2`` and ``diffusion`` (pixel-space DDPM training, DDIM sampling), each with
  its CPU preset as shipped (``medsynth/presets/<modality>_<model>.yaml``), nothing tuned here.
* **Data**: ``lidc`` (LIDC-IDRI axial nodule crops, lung window, 64², benign/malignant, the
  loader's patient-level split) and ``phantom`` (the embedded lung-spot radiographs,
  ``sample_data/manifest.csv``, 64², nodule / no nodule).
* **Budget**: ``--minutes`` CPU-minutes of one core per run (process clock, one thread: equal
  compute whatever else the machine runs), seeds ``--seeds``. Every run is resumable.
* **Scoring**: ``medsynth evaluate`` (``evaluate_run``) of ``--count`` samples with **one encoder
  per data set** (trained once on that set's real training images, saved as
  ``OUT/<data>/encoder.pt``): Fréchet distance beside the real-vs-real floor, precision / recall,
  the memorisation rate (fraction of synthetic images nearer a training image, in pixels, than the
  1st percentile of training-to-training leave-one-out distances), the distance-based membership
  attack (training vs held-out real images, scored by distance to the nearest synthetic image)
  with its held-out-vs-held-out control, and the classifier two-sample AUROC.
* **Sampling speed**: images/s of ``model.sample`` on one thread, 64 images after an 8-image
  warm-up, EMA generator (diffusion: its preset's DDIM steps).
* **Question**: which memorises more on our data? Read from the memorisation rate and the
  distance attack's excess over its control, per seed; the answer is stated with both seeds shown.

Usage (from the repository root)::

    python -m pipelines.studies.diffusion_vs_stylegan --minutes 10 --seeds 0 1 \\
        --out reports/diffusion_vs_stylegan
    python -m pipelines.studies.diffusion_vs_stylegan --models stylegan2 --train-only   # queue one arm

Writes ``OUT/results.json`` (every figure per run) and ``OUT/README.md`` (the table).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import platform
import time
from pathlib import Path

import torch

from medsynth.runs import checkpoint_progress
from pipelines.studies.budget import ROOT, train_to_budget

log = logging.getLogger(__name__)

MODELS = ("stylegan2", "diffusion")
DATASETS = {
    "lidc": {"modality": "ct", "data": str(ROOT.parent / "shared" / "data" / "lidc_nodules"),
             "label": "LIDC-IDRI nodule crops (lung window, 64², benign/malignant)"},
    "phantom": {"modality": "xray", "data": str(ROOT / "sample_data" / "manifest.csv"),
                "label": "phantom lung-spot radiographs (sample_data, 64², nodule/no nodule)"},
}


def run_parent(runs: Path, data: str, model: str, seed: int) -> Path:
    return runs / data / f"{model}_s{seed}"


def train(runs: Path, data: str, model: str, seed: int, args) -> Path:
    spec = DATASETS[data]
    new = ["--modality", spec["modality"], "--model", model, "--seed", str(seed), "--data", spec["data"]]
    return train_to_budget(run_parent(runs, data, model, seed), new, minutes=args.minutes, max_steps=10**7,
                           sets=[], name=f"{data}/{model}/s{seed}")


def sampling_speed(run: Path, n: int = 64) -> float:
    """Images/s of the EMA generator's ``sample`` on one thread (after an 8-image warm-up)."""
    from medsynth.runs import load_trained

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, model, _ = load_trained(run)
        labels = (torch.arange(n) % model.num_classes) if model.num_classes > 0 else None
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            model.sample(8, labels=None if labels is None else labels[:8], generator=g)
            t0 = time.perf_counter()
            model.sample(n, labels=labels, generator=g)
            return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def _ms(d: dict) -> dict:
    return {"mean": float(d["mean"]), "sd": float(d["sd"])}


def summarise(run: Path, ev: dict, img_s: float) -> dict:
    from medsynth.config import load_config

    cfg = load_config(run / "config.yaml")
    info = checkpoint_progress(run)
    fid, priv = ev["fidelity"], ev["privacy"]
    pr = fid["prdc"]["synthetic"]
    mia = priv["membership_inference"].get("distance", {})
    ts = fid.get("two_sample", {})
    return {
        "model": cfg.model.name, "steps": info["step"], "batch_size": int(cfg.train.batch_size),
        "cpu_seconds": round(info["cpu_seconds"], 1),
        "fd": _ms(fid["fd"]["synthetic"]), "fd_floor": _ms(fid["fd"]["floor"]),
        "precision": _ms(pr["precision"]), "recall": _ms(pr["recall"]),
        "memorisation": float(priv["dcr"]["frac_below_real_p1"]),
        "memorisation_p5": float(priv["dcr"]["frac_below_real_p5"]),
        "dcr_median": float(priv["dcr"]["median"]), "dcr_real_median": float(priv["dcr"]["real_median"]),
        "mia_distance": ({k: mia[k] for k in ("attack", "control", "excess_over_control")} if "attack" in mia
                         else {"skipped": priv["membership_inference"].get("skipped", "not run")}),
        "two_sample_auroc": ({"auroc": ts["auroc"], "lo": ts["ci"][0], "hi": ts["ci"][1],
                              "floor": ts["floor"]["auroc"]} if "auroc" in ts else None),
        "sampling_img_per_s_1thread": round(img_s, 2),
        "encoder_fingerprint": fid["encoder"]["fingerprint"],
    }


def score(run: Path, enc: Path, args) -> dict:
    """Evaluate ``run`` (reusing a finished evaluation of the same step, count, seed and encoder)."""
    from medsynth.metrics.evaluate import evaluate_run
    from medsynth.metrics.fidelity import encoder_fingerprint, load_encoder
    from medsynth.results import EVALUATION, read_result

    path = run / "evaluate" / "evaluation.json"
    step = checkpoint_progress(run)["step"]
    if enc.is_file() and path.is_file():
        ev = read_result(path, EVALUATION)
        if (ev.get("step") == step and ev.get("n_synthetic_sampled") == args.count
                and ev["fidelity"]["encoder"]["fingerprint"] == encoder_fingerprint(load_encoder(enc))):
            return ev
    if enc.is_file():
        path = evaluate_run(run, count=args.count, seed=0, encoder=enc)
    else:
        path = evaluate_run(run, count=args.count, seed=0)
        enc.parent.mkdir(parents=True, exist_ok=True)
        enc.write_bytes((run / "evaluate" / "encoder.pt").read_bytes())
    return read_result(path, EVALUATION)


def _f(d: dict | None, digits: int = 3) -> str:
    return "—" if not d else f"{d['mean']:.{digits}g} ± {d['sd']:.2g}"


def markdown(res: dict) -> str:
    lines = [f"# Diffusion vs StyleGAN2 at equal CPU budget ({res['date']})", "",
             f"Every run: {res['minutes']} CPU-minutes of one core (process clock), its CPU preset as shipped, "
             f"scored by `medsynth evaluate` ({res['count']} samples) with one encoder per data set. Protocol: "
             "`pipelines/studies/diffusion_vs_stylegan/study.py`. Memorisation = fraction of synthetic images "
             "nearer a training image (pixels) than the 1st percentile of training-to-training leave-one-out "
             "distances (≈0.01 for a generator that copies no more than real images resemble each other). "
             "Attack = distance-based membership attack AUROC (training vs held-out real images) [95 % CI], "
             "control = held-out vs held-out (≈0.5).", ""]
    for data, rows in res["runs"].items():
        lines += [f"## {DATASETS[data]['label']}", "",
                  "| model | seed | steps | FD (floor) | precision | recall | memorisation | attack AUROC | control "
                  "| two-sample AUROC | sampling img/s |", "|" + " --- |" * 11]
        for key, r in sorted(rows.items()):
            mia = r["mia_distance"]
            att = (f"{mia['attack']['auroc']:.3f} [{mia['attack']['lo']:.3f}, {mia['attack']['hi']:.3f}]"
                   if "attack" in mia else mia["skipped"])
            ctl = f"{mia['control']['auroc']:.3f}" if "control" in mia else "—"
            ts = r["two_sample_auroc"]
            lines.append(f"| {r['model']} | {key.rsplit('_s', 1)[1]} | {r['steps']} | {_f(r['fd'])} "
                         f"({_f(r['fd_floor'])}) | {_f(r['precision'], 2)} | {_f(r['recall'], 2)} | "
                         f"{r['memorisation']:.3f} | {att} | {ctl} | "
                         f"{'—' if ts is None else format(ts['auroc'], '.3f')} | {r['sampling_img_per_s_1thread']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines.studies.diffusion_vs_stylegan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--minutes", type=float, default=10.0, help="CPU-minutes of one core per run")
    ap.add_argument("--count", type=int, default=300, help="synthetic images per evaluation")
    ap.add_argument("--runs", default="runs/diffusion_vs_stylegan")
    ap.add_argument("--out", default="reports/diffusion_vs_stylegan")
    ap.add_argument("--train-only", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> dict | None:
    from medsynth.atomic import atomic_path

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    runs, out = ROOT / args.runs, ROOT / args.out
    done = {(d, m, s): train(runs, d, m, s, args) for d in args.data for s in args.seeds for m in args.models}
    if args.train_only:
        return None
    torch.set_num_threads(1)
    res_path = out / "results.json"
    res: dict = {"runs": {}}
    for (d, m, s), run in done.items():
        log.info("scoring %s/%s/s%d", d, m, s)
        row = summarise(run, score(run, out / d / "encoder.pt", args), sampling_speed(run))
        # merged into the file as it is now (several invocations may score different arms side by side)
        res = json.loads(res_path.read_text()) if res_path.is_file() else {"runs": {}}
        res.update({"date": _dt.date.today().isoformat(), "minutes": args.minutes, "count": args.count,
                    "host": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "protocol": "pipelines/studies/diffusion_vs_stylegan/study.py"})
        res["runs"].setdefault(d, {})[f"{m}_s{s}"] = row
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(res_path) as tmp:  # partial records survive an interrupted study
            tmp.write_text(json.dumps(res, indent=2))
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(markdown(res))
    return res
