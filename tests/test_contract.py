"""The shared contract every registered GAN variant must pass (2D and 3D), and the declaration
of that contract in ``medsynth/models/base.py``: a variant defines only names ``GANVariant``
declares (or lists in its own ``extra_api``), with the base's signatures, and its capability flags
agree with what it overrides."""

from __future__ import annotations

import inspect

import pytest
import torch

from medsynth.config import resolve
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, GANVariant, StepInfo
from medsynth.models.registry import build_model, get_model, list_models

#: Architectural options that build different networks pass the contract too ("name+option").
OPTIONS = {"cogan+pointwise": {"head": "pointwise"}, "dcgan+nearest": {"g_up": "nearest"}}
#: Variants without a discriminator (diffusion): nothing to augment, so ``model.params.augment`` is refused.
NO_DISCRIMINATOR = {"diffusion"}
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
        loss, stats = model.loss(phase.name, batch, StepInfo(0, 8))
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
            loss, _ = model.loss(phase.name, batch, StepInfo(0, 8))
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
        loss, _ = model.loss(phase.name, batch, StepInfo(0, 8))
        opt.zero_grad(), loss.backward(), opt.step()
    model.on_step_end(StepInfo(0, 8))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(99)
    fresh = build_model(cfg.model)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    for ema in (True, False):
        a = model.sample(4, generator=torch.Generator().manual_seed(0), ema=ema)
        b = fresh.sample(4, generator=torch.Generator().manual_seed(0), ema=ema)
        assert torch.equal(a, b)


def real_image_copies(tensor: torch.Tensor, real: torch.Tensor) -> list[int]:
    """Indices of the ``real`` images ``(N, *image)`` that ``tensor`` holds: as an exact run of an
    image's flattened pixels at any offset, or as a row (of the image's size) correlated above 0.99
    with it (a rescaled or re-typed copy)."""
    flat = tensor.detach().to(torch.float32).flatten()
    imgs = real.detach().to(torch.float32).flatten(1)
    size = imgs.shape[1]
    found = set()
    if flat.numel() < size:
        return []
    for i, img in enumerate(imgs):
        starts = ((flat[: flat.numel() - size + 1] == img[0]).nonzero().flatten()).tolist()
        if any(torch.equal(flat[j: j + size], img) for j in starts):
            found.add(i)
    if flat.numel() % size == 0:
        rows = flat.view(-1, size)
        rows = rows - rows.mean(1, keepdim=True)
        ref = imgs - imgs.mean(1, keepdim=True)
        corr = (rows @ ref.T) / (rows.norm(dim=1, keepdim=True) * ref.norm(dim=1) + 1e-12)
        found |= set((corr.abs() > 0.99).any(0).nonzero().flatten().tolist())
    return sorted(found)


def test_the_copy_search_finds_copies():
    real = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert real_image_copies(torch.cat([torch.zeros(3), real[1].flatten(), torch.ones(2)]), real) == [1]
    assert real_image_copies(0.5 * real[2:] + 0.1, real) == [2]  # a rescaled copy in its own row
    assert real_image_copies(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)), real) == []


@pytest.mark.parametrize("name,dims", CASES)
def test_no_training_image_in_the_state_dict_or_optimiser_state(name, dims):
    """Checkpoints hold ``state_dict`` and the optimisers' states: after training steps on
    distinctive real images (uniform noise, nothing a network would make), no tensor of either holds
    one of them. A variant that keeps real images for later (CycleGAN's former example buffers, a
    history pool of translations) fails here: such state lives outside the state_dict."""
    torch.manual_seed(0)
    model = build_model(_cfg(name, dims).model)
    g = torch.Generator().manual_seed(7)
    real = torch.rand((8,) + model.image_shape, generator=g) * 2 - 1
    batch = Batch(real, torch.tensor([0, 1] * 4) if model.num_classes else None)
    opts = {ph.name: torch.optim.Adam(list(model.sub_modules(ph.modules)), lr=1e-3) for ph in model.phases()}
    for step in range(3):
        for ph in model.phases():
            loss, _ = model.loss(ph.name, batch, StepInfo(step, 8))
            opts[ph.name].zero_grad()
            loss.backward()
            opts[ph.name].step()
        model.on_step_end(StepInfo(step, 8))
    tensors = dict(model.state_dict())
    for pname, opt in opts.items():
        for i, st in opt.state_dict()["state"].items():
            tensors.update({f"optimizer {pname}[{i}].{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    held = {key: real_image_copies(t, real) for key, t in tensors.items()}
    held = {key: idx for key, idx in held.items() if idx}
    assert not held, f"{name} {dims}D keeps training images in its checkpointed state: {held}"


@pytest.mark.parametrize("name", list_models())
def test_unconditional_variant_needs_no_labels(name):
    if get_model(name).requires_labels:
        pytest.skip(f"{name} declares requires_labels (conditional or two-domain by definition)")
    model = build_model(_cfg(name, 2, num_classes=0).model)
    batch = Batch(_batch(model).images, None)
    for phase in model.phases():
        loss, _ = model.loss(phase.name, batch, StepInfo(0, 8))
        assert torch.isfinite(loss)


# ---- the declared contract -----------------------------------------------------------------------

#: Everything a variant may define without listing it in ``extra_api``: the declared contract.
DECLARED = set(dir(GANVariant))
#: Contract methods a variant may override; an override must accept the base's parameters.
OVERRIDABLE = sorted(n for n, v in vars(GANVariant).items()
                     if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, classmethod)))


def _own_names(cls: type) -> dict[str, type]:
    """Public names defined by ``cls`` and its bases below :class:`GANVariant` -> the defining class."""
    out: dict[str, type] = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(GANVariant)]):
        out.update({n: klass for n in vars(klass) if not n.startswith("_")})
    return out


def undeclared_names(cls: type) -> list[str]:
    """Public names a variant class defines that are neither declared on ``GANVariant`` (or
    ``nn.Module``) nor listed in the class's ``extra_api``: a misspelt override lands here."""
    return sorted(n for n in _own_names(cls) if n not in DECLARED and n not in cls.extra_api)


def _overrides(cls: type, name: str) -> bool:
    return inspect.getattr_static(cls, name) is not inspect.getattr_static(GANVariant, name)


@pytest.mark.parametrize("name", list_models())
def test_variant_defines_only_declared_names(name):
    cls = get_model(name)
    assert issubclass(cls, GANVariant)
    assert not undeclared_names(cls), (
        f"{cls.__name__} defines {undeclared_names(cls)}: neither declared on GANVariant nor listed in its "
        "extra_api (a misspelt override?)")
    own = _own_names(cls)
    stale = sorted(n for n in cls.extra_api if n not in own)
    assert not stale, f"{cls.__name__}.extra_api lists names it does not define: {stale}"
    shadow = sorted(n for n in cls.extra_api if n in DECLARED)
    assert not shadow, f"{cls.__name__}.extra_api lists contract names: {shadow}"


def test_a_misspelt_override_is_caught():
    class Misspelt(get_model("dcgan")):
        def d_logit(self, images, labels):  # meant: d_logits
            return self.D(images, labels)

    assert undeclared_names(Misspelt) == ["d_logit"]


@pytest.mark.parametrize("name", list_models())
def test_overrides_keep_the_declared_signatures(name):
    cls = get_model(name)
    for meth in OVERRIDABLE:
        if not _overrides(cls, meth):
            continue
        base = inspect.signature(getattr(GANVariant, meth))
        mine = inspect.signature(getattr(cls, meth))
        for pname, p in base.parameters.items():
            assert pname in mine.parameters, f"{cls.__name__}.{meth} lacks parameter {pname!r}"
            assert mine.parameters[pname].kind == p.kind, f"{cls.__name__}.{meth}: {pname!r} changed kind"
        extra = [q for n, q in mine.parameters.items() if n not in base.parameters and q.default is q.empty
                 and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)]
        assert not extra, f"{cls.__name__}.{meth} requires parameters the callers do not pass: {extra}"


@pytest.mark.parametrize("name", list_models())
def test_capability_flags_agree_with_overrides(name):
    cls = get_model(name)
    for flag in ("requires_labels", "supports_truncation", "supports_translation", "supports_pairs",
                 "supports_d_logits"):
        assert isinstance(getattr(cls, flag), bool), flag
    assert cls.supports_translation == _overrides(cls, "translate"), "supports_translation vs translate"
    assert cls.supports_pairs == _overrides(cls, "sample_pairs"), "supports_pairs vs sample_pairs"
    assert cls.supports_truncation == ("truncation" in inspect.signature(cls.generate).parameters), \
        "supports_truncation vs generate(truncation=)"
    if not cls.supports_d_logits:
        assert not _overrides(cls, "d_logits"), "supports_d_logits is False but d_logits is overridden"


@pytest.mark.parametrize("name", list_models())
def test_declared_capabilities_work_or_refuse_in_one_line(name):
    torch.manual_seed(0)
    model = build_model(_cfg(name, 2).model)
    batch = _batch(model)
    # the discriminator score (membership inference)
    if model.supports_d_logits:
        model.eval()
        with torch.no_grad():
            s = model.d_logits(batch.images, batch.labels)
        assert s.shape[0] == len(batch.images) and torch.isfinite(s).all()
    else:
        with pytest.raises(MedsynthError, match="discriminator"):
            model.d_logits(batch.images, batch.labels)
    # translation and pairs
    if model.supports_translation:
        assert model.translate(batch.images, "a2b").shape == batch.images.shape
    else:
        with pytest.raises(MedsynthError, match="translate"):
            model.translate(batch.images, "a2b")
    if model.supports_pairs:
        a, b = model.sample_pairs(3, generator=torch.Generator().manual_seed(0))
        assert a.shape == b.shape == (3,) + model.image_shape
    else:
        with pytest.raises(MedsynthError, match="pairs"):
            model.sample_pairs(3)
    # differential privacy: the declared phase exists, dp_params returns model.params
    if model.dp_phase is not None:
        assert model.dp_phase in {ph.name for ph in model.phases()}
    assert isinstance(type(model).dp_params({}), dict)
    # labels: required exactly when declared
    if model.requires_labels:
        with pytest.raises(MedsynthError, match="num_classes"):
            build_model(_cfg(name, 2, num_classes=0).model)
    # nothing to sum over processes unless adaptive augmentation is on
    assert model.cross_rank_sums() == []


@pytest.mark.parametrize("name", list_models())
def test_conditional_models_refuse_a_batch_without_labels_in_one_place(name):
    """``GANVariant.class_labels`` is the one check: every phase of a conditional model refuses a
    batch without labels with the same message."""
    torch.manual_seed(0)
    model = build_model(_cfg(name, 2).model)
    batch = Batch(_batch(model).images, None)
    for phase in model.phases():
        with pytest.raises(ValueError, match="labels are required"):
            model.loss(phase.name, batch, StepInfo(0, 8))


@pytest.mark.parametrize("name", list_models())
def test_ada_statistic_is_declared_for_cross_process_sums(name):
    nc = 2 if get_model(name).requires_labels else 0
    cfg = resolve(base={"model": {"name": name, "width": 4, "latent_dim": 16, "num_classes": nc,
                                  "params": {"augment": "ada"}}, "data": {"size": 16}})
    if name in NO_DISCRIMINATOR:
        with pytest.raises(MedsynthError, match=r"^model\.params\.augment: .*no discriminator"):
            build_model(cfg.model)
        return
    model = build_model(cfg.model)
    sums = model.cross_rank_sums()
    assert len(sums) == 2 and all(isinstance(t, torch.Tensor) and t.dim() == 0 for t in sums)
    buffers = {id(b) for b in model.buffers()}
    assert all(id(t) in buffers for t in sums), "cross_rank_sums must be the model's own tensors (summed in place)"
