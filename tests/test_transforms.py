"""MONAI pipelines: CT windowing, X-ray percentile normalisation, geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.data.transforms import ct_pipeline, xray_pipeline
from medsynth.data.windows import hu_to_unit


def test_ct_window_maps_hu_to_unit_range():
    hu = np.array([[-2000, -1350, -600, 150, 3000]] * 5, dtype=np.float32)[None]  # (1, 5, 5)
    out = ct_pipeline(5, window="lung")({"image": hu})["image"]
    assert isinstance(out, torch.Tensor) and type(out) is torch.Tensor  # plain tensor, no MetaTensor
    assert out.dtype == torch.float32 and out.shape == (1, 5, 5)
    np.testing.assert_allclose(out[0, 0].numpy(), [-1, -1, 0, 1, 1], atol=1e-5)
    med = ct_pipeline(5, window="mediastinal")({"image": hu})["image"]
    np.testing.assert_allclose(med[0, 0].numpy(), hu_to_unit(hu[0, 0], "mediastinal"), atol=1e-5)
    custom = ct_pipeline(5, window=(0.0, 2000.0))({"image": hu})["image"]
    np.testing.assert_allclose(custom[0, 0].numpy(), np.clip(hu[0, 0] / 1000, -1, 1), atol=1e-5)


def test_xray_percentiles_to_unit_and_robust_to_outliers():
    rng = np.random.default_rng(0)
    img = rng.uniform(1000, 3000, (1, 64, 64)).astype(np.float32)
    img[0, 0, 0] = 60000  # a burnt-in marker
    out = xray_pipeline(64)({"image": img})["image"]
    assert out.shape == (1, 64, 64) and float(out.min()) == -1.0 and float(out.max()) == 1.0
    # the outlier does not compress the rest: the median stays near the middle
    assert abs(float(out.median())) < 0.1
    # gain/offset invariance
    out2 = xray_pipeline(64)({"image": img * 3 + 500})["image"]
    torch.testing.assert_close(out, out2, atol=1e-4, rtol=0)


def test_aspect_kept_and_padded_with_minus_one():
    img = np.zeros((1, 40, 20), np.float32)
    img[0, :, :] = np.linspace(0, 1, 20)[None]
    out = xray_pipeline(16)({"image": img})["image"]
    assert out.shape == (1, 16, 16)
    # 40x20 -> 16x8 content centred, 4 padded columns of -1 each side
    assert torch.all(out[0, :, :4] == -1) and torch.all(out[0, :, -4:] == -1)
    assert float(out[0, :, 4:12].max()) > 0.9
    big = ct_pipeline(8)({"image": np.full((1, 32, 32), 0.0, np.float32) + np.eye(32, dtype=np.float32)[None] * 100})
    assert big["image"].shape == (1, 8, 8)


def test_mask_follows_image_and_stays_binary():
    img = np.random.default_rng(1).normal(-500, 200, (1, 30, 30)).astype(np.float32)
    mask = np.zeros((1, 30, 30), np.float32)
    mask[0, 10:20, 10:20] = 1
    out = ct_pipeline(15, with_mask=True)({"image": img, "mask": mask})
    m = out["mask"]
    assert m.shape == (1, 15, 15) and set(m.unique().tolist()) == {0.0, 1.0}
    assert m[0, 7, 7] == 1 and m[0, 0, 0] == 0


def test_3d_ct_and_bad_args():
    vol = np.random.default_rng(2).uniform(-1000, 400, (1, 10, 20, 20)).astype(np.float32)
    out = ct_pipeline(8, spatial_dims=3)({"image": vol})["image"]
    assert out.shape == (1, 8, 8, 8) and out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError):
        ct_pipeline(8, spatial_dims=4)
    with pytest.raises(KeyError):
        ct_pipeline(8, window="bone-ish")
