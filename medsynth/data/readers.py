"""Read one medical image (DICOM file or series, NIfTI, PNG/JPEG, npz) into native units.

Every reader returns an :class:`ImageRecord` whose ``array`` is float32 ``(H, W)`` (2D) or
``(D, H, W)`` (3D) in the image's *native* units:

* CT: Hounsfield units (DICOM rescale slope/intercept applied through pydicom's modality LUT;
  for Enhanced / Legacy Converted Enhanced multi-frame files, per frame from the functional
  groups, see :func:`read_dicom_file`).
* X-ray (DX/CR): raw detector values after the modality LUT; ``MONOCHROME1`` images are
  inverted so that larger always means brighter (denser).
* PNG/JPEG: grey levels (0..255 or 0..65535), RGB converted to luminance.

Orientation conventions (the same for DICOM series and NIfTI, "radiological display"):
``D`` runs inferior -> superior, ``H`` (rows) anterior -> posterior, ``W`` (columns) patient
right -> left. NIfTI volumes are first brought to the closest canonical (RAS+) orientation with
``nibabel.as_closest_canonical`` and then transposed/flipped into that layout; DICOM series are
sorted by ``ImagePositionPatient`` projected on the slice normal, and their slices must be
evenly spaced (:func:`even_spacing`): an uneven series is refused, not resampled.

A folder given to :func:`read_image` is read as a DICOM series: with one series in the folder
that volume is returned; with several, ``series_uid=`` must pick one (otherwise a
:class:`~medsynth.errors.MedsynthError` lists the series found).

Bad input (unreadable or corrupt files, no pixel data, a compressed transfer syntax without a
decoder, an empty folder, an unsupported extension, non-finite values) raises a one-line
:class:`~medsynth.errors.MedsynthError` naming the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

#: file name endings per format (lower case)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NPZ_SUFFIXES = (".npz",)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

#: DICOM Modality tag -> medsynth modality
_DICOM_MODALITY = {"CT": "ct", "DX": "xray", "CR": "xray", "DR": "xray", "RG": "xray", "MG": "xray", "PX": "xray"}
#: Enhanced / Legacy Converted Enhanced CT: their rescale must come from the functional groups
ENHANCED_CT_SOP = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
#: slices (or frames) are evenly spaced when every gap is within this fraction of the median gap...
SPACING_TOLERANCE = 0.01
#: ...or within this many mm (DICOM positions are written to 0.01 mm or finer in practice)
SPACING_TOLERANCE_MM = 0.02

CODECS_HINT = "pip install medsynth-gan[codecs]"


@dataclass
class ImageRecord:
    """One image in native units.

    Attributes:
        array: float32 ``(H, W)`` or ``(D, H, W)``; HU for CT, detector values for X-ray
            (MONOCHROME1 already inverted), grey levels for PNG/JPEG.
        spacing: voxel size in mm, one value per array axis (1.0 where unknown).
        modality: ``"xray"``, ``"ct"`` or ``"unknown"``.
        meta: format details: ``format``, ``shape``, and where known ``photometric``,
            ``series_uid``, ``patient_id``, ``transfer_syntax``, ``n_slices``...
        path: the file or folder read.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    modality: str
    meta: dict = field(default_factory=dict)
    path: str = ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def detect_format(path: str | Path) -> str | None:
    """Return ``"dicom"``, ``"nifti"``, ``"pil"``, ``"npz"`` or ``None`` for a file path.

    DICOM is recognised by extension (``.dcm``, ``.dicom``, ``.ima``) or by the ``DICM`` magic
    at byte 128 (files without an extension, as in DICOMDIR trees).
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PIL_SUFFIXES):
        return "pil"
    if name.endswith(NPZ_SUFFIXES):
        return "npz"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if _has_dicm_magic(p):
        return "dicom"
    return None


def _has_dicm_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_modality(tag_value: str | None) -> str:
    """Map a DICOM ``Modality`` value (CT, DX, CR...) to ``"ct"``, ``"xray"`` or ``"unknown"``."""
    return _DICOM_MODALITY.get(str(tag_value or "").upper().strip(), "unknown")


def _check_finite(arr: np.ndarray, path) -> np.ndarray:
    """``arr`` if it holds pixels and all are finite; else one :class:`MedsynthError` naming ``path``."""
    if arr.size == 0:
        raise MedsynthError(path, f"image holds no pixels (shape {tuple(arr.shape)})")
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise MedsynthError(path, f"image has {n_bad} non-finite values (NaN or inf)")
    return arr


def _grey(rgb: np.ndarray) -> np.ndarray:
    """(..., 3 or 4) RGB(A) -> (...) luminance (ITU-R BT.601 weights)."""
    rgb = rgb[..., :3].astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------- DICOM
def _dcmread(path: Path, *, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        if path.is_file() and path.stat().st_size == 0:
            raise MedsynthError(path, "empty file (0 bytes)")
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            # No preamble / file meta: accept it only for DICOM-named files.
            if not path.name.lower().endswith(DICOM_SUFFIXES):
                raise
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except MedsynthError:
        raise
    except FileNotFoundError:
        raise MedsynthError(path, "file not found") from None
    except IsADirectoryError:
        raise MedsynthError(path, "is a folder, expected a DICOM file") from None
    except InvalidDicomError:
        raise MedsynthError(path, "not a DICOM file (no 'DICM' marker)") from None
    except Exception as exc:  # pydicom raises many types on truncated/corrupt files
        raise MedsynthError(path, f"unreadable or corrupt DICOM ({_one_line(exc)})") from None


def _transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    return getattr(meta, "TransferSyntaxUID", None) if meta is not None else None


def _codecs_installed() -> bool:
    """True when the optional ``codecs`` extra (pylibjpeg + plugins, pyjpegls) is importable."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("pylibjpeg", "libjpeg", "openjpeg", "jpeg_ls"))


def _decode_pixels(ds, path: Path) -> np.ndarray:
    """Decoded stored values (frames, rows, cols[, samples]) via pydicom's pixel handlers."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise MedsynthError(path, "DICOM file has no pixel data (not an image)")
    ts = _transfer_syntax(ds)
    # pydicom's decoders log a failed frame with its traceback before raising: the error below says
    # it in one line instead (an installed JPEG-LS decoder printed a traceback for a corrupt stream)
    pd_log = logging.getLogger("pydicom")
    level = pd_log.level
    pd_log.setLevel(logging.CRITICAL)
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError, ImportError) as exc:
        if ts is not None and getattr(ts, "is_compressed", False):
            if not _codecs_installed():
                raise MedsynthError(
                    path,
                    f"cannot decode compressed transfer syntax '{ts.name}' ({ts}): no suitable "
                    f"decoder installed; install them with `{CODECS_HINT}`",
                ) from None
            detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:3]) or _one_line(exc)
            raise MedsynthError(
                path, f"corrupt or unsupported compressed pixel data '{ts.name}' ({ts}): {detail}"
            ) from None
        raise MedsynthError(path, f"cannot decode pixel data ({_one_line(exc)})") from None
    except Exception as exc:
        tsname = f" ({ts.name})" if ts is not None else ""
        raise MedsynthError(path, f"corrupt pixel data{tsname}: {_one_line(exc)}") from None
    finally:
        pd_log.setLevel(level)
    return arr


def _dicom_to_float(ds, arr: np.ndarray, path: Path, rescale=None) -> tuple[np.ndarray, str]:
    """Apply colour handling, the modality LUT and MONOCHROME1 inversion -> float32 array.

    Args:
        ds: the dataset.
        arr: decoded stored values ``(H, W)`` or ``(frames, H, W)``.
        path: for messages.
        rescale: ``(slopes, intercepts)`` float arrays, one value per frame, from the
            functional groups of an enhanced multi-frame file; ``None``: the top-level
            Modality LUT / RescaleSlope / RescaleIntercept (pydicom's modality LUT).
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        try:
            arr = _grey(apply_color_lut(arr, ds))
        except Exception as exc:
            raise MedsynthError(path, f"cannot apply the palette colour LUT ({_one_line(exc)})") from None
        return arr.astype(np.float32), photometric
    if samples > 1:
        # pydicom converts YBR to RGB while decoding by default (as_rgb=True).
        return _grey(arr), photometric
    if rescale is None:
        try:
            out = apply_modality_lut(arr, ds)
        except Exception as exc:
            raise MedsynthError(path, f"invalid rescale / modality LUT ({_one_line(exc)})") from None
        slope = np.float64(ds.get("RescaleSlope", 1) or 1)
        inter = np.float64(ds.get("RescaleIntercept", 0) or 0)
    else:
        shape = (-1, 1, 1) if arr.ndim == 3 else ()
        slope = np.asarray(rescale[0], np.float64).reshape(shape)
        inter = np.asarray(rescale[1], np.float64).reshape(shape)
        out = arr.astype(np.float64) * slope + inter
    out = np.asarray(out, dtype=np.float32)
    if photometric == "MONOCHROME1":
        # Invert inside the range of representable stored values (mapped through the LUT), so
        # the inversion does not depend on the image content.
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        if int(ds.get("PixelRepresentation", 0) or 0):
            lo_raw, hi_raw = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            lo_raw, hi_raw = 0, 2**bits - 1
        if rescale is None and "ModalityLUTSequence" in ds:
            lo, hi = float(out.min()), float(out.max())
        else:
            a, b = lo_raw * slope + inter, hi_raw * slope + inter
            lo, hi = np.minimum(a, b), np.maximum(a, b)
        out = ((hi + lo) - out).astype(np.float32)
    return out, photometric


def _dicom_spacing(ds, ndim: int) -> tuple[float, ...]:
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        row, col = (float(ps[0]), float(ps[1])) if ps is not None and len(ps) >= 2 else (1.0, 1.0)
    except (TypeError, ValueError):
        row, col = 1.0, 1.0
    if ndim == 2:
        return (row, col)
    try:
        dz = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    except (TypeError, ValueError):
        dz = 1.0
    return (dz, row, col)


def even_spacing(positions, *, what: str, where) -> float:
    """The slice spacing of sorted, distinct slice positions; refuse uneven spacing.

    Every gap between neighbouring positions must lie within :data:`SPACING_TOLERANCE` of the
    median gap (the smaller gap for three slices) or :data:`SPACING_TOLERANCE_MM`, whichever is
    larger. An uneven series is
    **refused, not resampled**: a gap of several slice spacings means slices are missing (a
    partial export) or two acquisitions share one series, and interpolating across it would
    invent anatomy that a generative model then learns as real. The user re-exports the
    series or removes it; the message names the series and the gap.

    Args:
        positions: ``(D,)`` increasing positions in mm along the slice normal.
        what: the series or file, for the message (``"series <uid>"``; no patient identifiers).
        where: the folder or file the error names.

    Returns:
        The true spacing in mm: ``(last - first) / (D - 1)``.

    Raises:
        MedsynthError: a gap off the median by more than the tolerance.
    """
    keys = np.asarray(positions, dtype=np.float64)
    gaps = np.diff(keys)
    # the expected spacing: the median gap; with two gaps the smaller (missing slices only widen gaps)
    med = float(np.median(gaps)) if len(gaps) >= 3 else float(gaps.min())
    tol = max(SPACING_TOLERANCE * med, SPACING_TOLERANCE_MM)
    dev = np.abs(gaps - med)
    k = int(np.argmax(dev))
    if dev[k] > tol:
        raise MedsynthError(
            where, f"{what}: uneven slice spacing: a {gaps[k]:.4g} mm gap between slices {k} and {k + 1} "
                   f"where the spacing is {med:.4g} mm (gaps {gaps.min():.4g} to {gaps.max():.4g} mm over "
                   f"{len(keys)} slices): slices are missing or acquisitions are mixed; refused rather than "
                   "interpolated (export the complete series)")
    return float((keys[-1] - keys[0]) / (len(keys) - 1))


def _normal(iop) -> np.ndarray | None:
    if iop is None or len(iop) != 6:
        return None
    r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    n = np.cross(r, c)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def _frame_items(ds, name: str, n: int, path: Path) -> list:
    """Per frame, the first item of functional-group sequence ``name`` (per-frame, else shared, else None)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per and not any(name in item for item in per):
        per = []  # this group is not per frame: the shared item (if any) applies to every frame
    if per and len(per) != n:
        raise MedsynthError(path, f"PerFrameFunctionalGroupsSequence has {len(per)} items for {n} frames")
    out = []
    for i in range(n):
        seq = per[i].get(name) if per else None
        if not seq and shared is not None:
            seq = shared.get(name)
        out.append(seq[0] if seq else None)
    return out


def _functional_groups(ds, arr: np.ndarray, path: Path):
    """Rescale, spacing and frame order of an enhanced multi-frame file from its functional groups.

    Returns:
        ``None`` when the file has no functional groups, else ``(rescale, spacing, order, how)``:
        ``rescale`` ``(slopes, intercepts)`` per frame or ``None`` (top-level rescale applies),
        ``spacing`` for the array's axes (``None``: from the top level), ``order`` the frame
        order (increasing position along the normal) or ``None``, ``how`` a note for ``meta``.

    Raises:
        MedsynthError: frames without a rescale while others have one, an Enhanced CT without
            any rescale, frames of different pixel spacing or orientation, several stacks
            (frames sharing a position) or uneven frame spacing.
    """
    if "SharedFunctionalGroupsSequence" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        return None
    n = arr.shape[0] if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 1 else 1
    n = int(ds.get("NumberOfFrames", n) or n)
    pvt = _frame_items(ds, "PixelValueTransformationSequence", n, path)
    have = [p is not None for p in pvt]
    rescale, how = None, "top-level rescale"
    if all(have):
        rescale = (np.array([float(p.get("RescaleSlope", 1) or 1) for p in pvt]),
                   np.array([float(p.get("RescaleIntercept", 0) or 0) for p in pvt]))
        per = len(set(zip(*rescale))) > 1
        how = f"functional groups ({'per frame' if per else 'one for all frames'})"
    elif any(have):
        raise MedsynthError(path, f"{have.count(False)} of {n} frames have no PixelValueTransformationSequence "
                                  "(rescale) while the others do")
    elif str(ds.get("SOPClassUID", "")) in ENHANCED_CT_SOP and "RescaleIntercept" not in ds:
        raise MedsynthError(path, "Enhanced CT without RescaleSlope/RescaleIntercept in its functional groups "
                                  "(PixelValueTransformationSequence): its values cannot be read as Hounsfield units")
    pm = _frame_items(ds, "PixelMeasuresSequence", n, path)
    spacing = None
    if pm[0] is not None:
        ps = {tuple(float(v) for v in (p.get("PixelSpacing") or ())) for p in pm if p is not None}
        if len(ps) > 1:
            raise MedsynthError(path, f"frames have {len(ps)} different pixel spacings; expected one")
        ps = next(iter(ps))
        row, col = ps if len(ps) == 2 else _dicom_spacing(ds, 2)
        dz = pm[0].get("SpacingBetweenSlices") or pm[0].get("SliceThickness")
        spacing = (row, col) if n == 1 else (float(dz) if dz else 1.0, row, col)
    pos = _frame_items(ds, "PlanePositionSequence", n, path) if n > 1 else [None]
    ori = _frame_items(ds, "PlaneOrientationSequence", n, path) if n > 1 else [None]
    order = None
    if n > 1 and all(p is not None and p.get("ImagePositionPatient") is not None for p in pos) and ori[0] is not None:
        iops = {tuple(round(float(v), 4) for v in o.get("ImageOrientationPatient") or ()) for o in ori if o is not None}
        if len(iops) > 1:
            raise MedsynthError(path, f"frames have {len(iops)} different orientations; expected one stack")
        normal = _normal(ori[0].get("ImageOrientationPatient"))
        if normal is not None:
            keys = np.array([float(np.dot(np.asarray(p.ImagePositionPatient, float), normal)) for p in pos])
            order = np.argsort(keys, kind="stable")
            skeys = keys[order]
            if (np.diff(skeys) <= 1e-3).any():
                n_at = len(keys) / len(np.unique(np.round(keys, 3)))
                raise MedsynthError(path, f"{n} frames share positions (about {n_at:.0f} per position: several stacks, "
                                          "echoes, phases or time points in one file); medsynth reads one volume per file")
            dz = even_spacing(skeys, what=f"multi-frame file ({n} frames)", where=path)
            row, col = spacing[1:] if spacing is not None else _dicom_spacing(ds, 2)
            spacing = (dz, row, col)
    return rescale, spacing, order, how


def read_dicom_file(path: str | Path, *, modality: str | None = None) -> ImageRecord:
    """Read one DICOM file.

    Enhanced and Legacy Converted Enhanced multi-frame files (CT, MR...) keep their rescale,
    pixel spacing and positions in functional groups: the rescale is applied per frame from
    ``PixelValueTransformationSequence`` (per-frame items, else the shared one), the pixel
    spacing and slice thickness come from ``PixelMeasuresSequence``, and the frames are sorted
    by ``PlanePositionSequence`` along the normal of ``PlaneOrientationSequence`` with the
    spacing checked like a series' (:func:`even_spacing`). Files whose functional groups
    contradict themselves are refused.

    Args:
        path: a DICOM file (single- or multi-frame).
        modality: override the modality derived from the ``Modality`` tag.

    Returns:
        An :class:`ImageRecord`; ``array`` is ``(H, W)`` for single-frame files and
        ``(frames, H, W)`` for multi-frame files, float32 in native units (HU for CT).
    """
    path = Path(path)
    ds = _dcmread(path)
    arr = _decode_pixels(ds, path)
    fg = _functional_groups(ds, arr, path)
    rescale, fg_spacing, order, how = fg if fg is not None else (None, None, None, "top-level rescale")
    out, photometric = _dicom_to_float(ds, arr, path, rescale)
    if order is not None:
        out = out[order]
    out = np.ascontiguousarray(out, dtype=np.float32)
    if out.ndim not in (2, 3):
        raise MedsynthError(path, f"unexpected pixel array shape {tuple(out.shape)}")
    _check_finite(out, path)
    ts = _transfer_syntax(ds)
    meta = {
        "format": "dicom",
        "shape": tuple(out.shape),
        "photometric": photometric,
        "dicom_modality": str(ds.get("Modality", "")),
        "sop_class": str(ds.get("SOPClassUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "patient_id": str(ds.get("PatientID", "")),
        "transfer_syntax": str(ts) if ts is not None else "",
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
    }
    if fg is not None:
        meta["rescale"] = how
    spacing = fg_spacing if fg_spacing is not None and len(fg_spacing) == out.ndim else _dicom_spacing(ds, out.ndim)
    mod = modality or dicom_modality(ds.get("Modality"))
    return ImageRecord(out, spacing, mod, meta, str(path))


def _iter_files(folder: Path):
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            yield Path(root) / f


def _slice_normal(ds) -> np.ndarray | None:
    return _normal(ds.get("ImageOrientationPatient"))


def read_dicom_series(
    folder: str | Path, *, modality: str | None = None, series_uid: str | None = None
) -> list[ImageRecord]:
    """Read every DICOM series under ``folder`` (recursively) as volumes.

    Files are grouped by ``SeriesInstanceUID``. Within a series, slices are sorted by
    ``ImagePositionPatient`` projected on the slice normal (from ``ImageOrientationPatient``)
    and must be evenly spaced (:func:`even_spacing`: an uneven series is refused); the slice
    spacing is the true distance between them. A series with no positions at all is ordered by
    ``InstanceNumber`` with the header's ``SpacingBetweenSlices``/``SliceThickness`` (a
    warning says it cannot be checked); one where only some slices have a position is refused.
    Slices at one position are kept once when their pixels are equal and refused otherwise.
    DICOM-named files that cannot be read (empty, not DICOM, corrupt) and DICOM objects
    without an image (DICOMDIR, structured reports) are skipped with one warning counting
    them; files of other types are ignored.

    Args:
        folder: the folder to scan.
        modality: override the modality derived from the ``Modality`` tag.
        series_uid: read only this series.

    Returns:
        One :class:`ImageRecord` per series, ordered by series UID: ``array`` float32
        ``(D, H, W)`` (HU for CT) for multi-slice series, ``(H, W)`` for a single
        single-frame file (a radiograph), ``meta["n_slices"]`` and ``meta["files"]`` set.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MedsynthError(folder, "not a folder")
    headers: dict[str, list] = {}
    n_files = 0
    skipped: list[tuple[str, str]] = []
    for f in _iter_files(folder):
        n_files += 1
        if detect_format(f) != "dicom":
            continue
        try:
            ds = _dcmread(f, stop_before_pixels=True)
        except MedsynthError as exc:
            skipped.append((f.relative_to(folder).as_posix(), exc.problem))
            continue
        if "Rows" not in ds:
            # stop_before_pixels drops PixelData; Rows comes before it in every image.
            skipped.append((f.relative_to(folder).as_posix(), "no image (DICOMDIR, report, RT plan...)"))
            continue
        uid = str(ds.get("SeriesInstanceUID", "")) or f"<no-uid:{f.parent}>"
        headers.setdefault(uid, []).append((f, ds))
    if n_files == 0:
        raise MedsynthError(folder, "empty folder")
    if skipped:
        log.warning("%s: skipped %d DICOM file(s) without a readable image, e.g. %s (%s)",
                    folder, len(skipped), *skipped[0])
        for rel, why in skipped:
            log.info("skipped %s: %s", rel, why)
    if not headers:
        raise MedsynthError(folder, "no DICOM image files found")
    if series_uid is not None:
        if series_uid not in headers:
            raise MedsynthError(folder, f"series {series_uid} not found; found: {', '.join(sorted(headers))}")
        headers = {series_uid: headers[series_uid]}
    return [_read_series(uid, items, modality) for uid, items in sorted(headers.items())]


def _read_series(uid: str, items: list, modality: str | None) -> ImageRecord:
    if len(items) == 1:
        rec = read_dicom_file(items[0][0], modality=modality)
        rec.meta.update(n_slices=1 if rec.array.ndim == 2 else rec.array.shape[0], files=[rec.path])
        return rec
    first = items[0][1]
    where = Path(os.path.commonpath([str(f) for f, _ in items]))
    what = f"series {uid}"
    n_pos = sum(d.get("ImagePositionPatient") is not None for _, d in items)
    if 0 < n_pos < len(items):
        raise MedsynthError(where, f"{what}: {len(items) - n_pos} of {len(items)} slices have no "
                                   "ImagePositionPatient, so the slice order and spacing cannot be checked")
    iops = {tuple(round(float(v), 4) for v in d.get("ImageOrientationPatient") or ()) for _, d in items}
    if n_pos and len(iops) > 1:
        raise MedsynthError(where, f"{what}: slices have {len(iops)} different orientations (a localiser or "
                                   "a second stack in the series?); expected one stack")
    normal = _slice_normal(first)
    have_pos = normal is not None and n_pos == len(items)
    if have_pos:
        keys = [float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)) for _, d in items]
    else:
        inst = [d.get("InstanceNumber") for _, d in items]
        if any(v is None for v in inst) or len({int(v) for v in inst}) != len(inst):
            raise MedsynthError(where, f"{what}: no ImagePositionPatient/ImageOrientationPatient and no unique "
                                       "InstanceNumbers: the slice order is unknown")
        keys = [float(v) for v in inst]
    order = np.argsort(keys, kind="stable")
    items = [items[i] for i in order]
    keys = np.asarray([keys[i] for i in order])
    slices, spacing2d, photometric = [], None, None
    for f, _ in items:
        rec = read_dicom_file(f, modality=modality)
        if rec.array.ndim != 2:
            raise MedsynthError(f, f"multi-frame file inside series {uid}; expected one slice per file")
        if slices and rec.array.shape != slices[0].shape:
            raise MedsynthError(
                f, f"slice shape {rec.array.shape} differs from {slices[0].shape} in series {uid}"
            )
        slices.append(rec.array)
        spacing2d = spacing2d or rec.spacing
        photometric = photometric or rec.meta.get("photometric")
    if have_pos:
        dup = np.flatnonzero(np.diff(keys) <= 1e-3)
        if len(dup):
            differ = [i for i in dup if not np.array_equal(slices[i], slices[i + 1])]
            if differ:
                raise MedsynthError(where, f"{what}: {len(differ)} slice position(s) hold two different images (e.g. "
                                           f"at {keys[differ[0]]:.4g} mm along the normal): several acquisitions, "
                                           "echoes or phases share this series; expected one stack")
            keep = np.setdiff1d(np.arange(len(slices)), dup + 1)
            log.warning("%s: %s: %d duplicate slice(s) (same position, same pixels) kept once", where, what, len(dup))
            slices, items, keys = [slices[i] for i in keep], [items[i] for i in keep], keys[keep]
    vol = np.stack(slices).astype(np.float32)
    if have_pos and len(keys) > 1:
        dz = even_spacing(keys, what=what, where=where)
    else:
        dz = _dicom_spacing(first, 3)[0]
        if not have_pos:
            log.warning("%s: %s has no ImagePositionPatient/ImageOrientationPatient: slices ordered by "
                        "InstanceNumber, spacing %g mm taken from the header and not verifiable", where, what, dz)
    mod = modality or dicom_modality(first.get("Modality"))
    meta = {
        "format": "dicom_series",
        "shape": tuple(vol.shape),
        "photometric": photometric,
        "dicom_modality": str(first.get("Modality", "")),
        "sop_class": str(first.get("SOPClassUID", "")),
        "series_uid": uid,
        "patient_id": str(first.get("PatientID", "")),
        "n_slices": int(vol.shape[0]),
        "sorted_by": "position" if have_pos else "instance_number",
        "files": [str(f) for f, _ in items],
    }
    return ImageRecord(vol, (dz, *spacing2d), mod, meta, str(where))


# ----------------------------------------------------------------------------- NIfTI
def _canonical_to_dhw(data: np.ndarray) -> np.ndarray:
    """RAS+ array ``(x, y, z)`` -> ``(z, y', x')`` with rows anterior->posterior, cols R->L."""
    return np.ascontiguousarray(np.flip(np.transpose(data, (2, 1, 0)), axis=(1, 2)))


def read_nifti(path: str | Path, *, modality: str | None = None) -> ImageRecord:
    """Read a 2D or 3D NIfTI image in closest-canonical (RAS+) orientation.

    Returns:
        ``array`` float32 ``(H, W)`` for 2D images (or 3D with one slice), else ``(D, H, W)``
        with axial slices along the first axis (D inferior -> superior); ``spacing`` from the
        header zooms in the same axis order. Modality is ``"ct"`` when values look like HU
        (see :func:`guess_modality`) unless given.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise MedsynthError(path, "file not found")
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) > 3:
            raise MedsynthError(path, f"4D NIfTI of shape {tuple(img.shape)}; expected 2D/3D")
        if len(shape) < 2:
            raise MedsynthError(path, f"NIfTI of shape {tuple(img.shape)}; expected 2D/3D")
        if len(img.shape) > 3:
            img = nib.Nifti1Image(np.asarray(img.dataobj).reshape(shape), img.affine, img.header)
        if len(img.shape) == 2:
            img = nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine, img.header)
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except MedsynthError:
        raise
    except Exception as exc:
        raise MedsynthError(path, f"unreadable NIfTI ({_one_line(exc)})") from None
    arr = _canonical_to_dhw(data).astype(np.float32)
    spacing = (zooms[2], zooms[1], zooms[0])
    if arr.shape[0] == 1:
        arr, spacing = arr[0], spacing[1:]
    _check_finite(arr, path)
    meta = {"format": "nifti", "shape": tuple(arr.shape), "orientation": "RAS (canonical)"}
    return ImageRecord(arr, spacing, modality or guess_modality(arr), meta, str(path))


def guess_modality(arr: np.ndarray) -> str:
    """``"ct"`` if values look like Hounsfield units (air near -1000), else ``"unknown"``."""
    lo = float(np.min(arr)) if arr.size else 0.0
    hi = float(np.max(arr)) if arr.size else 0.0
    return "ct" if (-1200.0 <= lo <= -500.0 and hi <= 4000.0) else "unknown"


# ----------------------------------------------------------------------------- PNG / JPEG
def read_pil(path: str | Path, *, modality: str | None = None) -> ImageRecord:
    """Read a PNG/JPEG/TIFF (8- or 16-bit grey, RGB converted to luminance) as ``(H, W)``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("L", "I", "F") or mode.startswith("I;16"):
                arr = np.asarray(img).astype(np.float32)
            elif mode in ("RGB", "RGBA", "CMYK", "YCbCr", "P", "PA", "LA", "1", "HSV", "LAB"):
                arr = _grey(np.asarray(img.convert("RGB")))
            else:
                arr = np.asarray(img.convert("F")).astype(np.float32)
    except FileNotFoundError:
        raise MedsynthError(path, "file not found") from None
    except Image.DecompressionBombError as exc:  # a header claiming billions of pixels
        raise MedsynthError(path, f"refused: the image claims more pixels than are safe to decode ({_one_line(exc)})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MedsynthError(path, f"unreadable or corrupt image ({_one_line(exc)})") from None
    if arr.ndim != 2:
        raise MedsynthError(path, f"unexpected image shape {arr.shape}")
    _check_finite(arr, path)
    meta = {"format": "png" if path.suffix.lower() == ".png" else path.suffix.lower().lstrip("."),
            "shape": tuple(arr.shape), "pil_mode": mode}
    return ImageRecord(np.ascontiguousarray(arr), (1.0, 1.0), modality or "unknown", meta, str(path))


# ----------------------------------------------------------------------------- npz
def load_npz_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Load all arrays of an ``.npz`` (no pickle); MedsynthError if unreadable."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise MedsynthError(path, "file not found") from None
    except Exception as exc:
        raise MedsynthError(path, f"unreadable .npz ({_one_line(exc)})") from None


def read_npz(path: str | Path, *, modality: str | None = None) -> ImageRecord:
    """Read the array ``images`` (or the only array) of an ``.npz`` as one image.

    A 2D array gives ``(H, W)``, a 3D array ``(D, H, W)`` (a volume, or a stack of slices:
    sets of images are loaded with :func:`medsynth.data.dataset.load_image_set`).
    """
    path = Path(path)
    arrays = load_npz_arrays(path)
    if "images" in arrays:
        key = "images"
    elif len(arrays) == 1:
        key = next(iter(arrays))
    else:
        raise MedsynthError(path, f"expected an array 'images' or a single array; found {', '.join(arrays) or 'none'}")
    arr = np.squeeze(arrays[key]) if arrays[key].ndim > 3 else arrays[key]
    if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise MedsynthError(path, f"array '{key}' has shape {arrays[key].shape} dtype {arrays[key].dtype}; expected 2D/3D numbers")
    arr = arr.astype(np.float32)
    _check_finite(arr, path)
    meta = {"format": "npz", "shape": tuple(arr.shape), "key": key}
    return ImageRecord(arr, (1.0,) * arr.ndim, modality or guess_modality(arr), meta, str(path))


# ----------------------------------------------------------------------------- entry point
def read_image(
    path: str | Path, *, modality: str | None = None, series_uid: str | None = None
) -> ImageRecord:
    """Read one image (file) or one DICOM series (folder) into native units.

    Args:
        path: a DICOM file, a folder holding DICOM series, a NIfTI (``.nii``/``.nii.gz``),
            PNG/JPEG/TIFF or ``.npz`` file.
        modality: ``"xray"`` or ``"ct"`` to override what the file says (or does not say).
        series_uid: for folders holding several series, the one to read.

    Returns:
        :class:`ImageRecord` with float32 ``(H, W)`` or ``(D, H, W)`` array in native units.

    Raises:
        MedsynthError: one line naming the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        series = read_dicom_series(path, modality=modality, series_uid=series_uid)
        if len(series) > 1:
            desc = "; ".join(f"{r.meta['series_uid']} ({r.meta['n_slices']} slices)" for r in series[:8])
            raise MedsynthError(path, f"{len(series)} DICOM series found, pick one with series_uid=: {desc}")
        return series[0]
    if not path.exists():
        raise MedsynthError(path, "file not found")
    fmt = detect_format(path)
    if fmt == "dicom":
        return read_dicom_file(path, modality=modality)
    if fmt == "nifti":
        return read_nifti(path, modality=modality)
    if fmt == "pil":
        return read_pil(path, modality=modality)
    if fmt == "npz":
        return read_npz(path, modality=modality)
    raise MedsynthError(
        path,
        "unsupported file type; expected DICOM (.dcm or DICM marker), NIfTI (.nii/.nii.gz), "
        "PNG/JPEG or .npz",
    )


def take_slices(
    volume: np.ndarray, *, n: int = 1, mask: np.ndarray | None = None, axis: int = 0
) -> tuple[np.ndarray, list[int]]:
    """Pick ``n`` consecutive 2D slices from a volume along ``axis``.

    The block is centred on the slice where ``mask`` has the largest area when a mask with any
    foreground is given, else on the central slice; it is shifted to stay inside the volume.

    Args:
        volume: ``(D, H, W)`` array (any units).
        n: number of slices (clipped to the volume's depth).
        mask: optional array of the same shape as ``volume``; non-zero = foreground.
        axis: the slice axis (0 = axial for our readers' layout).

    Returns:
        ``(slices (n, H', W'), indices)``.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    vol = np.moveaxis(volume, axis, 0)
    depth = vol.shape[0]
    n = max(1, min(int(n), depth))
    centre = depth // 2
    if mask is not None:
        m = np.moveaxis(np.asarray(mask), axis, 0)
        if m.shape != vol.shape:
            raise ValueError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
        area = (m != 0).reshape(depth, -1).sum(axis=1)
        if area.max() > 0:
            centre = int(np.argmax(area))
    start = min(max(centre - n // 2, 0), depth - n)
    idx = list(range(start, start + n))
    return vol[idx], idx
