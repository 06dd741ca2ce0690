"""Tests for medsynth.metrics.stats: metric values, CI coverage, paired differences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from medsynth.metrics import stats
from medsynth.metrics.stats import (
    auroc,
    bootstrap_ci,
    paired_bootstrap_diff,
    sensitivity,
    specificity,
    youden_threshold,
)


def _binormal(rng, n_pos, n_neg, d):
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    s = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
    return y, s


def test_basic_metrics():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.6, 0.4, 0.7, 0.9])
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert sensitivity(y, s, 0.5) == pytest.approx(2 / 3)
    assert specificity(y, s, 0.5) == pytest.approx(1 / 2)
    assert np.isnan(auroc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError):
        auroc([0, 2], [0.1, 0.2])


def test_youden_threshold_separates_perfectly():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    t = youden_threshold(y, s)
    assert 0.3 < t <= 0.8
    assert sensitivity(y, s, t) == 1 and specificity(y, s, t) == 1
    assert youden_threshold([1, 1], [0.1, 0.2]) == 0.5


def test_weighted_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = rng.integers(0, 6, 60).astype(float)  # many ties
    w = rng.integers(0, 3, size=(5, 60)).astype(float)
    fast = stats._weighted_auroc(y, s, w)
    for row, f in zip(w, fast):
        assert f == pytest.approx(roc_auc_score(y, s, sample_weight=row))


def test_ci_coverage_binormal():
    """~95 % of percentile intervals contain the true AUROC (binormal, d=1: Phi(1/sqrt2))."""
    d = 1.0
    true_auc = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(123)
    n_sim, hits, widths = 200, 0, []
    for i in range(n_sim):
        y, s = _binormal(rng, 60, 60, d)
        ci = bootstrap_ci(y, s, "auroc", n_boot=400, seed=i)
        hits += ci.lo <= true_auc <= ci.hi
        widths.append(ci.hi - ci.lo)
    cov = hits / n_sim
    # binomial SE of the coverage over 200 simulations is ~1.5 %; percentile CIs of AUROC run
    # slightly below nominal at this sample size.
    assert 0.89 <= cov <= 0.99, cov
    assert 0.1 < np.mean(widths) < 0.3


def test_cluster_bootstrap_is_wider_for_correlated_patients():
    rng = np.random.default_rng(1)
    n_pat, per = 30, 5
    pat_label = np.r_[np.ones(n_pat // 2, int), np.zeros(n_pat // 2, int)]
    pat_effect = rng.normal(pat_label * 1.0, 1.0)  # scores share a strong patient effect
    y = np.repeat(pat_label, per)
    s = np.repeat(pat_effect, per) + rng.normal(0, 0.1, n_pat * per)
    pid = np.repeat(np.arange(n_pat), per).astype(str)
    iid = bootstrap_ci(y, s, n_boot=500, seed=0)
    clu = bootstrap_ci(y, s, n_boot=500, seed=0, clusters=pid)
    assert iid.point == clu.point
    assert (clu.hi - clu.lo) > 1.5 * (iid.hi - iid.lo)


def test_degenerate_resamples_are_redrawn_and_counted():
    y = np.r_[1, np.zeros(9, int)]  # one positive: ~35 % of resamples lack it
    s = np.linspace(0, 1, 10)[::-1]
    ci = bootstrap_ci(y, s, n_boot=300, seed=0)
    assert ci.n_boot == 300
    assert ci.n_degenerate > 50
    assert ci.lo <= ci.point <= ci.hi


def test_paired_identical_scores():
    rng = np.random.default_rng(2)
    y, s = _binormal(rng, 40, 40, 1.0)
    r = paired_bootstrap_diff(y, s, s.copy(), "auroc", n_boot=300)
    assert r["diff"] == 0
    assert r["lo"] <= 0 <= r["hi"]
    assert r["p"] == 1.0


def test_paired_clearly_better_scores():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(50, int), np.zeros(50, int)]
    noise = rng.normal(0, 1, 100)
    good = y * 2.5 + noise
    bad = y * 0.3 + noise + rng.normal(0, 1, 100)
    r = paired_bootstrap_diff(y, good, bad, "auroc", n_boot=500, seed=0)
    assert r["diff"] == pytest.approx(auroc(y, good) - auroc(y, bad))
    assert r["lo"] > 0
    assert r["p"] < 0.01
    rev = paired_bootstrap_diff(y, bad, good, "auroc", n_boot=500, seed=0)
    assert rev["hi"] < 0


def test_sensitivity_ci_and_callable_metric_agree_with_vectorised():
    rng = np.random.default_rng(4)
    y, s = _binormal(rng, 30, 30, 1.0)
    fast = bootstrap_ci(y, s, "sensitivity", n_boot=200, seed=7, threshold=0.5)
    slow = bootstrap_ci(y, s, lambda a, b: sensitivity(a, b, 0.5), n_boot=200, seed=7)
    assert tuple(fast) == pytest.approx(tuple(slow))
    assert 0 <= fast.lo <= fast.point <= fast.hi <= 1
