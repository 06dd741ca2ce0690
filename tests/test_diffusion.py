"""Denoising diffusion (``medsynth/models/diffusion.py``): what it adds beyond the shared contract
(``tests/test_contract.py`` runs that over every variant, ``diffusion`` included): the denoising
loss learns, DDIM sampling is deterministic and runs ``sample_steps`` UNet passes, labels and
guidance reach the UNet, 3D volumes, parameter checks, exact resume through the training loop, and
``medsynth evaluate`` on a diffusion run (no discriminator: that attack is skipped and says so)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth import losses
from medsynth.config import resolve
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, StepInfo
from medsynth.models.registry import build_model
from medsynth.runs import load_trained
from medsynth.train.loop import train


def _cfg(*, dims=2, size=None, num_classes=0, width=4, params=None, **train_kw):
    size = size or (16 if dims == 2 else 8)
    return resolve(base={"model": {"name": "diffusion", "width": width, "num_classes": num_classes,
                                   "params": params or {}},
                         "data": {"size": size, "spatial_dims": dims}, "train": train_kw})


def _model(**kw):
    torch.manual_seed(0)
    return build_model(_cfg(**kw).model)


def _blobs(n=8, size=16, seed=1):
    """``(n, 1, size, size)`` in [-1, 1]: one Gaussian blob per image at a random place."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(n, 2, generator=g) - 0.5
    return torch.stack([torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.1) * 2 - 1 for cx, cy in centres])[:, None]


def _train_steps(model, batch, steps, lr=1e-2):
    opt = torch.optim.Adam(model.unet.parameters(), lr=lr)
    for i in range(steps):
        loss, _ = model.loss("U", batch, StepInfo(i, len(batch.images)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_step_end(StepInfo(i, len(batch.images)))


class _Passes:
    """Counts the UNet's forward passes and the batch size of each."""

    def __init__(self, net):
        self.sizes: list[int] = []
        self.handle = net.register_forward_hook(lambda mod, args, out: self.sizes.append(int(args[0].shape[0])))


def test_noise_prediction_loss_is_the_mse_of_the_noise():
    pred, noise = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert float(losses.noise_prediction_loss(pred, noise)) == pytest.approx((1 + 0 + 4 + 4) / 4)
    assert losses.noise_prediction_loss(pred.bfloat16(), noise).dtype == torch.float32


def test_denoising_loss_falls_on_a_tiny_fixed_set():
    model = _model(width=8)
    batch = Batch(_blobs())

    def held_out_loss():  # the same timesteps and noise each time
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(123)
            return float(sum(model.loss("U", batch, StepInfo(0, 8))[0] for _ in range(4)) / 4)

    before = held_out_loss()
    assert before == pytest.approx(1.0, abs=0.15)  # zero-initialised output layer: predicts no noise
    _train_steps(model, batch, 30, lr=2e-3)
    assert held_out_loss() < 0.3 * before


def test_phase_timesteps_cover_the_schedule_and_the_unet_sees_noisy_images():
    model = _model(params={"num_train_timesteps": 10, "sample_steps": 5})
    seen = []
    model.unet.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach(), args[1].detach())))
    x = _blobs()
    for _ in range(20):
        model.loss("U", Batch(x), StepInfo(0, 8))
    steps = torch.cat([t for _, t in seen])
    assert steps.min() == 0 and steps.max() == 9  # uniform over 0..T-1
    xt, t = seen[0]
    abar = model.noise_schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = (xt - abar.sqrt() * x) / (1 - abar).sqrt()  # x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps
    assert 0.7 < float(noise.std()) < 1.3


@pytest.mark.parametrize("schedule,steps", [("cosine", 2), ("cosine", 25), ("linear_beta", 5), ("linear_beta", 50)])
def test_ddim_with_the_exact_noise_predictor_of_one_image_returns_that_image(schedule, steps):
    """For a data set of one image x*, the best noise prediction is ``(x_t - sqrt(abar_t) x*) /
    sqrt(1 - abar_t)`` with the *training* schedule's abar: DDIM must then land on x* from any
    noise, which holds only if sampling and training use the same schedule and timesteps."""
    model = _model(params={"schedule": schedule, "sample_steps": steps})
    target = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(5)) * 1.6 - 0.8
    abar = model.noise_schedule.alphas_cumprod

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))  # the sampler reads the device from it

        def forward(self, x, t, class_labels=None):
            a = abar[t].view(-1, 1, 1, 1)
            return (x - a.sqrt() * target) / (1 - a).sqrt()

    model.unet_ema = Oracle()
    out = model.generate(model.latent(3, torch.Generator().manual_seed(0)), None)
    assert (out - target).abs().max() < 1e-4
    model.unet_ema = Oracle()
    model.noise_schedule.alphas_cumprod = abar.roll(1)  # a training schedule the sampler does not use
    abar = model.noise_schedule.alphas_cumprod
    assert (model.generate(model.latent(3, torch.Generator().manual_seed(0)), None) - target).abs().max() > 1e-2


def test_ddim_sampling_is_deterministic_and_runs_sample_steps_passes():
    model = _model(params={"sample_steps": 7, "sample_batch": 3})
    _train_steps(model, Batch(_blobs()), 3)
    z = model.latent(5, torch.Generator().manual_seed(0))
    assert z.shape == (5, 1, 16, 16)
    passes = _Passes(model.unet_ema)
    a = model.generate(z, None)
    assert passes.sizes == [3] * 7 + [2] * 7  # sample_batch 3: two chains of 7 DDIM steps
    assert torch.equal(a, model.generate(z.clone(), None))
    assert not torch.equal(a, model.generate(torch.randn_like(z), None))
    assert a.shape == (5, 1, 16, 16) and a.min() >= -1 and a.max() <= 1
    # the EMA UNet and the trained one are different networks
    assert not torch.equal(a, model.generate(z, None, ema=False))
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s, a, atol=1e-5)  # sample() draws the same initial noise from the seed


def test_conditional_sampling_follows_the_labels():
    model = _model(num_classes=2)
    batch = Batch(_blobs(), torch.tensor([0, 1] * 4))
    _train_steps(model, batch, 3)
    z = model.latent(4, torch.Generator().manual_seed(1))
    zero = model.generate(z, torch.zeros(4, dtype=torch.long))
    one = model.generate(z, torch.ones(4, dtype=torch.long))
    mixed = model.generate(z, torch.tensor([0, 1, 0, 1]))
    assert zero.shape == one.shape == (4, 1, 16, 16)
    assert not torch.allclose(zero, one)
    assert torch.allclose(mixed[0::2], zero[0::2], atol=1e-5) and torch.allclose(mixed[1::2], one[1::2], atol=1e-5)
    assert model.sample(3, labels=1, generator=torch.Generator().manual_seed(0)).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="labels are required"):
        model.generate(z, None)
    # an unconditional model has no class embedding and ignores labels
    plain = _model()
    assert plain.unet.num_class_embeds is None
    zp = plain.latent(2, torch.Generator().manual_seed(2))
    assert torch.equal(plain.generate(zp, torch.tensor([0, 1])), plain.generate(zp, None))


def test_classifier_free_guidance_drops_labels_and_doubles_the_passes():
    with pytest.raises(MedsynthError, match=r"^model\.params\.guidance: .*cond_drop"):
        _model(num_classes=2, params={"guidance": 2.0})
    model = _model(num_classes=2, params={"cond_drop": 0.5, "guidance": 2.0, "sample_steps": 4})
    assert model.unet.num_class_embeds == 3  # classes 0, 1 and "no label" (2)
    seen = []
    hook = model.unet.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    labels_seen = []
    model.unet.class_embedding.register_forward_hook(lambda mod, args, out: labels_seen.append(args[0]))
    batch = Batch(_blobs(64), torch.tensor([0, 1] * 32))
    torch.manual_seed(0)
    model.loss("U", batch, StepInfo(0, 64))
    dropped = (labels_seen[0] == 2).float().mean()
    assert 0.3 < float(dropped) < 0.7 and set(labels_seen[0].tolist()) == {0, 1, 2}
    hook.remove()
    passes = _Passes(model.unet_ema)
    out = model.generate(model.latent(3, torch.Generator().manual_seed(0)), torch.tensor([0, 1, 1]))
    assert passes.sizes == [6] * 4 and out.shape == (3, 1, 16, 16)  # conditional + unconditional halves


def test_3d_volumes_train_and_sample():
    model = _model(dims=3, num_classes=2, params={"sample_steps": 3})
    batch = Batch(torch.rand(4, 1, 8, 8, 8) * 2 - 1, torch.tensor([0, 1, 0, 1]))
    _train_steps(model, batch, 2)
    s = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 1, 8, 8, 8) and torch.isfinite(s).all() and s.abs().max() <= 1
    assert model.unet.conv_in.conv.weight.dim() == 5  # a 3D UNet


def test_two_channel_images():
    cfg = resolve(base={"model": {"name": "diffusion", "width": 4, "params": {"sample_steps": 2}},
                        "data": {"size": 16}})
    cfg.model.channels = 2
    model = build_model(cfg.model)
    loss, _ = model.loss("U", Batch(torch.rand(2, 2, 16, 16) * 2 - 1), StepInfo(0, 2))
    assert torch.isfinite(loss)
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 2, 16, 16)


@pytest.mark.parametrize("params,key,words", [
    ({"schedule": "quadratic"}, "schedule", "must be one of linear_beta"),
    ({"sample_steps": 0}, "sample_steps", "must be an integer >= 1"),
    ({"sample_steps": 20, "num_train_timesteps": 10}, "sample_steps", "at most num_train_timesteps"),
    ({"channels": [4, 8, 8, 8, 8]}, "channels", "fewer levels"),
    ({"channels": [4, 8], "attention_levels": [True]}, "attention_levels", "one entry per level"),
    ({"channels": [4, 6]}, "norm_groups", "do not divide"),  # auto: 2 groups; force 4 below
    ({"num_res_blocks": [1, 1]}, "num_res_blocks", "one per level (3)"),
    ({"schedule": "linear_beta", "beta_start": 0.02, "beta_end": 0.01}, "beta_end", "must exceed beta_start"),
    ({"cond_drop": 1.0}, "cond_drop", "must be a number in [0, 1)"),
    ({"channels": [8, 12], "head_channels": 8}, "head_channels", "does not divide"),
])
def test_bad_params_are_one_line_errors(params, key, words):
    if key == "norm_groups":
        params = {**params, "norm_groups": 4}
    with pytest.raises(MedsynthError) as info:
        build_model(_cfg(params=params).model)
    msg = str(info.value)
    assert msg.startswith(f"model.params.{key}: ") and words in msg and "\n" not in msg, msg


def test_defaults_follow_the_width_and_put_attention_at_low_resolution():
    model = _model(width=4, size=64)
    unet = model.unet
    assert tuple(unet.block_out_channels) == (4, 8, 16)
    assert tuple(unet.attention_levels) == (False, False, True)  # 64², 32²: none; 16²: yes
    assert _model(dims=3, size=32).unet.attention_levels == (False, False, True)  # 8³ and below
    # the state_dict holds the UNet and its EMA copy, nothing of the schedules
    assert {k.split(".")[0] for k in model.state_dict()} == {"unet", "unet_ema"}
    assert [ph.name for ph in model.phases()] == ["U"] and model.phases()[0].modules == ("unet",)


def test_every_diffusion_preset_builds():
    from medsynth.config import preset_names
    from medsynth.train.loop import check_config

    names = [n for n in preset_names() if n.endswith("diffusion") or n.endswith("diffusion_gpu")]
    assert sorted(names) == ["ct3d_diffusion", "ct_diffusion", "ct_diffusion_gpu", "xray_diffusion",
                             "xray_diffusion_gpu"]
    for name in names:
        cfg = check_config(resolve(preset=name))
        assert cfg.model.name == "diffusion" and cfg.model.num_classes == 2


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 2, (n,), generator=g)


def _run_cfg(steps):
    return resolve(base={"model": {"name": "diffusion", "width": 4, "num_classes": 2,
                                   "params": {"cond_drop": 0.2, "sample_steps": 3}},
                         "data": {"size": 16},
                         "train": {"steps": steps, "batch_size": 8, "tick_every": 2, "sample_every": 3,
                                   "checkpoint_every": 3}})


def test_resume_through_the_training_loop_is_exact(tmp_path):
    x, y = _data()
    train(_run_cfg(6), x, y, tmp_path / "full", grid_size=8)
    train(_run_cfg(3), x, y, tmp_path / "half", grid_size=8)
    train(_run_cfg(6), x, y, tmp_path / "half", resume=True, grid_size=8)
    _, a, cka = load_trained(tmp_path / "full")
    _, b, ckb = load_trained(tmp_path / "half")
    assert cka["step"] == ckb["step"] == 6
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and any(k.startswith("unet_ema.") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert not torch.equal(sa["unet.out.2.conv.weight"], sa["unet_ema.out.2.conv.weight"])  # EMA lags
    for name, opt in cka["optimizers"].items():
        sta, stb = opt["state"], ckb["optimizers"][name]["state"]
        assert sta.keys() == stb.keys()
        assert all(torch.equal(sta[i]["exp_avg"], stb[i]["exp_avg"]) for i in sta)
    lines = [json.loads(s) for s in (tmp_path / "full" / "stats.jsonl").read_text().splitlines()]
    assert all("loss/U" in ln for ln in lines)
    assert sorted(p.name for p in (tmp_path / "full" / "samples").glob("*.png")) == \
        ["step_000000.png", "step_000003.png", "step_000006.png"]


@pytest.mark.slow
def test_evaluate_a_diffusion_run_skips_the_discriminator_attack(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medsynth.cli import app

    monkeypatch.chdir(tmp_path)
    images = ((_blobs(48, size=32, seed=20)[:, 0].numpy() + 1) * 1000).astype(np.float32)  # detector-like units
    np.savez(tmp_path / "tiny.npz", images=images, labels=np.arange(48) % 2,
             patient_ids=[f"p{i}" for i in range(48)], splits=["train"] * 32 + ["val"] * 8 + ["test"] * 8)
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--model", "diffusion", "--modality", "xray", "--data", "tiny.npz",
                            "--size", "32", "--steps", "2", "--set", "model.width=4",
                            "--set", "model.params.sample_steps=3", "--set", "train.batch_size=16",
                            "--out", "runs", "--no-progress", "--no-quick-check"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = Path("runs") / "00000-xray-diffusion"
    r = runner.invoke(app, ["evaluate", str(run), "--count", "40", "--encoder-steps", "10", "--repeats", "1",
                            "--n-boot", "50"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ev = json.loads((run / "evaluate" / "evaluation.json").read_text())
    mia = ev["privacy"]["membership_inference"]
    assert mia["n_members"] > mia["n_nonmembers"] > 0
    assert 0 <= mia["distance"]["attack"]["auroc"] <= 1  # the attack that needs no discriminator ran
    assert "attack" not in mia["discriminator"]
    assert "supports_d_logits is False" in mia["discriminator"]["skipped"]
    assert ev["model"] == "diffusion" and ev["fidelity"]["n_synthetic"] == 40
    assert "discriminator attack not supported" in (run / "evaluate" / "evaluation.md").read_text()
