"""Issue 18 point 3: generate in chunks (interrupted + --continue = uninterrupted), nearest neighbours
and PRDC in bounded-memory chunks (= one dense search), augment's release gate in chunks (= one pass)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors
from typer.testing import CliRunner

from medsynth.metrics.membership import dcr_nndr, distance_attack_scores, nearest_neighbours
from medsynth.metrics.prdc import _kth_nn_radius, prdc
from medsynth.runs import OUTPUTS_FILE

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    from medsynth.cli import app

    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_error_line(r, *words) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- chunked nearest neighbours
def _dense_dcr_nndr(q, r, exclude_self=False):
    """The implementation before chunking: one sklearn search over everything."""
    q, r = q.reshape(len(q), -1).astype(np.float64), r.reshape(len(r), -1).astype(np.float64)
    k = 3 if exclude_self else 2
    dist, idx = NearestNeighbors(n_neighbors=k).fit(r).kneighbors(q)
    if exclude_self:
        own = idx == np.arange(len(q))[:, None]
        keep = np.where(own.any(1, keepdims=True), ~own, np.arange(k)[None, :] < 2)
        idx = idx[keep].reshape(len(q), 2)
    dist = np.linalg.norm(q[:, None, :] - r[idx[:, :2]], axis=2)
    d1, d2 = dist[:, 0], dist[:, 1]
    ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 0.0)
    return d1, np.clip(ratio, 0, 1)


@pytest.mark.parametrize("qc,rc", [(7, 11), (1, 3), (1000, None)])
def test_chunked_nearest_neighbours_equal_one_dense_search(qc, rc):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(53, 1, 4, 5)).astype(np.float32)  # 53 and 41: no chunk size divides them
    r = rng.normal(size=(41, 1, 4, 5)).astype(np.float32)
    r[5] = q[3]  # an exact copy: distance 0, NNDR 0
    dist, idx = nearest_neighbours(q, r, 3, query_chunk=qc, reference_chunk=rc)
    full = pairwise_distances(q.reshape(53, -1).astype(np.float64), r.reshape(41, -1).astype(np.float64))
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :3])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :3], rtol=1e-12, atol=1e-12)
    assert dist[3, 0] == 0.0
    for got, want in zip(dcr_nndr(q, r, query_chunk=qc, reference_chunk=rc), _dense_dcr_nndr(q, r)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(dcr_nndr(r, r, exclude_self=True, query_chunk=qc, reference_chunk=rc),
                         _dense_dcr_nndr(r, r, exclude_self=True)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(distance_attack_scores(r, q, query_chunk=qc, reference_chunk=rc),
                               -full.min(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_chunked_prdc_equals_one_distance_matrix(chunk):
    rng = np.random.default_rng(1)
    real, syn = rng.normal(size=(47, 6)), rng.normal(0.3, 1.1, size=(38, 6))
    k = 5
    r_rad, s_rad = _kth_nn_radius(real, k), _kth_nn_radius(syn, k)
    d = pairwise_distances(real, syn)  # the dense form chunking replaced
    ball = d < r_rad[:, None]
    want = {"precision": ball.any(0).mean(), "recall": (d < s_rad[None, :]).any(1).mean(),
            "density": ball.sum(0).mean() / k, "coverage": (d.min(1) < r_rad).mean()}
    got = prdc(real, syn, k=k, chunk=chunk)
    for key, v in want.items():
        assert got[key] == pytest.approx(float(v), abs=1e-12), key
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1  # a case where chunks matter


# ----------------------------------------------------------------------------- generate / augment
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-step DCGAN run at 16² on the phantom radiographs, and a cheap gate encoder for it."""
    from conftest import tiny_gated_run

    return tiny_gated_run(tmp_path_factory.mktemp("streaming_commands"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("modality", ["xray", "ct"])
def test_chunked_intensity_histogram_equals_one_pass(modality, monkeypatch):
    """The histogram is summed over pieces of HISTOGRAM_CHUNK images; a piece size that does not
    divide the set gives the one-pass counts (and mask fraction) of all pixels at once."""
    from medsynth.metrics import intensity

    x = torch.rand(53, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    monkeypatch.setattr(intensity, "HISTOGRAM_CHUNK", 10**6)
    whole = intensity.intensity_histogram(x, modality=modality)
    monkeypatch.setattr(intensity, "HISTOGRAM_CHUNK", 7)
    pieces = intensity.intensity_histogram(x, modality=modality)
    np.testing.assert_array_equal(pieces[0], whole[0])
    np.testing.assert_array_equal(pieces[1], whole[1])
    assert pieces[2] == whole[2] and whole[0].sum() == round(whole[2] * x.numel())
    m = intensity.body_mask(x, modality=modality)
    vals = intensity.to_native(x, modality=modality)[m.numpy()]
    lo, hi = intensity.value_range(modality, "lung")
    np.testing.assert_array_equal(whole[0], np.histogram(vals, bins=128, range=(lo, hi))[0])


def test_interrupted_generate_continues_to_the_uninterrupted_set(tiny, monkeypatch):
    import medsynth.data.writers as writers

    monkeypatch.setattr(writers, "CHUNK_IMAGES", 4)  # 10 images: chunks of 4, 4, 2
    args = [tiny["run"], "--count", "10", "--format", "dicom", "--gate-encoder", tiny["enc"]]
    whole, parts = tiny["root"] / "whole", tiny["root"] / "parts"
    r = invoke("generate", *args, "--out", whole)
    assert r.exit_code == 0, r.output
    assert "in 3 chunks" in r.output

    real_write_csv = writers.write_csv

    def stop_after_first_chunk(path, df):
        if Path(path).name == "chunk_00001.csv":
            raise KeyboardInterrupt
        return real_write_csv(path, df)

    monkeypatch.setattr(writers, "write_csv", stop_after_first_chunk)
    r = invoke("generate", *args, "--out", parts)
    assert r.exit_code == 130 and "--continue" in r.output
    rec = json.loads((parts / OUTPUTS_FILE).read_text())
    assert rec["state"] == "unfinished" and rec["progress"]["chunks_done"] == 1
    assert not (parts / "manifest.csv").exists()  # the manifest appears only complete
    assert {"synthetic_00000.dcm", "synthetic_00007.dcm"} <= set(rec["files"])  # chunk 1's files: listed
    monkeypatch.setattr(writers, "write_csv", real_write_csv)

    one_error_line(invoke("generate", *args, "--out", parts), "unfinished", "--continue", "--overwrite")
    one_error_line(invoke("generate", *[a if a != "10" else "11" for a in args], "--out", parts, "--continue"),
                   "other arguments", "count 10 -> 11")
    r = invoke("generate", *args, "--out", parts, "--continue")
    assert r.exit_code == 0, r.output
    assert "continuing: 1 of 3 chunks" in r.output

    import pydicom

    a, b = _files(whole), _files(parts)
    assert sorted(a) == sorted(b) and len([f for f in a if f.endswith(".dcm")]) == 10
    assert a["manifest.csv"] == b["manifest.csv"] and a[OUTPUTS_FILE] == b[OUTPUTS_FILE]
    assert a["release_gate.json"] == b["release_gate.json"]
    for name in (f for f in a if f.endswith(".dcm")):  # same pixels, same marking (UIDs are fresh per set)
        da, db = pydicom.dcmread(whole / name), pydicom.dcmread(parts / name)
        assert da.PixelData == db.PixelData and da.ImageComments == db.ImageComments
        assert da.PatientID == db.PatientID and da.InstanceNumber == db.InstanceNumber
    series = {pydicom.dcmread(parts / n).SeriesInstanceUID for n in b if n.endswith(".dcm")}
    assert len(series) == 1  # the resumed chunks joined the interrupted set's series
    gate = json.loads(b["release_gate.json"])
    df = pd.read_csv(parts / "manifest.csv")
    assert gate["n_screened"] == gate["n_kept"] + gate["n_removed"]["total"] >= 10  # totals over all chunks
    assert gate["chunks"]["n"] == 3 and df["release_gate"].str.contains("chunk 3 of 3").sum() == 2
    assert list(df["path"]) == [f"synthetic_{i:05d}.dcm" for i in range(10)]
    r = invoke("generate", *args, "--out", parts, "--continue")
    assert r.exit_code == 0 and "nothing to do" in r.output


def test_a_set_of_one_chunk_is_the_set_earlier_versions_wrote(tiny):
    """Chunk 0 draws from --seed itself: up to one chunk, the images of one sample_in_batches call."""
    from medsynth.data.readers import read_image
    from medsynth.data.writers import sample_in_batches, unit_to_uint
    from medsynth.runs import load_trained

    out = tiny["root"] / "one"
    assert invoke("generate", tiny["run"], "--count", "5", "--seed", "3", "--out", out, "--no-gate").exit_code == 0
    _, model, _ = load_trained(tiny["run"])
    labels = torch.arange(5) % model.num_classes if model.num_classes > 0 else None  # classes in turn
    want = sample_in_batches(model, 5, labels=labels, generator=torch.Generator().manual_seed(3), progress=False)
    for i in range(5):
        got = read_image(out / f"synthetic_{i:05d}.png").array
        np.testing.assert_array_equal(np.asarray(got).reshape(16, 16), unit_to_uint(want[i, 0].numpy(), 16))


def test_killed_generate_resumes(tiny, tmp_path, monkeypatch):
    """SIGKILL after the second chunk: the record lists what was written; --continue finishes it."""
    import medsynth.data.writers as writers

    code = ("import sys; import medsynth.data.writers as w; w.CHUNK_IMAGES = 2; from medsynth.cli import app; "
            "app(sys.argv[1:])")
    args = ["generate", str(tiny["run"]), "--count", "200", "--no-gate", "--out"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", code, *args, str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not (out / ".generate-parts" / "chunk_00001.csv").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "generate ended before its second chunk"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    rec = json.loads((out / OUTPUTS_FILE).read_text())
    assert rec["state"] == "unfinished" and 1 <= rec["progress"]["chunks_done"] < 100
    monkeypatch.setattr(writers, "CHUNK_IMAGES", 2)
    r = invoke(*args, out, "--continue")
    assert r.exit_code == 0, r.output
    assert invoke(*args, tmp_path / "whole").exit_code == 0
    assert _files(out) == _files(tmp_path / "whole")


def test_augment_screens_in_chunks_and_references_the_files(tiny, monkeypatch):
    import medsynth.cli as cli

    syn = tiny["run"] / "syn_aug"  # inside the run: augment finds the run's training data for its gate
    assert invoke("generate", tiny["run"], "--count", "8", "--out", syn, "--no-gate").exit_code == 0
    outs = {}
    for chunk in (3, 1000):  # 8 rows: chunks of 3, 3, 2 against one pass
        monkeypatch.setattr(cli, "AUGMENT_GATE_CHUNK", chunk)
        outs[chunk] = tiny["root"] / f"aug{chunk}"
        r = invoke("augment", "--synthetic", syn / "manifest.csv", "--out", outs[chunk], "--gate-encoder", tiny["enc"])
        assert r.exit_code == 0, r.output
    a, b = _files(outs[3]), _files(outs[1000])
    assert a["manifest.csv"] == b["manifest.csv"] and a["release_gate.json"] == b["release_gate.json"]
    assert sorted(a) == ["manifest.csv", OUTPUTS_FILE, "release_gate.json"]  # referenced, never copied
    aug = pd.read_csv(outs[3] / "manifest.csv")
    rec = json.loads(a["release_gate.json"])
    assert rec["n_screened"] == 8
    paths = aug.loc[aug["source"] == "synthetic", "path"]  # relative to the augmented manifest's folder
    assert len(paths) == 8 - rec["n_removed"]["total"]
    assert all((outs[3] / p).resolve().parent == syn.resolve() and (outs[3] / p).is_file() for p in paths)
