"""Differentiable / adaptive augmentation of D's input (medsynth.models.augment) and its engine wiring."""

from __future__ import annotations

import json

import pytest
import torch

from medsynth.config import resolve
from medsynth.errors import MedsynthError
from medsynth.models.registry import get_model, build_model, list_models
from medsynth.models import augment as A
from medsynth.models.base import StepInfo
from medsynth.runs import load_trained
from medsynth.train.loop import train


def _pipe(**kw) -> A.AugmentPipe:
    return A.AugmentPipe(A.AugmentSettings.from_params(kw))


@pytest.mark.parametrize("dims", [2, 3])
def test_ops_keep_shape_and_pass_gradients(dims):
    torch.manual_seed(0)
    x = (torch.rand((4, 1) + (8,) * dims) * 2 - 1).requires_grad_(True)
    y = _pipe(augment="diffaug")(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_p_zero_is_identity_and_no_rng_used():
    x = torch.rand(4, 1, 8, 8)
    pipe = _pipe(augment="ada")  # starts at p = 0
    state = torch.get_rng_state()
    assert torch.equal(pipe(x), x)
    assert torch.equal(torch.get_rng_state(), state)


def test_translation_moves_by_whole_pixels():
    torch.manual_seed(3)
    x = torch.full((16, 1, 16, 16), -1.0)
    x[:, :, 8, 8] = 1.0
    y = A.translate(x, torch.ones(16, dtype=torch.bool))
    for img in y[:, 0]:
        assert torch.isclose(img.max(), torch.tensor(1.0)), "a translated bright pixel must stay one pixel"
        r, c = divmod(int(img.argmax()), 16)
        assert abs(r - 8) <= 2 and abs(c - 8) <= 2
    assert any(int(img.argmax()) != 8 * 16 + 8 for img in y[:, 0])
    none = A.translate(x, torch.zeros(16, dtype=torch.bool))
    assert torch.allclose(none, x)


def test_cutout_greys_half_edge_box():
    torch.manual_seed(0)
    x = torch.ones(8, 1, 16, 16)
    y = A.cutout(x, torch.ones(8, dtype=torch.bool))
    zeros = (y == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 64).all()  # an 8x8 box, possibly clipped by the border


def test_flip_is_off_by_default():
    assert "flip" not in A.AugmentSettings().ops
    assert "flip" in A.AugmentSettings.from_params({"augment": "diffaug", "augment_ops": "flip"}).ops


def test_bad_settings_are_user_errors():
    with pytest.raises(MedsynthError, match="augment must be one of"):
        A.AugmentSettings.from_params({"augment": "sometimes"})
    with pytest.raises(MedsynthError, match="unknown augment_ops"):
        A.AugmentSettings.from_params({"augment": "ada", "augment_ops": "rotate"})


def test_ada_update_follows_sign_of_overfitting():
    pipe = _pipe(augment="ada", augment_p=0.5, ada_kimg=0.1, ada_interval=1)
    pipe.observe_real(torch.full((50,), 2.0))  # r_t = 1 > 0.6: D is overconfident on reals
    pipe.update(0)
    assert float(pipe.p) == pytest.approx(1.0)  # 0.5 + 50/100, clamped
    assert float(pipe.rt) == pytest.approx(1.0)
    pipe.observe_real(torch.full((30,), -1.0))  # r_t = -1 < 0.6
    pipe.update(1)
    assert float(pipe.p) == pytest.approx(0.7)
    assert float(pipe.sign_count) == 0


def test_ada_statistic_summed_over_processes_equals_one_process():
    """Two processes that each see half the global batch, their step sums added (what the loop's
    all_reduce does with ``cross_rank_sums``), move p exactly as one process seeing all of it."""
    logits = torch.tensor([2.0, 1.0, -1.0, 3.0, 0.5, -2.0, 4.0, 1.5])
    one = _pipe(augment="ada", augment_p=0.5, ada_kimg=0.1, ada_interval=2)
    ranks = [_pipe(augment="ada", augment_p=0.5, ada_kimg=0.1, ada_interval=2) for _ in range(2)]
    for step in range(4):
        one.observe_real(logits * (step - 1.5))
        for r, pipe in enumerate(ranks):
            pipe.observe_real((logits * (step - 1.5))[4 * r: 4 * r + 4])
        sums = [pipe.step_sums() for pipe in ranks]
        for i in range(2):  # all_reduce SUM, in place
            total = sums[0][i] + sums[1][i]
            for s in sums:
                s[i].copy_(total)
        one.update(step)
        for pipe in ranks:
            pipe.update(step)
        for pipe in ranks:
            assert float(pipe.p) == float(one.p) and float(pipe.rt) == float(one.rt)
            assert float(pipe.sign_count) == float(one.sign_count)
    assert float(one.p) != 0.5  # p did move
    assert _pipe(augment="diffaug").step_sums() == []
    # the per-step sums are not checkpointed (zero between steps); p and the running sums are
    assert set(one.state_dict()) == {"p", "sign_sum", "sign_count", "rt"}


def test_variant_declares_the_ada_sums_and_uses_them_in_on_step_end():
    cfg = resolve(base={"model": {"name": "dcgan", "width": 4, "latent_dim": 16,
                                  "params": {"augment": "ada", "augment_p": 0.5, "ada_kimg": 0.1,
                                             "ada_interval": 1}}, "data": {"size": 16}})
    model = build_model(cfg.model)
    model.d_real(torch.ones(4))  # this process: 4 images, all judged real
    for t in model.cross_rank_sums():  # the other process: the same (all_reduce SUM doubles them)
        t.mul_(2)
    model.on_step_end(StepInfo(0, 8, world_size=2))
    assert float(model.augment_pipe.p) == pytest.approx(0.5 + 8 / 100)  # 8 images over both processes
    assert float(model.augment_pipe.rt) == 1.0


@pytest.mark.parametrize("name", list_models())
def test_every_variant_accepts_augment_params_and_checkpoints_p(name):
    nc = 2 if get_model(name).requires_labels else 0
    cfg = resolve(base={"model": {"name": name, "width": 4, "latent_dim": 16, "num_classes": nc,
                                  "params": {"augment": "ada", "augment_p": 0.25}},
                        "data": {"size": 16}})
    if name == "diffusion":  # no discriminator: nothing to augment, refused in one line
        with pytest.raises(MedsynthError, match=r"^model\.params\.augment: .*no discriminator"):
            build_model(cfg.model)
    else:
        model = build_model(cfg.model)
        assert model.augment_pipe is not None
        assert float(model.state_dict()["augment_pipe.p"]) == 0.25
    off = build_model(resolve(base={"model": {"name": name, "width": 4, "latent_dim": 16, "num_classes": nc},
                                    "data": {"size": 16}}).model)
    assert off.augment_pipe is None and not any(k.startswith("augment_pipe") for k in off.state_dict())


def test_ada_raises_p_when_d_overfits_a_tiny_set(tmp_path):
    """8 training images: D quickly separates them from G's output, r_t -> 1, and p must rise."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16, generator=g) * 2 - 1
    cfg = resolve(base={"model": {"name": "dcgan", "width": 4, "latent_dim": 16,
                                  "params": {"augment": "ada", "ada_kimg": 0.5, "ada_interval": 2}},
                        "data": {"size": 16},
                        "train": {"steps": 30, "batch_size": 8, "tick_every": 10, "sample_every": 1000,
                                  "checkpoint_every": 1000}})
    train(cfg, x, None, tmp_path / "run")
    lines = [json.loads(s) for s in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert all("aug/p" in ln and "aug/rt" in ln for ln in lines)
    _, model, _ = load_trained(tmp_path / "run")
    assert float(model.augment_pipe.p) > 0.2
    assert lines[-1]["aug/p"] > lines[0]["aug/p"]
    assert max(ln["aug/rt"] for ln in lines) > 0.6


def test_translate_is_an_exact_integer_shift_with_double_backward():
    """Integer shifts move pixels exactly, and R1 through the augmentation (grad of grad) works:
    the op is index arithmetic, not grid_sample (which has no double backward on CUDA)."""
    from medsynth.models.augment import translate

    torch.manual_seed(3)
    x = torch.randn(4, 1, 16, 16, requires_grad=True)
    y = translate(x, torch.ones(4, dtype=torch.bool), ratio=0.125)
    for i in range(4):
        # find the shift that maps the interior of x onto y
        hits = [(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)
                if torch.equal(y[i, :, 4:12, 4:12], x[i, :, 4 - dr:12 - dr, 4 - dc:12 - dc])]
        assert len(hits) == 1
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # unselected samples are untouched; 3D volumes keep their shape
    z = translate(x.detach(), torch.zeros(4, dtype=torch.bool))
    assert torch.equal(z, x.detach())
    assert translate(torch.randn(2, 1, 8, 8, 8), torch.ones(2, dtype=torch.bool)).shape == (2, 1, 8, 8, 8)
