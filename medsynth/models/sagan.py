"""Self-Attention GAN (Zhang et al. 2019).

Medical job: global anatomical consistency. Convolutions only relate pixels a few kernels apart,
so a convolutional G can draw a left lung that does not match the right one, or ribs that do not
continue across the mediastinum; a self-attention block lets every position of a feature map
look at every other one, and D can check such long-range agreement.

Architecture (the SNGAN/SAGAN residual design; blocks in :mod:`medsynth.models.layers`):
    * G: spectrally normalised dense layer z -> 4^d, :class:`ResBlockUp` doublings (batch norm,
      class-conditional when ``num_classes > 0``: gain/bias per class), a :class:`SelfAttention`
      block on the feature map of edge ``attn_res``, BN-ReLU-conv3-tanh;
    * D: :class:`ResDiscriminator`: residual down blocks, self-attention at ``attn_res``, sum
      pooling, projection conditioning (Miyato & Koyama 2018);
    * spectral normalisation on every convolution/dense layer of G and D;
    * hinge loss; two-timescale update rule (TTUR; the presets use lr_g 1e-4, lr_d 4e-4, betas
      (0, 0.9)); EMA generator for sampling.

Attention placement: ``attn_res`` 0 (default) means 16 in 2D and 8 in 3D, never more than half
the image edge. Measured on this CPU (cpu-sizing.md), attention at 32² made a 64² step 5-12x
slower while at 16²/8² it costs about one convolution, so larger values are allowed but logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsynth import losses
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, GANVariant, Phase, VariantParams, make_ema, StepInfo
from medsynth.models.layers import (ConditionalBatchNorm, ResBlockUp, ResDiscriminator, SelfAttention, conv_cls,
                                    maybe_sn, num_doublings)
from medsynth.models.registry import register_model

log = logging.getLogger(__name__)


@dataclass
class SAGANParams(VariantParams):
    """``model.params`` of SAGAN.

    Attributes:
        attn_res: edge of the feature maps that get self-attention (0 = 16 in 2D, 8 in 3D).
        g_sn: spectral norm in G as well as D (the paper: yes).
        n_critic: D updates per G update (the paper: 1, with TTUR instead).
    """

    attn_res: int = 0
    g_sn: bool = True
    n_critic: int = 1


def attention_resolution(requested: int, size: int, spatial_dims: int) -> int:
    """Resolution of the attention blocks: ``requested`` or the default (16 in 2D, 8 in 3D),
    clamped to at most ``size // 2`` (attention works on inner feature maps, not the output)."""
    res = int(requested) or (16 if spatial_dims == 2 else 8)
    res = min(res, size // 2)
    if res < 4 or res & (res - 1):
        raise MedsynthError("model.params.attn_res", f"must be a power of two >= 4, got {res}")
    if res > (16 if spatial_dims == 2 else 8):
        log.warning("self-attention at %d^%d positions is slow on CPU (cpu-sizing.md)", res, spatial_dims)
    return res


def g_channels(size: int, width: int) -> list[int]:
    """Generator channels at resolutions 4, 8, ..., ``size``: ``width * min(8, size / r)``."""
    k = num_doublings(size)
    return [int(width) * min(8, 2 ** (k - i)) for i in range(k + 1)]


class SAGenerator(nn.Module):
    """z (+ class) -> 4^d -> ResBlockUp* with self-attention at ``attn_res`` -> BN-ReLU-conv3-tanh.

    Shapes: z ``(N, latent_dim)``, labels ``(N,)`` -> ``(N, channels, *[size]*d)`` in [-1, 1].
    """

    def __init__(self, latent_dim: int, size: int, channels: int, width: int, num_classes: int, spatial_dims: int,
                 attn_res: int, sn: bool = True):
        super().__init__()
        d = spatial_dims
        chans = g_channels(size, width)
        self.num_classes = num_classes
        self.seed_shape = (chans[0],) + (4,) * d
        self.fc = maybe_sn(nn.Linear(latent_dim, chans[0] * 4**d), sn)
        self.blocks = nn.ModuleList()
        self.attn = nn.ModuleDict()
        res = 4
        for k in range(1, len(chans)):
            self.blocks.append(ResBlockUp(chans[k - 1], chans[k], num_classes, d, sn=sn))
            res *= 2
            if res == attn_res:
                self.attn[str(k - 1)] = SelfAttention(chans[k], d, sn=sn)
        self.bn = ConditionalBatchNorm(chans[-1], 0, d)
        self.out = maybe_sn(conv_cls(d)(chans[-1], channels, 3, 1, 1), sn)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        c = None
        if self.num_classes > 0:
            c = F.one_hot(labels, self.num_classes).to(z.dtype)  # per-class BN gain/bias
        x = self.fc(z).view(z.shape[0], *self.seed_shape)
        for k, block in enumerate(self.blocks):
            x = block(x, c)
            if str(k) in self.attn:
                x = self.attn[str(k)](x)
        return torch.tanh(self.out(torch.relu(self.bn(x))))


@register_model("sagan")
class SAGAN(GANVariant):
    """SAGAN: phases D (``n_critic`` repeats) then G; hinge loss; spectral norm; EMA generator."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.p = SAGANParams.from_dict(cfg.params, "sagan")
        d = cfg.spatial_dims
        self.attn_res = attention_resolution(self.p.attn_res, cfg.size, d)
        self.G = SAGenerator(cfg.latent_dim, cfg.size, cfg.channels, cfg.width, self.num_classes, d,
                             self.attn_res, sn=self.p.g_sn)
        self.D = ResDiscriminator(cfg.size, cfg.channels, cfg.width, self.num_classes, d, attn_res=self.attn_res)
        self.G_ema = make_ema(self.G) if cfg.ema_beta > 0 else None

    def phases(self) -> list[Phase]:
        return self.adversarial_phases(self.p.n_critic)

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        return self.adversarial_loss(phase, batch, losses.hinge_d_loss, losses.hinge_g_loss, probabilities=False)
