"""CycleGAN (Zhu et al. 2017): unpaired translation between two image domains.

Medical jobs:
    * **lesion insertion**: domain A = nodule-free images (label 0), B = nodule-bearing (label 1);
      ``translate(x, "a2b")`` turns real nodule-free radiographs/slices into nodule-bearing ones of
      the same patient anatomy (augmentation of the rare positive class with realistic context);
    * **harmonisation**: A = scanner/site 1, B = scanner/site 2 (give the domain as the label).

Domains come as **two label values in one mixed batch** (0 = A, 1 = B, ``model.num_classes`` must
be 2); ``loss`` splits the batch. A batch lacking one domain trains only the terms that domain
makes possible (the other discriminator still sees fakes from its history pool).

Networks (small, 2D or 3D): two ResNet generators ``G.ab``, ``G.ba`` (reflection-padded
``stem_kernel`` conv, ``n_down`` stride-2 convs, ``n_res`` residual blocks, ``n_down`` transposed
convs, ``stem_kernel`` conv, tanh; instance norm) and two PatchGAN discriminators ``D.a``, ``D.b``
(stride-2 4x4 convs, then two stride-1 4x4 convs; one score per overlapping patch, up to three
down-sampling layers: a 70x70 receptive field at 256², about 46x46 at 64²).

Losses: adversarial (``adv_loss`` ``lsgan`` as in the paper, or ``bce``), cycle consistency
``cycle_weight * (|G_ba(G_ab(a)) - a| + |G_ab(G_ba(b)) - b|)`` and identity
``identity_weight * cycle_weight * (|G_ab(b) - b| + |G_ba(a) - a|)`` (L1). Phase ``G`` updates
both generators, then phase ``D`` both discriminators.

Privacy: the model keeps **no training image and nothing made from one** in its ``state_dict``,
so checkpoints hold no patient pixels (``tests/test_contract.py`` checks every variant).

Image history pool (Shrivastava et al. 2017): D is shown fakes drawn half from the latest
generator output and half from a buffer of ``pool_size`` (50) earlier fakes per domain. Those
fakes are translations of real training images (patient-derived), so the pools are
**non-persistent buffers**: they live in memory during training and never in a checkpoint. Resume
consequence: after ``train --resume`` the pools start empty and refill from the next batches, so a
resumed CycleGAN with ``pool_size > 0`` continues from the same weights, optimisers, data order
and RNG state but is not bit-identical to an uninterrupted run (``pool_size: 0`` resumes exactly).

Sampling: CycleGAN has no latent and translates only the images it is given
(``translate(images, "a2b")``; ``medsynth generate RUN --from FOLDER`` writes them marked as
translations of real images). ``sample(n, labels=t)`` (training grids, the contract's smoke tests)
uses no real image: it translates seeded smooth noise into target domain ``t``, so its output has
the right shape and range but no meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsynth import losses
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, GANVariant, Phase, VariantParams, make_ema, StepInfo
from medsynth.models.layers import conv_cls, norm_layer
from medsynth.models.registry import register_model

DIRECTIONS = ("a2b", "b2a")


@dataclass
class CycleGANParams(VariantParams):
    """``model.params`` of CycleGAN.

    Attributes:
        adv_loss: ``"lsgan"`` (paper) or ``"bce"``.
        cycle_weight: lambda of the cycle-consistency L1 terms (paper 10).
        identity_weight: identity L1 weight as a fraction of ``cycle_weight`` (paper 0.5; 0 = off).
        n_res: residual blocks per generator (paper 6 at 128², 9 at 256²).
        n_down: stride-2 down-samplings in each generator (reduced if the image is too small).
        d_layers: stride-2 layers of each PatchGAN (0 = as many as fit, at most 3).
        stem_kernel: kernel of the generators' first and last convolution (paper 7).
        norm: normalisation in G and D (``instance`` as in the paper, ``batch``, ``none``).
        pool_size: fakes kept per domain in the history pool (0 = no pool; in memory only, never
            checkpointed: see the module docstring for the resume consequence).
    """

    adv_loss: str = "lsgan"
    cycle_weight: float = 10.0
    identity_weight: float = 0.5
    n_res: int = 3
    n_down: int = 2
    d_layers: int = 0
    stem_kernel: int = 7
    norm: str = "instance"
    pool_size: int = 50


def _reflect_pad(spatial_dims: int, pad: int) -> nn.Module:
    return (nn.ReflectionPad2d if spatial_dims == 2 else nn.ReflectionPad3d)(pad)


class ResnetBlock(nn.Module):
    """``x + IN(conv3(pad(ReLU(IN(conv3(pad(x)))))))``. Shapes: ``(N, C, *S)`` -> same."""

    def __init__(self, channels: int, spatial_dims: int, norm: str):
        super().__init__()
        Conv = conv_cls(spatial_dims)
        self.body = nn.Sequential(
            _reflect_pad(spatial_dims, 1), Conv(channels, channels, 3), norm_layer(norm, channels, spatial_dims),
            nn.ReLU(inplace=True),
            _reflect_pad(spatial_dims, 1), Conv(channels, channels, 3), norm_layer(norm, channels, spatial_dims))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image-to-image ResNet generator (Johnson et al. 2016, as in CycleGAN).

    Shapes: ``(N, channels, *S)`` in [-1, 1] -> ``(N, channels, *S)`` in [-1, 1]
    (each edge of ``S`` divisible by ``2**n_down``).
    """

    def __init__(self, channels: int, width: int, n_down: int, n_res: int, spatial_dims: int, norm: str = "instance",
                 stem_kernel: int = 7):
        super().__init__()
        d = spatial_dims
        Conv, ConvT = conv_cls(d), conv_cls(d, transposed=True)
        layers: list[nn.Module] = [_reflect_pad(d, stem_kernel // 2), Conv(channels, width, stem_kernel),
                                   norm_layer(norm, width, d), nn.ReLU(inplace=True)]
        c = width
        for _ in range(n_down):
            layers += [Conv(c, 2 * c, 3, 2, 1), norm_layer(norm, 2 * c, d), nn.ReLU(inplace=True)]
            c *= 2
        layers += [ResnetBlock(c, d, norm) for _ in range(n_res)]
        for _ in range(n_down):
            layers += [ConvT(c, c // 2, 3, 2, 1, output_padding=1), norm_layer(norm, c // 2, d), nn.ReLU(inplace=True)]
            c //= 2
        layers += [_reflect_pad(d, stem_kernel // 2), Conv(c, channels, stem_kernel), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): one score per overlapping patch.

    Shapes: ``(N, channels, *[size]*d)`` -> ``(N, 1, *P)`` scores (``P = size / 2**n_layers - 2``).
    """

    def __init__(self, channels: int, width: int, n_layers: int, spatial_dims: int, norm: str = "instance"):
        super().__init__()
        d = spatial_dims
        Conv = conv_cls(d)
        layers: list[nn.Module] = [Conv(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for _ in range(1, n_layers):
            layers += [Conv(c, min(8 * width, 2 * c), 4, 2, 1), norm_layer(norm, min(8 * width, 2 * c), d),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = min(8 * width, 2 * c)
        layers += [Conv(c, min(8 * width, 2 * c), 4, 1, 1), norm_layer(norm, min(8 * width, 2 * c), d),
                   nn.LeakyReLU(0.2, inplace=True), Conv(min(8 * width, 2 * c), 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def patch_layers(size: int, requested: int = 0) -> int:
    """Stride-2 layers of a PatchGAN on ``size``-edge images: the most (at most 3, or ``requested``)
    that leave a score map of edge >= 1 (``size / 2**n >= 3``)."""
    fit = max(1, int(math.floor(math.log2(size / 3))))
    n = min(3, fit) if requested <= 0 else int(requested)
    if n > fit:
        raise MedsynthError("model.params.d_layers", f"{n} stride-2 layers do not fit {size}-pixel images (max {fit})")
    return n


@register_model("cyclegan")
class CycleGAN(GANVariant):
    """CycleGAN: phase G (both generators) then D (both discriminators); label 0 = A, 1 = B."""

    #: Two domains given as labels (0 = A, 1 = B).
    requires_labels = True
    supports_translation = True
    #: Two PatchGAN discriminators, one per domain, each scoring patches of its own domain.
    supports_d_logits = False

    def __init__(self, cfg):
        super().__init__(cfg)
        if "examples" in (cfg.params or {}):
            raise MedsynthError("model.params.examples", "removed: CycleGAN keeps no real training images any more "
                                                         "(a run written with it holds patient images in its "
                                                         "checkpoint: do not share it, retrain)")
        self.p = CycleGANParams.from_dict(cfg.params, "cyclegan")
        if self.num_classes != 2:
            raise MedsynthError("model.num_classes", "cyclegan needs exactly 2 (label 0 = domain A, 1 = domain B), "
                                                     f"got {self.num_classes}")
        if self.p.adv_loss not in ("lsgan", "bce"):
            raise MedsynthError("model.params.adv_loss", f"must be lsgan or bce, got {self.p.adv_loss!r}")
        d, c, s, w = cfg.spatial_dims, cfg.channels, cfg.size, cfg.width
        # Keep the bottleneck at >= 2 pixels (reflection padding needs it).
        n_down = max(0, min(int(self.p.n_down), int(math.log2(s)) - 1))
        self.G = nn.ModuleDict({
            "ab": ResnetGenerator(c, w, n_down, self.p.n_res, d, self.p.norm, self.p.stem_kernel),
            "ba": ResnetGenerator(c, w, n_down, self.p.n_res, d, self.p.norm, self.p.stem_kernel)})
        n_layers = patch_layers(s, self.p.d_layers)
        self.D = nn.ModuleDict({"a": PatchDiscriminator(c, w, n_layers, d, self.p.norm),
                                "b": PatchDiscriminator(c, w, n_layers, d, self.p.norm)})
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
        self.G_ema = make_ema(self.G) if cfg.ema_beta > 0 else None
        for dom in ("a", "b"):  # translations of training images: memory only, never in the state_dict
            self.register_buffer(f"pool_{dom}", torch.zeros((self.p.pool_size,) + self.image_shape), persistent=False)
            self.register_buffer(f"pool_{dom}_n", torch.zeros((), dtype=torch.long), persistent=False)

    # ---- translation ---------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, images: Tensor, direction: str = "a2b", *, ema: bool = True, batch_size: int = 64) -> Tensor:
        """Translate real images between the domains, in eval mode.

        Args:
            images: ``(N, C, *S)`` float32 in [-1, 1], the model's image shape.
            direction: ``"a2b"`` (e.g. nodule-free -> nodule-bearing) or ``"b2a"``.
        Returns:
            ``(N, C, *S)`` float32 in [-1, 1].
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images have shape {tuple(images.shape[1:])}, model expects {self.image_shape}")
        net = self.generator(ema)[direction[0] + direction[2]]
        was_training = self.training
        self.eval()
        try:
            out = [net(images[i: i + batch_size]) for i in range(0, images.shape[0], batch_size)]
            return torch.cat(out).clamp(-1, 1) if out else images.new_empty((0,) + self.image_shape)
        finally:
            self.train(was_training)

    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True) -> Tensor:
        raise NotImplementedError("cyclegan has no latent space: use translate(images, 'a2b'|'b2a') "
                                  "(sample() translates smooth noise)")

    @torch.no_grad()
    def sample(self, n: int, *, labels: Tensor | int | None = None, generator: torch.Generator | None = None,
               ema: bool = True, batch_size: int = 256, truncation: float | None = None) -> Tensor:
        """``n`` images ``(n, C, *S)`` in [-1, 1] of target domain ``labels`` (0 = A, 1 = B; ``None``:
        random), translated from seeded smooth noise: no real image is used (module doc)."""
        if truncation is not None and float(truncation) != 1.0:
            raise ValueError("model 'cyclegan' does not support truncation")
        if labels is None:
            labels = torch.randint(0, 2, (n,), generator=generator)
        elif isinstance(labels, int):
            if labels not in (0, 1):
                raise ValueError(f"class {labels} outside 0..1")
            labels = torch.full((n,), labels, dtype=torch.long)
        labels = torch.as_tensor(labels, dtype=torch.long)
        coarse = torch.rand((n, self.image_shape[0]) + (4,) * self.spatial_dims, generator=generator) * 2 - 1
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        noise = F.interpolate(coarse, size=self.image_shape[1:], mode=mode, align_corners=False)
        out = torch.empty((n,) + self.image_shape)
        for target in (0, 1):
            idx = (labels == target).nonzero().flatten()
            if len(idx) == 0:
                continue
            out[idx] = self.translate(noise[idx], "b2a" if target == 0 else "a2b", ema=ema, batch_size=batch_size)
        return out

    # ---- the history pool ------------------------------------------------------------------------
    @torch.no_grad()
    def _from_pool(self, dom: str, fakes: Tensor) -> Tensor:
        """Image history pool: each new fake is stored while the pool fills; afterwards, with
        probability 1/2, an old fake is shown instead and replaced by the new one."""
        size = self.p.pool_size
        if size == 0:
            return fakes
        pool, count = getattr(self, f"pool_{dom}"), getattr(self, f"pool_{dom}_n")
        out = fakes.clone()
        for i in range(fakes.shape[0]):
            if int(count) < size:
                pool[int(count)] = fakes[i]
                count += 1
            elif float(torch.rand(())) < 0.5:
                j = int(torch.randint(0, size, ()))
                out[i] = pool[j]
                pool[j] = fakes[i]
        return out

    def _pool_only(self, dom: str, n: int) -> Tensor | None:
        """Up to ``n`` stored fakes of ``dom`` (for a batch lacking the source domain)."""
        count = min(int(getattr(self, f"pool_{dom}_n")), self.p.pool_size)
        if count == 0:
            return None
        return getattr(self, f"pool_{dom}")[torch.randint(0, count, (min(n, count),))].clone()

    # ---- losses ----------------------------------------------------------------------------------
    def _adv_g(self, scores: Tensor) -> Tensor:
        return losses.lsgan_g_loss(scores) if self.p.adv_loss == "lsgan" else losses.bce_g_loss(scores)

    def _adv_d(self, scores: Tensor, real: bool) -> Tensor:
        if self.p.adv_loss == "lsgan":
            return losses.lsgan_d_term(scores, 1.0 if real else 0.0)
        return losses.bce_real_loss(scores) if real else losses.bce_fake_loss(scores)

    def phases(self) -> list[Phase]:
        b = tuple(self.cfg.betas)
        return [Phase("G", ("G",), self.cfg.lr_g, b), Phase("D", ("D",), self.cfg.lr_d, b)]

    def _split(self, batch: Batch) -> tuple[Tensor, Tensor]:
        domains = self.class_labels(batch.labels)
        return batch.images[domains == 0], batch.images[domains == 1]

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        a, b = self._split(batch)
        zero = batch.images.new_zeros(())
        if phase == "G":
            adv, cyc, idt = zero, zero, zero
            if len(a):
                fake_b = self.G["ab"](a)
                adv = adv + self._adv_g(self.D["b"](self.d_input(fake_b)))
                cyc = cyc + losses.l1_loss(self.G["ba"](fake_b), a)
                if self.p.identity_weight > 0:
                    idt = idt + losses.l1_loss(self.G["ba"](a), a)
            if len(b):
                fake_a = self.G["ba"](b)
                adv = adv + self._adv_g(self.D["a"](self.d_input(fake_a)))
                cyc = cyc + losses.l1_loss(self.G["ab"](fake_a), b)
                if self.p.identity_weight > 0:
                    idt = idt + losses.l1_loss(self.G["ab"](b), b)
            lam = self.p.cycle_weight
            loss = adv + lam * cyc + lam * self.p.identity_weight * idt
            return loss, {"loss/G": loss.detach(), "G_adv": adv.detach(), "cycle": cyc.detach(), "identity": idt.detach()}
        if phase == "D":
            with torch.no_grad():
                fake_b = self._from_pool("b", self.G["ab"](a)) if len(a) else self._pool_only("b", len(b))
                fake_a = self._from_pool("a", self.G["ba"](b)) if len(b) else self._pool_only("a", len(a))
            loss, real_scores, stats = zero, [], {}
            for dom, real, fake in (("a", a, fake_a), ("b", b, fake_b)):
                net = self.D[dom]
                if len(real):
                    s = net(self.d_input(real))
                    loss = loss + self._adv_d(s, True)
                    per_image = s.flatten(1).mean(1)
                    real_scores.append(per_image - 0.5 if self.p.adv_loss == "lsgan" else per_image)
                    stats[f"D_{dom}(real)"] = s.mean().detach()
                if fake is not None and len(fake):
                    s = net(self.d_input(fake))
                    loss = loss + self._adv_d(s, False)
                    stats[f"D_{dom}(fake)"] = s.mean().detach()
            if real_scores:
                self.d_real(torch.cat(real_scores))
            return loss, {"loss/D": loss.detach(), **stats, **self.augment_stats()}
        raise KeyError(phase)
