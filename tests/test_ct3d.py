"""3D CT end to end through the command line: ProGAN on CT volumes (``--spatial-dims 3``) with the
3D preset, then synthetic volumes written as NIfTI and as DICOM series in HU, marked synthetic.
On the committed phantom CT volumes always; on the real LIDC nodule cubes when
``../shared/data`` is present."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from medsynth.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _invoke(*args) -> str:
    r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def _train_and_write(tmp_path: Path, data: Path) -> Path:
    # 8³ volumes: stages 4³ and 8³, 32 images per stage; 12 steps of 8 reach the 8³ fade-in
    _invoke("train", "--modality", "ct", "--model", "progan", "--preset", "ct3d_progan",
            "--spatial-dims", "3", "--size", "8", "--data", data, "--steps", "12", "--out", tmp_path / "runs",
            "--set", "model.params.kimg_per_stage=0.032", "--set", "train.checkpoint_every=6",
            "--set", "train.sample_every=1000", "--no-progress")
    run = next((tmp_path / "runs").iterdir())
    _invoke("generate", run, "--count", "3", "--class", "1", "--format", "nifti", "--out", tmp_path / "nii")
    _invoke("generate", run, "--count", "2", "--class", "1", "--format", "dicom", "--out", tmp_path / "dcm")
    return run


def _check_outputs(tmp_path: Path) -> None:
    nii = pd.read_csv(tmp_path / "nii" / "manifest.csv")
    assert len(nii) == 3 and set(nii["label"]) == {1} and set(nii["source"]) == {"synthetic"}
    vol = np.asarray(nib.load(tmp_path / "nii" / nii["path"][0]).dataobj)
    assert vol.shape == (8, 8, 8)
    assert -1024 <= vol.min() and vol.max() <= 3071 and vol.std() > 0  # HU, not [-1, 1]
    assert vol.max() - vol.min() > 2

    dcm = pd.read_csv(tmp_path / "dcm" / "manifest.csv")
    assert len(dcm) == 2 and set(dcm["format"]) == {"dicom_series"}
    files = sorted((tmp_path / "dcm" / dcm["path"][0]).glob("*.dcm"))
    assert len(files) == 8  # one slice per z
    slices = [pydicom.dcmread(f) for f in files]
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    for ds in slices:
        assert ds.Modality == "CT" and ds.PatientID.startswith("SYNTHETIC")
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
        assert -1024 <= hu.min() and hu.max() <= 3071


@pytest.mark.slow
def test_progan_3d_on_phantom_ct_volumes(tmp_path):
    run = _train_and_write(tmp_path, ROOT / "sample_data" / "manifest.csv")
    assert "-ct-progan" in run.name
    _check_outputs(tmp_path)


@pytest.mark.slow
def test_progan_3d_on_lidc_nodule_cubes(tmp_path, shared_data):  # skips without ../shared/data
    _train_and_write(tmp_path, shared_data / "lidc_nodules")
    _check_outputs(tmp_path)
