"""Shared test fixtures: tiny DICOM DX / CT series, NIfTI, PNG and npz files built in tmp dirs.

Factories (fixture ``make``) write files and return their paths:

* ``make.dx(path, array, photometric=..., modality="DX", patient_id=..., ...)``: one DICOM
  radiograph (uint16 stored values).
* ``make.ct_series(folder, hu (D, H, W), spacing=(2.5, 0.7, 0.7), shuffle=True, ...)``: one
  DICOM file per slice, HU stored with RescaleIntercept -1024, files written in shuffled order
  with shuffled names so sorting must use ImagePositionPatient.
* ``make.ct_slice(path, hu (H, W))``: a single CT DICOM slice.
* ``make.nifti(path, array (X, Y[, Z]) in RAS voxel order, zooms=...)``.
* ``make.png(path, array)``: uint8 or uint16 PNG (or RGB if array is (H, W, 3)).
* ``make.npz(path, **arrays)``.

Ready-made data fixtures: ``phantom_ct`` (a (12, 24, 20) HU volume with a bright nodule),
``xray_dir`` (a folder of 8 DX files, 4 patients, labels.csv), ``mixed_manifest`` (a manifest
CSV with X-ray DICOM+PNG rows and CT slice/volume rows).
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzz_files import dicom_dataset as _dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_dx(path, array, *, photometric="MONOCHROME2", modality="DX", patient_id="P001",
             spacing=(0.2, 0.2), rescale=None, bits_stored=16, pixel_data=True):
    """Write a DICOM radiograph; ``array`` (H, W) of stored values (uint16)."""
    arr = np.asarray(array).astype(np.uint16)
    ds = _dataset(*arr.shape, modality=modality, patient_id=patient_id)
    ds.PhotometricInterpretation = photometric
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.ImagerPixelSpacing = [float(spacing[0]), float(spacing[1])]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if pixel_data:
        ds.PixelData = arr.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_slice(path, hu, *, z=0.0, spacing=(0.7, 0.7), thickness=2.5, patient_id="C001",
                   series_uid=None, instance=1):
    """Write one CT slice; ``hu`` (H, W) Hounsfield units (stored as HU + 1024, uint16)."""
    hu = np.asarray(hu)
    ds = _dataset(*hu.shape, modality="CT", patient_id=patient_id, series_uid=series_uid)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = float(thickness)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.InstanceNumber = int(instance)
    ds.PixelData = np.clip(np.round(hu + 1024), 0, 65535).astype(np.uint16).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_series(folder, hu, *, spacing=(2.5, 0.7, 0.7), patient_id="C001", shuffle=True, seed=0,
                    instance_reversed=True):
    """Write a CT series, one file per slice, slice k at z = k * spacing[0].

    File names and InstanceNumbers are shuffled/reversed so that only ImagePositionPatient
    gives the true order. Returns (folder, series_uid).
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    uid = generate_uid()
    d = hu.shape[0]
    order = np.random.default_rng(seed).permutation(d) if shuffle else np.arange(d)
    for name_i, k in enumerate(order):
        inst = d - k if instance_reversed else k + 1
        write_ct_slice(folder / f"IM{name_i:04d}.dcm", hu[k], z=k * spacing[0], spacing=spacing[1:],
                       thickness=spacing[0], patient_id=patient_id, series_uid=uid, instance=inst)
    return folder, uid


def write_nifti(path, array, *, zooms=(1.0, 1.0, 1.0), affine=None):
    import nibabel as nib

    arr = np.asarray(array)
    if affine is None:
        affine = np.diag([*zooms[: 3], 1.0]) if arr.ndim >= 3 else np.diag([zooms[0], zooms[1], 1.0, 1.0])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def write_png(path, array):
    from PIL import Image

    arr = np.asarray(array)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype == np.uint16:
        Image.fromarray(arr).save(path)
    else:
        Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def write_npz(path, **arrays):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def make():
    """Namespace of file factories (see the module docstring)."""
    return types.SimpleNamespace(dx=write_dx, ct_slice=write_ct_slice, ct_series=write_ct_series,
                                 nifti=write_nifti, png=write_png, npz=write_npz)


def phantom_volume(d=12, h=24, w=20, *, nodule_at=(8, 10, 12), seed=0):
    """(D, H, W) HU: air outside a soft-tissue ellipse, lung inside, a +40 HU nodule at ``nodule_at``."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:d, :h, :w]
    body = ((yy - h / 2) / (h * 0.45)) ** 2 + ((xx - w / 2) / (w * 0.45)) ** 2 < 1
    lung = ((yy - h / 2) / (h * 0.3)) ** 2 + ((xx - w / 2) / (w * 0.3)) ** 2 < 1
    hu = np.full((d, h, w), -1000.0)
    hu[body] = 40.0
    hu[lung] = -850.0
    cz, cy, cx = nodule_at
    nod = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= 4
    hu[nod] = 40.0
    hu += rng.normal(0, 10, hu.shape)
    mask = nod.astype(np.uint8)
    return hu.astype(np.float32), mask


@pytest.fixture
def phantom_ct():
    """(volume HU (12, 24, 20) float32, nodule mask uint8 same shape); nodule centred on slice 8."""
    return phantom_volume()


def xray_image(h=40, w=32, *, seed=0, lesion=False):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = 1000 + 2000 * np.exp(-(((xx - w / 2) / (w / 3)) ** 2)) + rng.normal(0, 50, (h, w))
    if lesion:
        img[(yy - h // 3) ** 2 + (xx - w // 3) ** 2 < 9] += 800
    return np.clip(img, 0, 4095).astype(np.uint16)


@pytest.fixture
def xray_dir(tmp_path):
    """Folder of 8 DX DICOMs (4 patients x 2 images) in subfolders, with labels.csv (label 1 = lesion)."""
    root = tmp_path / "xray"
    rows = ["path,label"]
    for p in range(4):
        for j in range(2):
            lesion = (p + j) % 2 == 1
            rel = f"P{p:03d}/img{j}.dcm"
            write_dx(root / rel, xray_image(seed=10 * p + j, lesion=lesion), patient_id=f"P{p:03d}")
            rows.append(f"{rel},{int(lesion)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def mixed_manifest(tmp_path):
    """A manifest CSV (tmp_path/data/manifest.csv) with:

    * X-ray: 6 patients, each image as DICOM and as PNG (same image; PNG row should lose),
      labels alternating, splits given by patient (4 train, 1 val, 1 test).
    * CT: 3 patients with a series folder (kind volume, format dicom_series, a NIfTI mask)
      and 3 patients with a NIfTI volume; no slice rows.
    """
    base = tmp_path / "data"
    rows = []
    splits = ["train", "train", "train", "train", "val", "test"]
    for p in range(6):
        img = xray_image(seed=p, lesion=p % 2 == 1)
        write_dx(base / f"xray/dicom/X{p}.dcm", img, patient_id=f"X{p}")
        write_png(base / f"xray/png/X{p}.png", (img // 16).astype(np.uint8))
        for fmt, rel in (("dicom", f"xray/dicom/X{p}.dcm"), ("png", f"xray/png/X{p}.png")):
            rows.append(dict(patient_id=f"X{p}", modality="xray", format=fmt, kind="radiograph", path=rel,
                             label=p % 2, mask="", split=splits[p]))
    for p in range(3):
        vol, mask = phantom_volume(seed=p, nodule_at=(3 + p, 10, 10))
        write_ct_series(base / f"ct/series/C{p}", vol, patient_id=f"C{p}", seed=p)
        # mask in our (D, H, W) display layout -> NIfTI RAS voxel order (x, y, z)
        write_nifti(base / f"ct/masks/C{p}.nii.gz", np.flip(mask, axis=(1, 2)).transpose(2, 1, 0).copy())
        rows.append(dict(patient_id=f"C{p}", modality="ct", format="dicom_series", kind="volume",
                         path=f"ct/series/C{p}", label=1, mask=f"ct/masks/C{p}.nii.gz", split=splits[p]))
    for p in range(3, 6):
        vol, _ = phantom_volume(seed=p)
        write_nifti(base / f"ct/nifti/C{p}.nii.gz", np.flip(vol, axis=(1, 2)).transpose(2, 1, 0).copy())
        rows.append(dict(patient_id=f"C{p}", modality="ct", format="nifti", kind="volume",
                         path=f"ct/nifti/C{p}.nii.gz", label=0, mask="", split=splits[p]))
    import pandas as pd

    csv = base / "manifest.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


@pytest.fixture(autouse=False)
def shared_data():
    """Path of ../shared/data; skips the test when it is absent (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} absent (only in the development checkout)")
    return SHARED_DATA


os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def train_tiny_cli_run(folder, images):
    """``medsynth train`` (CLI, DCGAN width 8, 2 steps, 32²) on a 48-image ``tiny.npz`` written from
    ``images`` ``(48, 32, 32)`` in detector-like units, in ``folder`` (the current directory);
    returns ``(runner, run directory)``."""
    from typer.testing import CliRunner

    from medsynth.cli import app

    np.savez(Path(folder) / "tiny.npz", images=images, labels=np.arange(48) % 2,
             patient_ids=[f"p{i}" for i in range(48)], splits=["train"] * 32 + ["val"] * 8 + ["test"] * 8)
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--modality", "xray", "--data", "tiny.npz", "--size", "32", "--steps", "2",
                            "--set", "model.width=8", "--set", "train.batch_size=16", "--out", "runs",
                            "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return runner, Path(folder) / "runs" / "00000-xray-dcgan"


# ----------------------------------------------------------------------------- issue 17: odd DICOM inputs
SOP_CLASS = {
    "CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1", "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4", "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "NM": "1.2.840.10008.5.1.4.1.1.20", "PT": "1.2.840.10008.5.1.4.1.1.128", "SC": "1.2.840.10008.5.1.4.1.1.7",
    "ENHANCED_CT": "1.2.840.10008.5.1.4.1.1.2.1", "ENHANCED_MR": "1.2.840.10008.5.1.4.1.1.4.1",
}


def write_dicom_image(path, array, *, modality="DX", sop_class=None, photometric=None, bits=None,
                      patient_id="P001", rescale=None, series_uid=None):
    """Write a DICOM image of any modality and SOP class (default: the modality's own).

    ``array`` (H, W) grey (uint8 -> 8 bits stored, else uint16) or (H, W, 3) uint8 colour
    (photometric RGB unless given). ``rescale`` (slope, intercept) or None (no rescale tags).
    """
    arr = np.asarray(array)
    colour = arr.ndim == 3
    eight = colour or arr.dtype == np.uint8
    arr = arr.astype(np.uint8 if eight else np.uint16)
    ds = _dataset(arr.shape[0], arr.shape[1], modality=modality, patient_id=patient_id, series_uid=series_uid)
    sop = sop_class or SOP_CLASS.get(modality, SOP_CLASS["SC"])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    ds.BitsAllocated = 8 if eight else 16
    ds.BitsStored = bits or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = arr.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_enhanced_ct(path, stored, *, rescale=(1, -1024), per_frame_rescale=None, z=None, spacing=(0.5, 0.5),
                      thickness=1.0, sop_class=None, modality="CT", patient_id="E001"):
    """Write an Enhanced CT (multi-frame, functional groups) file from ``stored`` (F, H, W) values.

    ``rescale`` (slope, intercept) goes in the Shared Functional Groups (None: no rescale
    anywhere); ``per_frame_rescale`` [(slope, intercept)] per frame goes in the Per-frame groups
    instead. Frame k sits at z = ``z[k]`` (default k * thickness); pixel spacing and slice
    thickness go in the shared PixelMeasuresSequence.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.asarray(stored).astype(np.uint16)
    f, h, w = stored.shape
    ds = _dataset(h, w, modality=modality, patient_id=patient_id)
    sop = sop_class or SOP_CLASS["ENHANCED_CT"]
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = f
    z = np.arange(f) * thickness if z is None else np.asarray(z, float)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    pm.SliceThickness = float(thickness)
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([po])
    if rescale is not None and per_frame_rescale is None:
        pv = Dataset()
        pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = rescale[0], rescale[1], "HU"
        shared.PixelValueTransformationSequence = Sequence([pv])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(f):
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [0.0, 0.0, float(z[k])]
        item.PlanePositionSequence = Sequence([pp])
        if per_frame_rescale is not None:
            pv = Dataset()
            pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = per_frame_rescale[k][0], per_frame_rescale[k][1], "HU"
            item.PixelValueTransformationSequence = Sequence([pv])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = stored.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def kill_at_first_checkpoint(cmd: list, run_dir: Path, env: dict, timeout: float) -> int:
    """Start ``cmd`` (a ``medsynth train``), SIGKILL it the moment ``run_dir``'s first checkpoint
    exists, and wait for it; fails if it ends before or no checkpoint appears within ``timeout`` s.
    Returns its exit code."""
    import signal
    import subprocess
    import time

    from medsynth.runs import CHECKPOINT

    proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + timeout
    try:
        while not (run_dir / CHECKPOINT).exists():
            assert proc.poll() is None, f"the run ended before its first checkpoint:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, f"no checkpoint within {timeout:g} s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    return proc.returncode


def tiny_gated_run(root: Path) -> dict:
    """A 2-step DCGAN run at 16² on the embedded lung-spot phantoms under ``root/runs`` (through the
    CLI), and a cheap gate encoder for it saved as ``root/enc.pt`` (20 steps, 32², seed 0).

    Returns:
        ``{"run", "enc", "train" (the run's training images), "root"}``.
    """
    from typer.testing import CliRunner

    from medsynth.cli import app, default_data
    from medsynth.metrics.fidelity import save_encoder, train_feature_encoder
    from medsynth.metrics.gate import load_run_training_set
    from medsynth.runs import load_trained

    torch.set_num_threads(1)
    r = CliRunner().invoke(app, [str(a) for a in (
        "train", "--modality", "xray", "--data", default_data(), "--size", "16", "--steps", "2",
        "--set", "model.width=4", "--set", "model.latent_dim=8", "--out", root / "runs", "--no-progress",
        "--no-quick-check")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = next((root / "runs").glob("*-xray-dcgan"))
    train_set, _ = load_run_training_set(run, load_trained(run)[0])
    enc = save_encoder(train_feature_encoder(train_set.images, seed=0, steps=20, in_size=32), root / "enc.pt")
    return {"run": run, "enc": enc, "train": train_set.images, "root": root}


def tiny_train_cfg(name: str = "dcgan", steps: int = 6, **train_kw):
    """A resolved config for a tiny conditional run at 16² (width 4, batch 8, stats every 2 steps,
    grids and checkpoints every 3); ``train_kw`` overrides ``train.*``."""
    from medsynth.config import resolve

    return resolve(base={"model": {"name": name, "width": 4, "latent_dim": 16, "num_classes": 2},
                         "data": {"size": 16},
                         "train": {"steps": steps, "batch_size": 8, "tick_every": 2, "sample_every": 3,
                                   "checkpoint_every": 3, **train_kw}})


def tiny_train_data(n: int = 40):
    """``n`` seeded random images ``(n, 1, 16, 16)`` in [-1, 1] and labels in {0, 1}."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 2, (n,), generator=g)
