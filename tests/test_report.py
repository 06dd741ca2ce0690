"""The run report: it renders the run's result files (evaluation, benchmark) and recomputes nothing.

Most tests build a run directory by hand and write its result files with the real writers
(:func:`medsynth.metrics.evaluate.evaluate_sets` + ``write_evaluation`` on small images with a
fixed pooling encoder, :func:`medsynth.downstream.benchmark.write_benchmark` on a hand-made
result with known numbers); one trains a tiny run so that the report must evaluate it itself.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import train_tiny_cli_run
from medsynth import results
from medsynth.downstream.benchmark import BenchmarkResult, write_benchmark
from medsynth.errors import MedsynthError
from medsynth.metrics.evaluate import evaluate_sets, write_evaluation
from medsynth.report import build_report
from medsynth.report.sections import benchmark_headline, fmt, mia_signal

pytestmark = pytest.mark.usefixtures("one_thread")


class _Pool(nn.Module):
    """A fixed stand-in feature encoder: 4×4 average pooling, flattened."""

    def forward(self, x):
        return (nn.functional.avg_pool3d if x.dim() == 5 else nn.functional.avg_pool2d)(x, 4).flatten(1)


def _images(n, shape=(32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.7, 0.7, shape[-1])
    return (ramp + 0.3 * torch.randn(n, 1, *shape, generator=g)).clamp(-1, 1)


def _write_evaluation(run: Path, real: torch.Tensor, synth: torch.Tensor, *, step=30) -> dict:
    """RUN/evaluate/ as `medsynth evaluate` writes it (the suite on given images; held-out = last 12)."""
    ev, figs = evaluate_sets(real[:-12], synth, encoder=_Pool(), modality="xray", heldout_x=real[-12:],
                             d_score=lambda imgs, lab: -imgs.mean(tuple(range(1, imgs.dim()))).numpy(),
                             seed=0, repeats=2, kid_subsets=5, ms_ssim_pairs=10, n_boot=50)
    ev.update(run=run.name, model="dcgan", step=step, n_synthetic_sampled=len(synth), dp="")
    write_evaluation(ev, figs, run / "evaluate")
    return json.loads((run / "evaluate" / "evaluation.json").read_text())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """An ``evaluate/`` folder (computed once per module): 40 synthetic images, 10 of them copies of training images."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("template") / "00007-xray-dcgan"
    real = _images(60)
    _write_evaluation(run, real, torch.cat([real[:10], _images(30, seed=5)]))
    return run / "evaluate"


def _fake_run(root: Path, evaluated: Path | None, name="00007-xray-dcgan", *, benchmark=False,
              config_extra="") -> Path:
    """A run directory with config, stats, sample grids, a copy of ``evaluated`` and optionally a benchmark."""
    run = root / "runs" / name
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text(
        "data:\n  source: default\n  modality: xray\n  size: 32\nmodel:\n  name: dcgan\n  width: 8\n"
        "train:\n  steps: 30\n  batch_size: 16\nseed: 0\n" + config_extra
    )
    with open(run / "stats.jsonl", "w") as fh:
        for s in (10, 20, 30):
            fh.write(json.dumps({"step": s, "kimg": s * 0.016, "seconds": 1.5 * s, "img_per_s": 100.0,
                                 "loss/G": 2.0 / s, "loss/D": 0.7, "D/real_score": 0.6}) + "\n")
    for s, v in ((10, 0), (30, 200)):
        Image.fromarray(np.full((26, 26), v, np.uint8)).save(run / "samples" / f"step_{s:06d}.png")
    if evaluated is not None:
        shutil.copytree(evaluated, run / "evaluate")
    if benchmark:
        _write_benchmark(run / "benchmark")
    return run


# A hand-made benchmark result with known numbers. Per fraction the AUROC difference row sits
# between the sens@90spec and spec@90sens rows, so a reader that keeps one difference per
# fraction (or the first / last) shows a wrong one.
BENCH_DIFFS = {  # (arm, fraction, metric): (diff, lo, hi, p)
    ("real+synthetic", 0.1, "sens_at_90spec"): (-0.12, -0.25, 0.01, 0.09),
    ("real+synthetic", 0.1, "auroc"): (0.0617, 0.0317, 0.0917, 0.04),
    ("real+synthetic", 0.1, "spec_at_90sens"): (0.2, 0.05, 0.35, 0.011),
    ("real+synthetic", 1.0, "sens_at_90spec"): (0.3, 0.1, 0.5, 0.004),
    ("real+synthetic", 1.0, "auroc"): (0.01, -0.02, 0.04, 0.52),
    ("real+synthetic", 1.0, "spec_at_90sens"): (-0.05, -0.15, 0.05, 0.33),
}
BENCH_AUROC = {("real", 0.1): 0.71, ("real", 1.0): 0.83, ("real+synthetic", 0.1): 0.77, ("real+synthetic", 1.0): 0.84}


def _bench_result(diffs=BENCH_DIFFS, aurocs=BENCH_AUROC) -> BenchmarkResult:
    rows = [{"arm": arm, "fraction": f, "seed": s, "auroc": a + 0.01 * (s - 0.5)}
            for (arm, f), a in aurocs.items() for s in (0, 1)]
    summary = [{"arm": arm, "fraction": f, "auroc": a, "auroc_lo": a - 0.05, "auroc_hi": a + 0.04,
                "sens_at_90spec": 0.5, "sens_at_90spec_lo": 0.4, "sens_at_90spec_hi": 0.6,
                "spec_at_90sens": 0.45, "spec_at_90sens_lo": 0.3, "spec_at_90sens_hi": 0.6,
                "sensitivity": 0.7, "sensitivity_lo": 0.6, "sensitivity_hi": 0.8, "specificity": 0.75,
                "specificity_lo": 0.65, "specificity_hi": 0.85, "auroc_seed_mean": a, "auroc_seed_sd": 0.01,
                "n_seeds": 2, "n_train_real": 30 if f == 1.0 else 3,
                "n_train_synthetic": 0 if arm == "real" else (30 if f == 1.0 else 3)}
               for (arm, f), a in aurocs.items()]
    dd = [{"arm": arm, "fraction": f, "metric": m, "comparison": f"{arm} - real", "diff": d, "lo": lo, "hi": hi,
           "p": p, "diff_seed_mean": d + 0.001, "diff_seed_sd": 0.02} for (arm, f, m), (d, lo, hi, p) in diffs.items()]
    fractions = sorted({f for _, f in aurocs})
    return BenchmarkResult(config={"fractions": fractions, "seeds": [0, 1], "arms": sorted({a for a, _ in aurocs}),
                                   "aggregation": "seed ensemble"},
                           rows=rows, summary=summary, diffs=dd, n_test=40, n_test_patients=40, n_val=10,
                           timings={"total_seconds": 1.0})


def _write_benchmark(out: Path, **kw) -> None:
    write_benchmark(_bench_result(**kw), out)


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


def _numbers(obj, path=()):
    """(path, value) of every numeric leaf."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, path + (i,))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


# ---- the report shows the result files' numbers --------------------------------------------------


def test_report_files_figures_and_numbers(tmp_path, evaluated):
    run = _fake_run(tmp_path, evaluated, benchmark=True)
    out = build_report(run, out_root=tmp_path / "reports")
    assert out == tmp_path / "reports" / run.name
    rep = json.loads((out / "report.json").read_text())
    assert (rep["kind"], rep["schema_version"]) == ("report", results.SCHEMA_VERSION)
    assert set(rep["figures"].values()) == {  # no figure with real training images (no --show-real)
        "eval_fig_intensity.png", "eval_fig_dcr_nndr.png", "fig_benchmark.png", "fig_training_curves.png",
        "fig_last_training_grid.png"}
    for f in ["report.md", "report.html", *rep["figures"].values()]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "eval_fig_dcr_nndr.png").read_bytes() == (run / "evaluate" / "fig_dcr_nndr.png").read_bytes()
    assert (out / "fig_benchmark.png").read_bytes() == (run / "benchmark" / "plot.png").read_bytes()
    assert rep["contains_patient_images"] is False

    ev = json.loads((run / "evaluate" / "evaluation.json").read_text())
    assert rep["fidelity"] == ev["fidelity"] and rep["privacy"] == ev["privacy"]
    assert rep["evaluation"]["computed_by_report"] is False and rep["evaluation"]["step"] == 30
    s = rep["summary"]
    assert (s["model"], s["modality"], s["steps_done"], s["wall_seconds"]) == ("dcgan", "xray", 30, 45.0)
    assert s["n_real_train"] == 48 and s["n_synthetic"] == 40 and s["image_shape"] == [1, 32, 32]
    assert rep["provenance"]["last_training_grid"] == "step_000030.png"
    assert len(rep["benchmark"]["summary"]) == 4

    md = (out / "report.md").read_text()
    assert [ln[3:] for ln in md.splitlines() if ln.startswith("## ")] == [
        "Summary", "Fidelity", "Privacy", "Downstream benchmark", "Run and configuration provenance"]
    summary = _md_section(md, "Summary")
    # the summary states the right AUROC row per arm and fraction
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
    assert "1 of 2 arm × real-fraction comparisons are better than real-only, 0 worse and 1 not" in summary
    assert "**Caveats:** only 2 seed(s) per arm (5 recommended)." in summary
    assert ("**real+synthetic**: AUROC +0.062 [+0.032, +0.092], p = 0.040 at 10%; +0.010 [-0.020, +0.040], "
            "p = 0.520 at 100% of the real training patients — better at 10%; no significant difference at 100%."
            ) in summary
    # memorisation (10 copies of 40 trip the 5% flag) and membership inference, attack beside its control
    assert "**Is there memorisation?** **Flagged**" in summary and "WARNING: possible memorisation" in md
    assert ev["privacy"]["dcr"]["frac_below_real_p1"] == pytest.approx(0.25)
    for key in ("distance", "discriminator"):
        a, c = (ev["privacy"]["membership_inference"][key][k] for k in ("attack", "control"))
        assert f"AUROC {fmt(a['auroc'])} [{fmt(a['lo'])}, {fmt(a['hi'])}] against its control " \
               f"{fmt(c['auroc'])} [{fmt(c['lo'])}, {fmt(c['hi'])}]" in summary
        assert rep["headline"]["membership_inference"][key]["signal"] == (a["lo"] > max(0.5, c["auroc"]))

    # report.json carries the figures the Markdown shows: every headline number is printed in the summary ...
    nums = list(_numbers(rep["headline"]))
    assert len(nums) > 40
    for path, v in nums:
        if path[-1] in ("fraction", "diff_seed_mean", "diff_seed_sd") or "frac_below" in str(path[-1]):
            continue  # printed as percentages (checked below) or in the benchmark section
        shown = f"{v:+.3f}" if "diffs" in path and path[-1] in ("diff", "lo", "hi") else fmt(v)
        assert shown in summary, (path, v, shown)
    mem = rep["headline"]["memorisation"]
    assert f"DCR {mem['dcr_frac_below_real_p1']:.1%} and NNDR {mem['nndr_frac_below_real_p1']:.1%}" in summary
    # ... the benchmark differences are the ones the benchmark section prints ...
    diff_rows = next(t for t in _md_tables(_md_section(md, "Downstream benchmark")) if t and "metric" in t[0])
    assert len(diff_rows) == len(rep["benchmark"]["diffs"]) == 6
    for d in rep["benchmark"]["diffs"]:
        want = BENCH_DIFFS[(d["arm"], d["fraction"], d["metric"])]
        assert (d["diff"], d["lo"], d["hi"], d["p"]) == want
        label = {"auroc": "AUROC", "sens_at_90spec": "sens@90%spec", "spec_at_90sens": "spec@90%sens"}[d["metric"]]
        row = next(r for r in diff_rows if r["metric"] == label and r["real training patients"] == f"{100 * d['fraction']:g}%")
        assert row["arm − real-only [95% CI]"] == _signed(*want[:3]) and row["p"] == fmt(want[3])
    # ... and the same PNG figures
    assert set(re.findall(r"\]\(([^)]+\.png)\)", md)) == set(rep["figures"].values())
    assert "| model | dcgan |" in md and "name: dcgan" in md  # resolved config shown
    assert "KID (features, unbiased MMD²)" in md and "control: held-out half vs half" in md

    # the HTML is self-contained: every src/href is a data: URI, nothing else is loaded
    html = (out / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert len(refs) == len(rep["figures"])
    assert not re.search(r"<(link|script|iframe|object|embed)\b|url\(|@import", html, flags=re.I)
    assert "<h2>Summary</h2>" in html and "+0.062 [+0.032, +0.092]" in html and "0.770 [0.720, 0.810]" in html


def test_report_fd_is_the_evaluations_one_number_one_encoder(tmp_path, evaluated):
    run = _fake_run(tmp_path, evaluated)
    out = build_report(run, out_root=tmp_path / "r")
    ev = json.loads((run / "evaluate" / "evaluation.json").read_text())
    fd, floor = ev["fidelity"]["fd"]["synthetic"]["mean"], ev["fidelity"]["fd"]["floor"]["mean"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["headline"]["fidelity"]["fd"] == [fd, floor]
    assert rep["headline"]["fidelity"]["fd_ratio_to_floor"] == pytest.approx(fd / floor)
    md = (out / "report.md").read_text()
    # every Fréchet distance the report prints, in any table, is the evaluation's
    fd_rows = [r for t in _md_tables(md) for r in t if "Fréchet distance" in next(iter(r.values()))]
    assert len(fd_rows) == 2  # the summary's row and the evaluation's fidelity table
    for r in fd_rows:
        cell = list(r.values())[1]
        assert float(re.match(r"[-+0-9.e]+", cell).group()) == pytest.approx(fd, abs=5e-4), r
    # one encoder: the only fingerprint anywhere in the report is the evaluation's, and none is trained here
    assert set(re.findall(r"`([0-9a-f]{16})`", md)) == {ev["fidelity"]["encoder"]["fingerprint"]}
    assert not (out / "encoder.pt").exists()
    # and the same inputs give the same report
    again = build_report(run, out_root=tmp_path / "r2")
    assert (again / "report.md").read_text() == md
    assert json.loads((again / "report.json").read_text()) == rep


def test_report_without_benchmark_and_3d_volumes(tmp_path):
    run = _fake_run(tmp_path, None, name="00008-ct-dcgan3d")
    vols = torch.rand(36, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    _write_evaluation(run, vols, vols[:8] * 0.5)
    out = build_report(run, out_root=tmp_path / "r")
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert rep["benchmark"] is None and rep["headline"]["benchmark"] is None
    assert "No benchmark results" in md and "Not measured: no benchmark results" in md
    assert rep["summary"]["image_shape"] == [1, 16, 16, 16] and "(16 × 16 × 16)" in md
    shown = (build_report(run, out_root=tmp_path / "shown", show_real=True) / "report.md").read_text()
    assert "central slices" in shown and "central slices" not in md


def test_report_shows_real_training_images_only_when_asked(tmp_path, evaluated):
    from medsynth.report.sections import PATIENT_IMAGES_WARNING

    run = _fake_run(tmp_path, evaluated)
    real_figs = {"eval_fig_samples.png", "eval_fig_closest_pairs.png"}
    # asked: the evaluation's figures with real training images, and the first line says so
    out = build_report(run, out_root=tmp_path / "r", show_real=True)
    rep = json.loads((out / "report.json").read_text())
    assert rep["contains_patient_images"] is True and real_figs <= set(rep["figures"].values())
    for name in real_figs:
        assert (out / name).read_bytes() == (run / "evaluate" / name.removeprefix("eval_")).read_bytes()
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert md.splitlines()[0] == PATIENT_IMAGES_WARNING and "CONTAINS PATIENT IMAGES" in md.splitlines()[0]
    body = html.split("<body>", 1)[1].lstrip()
    assert body.startswith("<p><strong>CONTAINS PATIENT IMAGES:</strong>")
    # default, into the same folder: the copies an earlier --show-real report left are removed
    out = build_report(run, out_root=tmp_path / "r")
    rep = json.loads((out / "report.json").read_text())
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert rep["contains_patient_images"] is False and not real_figs & set(rep["figures"].values())
    assert not [p.name for p in out.iterdir() if p.name in real_figs]
    assert "PATIENT IMAGES" not in md and "PATIENT IMAGES" not in html
    assert "The closest-pairs figure is left out: it shows real training images" in _md_section(md, "Privacy")
    assert "fig_samples.png" in _md_section(md, "Fidelity") and "--show-real" in _md_section(md, "Fidelity")
    assert set(rep["provenance"]["withheld_figures"]) == {"fig_samples.png", "fig_closest_pairs.png"}
    # no embedded figure is one of the evaluation's real-image PNGs
    import base64

    embedded = {base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)}
    assert not embedded & {(run / "evaluate" / n.removeprefix("eval_")).read_bytes() for n in real_figs}


def test_report_withholds_the_input_path_of_an_older_run(tmp_path, evaluated):
    secret = "/data/ACC-123456/chest"
    run = _fake_run(tmp_path, evaluated)
    cfg = (run / "config.yaml").read_text().replace("source: default", f"source: {secret}")
    (run / "config.yaml").write_text(cfg)
    out = build_report(run, out_root=tmp_path / "r")
    for f in out.iterdir():
        assert b"ACC-123456" not in f.read_bytes(), f.name
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["data_source"] == "<input path withheld>"
    assert rep["config"]["data"]["source"] == "<input path withheld>"


def test_html_escapes_hostile_strings(tmp_path, evaluated):
    run = _fake_run(tmp_path, evaluated, name="00009-<img src=x onerror=alert(1)>",
                    config_extra="note: \"<script>alert('x')</script>\"\n")
    html = (build_report(run, out_root=tmp_path / "r") / "report.html").read_text()
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html


# ---- the evaluation: read when present, run once when absent, refused when of another schema --------


def test_report_refuses_an_evaluation_of_another_schema_in_one_line(tmp_path, evaluated):
    from typer.testing import CliRunner

    from medsynth.cli import app

    run = _fake_run(tmp_path, evaluated)
    path = run / "evaluate" / "evaluation.json"
    ev = json.loads(path.read_text())
    path.write_text(json.dumps(dict(ev, schema_version=99)))
    with pytest.raises(MedsynthError, match=r"evaluation\.json: has schema_version 99; this medsynth reads "
                                            r"evaluation schema 1: rerun `medsynth evaluate RUN`"):
        build_report(run, out_root=tmp_path / "r")
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r")])
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("error: ") and str(path) in lines[0] and "schema_version 99" in lines[0]
    assert not (tmp_path / "r" / run.name / "report.md").exists()
    # an evaluation from before the schema (no schema_version) is refused the same way, not guessed at
    old = {k: v for k, v in ev.items() if k not in ("kind", "schema_version")}
    path.write_text(json.dumps(dict(old, format="medsynth-evaluation/1")))
    with pytest.raises(MedsynthError, match="has no schema_version"):
        build_report(run, out_root=tmp_path / "r")
    path.write_text(json.dumps(dict(ev, kind="benchmark")))
    with pytest.raises(MedsynthError, match="not a medsynth evaluation file"):
        build_report(run, out_root=tmp_path / "r")


def test_report_refuses_a_benchmark_of_another_schema(tmp_path, evaluated):
    run = _fake_run(tmp_path, evaluated, benchmark=True)
    path = run / "benchmark" / "results.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "schema_version"}))
    with pytest.raises(MedsynthError, match=r"results\.json: has no schema_version.*rerun `medsynth benchmark`"):
        build_report(run, out_root=tmp_path / "r")
    dup = dict(data, diffs=data["diffs"] + data["diffs"][-1:])  # two rows for one (arm, fraction, metric)
    path.write_text(json.dumps(dup))
    with pytest.raises(MedsynthError, match="two paired-difference rows"):
        build_report(run, out_root=tmp_path / "r")


def test_report_bad_inputs(tmp_path, evaluated):
    with pytest.raises(MedsynthError, match="run directory not found"):
        build_report(tmp_path / "nope", out_root=tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsynthError, match="config.yaml"):
        build_report(tmp_path / "empty", out_root=tmp_path / "r")
    run = _fake_run(tmp_path, evaluated)
    (tmp_path / "no-results").mkdir()
    with pytest.raises(MedsynthError, match=r"results\.json: not found"):
        build_report(run, out_root=tmp_path / "r", benchmark_dir=tmp_path / "no-results")
    with open(run / "stats.jsonl", "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(MedsynthError, match="line 4"):
        build_report(run, out_root=tmp_path / "r")


@pytest.mark.slow
def test_never_evaluated_run_is_evaluated_once_then_carries_the_suite(tmp_path, monkeypatch, caplog):

    import medsynth.metrics.evaluate as evaluate_mod
    from medsynth.cli import app

    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    runner, run = train_tiny_cli_run(tmp_path, (torch.rand(48, 32, 32, generator=g) * 2000).numpy().astype(np.float32))  # detector-like units
    assert not (run / "evaluate").exists()
    calls = []
    real_evaluate_run = evaluate_mod.evaluate_run

    def counting_evaluate_run(*args, **kw):
        calls.append(kw)
        return real_evaluate_run(*args, **kw)

    monkeypatch.setattr(evaluate_mod, "evaluate_run", counting_evaluate_run)
    with caplog.at_level(logging.INFO, logger="medsynth.report.read"):
        r = runner.invoke(app, ["report", str(run), "--count", "24", "--encoder-steps", "3", "--out", "reports"],
                          catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert len(calls) == 1 and calls[0]["count"] == 24 and calls[0]["encoder_steps"] == 3
    assert any("has no evaluation; running it" in m for m in caplog.messages)
    # the evaluation was written into the run, as `medsynth evaluate` writes it
    ev = results.read_evaluation(run)
    assert ev["step"] == 2 and ev["fidelity"]["n_synthetic"] == 24 and (run / "evaluate" / "evaluation.md").is_file()
    rep = json.loads((tmp_path / "reports" / run.name / "report.json").read_text())
    assert rep["evaluation"]["computed_by_report"] is True
    fh = rep["headline"]["fidelity"]
    for key in ("kid", "precision", "recall", "coverage", "ms_ssim"):
        assert len(fh[key]) == 2 and all(math.isfinite(v) for v in fh[key]), key
    md = (tmp_path / "reports" / run.name / "report.md").read_text()
    for label in ("KID", "precision (k-NN manifold)", "recall (k-NN manifold)", "coverage (k-NN manifold)",
                  "mean pairwise MS-SSIM"):
        assert label in _md_section(md, "Summary"), label
    assert "computed for this report" in md

    # a second report reads that evaluation: no second run, the same file
    stamp = (run / "evaluate" / "evaluation.json").stat().st_mtime_ns
    out = build_report(run, out_root=tmp_path / "again")
    assert len(calls) == 1 and (run / "evaluate" / "evaluation.json").stat().st_mtime_ns == stamp
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["evaluation"]["computed_by_report"] is False and rep2["headline"]["fidelity"] == fh


# ---- the summary's rules ------------------------------------------------------------------------


def test_benchmark_headline_picks_the_auroc_row_per_arm(tmp_path):
    # three arms; real+classic's rows come first and differ, so grouping by fraction alone fails
    diffs = {("real+classic", 0.5, "spec_at_90sens"): (0.5, 0.4, 0.6, 0.001),
             ("real+classic", 0.5, "auroc"): (-0.04, -0.07, -0.01, 0.012),
             ("real+classic", 0.5, "sens_at_90spec"): (0.0, -0.1, 0.1, 1.0),
             ("real+synthetic", 0.5, "sens_at_90spec"): (0.25, 0.2, 0.3, 0.002),
             ("real+synthetic", 0.5, "auroc"): (0.03, -0.01, 0.07, 0.15),
             ("real+synthetic", 0.5, "spec_at_90sens"): (-0.3, -0.4, -0.2, 0.003)}
    aurocs = {("real", 0.5): 0.53, ("real+classic", 0.5): 0.49, ("real+synthetic", 0.5): 0.56}
    _write_benchmark(tmp_path, diffs=diffs, aurocs=aurocs)
    bench = results.read_benchmark(tmp_path)
    assert bench["n_test"] == 40 and len(bench["diffs"]) == 6
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
    assert results.read_benchmark(tmp_path / "nothing-here") is None


def test_mia_signal_rule():
    assert mia_signal({"auroc": 0.7, "lo": 0.6, "hi": 0.8}, {"auroc": 0.52})
    assert not mia_signal({"auroc": 0.7, "lo": 0.6, "hi": 0.8}, {"auroc": 0.63})  # control as high: shift, not leak
    assert not mia_signal({"auroc": 0.55, "lo": 0.45, "hi": 0.65}, {"auroc": 0.40})  # CI includes chance
    assert not mia_signal({"auroc": 0.7, "lo": None, "hi": None}, {"auroc": 0.5})
