"""Statistical behaviour of the benchmark's CIs and paired test on simulated scores."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from medsynth.metrics.stats import bootstrap_ci, paired_bootstrap_diff
from medsynth.downstream.benchmark import _metric_fn


def _binormal(rng, n_pos: int, n_neg: int, d: float):
    """Scores N(d, 1) for positives, N(0, 1) for negatives: true AUROC = Phi(d / sqrt 2)."""
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    s = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
    return y, s


def test_auroc_bootstrap_ci_covers_truth_at_about_nominal_rate():
    d = 1.2
    true_auc = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(0)
    reps, hits = 200, 0
    for r in range(reps):
        y, s = _binormal(rng, 60, 60, d)
        ci = bootstrap_ci(y, s, "auroc", n_boot=300, seed=r)
        hits += ci.lo <= true_auc <= ci.hi
    # nominal 0.95; a binomial(200, 0.95) lies in [0.91, 0.985] with >99 % probability
    assert 0.90 <= hits / reps <= 0.99, hits / reps


def test_sens_at_90spec_ci_covers_truth_reasonably():
    # true sensitivity at 90 % specificity: P(N(d,1) > z_0.9)
    d = 1.5
    truth = 1 - norm.cdf(norm.ppf(0.9) - d)
    rng = np.random.default_rng(1)
    reps, hits = 100, 0
    for r in range(reps):
        y, s = _binormal(rng, 100, 100, d)
        ci = bootstrap_ci(y, s, _metric_fn("sens_at_90spec"), n_boot=200, seed=r)
        hits += ci.lo <= truth <= ci.hi
    # percentile bootstrap of a quantile-based figure is known to under-cover a little
    assert 0.85 <= hits / reps <= 1.0, hits / reps


def test_paired_bootstrap_false_positive_rate_near_alpha():
    # two systems with the same expected AUROC, scoring the same cases (correlated scores)
    rng = np.random.default_rng(2)
    reps, rejections = 200, 0
    for r in range(reps):
        y, base = _binormal(rng, 50, 50, 1.0)
        a = base + rng.normal(0, 0.7, len(y))
        b = base + rng.normal(0, 0.7, len(y))
        rejections += paired_bootstrap_diff(y, a, b, "auroc", n_boot=300, seed=r)["p"] < 0.05
    assert rejections / reps <= 0.10, rejections / reps


def test_paired_bootstrap_detects_a_real_difference():
    rng = np.random.default_rng(3)
    y, base = _binormal(rng, 80, 80, 1.0)
    better = base + 1.5 * y  # the second system separates the classes further
    res = paired_bootstrap_diff(y, better, base, "auroc", n_boot=500, seed=0)
    assert res["diff"] > 0 and res["lo"] > 0 and res["p"] < 0.01
