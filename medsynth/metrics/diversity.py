"""Diversity / mode collapse: mean pairwise MS-SSIM within an image set.

A generator that collapses onto few images produces pairs that look alike: its mean pairwise
multi-scale SSIM is higher than that of the real images (1 for a set of identical copies).
Diverse synthetic sets score like the real set; compare with the real value and with the
spread between two halves of the real data.

MS-SSIM is MONAI's :class:`monai.metrics.MultiScaleSSIMMetric` with settings that work at
medsynth's sizes (MONAI's defaults — 11-pixel kernel, five scales — need images larger than
160 pixels): ``data_range=2`` (images in [-1, 1]), Gaussian kernel ``kernel_size=7``,
``sigma=1.5``, three scales with the first three standard weights (Wang et al. 2003:
0.0448, 0.2856, 0.3001) renormalised to sum 1. MONAI requires ``size // 4 > kernel_size - 1``
for three scales, so 7 works for 64² and 32³ (and anything ≥ 28); smaller images use the
largest odd kernel that fits (≥ 3, i.e. sides ≥ 12).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric

from medsynth.errors import MedsynthError

logger = logging.getLogger(__name__)

_W = np.array([0.0448, 0.2856, 0.3001])
MS_SSIM_WEIGHTS: tuple[float, ...] = tuple(float(w) for w in _W / _W.sum())
MS_SSIM_KERNEL = 7


def _images(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to(torch.float32).cpu()
    if x.dim() not in (4, 5) or x.shape[1] != 1:
        raise MedsynthError(name, f"expected (N, 1, H, W) or (N, 1, D, H, W) images, got {tuple(x.shape)}")
    return x


def ms_ssim_settings(spatial_shape) -> dict:
    """The MS-SSIM settings used for images of this spatial shape (see the module docstring)."""
    side = int(min(spatial_shape))
    k = MS_SSIM_KERNEL
    while k >= 3 and side // 4 <= k - 1:
        k -= 2
    if k < 3:
        raise MedsynthError("images", f"MS-SSIM with three scales needs sides >= 12 pixels, got {tuple(spatial_shape)}")
    return {"spatial_dims": len(spatial_shape), "data_range": 2.0, "kernel_type": "gaussian",
            "kernel_size": k, "kernel_sigma": 1.5, "weights": MS_SSIM_WEIGHTS}


def ms_ssim(a, b, *, batch_size: int = 128) -> np.ndarray:
    """MS-SSIM of aligned image pairs.

    Args:
        a, b: ``(N, 1, H, W)`` or ``(N, 1, D, H, W)`` float32 in [-1, 1], same shape.
        batch_size: pairs per MONAI call.

    Returns:
        ``(N,)`` float64 in [0, 1]; 1 for identical images.
    """
    xa, xb = _images(a, "a"), _images(b, "b")
    if xa.shape != xb.shape:
        raise MedsynthError("b", f"shape {tuple(xb.shape)} differs from {tuple(xa.shape)}")
    metric = MultiScaleSSIMMetric(**ms_ssim_settings(xa.shape[2:]))
    out = []
    with torch.no_grad():
        for i in range(0, len(xa), batch_size):
            out.append(metric(xa[i : i + batch_size], xb[i : i + batch_size]).reshape(-1).double())
    metric.reset()
    return torch.cat(out).numpy() if out else np.zeros(0)


def mean_pairwise_ms_ssim(images, *, n_pairs: int = 200, seed: int = 0) -> dict[str, float]:
    """Mean MS-SSIM over random pairs of distinct images of one set.

    Args:
        images: ``(N >= 2, 1, *S)`` float32 in [-1, 1].
        n_pairs: number of random pairs ``(i, j)``, ``i != j`` (drawn with replacement among
            pairs; all N(N-1)/2 pairs when fewer).
        seed: seeds the pair choice.

    Returns:
        ``{"mean", "std", "n_pairs"}``; higher = less diverse (1 = all images identical).
    """
    x = _images(images, "images")
    n = len(x)
    if n < 2:
        raise MedsynthError("images", f"need at least 2 images for pairwise MS-SSIM, got {n}")
    if n * (n - 1) // 2 <= n_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, n_pairs)
        j = (i + rng.integers(1, n, n_pairs)) % n  # never i itself
    v = ms_ssim(x[torch.as_tensor(i)], x[torch.as_tensor(j)])
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n_pairs": int(len(v))}
