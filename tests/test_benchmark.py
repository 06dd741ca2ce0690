"""Tests for medsynth.downstream.benchmark: arms x fractions x seeds, no leakage, outputs written."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from medsynth.errors import MedsynthError
from medsynth.downstream.benchmark import (
    ALL_ARMS,
    ARM_AUG,
    ARM_CLASSIC,
    ARM_REAL,
    ARM_SYN_ONLY,
    METRICS,
    check_no_leakage,
    results_table,
    run_benchmark,
    sens_at_spec,
    spec_at_sens,
    subsample_patients,
    write_benchmark,
)

torch.set_num_threads(1)

try:  # the team's ImageSet; the benchmark only duck-types these fields
    from medsynth.data.imageset import ImageSet
except ImportError:  # pragma: no cover - while dataset.py is being written

    @dataclass
    class ImageSet:  # type: ignore[no-redef]
        images: torch.Tensor
        labels: torch.Tensor
        patient_ids: list
        paths: list
        splits: list
        modality: str


def _images(labels: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    x = rng.normal(-0.3, 0.25, (len(labels), 1, size, size)).astype(np.float32)
    c = size // 2
    x[labels == 1, :, c - 3 : c + 3, c - 3 : c + 3] += 0.8
    return torch.from_numpy(x).clamp(-1, 1)


def _tiny_set(n_patients: int = 40, per: int = 2, size: int = 16, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    pat_label = np.arange(n_patients) % 2
    labels = np.repeat(pat_label, per)
    pids = [f"P{p:03d}" for p in np.repeat(np.arange(n_patients), per)]
    side = np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 2)[np.arange(n_patients) % 10]
    splits = np.repeat(side, per).tolist()
    return ImageSet(
        images=_images(labels, size, rng), labels=torch.from_numpy(labels),
        patient_ids=pids, paths=[f"p{i}" for i in range(len(labels))], splits=splits,
        modality="ct",
    )


def _synthetic(n: int = 40, size: int = 16) -> ImageSet:
    rng = np.random.default_rng(99)
    labels = np.arange(n) % 2
    return ImageSet(
        images=_images(labels, size, rng), labels=torch.from_numpy(labels),
        patient_ids=[f"S{i}" for i in range(n)], paths=[f"s{i}" for i in range(n)],
        splits=["train"] * n, modality="ct",
    )


def test_subsample_patients_nested_stratified():
    labels = np.repeat(np.arange(40) % 2, 3)
    pids = np.repeat(np.arange(40), 3).astype(str)
    subs = subsample_patients(labels, pids, (0.1, 0.5, 1.0), seed=0)
    assert len(subs[1.0]) == 120
    small, mid = set(subs[0.1]), set(subs[0.5])
    assert small < mid
    assert len(set(pids[subs[0.1]])) == 4  # 2 per class
    assert labels[subs[0.1]].mean() == 0.5
    other = subsample_patients(labels, pids, (0.1,), seed=1)[0.1]
    assert set(other) != small  # the seed changes the subset


def test_run_benchmark_arms_fractions_seeds(tmp_path):
    real = _tiny_set()
    res = run_benchmark(
        real, _synthetic(), arms=(ARM_REAL, ARM_AUG), fractions=(0.5, 1.0), seeds=(0, 1),
        epochs=1, min_steps=0, batch_size=16, n_boot=50, classifier_kwargs={"width": 4},
    )
    assert len(res.rows) == 2 * 2 * 2
    keys = {(r["arm"], r["fraction"], r["seed"]) for r in res.rows}
    assert keys == {(a, f, s) for a in (ARM_REAL, ARM_AUG) for f in (0.5, 1.0) for s in (0, 1)}
    for r in res.rows:
        for m in METRICS + ("threshold",):
            assert np.isfinite(r[m]), (m, r)
        if r["arm"] == ARM_AUG:
            assert r["n_train_synthetic"] == r["n_train_real"]
        else:
            assert r["n_train_synthetic"] == 0
    # both arms at a fraction and seed use the same real subset
    real_rows = {(r["fraction"], r["seed"]): r["n_train_real"] for r in res.rows
                 if r["arm"] == ARM_REAL}
    for r in res.rows:
        assert r["n_train_real"] == real_rows[(r["fraction"], r["seed"])]
    assert len(res.summary) == 4
    for s in res.summary:
        for m in METRICS:
            assert s[f"{m}_lo"] <= s[m] <= s[f"{m}_hi"], (m, s)
    # one paired test per (non-reference arm, fraction, threshold-free metric)
    assert [(d["arm"], d["fraction"], d["metric"]) for d in res.diffs] == [
        (ARM_AUG, f, m) for f in (0.5, 1.0) for m in ("auroc", "sens_at_90spec", "spec_at_90sens")
    ]
    assert all(d["lo"] <= d["diff"] <= d["hi"] and 0 <= d["p"] <= 1 for d in res.diffs)
    assert res.n_test == 16

    paths = write_benchmark(res, tmp_path / "bench")
    df = pd.read_csv(paths["csv"])
    # tidy shape: 8 run rows (arm x fraction x seed), 4 summary rows, 6 diff rows
    assert df["kind"].value_counts().to_dict() == {"run": 8, "summary": 4, "diff": 6}
    runs = df[df["kind"] == "run"]
    assert not runs.duplicated(["arm", "fraction", "seed"]).any()
    assert runs["seed"].notna().all() and df.loc[df["kind"] != "run", "seed"].isna().all()
    summ = df[df["kind"] == "summary"]
    assert {"auroc_lo", "auroc_hi", "sens_at_90spec_lo", "spec_at_90sens_hi",
            "auroc_seed_sd"} <= set(summ.columns)
    assert summ[["auroc", "auroc_lo", "auroc_hi"]].notna().all().all()
    dif = df[df["kind"] == "diff"]
    assert dif[["diff", "diff_lo", "diff_hi", "p", "metric"]].notna().all().all()
    assert list(df.columns[:5]) == ["kind", "arm", "fraction", "seed", "metric"]
    data = json.loads(paths["json"].read_text())
    assert {"config", "rows", "summary", "diffs", "timings", "n_test"} <= set(data)
    assert paths["plot"].stat().st_size > 1000
    # no real patient ID reaches the shareable results: test cases carry pseudonyms, one per patient
    real_test_ids = {str(p) for p, s in zip(real.patient_ids, real.splits) if s == "test"}
    pids = data["test_predictions"]["patient_ids"]
    assert len(pids) == res.n_test and len(set(pids)) == res.n_test_patients
    assert all(p.startswith("P") for p in pids) and not set(pids) & real_test_ids


def test_all_five_arms_run_end_to_end():
    real = _tiny_set()
    res = run_benchmark(
        real, _synthetic(), fractions=(1.0,), seeds=(0,), epochs=1, batch_size=16,
        synthetic_ratio=0.5, n_boot=20, classifier_kwargs={"width": 4},
    )
    assert [r["arm"] for r in res.rows] == list(ALL_ARMS)
    by_arm = {r["arm"]: r for r in res.rows}
    n_real = by_arm[ARM_REAL]["n_train_real"]
    assert by_arm[ARM_SYN_ONLY]["n_train_real"] == 0
    assert by_arm[ARM_SYN_ONLY]["n_train_synthetic"] == round(0.5 * n_real)
    assert by_arm[ARM_CLASSIC]["n_train_synthetic"] == 0
    assert by_arm["real+classic+synthetic"]["n_train_synthetic"] == round(0.5 * n_real)
    # classic augmentation changes training: same data and seed, different predictions
    assert by_arm[ARM_CLASSIC]["auroc"] != by_arm[ARM_REAL]["auroc"] or (
        by_arm[ARM_CLASSIC]["threshold"] != by_arm[ARM_REAL]["threshold"])
    assert {d["arm"] for d in res.diffs} == set(ALL_ARMS) - {ARM_REAL}
    assert len(results_table(res)) == 5 + 5 + 4 * 3


def test_arms_without_synthetic_default_and_errors():
    real = _tiny_set()
    res = run_benchmark(real, None, fractions=(1.0,), seeds=(0,), epochs=1, batch_size=16,
                        n_boot=10, classifier_kwargs={"width": 4})
    assert [r["arm"] for r in res.rows] == [ARM_REAL, ARM_CLASSIC]
    with pytest.raises(MedsynthError, match="synthetic"):
        run_benchmark(real, None, arms=(ARM_AUG,), fractions=(1.0,), seeds=(0,), epochs=1)
    with pytest.raises(MedsynthError, match="unknown benchmark arm"):
        run_benchmark(real, None, arms=("mixup",), fractions=(1.0,), seeds=(0,), epochs=1)


def test_sens_at_spec_and_spec_at_sens_hand_made():
    # 10 negatives scored 0.0 .. 0.9, 10 positives.
    y = np.array([0] * 10 + [1] * 10)
    neg = np.arange(10) / 10
    pos = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    s = np.concatenate([neg, pos])
    # specificity >= 0.9 allows at most one false positive: threshold in (0.8, 0.9] ->
    # positives above 0.8: 0.85, 0.95 -> sensitivity 0.2
    assert sens_at_spec(y, s, 0.9) == pytest.approx(0.2)
    # sensitivity >= 0.9 needs 9 positives: threshold in (0.05, 0.15] -> negatives below
    # 0.15: 0.0, 0.1 -> specificity 0.2
    assert spec_at_sens(y, s, 0.9) == pytest.approx(0.2)
    # a perfect ranking: both are 1
    s2 = np.concatenate([neg, pos + 1])
    assert sens_at_spec(y, s2) == 1.0 and spec_at_sens(y, s2) == 1.0
    # 80 % specificity allows two false positives: threshold in (0.7, 0.8] -> 0.75, 0.85, 0.95
    assert sens_at_spec(y, s, 0.8) == pytest.approx(0.3)
    assert np.isnan(sens_at_spec(np.zeros(4), np.arange(4)))


def test_fast_operating_points_match_sklearn_roc_curve():
    from medsynth.downstream.benchmark import _sens_at_90spec_fast, _spec_at_90sens_fast

    rng = np.random.default_rng(0)
    for n in (7, 40, 145):
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        s = np.round(rng.random(n) + 0.3 * y, 1)  # rounding makes ties
        assert _sens_at_90spec_fast(y, s) == pytest.approx(sens_at_spec(y, s))
        assert _spec_at_90sens_fast(y, s) == pytest.approx(spec_at_sens(y, s))


def test_real_only_learns_and_is_deterministic():
    real = _tiny_set(n_patients=60)
    kw = dict(arms=(ARM_REAL,), fractions=(1.0,), seeds=(0,), epochs=3, min_steps=30,
              batch_size=16, n_boot=50, classifier_kwargs={"width": 4})
    a = run_benchmark(real, None, **kw)
    b = run_benchmark(real, None, **kw)
    assert [r["arm"] for r in a.rows] == [ARM_REAL]
    assert a.diffs == []
    assert a.rows[0]["n_train_real"] == 72
    assert a.rows[0]["epochs_run"] == 6  # 5 steps per epoch, raised to reach min_steps=30
    assert a.rows[0]["auroc"] == b.rows[0]["auroc"]
    assert a.summary[0]["auroc"] > 0.9  # the blob task is easy


def test_leaking_splits_raise():
    real = _tiny_set()
    real.splits[0] = "test"  # P000 now has one case in test and one in train
    with pytest.raises(MedsynthError, match="leakage"):
        run_benchmark(real, None, fractions=(1.0,), seeds=(0,), epochs=1, n_boot=10)
    with pytest.raises(MedsynthError, match="leakage"):
        check_no_leakage(["a", "a", "b"], ["train", "val", "test"])
    check_no_leakage(["a", "a", "b"], ["train", "train", "test"])


def test_bad_inputs_raise():
    real = _tiny_set()
    syn = _synthetic(size=8)
    with pytest.raises(MedsynthError, match="do not match"):
        run_benchmark(real, syn, fractions=(1.0,), seeds=(0,), epochs=1)
    with pytest.raises(MedsynthError, match="fraction"):
        run_benchmark(real, None, fractions=(0.0,), seeds=(0,), epochs=1)
    real.splits = ["train"] * len(real.splits)
    with pytest.raises(MedsynthError, match="test"):
        run_benchmark(real, None, fractions=(1.0,), seeds=(0,), epochs=1)


def test_pseudonyms_are_stable_and_hide_ids():
    from medsynth.downstream.benchmark import pseudonyms

    assert pseudonyms(["MRN-77", "MRN-12", "MRN-77"]) == ["P0001", "P0000", "P0001"]
    # the same patients in another order get the same pseudonyms (two benchmarks pair by patient)
    assert pseudonyms(["MRN-12", "MRN-77"]) == ["P0000", "P0001"]
