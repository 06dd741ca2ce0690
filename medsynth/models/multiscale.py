"""Multi-scale patch GAN for high resolution in constant memory (after Uzunova, Ehrhardt & Handels,
MICCAI 2019, "Memory-efficient GAN-based domain translation of high resolution 3D medical images").

Medical job: full-resolution radiographs (1024², 2048²) and thorax CT (256³, 512³) do not fit a
whole-image generator on one GPU. This variant generates a low-resolution *whole* image, then
refines it level by level (each level doubles the edge) with one fully convolutional *patch*
generator that only ever sees fixed-size windows, so the generator's memory does not grow with
the output size; only the assembled output (kept on the CPU) does.

Design:

* **Levels.** ``coarse`` (whole image, ``Gc``: z (+ one-hot class) -> ``coarse^d``, tanh), then
  levels ``l = 1..L`` at edge ``r_l = coarse * 2**l`` up to ``cfg.size``. One patch generator
  ``Gp`` is shared by all levels; it receives the level index (one-hot channels), the absolute
  pixel position at that level (``d`` coordinate channels in [-1, 1]), the class (one-hot
  channels), one channel of Gaussian noise and the coarser level's result, nearest-upsampled x2.
* **Residual on the upsampled coarser image, mean-preserving.** ``Gp`` outputs a residual ``res``;
  the level's image is ``up2(prev) + res - up2(avgpool2(res))``: the residual has zero mean over
  every 2^d block, so ``avgpool2(level l) == level l-1`` exactly and the whole output
  average-pools back to the coarse image by construction (only the final clamp to [-1, 1] in
  ``sample`` can move it). Fine levels add detail; they cannot move anatomy.
* **No seams, by construction.** ``Gp`` is a plain stack of ``depth`` 3x3 convolutions with
  pointwise non-linearities and pixel norm (no batch/instance norm), so each output pixel depends
  on inputs within ``depth`` pixels. Each window is the tile (``patch`` pixels) plus a context
  margin ``m >= depth`` of the neighbours' inputs (the coarser level is complete before the finer
  one starts; noise is one field per level; coordinates are absolute), and only the tile's centre
  is kept. A tiled level is therefore the same function as running ``Gp`` on the whole level at
  once (``generate(..., tiled=False)``, the whole-image reference), up to float rounding.
  Image borders: the coarser image is replicate-padded by ``m``.
* **Training** uses the real images only through the coarse whole image (``Dc``/``Gc`` phases,
  real images average-pooled to ``coarse``) and random windows at a random level per sample
  (``Dp``/``Gp`` phases): the condition is the real image at level ``l-1`` (teacher forcing), the
  target the real window at level ``l``. ``Dp`` sees the tile with its upsampled condition (both
  through the augmentation hook, so they stay aligned), level, coordinates and class channels.
  Losses: non-saturating BCE with one-sided label smoothing and class-aware minibatch stddev
  (the DCGAN recipe of this project) plus ``l1_weight`` x L1 to the real tile in ``Gp`` (pix2pix).
* **Generation memory.** Per level, on the CPU: the padded coarser level, the noise field and
  the level's output (``(n, C, r_l^d)`` each, 1 channel for noise); on the model's device: at most
  ``tile_batch`` windows of ``(patch + 2m)^d`` per ``Gp`` call. The noise is drawn from a
  ``torch.Generator`` seeded from each sample's latent, so an image is a function of (z, label).

Shapes: ``sample(n)`` -> ``(n, C, *[size] * d)`` in [-1, 1].
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsynth import losses
from medsynth.models.base import Batch, GANVariant, Phase, StepInfo, VariantParams, ema_beta, ema_update, make_ema
from medsynth.models.layers import MinibatchStdDev, conv_cls, down2, norm_layer, pixel_norm, resize_to, up2_nearest
from medsynth.models.registry import register_model

log = logging.getLogger(__name__)


def _pow2(x: int) -> bool:
    return x >= 1 and (x & (x - 1)) == 0


def _onehot_maps(idx: Tensor, k: int, spatial: tuple[int, ...], dtype) -> Tensor:
    """``(N,)`` indices -> ``(N, k, *spatial)`` constant one-hot maps."""
    oh = F.one_hot(idx, k).to(dtype)
    return oh.view(*oh.shape, *([1] * len(spatial))).expand(-1, -1, *spatial)


def coord_maps(starts: Tensor, size: int, res: Tensor) -> Tensor:
    """Absolute pixel-centre coordinates of windows.

    Args:
        starts: ``(N, d)`` int64 first pixel of each window (may be negative: the margin).
        size: window edge in pixels.
        res: ``(N,)`` edge length of the level each window lies in.
    Returns:
        ``(N, d, *[size] * d)`` float32, ``2 * (i + 0.5) / res - 1`` along each axis (in [-1, 1]
        inside the image, beyond it in the margin).
    """
    n, d = starts.shape
    ar = torch.arange(size, dtype=torch.float32, device=starts.device)
    res = res.to(starts.device, torch.float32)
    pos = (starts.to(torch.float32)[:, :, None] + ar + 0.5) * 2.0 / res[:, None, None] - 1.0
    maps = []
    for a in range(d):
        shape = [n] + [1] * d
        shape[1 + a] = size
        maps.append(pos[:, a].reshape(shape).expand(n, *([size] * d)))
    return torch.stack(maps, 1)


# ---- networks -------------------------------------------------------------------------------


class CoarseGenerator(nn.Module):
    """z (+ one-hot class) -> ``4^d`` seed -> (up2, conv3, BN, ReLU)* -> conv3 -> tanh.

    Shapes: z ``(N, latent_dim)``, labels ``(N,)`` -> ``(N, channels, *[size] * d)`` in [-1, 1].
    """

    def __init__(self, latent_dim: int, size: int, channels: int, width: int, num_classes: int, spatial_dims: int):
        super().__init__()
        d = spatial_dims
        n_up = int(round(math.log2(size))) - 2
        self.num_classes = num_classes
        Conv = conv_cls(d)
        c = width * min(8, 2 ** max(n_up, 0))
        self.seed_shape = (c,) + (4,) * d
        self.fc = nn.Linear(latent_dim + max(num_classes, 0), c * 4**d)
        self.fc_act = nn.Sequential(norm_layer("batch", c, d), nn.ReLU())
        blocks: list[nn.Module] = []
        for k in range(n_up):
            c_next = width * min(8, 2 ** (n_up - 1 - k))
            blocks.append(nn.Sequential(Conv(c, c_next, 3, 1, 1, bias=False), norm_layer("batch", c_next, d),
                                        nn.ReLU()))
            c = c_next
        self.blocks = nn.ModuleList(blocks)
        self.out = Conv(c, channels, 3, 1, 1)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_classes > 0:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], 1)
        x = self.fc_act(self.fc(z).view(z.shape[0], *self.seed_shape))
        for block in self.blocks:
            x = block(up2_nearest(x))
        return torch.tanh(self.out(x))


class PatchGenerator(nn.Module):
    """Shared refinement network: ``depth`` same-padded 3x3 convolutions (LeakyReLU + pixel norm
    between them), receptive radius ``depth`` pixels; output = mean-preserving residual on the
    upsampled coarser image, cropped to the window centre.

    Args:
        channels: image channels C.
        hidden: feature channels.
        depth: number of 3x3 convolutions (>= 2).
        levels: number of refinement levels L (one-hot level channels).
        num_classes: K (one-hot class channels; 0 = unconditional).
        margin: context pixels on each side of the tile (>= depth, even).
    Shapes: ``cond (N, C, *W)`` (coarser level upsampled x2), ``noise (N, 1, *W)``,
    ``coords (N, d, *W)``, ``level (N,)`` int64 in 0..L-1, ``labels (N,)`` ->
    ``(N, C, *[W - 2 * margin] * d)`` (unclamped, about [-1, 1]); ``W = tile + 2 * margin``.
    """

    def __init__(self, channels: int, hidden: int, depth: int, levels: int, num_classes: int, spatial_dims: int,
                 margin: int):
        super().__init__()
        d = spatial_dims
        Conv = conv_cls(d)
        self.levels, self.num_classes, self.margin = levels, max(num_classes, 0), margin
        cin = channels + 1 + d + levels + self.num_classes
        self.convs = nn.ModuleList([Conv(cin, hidden, 3, 1, 1)] +
                                   [Conv(hidden, hidden, 3, 1, 1) for _ in range(depth - 2)] +
                                   [Conv(hidden, channels, 3, 1, 1)])
        with torch.no_grad():  # start close to "no detail added": the upsampled coarser image
            self.convs[-1].weight.mul_(0.1)
            self.convs[-1].bias.zero_()

    def forward(self, cond: Tensor, noise: Tensor, coords: Tensor, level: Tensor, labels: Tensor | None = None) -> Tensor:
        spatial = tuple(cond.shape[2:])
        parts = [cond, noise, coords.to(cond.dtype), _onehot_maps(level, self.levels, spatial, cond.dtype)]
        if self.num_classes > 0:
            parts.append(_onehot_maps(labels, self.num_classes, spatial, cond.dtype))
        h = torch.cat(parts, 1)
        for conv in self.convs[:-1]:
            h = pixel_norm(F.leaky_relu(conv(h), 0.2))
        res = self.convs[-1](h)
        m = self.margin
        crop = (slice(None), slice(None)) + tuple(slice(m, s - m) for s in spatial)
        res, base = res[crop], cond[crop]
        return base + res - up2_nearest(down2(res))


class Critic(nn.Module):
    """Discriminator for the coarse image and for tiles: conv3 -> (conv4 stride 2, BN, LReLU)* to
    ``4^d`` -> class-aware minibatch stddev -> conv3 -> linear logit. Extra conditioning channels
    are concatenated to the input by the caller.

    Shapes: ``(N, in_channels, *[size] * d)``, labels ``(N,)`` (for the stddev grouping) -> ``(N,)``.
    """

    def __init__(self, in_channels: int, size: int, width: int, spatial_dims: int):
        super().__init__()
        d = spatial_dims
        Conv = conv_cls(d)
        layers: list[nn.Module] = [Conv(in_channels, width, 3, 1, 1), nn.LeakyReLU(0.2)]
        c, s, k = width, size, 0
        while s > 4:
            k += 1
            c_next = width * min(8, 2**k)
            layers += [Conv(c, c_next, 4, 2, 1, bias=False), norm_layer("batch", c_next, d), nn.LeakyReLU(0.2)]
            c, s = c_next, s // 2
        self.features = nn.Sequential(*layers)
        self.mbstd = MinibatchStdDev(4)
        self.final = nn.Sequential(Conv(c + 1, c, 3, 1, 1), nn.LeakyReLU(0.2))
        self.out = nn.Linear(c * 4**d, 1)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.final(self.mbstd(self.features(x), labels))
        return self.out(h.flatten(1)).squeeze(1)


# ---- the variant ------------------------------------------------------------------------------


@dataclass
class MultiscaleParams(VariantParams):
    """``model.params`` of the multi-scale patch GAN.

    Attributes:
        coarse: edge of the whole low-resolution image (power of two >= 4, < size);
            0 = ``max(4, size // 4)``.
        patch: tile edge at the finer levels (power of two >= 4, <= 2 * coarse);
            0 = ``min(16, 2 * coarse)``.
        depth: 3x3 convolutions in the patch generator (its receptive radius in pixels).
        margin: context pixels around each tile (even, >= depth); 0 = ``depth`` rounded up to even.
        hidden: patch-generator channels; 0 = ``2 * width``.
        tile_batch: most windows per patch-generator call when generating.
        real_target: BCE target for real images (one-sided label smoothing).
        l1_weight: weight of the L1 distance of generated to real tiles in the ``Gp`` loss.
    """

    coarse: int = 0
    patch: int = 0
    depth: int = 5
    margin: int = 0
    hidden: int = 0
    tile_batch: int = 64
    real_target: float = 0.9
    l1_weight: float = 10.0


@register_model("multiscale")
class MultiscaleGAN(GANVariant):
    """Coarse whole-image GAN + one shared patch GAN refining x2 per level.

    Phases (each its own Adam): ``Dc``, ``Gc`` (coarse whole image), ``Dp``, ``Gp`` (tiles).
    """

    #: Its critics score the coarse image and conditioned tiles, not a full-size training image.
    supports_d_logits = False
    extra_api = frozenset({"level_size", "real_windows", "generate_levels"})

    def __init__(self, cfg):
        super().__init__(cfg)
        from medsynth.errors import MedsynthError

        p = self.p = MultiscaleParams.from_dict(cfg.params, "multiscale")
        size, d, c, w = int(cfg.size), self.spatial_dims, int(cfg.channels), int(cfg.width)
        where = "model.params (multiscale)"
        self.coarse = int(p.coarse) or max(4, size // 4)
        self.patch = int(p.patch) or min(16, 2 * self.coarse)
        self.margin = int(p.margin) or (int(p.depth) + int(p.depth) % 2)
        self.hidden = int(p.hidden) or 2 * w
        if not (_pow2(size) and _pow2(self.coarse) and 4 <= self.coarse < size):
            raise MedsynthError(where, f"coarse must be a power of two with 4 <= coarse < size ({size}), got {self.coarse}")
        if not (_pow2(self.patch) and 4 <= self.patch <= 2 * self.coarse):
            raise MedsynthError(where, f"patch must be a power of two in 4..2*coarse ({2 * self.coarse}), got {self.patch}")
        if p.depth < 2 or self.margin < p.depth or self.margin % 2:
            raise MedsynthError(where, f"need depth >= 2 and an even margin >= depth, got depth {p.depth}, margin {self.margin}")
        if p.tile_batch < 1:
            raise MedsynthError(where, f"tile_batch must be >= 1, got {p.tile_batch}")
        self.levels = int(round(math.log2(size // self.coarse)))
        self.window = self.patch + 2 * self.margin
        k = self.num_classes
        self.Gc = CoarseGenerator(cfg.latent_dim, self.coarse, c, w, k, d)
        self.Dc = Critic(c + max(k, 0), self.coarse, w, d)
        self.Gp = PatchGenerator(c, self.hidden, int(p.depth), self.levels, k, d, self.margin)
        self.Dp = Critic(2 * c + d + self.levels + max(k, 0), self.patch, w, d)
        self.Gc_ema = make_ema(self.Gc) if cfg.ema_beta > 0 else None
        self.Gp_ema = make_ema(self.Gp) if cfg.ema_beta > 0 else None
        log.info("multiscale: coarse %d^%d whole image, %d level(s) to %d^%d, tiles %d + 2x%d margin",
                 self.coarse, d, self.levels, size, d, self.patch, self.margin)

    def level_size(self, level: int) -> int:
        """Edge length of level ``level`` (0 = coarse whole image, ``levels`` = ``cfg.size``)."""
        return self.coarse * 2**level

    # ---- contract -----------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        b, cfg = tuple(self.cfg.betas), self.cfg
        return [Phase("Dc", ("Dc",), cfg.lr_d, b), Phase("Gc", ("Gc",), cfg.lr_g, b),
                Phase("Dp", ("Dp",), cfg.lr_d, b), Phase("Gp", ("Gp",), cfg.lr_g, b)]

    def on_step_end(self, info: StepInfo) -> None:
        """ADA (base), then the EMA of both generators (warm-up on the global ``info.step``)."""
        super().on_step_end(info)
        if self.Gc_ema is not None:
            beta = ema_beta(self.cfg.ema_beta, int(info.step))
            ema_update(self.Gc_ema, self.Gc, beta)
            ema_update(self.Gp_ema, self.Gp, beta)

    def _label_maps(self, labels: Tensor | None, spatial: tuple[int, ...], like: Tensor) -> list[Tensor]:
        return [] if self.num_classes <= 0 else [_onehot_maps(labels, self.num_classes, spatial, like.dtype)]

    def real_windows(self, images: Tensor, generator: torch.Generator | None = None):
        """Random training windows, one per image at a random level.

        Args:
            images: ``(N, C, *S)`` real images in [-1, 1] at ``cfg.size``.
        Returns:
            ``(cond, target, starts, level)``: ``cond (N, C, *W)`` the level ``l-1`` image
            (replicate-padded) upsampled x2 around the window; ``target (N, C, *P)`` the real
            tile at level ``l``; ``starts (N, d)`` window origins (tile origin minus margin);
            ``level (N,)`` in 0..L-1 (level index ``l - 1``).
        """
        n, d, m, pt = images.shape[0], self.spatial_dims, self.margin, self.patch
        level = torch.randint(0, self.levels, (n,), generator=generator)
        conds, targets, starts = [], [], []
        pyramid = {self.cfg.size: images}
        for l in range(self.levels, -1, -1):
            r = self.level_size(l)
            if r not in pyramid:
                pyramid[r] = down2(pyramid[2 * r])
        for i in range(n):
            r = self.level_size(int(level[i]) + 1)
            # tile origin: even, so the tile is aligned to the 2^d blocks of the coarser level
            t0 = torch.randint(0, (r - pt) // 2 + 1, (d,), generator=generator) * 2
            prev = pyramid[r // 2][i: i + 1]
            pad = (m // 2,) * (2 * d)
            prev = F.pad(prev, pad, mode="replicate")
            sl = (slice(None), slice(None)) + tuple(slice(int(a) // 2, int(a) // 2 + self.window // 2) for a in t0)
            conds.append(up2_nearest(prev[sl]))
            targets.append(pyramid[r][(slice(i, i + 1), slice(None)) + tuple(slice(int(a), int(a) + pt) for a in t0)])
            starts.append(t0 - m)
        return torch.cat(conds), torch.cat(targets), torch.stack(starts), level

    def _dp_input(self, tile: Tensor, cond: Tensor, starts: Tensor, level: Tensor, labels: Tensor | None) -> Tensor:
        m, pt = self.margin, self.patch
        crop = (slice(None), slice(None)) + tuple(slice(m, m + pt) for _ in range(self.spatial_dims))
        pair = self.d_input(torch.cat([tile, cond[crop]], 1))  # augmented together: stay aligned
        res = (self.coarse * 2 ** (level + 1)).to(torch.float32)
        spatial = tuple(tile.shape[2:])
        parts = [pair, coord_maps(starts + m, pt, res).to(tile), _onehot_maps(level, self.levels, spatial, tile.dtype)]
        return torch.cat(parts + self._label_maps(labels, spatial, tile), 1)

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        x = batch.images
        n = x.shape[0]
        labels = self.class_labels(batch.labels)
        rt = self.p.real_target
        if phase in ("Dc", "Gc"):
            z = self.latent(n, device=x.device)
            sp = (self.coarse,) * self.spatial_dims

            def dc(img: Tensor) -> Tensor:
                return self.Dc(torch.cat([self.d_input(img)] + self._label_maps(labels, sp, img), 1), labels)

            if phase == "Dc":
                with torch.no_grad():
                    fake = self.Gc(z, labels)
                real_logits = self.d_real(dc(resize_to(x, self.coarse)))
                fake_logits = dc(fake)
                loss = losses.bce_d_loss(real_logits, fake_logits, rt)
                return loss, {"loss/Dc": loss.detach(), "Dc(real)": real_logits.sigmoid().mean().detach(),
                              "Dc(fake)": fake_logits.sigmoid().mean().detach(), **self.augment_stats()}
            loss = losses.bce_g_loss(dc(self.Gc(z, labels)))
            return loss, {"loss/Gc": loss.detach()}
        if phase in ("Dp", "Gp"):
            cond, target, starts, level = self.real_windows(x)
            cond, target = cond.to(x.device), target.to(x.device)
            starts, level = starts.to(x.device), level.to(x.device)
            noise = torch.randn(cond.shape[:1] + (1,) + cond.shape[2:], device=x.device)
            res = (self.coarse * 2 ** (level + 1)).to(torch.float32)
            coords = coord_maps(starts, self.window, res).to(x)
            if phase == "Dp":
                with torch.no_grad():
                    fake = self.Gp(cond, noise, coords, level, labels)
                real_logits = self.Dp(self._dp_input(target, cond, starts, level, labels), labels)
                fake_logits = self.Dp(self._dp_input(fake, cond, starts, level, labels), labels)
                loss = losses.bce_d_loss(real_logits, fake_logits, rt)
                return loss, {"loss/Dp": loss.detach(), "Dp(real)": real_logits.sigmoid().mean().detach(),
                              "Dp(fake)": fake_logits.sigmoid().mean().detach()}
            fake = self.Gp(cond, noise, coords, level, labels)
            adv = losses.bce_g_loss(self.Dp(self._dp_input(fake, cond, starts, level, labels), labels))
            l1 = losses.l1_loss(fake, target)
            loss = adv + self.p.l1_weight * l1
            return loss, {"loss/Gp": adv.detach(), "l1/Gp": l1.detach()}
        raise KeyError(phase)

    # ---- generation -----------------------------------------------------------------------------
    def _noise_generators(self, z: Tensor) -> list[torch.Generator]:
        """One CPU generator per sample, seeded from the bytes of its latent (an image is a
        function of z and label, independent of batch composition)."""
        gens = []
        for row in z.detach().to("cpu", torch.float32).numpy():
            seed = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") >> 1
            gens.append(torch.Generator().manual_seed(seed))
        return gens

    @torch.no_grad()
    def generate_levels(self, z: Tensor, labels: Tensor | None, *, ema: bool = True, tiled: bool = True,
                        keep_all: bool = True) -> list[Tensor]:
        """All levels of the pyramid, coarse first.

        Args:
            z: ``(N, latent_dim)`` latents; labels: ``(N,)`` or ``None``.
            tiled: ``True`` assembles each level from fixed-size windows (at most ``tile_batch``
                per call); ``False`` runs the patch generator on the whole padded level at once
                (the whole-image reference: same network, same inputs, memory growing with size).
            keep_all: keep every level (``False``: only the last, which is all ``generate`` needs;
                the levels are then refined one image at a time into the preallocated output, so the
                working memory (padded coarser level, noise field) is one image's, not ``N``'s).
        Returns:
            ``[coarse, level 1, ..., level L]`` on the CPU, ``(N, C, *[coarse * 2**l] * d)``,
            unclamped (the coarse image is in [-1, 1]; finer levels about [-1, 1]).
        """
        gc = self.Gc_ema if (ema and self.Gc_ema is not None) else self.Gc
        gp = self.Gp_ema if (ema and self.Gp_ema is not None) else self.Gp
        dev = next(gp.parameters()).device
        n, d = z.shape[0], self.spatial_dims
        gens = self._noise_generators(z)
        labels = self.class_labels(labels)
        lab = None if labels is None else labels.to(dev)
        coarse = gc(z.to(dev), lab).float().cpu()
        if keep_all or n == 1:
            return self._refine(coarse, gens, lab, gp, dev, tiled=tiled, keep_all=keep_all)
        final = torch.empty((n, coarse.shape[1]) + (self.level_size(self.levels),) * d)
        for i in range(n):  # one image at a time: an image is a function of its own z, label and noise
            final[i] = self._refine(coarse[i: i + 1], gens[i: i + 1], None if lab is None else lab[i: i + 1], gp,
                                    dev, tiled=tiled, keep_all=False)[-1][0]
        return [final]

    def _refine(self, prev: Tensor, gens: list[torch.Generator], lab: Tensor | None, gp: nn.Module, dev,
                *, tiled: bool, keep_all: bool) -> list[Tensor]:
        """Levels 1..L of :meth:`generate_levels` from the coarse images ``prev`` ``(n, C, *[coarse]*d)``
        (CPU), one noise generator and label per image; ``[coarse, ..., level L]`` (or ``[level L]``)."""
        n, d, m, pt = prev.shape[0], self.spatial_dims, self.margin, self.patch
        out_levels = [prev]
        for l in range(1, self.levels + 1):
            r = self.level_size(l)
            padded = F.pad(prev, (m // 2,) * (2 * d), mode="replicate")  # (n, C, *(r/2 + m))
            noise = torch.stack([torch.randn((1,) + (r + 2 * m,) * d, generator=g) for g in gens])
            lev_idx = torch.full((n,), l - 1, dtype=torch.long)
            if not tiled:
                starts = torch.full((n, d), -m, dtype=torch.long)
                coords = coord_maps(starts, r + 2 * m, torch.full((n,), r))
                out = gp(up2_nearest(padded.to(dev)), noise.to(dev), coords.to(dev), lev_idx.to(dev), lab).float().cpu()
            else:
                out = torch.empty((n, prev.shape[1]) + (r,) * d)
                tiles = torch.cartesian_prod(*[torch.arange(0, r, pt)] * d).view(-1, d)
                jobs = [(i, t) for i in range(n) for t in tiles]
                for j0 in range(0, len(jobs), int(self.p.tile_batch)):
                    chunk = jobs[j0: j0 + int(self.p.tile_batch)]
                    idx = torch.tensor([i for i, _ in chunk])
                    t0 = torch.stack([t for _, t in chunk])
                    cond = torch.cat([padded[(slice(i, i + 1), slice(None)) + tuple(
                        slice(int(a) // 2, int(a) // 2 + self.window // 2) for a in t)] for i, t in chunk])
                    nz = torch.cat([noise[(slice(i, i + 1), slice(None)) + tuple(
                        slice(int(a), int(a) + self.window) for a in t)] for i, t in chunk])
                    coords = coord_maps(t0 - m, self.window, torch.full((len(chunk),), r))
                    tile_out = gp(up2_nearest(cond.to(dev)), nz.to(dev), coords.to(dev), lev_idx[idx].to(dev),
                                  None if lab is None else lab[idx.to(dev)]).float().cpu()
                    for k, (i, t) in enumerate(chunk):
                        out[(i, slice(None)) + tuple(slice(int(a), int(a) + pt) for a in t)] = tile_out[k]
            del padded, noise
            out_levels = (out_levels if keep_all else []) + [out]
            prev = out
        return out_levels

    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True, tiled: bool = True) -> Tensor:
        """Full-resolution images ``(N, C, *S)`` on the CPU (about [-1, 1]; ``sample`` clamps),
        assembled tile by tile (``tiled=False``: the whole-image reference)."""
        return self.generate_levels(z, labels, ema=ema, tiled=tiled, keep_all=False)[-1]
