"""Differentially private training of the discriminator (medsynth/train/dp.py, opacus)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from medsynth.config import resolve
from medsynth.errors import MedsynthError
from medsynth.runs import load_trained
from medsynth.train.loop import train

DP = {"dp_noise_multiplier": 1.0, "dp_max_grad_norm": 1.0}


def _cfg(name="dcgan", steps=6, params=None, **train_kw):
    return resolve(base={"model": {"name": name, "width": 4, "latent_dim": 16, "num_classes": 2,
                                   "params": params or {}},
                         "data": {"size": 16},
                         "train": {"steps": steps, "batch_size": 8, "tick_every": 2, "sample_every": 100,
                                   "checkpoint_every": 3, "amp": "off", **DP, **train_kw}})


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 2, (n,), generator=g)


def test_missing_opacus_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus -> ImportError
    x, y = _data()
    with pytest.raises(MedsynthError, match=r"pip install 'medsynth-gan\[dp\]'") as exc:
        train(_cfg(), x, y, tmp_path / "r")
    assert "\n" not in str(exc.value)


pytest.importorskip("opacus")


def test_dp_run_epsilon_grows_and_resume_is_exact(tmp_path):
    x, y = _data()
    train(_cfg(steps=6, params={"mbstd": True, "d_norm": "batch"}), x, y, tmp_path / "full")
    lines = [json.loads(s) for s in (tmp_path / "full" / "stats.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for ln in lines for k, v in ln.items() if k.startswith("loss/"))
    eps = [ln["dp/epsilon"] for ln in lines]
    assert eps[0] > 0 and all(b > a for a, b in zip(eps, eps[1:]))
    priv = json.loads((tmp_path / "full" / "privacy.json").read_text())
    assert priv["epsilon"] == pytest.approx(eps[-1]) and priv["delta"] == pytest.approx(1 / 40)
    assert priv["private_updates"] == 6 and priv["sample_rate"] == pytest.approx(8 / 40)
    cfg, _, ck = load_trained(tmp_path / "full")
    assert cfg.model.params["mbstd"] is False and cfg.model.params["d_norm"] == "layer"

    train(_cfg(steps=3), x, y, tmp_path / "half")  # the DP params forced or set: the same model
    train(_cfg(steps=6), x, y, tmp_path / "half", resume=True)
    _, a, _ = load_trained(tmp_path / "full")
    _, b, ckb = load_trained(tmp_path / "half")
    assert ckb["dp"]["summary"]["epsilon"] == pytest.approx(ck["dp"]["summary"]["epsilon"], rel=1e-12)
    assert ckb["dp"]["history"] == ck["dp"]["history"]
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:  # same Poisson batches and the same noise after resume
        assert torch.equal(sa[k], sb[k]), k

    from medsynth.runs import describe_dp as describe

    line = describe(ck["dp"]["summary"])
    assert "epsilon = " in line and "delta = 0.025" in line and "\n" not in line
    assert describe(None).startswith("not used")


def _d_grad(sigma: float, clip: float, noise_seed: int = 0) -> tuple[torch.Tensor, int, torch.Tensor]:
    """One private D update's gradient (after clipping and noise), its batch size, and the raw mean gradient."""
    from medsynth.models.registry import build_model
    from medsynth.train.dp import DPTraining, prepare_config

    cfg = prepare_config(_cfg(dp_noise_multiplier=sigma, dp_max_grad_norm=clip))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    phases = model.phases()
    opts = {ph.name: torch.optim.Adam(getattr(model, ph.name).parameters()) for ph in phases}
    x, y = _data()
    dp = DPTraining(cfg.train, model, phases, opts, 40, 8, (1, 16, 16), torch.device("cpu"))
    ph = next(p for p in phases if p.name == "D")
    model.G.requires_grad_(False)
    assert dp.begin(ph)
    from medsynth.models.base import StepInfo
    from medsynth.train.batches import Batches, BatchSampler
    from medsynth.train.distributed import DistInfo

    batch = dp.batch(ph, Batches(x, y, BatchSampler(40, 8, 0), DistInfo()))  # the Poisson draw's images
    loss, _ = model.loss("D", batch, StepInfo(0, 8))
    for h in dp.gsm:  # the raw (unclipped) gradient, without consuming opacus's stored activations
        h.disable_hooks()
    raw = torch.autograd.grad(loss, list(model.D.parameters()), retain_graph=True)
    for h in dp.gsm:
        h.enable_hooks()
    opts["D"].zero_grad(set_to_none=True)
    loss.backward()
    torch.manual_seed(noise_seed)  # the noise comes from the global RNG (checkpointed by the loop)
    assert dp.optimizer.pre_step()  # clip, noise, scale by 1 / expected batch size
    g = torch.cat([p.grad.flatten() for p in model.D.parameters()])
    return g, batch.images.shape[0], torch.cat([r.flatten() for r in raw])


def test_clipping_bounds_the_update_and_noise_is_added():
    clip = 1e-3
    g, b, raw = _d_grad(0.0, clip)
    bound = clip * b / 8  # every per-sample gradient clipped to norm C; sum / expected batch size
    assert raw.norm() > 10 * bound  # the clipping binds
    assert 0 < g.norm() <= bound * (1 + 1e-4)
    noisy, _, _ = _d_grad(1.0, clip, noise_seed=0)
    again, _, _ = _d_grad(1.0, clip, noise_seed=0)
    other, _, _ = _d_grad(1.0, clip, noise_seed=1)
    assert noisy.norm() > 5 * bound  # Gaussian noise of std sigma * C / 8 per coordinate dominates
    assert torch.equal(noisy, again) and not torch.allclose(noisy, other)  # same data, only the noise differs


def test_per_sample_gradients_match_autograd_and_speed_options_are_safe():
    from medsynth.train.dp import speed_for_dp
    from medsynth.train.speed import Speed

    g, b, raw = _d_grad(0.0, 1e9)  # no clipping, no noise: sum of per-sample grads / expected batch
    assert torch.allclose(g, raw * b / 8, rtol=1e-4, atol=1e-7)
    s = speed_for_dp(Speed(torch.device("cpu"), "bf16", True, True, True))
    assert (s.amp, s.channels_last, s.compile, s.fused_adam) == ("off", False, False, True)


@pytest.mark.parametrize("name,params,match", [
    ("wgan_gp", None, "does not support differentially private training"),
    ("dcgan", {"augment": "ada"}, "ADA"),
])
def test_unsupported_settings_are_one_line_errors(name, params, match, tmp_path):
    x, y = _data()
    with pytest.raises(MedsynthError, match=match) as exc:
        train(_cfg(name, params=params), x, y, tmp_path / "r")
    assert "\n" not in str(exc.value)


def test_empty_poisson_batch_is_a_noise_only_update():
    from medsynth.models.registry import build_model
    from medsynth.train.dp import DPTraining, prepare_config

    cfg = prepare_config(_cfg())
    model = build_model(cfg.model)
    phases = model.phases()
    opts = {ph.name: torch.optim.Adam(getattr(model, ph.name).parameters()) for ph in phases}
    dp = DPTraining(cfg.train, model, phases, opts, 40, 8, (1, 16, 16), torch.device("cpu"))
    dp.q = 0.0  # force an empty draw
    before = [p.detach().clone() for p in model.D.parameters()]
    assert dp.begin(next(p for p in phases if p.name == "D")) is False
    assert dp.updates == 1 and len(dp.accountant.history) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.D.parameters()))  # noise moved D
