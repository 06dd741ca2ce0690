"""Input probes (issue 17): every probe class of the issue, run through the real command line.

Each probe is one ``medsynth`` command (a separate process, ``OMP_NUM_THREADS=1``) in a temporary
folder holding the inputs a hospital user has: odd folders, broken files, typos in options,
archives with other modalities (written by ``tests/fuzz_files.py``, seeded, 32 px). The study
writes a Markdown table: the issue's section, the probe class, the exact command (paths relative
to the temporary folder), the exit code, whether it is the expected one, the message printed (its
first line: the ``error:`` line of a refusal, else the line the probe looks for, else the first
warning, else the last line), a traceback flag, and for the probes whose proof is not a message
(privacy, lost work) the check made on the files the commands wrote.

The probe list follows the issue's four sections ("Tracebacks", "Silent wrong answers", "Lost or
mixed work", "Privacy"), one row per command of the issue. Tiny settings throughout (two training
steps, width 8, 32 px); the whole study takes a few minutes on 2 CPU cores.

Run it from the repository root (``tests/`` is imported for the input generators)::

    python -m pipelines.studies.input_probes --out reports/input_probes.md
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medsynth.atomic import write_text

log = logging.getLogger(__name__)

__all__ = ["Probe", "Outcome", "build_inputs", "probes", "run_probe", "render", "main"]

TINY = ["--size", "32", "--steps", "2", "--set", "model.width=8", "--set", "train.batch_size=4", "--no-progress"]
BENCH_TINY = ["--n-seeds", "1", "--fractions", "1.0", "--epochs", "1", "--n-boot", "10", "--min-steps", "0"]
#: distinctive strings planted in the privacy probe's input folder name and DICOM headers
PLANTED_DIR = "PATIENT_ZX81_ACC99172"
PLANTED = ("ZX81", "ACC99172")
RUN = "runs/00000-xray-dcgan"
CYCLE = "cycle/00000-xray-cyclegan"
PRIVACY_RUN = "runs_privacy/00000-xray-dcgan"


@dataclass
class Outcome:
    """What one probe printed and left behind."""

    code: int
    output: str
    message: str
    traceback: bool
    check: str = ""


@dataclass
class Probe:
    """One command of the issue's probe list.

    Attributes:
        section: the issue's section ("Tracebacks", "Silent wrong answers", ...).
        name: the probe class, as the issue words it.
        argv: the command's arguments after ``medsynth``.
        expect: the exit code the fixed command gives (2: refused in one line; 0: accepted, the
            message or check says what it did).
        pick: a regular expression of the line to show when the command succeeds.
        check: ``check(work folder, outcome) -> str``: a finding on the files written (privacy,
            lost work), shown in its own column.
        before: ``before(work folder)`` prepares the probe (runs first).
    """

    section: str
    name: str
    argv: list[str]
    expect: int = 2
    pick: str | None = None
    check: Callable[[Path, Outcome], str] | None = None
    before: Callable[[Path], None] | None = None


def _medsynth() -> list[str]:
    return [sys.executable, "-m", "medsynth.cli"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _message(code: int, output: str, pick: str | None) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    if not lines:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[0]
    if code != 0:
        return next((ln for ln in reversed(lines) if not ln.startswith(" ")), lines[-1])
    if pick:
        hit = [ln for ln in lines if re.search(pick, ln)]
        if hit:
            return hit[0]
    warnings = [ln for ln in lines if ln.startswith("WARNING")]
    return warnings[0] if warnings else lines[-1]


def run_probe(probe: Probe, work: Path, timeout: float = 600) -> Outcome:
    """Run one probe's command in ``work``; its output, picked message, traceback flag and check."""
    if probe.before is not None:
        probe.before(work)
    p = subprocess.run(_medsynth() + probe.argv, cwd=work, env=_env(), capture_output=True, text=True,
                       timeout=timeout, check=False)
    output = p.stderr + p.stdout
    out = Outcome(p.returncode, output, _message(p.returncode, output, probe.pick), "Traceback" in output)
    if probe.check is not None:
        out.check = probe.check(work, out)
    return out


def _cli(work: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """A setup command; fails the study when it fails."""
    p = subprocess.run(_medsynth() + [str(a) for a in args], cwd=work, env=_env(), capture_output=True, text=True,
                       timeout=timeout, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"setup `medsynth {shlex.join(map(str, args))}` failed:\n{p.stderr}{p.stdout}")
    return p


# ----------------------------------------------------------------------------- inputs
def _fuzz():
    from tests import fuzz_files  # the suite's generators: a checkout's tests/ folder

    return fuzz_files


def _privacy_set(folder: Path) -> Path:
    """48 DX radiographs (24 patients x 2) with the planted strings in the folder name and in
    PatientID, PatientName, InstitutionName, AccessionNumber and ReferringPhysicianName."""
    F = _fuzz()
    rows = []
    splits = ["train"] * 16 + ["val"] * 4 + ["test"] * 4
    for p in range(24):
        for j in range(2):
            rel = f"img/ZX81_{p:02d}_{j}.dcm"
            F.write_dx(folder / rel, F.radiograph(300 + 2 * p + j, lesion=p % 2 == 1), patient_id=f"ZX81-PID-{p}",
                       PatientName=f"PLANTED^ZX81^{p}", InstitutionName="ZX81 HOSPITAL", AccessionNumber=f"ACC99172{p}",
                       ReferringPhysicianName="ZX81^DOCTOR")
            rows.append(dict(path=rel, label=p % 2, patient_id=f"ZX81-PID-{p}", split=splits[p], modality="xray"))
    return F.write_rows(folder / "manifest.csv", rows)


def build_inputs(work: Path) -> None:
    """Write every input of the probes into ``work`` and train the runs they use."""
    F = _fuzz()
    data = work / "data"
    F.write_manifest_cases(data)
    rows = F.base_rows()
    F.write_rows(data / "manifest.csv", rows)
    F.write_rows(data / "domain_a.csv", [r for r in rows if r["label"] == 0])
    F.write_rows(data / "domain_b.csv", [r for r in rows if r["label"] == 1])
    files = F.write_file_cases(work / "cases")
    probes = work / "probes"
    for sub, names in {"mr_us_nm_rgb": ["dcm_mr", "dcm_us", "dcm_nm", "dcm_rgb"],
                       "sc_ct": ["dcm_sc_8bit_claiming_ct"]}.items():
        (probes / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy(files[n], probes / sub / files[n].name)
    shutil.copytree(files["ct_series_33mm_gap"], probes / "ct_gap")
    shutil.copy(files["enhanced_ct"], probes / "enhanced_ct.dcm")
    junk = probes / "with_junk"
    F.write_base_set(junk)
    shutil.copy(files["dcm_zero_bytes"], junk / "img" / "empty.dcm")
    shutil.copy(files["dcm_random_bytes"], junk / "img" / "not_dicom.dcm")
    unlabelled = probes / "unlabelled"
    F.write_base_set(unlabelled)  # no labels: a class-conditional start fails after its data loaded
    (probes / "a_file.txt").write_text("not a folder\n")
    (probes / "readonly").mkdir()
    (probes / "readonly").chmod(0o555)
    _privacy_set(work / "private" / PLANTED_DIR)
    _cli(work, "train", *TINY, "--data", "data/manifest.csv", "--out", "runs")
    _cli(work, "train", "--model", "cyclegan", *TINY, "--set", "train.batch_size=2", "--domain-a", "data/domain_a.csv",
         "--domain-b", "data/domain_b.csv", "--out", "cycle")
    _cli(work, "generate", RUN, "--count", "16", "--out", "syn32")
    shutil.copytree(work / RUN, work / "runs_lock" / Path(RUN).name)


# ----------------------------------------------------------------------------- checks
def _run_folders(work: Path, parent: str) -> int:
    p = work / parent
    return sum(1 for q in p.iterdir() if q.is_dir()) if p.is_dir() else 0


def _count_before(parent: str) -> Callable[[Path], None]:
    def before(work: Path) -> None:
        (work / f".count_{parent}").write_text(str(_run_folders(work, parent)))

    return before


def _count_after(parent: str) -> Callable[[Path, Outcome], str]:
    def check(work: Path, out: Outcome) -> str:
        before = int((work / f".count_{parent}").read_text())
        return f"run folders in {parent}/: {before} before, {_run_folders(work, parent)} after"

    return check


def _generate_twice(work: Path) -> None:
    _cli(work, "generate", RUN, "--count", "4", "--out", "syn_used")


def _used_folder_check(work: Path, out: Outcome) -> str:
    files = sorted(p.name for p in (work / "syn_used").iterdir())
    return f"syn_used/ still holds the first generate's {len(files)} files, unchanged"


def _planted_hits(work: Path) -> tuple[int, list[str]]:
    """Files written by train/generate/evaluate/report (the run's local/ record excepted) that
    contain a planted string (bytes, so checkpoints and PNG chunks count)."""
    roots = [work / PRIVACY_RUN, work / "reports_privacy"]
    files = [f for r in roots if r.exists() for f in r.rglob("*") if f.is_file() and "local" not in
             f.relative_to(r).parts]
    hits = [str(f.relative_to(work)) for f in files
            if any(s.encode() in f.read_bytes() for s in PLANTED)]
    return len(files), hits


def _privacy_check(work: Path, out: Outcome) -> str:
    n, hits = _planted_hits(work)
    local = work / PRIVACY_RUN / "local"
    in_local = [f.name for f in local.rglob("*") if f.is_file() and PLANTED[0].encode() in f.read_bytes()] \
        if local.is_dir() else []
    return (f"planted strings ({', '.join(PLANTED)}) found in {len(hits)} of {n} output files"
            + (f": {', '.join(hits[:5])}" if hits else "")
            + f"; the run's local/ record (never shared) holds the input path: {'yes' if in_local else 'no'}")


def _privacy_pipeline(work: Path) -> None:
    data = f"private/{PLANTED_DIR}/manifest.csv"
    _cli(work, "train", *TINY, "--data", data, "--out", "runs_privacy")
    _cli(work, "generate", PRIVACY_RUN, "--count", "8", "--format", "dicom", "--out", f"{PRIVACY_RUN}/synthetic_dicom")
    _cli(work, "generate", PRIVACY_RUN, "--count", "8", "--format", "nifti", "--out", f"{PRIVACY_RUN}/synthetic_nifti")
    _cli(work, "generate", PRIVACY_RUN, "--count", "8")
    _cli(work, "evaluate", PRIVACY_RUN, "--count", "32", "--encoder-steps", "20", "--repeats", "1", "--n-boot", "50")


def _real_figures(folder: Path) -> tuple[list[str], int]:
    """The figure files of ``folder`` that show real training images, and the number of images
    embedded in its report.html."""
    from medsynth.metrics.evaluate import REAL_IMAGE_FIGURES

    shown = sorted(f.name for f in folder.iterdir() if any(f.name.endswith(n) for n in REAL_IMAGE_FIGURES))
    html = (folder / "report.html").read_text() if (folder / "report.html").exists() else ""
    return shown, html.count("data:image")


def _report_real_check(work: Path, out: Outcome) -> str:
    folder = work / "reports_default" / Path(PRIVACY_RUN).name
    if not folder.is_dir():
        return "no report folder"
    shown, embedded = _real_figures(folder)
    first = (folder / "report.md").read_text().splitlines()[0] if (folder / "report.md").exists() else ""
    return (f"figures showing real training images in the report folder: {', '.join(shown) or 'none'}; images "
            f"embedded in report.html: {embedded} (synthetic samples, curves, plots); report.md line 1: {first[:60]!r}")


def _report_show_real_check(work: Path, out: Outcome) -> str:
    folder = work / "reports_real" / Path(PRIVACY_RUN).name
    if not folder.is_dir():
        return "no report folder"
    shown, embedded = _real_figures(folder)
    first = (folder / "report.md").read_text().splitlines()[0] if (folder / "report.md").exists() else ""
    return (f"figures showing real training images: {', '.join(shown) or 'none'}; images embedded in report.html: "
            f"{embedded}; report.md line 1: {first[:110]!r}")


def _checkpoint_images_check(run: str) -> Callable[[Path, Outcome], str]:
    def check(work: Path, out: Outcome) -> str:
        import torch

        from medsynth.runs import load_checkpoint

        ck = load_checkpoint(work / run / "checkpoints" / "last.pt")
        shaped = [k for k, v in ck["model"].items() if isinstance(v, torch.Tensor) and v.dim() == 4
                  and tuple(v.shape[-2:]) == (32, 32)]
        return f"image-shaped (N, C, 32, 32) tensors in the checkpoint's model state: {len(shaped)}" + (
            f" ({', '.join(shaped[:4])})" if shaped else "")

    return check


def _translation_mark_check(work: Path, out: Outcome) -> str:
    from PIL import Image

    pngs = sorted((work / "translated").glob("*.png"))
    if not pngs:
        return "no PNG written"
    with Image.open(pngs[0]) as im:
        text = dict(getattr(im, "text", {}) or {})
    return f"{pngs[0].name}: PNG text {text.get('medsynth:synthetic', '?')!r} synthetic, translation " \
           f"{text.get('medsynth:translation', '?')!r}; description {text.get('Description', '')[:70]!r}"


def _png_mark_check(work: Path, out: Outcome) -> str:
    from PIL import Image

    pngs = sorted((work / "syn_png").glob("*.png"))
    if not pngs:
        return "no PNG written"
    with Image.open(pngs[0]) as im:
        text = dict(getattr(im, "text", {}) or {})
    return f"{pngs[0].name}: PNG text chunks {sorted(text)}; medsynth:synthetic = {text.get('medsynth:synthetic')!r}"


def _nifti_mark_check(work: Path, out: Outcome) -> str:
    import nibabel as nib

    files = sorted((work / "syn_nifti").glob("*.nii*"))
    if not files:
        return "no NIfTI written"
    h = nib.load(str(files[0])).header
    descrip, intent = h["descrip"].item().decode(), h["intent_name"].item().decode()
    return f"{files[0].name}: descrip {descrip!r}, intent_name {intent!r}"


def _dup_stats_check(work: Path, out: Outcome) -> str:
    import json

    run = work / "runs_lock" / Path(RUN).name
    steps = [json.loads(ln)["step"] for ln in (run / "stats.jsonl").read_text().splitlines() if ln.strip()]
    return f"stats.jsonl: {len(steps)} lines, {len(steps) - len(set(steps))} duplicate steps"


# ----------------------------------------------------------------------------- the probe list
def _unwritable() -> str:
    """An existing folder this process cannot write: ``probes/readonly`` (mode 555), or for root,
    whom permissions do not stop, ``/sys/kernel`` (sysfs refuses new entries to everyone)."""
    return "/sys/kernel" if os.geteuid() == 0 and Path("/sys/kernel").is_dir() else "probes/readonly"


def probes() -> list[Probe]:
    """The issue's probe list, in its order."""
    T, S, L, P = "Tracebacks", "Silent wrong answers", "Lost or mixed work", "Privacy"
    small = ["--data", "data/manifest.csv", "--size", "32", "--set", "model.width=8", "--no-progress"]
    ro = _unwritable()
    return [
        Probe(T, "train --out pointing at a file", ["train", *TINY, "--data", "data/manifest.csv", "--out",
                                                    "probes/a_file.txt"]),
        Probe(T, "train --out under /proc", ["train", *TINY, "--data", "data/manifest.csv", "--out",
                                             "/proc/medsynth_runs"]),
        Probe(T, "train --out a folder that cannot be written", ["train", *TINY, "--data", "data/manifest.csv",
                                                                 "--out", ro]),
        Probe(T, "generate --out pointing at a file", ["generate", RUN, "--count", "4", "--out", "probes/a_file.txt"]),
        Probe(T, "generate --out under /proc", ["generate", RUN, "--count", "4", "--out", "/proc/medsynth_out"]),
        Probe(T, "generate --out a folder that cannot be written", ["generate", RUN, "--count", "4", "--out",
                                                                    f"{ro}/medsynth_syn"]),
        Probe(T, "--set train.steps=abc", ["train", *small, "--set", "train.steps=abc"]),
        Probe(T, "--set model.lr_g=fast", ["train", *small, "--steps", "2", "--set", "model.lr_g=fast"]),
        Probe(T, "--set model.width=-3", ["train", "--data", "data/manifest.csv", "--size", "32", "--steps", "2",
                                          "--set", "model.width=-3", "--no-progress"]),
        Probe(T, "--set train.checkpoint_every=0", ["train", *small, "--steps", "2", "--set",
                                                    "train.checkpoint_every=0"]),
        Probe(T, "--size 63", ["train", "--data", "data/manifest.csv", "--size", "63", "--steps", "2", "--set",
                               "model.width=8", "--no-progress"]),
        Probe(T, "generate --count -5", ["generate", RUN, "--count", "-5", "--out", "syn_neg"]),

        Probe(S, "same image under two patient IDs, train and test (benchmark)",
              ["benchmark", "--data", "data/copy_two_patients.csv", "--size", "32", *BENCH_TINY, "--out",
               "bench_leak"]),
        Probe(S, "same file listed under two patient IDs (train)",
              ["train", *TINY, "--data", "data/same_path_two_patients.csv", "--out", "runs_x"]),
        Probe(S, "duplicate manifest rows (train)", ["train", *TINY, "--data", "data/duplicate_rows.csv", "--out",
                                                     "runs_dup"], expect=0, pick="duplicate"),
        Probe(S, "CT series with a 33 mm gap (3D CT train)",
              ["train", "--modality", "ct", "--spatial-dims", "3", "--size", "16", "--steps", "2", "--set",
               "model.width=8", "--no-conditional", "--data", "probes/ct_gap", "--no-progress", "--out", "runs_ct"]),
        Probe(S, "Enhanced CT: rescale in the functional groups (info)", ["info", "probes/enhanced_ct.dcm"], expect=0,
              pick=r"^intensity"),
        Probe(S, "8-bit secondary capture claiming CT (CT train)",
              ["train", "--modality", "ct", *TINY, "--no-conditional", "--data", "probes/sc_ct", "--out", "runs_ct"]),
        Probe(S, "--modality xray on a folder of MR, US, NM and RGB files",
              ["train", "--modality", "xray", *TINY, "--no-conditional", "--data", "probes/mr_us_nm_rgb", "--out",
               "runs_mr"]),
        Probe(S, "--modality ct on a folder of MR, US, NM and RGB files",
              ["train", "--modality", "ct", *TINY, "--no-conditional", "--data", "probes/mr_us_nm_rgb", "--out",
               "runs_mr"]),
        Probe(S, "zero-byte and non-DICOM .dcm files in a training folder",
              ["train", *TINY, "--no-conditional", "--data", "probes/with_junk", "--out", "runs_junk"], expect=0,
              pick="skipped"),
        Probe(S, "32 px synthetic PNGs into a 64 px benchmark",
              ["benchmark", "--data", "data/manifest.csv", "--synthetic", "syn32/manifest.csv", "--size", "64",
               *BENCH_TINY, "--out", "bench_64"]),
        Probe(S, "--batch-size 0", ["train", *small, "--steps", "2", "--batch-size", "0", "--out", "runs_b0"]),
        Probe(S, "--steps -3", ["train", *small, "--steps", "-3", "--out", "runs_s3"]),

        Probe(L, "generate --out into a used folder", ["generate", RUN, "--count", "2", "--out", "syn_used"],
              before=_generate_twice, check=_used_folder_check),
        Probe(L, "--resume ignoring --set", ["train", "--resume", RUN, "--steps", "4", "--set", "model.width=16",
                                             "--no-progress"]),
        Probe(L, "--resume ignoring --data", ["train", "--resume", RUN, "--steps", "4", "--data",
                                              f"private/{PLANTED_DIR}/manifest.csv", "--no-progress"]),
        Probe(L, "--resume ignoring --modality", ["train", "--resume", RUN, "--steps", "4", "--modality", "ct",
                                                  "--no-progress"]),
        Probe(L, "--resume ignoring --model", ["train", "--resume", RUN, "--steps", "4", "--model", "wgan_gp",
                                               "--no-progress"]),
        Probe(L, "--resume with an allowed change (--steps)", ["train", "--resume", RUN, "--steps", "4",
                                                               "--no-progress"], expect=0, pick="^resume:"),
        Probe(L, "a failed train leaves a half-made run folder",
              ["train", *TINY, "--conditional", "--data", "probes/unlabelled", "--out", "runs_fail"],
              before=_count_before("runs_fail"),
              check=_count_after("runs_fail")),

        Probe(P, "input path and headers in config, checkpoint, evaluation, report (train -> generate -> evaluate "
                 "-> report)", ["report", PRIVACY_RUN, "--out", "reports_privacy"], expect=0, pick="^report",
              before=_privacy_pipeline, check=_privacy_check),
        Probe(P, "report embeds real training images (default)", ["report", PRIVACY_RUN, "--out", "reports_default"],
              expect=0, pick="^report", check=_report_real_check),
        Probe(P, "report --show-real says it holds patient images", ["report", PRIVACY_RUN, "--show-real", "--out",
                                                                     "reports_real"], expect=0, pick="^report",
              check=_report_show_real_check),
        Probe(P, "CycleGAN generate without --from (translations of training images)",
              ["generate", CYCLE, "--count", "4", "--out", "cyc_syn"], check=_checkpoint_images_check(CYCLE)),
        Probe(P, "CycleGAN translates only the images passed in, marked as translations",
              ["generate", CYCLE, "--from", "data/domain_a.csv", "--out", "translated"], expect=0,
              pick="^translated", check=_translation_mark_check),
        Probe(P, "synthetic PNG carries the synthetic marking in the file", ["generate", RUN, "--count", "2",
                                                                             "--out", "syn_png"], expect=0,
              check=_png_mark_check),
        Probe(P, "synthetic NIfTI carries the synthetic marking in the file",
              ["generate", RUN, "--count", "2", "--format", "nifti", "--out", "syn_nifti"], expect=0,
              check=_nifti_mark_check),
    ]


def concurrent_resume(work: Path) -> tuple[list[str], Outcome]:
    """Two ``train --resume`` processes on one run: the second, started while the first trains,
    must be refused naming the process that holds the run; the first is then killed (-9)."""
    run = f"runs_lock/{Path(RUN).name}"
    argv = ["train", "--resume", run, "--steps", "100000", "--no-progress"]
    first = subprocess.Popen(_medsynth() + argv, cwd=work, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        lock = work / run / ".lock"
        while not (lock.exists() and "pid" in lock.read_text()):
            if first.poll() is not None or time.monotonic() > deadline:
                return argv, Outcome(first.returncode or -1, "", "the first writer never held the lock", False)
            time.sleep(0.1)
        time.sleep(1.0)  # the first writer is training now
        second = subprocess.run(_medsynth() + argv, cwd=work, env=_env(), capture_output=True, text=True,
                                timeout=600, check=False)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    output = second.stderr + second.stdout
    out = Outcome(second.returncode, output, _message(second.returncode, output, None), "Traceback" in output)
    out.check = f"first writer pid {first.pid} (killed -9 afterwards); " + _dup_stats_check(work, out)
    return argv, out


# ----------------------------------------------------------------------------- the table
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ").strip()


def render(rows: list[tuple[Probe, list[str], Outcome]], seconds: float) -> str:
    """The Markdown report: one table row per probe."""
    n_tb = sum(o.traceback for _, _, o in rows)
    n_bad = sum(o.code != p.expect for p, _, o in rows)
    lines = [
        "# Input probes (issue 17)",
        "",
        "Every probe class of issue 17 run through the real command line, one process per command, in a temporary "
        "folder (`python -m pipelines.studies.input_probes --out reports/input_probes.md`; inputs from "
        "`tests/fuzz_files.py`, 32 px, two training steps). Paths are relative to that folder: `data/` the valid "
        "base set (16 DX images, 8 patients) and its broken manifests, `probes/` the odd inputs, `private/"
        f"{PLANTED_DIR}/` a set with {', '.join(PLANTED)} planted in its folder name and DICOM headers, `{RUN}` a "
        f"two-step DCGAN run, `{CYCLE}` a two-step CycleGAN run. `expected` is the exit code of the fixed "
        "behaviour (2: refused in one line; 0: accepted, the message or check saying what was done).",
        "",
        f"{len(rows)} probes in {seconds:.0f} s: {n_tb} traceback(s), {n_bad} unexpected exit code(s).",
        "",
        "| # | section | probe class | command | exit | expected | message (first line) | traceback | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (p, argv, o) in enumerate(rows, 1):
        cmd = "medsynth " + shlex.join(argv)
        ok = "yes" if o.code == p.expect else f"**no** ({p.expect})"
        lines.append(f"| {i} | {p.section} | {_cell(p.name)} | `{_cell(cmd)}` | {o.code} | {ok} | {_cell(o.message)} | "
                     f"{'**TRACEBACK**' if o.traceback else ''} | {_cell(o.check)} |")
    return "\n".join(lines) + "\n"


def run_all(work: Path) -> tuple[list[tuple[Probe, list[str], Outcome]], float]:
    """Build the inputs in ``work``, run every probe (and the two-writer probe after the lost-work
    probes); returns the rows and the seconds taken."""
    t0 = time.perf_counter()
    build_inputs(work)
    rows = []
    for probe in probes():
        log.info("probe: %s", probe.name)
        out = run_probe(probe, work)
        rows.append((probe, probe.argv, out))
        if probe.name == "--resume ignoring --model":
            argv, out2 = concurrent_resume(work)
            rows.append((Probe("Lost or mixed work", "two train --resume processes on one run", argv), argv, out2))
    return rows, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("reports/input_probes.md"), help="the Markdown table")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a "
                                                             "temporary folder, removed)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.keep is not None:
        a.keep.mkdir(parents=True, exist_ok=False)
        rows, seconds = run_all(a.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="medsynth-probes-") as tmp:
            rows, seconds = run_all(Path(tmp))
            (Path(tmp) / "probes" / "readonly").chmod(0o755)
    write_text(a.out, render(rows, seconds))
    log.info("wrote %s (%d probes, %.0f s)", a.out, len(rows), seconds)
