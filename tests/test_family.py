"""GAN, CGAN, SAGAN, BigGAN, CycleGAN, CoGAN: what each variant adds beyond the shared contract."""

from __future__ import annotations

import pytest
import torch

from medsynth import losses
from medsynth.config import resolve
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, StepInfo
from medsynth.models.biggan import truncate_latent
from medsynth.models.layers import SelfAttention
from medsynth.models.registry import build_model
from medsynth.runs import load_trained
from medsynth.train.loop import train


def _cfg(name, *, dims=2, size=None, num_classes=2, width=4, latent=16, params=None, **train_kw):
    size = size or (16 if dims == 2 else 8)
    return resolve(base={"model": {"name": name, "width": width, "latent_dim": latent, "num_classes": num_classes,
                                   "params": params or {}},
                         "data": {"size": size, "spatial_dims": dims},
                         "train": train_kw})


def _model(name, **kw):
    torch.manual_seed(0)
    return build_model(_cfg(name, **kw).model)


def _batch(n=8, size=16, labels=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    y = torch.tensor(labels) if labels is not None else torch.tensor([0, 1] * (n // 2))
    return Batch(x, y)


def _step(model, phase, batch, lr=1e-3):
    opt = torch.optim.Adam(list(model.sub_modules(next(p for p in model.phases() if p.name == phase).modules)), lr=lr)
    loss, stats = model.loss(phase, batch, StepInfo(0, 8))
    opt.zero_grad(), loss.backward(), opt.step()
    return loss, stats


# ---- variants that need labels -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["cgan", "cyclegan", "cogan"])
def test_label_variants_reject_unconditional_config(name):
    with pytest.raises(MedsynthError, match="num_classes"):
        _model(name, num_classes=0)


@pytest.mark.parametrize("name", ["cyclegan", "cogan"])
def test_two_domain_variants_need_exactly_two_labels(name):
    with pytest.raises(MedsynthError, match="exactly 2"):
        _model(name, num_classes=3)


# ---- GAN (MLP) ---------------------------------------------------------------------------------


def test_gan_is_mlp_and_minimax_option_changes_g_loss():
    ns, mm = _model("gan", num_classes=0), _model("gan", num_classes=0, params={"g_loss": "minimax"})
    assert not any(isinstance(m, torch.nn.Conv2d) for m in ns.modules())
    batch = Batch(_batch().images, None)
    torch.manual_seed(5)
    l_ns, _ = ns.loss("G", batch, StepInfo(0, 8))
    torch.manual_seed(5)
    l_mm, _ = mm.loss("G", batch, StepInfo(0, 8))
    assert l_ns > 0 > l_mm  # -log D(G(z)) is positive; log(1 - D(G(z))) is negative
    with pytest.raises(MedsynthError, match="g_loss"):
        _model("gan", params={"g_loss": "wasserstein"})


def test_minimax_g_loss_equals_log_one_minus_d():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.allclose(losses.minimax_g_loss(logits), torch.log(1 - torch.sigmoid(logits)).mean())


# ---- CGAN ------------------------------------------------------------------------------------------


def test_cgan_label_is_one_hot_in_g_and_label_maps_in_d():
    m = _model("cgan")
    assert m.D.features[0].in_channels == 1 + 2  # image + one-hot label maps
    assert m.G.fc.in_features == 16 + 2  # z ++ one-hot
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert not torch.equal(m.sample(4, labels=0, generator=g()), m.sample(4, labels=1, generator=g()))


# ---- SAGAN -----------------------------------------------------------------------------------------


def _sn_modules(net):
    return [m for m in net.modules() if hasattr(m, "parametrizations") and hasattr(m.parametrizations, "weight")]


def test_sagan_spectral_norm_keeps_largest_singular_value_near_one():
    m = _model("sagan", width=8)
    batch = _batch()
    for step in range(6):
        _step(m, "D", batch, lr=4e-4)
        _step(m, "G", batch, lr=1e-4)
    m.eval()
    sn = _sn_modules(m.D) + _sn_modules(m.G)
    assert len(sn) > 10
    sigmas, raw = [], []
    with torch.no_grad():
        for mod in sn:
            w = mod.weight.flatten(1) if not isinstance(mod, torch.nn.Embedding) else mod.weight
            sigmas.append(torch.linalg.matrix_norm(w, ord=2).item())
            raw.append(torch.linalg.matrix_norm(mod.parametrizations.weight.original.flatten(1), ord=2).item())
    assert all(abs(s - 1) < 0.05 for s in sigmas), sigmas
    assert max(abs(r - 1) for r in raw) > 0.2  # without the normalisation they would not be near 1


def test_sagan_attention_sits_at_16_squared_for_64_images():
    m = _model("sagan", size=64)
    seen = []
    for mod in m.modules():
        if isinstance(mod, SelfAttention):
            mod.register_forward_hook(lambda mod_, inp, out: seen.append(tuple(inp[0].shape[2:])))
    m.loss("G", Batch(torch.zeros(4, 1, 64, 64), torch.tensor([0, 1, 0, 1])), 0)
    assert seen == [(16, 16), (16, 16)]  # once in G, once in D


# ---- BigGAN --------------------------------------------------------------------------------------------


def test_biggan_truncation_narrows_sample_variance():
    m = _model("biggan")
    spread = {}
    for psi in (1.0, 0.7, 0.3, 0.0):
        x = m.sample(64, labels=1, generator=torch.Generator().manual_seed(0), truncation=psi)
        spread[psi] = x.std(dim=0).mean().item()
    assert spread[1.0] > spread[0.7] > spread[0.3] > spread[0.0]
    assert spread[0.0] < 1e-6  # psi 0: every sample is the class's z = 0 image


def test_truncate_latent_quantile_bounds_and_scale():
    z = torch.randn(10000, 8, generator=torch.Generator().manual_seed(0))
    t = truncate_latent(z, 0.5)
    bound = torch.special.ndtri(torch.tensor(0.75)).item()  # central half of the mass
    assert t.abs().max() <= bound + 1e-5
    assert (t.abs() > 0.9 * bound).float().mean() > 0.05  # spread over the interval, not collapsed
    assert torch.equal(truncate_latent(z, 1.0), z)
    assert torch.allclose(truncate_latent(z, 0.4, "scale"), 0.4 * z)
    # order preserving: truncation maps larger z to larger z'
    assert ((t[1:, 0] - t[:-1, 0]) * (z[1:, 0] - z[:-1, 0]) >= 0).all()


def test_biggan_hierarchical_latent_and_shared_embedding():
    m = _model("biggan")
    _step(m, "G", _batch())  # conditional-BN gains start at zero (plain BN); one update wakes them
    m.eval()
    embeds = [mod for mod in m.G.modules() if isinstance(mod, torch.nn.Embedding)]
    assert embeds == [m.G.shared]  # one class table for every block
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0])
    z2 = z.clone()
    z2[:, -3:] += 1.0  # only the last chunk, which reaches only the last block's batch norm
    with torch.no_grad():
        assert not torch.allclose(m.G(z, y), m.G(z2, y))


def test_biggan_orthogonal_regularisation_in_g_loss():
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    assert losses.orthogonal_regulariser([q]) < 1e-8
    assert losses.orthogonal_regulariser([torch.ones(3, 4)]) > 1
    with_ortho = _model("biggan", params={"ortho_weight": 1e-2})
    _, stats = with_ortho.loss("G", _batch(), StepInfo(0, 8))
    assert stats["ortho"] > 0 and stats["loss/G"] != pytest.approx(stats["loss/G_adv"])
    _, stats = _model("biggan", params={"ortho_weight": 0}).loss("G", _batch(), StepInfo(0, 8))
    assert "ortho" not in stats


def test_truncation_rejected_by_variants_without_it():
    with pytest.raises(ValueError, match="truncation"):
        _model("sagan").sample(2, truncation=0.5)
    with pytest.raises(ValueError, match="truncation"):
        _model("cyclegan").sample(2, truncation=0.5)


# ---- CycleGAN ------------------------------------------------------------------------------------------


def _two_domains(n=48, size=16, seed=0):
    """Toy unpaired domains: A = a bright disc on dark, B = a dark disc on bright (inverted)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.randint(4, size - 4, (n, 2), generator=g)
    disc = (((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) <= 9).float()
    img = (disc * 1.6 - 0.8).unsqueeze(1)
    labels = torch.arange(n) % 2
    img[labels == 1] = -img[labels == 1]
    return img, labels


def _cycle_error(model, x, y):
    a, b = x[y == 0], x[y == 1]
    ea = (model.translate(model.translate(a, "a2b", ema=False), "b2a", ema=False) - a).abs().mean()
    eb = (model.translate(model.translate(b, "b2a", ema=False), "a2b", ema=False) - b).abs().mean()
    return (ea + eb).item() / 2


def _cycle_cfg(steps, pool_size=8):
    return _cfg("cyclegan", width=8, params={"n_res": 1, "pool_size": pool_size},
                steps=steps, batch_size=8, tick_every=5, sample_every=1000, checkpoint_every=1000, seed=0)


def test_cyclegan_cycle_error_falls_and_resume_is_exact_without_a_pool(tmp_path):
    x, y = _two_domains()
    held_x, held_y = _two_domains(16, seed=1)
    torch.manual_seed(0)
    before = _cycle_error(build_model(_cycle_cfg(30).model), held_x, held_y)
    res = train(_cycle_cfg(30), x, y, tmp_path / "full")
    assert int(res.model.pool_a_n) == 8  # the pool filled during training ...
    _, trained, ck = load_trained(tmp_path / "full")
    assert not any(k.startswith("pool_") for k in ck["model"])  # ... and stays out of the checkpoint
    after = _cycle_error(trained, held_x, held_y)
    assert after < 0.6 * before, (before, after)
    # resume through the loop is exact when there is no history pool (the pool is never checkpointed)
    train(_cycle_cfg(30, pool_size=0), x, y, tmp_path / "nopool")
    train(_cycle_cfg(15, pool_size=0), x, y, tmp_path / "half")
    train(_cycle_cfg(30, pool_size=0), x, y, tmp_path / "half", resume=True)
    _, a, _ = load_trained(tmp_path / "nopool")
    _, b, _ = load_trained(tmp_path / "half")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_cyclegan_refuses_the_removed_examples_parameter_in_one_line():
    with pytest.raises(MedsynthError, match="model.params.examples.*keeps no real training images"):
        _model("cyclegan", params={"examples": 16})


def test_cyclegan_resume_with_a_pool_refills_it(tmp_path):
    x, y = _two_domains()
    train(_cycle_cfg(4), x, y, tmp_path / "r")
    res = train(_cycle_cfg(6), x, y, tmp_path / "r", resume=True)  # pool empty after resume: refilled
    assert res.step == 6 and 0 < int(res.model.pool_a_n) <= 8


@pytest.mark.parametrize("labels", [[0] * 8, [1] * 8])
def test_cyclegan_batch_with_one_domain_trains(labels):
    m = _model("cyclegan")
    for phase in ("G", "D", "G", "D"):
        loss, stats = _step(m, phase, _batch(labels=labels))
        assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v)) for v in stats.values())


def test_cyclegan_sample_uses_no_training_image():
    m = _model("cyclegan")
    batch = _batch()
    before = m.sample(6, labels=1, generator=torch.Generator().manual_seed(0))
    for phase in ("G", "D"):
        m.loss(phase, batch, StepInfo(0, 8))
    after = m.sample(6, labels=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(before, after)  # training batches seen (and pooled fakes) change nothing: noise inputs
    assert set(m.state_dict()).isdisjoint({"pool_a", "pool_b", "pool_a_n", "pool_b_n"})
    assert m.translate(batch.images, "b2a").shape == batch.images.shape
    with pytest.raises(ValueError, match="direction"):
        m.translate(batch.images, "sideways")


def test_cyclegan_history_pool_keeps_fifty_and_mixes_old_fakes():
    m = _model("cyclegan", params={"pool_size": 50})
    torch.manual_seed(0)
    first = m._from_pool("a", torch.full((50, 1, 16, 16), -0.5))
    assert torch.equal(first, torch.full_like(first, -0.5)) and int(m.pool_a_n) == 50
    out = m._from_pool("a", torch.full((50, 1, 16, 16), 0.5))
    old = (out.flatten(1)[:, 0] == -0.5).float().mean()
    assert 0.25 < old < 0.75  # about half replaced by earlier fakes
    assert int(m.pool_a_n) == 50


# ---- CoGAN ---------------------------------------------------------------------------------------------


def test_cogan_shared_layers_are_one_set_of_parameters():
    m = _model("cogan")
    m.eval()
    g = m.G
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert n(g) == n(g.shared) + n(g.heads[0]) + n(g.heads[1])
    assert n(m.D) == n(m.D.shared) + n(m.D.heads[0]) + n(m.D.heads[1])
    assert sum(p.numel() for p in m.parameters()) == sum({id(p): p.numel() for p in m.parameters()}.values())
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x1, x2 = g.pair(z)
        next(g.shared.parameters()).add_(0.5)  # change a shared weight: both domains change
        y1, y2 = g.pair(z)
        assert not torch.allclose(x1, y1) and not torch.allclose(x2, y2)
        next(g.heads[0].parameters()).add_(0.5)  # change a private weight: only domain 1 changes
        w1, w2 = g.pair(z)
        assert not torch.allclose(w1, y1) and torch.equal(w2, y2)
    # the discriminators' late layers are shared the same way
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        d1, d2 = m.D(x, 0), m.D(x, 1)
        m.D.shared[-1].bias.add_(1.0)
        assert torch.allclose(m.D(x, 0), d1 + 1) and torch.allclose(m.D(x, 1), d2 + 1)


@pytest.mark.parametrize("dims", [2, 3])
def test_cogan_pairs_are_aligned(dims):
    m = _model("cogan", dims=dims)
    inputs = []
    for head in m.G_ema.heads:
        head.register_forward_hook(lambda mod, inp, out: inputs.append(inp[0]))
    a1, a2 = m.sample_pairs(5, generator=torch.Generator().manual_seed(2))
    assert a1.shape == a2.shape == (5,) + m.image_shape
    assert torch.equal(inputs[0], inputs[1])  # both heads render the same shared features
    b1, b2 = m.sample_pairs(5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert torch.equal(m.sample(5, generator=torch.Generator().manual_seed(2)), a1)  # sample() = domain 1
    assert torch.equal(m.sample(5, labels=1, generator=torch.Generator().manual_seed(2)), a2)


@pytest.mark.parametrize("labels", [[0] * 8, [1] * 8])
def test_cogan_batch_with_one_domain_trains(labels):
    m = _model("cogan")
    for phase in ("D", "G"):
        loss, _ = _step(m, phase, _batch(labels=labels))
        assert torch.isfinite(loss)


def test_cogan_same_head_init_starts_the_pairing_as_the_identity():
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    tied = _model("cogan", params={"same_head_init": True})
    with torch.no_grad():
        x1, x2 = tied.G.pair(z)
    assert torch.equal(x1, x2)
    loose = _model("cogan")  # default: independent heads
    with torch.no_grad():
        y1, y2 = loose.G.pair(z)
    assert not torch.allclose(y1, y2)
    # identical at the start only: the heads are still separate parameters
    assert tied.G.heads[0][-2].weight is not tied.G.heads[1][-2].weight


@pytest.mark.parametrize("dims", [2, 3])
def test_cogan_pointwise_heads_render_each_pixel_of_one_shared_map(dims):
    m = _model("cogan", dims=dims, params={"head": "pointwise", "head_channels": 1})
    m.eval()
    g = m.G
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = g.shared(z)
        assert h.shape == (3, 1) + m.image_shape[1:]  # one full-resolution map shared by both domains
        x1, x2 = g.pair(z)
        assert x1.shape == x2.shape == (3,) + m.image_shape
        # a head is per pixel: permuting the map's pixels permutes both images identically
        perm = torch.randperm(h[0, 0].numel(), generator=torch.Generator().manual_seed(1))
        hp = h.flatten(2)[:, :, perm].view_as(h)
        for head, x in zip(g.heads, (x1, x2)):
            assert torch.allclose(head(hp).flatten(2), x.flatten(2)[:, :, perm], atol=1e-6)
    if dims == 2:  # and it trains on the engine like the paper's heads
        for phase in ("D", "G"):
            loss, _ = _step(m, phase, _batch())
            assert torch.isfinite(loss)


def test_cogan_rejects_an_unknown_head():
    with pytest.raises(MedsynthError, match="head"):
        _model("cogan", params={"head": "linear"})
