"""Coupled GAN (Liu & Tuzel 2016): aligned image pairs learned from unpaired data.

Medical jobs: pairs that correspond pixel for pixel without ever seeing a pair, e.g. an image and
its lesion mask, the lung and mediastinal windows of the same CT slice, or the same anatomy with
and without a nodule (domain = nodule label, which the default presets use).

Two generators share their **early layers** (the coarse layout: body outline, lungs, heart) as
**one module object** (``G.shared``) and differ only in their last ``g_private`` up-sampling
layers (``G.heads[0]``, ``G.heads[1]``: the domain's rendering), or, with ``params.head:
pointwise``, only in a per-pixel MLP on a shared full-resolution map. The two discriminators share
their **late layers** (``D.shared``) after ``d_private`` domain-specific early layers
(``D.heads``). Because the shared layers are the same parameters, one z gives two images with the
same layout: a pair. ``model.parameters()`` lists them once.

Domains are two label values in one mixed, unpaired batch (0 = domain 1, 1 = domain 2;
``model.num_classes`` must be 2); ``loss`` splits it. Each D head is trained on the real images of
its domain present in the batch (none: fakes only) and on G's fakes of its domain.
Loss: non-saturating BCE with one-sided label smoothing (``real_target``), a minibatch-stddev
channel in the shared D trunk, EMA generator.

Sampling: ``sample(n)`` returns domain-1 images; ``sample(n, labels=...)`` picks the domain per
image (label = domain); ``sample_pairs(n)`` returns two aligned tensors from the same latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import copy

import torch
from torch import Tensor, nn

from medsynth import losses
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, GANVariant, VariantParams, make_ema, StepInfo
from medsynth.models.layers import MinibatchStdDev, conv_cls, init_dcgan_weights, norm_layer, num_doublings
from medsynth.models.registry import register_model


@dataclass
class CoGANParams(VariantParams):
    """``model.params`` of CoGAN.

    Attributes:
        g_private: up-sampling layers (counted from the output) owned by each generator; the rest
            are shared (clamped to the number of layers).
        d_private: down-sampling layers (counted from the input) owned by each discriminator.
        real_target: BCE target for real images (0.9 = one-sided label smoothing).
        mbstd: minibatch-standard-deviation channel in D's shared trunk.
        same_head_init: start the two generator heads from identical weights, so the pairing is the
            identity at step 0 (default off). Measured on real LIDC crops (32², 8 CPU-minutes,
            ``reports/cogan_pairs/README.md``): it did not align the pairs. With or without it the
            heads ended up reading disjoint sets of shared channels (``head_channel_use``: 0 of
            their 8 most-read channels in common), i.e. two independent scenes in one trunk.
            ``head: pointwise`` is what aligned them.
        head: ``"conv"`` (the paper: each head owns the last ``g_private`` up-sampling layers) or
            ``"pointwise"``: every up-sampling layer is shared, the trunk ends in a
            ``head_channels``-channel map at full resolution, and each head is a per-pixel MLP
            (1×1 convolutions) of that map. A head then cannot move content, only re-render it,
            so both images of a pair are drawn from the same map at every pixel (``g_private`` is
            ignored). With ``head_channels: 1`` the two images are two tone curves of one map.
            Measured on real LIDC crops (32², 8 CPU-minutes, two seeds,
            ``reports/cogan_pairs/README.md``): lung/mediastinal window pairs agree to 8.2-8.8 HU
            (random pairings 71.5-72.0; real 0 vs 64.1) and masks sit on nodules (+275 to +296 HU
            over shuffled masks; real +443), where the paper's heads paired mismatched content.
        head_channels: channels of the shared full-resolution map (``head: pointwise``).
        head_hidden: hidden width of each per-pixel head (``head: pointwise``).
    """

    g_private: int = 2
    d_private: int = 1
    real_target: float = 0.9
    mbstd: bool = True
    same_head_init: bool = False
    head: str = "conv"
    head_channels: int = 1
    head_hidden: int = 16


class _Seed(nn.Module):
    """Dense layer z -> ``(N, c0, 4, ...)`` + BN + ReLU."""

    def __init__(self, latent_dim: int, c0: int, spatial_dims: int):
        super().__init__()
        self.shape = (c0,) + (4,) * spatial_dims
        self.fc = nn.Linear(latent_dim, c0 * 4**spatial_dims)
        self.act = nn.Sequential(norm_layer("batch", c0, spatial_dims), nn.ReLU(inplace=True))

    def forward(self, z: Tensor) -> Tensor:
        return self.act(self.fc(z).view(z.shape[0], *self.shape))


class CoupledGenerator(nn.Module):
    """Two DCGAN-style generators whose early layers are one shared module.

    Shapes: z ``(N, latent_dim)`` -> per domain ``(N, channels, *[size]*d)`` in [-1, 1].
    """

    def __init__(self, latent_dim: int, size: int, channels: int, width: int, spatial_dims: int, g_private: int,
                 head: str = "conv", head_channels: int = 1, head_hidden: int = 16):
        super().__init__()
        d = spatial_dims
        n_up = num_doublings(size)
        ConvT = conv_cls(d, transposed=True)
        if head not in ("conv", "pointwise"):
            raise MedsynthError("model.params.head", f"must be 'conv' or 'pointwise', got {head!r}")
        c0 = width * min(8, 2 ** (n_up - 1))
        ups: list[nn.Module] = []  # one module per up-sampling layer
        c = c0
        for k in range(n_up - 1):
            c_next = width * min(8, 2 ** (n_up - 2 - k))
            ups.append(nn.Sequential(ConvT(c, c_next, 4, 2, 1, bias=False), norm_layer("batch", c_next, d),
                                     nn.ReLU(inplace=True)))
            c = c_next
        if head == "pointwise":
            if head_channels < 1 or head_hidden < 1:
                raise MedsynthError("model.params", "head_channels and head_hidden must be >= 1")
            Conv = conv_cls(d)
            self.shared = nn.Sequential(_Seed(latent_dim, c0, d), *ups, ConvT(c, head_channels, 4, 2, 1))
            self.heads = nn.ModuleList(
                nn.Sequential(Conv(head_channels, head_hidden, 1), nn.LeakyReLU(0.2, inplace=True),
                              Conv(head_hidden, head_hidden, 1), nn.LeakyReLU(0.2, inplace=True),
                              Conv(head_hidden, channels, 1), nn.Tanh())
                for _ in range(2))
            return
        n_priv = max(1, min(int(g_private), n_up))
        self.shared = nn.Sequential(_Seed(latent_dim, c0, d), *ups[: n_up - n_priv])

        def head() -> nn.Module:  # private layers: separate modules (the variant re-initialises them; see same_head_init)
            layers = [copy.deepcopy(m) for m in ups[n_up - n_priv:]]
            return nn.Sequential(*layers, ConvT(c, channels, 4, 2, 1), nn.Tanh())

        self.heads = nn.ModuleList([head(), head()])

    def pair(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Aligned images of both domains from the same latents: two ``(N, C, *S)`` tensors."""
        h = self.shared(z)
        return self.heads[0](h), self.heads[1](h)

    def forward(self, z: Tensor, domains: Tensor | None = None) -> Tensor:
        """Images of domain ``domains[i]`` (0 or 1; ``None`` = all domain 1 (index 0))."""
        h = self.shared(z)
        if domains is None:
            return self.heads[0](h)
        x0, x1 = self.heads[0](h), self.heads[1](h)
        sel = (domains == 1).view(-1, *([1] * (x0.dim() - 1)))
        return torch.where(sel, x1, x0)


class CoupledDiscriminator(nn.Module):
    """Two discriminators with domain-specific early layers and one shared trunk.

    Shapes: ``(N, channels, *[size]*d)``, domain ``0|1`` -> logits ``(N,)``.
    """

    def __init__(self, size: int, channels: int, width: int, spatial_dims: int, d_private: int, mbstd: bool):
        super().__init__()
        d = spatial_dims
        n_down = num_doublings(size)
        Conv = conv_cls(d)
        n_priv = max(1, min(int(d_private), n_down))

        def layer(k: int, c_in: int, c_out: int) -> nn.Module:
            if k == 0:
                return nn.Sequential(Conv(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True))
            return nn.Sequential(Conv(c_in, c_out, 4, 2, 1, bias=False), norm_layer("batch", c_out, d),
                                 nn.LeakyReLU(0.2, inplace=True))

        chans = [channels] + [width * min(8, 2**k) for k in range(n_down)]
        self.heads = nn.ModuleList(
            nn.Sequential(*[layer(k, chans[k], chans[k + 1]) for k in range(n_priv)]) for _ in range(2))
        c = chans[-1]
        trunk = [layer(k, chans[k], chans[k + 1]) for k in range(n_priv, n_down)]
        if mbstd:
            trunk.append(MinibatchStdDev(4))
        trunk += [Conv(c + int(mbstd), c, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), nn.Flatten(1),
                  nn.Linear(c * 4**d, 1)]
        self.shared = nn.Sequential(*trunk)

    def forward(self, x: Tensor, domain: int) -> Tensor:
        return self.shared(self.heads[domain](x)).squeeze(1)


@register_model("cogan")
class CoGAN(GANVariant):
    """CoGAN: phases D (both heads + shared trunk) then G (shared trunk + both heads)."""

    #: Two domains given as labels (0 = domain 1, 1 = domain 2).
    requires_labels = True
    supports_pairs = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.p = CoGANParams.from_dict(cfg.params, "cogan")
        if self.num_classes != 2:
            raise MedsynthError("model.num_classes", "cogan needs exactly 2 (label 0 = domain 1, 1 = domain 2), "
                                                     f"got {self.num_classes}")
        d, c, s, w = cfg.spatial_dims, cfg.channels, cfg.size, cfg.width
        self.G = CoupledGenerator(cfg.latent_dim, s, c, w, d, self.p.g_private, self.p.head, self.p.head_channels,
                                  self.p.head_hidden)
        self.D = CoupledDiscriminator(s, c, w, d, self.p.d_private, self.p.mbstd)
        init_dcgan_weights(self.G)
        init_dcgan_weights(self.D)
        if self.p.head == "pointwise":  # no norm layers in a per-pixel head: PyTorch's default (Kaiming) init
            for m in self.G.heads.modules():
                if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                    m.reset_parameters()
        if self.p.same_head_init:
            self.G.heads[1].load_state_dict(self.G.heads[0].state_dict())
        self.G_ema = make_ema(self.G) if cfg.ema_beta > 0 else None

    def random_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Default domain for :meth:`sample`: domain 1 (label 0) for all."""
        return torch.zeros(n, dtype=torch.long)

    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True) -> Tensor:
        """Images ``(N, C, *S)`` of domain ``labels`` (0 = domain 1, 1 = domain 2; ``None``: domain 1)."""
        return self.generator(ema)(z, labels)

    @torch.no_grad()
    def d_logits(self, images: Tensor, labels: Tensor | None) -> Tensor:
        """D's logits ``(N,)`` for images ``(N, C, *S)`` of domains ``labels`` ``(N,)``: each image
        is scored by its domain's head (membership inference calls this)."""
        labels = self.class_labels(labels)
        out = images.new_zeros(images.shape[0], dtype=torch.float32)
        for dom in (0, 1):
            sel = labels == dom
            if bool(sel.any()):
                out[sel] = self.D(images[sel], dom).reshape(int(sel.sum()), -1).mean(1).float()
        return out

    def sample_pairs(self, n: int, *, generator: torch.Generator | None = None,
                     ema: bool = True) -> tuple[Tensor, Tensor]:
        """``n`` aligned pairs from the same latents: two ``(n, C, *S)`` tensors in [-1, 1]
        (domain 1, domain 2), in eval mode."""
        net = self.generator(ema)
        was_training = self.training
        self.eval()
        try:
            x1, x2 = net.pair(self.latent(n, generator))
            return x1.clamp(-1, 1), x2.clamp(-1, 1)
        finally:
            self.train(was_training)

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        domains, z = self.conditioning(batch)
        reals = (batch.images[domains == 0], batch.images[domains == 1])
        if phase == "D":
            with torch.no_grad():
                fakes = self.G.pair(z)
            loss, real_logits, stats = batch.images.new_zeros(()), [], {}
            for k in (0, 1):
                fake_l = self.D(self.d_input(fakes[k]), k)
                # fake half only when this domain has no real image in the batch
                term = losses.bce_fake_loss(fake_l)
                if len(reals[k]):
                    rl = self.D(self.d_input(reals[k]), k)
                    real_logits.append(rl)
                    term = losses.bce_d_loss(rl, fake_l, self.p.real_target)
                    stats[f"D{k + 1}(real)"] = rl.sigmoid().mean().detach()
                loss = loss + term
                stats[f"D{k + 1}(fake)"] = fake_l.sigmoid().mean().detach()
            if real_logits:
                self.d_real(torch.cat(real_logits))
            return loss, {"loss/D": loss.detach(), **stats, **self.augment_stats()}
        if phase == "G":
            x1, x2 = self.G.pair(z)
            l1 = losses.bce_g_loss(self.D(self.d_input(x1), 0))
            l2 = losses.bce_g_loss(self.D(self.d_input(x2), 1))
            loss = l1 + l2
            return loss, {"loss/G": loss.detach(), "loss/G1": l1.detach(), "loss/G2": l2.detach()}
        raise KeyError(phase)
