"""WGAN-GP (Gulrajani et al. 2017): Wasserstein critic with a gradient penalty.

Medical job: stable training on small, heterogeneous sets (e.g. CT slices across scanners)
where BCE GANs oscillate; the critic's loss tracks sample quality, which helps choose a stop.
Same networks as DCGAN (``layers.py``), but the critic has no batch norm (the penalty is
per-sample) and takes ``n_critic`` updates per generator update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medsynth import losses
from medsynth.models.base import Batch, GANVariant, Phase, VariantParams, make_ema, StepInfo
from medsynth.models.layers import DCDiscriminator, DCGenerator, init_dcgan_weights
from medsynth.models.registry import register_model


@dataclass
class WGANGPParams(VariantParams):
    """``model.params`` of WGAN-GP.

    Attributes:
        n_critic: critic updates per generator update.
        gp_weight: gradient-penalty weight lambda.
        drift_weight: weight of ``E[D(real)^2]`` keeping scores near zero.
        mbstd: minibatch-standard-deviation channel in the critic.
        d_norm: critic normalisation (``layer`` or ``none``; not ``batch``).
    """

    n_critic: int = 5
    gp_weight: float = 10.0
    drift_weight: float = 1e-3
    mbstd: bool = True
    d_norm: str = "layer"
    g_norm: str = "batch"


@register_model("wgan_gp")
class WGANGP(GANVariant):
    """WGAN-GP: phase D repeats ``n_critic`` times per step, then phase G once."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.p = WGANGPParams.from_dict(cfg.params, "wgan_gp")
        if self.p.d_norm == "batch":
            raise ValueError("WGAN-GP critic cannot use batch norm (the penalty is per sample)")
        c, s, d = cfg.channels, cfg.size, cfg.spatial_dims
        self.G = DCGenerator(cfg.latent_dim, s, c, cfg.width, cfg.num_classes, d, norm=self.p.g_norm)
        self.D = DCDiscriminator(s, c, cfg.width, cfg.num_classes, d, norm=self.p.d_norm, mbstd=self.p.mbstd)
        init_dcgan_weights(self.G)
        self.G_ema = make_ema(self.G) if cfg.ema_beta > 0 else None

    def phases(self) -> list[Phase]:
        return self.adversarial_phases(self.p.n_critic)

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        labels, z = self.conditioning(batch)
        if phase == "D":
            with torch.no_grad():
                fake = self.G(z, labels)
            real, fake = self.d_input(batch.images), self.d_input(fake)
            real_s = self.d_real(self.D(real, labels))
            fake_s = self.D(fake, labels)
            loss, w, gp = losses.wgan_gp_d_loss(lambda x: self.D(x, labels), real, fake, real_s, fake_s,
                                                gp_weight=self.p.gp_weight, drift_weight=self.p.drift_weight)
            return loss, {"loss/D": loss.detach(), "wasserstein": -w.detach(), "gp": gp.detach(), **self.augment_stats()}
        if phase == "G":
            loss = losses.wgan_g_loss(self.D(self.d_input(self.G(z, labels)), labels))
            return loss, {"loss/G": loss.detach()}
        raise KeyError(phase)
