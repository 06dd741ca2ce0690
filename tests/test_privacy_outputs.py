"""Privacy by default: nothing patient-identifying leaves in an output.

One train -> generate (PNG, DICOM, NIfTI) -> evaluate -> report run through the command line, on a
tiny DICOM DX folder whose path holds a planted accession-number string and whose headers carry
planted PatientName / PatientID / AccessionNumber / InstitutionName / StudyDescription values. Then
every file of the run directory (except its declared local folder, ``RUN/local/``) and of the report
folder is read as bytes and in every decoded form the scanner knows (zip members of torch
checkpoints, gzip of NIfTI, PNG text chunks, DICOM element values, the HTML's embedded images): no
planted string and no part of the input path may appear. The scanner itself is shown to find the
plants where they are (the input files, the local record).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_dx, xray_image
from medsynth.cli import app

pydicom = pytest.importorskip("pydicom")

pytestmark = pytest.mark.usefixtures("one_thread")

#: the planted folder name (an accession number, as hospital exports name them) and header values
PLANTED_FOLDER = "ACC-PLANTED-7731"
PLANTED_HEADERS = {
    "PatientName": "PLANTEDNAME^QUINCE^ZORA",
    "PatientID": "PID-PLANTED-5519",
    "AccessionNumber": "ACC-PLANTED-3382",
    "InstitutionName": "PLANTED-INSTITUTE-9047",
    "StudyDescription": "PLANTED-STUDY-2286",
}
#: every planted value contains this token; the scan looks for it case-insensitively (and each value)
TOKEN = b"planted"
N_IMAGES = 48

runner = CliRunner()


def invoke(*args):
    r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def make_planted_folder(root: Path) -> Path:
    """``root/hospital/ACC-PLANTED-7731/dx/``: 48 DICOM DX files of 48 patients, planted headers,
    labels.csv (half with a lesion)."""
    folder = root / "hospital" / PLANTED_FOLDER / "dx"
    rows = ["path,label"]
    for i in range(N_IMAGES):
        rel = f"IM_{i:04d}.dcm"
        path = write_dx(folder / rel, xray_image(seed=i, lesion=i % 2 == 1),
                        patient_id=f"{PLANTED_HEADERS['PatientID']}-{i:02d}")
        ds = pydicom.dcmread(path)
        for key, value in PLANTED_HEADERS.items():
            if key != "PatientID":
                setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)
        rows.append(f"{rel},{i % 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


# ---- the scanner ---------------------------------------------------------------------------------


def _dicom_text(data: bytes) -> bytes:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:  # not DICOM after all: the raw bytes were scanned anyway
        return b""
    out = []

    def visit(dataset):
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
            elif elem.tag != 0x7FE00010:  # pixel data
                out.append(str(elem.value))

    visit(ds.file_meta)
    visit(ds)
    return "\n".join(out).encode("utf-8", "replace")


def _png_chunks(data: bytes) -> list[bytes]:
    """The PNG's text chunks, zTXt/iTXt decompressed."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos: pos + 4], "big")
        kind, body = data[pos + 4: pos + 8], data[pos + 8: pos + 8 + length]
        if kind == b"tEXt":
            out.append(body)
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out.append(key + b"\0" + zlib.decompress(rest[1:]))
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _, _, rest = rest.partition(b"\0")  # language tag
            _, _, text = rest.partition(b"\0")  # translated keyword
            out.append(key + b"\0" + (zlib.decompress(text) if compressed else text))
        pos += 12 + length
    return out


def decoded_forms(data: bytes, depth: int = 0) -> list[bytes]:
    """``data`` and everything the scanner can decode from it (recursively)."""
    forms = [data]
    if depth > 3:
        return forms
    if data[:2] == b"\x1f\x8b":
        forms += decoded_forms(gzip.decompress(data), depth + 1)
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for name in z.namelist():
                forms.append(name.encode())
                forms += decoded_forms(z.read(name), depth + 1)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        forms += _png_chunks(data)
    if data[128:132] == b"DICM":
        forms.append(_dicom_text(data))
    if data[:16].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        for b64 in re.findall(rb"data:image/png;base64,([A-Za-z0-9+/=]+)", data):
            forms += decoded_forms(base64.b64decode(b64), depth + 1)
    return forms  # a NIfTI header (descrip, intent name, extensions) is plain bytes once un-gzipped


def leaks(data: bytes, needles: list[bytes]) -> list[str]:
    """The needles found in ``data`` or its decoded forms (the token case-insensitively)."""
    found = set()
    for form in decoded_forms(data):
        low = form.lower()
        if TOKEN in low:
            found.add(TOKEN.decode())
        found |= {n.decode() for n in needles if n in form}
    return sorted(found)


def files_to_share(run: Path, report: Path) -> list[Path]:
    """Every file of the run directory except its local folder, and every file of the report folder."""
    local = run / "local"
    return sorted([p for p in run.rglob("*") if p.is_file() and local not in p.parents]
                  + [p for p in report.rglob("*") if p.is_file()])


# ---- the pipeline --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """train -> generate (png, dicom, nifti) -> evaluate -> report on the planted folder; returns paths."""
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("privacy")
    data = make_planted_folder(tmp)
    invoke("train", "--modality", "xray", "--data", data, "--size", "32", "--steps", "2", "--set", "model.width=8",
           "--set", "model.latent_dim=16", "--set", "train.batch_size=16", "--out", tmp / "runs", "--no-progress")
    run = next((tmp / "runs").glob("*-xray-dcgan"))
    for fmt in ("png", "dicom", "nifti"):
        invoke("generate", run, "--count", "4", "--format", fmt, "--out", run / f"synthetic_{fmt}")
    invoke("evaluate", run, "--count", "24", "--encoder-steps", "3", "--repeats", "1", "--n-boot", "20")
    invoke("report", run, "--out", tmp / "reports")
    return {"data": data, "run": run, "report": tmp / "reports" / run.name, "tmp": tmp}


def test_no_planted_string_or_input_path_in_any_shared_output(pipeline):
    data, run, report = pipeline["data"], pipeline["run"], pipeline["report"]
    needles = [str(data).encode(), str(data.resolve()).encode(), str(data.parent.parent).encode(),
               PLANTED_FOLDER.encode(), *(v.encode() for v in PLANTED_HEADERS.values()),
               *(part.encode() for v in PLANTED_HEADERS.values() for part in v.split("^"))]
    files = files_to_share(run, report)
    names = {str(p.relative_to(run if run in p.parents else report)) for p in files}
    # every kind of output is there to be scanned
    assert {"config.yaml", "stats.jsonl", "checkpoints/last.pt", "evaluate/evaluation.json", "evaluate/evaluation.md",
            "evaluate/encoder.pt", "report.html", "report.md", "report.json"} <= names, names
    for fmt, ext in (("png", ".png"), ("dicom", ".dcm"), ("nifti", ".nii.gz")):
        assert sum(n.startswith(f"synthetic_{fmt}/") and n.endswith(ext) for n in names) == 4, fmt
        assert f"synthetic_{fmt}/manifest.csv" in names
    assert any(n.startswith("samples/") for n in names)
    found = {str(p): leaks(p.read_bytes(), needles) for p in files}
    found = {p: hit for p, hit in found.items() if hit}
    assert not found, f"patient-identifying strings in shared outputs: {found}"


def test_the_scanner_finds_the_plants_where_they_are(pipeline):
    """The scan is not blind: it finds each planted header in an input file, the path in the local record."""
    data, run = pipeline["data"], pipeline["run"]
    raw = (data / "IM_0000.dcm").read_bytes()
    hits = leaks(raw, [v.encode() for v in PLANTED_HEADERS.values()])
    assert set(PLANTED_HEADERS.values()) <= set(hits)
    local = json.loads((run / "local" / "data_source.json").read_text())
    assert local["source"] == str(data.resolve()) and "do not share" in local["warning"]
    assert leaks((run / "local" / "data_source.json").read_bytes(), [PLANTED_FOLDER.encode()])
    # and it sees through compression: a zipped, gzipped, PNG-chunked plant is found
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("Comment", PLANTED_HEADERS["StudyDescription"], zip=True)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(buf, format="PNG", pnginfo=info)
    assert PLANTED_HEADERS["StudyDescription"].encode() not in buf.getvalue()  # compressed away in the raw bytes
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x/data.pkl", gzip.compress(buf.getvalue()))
    assert leaks(zbuf.getvalue(), [PLANTED_HEADERS["StudyDescription"].encode()])


def test_the_run_records_its_data_by_name_and_fingerprint(pipeline):
    run = pipeline["run"]
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", cfg["data"]["source"])
    assert cfg["data"]["source"] == cfg["data"]["fingerprint"]
    ev = json.loads((run / "evaluate" / "evaluation.json").read_text())
    assert ev["real_source"] == "run" and ev["run_data_fingerprint"] == cfg["data"]["fingerprint"]
    assert ev["real_train_fingerprint"] == cfg["data"]["fingerprint"]  # evaluated against what the run saw
    rep = json.loads((pipeline["report"] / "report.json").read_text())
    assert rep["summary"]["data_source"] == cfg["data"]["source"] and rep["contains_patient_images"] is False


def test_without_the_local_record_evaluate_report_and_resume_ask_for_data(pipeline, tmp_path):
    import shutil

    run = tmp_path / pipeline["run"].name
    shutil.copytree(pipeline["run"], run, ignore=shutil.ignore_patterns("local", "evaluate"))
    for args in (["evaluate", run, "--count", "24"], ["report", run, "--out", tmp_path / "r"],
                 ["train", "--resume", run, "--steps", "3", "--no-progress"]):
        r = runner.invoke(app, [str(a) for a in args])
        lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1, r.output
        assert lines[0].startswith("error: ") and "local/data_source.json" in lines[0] and "--data" in lines[0]
        assert "Traceback" not in r.output


def test_resume_reloads_the_data_through_the_local_record_and_refuses_other_data(pipeline, tmp_path):
    import shutil

    run = tmp_path / pipeline["run"].name
    shutil.copytree(pipeline["run"], run)
    from medsynth.runs import load_checkpoint

    invoke("train", "--resume", run, "--steps", "3", "--no-progress")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    # other images than the run trained on: refused in one line (the run would not continue exactly)
    other = tmp_path / "other"
    other.mkdir()
    for i in range(N_IMAGES):
        write_dx(other / f"O{i}.dcm", xray_image(seed=100 + i), patient_id=f"O{i}")
    r = runner.invoke(app, ["train", "--resume", str(run), "--data", str(other), "--steps", "4", "--no-progress"])
    assert r.exit_code == 2 and "other images than the run was trained on" in r.output, r.output


def test_a_declared_data_root_records_the_relative_path(tmp_path, monkeypatch):
    data = make_planted_folder(tmp_path)
    root = data.parent.parent  # .../hospital: the part below it is what the user declared shareable
    r = runner.invoke(app, ["train", "--modality", "xray", "--data", str(data), "--data-root", str(root), "--size",
                            "16", "--steps", "1", "--set", "model.width=4", "--set", "model.latent_dim=8", "--out",
                            str(tmp_path / "runs"), "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs").glob("*"))
    text = (run / "config.yaml").read_text()
    assert f"source: data-root:{PLANTED_FOLDER}/dx" in text and str(root) not in text
    monkeypatch.setenv("MEDSYNTH_DATA_ROOT", str(tmp_path / "nope"))
    r = runner.invoke(app, ["train", "--data", str(data), "--steps", "1", "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "MEDSYNTH_DATA_ROOT" in r.output and "not a folder" in r.output


def test_cyclegan_generate_translates_only_the_images_passed_in_and_says_so(tmp_path):
    import pandas as pd
    from PIL import Image

    from medsynth.cli import default_data
    from medsynth.runs import load_checkpoint

    invoke("train", "--modality", "xray", "--model", "cyclegan", "--size", "16", "--steps", "2", "--set",
           "model.width=4", "--out", tmp_path / "runs", "--no-progress")
    run = next((tmp_path / "runs").glob("*-xray-cyclegan"))
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert not any(k.startswith(("pool_", "examples_")) for k in state)
    # no --from: nothing to translate, and no stored real image to fall back on
    r = runner.invoke(app, ["generate", str(run), "--count", "4", "--out", str(tmp_path / "none")])
    assert r.exit_code == 2 and "--from" in r.output and "translating the images you pass in" in r.output
    assert not (tmp_path / "none").exists()
    png_dir = default_data().parent / "xray" / "png"
    invoke("generate", run, "--from", png_dir, "--direction", "a2b", "--format", "png", "--out", tmp_path / "tr")
    df = pd.read_csv(tmp_path / "tr" / "manifest.csv")
    assert len(df) == len(list(png_dir.glob("*.png"))) and set(df["source"]) == {"translated"}
    assert all(p.startswith("translated_") for p in df["path"])
    assert all(i.startswith("TRANSLATED-") for i in df["patient_id"])
    with Image.open(tmp_path / "tr" / df["path"][0]) as im:
        im.load()
        text = dict(im.text)
    assert text["medsynth:synthetic"] == "false" and text["medsynth:translation"] == "true"
    assert "NOT SYNTHETIC: derived from patient data" in text["Description"]
