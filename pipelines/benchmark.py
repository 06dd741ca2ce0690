"""Downstream tumour-detection benchmark: real-only vs real+synthetic training.

Protocol (one call of :func:`run_benchmark`):

1. ``real.splits`` gives train / val / test by patient; any patient on two sides raises.
2. For each seed, the training *patients* are shuffled within their class stratum (a patient's
   stratum is the majority label of their cases) and, for each fraction, the first
   ``round(fraction * n)`` patients of each stratum are kept (at least one), so subsets are
   nested (10 % within 25 % within 100 %) and stratified.
3. Arm ``"real"`` trains on that subset; arm ``"real+synthetic"`` trains on the *same* subset
   plus ``round(synthetic_ratio * n_real_used)`` synthetic images with balanced classes, drawn
   without replacement (seeded). Both arms use the same seed (same initialisation, shuffling).
4. The best epoch is chosen on the real validation split (AUROC), and the operating threshold
   is Youden's J on the validation split; the test split is touched only for final scoring.
5. Per (arm, fraction, seed): test AUROC, sensitivity, specificity. Per (arm, fraction): the
   **seed ensemble** (mean of the seeds' predicted probabilities per test case) is scored with a
   patient-level (cluster) bootstrap 95 % CI, and the seed spread (mean / sd of the per-seed
   AUROCs) is reported beside it. The ensemble threshold is Youden's J on the ensemble's
   validation probabilities. Per fraction: the paired bootstrap difference
   (real+synthetic - real) of the ensembles' AUROC on the same resamples, with CI and p.

The CI thus covers test-set sampling of the ensemble; training variability shows in the sd.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medsynth.atomic import atomic_path, write_text
from medsynth.errors import MedsynthError
from medsynth.metrics.stats import (
    auroc,
    bootstrap_ci,
    paired_bootstrap_diff,
    sensitivity,
    specificity,
    youden_threshold,
)
from pipelines.classifier import monai_augment, predict_proba, train_classifier

log = logging.getLogger(__name__)

__all__ = [
    "ARM_REAL",
    "ARM_AUG",
    "BenchmarkResult",
    "run_benchmark",
    "write_benchmark",
    "subsample_patients",
    "check_no_leakage",
]

ARM_REAL = "real"
ARM_AUG = "real+synthetic"


@dataclass
class BenchmarkResult:
    """Everything :func:`write_benchmark` needs.

    Attributes:
        config: the settings used (JSON-serialisable).
        rows: one dict per (arm, fraction, seed): ``arm, fraction, seed, n_patients_real,
            n_train_real, n_train_synthetic, n_val, n_test, epochs_run, best_epoch, threshold,
            auroc, sensitivity, specificity, seconds, seconds_per_epoch``.
        summary: one dict per (arm, fraction): seed-ensemble ``auroc`` with ``auroc_lo/hi``,
            ``sensitivity``/``specificity`` with CIs, ``threshold``, ``auroc_seed_mean``,
            ``auroc_seed_sd``, ``n_boot``, ``n_degenerate``.
        diffs: one dict per fraction (when a synthetic arm ran): ``diff`` (real+synthetic -
            real ensemble AUROC), ``lo``, ``hi``, ``p``.
        n_test: test cases; ``n_test_patients``, ``n_val``: as named.
        timings: ``{"total_seconds", "train_seconds"}``.
        test_predictions: ``{"y", "patient_ids", "<arm>@<fraction>": ensemble probabilities}``.
    """

    config: dict
    rows: list[dict]
    summary: list[dict]
    diffs: list[dict]
    n_test: int
    n_test_patients: int
    n_val: int
    timings: dict
    test_predictions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _split_index(real, name: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(real.splits) == name)


def check_no_leakage(patient_ids, splits) -> None:
    """Raise :class:`MedsynthError` if any patient appears in more than one split.

    Args:
        patient_ids: ``(N,)`` patient id per case.
        splits: ``(N,)`` split name per case (``train|val|test``).
    """
    df = pd.DataFrame({"p": list(map(str, patient_ids)), "s": list(splits)})
    n_sides = df.groupby("p")["s"].nunique()
    bad = n_sides[n_sides > 1]
    if len(bad):
        ex = ", ".join(bad.index[:5])
        raise MedsynthError(
            None, f"patient leakage: {len(bad)} patient(s) on more than one split (e.g. {ex})"
        )


def subsample_patients(
    labels: np.ndarray, patient_ids, fractions, seed: int
) -> dict[float, np.ndarray]:
    """Nested, class-stratified patient subsets of a training split.

    Args:
        labels: ``(N,)`` labels in ``{0, 1}`` of the training cases.
        patient_ids: ``(N,)`` patient ids of the training cases.
        fractions: fractions in ``(0, 1]`` of the patients to keep.
        seed: seed of the patient shuffle.

    Returns:
        ``{fraction: sorted case indices (into the training cases)}``; all cases of a kept
        patient are kept. Smaller fractions are subsets of larger ones.
    """
    df = pd.DataFrame({"y": np.asarray(labels), "p": list(map(str, patient_ids))})
    pat = df.groupby("p", sort=True)["y"].mean()
    stratum = (pat >= 0.5).astype(int)
    rng = np.random.default_rng(seed)
    orders = {s: rng.permutation(stratum.index[stratum == s].to_numpy()) for s in (0, 1)}
    out = {}
    for f in fractions:
        if not 0 < f <= 1:
            raise MedsynthError(None, f"benchmark fraction {f} is not in (0, 1]")
        keep = []
        for s, order in orders.items():
            if len(order):
                k = max(1, int(round(f * len(order))))
                keep.extend(order[:k].tolist())
        out[f] = np.flatnonzero(df["p"].isin(set(keep)).to_numpy())
    return out


def _draw_synthetic(synthetic, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` synthetic cases, half per class, without replacement when possible."""
    y = np.asarray(synthetic.labels)
    idx = []
    for c, k in ((0, n // 2), (1, n - n // 2)):
        pool = np.flatnonzero(y == c)
        if len(pool) == 0:
            raise MedsynthError(None, f"synthetic set has no images of class {c}")
        replace = k > len(pool)
        if replace:
            log.warning("synthetic class %d: %d wanted, %d available; drawing with "
                        "replacement", c, k, len(pool))
        idx.append(rng.choice(pool, size=k, replace=replace))
    return np.sort(np.concatenate(idx))


def _scores(y, p, thr) -> dict:
    return {
        "auroc": auroc(y, p),
        "sensitivity": sensitivity(y, p, thr),
        "specificity": specificity(y, p, thr),
    }


def run_benchmark(
    real,
    synthetic=None,
    *,
    fractions=(0.1, 0.25, 1.0),
    seeds=(0, 1, 2),
    epochs: int = 10,
    min_steps: int = 0,
    batch_size: int = 32,
    synthetic_ratio: float = 1.0,
    augment: bool = False,
    n_boot: int = 1000,
    classifier_kwargs: dict | None = None,
) -> BenchmarkResult:
    """Run the real-only (and, with ``synthetic``, real+synthetic) benchmark.

    Args:
        real: ``ImageSet`` with ``images`` ``(N, 1, *S)`` in ``[-1, 1]``, ``labels`` in
            ``{0, 1}``, ``patient_ids`` and ``splits`` (``train``, ``test`` required; ``val``
            optional: without it the last epoch and threshold 0.5 are used).
        synthetic: optional ``ImageSet`` of generated images with the same image shape and
            labels in ``{0, 1}`` (both classes); only used for training.
        fractions: fractions of the real training *patients* to use.
        seeds: one training run (and one patient subsample) per seed.
        epochs: training epochs per run (raised so that each run makes at least
            ``min_steps`` optimiser steps).
        min_steps: minimum optimiser steps per run (0 = off). Something like 100 keeps the
            smallest fractions from being under-trained (they get more epochs).
        batch_size: training batch size.
        synthetic_ratio: synthetic images added = ``round(ratio * n_real_used)``.
        augment: apply :func:`pipelines.classifier.monai_augment` (flips, small affine).
        n_boot: bootstrap resamples for CIs and paired differences.
        classifier_kwargs: extra keyword arguments for ``train_classifier`` (``width``,
            ``lr``, ``pos_weight``, ``device``...).

    Returns:
        :class:`BenchmarkResult`.

    Raises:
        MedsynthError: missing splits, unknown labels, patient leakage, shape mismatch.
    """
    t_start = time.perf_counter()
    kw = dict(classifier_kwargs or {})
    images = torch.as_tensor(real.images, dtype=torch.float32)
    labels = np.asarray(real.labels).astype(np.int64)
    pids = np.asarray(list(map(str, real.patient_ids)))
    if len(real.splits) != len(labels):
        raise MedsynthError(None, "real set: splits and labels differ in length")
    spatial_dims = images.ndim - 2
    tr, va, te = (_split_index(real, s) for s in ("train", "val", "test"))
    if len(tr) == 0 or len(te) == 0:
        raise MedsynthError(None, "real set needs 'train' and 'test' splits for the benchmark")
    used = np.concatenate([tr, va, te])
    check_no_leakage(pids[used], np.asarray(real.splits)[used])
    if not np.isin(labels[used], (0, 1)).all():
        raise MedsynthError(None, "real set: benchmark labels must be 0 or 1 (found unknown -1)")
    if len(np.unique(labels[te])) < 2 or len(np.unique(labels[tr])) < 2:
        raise MedsynthError(None, "real set: train and test splits need both classes")
    if synthetic is not None:
        syn_images = torch.as_tensor(synthetic.images, dtype=torch.float32)
        if syn_images.shape[1:] != images.shape[1:]:
            raise MedsynthError(
                None, f"synthetic images {tuple(syn_images.shape[1:])} do not match real "
                f"{tuple(images.shape[1:])}"
            )
        if not np.isin(np.asarray(synthetic.labels), (0, 1)).all():
            raise MedsynthError(None, "synthetic labels must be 0 or 1")

    x_val = images[va] if len(va) else None
    y_val = labels[va] if len(va) else None
    x_te, y_te, pid_te = images[te], labels[te], pids[te]
    arms = [ARM_REAL] + ([ARM_AUG] if synthetic is not None else [])
    fractions = tuple(float(f) for f in fractions)

    rows: list[dict] = []
    prob_te: dict[tuple, list[np.ndarray]] = {}
    prob_va: dict[tuple, list[np.ndarray]] = {}
    train_seconds = 0.0
    for seed in seeds:
        subsets = subsample_patients(labels[tr], pids[tr], fractions, seed)
        for f in fractions:
            real_idx = tr[subsets[f]]
            assert not set(pids[real_idx]) & set(pid_te), "patient leakage into test"
            for arm in arms:
                x_tr, y_tr, n_syn = images[real_idx], labels[real_idx], 0
                if arm == ARM_AUG:
                    n_syn = int(round(synthetic_ratio * len(real_idx)))
                    rng = np.random.default_rng([seed, int(round(f * 1e6))])
                    s_idx = _draw_synthetic(synthetic, n_syn, rng)
                    x_tr = torch.cat([x_tr, syn_images[s_idx]])
                    y_tr = np.concatenate([y_tr, np.asarray(synthetic.labels)[s_idx]])
                steps_per_epoch = max(1, math.ceil(len(y_tr) / batch_size))
                n_epochs = max(int(epochs), math.ceil(min_steps / steps_per_epoch))
                t0 = time.perf_counter()
                model = train_classifier(
                    x_tr, y_tr, spatial_dims=spatial_dims, epochs=n_epochs,
                    batch_size=batch_size, seed=seed,
                    augment=monai_augment(spatial_dims, seed=seed) if augment else None,
                    x_val=x_val, y_val=y_val, **kw,
                )
                secs = time.perf_counter() - t0
                train_seconds += secs
                p_te = predict_proba(model, x_te)
                p_va = predict_proba(model, x_val) if x_val is not None else None
                thr = youden_threshold(y_val, p_va) if p_va is not None else 0.5
                prob_te.setdefault((arm, f), []).append(p_te)
                if p_va is not None:
                    prob_va.setdefault((arm, f), []).append(p_va)
                row = {
                    "arm": arm, "fraction": f, "seed": int(seed),
                    "n_patients_real": int(len(set(pids[real_idx]))),
                    "n_train_real": int(len(real_idx)), "n_train_synthetic": n_syn,
                    "n_val": int(len(va)), "n_test": int(len(te)),
                    "epochs_run": n_epochs, "best_epoch": int(model.best_epoch),
                    "threshold": thr, **_scores(y_te, p_te, thr),
                    "seconds": secs,
                    "seconds_per_epoch": float(np.median([h["seconds"] for h in model.history])),
                }
                rows.append(row)
                log.info("benchmark %s f=%.2f seed=%d: AUROC %.3f (%d real + %d synthetic, "
                         "%.1fs)", arm, f, seed, row["auroc"], len(real_idx), n_syn, secs)

    summary, diffs, test_predictions = [], [], {
        "y": y_te.tolist(), "patient_ids": pid_te.tolist()
    }
    ens: dict[tuple, np.ndarray] = {}
    for arm in arms:
        for f in fractions:
            p = np.mean(prob_te[(arm, f)], axis=0)
            ens[(arm, f)] = p
            thr = (youden_threshold(y_val, np.mean(prob_va[(arm, f)], axis=0))
                   if (arm, f) in prob_va else 0.5)
            seed_aucs = [r["auroc"] for r in rows if r["arm"] == arm and r["fraction"] == f]
            ci = {m: bootstrap_ci(y_te, p, m, n_boot=n_boot, seed=0, clusters=pid_te,
                                  threshold=thr)
                  for m in ("auroc", "sensitivity", "specificity")}
            summary.append({
                "arm": arm, "fraction": f, "n_seeds": len(seed_aucs),
                "auroc": ci["auroc"].point, "auroc_lo": ci["auroc"].lo,
                "auroc_hi": ci["auroc"].hi,
                "sensitivity": ci["sensitivity"].point, "sensitivity_lo": ci["sensitivity"].lo,
                "sensitivity_hi": ci["sensitivity"].hi,
                "specificity": ci["specificity"].point, "specificity_lo": ci["specificity"].lo,
                "specificity_hi": ci["specificity"].hi,
                "threshold": thr,
                "auroc_seed_mean": float(np.mean(seed_aucs)),
                "auroc_seed_sd": float(np.std(seed_aucs, ddof=1)) if len(seed_aucs) > 1 else 0.0,
                "n_boot": n_boot, "n_degenerate": ci["auroc"].n_degenerate,
            })
            test_predictions[f"{arm}@{f:g}"] = p.tolist()
    if synthetic is not None:
        for f in fractions:
            d = paired_bootstrap_diff(y_te, ens[(ARM_AUG, f)], ens[(ARM_REAL, f)], "auroc",
                                      n_boot=n_boot, seed=0, clusters=pid_te)
            diffs.append({"fraction": f, "metric": "auroc",
                          "comparison": f"{ARM_AUG} - {ARM_REAL}", **d})

    config = {
        "fractions": list(fractions), "seeds": [int(s) for s in seeds], "epochs": int(epochs),
        "min_steps": int(min_steps), "batch_size": int(batch_size),
        "synthetic_ratio": float(synthetic_ratio), "augment": bool(augment),
        "n_boot": int(n_boot), "arms": arms, "spatial_dims": spatial_dims,
        "image_shape": list(images.shape[1:]), "modality": getattr(real, "modality", None),
        "classifier_kwargs": {k: (v if isinstance(v, (int, float, str, bool, type(None)))
                                  else repr(v)) for k, v in kw.items()},
        "n_synthetic_available": None if synthetic is None else int(len(synthetic.labels)),
        "aggregation": "seed ensemble (mean probability); patient-cluster bootstrap CI",
        "threshold_rule": "Youden J on the validation split (0.5 without one)",
        "torch_threads": torch.get_num_threads(),
    }
    return BenchmarkResult(
        config=config, rows=rows, summary=summary, diffs=diffs,
        n_test=int(len(te)), n_test_patients=int(len(set(pid_te))), n_val=int(len(va)),
        timings={"total_seconds": time.perf_counter() - t_start, "train_seconds": train_seconds},
        test_predictions=test_predictions,
    )


# ---------------------------------------------------------------------------------------------
# writing




def results_table(result: BenchmarkResult) -> pd.DataFrame:
    """Tidy table: ``kind`` = ``run`` (arm x fraction x seed), ``summary`` (seed ensemble per
    arm x fraction) or ``diff`` (paired real+synthetic - real per fraction)."""
    run = pd.DataFrame(result.rows).assign(kind="run")
    summ = pd.DataFrame(result.summary).assign(kind="summary", n_test=result.n_test)
    parts = [run, summ]
    if result.diffs:
        dif = pd.DataFrame(result.diffs).rename(columns={"lo": "diff_lo", "hi": "diff_hi"})
        dif = dif.drop(columns=["a", "b"]).assign(kind="diff", arm=f"{ARM_AUG} - {ARM_REAL}",
                                                   n_test=result.n_test)
        parts.append(dif)
    df = pd.concat(parts, ignore_index=True, sort=False)
    first = ["kind", "arm", "fraction", "seed", "auroc", "auroc_lo", "auroc_hi",
             "sensitivity", "specificity", "diff", "diff_lo", "diff_hi", "p"]
    cols = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]
    return df[cols]


def _plot(result: BenchmarkResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    summ = pd.DataFrame(result.summary)
    runs = pd.DataFrame(result.rows)
    colors = {ARM_REAL: "tab:blue", ARM_AUG: "tab:orange"}
    for arm, g in summ.groupby("arm", sort=False):
        g = g.sort_values("fraction")
        c = colors.get(arm)
        x = 100 * g["fraction"]
        ax.plot(x, g["auroc"], "o-", color=c, label=f"{arm} (seed ensemble)")
        ax.fill_between(x, g["auroc_lo"], g["auroc_hi"], color=c, alpha=0.2)
        r = runs[runs["arm"] == arm]
        ax.scatter(100 * r["fraction"], r["auroc"], s=10, color=c, alpha=0.5,
                   label=f"{arm} (single seeds)")
    ax.set_xscale("log")
    ax.set_xticks(100 * np.asarray(result.config["fractions"]))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("real training patients used (%)")
    ax.set_ylabel("test AUROC (95% CI, patient bootstrap)")
    ax.set_title(f"Downstream benchmark (n_test={result.n_test})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def write_benchmark(result: BenchmarkResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json`` and ``plot.png`` into ``out_dir`` (atomically).

    Returns:
        ``{"csv": path, "json": path, "plot": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "json": out / "results.json", "plot": out / "plot.png"}
    write_text(paths["csv"], results_table(result).to_csv(index=False))
    write_text(paths["json"], json.dumps(_jsonable(result.to_dict()), indent=1) + "\n")
    _plot(result, paths["plot"])
    return paths
