"""StyleGAN2 (Karras et al. 2020, "Analyzing and improving the image quality of StyleGAN").

Medical job: the highest-fidelity generator for radiographs and CT slices (2D) and small CT
volumes (3D), with a disentangled latent space: the truncation trick trades diversity for
typicality when building augmentation sets, and the average latent per class is a
"prototypical" image for reports.

Architecture (skip generator, residual discriminator, as in the paper's config E/F):
    * mapping network: ``mapping_layers`` equalised-lr dense layers (lr multiplier 0.01) from the
      normalised z (+ a normalised class embedding when ``num_classes > 0``) to w;
    * synthesis: learned constant 4^d input; per resolution a 2x up-sample and two modulated /
      demodulated 3x3 convolutions with per-layer noise (learned strength), and a toRGB 1x1
      modulated conv whose outputs are summed over resolutions (skip connections);
    * modulation is done by scaling the activations per sample (``x * s``, shared conv weight,
      output ``* d`` with ``d = rsqrt(s^2 @ sum_k w^2)``): the same maths as the grouped-conv form,
      measured 1.15-1.4x faster to train on CPU;
    * discriminator: fromRGB, residual blocks ``(conv, down, conv) + (down, 1x1)`` scaled by
      ``1/sqrt(2)`` (the second conv runs after the down-sampling, cheaper on CPU), minibatch
      stddev (within each class when conditional), conv, dense, dense, and a projection term
      ``<embed(y), h>`` when conditional.
Channels: ``min(channel_cap, width * size / r)`` at resolution ``r`` (64², width 16: 256, 128,
64, 32, 16 from 4² to 64²; 33 img/s training on 2 CPU cores in cpu-sizing.md).

Training: non-saturating logistic loss; lazy R1 on reals (phase ``Dreg`` every ``r1_every`` = 16
steps, weight ``r1_every * gamma / 2``); path-length regularisation (phase ``Greg`` every
``pl_every`` = 4 steps, weight ``pl_every * pl_weight``, target ``pl_mean`` a buffer); style
mixing with probability 0.9; EMA generator. Noise inputs are random while training and fixed
(buffers) in eval mode, so seeded sampling is reproducible.

Truncation: ``sample(n, truncation=psi)`` maps ``w -> w_avg + psi (w - w_avg)``. ``w_avg`` is a
buffer tracked during G updates (decay ``w_avg_beta``); for a class-conditional model it is kept
**per class** (row ``y`` of a ``(num_classes, w_dim)`` buffer), so ``psi = 0`` gives the
prototypical image of each class; unconditional models keep one row.

Lazy regularisation as in the paper: ``Dreg``/``Greg`` share the Adam optimiser of ``D``/``G``
(``Phase.optimizer``), whose learning rate and betas carry the lazy-regularisation correction
``r = every / (every + 1)`` (``lr * r``, ``beta ** r``); the regulariser terms are scaled by ``every``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsynth import losses
from medsynth.models.base import Batch, GANVariant, Phase, VariantParams, make_ema, StepInfo
from medsynth.models.layers import MinibatchStdDev, num_doublings
from medsynth.models.layers import EqualizedConv, EqualizedLinear, down2, pixel_norm
from medsynth.models.registry import register_model

_SQRT2 = math.sqrt(2.0)


def _act(x: Tensor) -> Tensor:
    """Leaky ReLU (0.2) with gain sqrt(2) (keeps activations' magnitude under equalised lr)."""
    return F.leaky_relu(x, 0.2) * _SQRT2


def _up(x: Tensor) -> Tensor:
    """x2 (bi/tri)linear up-sampling of ``(N, C, *S)``."""
    return F.interpolate(x, scale_factor=2, mode="bilinear" if x.dim() == 4 else "trilinear", align_corners=False)


def stylegan2_channels(size: int, width: int, cap: int) -> list[int]:
    """Channels at resolutions 4, 8, ..., ``size``: ``min(cap, width * size / r)``."""
    k = num_doublings(size)
    return [min(int(cap), int(width) * 2 ** (k - i)) for i in range(k + 1)]


class MappingNetwork(nn.Module):
    """z (+ class) -> w, with the running average of w (per class) for truncation.

    Shapes: z ``(N, z_dim)``, labels ``(N,)`` -> w ``(N, w_dim)``.
    """

    def __init__(self, z_dim: int, w_dim: int, num_classes: int = 0, layers: int = 4, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995):
        super().__init__()
        if layers < 1:
            raise ValueError("stylegan2: mapping_layers must be >= 1")
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes > 0 else None
        in_dim = z_dim * (2 if num_classes > 0 else 1)
        self.fcs = nn.ModuleList(EqualizedLinear(in_dim if i == 0 else w_dim, w_dim, gain=1.0, lr_mul=lr_mul)
                                 for i in range(layers))
        self.w_avg_beta = w_avg_beta
        self.register_buffer("w_avg", torch.zeros(max(1, num_classes), w_dim))

    def forward(self, z: Tensor, labels: Tensor | None, *, truncation: float | None = None,
                update_avg: bool = False) -> Tensor:
        x = pixel_norm(z)
        if self.embed is not None:
            x = torch.cat([x, pixel_norm(self.embed(labels))], dim=1)
        for fc in self.fcs:
            x = _act(fc(x))
        rows = labels if self.embed is not None else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if update_avg:
            with torch.no_grad():
                for c in rows.unique().tolist():
                    self.w_avg[c].lerp_(x[rows == c].detach().mean(0).to(self.w_avg.dtype), 1.0 - self.w_avg_beta)
        if truncation is not None and truncation != 1.0:
            x = torch.lerp(self.w_avg[rows], x, float(truncation))
        return x


class ModulatedConv(nn.Module):
    """Modulated (and optionally demodulated) convolution by per-sample activation scaling.

    Shapes: x ``(N, in_channels, *S)``, w ``(N, w_dim)`` -> ``(N, out_channels, *S')`` where
    ``S' = 2 S`` when ``up`` else ``S``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, spatial_dims: int = 2,
                 *, demodulate: bool = True, up: bool = False):
        super().__init__()
        d = spatial_dims
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *([kernel_size] * d)))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**d)
        self.affine = EqualizedLinear(w_dim, in_channels, gain=1.0, bias_init=1.0)
        self.demodulate, self.up, self.padding = demodulate, up, kernel_size // 2
        self.conv = F.conv2d if d == 2 else F.conv3d

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        n = x.shape[0]
        tail = (1,) * (x.dim() - 2)
        s = self.affine(w)  # (N, in)
        weight = self.weight * self.scale
        if self.up:
            x = _up(x)
        x = self.conv(x * s.view(n, -1, *tail), weight, padding=self.padding)
        if self.demodulate:
            wsq = weight.pow(2).flatten(2).sum(2)  # (out, in)
            dcoef = torch.rsqrt(s.pow(2) @ wsq.t() + 1e-8)  # (N, out)
            x = x * dcoef.view(n, -1, *tail)
        return x


class SynthesisLayer(nn.Module):
    """Modulated conv + noise (learned strength) + bias + leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, spatial_dims: int,
                 up: bool = False):
        super().__init__()
        self.conv = ModulatedConv(in_channels, out_channels, 3, w_dim, spatial_dims, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn((1, 1) + (resolution,) * spatial_dims))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        x = self.conv(x, w)
        if self.training:
            noise = torch.randn((x.shape[0], 1) + tuple(x.shape[2:]), device=x.device, dtype=x.dtype)
        else:
            noise = self.noise_const
        x = x + noise * self.noise_strength
        return _act(x + self.bias.view(1, -1, *([1] * (x.dim() - 2))))


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation, plus bias."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, spatial_dims: int):
        super().__init__()
        self.conv = ModulatedConv(in_channels, out_channels, 1, w_dim, spatial_dims, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.conv(x, w) + self.bias.view(1, -1, *([1] * (x.dim() - 2)))


class StyleGenerator(nn.Module):
    """Mapping + skip-architecture synthesis network.

    Shapes: z ``(N, z_dim)``, labels ``(N,)`` -> ``(N, out_channels, *[size] * d)`` (linear
    output, roughly [-1, 1] once trained).
    """

    def __init__(self, z_dim: int, w_dim: int, chans: list[int], out_channels: int = 1, num_classes: int = 0,
                 spatial_dims: int = 2, mapping_layers: int = 4, mapping_lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995):
        super().__init__()
        d = spatial_dims
        self.mapping = MappingNetwork(z_dim, w_dim, num_classes, mapping_layers, mapping_lr_mul, w_avg_beta)
        self.const = nn.Parameter(torch.randn((chans[0],) + (4,) * d))
        self.convs = nn.ModuleList([SynthesisLayer(chans[0], chans[0], w_dim, 4, d)])
        self.to_rgb = nn.ModuleList([ToRGB(chans[0], out_channels, w_dim, d)])
        for k in range(1, len(chans)):
            res = 4 * 2**k
            self.convs.append(SynthesisLayer(chans[k - 1], chans[k], w_dim, res, d, up=True))
            self.convs.append(SynthesisLayer(chans[k], chans[k], w_dim, res, d))
            self.to_rgb.append(ToRGB(chans[k], out_channels, w_dim, d))
        #: one w per conv layer plus one for the last toRGB
        self.num_ws = len(self.convs) + 1

    def mix(self, w: Tensor, w2: Tensor | None, prob: float) -> Tensor:
        """Broadcast ``w (N, w_dim)`` to ``(N, num_ws, w_dim)``; with probability ``prob`` the
        layers from a random cut-off on use ``w2`` instead (style mixing regularisation)."""
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if w2 is not None and prob > 0 and torch.rand(()) < prob:
            cut = int(torch.randint(1, self.num_ws, ()))
            ws[:, cut:] = w2.unsqueeze(1)
        return ws

    def synthesis(self, ws: Tensor) -> Tensor:
        """``ws (N, num_ws, w_dim)`` -> images."""
        n = ws.shape[0]
        x = self.const.unsqueeze(0).expand(n, *self.const.shape)
        x = self.convs[0](x, ws[:, 0])
        img = self.to_rgb[0](x, ws[:, 1])
        i = 1
        for k in range(1, len(self.to_rgb)):
            x = self.convs[i](x, ws[:, i])
            x = self.convs[i + 1](x, ws[:, i + 1])
            i += 2
            img = _up(img) + self.to_rgb[k](x, ws[:, i])
        return img

    def forward(self, z: Tensor, labels: Tensor | None = None, *, truncation: float | None = None,
                mix_prob: float = 0.0, update_avg: bool = False, return_ws: bool = False):
        w = self.mapping(z, labels, truncation=truncation, update_avg=update_avg)
        w2 = None
        if mix_prob > 0:
            w2 = self.mapping(torch.randn_like(z), labels, truncation=truncation)
        ws = self.mix(w, w2, mix_prob)
        img = self.synthesis(ws)
        return (img, ws) if return_ws else img


class ResidualDBlock(nn.Module):
    """``(conv3, down, conv3) + (down, 1x1)``, times ``1/sqrt(2)``: res ``r`` -> ``r/2``."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int):
        super().__init__()
        self.conv0 = EqualizedConv(in_channels, in_channels, 3, spatial_dims, gain=1.0)
        self.conv1 = EqualizedConv(in_channels, out_channels, 3, spatial_dims, gain=1.0)
        self.skip = EqualizedConv(in_channels, out_channels, 1, spatial_dims, bias=False, gain=1.0)

    def forward(self, x: Tensor) -> Tensor:
        y = _act(self.conv1(down2(_act(self.conv0(x)))))
        return (self.skip(down2(x)) + y) * (1.0 / _SQRT2)


class StyleDiscriminator(nn.Module):
    """Residual discriminator with minibatch stddev and projection conditioning.

    Shapes: ``(N, C, *[size] * d)`` in [-1, 1], labels ``(N,)`` -> logits ``(N,)``.
    """

    def __init__(self, chans: list[int], in_channels: int = 1, num_classes: int = 0, spatial_dims: int = 2,
                 mbstd_group: int = 4):
        super().__init__()
        d = spatial_dims
        self.from_rgb = EqualizedConv(in_channels, chans[-1], 1, d, gain=1.0)
        self.blocks = nn.Sequential(*[ResidualDBlock(chans[k], chans[k - 1], d) for k in range(len(chans) - 1, 0, -1)])
        c0 = chans[0]
        self.mbstd = MinibatchStdDev(mbstd_group)
        self.conv = EqualizedConv(c0 + 1, c0, 3, d, gain=1.0)
        self.fc = EqualizedLinear(c0 * 4**d, c0, gain=1.0)
        self.out = EqualizedLinear(c0, 1, gain=1.0)
        self.embed = nn.Embedding(num_classes, c0) if num_classes > 0 else None

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.blocks(_act(self.from_rgb(x)))
        h = _act(self.conv(self.mbstd(h, labels if self.embed is not None else None)))
        h = _act(self.fc(h.flatten(1)))
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h).sum(1) / math.sqrt(h.shape[1])
        return logit


@dataclass
class StyleGAN2Params(VariantParams):
    """``model.params`` of StyleGAN2.

    Attributes:
        mapping_layers: dense layers in the mapping network (paper: 8; 4 suits CPU runs).
        w_dim: size of w (0 = ``latent_dim``).
        channel_cap: most channels in any layer.
        mapping_lr_mul: learning-rate multiplier of the mapping network.
        style_mixing: probability of mixing two w's in a training batch.
        r1_gamma: R1 weight gamma; ``None`` = the StyleGAN2-ADA heuristic ``0.0002 * size^2 / batch``
            (``batch``: the global batch over all processes).
        r1_every: steps between lazy R1 updates (phase ``Dreg``).
        pl_weight: path-length weight (0 disables phase ``Greg``).
        pl_every: steps between path-length updates (phase ``Greg``).
        pl_decay: decay of the running path-length target.
        pl_batch_shrink: the path-length batch is ``batch / pl_batch_shrink``.
        w_avg_beta: decay of the running average of w (truncation centre).
        mbstd_group: minibatch-stddev group size.
    """

    mapping_layers: int = 4
    w_dim: int = 0
    channel_cap: int = 256
    mapping_lr_mul: float = 0.01
    style_mixing: float = 0.9
    r1_gamma: float | None = None
    r1_every: int = 16
    pl_weight: float = 2.0
    pl_every: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    w_avg_beta: float = 0.995
    mbstd_group: int = 4


@register_model("stylegan2")
class StyleGAN2(GANVariant):
    """StyleGAN2: phases D, Dreg (every 16), G, Greg (every 4); EMA generator; truncation."""

    supports_truncation = True
    extra_api = frozenset({"r1_gamma"})

    def __init__(self, cfg):
        super().__init__(cfg)
        self.p = StyleGAN2Params.from_dict(cfg.params, "stylegan2")
        if self.p.r1_every < 1 or self.p.pl_every < 1 or self.p.pl_batch_shrink < 1:
            raise ValueError("stylegan2: r1_every, pl_every and pl_batch_shrink must be >= 1")
        d = cfg.spatial_dims
        w_dim = self.p.w_dim or cfg.latent_dim
        self.chans = stylegan2_channels(cfg.size, cfg.width, self.p.channel_cap)
        self.G = StyleGenerator(cfg.latent_dim, w_dim, self.chans, cfg.channels, cfg.num_classes, d,
                                self.p.mapping_layers, self.p.mapping_lr_mul, self.p.w_avg_beta)
        self.D = StyleDiscriminator(self.chans, cfg.channels, cfg.num_classes, d, self.p.mbstd_group)
        self.G_ema = make_ema(self.G) if cfg.ema_beta > 0 else None
        self.register_buffer("pl_mean", torch.zeros((), dtype=torch.float32))

    def phases(self) -> list[Phase]:
        b = tuple(self.cfg.betas)

        def opt(lr: float, every: int) -> tuple[float, tuple[float, float]]:
            r = every / (every + 1)
            return lr * r, (b[0] ** r, b[1] ** r)

        d_lr, d_b = opt(self.cfg.lr_d, self.p.r1_every)
        out = [Phase("D", ("D",), d_lr, d_b), Phase("Dreg", ("D",), d_lr, d_b, every=self.p.r1_every, optimizer="D")]
        g_lr, g_b = opt(self.cfg.lr_g, self.p.pl_every) if self.p.pl_weight > 0 else (self.cfg.lr_g, b)
        out.append(Phase("G", ("G",), g_lr, g_b))
        if self.p.pl_weight > 0:
            out.append(Phase("Greg", ("G",), g_lr, g_b, every=self.p.pl_every, optimizer="G"))
        return out

    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True,
                 truncation: float | None = None) -> Tensor:
        """Images ``(N, C, *S)``; ``truncation`` psi pulls w toward the (class) average w."""
        net = self.generator(ema)
        return net(z, self.class_labels(labels), truncation=truncation)

    def r1_gamma(self, batch_size: int) -> float:
        """R1 weight gamma: ``params.r1_gamma``, or the StyleGAN2-ADA heuristic
        ``0.0002 * size^2 / batch_size`` for the global ``batch_size`` (:class:`StepInfo`)."""
        if self.p.r1_gamma is not None:
            return float(self.p.r1_gamma)
        return 0.0002 * self.cfg.size**2 / batch_size

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        labels, z = self.conditioning(batch)
        if phase == "D":
            with torch.no_grad():
                fake = self.G(z, labels, mix_prob=self.p.style_mixing)
            return self.d_phase_loss(batch.images, fake, labels, losses.logistic_d_loss)
        if phase == "Dreg":
            real = batch.images.detach().requires_grad_(True)
            real_l = self.D(self.d_input(real), labels)
            r1 = losses.r1_penalty(real_l, real)
            loss = r1 * (0.5 * self.r1_gamma(info.batch_size) * self.p.r1_every)
            return loss, {"r1": r1.detach()}
        if phase == "G":
            fake = self.G(z, labels, mix_prob=self.p.style_mixing, update_avg=True)
            loss = losses.logistic_g_loss(self.D(self.d_input(fake), labels))
            return loss, {"loss/G": loss.detach()}
        if phase == "Greg":
            # the path-length batch is a fraction of this process's batch (per GPU in StyleGAN2-ADA)
            m = max(1, batch.images.shape[0] // self.p.pl_batch_shrink)
            lab = None if labels is None else labels[:m]
            img, ws = self.G(z[:m], lab, return_ws=True)
            spatial = math.prod(img.shape[2:])
            noise = torch.randn_like(img) / math.sqrt(spatial)
            (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
            lengths = grad.pow(2).sum(2).mean(1).sqrt()  # (m,)
            with torch.no_grad():
                self.pl_mean.lerp_(lengths.mean().detach().to(self.pl_mean.dtype), self.p.pl_decay)
            penalty = (lengths - self.pl_mean).pow(2).mean()
            loss = penalty * (self.p.pl_weight * self.p.pl_every)
            return loss, {"pl_penalty": penalty.detach(), "pl_mean": self.pl_mean.detach().clone()}
        raise KeyError(phase)
