"""Readers: DICOM file/series, NIfTI, PNG/JPEG, npz, and their error messages."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.data.readers import read_dicom_series, read_image, take_slices
from medsynth.errors import MedsynthError


# ----------------------------------------------------------------------------- DICOM file
def test_dx_monochrome2_raw_values_and_spacing(tmp_path, make):
    arr = (np.arange(12 * 10).reshape(12, 10) * 7 % 4000).astype(np.uint16)
    p = make.dx(tmp_path / "a.dcm", arr, spacing=(0.15, 0.2), patient_id="PX")
    rec = read_image(p)
    assert rec.array.dtype == np.float32 and rec.array.shape == (12, 10)
    np.testing.assert_array_equal(rec.array, arr.astype(np.float32))
    assert rec.modality == "xray"
    assert rec.spacing == pytest.approx((0.15, 0.2))
    assert rec.meta["photometric"] == "MONOCHROME2" and rec.meta["patient_id"] == "PX"
    assert rec.meta["format"] == "dicom"


def test_dx_monochrome1_is_inverted(tmp_path, make):
    arr = np.array([[0, 100], [4095, 2000]], dtype=np.uint16)
    p1 = make.dx(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1", bits_stored=12)
    rec = read_image(p1)
    # inverted within the 12-bit stored range: 4095 - value
    np.testing.assert_array_equal(rec.array, (4095 - arr).astype(np.float32))
    assert rec.meta["photometric"] == "MONOCHROME1"


def test_rescale_slope_intercept_applied(tmp_path, make):
    arr = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    p = make.dx(tmp_path / "r.dcm", arr, rescale=(2.0, -5.0))
    np.testing.assert_allclose(read_image(p).array, arr * 2.0 - 5.0)


def test_ct_slice_in_hu(tmp_path, make):
    hu = np.array([[-1000, -600], [0, 400]], dtype=np.float32)
    p = make.ct_slice(tmp_path / "ct.dcm", hu)
    rec = read_image(p)
    np.testing.assert_allclose(rec.array, hu)
    assert rec.modality == "ct"


def test_modality_override(tmp_path, make):
    p = make.dx(tmp_path / "a.dcm", np.ones((4, 4), np.uint16), modality="OT")
    assert read_image(p).modality == "unknown"
    assert read_image(p, modality="xray").modality == "xray"


def test_dicom_errors_are_one_line_and_name_the_file(tmp_path, make):
    bad = tmp_path / "corrupt.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 3)
    nopix = make.dx(tmp_path / "nopix.dcm", np.ones((4, 4), np.uint16), pixel_data=False)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, words in ((bad, "DICOM"), (nopix, "no pixel data"), (text, "unsupported"),
                        (tmp_path / "missing.dcm", "not found")):
        with pytest.raises(MedsynthError) as ei:
            read_image(path)
        msg = str(ei.value)
        assert str(path) in msg and words in msg and "\n" not in msg


def test_truncated_pixel_data(tmp_path, make):
    p = make.dx(tmp_path / "t.dcm", np.ones((32, 32), np.uint16))
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(MedsynthError, match="t.dcm"):
        read_image(p)


def test_non_finite_values_rejected(tmp_path, make):
    arr = np.ones((4, 4), np.float32)
    arr[1, 1] = np.nan
    p = make.npz(tmp_path / "nan.npz", images=arr)
    with pytest.raises(MedsynthError, match="non-finite"):
        read_image(p)


# ----------------------------------------------------------------------------- DICOM series
def test_series_sorted_by_position_not_names_or_instance(tmp_path, make, phantom_ct):
    vol, _ = phantom_ct
    folder, uid = make.ct_series(tmp_path / "s", vol, spacing=(2.5, 0.7, 0.6), shuffle=True)
    rec = read_image(folder)
    assert rec.array.shape == vol.shape
    np.testing.assert_allclose(rec.array, np.clip(np.round(vol), -1024, None), atol=0.5)
    assert rec.spacing == pytest.approx((2.5, 0.7, 0.6))
    assert rec.meta["series_uid"] == uid and rec.meta["n_slices"] == vol.shape[0]
    assert rec.meta["sorted_by"] == "position"


def test_folder_with_two_series_needs_series_uid(tmp_path, make, phantom_ct):
    vol, _ = phantom_ct
    _, uid_a = make.ct_series(tmp_path / "two" / "a", vol[:5])
    _, uid_b = make.ct_series(tmp_path / "two" / "b", vol[5:])
    series = read_dicom_series(tmp_path / "two")
    assert sorted(r.meta["series_uid"] for r in series) == sorted([uid_a, uid_b])
    with pytest.raises(MedsynthError, match="2 DICOM series") as ei:
        read_image(tmp_path / "two")
    assert uid_a in str(ei.value)
    rec = read_image(tmp_path / "two", series_uid=uid_b)
    np.testing.assert_allclose(rec.array, np.clip(np.round(vol[5:]), -1024, None), atol=0.5)


def test_empty_and_non_dicom_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsynthError, match="empty folder"):
        read_image(tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    with pytest.raises(MedsynthError, match="no DICOM"):
        read_image(tmp_path / "txt")


# ----------------------------------------------------------------------------- NIfTI
def test_nifti_canonical_orientation_to_dhw(tmp_path, make):
    # RAS voxel array (x, y, z) = (4, 3, 2); mark voxel x=0 (patient left-most... i.e. towards
    # patient's right is +x) y=0 (posterior) z=1 (superior)
    data = np.zeros((4, 3, 2), np.float32)
    data[0, 0, 1] = 5
    p = make.nifti(tmp_path / "v.nii.gz", data, zooms=(0.5, 0.6, 2.0))
    rec = read_image(p)
    assert rec.array.shape == (2, 3, 4)
    # D index 1 (superior), row H-1 (posterior at the bottom), column W-1 (x=0 -> patient left on
    # the image's right in radiological display)
    assert rec.array[1, 2, 3] == 5 and rec.array.sum() == 5
    assert rec.spacing == pytest.approx((2.0, 0.6, 0.5))


def test_nifti_lps_affine_is_canonicalised(tmp_path, make):
    data = np.zeros((4, 3, 2), np.float32)
    data[0, 0, 1] = 5
    ras = read_image(make.nifti(tmp_path / "ras.nii", data)).array
    # the same image stored with x and y flipped (LPS voxel order) must read identically
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[:3, 3] = [3.0, 2.0, 0.0]
    lps = read_image(make.nifti(tmp_path / "lps.nii", data[::-1, ::-1].copy(), affine=aff)).array
    np.testing.assert_array_equal(ras, lps)


def test_nifti_2d_and_4d(tmp_path, make):
    rec = read_image(make.nifti(tmp_path / "flat.nii.gz", np.arange(12, dtype=np.float32).reshape(4, 3, 1)))
    assert rec.array.shape == (3, 4)
    with pytest.raises(MedsynthError, match="4D NIfTI"):
        read_image(make.nifti(tmp_path / "t.nii.gz", np.zeros((4, 3, 2, 5), np.float32)))


def test_nifti_modality_guess(tmp_path, make, phantom_ct):
    vol, _ = phantom_ct
    assert read_image(make.nifti(tmp_path / "ct.nii.gz", vol.transpose(2, 1, 0))).modality == "ct"
    assert read_image(make.nifti(tmp_path / "o.nii.gz", np.random.rand(3, 3, 3).astype(np.float32))).modality == "unknown"


# ----------------------------------------------------------------------------- PNG / npz
def test_png_8_16_bit_and_rgb(tmp_path, make):
    a8 = (np.arange(20).reshape(4, 5) * 10).astype(np.uint8)
    np.testing.assert_array_equal(read_image(make.png(tmp_path / "a.png", a8)).array, a8)
    a16 = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    np.testing.assert_array_equal(read_image(make.png(tmp_path / "b.png", a16)).array, a16)
    rgb = np.stack([a8, a8, a8], -1)
    np.testing.assert_allclose(read_image(make.png(tmp_path / "c.png", rgb)).array, a8, atol=0.01)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MedsynthError, match="bad.png"):
        read_image(bad)


def test_npz_images_key_or_single_array(tmp_path, make):
    a = np.random.rand(5, 6).astype(np.float32)
    np.testing.assert_array_equal(read_image(make.npz(tmp_path / "a.npz", images=a, labels=np.ones(1))).array, a)
    np.testing.assert_array_equal(read_image(make.npz(tmp_path / "b.npz", whatever=a)).array, a)
    with pytest.raises(MedsynthError, match="expected an array 'images'"):
        read_image(make.npz(tmp_path / "c.npz", x=a, y=a))


# ----------------------------------------------------------------------------- slices
def test_take_slices_mask_and_centre(phantom_ct):
    vol, mask = phantom_ct
    s, idx = take_slices(vol, n=1, mask=mask)
    assert idx == [8] and s.shape == (1,) + vol.shape[1:]
    _, idx = take_slices(vol, n=3)
    assert idx == [5, 6, 7]
    _, idx = take_slices(vol, n=4, mask=np.zeros_like(mask))  # empty mask -> centre
    assert idx == [4, 5, 6, 7]
    last = np.zeros_like(mask)
    last[-1, 3, 3] = 1
    _, idx = take_slices(vol, n=5, mask=last)
    assert idx == [7, 8, 9, 10, 11]  # centred on slice 11, clamped inside the volume
