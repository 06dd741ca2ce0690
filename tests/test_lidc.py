"""Tests for medsynth.data.lidc on the real LIDC crops (skipped where the data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medsynth.errors import MedsynthError

LIDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc_nodules"
needs_data = pytest.mark.skipif(
    not (LIDC / "labels.csv").is_file(),
    reason=f"real LIDC data not available at {LIDC} (../shared/data beside the repository)",
)


@pytest.fixture(scope="module")
def lidc2d():
    from medsynth.data.lidc import load_lidc

    return load_lidc(LIDC, spatial_dims=2, size=64)


@needs_data
def test_2d_labels_shapes_ranges(lidc2d):
    s = lidc2d
    table = pd.read_csv(LIDC / "labels.csv")
    n01 = int(table["malignancy_class"].isin([0, 1]).sum())
    assert len(s) == n01
    assert s.images.shape == (n01, 1, 64, 64) and s.images.dtype == torch.float32
    assert set(s.labels.tolist()) == {0, 1} and s.labels.dtype == torch.int64
    assert float(s.images.min()) >= -1 and float(s.images.max()) <= 1
    assert float(s.images.std()) > 0.1
    assert s.modality == "ct"
    assert len(s.patient_ids) == len(s.paths) == len(s.splits) == n01
    # label of each crop matches its CSV row (paths carry the row index)
    rows = [int(p.rsplit("#", 1)[1]) for p in s.paths]
    np.testing.assert_array_equal(table["malignancy_class"].to_numpy()[rows], s.labels.numpy())


@needs_data
def test_patient_split_disjoint_and_stratified(lidc2d):
    s = lidc2d
    splits = np.asarray(s.splits)
    pids = np.asarray(s.patient_ids)
    sides = {k: set(pids[splits == k]) for k in ("train", "val", "test")}
    assert not sides["train"] & sides["test"]
    assert not sides["train"] & sides["val"]
    assert not sides["val"] & sides["test"]
    frac = {k: float(np.mean(splits == k)) for k in sides}
    assert 0.5 < frac["train"] < 0.7 and 0.12 < frac["test"] < 0.28
    y = s.labels.numpy()
    for k in sides:
        assert 0.3 < y[splits == k].mean() < 0.65  # both classes on every side


@needs_data
def test_split_deterministic_and_native_size():
    from medsynth.data.lidc import load_lidc

    a = load_lidc(LIDC, size=None, seed=3)
    b = load_lidc(LIDC, size=None, seed=3)
    assert a.images.shape[-2:] == (50, 50)
    assert a.splits == b.splits
    assert torch.equal(a.images, b.images)
    assert a.splits != load_lidc(LIDC, size=None, seed=4).splits


@needs_data
def test_3d_shape():
    from medsynth.data.lidc import load_lidc

    s = load_lidc(LIDC, spatial_dims=3, size=None)
    assert s.images.shape[1:] == (1, 32, 32, 32)
    assert set(s.labels.tolist()) == {0, 1}


def test_missing_folder_raises(tmp_path):
    from medsynth.data.lidc import load_lidc

    with pytest.raises(MedsynthError, match="not found"):
        load_lidc(tmp_path / "nope")
    (tmp_path / "labels.csv").write_text("index\n0\n")
    with pytest.raises(MedsynthError, match="missing"):
        load_lidc(tmp_path)
