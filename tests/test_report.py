"""The run report: built from a fake run directory and small random images."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.errors import MedsynthError
from medsynth.metrics.fidelity import train_feature_encoder
from medsynth.report import build_report

try:
    from medsynth.data.dataset import ImageSet
except ImportError:  # pragma: no cover - the data module is written in parallel

    @dataclass
    class ImageSet:  # the agreed interface, enough for build_report
        images: torch.Tensor
        labels: torch.Tensor
        patient_ids: list
        paths: list
        splits: list
        modality: str


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(n, shape=(24, 24), seed=0):
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.7, 0.7, shape[-1])
    return (ramp + 0.3 * torch.randn(n, 1, *shape, generator=g)).clamp(-1, 1)


def _image_set(x, splits=None, modality="xray"):
    n = len(x)
    return ImageSet(images=x, labels=torch.arange(n) % 2, patient_ids=[f"P{i}" for i in range(n)],
                    paths=[f"img{i}.png" for i in range(n)], splits=splits or ["train"] * n, modality=modality)


def _fake_run(root: Path, name="00007-xray-dcgan", *, benchmark=False) -> Path:
    run = root / "runs" / name
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text(
        "data:\n  source: default\n  modality: xray\n  size: 24\nmodel:\n  name: dcgan\n  width: 8\n"
        "train:\n  steps: 30\n  batch_size: 16\nseed: 0\n"
    )
    with open(run / "stats.jsonl", "w") as fh:
        for s in (10, 20, 30):
            fh.write(json.dumps({"step": s, "kimg": s * 0.016, "seconds": 1.5 * s, "img_per_s": 100.0,
                                 "loss/G": 2.0 / s, "loss/D": 0.7, "D/real_score": 0.6}) + "\n")
    for s, v in ((10, 0), (30, 200)):
        Image.fromarray(np.full((26, 26), v, np.uint8)).save(run / "samples" / f"step_{s:06d}.png")
    if benchmark:
        _write_benchmark(run / "benchmark")
    return run


def _write_benchmark(out: Path) -> None:
    summary = [
        {"arm": arm, "fraction": f, "n_seeds": 2, "auroc": a, "auroc_lo": a - 0.05, "auroc_hi": a + 0.04,
         "sensitivity": 0.7, "sensitivity_lo": 0.6, "sensitivity_hi": 0.8, "specificity": 0.75,
         "specificity_lo": 0.65, "specificity_hi": 0.85, "threshold": 0.5, "auroc_seed_mean": a,
         "auroc_seed_sd": 0.01, "n_boot": 100, "n_degenerate": 0}
        for arm, f, a in (("real", 0.1, 0.71), ("real", 1.0, 0.83), ("real+synthetic", 0.1, 0.77),
                          ("real+synthetic", 1.0, 0.84))
    ]
    diffs = [{"fraction": f, "metric": "auroc", "comparison": "real+synthetic - real", "diff": d, "lo": d - 0.03,
              "hi": d + 0.03, "p": 0.04, "a": 0.0, "b": 0.0, "n_boot": 100, "n_degenerate": 0}
             for f, d in ((0.1, 0.0617), (1.0, 0.01))]
    try:
        from pipelines.benchmark import BenchmarkResult, write_benchmark
    except ImportError:  # pragma: no cover - fall back to the documented JSON layout
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps({"summary": summary, "diffs": diffs, "n_test": 40}))
        return
    rows = [{"arm": r["arm"], "fraction": r["fraction"], "seed": s, "auroc": r["auroc"]} for r in summary for s in (0, 1)]
    res = BenchmarkResult(config={"fractions": [0.1, 1.0], "seeds": [0, 1]}, rows=rows, summary=summary,
                          diffs=diffs, n_test=40, n_test_patients=20, n_val=10, timings={})
    write_benchmark(res, out)


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return train_feature_encoder(_images(60), seed=0, steps=10, batch_size=16, in_size=32)


def _walk_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def test_report_files_figures_and_numbers(tmp_path, encoder):
    run = _fake_run(tmp_path, benchmark=True)
    real = _images(60)
    synth = torch.cat([real[:10], _images(30, seed=5)])  # 10 copies of training images
    out = build_report(run, real_train=_image_set(real), synthetic=synth,
                       synthetic_labels=torch.arange(40) % 2, out_root=tmp_path / "reports",
                       encoder=encoder, seed=0)
    assert out == tmp_path / "reports" / run.name
    for f in ("report.md", "report.html", "report.json", "fig_samples.png", "fig_training_curves.png",
              "fig_nn_distances.png", "fig_closest_pairs.png", "fig_benchmark.png", "fig_last_training_grid.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rep = json.loads((out / "report.json").read_text())

    fid = rep["fidelity"]
    for k in ("fd_synthetic_vs_real", "fd_floor_real_vs_real", "fd_synthetic_vs_real_matched", "fd_floor_matched"):
        assert math.isfinite(fid[k]) and fid[k] >= 0, k
    assert set(fid["per_class"]) == {"0", "1"}
    assert fid["encoder"]["source"] == "supplied by the caller" and len(fid["encoder"]["fingerprint"]) == 16

    priv = rep["privacy"]
    for space in ("pixel", "features"):
        for k in ("dcr_median", "dcr_min", "real_nn_p1", "frac_below_real_p1", "frac_below_real_p5"):
            assert math.isfinite(priv[space][k]), (space, k)
    # the 10 copies are the 10 closest pairs, at distance 0, and they trip the flag (10/40 > 5%)
    assert priv["pixel"]["frac_below_real_p1"] == pytest.approx(0.25)
    assert priv["memorisation_flag"] is True
    assert [p["distance"] for p in priv["closest_pairs"]] == [0.0] * 8
    assert all(p["synthetic_index"] == p["real_index"] < 10 for p in priv["closest_pairs"])

    s = rep["summary"]
    assert (s["model"], s["modality"], s["steps_done"], s["wall_seconds"]) == ("dcgan", "xray", 30, 45.0)
    assert s["n_real_train"] == 60 and s["n_synthetic"] == 40
    assert rep["last_training_grid"] == "step_000030.png"
    assert len(rep["benchmark"]["summary"]) == 4

    html = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(rep["figures"]) >= 6
    assert "<img" in html and 'src="fig_' not in html  # self-contained
    assert f"{fid['fd_synthetic_vs_real']:.3f}" in html  # the FD figure is shown
    assert "possible memorisation" in html
    assert "0.062 [0.032, 0.092], p=0.040" in html  # paired benchmark difference
    assert "0.770 [0.720, 0.810]" in html  # AUROC with CI
    assert "step_000030.png" in html
    md = (out / "report.md").read_text()
    assert "](fig_samples.png)" in md and "| model | dcgan |" in md
    assert "name: dcgan" in md  # resolved config shown
    assert all(math.isfinite(v) for v in _walk_numbers(rep))


def test_report_is_reproducible_and_independent_noise_not_flagged(tmp_path, encoder):
    run = _fake_run(tmp_path)
    real, synth = _images(60), _images(40, seed=9)
    kw = dict(real_train=_image_set(real), synthetic=synth, encoder=encoder, seed=3)
    a = json.loads((build_report(run, out_root=tmp_path / "a", **kw) / "report.json").read_text())
    b = json.loads((build_report(run, out_root=tmp_path / "b", **kw) / "report.json").read_text())
    assert a["fidelity"] == b["fidelity"] and a["privacy"] == b["privacy"]
    assert a["privacy"]["memorisation_flag"] is False
    assert a["privacy"]["pixel"]["dcr_min"] > 0
    assert a["benchmark"] is None
    assert "No benchmark results" in (tmp_path / "a" / run.name / "report.md").read_text()


def test_report_trains_and_saves_encoder_3d_and_split_filter(tmp_path):
    run = _fake_run(tmp_path, name="00008-ct-dcgan3d")
    vols = torch.rand(24, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    splits = ["train"] * 16 + ["test"] * 8
    out = build_report(run, real_train=_image_set(vols, splits, modality="ct"), synthetic=vols[16:20],
                       out_root=tmp_path / "r", encoder=None, encoder_steps=2, seed=0)
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["n_real_train"] == 16  # test images left out
    assert rep["summary"]["image_shape"] == [1, 8, 16, 16]
    assert (out / "encoder.pt").is_file() and rep["fidelity"]["encoder"]["file"] == "encoder.pt"
    # the saved encoder reproduces the same numbers when passed back in
    again = build_report(run, real_train=_image_set(vols, splits, modality="ct"), synthetic=vols[16:20],
                         out_root=tmp_path / "r2", encoder=out / "encoder.pt", seed=0)
    rep2 = json.loads((again / "report.json").read_text())
    assert rep2["fidelity"]["fd_synthetic_vs_real"] == pytest.approx(rep["fidelity"]["fd_synthetic_vs_real"])
    assert rep2["fidelity"]["encoder"]["fingerprint"] == rep["fidelity"]["encoder"]["fingerprint"]
    assert "central axial slices" in (out / "report.md").read_text()


def test_report_bad_inputs(tmp_path, encoder):
    real = _image_set(_images(20))
    with pytest.raises(MedsynthError, match="run directory not found"):
        build_report(tmp_path / "nope", real_train=real, synthetic=_images(4), encoder=encoder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsynthError, match="config.yaml"):
        build_report(tmp_path / "empty", real_train=real, synthetic=_images(4), encoder=encoder)
    run = _fake_run(tmp_path)
    with pytest.raises(MedsynthError, match="differs"):
        build_report(run, real_train=real, synthetic=_images(4, shape=(16, 16)), encoder=encoder,
                     out_root=tmp_path / "r")
    with open(run / "stats.jsonl", "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(MedsynthError, match="line 4"):
        build_report(run, real_train=real, synthetic=_images(4), encoder=encoder, out_root=tmp_path / "r")
