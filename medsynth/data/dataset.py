"""Load a set of images (manifest, folder, .npz or the LIDC folder) as model-ready tensors.

:func:`load_image_set` reads every image with :mod:`medsynth.data.readers` (native units),
turns it into a channel-first array, runs the modality's MONAI pipeline
(:mod:`medsynth.data.transforms`) once per image and stacks the results: the whole set is
kept as precomputed tensors (the data sets here are small; this is what MONAI's
``CacheDataset`` with ``cache_rate=1`` would hold). With ``cache_dir`` the stacked result is
also stored as an ``.npz`` keyed by a hash of the files (paths, sizes, mtimes) and the
pipeline parameters, so a second load skips decoding.

Sources:

* **manifest CSV** (:mod:`medsynth.data.manifest`): rows of the requested modality. X-ray uses
  ``radiograph`` rows. CT with ``spatial_dims=2`` uses ``slice`` rows when the manifest has
  any, else one axial slice per ``volume`` row: the slice where the row's ``mask`` has the
  largest area when a mask is given, else the central slice. CT with ``spatial_dims=3`` uses
  ``volume`` rows. When the same images are listed in several formats, one format per
  patient is used (``dicom > dicom_series > nifti > png > npz``).
* **folder**: scanned recursively for DICOM, NIfTI, PNG/JPEG and ``.npz`` files. Multi-slice
  DICOM series (grouped by ``SeriesInstanceUID``) form volumes; other DICOM files are single
  images. Files that cannot be images of the run's modality (other modalities, colour, empty,
  not DICOM, no image, other file types: :mod:`medsynth.data.checks`) are skipped with ONE
  summary warning (``skipped 12 of 80 files: 7 MR, 3 US, 2 RGB``), each named at info level
  and in ``ImageSet.skipped``; a folder with nothing usable is refused. The scan reads headers
  only: a file that passes it but whose pixels cannot be decoded stops the load. Labels come
  from ``labels.csv`` in the folder when present (columns ``path`` or ``file`` relative to
  the folder (or a bare file name), ``label``, optional ``patient_id``, ``split``), else -1;
  patient ids from ``labels.csv``, else the DICOM ``PatientID``, else the file stem.
* **.npz**: ``images`` ``(N, H, W)``/``(N, 1, H, W)`` (or ``(N, D, H, W)`` volumes), optional
  ``labels``, ``patient_ids``, ``splits`` (or ``split``), ``masks``.
* **LIDC folder** (holds ``nodules_axial_50px.npz``): handed to
  ``medsynth.data.lidc.load_lidc``.

A manifest lists its files one by one, so an unsuitable file listed in it is not skipped: the
manifest is refused with the count per reason. A file listed twice is loaded once
(:func:`medsynth.data.manifest.drop_duplicate_rows`); one listed under two patient IDs or with
two labels is refused.

Where a source has no split information, a patient-level split (60/20/20, seed 0, stratified
by label; :func:`medsynth.data.manifest.patient_split`) is assigned.

Splits are checked by content too: every image's decoded pixels are hashed
(:func:`medsynth.data.checks.pixel_hash`) and the same pixels on two sides of the split are
refused in one line naming both files and patients, whatever their patient IDs say; the same
pixels twice on one side with one label are kept once (warning, ``ImageSet.skipped``). The
check covers the rows loaded: with ``split=`` (training) that split alone; every consumer of
several splits (evaluate, benchmark) loads them together and so gets the full check.

CT images given as PNG/JPEG grey levels are assumed to have been written in the requested
``ct_window``: grey 0..max maps back to that window's HU range before the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medsynth.atomic import atomic_path
from medsynth.data import lidc
from medsynth.data.checks import Refusal, check_duplicates, header_refusal, log_skipped, pixel_hash, relative, summary
from medsynth.data.imageset import ImageSet
from medsynth.data.manifest import drop_duplicate_rows, patient_split, read_manifest, select_rows
from medsynth.data.readers import (
    _iter_files,
    _read_series,
    detect_format,
    load_npz_arrays,
    read_image,
    take_slices,
)
from medsynth.data.transforms import pipeline_for
from medsynth.data.windows import unit_to_hu
from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

_CACHE_VERSION = 2
_SPLIT_ALIASES = {"valid": "val", "validation": "val", "training": "train", "testing": "test"}


@dataclass
class _Item:
    """One image to load: either a file to read or an array already in memory."""

    path: str
    label: int
    patient_id: str
    split: str
    mask: str = ""
    array: np.ndarray | None = None  # native units, (H, W) or (D, H, W)
    mask_array: np.ndarray | None = None
    series: tuple | None = None  # (uid, [(file, header)]) for DICOM series found in a folder


# ----------------------------------------------------------------------------- public entry
def load_two_domains(source_a: str | Path, source_b: str | Path, **kwargs) -> "ImageSet":
    """Two unpaired domains from two sources as one set: A's images labelled 0, B's labelled 1.

    Args:
        source_a, source_b: anything :func:`load_image_set` reads (folder, manifest, ``.npz``).
        **kwargs: :func:`load_image_set` arguments, applied to both.

    Returns:
        ``ImageSet`` with A's rows first; the files' own labels are replaced by the domain;
        ``skipped`` paths are prefixed ``domain_a/`` or ``domain_b/``.

    Raises:
        MedsynthError: a domain has no images (naming it).
    """
    sets = []
    for name, src in (("--domain-a", source_a), ("--domain-b", source_b)):
        s = load_image_set(src, **kwargs)
        if len(s) == 0:
            raise MedsynthError(name, f"no images in {src} (split {kwargs.get('split')})")
        sets.append(s)
    return join_domains(*sets)


def join_domains(a: ImageSet, b: ImageSet) -> ImageSet:
    """Two loaded domains as one set (:func:`load_two_domains`): A's rows first labelled 0, B's
    labelled 1, skipped paths prefixed ``domain_a/`` / ``domain_b/``."""
    skipped = [(f"domain_a/{p}", r) for p, r in a.skipped] + [(f"domain_b/{p}", r) for p, r in b.skipped]
    return ImageSet(images=torch.cat([a.images, b.images]),
                    labels=torch.cat([torch.zeros(len(a), dtype=torch.long), torch.ones(len(b), dtype=torch.long)]),
                    patient_ids=list(a.patient_ids) + list(b.patient_ids), paths=list(a.paths) + list(b.paths),
                    splits=list(a.splits) + list(b.splits), modality=a.modality, skipped=skipped)


def load_image_set(
    source: str | Path,
    *,
    modality: str = "xray",
    size: int = 64,
    spatial_dims: int = 2,
    split: str | None = None,
    ct_window: str | tuple[float, float] = "lung",
    cache_dir: str | Path | None = None,
) -> ImageSet:
    """Load images as an :class:`ImageSet` of float32 tensors in [-1, 1].

    Args:
        source: a manifest CSV, a folder of images/DICOM, a ``.npz``, or the LIDC folder
            (holding ``nodules_axial_50px.npz``).
        modality: ``"xray"`` or ``"ct"`` (the LIDC folder is always CT).
        size: output side length (images become ``(1, size, size)`` or ``(1, size, size, size)``).
        spatial_dims: 2 (images/slices) or 3 (CT volumes).
        split: keep only ``"train"``, ``"val"`` or ``"test"``.
        ct_window: CT window name or ``(centre, width)`` HU.
        cache_dir: optional folder for an on-disk cache of the result.

    Returns:
        :class:`ImageSet` with ``images`` ``(N, 1, size, size)`` (2D) or
        ``(N, 1, size, size, size)`` (3D).

    Raises:
        MedsynthError: missing/unreadable sources or files, no images of the modality,
            constant or non-finite images, unsuitable files listed in a manifest (or given
            alone), the same pixels on two sides of the split or with two labels, a file under
            two patient IDs, an uneven CT series.
    """
    source = Path(source)
    check_request(source, modality=modality, spatial_dims=spatial_dims, split=split)

    if is_lidc_folder(source):
        if modality != "ct":
            log.info("%s is the LIDC CT folder; loading it as CT", source)
        ims = lidc.load_lidc(source, spatial_dims=spatial_dims, size=size, ct_window=ct_window)
        return ims.split(split) if split is not None else ims

    params = dict(v=_CACHE_VERSION, source=str(source.resolve()), modality=modality, size=int(size),
                  spatial_dims=spatial_dims, split=split, ct_window=list(ct_window) if not isinstance(ct_window, str) else ct_window)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"imageset-{_fingerprint(source, params)}.npz"
        if cache_file.exists():
            try:
                log.info("loading cached image set %s", cache_file)
                cached = _load_cache(cache_file)
                if cached.skipped:
                    log.warning("%s: %d file(s) skipped when this cached set was built, e.g. %s (%s)",
                                source, len(cached.skipped), *cached.skipped[0])
                return cached
            except Exception as exc:  # a damaged cache is rebuilt, not fatal
                log.warning("ignoring unreadable cache %s (%s)", cache_file, exc)

    items, skipped = _collect_items(source, modality=modality, spatial_dims=spatial_dims, split=split)
    ims = _build(items, modality=modality, size=size, spatial_dims=spatial_dims, ct_window=ct_window,
                 where=source, base=source_base(source), skipped=skipped)
    if cache_file is not None:
        _save_cache(cache_file, ims)
    return ims


def check_request(source: Path, *, modality: str, spatial_dims: int, split: str | None) -> None:
    """Refuse a load request :func:`load_image_set` cannot serve (bad modality, dims, split; no source).

    Raises:
        MedsynthError: one line saying what is wrong.
    """
    if modality not in ("xray", "ct"):
        raise MedsynthError(None, f"modality must be 'xray' or 'ct', got {modality!r}")
    if spatial_dims not in (2, 3):
        raise MedsynthError(None, f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if spatial_dims == 3 and modality != "ct":
        raise MedsynthError(None, "3D (spatial_dims=3) images are only available for CT")
    if split is not None and split not in ("train", "val", "test"):
        raise MedsynthError(None, f"split must be train, val or test, got {split!r}")
    if not Path(source).exists():
        raise MedsynthError(source, "not found")


def is_lidc_folder(source: Path) -> bool:
    """Whether ``source`` is the LIDC folder (it holds ``nodules_axial_50px.npz``)."""
    return source.is_dir() and (source / "nodules_axial_50px.npz").exists()


def source_base(source: Path) -> Path:
    """The folder a source's paths are shown relative to (the folder itself, or the file's folder)."""
    return source if source.is_dir() else source.parent


def _collect_items(source: Path, *, modality: str, spatial_dims: int,
                   split: str | None) -> tuple[list[_Item], list[tuple[str, str]]]:
    """The images a (non-LIDC) source offers for ``split``, from headers only (no pixel decoding),
    with splits assigned where missing, and the source's skipped files ``(relative path, reason)``.

    Raises:
        MedsynthError: what :func:`load_image_set` refuses before decoding (unsuitable files of a
            manifest, no images of the modality, none in the split).
    """
    skipped: list[tuple[str, str]] = []
    if source.is_file() and source.suffix.lower() == ".csv":
        items = _items_from_manifest(source, modality, spatial_dims, split)
    elif source.is_file() and source.suffix.lower() == ".npz":
        items = _items_from_npz(source, modality, spatial_dims)
    elif source.is_dir():
        items, skipped = _items_from_folder(source, modality, spatial_dims)
    else:
        refusal, _ = header_refusal(source, modality)
        if refusal is not None:
            raise MedsynthError(source, f"{refusal.reason} (a {modality} run)")
        rec = read_image(source, modality=modality)
        items = [_Item(str(source), -1, source.stem, "", array=rec.array)]

    if not items:
        raise MedsynthError(source, f"no {modality} images found")
    if any(not it.split for it in items):
        _assign_splits(items)
    if split is not None:
        items = [it for it in items if it.split == split]
        if not items:
            raise MedsynthError(source, f"no {modality} images in split {split!r}")
    return items, skipped


# ----------------------------------------------------------------------------- sources
def _items_from_manifest(csv: Path, modality: str, spatial_dims: int, split: str | None) -> list[_Item]:
    df = drop_duplicate_rows(read_manifest(csv), path=csv)
    if "modality" in df.columns:
        df = df[df["modality"].isin([modality, ""])]
    if "split" not in df.columns or (df["split"] == "").any():
        # assign splits over the whole selection before any split filter
        df = df.assign(split=df["split"] if "split" in df.columns else "")
        missing = df["split"] == ""
        if missing.any():
            df.loc[missing, "split"] = patient_split(df[missing], seed=0)["split"]
    if split is not None:
        df = df[df["split"] == split]
    if "kind" in df.columns and (df["kind"] != "").any():
        kinds = set(df["kind"])
        if modality == "xray":
            want = "radiograph" if "radiograph" in kinds else None
        elif spatial_dims == 3:
            want = "volume"
        else:
            want = "slice" if "slice" in kinds else "volume"
        if want is not None:
            df = df[df["kind"].isin([want, ""])]
    df = select_rows(df)
    _refuse_unsuitable(list(df["path"]), csv, modality)
    items = []
    for r in df.to_dict("records"):
        items.append(_Item(str(r["path"]), int(r["label"]), str(r["patient_id"]), str(r.get("split", "") or ""),
                           mask=str(r.get("mask", "") or "")))
    return items


def _refuse_unsuitable(paths: list[str], csv: Path, modality: str) -> None:
    """Refuse a manifest listing files that cannot be images of ``modality``, with the count.

    Each listed file is checked from its header (:func:`medsynth.data.checks.header_refusal`);
    a listed DICOM series folder has each of its DICOM files checked (files of other types and
    DICOM objects without an image in it are ignored, as the series reader does).
    """
    refused: list[tuple[str, Refusal]] = []
    n = 0
    base = csv.resolve().parent
    for p in map(Path, paths):
        files = [f for f in _iter_files(p) if detect_format(f) == "dicom"] if p.is_dir() else [p]
        for f in files:
            n += 1
            refusal, _ = header_refusal(f, modality)
            if refusal is not None and not (p.is_dir() and refusal.label == "no image"):
                refused.append((relative(str(f), base), refusal))
    if refused:
        rel, first = refused[0]
        raise MedsynthError(csv, f"{summary([r for _, r in refused], n, verb='refused')} listed for this "
                                 f"{modality} run (e.g. {rel}: {first.reason}); a manifest lists each file on purpose, so "
                                 "none is skipped: remove or fix those rows")


def _items_from_npz(path: Path, modality: str, spatial_dims: int) -> list[_Item]:
    arrays = load_npz_arrays(path)
    if "images" in arrays:
        images = arrays["images"]
    elif len(arrays) == 1:
        images = next(iter(arrays.values()))
    else:
        raise MedsynthError(path, f"expected an array 'images'; found {', '.join(arrays) or 'none'}")
    want = 2 + spatial_dims  # (N, C, *S)
    if images.ndim == want and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim not in (3, 4) or (spatial_dims == 3 and images.ndim != 4):
        raise MedsynthError(path, f"'images' has shape {images.shape}; expected (N, H, W) or (N, D, H, W)")
    n = images.shape[0]
    masks = arrays.get("masks")
    if masks is not None and masks.shape[0] == n and masks.ndim == images.ndim + 1 and masks.shape[1] == 1:
        masks = masks[:, 0]

    def _get(*keys):
        for k in keys:
            if k in arrays:
                v = np.asarray(arrays[k]).reshape(-1)
                if len(v) != n:
                    raise MedsynthError(path, f"'{k}' has {len(v)} entries for {n} images")
                return v
        return None

    labels = _get("labels", "label")
    pids = _get("patient_ids", "patient_id")
    splits = _get("splits", "split")
    items = []
    for i in range(n):
        sp = str(splits[i]).lower() if splits is not None else ""
        items.append(_Item(
            path=f"{path}#{i}",
            label=int(labels[i]) if labels is not None else -1,
            patient_id=str(pids[i]) if pids is not None else f"{path.stem}_{i:05d}",
            split=_SPLIT_ALIASES.get(sp, sp),
            array=images[i],
            mask_array=masks[i] if masks is not None and masks.shape == images.shape else None,
        ))
    return items


def _read_labels_csv(folder: Path) -> dict[str, dict]:
    f = folder / "labels.csv"
    if not f.is_file():
        return {}
    try:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise MedsynthError(f, f"unreadable CSV ({type(exc).__name__})") from None
    key = next((c for c in ("path", "file", "filename", "name") if c in df.columns), None)
    if key is None or "label" not in df.columns:
        raise MedsynthError(f, "labels.csv needs a 'path' (or 'file') column and a 'label' column")
    out = {}
    for line, r in enumerate(df.to_dict("records"), start=2):
        try:
            r["label"] = int(float(r["label"])) if str(r["label"]).strip() != "" else -1
        except ValueError:
            raise MedsynthError(f, f"label {r['label']!r} is not an integer") from None
        k = Path(str(r[key])).as_posix().lstrip("./")
        if k in out:
            prev = out[k]
            for col, what in (("patient_id", "patient IDs"), ("label", "labels")):
                if str(prev.get(col, "")) != str(r.get(col, "")):
                    raise MedsynthError(f, f"{k} is listed under two {what} ({prev.get(col)} on line {prev['_line']}, "
                                           f"{r.get(col)} on line {line}); a file belongs to one patient and one label")
            log.warning("%s: %s listed again on line %d (kept once)", f, k, line)
            continue
        r["_line"] = line
        out[k] = r
    return out


def _lookup(labels: dict, folder: Path, path: Path) -> dict:
    if not labels:
        return {}
    rel = path.relative_to(folder).as_posix()
    for k in (rel, path.name, path.stem.replace(".nii", "")):
        if k in labels:
            return labels[k]
    return {}


def _items_from_folder(folder: Path, modality: str, spatial_dims: int) -> tuple[list[_Item], list[tuple[str, str]]]:
    """The folder's usable images (sorted by path) and its skipped files ``(relative path, reason)``.

    Raises:
        MedsynthError: an empty folder, or no usable image of ``modality`` (with the summary).
    """
    labels = _read_labels_csv(folder)
    items: list[_Item] = []
    dicom: dict[str, list] = {}
    skipped: list[tuple[str, str]] = []
    refusals: list[Refusal] = []
    n_all = n_files = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            n_all += 1
            if name == "labels.csv":
                continue
            n_files += 1
            refusal, ds = header_refusal(f, modality)
            if refusal is not None:
                skipped.append((relative(str(f), folder), refusal.reason))
                refusals.append(refusal)
                continue
            fmt = detect_format(f)
            if fmt == "dicom":
                uid = str(ds.get("SeriesInstanceUID", "")) or f"<no-uid:{f}>"
                dicom.setdefault(uid, []).append((f, ds))
                continue
            if fmt == "npz":
                items.extend(_items_from_npz(f, modality, spatial_dims))
                continue
            lab = _lookup(labels, folder, f)
            stem = f.name.split(".")[0]
            items.append(_Item(str(f), int(lab.get("label", -1)), str(lab.get("patient_id") or stem),
                               str(lab.get("split", "") or "").lower()))
    if n_all == 0:
        raise MedsynthError(folder, "empty folder")
    for uid, group in sorted(dicom.items()):
        is_volume = len(group) > 1 and all(int(d.get("NumberOfFrames", 1) or 1) == 1 for _, d in group) \
            and modality == "ct"
        if is_volume:
            parent = Path(os.path.commonpath([str(f) for f, _ in group]))
            lab = _lookup(labels, folder, parent) if parent != folder else {}
            pid = str(lab.get("patient_id") or group[0][1].get("PatientID", "") or parent.name)
            items.append(_Item(str(parent), int(lab.get("label", -1)), pid, str(lab.get("split", "") or "").lower(),
                               series=(uid, group)))
        else:
            for f, d in group:
                lab = _lookup(labels, folder, f)
                pid = str(lab.get("patient_id") or d.get("PatientID", "") or f.stem)
                items.append(_Item(str(f), int(lab.get("label", -1)), pid, str(lab.get("split", "") or "").lower()))
    if not items:
        detail = f": {summary(refusals, n_files)}" if refusals else ""
        raise MedsynthError(folder, f"no {modality} images found{detail}")
    log_skipped(folder, skipped, refusals, n_files)
    items.sort(key=lambda it: it.path)
    return items, skipped


def _assign_splits(items: list[_Item]) -> None:
    todo = [i for i, it in enumerate(items) if not it.split]
    df = pd.DataFrame({"patient_id": [items[i].patient_id for i in todo], "label": [items[i].label for i in todo]})
    sp = patient_split(df, seed=0)["split"].tolist()
    for i, s in zip(todo, sp):
        items[i].split = s


# ----------------------------------------------------------------------------- loading
def _native(item: _Item, modality: str, ct_window) -> tuple[np.ndarray, np.ndarray | None]:
    """The item's array in native units (HU for CT) and its mask (or None)."""
    mask = item.mask_array
    if item.array is not None:
        return np.asarray(item.array, dtype=np.float32), mask
    if item.series is not None:
        rec = _read_series(item.series[0], item.series[1], modality)
    else:
        rec = read_image(item.path, modality=modality)
    arr = rec.array
    if modality == "ct" and rec.meta.get("format") not in ("dicom", "dicom_series", "nifti", "npz"):
        # display grey levels (PNG/JPEG) -> HU of the window they were written in
        top = 65535.0 if str(rec.meta.get("pil_mode", "L")).startswith("I") else 255.0
        arr = unit_to_hu(arr / top * 2.0 - 1.0, ct_window).astype(np.float32)
    if item.mask:
        mask = read_image(item.mask).array
        if mask.shape != arr.shape:
            raise MedsynthError(item.mask, f"mask shape {mask.shape} differs from image shape {arr.shape} ({item.path})")
    return arr, mask


def _prepare(item: _Item, modality: str, spatial_dims: int, ct_window) -> np.ndarray:
    """Native array -> channel-first (1, *S) array of the right dimensionality."""
    arr, mask = _native(item, modality, ct_window)
    if spatial_dims == 2:
        if arr.ndim == 3:
            if modality != "ct":
                if arr.shape[0] == 1:
                    arr = arr[0]
                else:
                    raise MedsynthError(item.path, f"expected a 2D radiograph, got a {arr.ndim}D array of shape {arr.shape}")
            else:
                arr = take_slices(arr, n=1, mask=mask if mask is not None and mask.shape == arr.shape else None)[0][0]
    elif arr.ndim != 3:
        raise MedsynthError(item.path, f"expected a 3D volume for spatial_dims=3, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise MedsynthError(item.path, "image has non-finite values (NaN or inf)")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise MedsynthError(item.path, f"constant image (every value = {lo:g}): no contrast for a model to learn from")
    return np.ascontiguousarray(arr[None], dtype=np.float32)


def _build(items: list[_Item], *, modality: str, size: int, spatial_dims: int, ct_window, where: Path,
           base: Path, skipped: list[tuple[str, str]]) -> ImageSet:
    """Decode, check by content (:func:`medsynth.data.checks.check_duplicates`) and transform the items.

    ``where`` names the source in messages, ``base`` is the folder paths are shown relative
    to, ``skipped`` the source's files already left out (the repeats dropped here are added).
    """
    pipe = pipeline_for(modality, size, window=ct_window, spatial_dims=spatial_dims)
    out = torch.empty((len(items), 1) + (int(size),) * spatial_dims, dtype=torch.float32)
    hashes = []
    for i, it in enumerate(items):
        x = _prepare(it, modality, spatial_dims, ct_window)
        hashes.append(pixel_hash(x))
        out[i] = pipe({"image": x})["image"]
    shown = [relative(it.path, base) for it in items]
    keep, dropped = check_duplicates(hashes, shown, [it.patient_id for it in items], [it.split for it in items],
                                     [it.label for it in items], where=where)
    items = [items[i] for i in keep]
    if dropped:
        out = out[torch.as_tensor(keep, dtype=torch.long)]
    log.info("loaded %d %s images at %d px", len(items), modality, size)
    return ImageSet(
        images=out,
        labels=torch.tensor([it.label for it in items], dtype=torch.int64),
        patient_ids=[it.patient_id for it in items],
        paths=[it.path for it in items],
        splits=[it.split for it in items],
        modality=modality,
        skipped=sorted(skipped + dropped),
    )


# ----------------------------------------------------------------------------- cache
def _fingerprint(source: Path, params: dict) -> str:
    """Hash of the pipeline parameters and every file's path, size and mtime under ``source``.

    For a manifest, the files it lists (and their folders' contents) are included.
    """
    h = hashlib.sha1(json.dumps(params, sort_keys=True).encode())

    def add(p: Path):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    add(Path(root) / f)
            return
        try:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())

    add(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        try:
            df = pd.read_csv(source, dtype=str, keep_default_na=False)
        except Exception:
            df = pd.DataFrame()
        base = source.resolve().parent
        for col in ("path", "mask"):
            if col in df.columns:
                for v in df[col]:
                    if v:
                        q = Path(v)
                        add(q if q.is_absolute() else base / q)
    return h.hexdigest()[:20]


def _save_cache(cache_file: Path, ims: ImageSet) -> None:
    with atomic_path(cache_file, ".npz.tmp") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=ims.images.numpy(), labels=ims.labels.numpy(),
                 patient_ids=np.array(ims.patient_ids, dtype=str), paths=np.array(ims.paths, dtype=str),
                 splits=np.array(ims.splits, dtype=str), modality=np.array(ims.modality),
                 skipped=np.array(ims.skipped, dtype=str).reshape(-1, 2))


def _load_cache(cache_file: Path) -> ImageSet:
    with np.load(cache_file, allow_pickle=False) as z:
        return ImageSet(
            images=torch.from_numpy(z["images"].copy()),
            labels=torch.from_numpy(z["labels"].copy()),
            patient_ids=[str(s) for s in z["patient_ids"]],
            paths=[str(s) for s in z["paths"]],
            splits=[str(s) for s in z["splits"]],
            modality=str(z["modality"]),
            skipped=[(str(p), str(r)) for p, r in z["skipped"]],
        )
