"""Full resolution end to end (issue 18 point 4, the Lübeck case): whole-chest phantom radiographs at
512² and 1024² -> the multi-scale patch GAN for a few CPU-minutes -> full-resolution DICOM with the
field of view's pixel spacing -> a real | synthetic figure per size.

Protocol:

* **Data**: ``--n`` whole-chest phantom radiographs per size (DICOM DX, 384 mm field: 0.75 mm
  pixels at 512², 0.375 mm at 1024²; :func:`medsynth.phantom.sample.write_chest_sizes`, phantom
  grid 256 x 96 x 256 voxels of 1.5 mm in-plane), written once under ``--data-dir`` (default
  ``~/.cache/medsynth-bench/fullres/chest``; the bench ``pipelines/benches/fullres_memory.py``
  reuses them).
* **Model**: ``multiscale`` (``medsynth/presets/xray_multiscale.yaml``) with :data:`MODEL_SETS`:
  a 32² whole image, then one patch generator refining 32² tiles (+6 px context) level by level
  (4 levels to 512², 5 to 1024²); unconditional (the folder carries no labels), batch
  :data:`BATCH`.
* **Training**: ``--minutes`` CPU-minutes of one core (process clock, one thread,
  :func:`pipelines.studies.budget.train_to_budget`), ``data.stream=on`` (each batch read from the
  row cache on disk, never the whole set in memory), checkpoints every 20 steps: an interrupted
  study resumes where it stopped.
* **Generation**: ``medsynth generate RUN --format dicom --count --count`` (release gate on, as
  shipped): DICOM DX whose ImagerPixelSpacing is the training field of view / size (recorded by
  ``train`` in ``RUN/data_report.json``). Peak RSS of the generate process is measured (``/usr/bin/time``
  style, ``RUSAGE_CHILDREN``).
* **Figure**: ``OUT/real_vs_synthetic_<size>.png``: one real phantom radiograph | one synthetic, same
  size, each with its pixel spacing read back from its DICOM file.

Usage (from the repository root)::

    nice -n 19 python -m pipelines.studies.fullres --minutes 3 --out reports/fullres

Writes ``OUT/record.json`` (per size: steps, CPU-seconds, peak RSS of training and generation,
spacing of real and synthetic files, field of view) and the figures. Runs live in ``--runs``
(default ``runs/fullres``, not committed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from medsynth.runs import checkpoint_progress, find_run
from pipelines.studies.budget import ROOT, train_to_budget

log = logging.getLogger(__name__)

SIZES = (512, 1024)
#: the multi-scale model of the study (``--set`` overrides of the xray_multiscale preset)
MODEL_SETS = ("model.width=16", "model.latent_dim=64", "model.params.coarse=32", "model.params.patch=32",
              "model.params.depth=5", "model.params.hidden=32", "model.params.tile_batch=64")
BATCH = 8
DEFAULT_DATA = Path.home() / ".cache" / "medsynth-bench" / "fullres" / "chest"


def train_size(size: int, folder: Path, args) -> Path:
    """Train (or resume, or skip) the run of ``size`` to ``--minutes`` CPU-minutes."""
    new = ["--modality", "xray", "--model", "multiscale", "--data", str(folder), "--size", str(size),
           "--batch-size", str(BATCH), "--seed", "0", "--no-quick-check"]
    sets = [*MODEL_SETS, "data.stream=on", f"data.cache_dir={Path(args.data_dir).parent / 'cache'}",
            "train.checkpoint_every=20", "train.sample_every=100000", "train.tick_every=10"]
    return train_to_budget(ROOT / args.runs / f"chest_{size}", new, minutes=args.minutes, max_steps=10**7,
                           sets=sets, name=f"fullres/{size}")


def train_measured(size: int, folder: Path, args) -> tuple[Path, dict]:
    """:func:`train_size` in a fresh child process (``--train-one``): the peak RSS of its training
    subprocess is the child's ``RUSAGE_CHILDREN`` (the largest process it waited for: ``medsynth
    train``, or its data reader). Kept per run in ``train_rss.json`` as the largest over the
    segments of an interrupted-and-resumed training (a skipped, finished run adds none)."""
    cmd = [sys.executable, "-m", "pipelines.studies.fullres", "--train-one", str(size), "--minutes",
           str(args.minutes), "--data-dir", str(args.data_dir), "--runs", args.runs, "--n", str(args.n)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"training {size} failed: {p.stderr[-2000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    run = Path(res["run"])
    f = run.parent / "train_rss.json"
    old = json.loads(f.read_text()) if f.is_file() else {"segments": []}
    if res["trained"]:
        old["segments"].append(res["peak_rss_mib"])
        from medsynth.atomic import write_text

        write_text(f, json.dumps(old, indent=1) + "\n")
    return run, {"peak_rss_mib": max(old["segments"]) if old["segments"] else None,
                 "segments": old["segments"], "measure": "ru_maxrss of the medsynth train process (RUSAGE_CHILDREN "
                                                         "of a fresh parent), MiB"}


def generate(run: Path, out: Path, count: int) -> dict:
    """``medsynth generate RUN --format dicom`` in a subprocess (skipped when its manifest exists);
    its peak RSS from ``RUSAGE_CHILDREN`` (a fresh parent per call: this study runs one generate at a time)."""
    if (out / "manifest.csv").is_file() and (out / "generate_rss.json").is_file():
        return json.loads((out / "generate_rss.json").read_text())
    code = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(json.dumps({'rc': r.returncode, 'peak_rss_mib': "
            "round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}))")
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "medsynth.cli", "generate", str(run), "--count",
           str(count), "--format", "dicom", "--out", str(out), "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"generate failed: {p.stderr[-2000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"generate failed (exit {res['rc']}): {p.stderr[-2000:]}")
    res = {"peak_rss_mib": res["peak_rss_mib"], "count": count, "log": p.stderr.strip().splitlines()[-6:]}
    from medsynth.atomic import write_text

    write_text(out / "generate_rss.json", json.dumps(res, indent=1) + "\n")
    return res


def _dicom(path: Path) -> tuple[np.ndarray, list[float]]:
    """Display array in [0, 1] (MONOCHROME1 inverted) and ImagerPixelSpacing/PixelSpacing of a DX file."""
    import pydicom

    ds = pydicom.dcmread(path)
    a = ds.pixel_array.astype(np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        a = 1.0 - a
    sp = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    return a, [float(v) for v in sp]


def figure(real: Path, synth: Path, out: Path, size: int) -> dict:
    """Real | synthetic side by side at full size, captions with the spacing read from each file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsynth.atomic import atomic_path

    (ra, rsp), (sa, ssp) = _dicom(real), _dicom(synth)
    dpi = 100
    fig, axes = plt.subplots(1, 2, figsize=(2 * size / dpi * 0.5 + 0.4, size / dpi * 0.5 + 0.7), dpi=2 * dpi)
    for ax, a, sp, name in ((axes[0], ra, rsp, "real phantom radiograph"), (axes[1], sa, ssp, "synthetic (multiscale)")):
        ax.imshow(a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{name}\n{a.shape[0]}x{a.shape[1]} px, {sp[0]:.4g} x {sp[1]:.4g} mm pixels "
                     f"({a.shape[0] * sp[0]:.0f} mm field)", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return {"real_spacing_mm": rsp, "synthetic_spacing_mm": ssp, "real_shape": list(ra.shape),
            "synthetic_shape": list(sa.shape)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines.studies.fullres", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--n", type=int, default=48, help="phantom radiographs per size")
    ap.add_argument("--minutes", type=float, default=3.0, help="CPU-minutes of one core per training")
    ap.add_argument("--count", type=int, default=4, help="synthetic DICOM files per size")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--runs", default="runs/fullres")
    ap.add_argument("--out", default="reports/fullres")
    ap.add_argument("--train-one", type=int, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> dict:
    from medsynth.atomic import write_text
    from medsynth.phantom.sample import chest_field_mm, chest_grid, write_chest_sizes

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.train_one is not None:  # the child of train_measured
        before = checkpoint_progress(r) if (r := find_run(ROOT / args.runs / f"chest_{args.train_one}")) else None
        run = train_size(args.train_one, Path(args.data_dir) / str(args.train_one), args)
        after = checkpoint_progress(run)
        print(json.dumps({"run": str(run), "trained": before is None or after["step"] != before["step"],
                          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}))
        return {}
    out = ROOT / args.out
    folders = write_chest_sizes(Path(args.data_dir), n=args.n, sizes=args.sizes, seed=0)
    rec_path = out / "record.json"
    record = json.loads(rec_path.read_text()) if rec_path.is_file() else {"sizes": {}}
    for size in args.sizes:
        run, train_rss = train_measured(size, folders[size], args)
        prog = checkpoint_progress(run)
        report = json.loads((run / "data_report.json").read_text())
        gen = generate(run, ROOT / args.runs / f"chest_{size}_synthetic", args.count)
        synth = sorted((ROOT / args.runs / f"chest_{size}_synthetic").glob("*.dcm"))[0]
        real = sorted(folders[size].glob("*.dcm"))[0]
        fig = figure(real, synth, out / f"real_vs_synthetic_{size}.png", size)
        record["sizes"][str(size)] = {
            "steps": prog["step"], "cpu_seconds": round(float(prog["cpu_seconds"]), 1),
            "train": train_rss, "generate": gen,
            "field_of_view_mm_recorded": report.get("geometry", {}).get("field_of_view_mm"),
            "field_of_view_mm_phantom": list(chest_field_mm(chest_grid(size))),
            "loading": report.get("loading", {}).get("mode"), "figure": f"real_vs_synthetic_{size}.png", **fig,
            "spacing_times_size_mm": [round(s * size, 4) for s in fig["synthetic_spacing_mm"]]}
        record.update({"date": _dt.date.today().isoformat(), "minutes": args.minutes, "n_images": args.n,
                       "batch_size": BATCH, "model_sets": list(MODEL_SETS), "host": platform.processor() or
                       platform.machine(), "protocol": "pipelines/studies/fullres/study.py",
                       "note": "trained and generated under contention (2 shared cores); peak RSS figures are "
                               "per process, CPU-seconds on the process clock"})
        out.mkdir(parents=True, exist_ok=True)
        write_text(rec_path, json.dumps(record, indent=1) + "\n")  # after each size: an interrupted study keeps it
    return record
