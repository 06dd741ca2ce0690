"""Full resolution end to end (issue 18 point 4): whole-chest phantom radiographs at any size with
the right pixel spacing, the training set's field of view recorded by ``train`` (multi-scale model,
streamed data), and ``generate --format dicom`` writing spacing x size = that field of view.

Small sizes only (32 / 64 px): the arithmetic is the same at 512² and 1024²."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medsynth.cli import app
from medsynth.data.geometry import output_spacing, training_geometry
from medsynth.data.writers import write_nifti, write_png
from medsynth.phantom.sample import (
    XRAY_GRID,
    chest_field_mm,
    chest_grid,
    patient_id,
    write_chest_demo,
    write_chest_sizes,
)

runner = CliRunner()
FOV = 384.0  # the whole-chest phantom's field of view, mm


def test_chest_grid_keeps_the_field_and_refines_above_96_px():
    assert chest_grid(64) is XRAY_GRID  # the committed sample_data/chest/ is unchanged
    g = chest_grid(1024)
    assert g["shape"] == (256, 96, 256) and g["spacing_mm"] == (1.5, 4.0, 1.5)
    assert chest_grid(128)["shape"] == (128, 96, 128)
    for size in (64, 128, 512, 1024):
        assert chest_field_mm(chest_grid(size)) == (FOV, FOV)


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    root = tmp_path_factory.mktemp("chest")
    return root, write_chest_sizes(root / "sizes", n=4, sizes=[32, 64], seed=5)


def test_chest_sizes_are_the_demo_files_with_spacing_of_the_field(chest):
    root, folders = chest
    demo = write_chest_demo(root / "demo", n=4, seed=5, size=64)
    for i in range(4):
        name = f"{patient_id(i)}.dcm"
        assert (folders[64] / name).read_bytes() == (demo / name).read_bytes()
        for size in (32, 64):
            ds = pydicom.dcmread(folders[size] / name)
            assert (ds.Rows, ds.Columns) == (size, size)
            assert [float(v) * size for v in ds.ImagerPixelSpacing] == pytest.approx([FOV, FOV])
    marker = json.loads((root / "sizes" / "32.complete.json").read_text())
    assert marker["n"] == 4 and marker["field_of_view_mm"] == [FOV, FOV]


def test_chest_sizes_resume_an_interrupted_folder(chest):
    root, folders = chest
    name = f"{patient_id(2)}.dcm"
    before = (folders[32] / name).read_bytes()
    (folders[32] / name).unlink()
    (root / "sizes" / "32.complete.json").unlink()
    untouched = (folders[64] / name).stat().st_mtime_ns
    write_chest_sizes(root / "sizes", n=4, sizes=[32, 64], seed=5)
    assert (folders[32] / name).read_bytes() == before
    assert (folders[64] / name).stat().st_mtime_ns == untouched  # a finished size is not rewritten


def test_training_geometry_field_of_view(chest, tmp_path):
    _, folders = chest
    g = training_geometry(folders[32], modality="xray", spatial_dims=2, size=64, split=None)
    assert g["field_of_view_mm"] == pytest.approx([FOV, FOV]) and g["uniform"]
    assert g["pixel_spacing_mm"] == pytest.approx([FOV / 64] * 2) and g["images_measured"] == 4
    assert output_spacing(g, 1024) == pytest.approx((FOV / 1024, FOV / 1024))
    # a non-square volume: the longest side sets the (padded) cube's field along every axis
    vol = tmp_path / "vol"
    vol.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        write_nifti(vol / f"v{k}.nii.gz", rng.normal(0, 200, (16, 32, 24)).astype(np.float32),
                    spacing=(2.0, 0.5, 0.75), dtype=np.int16)
    g3 = training_geometry(vol, modality="ct", spatial_dims=3, size=16, split=None)
    assert g3["field_of_view_mm"] == pytest.approx([64.0, 16.0, 24.0])
    assert output_spacing(g3, 32) == pytest.approx((2.0, 0.5, 0.75))
    # PNG carries no spacing: recorded as unknown, with the reason
    png = tmp_path / "png"
    png.mkdir()
    for k in range(2):
        write_png(png / f"p{k}.png", rng.uniform(-1, 1, (32, 32)).astype(np.float32))
    gp = training_geometry(png, modality="xray", spatial_dims=2, size=32, split=None)
    assert gp["field_of_view_mm"] is None and "PNG" in gp["reason"] and output_spacing(gp, 32) is None


def test_multiscale_streamed_training_then_full_size_dicom_with_the_field_spacing(chest, tmp_path):
    """Train the multi-scale model on streamed 64² whole-chest files at size 32 (resized: the
    file's 6 mm pixels become 12 mm), then generate DICOM: spacing x size = 384 mm."""
    _, folders = chest
    r = runner.invoke(app, ["train", "--modality", "xray", "--model", "multiscale", "--data", str(folders[64]),
                            "--size", "32", "--steps", "2", "--batch-size", "4", "--set", "model.width=4",
                            "--set", "model.latent_dim=16", "--set", "model.params.coarse=8",
                            "--set", "model.params.patch=8", "--set", "data.stream=on",
                            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "runs"),
                            "--no-progress", "--no-quick-check"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs").glob("*-xray-multiscale"))
    report = json.loads((run / "data_report.json").read_text())
    assert report["loading"]["mode"] == "stream"
    assert report["geometry"]["field_of_view_mm"] == pytest.approx([FOV, FOV])
    r = runner.invoke(app, ["generate", str(run), "--count", "2", "--format", "dicom", "--no-gate",
                            "--out", str(tmp_path / "syn")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "syn").glob("*.dcm"))
    assert len(files) == 2
    for f in files:
        ds = pydicom.dcmread(f)
        assert (ds.Rows, ds.Columns) == (32, 32)
        assert [float(v) * 32 for v in ds.ImagerPixelSpacing] == pytest.approx([FOV, FOV], rel=1e-5)


def test_multiscale_generate_refines_one_image_at_a_time_with_the_batched_result():
    """``generate`` refines each image alone (working memory of one image at full size); the images
    are those of the batched pyramid (``generate_levels(keep_all=True)``), whatever the batch."""
    import torch

    from medsynth.config import resolve
    from medsynth.models.registry import build_model

    cfg = resolve(base={"model": {"name": "multiscale", "width": 4, "latent_dim": 16, "num_classes": 2,
                                  "params": {"coarse": 8, "patch": 8, "hidden": 8, "tile_batch": 5}},
                        "data": {"size": 32}})
    torch.manual_seed(0)
    m = build_model(cfg.model).eval()
    with torch.no_grad():
        m.Gp_ema.convs[-1].weight.mul_(10.0)
    z, y = torch.randn(3, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 1])
    one_by_one = m.generate(z, y)
    batched = m.generate_levels(z, y, keep_all=True)[-1]
    assert one_by_one.shape == (3, 1, 32, 32) and one_by_one.std() > 0.05
    assert (one_by_one - batched).abs().max() < 1e-5
    assert (m.generate(z[1:2], y[1:2])[0] - one_by_one[1]).abs().max() < 1e-5
