"""Tests for medsynth.downstream.classifier: learns an easy task, is deterministic, handles 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medsynth.errors import MedsynthError
from medsynth.downstream.classifier import (
    build_classifier,
    monai_augment,
    penultimate_features,
    predict_proba,
    train_classifier,
)

torch.set_num_threads(1)


def _blobs(n: int, size: int = 32, seed: int = 0, spatial_dims: int = 2):
    """Noise images; positives carry a bright central blob. (N,1,*S) in [-1,1], labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1) + (size,) * spatial_dims
    x = torch.randn(shape, generator=g) * 0.3 - 0.2
    y = torch.arange(n) % 2
    c, r = size // 2, max(size // 8, 2)
    sl = (slice(c - r, c + r),) * spatial_dims
    pos = (y == 1).nonzero().flatten()
    for i in pos.tolist():
        x[(i, 0) + sl] += 0.9
    return x.clamp(-1, 1), y


def test_learns_separable_task_2d():
    x, y = _blobs(160, seed=1)
    xt, yt = _blobs(80, seed=2)
    model = train_classifier(x, y, epochs=2, batch_size=16, seed=0)
    p = predict_proba(model, xt)
    assert p.shape == (80,)
    assert np.all((p >= 0) & (p <= 1))
    assert roc_auc_score(yt.numpy(), p) > 0.9


def test_deterministic_with_same_seed_and_different_with_other_seed():
    x, y = _blobs(64, seed=3)
    kw = dict(epochs=1, batch_size=16, augment=None)
    state = torch.random.get_rng_state()
    p1 = predict_proba(train_classifier(x, y, seed=5, **kw), x)
    # the caller's global RNG must be untouched by training
    assert torch.equal(state, torch.random.get_rng_state())
    p2 = predict_proba(train_classifier(x, y, seed=5, **kw), x)
    p3 = predict_proba(train_classifier(x, y, seed=6, **kw), x)
    np.testing.assert_array_equal(p1, p2)
    assert not np.allclose(p1, p3)


def test_augment_and_val_selection_and_history():
    x, y = _blobs(64, seed=4)
    xv, yv = _blobs(32, seed=5)
    model = train_classifier(
        x, y, epochs=2, batch_size=16, augment=monai_augment(2, seed=0),
        x_val=xv, y_val=yv, pos_weight="balanced",
    )
    assert len(model.history) == 2
    aucs = [h["val_auroc"] for h in model.history]
    assert all(a is not None for a in aucs)
    assert model.best_epoch == int(np.argmax(aucs)) + 1
    # the returned weights are those of the best epoch
    assert roc_auc_score(yv.numpy(), predict_proba(model, xv)) == pytest.approx(max(aucs))


def test_augment_keeps_shape_and_range():
    x, _ = _blobs(4, seed=0)
    out = monai_augment(2, seed=0, prob=1.0)(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, x)


def test_3d_shapes_and_features():
    x, y = _blobs(16, size=16, spatial_dims=3)
    model = train_classifier(x, y, spatial_dims=3, epochs=1, batch_size=8, width=4)
    p = predict_proba(model, x)
    assert p.shape == (16,) and np.isfinite(p).all()
    f = penultimate_features(model, x)
    assert f.shape == (16, 32)


def test_penultimate_features_2d():
    torch.manual_seed(0)
    model = build_classifier(2, (1, 32, 32), 8, arch="monai")
    x, _ = _blobs(5)
    assert penultimate_features(model, x).shape == (5, 64)
    assert penultimate_features(model, x, pool=False).shape == (5, 64 * 2 * 2)
    cnn = build_classifier(2, (1, 32, 32), 8)
    assert cnn.arch == "cnn"
    assert penultimate_features(cnn, x).shape == (5, 64)
    # the head's input: global max ++ global mean of the last stage
    assert penultimate_features(cnn, x, pool=False).shape == (5, 128)


def _random_position_blobs(n: int, size: int = 32, seed: int = 0):
    """Noise; positives carry a small (4x4) bright blob at a uniformly random position."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, size, size), generator=g) * 0.3 - 0.2
    y = torch.arange(n) % 2
    for i in (y == 1).nonzero().flatten().tolist():
        cy, cx = torch.randint(2, size - 2, (2,), generator=g).tolist()
        x[i, 0, cy - 2 : cy + 2, cx - 2 : cx + 2] += 0.9
    return x.clamp(-1, 1), y


def test_default_classifier_learns_random_position_blob():
    # A dense head over flattened positions (arch="monai") scores ~0.6 here; global pooling
    # makes the default position invariant enough to learn it in a few epochs.
    x, y = _random_position_blobs(300, seed=1)
    xt, yt = _random_position_blobs(200, seed=2)
    model = train_classifier(x, y, epochs=5, batch_size=32, seed=0, width=8)
    assert roc_auc_score(yt.numpy(), predict_proba(model, xt)) > 0.9


@pytest.mark.parametrize("arch,spatial_dims,size", [("resnet10", 2, 28), ("resnet18", 3, 16)])
def test_resnet_archs_shapes(arch, spatial_dims, size):
    torch.manual_seed(0)
    model = build_classifier(spatial_dims, (1,) + (size,) * spatial_dims, arch=arch)
    x = torch.zeros((2, 1) + (size,) * spatial_dims)
    assert model(x).shape == (2, 1)
    assert penultimate_features(model, x).shape == (2, 512)


def test_flip_lr_and_lr_schedule_run_and_change_training():
    x, y = _blobs(32, seed=6)
    kw = dict(epochs=2, batch_size=16, seed=0, width=4)
    p0 = predict_proba(train_classifier(x, y, **kw), x)
    p1 = predict_proba(train_classifier(x, y, flip_lr=True, **kw), x)
    p2 = predict_proba(train_classifier(x, y, lr_milestones=(1,), **kw), x)
    assert not np.allclose(p0, p1) and not np.allclose(p0, p2)


def test_bad_inputs_raise():
    x, y = _blobs(8)
    with pytest.raises(MedsynthError):
        train_classifier(x[:, 0], y, epochs=1)
    with pytest.raises(MedsynthError):
        train_classifier(x, y[:4], epochs=1)
    with pytest.raises(MedsynthError):
        train_classifier(x, y + 1, epochs=1)
    with pytest.raises(MedsynthError):
        build_classifier(3, (1, 32, 32))
    with pytest.raises(MedsynthError):
        build_classifier(2, (1, 32, 32), arch="vgg")
