"""CycleGAN lesion insertion (pipelines/studies/lesion_insertion/study.py) and the benchmark's real+extra arm.

(The "cycle reconstruction error falls during a short run" check lives in tests/test_family.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medsynth.config import resolve, save_config
from medsynth.data.imageset import ImageSet
from medsynth.errors import MedsynthError
from medsynth.models.registry import build_model
from medsynth.downstream.benchmark import ARM_CLASSIC, ARM_EXTRA, ARM_REAL, run_benchmark, subsample_patients
from pipelines.studies.lesion_insertion.study import main, run_pipeline, training_negatives, translate_negatives

torch.set_num_threads(1)

SIDES = ("train",) * 6 + ("val",) * 2 + ("test",) * 2


def _real(n_patients: int = 30, size: int = 16, seed: int = 0) -> ImageSet:
    """One film per patient; label alternates; positives carry a bright central blob."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_patients) % 2
    x = rng.normal(-0.3, 0.2, (n_patients, 1, size, size)).astype(np.float32)
    c = size // 2
    x[labels == 1, :, c - 2: c + 2, c - 2: c + 2] += 0.9
    splits = [SIDES[(i // 2) % len(SIDES)] for i in range(n_patients)]
    return ImageSet(images=torch.from_numpy(x).clamp(-1, 1), labels=torch.from_numpy(labels),
                    patient_ids=[f"PHANTOM-{i:04d}" for i in range(n_patients)],
                    paths=[f"p{i}.dcm" for i in range(n_patients)], splits=splits, modality="xray")


def _cfg(size: int = 16, split="train"):
    return resolve(base={"model": {"name": "cyclegan", "width": 4, "num_classes": 2,
                                   "params": {"n_res": 1, "pool_size": 4}},
                         "data": {"size": size, "spatial_dims": 2, "modality": "xray", "split": split}})


def _cyclegan(size: int = 16):
    torch.manual_seed(0)
    return build_model(_cfg(size).model).eval()


def test_translated_positives_come_only_from_training_negatives():
    real = _real()
    # poison every validation/test image: a translation of any of them would show NaN
    held = np.asarray(real.splits) != "train"
    real.images[torch.from_numpy(held)] = float("nan")
    model = _cyclegan()
    tr, idx = translate_negatives(model, real)
    splits, labels = np.asarray(real.splits), real.labels.numpy()
    assert len(idx) == int(((splits == "train") & (labels == 0)).sum()) > 0
    assert np.array_equal(idx, training_negatives(real))
    assert (splits[idx] == "train").all() and (labels[idx] == 0).all()
    assert torch.isfinite(tr.images).all()
    # each translated image is the a2b translation of its source, with the source patient's id
    assert torch.allclose(tr.images, model.translate(real.images[torch.from_numpy(idx)], "a2b"))
    assert tr.patient_ids == [real.patient_ids[i] for i in idx]
    assert (tr.labels == 1).all() and set(tr.splits) == {"train"}
    assert all(p.startswith("synthetic:") for p in tr.paths)


def test_extra_arm_follows_source_patients_and_refuses_held_out_ones():
    real = _real(40)
    tr, idx = translate_negatives(_cyclegan(), real)
    res = run_benchmark(real, None, extra=tr, arms=(ARM_EXTRA,), fractions=(0.5, 1.0), seeds=(0,),
                        epochs=1, n_boot=20)
    assert [r["arm"] for r in res.rows] == [ARM_REAL, ARM_EXTRA] * 2
    tr_idx = np.flatnonzero(np.asarray(real.splits) == "train")
    pids = np.asarray(real.patient_ids)
    subsets = subsample_patients(real.labels.numpy()[tr_idx], pids[tr_idx], (0.5, 1.0), seed=0)
    for r in res.rows:
        kept = set(pids[tr_idx[subsets[r["fraction"]]]])
        want = sum(p in kept for p in tr.patient_ids) if r["arm"] == ARM_EXTRA else 0
        assert r["n_train_synthetic"] == want
    assert [r["n_train_synthetic"] for r in res.rows if r["arm"] == ARM_EXTRA][-1] == len(idx)
    assert {d["arm"] for d in res.diffs} == {ARM_EXTRA}

    test_pid = real.patient_ids[real.splits.index("test")]
    leaky = ImageSet(images=tr.images[:2], labels=tr.labels[:2], patient_ids=[tr.patient_ids[0], test_pid],
                     paths=tr.paths[:2], splits=["train", "train"], modality="xray")
    with pytest.raises(MedsynthError, match="outside the real training split"):
        run_benchmark(real, None, extra=leaky, arms=(ARM_EXTRA,), fractions=(1.0,), seeds=(0,), epochs=1)
    with pytest.raises(MedsynthError, match="needs an extra image set"):
        run_benchmark(real, None, arms=(ARM_EXTRA,), fractions=(1.0,), seeds=(0,), epochs=1)


def test_pipeline_runs_end_to_end_on_a_tiny_set(tmp_path):
    real = _real(40)
    out, syn = tmp_path / "report", tmp_path / "translated"
    kw = dict(fractions=(0.5, 1.0), seeds=(0,), epochs=1, min_steps=0, n_boot=20, check_epochs=1)
    res = run_pipeline(real, _cyclegan(), out, write_dir=syn, **kw)
    for name in ("results.json", "README.md", "pairs.png", "mean_change.png", "benchmark/results.json"):
        assert (out / name).is_file(), name
    n_neg = len(training_negatives(real))
    assert res["translated"]["n"] == n_neg == res["check"]["n_sources"]
    assert {r["arm"] for r in res["benchmark"]["summary"]} == {ARM_REAL, ARM_CLASSIC, ARM_EXTRA}
    full = [r for r in res["benchmark"]["summary"] if r["arm"] == ARM_EXTRA and r["fraction"] == 1.0]
    assert full[0]["n_train_synthetic"] == n_neg
    assert {d["fraction"] for d in res["benchmark"]["diffs"]} == {0.5, 1.0}
    # the control adds one copy of every kept real positive; translated vs oversampled is paired
    ctrl = [r for r in res["control"]["summary"] if r["arm"] == ARM_EXTRA and r["fraction"] == 1.0]
    n_pos = int(((np.asarray(real.splits) == "train") & (real.labels.numpy() == 1)).sum())
    assert ctrl[0]["n_train_synthetic"] == n_pos
    assert {(d["fraction"], d["metric"]) for d in res["translated_vs_oversampled"]} >= {(0.5, "auroc"), (1.0, "auroc")}
    assert "Reading" in (out / "README.md").read_text()
    for k in ("before", "after", "real_positive"):
        m, lo, hi = res["check"][k]["mean_score"]
        assert 0 <= lo <= m <= hi <= 1
    # written translated set: training split, label 1, marked as translations, no source identifier
    df = pd.read_csv(syn / "manifest.csv")
    assert len(df) == n_neg
    assert (df["split"] == "train").all() and (df["label"] == 1).all() and (df["source"] == "translated").all()
    assert df["patient_id"].str.startswith("TRANSLATED-").all()
    import pydicom

    ds = pydicom.dcmread(syn / df["path"].iloc[0])
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.PatientID.startswith("TRANSLATED")
    assert "TRANSLATION" in ds.SeriesDescription.upper()
    blob = b"".join(p.read_bytes() for p in syn.iterdir())
    assert b"PHANTOM-" not in blob
    # rerun: the benchmark result is reused, not recomputed
    stamp = (out / "benchmark" / "results.json").stat().st_mtime_ns
    again = run_pipeline(real, _cyclegan(), out, **kw)
    assert (out / "benchmark" / "results.json").stat().st_mtime_ns == stamp
    assert again["benchmark"]["summary"] == res["benchmark"]["summary"]
    assert json.loads((out / "results.json").read_text())["translated"]["n"] == n_neg


def test_main_refuses_a_cyclegan_trained_beyond_the_training_split(tmp_path):
    run = tmp_path / "00000-xray-cyclegan"
    run.mkdir()
    save_config(_cfg(split=None), run / "config.yaml")
    with pytest.raises(MedsynthError, match="training-split"):
        main(["--run", str(run), "--out", str(tmp_path / "out")])


def test_positive_fidelity_ranks_sets_by_closeness_to_real_positives():
    from types import SimpleNamespace

    from medsynth.metrics.fidelity import train_feature_encoder
    from pipelines.studies.lesion_insertion.study import positive_fidelity

    g = torch.Generator().manual_seed(0)
    n = 80
    pos = torch.rand(n, 1, 16, 16, generator=g) * 0.5 + 0.3  # bright
    neg = torch.rand(n, 1, 16, 16, generator=g) * 0.5 - 0.8  # dark
    real = SimpleNamespace(images=torch.cat([pos, neg]), labels=torch.cat([torch.ones(n), torch.zeros(n)]).long(),
                           splits=["train"] * (2 * n))
    enc = train_feature_encoder(real.images, seed=0, steps=30)
    like_pos = torch.rand(60, 1, 16, 16, generator=g) * 0.5 + 0.3
    like_neg = torch.rand(60, 1, 16, 16, generator=g) * 0.5 - 0.8
    res = positive_fidelity(enc, real, {"pos-like": like_pos, "neg-like": like_neg}, repeats=3)
    assert res["h"] == 40  # half of the 80 real positives
    assert res["sets"]["pos-like"]["mean"] < res["sets"]["neg-like"]["mean"]
    assert res["sets"]["neg-like"]["mean"] > 5 * res["floor"]["mean"]
