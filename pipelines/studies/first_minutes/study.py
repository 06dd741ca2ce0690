"""Choose the default recipe of ``medsynth train --modality xray|ct`` by measurement at 5 minutes.

Declared before running (issue 20):

* **Budget.** 5 minutes wall on 2 idle cores. Every candidate trains on the process clock with one
  thread (``train.clock=process``, ``train.threads=1``) for ``--minutes`` CPU-minutes (default 9.5:
  2 cores x 5 min at the measured 1.9x two-thread speed-up), so runs side by side with other work
  get the same compute. The chosen recipe then becomes a step count, and its wall time is measured
  separately on idle cores with the README's first command.
* **Data.** X-ray: the default training data of ``medsynth train --modality xray`` (the whole-chest
  demo folder, unlabelled: unconditional). CT: the default of ``--modality ct`` (lung-window axial
  slices of the sample manifest, labelled: class-conditional).
* **Judges.** ``medsynth evaluate`` of the finished run (its own encoder, seed 0): (1) the Fréchet
  distance over its real-vs-real floor (FD / floor, the issue's bound 2.5) and (2) the classifier
  two-sample test's AUROC (a small CNN telling synthetic from real training images, out-of-fold over
  3 folds; 0.5 = indistinguishable, 1.0 = every image told apart), with its 95% CI.
* **Seeds.** 2 per candidate (training seeds 0 and 1); a candidate's figure is the mean over seeds,
  each seed shown.
* **Rule.** Among candidates whose every seed has FD / floor <= 2.5, the lowest mean two-sample
  AUROC wins; none qualifying -> the lowest mean FD / floor, said so. No other figure decides.

Candidates (``CANDIDATES``): the current preset (the baseline), the same DCGAN with a
nearest-neighbour up-sampling generator and DiffAugment, and ProGAN (a primary generator) with its
CPU preset. Resumable: each (modality, candidate, seed) keeps its run under ``--work`` and its
record in ``OUT/jobs/``; finished parts are skipped.

Usage::

    python -m pipelines.studies.first_minutes --stage train --lane 0 --lanes 2   # one process per core
    python -m pipelines.studies.first_minutes --stage train --lane 1 --lanes 2
    python -m pipelines.studies.first_minutes --stage evaluate                   # then the table
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from medsynth.atomic import write_text
from medsynth.runs import checkpoint_progress, find_run
from pipelines.studies.budget import train_to_budget

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
FD_BOUND = 2.5
SEEDS = (0, 1)

#: name -> (modalities, model, --set overrides on top of the preset)
CANDIDATES: dict[str, tuple[tuple[str, ...], str, list[str]]] = {
    "dcgan-preset": (("xray", "ct"), "dcgan", []),
    "dcgan-nearest-diffaug": (("xray", "ct"), "dcgan",
                              ["model.params.g_up=nearest", "model.params.augment=diffaug"]),
    "progan-preset": (("xray",), "progan", []),
    # added after the first X-ray results (preset: FD / floor 4.2-5.2, two-sample AUROC 1.000; nearest +
    # DiffAugment: 6.6-7.8, 1.000 with 21% fewer steps): the preset at half the width, ~2.5x the steps; CT
    # added after CT's first results (preset 7.0-8.9, nearest + DiffAugment 18.9-19.5, both AUROC 1.000)
    "dcgan-w16": (("xray", "ct"), "dcgan", ["model.width=16"]),
}
#: candidates added after the first results were seen (reported as a second round)
SECOND_ROUND = ("dcgan-w16",)


def jobs() -> list[tuple[str, str, int]]:
    """Every (modality, candidate, seed): the DCGAN candidates of both modalities first, ProGAN last
    (the order in which a shared machine's time is spent)."""
    def rank(name: str) -> int:
        return 1 if name in SECOND_ROUND else 2 if CANDIDATES[name][1] != "dcgan" else 0

    out = []
    for r in (0, 1, 2):
        for mod in ("xray", "ct"):
            for name, (mods, _, _) in CANDIDATES.items():
                if mod in mods and rank(name) == r:
                    out += [(mod, name, s) for s in SEEDS]
    return out


def job_name(mod: str, cand: str, seed: int) -> str:
    return f"{mod}-{cand}-s{seed}"


def train_job(work: Path, mod: str, cand: str, seed: int, minutes: float, xray_data: str | None = None) -> Path:
    _, model, sets = CANDIDATES[cand]
    new_args = ["--modality", mod, "--model", model, "--seed", str(seed), "--no-quick-check"]
    if mod == "xray" and xray_data:
        new_args += ["--data", xray_data]
    return train_to_budget(work / job_name(mod, cand, seed), new_args, minutes=minutes, max_steps=1_000_000,
                           sets=["train.checkpoint_every=100", *sets], name=job_name(mod, cand, seed))


def evaluate_job(run: Path, out: Path, mod: str, cand: str, seed: int, xray_data: str | None = None) -> dict:
    """``medsynth evaluate RUN`` (seed 0; X-ray against ``xray_data`` when given, the data the run
    trained on) and the job's record (written to ``out/jobs/``)."""
    ev_path = run / "evaluate" / "evaluation.json"
    if not ev_path.is_file():
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        data = ["--data", xray_data] if mod == "xray" and xray_data else []
        subprocess.run([sys.executable, "-m", "medsynth.cli", "evaluate", str(run), *data], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)
    ev = json.loads(ev_path.read_text())
    prog = checkpoint_progress(run) or {}
    fid = ev["fidelity"]
    fd, floor = fid["fd"]["synthetic"]["mean"], fid["fd"]["floor"]["mean"]
    two = fid.get("two_sample") or {}
    rec = {"modality": mod, "candidate": cand, "seed": seed, "steps": prog.get("step"),
           "cpu_seconds": prog.get("cpu_seconds"), "fd": fd, "fd_floor": floor,
           "fd_over_floor": (fd / floor) if fd and floor else None,
           "two_sample_auroc": two.get("auroc"), "two_sample_ci": two.get("ci"),
           "two_sample_floor": (two.get("floor") or {}).get("auroc"),
           "encoder_fingerprint": (fid.get("encoder") or {}).get("fingerprint")}
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    write_text(out / "jobs" / f"{job_name(mod, cand, seed)}.json", json.dumps(rec, indent=2) + "\n")
    return rec


def summarise(recs: list[dict]) -> dict:
    """Per (modality, candidate): means over seeds; per modality: the winner by the declared rule."""
    import numpy as np

    table: dict[str, dict[str, dict]] = {}
    for r in recs:
        table.setdefault(r["modality"], {}).setdefault(r["candidate"], {"seeds": []})["seeds"].append(r)
    winners = {}
    for mod, cands in table.items():
        for name, c in cands.items():
            s = c["seeds"]
            for k in ("fd_over_floor", "two_sample_auroc", "steps"):
                vals = [x[k] for x in s if x.get(k) is not None]
                c[k] = float(np.mean(vals)) if vals else None
            c["qualifies"] = len(s) >= len(SEEDS) and all(
                x.get("fd_over_floor") is not None and x["fd_over_floor"] <= FD_BOUND for x in s)
        ok = {n: c for n, c in cands.items() if c["qualifies"] and c["two_sample_auroc"] is not None}
        if ok:
            w = min(ok, key=lambda n: ok[n]["two_sample_auroc"])
            winners[mod] = {"candidate": w, "rule": f"every seed FD/floor <= {FD_BOUND}; lowest mean two-sample AUROC"}
        elif cands:
            w = min(cands, key=lambda n: cands[n]["fd_over_floor"] or float("inf"))
            winners[mod] = {"candidate": w, "rule": f"no candidate had every seed at FD/floor <= {FD_BOUND}: "
                                                    "lowest mean FD/floor"}
    return {"table": table, "winners": winners}


def markdown(record: dict) -> str:
    """The recipe comparison table of ``record`` (one row per candidate and seed, then the means)."""
    def f(v, nd=2):
        return "—" if v is None else f"{v:.{nd}f}"

    lines = ["# The first five minutes: recipe comparison", "",
             f"Each run: {record['minutes_cpu']} CPU-minutes on one thread (process clock) = 5 minutes wall on "
             "2 idle cores; `medsynth evaluate` (seed 0) of the finished run. FD / floor: Fréchet distance on the "
             "evaluation's own encoder over its real-vs-real floor (bound 2.5). Two-sample AUROC: a small CNN "
             "telling synthetic from real training images out of fold (0.5 = cannot tell, 1.0 = tells every "
             "image), 95% bootstrap CI; its real-vs-real floor beside it. Rule declared before running: among "
             f"candidates with every seed at FD / floor <= {FD_BOUND}, the lowest mean two-sample AUROC.", ""]
    for mod, cands in record["table"].items():
        lines += [f"## {mod}", "", "| candidate | seed | steps | FD | floor | FD / floor | two-sample AUROC [95% CI] "
                  "| real-vs-real AUROC |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, c in cands.items():
            for r in c["seeds"]:
                ci = r.get("two_sample_ci") or [None, None]
                lines.append(f"| {name} | {r['seed']} | {r['steps']} | {f(r['fd'], 1)} | {f(r['fd_floor'], 1)} | "
                             f"{f(r['fd_over_floor'])} | {f(r['two_sample_auroc'], 3)} [{f(ci[0], 3)}, {f(ci[1], 3)}] "
                             f"| {f(r.get('two_sample_floor'), 3)} |")
            lines.append(f"| **{name}, mean** | | {f(c['steps'], 0)} | | | **{f(c['fd_over_floor'])}** | "
                         f"**{f(c['two_sample_auroc'], 3)}** | |")
        w = record["winners"].get(mod)
        if w:
            lines += ["", f"Chosen: **{w['candidate']}** ({w['rule']})."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=("train", "evaluate", "all"), default="all")
    ap.add_argument("--minutes", type=float, default=9.5, help="CPU-minutes per run (one thread)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/medsynth_first_minutes"), help="run folders")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "first_minutes")
    ap.add_argument("--lane", type=int, default=0)
    ap.add_argument("--lanes", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="job names to run (default: all)")
    ap.add_argument("--xray-data", default=None,
                    help="X-ray training data (default: the default of `medsynth train --modality xray`, the "
                         "whole-chest demo folder); the 2026-12-05 record used its 400-patient version "
                         "(write_chest_demo(n=400, seed=0)), of which sample_data/chest keeps the first 300")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    todo = [j for k, j in enumerate(jobs()) if k % a.lanes == a.lane]
    if a.only:
        todo = [j for j in todo if job_name(*j) in a.only]
    if a.stage in ("train", "all"):
        for mod, cand, seed in todo:
            train_job(a.work, mod, cand, seed, a.minutes, a.xray_data)
    if a.stage in ("evaluate", "all"):
        recs = []
        for mod, cand, seed in jobs():
            run = find_run(a.work / job_name(mod, cand, seed))
            prog = checkpoint_progress(run) if run is not None else None
            if prog is None or prog["cpu_seconds"] < 60.0 * a.minutes - 1.0:
                log.info("%s: not trained yet", job_name(mod, cand, seed))
                continue
            recs.append(evaluate_job(run, a.out, mod, cand, seed, a.xray_data))
        summary = summarise(recs)
        record = {"kind": "first_minutes", "declared": __doc__, "minutes_cpu": a.minutes, "seeds": list(SEEDS),
                  "candidates": {k: {"modalities": list(v[0]), "model": v[1], "sets": v[2]}
                                 for k, v in CANDIDATES.items()},
                  "jobs": recs, **summary,
                  "machine": {"torch": torch.__version__, "platform": platform.platform(),
                              "cpus": os.cpu_count()},
                  "date": _dt.date.today().isoformat()}
        write_text(a.out / "results.json", json.dumps(record, indent=2) + "\n")
        write_text(a.out / "README.md", markdown(record))
        log.info("winners: %s", summary["winners"])


if __name__ == "__main__":
    main()
