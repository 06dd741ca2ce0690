"""The newcomer's first run (issue 20): the whole-chest demo folder is what `medsynth train --modality
xray` trains on by default, and the end of a run says what it made (grid beside real images, the
checkpoint, a quick fidelity figure, the next commands)."""

from __future__ import annotations


import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medsynth.cli import DEMO_NOTE, FINAL_PICTURE, app, default_data
from medsynth.config import resolve
from medsynth.models.registry import build_model
from medsynth.train.grid import side_by_side

runner = CliRunner()
TINY = ["--size", "16", "--steps", "2", "--set", "model.width=4", "--set", "model.latent_dim=16"]


def test_nearest_upsampling_generator_has_no_transposed_convolution():
    cfg = resolve(base={"model": {"name": "dcgan", "width": 4, "latent_dim": 16, "params": {"g_up": "nearest"}},
                        "data": {"size": 32}})
    model = build_model(cfg.model)
    kinds = {type(m).__name__ for m in model.G.modules()}
    assert "ConvTranspose2d" not in kinds and "Upsample" in kinds
    x = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 32, 32) and x.abs().max() <= 1
    default = build_model(resolve(base={"model": {"name": "dcgan", "width": 4, "latent_dim": 16},
                                        "data": {"size": 32}}).model)
    assert "ConvTranspose2d" in {type(m).__name__ for m in default.G.modules()}  # the default is unchanged


def test_committed_chest_demo_is_a_folder_of_unlabelled_whole_chest_radiographs():
    folder = default_data("chest")
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 300
    ds = pydicom.dcmread(files[0])
    assert "chest view" in ds.SeriesDescription and ds.Modality == "DX"
    assert ds.Rows == ds.Columns == 64
    manifest = (default_data().read_text())
    assert "chest/" not in manifest  # not in the labelled manifest: the unlabelled-folder path


def test_side_by_side_puts_synthetic_left_and_real_right():
    dark, bright = -torch.ones(8, 1, 8, 8), torch.ones(8, 1, 8, 8)
    pic = np.asarray(side_by_side(dark, bright, title_synthetic="s", title_real="r", nrow=4, scale=1))
    h, w = pic.shape
    left, right = pic[30:, : w // 2 - 12], pic[30:, w // 2 + 12:]
    assert left.max() == 0 and right.mean() > 120  # grid padding is black


@pytest.mark.slow
def test_default_xray_run_trains_on_the_chest_demo_and_says_what_it_made(tmp_path):
    r = runner.invoke(app, ["train", "--modality", "xray", *TINY, "--out", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert DEMO_NOTE in r.output and "unconditionally" in r.output
    run = tmp_path / "runs" / "00000-xray-dcgan"
    picture = run / "local" / FINAL_PICTURE
    assert Image.open(picture).size[0] > 2 * Image.open(sorted((run / "samples").glob("*.png"))[-1]).size[0]
    for key in ("run:", "samples:", "beside real:", "checkpoint:", "quick check:", "next:",
                f"medsynth generate {run}", f"medsynth evaluate {run}"):
        assert key in r.output, key
    assert "AUROC" in r.output and "real vs real" in r.output
    assert "train: 2/2 steps" in r.output  # progress as a plain line when not on a terminal


def test_models_that_need_labels_default_to_the_labelled_lung_spot_set(tmp_path):
    r = runner.invoke(app, ["train", "--modality", "xray", "--model", "cgan", *TINY, "--no-quick-check",
                            "--out", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert DEMO_NOTE not in r.output and str(default_data()) in r.output
    r = runner.invoke(app, ["train", "--modality", "xray", "--conditional", *TINY, "--no-quick-check",
                            "--out", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert DEMO_NOTE not in r.output and "unconditionally" not in r.output
