"""StyleGAN2: lazy-regularisation phases, modulated convolution maths, truncation, style mixing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medsynth.config import resolve
from medsynth.models.base import Batch, StepInfo
from medsynth.models.registry import build_model
from medsynth.models.stylegan2 import ModulatedConv, stylegan2_channels


def _model(num_classes=2, dims=2, **params):
    torch.manual_seed(0)
    cfg = resolve(base={"model": {"name": "stylegan2", "width": 4, "latent_dim": 16, "num_classes": num_classes,
                                  "params": params},
                        "data": {"size": 16 if dims == 2 else 8, "spatial_dims": dims}})
    return build_model(cfg.model)


def test_lazy_regularisation_phases():
    phases = {ph.name: ph for ph in _model().phases()}
    assert phases["Greg"].every == 4 and phases["Dreg"].every == 16
    assert phases["G"].every == phases["D"].every == 1
    assert phases["Dreg"].modules == ("D",) and phases["Greg"].modules == ("G",)
    assert "Greg" not in {ph.name for ph in _model(pl_weight=0).phases()}


def test_channels_scale_with_resolution_and_cap():
    assert stylegan2_channels(64, 16, 256) == [256, 128, 64, 32, 16]
    assert stylegan2_channels(64, 32, 256) == [256, 256, 128, 64, 32]


@pytest.mark.parametrize("dims", [2, 3])
def test_modulation_by_scaling_equals_per_sample_weights(dims):
    """x * s -> conv -> * d must equal convolving each sample with its own modulated,
    demodulated weight (the paper's formulation)."""
    torch.manual_seed(0)
    conv = ModulatedConv(3, 5, 3, w_dim=6, spatial_dims=dims)
    x = torch.randn((2, 3) + (6,) * dims)
    w = torch.randn(2, 6)
    out = conv(x, w)
    s = conv.affine(w)
    f = F.conv2d if dims == 2 else F.conv3d
    for i in range(2):
        wi = conv.weight * conv.scale * s[i].view(1, 3, *([1] * dims))
        wi = wi * torch.rsqrt(wi.pow(2).flatten(1).sum(1) + 1e-8).view(5, 1, *([1] * dims))
        ref = f(x[i : i + 1], wi, padding=1)
        assert torch.allclose(out[i : i + 1], ref, atol=1e-5)


def _train_g_a_little(m, steps=3):
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.rand(8, 1, 16, 16, generator=g) * 2 - 1, torch.tensor([0, 1] * 4))
    opt = torch.optim.Adam(m.G.parameters(), lr=1e-2)
    for step in range(steps):
        loss, _ = m.loss("G", batch, StepInfo(step, 8))
        opt.zero_grad(), loss.backward(), opt.step()
        m.on_step_end(StepInfo(step, 8))


def test_truncation_zero_returns_the_class_mean_image():
    m = _model()
    _train_g_a_little(m)
    w_avg = m.G_ema.mapping.w_avg
    assert w_avg.shape == (2, 16) and not torch.allclose(w_avg[0], w_avg[1])
    a = m.sample(4, labels=0, truncation=0.0, generator=torch.Generator().manual_seed(1))
    b = m.sample(4, labels=1, truncation=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, a[:1].expand_as(a), atol=1e-6), "psi = 0: every sample of a class is the same"
    assert not torch.allclose(a[0], b[0], atol=1e-4), "classes have their own mean"
    m.eval()
    mean_img = m.G_ema.synthesis(w_avg[0].view(1, 1, -1).expand(1, m.G_ema.num_ws, -1)).clamp(-1, 1)
    assert torch.allclose(a[:1], mean_img, atol=1e-5)
    full = m.sample(4, labels=0, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(full, full[:1].expand_as(full), atol=1e-4)


def test_truncation_unconditional_uses_one_global_mean():
    m = _model(num_classes=0)
    assert m.G.mapping.w_avg.shape == (1, 16)
    a = m.sample(3, truncation=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(a, a[:1].expand_as(a), atol=1e-6)


def test_other_variants_reject_truncation():
    cfg = resolve(base={"model": {"name": "dcgan", "width": 4, "latent_dim": 16}, "data": {"size": 16}})
    with pytest.raises(ValueError, match="truncation"):
        build_model(cfg.model).sample(2, truncation=0.5)


def test_style_mixing_switches_w_at_a_cut_off():
    m = _model()
    w, w2 = torch.zeros(3, 16), torch.ones(3, 16)
    ws = m.G.mix(w, w2, prob=1.0)
    per_layer = ws[0, :, 0]
    cut = int((per_layer == 0).sum())
    assert 1 <= cut < m.G.num_ws
    assert torch.equal(per_layer, torch.cat([torch.zeros(cut), torch.ones(m.G.num_ws - cut)]))
    assert torch.equal(m.G.mix(w, w2, prob=0.0), torch.zeros(3, m.G.num_ws, 16))


def test_noise_is_random_in_training_and_fixed_in_eval():
    m = _model(num_classes=0)
    z = torch.randn(2, 16)
    m.G.convs[0].noise_strength.data.fill_(1.0)
    m.G.train()
    assert not torch.equal(m.G(z), m.G(z))
    m.G.eval()
    assert torch.equal(m.G(z), m.G(z))


def test_path_length_target_is_tracked():
    m = _model()
    batch = Batch(torch.rand(8, 1, 16, 16) * 2 - 1, torch.tensor([0, 1] * 4))
    assert float(m.pl_mean) == 0
    loss, stats = m.loss("Greg", batch, StepInfo(0, 8))
    assert torch.isfinite(loss) and float(m.pl_mean) > 0 and stats["pl_mean"] == float(m.pl_mean)
    loss, stats = m.loss("Dreg", batch, StepInfo(0, 8))
    assert torch.isfinite(loss) and stats["r1"] > 0


def test_r1_heuristic_uses_the_global_batch():
    """gamma = 0.0002 * size^2 / batch with the loop's global batch, not one rank's slice."""
    m = _model()
    assert m.p.r1_gamma is None
    half = Batch(torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 1] * 2))
    loss, stats = m.loss("Dreg", half, StepInfo(0, 8, world_size=2))
    expected = 0.5 * (0.0002 * 16**2 / 8) * m.p.r1_every
    assert float(loss) == pytest.approx(float(stats["r1"]) * expected, rel=1e-6)
