"""Fréchet distance, its real-vs-real floor, and the self-trained feature encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.errors import MedsynthError
from medsynth.metrics.fidelity import (
    encoder_fingerprint,
    extract_features,
    frechet_distance,
    load_encoder,
    save_encoder,
    train_feature_encoder,
)


# one torch thread: these tests train small encoders; several threads only contend on CI's 2 cores
pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n: int, size: int = 32, *, seed: int, blur: bool = False) -> torch.Tensor:
    """(n, 1, size, size) in [-1, 1]: a bright disc of random position/radius on noisy background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.rand(n, 2, generator=g) * size * 0.5 + size * 0.25
    r = torch.rand(n, generator=g) * size * 0.15 + size * 0.1
    d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
    img = torch.where(d2 < r[:, None, None] ** 2, 0.6, -0.6) + 0.15 * torch.randn(n, size, size, generator=g)
    img = img[:, None].clamp(-1, 1)
    if blur:
        img = torch.nn.functional.avg_pool2d(img, 5, 1, 2)
    return img


# ---- Fréchet distance -----------------------------------------------------------------------


def test_identical_sets_give_zero():
    a = np.random.default_rng(0).normal(size=(300, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_shifted_gaussians_match_closed_form():
    # same covariance, shifted mean: FD = ||mu1 - mu2||^2 exactly (the covariance terms cancel)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2000, 4)) @ np.diag([1.0, 2.0, 0.5, 1.5])
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-9)
    # independent samples: approximately the closed form
    b = rng.normal(size=(20000, 4)) + shift
    c = rng.normal(size=(20000, 4))
    assert frechet_distance(b, c) == pytest.approx(float(shift @ shift), abs=0.05)


def test_larger_shift_larger_distance():
    a = np.random.default_rng(2).normal(size=(500, 6))
    vals = [frechet_distance(a, a + s) for s in (0.1, 0.5, 1.0, 3.0)]
    assert vals == sorted(vals) and vals[0] < vals[-1]


def test_covariance_difference_closed_form():
    # zero means, diagonal covariances: FD = sum (sqrt(s1) - sqrt(s2))^2
    rng = np.random.default_rng(3)
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    a = rng.normal(size=(200000, 3)) * np.sqrt(s1)
    b = rng.normal(size=(200000, 3)) * np.sqrt(s2)
    assert frechet_distance(a, b) == pytest.approx(float(np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)), abs=0.05)


def test_agrees_with_monai_fidmetric():
    from monai.metrics import FIDMetric

    rng = np.random.default_rng(4)
    a = rng.normal(size=(400, 10))
    b = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10)) * 0.5 + 0.3
    ref = float(FIDMetric()(torch.from_numpy(b), torch.from_numpy(a)))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_singular_covariance_is_finite():
    a = np.random.default_rng(5).normal(size=(10, 32))  # fewer samples than features
    v = frechet_distance(a, a[::-1] + 0.1)
    assert np.isfinite(v) and v >= 0


def test_bad_features_raise():
    with pytest.raises(MedsynthError):
        frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(MedsynthError):
        frechet_distance(np.zeros(10), np.zeros(10))
    with pytest.raises(MedsynthError):
        frechet_distance(np.full((5, 2), np.nan), np.zeros((5, 2)))


# ---- encoder ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    real = _blobs(160, seed=0)
    enc = train_feature_encoder(real, seed=0, steps=60, batch_size=32, in_size=32)
    return real, enc


def test_encoder_is_seeded_and_features_have_the_documented_shape(trained):
    real, enc = trained
    f = extract_features(enc, real)
    assert f.shape == (160, enc.feature_dim) and f.dtype == np.float32 and np.isfinite(f).all()
    # standardised on the real training images
    assert np.allclose(f.mean(0), 0, atol=1e-3) and np.allclose(f.std(0, ddof=1), 1, atol=1e-2)
    small = dict(steps=5, batch_size=8, in_size=32)
    a = train_feature_encoder(real[:32], seed=0, **small)
    assert encoder_fingerprint(train_feature_encoder(real[:32], seed=0, **small)) == encoder_fingerprint(a)
    assert encoder_fingerprint(train_feature_encoder(real[:32], seed=1, **small)) != encoder_fingerprint(a)


def test_encoder_save_load_roundtrip(trained, tmp_path):
    real, enc = trained
    path = save_encoder(enc, tmp_path / "enc.pt")
    blob = torch.load(path, weights_only=True)  # plain tensors and primitives only
    assert blob["config"]["dim"] == 64 and blob["config"]["in_size"] == 32
    back = load_encoder(path)
    np.testing.assert_array_equal(extract_features(back, real[:20]), extract_features(enc, real[:20]))
    assert back.train_info["steps"] == 60
    with pytest.raises(MedsynthError):
        load_encoder(tmp_path / "missing.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(MedsynthError, match="not a medsynth feature encoder"):
        load_encoder(tmp_path / "other.pt")


def test_fd_on_encoder_separates_distributions(trained):
    real, enc = trained
    fr = extract_features(enc, real)
    same = extract_features(enc, _blobs(160, seed=1))
    blurred = extract_features(enc, _blobs(160, seed=1, blur=True))
    noise = extract_features(enc, torch.rand(160, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    fd_same, fd_blur, fd_noise = (frechet_distance(x, fr) for x in (same, blurred, noise))
    assert fd_same < fd_blur < fd_noise
    assert fd_same < 3 * max(frechet_distance(fr[:80], fr[80:]), 1e-6) + 1.0  # the real-vs-real floor


def test_encoder_3d_and_other_sizes():
    vols = torch.rand(12, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    enc = train_feature_encoder(vols, seed=0, steps=3, batch_size=4)
    f = extract_features(enc, vols)
    assert f.shape == (12, enc.feature_dim) and np.isfinite(f).all()
    enc2 = train_feature_encoder(_blobs(8, size=50, seed=0), steps=2, batch_size=4)  # LIDC-like 50 px
    assert extract_features(enc2, _blobs(3, size=50, seed=1)).shape == (3, enc2.feature_dim)
    with pytest.raises(MedsynthError):
        train_feature_encoder(torch.zeros(4, 3, 16, 16), steps=1)


def test_encoder_ranks_a_distortion_ladder(trained):
    """Validate the metric before ranking models by it: on held-out real-like images, the Fréchet
    distance on the encoder grows with each rung of a blur ladder (σ 0.5 < 1 < 2 px) and of a noise
    ladder (sd 0.05 < 0.15 < 0.4), and every rung lies above the undistorted images' distance."""
    from monai.transforms import GaussianSmooth

    real, enc = trained
    fr = extract_features(enc, real)
    held = _blobs(160, seed=3)
    base = frechet_distance(extract_features(enc, held), fr)
    g = torch.Generator().manual_seed(4)
    blur = [frechet_distance(extract_features(enc, torch.stack([GaussianSmooth(sigma=s)(x) for x in held])), fr)
            for s in (0.5, 1.0, 2.0)]
    noise = [frechet_distance(extract_features(enc, (held + sd * torch.randn(held.shape, generator=g)).clamp(-1, 1)), fr)
             for sd in (0.05, 0.15, 0.4)]
    assert base < blur[0] < blur[1] < blur[2], (base, blur)
    assert base < noise[0] < noise[1] < noise[2], (base, noise)
