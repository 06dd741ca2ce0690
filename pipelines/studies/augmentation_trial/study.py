"""The augmentation trial of issue 16: does synthetic data help tumour detection, with which generator?

The protocol is declared in a YAML file before anything runs (``lidc.yaml`` here for LIDC-IDRI;
``medsynth/downstream/trial_phantom.yaml`` for the phantom, ``medsynth trial``'s default); the
machinery is :mod:`medsynth.downstream.trial` (per-subset generators, nested synthetic doses,
equal-steps and duplicated-real controls, hierarchical bootstrap, Holm family). This script loads
the data, runs (or continues) the trial in ``--runs`` and, with ``--publish``, copies the shareable
results into ``reports/augmentation_trial/<data>/``: ``trial.json``, ``trial.md``, the two figures,
``protocol.yaml``, ``generators.json`` (every generator's fingerprint) and ``wall_time.json`` (the
trial's wall and CPU time from its part timings, and the same settings extrapolated to 4x the data).

Usage (from the repository root)::

    python -m pipelines.studies.augmentation_trial --data phantom --publish     # = medsynth trial + copy
    python -m pipelines.studies.augmentation_trial --data lidc --publish        # needs ../shared/data
    python -m pipelines.studies.augmentation_trial --data phantom --analyse-only --publish   # partial report
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from pipelines.studies.budget import ROOT

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LIDC = ROOT.parent / "shared" / "data" / "lidc_nodules"
PUBLISHED = ("trial.json", "trial.md", "dose_response.png", "fidelity_vs_gain.png", "protocol.yaml",
             "generators.json")


def protocol_path(data: str) -> Path:
    from medsynth.downstream.trial import DEFAULT_PROTOCOL

    return HERE / f"{data}.yaml" if data.startswith("lidc") else DEFAULT_PROTOCOL


def load_real(data: str, protocol):
    """The real ImageSet at the protocol's size (LIDC: :func:`medsynth.data.lidc.load_lidc`)."""
    d = protocol.data
    if data.startswith("lidc"):
        from medsynth.data.lidc import load_lidc

        if not LIDC.is_dir():
            raise SystemExit(f"LIDC data not found at {LIDC}")
        return load_lidc(LIDC, spatial_dims=int(d["spatial_dims"]), size=int(d["size"]),
                         ct_window=d.get("ct_window", "lung"))
    from medsynth.data.dataset import load_image_set

    return load_image_set(ROOT / "sample_data" / "manifest.csv", modality=d["modality"], size=int(d["size"]),
                          spatial_dims=int(d["spatial_dims"]), ct_window=d.get("ct_window", "lung"))


def wall_time(folder: Path) -> dict:
    """Wall / CPU seconds of the trial's parts by kind, and the same settings at 4x the data.

    At 4x the data, classifier and pool parts scale with the images they train on or make (fixed
    epochs, pools of ratio x n); generator runs keep their CPU budget; the encoder trains for a fixed
    number of steps and fidelity uses a fixed count. Times measured on a shared, contended CPU.
    """
    from medsynth.downstream.trial import trial_timings

    t = trial_timings(folder)
    by: dict[str, dict[str, float]] = {}
    for key, v in t.items():
        k = by.setdefault(key.split("/")[0], {"wall_s": 0.0, "cpu_s": 0.0, "n": 0})
        k["wall_s"] += v["wall_s"]
        k["cpu_s"] += v["cpu_s"]
        k["n"] += 1
    total = {m: sum(k[m] for k in by.values()) for m in ("wall_s", "cpu_s")}
    scale = {"classifier": 4.0, "pool": 4.0, "generator": 1.0, "encoder": 1.0}
    x4 = {m: sum(scale.get(name, 1.0) * k[m] for name, k in by.items()) for m in ("wall_s", "cpu_s")}
    return {"by_kind": by, "total": total, "extrapolated_4x_data": x4,
            "note": "sum over the parts run (a resumed trial's parts counted once); measured under contention "
                    "(about 5 engineers on 2 cores): wall time is not a throughput figure; 4x: classifier and "
                    "pool parts x4, generator runs (fixed CPU budget) and the encoder x1"}


def rerun_check(folder: Path, real, protocol, part: str) -> dict:
    """Rerun one finished classifier part in a scratch copy of the trial folder and compare.

    The copy holds the protocol, data record, encoder, pools and every part record except ``part``
    (``parts/classifier/<part>.json``), so the trial's next missing part is that one; it runs with
    the same seed and thread count. Returns ``{"part", "identical_predictions", "auroc", "auroc_rerun"}``.
    """
    import tempfile

    from medsynth.downstream.trial import run_trial

    rec = json.loads((folder / "parts" / "classifier" / f"{part}.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "trial"
        shutil.copytree(folder, scratch, ignore=shutil.ignore_patterns("generators", "*.png"))
        (scratch / "parts" / "classifier" / f"{part}.json").unlink()
        info = run_trial(real, protocol, scratch, trainer=None, max_parts=1, analyse=False)
        again = json.loads((scratch / "parts" / "classifier" / f"{part}.json").read_text())
    assert info["ran"] == 1
    return {"part": part, "identical_predictions": again["p_test"] == rec["p_test"],
            "auroc": rec["test_auroc"], "auroc_rerun": again["test_auroc"], "threads": protocol.threads}


def publish(folder: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)
    (dest / "wall_time.json").write_text(json.dumps(wall_time(folder), indent=1) + "\n")
    log.info("published %s -> %s", folder, dest)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines.studies.augmentation_trial", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("lidc", "lidc64", "phantom"), default="lidc")
    ap.add_argument("--runs", default="runs/augmentation_trial", help="parent of the trial folders")
    ap.add_argument("--out", default="reports/augmentation_trial", help="where --publish copies the results")
    ap.add_argument("--analyse-only", action="store_true", help="rewrite the analysis of what has run")
    ap.add_argument("--publish", action="store_true", help="copy the shareable results into --out/<data>/")
    ap.add_argument("--rerun-check", metavar="PART", help="rerun this finished classifier part (e.g. "
                    "stylegan2@1_f0.25_r0_s0) in a scratch copy; write --out/<data>/determinism.json")
    return ap


def main(argv: list[str] | None = None) -> None:
    from medsynth.cli import trial_trainer
    from medsynth.downstream.trial import analyse_trial, load_protocol, run_trial

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    folder = ROOT / args.runs / args.data
    if args.rerun_check:
        protocol = load_protocol(folder / "protocol.yaml")
        res = rerun_check(folder, load_real(args.data, protocol), protocol, args.rerun_check)
        dest = ROOT / args.out / args.data
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "determinism.json").write_text(json.dumps(res, indent=1) + "\n")
        log.info("rerun of %s: identical predictions %s", args.rerun_check, res["identical_predictions"])
        return
    if args.analyse_only:
        analyse_trial(folder)
    else:
        protocol = load_protocol(protocol_path(args.data))
        run_trial(load_real(args.data, protocol), protocol, folder, trainer=trial_trainer)
    if args.publish:
        publish(folder, ROOT / args.out / args.data)
