"""Nearest-neighbour memorisation screening."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.errors import MedsynthError
from medsynth.metrics.privacy import memorisation_summary, nearest_neighbours, real_to_real_nn


def _real(n=200, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(-0.8, 0.8, size)[None, None, None, :].expand(n, 1, size, size)
    return (base + 0.3 * torch.randn(n, 1, size, size, generator=g)).clamp(-1, 1)


def test_nearest_neighbours_matches_brute_force():
    real, synth = _real(150, seed=0), _real(70, seed=1)
    d, i = nearest_neighbours(synth, real)
    full = torch.cdist(synth.flatten(1).double(), real.flatten(1).double())
    np.testing.assert_allclose(d, full.min(1).values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(i, full.argmin(1).numpy())
    assert d.shape == (70,) and i.dtype == np.int64


def test_leave_one_out_excludes_self_but_keeps_duplicates():
    real = _real(60)
    r = real_to_real_nn(real)
    full = torch.cdist(real.flatten(1).double(), real.flatten(1).double())
    full.fill_diagonal_(float("inf"))
    np.testing.assert_allclose(r, full.min(1).values.numpy(), rtol=1e-6)
    assert (r > 0).all()
    dup = torch.cat([real, real[:1]])  # one duplicated image: its pair has distance 0
    assert (real_to_real_nn(dup) == 0).sum() == 2
    sub = real_to_real_nn(real, max_queries=20, seed=3)
    assert sub.shape == (20,) and np.isin(np.round(sub, 8), np.round(r, 8)).all()


def test_copying_generator_is_flagged():
    real = _real(200)
    copies = real[torch.randperm(200, generator=torch.Generator().manual_seed(1))[:100]]
    d, _ = nearest_neighbours(copies, real)
    s = memorisation_summary(d, real_to_real_nn(real))
    assert s["dcr_median"] == 0.0 and s["dcr_min"] == 0.0
    assert s["frac_below_real_p1"] == pytest.approx(1.0)
    assert s["dcr_ratio"] < 0.01


def test_independent_samples_are_not_flagged():
    real = _real(300, seed=0)
    fresh = _real(150, seed=7)  # same distribution, independent draws
    d, _ = nearest_neighbours(fresh, real)
    s = memorisation_summary(d, real_to_real_nn(real))
    assert s["frac_below_real_p1"] < 0.05
    assert 0.8 < s["dcr_ratio"] < 1.3
    noise = torch.rand(100, 1, 24, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1
    dn, _ = nearest_neighbours(noise, real)
    assert memorisation_summary(dn, real_to_real_nn(real))["frac_below_real_p1"] == 0.0


def test_slightly_perturbed_copies_still_flagged():
    real = _real(200)
    near = (real[:100] + 0.01 * torch.randn(100, 1, 24, 24, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    d, i = nearest_neighbours(near, real)
    np.testing.assert_array_equal(i, np.arange(100))
    assert memorisation_summary(d, real_to_real_nn(real))["frac_below_real_p1"] > 0.95


def test_feature_space_and_3d():
    feats_real = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    d, i = nearest_neighbours(feats_real[:10], feats_real, space="features")
    assert np.allclose(d, 0) and (i == np.arange(10)).all()
    vols = torch.rand(10, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    d3, i3 = nearest_neighbours(vols[:3], vols)
    assert np.allclose(d3, 0) and (i3 == np.arange(3)).all()
    with pytest.raises(MedsynthError, match="needs an encoder"):
        nearest_neighbours(vols, vols, space="features")
    with pytest.raises(MedsynthError):
        nearest_neighbours(vols, vols, space="latent")
    with pytest.raises(MedsynthError):
        nearest_neighbours(vols[:, :, 0], vols)  # shape mismatch
    with pytest.raises(MedsynthError):
        memorisation_summary([], [1.0])
