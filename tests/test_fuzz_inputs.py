"""Fuzz and fault suite (issue 17): every command that reads input, against broken and odd inputs.

The inputs come from ``tests/fuzz_files.py`` (broken DICOM, NIfTI, PNG files, broken manifests),
written once per module. Each case runs the real command line in-process (``typer.testing.
CliRunner``; with click >= 8.2 ``result.output`` holds stdout and stderr together, so the
``error:`` line is in it) and asserts one of two outcomes:

* **refused**: exit code 2, exactly one ``error:`` line, the last line printed, naming the file
  (or the key/option), no traceback, and nothing half-made left behind (no run folder, no
  ``--out`` folder);
* **accepted**: exit code 0 and no traceback, plus what the documented behaviour adds: a warning
  counting the skipped or duplicate files, the run's ``data_report.json`` counting each skipped
  file and its local record (``local/``) naming it.

Where the issue lets a command either refuse a file or skip it with a summary (a bad file in a
folder), either outcome passes, but never silence: a skip must be counted in the warning and in
the run's records, and named there.

Training is the only slow part: the suite trains two-step, width-8, 32 px runs (a DCGAN for
``evaluate``/``report``/``generate``, a CycleGAN for ``generate --from``, and one per accepted
input), well under a minute on one thread in all.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fuzz_files as F
from medsynth.cli import app

runner = CliRunner()
TINY = ["--size", "32", "--steps", "2", "--set", "model.width=8", "--set", "train.batch_size=4", "--no-progress"]
EVAL_TINY = ["--count", "8", "--encoder-steps", "1", "--repeats", "1", "--n-boot", "10"]
BENCH_TINY = ["--size", "32", "--n-seeds", "1", "--fractions", "1.0", "--epochs", "1", "--n-boot", "10",
              "--min-steps", "0"]


def cli(*args):
    """Run ``medsynth ARGS`` in-process; an uncaught exception stays in ``result.exception``."""
    return runner.invoke(app, [str(a) for a in args])


def _crash(result) -> str:
    """The traceback of an uncaught exception (empty when the command exited normally)."""
    exc = result.exception
    if exc is None or isinstance(exc, SystemExit):
        return ""
    return "".join(traceback.format_exception(exc, limit=-3))


def assert_refused(result, *names: str) -> str:
    """Exit 2 with exactly one ``error:`` line, the last line printed, containing each of ``names``;
    no traceback. Returns the error line."""
    out = result.output
    assert not _crash(result), f"traceback instead of one line:\n{_crash(result)}\noutput:\n{out}"
    assert "Traceback" not in out, out
    assert result.exit_code == 2, f"exit {result.exit_code}, expected 2:\n{out}"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, f"expected one error line, got {len(errors)}:\n{out}"
    assert lines[-1] == errors[0], f"the error is not one line (text follows it):\n{out}"
    for name in names:
        assert name in errors[0], f"the error line does not name {name!r}:\n{errors[0]}"
    return errors[0]


def assert_usage_error(result, option: str) -> None:
    """typer's own usage error for an option value it checks (exit 2, naming the option)."""
    assert not _crash(result), _crash(result)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output, result.output


def assert_accepted(result) -> None:
    assert not _crash(result), f"traceback:\n{_crash(result)}\noutput:\n{result.output}"
    assert result.exit_code == 0, f"exit {result.exit_code}, expected 0:\n{result.output}"
    assert not any(ln.startswith("error:") for ln in result.output.splitlines()), result.output


def skipped_files(run: Path) -> tuple[dict, list[str]]:
    """The run's data_report.json (counts, shareable) and the names of the skipped files, which it
    keeps in the local record it points to (names may carry patient or accession numbers)."""
    report = json.loads((run / "data_report.json").read_text())
    record = json.loads((run / report["skipped_files_record"]).read_text())
    return report, [s["path"] for s in record["skipped_files"]]


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []


# ----------------------------------------------------------------------------- shared inputs
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def files(root):
    """``{case name: path}`` of every file case of :data:`fuzz_files.FILE_CASES`."""
    return F.write_file_cases(root / "files")


@pytest.fixture(scope="module")
def manifests(root):
    """``{case name: csv}`` of every manifest case, beside the valid base set (``root/man``)."""
    return F.write_manifest_cases(root / "man")


@pytest.fixture(scope="module")
def base_csv(manifests, root):
    return F.write_rows(root / "man" / "manifest.csv", F.base_rows())


@pytest.fixture(scope="module")
def dcgan_run(base_csv, root):
    """A 2-step class-conditional DCGAN run on the base set (for evaluate / report / generate)."""
    r = cli("train", *TINY, "--data", base_csv, "--out", root / "runs")
    assert_accepted(r)
    return root / "runs" / "00000-xray-dcgan"


@pytest.fixture(scope="module")
def cyclegan_run(base_csv, root):
    """A 2-step CycleGAN run between the base set's label-0 and label-1 images (for ``generate --from``)."""
    rows = F.base_rows()
    a = F.write_rows(root / "man" / "domain_a.csv", [r for r in rows if r["label"] == 0])
    b = F.write_rows(root / "man" / "domain_b.csv", [r for r in rows if r["label"] == 1])
    r = cli("train", "--model", "cyclegan", *TINY, "--set", "train.batch_size=2", "--domain-a", a, "--domain-b", b,
            "--out", root / "cycle")
    assert_accepted(r)
    return root / "cycle" / "00000-xray-cyclegan"


def _labels_csv(folder: Path) -> None:
    """``labels.csv`` putting every file of ``folder`` in the training split (so each is read)."""
    rows = []
    for i, f in enumerate(sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "labels.csv")):
        rows.append(dict(path=f.relative_to(folder).as_posix(), label=i % 2, patient_id=f"Q{i}", split="train"))
    F.write_rows(folder / "labels.csv", rows, columns=["path", "label", "patient_id", "split"])


def _ct_base(folder: Path) -> None:
    for k in range(4):
        F.write_nifti(folder / f"ct{k}.nii.gz", F.ct_volume(200 + k, depth=6).transpose(2, 1, 0))


# ----------------------------------------------------------------------------- 1. `info FILE`
@pytest.mark.parametrize("case", F.FILE_CASES, ids=lambda c: c.name)
def test_info_describes_or_refuses_each_file(case, files):
    """``info`` describes a readable file (its ``usable`` line saying what each run would do) and
    refuses an unreadable one in one line naming it."""
    path = files[case.name]
    r = cli("info", path)
    if not case.readable:
        assert_refused(r, path.name.splitlines()[-1])
        return
    assert_accepted(r)
    if path.is_file():
        usable = next(ln for ln in r.output.splitlines() if ln.startswith("usable:"))
        for m in ("xray", "ct"):
            said = f"'{m}': 'yes'" in usable
            want = m in case.usable_by_header
            assert said == want, f"{case.name}: {m} usable should be {want}: {usable}"


def test_info_reads_enhanced_ct_rescale_from_its_functional_groups(files):
    r = cli("info", files["enhanced_ct"])
    assert_accepted(r)
    line = next(ln for ln in r.output.splitlines() if ln.startswith("intensity:"))
    values = ast.literal_eval(line.split(":", 1)[1].strip())  # a dict printed by the CLI
    assert (values["min"], values["max"]) == F.ENHANCED_HU, line  # not the stored 0..1196


# ----------------------------------------------------------------------------- 2. a bad file in a folder
def _folder_case_ids():
    return [c for c in F.FILE_CASES if c.name != "ct_series_33mm_gap"]


@pytest.mark.parametrize("case", _folder_case_ids(), ids=lambda c: c.name)
def test_train_on_a_folder_with_one_bad_file_refuses_or_skips_it_by_name(case, files, root):
    """A folder of valid images plus the case's file (every file in the training split through
    labels.csv, so the file is read): a usable file trains; an unusable one is either skipped,
    counted in the warning and in the run's data_report.json and named in the run's local record,
    or the run is refused in one line naming it. Never a traceback, never a silent skip."""
    modality = "ct" if case.family == "nifti" else "xray"
    folder = root / "folders" / case.name
    if modality == "ct":
        _ct_base(folder)
    else:
        F.write_base_set(folder)
    src = files[case.name]
    shutil.copy(src, folder / src.name)
    _labels_csv(folder)
    out = root / "folder_runs" / case.name
    with _warnings() as seen:
        r = cli("train", "--modality", modality, *TINY, "--no-conditional", "--data", folder, "--out", out)
    if modality in case.usable:
        assert_accepted(r)
        report = json.loads((run_dirs(out)[0] / "data_report.json").read_text())
        assert report["skipped"] == 0, report
        return
    if r.exit_code == 2:
        assert_refused(r, src.name.splitlines()[-1])
        assert run_dirs(out) == [], "a refused start left a run folder"
        return
    assert_accepted(r)
    report, names = skipped_files(run_dirs(out)[0])
    assert report["skipped"] == 1 and names == [src.name], (report, names)
    summary = [m for m in seen if "skipped 1 of" in m]
    assert summary, f"no summary warning for the skipped file; warnings: {seen}"


class _warnings:
    """Collect the messages of WARNING records of the ``medsynth`` loggers while in the block."""

    def __enter__(self):
        self.messages: list[str] = []
        outer = self

        class H(logging.Handler):
            def emit(self, record):
                outer.messages.append(record.getMessage())

        self.handler = H(logging.WARNING)
        logging.getLogger("medsynth").addHandler(self.handler)
        return self.messages

    def __exit__(self, *exc):
        logging.getLogger("medsynth").removeHandler(self.handler)


def test_train_on_a_folder_of_many_bad_files_counts_and_names_every_skip(files, root):
    """All the header-refusable files at once beside valid images: one summary line with the
    count, the run's data_report.json counting them and its local record naming each file."""
    folder = root / "mixed"
    F.write_base_set(folder)
    names = ["dcm_zero_bytes", "dcm_random_bytes", "dcm_mr", "dcm_us", "dcm_nm", "dcm_rgb",
             "dcm_sc_8bit_claiming_ct", "png_zero_bytes", "png_rgba", "dcm_newline_in_name", "enhanced_ct"]
    for n in names:
        shutil.copy(files[n], folder / files[n].name)
    shutil.copy(files["dcm_monochrome1"], folder / "mono1.dcm")  # usable: trained on
    shutil.copy(files["dcm_hostile_strings"], folder / F.HOSTILE_NAME)  # usable: trained on
    _labels_csv(folder)
    out = root / "mixed_runs"
    with _warnings() as seen:
        r = cli("train", *TINY, "--no-conditional", "--data", folder, "--out", out)
    assert_accepted(r)
    report, skipped = skipped_files(run_dirs(out)[0])
    assert report["images"] == 16 + 2 and report["skipped"] == len(names), report
    assert sorted(skipped) == sorted(files[n].name for n in names)
    assert any(f"skipped {len(names)} of {16 + 2 + len(names)} files" in m for m in seen), seen


# ----------------------------------------------------------------------------- 3. a bad file in a manifest
@pytest.mark.parametrize("case", [c for c in F.FILE_CASES if not c.usable and c.name != "ct_series_33mm_gap"],
                         ids=lambda c: c.name)
def test_train_on_a_manifest_listing_a_bad_file_refuses_it_by_name(case, files, root):
    """A manifest lists each file on purpose: an unusable one refuses the run, naming the file."""
    modality = "ct" if case.family == "nifti" else "xray"
    folder = root / "listed" / case.name
    csv = F.manifest_with_file(folder, files[case.name].resolve(), modality=modality)
    out = root / "listed_runs" / case.name
    r = cli("train", "--modality", modality, *TINY, "--no-conditional", "--data", csv, "--out", out)
    assert_refused(r, files[case.name].name.splitlines()[-1])
    assert run_dirs(out) == [], "a refused start left a run folder"


# ----------------------------------------------------------------------------- 4. CT geometry and units
def test_ct_series_with_a_gap_is_refused_naming_the_gap(files, root):
    series = files["ct_series_33mm_gap"]
    for dims in ("2", "3"):
        r = cli("train", "--modality", "ct", "--spatial-dims", dims, *TINY, "--no-conditional", "--data",
                series.parent, "--out", root / "gap_runs")
        line = assert_refused(r, "33 mm")
        assert "gap" in line and "series" in line, line
    assert run_dirs(root / "gap_runs") == []


@pytest.mark.parametrize("name", ["dcm_sc_8bit_claiming_ct"])
def test_8bit_display_grey_levels_are_refused_for_a_ct_run(name, files, root):
    """An 8-bit DICOM screen capture without rescale holds display grey levels 0..255, not
    Hounsfield units: a CT run refuses it (given alone, and listed in a manifest), naming the file.
    (PNG slices are a documented CT input taken as already-windowed grey, never read as HU.)"""
    path = files[name]
    r = cli("train", "--modality", "ct", *TINY, "--no-conditional", "--data", path, "--out", root / "sc_runs")
    assert_refused(r, path.name)
    csv = F.manifest_with_file(root / "sc_listed" / name, path.resolve(), modality="ct")
    r = cli("train", "--modality", "ct", *TINY, "--no-conditional", "--data", csv, "--out", root / "sc_runs")
    assert_refused(r, path.name)
    assert run_dirs(root / "sc_runs") == []


# ----------------------------------------------------------------------------- 5. broken manifests x commands
#: command -> the manifest cases it accepts (every other case is refused in one line). ``info``
#: reads no image (it counts missing files and duplicate rows); ``augment`` references files
#: without reading them.
ACCEPTS = {
    "info": {"duplicate_rows", "both_labels", "copy_two_patients", "missing_file", "mr_row"},
    "augment_data": {"duplicate_rows", "both_labels", "copy_two_patients", "mr_row"},
    "augment_synthetic": {"duplicate_rows", "both_labels", "copy_two_patients", "mr_row"},
    "train": {"duplicate_rows", "both_labels", "copy_two_patients"},  # loads split train only
    "benchmark": {"duplicate_rows", "both_labels"},
    "evaluate": {"duplicate_rows", "both_labels"},
    "report": {"duplicate_rows", "both_labels"},
    "generate_from": {"duplicate_rows", "both_labels"},
}
#: accepted cases a command is not run on here (each would train or evaluate for seconds; the
#: refusals are what this suite is about)
NOT_RUN = {("evaluate", "duplicate_rows"), ("evaluate", "both_labels"), ("report", "duplicate_rows"),
           ("report", "both_labels"), ("generate_from", "duplicate_rows"), ("generate_from", "both_labels")}


def _manifest_matrix():
    for command in ACCEPTS:
        for case in F.MANIFEST_CASES:
            if (command, case.name) not in NOT_RUN:
                yield pytest.param(command, case, id=f"{command}-{case.name}")


@pytest.mark.parametrize("command,case", list(_manifest_matrix()))
def test_command_on_a_broken_manifest(command, case, manifests, base_csv, root, request):
    csv = manifests[case.name]
    out = root / "out" / f"{command}-{case.name}"
    if command == "info":
        args = ["info", csv]
    elif command == "augment_data":
        args = ["augment", "--data", csv, "--synthetic", base_csv, "--out", out]
    elif command == "augment_synthetic":
        args = ["augment", "--synthetic", csv, "--out", out]
    elif command == "train":
        args = ["train", *TINY, "--data", csv, "--out", out]
    elif command == "benchmark":
        args = ["benchmark", "--data", csv, *BENCH_TINY, "--out", out]
    elif command == "evaluate":
        args = ["evaluate", request.getfixturevalue("dcgan_run"), "--data", csv, *EVAL_TINY]
    elif command == "report":
        args = ["report", request.getfixturevalue("dcgan_run"), "--data", csv, "--count", "8", "--encoder-steps", "1",
                "--out", out]
    else:
        args = ["generate", request.getfixturevalue("cyclegan_run"), "--from", csv, "--out", out]
    with _warnings() as seen:
        r = cli(*args)
    if case.name in ACCEPTS[command]:
        assert_accepted(r)
        if case.warns and command not in ("info", "augment_data", "augment_synthetic"):
            assert any(case.warns in m for m in seen), f"no warning about {case.warns}: {seen}"
        if case.warns and command == "info":
            assert "duplicate_rows: 2" in r.output, r.output
        return
    assert_refused(r, case.names or csv.name)
    assert not out.exists() or run_dirs(out) == [] and not any(out.iterdir()), f"a refused {command} left {out}"


# ----------------------------------------------------------------------------- 6. bad files through the other readers
BAD_FOR_READERS = ["dcm_zero_bytes", "dcm_truncated_pixels", "dcm_mr", "dcm_rgb", "png_truncated", "png_huge_claim",
                   "png_1x1"]


@pytest.mark.parametrize("command", ["evaluate", "report", "generate_from", "benchmark"])
@pytest.mark.parametrize("name", BAD_FOR_READERS)
def test_readers_of_real_data_refuse_a_bad_file_given_alone(command, name, files, root, request):
    """``--data FILE`` / ``--from FILE`` of a single unusable file: one line naming it."""
    path = files[name]
    out = root / "out1" / f"{command}-{name}"
    if command == "evaluate":
        args = ["evaluate", request.getfixturevalue("dcgan_run"), "--data", path, *EVAL_TINY]
    elif command == "report":
        args = ["report", request.getfixturevalue("dcgan_run"), "--data", path, "--count", "8", "--encoder-steps", "1",
                "--out", out]
    elif command == "benchmark":
        args = ["benchmark", "--data", path, *BENCH_TINY, "--out", out]
    else:
        args = ["generate", request.getfixturevalue("cyclegan_run"), "--from", path, "--out", out]
    assert_refused(cli(*args), path.name)
    assert not out.exists() or not any(out.iterdir()), f"a refused {command} left files in {out}"


def test_a_synthetic_set_of_another_size_is_refused_by_the_benchmark(dcgan_run, base_csv, root):
    """32 px synthetic PNGs into a 64 px benchmark: refused unless --resize-synthetic."""
    syn = root / "syn32"
    assert_accepted(cli("generate", dcgan_run, "--count", "8", "--out", syn))
    args = ["benchmark", "--data", base_csv, "--synthetic", syn / "manifest.csv", *BENCH_TINY]
    args[args.index("--size") + 1] = "64"
    line = assert_refused(cli(*args, "--out", root / "bench64"), "manifest.csv", "32x32")
    assert "--resize-synthetic" in line
    assert not (root / "bench64").exists()


# ----------------------------------------------------------------------------- 7. damaged runs (faults)
def _damage(run: Path, how: str) -> None:
    ck = run / "checkpoints" / "last.pt"
    if how == "truncated_checkpoint":
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    elif how == "zero_byte_checkpoint":
        ck.write_bytes(b"")
    elif how == "missing_checkpoint":
        ck.unlink()
    elif how == "garbage_config":
        (run / "config.yaml").write_text("model: [unclosed\n  : : :\n")
    elif how == "config_wrong_types":
        (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("width: 8", "width: eight"))
    elif how == "missing_config":
        (run / "config.yaml").unlink()


DAMAGES = ["truncated_checkpoint", "zero_byte_checkpoint", "missing_checkpoint", "garbage_config",
           "config_wrong_types", "missing_config"]
#: (damage, command) pairs that are accepted: ``generate`` builds the model from the config saved
#: in the checkpoint, so a damaged or missing config.yaml does not stop it
DAMAGE_ACCEPTED = {("garbage_config", "generate"), ("config_wrong_types", "generate"), ("missing_config", "generate")}
#: not run: evaluate/report also use the checkpoint's config; past it they would evaluate
DAMAGE_NOT_RUN = {(h, c) for h in ("garbage_config", "config_wrong_types") for c in ("evaluate", "report")}


@pytest.mark.parametrize("how,command", [(h, c) for h in DAMAGES for c in ("generate", "evaluate", "report", "resume")
                                         if (h, c) not in DAMAGE_NOT_RUN])
def test_damaged_run_is_refused_in_one_line(how, command, dcgan_run, root):
    """A run whose checkpoint is truncated, empty or gone, or whose config.yaml is garbage, has
    wrong types or is gone: one line naming the file (or the bad key), never a traceback."""
    run = root / "damaged" / f"{how}-{command}" / dcgan_run.name
    shutil.copytree(dcgan_run, run)
    _damage(run, how)
    if command == "generate":
        args = ["generate", run, "--count", "2", "--out", run.parent / "gen"]
    elif command == "evaluate":
        args = ["evaluate", run, *EVAL_TINY]
    elif command == "report":
        args = ["report", run, "--count", "8", "--encoder-steps", "1", "--out", run.parent / "rep"]
    else:
        args = ["train", "--resume", run, "--steps", "4", "--no-progress"]
    r = cli(*args)
    if (how, command) in DAMAGE_ACCEPTED:
        assert_accepted(r)
        return
    line = assert_refused(r)
    if "config" in how:
        assert "config.yaml" in line or "model.width" in line, line
    else:
        assert "last.pt" in line or "checkpoint" in line, line


# ----------------------------------------------------------------------------- 8. mistyped settings and options
BAD_SETTINGS = [("train.steps", "abc"), ("model.lr_g", "fast"), ("model.width", "-3"), ("train.checkpoint_every", "0"),
                ("train.batch_size", "0"), ("data.size", "63"), ("model.latent_dim", "1.5"), ("train.minutes", "-1"),
                ("model.ema_beta", "2"), ("model.betas", "[0.5]"), ("train.seed", "nan"), ("model.lr_d", "inf"),
                ("model.params.no_such_param", "1"), ("no_such.key", "1"), ("train.amp", "maybe"),
                ("data.ct_window", "bone"), ("train.steps", "1e400")]


@pytest.mark.parametrize("key,value", BAD_SETTINGS, ids=lambda v: str(v))
def test_train_refuses_a_bad_setting_naming_its_key(key, value, root):
    out = root / "set_runs"
    line = assert_refused(cli("train", *TINY, "--set", f"{key}={value}", "--out", out))
    assert key.split(".")[-1] in line, line
    assert run_dirs(out) == []


BAD_OPTIONS = [("train", ["--size", "63"], "size"), ("train", ["--steps", "-3"], "steps"),
               ("train", ["--batch-size", "0"], "batch"), ("train", ["--minutes", "-1"], "minutes"),
               ("train", ["--model", "no_such_gan"], "no_such_gan"),
               ("train", ["--preset", "no_such_preset"], "no_such_preset"),
               ("benchmark", ["--epochs", "0"], "--epochs"), ("benchmark", ["--fractions", "0,abc"], "--fractions"),
               ("benchmark", ["--size", "63"], "--size"),
               ("benchmark", ["--synthetic-ratio", "-1"], "--synthetic-ratio")]


@pytest.mark.parametrize("command,opts,names", BAD_OPTIONS, ids=lambda v: str(v))
def test_bad_option_values_are_one_line(command, opts, names, root):
    out = root / "opt_out" / "_".join(opts).replace("-", "")
    extra = ["--no-progress"] if command == "train" else []
    assert_refused(cli(command, *opts, *extra, "--out", out), names)
    assert run_dirs(out) == []


def test_generate_refuses_bad_counts_and_outputs(dcgan_run, root, unwritable):
    for opts, name in ((["--count", "-5"], "--count"), (["--count", "0"], "--count"), (["--class", "7"], "--class")):
        assert_refused(cli("generate", dcgan_run, *opts, "--out", root / "gen_bad"), name)
    a_file = root / "a_file.txt"
    a_file.write_text("x")
    for target in (a_file, Path("/proc/medsynth_out"), a_file / "sub", unwritable / "syn"):
        assert_refused(cli("generate", dcgan_run, "--count", "2", "--out", target), str(target))
    assert_usage_error(cli("generate", dcgan_run, "--truncation", "2"), "--truncation")
    assert not (root / "gen_bad").exists()


@pytest.fixture
def unwritable(root):
    """An existing folder this process cannot write: mode 500, or for root (whom modes do not
    stop) ``/sys/kernel`` (sysfs refuses new entries to everyone)."""
    if os.geteuid() == 0:
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys/kernel: no folder here resists writing")
        yield Path("/sys/kernel")
        return
    ro = root / "read_only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o500)
    yield ro
    ro.chmod(0o700)


def test_train_and_augment_refuse_unwritable_outputs(root, base_csv, unwritable):
    a_file = root / "b_file.txt"
    a_file.write_text("x")
    for target in (a_file, Path("/proc/medsynth_runs"), a_file / "sub", unwritable):
        assert_refused(cli("train", *TINY, "--data", base_csv, "--out", target), str(target))
    for target in (a_file, Path("/proc/medsynth_aug"), unwritable / "aug"):
        assert_refused(cli("augment", "--synthetic", base_csv, "--out", target), str(target))
