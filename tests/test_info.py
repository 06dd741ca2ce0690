"""describe(): what `medsynth info PATH` reports for files, folders, manifests and npz."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsynth.data.info import describe
from medsynth.errors import MedsynthError


def test_describe_dx_file(tmp_path, make):
    arr = np.arange(100, dtype=np.uint16).reshape(10, 10) * 10
    d = describe(make.dx(tmp_path / "a.dcm", arr, photometric="MONOCHROME1", bits_stored=12, spacing=(0.1, 0.2)))
    assert d["kind"] == "image" and d["format"] == "dicom" and d["modality"] == "xray"
    assert d["dicom_modality"] == "DX" and d["photometric"] == "MONOCHROME1"
    assert d["shape"] == [10, 10] and d["spacing_mm"] == [0.1, 0.2]
    assert d["intensity"]["max"] == 4095.0 and d["intensity"]["min"] == 4095.0 - 990.0  # inverted
    json.dumps(d)  # printable by the CLI


def test_describe_nifti_guesses_ct(tmp_path, make, phantom_ct):
    vol, _ = phantom_ct
    d = describe(make.nifti(tmp_path / "v.nii.gz", vol.transpose(2, 1, 0), zooms=(0.7, 0.7, 2.5)))
    assert d["format"] == "nifti" and d["modality"] == "ct"
    assert d["shape"] == [12, 24, 20] and d["spacing_mm"] == [2.5, 0.7, 0.7]
    assert d["intensity"]["min"] < -900


def test_describe_folder_with_series_and_labels(tmp_path, make, phantom_ct, xray_dir):
    vol, _ = phantom_ct
    make.ct_series(tmp_path / "mix" / "ct", vol, patient_id="CTP")
    make.png(tmp_path / "mix" / "p.png", np.arange(16, dtype=np.uint8).reshape(4, 4))
    d = describe(tmp_path / "mix")
    assert d["kind"] == "folder" and d["files"] == {"dicom": 12, "pil": 1}
    assert len(d["series"]) == 1 and d["series"][0]["slices"] == 12 and d["series"][0]["modality"] == "ct"
    assert d["series"][0]["patient_id"] == "CTP"
    x = describe(xray_dir)
    assert x["labels"] == {"0": 4, "1": 4} and len(x["series"]) == 8
    assert x["first_image"]["modality"] == "xray"
    json.dumps(x)


def test_describe_manifest_and_npz(mixed_manifest, tmp_path, make):
    d = describe(mixed_manifest)
    assert d["kind"] == "manifest" and d["rows"] == 18 and d["patients"] == 12
    assert d["counts"]["modality"] == {"ct": 6, "xray": 12} and d["missing_files"] == 0
    assert d["counts"]["format"]["dicom"] == 6 and d["counts"]["split"]["train"] == 12
    assert d["labels"] == {"0": 9, "1": 9}
    n = describe(make.npz(tmp_path / "s.npz", images=np.zeros((3, 4, 4), np.uint8) + np.arange(4, dtype=np.uint8),
                          labels=np.array([0, 1, 1])))
    assert n["images"] == 3 and n["labels"] == {"0": 1, "1": 2}
    assert n["arrays"]["images"] == {"shape": [3, 4, 4], "dtype": "uint8"}


def test_describe_errors(tmp_path):
    with pytest.raises(MedsynthError, match="not found"):
        describe(tmp_path / "missing")
    (tmp_path / "e").mkdir()
    with pytest.raises(MedsynthError, match="empty folder"):
        describe(tmp_path / "e")
    (tmp_path / "x.bin").write_bytes(b"123")
    with pytest.raises(MedsynthError, match="unsupported"):
        describe(tmp_path / "x.bin")
