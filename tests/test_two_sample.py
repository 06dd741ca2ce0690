"""The classifier two-sample test (:mod:`medsynth.metrics.two_sample`) and its place in the evaluation.

Small images (16², 32², 8³) and few epochs keep the file fast on one thread; the test's behaviour
(near 0.5 for one distribution, near 1 for two clearly different ones, deterministic, 2D and 3D,
refusing too few images) does not depend on the size.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from medsynth import progress
from medsynth.errors import MedsynthError
from medsynth.metrics.evaluate import (
    EVALUATE_SETS_STAGES,
    evaluate_sets,
    evaluation_markdown,
    evaluation_tables,
)
from medsynth.metrics.two_sample import two_sample_test

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"epochs": 4, "n_boot": 200}


def _textured(n: int, size: int = 16, *, seed: int, dims: int = 2) -> torch.Tensor:
    """``(n, 1, size, size)`` (or ``size³``) images in [-1, 1]: smooth random blobs plus mild noise."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1) + (size,) * dims
    coarse = torch.randn((n, 1) + (4,) * dims, generator=g)
    mode = "bilinear" if dims == 2 else "trilinear"
    x = 0.5 * nn.functional.interpolate(coarse, size=(size,) * dims, mode=mode, align_corners=False)
    return (x + 0.05 * torch.randn(shape, generator=g)).clamp(-1, 1)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """3×3 box blur (reflect padding) of ``(N, 1, H, W)`` images."""
    return nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


def _numbers(d: dict) -> dict:
    """Every value of the result but the wall time."""
    return {k: v for k, v in d.items() if k != "seconds"}


def test_same_distribution_is_near_half_and_floor_reported():
    real, synth = _textured(60, seed=1), _textured(60, seed=2)
    res = two_sample_test(real, synth, seed=0, **FAST)
    assert res["m"] == 60 and res["folds"] == 3 and len(res["fold_aurocs"]) == 3
    assert res["ci"][0] <= 0.5 <= res["ci"][1] or res["auroc"] < 0.75, res
    assert res["p_value"] > 0.01
    fl = res["floor"]
    assert fl["n_per_side"] == 30 and fl["ci"][0] <= fl["auroc"] <= fl["ci"][1]
    assert fl["ci"][0] <= 0.5 <= fl["ci"][1] or fl["auroc"] < 0.75, fl
    assert {"auroc", "ci", "p_value", "floor", "m", "folds", "epochs", "width", "seconds", "method"} <= set(res)


def test_clearly_different_sets_are_separated():
    real = _textured(60, seed=3)
    offset = (_textured(60, seed=4) + 0.5).clamp(-1, 1)  # a brightness offset
    res = two_sample_test(real, offset, seed=0, **FAST)
    assert res["auroc"] > 0.9 and res["ci"][0] > 0.75 and res["p_value"] < 1e-6, res
    # a texture difference: blurred against sharp images of the same kind
    res = two_sample_test(_textured(60, seed=5, size=32), _blur(_textured(60, seed=6, size=32)), seed=0, **FAST)
    assert res["auroc"] > 0.9, res
    assert res["auroc"] > res["floor"]["ci"][1]


def test_deterministic_and_leaves_the_global_rng_alone():
    real, synth = _textured(40, seed=7), (_textured(40, seed=8) * 0.7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = two_sample_test(real, synth, seed=5, epochs=2, min_steps=0, n_boot=100)
    assert torch.equal(torch.get_rng_state(), before)
    b = two_sample_test(real, synth, seed=5, epochs=2, min_steps=0, n_boot=100)
    assert _numbers(a) == _numbers(b)
    c = two_sample_test(real, synth, seed=6, epochs=2, min_steps=0, n_boot=100)
    assert _numbers(c) != _numbers(a)


def test_balances_the_sets_and_works_on_volumes():
    real = _textured(30, size=8, seed=9, dims=3)
    synth = (_textured(45, size=8, seed=10, dims=3) + 0.4).clamp(-1, 1)
    res = two_sample_test(real, synth, seed=0, folds=2, **FAST)
    assert (res["m"], res["n_real"], res["n_synthetic"], res["folds"]) == (30, 30, 45, 2)
    assert res["floor"]["n_per_side"] == 15
    assert res["auroc"] > 0.9, res


def test_refuses_too_few_images_and_bad_input():
    ok = _textured(30, seed=11)
    with pytest.raises(MedsynthError, match="too few images"):
        two_sample_test(ok, ok[:12])
    with pytest.raises(MedsynthError, match="differ in shape"):
        two_sample_test(ok, _textured(30, size=8, seed=12))
    with pytest.raises(MedsynthError, match="folds"):
        two_sample_test(ok, ok, folds=1)
    bad = ok.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(MedsynthError, match="NaN"):
        two_sample_test(ok, bad)
    with pytest.raises(MedsynthError, match="images"):
        two_sample_test(ok[:, 0], ok)
    assert "\n" not in str(pytest.raises(MedsynthError, two_sample_test, ok, ok[:3]).value)


class _Pool(nn.Module):
    """A fixed stand-in feature encoder: 4×4 average pooling, flattened."""

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 4).flatten(1)


def test_evaluate_sets_records_the_test_with_its_floor_and_reports_progress(caplog):
    real = _textured(48, size=16, seed=13)
    synth = (_textured(40, size=16, seed=14) + 0.5).clamp(-1, 1)
    mode = progress._MODE
    progress.set_mode("log")
    try:
        with caplog.at_level(logging.INFO, logger="medsynth.progress"):
            ev, _ = evaluate_sets(real, synth, encoder=_Pool(), modality="xray", seed=0, repeats=1, kid_subsets=3,
                                  ms_ssim_pairs=6, n_boot=100, two_sample_kw={"epochs": 4})
    finally:
        progress.set_mode(mode)
    ts = ev["fidelity"]["two_sample"]
    assert ts["m"] == 40 and ts["floor"]["n_per_side"] == 24
    assert ts["auroc"] > 0.9 and ts["floor"]["auroc"] < ts["auroc"]
    # existing keys stay as they were
    assert {"fd", "kid", "prdc", "intensity", "diversity_ms_ssim", "encoder"} <= set(ev["fidelity"])
    lines = [r.getMessage() for r in caplog.records if r.name == "medsynth.progress"]
    assert lines and lines[-1].startswith(f"evaluate: {len(EVALUATE_SETS_STAGES)}/{len(EVALUATE_SETS_STAGES)} stages")
    # the markdown shows the row with its CI, the floor beside it and the reading
    md = evaluation_markdown(dict(ev, figures={}))
    row = next(ln for ln in md.splitlines() if ln.startswith("| two-sample classifier AUROC |"))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    lo, hi = ts["ci"]
    assert cells[1] == f"{ts['auroc']:.3f} [{lo:.3f}, {hi:.3f}]"
    flo, fhi = ts["floor"]["ci"]
    assert cells[2] == f"{ts['floor']['auroc']:.3f} [{flo:.3f}, {fhi:.3f}]"
    assert "0.5 = it cannot" in cells[4]


def test_evaluate_sets_skips_the_test_on_too_few_synthetic_images():
    real = _textured(30, size=16, seed=15)
    ev, _ = evaluate_sets(real, _textured(8, size=16, seed=16), encoder=_Pool(), modality="xray", seed=0, repeats=1,
                          kid_subsets=3, ms_ssim_pairs=6, n_boot=50)
    ts = ev["fidelity"]["two_sample"]
    assert set(ts) == {"skipped"} and "too few images" in ts["skipped"]
    table = next(t for t in evaluation_tables(dict(ev, figures={})) if t[0].startswith("Fidelity: two-sample"))
    assert table[2][0][-1].startswith("skipped: ") and np.all([c == "–" for c in table[2][0][1:4]])
    # an evaluation written before the test (no key) shows no such table
    old = dict(ev, fidelity={k: v for k, v in ev["fidelity"].items() if k != "two_sample"})
    assert not any(t[0].startswith("Fidelity: two-sample") for t in evaluation_tables(old))
