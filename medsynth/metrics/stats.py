"""Classification figures with bootstrap confidence intervals.

* :func:`auroc`, :func:`sensitivity`, :func:`specificity` on ``(N,)`` labels in ``{0, 1}``
  and ``(N,)`` scores (probabilities or any monotone score).
* :func:`youden_threshold` picks an operating threshold on a **validation** set (maximising
  Youden's J = sensitivity + specificity - 1); the test set is then scored at that threshold.
* :func:`bootstrap_ci`: percentile bootstrap CI, resampling cases or whole clusters
  (patients) with replacement.
* :func:`paired_bootstrap_diff`: the difference of a metric between two score vectors on the
  same cases, with the *same* resamples for both, a percentile CI and a two-sided p-value.
* :func:`hierarchical_paired_bootstrap`: the AUROC difference of two arms that were each trained
  several times (generator repeats x classifier seeds), resampling repeats, seeds within repeats
  and test patients, so the interval covers training noise as well as test-set sampling.
* :func:`holm`: Holm's step-down adjustment of a family of p-values.

Resamples are drawn as multinomial counts per cluster (each case its own cluster unless
``clusters`` is given) and evaluated as weighted metrics, vectorised over all resamples, so
1000 resamples of a few hundred cases take milliseconds. A resample lacking either class is
*degenerate*: it is discarded and redrawn, and the number discarded is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

log = logging.getLogger(__name__)

__all__ = [
    "auroc",
    "sensitivity",
    "specificity",
    "youden_threshold",
    "BootstrapCI",
    "bootstrap_ci",
    "paired_bootstrap_diff",
    "hierarchical_paired_bootstrap",
    "holm",
]

Metric = str | Callable[[np.ndarray, np.ndarray], float]
_BUILTIN = ("auroc", "sensitivity", "specificity")


def _check(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} entries but y_score has {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    return y.astype(np.int64), s


def auroc(y_true, y_score) -> float:
    """Area under the ROC curve (ties count one half); ``nan`` if only one class is present."""
    y, s = _check(y_true, y_score)
    if y.min(initial=1) == y.max(initial=0):
        return float("nan")
    return float(roc_auc_score(y, s))


def sensitivity(y_true, y_score, threshold: float = 0.5) -> float:
    """True-positive rate with ``score >= threshold`` called positive; ``nan`` without positives."""
    y, s = _check(y_true, y_score)
    pos = y == 1
    return float((s[pos] >= threshold).mean()) if pos.any() else float("nan")


def specificity(y_true, y_score, threshold: float = 0.5) -> float:
    """True-negative rate with ``score < threshold`` called negative; ``nan`` without negatives."""
    y, s = _check(y_true, y_score)
    neg = y == 0
    return float((s[neg] < threshold).mean()) if neg.any() else float("nan")


def youden_threshold(y_true, y_score, default: float = 0.5) -> float:
    """Threshold maximising Youden's J on a validation set (smallest such score on ties).

    Returns ``default`` when the set lacks a class. Never call this on the test set.
    """
    y, s = _check(y_true, y_score)
    if y.min(initial=1) == y.max(initial=0):
        return float(default)
    fpr, tpr, thr = roc_curve(y, s)
    finite = np.isfinite(thr)
    j = (tpr - fpr)[finite]
    return float(thr[finite][int(np.argmax(j))])


class BootstrapCI(tuple):
    """``(point, lo, hi)`` tuple with extra attributes ``n_boot`` and ``n_degenerate``."""

    def __new__(cls, point: float, lo: float, hi: float, n_boot: int, n_degenerate: int):
        obj = super().__new__(cls, (float(point), float(lo), float(hi)))
        obj.point, obj.lo, obj.hi = float(point), float(lo), float(hi)
        obj.n_boot, obj.n_degenerate = int(n_boot), int(n_degenerate)
        return obj

    def as_dict(self) -> dict:
        return {
            "point": self.point,
            "lo": self.lo,
            "hi": self.hi,
            "n_boot": self.n_boot,
            "n_degenerate": self.n_degenerate,
        }


# ---------------------------------------------------------------------------------------------
# resampling machinery


def _cluster_index(clusters, n: int) -> tuple[np.ndarray, int]:
    if clusters is None:
        return np.arange(n), n
    c = np.asarray(clusters).reshape(-1)
    if c.size != n:
        raise ValueError(f"clusters has {c.size} entries for {n} cases")
    _, inv = np.unique(c, return_inverse=True)
    return inv.reshape(-1), int(inv.max()) + 1


def _draw_weights(
    y: np.ndarray, cl_idx: np.ndarray, k: int, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Case weights ``(n_boot, N)`` (cluster multiplicities), redrawing degenerate rows."""
    out: list[np.ndarray] = []
    have, n_degenerate, tries = 0, 0, 0
    while have < n_boot:
        tries += 1
        if tries > 50:
            raise ValueError(
                "bootstrap: almost every resample lacks a class; too few positive or negative cases"
            )
        need = n_boot - have
        counts = rng.multinomial(k, np.full(k, 1.0 / k), size=need)  # (need, K)
        w = counts[:, cl_idx].astype(np.float64)  # (need, N)
        ok = (w[:, y == 1].sum(1) > 0) & (w[:, y == 0].sum(1) > 0)
        n_degenerate += int((~ok).sum())
        out.append(w[ok])
        have += int(ok.sum())
    return np.concatenate(out)[:n_boot], n_degenerate


def _weighted_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC for each row of case weights ``w (B, N)``; ties count one half."""
    levels, lev = np.unique(s, return_inverse=True)
    n_lev = len(levels)
    b = w.shape[0]
    pos = np.zeros((b, n_lev))
    neg = np.zeros((b, n_lev))
    np.add.at(pos.T, lev[y == 1], w[:, y == 1].T)
    np.add.at(neg.T, lev[y == 0], w[:, y == 0].T)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(1)
    return num / (pos.sum(1) * neg.sum(1))


def _weighted_metric(
    metric: Metric, y: np.ndarray, s: np.ndarray, w: np.ndarray, threshold: float
) -> np.ndarray:
    if metric == "auroc" or metric is auroc:
        return _weighted_auroc(y, s, w)
    if metric == "sensitivity" or metric is sensitivity:
        m = y == 1
        return (w[:, m] * (s[m] >= threshold)).sum(1) / w[:, m].sum(1)
    if metric == "specificity" or metric is specificity:
        m = y == 0
        return (w[:, m] * (s[m] < threshold)).sum(1) / w[:, m].sum(1)
    if isinstance(metric, str):
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(_BUILTIN)} or a callable")
    idx_all = np.arange(len(y))
    vals = np.empty(w.shape[0])
    for i, row in enumerate(w.astype(np.int64)):
        idx = np.repeat(idx_all, row)
        vals[i] = metric(y[idx], s[idx])
    return vals


def _point(metric: Metric, y: np.ndarray, s: np.ndarray, threshold: float) -> float:
    if metric == "auroc" or metric is auroc:
        return auroc(y, s)
    if metric == "sensitivity" or metric is sensitivity:
        return sensitivity(y, s, threshold)
    if metric == "specificity" or metric is specificity:
        return specificity(y, s, threshold)
    if isinstance(metric, str):
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(_BUILTIN)} or a callable")
    return float(metric(y, s))


def bootstrap_ci(
    y_true,
    y_score,
    metric: Metric = "auroc",
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    clusters: Sequence | np.ndarray | None = None,
    threshold: float = 0.5,
) -> BootstrapCI:
    """Percentile bootstrap confidence interval of a metric.

    Args:
        y_true: ``(N,)`` labels in ``{0, 1}``.
        y_score: ``(N,)`` scores (higher = more likely positive).
        metric: ``"auroc"``, ``"sensitivity"``, ``"specificity"`` (or those functions;
            vectorised), or any callable ``f(y_true, y_score) -> float`` (evaluated per
            resample; slower).
        n_boot: number of non-degenerate resamples.
        seed: seed of the ``numpy.random.Generator`` drawing the resamples.
        alpha: 1 - confidence level (0.05 -> 95 % interval).
        clusters: optional ``(N,)`` cluster ids (e.g. patient ids): whole clusters are
            resampled, so correlated cases of one patient move together.
        threshold: decision threshold for sensitivity / specificity (``score >= threshold`` is
            positive); choose it on validation data, e.g. with :func:`youden_threshold`.

    Returns:
        :class:`BootstrapCI` ``(point, lo, hi)``; the point estimate is the metric on the full
        data. ``n_degenerate`` counts resamples discarded for lacking a class.
    """
    y, s = _check(y_true, y_score)
    point = _point(metric, y, s, threshold)
    if not np.isfinite(point):
        return BootstrapCI(point, np.nan, np.nan, 0, 0)
    cl_idx, k = _cluster_index(clusters, len(y))
    rng = np.random.default_rng(seed)
    w, n_deg = _draw_weights(y, cl_idx, k, n_boot, rng)
    vals = _weighted_metric(metric, y, s, w, threshold)
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    if n_deg:
        log.info("bootstrap: %d degenerate resamples redrawn", n_deg)
    return BootstrapCI(point, lo, hi, n_boot, n_deg)


def paired_bootstrap_diff(
    y_true,
    score_a,
    score_b,
    metric: Metric = "auroc",
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    clusters: Sequence | np.ndarray | None = None,
    threshold: float | tuple[float, float] = 0.5,
) -> dict:
    """Paired bootstrap of ``metric(score_a) - metric(score_b)`` on the same cases.

    Both score vectors are evaluated on the same resamples, so case-to-case difficulty cancels.

    Args:
        y_true: ``(N,)`` labels in ``{0, 1}``.
        score_a, score_b: ``(N,)`` scores of the two systems for the same cases, same order.
        metric, n_boot, seed, alpha, clusters: as in :func:`bootstrap_ci`.
        threshold: one threshold for both, or ``(threshold_a, threshold_b)``.

    Returns:
        ``{"diff", "lo", "hi", "p", "a", "b", "n_boot", "n_degenerate"}``: ``diff`` = metric(a)
        - metric(b) on the full data; ``lo``/``hi`` its percentile CI; ``p`` the two-sided
        bootstrap p-value ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` with the ``+1``
        correction, so identical systems get ``p = 1``.
    """
    y, sa = _check(y_true, score_a)
    _, sb = _check(y_true, score_b)
    ta, tb = (threshold, threshold) if np.isscalar(threshold) else threshold
    a, b = _point(metric, y, sa, ta), _point(metric, y, sb, tb)
    diff = a - b
    if not np.isfinite(diff):
        nan = float("nan")
        return {"diff": diff, "lo": nan, "hi": nan, "p": nan, "a": a, "b": b,
                "n_boot": 0, "n_degenerate": 0}
    cl_idx, k = _cluster_index(clusters, len(y))
    rng = np.random.default_rng(seed)
    w, n_deg = _draw_weights(y, cl_idx, k, n_boot, rng)
    d = _weighted_metric(metric, y, sa, w, ta) - _weighted_metric(metric, y, sb, w, tb)
    d = np.round(d, 12)  # exact zeros for identical systems despite float summation order
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    p_le = (1 + np.sum(d <= 0)) / (n_boot + 1)
    p_ge = (1 + np.sum(d >= 0)) / (n_boot + 1)
    p = float(min(1.0, 2 * min(p_le, p_ge)))
    return {
        "diff": float(diff),
        "lo": float(lo),
        "hi": float(hi),
        "p": p,
        "a": float(a),
        "b": float(b),
        "n_boot": int(n_boot),
        "n_degenerate": int(n_deg),
    }


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control at any level).

    With ``m`` p-values sorted ascending ``p_(1) <= ... <= p_(m)``, the adjusted value of
    ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) p_(j))``; reject where the adjusted value is
    ``<= alpha``.

    Args:
        pvalues: ``(m,)`` p-values in ``[0, 1]`` (no NaN).

    Returns:
        ``(m,)`` float64 adjusted p-values in ``[0, 1]``, in the input order.

    Raises:
        ValueError: a p-value outside ``[0, 1]`` or NaN.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if not np.all((p >= 0) & (p <= 1)):  # also refuses NaN
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def hierarchical_paired_bootstrap(
    y_true,
    scores_a,
    scores_b,
    *,
    clusters: Sequence | np.ndarray | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Hierarchical paired bootstrap of an AUROC difference between two repeatedly trained arms.

    Arm ``a`` and arm ``b`` were each trained once per (repeat ``r``, seed ``s``) cell, paired by
    cell (same real subset, same classifier seed): ``scores_*[r, s]`` are that run's test scores.
    Each resample draws, independently, (1) ``R`` repeats with replacement, (2) within each drawn
    repeat ``S`` seeds with replacement, and (3) the test clusters (patients) with replacement,
    one draw shared by both arms and every cell (so the comparison stays paired). The statistic
    is the mean over the drawn cells of ``AUROC_a - AUROC_b`` on the resampled test set (equal to
    the difference of the arms' mean AUROCs). A level with one element (one generator run) does
    not vary, and its spread is then not in the interval.

    Args:
        y_true: ``(N,)`` test labels in ``{0, 1}``.
        scores_a, scores_b: ``(R, S, N)`` scores (higher = more likely positive) per repeat,
            seed and test case.
        clusters: ``(N,)`` cluster ids (patients); ``None`` = each case its own cluster.
        n_boot: resamples (non-degenerate in the test level: both classes present).
        seed: seeds the ``numpy.random.Generator`` (test weights first, then repeats and seeds).
        alpha: 1 - confidence level.

    Returns:
        ``{"diff", "lo", "hi", "p", "a", "b", "per_run", "n_boot", "n_degenerate",
        "n_repeats", "n_seeds", "n_clusters"}``: ``diff`` = mean over cells of the full-test-set
        AUROC differences (``a``, ``b`` the arms' mean AUROCs), ``lo``/``hi`` the percentile
        interval, ``p`` the two-sided bootstrap p ``2 min(P*(d <= 0), P*(d >= 0))`` floored at
        ``1 / n_boot`` and capped at 1, ``per_run`` the ``(R, S)`` differences as nested lists.

    Raises:
        ValueError: shapes that disagree, or labels that are not binary with both classes.
    """
    y = np.asarray(y_true).reshape(-1)
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.ndim != 3 or a.shape != b.shape or a.shape[2] != len(y):
        raise ValueError(f"scores must both be (R, S, N={len(y)}), got {a.shape} and {b.shape}")
    y, _ = _check(y, a[0, 0])
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("y_true needs both classes")
    n_rep, n_seed, _ = a.shape
    cl_idx, k = _cluster_index(clusters, len(y))
    rng = np.random.default_rng(seed)
    w, n_deg = _draw_weights(y, cl_idx, k, n_boot, rng)
    full = np.ones((1, len(y)))
    per_run = np.empty((n_rep, n_seed))
    d_boot = np.empty((n_rep, n_seed, n_boot))
    auc_a = np.empty((n_rep, n_seed))
    auc_b = np.empty((n_rep, n_seed))
    for r in range(n_rep):
        for s in range(n_seed):
            auc_a[r, s] = _weighted_auroc(y, a[r, s], full)[0]
            auc_b[r, s] = _weighted_auroc(y, b[r, s], full)[0]
            per_run[r, s] = auc_a[r, s] - auc_b[r, s]
            d_boot[r, s] = _weighted_auroc(y, a[r, s], w) - _weighted_auroc(y, b[r, s], w)
    r_idx = rng.integers(0, n_rep, size=(n_boot, n_rep))
    s_idx = rng.integers(0, n_seed, size=(n_boot, n_rep, n_seed))
    cols = np.arange(n_boot)[:, None, None]
    d = d_boot[r_idx[:, :, None], s_idx, cols].mean(axis=(1, 2))
    d = np.round(d, 12)  # exact zeros for identical arms despite float summation order
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    p = 2 * min(np.mean(d <= 0), np.mean(d >= 0))
    p = float(min(1.0, max(p, 1.0 / n_boot)))
    return {
        "diff": float(per_run.mean()), "lo": float(lo), "hi": float(hi), "p": p,
        "a": float(auc_a.mean()), "b": float(auc_b.mean()),
        "per_run": per_run.tolist(), "n_boot": int(n_boot), "n_degenerate": int(n_deg),
        "n_repeats": int(n_rep), "n_seeds": int(n_seed), "n_clusters": int(k),
    }
