"""Speed options of the one loop: autocast, channels-last, fused Adam, device-side stats."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medsynth.config import resolve
from medsynth.errors import MedsynthError
from medsynth.models.registry import build_model
from medsynth.train import speed as speed_mod
from medsynth.train.loop import train
from medsynth.train.speed import resolve_speed


def _cfg(name, steps=2, **train_kw):
    return resolve(base={"model": {"name": name, "width": 4, "latent_dim": 16, "num_classes": 2},
                         "data": {"size": 16},
                         "train": {"steps": steps, "batch_size": 8, "tick_every": 1, "sample_every": 100,
                                   "checkpoint_every": 100, **train_kw}})


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("name", ["dcgan", "wgan_gp", "stylegan2"])
def test_bf16_channels_last_run_is_finite_and_moves_parameters(name, tmp_path):
    cfg = _cfg(name, steps=2, amp="bf16", channels_last=True)
    x, y = _data()
    res = train(cfg, x, y, tmp_path / "r")
    torch.manual_seed(cfg.train.seed)
    init = build_model(cfg.model).state_dict()
    trained = res.model.state_dict()
    for mod in ("G.", "D."):
        keys = [k for k in init if k.startswith(mod) and init[k].is_floating_point()]
        assert any(not torch.equal(init[k], trained[k]) for k in keys), f"{mod} did not move"
        assert all(torch.isfinite(trained[k]).all() for k in keys)
    lines = [json.loads(s) for s in (tmp_path / "r" / "stats.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert all(math.isfinite(v) for ln in lines for k, v in ln.items() if k.startswith("loss/"))
    assert {"loss/G", "loss/D"} <= set(lines[-1])
    ck = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["speed"]["amp"] == "bf16" and ck["speed"]["channels_last"] is True


def test_fp16_uses_a_grad_scaler_and_checkpoints_it(tmp_path):
    x, y = _data()
    train(_cfg("dcgan", steps=2, amp="fp16"), x, y, tmp_path / "r")
    ck = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["speed"]["amp"] == "fp16" and "scale" in ck["scaler"]


def test_bf16_differs_from_fp32_and_resume_stays_exact(tmp_path):
    x, y = _data()
    a = train(_cfg("dcgan", steps=4, amp="bf16"), x, y, tmp_path / "bf16").model.state_dict()
    b = train(_cfg("dcgan", steps=4, amp="off"), x, y, tmp_path / "fp32").model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())  # autocast really ran
    train(_cfg("dcgan", steps=2, amp="bf16"), x, y, tmp_path / "half")
    c = train(_cfg("dcgan", steps=4, amp="bf16"), x, y, tmp_path / "half", resume=True).model.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_auto_resolution_is_explained_and_bad_values_are_rejected():
    s = resolve_speed(_cfg("dcgan", device="cpu").train)
    assert s.device.type == "cpu" and s.compile is False and s.channels_last is True
    assert resolve_speed(_cfg("dcgan", device="cpu").train, spatial_dims=3).channels_last is False
    assert s.amp == ("bf16" if speed_mod._cpu_has_bf16() else "off")
    assert any(n.startswith("amp auto") for n in s.notes)
    assert resolve_speed(_cfg("dcgan", amp="off", fused_adam=False).train).amp == "off"
    assert resolve_speed(_cfg("dcgan", amp=False).train).amp == "off"  # `--set train.amp=off` parses as false
    with pytest.raises(MedsynthError, match="train.amp"):
        resolve_speed(_cfg("dcgan", amp="fp8").train)
    with pytest.raises(MedsynthError, match="train.compile"):
        resolve_speed(_cfg("dcgan", compile="yes").train)
    if not torch.cuda.is_available():
        with pytest.raises(MedsynthError, match="CUDA is not available"):
            resolve_speed(_cfg("dcgan", device="cuda").train)


def test_tensor_stats_are_averaged_on_device_and_read_once():
    from medsynth.train.distributed import DistInfo
    from medsynth.train.stats import Tally

    tally = Tally()
    tally.add({"loss/D": torch.tensor(1.0), "r1": 0.5}, 8)
    tally.add({"loss/D": torch.tensor(2.0), "r1": 1.0}, 8)
    tally.add({"r1": 0.0}, 8)
    assert isinstance(tally.sums["loss/D"], torch.Tensor)  # summed on the device, not read per update
    assert tally.means(DistInfo(), torch.device("cpu")) == {"loss/D": 1.5, "r1": 0.5}
    assert tally.images == 24
