"""Downstream tumour-detection benchmark: does synthetic (or classic) augmentation help?

Arms (all trained with the same seed, the same real patient subset and the same classifier):

=========================== ===============================================================
``real``                    the real training subset only (the reference arm)
``real+classic``            the real subset with MONAI random flips + small affine
                            (:func:`medsynth.downstream.classifier.monai_augment`) on every batch
``real+synthetic``          the real subset plus ``round(synthetic_ratio * n_real_used)``
                            synthetic images (balanced classes, drawn without replacement)
``real+classic+synthetic``  both: real + synthetic, classic augmentation on every image
``synthetic-only``          the same synthetic draw as ``real+synthetic`` alone (train on
                            synthetic, test on real); model selection still uses the *real*
                            validation split
``real+extra``              the real subset plus every *extra* image whose source patient is
                            in that subset (e.g. CycleGAN lesion insertion: nodule-free
                            training films translated into nodule-bearing ones; see
                            ``pipelines/studies/lesion_insertion/``). Only with ``extra=``; extra
                            images must belong to training patients, so they follow their
                            patient's subset and never cross a split.
=========================== ===============================================================

Protocol (one call of :func:`run_benchmark`):

1. ``real.splits`` gives train / val / test by patient; any patient on two sides raises, and so
   does any image (the same model-input pixels, :func:`medsynth.data.checks.check_duplicates`)
   on two sides. The test patients are held out from everything but final scoring.
2. For each seed, the training *patients* are shuffled within their class stratum (a patient's
   stratum is the majority label of their cases) and, for each fraction, the first
   ``round(fraction * n)`` patients of each stratum are kept (at least one), so subsets are
   nested (10 % within 25 % within 100 %) and stratified.
3. The best epoch is chosen on the real validation split (AUROC), and the operating threshold
   for ``sensitivity``/``specificity`` is Youden's J on the validation split. The
   threshold-free operating points ``sens_at_90spec`` (the highest sensitivity with
   specificity >= 0.90) and ``spec_at_90sens`` (the highest specificity with sensitivity >=
   0.90) are read off the test ROC curve (:func:`sens_at_spec`, :func:`spec_at_sens`).
4. Per (arm, fraction, seed): the test figures (``kind="run"`` rows).
5. **Combining seeds.** Per (arm, fraction) the **seed ensemble** (mean of the seeds' predicted
   probabilities per test case) is scored, with a patient-level (cluster) percentile bootstrap
   95 % CI (``kind="summary"`` rows); the seed spread (mean / sd of the per-seed figures) is
   reported beside it. The CI thus covers test-set sampling of the ensemble; training
   variability shows in the sd.
6. **Paired test against real-only**: for every other arm and fraction, a *paired
   patient-cluster bootstrap* of (arm - real) on the seed ensembles — both arms evaluated on
   the same resamples of test patients — giving the difference, its 95 % CI and a two-sided
   bootstrap p-value, for AUROC, sens@90spec and spec@90sens (``kind="diff"`` rows). Not
   DeLong: the bootstrap handles several crops per patient and the operating-point metrics.
   The per-seed difference (mean / sd over seeds, same seed = same real subset and
   initialisation) is given beside it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_curve

from medsynth.atomic import atomic_path, write_text
from medsynth.data.checks import check_duplicates, tensor_hashes
from medsynth.downstream.classifier import (
    monai_augment,
    predict_proba,
    train_classifier,
)
from medsynth.errors import MedsynthError
from medsynth.metrics.stats import (
    auroc,
    bootstrap_ci,
    paired_bootstrap_diff,
    sensitivity,
    specificity,
    youden_threshold,
)
from medsynth.progress import Progress
from medsynth.results import BENCHMARK, write_result

log = logging.getLogger(__name__)

__all__ = [
    "ALL_ARMS",
    "ARM_AUG",
    "ARM_CLASSIC",
    "ARM_CLASSIC_AUG",
    "ARM_EXTRA",
    "ARM_REAL",
    "ARM_SYN_ONLY",
    "METRICS",
    "BenchmarkResult",
    "check_no_leakage",
    "results_table",
    "run_benchmark",
    "sens_at_spec",
    "spec_at_sens",
    "subsample_patients",
    "write_benchmark",
]

ARM_REAL = "real"
ARM_CLASSIC = "real+classic"
ARM_AUG = "real+synthetic"
ARM_CLASSIC_AUG = "real+classic+synthetic"
ARM_SYN_ONLY = "synthetic-only"
ARM_EXTRA = "real+extra"
#: the arms a synthetic set allows (``real+extra`` needs an ``extra`` set and comes on its own)
ALL_ARMS = (ARM_REAL, ARM_CLASSIC, ARM_AUG, ARM_CLASSIC_AUG, ARM_SYN_ONLY)
_ARM_ORDER = ALL_ARMS + (ARM_EXTRA,)
_SYN_ARMS = (ARM_AUG, ARM_CLASSIC_AUG, ARM_SYN_ONLY)
_CLASSIC_ARMS = (ARM_CLASSIC, ARM_CLASSIC_AUG)

#: the figures computed per run / ensemble; the first three are threshold-free
METRICS = ("auroc", "sens_at_90spec", "spec_at_90sens", "sensitivity", "specificity")
_PAIRED_METRICS = ("auroc", "sens_at_90spec", "spec_at_90sens")


def sens_at_spec(y_true, y_score, target: float = 0.9) -> float:
    """Highest sensitivity among thresholds whose specificity is at least ``target``.

    Args:
        y_true: ``(N,)`` labels in ``{0, 1}`` (both present).
        y_score: ``(N,)`` scores, higher = more likely positive.
        target: required specificity in ``[0, 1]``.

    Returns:
        Sensitivity in ``[0, 1]`` (``nan`` when a class is missing).
    """
    y = np.asarray(y_true).reshape(-1)
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, np.asarray(y_score).reshape(-1), drop_intermediate=False)
    ok = (1.0 - fpr) >= target - 1e-12
    return float(tpr[ok].max())


def spec_at_sens(y_true, y_score, target: float = 0.9) -> float:
    """Highest specificity among thresholds whose sensitivity is at least ``target``.

    Args:
        y_true: ``(N,)`` labels in ``{0, 1}`` (both present).
        y_score: ``(N,)`` scores, higher = more likely positive.
        target: required sensitivity in ``[0, 1]``.

    Returns:
        Specificity in ``[0, 1]`` (``nan`` when a class is missing).
    """
    y = np.asarray(y_true).reshape(-1)
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, np.asarray(y_score).reshape(-1), drop_intermediate=False)
    ok = tpr >= target - 1e-12
    return float((1.0 - fpr[ok]).max())


def _roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` at every distinct threshold plus the origin; both classes present.

    A numpy-only ROC curve (the same points as ``sklearn.metrics.roc_curve`` with
    ``drop_intermediate=False``, checked in the tests), ~50x cheaper per call: the bootstrap
    evaluates it on every resample.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def _sens_at_90spec_fast(y: np.ndarray, s: np.ndarray) -> float:
    fpr, tpr = _roc_points(y, s)
    return float(tpr[(1.0 - fpr) >= 0.9 - 1e-12].max())


def _spec_at_90sens_fast(y: np.ndarray, s: np.ndarray) -> float:
    fpr, tpr = _roc_points(y, s)
    return float((1.0 - fpr[tpr >= 0.9 - 1e-12]).max())


def _metric_fn(name: str):
    """The metric as :mod:`medsynth.metrics.stats` takes it (a name or a callable)."""
    return {"sens_at_90spec": _sens_at_90spec_fast,
            "spec_at_90sens": _spec_at_90sens_fast}.get(name, name)


@dataclass
class BenchmarkResult:
    """Everything :func:`write_benchmark` needs.

    Attributes:
        config: the settings used (JSON-serialisable).
        rows: one dict per (arm, fraction, seed): ``arm, fraction, seed, n_patients_real,
            n_train_real, n_train_synthetic, n_val, n_test, epochs_run, best_epoch, threshold,
            auroc, sens_at_90spec, spec_at_90sens, sensitivity, specificity, seconds,
            seconds_per_epoch`` (``n_train_synthetic`` counts extra images in ``real+extra``).
        summary: one dict per (arm, fraction): seed-ensemble figures ``<metric>`` with
            ``<metric>_lo/_hi`` (patient bootstrap 95 % CI) for every metric in
            :data:`METRICS`, ``threshold``, ``<metric>_seed_mean`` / ``<metric>_seed_sd``,
            ``n_seeds``, ``n_boot``, ``n_degenerate``.
        diffs: one dict per (non-reference arm, fraction, paired metric): ``arm``,
            ``comparison`` (``"<arm> - real"``), ``metric``, ``diff`` (ensemble figure of the
            arm minus real-only), ``lo``, ``hi``, ``p`` (paired patient bootstrap),
            ``a``, ``b``, ``diff_seed_mean``, ``diff_seed_sd``.
        n_test: test cases; ``n_test_patients``, ``n_val``: as named.
        timings: ``{"total_seconds", "train_seconds"}``.
        test_predictions: ``{"y", "patient_ids", "<arm>@<fraction>": ensemble probabilities}``;
            ``patient_ids`` are pseudonyms (``P0000``... in the sorted order of the real IDs), so
            results files can be shared and two benchmarks on one test set still pair by patient.
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


def pseudonyms(patient_ids) -> list[str]:
    """``P0000``, ``P0001``... for ``patient_ids`` (one per case), numbered in the sorted order of
    the distinct IDs: the same patients get the same pseudonyms in every benchmark of one test set,
    and no real ID (often a hospital number) reaches a results file."""
    ids = list(map(str, patient_ids))
    index = {pid: i for i, pid in enumerate(sorted(set(ids)))}
    width = max(4, len(str(len(index))))
    return [f"P{index[pid]:0{width}d}" for pid in ids]


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
    # .copy(): pandas may hand out a read-only view
    orders = {s: rng.permutation(stratum.index[stratum == s].to_numpy().copy()) for s in (0, 1)}
    out = {}
    for f in fractions:
        if not 0 < f <= 1:
            raise MedsynthError(None, f"benchmark fraction {f} is not in (0, 1]")
        keep = []
        for order in orders.values():
            if len(order):
                k = max(1, round(f * len(order)))
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
        "sens_at_90spec": sens_at_spec(y, p, 0.9),
        "spec_at_90sens": spec_at_sens(y, p, 0.9),
        "sensitivity": sensitivity(y, p, thr),
        "specificity": specificity(y, p, thr),
    }


def _resolve_arms(arms, has_synthetic: bool, has_extra: bool = False) -> list[str]:
    if arms is None:
        arms = list(ALL_ARMS if has_synthetic else (ARM_REAL, ARM_CLASSIC))
        return arms + [ARM_EXTRA] if has_extra else arms
    arms = list(dict.fromkeys(arms))
    unknown = [a for a in arms if a not in _ARM_ORDER]
    if unknown:
        raise MedsynthError(None, f"unknown benchmark arm(s) {', '.join(unknown)}; "
                                  f"choose from {', '.join(_ARM_ORDER)}")
    if not has_synthetic and any(a in _SYN_ARMS for a in arms):
        raise MedsynthError(None, "benchmark arms with synthetic data need a synthetic set")
    if not has_extra and ARM_EXTRA in arms:
        raise MedsynthError(None, f"benchmark arm {ARM_EXTRA} needs an extra image set")
    if ARM_REAL not in arms:
        arms.insert(0, ARM_REAL)  # the reference of every paired test
    return sorted(arms, key=_ARM_ORDER.index)


def _check_extra(extra, images: torch.Tensor, pids: np.ndarray, splits: np.ndarray):
    """Validate an ``extra`` set; return ``(images, labels, patient ids)``.

    Every extra image must carry the id of a patient of the real *training* split (its source
    patient), so that it is used only when that patient is, and can never bring a validation
    or test patient into training.
    """
    x = torch.as_tensor(extra.images, dtype=torch.float32)
    if x.shape[1:] != images.shape[1:]:
        raise MedsynthError(None, f"extra images {tuple(x.shape[1:])} do not match real "
                                  f"{tuple(images.shape[1:])}")
    y = np.asarray(extra.labels).astype(np.int64).reshape(-1)
    if len(y) != len(x) or not np.isin(y, (0, 1)).all():
        raise MedsynthError(None, "extra labels must be 0 or 1, one per image")
    epids = np.asarray(list(map(str, extra.patient_ids)))
    train_pids = set(pids[splits == "train"])
    outside = sorted(set(epids) - train_pids)
    if outside:
        raise MedsynthError(None, f"extra images of {len(outside)} patient(s) outside the real "
                                  f"training split (e.g. {', '.join(outside[:3])})")
    esplits = getattr(extra, "splits", None)
    if esplits is not None and any(s != "train" for s in esplits):
        raise MedsynthError(None, "extra images must all be in the 'train' split")
    return x, y, epids


def run_benchmark(
    real,
    synthetic=None,
    *,
    extra=None,
    arms=None,
    fractions=(0.1, 0.25, 1.0),
    seeds=(0, 1, 2, 3, 4),
    epochs: int = 10,
    min_steps: int = 0,
    batch_size: int = 32,
    synthetic_ratio: float = 1.0,
    n_boot: int = 1000,
    classifier_kwargs: dict | None = None,
) -> BenchmarkResult:
    """Run the benchmark arms over real fractions and seeds, then aggregate and test.

    Reports its progress (:mod:`medsynth.progress`): ``benchmark: k/N classifiers`` (N = seeds x
    fractions x arms) naming the classifier in training, then ``benchmark: bootstrap CIs and paired
    tests``.

    Args:
        real: ``ImageSet`` with ``images`` ``(N, 1, *S)`` in ``[-1, 1]``, ``labels`` in
            ``{0, 1}``, ``patient_ids`` and ``splits`` (``train``, ``test`` required; ``val``
            optional: without it the last epoch and threshold 0.5 are used).
        synthetic: optional ``ImageSet`` of generated images with the same image shape and
            labels in ``{0, 1}`` (both classes); only used for training.
        extra: optional ``ImageSet`` of extra training images for the ``real+extra`` arm
            (labels in ``{0, 1}``, any mix), each with the ``patient_ids`` of its *source*
            patient in the real training split and ``splits`` ``"train"``; per fraction and
            seed the arm adds those whose patient is in the real subset (all of them, not a
            draw).
        arms: arm names from :data:`ALL_ARMS` or ``real+extra``; ``None`` = all five with
            ``synthetic``, else ``real`` and ``real+classic``, plus ``real+extra`` with
            ``extra``. ``real`` is always added (the paired reference).
        fractions: fractions of the real training *patients* to use.
        seeds: one training run (and one patient subsample) per seed; >= 5 recommended.
        epochs: training epochs per run (raised so that each run makes at least
            ``min_steps`` optimiser steps).
        min_steps: minimum optimiser steps per run (0 = off). Something like 100 keeps the
            smallest fractions from being under-trained (they get more epochs).
        batch_size: training batch size.
        synthetic_ratio: synthetic images per real training image used
            (``round(ratio * n_real_used)``; also the size of the synthetic-only training set).
        n_boot: bootstrap resamples for CIs and paired differences.
        classifier_kwargs: extra keyword arguments for ``train_classifier`` (``arch``,
            ``width``, ``lr``, ``pos_weight``, ``flip_lr``, ``device``...).

    Returns:
        :class:`BenchmarkResult`.

    Raises:
        MedsynthError: missing splits, unknown labels or arms, patient leakage, shape mismatch.
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
    # by content too: the same model input on two sides is leakage whatever the patient IDs say
    check_duplicates(tensor_hashes(images[torch.from_numpy(used)]), [str(real.paths[i]) for i in used],
                     pids[used].tolist(), np.asarray(real.splits)[used].tolist(), labels[used].tolist(), where=None,
                     dedupe=False)
    if not np.isin(labels[used], (0, 1)).all():
        raise MedsynthError(None, "real set: benchmark labels must be 0 or 1 (found unknown -1)")
    if len(np.unique(labels[te])) < 2 or len(np.unique(labels[tr])) < 2:
        raise MedsynthError(None, "real set: train and test splits need both classes")
    arms = _resolve_arms(arms, synthetic is not None, extra is not None)
    if extra is not None:
        ex_images, ex_labels, ex_pids = _check_extra(extra, images, pids, np.asarray(real.splits))
    if synthetic is not None:
        syn_images = torch.as_tensor(synthetic.images, dtype=torch.float32)
        if syn_images.shape[1:] != images.shape[1:]:
            raise MedsynthError(
                None, f"synthetic images {tuple(syn_images.shape[1:])} do not match real "
                f"{tuple(images.shape[1:])}"
            )
        if not np.isin(np.asarray(synthetic.labels), (0, 1)).all():
            raise MedsynthError(None, "synthetic labels must be 0 or 1")
        syn_labels = np.asarray(synthetic.labels).astype(np.int64)
    if synthetic_ratio <= 0 and any(a in _SYN_ARMS for a in arms):
        raise MedsynthError(None, f"synthetic_ratio must be > 0, got {synthetic_ratio}")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise MedsynthError(None, "benchmark needs at least one seed")
    if len(seeds) < 5:
        log.warning("benchmark with %d seed(s): fewer than the 5 recommended", len(seeds))

    x_val = images[va] if len(va) else None
    y_val = labels[va] if len(va) else None
    x_te, y_te, pid_te = images[te], labels[te], pids[te]
    fractions = tuple(float(f) for f in fractions)

    rows: list[dict] = []
    prob_te: dict[tuple, list[np.ndarray]] = {}
    prob_va: dict[tuple, list[np.ndarray]] = {}
    train_seconds = 0.0
    # progress: a bar on a terminal, "benchmark: k/N classifiers, ..., about m:ss left" log lines elsewhere
    with Progress("benchmark", len(seeds) * len(fractions) * len(arms), "classifiers") as bar:
        for seed in seeds:
            subsets = subsample_patients(labels[tr], pids[tr], fractions, seed)
            for f in fractions:
                real_idx = tr[subsets[f]]
                assert not set(pids[real_idx]) & set(pid_te), "patient leakage into test"
                s_idx = None
                if synthetic is not None:
                    rng = np.random.default_rng([seed, round(f * 1e6)])
                    n_draw = max(2, round(synthetic_ratio * len(real_idx)))
                    s_idx = _draw_synthetic(synthetic, n_draw, rng)
                for arm in arms:
                    parts_x, parts_y, n_real, n_syn = [], [], 0, 0
                    if arm != ARM_SYN_ONLY:
                        parts_x.append(images[real_idx])
                        parts_y.append(labels[real_idx])
                        n_real = len(real_idx)
                    if arm in _SYN_ARMS:
                        parts_x.append(syn_images[s_idx])
                        parts_y.append(syn_labels[s_idx])
                        n_syn = len(s_idx)
                    if arm == ARM_EXTRA:
                        e_idx = np.flatnonzero(np.isin(ex_pids, pids[real_idx]))
                        parts_x.append(ex_images[e_idx])
                        parts_y.append(ex_labels[e_idx])
                        n_syn = len(e_idx)
                    x_tr, y_tr = torch.cat(parts_x), np.concatenate(parts_y)
                    steps_per_epoch = max(1, math.ceil(len(y_tr) / batch_size))
                    n_epochs = max(int(epochs), math.ceil(min_steps / steps_per_epoch))
                    aug = monai_augment(spatial_dims, seed=seed) if arm in _CLASSIC_ARMS else None
                    # "k/N classifiers, ..., arm A": k done, A training now (the bar and the log lines alike)
                    bar.set_postfix(f"arm {arm}, {100 * f:g}% real, seed {seed}")
                    if len(rows) > bar.n:
                        bar.update(len(rows) - bar.n)
                    t0 = time.perf_counter()
                    model = train_classifier(
                        x_tr, y_tr, spatial_dims=spatial_dims, epochs=n_epochs,
                        batch_size=batch_size, seed=seed, augment=aug,
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
                        "arm": arm, "fraction": f, "seed": seed,
                        "n_patients_real": len(set(pids[real_idx])) if n_real else 0,
                        "n_train_real": int(n_real), "n_train_synthetic": int(n_syn),
                        "n_val": len(va), "n_test": len(te),
                        "epochs_run": n_epochs, "best_epoch": int(model.best_epoch),
                        "threshold": thr, **_scores(y_te, p_te, thr),
                        "seconds": secs,
                        "seconds_per_epoch": float(np.median([h["seconds"] for h in model.history])),
                    }
                    rows.append(row)
                    log.info("benchmark %s f=%.2f seed=%d: AUROC %.3f (%d real + %d synthetic, "
                             "%.1fs)", arm, f, seed, row["auroc"], n_real, n_syn, secs)
        bar.set_postfix("")
        bar.update(len(rows) - bar.n)

    summary, diffs, test_predictions = [], [], {"y": y_te.tolist(), "patient_ids": pseudonyms(pid_te)}
    ens: dict[tuple, np.ndarray] = {}
    # the bootstrap takes seconds to minutes (linear in n_test x n_boot): its own line of progress
    n_boots = len(arms) * len(fractions) + (len(arms) - 1) * len(fractions)
    with Progress("benchmark: bootstrap CIs and paired tests", n_boots, "arm-fractions") as boot:
        for arm in arms:
            for f in fractions:
                p = np.mean(prob_te[(arm, f)], axis=0)
                ens[(arm, f)] = p
                thr = (youden_threshold(y_val, np.mean(prob_va[(arm, f)], axis=0))
                       if (arm, f) in prob_va else 0.5)
                runs = [r for r in rows if r["arm"] == arm and r["fraction"] == f]
                rec = {"arm": arm, "fraction": f, "n_seeds": len(runs), "threshold": thr}
                for m in METRICS:
                    ci = bootstrap_ci(y_te, p, _metric_fn(m), n_boot=n_boot, seed=0,
                                      clusters=pid_te, threshold=thr)
                    vals = [r[m] for r in runs]
                    rec.update({
                        m: ci.point, f"{m}_lo": ci.lo, f"{m}_hi": ci.hi,
                        f"{m}_seed_mean": float(np.mean(vals)),
                        f"{m}_seed_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                    })
                    if m == "auroc":
                        rec["n_degenerate"] = ci.n_degenerate
                rec["n_boot"] = n_boot
                rec["n_train_real"] = int(np.mean([r["n_train_real"] for r in runs]))
                rec["n_train_synthetic"] = int(np.mean([r["n_train_synthetic"] for r in runs]))
                summary.append(rec)
                test_predictions[f"{arm}@{f:g}"] = p.tolist()
                boot.update(1)
        for arm in arms:
            if arm == ARM_REAL:
                continue
            for f in fractions:
                for m in _PAIRED_METRICS:
                    d = paired_bootstrap_diff(y_te, ens[(arm, f)], ens[(ARM_REAL, f)], _metric_fn(m),
                                              n_boot=n_boot, seed=0, clusters=pid_te)
                    per_seed = [
                        ra[m] - rr[m]
                        for ra in rows if ra["arm"] == arm and ra["fraction"] == f
                        for rr in rows
                        if rr["arm"] == ARM_REAL and rr["fraction"] == f and rr["seed"] == ra["seed"]
                    ]
                    diffs.append({
                        "arm": arm, "fraction": f, "metric": m,
                        "comparison": f"{arm} - {ARM_REAL}", **d,
                        "diff_seed_mean": float(np.mean(per_seed)),
                        "diff_seed_sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                    })
                boot.update(1)

    config = {
        "fractions": list(fractions), "seeds": list(seeds), "epochs": int(epochs),
        "min_steps": int(min_steps), "batch_size": int(batch_size),
        "synthetic_ratio": float(synthetic_ratio),
        "n_boot": int(n_boot), "arms": arms, "spatial_dims": spatial_dims,
        "image_shape": list(images.shape[1:]), "modality": getattr(real, "modality", None),
        "classifier_kwargs": {k: (v if isinstance(v, (int, float, str, bool, type(None)))
                                  else repr(v)) for k, v in kw.items()},
        "n_synthetic_available": None if synthetic is None else len(synthetic.labels),
        "n_extra_available": None if extra is None else len(ex_labels),
        "classic_augmentation": "MONAI RandFlipd (every axis) + RandAffined (rot ~15 deg, "
                                "scale 10 %, shift 2 px), p=0.5 each",
        "aggregation": "seed ensemble (mean probability); patient-cluster bootstrap CI; "
                       "per-seed mean and sd beside it",
        "paired_test": "paired patient-cluster bootstrap of (arm - real) on the seed ensembles, "
                       "percentile CI, two-sided bootstrap p",
        "threshold_rule": "Youden J on the validation split (0.5 without one); sens_at_90spec / "
                          "spec_at_90sens are read off the test ROC curve",
        "torch_threads": torch.get_num_threads(),
    }
    return BenchmarkResult(
        config=config, rows=rows, summary=summary, diffs=diffs,
        n_test=len(te), n_test_patients=len(set(pid_te)), n_val=len(va),
        timings={"total_seconds": time.perf_counter() - t_start, "train_seconds": train_seconds},
        test_predictions=test_predictions,
    )


# ---------------------------------------------------------------------------------------------
# writing


def results_table(result: BenchmarkResult) -> pd.DataFrame:
    """Tidy table, one figure set per row, ``kind`` telling the row type.

    ``kind="run"``: one row per arm x fraction x seed. ``kind="summary"``: one row per arm x
    fraction, the seed ensemble with ``<metric>_lo/_hi`` CIs and ``<metric>_seed_mean/_sd``
    (``seed`` empty). ``kind="diff"``: one row per non-reference arm x fraction x metric, the
    paired (arm - real) difference ``diff`` with ``diff_lo``, ``diff_hi``, ``p``.
    """
    run = pd.DataFrame(result.rows).assign(kind="run")
    summ = pd.DataFrame(result.summary).assign(kind="summary", n_test=result.n_test)
    parts = [run, summ]
    if result.diffs:
        dif = pd.DataFrame(result.diffs).rename(columns={"lo": "diff_lo", "hi": "diff_hi",
                                                          "a": "arm_value", "b": "real_value"})
        parts.append(dif.assign(kind="diff", n_test=result.n_test))
    df = pd.concat(parts, ignore_index=True, sort=False)
    df["seed"] = df["seed"].astype("Int64")  # integer, empty on aggregate rows
    first = ["kind", "arm", "fraction", "seed", "metric"] + [
        c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")
    ] + ["diff", "diff_lo", "diff_hi", "p"]
    cols = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]
    return df[cols]


def _plot(result: BenchmarkResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    summ = pd.DataFrame(result.summary)
    runs = pd.DataFrame(result.rows)
    colors = dict(zip(_ARM_ORDER, ("tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple",
                                   "tab:brown")))
    for arm, g in summ.groupby("arm", sort=False):
        g = g.sort_values("fraction")
        c = colors.get(arm)
        x = 100 * g["fraction"]
        ax.plot(x, g["auroc"], "o-", color=c, label=arm)
        ax.fill_between(x, g["auroc_lo"], g["auroc_hi"], color=c, alpha=0.15)
        r = runs[runs["arm"] == arm]
        ax.scatter(100 * r["fraction"], r["auroc"], s=8, color=c, alpha=0.4)
    ax.set_xscale("log")
    ax.set_xticks(100 * np.asarray(result.config["fractions"]))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("real training patients used (%)")
    ax.set_ylabel("test AUROC (95% CI, patient bootstrap)")
    ax.set_title(f"Seed ensemble (line, 95% CI band) and single seeds (dots); "
                 f"n_test={result.n_test}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def write_benchmark(result: BenchmarkResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json`` and ``plot.png`` into ``out_dir`` (atomically).

    ``results.json`` is the result file of :mod:`medsynth.results` (kind ``benchmark``, read back
    with :func:`medsynth.results.read_benchmark`); ``results.csv`` is the same figures as a tidy
    table (:func:`results_table`) for people and spreadsheets.

    Returns:
        ``{"csv": path, "json": path, "plot": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "json": out / "results.json", "plot": out / "plot.png"}
    write_text(paths["csv"], results_table(result).to_csv(index=False))
    write_result(paths["json"], BENCHMARK, result.to_dict())
    _plot(result, paths["plot"])
    return paths
