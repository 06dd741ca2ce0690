"""load_image_set over manifests, folders, npz files and the LIDC folder; ImageSet helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import phantom_volume
from medsynth.data.dataset import load_image_set
from medsynth.data.imageset import ImageSet
from medsynth.data.readers import read_image
from medsynth.data.transforms import ct_pipeline
from medsynth.errors import MedsynthError


def _check(ims: ImageSet, n: int, shape: tuple, modality: str):
    assert len(ims) == n
    assert ims.images.shape == (n, 1, *shape) and ims.images.dtype == torch.float32
    assert float(ims.images.min()) >= -1 and float(ims.images.max()) <= 1
    assert ims.labels.dtype == torch.int64 and ims.labels.shape == (n,)
    assert len(ims.patient_ids) == len(ims.paths) == len(ims.splits) == n
    assert ims.modality == modality
    assert set(ims.splits) <= {"train", "val", "test"}


def test_manifest_xray_prefers_dicom_and_keeps_splits(mixed_manifest):
    ims = load_image_set(mixed_manifest, modality="xray", size=16)
    _check(ims, 6, (16, 16), "xray")
    assert all(p.endswith(".dcm") for p in ims.paths)  # dicom rows chosen over the png copies
    assert ims.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert ims.splits == ["train"] * 4 + ["val", "test"]
    test = load_image_set(mixed_manifest, modality="xray", size=16, split="test")
    assert test.patient_ids == ["X5"]
    torch.testing.assert_close(test.images[0], ims.images[5])


def test_manifest_ct_slices_from_volumes_use_mask(mixed_manifest):
    ims = load_image_set(mixed_manifest, modality="ct", size=16)
    _check(ims, 6, (16, 16), "ct")
    assert ims.patient_ids == [f"C{i}" for i in range(6)]
    # lung phantom: the slice contains air (-1), lung and soft tissue
    assert float(ims.images.min()) == -1.0 and float(ims.images.max()) > 0.5
    # dicom_series rows (with a mask): the slice where the nodule mask is largest (3 + i);
    # NIfTI rows (no mask): the central slice (6) of the 12-slice volume
    base = mixed_manifest.parent
    pipe = ct_pipeline(16)
    for i in range(6):
        if i < 3:
            vol, z = read_image(base / f"ct/series/C{i}").array, 3 + i
        else:
            vol, z = read_image(base / f"ct/nifti/C{i}.nii.gz").array, 6
            # the NIfTI was written from the same (D, H, W) phantom layout: orientation round-trips
            np.testing.assert_allclose(vol, phantom_volume(seed=i)[0], atol=1e-3)
        expected = pipe({"image": vol[z][None]})["image"]
        torch.testing.assert_close(ims.images[i], expected)
    assert not torch.allclose(ims.images[0], pipe({"image": read_image(base / "ct/series/C0").array[6][None]})["image"])
    vols = load_image_set(mixed_manifest, modality="ct", size=8, spatial_dims=3)
    _check(vols, 6, (8, 8, 8), "ct")


def test_folder_of_dicoms_with_labels_csv(xray_dir):
    ims = load_image_set(xray_dir, modality="xray", size=32)
    _check(ims, 8, (32, 32), "xray")
    assert ims.labels.tolist() == [0, 1, 1, 0, 0, 1, 1, 0]
    assert ims.patient_ids == ["P000", "P000", "P001", "P001", "P002", "P002", "P003", "P003"]
    # splits assigned by patient when the source has none
    for pid in set(ims.patient_ids):
        assert len({s for s, p in zip(ims.splits, ims.patient_ids) if p == pid}) == 1
    # asking for CT in a folder of DX files finds nothing
    with pytest.raises(MedsynthError, match="no ct images"):
        load_image_set(xray_dir, modality="ct")


def test_folder_with_ct_series_and_pngs(tmp_path, make, phantom_ct):
    vol, _ = phantom_ct
    make.ct_series(tmp_path / "ct" / "case1", vol, patient_id="A")
    make.ct_series(tmp_path / "ct" / "case2", vol[::-1].copy(), patient_id="B")
    ims = load_image_set(tmp_path / "ct", modality="ct", size=16)
    _check(ims, 2, (16, 16), "ct")
    assert sorted(ims.patient_ids) == ["A", "B"] and ims.labels.tolist() == [-1, -1]
    v = load_image_set(tmp_path / "ct", modality="ct", size=8, spatial_dims=3)
    _check(v, 2, (8, 8, 8), "ct")
    # the second series is the first upside down: its volume is the flip of the first
    a, b = (v.images[i] for i in np.argsort(v.patient_ids))
    torch.testing.assert_close(a, b.flip(1), atol=0.05, rtol=0)
    for i in range(3):
        make.png(tmp_path / "png" / f"im{i}.png", (np.random.default_rng(i).random((20, 30)) * 255).astype(np.uint8))
    _check(load_image_set(tmp_path / "png", modality="xray", size=16), 3, (16, 16), "xray")


def test_npz_source(tmp_path, make):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (10, 28, 28)).astype(np.uint8)
    p = make.npz(tmp_path / "set.npz", images=imgs, labels=np.arange(10) % 2,
                 patient_ids=np.array([f"p{i // 2}" for i in range(10)]),
                 splits=np.array(["train"] * 6 + ["valid"] * 2 + ["test"] * 2))
    ims = load_image_set(p, modality="xray", size=32)
    _check(ims, 10, (32, 32), "xray")
    assert ims.splits[6] == "val" and ims.paths[3].endswith("set.npz#3")
    assert len(ims.split("test")) == 2 and ims.split("test").patient_ids == ["p4", "p4"]
    hu = rng.uniform(-1000, 400, (4, 6, 16, 16)).astype(np.float32)
    p3 = make.npz(tmp_path / "vol.npz", images=hu)
    _check(load_image_set(p3, modality="ct", size=8, spatial_dims=3), 4, (8, 8, 8), "ct")
    _check(load_image_set(p3, modality="ct", size=8), 4, (8, 8), "ct")  # central slices


def test_constant_and_bad_sources(tmp_path, make):
    folder = tmp_path / "c"
    make.dx(folder / "ok.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    flat = make.dx(folder / "flat.dcm", np.full((8, 8), 7, np.uint16))
    with pytest.raises(MedsynthError, match="constant image") as ei:
        load_image_set(folder, modality="xray", size=8)
    assert str(flat) in str(ei.value)
    with pytest.raises(MedsynthError, match="not found"):
        load_image_set(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsynthError, match="empty folder"):
        load_image_set(tmp_path / "empty")
    with pytest.raises(MedsynthError, match="only available for CT"):
        load_image_set(folder, modality="xray", spatial_dims=3)
    with pytest.raises(MedsynthError, match="split"):
        load_image_set(folder, split="training")


def test_cache_dir_roundtrip_and_invalidation(tmp_path, make, xray_dir):
    cache = tmp_path / "cache"
    a = load_image_set(xray_dir, modality="xray", size=16, cache_dir=cache)
    files = list(cache.glob("imageset-*.npz"))
    assert len(files) == 1
    b = load_image_set(xray_dir, modality="xray", size=16, cache_dir=cache)
    torch.testing.assert_close(a.images, b.images)
    assert (a.labels == b.labels).all() and a.paths == b.paths and a.splits == b.splits
    load_image_set(xray_dir, modality="xray", size=8, cache_dir=cache)  # other params: new entry
    assert len(list(cache.glob("imageset-*.npz"))) == 2
    make.dx(xray_dir / "P009" / "new.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8), patient_id="P009")
    c = load_image_set(xray_dir, modality="xray", size=16, cache_dir=cache)  # a new file: rebuilt
    assert len(c) == 9


def test_imageset_subset_split_and_validation():
    ims = ImageSet(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), ["a", "b", "c", "d"],
                   ["1", "2", "3", "4"], ["train", "test", "train", "val"], "xray")
    assert ims.split("train").patient_ids == ["a", "c"]
    assert ims.subset([3, 0]).paths == ["4", "1"]
    assert ims.subset(torch.tensor([True, False, False, True])).labels.tolist() == [0, 1]
    assert len(ims.split("nothing")) == 0
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(2, 1, 2, 2), torch.zeros(3, dtype=torch.long), ["a"] * 2, ["p"] * 2, [""] * 2, "ct")


def test_lidc_folder_dispatch(monkeypatch, tmp_path):
    import medsynth.data.lidc as lidc

    seen = {}

    def fake(root, *, spatial_dims=2, size=64, ct_window="lung", seed=0):
        seen.update(root=root, spatial_dims=spatial_dims, size=size, ct_window=ct_window)
        return ImageSet(torch.zeros(2, 1, size, size), torch.tensor([0, 1]), ["a", "b"], ["x", "y"],
                        ["train", "test"], "ct")

    monkeypatch.setattr(lidc, "load_lidc", fake)
    (tmp_path / "nodules_axial_50px.npz").write_bytes(b"")
    ims = load_image_set(tmp_path, modality="ct", size=8, split="test", ct_window="mediastinal")
    assert seen["size"] == 8 and seen["ct_window"] == "mediastinal" and len(ims) == 1


def test_real_lidc_folder(shared_data):
    root = shared_data / "lidc_nodules"
    if not (root / "nodules_axial_50px.npz").exists():
        pytest.skip(f"{root} lacks nodules_axial_50px.npz")
    ims = load_image_set(root, modality="ct", size=32, split="test")
    assert ims.modality == "ct" and set(ims.labels.tolist()) <= {0, 1} and set(ims.splits) == {"test"}
    assert ims.images.shape[1:] == (1, 32, 32)


def test_real_nih_npz(shared_data):
    p = shared_data / "nih_cxr14_1000" / "nih1000_64px.npz"
    if not p.exists():
        pytest.skip(f"{p} absent")
    ims = load_image_set(p, modality="xray", size=64, split="val")  # 'valid' in the file
    assert len(ims) == 200 and set(ims.splits) == {"val"}
    assert float(ims.images.std()) > 0.2


def test_ct_png_slices_are_taken_as_windowed_grey(tmp_path, make):
    g = np.tile(np.linspace(0, 255, 16).round().astype(np.uint8), (16, 1))
    make.png(tmp_path / "s0.png", g)
    # the same grey levels at 16 bits, mirrored (identical pixels would be refused: two labels)
    make.png(tmp_path / "s1.png", np.ascontiguousarray(g[:, ::-1]).astype(np.uint16) * 257)
    (tmp_path / "m.csv").write_text(
        "path,label,patient_id,modality,kind,format\n"
        "s0.png,1,a,ct,slice,png\ns1.png,0,b,ct,slice,png\n"
    )
    ims = load_image_set(tmp_path / "m.csv", modality="ct", size=16, ct_window="mediastinal")
    expected = torch.from_numpy(g / 255.0 * 2 - 1).float()
    torch.testing.assert_close(ims.images[0, 0], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(ims.images[1, 0], expected.flip(1), atol=1e-4, rtol=0)
