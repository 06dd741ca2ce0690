"""Feature-space fidelity beyond the Fréchet distance: KID, precision/recall, density/coverage.

All functions take ``(N, F)`` feature vectors. In medsynth these are the features of the
project's own feature encoder (:class:`medsynth.metrics.fidelity.FeatureEncoder`: a
convolutional autoencoder trained on the real training images only, bottleneck + texture
statistics, standardised on the real training images), never a downloaded network. Numbers
are comparable only between evaluations that used the same encoder (same fingerprint).

* :func:`kernel_inception_distance` — KID (Bińkowski et al. 2018): the unbiased estimate of the
  squared maximum mean discrepancy with the cubic polynomial kernel
  ``k(x, y) = (x·y / F + 1)³``, averaged over random subsets; reported as mean ± sd over
  subsets. Unbiased: independent samples of one distribution give values scattered around 0
  (they can be slightly negative).
* :func:`prdc` — improved precision and recall (Kynkäänniemi et al. 2019) and density and
  coverage (Naeem et al. 2020) from k-nearest-neighbour balls (sklearn ``NearestNeighbors``):
  precision = fraction of synthetic samples inside some real sample's k-NN ball; recall =
  fraction of real samples inside some synthetic sample's k-NN ball; density = mean number of
  real balls containing a synthetic sample, divided by k (≈1 for matching distributions, can
  exceed 1); coverage = fraction of real samples whose ball contains at least one synthetic
  sample. Ball membership is strict (``distance < radius``), as in Naeem's reference code, so
  a set of identical copies has radius 0 and covers nothing: its recall is 0.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors

from medsynth.errors import MedsynthError

logger = logging.getLogger(__name__)


def _feats(x, name: str, min_rows: int = 2) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < min_rows:
        raise MedsynthError(name, f"expected (N >= {min_rows}, F) feature vectors, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise MedsynthError(name, "feature vectors contain NaN or infinite values")
    return a


def _mmd2_unbiased_poly(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(
    feats_a, feats_b, *, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0
) -> dict[str, float]:
    """KID between two feature sets: unbiased polynomial-kernel MMD² over random subsets.

    Args:
        feats_a: ``(N_a, F)`` features (e.g. synthetic).
        feats_b: ``(N_b, F)`` features (e.g. real).
        subset_size: images per subset, capped at ``min(N_a, N_b)`` (≥ 2).
        n_subsets: number of subset pairs (each drawn without replacement within a set).
        seed: seeds the ``numpy.random.Generator`` choosing the subsets.

    Returns:
        ``{"mean", "std", "subset_size", "n_subsets"}``: mean and standard deviation over
        subsets of the MMD² estimate (0 in expectation for equal distributions; > 0 otherwise).
    """
    a = _feats(feats_a, "feats_a")
    b = _feats(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise MedsynthError("feats_b", f"feature length {b.shape[1]} differs from {a.shape[1]}")
    m = int(min(subset_size, len(a), len(b)))
    rng = np.random.default_rng(seed)
    vals = np.array([
        _mmd2_unbiased_poly(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
        for _ in range(max(1, n_subsets))
    ])
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            "subset_size": m, "n_subsets": int(len(vals))}


def _kth_nn_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of every row to its k-th nearest other row (the row itself excluded)."""
    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    dist, _ = nn.kneighbors(x)
    return dist[:, k]


#: distances held at a time by :func:`prdc` (float64 bytes of one ``chunk x M`` block)
PRDC_BLOCK_BYTES = 64 * 2**20


def prdc(real_feats, synth_feats, *, k: int = 5, chunk: int | None = None) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi 2019), density and coverage (Naeem 2020).

    The real-to-synthetic distances are computed ``chunk`` real rows at a time (sklearn
    ``pairwise_distances``) and reduced as they come (ball membership counts, nearest synthetic
    distance), so memory stays at one ``chunk x M`` block however large N is; the result is the
    one a single ``N x M`` matrix gives.

    Args:
        real_feats: ``(N, F)`` features of real images (N > k).
        synth_feats: ``(M, F)`` features of synthetic images (M > k).
        k: neighbourhood size of the k-NN balls (5, as in both papers).
        chunk: real rows per distance block (>= 1); default as many as fit
            :data:`PRDC_BLOCK_BYTES`.

    Returns:
        ``{"precision", "recall", "density", "coverage", "k", "n_real", "n_synthetic"}``;
        precision, recall and coverage in [0, 1], density ≥ 0 (≈1 when the sets match).
        Real features against themselves give precision = recall = coverage = 1.
    """
    r = _feats(real_feats, "real_feats", k + 1)
    s = _feats(synth_feats, "synth_feats", k + 1)
    if r.shape[1] != s.shape[1]:
        raise MedsynthError("synth_feats", f"feature length {s.shape[1]} differs from {r.shape[1]}")
    r_rad = _kth_nn_radius(r, k)
    s_rad = _kth_nn_radius(s, k)
    step = max(1, int(chunk) if chunk is not None else PRDC_BLOCK_BYTES // (8 * len(s)))
    balls = np.zeros(len(s), dtype=np.int64)  # real balls holding each synthetic sample
    recalled = np.zeros(len(r), dtype=bool)  # real samples inside some synthetic ball
    covered = np.zeros(len(r), dtype=bool)  # real balls holding some synthetic sample
    for i in range(0, len(r), step):
        d = pairwise_distances(r[i : i + step], s)  # (chunk, M)
        balls += (d < r_rad[i : i + step, None]).sum(0)
        recalled[i : i + step] = (d < s_rad[None, :]).any(1)
        covered[i : i + step] = d.min(1) < r_rad[i : i + step]
    return {
        "precision": float((balls > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(balls.mean() / k),
        "coverage": float(covered.mean()),
        "k": int(k),
        "n_real": int(len(r)),
        "n_synthetic": int(len(s)),
    }
