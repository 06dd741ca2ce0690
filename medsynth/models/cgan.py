"""Conditional GAN (Mirza & Osindero 2014), convolutional.

Medical job: tumour-present vs tumour-absent generation on small images (label 1 = nodule
present), e.g. to rebalance a detection training set towards the rare positive class.

As in the paper the class enters both networks as a **one-hot vector**: concatenated to z in G
(``z ++ onehot(y)`` feeds the first dense layer of a DCGAN generator) and, in D, as one-hot
label *maps* appended to the image as extra channels (``params.d_cond: channel``, the paper's
input concatenation; ``projection`` is available for comparison). The rest is the DCGAN recipe
that resisted collapse on chest phantoms: BCE with one-sided label smoothing (real target 0.9)
and a minibatch-standard-deviation channel in D; EMA generator for sampling.

The model is conditional by definition: ``model.num_classes`` must be > 0 (2 for absent/present).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsynth import losses
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, GANVariant, Phase, VariantParams, make_ema
from medsynth.models.layers import DCDiscriminator, DCGenerator, init_dcgan_weights
from medsynth.models.registry import register_model


@dataclass
class CGANParams(VariantParams):
    """``model.params`` of CGAN.

    Attributes:
        real_target: BCE target for real images (0.9 = one-sided label smoothing; 1.0 = off).
        mbstd: minibatch-standard-deviation channel in D.
        d_cond: ``"channel"`` (one-hot label maps concatenated to D's input, the paper) or
            ``"projection"``.
        d_norm, g_norm: normalisation in D / G (``batch``, ``instance``, ``layer``, ``none``).
    """

    real_target: float = 0.9
    mbstd: bool = True
    d_cond: str = "channel"
    d_norm: str = "batch"
    g_norm: str = "batch"


class OneHotGenerator(nn.Module):
    """DCGAN generator fed ``z ++ onehot(y)`` (the label concatenated to the noise).

    Shapes: z ``(N, latent_dim)``, labels ``(N,)`` int64 -> ``(N, C, *S)`` in [-1, 1].
    """

    def __init__(self, latent_dim: int, size: int, channels: int, width: int, num_classes: int, spatial_dims: int,
                 norm: str = "batch"):
        super().__init__()
        self.num_classes = num_classes
        self.net = DCGenerator(latent_dim + num_classes, size, channels, width, 0, spatial_dims, norm=norm)

    def forward(self, z: Tensor, labels: Tensor | None) -> Tensor:
        if labels is None:
            raise ValueError("cgan: labels are required")
        return self.net(torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], 1))


@register_model("cgan")
class CGAN(GANVariant):
    """Conditional DCGAN: phases D then G; the class (one-hot) conditions both networks."""

    #: The contract test skips its unconditional case for variants that need labels.
    requires_labels = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.p = CGANParams.from_dict(cfg.params, "cgan")
        if self.num_classes <= 0:
            raise MedsynthError("model.num_classes", "cgan is a conditional GAN: set model.num_classes > 0 "
                                "(2 for nodule absent/present); use dcgan for unconditional training")
        c, s, d = cfg.channels, cfg.size, cfg.spatial_dims
        self.G = OneHotGenerator(cfg.latent_dim, s, c, cfg.width, self.num_classes, d, norm=self.p.g_norm)
        self.D = DCDiscriminator(s, c, cfg.width, self.num_classes, d, norm=self.p.d_norm, mbstd=self.p.mbstd,
                                 cond=self.p.d_cond)
        init_dcgan_weights(self.G)
        init_dcgan_weights(self.D)
        self.G_ema = make_ema(self.G) if cfg.ema_beta > 0 else None

    def phases(self) -> list[Phase]:
        b = tuple(self.cfg.betas)
        return [Phase("D", ("D",), self.cfg.lr_d, b), Phase("G", ("G",), self.cfg.lr_g, b)]

    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True) -> Tensor:
        net = self.G_ema if (ema and self.G_ema is not None) else self.G
        return net(z, labels)

    def loss(self, phase: str, batch: Batch, step: int):
        if batch.labels is None:
            raise ValueError("cgan: every training batch needs labels")
        n, labels = batch.images.shape[0], batch.labels
        z = self.latent(n, device=batch.images.device)
        if phase == "D":
            fake = self.G(z, labels).detach()
            real_logits = self.d_real(self.D(self.d_input(batch.images), labels))
            fake_logits = self.D(self.d_input(fake), labels)
            loss = losses.bce_d_loss(real_logits, fake_logits, self.p.real_target)
            return loss, {"loss/D": loss.item(), "D(real)": real_logits.sigmoid().mean().item(),
                          "D(fake)": fake_logits.sigmoid().mean().item(), **self.augment_stats()}
        if phase == "G":
            loss = losses.bce_g_loss(self.D(self.d_input(self.G(z, labels)), labels))
            return loss, {"loss/G": loss.item()}
        raise KeyError(phase)
