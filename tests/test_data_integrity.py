"""Issue 17, point 2: no silent wrong answers from the data layer.

Split integrity by content, duplicate rows, CT series geometry, Enhanced multi-frame CT, 8-bit
secondary captures in a CT run, modality/photometric checks, skipped files counted and named.
Every file is synthetic, built in ``tmp_path`` (helpers at the end of ``conftest.py``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    SOP_CLASS,
    write_ct_slice,
    write_dicom_image,
    write_dx,
    write_enhanced_ct,
    xray_image,
)
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medsynth.cli import app
from medsynth.data.dataset import load_image_set
from medsynth.data.info import describe
from medsynth.data.manifest import read_manifest
from medsynth.data.readers import read_image
from medsynth.errors import MedsynthError

runner = CliRunner()


def _one_error_line(r, *expect):
    """CLI result: exit code 2, one ``error:`` line holding every ``expect``, no traceback."""
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.output
    for e in expect:
        assert e in errors[0], errors[0]
    assert "Traceback" not in r.output
    return errors[0]


def _one_line(exc_info, *expect):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for e in expect:
        assert e in msg, msg
    return msg


def _manifest(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _xray_rows(base, n=10, start=0):
    """n DX files of n patients with alternating labels, 6/2/2 train/val/test; rows for a manifest."""
    rows = []
    sides = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    for i in range(start, start + n):
        write_dx(base / f"x{i}.dcm", xray_image(seed=i, lesion=i % 2 == 1), patient_id=f"P{i}")
        rows.append(dict(path=f"x{i}.dcm", label=i % 2, patient_id=f"P{i}", split=sides[(i - start) % 10]))
    return rows


# ----------------------------------------------------------------------------- split integrity
def test_same_file_under_two_patient_ids_on_two_sides_is_refused(tmp_path):
    rows = _xray_rows(tmp_path)
    rows.append(dict(path="x0.dcm", label=0, patient_id="P99", split="test"))  # x0 is P0's, in train
    csv = _manifest(tmp_path / "m.csv", rows)
    with pytest.raises(MedsynthError) as ei:
        read_manifest(csv)
    _one_line(ei, "x0.dcm is listed under 2 patient IDs", "P0 on line 2", "P99 on line 12")
    r = runner.invoke(app, ["benchmark", "--data", str(csv), "--n-seeds", "1", "--epochs", "1",
                            "--out", str(tmp_path / "b")])
    _one_error_line(r, "m.csv", "listed under 2 patient IDs")


def test_copy_of_an_image_on_two_sides_is_refused_naming_both(tmp_path):
    rows = _xray_rows(tmp_path)
    (tmp_path / "copy.dcm").write_bytes((tmp_path / "x1.dcm").read_bytes())  # P1's image (train)...
    rows.append(dict(path="copy.dcm", label=1, patient_id="P77", split="test"))  # ...as another test patient
    csv = _manifest(tmp_path / "m.csv", rows)
    with pytest.raises(MedsynthError) as ei:
        load_image_set(csv, modality="xray", size=16)
    _one_line(ei, "the same pixels are on two sides of the split", "x1.dcm (patient P1, train)",
              "copy.dcm (patient P77, test)")
    # the benchmark loads every split: it refuses before training anything
    r = runner.invoke(app, ["benchmark", "--data", str(csv), "--n-seeds", "1", "--epochs", "1",
                            "--out", str(tmp_path / "b")])
    _one_error_line(r, "same pixels are on two sides", "patient P77, test")
    assert not (tmp_path / "b").exists()


def test_content_check_covers_npz_folder_and_benchmark_sets(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (10, 16, 16)).astype(np.uint8)
    imgs[9] = imgs[0]  # p0's image again, as p9 in test
    np.savez(tmp_path / "s.npz", images=imgs, labels=np.arange(10) % 2, patient_ids=[f"p{i}" for i in range(10)],
             splits=["train"] * 6 + ["val"] * 2 + ["test"] * 2)
    with pytest.raises(MedsynthError) as ei:
        load_image_set(tmp_path / "s.npz", modality="xray", size=16)
    _one_line(ei, "s.npz#0 (patient p0, train)", "s.npz#9 (patient p9, test)")
    # a folder whose labels.csv puts a copy on the other side
    folder = tmp_path / "f"
    lines = ["path,label,patient_id,split"]
    for i, side in enumerate(["train", "train", "test", "test"]):
        write_dx(folder / f"a{i}.dcm", xray_image(seed=i), patient_id=f"Q{i}")
        lines.append(f"a{i}.dcm,{i % 2},Q{i},{side}")
    (folder / "a3.dcm").write_bytes((folder / "a0.dcm").read_bytes())
    lines[-1] = "a3.dcm,0,Q3,test"
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(MedsynthError, match=r"a0.dcm \(patient Q0, train\) and a3.dcm \(patient Q3, test\)"):
        load_image_set(folder, modality="xray", size=16)
    # an ImageSet built any other way is checked again by the benchmark itself
    from medsynth.data.imageset import ImageSet
    from medsynth.downstream.benchmark import run_benchmark

    x = torch.rand(8, 1, 8, 8) * 2 - 1
    x[7] = x[0]
    real = ImageSet(images=x, labels=torch.tensor([0, 1] * 4), patient_ids=[f"r{i}" for i in range(8)],
                    paths=[f"r{i}.png" for i in range(8)], splits=["train"] * 4 + ["test"] * 4, modality="xray")
    with pytest.raises(MedsynthError, match=r"r0.png \(patient r0, train\) and r7.png \(patient r7, test\)"):
        run_benchmark(real, None, fractions=(1.0,), seeds=(0,), epochs=1)


def test_duplicate_rows_and_copies_within_a_side_are_kept_once(tmp_path, caplog):
    rows = _xray_rows(tmp_path)
    rows += [dict(rows[0]), dict(rows[0]), dict(rows[3])]  # x0 twice more, x3 once more
    csv = _manifest(tmp_path / "m.csv", rows)
    with caplog.at_level(logging.WARNING, logger="medsynth"):
        ims = load_image_set(csv, modality="xray", size=16)
    assert len(ims) == 10 and sorted(ims.patient_ids) == sorted(f"P{i}" for i in range(10))
    assert "3 duplicate row(s) (a file listed again) kept once, e.g. line 12 repeats line 2 (x0.dcm)" in caplog.text
    assert describe(csv)["duplicate_rows"] == 3
    # a copy of an image (another file, same pixels) on the same side with the same label: kept once, named
    folder = tmp_path / "f"
    for i in range(4):
        write_dx(folder / f"P{i}" / "a.dcm", xray_image(seed=i), patient_id=f"P{i}")
    (folder / "P0" / "b.dcm").write_bytes((folder / "P0" / "a.dcm").read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medsynth"):
        ims = load_image_set(folder, modality="xray", size=16)
    assert len(ims) == 4 and ("P0/b.dcm", "same pixels as P0/a.dcm (duplicate kept once)") in ims.skipped
    assert "1 duplicate image(s) (same pixels, same split and label) kept once, e.g. P0/b.dcm = P0/a.dcm" in caplog.text
    # the same pixels with two labels are refused
    rows = _xray_rows(tmp_path / "g")
    (tmp_path / "g" / "c.dcm").write_bytes((tmp_path / "g" / "x0.dcm").read_bytes())
    rows.append(dict(path="c.dcm", label=1, patient_id="P0", split="train"))
    with pytest.raises(MedsynthError, match=r"the same pixels have two labels: x0.dcm \(label 0\) and c.dcm \(label 1\)"):
        load_image_set(_manifest(tmp_path / "g" / "m.csv", rows), modality="xray", size=16)


# ----------------------------------------------------------------------------- CT series geometry
def _series(folder, zs, *, hu=None, patient_id="C1", iop=None):
    uid = generate_uid()
    rng = np.random.default_rng(0)
    for k, z in enumerate(zs):
        img = hu[k] if hu is not None else rng.normal(-500, 200, (12, 12))
        write_ct_slice(folder / f"s{k:03d}.dcm", img, z=z, patient_id=patient_id, series_uid=uid, instance=k + 1)
    return uid


def test_uneven_ct_series_is_refused_naming_series_and_gap(tmp_path):
    zs = list(np.arange(10.0)) + list(np.arange(10.0) + 42.0)  # 1 mm slices, a 33 mm gap after slice 9
    uid = _series(tmp_path / "data" / "series1", zs)
    with pytest.raises(MedsynthError) as ei:
        load_image_set(tmp_path / "data", modality="ct", size=16)
    msg = _one_line(ei, f"series {uid}", "uneven slice spacing", "a 33 mm gap between slices 9 and 10",
                    "where the spacing is 1 mm", "series1")
    assert "C1" not in msg  # no patient identifier
    r = runner.invoke(app, ["train", "--modality", "ct", "--data", str(tmp_path / "data"), "--steps", "1",
                            "--size", "16", "--set", "model.width=8", "--out", str(tmp_path / "runs"), "--no-progress"])
    _one_error_line(r, "a 33 mm gap", uid)


def test_even_series_reports_true_spacing_and_handles_duplicate_and_missing_positions(tmp_path, caplog):
    uid = _series(tmp_path / "even", np.arange(8) * 1.25 + 0.004 * np.array([0, 1, -1, 0, 1, 0, -1, 0]))
    rec = read_image(tmp_path / "even")
    assert rec.meta["series_uid"] == uid and rec.array.shape == (8, 12, 12)
    assert abs(rec.spacing[0] - 1.25) < 1e-3  # the positions' spacing, not SliceThickness (2.5)
    # a slice written twice (same position, same pixels): kept once, with a warning
    hu = np.random.default_rng(1).normal(-500, 200, (5, 12, 12))
    uid2 = _series(tmp_path / "dup", [0, 1, 2, 3, 4], hu=hu)
    write_ct_slice(tmp_path / "dup" / "again.dcm", hu[2], z=2, series_uid=uid2, instance=9)
    with caplog.at_level(logging.WARNING, logger="medsynth"):
        rec = read_image(tmp_path / "dup")
    assert rec.array.shape[0] == 5 and rec.spacing[0] == pytest.approx(1.0)
    assert "1 duplicate slice(s) (same position, same pixels) kept once" in caplog.text
    # two different images at one position: refused
    write_ct_slice(tmp_path / "dup" / "other.dcm", hu[0], z=3, series_uid=uid2, instance=10)
    with pytest.raises(MedsynthError, match=r"1 slice position\(s\) hold two different images"):
        read_image(tmp_path / "dup")
    # some slices without a position: refused
    import pydicom

    uid3 = _series(tmp_path / "nopos", [0, 1, 2, 3])
    ds = pydicom.dcmread(tmp_path / "nopos" / "s002.dcm")
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "nopos" / "s002.dcm")
    with pytest.raises(MedsynthError) as ei:
        read_image(tmp_path / "nopos")
    _one_line(ei, f"series {uid3}: 1 of 4 slices have no ImagePositionPatient")


# ----------------------------------------------------------------------------- Enhanced multi-frame
def test_enhanced_ct_rescale_spacing_and_positions_from_functional_groups(tmp_path):
    stored = np.zeros((3, 8, 8), np.uint16)
    stored[:, :4] = 0
    stored[:, 4:] = 1196
    stored[1, 0, 0] = 600  # tell frames apart
    # the file: stored 0..1196, rescale -1024 only in the shared functional groups
    p = write_enhanced_ct(tmp_path / "e.dcm", stored, rescale=(1, -1024), z=[4.0, 0.0, 2.0], thickness=2.0,
                          spacing=(0.6, 0.7))
    rec = read_image(p)
    assert rec.array.min() == -1024 and rec.array.max() == 172  # was 0..1196
    assert rec.spacing == pytest.approx((2.0, 0.6, 0.7))
    assert rec.array[0, 0, 0] == 600 - 1024  # frames sorted by position: z 0 (frame 1), 2, 4
    assert rec.array[2, 0, 0] == -1024 and rec.meta["rescale"] == "functional groups (one for all frames)"
    d = describe(p)
    assert d["sop_class"].startswith("Enhanced CT Image Storage") and d["usable"]["ct"] == "yes"
    # per-frame rescale, each frame its own
    p2 = write_enhanced_ct(tmp_path / "e2.dcm", stored, per_frame_rescale=[(1, -1024), (2, -2048), (1, -1000)])
    rec = read_image(p2)
    assert rec.array[0].max() == 172 and rec.array[1].max() == 2 * 1196 - 2048 and rec.array[2].max() == 196
    assert rec.meta["rescale"] == "functional groups (per frame)"
    # through the loader: CT in HU, windowed like any CT
    ims = load_image_set(p, modality="ct", size=8, spatial_dims=3)
    assert ims.images.shape == (1, 1, 8, 8, 8)
    # refused clearly: no rescale anywhere; uneven frames; several stacks
    with pytest.raises(MedsynthError, match="Enhanced CT without RescaleSlope/RescaleIntercept in its functional"):
        read_image(write_enhanced_ct(tmp_path / "n.dcm", stored, rescale=None))
    with pytest.raises(MedsynthError, match="uneven slice spacing: a 30 mm gap between slices 1 and 2 where the spacing is 1 mm"):
        read_image(write_enhanced_ct(tmp_path / "u.dcm", stored, z=[0.0, 1.0, 31.0]))
    with pytest.raises(MedsynthError, match="3 frames share positions"):
        read_image(write_enhanced_ct(tmp_path / "s.dcm", stored, z=[0.0, 0.0, 1.0]))


# ----------------------------------------------------------------------------- modality / photometric
def test_8bit_secondary_capture_is_not_ct(tmp_path, caplog):
    grey = (np.arange(256, dtype=np.uint8).reshape(16, 16))
    folder = tmp_path / "ct"
    for i in range(3):
        write_ct_slice(folder / f"ct{i}.dcm", np.random.default_rng(i).normal(-400, 300, (16, 16)), patient_id=f"C{i}")
    sc = write_dicom_image(folder / "screen.dcm", grey, modality="CT", sop_class=SOP_CLASS["SC"])
    write_dicom_image(folder / "plain8.dcm", grey, modality="CT")  # CT SOP class, 8 bits, no rescale
    with caplog.at_level(logging.WARNING, logger="medsynth"):
        ims = load_image_set(folder, modality="ct", size=16)
    assert len(ims) == 3
    assert "skipped 2 of 5 files: 1 8-bit, no rescale, 1 secondary capture" in caplog.text
    reasons = dict(ims.skipped)
    assert "not CT Hounsfield units" in reasons["screen.dcm"] and "secondary capture" in reasons["screen.dcm"]
    assert "display grey levels 0..255" in reasons["plain8.dcm"]
    with pytest.raises(MedsynthError) as ei:
        load_image_set(sc, modality="ct", size=16)
    _one_line(ei, "8-bit secondary capture", "not CT Hounsfield units")
    r = runner.invoke(app, ["train", "--modality", "ct", "--data", str(sc), "--steps", "1", "--size", "16",
                            "--set", "model.width=8", "--out", str(tmp_path / "runs"), "--no-progress"])
    _one_error_line(r, "screen.dcm", "not CT Hounsfield units")
    assert describe(sc)["usable"]["ct"].startswith("no: 8-bit secondary capture")


def _mixed_folder(folder):
    for i in range(4):
        write_dx(folder / f"dx{i}.dcm", xray_image(seed=i), patient_id=f"P{i}")
    img = xray_image(seed=9)
    write_dicom_image(folder / "mr.dcm", img, modality="MR")
    write_dicom_image(folder / "us.dcm", np.stack([img // 16] * 3, -1).astype(np.uint8), modality="US")
    write_dicom_image(folder / "nm.dcm", img, modality="NM")
    rgb = np.stack([img // 16, img // 20, img // 24], -1).astype(np.uint8)
    write_dicom_image(folder / "rgb.dcm", rgb, modality="DX")
    write_dicom_image(folder / "ybr.dcm", rgb, modality="CR", photometric="YBR_FULL")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.dcm").write_text("not a DICOM file\n" * 20)


def test_folder_with_other_modalities_and_colour_keeps_only_xray(tmp_path, caplog):
    _mixed_folder(tmp_path / "f")
    with caplog.at_level(logging.INFO, logger="medsynth"):
        ims = load_image_set(tmp_path / "f", modality="xray", size=16)
    assert len(ims) == 4 and sorted(p.rsplit("/", 1)[-1] for p in ims.paths) == [f"dx{i}.dcm" for i in range(4)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # ONE summary line...
    assert ("skipped 7 of 11 files: 1 MR, 1 NM, 1 RGB, 1 US, 1 YBR_FULL, 1 empty file, 1 not DICOM"
            in warnings[0])
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.getMessage().startswith("skipped ")]
    assert len(infos) == 7  # ...and each file at info level
    reasons = dict(ims.skipped)
    assert reasons["mr.dcm"] == "DICOM modality MR, not an X-ray radiograph"
    assert reasons["rgb.dcm"].startswith("colour image (PhotometricInterpretation RGB)")
    assert reasons["empty.dcm"] == "empty file (0 bytes)" and "not a DICOM file" in reasons["notes.dcm"]
    assert set(reasons) == {"mr.dcm", "us.dcm", "nm.dcm", "rgb.dcm", "ybr.dcm", "empty.dcm", "notes.dcm"}
    # kept through subset/split and the on-disk cache
    assert ims.split("train").skipped == ims.skipped
    cached = [load_image_set(tmp_path / "f", modality="xray", size=16, cache_dir=tmp_path / "c") for _ in range(2)]
    assert cached[1].skipped == ims.skipped
    # `medsynth info` says what a load would skip
    assert describe(tmp_path / "f")["would_skip"]["xray"].startswith("skipped 7 of 11 files")
    assert describe(tmp_path / "f" / "mr.dcm")["usable"]["xray"] == "no: DICOM modality MR, not an X-ray radiograph"


def test_folder_of_only_mr_is_refused_and_a_manifest_with_mr_is_refused_with_a_count(tmp_path):
    for i in range(3):
        write_dicom_image(tmp_path / "mr" / f"m{i}.dcm", xray_image(seed=i), modality="MR", patient_id=f"M{i}")
    with pytest.raises(MedsynthError) as ei:
        load_image_set(tmp_path / "mr", modality="xray", size=16)
    _one_line(ei, "no xray images found: skipped 3 of 3 files: 3 MR")
    for m in ("xray", "ct"):
        r = runner.invoke(app, ["train", "--modality", m, "--data", str(tmp_path / "mr"), "--steps", "1",
                                "--size", "16", "--set", "model.width=8", "--out", str(tmp_path / "runs"),
                                "--no-progress"])
        _one_error_line(r, f"no {m} images found", "3 MR")
    rows = _xray_rows(tmp_path / "man")
    _mixed_folder(tmp_path / "man" / "odd")
    for name in ("mr", "us", "empty"):
        rows.append(dict(path=f"odd/{name}.dcm", label=0, patient_id=f"Z{name}", split="train"))
    csv = _manifest(tmp_path / "man" / "m.csv", rows)
    with pytest.raises(MedsynthError) as ei:
        load_image_set(csv, modality="xray", size=16)
    _one_line(ei, "refused 3 of 13 files: 1 MR, 1 US, 1 empty file listed for this xray run",
              "e.g. odd/mr.dcm: DICOM modality MR, not an X-ray radiograph")


def test_secondary_capture_in_xray_run_needs_an_xray_modality_and_mg_is_xray(tmp_path):
    folder = tmp_path / "x"
    write_dx(folder / "dx.dcm", xray_image(seed=0), patient_id="A")
    write_dicom_image(folder / "film.dcm", xray_image(seed=1), modality="CR", sop_class=SOP_CLASS["SC"], patient_id="B")
    write_dicom_image(folder / "mammo.dcm", xray_image(seed=2), modality="MG", patient_id="C")
    write_dicom_image(folder / "screen.dcm", xray_image(seed=3), modality="OT", sop_class=SOP_CLASS["SC"])
    ims = load_image_set(folder, modality="xray", size=16)
    assert sorted(p.rsplit("/", 1)[-1] for p in ims.paths) == ["dx.dcm", "film.dcm", "mammo.dcm"]
    assert ims.skipped == [("screen.dcm", "DICOM modality OT (secondary capture), not an X-ray radiograph")]


def test_lidc_crops_checked_by_content(tmp_path):
    from medsynth.data.lidc import load_lidc

    rng = np.random.default_rng(0)
    n = 20
    hu = rng.integers(-1000, 400, (n, 50, 50)).astype(np.int16)
    hu[19] = hu[18]  # one patient's crop twice
    np.savez(tmp_path / "nodules_axial_50px.npz", images=hu)
    pids = [f"L{i}" for i in range(n - 1)] + ["L18"]
    pd.DataFrame({"lidc_patient_id": pids, "malignancy_class": [i % 2 for i in range(n - 2)] + [0, 0]}).to_csv(
        tmp_path / "labels.csv", index=False)
    ims = load_lidc(tmp_path, size=16)
    assert len(ims) == n - 1 and ims.skipped == [("nodules_axial_50px.npz#19",
                                                  "same pixels as nodules_axial_50px.npz#18 (duplicate kept once)")]


def test_labels_csv_listing_a_file_under_two_patients_is_refused(tmp_path):
    for i in range(2):
        write_dx(tmp_path / f"a{i}.dcm", xray_image(seed=i), patient_id=f"Q{i}")
    (tmp_path / "labels.csv").write_text("path,label,patient_id\na0.dcm,0,Q0\na1.dcm,1,Q1\na0.dcm,0,Q5\n")
    with pytest.raises(MedsynthError) as ei:
        load_image_set(tmp_path, modality="xray", size=16)
    _one_line(ei, "labels.csv", "a0.dcm is listed under two patient IDs (Q0 on line 2, Q5 on line 4)")
