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


# one torch thread: these tests train small encoders; several threads only contend on CI's 2 cores
pytestmark = pytest.mark.usefixtures("one_thread")


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


# A hand-made tidy benchmark table (the layout of pipelines.benchmark.results_table) with known
# numbers. Per fraction the AUROC difference row sits between the sens@90spec and spec@90sens
# rows, so a reader that keeps one difference per fraction (or the first / last) shows a wrong one.
BENCH_DIFFS = {  # (arm, fraction, metric): (diff, lo, hi, p)
    ("real+synthetic", 0.1, "sens_at_90spec"): (-0.12, -0.25, 0.01, 0.09),
    ("real+synthetic", 0.1, "auroc"): (0.0617, 0.0317, 0.0917, 0.04),
    ("real+synthetic", 0.1, "spec_at_90sens"): (0.2, 0.05, 0.35, 0.011),
    ("real+synthetic", 1.0, "sens_at_90spec"): (0.3, 0.1, 0.5, 0.004),
    ("real+synthetic", 1.0, "auroc"): (0.01, -0.02, 0.04, 0.52),
    ("real+synthetic", 1.0, "spec_at_90sens"): (-0.05, -0.15, 0.05, 0.33),
}
BENCH_AUROC = {("real", 0.1): 0.71, ("real", 1.0): 0.83, ("real+synthetic", 0.1): 0.77, ("real+synthetic", 1.0): 0.84}


def _bench_csv(diffs=BENCH_DIFFS, aurocs=BENCH_AUROC, *, old=False) -> str:
    """The tidy CSV text: run rows, summary rows, diff rows (``old``: no metric column, arm = comparison)."""
    import pandas as pd

    rows = []
    for (arm, f), a in aurocs.items():
        for s in (0, 1):
            rows.append({"kind": "run", "arm": arm, "fraction": f, "seed": s, "auroc": a + 0.01 * (s - 0.5)})
    for (arm, f), a in aurocs.items():
        rows.append({"kind": "summary", "arm": arm, "fraction": f, "auroc": a, "auroc_lo": a - 0.05,
                     "auroc_hi": a + 0.04, "sens_at_90spec": 0.5, "sens_at_90spec_lo": 0.4, "sens_at_90spec_hi": 0.6,
                     "spec_at_90sens": 0.45, "spec_at_90sens_lo": 0.3, "spec_at_90sens_hi": 0.6,
                     "sensitivity": 0.7, "sensitivity_lo": 0.6, "sensitivity_hi": 0.8, "specificity": 0.75,
                     "specificity_lo": 0.65, "specificity_hi": 0.85, "auroc_seed_mean": a, "auroc_seed_sd": 0.01,
                     "n_seeds": 2, "n_test": 40, "n_train_real": 30 if f == 1.0 else 3,
                     "n_train_synthetic": 0 if arm == "real" else (30 if f == 1.0 else 3)})
    for (arm, f, m), (d, lo, hi, p) in diffs.items():
        row = {"kind": "diff", "arm": arm, "fraction": f, "metric": m, "diff": d, "diff_lo": lo, "diff_hi": hi,
               "p": p, "comparison": f"{arm} - real", "diff_seed_mean": d + 0.001, "diff_seed_sd": 0.02,
               "n_test": 40}
        if old:  # the first benchmark layout: AUROC only, no metric column, arm = the comparison
            del row["metric"]
            row["arm"] = f"{arm} - real"
        rows.append(row)
    return pd.DataFrame(rows).to_csv(index=False)


def _write_benchmark(out: Path, **kw) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.csv").write_text(_bench_csv(**kw))


def _md_section(md: str, title: str) -> str:
    """The text of ``## title`` up to the next level-2 heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, flags=re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(1)


def _md_tables(text: str) -> list[list[dict]]:
    """Markdown tables of ``text`` as lists of {header: cell}."""
    tables, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif cur:
            header, body = cur[0], cur[2:]
            tables.append([dict(zip(header, r)) for r in body])
            cur = []
    return tables


def _summary_rows(md: str) -> dict:
    """{(arm, fraction %): row} of the summary's benchmark table."""
    table = next(t for t in _md_tables(_md_section(md, "Summary")) if t and "Δ AUROC vs real-only [95% CI]" in t[0])
    return {(r["arm"], r["real training patients"]): r for r in table}


def _signed(d, lo, hi):
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


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
    assert "+0.062 [+0.032, +0.092]" in html  # the paired AUROC difference at 10 %
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


# ---- the benchmark reader and the summary's arm deltas ------------------------------------------


def test_benchmark_headline_picks_the_auroc_row_per_arm(tmp_path):
    from medsynth.report.build import _read_benchmark, benchmark_headline

    # three arms; real+classic's rows come first and differ, so grouping by fraction alone fails
    diffs = {("real+classic", 0.5, "spec_at_90sens"): (0.5, 0.4, 0.6, 0.001),
             ("real+classic", 0.5, "auroc"): (-0.04, -0.07, -0.01, 0.012),
             ("real+classic", 0.5, "sens_at_90spec"): (0.0, -0.1, 0.1, 1.0),
             ("real+synthetic", 0.5, "sens_at_90spec"): (0.25, 0.2, 0.3, 0.002),
             ("real+synthetic", 0.5, "auroc"): (0.03, -0.01, 0.07, 0.15),
             ("real+synthetic", 0.5, "spec_at_90sens"): (-0.3, -0.4, -0.2, 0.003)}
    aurocs = {("real", 0.5): 0.53, ("real+classic", 0.5): 0.49, ("real+synthetic", 0.5): 0.56}
    _write_benchmark(tmp_path, diffs=diffs, aurocs=aurocs)
    bench = _read_benchmark(tmp_path)
    assert bench["n_test"] == 40 and bench["notes"] == [] and len(bench["diffs"]) == 6
    h = benchmark_headline(bench)
    assert [a["arm"] for a in h["arms"]] == ["real", "real+classic", "real+synthetic"]
    got = {(a["arm"], m): (d["diff"], d["lo"], d["hi"], d["p"], d["verdict"])
           for a in h["arms"] for r in a["fractions"] for m, d in r["diffs"].items()}
    assert got[("real+classic", "auroc")] == (-0.04, -0.07, -0.01, 0.012, "worse")
    assert got[("real+synthetic", "auroc")] == (0.03, -0.01, 0.07, 0.15, "no significant difference")
    assert got[("real+synthetic", "sens_at_90spec")][4] == "better"
    assert got[("real+synthetic", "spec_at_90sens")][4] == "worse"
    assert h["arms"][0]["fractions"][0]["diffs"] == {}  # the reference arm
    assert h["n_auroc_comparisons"] == 2
    assert h["arms"][1]["verdict_text"] == "worse at 50%"
    assert (h["n_better"], h["n_worse"]) == (0, 1)
    assert h["caveats"][0] == "only 2 seed(s) per arm (5 recommended)"
    assert "includes chance (0.5) at 50%" in h["caveats"][1]  # real-only AUROC CI 0.48..0.57


def test_benchmark_reader_old_layout_and_duplicates(tmp_path):
    from medsynth.report.build import _read_benchmark, benchmark_headline

    old = {k: v for k, v in BENCH_DIFFS.items() if k[2] == "auroc"}
    _write_benchmark(tmp_path / "old", diffs=old, old=True)
    bench = _read_benchmark(tmp_path / "old")
    assert {(d["arm"], d["metric"]) for d in bench["diffs"]} == {("real+synthetic", "auroc")}
    assert any("without a 'metric'" in n for n in bench["notes"])  # recorded, not silent
    h = benchmark_headline(bench)
    assert h["arms"][1]["fractions"][1]["diffs"]["auroc"]["diff"] == 0.01
    # two rows for the same (arm, fraction, metric) are an error, not a coin toss
    dup = (tmp_path / "old" / "results.csv").read_text().splitlines()
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "results.csv").write_text("\n".join(dup + dup[-1:]) + "\n")
    with pytest.raises(MedsynthError, match="two paired-difference rows"):
        _read_benchmark(tmp_path / "dup")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(MedsynthError, match="missing column"):
        _read_benchmark(tmp_path / "bad")
    assert _read_benchmark(tmp_path / "nothing-here") is None


def test_mia_signal_rule():
    from medsynth.report.build import mia_signal

    assert mia_signal({"auroc": 0.7, "lo": 0.6, "hi": 0.8}, {"auroc": 0.52})
    assert not mia_signal({"auroc": 0.7, "lo": 0.6, "hi": 0.8}, {"auroc": 0.63})  # control as high: shift, not leak
    assert not mia_signal({"auroc": 0.55, "lo": 0.45, "hi": 0.65}, {"auroc": 0.40})  # CI includes chance
    assert not mia_signal({"auroc": 0.7, "lo": None, "hi": None}, {"auroc": 0.5})


# ---- end to end: a real short run, `medsynth evaluate`, a hand-made benchmark, `medsynth report` --


def _headline_numbers(obj, path=()):
    """(path, value) of every numeric leaf of the JSON headline."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _headline_numbers(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _headline_numbers(v, path + (i,))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


@pytest.mark.slow
def test_report_end_to_end_on_a_short_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medsynth.cli import app
    from medsynth.report.build import _fmt

    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(48, 32, 32, generator=g) * 2000).numpy().astype(np.float32)  # detector-like units
    np.savez(tmp_path / "tiny.npz", images=x, labels=np.arange(48) % 2, patient_ids=[f"p{i}" for i in range(48)],
             splits=["train"] * 32 + ["val"] * 8 + ["test"] * 8)
    runner = CliRunner()

    def invoke(*args):
        r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r

    invoke("train", "--modality", "xray", "--data", "tiny.npz", "--size", "32", "--steps", "2", "--set",
           "model.width=8", "--set", "train.batch_size=16", "--out", "runs", "--no-progress")
    run = tmp_path / "runs" / "00000-xray-dcgan"
    invoke("evaluate", run, "--count", "24", "--encoder-steps", "5", "--repeats", "1", "--n-boot", "50")
    _write_benchmark(run / "benchmark")
    invoke("report", run, "--count", "16", "--encoder-steps", "5", "--out", "reports")
    out = tmp_path / "reports" / run.name
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    rep = json.loads((out / "report.json").read_text())

    # the summary comes first and states the right AUROC row per arm and fraction
    assert [ln[3:] for ln in md.splitlines() if ln.startswith("## ")][:5] == [
        "Summary", "Fidelity", "Privacy", "Downstream benchmark", "Run and configuration provenance"]
    rows = _summary_rows(md)
    r10, r100 = rows[("real+synthetic", "10%")], rows[("real+synthetic", "100%")]
    assert r10["Δ AUROC vs real-only [95% CI]"] == _signed(0.0617, 0.0317, 0.0917) and r10["p"] == "0.040"
    assert r10["AUROC verdict"] == "better"
    assert r10["Δ sens@90%spec [95% CI], p"] == _signed(-0.12, -0.25, 0.01) + ", p = 0.090"
    assert r10["Δ spec@90%sens [95% CI], p"] == _signed(0.2, 0.05, 0.35) + ", p = 0.011"
    assert r100["Δ AUROC vs real-only [95% CI]"] == _signed(0.01, -0.02, 0.04) and r100["p"] == "0.520"
    assert r100["AUROC verdict"] == "no significant difference"
    assert rows[("real", "10%")]["Δ AUROC vs real-only [95% CI]"] == "reference"
    assert rows[("real", "100%")]["AUROC [95% CI]"] == "0.830 [0.780, 0.870]"
    summary = _md_section(md, "Summary")
    assert "1 of 2 arm × real-fraction comparisons are better than real-only, 0 worse and 1 not" in summary
    assert "**Caveats:** only 2 seed(s) per arm (5 recommended)." in summary
    assert ("**real+synthetic**: AUROC +0.062 [+0.032, +0.092], p = 0.040 at 10%; +0.010 [-0.020, +0.040], "
            "p = 0.520 at 100% of the real training patients — better at 10%; no significant difference at 100%."
            ) in summary
    # memorisation and membership inference come from evaluate/evaluation.json, attack beside its control
    ev = json.loads((run / "evaluate" / "evaluation.json").read_text())
    for key in ("distance", "discriminator"):
        a, c = (ev["privacy"]["membership_inference"][key][k] for k in ("attack", "control"))
        assert f"AUROC {_fmt(a['auroc'])} [{_fmt(a['lo'])}, {_fmt(a['hi'])}] against its control " \
               f"{_fmt(c['auroc'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}]" in summary
        assert rep["headline"]["membership_inference"][key]["signal"] == (a["lo"] > max(0.5, c["auroc"]))
    assert "**Is there memorisation?**" in summary and "NNDR" in summary
    assert "Fréchet distance (evaluation encoder)" in summary and "real vs real (floor)" in summary

    # JSON carries the same figures as the Markdown: every headline number is printed in the summary ...
    nums = list(_headline_numbers(rep["headline"]))
    assert len(nums) > 40
    for path, v in nums:
        if path[-1] in ("fraction", "diff_seed_mean", "diff_seed_sd") or "frac_below" in str(path[-1]):
            continue  # printed as percentages (checked below) or in the benchmark section
        shown = f"{v:+.3f}" if "diffs" in path and path[-1] in ("diff", "lo", "hi") else _fmt(v)
        assert shown in summary, (path, v, shown)
    mem = rep["headline"]["memorisation"]
    assert f"{mem['report_dcr']['frac_below_real_p1']:.1%}" in summary
    assert f"NNDR {mem['evaluation']['nndr_frac_below_real_p1']:.1%}" in summary
    # ... the benchmark differences in JSON are the ones the benchmark section prints ...
    diff_rows = next(t for t in _md_tables(_md_section(md, "Downstream benchmark")) if t and "metric" in t[0])
    assert len(diff_rows) == len(rep["benchmark"]["diffs"]) == 6
    for d in rep["benchmark"]["diffs"]:
        want = BENCH_DIFFS[(d["arm"], d["fraction"], d["metric"])]
        assert (d["diff"], d["lo"], d["hi"], d["p"]) == want
        label = {"auroc": "AUROC", "sens_at_90spec": "sens@90%spec", "spec_at_90sens": "spec@90%sens"}[d["metric"]]
        row = next(r for r in diff_rows if r["metric"] == label and r["real training patients"] == f"{100 * d['fraction']:g}%")
        assert row["arm − real-only [95% CI]"] == _signed(*want[:3]) and row["p"] == _fmt(want[3])
    # ... and the same PNG figures
    assert set(re.findall(r"\]\(([^)]+\.png)\)", md)) == set(rep["figures"].values())
    assert {"eval_fig_closest_pairs.png", "eval_fig_dcr_nndr.png", "eval_fig_intensity.png",
            "fig_benchmark.png"} <= set(rep["figures"].values())

    # the HTML is self-contained: every src/href is a data: URI, nothing else is loaded
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert refs and all(r.startswith("data:") for r in refs), [r[:40] for r in refs if not r.startswith("data:")]
    assert len(refs) == len(rep["figures"])
    assert not re.search(r"<(link|script|iframe|object|embed)\b|url\(|@import", html, flags=re.I)
    assert "<h2>Summary</h2>" in html and "+0.062 [+0.032, +0.092]" in html
    assert rep["provenance"]["evaluation_step"] == ev["step"] and rep["provenance"]["benchmark_sources"]
    r = runner.invoke(app, ["report", str(run), "--benchmark", str(tmp_path / "no-such-benchmark")])
    assert r.exit_code == 2 and "benchmark folder not found" in r.output
