"""Tests for the chest phantom simulator and the committed sample data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsynth.phantom import (
    add_ct_noise,
    generate_sample_data,
    hu_to_mu,
    make_patient,
    simulate_radiograph,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"shape": (40, 40, 40), "spacing_mm": (10.0, 10.0, 10.0)}


@pytest.fixture(scope="module")
def patient():
    return make_patient(11, shape=(48, 48, 48), spacing_mm=8.0, nodule=True, nodule_diameter_mm=20.0)


def test_same_seed_same_patient_and_different_seeds_differ():
    a = make_patient(3, **SMALL)
    b = make_patient(3, **SMALL)
    c = make_patient(4, **SMALL)
    assert a.volume_hu.dtype == np.float32 and a.volume_hu.shape == (40, 40, 40)
    np.testing.assert_array_equal(a.volume_hu, b.volume_hu)
    np.testing.assert_array_equal(a.nodule_mask, b.nodule_mask)
    assert not np.array_equal(a.volume_hu, c.volume_hu)


def test_anatomy_does_not_depend_on_grid():
    coarse = make_patient(5, shape=(24, 24, 24), spacing_mm=16.0, nodule=True)
    fine = make_patient(5, shape=(48, 48, 48), spacing_mm=8.0, nodule=True)
    assert coarse.nodule["centre_mm"] == fine.nodule["centre_mm"]
    assert coarse.nodule["diameter_mm"] == fine.nodule["diameter_mm"]
    assert coarse.params == fine.params


def test_tissue_hounsfield_ranges(patient):
    v = patient.volume_hu
    assert v[0, 0, 0] == pytest.approx(-1000.0)  # air outside the body
    from scipy import ndimage

    lung = ndimage.binary_erosion(patient.lung_mask.astype(bool)) & (patient.nodule_mask == 0)
    assert lung.sum() > 300
    assert -900.0 < np.median(v[lung]) < -780.0
    assert np.percentile(v, 99.9) >= 400.0  # bone present
    assert v.max() <= 1000.0
    # fat and soft tissue in the body wall
    assert ((v > -130) & (v < -70)).sum() > 50
    assert ((v > 20) & (v < 70)).sum() > 1000
    # heart: soft tissue in the anterior left mediastinum, mid height
    z, y, x = (np.asarray(v.shape) // 2)
    ys = slice(int(v.shape[1] * 0.3), int(v.shape[1] * 0.5))
    xs = slice(x, x + 6)
    assert 0.0 < np.median(v[z - 6: z, ys, xs]) < 80.0


def test_nodule_mask_matches_diameter_and_density():
    # a smooth solid nodule rasterised on a fine local grid around its centre
    for seed in range(100):
        p = make_patient(seed, shape=(8, 8, 8), spacing_mm=20.0, nodule=True, nodule_diameter_mm=14.0)
        if p.nodule["shape"] == "smooth" and p.nodule["texture"] == "solid":
            break
    cx, cy, cz = p.nodule["centre_mm"]
    n = 40
    fine = make_patient(seed, shape=(n, n, n), spacing_mm=1.0, nodule=True, nodule_diameter_mm=14.0,
                        origin=(cx - n / 2, cy - n / 2, cz - n / 2))
    info = fine.nodule
    assert info["diameter_mm"] == pytest.approx(14.0)
    assert info["equivalent_diameter_mm"] == pytest.approx(14.0, rel=0.15)
    m = fine.nodule_mask.astype(bool)
    zc, yc, xc = np.argwhere(m).mean(0)
    assert (zc, yc, xc) == pytest.approx(info["centre_voxel"], abs=1.0)
    assert -60.0 < np.median(fine.volume_hu[m]) < 120.0  # solid density (vessels may add)
    assert fine.volume_hu[~m].mean() < -300.0  # mostly lung around it


def test_nodule_flag_and_prevalence():
    neg = make_patient(1, **SMALL, nodule=False)
    assert neg.nodule is None and neg.label == 0 and neg.nodule_mask.sum() == 0
    pos = make_patient(1, **SMALL, nodule=True)
    assert pos.label == 1 and pos.nodule_mask.sum() >= 1
    assert 4.0 <= pos.nodule["diameter_mm"] <= 30.0
    labels = [make_patient(s, shape=(4, 4, 4), spacing_mm=100.0).label for s in range(60)]
    assert 15 <= sum(labels) <= 45


def test_ct_noise_level():
    img = np.zeros((64, 64), np.float32)
    noisy = add_ct_noise(img, np.random.default_rng(0), sigma_hu=20.0)
    assert noisy.std() == pytest.approx(20.0, rel=0.05)
    # correlated: neighbouring pixels agree more than white noise would
    r = np.corrcoef(noisy[:, :-1].ravel(), noisy[:, 1:].ravel())[0, 1]
    assert r > 0.3


def test_radiograph_physics(patient):
    assert hu_to_mu(np.array([-1000.0]))[0] == 0.0
    assert hu_to_mu(np.array([0.0]))[0] == pytest.approx(0.0206)
    r = simulate_radiograph(patient, np.random.default_rng(0), size=32)
    assert r.pixels.shape == (32, 32) and r.pixels.dtype == np.uint16
    assert r.pixels.max() <= 4095
    # spine (centre column, mid rows) is brighter than the lungs beside it
    mid = r.pixels[10:22]
    assert mid[:, 15:17].mean() > mid[:, 6:10].mean()
    assert r.line_integral.min() >= 0.0
    assert r.nodule_mask.sum() >= 1
    row, col = r.nodule_rc
    assert 0 <= row < 32 and 0 <= col < 32
    # more photons -> less noise (same noise-free signal)
    lo = simulate_radiograph(patient, np.random.default_rng(1), size=32, photons=2e3).pixels.astype(float)
    hi = simulate_radiograph(patient, np.random.default_rng(1), size=32, photons=2e5).pixels.astype(float)
    ref = simulate_radiograph(patient, np.random.default_rng(2), size=32, photons=2e7).pixels.astype(float)
    assert np.abs(lo - ref).mean() > np.abs(hi - ref).mean()


TINY_GRIDS = {"roi": {"voxel_mm": 5.0, "depth_shape": 24, "depth_mm": 12.0},
              "xray_grid": {"shape": (32, 32, 32), "spacing_mm": 12.0},
              "ct_grid": {"shape": (8, 16, 16), "spacing_mm": (20.0, 24.0, 24.0)}}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    a = generate_sample_data(root / "a", n_xray=10, n_ct=6, seed=3, n_png=2, n_volumes=1, n_series=1, **TINY_GRIDS)
    b = generate_sample_data(root / "b", n_xray=10, n_ct=6, seed=3, n_png=2, n_volumes=1, n_series=1, **TINY_GRIDS)
    return a, b


MANIFEST_COLUMNS = ["patient_id", "modality", "format", "kind", "path", "label", "diameter_mm", "location",
                    "mask", "split", "photometric"]


def _check_manifest(csv: Path):
    df = pd.read_csv(csv, keep_default_na=False, dtype={"patient_id": str})
    for c in MANIFEST_COLUMNS:
        assert c in df.columns, c
    assert set(df["split"]) <= {"train", "val", "test"}
    assert (df.groupby("patient_id")["split"].nunique() == 1).all(), "a patient is in two splits"
    assert (df.groupby("patient_id")["label"].nunique() == 1).all()
    for rel in df["path"]:
        assert (csv.parent / rel).exists(), rel
    for rel in df["mask"]:
        if rel:
            assert (csv.parent / rel).exists(), rel
    assert ((df["label"] == 1) == (df["diameter_mm"] > 0)).all()
    assert ((df["label"] == 1) == (df["location"] != "")).all()
    dx = df[(df["format"] == "dicom")]
    assert set(dx["photometric"]) <= {"MONOCHROME1", "MONOCHROME2"}
    assert set(df["modality"]) <= {"xray", "ct"}
    assert set(df["format"]) <= {"dicom", "png", "nifti", "dicom_series"}
    assert set(df["kind"]) <= {"radiograph", "slice", "volume"}
    return df


def test_sample_data_is_deterministic_and_well_formed(tiny_set):
    import nibabel as nib
    import pydicom

    a, b = tiny_set
    da, db = _check_manifest(a), _check_manifest(b)
    pd.testing.assert_frame_equal(da, db)
    assert set(da["kind"]) == {"radiograph", "slice", "volume"}
    assert set(da["format"]) == {"dicom", "png", "nifti", "dicom_series"}
    assert da[da["kind"] == "radiograph"]["patient_id"].nunique() == 10
    for rel, fmt in zip(da["path"], da["format"]):
        if fmt == "dicom":
            np.testing.assert_array_equal(pydicom.dcmread(a.parent / rel).pixel_array,
                                          pydicom.dcmread(b.parent / rel).pixel_array)
        elif fmt == "nifti":
            np.testing.assert_array_equal(np.asarray(nib.load(a.parent / rel).dataobj),
                                          np.asarray(nib.load(b.parent / rel).dataobj))
        elif fmt == "dicom_series":
            fa = sorted((a.parent / rel).glob("*.dcm"))
            assert len(fa) == 8
            for f in fa:
                g = b.parent / rel / f.name
                np.testing.assert_array_equal(pydicom.dcmread(f).pixel_array, pydicom.dcmread(g).pixel_array)
    # positives' slice masks are non-empty; phantom identities only
    sl = da[(da["kind"] == "slice") & (da["label"] == 1)]
    for rel in sl["mask"]:
        assert np.asarray(nib.load(a.parent / rel).dataobj).sum() >= 1
    ds = pydicom.dcmread(a.parent / da[da["format"] == "dicom"]["path"].iloc[0])
    assert ds.PatientID.startswith("PHANTOM-") and str(ds.PatientName).startswith("Phantom^")
    assert not ds.get("StudyDate") and not ds.get("PatientBirthDate")


def test_split_is_stratified_by_patient():
    from medsynth.phantom.sample import _split_by_patient

    labels = np.array([0] * 50 + [1] * 50)
    s = _split_by_patient(labels, 0)
    for lab in (0, 1):
        part = s[labels == lab]
        assert (part == "train").sum() == 30 and (part == "val").sum() == 10 and (part == "test").sum() == 10


COMMITTED = ROOT / "sample_data" / "manifest.csv"


@pytest.mark.skipif(not COMMITTED.exists(), reason="sample_data/manifest.csv not generated yet")
def test_committed_sample_data():
    df = _check_manifest(COMMITTED)
    xr = df[df["kind"] == "radiograph"]
    assert xr["patient_id"].nunique() >= 400
    assert (xr[xr["split"] == "train"]["patient_id"].nunique()) >= 200
    sl = df[df["kind"] == "slice"]
    assert sl["patient_id"].nunique() >= 300
    assert 0.35 < xr.drop_duplicates("patient_id")["label"].mean() < 0.65
    assert (df["kind"] == "volume").sum() >= 3
    mono1 = (xr["photometric"] == "MONOCHROME1").mean() / max((xr["format"] == "dicom").mean(), 1e-9)
    assert 0.05 < mono1 < 0.3
    total = sum(f.stat().st_size for f in (ROOT / "sample_data").rglob("*") if f.is_file())
    assert total < 10 * 1024 * 1024
    assert (ROOT / "sample_data" / "README.md").exists()


def test_lung_spot_view_is_the_same_patient_framed_on_a_nodule_site():
    """The spot view keeps the patient's anatomy and nodule; its field is centred within the
    jitter of the nodule (positives) or of a lung site drawn the same way (negatives)."""
    from medsynth.phantom.sample import XRAY_ROI, _streams, xray_patient

    small = {"voxel_mm": 4.0, "depth_shape": 24, "depth_mm": 12.0}
    seen = set()
    for i in range(8):
        ss, _, _ = _streams(11, i)
        chest = xray_patient(ss, 11, i, "chest", {"shape": (24, 24, 24), "spacing_mm": 16.0})
        spot = xray_patient(ss, 11, i, "lung_spot", small)
        assert spot.label == chest.label
        seen.add(spot.label)
        n = spot.volume_hu.shape[2]
        centre = (spot.origin[0] + (n - 1) / 2 * 4.0, spot.origin[2] + (n - 1) / 2 * 4.0)
        if spot.label:
            assert spot.nodule["centre_mm"] == chest.nodule["centre_mm"]
            cx, _, cz = spot.nodule["centre_mm"]
            reach = XRAY_ROI["jitter"] * XRAY_ROI["field_mm"] + 1e-6
            assert abs(centre[0] - cx) <= reach and abs(centre[1] - cz) <= reach
            assert spot.nodule_mask.any()
        else:
            # the field still shows lung
            assert spot.lung_mask.mean() > 0.05
    assert seen == {0, 1}
    with pytest.raises(ValueError, match="view"):
        xray_patient(ss, 11, 0, "lateral")
