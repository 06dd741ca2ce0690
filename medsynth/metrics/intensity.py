"""Intensity fidelity: grey-level (X-ray) / Hounsfield-unit (CT) histograms inside a body mask.

Units: X-ray images are compared in the model's normalised grey levels ([-1, 1], after the
0.5–99.5 % percentile normalisation; raw detector units are not recoverable); CT images are
mapped back to HU through the run's display window (:func:`medsynth.data.windows.unit_to_hu`),
so CT distances are in HU (only values inside the window are representable).

Body mask (when the caller gives none): a pixel/voxel belongs to the body when its value lies
above the lowest 2.5 % of the display range (normalised value > -0.95: the unattenuated
background of a radiograph and the clipped air of a CT window sit at -1) and, for CT, also
above -950 HU (air is about -1000 HU; lung parenchyma about -900 to -700 HU stays inside).
The same rule is applied to real and synthetic images, so a generator that paints the wrong
amount of background is penalised through the mask fraction reported beside the distances.

Distances between the pooled masked intensities of two image sets:

* ``w1``: Wasserstein-1 (earth mover's) distance, ``scipy.stats.wasserstein_distance`` on the
  histogram (bin centres weighted by counts, ``bins`` bins over the display range), in grey
  levels or HU;
* ``hist_intersection``: Σ min(p, q) of the normalised histograms, in [0, 1] (1 = identical);
* ``profile_l1_<axis>``: per-axis mean-intensity profiles (mean over images and the other
  axes, whole image, no mask), mean absolute difference along the axis (same units); for 3D
  volumes axes ``z, y, x``, for 2D ``y, x``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from medsynth.data.windows import hu_to_unit, unit_to_hu, window_bounds
from medsynth.errors import MedsynthError

logger = logging.getLogger(__name__)

#: normalised value above which a pixel counts as body (lowest 2.5 % of the [-1, 1] range).
BODY_UNIT_THRESHOLD = -0.95
#: CT pixels must also be above this (air ≈ -1000 HU).
BODY_HU_THRESHOLD = -950.0
#: images per piece of :func:`intensity_histogram` (its memory does not grow with the set)
HISTOGRAM_CHUNK = 256


def _images(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to(torch.float32).cpu()
    if x.dim() not in (4, 5) or x.shape[1] != 1 or x.shape[0] == 0:
        raise MedsynthError(name, f"expected (N >= 1, 1, H, W) or (N, 1, D, H, W) images, got {tuple(x.shape)}")
    return x


def _check_modality(modality: str) -> None:
    if modality not in ("xray", "ct"):
        raise MedsynthError("modality", f"must be xray or ct, got {modality!r}")


def body_threshold(modality: str, ct_window="lung") -> float:
    """The normalised-value threshold of the default body mask (see the module docstring)."""
    _check_modality(modality)
    if modality == "xray":
        return BODY_UNIT_THRESHOLD
    return max(BODY_UNIT_THRESHOLD, float(hu_to_unit(np.float64(BODY_HU_THRESHOLD), ct_window)))


def body_mask(images, *, modality: str, ct_window="lung") -> torch.Tensor:
    """Default body mask of ``(N, 1, *S)`` images in [-1, 1]: bool tensor of the same shape."""
    return _images(images, "images") > body_threshold(modality, ct_window)


def to_native(images, *, modality: str, ct_window="lung") -> np.ndarray:
    """``(N, 1, *S)`` in [-1, 1] → float64 array in grey levels (X-ray, unchanged) or HU (CT)."""
    _check_modality(modality)
    x = _images(images, "images").double().numpy()
    return x if modality == "xray" else unit_to_hu(x, ct_window)


def value_range(modality: str, ct_window="lung") -> tuple[float, float]:
    """Histogram range: [-1, 1] for X-ray, the window's HU bounds for CT."""
    _check_modality(modality)
    return (-1.0, 1.0) if modality == "xray" else tuple(float(v) for v in window_bounds(ct_window))


def intensity_histogram(images, *, modality: str, ct_window="lung", mask=None, bins: int = 128):
    """Histogram of masked intensities.

    Args:
        images: ``(N, 1, *S)`` float32 in [-1, 1].
        modality: ``"xray"`` or ``"ct"``.
        ct_window: the CT display window the images were normalised with.
        mask: optional bool ``(N, 1, *S)``; default :func:`body_mask`.
        bins: number of equal bins over :func:`value_range`.

    Returns:
        ``(counts (bins,) float64, edges (bins + 1,), mask_fraction)``.
    """
    x = _images(images, "images")
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != x.shape:
            raise MedsynthError("mask", f"shape {tuple(mask.shape)} differs from the images' {tuple(x.shape)}")
    lo, hi = value_range(modality, ct_window)
    counts, edges = np.zeros(bins, np.int64), np.histogram_bin_edges([], bins=bins, range=(lo, hi))
    inside = 0
    for i in range(0, len(x), HISTOGRAM_CHUNK):  # counts add up: memory bounded by one chunk, not the set
        xc = x[i : i + HISTOGRAM_CHUNK]
        m = body_mask(xc, modality=modality, ct_window=ct_window) if mask is None else mask[i : i + HISTOGRAM_CHUNK]
        counts += np.histogram(to_native(xc, modality=modality, ct_window=ct_window)[m.numpy()], bins=edges)[0]
        inside += int(m.sum())
    return counts.astype(np.float64), edges, inside / max(x.numel(), 1)


def axis_profiles(images, *, modality: str, ct_window="lung") -> dict[str, np.ndarray]:
    """Mean intensity (native units) along each spatial axis: ``{"z"?, "y", "x": (len,)}``."""
    v = to_native(images, modality=modality, ct_window=ct_window)[:, 0]
    names = ("z", "y", "x") if v.ndim == 4 else ("y", "x")
    out = {}
    for i, name in enumerate(names):
        other = tuple(j for j in range(v.ndim) if j != i + 1)
        out[name] = v.mean(axis=other)
    return out


def intensity_distance(a, b, *, modality: str, ct_window="lung", mask_a=None, mask_b=None,
                       bins: int = 128) -> dict[str, float]:
    """Histogram and profile distances between two image sets (see the module docstring).

    Args:
        a, b: ``(N, 1, *S)`` and ``(M, 1, *S)`` float32 in [-1, 1], same spatial shape.
        modality: ``"xray"`` (grey levels) or ``"ct"`` (HU through ``ct_window``).
        ct_window: the display window used to normalise the CT images.
        mask_a, mask_b: optional bool masks of the same shapes; default :func:`body_mask`.
        bins: histogram bins over the display range.

    Returns:
        ``{"w1", "hist_intersection", "mask_fraction_a", "mask_fraction_b",
        "profile_l1_<axis>"...}``; ``w1`` and the profiles in grey levels (X-ray) or HU (CT).
        Identical sets give ``w1 = 0``, ``hist_intersection = 1`` and zero profile distances.
    """
    xa, xb = _images(a, "a"), _images(b, "b")
    if xa.shape[1:] != xb.shape[1:]:
        raise MedsynthError("b", f"image shape {tuple(xb.shape[1:])} differs from {tuple(xa.shape[1:])}")
    ha, edges, fa = intensity_histogram(xa, modality=modality, ct_window=ct_window, mask=mask_a, bins=bins)
    hb, _, fb = intensity_histogram(xb, modality=modality, ct_window=ct_window, mask=mask_b, bins=bins)
    if ha.sum() == 0 or hb.sum() == 0:
        raise MedsynthError("mask", "a body mask is empty: no pixel above the threshold")
    centres = (edges[:-1] + edges[1:]) / 2
    out = {
        "w1": float(wasserstein_distance(centres, centres, ha, hb)),
        "hist_intersection": float(np.minimum(ha / ha.sum(), hb / hb.sum()).sum()),
        "mask_fraction_a": fa,
        "mask_fraction_b": fb,
    }
    pa = axis_profiles(xa, modality=modality, ct_window=ct_window)
    pb = axis_profiles(xb, modality=modality, ct_window=ct_window)
    for k in pa:
        out[f"profile_l1_{k}"] = float(np.abs(pa[k] - pb[k]).mean())
    return out
