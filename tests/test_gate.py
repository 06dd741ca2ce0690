"""The release gate (medsynth.metrics.gate; `generate --gate`, `augment --gate`).

* thresholds and distances on a constructed case whose distances are known by hand, the
  leave-one-PATIENT-out rule (near-duplicates of one patient do not pull the threshold to 0) and
  the EITHER-space rule;
* chunked distances equal the unchunked brute force;
* a generator overfitted on 8 images with the real training loop (an MLP GAN that collapses
  onto copies of its training images): the gate removes its samples;
* fresh real phantom images of new patients pass (about 1 % per space), copies and noised
  copies of the training images do not;
* sampling in rounds still delivers --count, and fails in one line when nothing passes;
* the command line: generate writes the record (release_gate.json, manifest column, DICOM
  ImageComments) and exactly --count images; augment leaves out the copies; a missing training
  set is one line, never a silent skip.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from medsynth.errors import MedsynthError
from medsynth.metrics.gate import (
    GATE_FILE,
    GateTally,
    fit_gate,
    gated_sample,
    loo_distances,
    nearest_distance,
    release_gate,
    space_quantile,
)

runner = CliRunner()

# ----------------------------------------------------------------------------- a constructed case
#: 2-pixel "images" (N, 1, 1, 2): points in the plane. A1 and A2 are one patient (a near-duplicate,
#: 0.1 apart); B, C, D are three other patients.
POINTS = {"A1": (0.0, 0.0), "A2": (0.0, 0.1), "B": (0.6, 0.0), "C": (0.0, -0.8), "D": (-0.6, 0.9)}
PATIENTS = ["A", "A", "B", "C", "D"]
#: each point's distance to the closest point of ANOTHER patient, by hand:
#: A1 -> B 0.6; A2 -> B sqrt(0.37); B -> A1 0.6; C -> A1 0.8; D -> A2 1.0
LOO_PATIENT = [0.6, np.sqrt(0.37), 0.6, 0.8, 1.0]


def _images(points) -> torch.Tensor:
    return torch.tensor(points, dtype=torch.float32).reshape(-1, 1, 1, 2)


class MeanEncoder(nn.Module):
    """A feature 'encoder' with a known output: one feature, the image's mean."""

    def forward(self, x):
        return x.flatten(1).mean(1, keepdim=True)


def test_thresholds_are_the_quantile_of_leave_one_patient_out_distances():
    train = _images(list(POINTS.values()))
    v = train.reshape(5, -1).numpy()
    assert loo_distances(v, PATIENTS, chunk=2) == pytest.approx(LOO_PATIENT, abs=1e-6)
    # sorted: 0.6, 0.6, 0.6083, 0.8, 1.0; np.quantile interpolates linearly between order statistics
    for q, want in [(0.0, 0.6), (0.5, np.sqrt(0.37)), (0.75, 0.8), (0.625, (np.sqrt(0.37) + 0.8) / 2)]:
        assert fit_gate(train, patient_ids=PATIENTS, quantile=q).thresholds["pixel"] == pytest.approx(want, abs=1e-6)
    # without patient ids A1 and A2 are each other's neighbour (0.1): the threshold collapses toward 0
    assert fit_gate(train, quantile=0.0).thresholds["pixel"] == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(MedsynthError, match="at least 2 patients"):
        fit_gate(train, patient_ids=["A"] * 5)
    with pytest.raises(MedsynthError, match="gate-quantile"):
        fit_gate(train, quantile=1.0)


def test_an_image_too_close_in_either_space_is_removed():
    train = _images(list(POINTS.values()))
    gate = fit_gate(train, patient_ids=PATIENTS, encoder=MeanEncoder(), quantile=0.75, calibrate=False)
    assert gate.thresholds["pixel"] == pytest.approx(0.8, abs=1e-6)
    # feature (the mean): A1 0, A2 .05, B .3, C -.4, D .15 -> other-patient distances .15 .1 .15 .4 .1
    assert gate.thresholds["feature"] == pytest.approx(0.15, abs=1e-6)
    cand = _images([(0.6, 0.3),     # pixel 0.3 from B; mean .45 is .15 from B: removed in both spaces
                    (0.9, -0.9),    # pixel 0.906 from C (passes); mean 0 = A1's: removed in feature space only
                    (-0.9, -0.9),   # pixel 0.906 from C; mean -0.9 is 0.5 from C: passes
                    (0.9, 0.9)])    # pixel 0.949 from B; mean 0.9 is 0.6 from B: passes
    keep, dist = gate.screen(cand)
    assert dist["pixel"] == pytest.approx([0.3, np.sqrt(0.82), np.sqrt(0.82), np.sqrt(0.9)], abs=1e-6)
    assert dist["feature"] == pytest.approx([0.15, 0.0, 0.5, 0.6], abs=1e-6)
    assert keep.tolist() == [False, False, True, True]
    kept, rec = release_gate(cand, train, patient_ids=PATIENTS, encoder=MeanEncoder(), quantile=0.75, calibrate=False)
    assert kept.tolist() == [2, 3]
    assert rec["n_screened"] == 4 and rec["n_removed"] == {"pixel": 1, "feature": 2, "total": 2}
    assert rec["spaces"] == ["pixel", "feature"] and rec["quantile"] == 0.75 and "EITHER" in rec["rule"]
    assert rec["thresholds"]["pixel"] == pytest.approx(0.8, abs=1e-6) and rec["encoder"]["fingerprint"]
    assert rec["reference"]["n_train"] == 5 and rec["reference"]["n_patients"] == 4


def test_the_union_of_the_spaces_is_calibrated_to_the_quantile():
    rng = np.random.default_rng(0)
    a, b = rng.random(400), rng.random(400)  # two spaces flagging nearly independent images
    for q in (0.01, 0.05, 0.2):
        qs = space_quantile({"pixel": a, "feature": b}, q)
        union = np.mean((a <= np.quantile(a, qs)) | (b <= np.quantile(b, qs)))
        assert q / 2 - 0.01 <= qs < q and q - 0.01 <= union <= q  # lower per space, the union at the target
        # uncalibrated, the union of two per-space quantiles removes nearly twice the target
        assert np.mean((a <= np.quantile(a, q)) | (b <= np.quantile(b, q))) > 1.5 * q
    assert space_quantile({"pixel": a, "feature": a}, 0.05) == 0.05  # identical flags: no change
    assert space_quantile({"pixel": a}, 0.05) == 0.05


def test_chunked_distances_equal_brute_force():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(41, 6)).astype(np.float32)
    groups = rng.integers(0, 15, 41)
    full = np.linalg.norm(v[:, None] - v[None], axis=2)
    other = np.where(groups[:, None] == groups[None], np.inf, full)
    for chunk in (1, 3, 7, 100):
        assert loo_distances(v, groups, chunk=chunk) == pytest.approx(other.min(1), abs=1e-5)
    q = rng.normal(size=(13, 6)).astype(np.float32)
    assert nearest_distance(q, v, chunk=4) == pytest.approx(np.linalg.norm(q[:, None] - v[None], axis=2).min(1),
                                                            abs=1e-5)


# ----------------------------------------------------------------------------- phantom images
def _phantoms(size: int, split: str | None = None):
    from medsynth.cli import default_data
    from medsynth.data.dataset import load_image_set

    return load_image_set(default_data(), modality="xray", size=size, split=split)


def _encoder(images, steps: int = 100):
    """A cheap feature encoder (the gate's kind, fewer steps, 32² input) trained on ``images``."""
    from medsynth.metrics.fidelity import train_feature_encoder

    return train_feature_encoder(images, seed=0, steps=steps, in_size=32)


@pytest.mark.slow
def test_a_generator_overfitted_on_8_images_has_its_copies_removed(tmp_path):
    """The real training loop, 1500 steps of the MLP GAN on 8 phantom radiographs (16², ~12 s): it
    memorises (every sample lies far closer to one training image than any two training images or
    any fresh real image do) and the gate removes its samples."""
    from medsynth.config import resolve
    from medsynth.metrics.membership import dcr_nndr
    from medsynth.train.loop import train

    torch.set_num_threads(1)
    ds = _phantoms(16)
    tr, fresh = ds.split("train"), ds.split("test")
    x = tr.images[:8]
    cfg = resolve(base={"data": {"modality": "xray", "size": 16},
                        "model": {"name": "gan", "num_classes": 0, "width": 8, "latent_dim": 16, "ema_beta": 0.0,
                                  "lr_g": 1e-3, "lr_d": 1e-3, "params": {"dropout": 0.0}},
                        "train": {"steps": 1500, "batch_size": 8, "tick_every": 500, "sample_every": 100000,
                                  "checkpoint_every": 100000, "seed": 0, "out": str(tmp_path)}})
    model = train(cfg, x, None, tmp_path / "run").model
    samples = model.sample(64, generator=torch.Generator().manual_seed(1))
    dcr, nndr = dcr_nndr(samples, x)
    loo = loo_distances(x.reshape(8, -1).numpy(), tr.patient_ids[:8])
    fresh_dcr, _ = dcr_nndr(fresh.images, x)
    # memorised copies: nearer a training image than half the closest real-real pair and than any fresh real image
    assert np.median(dcr) < 0.5 * loo.min() and np.median(dcr) < fresh_dcr.min()
    assert np.median(nndr) < 0.5  # close to ONE training image, not a blur of all of them
    kept, rec = release_gate(samples, x, patient_ids=tr.patient_ids[:8], encoder=_encoder(x))
    assert rec["n_removed"]["total"] >= 0.95 * 64 and len(kept) <= 3
    assert "note" in rec["reference"]  # 8 images < 1 / 0.01: the record says the threshold is coarse


def test_fresh_real_images_pass_and_copies_do_not():
    """252 training phantoms, 168 real phantoms of other patients (val + test): about 1 % of the fresh
    ones is removed (the union of the spaces is calibrated to the quantile), every copy and noised copy is."""
    torch.set_num_threads(1)
    ds = _phantoms(32)
    tr = ds.split("train")
    fresh = ds.subset(np.array([s != "train" for s in ds.splits]))
    gate = fit_gate(tr.images, patient_ids=tr.patient_ids, encoder=_encoder(tr.images))
    t = GateTally()
    keep, _ = gate.screen(fresh.images, t)
    assert len(fresh) == 168 and t.removed["total"] <= 0.035 * len(fresh)  # about q, both spaces together
    # what the record announces (training images removed as if new) is the quantile, in both spaces together
    expected = gate.context["loo_removed_fraction"]
    # calibrated down to the smallest distances (a mutual nearest pair ties: 2 images per space at the least)
    assert gate.space_quantile < 0.01 and expected["either"] <= 4 / 252
    assert abs(t.removed["total"] / len(fresh) - expected["either"]) < 0.025
    g = torch.Generator().manual_seed(0)
    for x in (tr.images, (tr.images + 0.05 * torch.randn(tr.images.shape, generator=g)).clamp(-1, 1)):
        keep, _ = gate.screen(x)
        assert not keep.any()


def test_sampling_in_rounds_delivers_count_and_fails_in_one_line():
    train = _images(list(POINTS.values()))
    gate = fit_gate(train, patient_ids=PATIENTS, quantile=0.0)  # pixel threshold 0.6
    calls = []

    def sample(n, labels):  # every other candidate a copy of B; the rest (0.9, 0.9), 0.949 from B: passes
        calls.append((n, None if labels is None else labels.tolist()))
        pts = [POINTS["B"] if (len(calls) + i) % 2 else (0.9, 0.9) for i in range(n)]
        return _images(pts)

    labels = torch.tensor([0, 1, 0, 1, 0])
    images, tally = gated_sample(sample, 5, gate, labels=labels)
    assert images.shape == (5, 1, 1, 2) and torch.all(images == 0.9)
    assert calls[0] == (5, [0, 1, 0, 1, 0])  # round 1: exactly --count, classes in turn
    # round 2: the 3 missing slots (0, 2, 4 got copies), ceil(1 / pass rate 2/5) = 3 candidates each
    assert calls[1] == (9, [0] * 9) and len(calls) == 2
    assert tally.rounds == 2 and tally.screened == 14 and tally.removed == {"pixel": 7, "total": 7}
    with pytest.raises(MedsynthError, match="after 10 sampling rounds only 0 of 4 images passed"):
        gated_sample(lambda n, lab: _images([POINTS["B"]] * n), 4, gate)


# ----------------------------------------------------------------------------- the command line
def _invoke(*args):
    from medsynth.cli import app

    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step DCGAN run on the lung-spot phantoms at 16², and a cheap gate encoder file for it."""
    from conftest import tiny_gated_run

    return tiny_gated_run(tmp_path_factory.mktemp("gate_cli"))


@pytest.fixture
def copying(monkeypatch, tiny_run):
    """generate's model, changed so that every other image it samples is a training image."""
    import medsynth.runs

    real_load = medsynth.runs.load_trained

    def load(run):
        cfg, model, ck = real_load(run)
        own = model.sample
        train = tiny_run["train"]

        def sample(n, labels=None, generator=None, ema=True, truncation=None):
            x = own(n, labels=labels, generator=generator, ema=ema, truncation=truncation)
            x[::2] = train[torch.arange(0, n, 2) % len(train)]
            return x

        model.sample = sample
        return cfg, model, ck

    monkeypatch.setattr(medsynth.runs, "load_trained", load)


def test_generate_gates_records_and_still_writes_count(tiny_run, copying):
    out = tiny_run["root"] / "gated"
    r = _invoke("generate", tiny_run["run"], "--count", "10", "--format", "dicom", "--out", out,
                "--gate-encoder", tiny_run["enc"])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "manifest.csv")
    assert len(df) == 10 and len(list(out.glob("*.dcm"))) == 10
    rec = json.loads((out / GATE_FILE).read_text())
    assert rec["ran"] and rec["spaces"] == ["pixel", "feature"] and rec["rounds"] >= 2
    assert rec["n_removed"]["total"] >= 5 and rec["n_kept"] == rec["n_screened"] - rec["n_removed"]["total"] >= 10
    assert rec["encoder"]["source"] == "supplied file enc.pt" and rec["reference"]["run"] == tiny_run["run"].name
    text = json.dumps(rec)
    assert str(tiny_run["root"]) not in text and "PHANTOM" not in text  # no path, no patient id
    line = f"removed {rec['n_removed']['total']}/{rec['n_screened']}"
    assert set(df["release_gate"]) == {df["release_gate"][0]} and line in df["release_gate"][0]
    ds = pydicom.dcmread(out / df["path"][0])
    assert "release gate" in ds.ImageComments and line in ds.ImageComments
    assert f"pixel thr={rec['thresholds']['pixel']:.4g}" in ds.ImageComments
    assert "SYNTHETIC" in ds.ImageComments
    # the copies are gone: every written image passes the gate
    from medsynth.data.dataset import load_image_set
    from medsynth.metrics.gate import fit_run_gate
    from medsynth.runs import load_trained

    cfg = load_trained(tiny_run["run"])[0]
    gate = fit_run_gate(tiny_run["run"], cfg, encoder=tiny_run["enc"])
    assert gate.thresholds == pytest.approx(rec["thresholds"])
    assert gate.screen(load_image_set(out / "manifest.csv", modality="xray", size=16).images)[0].all()


def test_augment_leaves_out_rows_too_close_to_the_training_images(tiny_run, copying):
    syn = tiny_run["run"] / "ungated"  # inside the run: augment finds the run, and so its training data
    r = _invoke("generate", tiny_run["run"], "--count", "8", "--format", "png", "--out", syn, "--no-gate")
    assert r.exit_code == 0 and "release gate: off (--no-gate)" in r.output
    assert json.loads((syn / GATE_FILE).read_text())["ran"] is False
    r = _invoke("augment", "--synthetic", syn / "manifest.csv", "--out", tiny_run["root"] / "aug",
                "--gate-encoder", tiny_run["enc"])
    assert r.exit_code == 0, r.output
    aug = pd.read_csv(tiny_run["root"] / "aug" / "manifest.csv")
    rec = json.loads((tiny_run["root"] / "aug" / GATE_FILE).read_text())
    n_syn = int((aug["source"] == "synthetic").sum())
    assert rec["n_screened"] == 8 and rec["n_removed"]["total"] >= 4 and n_syn == 8 - rec["n_removed"]["total"]
    assert aug.loc[aug["source"] == "synthetic", "release_gate"].str.contains("removed").all()
    assert rec["synthetic_set"]["ran"] is False  # generate's record of the set (--no-gate) travels along
    r = _invoke("augment", "--synthetic", syn / "manifest.csv", "--out", tiny_run["root"] / "aug2", "--no-gate")
    assert r.exit_code == 0 and int((pd.read_csv(tiny_run["root"] / "aug2" / "manifest.csv")["source"]
                                     == "synthetic").sum()) == 8


def test_a_missing_training_set_is_one_line_never_a_silent_skip(tiny_run, tmp_path):
    import shutil

    run = tmp_path / tiny_run["run"].name
    shutil.copytree(tiny_run["run"], run, ignore=shutil.ignore_patterns("ungated"))
    (run / "local" / "data_source.json").unlink()
    r = _invoke("generate", run, "--count", "3", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    notice = [ln for ln in r.output.splitlines() if ln.startswith("release gate: not run")]
    assert len(notice) == 1 and "--data" in notice[0] and "--no-gate" in notice[0]
    assert json.loads((tmp_path / "a" / GATE_FILE).read_text())["ran"] is False
    assert (pd.read_csv(tmp_path / "a" / "manifest.csv")["release_gate"]
            == "release gate: not run (the run's training data was not available or not usable)").all()
    r = _invoke("generate", run, "--count", "3", "--out", tmp_path / "b", "--gate")
    assert r.exit_code == 2 and r.output.startswith("error:") and "data_source.json" in r.output
    assert not (tmp_path / "b").exists()
    r = _invoke("generate", run, "--count", "3", "--out", tmp_path / "c", "--gate-quantile", "1.5")
    assert r.exit_code == 2 and "--gate-quantile" in r.output
