"""An example reader study on the phantom, read by three simulated readers.

What it shows: that ``medsynth reader-study build`` / ``score`` measure what they claim, with readers
whose behaviour is known in advance.

1. **Generator**: a quick DCGAN run of the default X-ray preset (``xray_dcgan``: 64 px, class-
   conditional on nodule present) trained on the lung-spot phantom radiographs
   (``sample_data/manifest.csv``) for ``--minutes`` of process CPU time on one thread
   (:func:`pipelines.studies.budget.train_to_budget`), or an existing run (``--run``).
2. **Study**: ``reader_study.build``: ``--n-real`` phantom radiographs and ``--n-synthetic`` images
   sampled now from the run, shuffled, written as blinded ``case_NNNN.png`` files into the work
   folder (``runs/reader_study_example/``, never committed), key beside it.
3. **Readers** (each writes an answer CSV ``case, reader, rating`` on the 1-5 confidence scale):

   * ``perfect``: reads the key: 5 for every real case, 1 for every synthetic one (AUC must be 1);
   * ``random``: a seeded uniform rating 1-5, blind to everything (AUC ~ 0.5);
   * ``centre_spot``: reads only the case files and rates by the contrast of the centre of the
     image against its surround (mean of the disk ``r < size/8`` minus the ring
     ``3/16 <= r/size < 5/16``), in quintiles, brighter centre = more real. The bias is one the
     phantom images carry: a lung-spot radiograph with a nodule is framed on it, so a nodule
     (larger = brighter) lifts the centre (on the 420 sample radiographs this contrast
     separates nodule from no-nodule images with AUC 0.74). A reader with this bias scores above
     0.5 where real images have brighter centres than synthetic ones, below where they are darker,
     and ~0.5 where the two do not differ.
4. **Control** (no generator): the same three readers on a real-vs-real study, two disjoint patient
   halves of the phantom radiographs as "real" and "synthetic": what a perfect generator would
   give (perfect reader still 1, the two blind readers ~0.5).

Writes ``reader_study.json`` + ``reader_study.md`` (``--out``, default
``reports/reader_study_example/``) and ``control/`` the same for the control. Case images stay in
the work folder.

Run: ``OMP_NUM_THREADS=1 python -m pipelines.studies.reader_study_example [--minutes 2] [--run RUN]
[--n-real 50] [--n-synthetic 50] [--seed 0] [--out DIR] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------------------- simulated readers
def case_names(key_folder: str | Path) -> list[str]:
    """The study's cases in case order (from the key)."""
    from medsynth.metrics.reader_study import read_key

    return list(read_key(key_folder)[0]["case"])


def perfect_reader(key_folder: str | Path, name: str = "perfect") -> pd.DataFrame:
    """Answers from the key itself: 5 (binary: real) for real cases, 1 (synthetic) for synthetic ones."""
    from medsynth.metrics.reader_study import read_key

    key, study = read_key(key_folder)
    real = key["truth"] == "real"
    if study["scale"] == "binary":
        rating = np.where(real, "real", "synthetic")
    else:
        rating = np.where(real, 5, 1)
    return pd.DataFrame({"case": key["case"], "reader": name, "rating": rating})


def random_reader(cases: list[str], *, seed: int, scale: str = "confidence", name: str = "random") -> pd.DataFrame:
    """A seeded reader blind to everything: uniform 1-5 (binary: real/synthetic with probability 1/2)."""
    rng = np.random.default_rng(seed)
    if scale == "binary":
        rating = np.where(rng.random(len(cases)) < 0.5, "real", "synthetic")
    else:
        rating = rng.integers(1, 6, size=len(cases))
    return pd.DataFrame({"case": cases, "reader": name, "rating": rating})


def read_case(path: str | Path) -> np.ndarray:
    """A case file's pixels as float64 ``(H, W)`` (PNG grey levels or DICOM stored values)."""
    path = Path(path)
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im, dtype=np.float64)
    import pydicom

    return pydicom.dcmread(path).pixel_array.astype(np.float64)


def centre_contrast(image: np.ndarray) -> float:
    """Mean of the central disk (``r < size/8``) minus the mean of the ring ``3/16 <= r/size < 5/16``,
    in units of the image's standard deviation (so the 8/16-bit scale does not matter)."""
    h, w = image.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) / min(h, w)
    centre = image[r < 1 / 8].mean()
    ring = image[(r >= 3 / 16) & (r < 5 / 16)].mean()
    return float((centre - ring) / (image.std() + 1e-9))


def centre_spot_reader(case_folder: str | Path, cases: list[str], *, scale: str = "confidence",
                       name: str = "centre_spot") -> pd.DataFrame:
    """Rates each case by :func:`centre_contrast` of its file alone: quintiles 1-5 over the study's
    cases (brighter centre = more real); binary: above the median = real."""
    folder = Path(case_folder)
    files = {p.stem: p for p in folder.glob("case_*.*")}
    feature = np.array([centre_contrast(read_case(files[c])) for c in cases])
    rank = feature.argsort().argsort() / max(len(cases) - 1, 1)  # 0..1
    if scale == "binary":
        rating = np.where(rank >= 0.5, "real", "synthetic")
    else:
        rating = np.minimum((rank * 5).astype(int) + 1, 5)
    return pd.DataFrame({"case": cases, "reader": name, "rating": rating})


def write_answers(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a reader's answers as an answer CSV (atomic)."""
    from medsynth.data.writers import write_csv

    return write_csv(path, df)


def three_readers(built, answers: Path, *, seed: int) -> list[Path]:
    """The perfect, random and centre-spot readers' answer files for a built study."""
    cases = case_names(built.key)
    return [write_answers(perfect_reader(built.key), answers / "perfect.csv"),
            write_answers(random_reader(cases, seed=seed), answers / "random.csv"),
            write_answers(centre_spot_reader(built.cases, cases), answers / "centre_spot.csv")]


# ----------------------------------------------------------------------------- control: real vs real
def patient_halves(manifest: str | Path, out: Path, *, seed: int) -> tuple[Path, Path]:
    """Two manifests of the X-ray rows of ``manifest``, disjoint patient halves (seeded)."""
    from medsynth.data.manifest import read_manifest, select_rows, write_manifest

    df = select_rows(read_manifest(manifest), modality="xray")
    patients = np.array(sorted(set(df["patient_id"])))
    first = set(np.random.default_rng(seed).permutation(patients)[: len(patients) // 2])
    a, b = df[df["patient_id"].isin(first)], df[~df["patient_id"].isin(first)]
    return write_manifest(a, out / "half_a" / "manifest.csv"), write_manifest(b, out / "half_b" / "manifest.csv")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default=str(ROOT / "sample_data" / "manifest.csv"), help="real data")
    ap.add_argument("--run", default=None, help="use this run directory instead of training one")
    ap.add_argument("--minutes", type=float, default=2.0, help="process-CPU minutes of the quick DCGAN run")
    ap.add_argument("--n-real", type=int, default=50)
    ap.add_argument("--n-synthetic", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--work", default=str(ROOT / "runs" / "reader_study_example"),
                    help="work folder: run, case files, keys, answers (never committed)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "reader_study_example"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from medsynth.atomic import write_text
    from medsynth.metrics.reader_study import build, score, write_results
    from pipelines.studies.budget import train_to_budget

    work, out = Path(args.work), Path(args.out)
    t0 = time.perf_counter()
    if args.run:
        run = Path(args.run)
    else:
        run = train_to_budget(work / "runs", ["--modality", "xray", "--model", "dcgan", "--data", args.manifest,
                                              "--seed", str(args.seed), "--no-quick-check"],
                              minutes=args.minutes, max_steps=100000, sets=[], name="reader-study dcgan")
    t_train = time.perf_counter() - t0

    built = build(args.manifest, run, out=work / "cases", key_out=work / "key", n_real=args.n_real,
                  n_synthetic=args.n_synthetic, fmt="png", seed=args.seed, overwrite=True)
    files = three_readers(built, work / "answers", seed=args.seed + 1)
    res = score(built.key, files, n_boot=args.n_boot, seed=args.seed)
    blind = score(built.key, files[1:], n_boot=args.n_boot, seed=args.seed)  # the panel without the oracle

    half_a, half_b = patient_halves(args.manifest, work / "control_data", seed=args.seed)
    control = build(half_a, half_b, out=work / "control_cases", key_out=work / "control_key", n_real=args.n_real,
                    n_synthetic=args.n_synthetic, fmt="png", seed=args.seed, size=built_size(built), overwrite=True)
    control_files = three_readers(control, work / "control_answers", seed=args.seed + 1)
    control_res = score(control.key, control_files, n_boot=args.n_boot, seed=args.seed)
    control_blind = score(control.key, control_files[1:], n_boot=args.n_boot, seed=args.seed)
    control_res["study"]["generator"] = {"source": "control: a disjoint patient half of the phantom radiographs "
                                                   "(real vs real)"}

    from medsynth.runs import checkpoint_progress

    prog = checkpoint_progress(run) or {}
    env = {"run": run.name, "train_steps": prog.get("step"), "train_cpu_seconds": prog.get("cpu_seconds"),
           "seconds_total": round(time.perf_counter() - t0, 1),
           "seconds_train_wall": round(t_train, 1) if not args.run else None,
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 1 thread",
           "command": " ".join(["OMP_NUM_THREADS=1 python -m pipelines.studies.reader_study_example",
                                *(argv if argv is not None else sys.argv[1:])])}
    res["example"] = {**env, "pooled_blind_readers": {"auc": blind["pooled"]["auc"],
                                                      "interpretation": blind["interpretation"]}}
    control_res["example"] = {**env, "pooled_blind_readers": {"auc": control_blind["pooled"]["auc"],
                                                              "interpretation": control_blind["interpretation"]}}
    write_results(res, out)
    write_results(control_res, out / "control")
    write_text(out / "README.md", _readme(res, control_res))
    return {"study": res, "control": control_res}


def built_size(built) -> int:
    """The image size of a built study (from its key)."""
    from medsynth.metrics.reader_study import read_key

    return int(read_key(built.key)[1]["size"])


def _readme(res: dict, control: dict) -> str:
    def row(r):
        a = r["auc"]
        return (f"| {r['reader']} | {a['point']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] | "
                f"{r['synthetic_judged_real']['point']:.3f} | ")

    lines = ["# Reader study example (simulated readers)", "",
             "Made by `pipelines/studies/reader_study_example/study.py` (see its README for the design). "
             "`reader_study.md`/`.json`: the DCGAN study; `control/`: the real-vs-real control.", "",
             "| reader | AUC, DCGAN study | synthetic judged real | AUC, real-vs-real control | |",
             "|---|---|---|---|---|"]
    ctrl = {r["reader"]: r for r in control["readers"]}
    for r in res["readers"]:
        c = ctrl[r["reader"]]["auc"]
        lines.append(row(r) + f"{c['point']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] | |")
    def blind(r):
        a = r["example"]["pooled_blind_readers"]["auc"]
        return f"{a['point']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}]"

    lines.append(f"| **pooled, blind readers** (random, centre_spot) | {blind(res)} | | {blind(control)} | |")
    lines += ["", "The pooled figure of `reader_study.md` averages all three readers, the perfect one included: it "
                  "reads the key, so it is a check of the scoring, not a reader; the blind panel's is above.", "",
              f"DCGAN study, blind readers: {res['example']['pooled_blind_readers']['interpretation']}", "",
              f"Control, blind readers: {control['example']['pooled_blind_readers']['interpretation']}", "",
              "```json", json.dumps({k: v for k, v in res["example"].items() if k != "pooled_blind_readers"},
                                    indent=1), "```", ""]
    return "\n".join(lines)
