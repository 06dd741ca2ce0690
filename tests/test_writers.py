"""Tests for medsynth.data.writers: PNG, NIfTI, DICOM DX, DICOM CT series, synthetic sets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsynth.data.windows import unit_to_hu
from medsynth.data.writers import (
    CT_INTERCEPT,
    SyntheticInfo,
    nifti_affine,
    write_ct_series,
    write_dicom_dx,
    write_nifti,
    write_png,
    write_synthetic_set,
)
from medsynth.errors import MedsynthError

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

DCIODVFY = shutil.which("dciodvfy")
INFO = SyntheticInfo(model="dcgan", run="00003-xray-dcgan", seed=5)


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of dciodvfy output that report errors."""
    res = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if "Error" in ln]


def _no_temp_files(folder: Path):
    assert not [p for p in folder.rglob(".*") if p.is_file()], "temporary files left behind"


@pytest.fixture
def dx12():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4096, (24, 32)).astype(np.uint16)
    img[0, 0], img[0, 1] = 0, 4095
    return img


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("compress", [False, True])
def test_dx_round_trip_and_photometric(tmp_path, dx12, photometric, compress):
    p = write_dicom_dx(tmp_path / "a.dcm", dx12, pixel_spacing=(0.5, 0.6), photometric=photometric,
                       patient_id="PHANTOM-0007", patient_name="Phantom^0007", compress=compress)
    ds = pydicom.dcmread(p)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    assert ds.Modality == "DX" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.PhotometricInterpretation == photometric
    assert ds.BitsStored == 12 and ds.Manufacturer == "medsynth"
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.5, 0.6]
    stored = ds.pixel_array
    if photometric == "MONOCHROME1":
        np.testing.assert_array_equal(stored, 4095 - dx12)  # inverted on disk
        assert ds.PresentationLUTShape == "INVERSE"
    else:
        np.testing.assert_array_equal(stored, dx12)
    # a reader applying the MONOCHROME1 inversion sees the original appearance
    shown = (4095 - stored) if photometric == "MONOCHROME1" else stored
    np.testing.assert_array_equal(shown, dx12)
    _no_temp_files(tmp_path)


def test_dx_appearance_through_project_reader(tmp_path, dx12):
    readers = pytest.importorskip("medsynth.data.readers")
    a = readers.read_image(write_dicom_dx(tmp_path / "m2.dcm", dx12, photometric="MONOCHROME2")).array
    b = readers.read_image(write_dicom_dx(tmp_path / "m1.dcm", dx12, photometric="MONOCHROME1")).array
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, dx12.astype(np.float32))


def test_dx_rejects_bad_input(tmp_path):
    with pytest.raises(MedsynthError, match="0..4095"):
        write_dicom_dx(tmp_path / "x.dcm", np.full((4, 4), 5000))
    with pytest.raises(MedsynthError, match="2D"):
        write_dicom_dx(tmp_path / "x.dcm", np.zeros((2, 4, 4)))
    with pytest.raises(MedsynthError, match="photometric"):
        write_dicom_dx(tmp_path / "x.dcm", np.zeros((4, 4)), photometric="RGB")


def test_ct_series_geometry_and_rescale(tmp_path):
    rng = np.random.default_rng(1)
    vol = np.rint(rng.uniform(-1024, 2000, (5, 12, 10))).astype(np.float32)
    paths = write_ct_series(tmp_path / "s", vol, spacing=(5.0, 0.7, 0.8), origin=(-100.0, -90.0, -40.0),
                            patient_id="PHANTOM-0001", patient_name="Phantom^0001")
    assert len(paths) == 5
    dss = [pydicom.dcmread(p) for p in paths]
    assert len({d.SeriesInstanceUID for d in dss}) == 1
    assert len({d.StudyInstanceUID for d in dss}) == 1
    assert len({d.FrameOfReferenceUID for d in dss}) == 1
    assert len({d.SOPInstanceUID for d in dss}) == 5
    for k, d in enumerate(dss):
        assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert [float(v) for v in d.ImagePositionPatient] == [-100.0, -90.0, -40.0 + 5.0 * k]
        assert float(d.SliceLocation) == -40.0 + 5.0 * k
        assert float(d.SpacingBetweenSlices) == 5.0 and float(d.SliceThickness) == 5.0
        assert [float(v) for v in d.PixelSpacing] == [0.7, 0.8]  # row, column spacing
        assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert d.InstanceNumber == k + 1
        assert float(d.RescaleIntercept) == CT_INTERCEPT and float(d.RescaleSlope) == 1.0
        assert d.PixelRepresentation == 1 and d.pixel_array.dtype == np.int16
        hu = pydicom.pixels.apply_modality_lut(d.pixel_array, d)
        np.testing.assert_array_equal(hu, vol[k])
    _no_temp_files(tmp_path)


def test_ct_series_clips_to_representable_range(tmp_path):
    vol = np.array([[[-3000.0, 5000.0]]], np.float32)
    d = pydicom.dcmread(write_ct_series(tmp_path, vol)[0])
    np.testing.assert_array_equal(pydicom.pixels.apply_modality_lut(d.pixel_array, d), [[-1024, 3071]])


def test_nifti_affine_and_orientation(tmp_path):
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) * 3 - 200
    p = write_nifti(tmp_path / "v.nii.gz", vol, spacing=(5.0, 2.0, 1.5), origin=(-10.0, 20.0, 30.0))
    img = nib.load(p)
    assert img.shape == (6, 5, 4)  # stored (x, y, z)
    assert tuple(float(z) for z in img.header.get_zooms()) == (1.5, 2.0, 5.0)
    np.testing.assert_allclose(img.affine, nifti_affine((5.0, 2.0, 1.5), (-10.0, 20.0, 30.0)))
    # voxel (0,0,0) sits at LPS origin -> RAS (10, -20, 30); +i is patient left (RAS -x)
    np.testing.assert_allclose(img.affine @ [0, 0, 0, 1], [10.0, -20.0, 30.0, 1.0])
    np.testing.assert_allclose(img.affine @ [1, 0, 0, 1], [10.0 - 1.5, -20.0, 30.0, 1.0])
    np.testing.assert_allclose(img.affine @ [0, 0, 1, 1], [10.0, -20.0, 35.0, 1.0])
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), vol)
    # 2D slice and a uint8 mask
    m = (vol[0] > 0).astype(np.uint8)
    img2 = nib.load(write_nifti(tmp_path / "m.nii.gz", m, spacing=(0.7, 0.8)))
    assert img2.shape == (6, 5) and img2.get_data_dtype() == np.uint8
    assert tuple(float(z) for z in img2.header.get_zooms()) == pytest.approx((0.8, 0.7))
    np.testing.assert_array_equal(np.asarray(img2.dataobj).T, m)
    _no_temp_files(tmp_path)


def test_nifti_through_project_reader(tmp_path):
    readers = pytest.importorskip("medsynth.data.readers")
    vol = np.random.default_rng(0).integers(-1000, 1000, (4, 5, 6)).astype(np.float32)
    rec = readers.read_image(write_nifti(tmp_path / "v.nii.gz", vol, spacing=(5.0, 2.0, 1.5)))
    np.testing.assert_array_equal(rec.array, vol)
    assert tuple(rec.spacing) == (5.0, 2.0, 1.5)
    series = write_ct_series(tmp_path / "s", vol, spacing=(5.0, 2.0, 1.5))
    rec2 = readers.read_image(series[0].parent)
    np.testing.assert_array_equal(rec2.array, vol)


def test_png_8_and_16_bit(tmp_path):
    from PIL import Image

    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    a = np.asarray(Image.open(write_png(tmp_path / "a.png", x)))
    assert a.dtype == np.uint8 and a.min() == 0 and a.max() == 255
    b = np.asarray(Image.open(write_png(tmp_path / "b.png", x, bits=16)))
    assert b.max() == 65535 and b.min() == 0
    with pytest.raises(MedsynthError):
        write_png(tmp_path / "c.png", np.zeros((2, 3, 4)))
    _no_temp_files(tmp_path)


def _assert_synthetic(ds, n_files_uids: set):
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.PatientID.startswith("SYNTHETIC-") and str(ds.PatientName) == "SYNTHETIC^"
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate",
               "InstitutionName", "OtherPatientIDs", "AccessionNumber"):
        assert not ds.get(kw), kw
    for kw in ("SeriesDescription", "ImageComments", "DerivationDescription"):
        text = str(ds.get(kw, ""))
        assert "medsynth" in text and INFO.model in text and INFO.run in text, kw
    assert ds.BurnedInAnnotation == "NO" and ds.Manufacturer == "medsynth"
    assert ds.SOPInstanceUID not in n_files_uids
    n_files_uids.add(ds.SOPInstanceUID)


def test_synthetic_xray_dicom(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 16, 16)).astype(np.float32)
    x[0, 0, 0, :2] = [-1.0, 1.0]
    df = write_synthetic_set(tmp_path, x, [0, 1, 1], modality="xray", fmt="dicom", info=INFO)
    assert list(df.columns) == ["path", "label", "patient_id", "split", "modality", "format", "kind", "source"]
    assert (df["source"] == "synthetic").all() and (df["kind"] == "radiograph").all()
    disk = pd.read_csv(tmp_path / "manifest.csv")
    assert list(disk["label"]) == [0, 1, 1] and disk["patient_id"].is_unique
    uids: set = set()
    for i, rel in enumerate(df["path"]):
        ds = pydicom.dcmread(tmp_path / rel)
        _assert_synthetic(ds, uids)
        expect = np.rint((x[i, 0] + 1) / 2 * 4095)
        np.testing.assert_array_equal(ds.pixel_array, expect)
    # a second call gets fresh UIDs
    df2 = write_synthetic_set(tmp_path / "again", x[:1], [0], modality="xray", fmt="dicom", info=INFO)
    ds2 = pydicom.dcmread(tmp_path / "again" / df2["path"][0])
    assert ds2.StudyInstanceUID != pydicom.dcmread(tmp_path / df["path"][0]).StudyInstanceUID
    _no_temp_files(tmp_path)


@pytest.mark.parametrize("three_d", [False, True])
def test_synthetic_ct_dicom(tmp_path, three_d):
    shape = (2, 1, 3, 8, 8) if three_d else (2, 1, 8, 8)
    x = np.random.default_rng(2).uniform(-1, 1, shape).astype(np.float32)
    df = write_synthetic_set(tmp_path, x, [1, 0], modality="ct", fmt="dicom", info=INFO, ct_window="lung")
    uids: set = set()
    for i, rel in enumerate(df["path"]):
        files = sorted((tmp_path / rel).glob("*.dcm")) if three_d else [tmp_path / rel]
        assert df["format"][i] == ("dicom_series" if three_d else "dicom")
        assert len(files) == (3 if three_d else 1)
        for k, f in enumerate(files):
            ds = pydicom.dcmread(f)
            _assert_synthetic(ds, uids)
            hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
            want = np.clip(unit_to_hu(x[i, 0][k] if three_d else x[i, 0], "lung"), -1024, 3071)
            np.testing.assert_allclose(hu, want, atol=0.51)


def test_synthetic_nifti_and_png(tmp_path):
    x = np.random.default_rng(3).uniform(-1, 1, (2, 1, 3, 8, 8)).astype(np.float32)
    df = write_synthetic_set(tmp_path / "n", x, [0, 1], modality="ct", fmt="nifti", info=INFO)
    arr = np.asarray(nib.load(tmp_path / "n" / df["path"][0]).dataobj).transpose(2, 1, 0)
    np.testing.assert_allclose(arr, np.clip(unit_to_hu(x[0, 0], "lung"), -1024, 3071), atol=0.51)
    assert (df["kind"] == "volume").all()
    x2 = np.random.default_rng(4).uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    df2 = write_synthetic_set(tmp_path / "p", x2, [0, 1], modality="xray", fmt="png", info=INFO)
    assert all((tmp_path / "p" / r).exists() for r in df2["path"])
    with pytest.raises(MedsynthError):
        write_synthetic_set(tmp_path / "bad", x, [0, 1], modality="ct", fmt="png", info=INFO)
    with pytest.raises(MedsynthError):
        write_synthetic_set(tmp_path / "bad", x2, [0], modality="xray", fmt="png", info=INFO)


TRANSLATION = SyntheticInfo(model="cyclegan", run="00004-xray-cyclegan", translation="a2b")


def _png_text(path: Path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return dict(im.text)


def _nifti_marks(path: Path) -> tuple[str, str, list[tuple[int, bytes]]]:
    img = nib.load(path)
    h = img.header
    return (h["descrip"].item().decode(), h.get_intent()[2],
            [(e.get_code(), e.get_content()) for e in h.extensions])


def test_synthetic_png_and_nifti_carry_the_marking_in_the_file(tmp_path):
    x = np.random.default_rng(5).uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    for fmt, modality in (("png", "xray"), ("png", "ct"), ("nifti", "xray"), ("nifti", "ct")):
        out = tmp_path / f"{fmt}-{modality}"
        df = write_synthetic_set(out, x, [0, 1], modality=modality, fmt=fmt, info=INFO)
        assert (df["source"] == "synthetic").all() and all(p.startswith("synthetic_") for p in df["path"])
        for rel in df["path"]:
            if fmt == "png":
                text = _png_text(out / rel)
                assert text["medsynth:synthetic"] == "true" and text["medsynth:translation"] == "false"
                assert text["Software"] == "medsynth" and text["Description"] == INFO.long_description()
                assert "SYNTHETIC IMAGE" in text["Description"] and INFO.run in text["Description"]
            else:
                descrip, intent_name, ext = _nifti_marks(out / rel)
                assert descrip.startswith("SYNTHETIC image, medsynth dcgan") and len(descrip) <= 80
                assert intent_name == "SYNTHETIC"
                assert ext == [(6, INFO.long_description().encode())]
    # the marking survives 16-bit PNG and the pixels are unchanged by it
    from PIL import Image

    write_png(tmp_path / "m16.png", x[0, 0], bits=16, info=INFO)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m16.png")),
                                  np.asarray(Image.open(write_png(tmp_path / "plain.png", x[0, 0], bits=16))))
    assert _png_text(tmp_path / "m16.png")["medsynth:synthetic"] == "true"
    assert "medsynth:synthetic" not in _png_text(tmp_path / "plain.png")  # unmarked unless asked
    assert _nifti_marks(write_nifti(tmp_path / "plain.nii.gz", np.zeros((4, 4))))[1:] == ("", [])


@pytest.mark.parametrize("fmt", ["dicom", "png", "nifti"])
def test_translations_are_marked_as_derived_from_patient_data_not_synthetic(tmp_path, fmt):
    x = np.random.default_rng(6).uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    df = write_synthetic_set(tmp_path, x, [1, 1], modality="xray", fmt=fmt, info=TRANSLATION)
    assert (df["source"] == "translated").all() and all(p.startswith("translated_") for p in df["path"])
    assert all(pid.startswith("TRANSLATED-") for pid in df["patient_id"])
    assert pd.read_csv(tmp_path / "manifest.csv")["source"].tolist() == ["translated", "translated"]
    long = TRANSLATION.long_description()
    assert long.startswith("TRANSLATION of a real image by medsynth")
    assert "NOT SYNTHETIC: derived from patient data" in long
    for rel in df["path"]:
        f = tmp_path / rel
        if fmt == "dicom":
            ds = pydicom.dcmread(f)
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert ds.ImageComments == long and ds.DerivationDescription == long
            assert "TRANSLATION" in ds.SeriesDescription and "synthetic" not in ds.SeriesDescription.lower()
            assert ds.PatientID.startswith("TRANSLATED-") and str(ds.PatientName) == "TRANSLATED^"
        elif fmt == "png":
            text = _png_text(f)
            assert text["medsynth:synthetic"] == "false" and text["medsynth:translation"] == "true"
            assert text["Description"] == long
        else:
            descrip, intent_name, ext = _nifti_marks(f)
            assert descrip.startswith("TRANSLATION of a real image") and "NOT SYNTHETIC" in descrip
            assert intent_name == "TRANSLATION" and ext == [(6, long.encode())]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_dciodvfy_reports_no_errors(tmp_path, dx12):
    files = [
        write_dicom_dx(tmp_path / "m2.dcm", dx12, patient_id="PHANTOM-0001", patient_name="Phantom^0001"),
        write_dicom_dx(tmp_path / "m1.dcm", dx12, photometric="MONOCHROME1"),
        write_dicom_dx(tmp_path / "rle.dcm", dx12, compress=True),
        write_ct_series(tmp_path / "ct", np.zeros((2, 8, 8)) - 500, spacing=(5, 1, 1))[1],
    ]
    x = np.zeros((1, 1, 8, 8), np.float32)
    df = write_synthetic_set(tmp_path / "sx", x, [1], modality="xray", fmt="dicom", info=INFO)
    files.append(tmp_path / "sx" / df["path"][0])
    df = write_synthetic_set(tmp_path / "sc", x, [1], modality="ct", fmt="dicom", info=INFO)
    files.append(tmp_path / "sc" / df["path"][0])
    for f in files:
        assert dciodvfy_errors(f) == [], f.name
