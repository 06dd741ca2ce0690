"""The one training loop: run layout, exact resume, checkpoints, config resolution, losses."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import tiny_train_cfg, tiny_train_data
from medsynth import losses
from medsynth.config import load_config, resolve
from medsynth.errors import MedsynthError
from medsynth.models.layers import MinibatchStdDev
from medsynth.runs import load_checkpoint, load_trained
from medsynth.train.loop import new_run_dir, train


_cfg, _data = tiny_train_cfg, tiny_train_data  # the tiny run every test here trains (conftest)


@pytest.mark.parametrize("name", ["dcgan", "wgan_gp"])
def test_resume_continues_exactly(name, tmp_path):
    x, y = _data()
    train(_cfg(name, 6), x, y, tmp_path / "full")
    train(_cfg(name, 3), x, y, tmp_path / "half")
    train(_cfg(name, 6), x, y, tmp_path / "half", resume=True)
    _, a, cka = load_trained(tmp_path / "full")
    _, b, ckb = load_trained(tmp_path / "half")
    assert cka["step"] == ckb["step"] == 6
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for name_, opt in cka["optimizers"].items():
        assert opt["state"].keys() == ckb["optimizers"][name_]["state"].keys()


def test_run_directory_layout(tmp_path):
    x, y = _data()
    run = new_run_dir(tmp_path, "xray-dcgan")
    assert run.name == "00000-xray-dcgan"
    assert new_run_dir(tmp_path, "xray-dcgan").name == "00001-xray-dcgan"
    res = train(_cfg(steps=6), x, y, run)
    assert res.step == 6
    cfg = load_config(run / "config.yaml")
    assert cfg.model.name == "dcgan" and cfg.train.steps == 6
    lines = [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [2, 4, 6]
    assert all("loss/G" in ln and "loss/D" in ln for ln in lines)
    grids = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert grids == ["step_000000.png", "step_000003.png", "step_000006.png"]
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert set(ck) >= {"model", "optimizers", "step", "rng", "sampler", "config", "versions"}
    assert not list(run.rglob("*.tmp"))


def test_checkpoint_errors_are_one_line(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MedsynthError, match="not a readable medsynth checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(MedsynthError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_conditional_training_rejects_missing_labels(tmp_path):
    x, y = _data()
    with pytest.raises(MedsynthError, match="labels"):
        train(_cfg(), x, torch.full_like(y, -1), tmp_path / "r")


def test_wrong_image_shape_is_rejected(tmp_path):
    with pytest.raises(MedsynthError, match="model expects"):
        train(_cfg(), torch.zeros(8, 1, 32, 32), torch.zeros(8, dtype=torch.long), tmp_path / "r")


def test_config_layers_defaults_preset_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"model": {"width": 8, "params": {"n_critic": 3}}, "train": {"steps": 7}}))
    cfg = resolve(preset=preset, overrides=["model.width=12", "train.minutes=0.5", "model.params.gp_weight=5"],
                  base={"model": {"name": "wgan_gp"}, "data": {"size": 32}})
    assert cfg.model.width == 12 and cfg.train.steps == 7 and cfg.train.minutes == 0.5
    assert cfg.model.params == {"n_critic": 3, "gp_weight": 5}
    assert cfg.model.size == 32
    with pytest.raises(MedsynthError, match="unknown setting"):
        resolve(overrides=["model.widht=3"])


def test_unknown_variant_param_is_rejected():
    from medsynth.models.registry import build_model

    cfg = resolve(base={"model": {"name": "dcgan", "params": {"n_critic": 5}}})
    with pytest.raises(MedsynthError, match="unknown parameter"):
        build_model(cfg.model)


def test_gradient_penalty_known_value():
    # critic D(x) = sum(w * x): gradient norm ||w|| everywhere, so GP = (||w|| - 1)^2
    w = torch.full((1, 1, 2, 2), 1.0)  # ||w|| = 2
    gp = losses.gradient_penalty(lambda x: (x * w).flatten(1).sum(1), torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2))
    assert gp.item() == pytest.approx(1.0)


def test_label_smoothing_changes_d_loss():
    r, f = torch.full((4,), 3.0), torch.full((4,), -3.0)
    assert losses.bce_d_loss(r, f, 0.9) > losses.bce_d_loss(r, f, 1.0)


def test_minibatch_stddev_sees_diversity():
    layer = MinibatchStdDev(4)
    same = layer(torch.ones(8, 3, 4, 4))
    diverse = layer(torch.randn(8, 3, 4, 4))
    assert same.shape == (8, 4, 4, 4)
    assert same[:, -1].abs().max() < 1e-3 < diverse[:, -1].mean()


def test_minibatch_stddev_class_groups_split_each_class():
    # class 0: four identical samples then four diverse ones; class 1: two samples.
    x = torch.cat([torch.ones(4, 3, 4, 4), torch.randn(4, 3, 4, 4), torch.randn(2, 3, 4, 4)])
    labels = torch.tensor([0] * 8 + [1] * 2)
    whole = MinibatchStdDev(4)(x, labels)[:, -1, 0, 0]
    grouped = MinibatchStdDev(4, class_groups=True)(x, labels)[:, -1, 0, 0]
    assert torch.allclose(whole[:8], whole[0].expand(8))  # one statistic per class
    assert grouped[:4].abs().max() < 1e-3 < grouped[4:8].min()  # the collapsed group is seen alone
    assert torch.allclose(grouped[8:], whole[8:])  # a class smaller than a group keeps its own statistic


@pytest.mark.parametrize("clock", ["wall", "process"])
def test_time_cap_stops_training_on_its_clock(clock, tmp_path):
    x, y = _data()
    res = train(_cfg(steps=100000, minutes=0.02, clock=clock, checkpoint_every=100000, sample_every=100000), x, y,
                tmp_path / "r")
    assert 0 < res.step < 100000
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    spent = ck["cpu_seconds"] if clock == "process" else ck["seconds"]
    assert 1.2 <= spent < 6.0  # stopped at the 1.2 s cap (plus one step and the final checkpoint)
    assert ck["cpu_seconds"] > 0


def test_process_clock_budget_survives_resume(tmp_path):
    x, y = _data()
    cfg = _cfg(steps=100000, minutes=0.02, clock="process", checkpoint_every=100000, sample_every=100000)
    first = train(cfg, x, y, tmp_path / "r")
    again = train(cfg, x, y, tmp_path / "r", resume=True)  # budget already spent: at most one more step
    assert again.step - first.step <= 1
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["cpu_seconds"] >= 1.2


def test_unknown_clock_is_rejected(tmp_path):
    x, y = _data()
    with pytest.raises(MedsynthError, match="train.clock"):
        train(_cfg(clock="gpu"), x, y, tmp_path / "r")


def test_non_finite_loss_stops_with_a_good_checkpoint(monkeypatch, tmp_path):
    from medsynth.models.dcgan import DCGAN

    real_loss = DCGAN.loss

    def loss(self, phase, batch, info):  # D's loss turns NaN at step 4
        out, stats = real_loss(self, phase, batch, info)
        return (out * float("nan") if phase == "D" and info.step == 4 else out), stats

    monkeypatch.setattr(DCGAN, "loss", loss)
    x, y = _data()
    with pytest.raises(MedsynthError, match=r"loss of phase D became nan at step 4; last good state") as exc:
        train(_cfg(steps=6), x, y, tmp_path / "r")
    assert "\n" not in str(exc.value)
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["step"] == 4  # the state before the bad update, every weight finite
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_deferred_loss_check_raises_at_the_tick_and_never_checkpoints_a_bad_state(tmp_path):
    # the mode used off the CPU (no host sync per update): a flag read per tick and before each checkpoint
    from medsynth.models.base import Phase
    from medsynth.train.distributed import DistInfo
    from medsynth.train.update import LossGuard

    saved: list[int] = []

    class Checkpointer:
        def save(self, step):
            saved.append(step)

    guard = LossGuard(tmp_path, Checkpointer(), DistInfo(), torch.device("cpu"))
    guard.each_update = False
    ph = Phase("D", ("D",), 1e-3)
    guard.check(torch.tensor(1.0), ph, 0)
    guard.checkpoint(1)
    guard.check(torch.tensor(float("inf")), ph, 1)
    guard.check(torch.tensor(2.0), ph, 1)
    with pytest.raises(MedsynthError, match="a loss became non-finite before step 2; the last good state is the "
                                            "previous checkpoint"):
        guard.verify(2)
    with pytest.raises(MedsynthError, match="non-finite"):
        guard.checkpoint(2)
    assert saved == [1]
