"""MONAI dictionary pipelines that turn native-unit images into model inputs in [-1, 1].

Inputs are dictionaries ``{"image": array (1, H, W) or (1, D, H, W)}`` (channel-first, from
:mod:`medsynth.data.readers`; HU for CT, detector values / grey levels for X-ray), optionally
with ``"mask"`` of the same shape. Outputs are float32 ``torch.Tensor`` of shape
``(1, size, size)`` (or ``(1, size, size, size)``) in ``[-1, 1]``; masks are resized with
nearest-neighbour interpolation and stay binary.

Geometry (both pipelines): the image is resized so its *longest* side equals ``size``
(aspect ratio kept, bilinear/trilinear with anti-aliasing when shrinking), then padded
symmetrically to a square/cube with ``-1`` (the darkest value: air for CT, background for
X-ray). Nothing is cropped away, so lung apices and costophrenic angles stay in the frame.
No resampling to isotropic spacing is done: CT volumes are assumed roughly isotropic
(true for the LIDC crops).

We do not use MONAI's ``LoadImage``/``PydicomReader`` (transposed arrays, per-file warnings):
the readers in :mod:`medsynth.data.readers` load images, these pipelines only transform them.
"""

from __future__ import annotations

import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    Lambdad,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
)

from medsynth.data.windows import window_bounds

#: X-ray robust normalisation percentiles
XRAY_PERCENTILES = (0.5, 99.5)


def _clip_unit(x):
    """Clamp to [-1, 1] (interpolation may overshoot by rounding)."""
    return x.clamp(-1.0, 1.0)


def _binarise(x):
    return (x > 0.5).to(x.dtype)


def _resize(size: int, spatial_dims: int, keys: tuple[str, ...]) -> Resized:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    linear = "bilinear" if spatial_dims == 2 else "trilinear"
    modes = tuple(linear if k == "image" else "nearest" for k in keys)
    aa = tuple(k == "image" for k in keys)
    return Resized(keys=keys, spatial_size=size, size_mode="longest", mode=modes, anti_aliasing=aa)


def _pad(size: int, spatial_dims: int, keys: tuple[str, ...]) -> list:
    has_mask = "mask" in keys
    steps = [SpatialPadd(keys="image", spatial_size=(size,) * spatial_dims, method="symmetric", value=-1.0)]
    if has_mask:
        steps.append(SpatialPadd(keys="mask", spatial_size=(size,) * spatial_dims, method="symmetric", value=0.0))
        steps.append(Lambdad(keys="mask", func=_binarise))
    steps.append(Lambdad(keys="image", func=_clip_unit))
    steps.append(EnsureTyped(keys=keys, data_type="tensor", dtype=torch.float32, track_meta=False))
    return steps


def _keys(with_mask: bool) -> tuple[str, ...]:
    return ("image", "mask") if with_mask else ("image",)


def ct_pipeline(
    size: int,
    *,
    window: str | tuple[float, float] = "lung",
    spatial_dims: int = 2,
    with_mask: bool = False,
) -> Compose:
    """CT: HU -> window -> [-1, 1] -> resize (longest side) + pad to ``size``.

    Args:
        size: output side length in pixels/voxels.
        window: ``"lung"`` (-1350..150 HU), ``"mediastinal"`` (-160..240 HU) or
            ``(centre, width)`` in HU; values outside are clipped.
        spatial_dims: 2 for ``(1, H, W)`` slices, 3 for ``(1, D, H, W)`` volumes.
        with_mask: also transform a ``"mask"`` key (nearest neighbour, binary).

    Returns:
        A ``monai.transforms.Compose`` mapping ``{"image": (1, *S) HU}`` to
        ``{"image": Tensor (1, size, ...) float32 in [-1, 1]}``.
    """
    lo, hi = window_bounds(window)
    keys = _keys(with_mask)
    return Compose(
        [
            EnsureTyped(keys=keys, data_type="tensor", dtype=None, track_meta=False),
            ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True),
            _resize(size, spatial_dims, keys),
            *_pad(size, spatial_dims, keys),
        ]
    )


def xray_pipeline(size: int, *, spatial_dims: int = 2, with_mask: bool = False) -> Compose:
    """X-ray: resize (longest side) -> robust percentile normalisation to [-1, 1] -> pad.

    The 0.5th and 99.5th intensity percentiles of each (resized) image map to -1 and 1 (values
    beyond are clipped), which removes detector offsets/gains and burnt-in labels' extremes.
    Percentiles are taken after resizing because they are the slow step on large images.

    Args:
        size: output side length in pixels.
        spatial_dims: 2 (radiographs).
        with_mask: also transform a ``"mask"`` key (nearest neighbour, binary).

    Returns:
        A ``monai.transforms.Compose`` mapping ``{"image": (1, H, W) raw}`` to
        ``{"image": Tensor (1, size, size) float32 in [-1, 1]}``.
    """
    keys = _keys(with_mask)
    lower, upper = XRAY_PERCENTILES
    return Compose(
        [
            EnsureTyped(keys=keys, data_type="tensor", dtype=None, track_meta=False),
            _resize(size, spatial_dims, keys),
            ScaleIntensityRangePercentilesd(
                keys="image", lower=lower, upper=upper, b_min=-1.0, b_max=1.0, clip=True, relative=False
            ),
            *_pad(size, spatial_dims, keys),
        ]
    )


def pipeline_for(
    modality: str, size: int, *, window: str | tuple[float, float] = "lung", spatial_dims: int = 2,
    with_mask: bool = False,
) -> Compose:
    """The pipeline for ``modality`` (``"ct"`` or anything else -> X-ray style)."""
    if modality == "ct":
        return ct_pipeline(size, window=window, spatial_dims=spatial_dims, with_mask=with_mask)
    return xray_pipeline(size, spatial_dims=spatial_dims, with_mask=with_mask)
