"""The shared contract every registered GAN variant must pass (2D and 3D)."""

from __future__ import annotations

import pytest
import torch

from medsynth.config import resolve
from medsynth.models.base import Batch, GANVariant
from medsynth.models.registry import build_model, list_models

#: Architectural options that build different networks pass the contract too ("name+option").
OPTIONS = {"cogan+pointwise": {"head": "pointwise"}}
CASES = [(name, dims) for name in [*list_models(), *OPTIONS] for dims in (2, 3)]


def _cfg(name: str, dims: int, num_classes: int = 2):
    size = 16 if dims == 2 else 8
    model = {"name": name.split("+")[0], "width": 4, "latent_dim": 16, "num_classes": num_classes,
             "params": OPTIONS.get(name, {})}
    return resolve(base={"model": model, "data": {"size": size, "spatial_dims": dims}})


def _batch(model: GANVariant, n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(1)
    x = torch.rand((n,) + model.image_shape, generator=g) * 2 - 1
    y = torch.randint(0, 2, (n,), generator=g) if model.num_classes else None
    return Batch(x, y)


def test_registry_has_the_foundation_variants():
    assert {"dcgan", "wgan_gp"} <= set(list_models())


@pytest.mark.parametrize("name,dims", CASES)
def test_losses_finite_and_phase_parameters_move(name, dims):
    torch.manual_seed(0)
    model = build_model(_cfg(name, dims).model)
    batch = _batch(model)
    for phase in model.phases():
        params = list(model.sub_modules(phase.modules))
        assert params, f"phase {phase.name} updates nothing"
        before = [p.detach().clone() for p in params]
        opt = torch.optim.Adam(params, lr=1e-2)
        loss, stats = model.loss(phase.name, batch, 0)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())
        # stats stay on the device (no .item() host sync per step); the loop reads them once per tick
        synced = [k for k, v in stats.items() if not isinstance(v, torch.Tensor) and not k.startswith("aug/")]
        assert not synced, f"phase {phase.name}: stats read to the host every step: {synced}"
        assert all(not v.requires_grad for v in stats.values() if isinstance(v, torch.Tensor))
        opt.zero_grad()
        loss.backward()
        opt.step()
        moved = sum(not torch.equal(b, p) for b, p in zip(before, params))
        assert moved > 0, f"phase {phase.name}: no parameter moved"


@pytest.mark.parametrize("name,dims", CASES)
def test_phases_run_under_cpu_bf16_autocast(name, dims):
    """``train.amp=auto`` is bf16 on CPUs with AMX: CPU autocast mixes bf16 (convolutions) and
    fp32 (3D pooling, up-sampling) tensors, which every variant's losses must survive."""
    torch.manual_seed(0)
    model = build_model(_cfg(name, dims).model)
    batch = _batch(model)
    for phase in model.phases():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = model.loss(phase.name, batch, 0)
        assert torch.isfinite(loss), f"phase {phase.name}"
        loss.float().backward()


@pytest.mark.parametrize("name,dims", CASES)
def test_sample_shape_range_and_seed(name, dims):
    torch.manual_seed(0)
    model = build_model(_cfg(name, dims).model)
    a = model.sample(5, generator=torch.Generator().manual_seed(3))
    b = model.sample(5, generator=torch.Generator().manual_seed(3))
    c = model.sample(5, generator=torch.Generator().manual_seed(4))
    assert a.shape == (5,) + model.image_shape
    assert a.min() >= -1 and a.max() <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    one = model.sample(4, labels=1, generator=torch.Generator().manual_seed(3))
    assert one.shape[0] == 4


@pytest.mark.parametrize("name,dims", CASES)
def test_state_dict_round_trip_is_exact(name, dims, tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(name, dims)
    model = build_model(cfg.model)
    batch = _batch(model)
    # take one step so EMA/BN buffers differ from a fresh init
    for phase in model.phases():
        opt = torch.optim.Adam(list(model.sub_modules(phase.modules)), lr=1e-2)
        loss, _ = model.loss(phase.name, batch, 0)
        opt.zero_grad(), loss.backward(), opt.step()
    model.on_step_end(0)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(99)
    fresh = build_model(cfg.model)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    for ema in (True, False):
        a = model.sample(4, generator=torch.Generator().manual_seed(0), ema=ema)
        b = fresh.sample(4, generator=torch.Generator().manual_seed(0), ema=ema)
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list_models())
def test_unconditional_variant_needs_no_labels(name):
    from medsynth.models.registry import get_model

    if getattr(get_model(name), "requires_labels", False):
        pytest.skip(f"{name} declares requires_labels (conditional or two-domain by definition)")
    model = build_model(_cfg(name, 2, num_classes=0).model)
    batch = Batch(_batch(model).images, None)
    for phase in model.phases():
        loss, _ = model.loss(phase.name, batch, 0)
        assert torch.isfinite(loss)
