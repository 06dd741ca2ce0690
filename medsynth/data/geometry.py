"""The field of view of a training set, recorded by ``medsynth train`` so that ``generate`` can write
full-resolution images with the right pixel spacing.

The pipelines (:mod:`medsynth.data.transforms`) resize each image so that its longest side is
``data.size`` and pad it to a square (cube): a model pixel of axis ``a`` therefore spans
``spacing_a x max(shape) / size`` mm, and the square covers ``spacing_a x max(shape)`` mm along
``a`` (the **field of view**, independent of ``size``). A generated image of edge ``n`` has pixel
spacing ``field_of_view / n``.

:func:`training_geometry` measures the field of view of up to :data:`SAMPLE` images of a source,
spread evenly over it, with the readers of :mod:`medsynth.data.readers` (the spacing the training
images were read with). It records the median per axis and the range; a set whose images disagree
by more than :data:`TOLERANCE` is recorded with ``uniform: false`` (the median is still the one
``generate`` writes, and it says so). Formats without a physical spacing (PNG/JPEG, arrays in an
``.npz``) and the LIDC nodule crops give ``field_of_view_mm: null`` with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medsynth.data.dataset import _collect_items, _Item, is_lidc_folder
from medsynth.data.readers import _read_series, read_image
from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

#: at most this many images of a source are read to measure its field of view
SAMPLE = 32
#: relative spread of the field of view above which a set is recorded as not uniform
TOLERANCE = 0.01
#: bump when the record's keys change
GEOMETRY_VERSION = 1


def _item_field(item: _Item, modality: str, spatial_dims: int) -> tuple[list[float] | None, str]:
    """``(field of view per used axis in mm, "")`` of one item, or ``(None, why not)``."""
    if item.array is not None:
        return None, "images given as arrays (.npz) carry no pixel spacing"
    rec = _read_series(item.series[0], item.series[1], modality) if item.series is not None else \
        read_image(item.path, modality=modality)
    fmt = str(rec.meta.get("format", "?"))
    if fmt not in ("dicom", "dicom_series", "nifti"):
        return None, f"{fmt.upper()} images carry no pixel spacing"
    shape, spacing = rec.array.shape, rec.spacing
    if spatial_dims == 2 and len(shape) == 3:  # a radiograph stored with one frame, or a CT slice of a volume
        shape, spacing = shape[1:], spacing[1:]
    if len(shape) != spatial_dims or len(spacing) != spatial_dims:
        return None, f"image of shape {tuple(shape)} for a {spatial_dims}D run"
    longest = max(int(s) for s in shape)
    return [float(sp) * longest for sp in spacing], ""


def training_geometry(source: str | Path, *, modality: str, spatial_dims: int, size: int, split: str | None,
                      sample: int = SAMPLE) -> dict:
    """The field of view of the images a run trains on, for ``RUN/data_report.json``.

    Args:
        source: the run's data source (manifest CSV, folder, file).
        modality, spatial_dims, split: as the run loads it.
        size: the run's ``data.size`` (the model's edge in pixels).
        sample: images read at most (spread evenly over the source).

    Returns:
        ``{"version", "size", "field_of_view_mm": [per axis] | None, "pixel_spacing_mm": [per
        axis at size] | None, "uniform": bool, "field_of_view_range_mm": [[min, max] per axis],
        "images_measured", "images"}``; with ``field_of_view_mm`` ``None`` a ``"reason"``. Axes
        are the model's spatial axes: ``(rows, columns)`` in 2D, ``(slices, rows, columns)`` in 3D.
        Never raises for unreadable files: they are counted (``images_unreadable``).
    """
    source = Path(source)
    base = {"version": GEOMETRY_VERSION, "size": int(size)}
    if is_lidc_folder(source):
        return {**base, "field_of_view_mm": None, "pixel_spacing_mm": None,
                "reason": "LIDC nodule crops (fixed-size crops; their spacing is not recorded)"}
    items, _ = _collect_items(source, modality=modality, spatial_dims=spatial_dims, split=split)
    pick = np.unique(np.linspace(0, len(items) - 1, min(int(sample), len(items))).round().astype(int))
    fields, reasons, unreadable = [], [], 0
    for i in pick:
        try:
            f, why = _item_field(items[int(i)], modality, spatial_dims)
        except MedsynthError as exc:
            unreadable += 1
            log.info("geometry: %s", exc)
            continue
        if f is None:
            reasons.append(why)
        else:
            fields.append(f)
    base.update(images=len(items), images_measured=len(fields), images_unreadable=unreadable)
    if not fields or reasons:
        why = reasons[0] if reasons else "no image could be read"
        return {**base, "field_of_view_mm": None, "pixel_spacing_mm": None, "reason": why}
    a = np.asarray(fields, dtype=np.float64)
    med, lo, hi = np.median(a, 0), a.min(0), a.max(0)
    uniform = bool(np.all((hi - lo) <= TOLERANCE * med))
    if not uniform:
        log.warning("data: the training images' fields of view differ (%s mm): generate writes the median's "
                    "spacing", ", ".join(f"{x:.1f}..{y:.1f}" for x, y in zip(lo, hi)))
    return {**base, "field_of_view_mm": [round(float(v), 4) for v in med],
            "pixel_spacing_mm": [round(float(v) / int(size), 6) for v in med], "uniform": uniform,
            "field_of_view_range_mm": [[round(float(x), 4), round(float(y), 4)] for x, y in zip(lo, hi)]}


def output_spacing(geometry: dict | None, size: int) -> tuple[float, ...] | None:
    """Pixel (voxel) spacing in mm of a generated image of edge ``size``: the recorded field of view
    / ``size``, per axis (``(rows, columns)`` or ``(slices, rows, columns)``); ``None`` when the run
    recorded none (:func:`training_geometry`'s ``field_of_view_mm`` null, or a run made before it)."""
    fov = (geometry or {}).get("field_of_view_mm")
    if not fov:
        return None
    return tuple(float(f) / int(size) for f in fov)
