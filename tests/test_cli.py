"""End-to-end through the command line: sample data -> train -> generate -> augment ->
benchmark -> report, on the committed phantom set, tiny sizes. Plus the one-line errors and the
one vocabulary of options (same name, same type on every command; choices listed and checked;
deprecated spellings hidden but working)."""

from __future__ import annotations

import enum
import json
import logging
import re

import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from medsynth import cli
from medsynth.cli import RENAMED, app
from medsynth.errors import MedsynthError

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.mark.slow
def test_end_to_end_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from medsynth.cli import default_data

    r = invoke("train", "--modality", "xray", "--data", default_data(), "--size", "32", "--steps", "12",
               "--set", "model.width=8",
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

    r = invoke("benchmark", "--synthetic", run, "--size", "32", "--fractions", "0.5,1.0", "--n-seeds", "2",
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
    from medsynth.runs import read_data_source

    # the config names each domain by its content fingerprint; only the run's local record holds the paths
    assert cfg.data.source.startswith("sha256:") and cfg.data.domain_b.startswith("sha256:")
    text = (run / "config.yaml").read_text()
    assert cfg.data.source != cfg.data.domain_b and str(tmp_path / "a") not in text and str(tmp_path / "b") not in text
    assert read_data_source(run) == (str(tmp_path / "a"), str(tmp_path / "b"))
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


# ---- one vocabulary ------------------------------------------------------------------------
def _commands() -> dict:
    """Command name -> its click command, for every `medsynth` command."""
    import typer.main

    return typer.main.get_command(app).commands


def _options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option"]


def _kind(param):
    """What an option takes, comparable across commands: its choices, or its value type's name."""
    desc = getattr(param, "type_descriptor", None)  # typer's own type description (recent typer)
    if desc is not None:
        if desc.is_choice:
            return tuple(c.value if isinstance(c, enum.Enum) else c for c in desc.choices)
        return getattr(desc.annotation, "__name__", str(desc.annotation))
    return tuple(param.type.choices) if hasattr(param.type, "choices") else param.type.name  # click's


def _help(*command: str) -> str:
    r = runner.invoke(app, [*command, "--help"])
    assert r.exit_code == 0, r.output
    return r.output


#: every option with a fixed set of values: (command, option) -> choices
CHOICES = {
    ("train", "--modality"): ("xray", "ct"),
    ("augment", "--modality"): ("xray", "ct"),
    ("benchmark", "--modality"): ("xray", "ct"),
    ("generate", "--format"): ("png", "dicom", "nifti"),
    ("generate", "--direction"): ("a2b", "b2a"),
    ("benchmark", "--ct-window"): ("lung", "mediastinal"),
    ("benchmark", "--arch"): ("cnn", "monai", "resnet18", "resnet10"),
    ("benchmark", "--device"): ("cpu", "cuda"),
    ("evaluate", "--inception-input"): ("uint8", "unit", "sym"),
    ("sample-data", "--xray-view"): ("lung_spot", "chest"),
}


def test_same_option_name_same_type_on_every_command():
    kinds: dict[str, dict[str, object]] = {}
    for name, command in _commands().items():
        for p in _options(command):
            for opt in p.opts + p.secondary_opts:
                kinds.setdefault(opt, {})[name] = _kind(p)
    for opt, per_command in kinds.items():
        assert len(set(per_command.values())) == 1, f"{opt} means different things: {per_command}"
    assert {"train", "augment", "benchmark", "evaluate"} <= set(kinds["--data"])
    assert {"train", "generate", "evaluate", "sample-data"} <= set(kinds["--seed"])
    assert {"train", "generate", "augment", "benchmark", "sample-data"} <= set(kinds["--out"])
    assert set(kinds["--data"].values()) == {"str"} and set(kinds["--seed"].values()) == {"int"}
    assert set(kinds["--out"].values()) == {"Path"} and kinds["--n-seeds"] == {"benchmark": "int"}
    for old in ("--real", "--seeds", "--unconditional"):  # only as hidden deprecated spellings
        assert old not in kinds
    # --data has one default (None: the command's natural real data, see the module docstring)
    for command in _commands().values():
        for p in _options(command):
            if "--data" in p.opts:
                assert p.default is None


def test_choice_options_are_listed_in_help():
    found = {(name, opt): _kind(p) for name, command in _commands().items() for p in _options(command)
             for opt in p.opts if isinstance(_kind(p), tuple)}
    assert found == CHOICES  # every choice option is an Enum, and no other option is
    for (name, opt), choices in CHOICES.items():
        assert f"{opt} <{'|'.join(choices)}>" in _help(name)


def test_flags_are_pairs_without_a_type():
    for name, command in _commands().items():
        for p in _options(command):
            if p.is_flag:
                assert p.secondary_opts, f"{name} {p.opts}: a flag is a --x/--no-x pair"
        assert "<bool>" not in _help(name)
    assert "--pairs / --no-pairs" in _help("generate")
    assert "--conditional / --no-conditional" in _help("train")


def test_choices_match_the_library():
    from medsynth.data.windows import CT_WINDOWS
    from medsynth.downstream.classifier import ARCHS
    from medsynth.metrics.inception import INPUT_RANGES
    from medsynth.models.cyclegan import DIRECTIONS
    from medsynth.phantom.sample import XRAY_VIEWS

    for enum_type, values in [(cli.CtWindow, tuple(CT_WINDOWS)), (cli.Arch, ARCHS), (cli.InceptionInput, INPUT_RANGES),
                              (cli.Direction, tuple(DIRECTIONS)), (cli.XrayView, XRAY_VIEWS)]:
        assert tuple(m.value for m in enum_type) == values, enum_type


@pytest.mark.parametrize("args,option", [
    (["train", "--modality", "mri"], "--modality"),
    (["generate", "RUN", "--format", "jpeg"], "--format"),
    (["generate", "RUN", "--direction", "sideways"], "--direction"),
    (["generate", "RUN", "--truncation", "1.5"], "--truncation"),
    (["augment", "--synthetic", "s.csv", "--out", "o", "--modality", "mri"], "--modality"),
    (["benchmark", "--arch", "vgg"], "--arch"),
    (["benchmark", "--ct-window", "bone"], "--ct-window"),
    (["benchmark", "--device", "tpu"], "--device"),
    (["benchmark", "--n-seeds", "0"], "--n-seeds"),
    (["evaluate", "RUN", "--inception-input", "float"], "--inception-input"),
    (["sample-data", "--xray-view", "lateral"], "--xray-view"),
])
def test_invalid_choice_is_a_one_line_usage_error(args, option):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if "Error" in ln]
    assert len(errors) == 1 and option in errors[0], r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("command,old,new", [(c, o, n) for c, table in RENAMED.items() for o, n in table.items()])
def test_deprecated_spelling_is_hidden_and_rewritten(command, old, new, caplog):
    text = _help(command)
    assert re.search(rf"(?<![\w-]){re.escape(new)}\b", text)
    assert not re.search(rf"(?<![\w-]){re.escape(old)}\b", text)
    with caplog.at_level(logging.WARNING, logger="medsynth"):
        assert cli._rename_deprecated(command, [old, "x", f"{old}=y", "--", old]) == [new, "x", f"{new}=y", "--", old]
    assert sum(new in rec.getMessage() and "deprecated" in rec.getMessage() for rec in caplog.records) == 2


def test_deprecated_real_still_works(tmp_path, caplog):
    from medsynth.cli import default_data

    manifest = str(default_data())
    with caplog.at_level(logging.WARNING, logger="medsynth"):
        old = invoke("augment", "--real", manifest, "--synthetic", manifest, "--out", tmp_path / "old")
    assert old.exit_code == 0, old.output
    assert any("--real" in rec.getMessage() and "--data" in rec.getMessage() for rec in caplog.records)
    new = invoke("augment", "--data", manifest, "--synthetic", manifest, "--out", tmp_path / "new")
    assert new.exit_code == 0, new.output
    assert (tmp_path / "old" / "manifest.csv").read_text() == (tmp_path / "new" / "manifest.csv").read_text()
    both = runner.invoke(app, ["augment", "--real", manifest, "--data", manifest, "--synthetic", manifest,
                               "--out", str(tmp_path / "both")])
    assert both.exit_code == 2 and "--data only" in both.output
