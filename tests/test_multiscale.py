"""Multi-scale patch GAN: fixed-size patch-generator calls, no seams, coarse-scale consistency,
short training through the one loop and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from medsynth.config import resolve
from medsynth.errors import MedsynthError
from medsynth.models.registry import build_model
from medsynth.runs import load_trained
from medsynth.train.loop import train


def _cfg(dims=2, size=32, num_classes=2, steps=3, **params):
    return resolve(base={"model": {"name": "multiscale", "width": 4, "latent_dim": 16, "num_classes": num_classes,
                                   "params": params},
                         "data": {"size": size, "spatial_dims": dims},
                         "train": {"steps": steps, "batch_size": 8, "tick_every": 1, "sample_every": 1000,
                                   "checkpoint_every": 1000}})


def _model(dims=2, size=32, **params):
    torch.manual_seed(0)
    return build_model(_cfg(dims, size, **params).model).eval()


def _perturb(model):
    """Give the patch generator a clearly non-zero residual (as after training)."""
    with torch.no_grad():
        for net in (model.Gp, model.Gp_ema):
            net.convs[-1].weight.mul_(20.0)
            net.convs[-1].bias.normal_(0, 0.3)


def _pool(x, f):
    return F.avg_pool2d(x, f) if x.dim() == 4 else F.avg_pool3d(x, f)


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 16)])
def test_tiled_equals_whole_image_generation(dims, size):
    """Tiles with a context margin >= the receptive radius: no seams (same as one whole pass)."""
    m = _model(dims, size, coarse=4, patch=4)
    _perturb(m)
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    tiled = m.generate(z, y, tiled=True)
    whole = m.generate(z, y, tiled=False)
    assert tiled.shape == (2, 1) + (size,) * dims
    assert (tiled - whole).abs().max() < 1e-5
    assert tiled.std() > 0.05  # the residual is not trivially zero


@pytest.mark.parametrize("dims,sizes", [(2, (32, 64)), (3, (16, 32))])
def test_larger_output_keeps_patch_generator_activations_fixed(dims, sizes):
    """Every patch-generator call sees the fixed window; its largest activation does not grow."""
    seen = {}
    for size in sizes:
        m = _model(dims, size, coarse=8, patch=8, tile_batch=4)
        shapes, peak, calls = set(), [0], [0]

        def pre(mod, args):
            calls[0] += 1
            shapes.update(tuple(a.shape) for a in args if torch.is_tensor(a) and a.dim() > 2)

        def act(mod, args, out):
            peak[0] = max(peak[0], out.numel())

        net = m.Gp_ema
        net.register_forward_pre_hook(pre)
        for conv in net.convs:
            conv.register_forward_hook(act)
        x = m.sample(3, generator=torch.Generator().manual_seed(0))
        assert x.shape == (3, 1) + (size,) * dims
        seen[size] = (shapes, peak[0], calls[0])
    (s_small, p_small, c_small), (s_big, p_big, c_big) = seen[sizes[0]], seen[sizes[1]]
    window = 8 + 2 * 6
    allowed = {(b, c) + (window,) * dims for b in range(1, 5) for c in (1, dims)}
    assert s_small <= allowed and s_big <= allowed
    assert p_big == p_small  # peak activation identical although the output is 2^d times larger
    assert c_big > c_small


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 16)])
def test_output_is_consistent_with_the_coarse_image(dims, size):
    m = _model(dims, size, coarse=4, patch=8)
    _perturb(m)
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1])
    levels = m.generate_levels(z, y)
    assert len(levels) == m.levels + 1
    for fine, coarse in zip(levels[1:], levels[:-1]):
        assert (fine - F.interpolate(coarse, scale_factor=2)).abs().max() > 0.05  # detail was added
        assert (_pool(fine, 2) - coarse).abs().max() < 1e-5  # but the block means are the coarser image
    # the clamped sample, pooled to the coarse size, stays close to the coarse image
    x = m.generate(z, y).clamp(-1, 1)
    assert (_pool(x, size // 4) - levels[0]).abs().mean() < 0.02


def test_short_training_run_has_finite_losses_and_generates(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 16, 16, generator=g) * 2 - 1
    y = torch.randint(0, 2, (16,), generator=g)
    res = train(_cfg(2, 16, steps=3), x, y, tmp_path / "run", grid_size=8)
    lines = [json.loads(s) for s in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    keys = {"loss/Dc", "loss/Gc", "loss/Dp", "loss/Gp", "l1/Gp"}
    for line in lines:
        assert keys <= line.keys()
        assert all(torch.isfinite(torch.tensor(line[k])) for k in keys)
    _, model, ck = load_trained(res.run_dir)
    assert ck["step"] == 3
    out = model.sample(4, labels=1, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 16, 16) and out.abs().max() <= 1


def test_real_windows_line_up_with_the_real_image():
    """Training windows: the condition is the real coarser level around the tile, the target the
    real tile, so pooling the target gives the condition's centre."""
    m = _model(2, 32, coarse=8, patch=8)
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    cond, target, starts, level = m.real_windows(x, torch.Generator().manual_seed(0))
    mg, p = m.margin, m.patch
    assert cond.shape == (6, 1, p + 2 * mg, p + 2 * mg) and target.shape == (6, 1, p, p)
    centre = cond[:, :, mg:mg + p, mg:mg + p]
    assert torch.allclose(_pool(target, 2), _pool(centre, 2), atol=1e-6)
    assert (starts % 2 == 0).all() and set(level.tolist()) <= set(range(m.levels))


@pytest.mark.parametrize("params", [{"coarse": 32}, {"coarse": 6}, {"patch": 32, "coarse": 8}, {"depth": 7, "margin": 6},
                                    {"nope": 1}])
def test_bad_settings_are_one_line_errors(params):
    with pytest.raises(MedsynthError):
        build_model(_cfg(2, 32, **params).model)


def test_cli_train_and_generate(tmp_path):
    from typer.testing import CliRunner

    from medsynth.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["train", "--modality", "xray", "--model", "multiscale", "--size", "16", "--steps", "2",
                            "--set", "model.width=4", "--set", "model.latent_dim=16", "--set", "model.params.coarse=4",
                            "--set", "model.params.patch=8", "--out", str(tmp_path / "runs"),
                            "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs").glob("*-xray-multiscale"))
    r = runner.invoke(app, ["generate", str(run), "--count", "4", "--format", "png"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert len(list((run / "synthetic").glob("**/*.png"))) == 4
