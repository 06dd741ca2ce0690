"""Checks that keep unsuitable files and leaked images out of a run.

Two kinds of check live here, both used by :mod:`medsynth.data.dataset` (and by
:mod:`medsynth.data.info`, which shows what they would say):

**Is this file an image of the run's modality?** (:func:`file_refusal`, from headers only:
no pixel decoding.)

* X-ray runs accept the projection radiography modalities :data:`XRAY_MODALITIES` (CR, DX,
  DR, RG, MG, PX). A secondary capture (SOP class ``1.2.840.10008.5.1.4.1.1.7*``) is accepted
  only when its ``Modality`` tag names one of them (a digitised film): X-ray intensities are
  percentile-normalised, so display grey levels of a radiograph are still a radiograph, while
  a secondary capture with ``Modality`` OT or none may be any screen.
* CT runs accept ``Modality`` CT, including Enhanced and Legacy Converted Enhanced CT. An
  8-bit secondary capture, or any 8-bit file with no rescale, is refused: its values are
  display grey levels 0..255, not Hounsfield units.
* Every other modality (MR, US, NM, PT, OT, XA, SEG...) and every colour file
  (``PhotometricInterpretation`` RGB, YBR_*, PALETTE COLOR, or PNG/JPEG whose colour
  channels differ) is refused. A DICOM file without a ``Modality`` tag whose SOP class does not
  name one either is accepted (older exports); its rescale still decides its units.
* Empty (0-byte) files, ``.dcm`` files that are not DICOM, DICOM objects without an image
  (DICOMDIR, reports, RT plans) and files of other types are refused too.

A folder skips the refused files and logs ONE summary warning (``skipped 12 of 80 files: 7 MR,
3 US, 2 RGB``; each file at info level) and refuses when nothing usable remains; a manifest,
whose rows the user listed one by one, is refused with the count (:func:`summary`). The
refusal labels (``MR``, ``RGB``, ``empty file``...) are what the summary counts.

**Do the same pixels appear twice?** (:func:`pixel_hash`, :func:`check_duplicates`.)
Splits are checked by image content as well as by patient ID: the same pixels on two sides
(train/val/test) are refused in one line naming both files and their patient IDs; the same
pixels twice on one side with one label are kept once (a warning with the count and an
example, the dropped file recorded as skipped); the same pixels with two labels are refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth.data.readers import _dcmread, _has_dicm_magic, detect_format
from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

#: DICOM Modality values an X-ray run accepts (projection radiography)
XRAY_MODALITIES = ("CR", "DX", "DR", "RG", "MG", "PX")
#: DICOM Modality values a CT run accepts
CT_MODALITIES = ("CT",)
ACCEPTED = {"xray": XRAY_MODALITIES, "ct": CT_MODALITIES}
_RUN_NAME = {"xray": "X-ray radiograph", "ct": "CT image"}
_ARTICLE = {"xray": "an", "ct": "a"}

#: secondary capture SOP classes (single- and multi-frame)
SC_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
#: storage SOP class -> the modality it implies (used when the Modality tag is empty)
SOP_MODALITY = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX", "1.2.840.10008.5.1.4.1.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG", "1.2.840.10008.5.1.4.1.1.1.2.1": "MG",
    "1.2.840.10008.5.1.4.1.1.1.3": "IO", "1.2.840.10008.5.1.4.1.1.1.3.1": "IO",
    "1.2.840.10008.5.1.4.1.1.2": "CT", "1.2.840.10008.5.1.4.1.1.2.1": "CT", "1.2.840.10008.5.1.4.1.1.2.2": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR", "1.2.840.10008.5.1.4.1.1.4.1": "MR", "1.2.840.10008.5.1.4.1.1.4.3": "MR",
    "1.2.840.10008.5.1.4.1.1.4.4": "MR",
    "1.2.840.10008.5.1.4.1.1.3.1": "US", "1.2.840.10008.5.1.4.1.1.6.1": "US", "1.2.840.10008.5.1.4.1.1.6.2": "US",
    "1.2.840.10008.5.1.4.1.1.20": "NM",
    "1.2.840.10008.5.1.4.1.1.128": "PT", "1.2.840.10008.5.1.4.1.1.128.1": "PT", "1.2.840.10008.5.1.4.1.1.130": "PT",
    "1.2.840.10008.5.1.4.1.1.12.1": "XA", "1.2.840.10008.5.1.4.1.1.12.1.1": "XA",
    "1.2.840.10008.5.1.4.1.1.12.2": "RF", "1.2.840.10008.5.1.4.1.1.12.2.1": "RF",
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
}
_GREY = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class Refusal:
    """Why a file cannot be used in a run.

    Attributes:
        label: short category counted in summaries (``"MR"``, ``"RGB"``, ``"empty file"``).
        reason: one sentence for the user.
    """

    label: str
    reason: str


def is_secondary_capture(ds) -> bool:
    """True for the secondary capture SOP classes (``1.2.840.10008.5.1.4.1.1.7`` and ``.7.x``)."""
    sop = str(ds.get("SOPClassUID", "") or "")
    return sop == SC_SOP_PREFIX or sop.startswith(SC_SOP_PREFIX + ".")


def effective_modality(ds) -> str:
    """The DICOM ``Modality`` tag (upper case), else the modality its SOP class implies, else ``""``."""
    mod = str(ds.get("Modality", "") or "").upper().strip()
    return mod or SOP_MODALITY.get(str(ds.get("SOPClassUID", "") or ""), "")


def sop_class_name(uid: str) -> str:
    """A SOP class UID with its registered name, e.g. ``"CT Image Storage (1.2.840.10008.5.1.4.1.1.2)"``."""
    from pydicom.uid import UID

    uid = str(uid or "")
    name = UID(uid).name if uid else ""
    return f"{name} ({uid})" if name and name != uid else uid


def has_rescale(ds) -> bool:
    """True when the file states a rescale: top-level, or in its functional groups."""
    if "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
        return True
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(seq) or []
        if len(items) and "PixelValueTransformationSequence" in items[0]:
            return True
    return False


def dicom_refusal(ds, modality: str) -> Refusal | None:
    """Why a DICOM header cannot be an image of ``modality`` (``"xray"`` or ``"ct"``), or None.

    Args:
        ds: a pydicom dataset (header only is enough).
        modality: the run's modality.

    Returns:
        A :class:`Refusal` (see the module docstring for the rules) or ``None`` when usable.
    """
    if "Rows" not in ds:
        return Refusal("no image", "DICOM object without an image (DICOMDIR, report, RT plan...)")
    mod = effective_modality(ds)
    sc = is_secondary_capture(ds)
    want = _RUN_NAME[modality]
    if mod and mod not in ACCEPTED[modality]:
        return Refusal(mod, f"DICOM modality {mod}{' (secondary capture)' if sc else ''}, not {_ARTICLE[modality]} {want}")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper().strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1 or (photometric and photometric not in _GREY):
        label = photometric or f"{samples} samples per pixel"
        return Refusal(label, f"colour image (PhotometricInterpretation {label}), not a greyscale {want}")
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if modality == "ct":
        rescale = has_rescale(ds)
        if sc and (bits <= 8 or not rescale):
            return Refusal("secondary capture", f"{bits}-bit secondary capture (a screen capture) without rescale: "
                                                "display grey levels, not CT Hounsfield units")
        if bits <= 8 and not rescale:
            return Refusal("8-bit, no rescale", "8-bit pixels with no rescale: display grey levels 0..255, "
                                                "not CT Hounsfield units")
    elif sc and not mod:
        return Refusal("secondary capture", "secondary capture with no Modality: not known to be a radiograph")
    return None


def header_refusal(path: Path, modality: str) -> tuple[Refusal | None, object]:
    """Read a file's header and say whether it can be an image of ``modality``.

    Only headers are read: DICOM without pixels, NIfTI header, PNG/JPEG mode (plus pixels for
    colour modes, to tell grey saved as RGB from true colour).

    Args:
        path: the file.
        modality: ``"xray"`` or ``"ct"``.

    Returns:
        ``(refusal or None, header)``: the pydicom dataset for DICOM files (``None`` otherwise).
    """
    path = Path(path)
    fmt = detect_format(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return Refusal("unreadable", f"cannot read ({type(exc).__name__})"), None
    if fmt is None:
        return Refusal("not an image file", f"not an image file ({path.suffix or 'no extension'})"), None
    if size == 0:
        return Refusal("empty file", "empty file (0 bytes)"), None
    if fmt == "dicom":
        try:
            ds = _dcmread(path, stop_before_pixels=True)
        except MedsynthError as exc:
            label = "not DICOM" if "not a DICOM" in exc.problem else "unreadable"
            return Refusal(label, exc.problem), None
        if not _has_dicm_magic(path) and not any(k in ds for k in ("SOPClassUID", "Rows", "Modality")):
            return Refusal("not DICOM", "not a DICOM file (no 'DICM' marker, no DICOM tags)"), None
        return dicom_refusal(ds, modality), ds
    if fmt == "pil":
        return _pil_refusal(path, modality), None
    if fmt == "nifti":
        import nibabel as nib

        try:
            nib.load(str(path))
        except Exception as exc:  # any parse failure: the file is not a usable NIfTI
            return Refusal("unreadable", f"unreadable NIfTI ({type(exc).__name__})"), None
    return None, None


def _pil_refusal(path: Path, modality: str) -> Refusal | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("L", "I", "F", "1") or mode.startswith("I;16"):
                return None
            rgb = np.asarray(img.convert("RGB"))
    except Exception as exc:  # any PIL failure: the header cannot be read
        return Refusal("unreadable", f"unreadable image ({type(exc).__name__})")
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return None  # grey stored as RGB/palette
    label = "RGB" if mode in ("RGB", "RGBA", "P", "PA") else mode
    return Refusal(label, f"colour image ({mode} with differing channels), not a greyscale {_RUN_NAME[modality]}")


def summary(refusals: list[Refusal], n_files: int, *, verb: str = "skipped") -> str:
    """``"skipped 12 of 80 files: 7 MR, 3 US, 2 RGB"`` (counts per label, largest first)."""
    counts = Counter(r.label for r in refusals)
    parts = ", ".join(f"{n} {lab}" for lab, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{verb} {len(refusals)} of {n_files} files: {parts}"


def log_skipped(where, skipped: list[tuple[str, str]], refusals: list[Refusal], n_files: int) -> None:
    """One summary warning for a folder's skipped files, and each file at info level."""
    if not skipped:
        return
    log.warning("%s: %s (each file listed at info level and in the run's local/skipped_files.json)",
                where, summary(refusals, n_files))
    for rel, reason in skipped:
        log.info("skipped %s: %s", rel, reason)


# ----------------------------------------------------------------------------- content
def pixel_hash(arr) -> str:
    """sha256 of an array's bytes, shape and dtype (C order): equal iff the pixels are equal."""
    a = np.ascontiguousarray(np.asarray(arr))
    h = hashlib.sha256(f"{a.shape}|{a.dtype.str}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def tensor_hashes(images) -> list[str]:
    """:func:`pixel_hash` of each row of ``(N, ...)`` images (a tensor or an array)."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return [pixel_hash(a) for a in arr]


def check_duplicates(hashes: list[str], paths: list[str], patient_ids: list[str], splits: list[str],
                     labels: list[int], *, where, dedupe: bool = True) -> tuple[list[int], list[tuple[str, str]]]:
    """Refuse images shared between splits; keep repeated images of one split once.

    Args:
        hashes: :func:`pixel_hash` per image.
        paths: display path per image (relative to the data source).
        patient_ids, splits, labels: per image; splits ``""`` count as no side.
        where: the data source, for messages.
        dedupe: drop the repeats within a split (``False``: only refuse; nothing dropped).

    Returns:
        ``(kept indices in order, dropped)`` with ``dropped`` a list of ``(path, reason)``.

    Raises:
        MedsynthError: the same pixels on two sides (naming both files and patients), or
            with two labels.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        groups[h].append(i)
    multi = [g for g in groups.values() if len(g) > 1]

    def who(i):
        return f"{paths[i]} (patient {patient_ids[i]}, {splits[i] or 'no split'})"

    cross = [g for g in multi if len({splits[i] for i in g if splits[i]}) > 1]
    if cross:
        g = cross[0]
        a = g[0]
        b = next(i for i in g if splits[i] and splits[i] != splits[a])
        more = f"; {len(cross)} images are shared between splits" if len(cross) > 1 else ""
        raise MedsynthError(where, f"the same pixels are on two sides of the split: {who(a)} and {who(b)}{more}; "
                                   "splits must not share images (remove the copy or give both rows one patient ID)")
    conflict = [g for g in multi if len({labels[i] for i in g}) > 1]
    if conflict:
        g = conflict[0]
        a = g[0]
        b = next(i for i in g if labels[i] != labels[a])
        raise MedsynthError(where, f"the same pixels have two labels: {paths[a]} (label {labels[a]}) and "
                                   f"{paths[b]} (label {labels[b]}); {len(conflict)} such image(s)")
    if not dedupe or not multi:
        return list(range(len(hashes))), []
    drop: dict[int, int] = {}
    for g in multi:
        for i in g[1:]:
            drop[i] = g[0]
    dropped = [(paths[i], f"same pixels as {paths[k]} (duplicate kept once)") for i, k in sorted(drop.items())]
    i0, k0 = next(iter(sorted(drop.items())))
    log.warning("%s: %d duplicate image(s) (same pixels, same split and label) kept once, e.g. %s = %s",
                where, len(drop), paths[i0], paths[k0])
    return [i for i in range(len(hashes)) if i not in drop], dropped


def relative(path: str, base: Path) -> str:
    """``path`` relative to ``base`` (posix), or the name alone when it lies elsewhere."""
    try:
        rel = os.path.relpath(path, base)
    except ValueError:
        return Path(path).name
    return Path(rel).as_posix() if not rel.startswith("..") else Path(path).name

