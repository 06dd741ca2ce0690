"""Nothing lost or mixed, and every bad output or count is one line: unwritable ``--out`` (train,
generate), impossible counts, no half-made run folder after a failed start, generate/augment into
a used folder (refused; ``--overwrite`` removes only medsynth's recorded files), the run lock
(a second writer, from another process, is refused naming the holder's PID; a killed holder does
not block), ``--resume`` conflicts (refused naming the option and the run's value; allowed changes
applied and recorded), synthetic sets of another size than the benchmark's, and the run's record
of skipped input files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from medsynth.cli import app, default_data
from medsynth.errors import MedsynthError
from medsynth.runs import OUTPUTS_FILE, discard_on_failure, run_lock

runner = CliRunner()
TINY = ["--size", "32", "--set", "model.width=8", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, *words: str) -> str:
    """The single non-empty output line of a refused command, holding each of ``words``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny finished run (2 steps, 32 px, width 8) of the labelled lung-spot set (class-conditional);
    tests copy it before changing it."""
    from medsynth.cli import default_data

    out = tmp_path_factory.mktemp("trained")
    r = invoke("train", *TINY, "--data", default_data(), "--steps", "2", "--no-quick-check", "--out", out)
    assert r.exit_code == 0, r.output
    return next(out.glob("00000-*"))


@pytest.fixture
def run(trained, tmp_path) -> Path:
    dst = tmp_path / "runs" / trained.name
    shutil.copytree(trained, dst)
    return dst


# ----------------------------------------------------------------------------- unwritable outputs
def _bad_outputs(tmp_path: Path) -> list[tuple[Path, str]]:
    afile = tmp_path / "afile"
    afile.write_text("x")
    return [(afile, "is a file, not a folder"), (afile / "sub", "is a file, so the output folder"),
            (Path("/proc/medsynth-probe"), "cannot write this output folder")]


def test_train_into_an_unwritable_out_is_one_line(tmp_path):
    for out, words in _bad_outputs(tmp_path):
        one_error_line(invoke("train", *TINY, "--steps", "2", "--out", out), words)


def test_generate_into_an_unwritable_out_is_one_line(run, tmp_path):
    for out, words in _bad_outputs(tmp_path):
        one_error_line(invoke("generate", run, "--count", "2", "--out", out), words)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(run, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        one_error_line(invoke("generate", run, "--count", "2", "--out", ro / "syn"), "cannot write")
        one_error_line(invoke("train", *TINY, "--steps", "2", "--out", ro), "cannot write")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("count", ["-5", "0"])
def test_generate_impossible_count_is_one_line(run, count):
    one_error_line(invoke("generate", run, "--count", count), "--count", f"got {count}")
    assert not (run / "synthetic").exists()


def test_benchmark_impossible_settings_are_one_line(tmp_path):
    one_error_line(invoke("benchmark", "--size", "63", "--out", tmp_path / "b"), "--size", "got 63")
    one_error_line(invoke("benchmark", "--epochs", "0", "--out", tmp_path / "b"), "--epochs")
    one_error_line(invoke("benchmark", "--fractions", "0,1.5", "--out", tmp_path / "b"), "--fractions")
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- failed starts
@pytest.mark.parametrize("failure", [MedsynthError("data", "bad data"), KeyboardInterrupt()])
def test_a_failed_start_leaves_no_run_folder(tmp_path, monkeypatch, failure):
    from medsynth.train import loop

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(loop, "_train", fail)
    r = invoke("train", *TINY, "--steps", "2", "--out", tmp_path / "runs")
    assert r.exit_code == (2 if isinstance(failure, MedsynthError) else 130), r.output
    assert "Traceback" not in r.output
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_run_with_a_checkpoint_is_kept_on_failure(tmp_path):
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    for d in (kept, dropped):
        (d / "samples").mkdir(parents=True)
    (kept / "checkpoints").mkdir()
    (kept / "checkpoints" / "last.pt").write_bytes(b"x")
    for d in (kept, dropped):
        with pytest.raises(RuntimeError), discard_on_failure(d):
            raise RuntimeError("stopped")
    assert kept.is_dir() and not dropped.exists()


# ----------------------------------------------------------------------------- used output folders
def test_generate_into_a_used_folder_refuses_then_overwrite_replaces_only_its_own(run, tmp_path):
    out = tmp_path / "syn"
    assert invoke("generate", run, "--count", "6", "--out", out).exit_code == 0
    first = sorted(p.name for p in out.iterdir())
    line = one_error_line(invoke("generate", run, "--count", "3", "--out", out), str(out), "--overwrite")
    assert "already holds 9 file(s)" in line  # 6 images, manifest.csv, release_gate.json, medsynth-outputs.json
    assert sorted(p.name for p in out.iterdir()) == first  # untouched
    (out / "notes.txt").write_text("mine")
    r = invoke("generate", run, "--count", "3", "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "manifest.csv")
    images = sorted(p.name for p in out.glob("synthetic_*"))
    assert images == sorted(df["path"]) and len(images) == 3  # no stale image the manifest does not list
    assert (out / "notes.txt").read_text() == "mine"  # never another file
    record = json.loads((out / OUTPUTS_FILE).read_text())
    assert sorted(record["files"]) == sorted(images + ["manifest.csv", "release_gate.json"])


def test_overwrite_without_a_record_is_refused(run, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "synthetic_00000.png").write_bytes(b"not ours")
    one_error_line(invoke("generate", run, "--count", "2", "--out", out, "--overwrite"), f"no {OUTPUTS_FILE}")
    assert (out / "synthetic_00000.png").read_bytes() == b"not ours"


def test_augment_into_a_used_folder(tmp_path):
    manifest = str(default_data())
    out = tmp_path / "aug"
    assert invoke("augment", "--synthetic", manifest, "--out", out).exit_code == 0
    one_error_line(invoke("augment", "--synthetic", manifest, "--out", out), "already holds", "--overwrite")
    r = invoke("augment", "--synthetic", manifest, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", OUTPUTS_FILE, "release_gate.json"]
    # the folder of the manifest it references is never its output folder
    one_error_line(invoke("augment", "--synthetic", manifest, "--out", default_data().parent, "--overwrite"),
                   "--synthetic manifest")


# ----------------------------------------------------------------------------- the run lock
def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medsynth.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env, check=False)


def test_a_second_writer_process_is_refused_naming_the_holder(run):
    stats = (run / "stats.jsonl").read_text()
    with run_lock(run):  # this test process writes the run
        p = _cli("train", "--resume", run, "--steps", "4", "--no-progress")
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {run}: ") and f"pid {os.getpid()}" in lines[0], lines
    assert (run / "stats.jsonl").read_text() == stats and not (run / "resumes.jsonl").exists()


def test_a_killed_holder_does_not_block(run):
    code = ("import sys, time; from medsynth.runs import run_lock; lock = run_lock(sys.argv[1]); lock.__enter__(); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MedsynthError, match=f"pid {holder.pid} on "), run_lock(run):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f"pid {holder.pid}" in (run / ".lock").read_text()  # the file stays, its lock went with the process
    with run_lock(run):
        assert f"pid {os.getpid()}" in (run / ".lock").read_text()
    assert (run / ".lock").read_text() == ""  # emptied on release


def test_the_lock_is_released_after_an_error(run, monkeypatch):
    from medsynth.train import loop

    def fail(*args, **kwargs):
        raise MedsynthError("data", "bad data")

    monkeypatch.setattr(loop, "_train", fail)
    r = invoke("train", "--resume", run, "--steps", "4", "--no-progress")
    assert r.exit_code == 2 and r.output.splitlines()[-1] == "error: data: bad data", r.output
    assert run.is_dir()  # a resumed run is never removed
    with run_lock(run):  # free again
        pass


# ----------------------------------------------------------------------------- --resume
@pytest.mark.parametrize("args,option,value", [
    (["--model", "wgan_gp"], "--model", "(dcgan)"),
    (["--modality", "ct"], "--modality", "(xray)"),
    (["--size", "64"], "--size", "(32)"),
    (["--batch-size", "8"], "--batch-size", "(64)"),
    (["--no-conditional"], "--conditional/--no-conditional", "(True)"),
    (["--preset", "xray_dcgan"], "--preset", "config.yaml"),
    (["--set", "model.width=16"], "--set model.width=16", "model.width = 8"),
    (["--set", "data.split=null"], "--set data.split=null", "data.split = 'train'"),
    (["--steps", "1"], "--steps", "at step 2"),
])
def test_resume_refuses_conflicting_options(run, args, option, value):
    config = (run / "config.yaml").read_text()
    one_error_line(invoke("train", "--resume", run, "--no-progress", *args), f"error: {option}: ", value)
    assert (run / "config.yaml").read_text() == config and not (run / "resumes.jsonl").exists()


def test_resume_applies_and_records_allowed_changes(run):
    r = invoke("train", "--resume", run, "--no-progress", "--size", "32", "--steps", "4",
               "--set", "train.tick_every=1", "--set", "model.width=8")  # same values as the run's: fine
    assert r.exit_code == 0, r.output
    assert "resume: train.steps 2 -> 4" in r.output and "resume: train.tick_every 50 -> 1" in r.output
    (line,) = (run / "resumes.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["step"] == 2 and rec["changes"] == {"train.steps": {"from": 2, "to": 4},
                                                   "train.tick_every": {"from": 50, "to": 1}}
    text = (run / "config.yaml").read_text()
    assert "steps: 4" in text and "tick_every: 1" in text
    assert [json.loads(ln)["step"] for ln in (run / "stats.jsonl").read_text().splitlines()][-2:] == [3, 4]


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    one_error_line(invoke("train", "--resume", tmp_path, "--steps", "4"), str(tmp_path), "not a run directory")


# ----------------------------------------------------------------------------- sizes
def test_synthetic_set_of_another_size_is_refused_unless_resizing(run, tmp_path, monkeypatch, caplog):
    from medsynth.downstream import benchmark as bench

    syn = tmp_path / "syn32"
    assert invoke("generate", run, "--count", "4", "--out", syn).exit_code == 0  # 32 px PNGs
    out = tmp_path / "bench"
    one_error_line(invoke("benchmark", "--synthetic", syn / "manifest.csv", "--size", "64", "--out", out),
                   "not 64x64", "--size 64", "4 at 32x32", "--resize-synthetic")
    one_error_line(invoke("benchmark", "--synthetic", run, "--size", "64", "--out", out),
                   "generator makes 32px", "benchmark uses 64px")

    def reached(*args, **kwargs):
        raise MedsynthError("benchmark", "reached the classifiers")

    monkeypatch.setattr(bench, "run_benchmark", reached)
    with caplog.at_level(logging.WARNING, logger="medsynth"):
        r = invoke("benchmark", "--synthetic", syn / "manifest.csv", "--size", "64", "--out", out,
                   "--resize-synthetic")
    assert r.exit_code == 2 and "reached the classifiers" in r.output, r.output
    assert any("--resize-synthetic: resampling 4 synthetic images (4 at 32x32) to 64x64" in rec.getMessage()
               for rec in caplog.records)


def _unlabelled_pngs(folder: Path, n: int) -> Path:
    """``folder`` holding ``n`` of the embedded phantom X-ray PNGs: a folder of images without labels."""
    folder.mkdir()
    df = pd.read_csv(default_data())
    for p in df[(df["modality"] == "xray") & (df["format"] == "png")]["path"].head(n):
        shutil.copy(default_data().parent / p, folder)
    return folder


def test_unlabelled_data_for_a_conditional_model_makes_no_run_folder(tmp_path):
    src = _unlabelled_pngs(tmp_path / "unlabelled", 4)
    r = invoke("train", *TINY, "--steps", "1", "--data", src, "--conditional", "--out", tmp_path / "runs")
    assert r.exit_code == 2 and r.output.splitlines()[-1].startswith("error: data: class-conditional"), r.output
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_unlabelled_folder_trains_unconditionally_and_says_so(tmp_path):
    # a hospital folder of images carries no labels: the default (conditional) preset falls back to
    # unconditional training with one line, instead of stopping; a variant that needs labels still stops
    src = _unlabelled_pngs(tmp_path / "unlabelled", 4)
    r = invoke("train", *TINY, "--steps", "1", "--data", src, "--out", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    assert sum("training dcgan unconditionally" in ln for ln in r.output.splitlines()) == 1, r.output
    (run,) = (tmp_path / "runs").iterdir()
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["num_classes"] == 0
    r = invoke("train", *TINY, "--steps", "1", "--model", "cgan", "--data", src, "--out", tmp_path / "runs_cgan")
    assert r.exit_code == 2 and r.output.splitlines()[-1].startswith("error:"), r.output


# ----------------------------------------------------------------------------- the run's data record
def test_skipped_input_files_are_recorded_relative(tmp_path):
    src = _unlabelled_pngs(tmp_path / "patient-DOE-123", 6)
    (src / "notes.txt").write_text("not an image")
    (src / "empty.dcm").write_bytes(b"")
    r = invoke("train", *TINY, "--steps", "1", "--data", src, "--no-conditional", "--out", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "runs").iterdir()
    report = json.loads((run / "data_report.json").read_text())
    assert report["images"] > 0 and report["skipped"] == 2
    assert "skipped_files" not in report  # file names may carry patient numbers: local record only
    local = json.loads((run / "local" / "skipped_files.json").read_text())
    assert sorted(f["path"] for f in local["skipped_files"]) == ["empty.dcm", "notes.txt"]
    assert all(f["reason"] for f in local["skipped_files"])
    assert str(src) not in (run / "data_report.json").read_text() and "notes.txt" not in (run / "data_report.json").read_text()
