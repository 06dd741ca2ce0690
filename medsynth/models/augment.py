"""Differentiable augmentation of everything the discriminator sees, fixed or adaptive.

Medical job: GANs trained on a few hundred radiographs or CT slices let D memorise the training
set; D then gives G no useful gradient and samples degrade (Karras et al. 2020, "Training GANs
with limited data"). Augmenting *both* real and generated images before D, with operations that
are differentiable so G is trained through them, removes that shortcut without leaking the
augmentations into the samples as long as each is applied with probability ``p`` < ~0.8.

Modes (``model.params.augment``):
    ``"none"``     no augmentation (default for every variant).
    ``"diffaug"``  DiffAugment (Zhao et al. 2020): every op applied to every image (``p`` fixed,
                   default 1).
    ``"ada"``      StyleGAN2-ADA: each op applied per image with probability ``p``, and ``p``
                   adapted from the overfitting heuristic ``r_t = E[sign(D(real))]`` toward a
                   target (0.6): ``p += sign(r_t - target) * images / (ada_kimg * 1000)`` every
                   ``ada_interval`` steps, clamped to [0, 1].

Ops (``augment_ops``, comma-separated): ``translation`` (up to 1/8 of the edge, integer pixels,
reflection padding), ``cutout`` (a grey box of half the edge), ``brightness`` (+U(-0.5, 0.5)),
``contrast`` (x U(0.5, 1.5) about the image mean), ``flip`` (left-right; **off by default**:
chest anatomy is lateralised, heart on the left, so a flipped film is not a plausible real one).
All work on 2D ``(N, C, H, W)`` and 3D ``(N, C, D, H, W)`` tensors in [-1, 1].

``p`` and the running sign statistics are buffers, so checkpoints resume exactly. Randomness
uses the global torch RNG, which the training loop checkpoints.

Several processes (torchrun): the statistic is global. Each step's ``sign(D(real))`` sum and count
are kept apart (:meth:`AugmentPipe.step_sums`); the loop sums them over all processes before
``on_step_end`` (:meth:`medsynth.models.base.GANVariant.cross_rank_sums`), and :meth:`AugmentPipe.update`
adds the summed values to the running statistic, so every process moves ``p`` by the images of
the whole global batch, as one process would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``model.params`` keys handled by the engine for every variant (removed before a variant parses its own).
AUGMENT_PARAMS = ("augment", "augment_ops", "augment_p", "ada_target", "ada_kimg", "ada_interval")

ALL_OPS = ("translation", "cutout", "brightness", "contrast", "flip")
DEFAULT_OPS = "translation,cutout,brightness,contrast"
MODES = ("none", "diffaug", "ada")


@dataclass
class AugmentSettings:
    """The common augmentation parameters (any variant's ``model.params``).

    Attributes:
        augment: ``"none"``, ``"diffaug"`` or ``"ada"``.
        augment_ops: comma-separated ops from :data:`ALL_OPS`.
        augment_p: initial probability (``diffaug`` default 1.0, ``ada`` default 0.0).
        ada_target: target of ``r_t = E[sign(D(real))]`` (0.6 as in StyleGAN2-ADA).
        ada_kimg: thousands of real images over which ``p`` can move from 0 to 1 (the paper's 500
            is sized for GPU runs of millions of images; 20 suits CPU runs of ~100k images).
        ada_interval: steps between ``p`` updates.
    """

    augment: str = "none"
    augment_ops: str = DEFAULT_OPS
    augment_p: float | None = None
    ada_target: float = 0.6
    ada_kimg: float = 20.0
    ada_interval: int = 4

    @classmethod
    def from_params(cls, params: dict[str, Any] | None, variant: str = "?") -> "AugmentSettings":
        from medsynth.errors import MedsynthError

        where = f"model.params ({variant})"
        values = {k: v for k, v in (params or {}).items() if k in AUGMENT_PARAMS}
        s = cls(**values)
        if s.augment not in MODES:
            raise MedsynthError(where, f"augment must be one of {list(MODES)}, got {s.augment!r}")
        bad = [op for op in s.ops if op not in ALL_OPS]
        if bad:
            raise MedsynthError(where, f"unknown augment_ops {bad}; known: {list(ALL_OPS)}")
        if s.augment_p is not None and not 0.0 <= float(s.augment_p) <= 1.0:
            raise MedsynthError(where, f"augment_p must lie in [0, 1], got {s.augment_p}")
        if s.ada_kimg <= 0 or s.ada_interval < 1:
            raise MedsynthError(where, "ada_kimg must be > 0 and ada_interval >= 1")
        return s

    @property
    def ops(self) -> list[str]:
        return [op.strip() for op in str(self.augment_ops).split(",") if op.strip()]


def split_params(params: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(augment params, the variant's own params)``."""
    params = dict(params or {})
    return ({k: v for k, v in params.items() if k in AUGMENT_PARAMS},
            {k: v for k, v in params.items() if k not in AUGMENT_PARAMS})


def _per_sample(n: int, p: float, like: Tensor) -> Tensor:
    """``(n,)`` bool: which samples get an op (all when ``p >= 1``)."""
    if p >= 1.0:
        return torch.ones(n, dtype=torch.bool, device=like.device)
    return torch.rand(n, device=like.device) < p


def _bshape(x: Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


def translate(x: Tensor, apply: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each selected image by a random whole number of pixels (up to ``ratio`` of each
    edge) along every spatial axis, reflection-padded. Differentiable in ``x``."""
    n = x.shape[0]
    size = x.shape[2:]
    # integer shifts in pixels, one per axis; 0 for samples not selected
    shifts = []
    for s in size:
        m = max(1, int(s * ratio + 0.5))
        sh = torch.randint(-m, m + 1, (n,), device=x.device) * apply.long()
        shifts.append(sh)
    # crop a reflection-padded copy at the shifted offset: index arithmetic only, so the op is
    # differentiable to any order (R1 through the augmentation works on every device; CUDA's
    # grid_sample has no double backward)
    pads = []
    for s in reversed(size):
        m = max(1, int(s * ratio + 0.5))
        pads += [m, m]
    mode = "reflect" if all(s > max(1, int(s * ratio + 0.5)) for s in size) else "replicate"
    out = F.pad(x, pads, mode=mode)
    for axis, (s, sh) in enumerate(zip(size, shifts)):
        m = max(1, int(s * ratio + 0.5))
        d = axis + 2
        idx = torch.arange(s, device=x.device)[None, :] + (m - sh)[:, None]  # (N, s)
        view = [n] + [1] * (out.dim() - 1)
        view[d] = s
        shape = list(out.shape)
        shape[d] = s
        out = torch.gather(out, d, idx.view(view).expand(shape))
    return out


def cutout(x: Tensor, apply: Tensor, ratio: float = 0.5) -> Tensor:
    """Set a random box of ``ratio`` x the edge (per axis) to 0 (mid-grey) in each selected image;
    the box may hang over the border (as in DiffAugment)."""
    n = x.shape[0]
    inside = torch.ones((n,) + tuple(x.shape[2:]), dtype=torch.bool, device=x.device)
    for axis, s in enumerate(x.shape[2:]):
        length = max(1, int(s * ratio + 0.5))
        start = torch.randint(0, s, (n,), device=x.device) - length // 2
        coord = torch.arange(s, device=x.device)
        in_axis = (coord[None, :] >= start[:, None]) & (coord[None, :] < start[:, None] + length)  # (n, s)
        view = [n] + [1] * (x.dim() - 2)
        view[axis + 1] = s
        inside = inside & in_axis.view(view)
    cut = inside & apply.view(_bshape(inside))
    return x * (~cut).unsqueeze(1).to(x.dtype)


def brightness(x: Tensor, apply: Tensor) -> Tensor:
    """Add U(-0.5, 0.5) to each selected image."""
    delta = (torch.rand(_bshape(x), device=x.device, dtype=x.dtype) - 0.5) * apply.view(_bshape(x)).to(x.dtype)
    return x + delta


def contrast(x: Tensor, apply: Tensor) -> Tensor:
    """Scale each selected image about its mean by U(0.5, 1.5)."""
    factor = torch.rand(_bshape(x), device=x.device, dtype=x.dtype) + 0.5
    factor = torch.where(apply.view(_bshape(x)), factor, torch.ones_like(factor))
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return (x - mean) * factor + mean


def flip(x: Tensor, apply: Tensor) -> Tensor:
    """Mirror each selected image left-right (last axis)."""
    return torch.where(apply.view(_bshape(x)), x.flip(-1), x)


_OPS = {"translation": translate, "cutout": cutout, "brightness": brightness, "contrast": contrast, "flip": flip}


class AugmentPipe(nn.Module):
    """Applies the configured ops to D's inputs and, in ``ada`` mode, adapts ``p``.

    Buffers (checkpointed): ``p`` (probability per op per image), ``sign_sum`` / ``sign_count``
    (accumulated ``sign(D(real))`` since the last update, over all processes) and ``rt`` (the last
    ``r_t``). Not checkpointed: ``step_sign_sum`` / ``step_sign_count``, this step's contribution
    (zero between steps, when checkpoints are written).
    """

    def __init__(self, settings: AugmentSettings):
        super().__init__()
        self.settings = settings
        self.mode = settings.augment
        self.ops = settings.ops
        p0 = settings.augment_p if settings.augment_p is not None else (1.0 if self.mode == "diffaug" else 0.0)
        self.register_buffer("p", torch.tensor(float(p0), dtype=torch.float64))
        self.register_buffer("sign_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sign_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("rt", torch.zeros((), dtype=torch.float64))
        self.register_buffer("step_sign_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("step_sign_count", torch.zeros((), dtype=torch.float64), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Augment ``(N, C, *S)`` images (real or fake); differentiable in ``x``."""
        p = float(self.p)
        if p <= 0.0 or not self.ops:
            return x
        for name in self.ops:
            x = _OPS[name](x, _per_sample(x.shape[0], p, x))
        return x

    @torch.no_grad()
    def observe_real(self, logits: Tensor) -> None:
        """Accumulate ``sign(D(real))`` (logits ``(N,)``) into this step's sums."""
        if self.mode != "ada":
            return
        self.step_sign_sum += logits.detach().sign().sum().double()
        self.step_sign_count += logits.numel()

    def step_sums(self) -> list[Tensor]:
        """This step's ``[sign sum, count]`` (float64 scalars), which the loop sums over all
        processes in place before :meth:`update`; empty unless ``ada`` (nothing to share)."""
        return [self.step_sign_sum, self.step_sign_count] if self.mode == "ada" else []

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Add this step's sums to the running statistic; every ``ada_interval`` steps move ``p``
        toward keeping ``r_t`` at the target (by the images counted, over all processes)."""
        if self.mode != "ada":
            return
        self.sign_sum += self.step_sign_sum
        self.sign_count += self.step_sign_count
        self.step_sign_sum.zero_()
        self.step_sign_count.zero_()
        if (step + 1) % self.settings.ada_interval or self.sign_count <= 0:
            return
        rt = self.sign_sum / self.sign_count
        adjust = torch.sign(rt - self.settings.ada_target) * self.sign_count / (self.settings.ada_kimg * 1000.0)
        self.p.copy_((self.p + adjust).clamp(0.0, 1.0))
        self.rt.copy_(rt)
        self.sign_sum.zero_()
        self.sign_count.zero_()

    def stats(self) -> dict[str, float]:
        out = {"aug/p": float(self.p)}
        if self.mode == "ada":
            out["aug/rt"] = float(self.rt)
        return out


def build_augment_pipe(params: dict[str, Any] | None, variant: str = "?") -> AugmentPipe | None:
    """The pipe for ``model.params`` (``None`` when ``augment`` is ``"none"``)."""
    settings = AugmentSettings.from_params(params, variant)
    return None if settings.augment == "none" else AugmentPipe(settings)
