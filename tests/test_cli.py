"""End-to-end through the command line: sample data -> train -> generate -> augment ->
benchmark -> report, on the committed phantom set, tiny sizes. Plus the one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from medsynth.cli import app
from medsynth.errors import MedsynthError

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.mark.slow
def test_end_to_end_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("train", "--modality", "xray", "--size", "32", "--steps", "12", "--set", "model.width=8",
               "--set", "train.checkpoint_every=6", "--set", "train.sample_every=6", "--out", "runs", "--no-progress")
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "00000-xray-dcgan"
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.pt").exists()
    assert len((run / "stats.jsonl").read_text().splitlines()) >= 1

    # resume extends the same run
    r = invoke("train", "--resume", run, "--steps", "18", "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "stats.jsonl").read_text().splitlines()[-1])["step"] == 18

    r = invoke("generate", run, "--count", "12", "--class", "1", "--format", "dicom")
    assert r.exit_code == 0, r.output
    syn = pd.read_csv(run / "synthetic" / "manifest.csv")
    assert len(syn) == 12 and set(syn["label"]) == {1} and set(syn["source"]) == {"synthetic"}
    ds = pydicom.dcmread(run / "synthetic" / syn["path"][0])
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "medsynth" in ds.SeriesDescription and "dcgan" in ds.SeriesDescription
    assert ds.PatientID.startswith("SYNTHETIC")

    r = invoke("augment", "--synthetic", run / "synthetic" / "manifest.csv", "--out", "aug")
    assert r.exit_code == 0, r.output
    aug = pd.read_csv(tmp_path / "aug" / "manifest.csv")
    assert set(aug["source"]) == {"real", "synthetic"}
    assert (aug.loc[aug["source"] == "synthetic", "split"] == "train").all()

    r = invoke("benchmark", "--synthetic", run, "--size", "32", "--fractions", "0.5,1.0", "--seeds", "2",
               "--epochs", "1", "--n-boot", "50", "--min-steps", "0", "--arms", "real,real+synthetic")
    assert r.exit_code == 0, r.output
    res = json.loads((run / "benchmark" / "results.json").read_text())
    arms = {(s["arm"], s["fraction"]) for s in res["summary"]}
    assert arms == {("real", 0.5), ("real", 1.0), ("real+synthetic", 0.5), ("real+synthetic", 1.0)}
    assert "AUROC [95% CI]" in r.output

    r = invoke("report", run, "--count", "32", "--out", "reports")
    assert r.exit_code == 0, r.output
    rep = tmp_path / "reports" / run.name
    html = (rep / "report.html").read_text()
    assert "data:image/png;base64," in html
    data = json.loads((rep / "report.json").read_text())
    assert "fidelity" in data and "privacy" in data


def test_models_lists_registered_variants():
    r = invoke("models")
    assert r.exit_code == 0
    assert "dcgan" in r.output and "wgan_gp" in r.output


def test_info_reads_committed_dicom():
    from medsynth.cli import default_data

    dcm = next((default_data().parent / "xray" / "dicom").glob("*.dcm"))
    r = invoke("info", dcm)
    assert r.exit_code == 0, r.output
    assert "xray" in r.output.lower()


@pytest.mark.parametrize("setup,expect", [
    ("corrupt", "corrupt.dcm"),
    ("empty", "empty"),
])
def test_bad_input_is_one_line(tmp_path, setup, expect):
    if setup == "corrupt":
        target = tmp_path / "corrupt.dcm"
        target.write_bytes(b"DICM" + b"\x00" * 50)
    else:
        target = tmp_path / "empty"
        target.mkdir()
    r = runner.invoke(app, ["info", str(target)])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0]
    assert "Traceback" not in r.output


def test_training_on_missing_manifest_is_one_line(tmp_path):
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "nope.csv"), "--steps", "1", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: ") and "nope.csv" in r.output


def test_unknown_model_is_one_line(tmp_path):
    r = runner.invoke(app, ["train", "--model", "nosuchgan", "--steps", "1", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown model" in r.output


def test_sample_data_command_small(tmp_path):
    r = invoke("sample-data", "--out", tmp_path / "sd", "--n-xray", "4", "--n-ct", "2", "--n-png", "1")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "sd" / "manifest.csv")
    assert set(df["modality"]) == {"xray", "ct"}
    for p in df["path"]:
        assert (tmp_path / "sd" / p).exists()


def _tiny_train(tmp_path, model: str) -> str:
    r = invoke("train", "--modality", "xray", "--model", model, "--size", "16", "--steps", "2",
               "--set", "model.width=4", "--set", "model.latent_dim=16", "--out", tmp_path / "runs", "--no-progress")
    assert r.exit_code == 0, r.output
    return str(next((tmp_path / "runs").glob(f"*-xray-{model}")))


def test_cyclegan_translates_a_folder(tmp_path):
    from medsynth.cli import default_data

    run = _tiny_train(tmp_path, "cyclegan")
    png_dir = default_data().parent / "xray" / "png"
    r = invoke("generate", run, "--from", png_dir, "--direction", "a2b", "--format", "png", "--out", tmp_path / "tr")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "tr" / "manifest.csv")
    assert len(df) == len(list(png_dir.glob("*.png"))) and set(df["label"]) == {1}


def test_cyclegan_trains_on_two_domain_folders(tmp_path):
    import shutil

    from medsynth.cli import default_data
    from medsynth.config import load_config
    from medsynth.data.dataset import load_two_domains

    df = pd.read_csv(default_data())
    rows = df[(df["modality"] == "xray") & (df["format"] == "png") & (df["split"] == "train")]
    root = default_data().parent
    for lab, name in ((0, "a"), (1, "b")):
        (tmp_path / name).mkdir()
        for p in rows[rows["label"] == lab]["path"].head(6):  # the folders carry no labels at all
            shutil.copy(root / p, tmp_path / name)
    r = invoke("train", "--modality", "xray", "--model", "cyclegan", "--domain-a", tmp_path / "a", "--domain-b",
               tmp_path / "b", "--size", "16", "--steps", "2", "--set", "model.width=4", "--out", tmp_path / "runs",
               "--no-progress")
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs").glob("*-xray-cyclegan"))
    cfg = load_config(run / "config.yaml")
    assert cfg.data.source == str(tmp_path / "a") and cfg.data.domain_b == str(tmp_path / "b")
    ds = load_two_domains(tmp_path / "a", tmp_path / "b", modality="xray", size=16)
    assert ds.labels.tolist() == [0] * 6 + [1] * 6
    r = invoke("train", "--model", "cyclegan", "--domain-a", tmp_path / "a", "--out", tmp_path / "r2")
    assert r.exit_code == 2 and "both" in r.output
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsynthError, match="empty"):  # one line naming the folder
        load_two_domains(tmp_path / "a", tmp_path / "empty", modality="xray", size=16)


def test_cogan_pairs_and_truncation_errors(tmp_path):
    run = _tiny_train(tmp_path, "cogan")
    r = invoke("generate", run, "--pairs", "--count", "4", "--out", tmp_path / "pairs")
    assert r.exit_code == 0, r.output
    a = pd.read_csv(tmp_path / "pairs" / "domain0" / "manifest.csv")
    b = pd.read_csv(tmp_path / "pairs" / "domain1" / "manifest.csv")
    assert len(a) == len(b) == 4
    r = runner.invoke(app, ["generate", run, "--truncation", "0.5", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "truncation" in r.output
