"""ProGAN: growth schedule, fade-in continuity, real-image fading, exact resume mid-fade."""

from __future__ import annotations

import pytest
import torch

from medsynth.config import resolve
from medsynth.models.base import Batch, StepInfo
from medsynth.models.registry import build_model
from medsynth.runs import load_trained
from medsynth.train.loop import train


def _cfg(dims=2, size=16, steps=12, **params):
    return resolve(base={"model": {"name": "progan", "width": 4, "latent_dim": 16, "num_classes": 2,
                                   "params": {"kimg_per_stage": 0.032, "fade_fraction": 0.5, **params}},
                         "data": {"size": size, "spatial_dims": dims},
                         "train": {"steps": steps, "batch_size": 8, "tick_every": 1, "sample_every": 1000,
                                   "checkpoint_every": 1000}})


def test_schedule_stages_and_fade():
    m = build_model(_cfg().model)  # 16²: stages 4, 8, 16; 32 images per stage, fade over 16
    assert m.max_stage == 2
    assert m.schedule(0) == (0, 1.0)
    assert m.schedule(31) == (0, 1.0)
    assert m.schedule(32) == (1, 0.0)
    assert m.schedule(40) == (1, 0.5)
    assert m.schedule(48) == (1, 1.0)
    assert m.schedule(72) == (2, 0.5)
    assert m.schedule(10_000) == (2, 1.0)


def test_schedule_advances_from_the_global_step_and_batch():
    """The schedule reads the loop's StepInfo (global batch), not the batch a process is handed:
    under torchrun each rank's slice is smaller, and growth must not slow down by the rank count."""
    m = build_model(_cfg().model)
    g = torch.Generator().manual_seed(0)
    half = Batch(torch.rand(4, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 2, (4,), generator=g))
    m.loss("D", half, StepInfo(0, 8, world_size=2))  # one rank's half of a global batch of 8
    m.on_step_end(StepInfo(4, 8, world_size=2))  # 5 steps x 8 images = 40 shown
    assert int(m.stage) == 1 and float(m.alpha) == pytest.approx(0.5)
    assert m.resolution == 8
    assert "batch_size" not in m.state_dict()  # nothing inferred from batches to checkpoint
    two_critics = build_model(_cfg(n_critic=2).model)
    two_critics.on_step_end(StepInfo(1, 8))  # 2 steps x 8 images x 2 critic updates = 32 shown
    assert int(two_critics.stage) == 1 and float(two_critics.alpha) == 0.0


@pytest.mark.parametrize("dims", [2, 3])
def test_fade_in_starts_exactly_where_previous_stage_ended(dims):
    """At alpha = 0 the new stage's output equals the previous stage's output up-sampled."""
    torch.manual_seed(0)
    m = build_model(_cfg(dims=dims, size=16 if dims == 2 else 8).model).eval()
    z = torch.randn(3, 16)
    y = torch.tensor([0, 1, 0])
    m.set_stage(0)
    coarse = m.generate(z, y)
    m.set_stage(1, 0.0)
    fading = m.generate(z, y)
    assert fading.shape == coarse.shape == (3, 1) + (m.cfg.size,) * dims
    assert torch.allclose(fading, coarse, atol=1e-5)
    m.set_stage(1, 1.0)
    assert not torch.allclose(m.generate(z, y), coarse, atol=1e-3)


def test_real_images_are_faded_like_the_generator():
    m = build_model(_cfg().model)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    m.set_stage(1, 1.0)
    sharp = m.fade_real(x)
    assert sharp.shape == (2, 1, 8, 8)
    assert torch.allclose(sharp, torch.nn.functional.avg_pool2d(x, 2))
    m.set_stage(1, 0.0)
    blurred = m.fade_real(x)
    coarse = torch.nn.functional.avg_pool2d(x, 4)
    assert torch.allclose(blurred, coarse.repeat_interleave(2, -1).repeat_interleave(2, -2), atol=1e-6)


def test_non_saturating_r1_loss_option():
    torch.manual_seed(0)
    m = build_model(_cfg(loss="ns").model)
    batch = Batch(torch.rand(8, 1, 16, 16) * 2 - 1, torch.randint(0, 2, (8,)))
    loss, stats = m.loss("D", batch, StepInfo(0, 8))
    assert torch.isfinite(loss) and stats["r1"] >= 0
    with pytest.raises(ValueError, match="wgan_gp"):
        build_model(_cfg(loss="hinge").model)


def test_lazy_r1_moves_the_penalty_to_a_sparse_phase(tmp_path):
    m = build_model(_cfg(loss="ns", r1_every=4).model)
    names = [(p.name, p.every, p.opt_key) for p in m.phases()]
    assert names == [("D", 1, "D"), ("Dreg", 4, "D"), ("G", 1, "G")]
    torch.manual_seed(0)
    batch = Batch(torch.rand(8, 1, 16, 16) * 2 - 1, torch.randint(0, 2, (8,)))
    _, d_stats = m.loss("D", batch, StepInfo(0, 8))
    assert "r1" not in d_stats  # the main D phase has no double backward any more
    loss, stats = m.loss("Dreg", batch, StepInfo(0, 8))
    assert loss.item() == pytest.approx(0.5 * 10.0 * 4 * stats["r1"].item(), rel=1e-5) and loss.item() > 0
    assert [p.name for p in build_model(_cfg(loss="ns").model).phases()] == ["D", "G"]
    g = torch.Generator().manual_seed(0)
    res = train(_cfg(steps=8, loss="ns", r1_every=4), torch.rand(24, 1, 16, 16, generator=g) * 2 - 1,
                torch.randint(0, 2, (24,), generator=g), tmp_path / "r")
    assert res.step == 8


def test_resume_mid_fade_is_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 16, 16, generator=g) * 2 - 1
    y = torch.randint(0, 2, (24,), generator=g)
    train(_cfg(steps=12), x, y, tmp_path / "full")
    train(_cfg(steps=5), x, y, tmp_path / "half")
    _, mid, _ = load_trained(tmp_path / "half")
    assert int(mid.stage) == 1 and 0.0 < float(mid.alpha) < 1.0, "the interrupted run must stop mid-fade"
    train(_cfg(steps=12), x, y, tmp_path / "half", resume=True)
    _, a, _ = load_trained(tmp_path / "full")
    _, b, _ = load_trained(tmp_path / "half")
    assert int(a.stage) == 2  # 12 x 8 = 96 images: third stage, done fading
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and {"stage", "alpha"} <= set(sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("dims", [2, 3])
def test_fade_runs_under_cpu_bf16_autocast(dims):
    """``train.amp=auto`` picks bf16 on CPUs with AMX: CPU autocast runs 3D pooling and
    up-sampling in fp32 but convolutions in bf16, so the fade's two branches differ in dtype."""
    torch.manual_seed(0)
    m = build_model(_cfg(dims=dims, size=16 if dims == 2 else 8).model)
    m.set_stage(1, 0.5)
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.rand(8, 1, *[m.cfg.size] * dims, generator=g) * 2 - 1, torch.randint(0, 2, (8,), generator=g))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for phase in ("D", "G"):
            loss, _ = m.loss(phase, batch, StepInfo(0, 8))
            assert torch.isfinite(loss)
