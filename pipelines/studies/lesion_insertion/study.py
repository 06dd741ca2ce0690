"""CycleGAN lesion insertion: translate nodule-free training films into nodule-bearing ones, show
before/after pairs, check that a lesion was inserted, and measure with the detection benchmark
whether the translated positives help.

Steps (each resumable where cheap):

1. **Train** a CycleGAN (``medsynth/presets/xray_cyclegan.yaml``: domain A = label 0, nodule-free;
   B = label 1, nodule-bearing) on the *training split only* for a CPU-time budget
   (``medsynth train --model cyclegan --minutes M --set train.clock=process --set
   train.threads=1``), or reuse ``--run``. A finished run under ``--runs`` is reused; an
   interrupted one is resumed. A run trained on anything but the training split is refused (its
   translations would carry validation/test images into training).
2. **Translate** every nodule-free *training* image ``a2b`` (:func:`translate_negatives`; never a
   validation or test image). In memory each translated positive keeps its **source patient's
   id** and the ``train`` split, so the benchmark uses it only when that patient is in the real
   training subset and patient-level splits stay honest (``medsynth.downstream.benchmark``,
   ``real+extra`` arm). On disk (``--write``) the set is written by
   :func:`medsynth.data.writers.write_synthetic_set` as translations of real images: DICOM DX
   ``DERIVED\\SECONDARY`` described as a translation, ``PatientID TRANSLATED-<n>``, manifest
   ``source=translated``, ``split=train``, label 1; no source identifier is written.
3. **Check** (:func:`lesion_check`): two patient folds of the training split; a classifier
   trained on the real images of one fold (best epoch on the real validation split) scores the
   other fold's nodule-free sources (before), their translations (after) and its real
   nodule-bearing films (reference): mean P(nodule) and the fraction above the Youden threshold
   (validation split), out of fold, so no classifier scores an image it was trained on. Also the
   cycle reconstruction error ``|G_ba(G_ab(a)) - a|`` on the sources and the mean absolute change
   ``|G_ab(a) - a|``. Figure: ``pairs.png`` (16 sources in a seeded random order, not picked:
   source | translated | difference) and ``mean_change.png``.
4. **Benchmark** (:func:`medsynth.downstream.benchmark.run_benchmark`): arms ``real``, ``real+extra``
   (= real + the translated positives of the kept patients) and, for context, ``real+classic``
   (MONAI flips + affine) at the given fractions of training patients, 5 seeds, seed-ensemble
   AUROC with patient-bootstrap 95 % CIs and the paired patient bootstrap of each difference from
   ``real``. **Control** (``OUT/benchmark_control/``): ``real+extra`` with one more copy of every
   kept real nodule-bearing film instead (:func:`oversampled_positives`: as many added positives,
   optimiser steps and class-balance shift, no new image), and translated - oversampled by the
   paired bootstrap (:func:`compare_ensembles`). Each benchmark is skipped when its
   ``results.json`` has the same settings (``--force`` reruns).
5. ``OUT/results.json`` and ``OUT/README.md``.

Usage::

    OMP_NUM_THREADS=1 python -m pipelines.studies.lesion_insertion --minutes 8 --out reports/lesion_insertion
    OMP_NUM_THREADS=1 python -m pipelines.studies.lesion_insertion --run runs/lesion_insertion/00000-xray-cyclegan
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medsynth.atomic import atomic_path, write_text
from medsynth.errors import MedsynthError
from medsynth.runs import checkpoint_progress
from pipelines.studies.budget import train_to_budget

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
N_PAIRS = 16
#: README names of the benchmark arms (``real+extra`` holds the translated positives here)
ARM_NAMES = {"real+extra": "real+translated"}


# ---------------------------------------------------------------------------------------------
# translation

def training_negatives(real) -> np.ndarray:
    """Indices of the nodule-free (label 0) images of the training split.

    Args:
        real: ``ImageSet`` with ``labels`` and ``splits``.

    Returns:
        Sorted ``(K,)`` int indices into ``real``.
    """
    labels = np.asarray(real.labels).reshape(-1)
    splits = np.asarray(real.splits)
    return np.flatnonzero((splits == "train") & (labels == 0))


def translate_negatives(model, real, *, batch_size: int = 64):
    """Translate every nodule-free training image into a nodule-bearing one (``a2b``).

    Args:
        model: a trained CycleGAN (``translate(x, "a2b")``; A = label 0, B = label 1).
        real: ``ImageSet``, images ``(N, 1, H, W)`` in ``[-1, 1]``, with labels and splits.
        batch_size: translation batch size.

    Returns:
        ``(translated, source_index)``: an ``ImageSet`` of ``K`` images ``(K, 1, H, W)`` in
        ``[-1, 1]`` with label 1, split ``train``, the **source patient's id** (in memory only,
        so that patient-level subsets and splits stay honest) and paths
        ``synthetic:cyclegan-a2b:<k>`` (marked synthetic); ``source_index`` ``(K,)`` indexes
        the sources in ``real``.

    Raises:
        MedsynthError: no nodule-free training image.
    """
    from medsynth.data.imageset import ImageSet

    idx = training_negatives(real)
    if len(idx) == 0:
        raise MedsynthError(None, "lesion insertion: no nodule-free (label 0) training images to translate")
    src = torch.as_tensor(real.images, dtype=torch.float32)[torch.as_tensor(idx)]
    out = model.translate(src, "a2b", batch_size=batch_size).clamp(-1, 1)
    pids = [str(real.patient_ids[i]) for i in idx]
    k = len(idx)
    translated = ImageSet(images=out, labels=torch.ones(k, dtype=torch.long), patient_ids=pids,
                          paths=[f"synthetic:cyclegan-a2b:{j}" for j in range(k)], splits=["train"] * k,
                          modality=getattr(real, "modality", "xray"))
    return translated, idx


@torch.no_grad()
def cycle_errors(model, x: torch.Tensor, *, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per-image L1 figures of the ``a2b`` translation.

    Args:
        model: a CycleGAN.
        x: ``(N, 1, H, W)`` domain-A images in ``[-1, 1]``.

    Returns:
        ``{"cycle": |G_ba(G_ab(x)) - x|, "change": |G_ab(x) - x|}``, each ``(N,)`` mean absolute
        error per image in intensity units of ``[-1, 1]``.
    """
    fake = model.translate(x, "a2b", batch_size=batch_size)
    rec = model.translate(fake, "b2a", batch_size=batch_size)
    dims = tuple(range(1, x.ndim))
    return {"cycle": (rec - x).abs().mean(dim=dims).double().numpy(),
            "change": (fake - x).abs().mean(dim=dims).double().numpy()}


def _mean_ci(v: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """Mean and percentile bootstrap 95 % CI of ``v`` (one value per patient)."""
    v = np.asarray(v, np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    return [float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def lesion_check(real, translated, source_index, *, folds: int = 2, epochs: int = 20, seed: int = 0,
                 classifier_kwargs: dict | None = None) -> dict:
    """Does a classifier trained on real films see a nodule in the translated images?

    Training patients are split into ``folds`` groups (seeded, stratified by label). For each
    fold a classifier is trained on the real training images of the *other* folds (best epoch on
    the real validation split, when present) and scores, in its own fold: the nodule-free sources,
    their translations and the real nodule-bearing films. Every score is thus out of fold.

    Args:
        real: ``ImageSet`` (``train`` split required, ``val`` optional).
        translated, source_index: from :func:`translate_negatives`.
        folds: patient folds (>= 2).
        epochs: classifier epochs.
        seed: fold assignment and classifier seed.
        classifier_kwargs: extra ``train_classifier`` arguments.

    Returns:
        Dict: ``before`` / ``after`` / ``real_positive``: ``{"mean_score": [mean, lo, hi],
        "frac_positive": [mean, lo, hi]}`` (bootstrap 95 % CIs over images, one per patient);
        ``score_change``: paired mean of (after - before) with CI; ``n_sources``,
        ``n_real_positive``, ``folds``, ``thresholds``, ``val_auroc`` per fold, and
        ``scores_before`` / ``scores_after`` (per source, in ``source_index`` order).
    """
    from medsynth.metrics.stats import auroc, youden_threshold
    from medsynth.downstream.classifier import predict_proba, train_classifier

    kw = dict(classifier_kwargs or {})
    x = torch.as_tensor(real.images, dtype=torch.float32)
    y = np.asarray(real.labels).astype(np.int64).reshape(-1)
    pids = np.asarray(list(map(str, real.patient_ids)))
    splits = np.asarray(real.splits)
    tr, va = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
    if folds < 2:
        raise MedsynthError(None, f"lesion check needs at least 2 folds, got {folds}")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for c in (0, 1):
        pats = np.unique(pids[tr][y[tr] == c])
        for j, p in enumerate(rng.permutation(pats)):
            fold_of.setdefault(str(p), j % folds)
    fold = np.array([fold_of.get(p, -1) for p in pids])  # -1: not a training patient
    x_val, y_val = (x[va], y[va]) if len(va) and len(np.unique(y[va])) == 2 else (None, None)
    src_index = np.asarray(source_index)
    before = np.full(len(src_index), np.nan)
    after = np.full(len(src_index), np.nan)
    real_pos_idx = tr[y[tr] == 1]
    real_pos = np.full(len(real_pos_idx), np.nan)
    thr_b, thr_a, thr_r = np.zeros_like(before), np.zeros_like(after), np.zeros_like(real_pos)
    thresholds, val_aurocs = [], []
    tx = torch.as_tensor(translated.images, dtype=torch.float32)
    for k in range(folds):
        fit = tr[fold[tr] != k]
        model = train_classifier(x[fit], y[fit], epochs=epochs, seed=seed + k, x_val=x_val, y_val=y_val, **kw)
        thr = 0.5
        if x_val is not None:
            pv = predict_proba(model, x_val)
            thr = float(youden_threshold(y_val, pv))
            val_aurocs.append(float(auroc(y_val, pv)))
        thresholds.append(thr)
        sel = fold[src_index] == k
        before[sel] = predict_proba(model, x[src_index[sel]])
        after[sel] = predict_proba(model, tx[torch.as_tensor(np.flatnonzero(sel))])
        thr_b[sel], thr_a[sel] = thr, thr
        rsel = fold[real_pos_idx] == k
        real_pos[rsel] = predict_proba(model, x[real_pos_idx[rsel]])
        thr_r[rsel] = thr
        log.info("lesion check fold %d: %d training images, threshold %.3f", k, len(fit), thr)
    return {
        "folds": folds, "epochs": epochs, "thresholds": thresholds, "val_auroc": val_aurocs,
        "n_sources": int(len(src_index)), "n_real_positive": int(len(real_pos_idx)),
        "before": {"mean_score": _mean_ci(before), "frac_positive": _mean_ci(before >= thr_b)},
        "after": {"mean_score": _mean_ci(after), "frac_positive": _mean_ci(after >= thr_a)},
        "real_positive": {"mean_score": _mean_ci(real_pos), "frac_positive": _mean_ci(real_pos >= thr_r)},
        "score_change": _mean_ci(after - before),
        "scores_before": before.tolist(), "scores_after": after.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# figures

def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def pairs_figure(sources: torch.Tensor, translated: torch.Tensor, path: Path, *, before=None, after=None,
                 n: int = N_PAIRS, seed: int = 0) -> list[int]:
    """Before/after figure: ``n`` triplets (source | translated | translated - source).

    Args:
        sources, translated: ``(K, 1, H, W)`` in ``[-1, 1]``, row ``i`` of one is the source of
            row ``i`` of the other.
        path: output PNG.
        before, after: optional ``(K,)`` classifier scores shown above each pair.
        n: pairs shown (the first ``n`` of a seeded permutation: not picked by eye).
        seed: seed of that permutation.

    Returns:
        The indices shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(sources)
    shown = np.random.default_rng(seed).permutation(k)[: min(n, k)].tolist()
    cols = 4
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, 3 * cols, figsize=(3 * cols * 1.05, rows * 1.25), dpi=100, squeeze=False)
    diffs = (translated - sources)[:, 0].numpy()
    lim = float(np.percentile(np.abs(diffs[shown]), 99.5)) or 1.0
    for ax in axes.ravel():
        ax.axis("off")
    for j, i in enumerate(shown):
        r, c = divmod(j, cols)
        a = axes[r, 3 * c: 3 * c + 3]
        a[0].imshow(sources[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
        a[1].imshow(translated[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
        a[2].imshow(diffs[i], cmap="RdBu_r", vmin=-lim, vmax=lim)
        if before is not None and after is not None:
            a[1].set_title(f"p {before[i]:.2f}\u2192{after[i]:.2f}", fontsize=7)
    for c in range(cols):
        for t, name in enumerate(("source (no nodule)", "translated a2b", "difference")):
            if rows:
                axes[0, 3 * c + t].text(0.5, 1.32, name, transform=axes[0, 3 * c + t].transAxes, ha="center",
                                        fontsize=6)
    fig.suptitle(f"CycleGAN lesion insertion, nodule-free training films (seeded random {len(shown)}); "
                 f"difference red = brighter, scale \u00b1{lim:.2f}; p = out-of-fold P(nodule) before\u2192after",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, path)
    return shown


def mean_change_figure(sources: torch.Tensor, translated: torch.Tensor, path: Path) -> None:
    """Mean signed and absolute change maps over all translated images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = (translated - sources)[:, 0].numpy()
    fig, axes = plt.subplots(1, 2, figsize=(6, 3), dpi=100)
    m = d.mean(axis=0)
    lim = float(np.abs(m).max()) or 1.0
    im0 = axes[0].imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[0].set_title("mean (translated - source)", fontsize=8)
    im1 = axes[1].imshow(np.abs(d).mean(axis=0), cmap="magma")
    axes[1].set_title("mean |translated - source|", fontsize=8)
    for ax, im in zip(axes, (im0, im1)):
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"where the translation changes the image (n={len(d)})", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------------------------------
# benchmark + report

def oversampled_positives(real):
    """The control set: one more copy of every nodule-bearing training image.

    It adds about as many positives as the translation does (and so as many optimiser steps and
    the same shift of the class balance) but no new image, so ``translated - oversampled``
    isolates what the inserted lesions add beyond re-weighting the positive class.

    Returns:
        ``ImageSet`` (copies; each with its own patient id, label 1, split ``train``).
    """
    from medsynth.data.imageset import ImageSet

    labels = np.asarray(real.labels).reshape(-1)
    idx = np.flatnonzero((np.asarray(real.splits) == "train") & (labels == 1))
    k = len(idx)
    return ImageSet(images=torch.as_tensor(real.images, dtype=torch.float32)[torch.as_tensor(idx)].clone(),
                    labels=torch.ones(k, dtype=torch.long), patient_ids=[str(real.patient_ids[i]) for i in idx],
                    paths=[f"copy:{real.paths[i]}" for i in idx], splits=["train"] * k,
                    modality=getattr(real, "modality", "xray"))


def run_arms(real, extra, *, classic: bool = False, fractions=(0.25, 1.0), seeds=(0, 1, 2, 3, 4),
             epochs: int = 20, min_steps: int = 100, n_boot: int = 1000, classifier_kwargs: dict | None = None):
    """The detection benchmark with arms ``real``, ``real+extra`` (real + ``extra``: the translated
    positives, or the oversampling control) and optionally ``real+classic``.

    Returns:
        :class:`medsynth.downstream.benchmark.BenchmarkResult`.
    """
    from medsynth.downstream.benchmark import ARM_CLASSIC, ARM_EXTRA, ARM_REAL, run_benchmark

    arms = (ARM_REAL, ARM_CLASSIC, ARM_EXTRA) if classic else (ARM_REAL, ARM_EXTRA)
    return run_benchmark(real, None, extra=extra, arms=arms, fractions=fractions, seeds=seeds, epochs=epochs,
                         min_steps=min_steps, n_boot=n_boot, classifier_kwargs=classifier_kwargs)


def _bench_settings(fractions, seeds, epochs, min_steps, n_boot, n_extra, arms) -> dict:
    return {"fractions": [float(f) for f in fractions], "seeds": [int(s) for s in seeds], "epochs": int(epochs),
            "min_steps": int(min_steps), "n_boot": int(n_boot), "n_extra_available": int(n_extra),
            "arms": list(arms)}


def _benchmark(out: Path, real, extra, *, classic: bool, force: bool, fractions, seeds, epochs, min_steps,
               n_boot, classifier_kwargs) -> dict:
    """Run (or reuse, when ``out/results.json`` has the same settings) one benchmark; its JSON."""
    from medsynth.downstream.benchmark import ARM_CLASSIC, ARM_EXTRA, ARM_REAL, write_benchmark
    from medsynth.results import read_benchmark

    arms = [ARM_REAL, ARM_CLASSIC, ARM_EXTRA] if classic else [ARM_REAL, ARM_EXTRA]
    settings = _bench_settings(fractions, seeds, epochs, min_steps, n_boot, len(extra.labels), arms)
    bench = None if force else _cached_benchmark(out / "results.json", settings)
    if bench is not None:
        log.info("benchmark: reusing %s", out / "results.json")
        return bench
    res = run_arms(real, extra, classic=classic, fractions=fractions, seeds=seeds, epochs=epochs,
                   min_steps=min_steps, n_boot=n_boot, classifier_kwargs=classifier_kwargs)
    write_benchmark(res, out)
    return read_benchmark(out)


def compare_ensembles(bench_a: dict, bench_b: dict, arm: str, *, n_boot: int = 1000) -> list[dict]:
    """Paired patient bootstrap of ``arm`` in ``bench_a`` minus ``arm`` in ``bench_b`` (same test set).

    Returns:
        One dict per fraction and paired metric: ``fraction, metric, diff, lo, hi, p, a, b``.
    """
    from medsynth.metrics.stats import paired_bootstrap_diff
    from medsynth.downstream.benchmark import _PAIRED_METRICS, _metric_fn

    pa, pb = bench_a["test_predictions"], bench_b["test_predictions"]
    if pa["y"] != pb["y"] or pa["patient_ids"] != pb["patient_ids"]:
        raise MedsynthError(None, "the two benchmarks were scored on different test sets")
    y, pids = np.asarray(pa["y"]), np.asarray(pa["patient_ids"])
    out = []
    for f in bench_a["config"]["fractions"]:
        key = f"{arm}@{f:g}"
        for m in _PAIRED_METRICS:
            d = paired_bootstrap_diff(y, np.asarray(pa[key]), np.asarray(pb[key]), _metric_fn(m), n_boot=n_boot,
                                      seed=0, clusters=pids)
            out.append({"fraction": f, "metric": m, **{k: d[k] for k in ("diff", "lo", "hi", "p", "a", "b")}})
    return out


def _cached_benchmark(path: Path, settings: dict) -> dict | None:
    from medsynth.results import BENCHMARK, read_result

    if not path.is_file():
        return None
    res = read_result(path, BENCHMARK)
    cfg = res.get("config", {})
    if all(cfg.get(k) == v for k, v in settings.items()):
        return res
    log.info("benchmark settings changed; rerunning")
    return None


def reading(diff: dict) -> str:
    """``helps`` / ``hurts`` (95 % CI excludes 0) or ``no significant difference``."""
    if diff["lo"] > 0:
        return "helps (95 % CI above 0)"
    if diff["hi"] < 0:
        return "hurts (95 % CI below 0)"
    return "no significant difference (95 % CI covers 0)"


def run_pipeline(real, model, out_dir: str | Path, *, fractions=(0.25, 1.0), seeds=(0, 1, 2, 3, 4),
                 epochs: int = 20, min_steps: int = 100, n_boot: int = 1000, check_epochs: int = 20,
                 write_dir: str | Path | None = None, run_info: dict | None = None, force: bool = False,
                 classic: bool = True, control: bool = True, classifier_kwargs: dict | None = None,
                 notes: str = "", command: str = "") -> dict:
    """Steps 2-5 of the module docstring on a loaded real set and a trained CycleGAN.

    Args:
        real: ``ImageSet`` with ``train``/``val``/``test`` splits by patient, labels in ``{0, 1}``.
        model: trained CycleGAN of the real set's image shape.
        out_dir: report folder (``pairs.png``, ``mean_change.png``, ``benchmark/``,
            ``benchmark_control/``, ``results.json``, ``README.md``).
        fractions, seeds, epochs, min_steps, n_boot: benchmark settings.
        check_epochs: epochs of the lesion-check classifiers.
        write_dir: write the translated set there (DICOM, synthetic marking) when given.
        run_info: description of the CycleGAN run (written into the results).
        force: rerun the benchmarks even if results with the same settings exist.
        classic: add the ``real+classic`` arm (MONAI flips + affine) for context.
        control: also run the oversampling control (:func:`oversampled_positives`) into
            ``benchmark_control/`` and compare translated vs oversampled (paired bootstrap).
        classifier_kwargs: extra ``train_classifier`` arguments (benchmark and check).
        notes: Markdown appended to the README's reading (e.g. a hand-written interpretation).
        command: the command line, for the README.

    Returns:
        The results dict (also written to ``OUT/results.json``).
    """
    from medsynth.downstream.benchmark import ARM_EXTRA

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    translated, src_idx = translate_negatives(model, real)
    sources = torch.as_tensor(real.images, dtype=torch.float32)[torch.as_tensor(src_idx)]
    errs = cycle_errors(model, sources)
    log.info("translated %d nodule-free training images (%.1fs)", len(src_idx), time.perf_counter() - t0)
    written = None
    if write_dir is not None:
        from medsynth.data.writers import SyntheticInfo, write_synthetic_set

        # translations of real (nodule-free) training images: marked as such, never as synthetic
        info = SyntheticInfo(model="cyclegan", run=(run_info or {}).get("name", "cyclegan"), seed=None,
                             translation="a2b")
        df = write_synthetic_set(write_dir, translated.images, translated.labels, modality=translated.modality,
                                 fmt="dicom", info=info, split="train")
        written = {"dir": str(write_dir), "n": int(len(df))}
    check = lesion_check(real, translated, src_idx, epochs=check_epochs, classifier_kwargs=classifier_kwargs)
    shown = pairs_figure(sources, translated.images, out / "pairs.png", before=check["scores_before"],
                         after=check["scores_after"])
    mean_change_figure(sources, translated.images, out / "mean_change.png")

    bkw = dict(force=force, fractions=fractions, seeds=seeds, epochs=epochs, min_steps=min_steps, n_boot=n_boot,
               classifier_kwargs=classifier_kwargs)
    bench = _benchmark(out / "benchmark", real, translated, classic=classic, **bkw)
    ctrl, versus = None, None
    if control:
        ctrl = _benchmark(out / "benchmark_control", real, oversampled_positives(real), classic=False, **bkw)
        versus = compare_ensembles(bench, ctrl, ARM_EXTRA, n_boot=n_boot)

    splits = np.asarray(real.splits)
    y = np.asarray(real.labels).reshape(-1)
    result = {
        "format": "medsynth-lesion-insertion/1",
        "date": _dt.date.today().isoformat(),
        "command": command,
        "run": run_info or {},
        "data": {s: {"images": int((splits == s).sum()), "label1": int(((splits == s) & (y == 1)).sum())}
                 for s in ("train", "val", "test")},
        "translated": {"n": int(len(src_idx)), "from": "every label-0 image of the training split",
                       "label": 1, "split": "train", "written": written},
        "cycle_error_l1": _mean_ci(errs["cycle"]),
        "change_l1": _mean_ci(errs["change"]),
        "check": {k: v for k, v in check.items() if not k.startswith("scores_")},
        "pairs_shown": shown,
        "benchmark": {"settings": {k: bench["config"][k] for k in ("fractions", "seeds", "epochs", "min_steps",
                                                                    "n_boot", "arms")},
                      "summary": bench["summary"], "diffs": bench["diffs"],
                      "n_test": bench["n_test"], "n_test_patients": bench["n_test_patients"],
                      "timings": bench["timings"], "config": bench["config"]},
        "control": None if ctrl is None else {
            "what": "real + one more copy of every nodule-bearing training image of the kept patients "
                    "(arm real+extra of benchmark_control/)",
            "summary": ctrl["summary"], "diffs": ctrl["diffs"], "timings": ctrl["timings"]},
        "translated_vs_oversampled": versus,
        "notes": notes,
        "seconds": time.perf_counter() - t0,
    }
    write_text(out / "results.json", json.dumps(result, indent=1) + "\n")
    write_text(out / "README.md", markdown(result))
    return result


def positive_fidelity(encoder, real, sets: dict[str, torch.Tensor], *, repeats: int = 5, seed: int = 0) -> dict:
    """Fréchet distance of image sets to the real nodule-bearing training images, on one encoder.

    Protocol (as ``medsynth evaluate``, at the size the positives allow): the real label-1 training
    images are split at random into halves A and B of ``h`` images; every set is subsampled to ``h``
    and compared with A, and B against A gives the real-vs-real floor at the same ``h`` (FD is biased
    upward at small ``n``, so only figures at one ``h`` compare). Mean ± sd over ``repeats`` splits.

    Args:
        encoder: feature encoder (:func:`medsynth.metrics.fidelity.load_encoder`).
        real: ``ImageSet`` with splits and labels.
        sets: name -> images ``(N, C, H, W)`` in [-1, 1] (e.g. translated positives, their nodule-free
            sources, a generator's class-1 samples).

    Returns:
        ``{"h": h, "floor": {mean, sd}, "sets": {name: {mean, sd, n}}}``.
    """
    from medsynth.metrics.fidelity import extract_features, frechet_distance

    splits, y = np.asarray(real.splits), np.asarray(real.labels).reshape(-1)
    keep = np.flatnonzero((splits == "train") & (y == 1))
    pos = torch.as_tensor(real.images, dtype=torch.float32)[torch.as_tensor(keep)]
    h = min(len(pos) // 2, *(len(v) for v in sets.values()))
    if h < 10:
        raise MedsynthError(None, f"positive_fidelity: only {h} images per half; too few for a Fréchet distance")
    f_pos = extract_features(encoder, pos)
    f_sets = {k: extract_features(encoder, torch.as_tensor(v, dtype=torch.float32)) for k, v in sets.items()}
    rng = np.random.default_rng(seed)
    floor, out = [], {k: [] for k in sets}
    for _ in range(repeats):
        perm = rng.permutation(len(pos))
        a, b = f_pos[perm[:h]], f_pos[perm[h:2 * h]]
        floor.append(frechet_distance(b, a))
        for k, f in f_sets.items():
            out[k].append(frechet_distance(f[rng.choice(len(f), h, replace=False)], a))

    def ms(v):
        return {"mean": float(np.mean(v)), "sd": float(np.std(v))}

    return {"h": int(h), "repeats": repeats, "floor": ms(floor),
            "sets": {k: {**ms(v), "n": int(len(f_sets[k]))} for k, v in out.items()}}


def _check_reading(chk: dict) -> str:
    """One sentence on whether the out-of-fold classifier sees an inserted lesion."""
    d = chk["score_change"]
    ref = chk["real_positive"]["mean_score"][0]
    after = chk["after"]["mean_score"][0]
    if d[1] > 0:
        rel = "at or above" if after >= ref else "below"
        return (f"the classifier scores the translations higher than their sources (CI above 0), {rel} its mean "
                f"score on real nodule-bearing films ({ref:.3f}).")
    if d[2] < 0:
        return "the classifier scores the translations *lower* than their sources: no lesion is detected."
    return "no significant change in the classifier's score: it does not see an inserted lesion."


def _f(v, nd=3) -> str:
    return "nan" if v is None else f"{v:.{nd}f}"


def _ci(t, nd=3, pct=False) -> str:
    if pct:
        return f"{100 * t[0]:.0f} % [{100 * t[1]:.0f}, {100 * t[2]:.0f}]"
    return f"{t[0]:.{nd}f} [{t[1]:.{nd}f}, {t[2]:.{nd}f}]"


def markdown(res: dict) -> str:
    """The README of a lesion-insertion result (tables and the reading)."""
    from medsynth.downstream.benchmark import ARM_EXTRA

    run, chk, b = res["run"], res["check"], res["benchmark"]
    lines = [
        "# CycleGAN lesion insertion on the phantom lung-spot radiographs",
        "",
        "Domain A = nodule-free (label 0), B = nodule-bearing (label 1), trained on the training split only. "
        "Every nodule-free **training** film is translated a2b into a synthetic positive (label 1), which "
        "stays in the training split with its source patient: the benchmark adds it only when that patient "
        "is in the real training subset. Written sets carry only the synthetic writer's identity "
        "(`SYNTHETIC-<n>`, `DERIVED\\SECONDARY`).",
        "",
        "```bash",
        res.get("command") or "python -m pipelines.studies.lesion_insertion",
        "```",
        "",
        "The CycleGAN (preset `medsynth/presets/xray_cyclegan.yaml`, unchanged) was trained with",
        "",
        "```bash",
        f"medsynth train --modality xray --model cyclegan --minutes {run.get('minutes', '?')} "
        f"--set train.clock={run.get('clock', 'process')} --set train.threads={run.get('threads', 1)}",
        "```",
        "",
        f"CycleGAN run: `{run.get('name', '?')}`, {run.get('step', '?')} steps (batch {run.get('batch_size', '?')}), "
        f"{_f(run.get('cpu_minutes'), 1)} CPU-minutes on 1 thread (process clock); training cycle loss (L1 of A->B->A "
        f"plus B->A->B, batch means) {_f(run.get('cycle_first'))} at the first tick (step 50) -> "
        f"{_f(run.get('cycle_last'))} at the last.",
        "",
        "## Before / after",
        "",
        "![pairs](pairs.png)",
        "",
        "![mean change](mean_change.png)",
        "",
        f"On the {res['translated']['n']} translated training films (mean, bootstrap 95 % CI over images):",
        "",
        f"* cycle reconstruction error |G_ba(G_ab(a)) - a|: {_ci(res['cycle_error_l1'])} "
        "(intensity units of [-1, 1])",
        f"* change made by the translation |G_ab(a) - a|: {_ci(res['change_l1'])}",
        "",
        f"Out-of-fold classifier check ({chk['folds']} patient folds of the training split; each classifier "
        f"trained {chk['epochs']} epochs on the real films of the other fold, best epoch and Youden threshold "
        f"on the real validation split, validation AUROC {', '.join(_f(v) for v in chk['val_auroc'])}):",
        "",
        "| images | n | mean P(nodule) [95 % CI] | scored positive [95 % CI] |",
        "| --- | ---: | --- | --- |",
        f"| nodule-free sources (before) | {chk['n_sources']} | {_ci(chk['before']['mean_score'])} | "
        f"{_ci(chk['before']['frac_positive'], pct=True)} |",
        f"| their translations (after) | {chk['n_sources']} | {_ci(chk['after']['mean_score'])} | "
        f"{_ci(chk['after']['frac_positive'], pct=True)} |",
        f"| real nodule-bearing films (reference) | {chk['n_real_positive']} | "
        f"{_ci(chk['real_positive']['mean_score'])} | {_ci(chk['real_positive']['frac_positive'], pct=True)} |",
        "",
        f"Paired change in P(nodule), after - before: {_ci(chk['score_change'])}: {_check_reading(chk)}",
        "",
        "## Detection benchmark",
        "",
        "Arms: `real`; `real+translated` (= `real+extra` in `benchmark/`: real + the translated positives of "
        "the kept patients); `real+classic` (MONAI flips + small affine, for context); and the control "
        "`real+oversampled` (= `real+extra` in `benchmark_control/`: real + one more copy of every kept "
        "nodule-bearing film, about as many added positives, optimiser steps and class-balance shift as the "
        "translation, but no new image). "
        f"{len(b['settings']['seeds'])} seeds, {b['settings']['epochs']} epochs (at least "
        f"{b['settings']['min_steps']} steps), best epoch on the real validation split, 1 thread. "
        f"Test: {b['n_test']} images of {b['n_test_patients']} held-out patients. AUROC of the seed ensemble "
        "with patient-bootstrap 95 % CI; seed mean ± sd beside it.",
        "",
        "| arm | real patients | images real + added | AUROC [95 % CI] | seed mean ± sd | sens@90spec |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    ctrl = res.get("control")
    rows = [(ARM_NAMES.get(r["arm"], r["arm"]), r) for r in b["summary"]]
    diffs = [(ARM_NAMES.get(d["arm"], d["arm"]), d) for d in b["diffs"]]
    if ctrl:
        rows += [("real+oversampled", r) for r in ctrl["summary"] if r["arm"] == ARM_EXTRA]
        diffs += [("real+oversampled", d) for d in ctrl["diffs"] if d["arm"] == ARM_EXTRA]
    order = ("real", "real+translated", "real+oversampled", "real+classic")
    for name, r in sorted(rows, key=lambda t: (t[1]["fraction"], order.index(t[0]) if t[0] in order else 9)):
        lines.append(f"| {name} | {100 * r['fraction']:.0f} % | {r['n_train_real']} + {r['n_train_synthetic']} | "
                     f"{_f(r['auroc'])} [{_f(r['auroc_lo'])}, {_f(r['auroc_hi'])}] | "
                     f"{_f(r['auroc_seed_mean'])} ± {_f(r['auroc_seed_sd'])} | {_f(r['sens_at_90spec'])} |")
    lines += ["", "Paired patient bootstrap on the seed ensembles (arm - real; last rows: translated - oversampled):",
              "", "| comparison | fraction | metric | difference [95 % CI] | p | per-seed mean ± sd | reading |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, d in sorted(diffs, key=lambda t: (order.index(t[0]) if t[0] in order else 9, t[1]["fraction"],
                                                t[1]["metric"] != "auroc", t[1]["metric"])):
        lines.append(f"| {name} - real | {100 * d['fraction']:.0f} % | {d['metric']} | {d['diff']:+.3f} "
                     f"[{d['lo']:+.3f}, {d['hi']:+.3f}] | {_f(d['p'])} | {d['diff_seed_mean']:+.3f} ± "
                     f"{d['diff_seed_sd']:.3f} | {reading(d)} |")
    for d in sorted(res.get("translated_vs_oversampled") or [], key=lambda d: (d["fraction"], d["metric"] != "auroc")):
        lines.append(f"| translated - oversampled | {100 * d['fraction']:.0f} % | {d['metric']} | {d['diff']:+.3f} "
                     f"[{d['lo']:+.3f}, {d['hi']:+.3f}] | {_f(d['p'])} | | {reading(d)} |")
    lines += ["", "## Reading", ""]
    for name, d in sorted(diffs, key=lambda t: (order.index(t[0]) if t[0] in order else 9, t[1]["fraction"])):
        if d["metric"] == "auroc":
            lines.append(f"* {name} vs real, {100 * d['fraction']:.0f} % of the training patients: test AUROC "
                         f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]: {reading(d)}.")
    for d in res.get("translated_vs_oversampled") or []:
        if d["metric"] == "auroc":
            lines.append(f"* translated vs oversampled positives, {100 * d['fraction']:.0f} %: AUROC "
                         f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]: {reading(d)}.")
    if res.get("notes"):
        lines += ["", res["notes"]]
    lines += ["", "Files: `results.json` (every figure), `benchmark/` and `benchmark_control/` (per-seed rows, CSV, "
              "plot, test predictions), `pairs.png`, `mean_change.png`.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# training

def train_cyclegan(runs: Path, *, minutes: float, data: str, max_steps: int, seed: int) -> Path:
    """Train (or resume, or reuse) the CycleGAN under ``runs`` with ``medsynth train``."""
    return train_to_budget(runs, ["--modality", "xray", "--model", "cyclegan", "--data", data, "--seed", str(seed)],
                           minutes=minutes, max_steps=max_steps, sets=[], name="cyclegan")


def describe_run(run: Path, cfg) -> dict:
    """Name, steps, CPU minutes and the first/last training cycle loss of a run."""
    info = checkpoint_progress(run) or {}
    ticks = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines() if s.strip()] \
        if (run / "stats.jsonl").is_file() else []
    cyc = [t["cycle"] for t in ticks if "cycle" in t]
    return {"name": run.name, "path": str(run), "step": info.get("step"), "batch_size": int(cfg.train.batch_size),
            "cpu_minutes": info.get("cpu_seconds", 0.0) / 60.0, "wall_minutes": info.get("seconds", 0.0) / 60.0,
            "cycle_first": cyc[0] if cyc else None, "cycle_last": cyc[-1] if cyc else None,
            "train_split": cfg.data.split, "size": int(cfg.data.size), "minutes": cfg.train.minutes,
            "clock": getattr(cfg.train, "clock", "wall"), "threads": cfg.train.threads}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="default", help="manifest with patient-level splits (default: sample data)")
    ap.add_argument("--run", default=None, help="reuse this CycleGAN run directory (skips training)")
    ap.add_argument("--minutes", type=float, default=8.0, help="CycleGAN CPU-minutes (process clock, 1 thread)")
    ap.add_argument("--max-steps", type=int, default=10**6)
    ap.add_argument("--seed", type=int, default=0, help="CycleGAN training seed")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "lesion_insertion"), help="parent of the CycleGAN run")
    ap.add_argument("--fractions", default="0.25,1.0")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--min-steps", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--check-epochs", type=int, default=20)
    ap.add_argument("--write", default=None, help="also write the translated set here (DICOM, marked synthetic)")
    ap.add_argument("--force", action="store_true", help="rerun the benchmarks even if cached")
    ap.add_argument("--no-classic", action="store_true", help="leave out the real+classic context arm")
    ap.add_argument("--no-control", action="store_true", help="leave out the oversampled-positives control")
    ap.add_argument("--notes", default=None, help="Markdown file appended to the README's reading")
    ap.add_argument("--fidelity-encoder", default=None,
                    help="only score fidelity: FD of the translated positives (and their sources, and "
                         "--compare-run's class-1 samples) to the real positives on this saved encoder -> "
                         "OUT/fidelity.json; nothing else is rerun")
    ap.add_argument("--compare-run", default=None, help="a class-conditional generator run for --fidelity-encoder")
    ap.add_argument("--out", default=str(ROOT / "reports" / "lesion_insertion"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    from medsynth.config import load_config
    from medsynth.data.dataset import load_image_set
    from medsynth.runs import load_trained

    data = args.data
    if data in ("", "default"):
        data = str(ROOT / "sample_data" / "manifest.csv")
    if args.run:
        run = Path(args.run)
    else:
        run = train_cyclegan(Path(args.runs), minutes=args.minutes, data=data, max_steps=args.max_steps,
                             seed=args.seed)
    cfg = load_config(run / "config.yaml")
    if cfg.model.name != "cyclegan":
        raise MedsynthError(run, f"is a {cfg.model.name} run; lesion insertion needs a cyclegan run")
    if cfg.data.split != "train":
        raise MedsynthError(run, f"was trained on split {cfg.data.split!r}; only a training-split CycleGAN keeps "
                                 "validation and test images out of the translated positives")
    _, model, _ = load_trained(run)
    real = load_image_set(data, modality=cfg.data.modality, size=cfg.data.size, spatial_dims=cfg.data.spatial_dims,
                          ct_window=cfg.data.ct_window, split=None)
    cmd = "OMP_NUM_THREADS=1 python -m pipelines.studies.lesion_insertion " + " ".join(
        argv if argv is not None else sys.argv[1:])
    if args.fidelity_encoder:
        from medsynth.metrics.fidelity import encoder_fingerprint, load_encoder

        enc = load_encoder(args.fidelity_encoder)
        translated, src_idx = translate_negatives(model, real)
        sets = {"cyclegan a2b (translated negatives)": translated.images,
                "nodule-free sources (before translation)":
                    torch.as_tensor(real.images, dtype=torch.float32)[torch.as_tensor(src_idx)]}
        if args.compare_run:
            _, gen, _ = load_trained(args.compare_run)
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                sets[f"{gen.registry_name} class 1 samples ({Path(args.compare_run).name})"] = gen.sample(
                    500, labels=torch.ones(500, dtype=torch.long), generator=g).float().clamp(-1, 1)
        res = {"format": "medsynth-positive-fidelity/1", "command": cmd, "cyclegan_run": describe_run(run, cfg),
               "encoder": {"path": args.fidelity_encoder, "fingerprint": encoder_fingerprint(enc)},
               **positive_fidelity(enc, real, sets)}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_text(Path(args.out) / "fidelity.json", json.dumps(res, indent=1) + "\n")
        for k, v in res["sets"].items():
            log.info("FD to real positives: %s %.1f ± %.1f (floor %.1f)", k, v["mean"], v["sd"], res["floor"]["mean"])
        return res
    fractions = tuple(float(f) for f in args.fractions.split(","))
    res = run_pipeline(real, model, args.out, fractions=fractions, seeds=tuple(range(args.seeds)),
                       epochs=args.epochs, min_steps=args.min_steps, n_boot=args.n_boot,
                       check_epochs=args.check_epochs, write_dir=args.write, run_info=describe_run(run, cfg),
                       force=args.force, classic=not args.no_classic, control=not args.no_control,
                       notes=Path(args.notes).read_text() if args.notes else "", command=cmd)
    for d in res["benchmark"]["diffs"]:
        if d["metric"] == "auroc":
            log.info("%s - real at %.2f: AUROC %+.3f [%+.3f, %+.3f] p=%.3f", d["arm"], d["fraction"], d["diff"],
                     d["lo"], d["hi"], d["p"])
    return res
