"""Blocks and resampling helpers used unchanged by two or more variants.

Written here rather than taken from ``monai.networks.nets.Generator``/``Discriminator`` because
those lack a minibatch-standard-deviation layer, class conditioning and a raw logit output
(MONAI's ``Discriminator`` ends in a sigmoid), all of which our recipes need.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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

    With ``labels`` the statistic is taken within each class instead of within arbitrary groups:
    in a class-conditional GAN a mixed group shows spread from the class difference alone, which
    hid a generator that had collapsed to one image per class (measured on LIDC crops at 64²).

    Args:
        group_size: samples per statistics group (the batch is split into groups of this size).
        class_groups: with ``labels``, split each class's samples into groups of about
            ``group_size`` (the remainder joins the last group) instead of one group per class, so
            D sees several small-group statistics per class rather than one class-wide average.
    Shapes: ``(N, C, *S)`` (+ labels ``(N,)``) -> ``(N, C + 1, *S)``.
    """

    def __init__(self, group_size: int = 4, class_groups: bool = False):
        super().__init__()
        self.group_size = group_size
        self.class_groups = class_groups

    @staticmethod
    def _spread(x: Tensor) -> Tensor:
        """Mean over features of the per-feature std across the rows of ``(G, C, *S)`` -> scalar."""
        return x.var(dim=0, unbiased=False).add(1e-8).sqrt().mean()

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        n = x.shape[0]
        if labels is not None:
            y = x.new_zeros(n)
            for c in labels.unique():
                idx = (labels == c).nonzero().flatten()
                if len(idx) < 2:
                    continue
                n_groups = max(1, len(idx) // self.group_size) if self.class_groups else 1
                for part in torch.tensor_split(idx, n_groups):
                    if len(part) > 1:
                        y[part] = self._spread(x[part])
            y = y.view(n, 1, *([1] * (x.dim() - 2))).expand(n, 1, *x.shape[2:])
            return torch.cat([x, y], dim=1)
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
        num_classes: > 0 makes G class-conditional (see ``cond``).
        cond: ``"embed"`` concatenates a learned class embedding to z; ``"onehot"`` a one-hot label.
        spatial_dims: 2 or 3.
        up: ``"transposed"`` (stride-2 4x4 transposed convolutions, the paper's) or ``"nearest"``
            (nearest-neighbour doubling then a 3x3 convolution: no checkerboard pattern from uneven
            kernel overlap, Odena et al. 2016).
    Shapes: z ``(N, latent_dim)``, labels ``(N,)`` -> ``(N, channels, *[size]*d)`` in [-1, 1].
    """

    def __init__(self, latent_dim: int, size: int, channels: int = 1, width: int = 32,
                 num_classes: int = 0, spatial_dims: int = 2, norm: str = "batch", cond: str = "onehot",
                 up: str = "transposed"):
        super().__init__()
        if cond not in ("embed", "onehot"):
            raise ValueError(f"cond must be 'embed' or 'onehot', got {cond!r}")
        if up not in ("transposed", "nearest"):
            raise ValueError(f"up must be 'transposed' or 'nearest', got {up!r}")
        d = spatial_dims
        n_up = num_doublings(size)
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes > 0 and cond == "embed" else None
        in_dim = latent_dim + (0 if num_classes <= 0 else latent_dim if cond == "embed" else num_classes)
        c0 = width * min(8, 2 ** (n_up - 1))
        self.seed_shape = (c0,) + (4,) * d
        self.fc = nn.Linear(in_dim, c0 * 4**d)
        self.fc_act = nn.Sequential(norm_layer(norm, c0, d), nn.ReLU(inplace=True))
        ConvT, Conv = conv_cls(d, transposed=True), conv_cls(d)

        def double(c_in: int, c_out: int, bias: bool) -> list[nn.Module]:
            if up == "transposed":
                return [ConvT(c_in, c_out, 4, 2, 1, bias=bias)]
            return [nn.Upsample(scale_factor=2, mode="nearest"), Conv(c_in, c_out, 3, 1, 1, bias=bias)]

        blocks: list[nn.Module] = []
        c = c0
        for k in range(n_up - 1):
            c_next = width * min(8, 2 ** (n_up - 2 - k))
            blocks += [*double(c, c_next, False), norm_layer(norm, c_next, d), nn.ReLU(inplace=True)]
            c = c_next
        blocks += [*double(c, channels, True), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_classes > 0:
            c = self.embed(labels) if self.embed is not None else nn.functional.one_hot(labels, self.num_classes).to(z.dtype)
            z = torch.cat([z, c], dim=1)
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
                 cond: str = "channel"):
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
        if self.cond == "channel":
            onehot = torch.nn.functional.one_hot(labels, self.num_classes).to(x.dtype)
            x = torch.cat([x, onehot.view(*onehot.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])], 1)
        h = self.features(x)
        if self.mbstd is not None:
            h = self.mbstd(h, labels if self.cond != "none" else None)
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


# ---- blocks shared by SAGAN and BigGAN (spectral norm, self-attention, conditional BN, residual blocks) ----


def maybe_sn(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Wrap ``module`` in spectral normalisation (``torch.nn.utils.parametrizations.spectral_norm``,
    Miyato et al. 2018) when ``enabled``: its weight, reshaped to ``(out, -1)``, is divided by its
    largest singular value (one power iteration per training forward; stored ``u``/``v`` buffers
    are used in eval mode, so sampling is deterministic)."""
    if not enabled:
        return module
    return torch.nn.utils.parametrizations.spectral_norm(module)


def up2_nearest(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 up-sampling of ``(N, C, *S)`` (2D or 3D) by broadcasting, equal to
    :func:`up2` and 2-4x faster on one CPU thread; unlike :func:`up2` it keeps the input's dtype
    under CPU autocast (SAGAN/BigGAN blocks, the multi-scale GAN)."""
    n, c, *s = x.shape
    if len(s) == 2:
        h, w = s
        return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)
    d, h, w = s
    return x[:, :, :, None, :, None, :, None].expand(n, c, d, 2, h, 2, w, 2).reshape(n, c, 2 * d, 2 * h, 2 * w)


class SelfAttention(nn.Module):
    """Self-attention over all positions of a feature map (Zhang et al. 2019, SAGAN; as in BigGAN,
    keys and values are max-pooled 2x, which cuts the cost 4x in 2D and 8x in 3D).

    ``out = x + gamma * W_o(softmax(Q^T K) V)`` with 1x1 convolutions ``Q, K: C -> C/8`` and
    ``V: C -> C/2``; ``gamma`` starts at 0 so the block begins as the identity.
    Cost grows with the square of the number of positions: use it at 16² / 8² (or 8³) only
    (at 32² it made a DCGAN-64 step 5-12x slower on CPU, cpu-sizing.md).

    Shapes: ``(N, C, *S)`` -> ``(N, C, *S)``.
    """

    def __init__(self, channels: int, spatial_dims: int = 2, sn: bool = True):
        super().__init__()
        Conv = conv_cls(spatial_dims)
        self.ck, self.cv = max(1, channels // 8), max(1, channels // 2)
        self.q = maybe_sn(Conv(channels, self.ck, 1, bias=False), sn)
        self.k = maybe_sn(Conv(channels, self.ck, 1, bias=False), sn)
        self.v = maybe_sn(Conv(channels, self.cv, 1, bias=False), sn)
        self.o = maybe_sn(Conv(self.cv, channels, 1, bias=False), sn)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        n, shape = x.shape[0], x.shape[2:]
        q = self.q(x).flatten(2).transpose(1, 2)  # (N, L, ck)
        k, v = self.k(x), self.v(x)
        if min(shape) >= 2:
            mp = torch.nn.functional.max_pool2d if x.dim() == 4 else torch.nn.functional.max_pool3d
            k, v = mp(k, 2), mp(v, 2)
        k = k.flatten(2).transpose(1, 2)  # (N, L', ck)
        v = v.flatten(2).transpose(1, 2)  # (N, L', cv)
        # SAGAN's attention has no 1/sqrt(d) temperature: scale=1.
        h = torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1),
                                                             scale=1.0).squeeze(1)
        h = h.transpose(1, 2).reshape(n, self.cv, *shape)
        return x + self.gamma * self.o(h)


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain and bias are linear functions of a conditioning vector ``c``
    (class embedding, and in BigGAN also a chunk of z): ``BN(x) * (1 + W_g c) + W_b c``.
    With ``cond_dim == 0`` it is plain affine batch norm.

    Shapes: ``x (N, C, *S)``, ``c (N, cond_dim)`` -> ``(N, C, *S)``.
    """

    def __init__(self, channels: int, cond_dim: int, spatial_dims: int = 2, sn: bool = False):
        super().__init__()
        BN = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        self.cond_dim = cond_dim
        self.bn = BN(channels, affine=cond_dim == 0)
        if cond_dim > 0:
            self.gain = maybe_sn(nn.Linear(cond_dim, channels, bias=False), sn)
            self.bias = maybe_sn(nn.Linear(cond_dim, channels, bias=False), sn)
            if not sn:  # start as plain BN (gain 1, bias 0)
                nn.init.zeros_(self.gain.weight)
                nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.bn(x)
        if self.cond_dim == 0:
            return h
        if c is None:
            raise ValueError("conditional batch norm needs its conditioning vector")
        view = (x.shape[0], -1) + (1,) * (x.dim() - 2)
        return h * (1 + self.gain(c).view(view)) + self.bias(c).view(view)


class ResBlockUp(nn.Module):
    """Generator residual block (SNGAN/SAGAN/BigGAN): ``CBN-ReLU-up2-conv3-CBN-ReLU-conv3`` plus
    an ``up2-conv1`` shortcut; nearest-neighbour up-sampling.

    Shapes: ``x (N, in, *S)``, ``c (N, cond_dim)`` -> ``(N, out, *2S)``.
    """

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int = 0, spatial_dims: int = 2, sn: bool = True):
        super().__init__()
        Conv = conv_cls(spatial_dims)
        self.bn1 = ConditionalBatchNorm(in_ch, cond_dim, spatial_dims)
        self.conv1 = maybe_sn(Conv(in_ch, out_ch, 3, 1, 1), sn)
        self.bn2 = ConditionalBatchNorm(out_ch, cond_dim, spatial_dims)
        self.conv2 = maybe_sn(Conv(out_ch, out_ch, 3, 1, 1), sn)
        self.skip = maybe_sn(Conv(in_ch, out_ch, 1), sn)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        h = up2_nearest(torch.relu(self.bn1(x, c)))
        h = self.conv2(torch.relu(self.bn2(self.conv1(h), c)))
        return h + self.skip(up2_nearest(x))


class ResBlockDown(nn.Module):
    """Discriminator residual block: ``[ReLU]-conv3-ReLU-conv3-[avgpool2]`` plus a
    ``conv1-[avgpool2]`` shortcut (``preact=False`` for the first block, which sees raw images).

    Shapes: ``(N, in, *S)`` -> ``(N, out, *S/2)`` (``*S`` when ``down=False``).
    """

    def __init__(self, in_ch: int, out_ch: int, spatial_dims: int = 2, down: bool = True, preact: bool = True,
                 sn: bool = True):
        super().__init__()
        Conv = conv_cls(spatial_dims)
        self.down, self.preact = down, preact
        self.conv1 = maybe_sn(Conv(in_ch, out_ch, 3, 1, 1), sn)
        self.conv2 = maybe_sn(Conv(out_ch, out_ch, 3, 1, 1), sn)
        self.skip = maybe_sn(Conv(in_ch, out_ch, 1), sn) if (in_ch != out_ch or down) else None

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(x) if self.preact else x
        h = self.conv2(torch.relu(self.conv1(h)))
        s = x
        if self.skip is not None:
            if self.preact:
                s = self.skip(s)
                s = down2(s) if self.down else s
            else:  # first block: pool then project (cheaper, SNGAN's "optimised" block)
                s = self.skip(down2(s) if self.down else s)
        return (down2(h) if self.down else h) + s


class ResDiscriminator(nn.Module):
    """Residual projection discriminator (Miyato & Koyama 2018) of SAGAN and BigGAN.

    ``ResBlockDown`` from ``size`` to 4^d (channels ``width * min(8, 2**k)``), optional
    :class:`SelfAttention` where the feature map has edge ``attn_res``, one block without
    down-sampling, ReLU, sum over positions, linear logit plus ``<embed(y), h>``.

    Shapes: ``(N, channels, *[size]*d)`` in [-1, 1], labels ``(N,)`` -> logits ``(N,)``.
    """

    def __init__(self, size: int, channels: int = 1, width: int = 32, num_classes: int = 0, spatial_dims: int = 2,
                 attn_res: int = 0, sn: bool = True):
        super().__init__()
        n_down = num_doublings(size)
        blocks: list[nn.Module] = []
        c, res = channels, size
        for k in range(n_down):
            c_next = width * min(8, 2**k)
            blocks.append(ResBlockDown(c, c_next, spatial_dims, down=True, preact=k > 0, sn=sn))
            c, res = c_next, res // 2
            if attn_res and res == attn_res:
                blocks.append(SelfAttention(c, spatial_dims, sn=sn))
        blocks.append(ResBlockDown(c, c, spatial_dims, down=False, preact=True, sn=sn))
        self.blocks = nn.Sequential(*blocks)
        self.out = maybe_sn(nn.Linear(c, 1), sn)
        self.embed = maybe_sn(nn.Embedding(num_classes, c), sn) if num_classes > 0 else None

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = torch.relu(self.blocks(x)).flatten(2).sum(2)  # (N, C)
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h).sum(1)
        return logit


# ---- equalised learning rate blocks (ProGAN, StyleGAN2) -----------------------------------


class EqualizedLinear(nn.Module):
    """Linear layer with equalised learning rate: weights ``N(0, 1/lr_mul^2)``, multiplied at run
    time by ``gain / sqrt(fan_in) * lr_mul`` so every layer learns at the same speed with Adam.

    Shapes: ``(N, in_features)`` -> ``(N, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, gain: float = math.sqrt(2),
                 lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.scale = gain / math.sqrt(in_features) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        b = None if self.bias is None else self.bias * self.lr_mul
        return F.linear(x, self.weight * self.scale, b)


class EqualizedConv(nn.Module):
    """Same-padded 2D/3D convolution with equalised learning rate (stride 1).

    Shapes: ``(N, in_channels, *S)`` -> ``(N, out_channels, *S)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, spatial_dims: int = 2, *,
                 bias: bool = True, gain: float = math.sqrt(2)):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *([kernel_size] * spatial_dims)))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size**spatial_dims)
        self.padding = kernel_size // 2
        self.conv = F.conv2d if spatial_dims == 2 else F.conv3d

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x, self.weight * self.scale, self.bias, padding=self.padding)


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Normalise each pixel's feature vector to unit mean square (over dim 1)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


# ---- resampling ----------------------------------------------------------------------------------


def down2(x: Tensor) -> Tensor:
    """x2 average-pool down-sampling of ``(N, C, *S)`` (2D or 3D)."""
    return F.avg_pool2d(x, 2) if x.dim() == 4 else F.avg_pool3d(x, 2)


def up2(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 up-sampling of ``(N, C, *S)`` by ``F.interpolate`` (ProGAN: under CPU
    bf16 autocast the 3D op runs in float32, which its fade-in relies on; :func:`up2_nearest` is the
    faster dtype-preserving equivalent)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def resize_to(x: Tensor, size: int) -> Tensor:
    """Box-downsample (average pooling) or nearest-upsample ``(N, C, *S)`` (cubic, power-of-two
    edges) to edge ``size``; unchanged when it already has it."""
    s = x.shape[-1]
    if s > size:
        f = s // size
        return F.avg_pool2d(x, f) if x.dim() == 4 else F.avg_pool3d(x, f)
    if s < size:
        return F.interpolate(x, scale_factor=size // s, mode="nearest")
    return x
