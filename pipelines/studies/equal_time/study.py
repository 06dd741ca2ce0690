"""Equal-budget comparison of GAN variants: train each for the same CPU time, then score them alike.

Every arm is ``medsynth train`` with its preset (``medsynth/presets/<modality>_<model>.yaml``) and
the same time cap, counted on the **process clock** (``train.clock=process``, ``train.threads=1``):
each run gets the same number of CPU-seconds of one core whatever else the machine is doing, which
on an idle core equals wall-clock time. ``--jobs`` runs train side by side (one per core).

Then every run is scored by ``medsynth evaluate`` with **one** feature encoder (trained once on the
real training images, saved as ``OUT/encoder.pt``, fingerprint in the results), so the Fréchet
distances compare: FD (mean ± sd over 5 real/synthetic splits) beside the real-vs-real floor,
KID, precision/recall/density/coverage, MS-SSIM diversity and the memorisation figure (fraction of
synthetic images nearer a training image than the real 1st percentile of real-to-real distances).
Each arm's sample grid (32 images from the EMA generator, fixed seed, classes alternating) is
written to ``OUT/grid_<arm>.png``.

An arm is ``model`` (its preset as is) or ``model:augment`` with ``augment`` one of ``none``,
``diffaug``, ``ada`` (``model.params.augment``: the engine's augmentation of everything D sees).
The pipeline is resumable: a finished arm is skipped, an interrupted one continues with
``--resume``; delete ``RUNS/<arm>`` to retrain it.

Usage::

    python -m pipelines.studies.equal_time --minutes 10 --out reports/equal_time/phantom \\
        --arms dcgan dcgan:diffaug wgan_gp wgan_gp:diffaug progan:none progan:diffaug \\
               stylegan2:none stylegan2:ada
    python -m pipelines.studies.equal_time --modality ct --data ../shared/data/lidc_nodules --minutes 10 \\
        --out reports/equal_time/lidc --arms dcgan stylegan2:ada ...

Writes ``OUT/results.json`` (every figure, per arm) and ``OUT/README.md`` (the table, each FD
against the reference arm's, default the first).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from medsynth.errors import MedsynthError
from medsynth.runs import checkpoint_progress
from pipelines.studies.budget import train_to_budget
from pipelines.studies.budget import train_command as train_command_for

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
AUGMENTS = ("none", "diffaug", "ada")


def parse_arm(arm: str) -> tuple[str, str | None]:
    """``"model[:augment]"`` -> (model, augment or None for the preset's own)."""
    model, _, aug = arm.partition(":")
    if not model or (aug and aug not in AUGMENTS):
        raise ValueError(f"arm {arm!r}: expected model or model:augment with augment in {AUGMENTS}")
    return model, (aug or None)


def arm_dir(runs: Path, arm: str) -> Path:
    return runs / arm.replace(":", "_")


def _new_args(arm: str, args) -> list[str]:
    model, _ = parse_arm(arm)
    out = ["--modality", args.modality, "--model", model, "--seed", str(args.seed)]
    return out + (["--data", args.data] if args.data != "default" else [])


def _sets(arm: str, args) -> list[str]:
    _, aug = parse_arm(arm)
    return [*args.set, *([f"model.params.augment={aug}"] if aug is not None else [])]


def train_command(arm: str, args, parent: Path, resume: Path | None) -> list[str]:
    """The ``medsynth train`` argv of ``arm`` (new run under ``parent``, or ``--resume``)."""
    return train_command_for(parent, resume, _new_args(arm, args), minutes=args.minutes, max_steps=args.max_steps,
                             sets=_sets(arm, args))


def train_arm(arm: str, args, runs: Path) -> Path:
    return train_to_budget(arm_dir(runs, arm), _new_args(arm, args), minutes=args.minutes, max_steps=args.max_steps,
                           sets=_sets(arm, args), name=arm)


def _stats_tail(run: Path) -> dict:
    lines = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines() if s.strip()]
    return lines[-1] if lines else {}


def _ms(d: dict) -> dict:
    return {"mean": float(d["mean"]), "sd": float(d["sd"])}


def _two_sample(ts: dict | None) -> dict | None:
    """The classifier two-sample test's AUROC, CI, p and real-half floor (``None``: scored before the test existed)."""
    if ts is None:
        return None
    if "skipped" in ts:
        return {"skipped": ts["skipped"]}
    fl = ts.get("floor") or {}
    return {"auroc": float(ts["auroc"]), "ci": [float(c) for c in ts["ci"]], "p_value": float(ts["p_value"]),
            "m": int(ts["m"]), "floor_auroc": float(fl["auroc"]) if fl else None,
            "floor_ci": [float(c) for c in fl["ci"]] if fl else None}


def _two_sample_cell(ts: dict | None) -> str:
    if ts is None:
        return "–"
    if "skipped" in ts:
        return "skipped"
    return f"{ts['auroc']:.3f} [{ts['ci'][0]:.3f}, {ts['ci'][1]:.3f}]"


def summarise(arm: str, run: Path, ev: dict) -> dict:
    from medsynth.config import load_config

    cfg = load_config(run / "config.yaml")
    info = checkpoint_progress(run)
    tail = _stats_tail(run)
    fid, priv = ev["fidelity"], ev["privacy"]
    pr = fid["prdc"]
    return {
        "arm": arm, "model": cfg.model.name, "augment": cfg.model.params.get("augment", "none"),
        "width": int(cfg.model.width),
        "run": str(run), "steps": info["step"], "batch_size": int(cfg.train.batch_size),
        "kimg_g": round(info["step"] * int(cfg.train.batch_size) / 1000, 2),
        "cpu_seconds": round(info["cpu_seconds"], 1), "wall_seconds": round(info["seconds"], 1),
        "g_img_per_cpu_s": round(info["step"] * int(cfg.train.batch_size) / max(info["cpu_seconds"], 1e-9), 2),
        "final_stats": {k: v for k, v in tail.items() if k.startswith(("aug/", "stage", "alpha"))},
        "fd": _ms(fid["fd"]["synthetic"]), "fd_floor": _ms(fid["fd"]["floor"]),
        "kid": _ms(fid["kid"]["synthetic"]),
        "precision": _ms(pr["synthetic"]["precision"]), "recall": _ms(pr["synthetic"]["recall"]),
        "density": _ms(pr["synthetic"]["density"]), "coverage": _ms(pr["synthetic"]["coverage"]),
        "prdc_floor": {k: _ms(v) for k, v in pr["floor"].items()},
        "ms_ssim_synthetic": float(fid["diversity_ms_ssim"]["synthetic"]["mean"]),
        "ms_ssim_real": float(fid["diversity_ms_ssim"]["real"]["mean"]),
        "dcr_frac_below_real_p1": float(priv["dcr"]["frac_below_real_p1"]),
        "dcr_median": float(priv["dcr"]["median"]), "dcr_real_median": float(priv["dcr"]["real_median"]),
        "memorisation_flag": bool(priv["memorisation_flag"]),
        "encoder_fingerprint": fid["encoder"]["fingerprint"],
        "two_sample": _two_sample(fid.get("two_sample")),
        "per_class": {c: ({"skipped": d["skipped"]} if "skipped" in d else
                          {"fd": _ms(d["fd"]), "fd_floor": _ms(d["fd_floor"]),
                           **{k: _ms(d["prdc"][k]) for k in ("precision", "recall", "coverage")}})
                      for c, d in fid.get("per_class", {}).items()},
    }


def _evaluated_with(path: Path, enc: Path, args, step: int) -> bool:
    """Whether ``path`` (an evaluation.json) was computed with encoder file ``enc``, the same
    sample count and seed, at checkpoint ``step``."""
    if not path.is_file():
        return False
    from medsynth.metrics.fidelity import encoder_fingerprint, load_encoder
    from medsynth.results import EVALUATION, read_result

    try:
        ev = read_result(path, EVALUATION)
    except MedsynthError as exc:  # written by an older medsynth or damaged: score again
        log.info("not reusing %s", exc)
        return False
    return (ev.get("step") == step and ev.get("n_synthetic_sampled") == args.count and ev.get("seed") == args.seed
            and ev["fidelity"]["encoder"]["fingerprint"] == encoder_fingerprint(load_encoder(enc)))


def write_grid(run: Path, path: Path, seed: int) -> None:
    from medsynth.train.grid import save_grid
    from medsynth.runs import load_trained

    _, model, _ = load_trained(run)
    labels = (torch.arange(32) % model.num_classes) if model.num_classes > 0 else None
    with torch.no_grad():
        x = model.sample(32, labels=labels, generator=torch.Generator().manual_seed(seed)).float().clamp(-1, 1)
    save_grid(x, path, nrow=8)


def markdown(res: dict) -> str:
    rows, ref = res["arms"], res["reference"]
    refd = next((r for r in rows if r["arm"] == ref), None)
    floor = rows[0]["fd_floor"] if rows else None
    out = [f"# Equal-budget comparison: {res['data']} ({res['modality']}, {res['size']}²)", "",
           f"Each arm trained for **{res['minutes']:g} CPU-minutes on one core** (`train.clock=process`, "
           f"`train.threads=1`), {res['jobs']} at a time, then scored by `medsynth evaluate` with one shared "
           f"encoder (fingerprint `{res['encoder_fingerprint']}`; `encoder.pt`, kept out of git); {res['count']} "
           f"synthetic images per arm. "
           f"FD: mean ± sd over 5 real/synthetic splits; real-vs-real floor "
           f"{floor['mean']:.1f} ± {floor['sd']:.1f}. Command: `{res['command']}`.", "",
           "| arm | steps | G kimg | G img/CPU-s | FD | FD vs " + ref + " | two-sample AUROC [95 % CI] | KID "
           "| precision | recall | density | coverage | MS-SSIM (real "
           + (f"{rows[0]['ms_ssim_real']:.3f}" if rows else "") + ") | memorised | grid |",
           "|" + " --- |" * 15]
    for r in rows:
        if refd is not None and r is not refd:
            diff = r["fd"]["mean"] - refd["fd"]["mean"]
            vs = f"{diff:+.1f} ({100 * diff / refd['fd']['mean']:+.0f} %)"
        else:
            vs = "reference"
        out.append(
            f"| {r['arm']} | {r['steps']} | {r['kimg_g']:g} | {r['g_img_per_cpu_s']:.1f} | "
            f"{r['fd']['mean']:.1f} ± {r['fd']['sd']:.1f} | {vs} | {_two_sample_cell(r.get('two_sample'))} | "
            f"{r['kid']['mean']:.3f} | "
            f"{r['precision']['mean']:.3f} | {r['recall']['mean']:.3f} | {r['density']['mean']:.3f} | "
            f"{r['coverage']['mean']:.3f} | {r['ms_ssim_synthetic']:.3f} | "
            f"{100 * r['dcr_frac_below_real_p1']:.1f} % | `grid_{r['arm'].replace(':', '_')}.png` |")
    classes = sorted({c for r in rows for c, d in r.get("per_class", {}).items() if "skipped" not in d}, key=int)
    if classes:
        out += ["", "By class (the same split protocol within each class; FD floor in brackets): FD / recall / "
                "coverage. Arms scored before per-class figures existed show –.", "",
                "| arm | " + " | ".join(f"class {c}" for c in classes) + " |", "|" + " --- |" * (1 + len(classes))]
        for r in rows:
            cells = []
            for c in classes:
                d = r.get("per_class", {}).get(c)
                cells.append("–" if not d or "skipped" in d else
                             f"{d['fd']['mean']:.1f} ({d['fd_floor']['mean']:.1f}) / {d['recall']['mean']:.2f} / "
                             f"{d['coverage']['mean']:.2f}")
            out.append(f"| {r['arm']} | " + " | ".join(cells) + " |")
    fl = next((r["two_sample"] for r in rows if r.get("two_sample") and r["two_sample"].get("floor_auroc") is not None),
              None)
    out += ["", "Two-sample AUROC: a small CNN trained to tell this arm's synthetic images from real training "
            "images, out-of-fold AUROC with a bootstrap CI (0.5 = indistinguishable, 1 = always told apart)"
            + (f"; the same test on two halves of the real images gives {fl['floor_auroc']:.3f}" if fl else "")
            + ". Memorised: synthetic images closer (pixel L2) to a training image than the real 1st "
            "percentile of training-to-training distances (flag above 5 %). MS-SSIM: mean over random "
            "pairs of synthetic images (lower = more diverse; the real set's value in the header).",
            "", f"Machine: {res['machine']}; torch {res['torch']}; {res['date']}."]
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The pipeline's command line (``--set`` is repeatable: ``--set a=1 --set b=2`` keeps both)."""
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.split("\n")[0])
    ap.add_argument("--arms", nargs="+", required=True, help="model or model:augment (none|diffaug|ada)")
    ap.add_argument("--minutes", type=float, default=10.0, help="CPU-minutes of one core per arm")
    ap.add_argument("--modality", default="xray")
    ap.add_argument("--data", default="default")
    ap.add_argument("--set", action="extend", nargs="+", default=[],
                    help="overrides applied to every arm; repeatable, each takes one or more key=value")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=10**7)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--reference", default=None, help="arm the FDs are compared with (default: the first)")
    ap.add_argument("--runs", default=None, help="run directories (default: runs/equal_time/<out name>)")
    ap.add_argument("--train-only", action="store_true", help="train the arms, score nothing (queue runs "
                    "while another invocation trains; a last invocation with every arm scores them)")
    ap.add_argument("--out", required=True)
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for a in args.arms:
        parse_arm(a)
    out = Path(args.out)
    runs = Path(args.runs) if args.runs else ROOT / "runs" / "equal_time" / out.name
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        run_dirs = dict(zip(args.arms, pool.map(lambda a: train_arm(a, args, runs), args.arms)))
    if args.train_only:
        return {"runs": {a: str(r) for a, r in run_dirs.items()}}

    from medsynth.metrics.evaluate import evaluate_run
    from medsynth.results import EVALUATION, read_result

    torch.set_num_threads(max(1, args.jobs))
    enc = out / "encoder.pt"
    rows = []
    for arm in args.arms:
        run = run_dirs[arm]
        done = run / "evaluate" / "evaluation.json"
        if enc.is_file() and _evaluated_with(done, enc, args, checkpoint_progress(run)["step"]):
            path = done  # already scored with this encoder at this step (resumed pipeline)
        elif enc.is_file():
            path = evaluate_run(run, count=args.count, seed=args.seed, encoder=enc)
        else:
            path = evaluate_run(run, count=args.count, seed=args.seed)
            shutil.copyfile(run / "evaluate" / "encoder.pt", enc)
        ev = read_result(path, EVALUATION)
        write_grid(run, out / f"grid_{arm.replace(':', '_')}.png", args.seed)
        rows.append(summarise(arm, run, ev))
        log.info("%s: FD %.1f ± %.1f (%d steps)", arm, rows[-1]["fd"]["mean"], rows[-1]["fd"]["sd"], rows[-1]["steps"])
    fps = {r["encoder_fingerprint"] for r in rows}
    if len(fps) != 1:
        raise RuntimeError(f"arms were scored with different encoders: {sorted(fps)}")
    from medsynth.config import load_config

    cfg0 = load_config(run_dirs[args.arms[0]] / "config.yaml")
    res = {
        "format": "medsynth-equal-time/1", "data": args.data, "modality": args.modality, "size": cfg0.data.size,
        "minutes": args.minutes, "clock": "process", "threads_per_run": 1, "jobs": args.jobs, "count": args.count,
        "seed": args.seed, "reference": args.reference or args.arms[0], "encoder_fingerprint": fps.pop(),
        "command": "python -m pipelines.studies.equal_time " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "date": _dt.date.today().isoformat(), "arms": rows,
    }
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "README.md").write_text(markdown(res))
    return res
