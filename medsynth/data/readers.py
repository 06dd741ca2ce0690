"""Read one medical image (DICOM file or series, NIfTI, PNG/JPEG, npz) into native units.

Every reader returns an :class:`ImageRecord` whose ``array`` is float32 ``(H, W)`` (2D) or
``(D, H, W)`` (3D) in the image's *native* units:

* CT: Hounsfield units (DICOM rescale slope/intercept applied through pydicom's modality LUT).
* X-ray (DX/CR): raw detector values after the modality LUT; ``MONOCHROME1`` images are
  inverted so that larger always means brighter (denser).
* PNG/JPEG: grey levels (0..255 or 0..65535), RGB converted to luminance.

Orientation conventions (the same for DICOM series and NIfTI, "radiological display"):
``D`` runs inferior -> superior, ``H`` (rows) anterior -> posterior, ``W`` (columns) patient
right -> left. NIfTI volumes are first brought to the closest canonical (RAS+) orientation with
``nibabel.as_closest_canonical`` and then transposed/flipped into that layout; DICOM series are
sorted by ``ImagePositionPatient`` projected on the slice normal.

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
_DICOM_MODALITY = {"CT": "ct", "DX": "xray", "CR": "xray", "DR": "xray", "RG": "xray", "PX": "xray"}

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
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            # No preamble / file meta: accept it only for DICOM-named files.
            if not path.name.lower().endswith(DICOM_SUFFIXES):
                raise
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
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
    return arr


def _dicom_to_float(ds, arr: np.ndarray, path: Path) -> tuple[np.ndarray, str]:
    """Apply colour handling, the modality LUT and MONOCHROME1 inversion -> float32 array."""
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
    try:
        out = apply_modality_lut(arr, ds)
    except Exception as exc:
        raise MedsynthError(path, f"invalid rescale / modality LUT ({_one_line(exc)})") from None
    out = np.asarray(out, dtype=np.float32)
    if photometric == "MONOCHROME1":
        # Invert inside the range of representable stored values (mapped through the LUT), so
        # the inversion does not depend on the image content.
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        if int(ds.get("PixelRepresentation", 0) or 0):
            lo_raw, hi_raw = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            lo_raw, hi_raw = 0, 2**bits - 1
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        if "ModalityLUTSequence" in ds:
            lo, hi = float(out.min()), float(out.max())
        else:
            lo, hi = sorted((lo_raw * slope + inter, hi_raw * slope + inter))
        out = (hi + lo) - out
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


def read_dicom_file(path: str | Path, *, modality: str | None = None) -> ImageRecord:
    """Read one DICOM file.

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
    out, photometric = _dicom_to_float(ds, arr, path)
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
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "patient_id": str(ds.get("PatientID", "")),
        "transfer_syntax": str(ts) if ts is not None else "",
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
    }
    mod = modality or dicom_modality(ds.get("Modality"))
    return ImageRecord(out, _dicom_spacing(ds, out.ndim), mod, meta, str(path))


def _iter_files(folder: Path):
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            yield Path(root) / f


def _slice_normal(ds) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    n = np.cross(r, c)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def read_dicom_series(
    folder: str | Path, *, modality: str | None = None, series_uid: str | None = None
) -> list[ImageRecord]:
    """Read every DICOM series under ``folder`` (recursively) as volumes.

    Files are grouped by ``SeriesInstanceUID``. Within a series, slices are sorted by
    ``ImagePositionPatient`` projected on the slice normal (from ``ImageOrientationPatient``),
    falling back to ``InstanceNumber``; the slice spacing is the median distance between
    sorted positions (else ``SpacingBetweenSlices``/``SliceThickness``, else 1 mm). Files
    without pixel data (DICOMDIR, structured reports) and non-DICOM files are skipped.

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
    for f in _iter_files(folder):
        n_files += 1
        if detect_format(f) != "dicom":
            continue
        try:
            ds = _dcmread(f, stop_before_pixels=True)
        except MedsynthError as exc:
            log.debug("skipping %s", exc)
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            # stop_before_pixels drops PixelData; check the tag list written before it instead.
            if "Rows" not in ds:
                log.debug("skipping %s: no image", f)
                continue
        uid = str(ds.get("SeriesInstanceUID", "")) or f"<no-uid:{f.parent}>"
        headers.setdefault(uid, []).append((f, ds))
    if n_files == 0:
        raise MedsynthError(folder, "empty folder")
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
    normal = _slice_normal(first)
    have_pos = normal is not None and all(d.get("ImagePositionPatient") is not None for _, d in items)
    if have_pos:
        keys = [float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)) for _, d in items]
    else:
        keys = [float(d.get("InstanceNumber", i) or i) for i, (_, d) in enumerate(items)]
    order = np.argsort(keys, kind="stable")
    items = [items[i] for i in order]
    keys = [keys[i] for i in order]
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
    vol = np.stack(slices).astype(np.float32)
    dz = None
    if have_pos and len(keys) > 1:
        diffs = np.diff(keys)
        if np.all(np.abs(diffs) > 1e-6):
            dz = float(np.median(np.abs(diffs)))
        else:
            log.warning("series %s: duplicate slice positions", uid)
    if dz is None:
        dz = _dicom_spacing(first, 3)[0]
    mod = modality or dicom_modality(first.get("Modality"))
    meta = {
        "format": "dicom_series",
        "shape": tuple(vol.shape),
        "photometric": photometric,
        "dicom_modality": str(first.get("Modality", "")),
        "series_uid": uid,
        "patient_id": str(first.get("PatientID", "")),
        "n_slices": int(vol.shape[0]),
        "sorted_by": "position" if have_pos else "instance_number",
        "files": [str(f) for f, _ in items],
    }
    folder = os.path.commonpath([str(f) for f, _ in items])
    return ImageRecord(vol, (dz, *spacing2d), mod, meta, folder)


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
