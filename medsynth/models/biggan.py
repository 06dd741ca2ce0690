"""BigGAN (Brock et al. 2019), scaled down for CPUs.

Medical job: class-conditional generation (nodule absent/present) with a fidelity/diversity dial.
The truncation trick trades variety for typicality at sampling time without retraining: a
low ``truncation`` gives prototypical, clean images of each class (e.g. for teaching or
checking what the model thinks a nodule looks like); 1.0 gives the full learned variety (what an
augmentation set needs).

Architecture (blocks in :mod:`medsynth.models.layers`, shared with SAGAN):
    * **shared class embedding** ``e(y)`` (``shared_dim``), one table used by every block;
    * **hierarchical latent**: z is split into ``n_blocks + 1`` chunks; the first feeds the dense
      layer making the 4^d seed, chunk ``k`` is concatenated with ``e(y)`` and drives the
      **class-conditional batch norm** (gain and bias linear in ``[e(y), z_k]``) of block ``k``;
    * :class:`ResBlockUp` doublings, self-attention at ``attn_res`` (16² in 2D / 8³ in 3D by
      default; ``attention: false`` removes it), BN-ReLU-conv3-tanh;
    * D: the residual **projection discriminator** (:class:`ResDiscriminator`);
    * spectral norm in G and D, orthogonal initialisation, hinge loss, EMA generator;
    * **orthogonal regularisation** of G's weights ``beta * sum ||W W^T * (1 - I)||_F^2``
      (``ortho_weight``, paper 1e-4) added to G's loss, applied to the raw (pre-spectral-norm)
      weights of G's convolutions and dense layers.

Truncation (``sample(n, truncation=psi)``, ``psi`` in [0, 1]; 1 or ``None`` = off):
    * ``truncation_mode: quantile`` (default): z is replaced by a draw from the normal
      **truncated to |z| <= t** with ``t = Phi^-1((1 + psi) / 2)`` (the central ``psi`` of the
      mass: psi 0.5 -> t 0.67, 0.95 -> 1.96), computed deterministically by inverse-CDF mapping
      ``z' = Phi^-1(1/2 + psi (Phi(z) - 1/2))``. This has exactly the distribution of the paper's
      "resample the values above the threshold", but stays a pure function of the seeded z, so
      seeded sampling is reproducible. psi 0 gives z = 0 (one image per class).
    * ``truncation_mode: scale``: ``z' = psi * z`` (the simpler shrinkage).
Without ``num_classes`` the model is unconditional (a single learned embedding row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from medsynth import losses
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, GANVariant, Phase, VariantParams, make_ema, StepInfo
from medsynth.models.layers import (ConditionalBatchNorm, ResBlockUp, ResDiscriminator, SelfAttention, conv_cls,
                                    maybe_sn)
from medsynth.models.registry import register_model
from medsynth.models.sagan import attention_resolution, g_channels


@dataclass
class BigGANParams(VariantParams):
    """``model.params`` of BigGAN.

    Attributes:
        shared_dim: size of the shared class embedding.
        ortho_weight: orthogonal-regularisation weight beta in G's loss (0 = off; paper 1e-4).
        attention: self-attention block in G and D.
        attn_res: its feature-map edge (0 = 16 in 2D, 8 in 3D).
        n_critic: D updates per G update (the paper: 2; 1 keeps CPU runs affordable).
        truncation_mode: ``"quantile"`` (truncated normal) or ``"scale"`` (``psi * z``).
    """

    shared_dim: int = 32
    ortho_weight: float = 1e-4
    attention: bool = True
    attn_res: int = 0
    n_critic: int = 1
    truncation_mode: str = "quantile"


def truncate_latent(z: Tensor, psi: float, mode: str = "quantile") -> Tensor:
    """Apply the truncation trick to standard-normal latents ``z``.

    Args:
        z: ``(N, latent_dim)`` standard normal draws.
        psi: in [0, 1]; 1 = unchanged, 0 = all zeros.
        mode: ``"quantile"``: inverse-CDF map onto the normal truncated to its central ``psi`` mass
            (|z'| <= ``Phi^-1((1 + psi) / 2)``); ``"scale"``: ``psi * z``.
    Returns:
        ``(N, latent_dim)`` truncated latents.
    """
    if not 0.0 <= psi <= 1.0:
        raise ValueError(f"truncation must be in [0, 1], got {psi}")
    if psi == 1.0:
        return z
    if mode == "scale":
        return z * psi
    if mode != "quantile":
        raise ValueError(f"unknown truncation mode {mode!r}")
    u = 0.5 + psi * (torch.special.ndtr(z.double()) - 0.5)
    return torch.special.ndtri(u).to(z.dtype)


def _raw_weight(m: nn.Module) -> Tensor:
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return m.weight


def _ortho_init(module: nn.Module) -> None:
    """Orthogonal initialisation (BigGAN) of convolutions, dense layers and embeddings, except the
    gain/bias layers of conditional batch norm, which start at zero (plain BN)."""
    skip = {id(m) for cbn in module.modules() if isinstance(cbn, ConditionalBatchNorm) for m in cbn.modules()}
    for m in module.modules():
        if id(m) not in skip and isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)):
            with torch.no_grad():
                nn.init.orthogonal_(_raw_weight(m))
                if parametrize.is_parametrized(m, "weight") and m.training:
                    # Re-converge spectral norm's stored singular vectors to the new weight (each
                    # training-mode access runs one power iteration), so eval mode is right at once.
                    for _ in range(15):
                        _ = m.weight


class BigGenerator(nn.Module):
    """Hierarchical-latent, shared-embedding, conditional-BN residual generator.

    Shapes: z ``(N, latent_dim)``, labels ``(N,)`` (or ``None`` when unconditional) ->
    ``(N, channels, *[size]*d)`` in [-1, 1].
    """

    def __init__(self, latent_dim: int, size: int, channels: int, width: int, num_classes: int, spatial_dims: int,
                 shared_dim: int, attn_res: int):
        super().__init__()
        d = spatial_dims
        chans = g_channels(size, width)
        n_blocks = len(chans) - 1
        self.n_chunks = n_blocks + 1
        if latent_dim < self.n_chunks:
            raise MedsynthError("model.latent_dim", f"biggan splits z into {self.n_chunks} chunks: need >= that many")
        sizes = [t.numel() for t in torch.tensor_split(torch.empty(latent_dim), self.n_chunks)]
        self.num_classes = num_classes
        self.shared = nn.Embedding(max(num_classes, 1), shared_dim)
        self.seed_shape = (chans[0],) + (4,) * d
        self.fc = maybe_sn(nn.Linear(sizes[0], chans[0] * 4**d))
        self.blocks = nn.ModuleList(ResBlockUp(chans[k - 1], chans[k], shared_dim + sizes[k], d)
                                    for k in range(1, len(chans)))
        self.attn = nn.ModuleDict()
        res = 4
        for k in range(1, len(chans)):
            res *= 2
            if res == attn_res:
                self.attn[str(k - 1)] = SelfAttention(chans[k], d)
        self.bn = ConditionalBatchNorm(chans[-1], 0, d)
        self.out = maybe_sn(conv_cls(d)(chans[-1], channels, 3, 1, 1))
        _ortho_init(self)

    def ortho_weights(self) -> list[Tensor]:
        """Raw weights of G's convolutions and dense layers (not the class embedding or norms)."""
        return [_raw_weight(m) for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_classes == 0:  # one learned embedding row
            labels = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        chunks = torch.tensor_split(z, self.n_chunks, dim=1)
        e = self.shared(labels)
        x = self.fc(chunks[0]).view(z.shape[0], *self.seed_shape)
        for k, block in enumerate(self.blocks):
            x = block(x, torch.cat([e, chunks[k + 1]], 1))
            if str(k) in self.attn:
                x = self.attn[str(k)](x)
        return torch.tanh(self.out(torch.relu(self.bn(x))))


@register_model("biggan")
class BigGAN(GANVariant):
    """BigGAN: phases D (``n_critic`` repeats) then G (hinge + orthogonal regularisation);
    EMA generator; truncation trick at sampling."""

    supports_truncation = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.p = BigGANParams.from_dict(cfg.params, "biggan")
        if self.p.truncation_mode not in ("quantile", "scale"):
            raise MedsynthError("model.params.truncation_mode",
                                f"must be quantile or scale, got {self.p.truncation_mode!r}")
        d = cfg.spatial_dims
        attn_res = attention_resolution(self.p.attn_res, cfg.size, d) if self.p.attention else 0
        self.G = BigGenerator(cfg.latent_dim, cfg.size, cfg.channels, cfg.width, self.num_classes, d,
                              self.p.shared_dim, attn_res)
        self.D = ResDiscriminator(cfg.size, cfg.channels, cfg.width, self.num_classes, d, attn_res=attn_res)
        _ortho_init(self.D)
        self.G_ema = make_ema(self.G) if cfg.ema_beta > 0 else None

    def phases(self) -> list[Phase]:
        return self.adversarial_phases(self.p.n_critic)

    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True,
                 truncation: float | None = None) -> Tensor:
        """Images ``(N, C, *S)`` in [-1, 1]; ``truncation`` psi in [0, 1] truncates z (module doc)."""
        net = self.generator(ema)
        if truncation is not None:
            z = truncate_latent(z, float(truncation), self.p.truncation_mode)
        return net(z, self.class_labels(labels))

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        if phase == "D":
            return self.adversarial_loss(phase, batch, losses.hinge_d_loss, losses.hinge_g_loss, probabilities=False)
        if phase == "G":
            labels, z = self.conditioning(batch)
            adv = losses.hinge_g_loss(self.D(self.d_input(self.G(z, labels)), labels))
            stats = {"loss/G_adv": adv.detach()}
            loss = adv
            if self.p.ortho_weight > 0:
                ortho = losses.orthogonal_regulariser(self.G.ortho_weights())
                loss = adv + self.p.ortho_weight * ortho
                stats["ortho"] = ortho.detach()
            return loss, {"loss/G": loss.detach(), **stats}
        raise KeyError(phase)
