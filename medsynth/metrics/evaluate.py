"""The fidelity + privacy suite for one run: ``medsynth evaluate RUN``.

:func:`evaluate_sets` computes every metric from image tensors; :func:`evaluate_run` loads a
run directory (generator and discriminator from ``checkpoints/last.pt`` through
:func:`medsynth.runs.load_trained`, real data from the run's local record of its training data),
samples synthetic images, calls :func:`evaluate_sets` and writes
``RUN/evaluate/evaluation.{json,md}`` plus PNG figures (atomic writes; the JSON through
:mod:`medsynth.results`, schema ``evaluation``).

Features: the project's own feature encoder (:mod:`medsynth.metrics.fidelity`: convolutional
autoencoder trained on the real training images only, bottleneck + texture statistics; no
downloaded weights). Its fingerprint is recorded; feature-space numbers are comparable only
between evaluations with the same fingerprint (pass ``encoder=`` a saved file to keep it
fixed across runs; by default it is trained here with ``seed`` and saved as
``RUN/evaluate/encoder.pt``).

Every fidelity metric has a real-vs-real floor, computed with one protocol: the real training
images are split at random into halves A and B (size h each); the synthetic set is subsampled
to m = min(h, M) images; the metric of *synthetic (m) vs real A* is set against the same
metric of *real B (m) vs real A*, each as mean ± sd over ``repeats`` random splits. Diversity
(mean pairwise MS-SSIM) is a property of one set: synthetic against real, and real half A
against real half B. With patient ids (``train_groups``) the halves split by patient
(:func:`split_indices`); with held-out real images, ``fd_heldout`` sets their Fréchet distance to
A against B's at the same n: the encoder's bias toward the images it was fitted on.

Second judge: a classifier two-sample test (:mod:`medsynth.metrics.two_sample`, ``fidelity.two_sample``):
a small CNN trained to tell the synthetic from the real training images, its cross-fitted AUROC
with a bootstrap CI and a real-half-vs-real-half floor; it learns its own features, so it sees what
the fixed encoder can miss (noise, texture, upsampling artefacts).

Progress: :func:`evaluate_sets` advances one ``evaluate`` :class:`~medsynth.progress.Progress` per
stage (:data:`EVALUATE_SETS_STAGES`); :func:`evaluate_run` adds sampling, the encoder and writing.

Privacy: DCR and NNDR of synthetic→training images against leave-one-out training→training
(and held-out→training) distributions, the fraction of synthetic images closer than the
real-real 1st percentile, the closest pairs, and two membership-inference attacks (distance
and discriminator) on training vs held-out real images with a held-out-vs-held-out control
(:mod:`medsynth.metrics.membership`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsynth.atomic import write_bytes, write_text
from medsynth.errors import MedsynthError
from medsynth.figures import make_grid, new_figure, png_bytes
from medsynth.metrics.diversity import mean_pairwise_ms_ssim, ms_ssim_settings
from medsynth.metrics.fidelity import (
    encoder_fingerprint,
    extract_features,
    frechet_distance,
    load_encoder,
    save_encoder,
    train_feature_encoder,
)
from medsynth.metrics.intensity import (
    BODY_HU_THRESHOLD,
    body_threshold,
    intensity_distance,
    intensity_histogram,
)
from medsynth.metrics.membership import (
    dcr_nndr,
    discriminator_scores,
    distance_attack_scores,
    distance_summary,
    membership_attack,
    nearest_neighbours,
)
from medsynth.metrics.prdc import kernel_inception_distance, prdc
from medsynth.metrics.two_sample import READING as TWO_SAMPLE_READING
from medsynth.metrics.two_sample import two_sample_test
from medsynth.progress import Progress
from medsynth.results import EVALUATION, write_result

logger = logging.getLogger(__name__)

#: flagged when more than this fraction of synthetic images is closer to a training image than
#: the 1st percentile of real-to-real distances (the same rule as the report's DCR screen).
MEMORISATION_FLAG_FRACTION = 0.05
N_CLOSEST_PAIRS = 8
#: synthetic images per ``model.sample`` call of :func:`evaluate_run` (the draws of one call for all)
SAMPLE_CHUNK = 256
#: images of each set (synthetic, real) in the side-by-side sample figure
GRID_N = 16
#: the figures of ``RUN/evaluate/`` that show real training images (the side-by-side samples, the
#: closest synthetic/training pairs): they stay in the run, and a report shows them only when
#: asked to (``medsynth report --show-real``)
REAL_IMAGE_FIGURES = frozenset({"fig_samples.png", "fig_closest_pairs.png"})
#: the stages of :func:`evaluate_sets`, as its progress counts them
EVALUATE_SETS_STAGES = ("features", "fidelity", "diversity", "privacy", "membership inference", "two-sample test",
                        "figures")


def _mean_sd(vals: list[float]) -> dict[str, float]:
    a = np.asarray(vals, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def _agg(dicts: list[dict], keys) -> dict:
    return {k: _mean_sd([d[k] for d in dicts]) for k in keys}


def prdc_k(m: int) -> int:
    """Neighbours for precision/recall/density/coverage on ``m`` rows: 5, fewer for tiny sets."""
    return 5 if m > 10 else max(1, m - 2)


def floor_sizes(n_real: int, n_synth: int, groups=None) -> tuple[int, int]:
    """``(h, m)`` of the floor protocol (:func:`split_indices`): real half A has ``h = n_real // 2``
    rows; ``m`` rows of real half B and of the synthetic set are compared with A. With patient
    ``groups`` the patient cut across A's end gives B none of its rows, so B may be short by up to
    one patient's rows less one: ``m`` is capped by ``n_real - h - (largest patient - 1)``."""
    h = n_real // 2
    m = min(h, n_synth)
    if groups is not None and len(groups):
        largest = int(np.unique(np.asarray(groups), return_counts=True)[1].max())
        m = min(m, n_real - h - (largest - 1))
    return h, max(int(m), 1)


def split_indices(n_real: int, n_synth: int, repeats: int, rng: np.random.Generator, groups=None):
    """The floor protocol's random splits: per repeat ``(a, b, si)`` with ``a`` real half A (``h``
    rows), ``b`` ``m`` rows of real half B, ``si`` ``m`` synthetic rows (:func:`floor_sizes`). A
    metric compares synthetic ``si`` with ``a[:m]`` against real ``b`` with ``a[:m]``.

    With ``groups`` (``(n_real,)`` patient ids) the halves split by **patient**: patients are put
    in random order, A takes the first ``h`` of their rows, and B only rows of patients with no
    row in A, so two crops of one patient never make the floor look better than two patients do
    (60 % of LIDC crops share a patient with another crop).

    Yields:
        ``(a, b, si)`` index arrays, ``max(1, repeats)`` times.
    """
    h, m = floor_sizes(n_real, n_synth, groups)
    g = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    if g is not None and len(g) != n_real:
        raise MedsynthError("groups", f"{len(g)} patient ids for {n_real} real images")
    for _ in range(max(1, repeats)):
        if g is None:
            perm = rng.permutation(n_real)
            yield perm[:h], perm[h: h + m], rng.permutation(n_synth)[:m]
            continue
        order = rng.permutation(int(g.max()) + 1)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        rows = np.lexsort((rng.random(n_real), rank[g]))  # patients in random order, rows shuffled within
        a = rows[:h]
        in_a = np.zeros(int(g.max()) + 1, bool)
        in_a[g[a]] = True
        rest = rows[h:][~in_a[g[rows[h:]]]]
        yield rng.permutation(a), rng.permutation(rest)[:m], rng.permutation(n_synth)[:m]


def per_class_fidelity(fr: np.ndarray, yr: np.ndarray, fs: np.ndarray, ys: np.ndarray, *, seed: int = 0,
                       repeats: int = 5) -> dict:
    """Feature-space fidelity within each class, with real-vs-real floors.

    Per class ``c``: the floor protocol of :func:`split_indices` on the real rows of class ``c``
    against the synthetic rows of class ``c`` (FD; precision, recall and coverage with
    ``k = 5``, fewer when a class is small). Its own RNG (``[seed, 1]``), so adding it leaves the
    pooled figures unchanged.

    Args:
        fr: ``(N, F)`` real training features; ``yr`` ``(N,)`` their classes (-1 = unknown).
        fs: ``(M, F)`` synthetic features; ``ys`` ``(M,)`` the classes they were sampled for.

    Returns:
        ``{"<c>": {"n_real", "n_synthetic", "m", "fd", "fd_floor", "prdc", "prdc_floor"}}`` or
        ``{"<c>": {"skipped": reason}}`` per class, ``"k"`` per class inside ``prdc``.
    """
    if len(yr) != len(fr) or len(ys) != len(fs):
        raise MedsynthError("labels", f"{len(yr)} real / {len(ys)} synthetic labels for {len(fr)} / {len(fs)} images")
    rng = np.random.default_rng([seed, 1])
    out: dict[str, dict] = {}
    keys = ("precision", "recall", "coverage")
    for c in sorted({int(v) for v in yr} | {int(v) for v in ys}):
        if c < 0:
            continue
        r, sy = fr[yr == c], fs[ys == c]
        if len(r) < 24 or len(sy) < 6:
            out[str(c)] = {"skipped": f"{len(r)} real / {len(sy)} synthetic images (needs >= 24 / 6)"}
            continue
        m = min(len(r) // 2, len(sy))
        k = prdc_k(m)
        fd_s, fd_r, pr_s, pr_r = [], [], [], []
        for a, b, si in split_indices(len(r), len(sy), repeats, rng):
            fd_s.append(frechet_distance(sy[si], r[a[:m]]))
            fd_r.append(frechet_distance(r[b], r[a[:m]]))
            pr_s.append(prdc(r[a], sy[si], k=k))
            pr_r.append(prdc(r[a], r[b], k=k))
        out[str(c)] = {"n_real": len(r), "n_synthetic": len(sy), "m": int(m),
                       "fd": _mean_sd(fd_s), "fd_floor": _mean_sd(fd_r),
                       "prdc": {**_agg(pr_s, keys), "k": int(k)}, "prdc_floor": _agg(pr_r, keys)}
    return out


@contextmanager
def _stages(progress: Progress | None, total: int):
    """``progress`` as it is (the caller closes it), or a new ``evaluate`` progress of ``total`` stages."""
    if progress is not None:
        yield progress
        return
    with Progress("evaluate", total=total, unit="stages") as prog:
        yield prog
        prog.set_postfix("")


def _images(x, name: str, min_n: int) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to(torch.float32).cpu()
    if x.dim() not in (4, 5) or x.shape[1] != 1 or len(x) < min_n:
        raise MedsynthError(name, f"need at least {min_n} images (N, 1, H, W) or (N, 1, D, H, W), got {tuple(x.shape)}")
    return x


# --------------------------------------------------------------------------------------------
# figures (matplotlib object API, Agg canvas, no pyplot)


def _figure(w: float, h: float):
    return new_figure(w, h)


def _png(fig) -> bytes:
    return png_bytes(fig, tight=True)


def _view(x: torch.Tensor) -> np.ndarray:
    """(N, 1, *S) → (N, H, W); volumes show the central slice of the first axis."""
    if x.dim() == 5:
        x = x[:, :, x.shape[2] // 2]
    return x[:, 0].clamp(-1, 1).numpy()


def fig_samples(synth: torch.Tensor, real: torch.Tensor, *, seed: int = 0, n: int = GRID_N) -> bytes:
    """PNG: ``n`` random synthetic images (left) beside ``n`` random real training images (right).

    Args:
        synth, real: ``(M, 1, *S)`` / ``(N, 1, *S)`` in [-1, 1]; volumes show their central slice.
        seed: chooses the images (its own stream, ``[seed, 2]``: the metrics' draws are untouched).
    """
    rng = np.random.default_rng([seed, 2])
    si = np.sort(rng.choice(len(synth), size=min(n, len(synth)), replace=False))
    ri = np.sort(rng.choice(len(real), size=min(n, len(real)), replace=False))
    note = " (central slices)" if synth.dim() == 5 else ""
    fig = _figure(9, 4.8)
    for ax, x, idx, title in zip(fig.subplots(1, 2), (synth, real), (si, ri), ("synthetic", "real training")):
        ax.imshow(make_grid(x[torch.as_tensor(idx)], nrow=4, pad=1), cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(f"{len(idx)} {title}{note}", fontsize=10)
        ax.axis("off")
    return _png(fig)


def fig_closest_pairs(synth: torch.Tensor, real: torch.Tensor, dists: np.ndarray) -> bytes:
    """Side-by-side PNG: synthetic images (top) above their nearest training image (bottom)."""
    s, r = _view(synth), _view(real)
    n = len(dists)
    fig = _figure(1.3 * n + 0.7, 3.2)
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        for i, (img, lab) in enumerate(((s[j], "synthetic"), (r[j], "nearest training"))):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(lab, fontsize=8)
        axes[0, j].set_title(f"DCR={dists[j]:.2f}", fontsize=8)
    return _png(fig)


def _fig_distances(panels: list[tuple[str, dict[str, np.ndarray]]]) -> bytes:
    fig = _figure(5 * len(panels), 3.5)
    for ax, (title, series) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        allv = np.concatenate(list(series.values()))
        lo, hi = float(allv.min()), float(allv.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        for lab, v in series.items():
            ax.hist(v, bins=bins, density=True, alpha=0.5, label=f"{lab} (n={len(v)})")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _png(fig)


def _fig_intensity(real, synth, modality, ct_window) -> bytes:
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    for lab, x in (("real training", real), ("synthetic", synth)):
        h, edges, frac = intensity_histogram(x, modality=modality, ct_window=ct_window)
        c = (edges[:-1] + edges[1:]) / 2
        ax.plot(c, h / max(h.sum(), 1), label=f"{lab} (mask {frac:.0%} of pixels)")
    ax.set_xlabel("grey level (normalised)" if modality == "xray" else "HU")
    ax.set_ylabel("fraction of body pixels")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# the suite


def evaluate_sets(
    train_x,
    synth_x,
    *,
    encoder: nn.Module,
    modality: str,
    ct_window: Any = "lung",
    train_groups=None,
    heldout_x=None,
    heldout_groups=None,
    d_score: Callable[[torch.Tensor, np.ndarray | None], np.ndarray] | None = None,
    train_labels=None,
    heldout_labels=None,
    synth_labels=None,
    seed: int = 0,
    repeats: int = 5,
    kid_subsets: int = 50,
    ms_ssim_pairs: int = 200,
    n_boot: int = 1000,
    two_sample_kw: dict | None = None,
    progress: Progress | None = None,
) -> tuple[dict, dict[str, bytes]]:
    """Fidelity and privacy metrics of a synthetic set against the real training images.

    Args:
        train_x: ``(N, 1, *S)`` float32 in [-1, 1], real images the generator was trained on
            (N ≥ 24: halves of ≥ 12 for the k-NN metrics).
        synth_x: ``(M, 1, *S)`` float32 in [-1, 1], synthetic images (M ≥ 6).
        encoder: the feature encoder (trained on ``train_x`` only); kept fixed for comparisons.
        modality: ``"xray"`` or ``"ct"`` (intensity units, body mask).
        ct_window: the CT window the images were normalised with (HU conversion).
        train_groups, heldout_groups: optional patient ids (bootstrap / control by patient).
        heldout_x: ``(K, 1, *S)`` real images *not* trained on (K ≥ 4); enables the
            membership-inference attacks. ``None`` skips them (recorded).
        d_score: optional ``f(images, labels) -> (n,) scores``, the discriminator attack;
            called once on training + held-out images together.
        train_labels, heldout_labels: ``(N,)`` / ``(K,)`` labels handed to ``d_score``.
        synth_labels: ``(M,)`` class of each synthetic image. With ``train_labels`` it adds
            ``fidelity.per_class``: the same split protocol within each class (FD, precision,
            recall, coverage with their floors), so a conditional generator that covers one class
            (say, benign) but not the other (malignant) is visible. Classes with fewer than 24
            real or 6 synthetic images, or label -1, are listed as skipped.
        seed: seeds the real/real splits, subsamples, KID subsets, MS-SSIM pairs, bootstrap.
        repeats: random real/real splits for the floors (mean ± sd).
        kid_subsets: KID subsets per split.
        ms_ssim_pairs: random pairs for each mean pairwise MS-SSIM.
        n_boot: bootstrap resamples for the attack AUROC CIs and the two-sample test's CIs.
        two_sample_kw: settings passed to :func:`medsynth.metrics.two_sample.two_sample_test`
            (``folds``, ``epochs``, ``width``...; default its defaults).
        progress: a :class:`medsynth.progress.Progress` to advance by one per stage
            (:data:`EVALUATE_SETS_STAGES`); default a new ``evaluate`` progress of those stages.

    Returns:
        ``(result, figures)``: ``result`` a JSON-ready dict with ``fidelity`` and ``privacy``
        sections; ``figures`` PNG bytes by file name. ``fidelity.two_sample`` is the classifier
        two-sample test of the real training images against the synthetic images
        (:func:`~medsynth.metrics.two_sample.two_sample_test`: out-of-fold AUROC of a small CNN told
        to separate them, with its CI, p-value and real-vs-real floor), or ``{"skipped": reason}``
        when a side has too few images.
    """
    t0 = time.perf_counter()
    tr = _images(train_x, "train_x", 24)
    sy = _images(synth_x, "synth_x", 6)
    if sy.shape[1:] != tr.shape[1:]:
        raise MedsynthError("synth_x", f"image shape {tuple(sy.shape[1:])} differs from the real images' {tuple(tr.shape[1:])}")
    ho = None if heldout_x is None else _images(heldout_x, "heldout_x", 4)
    if ho is not None and ho.shape[1:] != tr.shape[1:]:
        raise MedsynthError("heldout_x", f"image shape {tuple(ho.shape[1:])} differs from {tuple(tr.shape[1:])}")
    with _stages(progress, len(EVALUATE_SETS_STAGES)) as prog:
        rng = np.random.default_rng(seed)
        prog.set_postfix("features")
        fr = extract_features(encoder, tr)
        fs = extract_features(encoder, sy)
        prog.update(1)
        prog.set_postfix("fidelity")
        groups = None if train_groups is None else np.asarray(train_groups).ravel()
        h, m = floor_sizes(len(tr), len(sy), groups)
        k = prdc_k(m)
        rows: dict[str, list] = {key: [] for key in ("fd_s", "fd_r", "kid_s", "kid_r", "prdc_s", "prdc_r", "int_s", "int_r",
                                                     "fd_h", "fd_rh")}
        fh = None if ho is None or len(ho) < 8 else extract_features(encoder, ho)
        mh = 0 if fh is None else min(m, len(fh))
        for rep, (a, b, si) in enumerate(split_indices(len(tr), len(sy), repeats, rng, groups)):
            rows["fd_s"].append(frechet_distance(fs[si], fr[a[:m]]))
            rows["fd_r"].append(frechet_distance(fr[b], fr[a[:m]]))
            rows["kid_s"].append(kernel_inception_distance(fs[si], fr[a], subset_size=m, n_subsets=kid_subsets,
                                                           seed=seed + rep)["mean"])
            rows["kid_r"].append(kernel_inception_distance(fr[b], fr[a], subset_size=m, n_subsets=kid_subsets,
                                                           seed=seed + rep)["mean"])
            rows["prdc_s"].append(prdc(fr[a], fs[si], k=k))
            rows["prdc_r"].append(prdc(fr[a], fr[b], k=k))
            ta = tr[torch.as_tensor(a)]
            rows["int_s"].append(intensity_distance(sy[torch.as_tensor(si)], ta, modality=modality, ct_window=ct_window))
            rows["int_r"].append(intensity_distance(tr[torch.as_tensor(b)], ta, modality=modality, ct_window=ct_window))
            if fh is not None:  # held-out real images (not trained on by the encoder) vs A, at equal n
                rows["fd_h"].append(frechet_distance(fh[rng.permutation(len(fh))[:mh]], fr[a[:mh]]))
                rows["fd_rh"].append(frechet_distance(fr[b[:mh]], fr[a[:mh]]))
        prdc_keys = ("precision", "recall", "density", "coverage")
        int_keys = [key for key in rows["int_s"][0] if key != "mask_fraction_b"]
        prog.update(1)
        prog.set_postfix("diversity")
        half = rng.permutation(len(tr))
        div = {
            "synthetic": mean_pairwise_ms_ssim(sy, n_pairs=ms_ssim_pairs, seed=seed),
            "real": mean_pairwise_ms_ssim(tr, n_pairs=ms_ssim_pairs, seed=seed),
            "real_half_a": mean_pairwise_ms_ssim(tr[torch.as_tensor(half[:h])], n_pairs=ms_ssim_pairs, seed=seed + 1),
            "real_half_b": mean_pairwise_ms_ssim(tr[torch.as_tensor(half[h:])], n_pairs=ms_ssim_pairs, seed=seed + 2),
            "settings": {k2: v for k2, v in ms_ssim_settings(tr.shape[2:]).items()},
        }
        fid = {
            "protocol": (f"synthetic (m={m}) vs real half A (h={h}) against real half B (m={m}) vs real half A; "
                         f"mean ± sd over {max(1, repeats)} random splits"
                         + (" by patient (no patient in both halves)" if groups is not None else " by image")),
            "fd_heldout": ({"skipped": "fewer than 8 held-out real images"} if fh is None else {
                "heldout": _mean_sd(rows["fd_h"]), "floor_same_n": _mean_sd(rows["fd_rh"]), "n": int(mh),
                "reading": ("held-out real images (never seen by the encoder) vs real half A, against real half B "
                            "(training images the encoder was fitted on) vs A at the same n: a held-out figure "
                            "above the floor is the encoder's bias toward its own training images, a floor any "
                            "synthetic set is held to as well")}),
            "n_real_train": len(tr), "n_synthetic": len(sy), "m": int(m), "h": int(h),
            "repeats": int(max(1, repeats)),
            "fd": {"synthetic": _mean_sd(rows["fd_s"]), "floor": _mean_sd(rows["fd_r"])},
            "kid": {"synthetic": _mean_sd(rows["kid_s"]), "floor": _mean_sd(rows["kid_r"]),
                    "kernel": "(x.y/F + 1)^3", "subsets_per_split": int(kid_subsets), "subset_size": int(m)},
            "prdc": {"synthetic": _agg(rows["prdc_s"], prdc_keys), "floor": _agg(rows["prdc_r"], prdc_keys), "k": int(k)},
            "intensity": {
                "units": "normalised grey level [-1, 1]" if modality == "xray" else f"HU (window {ct_window})",
                "mask_rule": (f"value > {body_threshold(modality, ct_window):.3f} (normalised)"
                              + ("" if modality == "xray" else f", i.e. above max(-950 HU = {BODY_HU_THRESHOLD:g}, "
                                 "lowest 2.5 % of the window)")),
                "synthetic": _agg(rows["int_s"], int_keys),
                "floor": _agg(rows["int_r"], int_keys),
            },
            "diversity_ms_ssim": div,
            "encoder": {
                "kind": "convolutional autoencoder (bottleneck + texture statistics) trained on the real training images only",
                "fingerprint": encoder_fingerprint(encoder),
                "feature_dim": int(fr.shape[1]),
                "train_info": dict(getattr(encoder, "train_info", {})),
            },
        }
        if synth_labels is not None and train_labels is not None:
            fid["per_class"] = per_class_fidelity(fr, np.asarray(train_labels).ravel(), fs,
                                                  np.asarray(synth_labels).ravel(), seed=seed, repeats=repeats)
        prog.update(1)

        # ---- privacy: DCR / NNDR in pixel space
        prog.set_postfix("privacy")
        dcr, nndr = dcr_nndr(sy, tr)
        ref_dcr, ref_nndr = dcr_nndr(tr, tr, exclude_self=True)
        priv: dict[str, Any] = {
            "space": "pixels (flattened, [-1, 1]), L2",
            "dcr": distance_summary(dcr, ref_dcr),
            "nndr": distance_summary(nndr, ref_nndr),
            "reference": "leave-one-out training -> training",
        }
        dist_panels = {"synthetic → training": dcr, "training → training (LOO)": ref_dcr}
        nndr_panels = {"synthetic → training": nndr, "training → training (LOO)": ref_nndr}
        if ho is not None:
            ho_dcr, ho_nndr = dcr_nndr(ho, tr)
            priv["heldout_reference"] = {"dcr": distance_summary(dcr, ho_dcr), "nndr": distance_summary(nndr, ho_nndr)}
            dist_panels["held-out → training"] = ho_dcr
            nndr_panels["held-out → training"] = ho_nndr
        priv["memorisation_flag"] = bool(priv["dcr"]["frac_below_real_p1"] > MEMORISATION_FLAG_FRACTION)
        priv["flag_rule"] = f"dcr frac_below_real_p1 > {MEMORISATION_FLAG_FRACTION}"
        _, nn_idx = _nearest_index(sy, tr)
        order = np.argsort(dcr, kind="stable")[:N_CLOSEST_PAIRS]
        priv["closest_pairs"] = [{"synthetic_index": int(i), "train_index": int(nn_idx[i]), "dcr": float(dcr[i])} for i in order]
        prog.update(1)

        # ---- membership inference
        prog.set_postfix("membership inference")
        mia: dict[str, Any] = {}
        if ho is None:
            mia["skipped"] = "no held-out real images (the run trained on all rows): attacks need non-members"
        else:
            mia["n_members"], mia["n_nonmembers"] = len(tr), len(ho)
            mia["distance"] = membership_attack(distance_attack_scores(tr, sy), distance_attack_scores(ho, sy),
                                                member_groups=train_groups, nonmember_groups=heldout_groups,
                                                n_boot=n_boot, seed=seed)
            mia["distance"]["score"] = "minus L2 distance (pixels) of a real image to its nearest synthetic image"
            if d_score is None:
                mia["discriminator"] = {"skipped": "no discriminator supplied"}
            else:
                try:
                    labels = None
                    if train_labels is not None and heldout_labels is not None:
                        labels = np.r_[np.asarray(train_labels).ravel(), np.asarray(heldout_labels).ravel()]
                    s = np.asarray(d_score(torch.cat([tr, ho]), labels), dtype=np.float64)
                    mia["discriminator"] = membership_attack(s[: len(tr)], s[len(tr):], member_groups=train_groups,
                                                             nonmember_groups=heldout_groups, n_boot=n_boot, seed=seed)
                    mia["discriminator"]["score"] = "discriminator logit (eval mode, no augmentation)"
                except MedsynthError as exc:
                    logger.warning("discriminator attack skipped: %s", exc)
                    mia["discriminator"] = {"skipped": str(exc)}
        priv["membership_inference"] = mia
        prog.update(1)

        # ---- classifier two-sample test (its own seeded streams; the torch RNG of the caller is left as it was)
        prog.set_postfix("two-sample test")
        try:
            fid["two_sample"] = two_sample_test(tr, sy, seed=seed, n_boot=n_boot, **(two_sample_kw or {}))
        except MedsynthError as exc:
            logger.warning("two-sample test skipped: %s", exc)
            fid["two_sample"] = {"skipped": str(exc)}
        prog.update(1)

        # ---- figures
        prog.set_postfix("figures")
        figures: dict[str, bytes] = {
            "fig_samples.png": fig_samples(sy, tr, seed=seed),
            "fig_intensity.png": _fig_intensity(tr, sy, modality, ct_window),
            "fig_dcr_nndr.png": _fig_distances([("DCR (pixel L2)", dist_panels), ("NNDR (d1 / d2)", nndr_panels)]),
            "fig_closest_pairs.png": fig_closest_pairs(sy[torch.as_tensor(order)], tr[torch.as_tensor(nn_idx[order])],
                                                       dcr[order]),
        }
        prog.update(1)
    result = {"modality": modality, "image_shape": list(tr.shape[1:]), "seed": int(seed),
              "fidelity": fid, "privacy": priv, "seconds": round(time.perf_counter() - t0, 1)}
    return result, figures


def _nearest_index(q: torch.Tensor, ref: torch.Tensor):
    """Each query image's nearest reference image: ``(dist (N,), idx (N,))``, searched in bounded
    memory (:func:`~medsynth.metrics.membership.nearest_neighbours`)."""
    d, i = nearest_neighbours(q, ref, 1)
    return d[:, 0], i[:, 0]


# --------------------------------------------------------------------------------------------
# tables (shared by evaluation.md and the report)


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    v = float(v)
    if not math.isfinite(v):
        return "–"
    return f"{v:.{nd}g}" if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3) else f"{v:.{nd}f}"


def _ms(d: dict | None, nd: int = 3) -> str:
    return "–" if not d else f"{_f(d.get('mean'), nd)} ± {_f(d.get('sd'), nd)}"


def _auc(d: dict | None) -> str:
    if not d or "auroc" not in d:
        return (d or {}).get("skipped", "–")
    return f"{_f(d['auroc'])} [{_f(d['lo'])}, {_f(d['hi'])}]"


def _ci(d: dict | None) -> str:
    """``0.981 [0.968, 0.992]`` of ``{"auroc", "ci": [lo, hi]}`` (``–`` when missing)."""
    if not d or d.get("auroc") is None:
        return "–"
    lo, hi = (d.get("ci") or [None, None])[:2]
    return f"{_f(d['auroc'])} [{_f(lo)}, {_f(hi)}]"


def two_sample_table(ts: dict) -> tuple[str, list[str], list[list[str]]]:
    """``(title, header, rows)`` of the classifier two-sample test (``fidelity.two_sample``)."""
    header = ["test", "synthetic vs real: AUROC [95% CI]", "real half vs real half (floor)", "p (AUROC > 0.5)",
              "reading"]
    label = "two-sample classifier AUROC"
    if "skipped" in ts:
        return "Fidelity: two-sample classifier test", header, [[label, "–", "–", "–", f"skipped: {ts['skipped']}"]]
    fl = ts.get("floor") or {}
    title = (f"Fidelity: two-sample classifier test (a small CNN trained to tell synthetic from real images; m = "
             f"{ts.get('m')} of each, {ts.get('folds')}-fold cross-fitting, out-of-fold AUROC, bootstrap CI"
             + (f"; floor on {fl['n_per_side']} + {fl['n_per_side']} real images" if fl.get("n_per_side") else "")
             + ")")
    return title, header, [[label, _ci(ts), _ci(fl) if fl else "–", _f(ts.get("p_value")), TWO_SAMPLE_READING]]


def evaluation_tables(ev: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """``[(title, header, rows)]`` of an evaluation result (for Markdown and the report)."""
    fid, priv = ev.get("fidelity", {}), ev.get("privacy", {})
    out = []
    rows = [["Fréchet distance (features)", _ms(fid["fd"]["synthetic"]), _ms(fid["fd"]["floor"]), "lower"],
            ["KID (features, unbiased MMD²)", _ms(fid["kid"]["synthetic"], 4), _ms(fid["kid"]["floor"], 4), "lower (≈0)"]]
    for key in ("precision", "recall", "density", "coverage"):
        rows.append([f"{key} (k={fid['prdc']['k']})", _ms(fid["prdc"]["synthetic"][key]),
                     _ms(fid["prdc"]["floor"][key]), "higher (≈ floor)"])
    units = fid["intensity"]["units"]
    for key, d in fid["intensity"]["synthetic"].items():
        label = {"w1": f"intensity Wasserstein-1 in body mask ({units})",
                 "hist_intersection": "intensity histogram intersection",
                 "mask_fraction_a": "body-mask fraction of the compared images"}.get(
            key, key.replace("profile_l1_", "mean-intensity profile L1 along ") + f" ({units})")
        rows.append([label, _ms(d), _ms(fid["intensity"]["floor"].get(key)),
                     "higher" if key == "hist_intersection" else ("≈ floor" if key.startswith("mask") else "lower")])
    dv = fid["diversity_ms_ssim"]
    rows.append(["mean pairwise MS-SSIM (diversity)", f"{_f(dv['synthetic']['mean'])} (synthetic)",
                 (f"{_f(dv['real_half_a']['mean'])} / {_f(dv['real_half_b']['mean'])} (real halves A / B); "
                 f"{_f(dv['real']['mean'])} all real"), "≈ real; higher = mode collapse"])
    fh = fid.get("fd_heldout")
    if fh and "heldout" in fh:
        rows.insert(1, [f"encoder bias: FD of held-out real images (n={fh['n']}, not trained on)",
                        f"{_ms(fh['heldout'])} (held-out vs A)", f"{_ms(fh['floor_same_n'])} (B vs A, same n)",
                        "≈ floor = no bias"])
    out.append((f"Fidelity (synthetic vs real, with the real-vs-real floor; {fid.get('protocol', '')})",
                ["metric", "synthetic vs real A (mean ± sd)", "real B vs real A (floor)", "better"], rows))
    ts = fid.get("two_sample")
    if ts is not None:  # evaluations written before the test have none
        out.append(two_sample_table(ts))
    pc = fid.get("per_class")
    if pc:
        rows = []
        for c, d in pc.items():
            if "skipped" in d:
                rows.append([c, "–", "–", "–", "–", "–", d["skipped"]])
                continue
            rows.append([c, f"{d['n_real']} / {d['n_synthetic']}", f"{_ms(d['fd'], 2)} ({_ms(d['fd_floor'], 2)})"]
                        + [f"{_f(d['prdc'][key]['mean'])} ({_f(d['prdc_floor'][key]['mean'])})"
                           for key in ("precision", "recall", "coverage")] + [""])
        out.append(("Fidelity by class (the same protocol within each class; floor in brackets)",
                    ["class", "real / synthetic", "FD", "precision", "recall", "coverage", "note"], rows))
    rows = []
    for key, lab in (("dcr", "DCR (pixel L2)"), ("nndr", "NNDR")):
        d = priv[key]
        rows.append([lab, _f(d["median"]), _f(d["real_median"]), _f(d["real_p1"]),
                     f"{d['frac_below_real_p1']:.1%}", f"{d['frac_below_real_p5']:.1%}"])
    out.append(("Privacy: memorisation (synthetic → training vs training → training)",
                ["statistic", "synthetic median", "real-real median", "real-real 1st pct",
                 "synthetic ≤ real 1st pct", "synthetic ≤ real 5th pct"], rows))
    mia = priv.get("membership_inference", {})
    if "skipped" in mia:
        out.append(("Privacy: membership inference", ["attack", "note"], [["all", mia["skipped"]]]))
    else:
        rows = []
        for key, lab in (("distance", "distance to nearest synthetic (attacks the released synthetic set)"),
                         ("discriminator", "discriminator score (white-box: a reason not to share D or the "
                                           "checkpoint; says nothing of the synthetic set)")):
            d = mia.get(key, {})
            pm = d.get("permutation")
            rows.append([lab, _auc(d.get("attack", d)),
                         "–" if pm is None else (f"{pm['null_95'][0]:.3f}–{pm['null_95'][1]:.3f}, "
                                                 f"p = {pm['p_value']:.3f} ({pm['n_permutations']} over {pm['permuted']})"),
                         _auc(d.get("control")) if "control" in d else "–",
                         _f(d.get("excess_over_control")) if "excess_over_control" in d else "–"])
        out.append(((f"Privacy: membership inference ({mia.get('n_members')} training vs {mia.get('n_nonmembers')} "
                    "held-out real images; AUROC [95% bootstrap CI]; permutation null: the AUROC's 95 % range when "
                    "membership is permuted over patients, one-sided p)"),
                    ["attack", "training vs held-out", "permutation null 95 % range, p",
                     "control: held-out half vs half", "attack - control"], rows))
    return out


def evaluation_markdown(ev: dict) -> str:
    """Markdown rendering of an evaluation result (tables + figure links)."""
    lines = [f"# medsynth evaluation: {ev.get('run', '')}", ""]
    lines.append(f"Images {' × '.join(map(str, ev.get('image_shape', [])))}, modality {ev.get('modality')}, "
                 f"{ev['fidelity']['n_real_train']} real training and {ev['fidelity']['n_synthetic']} synthetic images; "
                 f"seed {ev.get('seed')}. Protocol: {ev['fidelity']['protocol']}.")
    enc = ev["fidelity"]["encoder"]
    lines.append("")
    lines.append(f"Features: {enc['kind']}; fingerprint `{enc['fingerprint']}`, {enc['feature_dim']} values. "
                 "Feature-space numbers compare only between evaluations with the same fingerprint.")
    flag = ev["privacy"].get("memorisation_flag")
    lines += ["", f"**Memorisation flag: {'YES' if flag else 'no'}** (raised when {ev['privacy'].get('flag_rule')})."]
    inc = ev["fidelity"].get("inception_fid")
    if inc:
        lines += ["", (f"Inception FID (user-supplied weights `{Path(inc['weights']).name}`, {inc['feature_dim']} "
                      f"features, n = {inc['n']}): **{inc['fid']:.2f} ± {inc['fid_sd']:.2f}** against a real-vs-real "
                      f"floor of {inc['floor']:.2f} ± {inc['floor_sd']:.2f}.")]
    if ev.get("dp"):
        lines += ["", f"Differential privacy: {ev['dp']}"]
    for title, header, rows in evaluation_tables(ev):
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    for name, cap in (("fig_samples.png", "random synthetic (left) and real training (right) images"),
                      ("fig_closest_pairs.png", "closest synthetic/training pairs"),
                      ("fig_dcr_nndr.png", "DCR and NNDR distributions"),
                      ("fig_intensity.png", "intensity histograms in the body mask")):
        if name in ev["figures"].values():
            lines += ["", f"![{cap}]({name})"]
    return "\n".join(lines) + "\n"


def write_evaluation(ev: dict, figures: dict[str, bytes], out_dir: str | Path) -> Path:
    """Write ``evaluation.json`` (:func:`medsynth.results.write_result`, kind ``evaluation``),
    ``evaluation.md`` and the figures into ``out_dir`` (atomic). Read it back with
    :func:`medsynth.results.read_evaluation`.

    Returns:
        The path of ``evaluation.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        write_bytes(out_dir / name, data)
    ev = dict(ev, figures={n.removesuffix(".png"): n for n in figures})
    write_text(out_dir / "evaluation.md", evaluation_markdown(ev))
    return write_result(out_dir / "evaluation.json", EVALUATION, ev)


# --------------------------------------------------------------------------------------------
# a run directory


def evaluate_run(
    run_dir: str | Path,
    *,
    real: str | None = None,
    count: int = 500,
    seed: int = 0,
    encoder: str | Path | nn.Module | None = None,
    encoder_steps: int = 300,
    repeats: int = 5,
    n_boot: int = 1000,
    inception_weights: str | Path | None = None,
    inception_input: str = "uint8",
    data_root: str | Path | None = None,
) -> Path:
    """Compute the suite for a run directory and write ``RUN/evaluate/``.

    What the evaluation records of its real data is a shareable name, never a path:
    ``real_source`` is ``run`` (the run's own training data, found through its local record
    ``RUN/local/data_source.json``) or :func:`medsynth.runs.shareable_source` of ``real``, and
    ``real_train_fingerprint`` the fingerprint of the training images it compared against.
    Supplied encoder and Inception files are named by their file name only.

    Args:
        run_dir: a run directory with ``config.yaml`` and ``checkpoints/last.pt``.
        real: real data source (a path); default the run's training data, from its local record
            (:func:`medsynth.runs.read_data_source`: one-line error asking for ``--data`` when the
            run has none). Images in the run's training split (``data.split``) are members; all
            other rows are held out.
        count: synthetic images sampled (balanced over classes for conditional models).
        seed: seeds sampling, the encoder, splits and bootstraps.
        encoder: a saved encoder file / module to keep features fixed across runs; default
            trains one on the training images and saves ``RUN/evaluate/encoder.pt``.
        encoder_steps: encoder training steps when it is trained here.
        repeats: real/real splits for the floors.
        n_boot: bootstrap resamples for attack CIs.
        inception_weights: optional local TorchScript Inception feature network: adds the
            standard Inception FID with its real-vs-real floor (:mod:`medsynth.metrics.inception`).
        inception_input: that network's input range (``uint8``, ``unit`` or ``sym``).
        data_root: the declared data root (:func:`medsynth.runs.data_root`) for naming ``real``.

    Returns:
        The path of ``evaluation.json``.
    """
    from medsynth.data.dataset import load_image_set, load_two_domains
    from medsynth.runs import data_root as declared_root
    from medsynth.runs import (
        images_fingerprint,
        load_trained,
        read_data_source,
        shareable_source,
    )

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MedsynthError(run_dir, "no config.yaml: not a medsynth run directory")
    cfg, model, ck = load_trained(run_dir)
    if model.supports_translation:  # CycleGAN keeps no real images: sample() only translates noise
        raise MedsynthError(run_dir, f"model {model.registry_name!r} makes images only by translating real images "
                                     "you pass in; evaluate samples the model and would score translations of noise. "
                                     "Write translations with `medsynth generate RUN --from FOLDER` and score them "
                                     "as a synthetic set (`python -m pipelines.studies.lesion_insertion` does this)")
    d = cfg.data
    kw = {"modality": d.modality, "size": d.size, "spatial_dims": d.spatial_dims, "split": None, "ct_window": d.ct_window}
    if real is None:
        source, source_b = read_data_source(run_dir)
        ds = load_two_domains(source, source_b, **kw) if source_b is not None else load_image_set(source, **kw)
        real_name = "run"
    else:
        ds = load_image_set(real, **kw)
        real_name = shareable_source(real, fingerprint=images_fingerprint(ds.images, ds.labels),
                                     root=declared_root(data_root))
    if d.split is None:
        train_mask = np.ones(len(ds), dtype=bool)
    else:
        train_mask = np.array([s == d.split for s in ds.splits])
    tr, ho = ds.subset(train_mask), (ds.subset(~train_mask) if (~train_mask).sum() >= 4 else None)
    if ho is None:
        logger.warning("evaluate: fewer than 4 held-out real images; membership-inference attacks skipped")
    out_dir = run_dir / "evaluate"
    out_dir.mkdir(parents=True, exist_ok=True)
    # stages: sampling, the encoder, evaluate_sets' stages, [Inception FID], writing
    prog = Progress("evaluate", total=3 + len(EVALUATE_SETS_STAGES) + (inception_weights is not None), unit="stages")
    with prog:
        return _evaluate_run_stages(prog, run_dir, out_dir, cfg, model, ck, tr, ho, real_name, count=count, seed=seed,
                                    encoder=encoder, encoder_steps=encoder_steps, repeats=repeats, n_boot=n_boot,
                                    inception_weights=inception_weights, inception_input=inception_input)


def _evaluate_run_stages(prog: Progress, run_dir: Path, out_dir: Path, cfg, model, ck: dict, tr, ho, real_name: str,
                         *, count: int, seed: int, encoder, encoder_steps: int, repeats: int, n_boot: int,
                         inception_weights, inception_input: str) -> Path:
    """:func:`evaluate_run` from sampling on, advancing ``prog`` by one per stage."""
    from medsynth.runs import describe_dp, images_fingerprint

    d = cfg.data
    prog.set_postfix("sampling")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % model.num_classes) if model.num_classes > 0 else None
    syn = torch.empty((count, *tr.images.shape[1:]), dtype=torch.float32)  # filled batch by batch: no second copy
    with torch.no_grad():
        for s in range(0, count, SAMPLE_CHUNK):  # the draws of one sample(count) call, SAMPLE_CHUNK at a time
            n = min(SAMPLE_CHUNK, count - s)
            syn[s : s + n] = model.sample(n, labels=None if labels is None else labels[s : s + n],
                                          generator=g).float().clamp(-1, 1)
    prog.update(1)
    prog.set_postfix("encoder")
    if isinstance(encoder, nn.Module):
        enc, enc_src = encoder, "supplied by the caller"
    elif encoder is not None:
        enc, enc_src = load_encoder(encoder), f"supplied file {Path(encoder).name}"
    else:
        enc = train_feature_encoder(tr.images, seed=seed, steps=encoder_steps)
        save_encoder(enc, out_dir / "encoder.pt")
        enc_src = "trained here on the training images, saved as evaluate/encoder.pt"
    prog.update(1)

    conditional = model.num_classes > 0
    known = bool((tr.labels >= 0).all()) and (ho is None or bool((ho.labels >= 0).all()))

    def d_score(images, lab):
        if conditional and (lab is None or not known):
            raise MedsynthError("labels", "class-conditional discriminator but some real labels are unknown (-1)")
        return discriminator_scores(model, images, lab if conditional else None,
                                    batch_size=int(cfg.train.batch_size), seed=seed)

    ev, figs = evaluate_sets(
        tr.images, syn, encoder=enc, modality=d.modality, ct_window=d.ct_window,
        train_groups=tr.patient_ids, heldout_x=None if ho is None else ho.images,
        heldout_groups=None if ho is None else ho.patient_ids, d_score=d_score,
        train_labels=tr.labels.numpy(), heldout_labels=None if ho is None else ho.labels.numpy(),
        synth_labels=None if labels is None else labels.numpy(),
        seed=seed, repeats=repeats, n_boot=n_boot, progress=prog,
    )
    ev["fidelity"]["encoder"]["source"] = enc_src
    if inception_weights is not None:
        from medsynth.metrics.inception import inception_fid, load_inception

        prog.set_postfix("Inception FID")
        res = inception_fid(load_inception(inception_weights), tr.images, syn, input_range=inception_input,
                            seed=seed, repeats=repeats)
        ev["fidelity"]["inception_fid"] = {**res, "weights": Path(inception_weights).name}
        prog.update(1)
    prog.set_postfix("writing")
    train_fp = images_fingerprint(tr.images, tr.labels)
    if d.fingerprint is not None and train_fp != d.fingerprint:
        logger.warning("evaluate: the training split of the real data (fingerprint %s) is not the run's training "
                       "data (%s): members and held-out images are not what the run saw", train_fp, d.fingerprint)
    ev.update({"run": run_dir.resolve().name, "model": cfg.model.name, "step": int(ck.get("step", -1)),
               "real_source": real_name, "real_train_fingerprint": train_fp,
               "run_data_fingerprint": d.fingerprint, "train_split": d.split, "n_synthetic_sampled": int(count),
               "dp": describe_dp(ck.get("dp", {}).get("summary")), "dp_accounting": ck.get("dp", {}).get("summary")})
    path = write_evaluation(ev, figs, out_dir)
    prog.update(1)
    prog.set_postfix("")
    return path
