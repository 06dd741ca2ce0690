"""Progressive GAN (Karras et al. 2018): grow G and D from 4² (4³) to the target size.

Medical job: the primary higher-resolution generator for radiographs and CT slices (2D) and small
CT volumes (3D). Learning coarse anatomy (lung fields, mediastinum, body outline) at 4²-16² first
and adding detail later is what let ProGAN reach 1024² chest X-rays in the literature; on a CPU
the early low-resolution stages are also very cheap.

Recipe (as in the paper): equalised learning rate (weights N(0, 1) scaled at run time by He's
constant), pixel-wise feature normalisation in G, a minibatch-standard-deviation channel in D
(taken within each class when class-conditional, so a generator collapsed to one image per class
is visible),
WGAN-GP loss with drift penalty ``1e-3 * E[D(real)^2]`` and one critic step per G step (or the
non-saturating loss with R1, ``params.loss: ns``). Each new resolution is faded in linearly over
``fade_fraction`` of its stage (``alpha`` 0 -> 1) while the real images are faded identically
(down-sampled, then blended with their 2x-coarser version).

Schedule: ``kimg_per_stage`` thousand real images shown to D per stage, counted as
``(step + 1) * batch_size * n_critic`` in :meth:`ProGAN.on_step_end` from the loop's
:class:`~medsynth.models.base.StepInfo` (the global batch: several processes follow the schedule
of one). ``stage`` and ``alpha`` are buffers: checkpoints resume mid-fade exactly. ``generate``
returns the current resolution up-sampled (nearest) to ``cfg.size``, so samples always have the
model's shape.

Channels: the stage at resolution ``r`` has ``width * min(8, size / r)`` channels
(64², width 32: 256, 256, 128, 64, 32 from 4² to 64²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsynth import losses
from medsynth.models.base import Batch, GANVariant, Phase, StepInfo, VariantParams, make_ema
from medsynth.models.layers import (EqualizedConv, EqualizedLinear, MinibatchStdDev, down2, num_doublings,
                                    pixel_norm, resize_to, up2)
from medsynth.models.registry import register_model


# ---- networks -------------------------------------------------------------------------------


def progan_channels(size: int, width: int) -> list[int]:
    """Channels per stage (resolutions 4, 8, ..., ``size``): ``width * min(8, size / r)``."""
    k = num_doublings(size)
    return [int(width) * min(8, 2 ** (k - i)) for i in range(k + 1)]


def _fade(old: Tensor, new: Tensor, alpha: float) -> Tensor:
    """Fade-in blend ``old + alpha (new - old)`` in the wider of the two dtypes (under CPU bf16
    autocast 3D pooling/up-sampling return fp32 while convolutions return bf16)."""
    dt = torch.promote_types(old.dtype, new.dtype)
    return torch.lerp(old.to(dt), new.to(dt), alpha)


class ProGenerator(nn.Module):
    """Growing generator: z (+ class) -> 4^d -> (up, conv, conv)* -> toRGB per stage.

    Shapes: z ``(N, latent_dim)``, labels ``(N,)`` -> ``(N, out_channels, *[4 * 2**stage] * d)``
    (linear output; roughly [-1, 1] once trained).
    """

    def __init__(self, latent_dim: int, chans: list[int], out_channels: int = 1, num_classes: int = 0,
                 spatial_dims: int = 2, cond: str = "onehot"):
        super().__init__()
        if cond not in ("embed", "onehot"):
            raise ValueError(f"progan: g_cond must be 'embed' or 'onehot', got {cond!r}")
        d = self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes > 0 and cond == "embed" else None
        in_dim = latent_dim + (0 if num_classes == 0 else latent_dim if cond == "embed" else num_classes)
        c0 = chans[0]
        self.seed_shape = (c0,) + (4,) * d
        self.fc = EqualizedLinear(in_dim, c0 * 4**d, gain=math.sqrt(2) / 4)
        self.conv0 = EqualizedConv(c0, c0, 3, d)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv(chans[k - 1], chans[k], 3, d), EqualizedConv(chans[k], chans[k], 3, d)])
            for k in range(1, len(chans)))
        self.to_rgb = nn.ModuleList(EqualizedConv(c, out_channels, 1, d, gain=1.0) for c in chans)

    @staticmethod
    def _act(x: Tensor) -> Tensor:
        return pixel_norm(F.leaky_relu(x, 0.2))

    def forward(self, z: Tensor, labels: Tensor | None, stage: int, alpha: float) -> Tensor:
        z = pixel_norm(z)
        if self.num_classes > 0:
            c = pixel_norm(self.embed(labels)) if self.embed is not None else F.one_hot(labels, self.num_classes)
            z = torch.cat([z, c.to(z.dtype)], dim=1)
        x = self._act(self.fc(z).view(z.shape[0], *self.seed_shape))
        x = self._act(self.conv0(x))
        prev = x
        for k in range(1, stage + 1):
            prev = x
            a, b = self.blocks[k - 1]
            x = self._act(b(self._act(a(up2(x)))))
        img = self.to_rgb[stage](x)
        if stage > 0 and alpha < 1.0:
            img = _fade(up2(self.to_rgb[stage - 1](prev)), img, alpha)
        return img


class ProDiscriminator(nn.Module):
    """Growing critic: fromRGB per stage -> (conv, conv, down)* -> mbstd, conv, dense, dense;
    projection term ``<embed(y), h>`` when class-conditional (Miyato & Koyama 2018).

    Shapes: ``(N, C, *[4 * 2**stage] * d)``, labels ``(N,)`` -> scores ``(N,)``.
    """

    def __init__(self, chans: list[int], in_channels: int = 1, num_classes: int = 0, spatial_dims: int = 2,
                 mbstd_group: int = 4, mbstd_class_groups: bool = False):
        super().__init__()
        d = spatial_dims
        self.from_rgb = nn.ModuleList(EqualizedConv(in_channels, c, 1, d) for c in chans)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv(chans[k], chans[k], 3, d), EqualizedConv(chans[k], chans[k - 1], 3, d)])
            for k in range(1, len(chans)))
        c0 = chans[0]
        self.mbstd = MinibatchStdDev(mbstd_group, mbstd_class_groups)
        self.conv_last = EqualizedConv(c0 + 1, c0, 3, d)
        self.fc = EqualizedLinear(c0 * 4**d, c0)
        self.out = EqualizedLinear(c0, 1, gain=1.0)
        self.embed = nn.Embedding(num_classes, c0) if num_classes > 0 else None

    def _block(self, k: int, h: Tensor) -> Tensor:
        a, b = self.blocks[k - 1]
        return down2(F.leaky_relu(b(F.leaky_relu(a(h), 0.2)), 0.2))

    def forward(self, x: Tensor, labels: Tensor | None, stage: int, alpha: float) -> Tensor:
        h = F.leaky_relu(self.from_rgb[stage](x), 0.2)
        if stage > 0:
            h = self._block(stage, h)
            if alpha < 1.0:
                h = _fade(F.leaky_relu(self.from_rgb[stage - 1](down2(x)), 0.2), h, alpha)
            for k in range(stage - 1, 0, -1):
                h = self._block(k, h)
        h = F.leaky_relu(self.conv_last(self.mbstd(h, labels if self.embed is not None else None)), 0.2)
        h = F.leaky_relu(self.fc(h.flatten(1)), 0.2)
        score = self.out(h).squeeze(1)
        if self.embed is not None:
            score = score + (self.embed(labels) * h).sum(1)
        return score


# ---- the variant ------------------------------------------------------------------------------


@dataclass
class ProGANParams(VariantParams):
    """``model.params`` of ProGAN.

    Attributes:
        loss: ``"wgan_gp"`` (paper: WGAN-GP + drift) or ``"ns"`` (non-saturating + R1).
        n_critic: D updates per G update (the paper uses 1).
        gp_weight: gradient-penalty weight (``wgan_gp``).
        drift_weight: weight of ``E[D(real)^2]`` (``wgan_gp``).
        r1_gamma: R1 weight gamma (``ns``; penalty ``gamma/2 * ||grad D(real)||^2``).
        r1_every: ``ns`` only: 1 = R1 in every D update; ``k > 1`` = lazy R1 as in StyleGAN2, a
            separate phase ``Dreg`` every ``k`` steps sharing D's optimiser, weighted by ``k``
            (the double backward is the costliest part of a step on a CPU).
        kimg_per_stage: thousands of real images shown to D per resolution stage (the paper used
            600-800; 20-30 suits a CPU run of a few minutes per stage).
        fade_fraction: fraction of each stage (after the first) spent fading the new layers in.
        mbstd_group: minibatch-stddev group size.
        mbstd_class_groups: class-conditional D only: the statistic over groups of ``mbstd_group``
            samples within each class (False: one group per class, the default).
        g_cond: how G sees the class: ``"onehot"`` (the one-hot label concatenated to z; default)
            or ``"embed"`` (a learned embedding, pixel-normalised, concatenated to z). Measured on
            the phantom radiographs (64², 4 CPU-minutes): ``embed`` collapsed to one image per
            class (recall 0.00, Fréchet distance 467), ``onehot`` did not (recall 0.86, FD 65), as
            with DCGAN (``reports/recipe/``).
    """

    loss: str = "wgan_gp"
    n_critic: int = 1
    gp_weight: float = 10.0
    drift_weight: float = 1e-3
    r1_gamma: float = 10.0
    r1_every: int = 1
    kimg_per_stage: float = 30.0
    fade_fraction: float = 0.5
    mbstd_group: int = 4
    mbstd_class_groups: bool = False
    g_cond: str = "onehot"


@register_model("progan")
class ProGAN(GANVariant):
    """Progressive GAN: phase D (``n_critic`` repeats) then G; stage/alpha advanced per step."""

    #: Its D scores images at the current stage's resolution and fade (``D(x, labels, stage, alpha)``).
    supports_d_logits = False
    extra_api = frozenset({"schedule", "set_stage", "resolution", "lazy_r1", "fade_real"})

    def __init__(self, cfg):
        super().__init__(cfg)
        self.p = ProGANParams.from_dict(cfg.params, "progan")
        if self.p.loss not in ("wgan_gp", "ns"):
            raise ValueError(f"progan: params.loss must be 'wgan_gp' or 'ns', got {self.p.loss!r}")
        if self.p.r1_every < 1:
            raise ValueError("progan: r1_every must be >= 1")
        if self.p.kimg_per_stage <= 0 or not 0.0 <= self.p.fade_fraction <= 1.0:
            raise ValueError("progan: kimg_per_stage must be > 0 and fade_fraction in [0, 1]")
        d = cfg.spatial_dims
        self.chans = progan_channels(cfg.size, cfg.width)
        self.max_stage = len(self.chans) - 1
        self.G = ProGenerator(cfg.latent_dim, self.chans, cfg.channels, cfg.num_classes, d, self.p.g_cond)
        self.D = ProDiscriminator(self.chans, cfg.channels, cfg.num_classes, d, self.p.mbstd_group,
                                  self.p.mbstd_class_groups)
        self.G_ema = make_ema(self.G) if cfg.ema_beta > 0 else None
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))
        self.register_buffer("alpha", torch.ones((), dtype=torch.float64))

    # ---- schedule ---------------------------------------------------------------------------
    def schedule(self, images_shown: float) -> tuple[int, float]:
        """``(stage, alpha)`` after ``images_shown`` real images: stage ``k`` spans
        ``[k, k+1) * kimg_per_stage`` kimg; alpha rises 0 -> 1 over its first ``fade_fraction``."""
        per = self.p.kimg_per_stage * 1000.0
        k = min(self.max_stage, int(images_shown // per))
        if k == 0 or self.p.fade_fraction == 0:
            return k, 1.0
        within = images_shown - k * per
        return k, min(1.0, within / (self.p.fade_fraction * per))

    def set_stage(self, stage: int, alpha: float = 1.0) -> None:
        """Jump to ``stage`` (0 = 4², ``max_stage`` = full size) with fade ``alpha`` (benchmarks, tests)."""
        if not 0 <= stage <= self.max_stage:
            raise ValueError(f"stage must be in 0..{self.max_stage}, got {stage}")
        self.stage.fill_(int(stage))
        self.alpha.fill_(float(alpha))

    @property
    def resolution(self) -> int:
        """Current edge length ``4 * 2**stage``."""
        return 4 * 2 ** int(self.stage)

    def on_step_end(self, info: StepInfo) -> None:
        """ADA and EMA (base), then ``stage``/``alpha`` for the real images shown to D through the
        end of step ``info.step``: ``(step + 1) * batch_size * n_critic`` (global batch)."""
        super().on_step_end(info)
        stage, alpha = self.schedule(info.images_seen * self.p.n_critic)
        self.set_stage(stage, alpha)

    # ---- contract -----------------------------------------------------------------------------
    @property
    def lazy_r1(self) -> bool:
        return self.p.loss == "ns" and self.p.r1_every > 1

    def phases(self) -> list[Phase]:
        out = self.adversarial_phases(self.p.n_critic)
        if self.lazy_r1:
            d = out[0]
            out.insert(1, Phase("Dreg", ("D",), d.lr, d.betas, every=self.p.r1_every, optimizer="D"))
        return out

    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True) -> Tensor:
        """Images at the current resolution, nearest-upsampled to ``cfg.size``: ``(N, C, *S)``."""
        net = self.generator(ema)
        img = net(z, self.class_labels(labels), int(self.stage), float(self.alpha))
        return resize_to(img, self.cfg.size)

    def fade_real(self, x: Tensor) -> Tensor:
        """Real images ``(N, C, *S)`` at full size -> the current resolution, blended during a fade
        with their 2x-coarser version exactly as G's output is."""
        stage, alpha = int(self.stage), float(self.alpha)
        x = resize_to(x, 4 * 2**stage)
        if stage > 0 and alpha < 1.0:
            x = _fade(up2(down2(x)), x, alpha)
        return x

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        stage, alpha = int(self.stage), float(self.alpha)
        labels, z = self.conditioning(batch)

        def D(x: Tensor) -> Tensor:
            return self.D(x, labels, stage, alpha)

        stats = {"stage": self.stage.detach().float(), "alpha": self.alpha.detach().float()}
        if phase == "D":
            real = self.fade_real(batch.images)
            with torch.no_grad():
                fake = self.G(z, labels, stage, alpha)
            if self.p.loss == "wgan_gp":
                real_a, fake_a = self.d_input(real), self.d_input(fake)
                real_s = self.d_real(D(real_a))
                fake_s = D(fake_a)
                loss, w, gp = losses.wgan_gp_d_loss(D, real_a, fake_a, real_s, fake_s, gp_weight=self.p.gp_weight,
                                                    drift_weight=self.p.drift_weight)
                stats.update({"loss/D": loss.detach(), "wasserstein": -w.detach(), "gp": gp.detach()})
            elif self.lazy_r1:
                real_s = self.d_real(D(self.d_input(real)))
                fake_s = D(self.d_input(fake))
                loss = losses.logistic_d_loss(real_s, fake_s)
                stats["loss/D"] = loss.detach()
            else:
                real_in = real.detach().requires_grad_(True)
                real_s = self.d_real(D(self.d_input(real_in)))
                fake_s = D(self.d_input(fake))
                r1 = losses.r1_penalty(real_s, real_in)
                loss = losses.logistic_d_loss(real_s, fake_s) + 0.5 * self.p.r1_gamma * r1
                stats.update({"loss/D": loss.detach(), "r1": r1.detach()})
            return loss, {**stats, **self.augment_stats()}
        if phase == "Dreg":
            real_in = self.fade_real(batch.images).detach().requires_grad_(True)
            r1 = losses.r1_penalty(D(self.d_input(real_in)), real_in)
            return r1 * (0.5 * self.p.r1_gamma * self.p.r1_every), {"r1": r1.detach()}
        if phase == "G":
            fake_s = D(self.d_input(self.G(z, labels, stage, alpha)))
            loss = losses.wgan_g_loss(fake_s) if self.p.loss == "wgan_gp" else losses.logistic_g_loss(fake_s)
            return loss, {**stats, "loss/G": loss.detach()}
        raise KeyError(phase)
