"""Blocks used unchanged by two or more variants (DCGAN, WGAN-GP).

Written here rather than taken from ``monai.networks.nets.Generator``/``Discriminator`` because
those lack a minibatch-standard-deviation layer, class conditioning and a raw logit output
(MONAI's ``Discriminator`` ends in a sigmoid), all of which our recipes need.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def conv_cls(spatial_dims: int, transposed: bool = False) -> type[nn.Module]:
    if spatial_dims == 2:
        return nn.ConvTranspose2d if transposed else nn.Conv2d
    if spatial_dims == 3:
        return nn.ConvTranspose3d if transposed else nn.Conv3d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def norm_layer(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    """``"batch"``, ``"instance"`` (affine), ``"layer"`` (GroupNorm with one group) or ``"none"``."""
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def num_doublings(size: int) -> int:
    """Number of x2 steps from 4 to ``size`` (a power of two >= 8)."""
    n = int(round(math.log2(size))) - 2
    if size < 8 or 4 * 2**n != size:
        raise ValueError(f"image size must be a power of two >= 8, got {size}")
    return n


class MinibatchStdDev(nn.Module):
    """Append the mean over features of the per-feature standard deviation across a group
    of samples as one extra channel (Karras et al. 2018). Lets D see batch diversity, which
    counters mode collapse.

    Args:
        group_size: samples per statistics group (the batch is split into groups of this size).
    Shapes: ``(N, C, *S)`` -> ``(N, C + 1, *S)``.
    """

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        y = x.reshape(g, n // g, *x.shape[1:])
        y = y.var(dim=0, unbiased=False).add(1e-8).sqrt()  # (n/g, C, *S)
        y = y.flatten(1).mean(dim=1)  # (n/g,)
        y = y.repeat(g).reshape(n, 1, *([1] * (x.dim() - 2))).expand(n, 1, *x.shape[2:])
        return torch.cat([x, y], dim=1)


class DCGenerator(nn.Module):
    """DCGAN generator: z (+ class embedding) -> 4^d seed -> transposed-conv doublings -> tanh.

    Args:
        latent_dim: length of z.
        size: output edge length (power of two >= 8).
        channels: output channels.
        width: base width; the 4^d seed has ``8 * width`` channels, halving per doubling (>= width).
        num_classes: > 0 adds a learned class embedding concatenated to z.
        spatial_dims: 2 or 3.
    Shapes: z ``(N, latent_dim)``, labels ``(N,)`` -> ``(N, channels, *[size]*d)`` in [-1, 1].
    """

    def __init__(self, latent_dim: int, size: int, channels: int = 1, width: int = 32,
                 num_classes: int = 0, spatial_dims: int = 2, norm: str = "batch"):
        super().__init__()
        d = spatial_dims
        n_up = num_doublings(size)
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes > 0 else None
        in_dim = latent_dim * (2 if num_classes > 0 else 1)
        c0 = width * min(8, 2 ** (n_up - 1))
        self.seed_shape = (c0,) + (4,) * d
        self.fc = nn.Linear(in_dim, c0 * 4**d)
        self.fc_act = nn.Sequential(norm_layer(norm, c0, d), nn.ReLU(inplace=True))
        ConvT = conv_cls(d, transposed=True)
        blocks: list[nn.Module] = []
        c = c0
        for k in range(n_up - 1):
            c_next = width * min(8, 2 ** (n_up - 2 - k))
            blocks += [ConvT(c, c_next, 4, 2, 1, bias=False), norm_layer(norm, c_next, d), nn.ReLU(inplace=True)]
            c = c_next
        blocks += [ConvT(c, channels, 4, 2, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: labels are required")
            z = torch.cat([z, self.embed(labels)], dim=1)
        x = self.fc(z).view(z.shape[0], *self.seed_shape)
        return self.blocks(self.fc_act(x))


class DCDiscriminator(nn.Module):
    """DCGAN-style discriminator / WGAN critic with optional minibatch-stddev and projection
    conditioning (Miyato & Koyama 2018).

    Args:
        size: input edge length (power of two >= 8).
        channels: input channels.
        width: first layer width, doubling per halving up to ``8 * width``.
        num_classes: > 0 makes D class-conditional (see ``cond``).
        cond: ``"projection"`` adds ``<embed(y), mean(h)>`` to the logit (Miyato & Koyama 2018);
            ``"channel"`` appends one-hot label maps to the input (Mirza & Osindero 2014).
        norm: normalisation after each conv but the first (``"none"`` for WGAN-GP critics).
        mbstd: add a minibatch-standard-deviation channel before the last conv.
    Shapes: ``(N, channels, *[size]*d)`` in [-1, 1], labels ``(N,)`` -> logits ``(N,)``.
    """

    def __init__(self, size: int, channels: int = 1, width: int = 32, num_classes: int = 0,
                 spatial_dims: int = 2, norm: str = "batch", mbstd: bool = True, mbstd_group: int = 4,
                 cond: str = "projection"):
        super().__init__()
        if cond not in ("projection", "channel"):
            raise ValueError(f"cond must be 'projection' or 'channel', got {cond!r}")
        d = spatial_dims
        n_down = num_doublings(size)
        Conv = conv_cls(d)
        self.num_classes = num_classes
        self.cond = cond if num_classes > 0 else "none"
        in_ch = channels + (num_classes if self.cond == "channel" else 0)
        layers: list[nn.Module] = [Conv(in_ch, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for k in range(1, n_down):
            c_next = width * min(8, 2**k)
            layers += [Conv(c, c_next, 4, 2, 1, bias=norm == "none"), norm_layer(norm, c_next, d),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = c_next
        self.features = nn.Sequential(*layers)
        self.mbstd = MinibatchStdDev(mbstd_group) if mbstd else None
        self.final = nn.Sequential(Conv(c + (1 if mbstd else 0), c, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True))
        self.out = nn.Linear(c * 4**d, 1)
        self.embed = nn.Embedding(num_classes, c) if self.cond == "projection" else None
        if self.embed is not None:
            # Start the class projection at zero so early logits are not dominated by it.
            nn.init.zeros_(self.embed.weight)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.cond != "none" and labels is None:
            raise ValueError("this discriminator is class-conditional: labels are required")
        if self.cond == "channel":
            onehot = torch.nn.functional.one_hot(labels, self.num_classes).to(x.dtype)
            x = torch.cat([x, onehot.view(*onehot.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])], 1)
        h = self.features(x)
        if self.mbstd is not None:
            h = self.mbstd(h)
        h = self.final(h)
        logit = self.out(h.flatten(1)).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h.flatten(2).mean(2)).sum(1)
        return logit


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), norm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            if m.weight is not None:
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
