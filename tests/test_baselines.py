"""Tests for pipelines.studies.baselines: a smoke run on tiny real subsets (skips without the data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.errors import MedsynthError
from pipelines.studies.baselines.study import (
    PUBLISHED,
    load_pneumoniamnist,
    run_lidc3d,
    run_pneumoniamnist,
    write_baselines_report,
)

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PNEU = DATA / "pneumoniamnist"
LIDC = DATA / "lidc_nodules"


@pytest.mark.skipif(not (PNEU / "pneumoniamnist_28.npz").is_file(),
                    reason="../shared/data/pneumoniamnist absent (a fresh clone has no real data)")
def test_pneumoniamnist_smoke_and_report(tmp_path):
    d = load_pneumoniamnist(PNEU)
    assert {k: len(v[1]) for k, v in d.items()} == {"train": 4708, "val": 524, "test": 624}
    x = d["test"][0]
    assert x.shape[1:] == (1, 28, 28) and x.min() >= -1 and x.max() <= 1
    res = run_pneumoniamnist(PNEU, arch="cnn", epochs=1, batch_size=32, max_train=96,
                             max_eval=48, n_boot=50)
    assert res["n"] == {"train": 96, "val": 48, "test": 48}
    assert res["ci95"][0] <= res["test_auroc"] <= res["ci95"][1]
    assert res["published_auroc"] == PUBLISHED["pneumoniamnist"]["auroc"]
    assert res["delta"] == pytest.approx(res["test_auroc"] - 0.944)
    assert res["within_tolerance"] == (abs(res["delta"]) <= 0.02)
    assert res["device"].startswith("cpu") and res["wall_seconds"] > 0
    jp, mp = write_baselines_report([res], tmp_path)
    assert json.loads(jp.read_text())["results"][0]["dataset"] == "pneumoniamnist"
    assert "0.944" in mp.read_text()


@pytest.mark.skipif(not (LIDC / "nodules_3d_32px.npz").is_file(),
                    reason="../shared/data/lidc_nodules absent (a fresh clone has no real data)")
def test_lidc3d_smoke_patient_clusters():
    res = run_lidc3d(LIDC, arch="cnn", size=16, epochs=1, batch_size=16, max_train=32, n_boot=50)
    assert res["n"]["train"] == 32 and res["n"]["test"] > 50
    assert res["n_test_patients"] < res["n"]["test"]  # several crops per patient
    assert "patients resampled" in res["ci_method"]
    assert np.isfinite(res["test_auroc"])


def test_missing_folder_raises(tmp_path):
    with pytest.raises(MedsynthError, match="not found"):
        load_pneumoniamnist(tmp_path)
