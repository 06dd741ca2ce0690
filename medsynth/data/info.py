"""``medsynth info PATH``: what is in an image file, a folder, a manifest or an .npz.

:func:`describe` returns a plain, JSON-serialisable ``dict`` (the CLI prints it); it never
prints. Keys present depend on what ``path`` is:

* every result: ``path``, ``kind`` (``"image"``, ``"folder"``, ``"manifest"``, ``"npz"``).
* image: ``format``, ``modality``, ``shape``, ``spacing_mm``, ``intensity`` (min, max, mean,
  p0.5, p50, p99.5 in native units: HU for CT), ``photometric``, ``dicom_modality``,
  ``sop_class`` (name and UID), ``rescale`` (where an enhanced file's rescale came from),
  ``transfer_syntax``, ``series_uid``, ``patient_id`` where known, and ``usable`` (run
  modality -> ``"yes"`` or ``"no: <why it would be refused or skipped>"``,
  :mod:`medsynth.data.checks`).
* folder: ``files`` (count per format), ``series`` (DICOM series: uid, modality, slices, patient),
  ``labels`` (label -> count from ``labels.csv``), ``first_image`` (the description of the
  first readable image), ``lidc`` (True for the LIDC folder), ``would_skip`` (run modality ->
  the summary line a load of the folder would log, or ``"nothing"``).
* manifest: ``rows``, ``columns``, ``patients``, ``missing_files``, ``duplicate_rows`` (rows
  repeating a file, loaded once), ``labels`` (label -> count) and ``counts`` (column -> value ->
  count for ``modality``, ``format``, ``kind``, ``split``, ``source``).
* npz: ``arrays`` (name -> shape, dtype) and, for ``images``, ``intensity`` and ``labels``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from medsynth.errors import MedsynthError

from .checks import dicom_refusal, header_refusal, sop_class_name, summary
from .readers import (
    _dcmread,
    detect_format,
    dicom_modality,
    guess_modality,
    load_npz_arrays,
    read_image,
)

_RUNS = ("xray", "ct")


def _refusals(path: Path) -> dict:
    """Run modality -> the file's :class:`~medsynth.data.checks.Refusal` (or None), one header read."""
    ref, ds = header_refusal(path, _RUNS[0])
    out = {_RUNS[0]: ref}
    for m in _RUNS[1:]:
        out[m] = dicom_refusal(ds, m) if ds is not None else (header_refusal(path, m)[0] if ref is None else ref)
    return out


def _intensity(arr: np.ndarray) -> dict:
    a = np.asarray(arr, dtype=np.float64).ravel()
    p = np.percentile(a, [0.5, 50, 99.5]) if a.size else [float("nan")] * 3
    return {
        "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
        "p0.5": float(p[0]), "p50": float(p[1]), "p99.5": float(p[2]),
    }


def _counts(values) -> dict:
    return {str(k): int(v) for k, v in sorted(Counter(values).items(), key=lambda kv: str(kv[0]))}


def describe(path: str | Path) -> dict:
    """Describe an image file, DICOM/image folder, manifest CSV or ``.npz``.

    Args:
        path: what to describe.

    Returns:
        A JSON-serialisable dict (see the module docstring for its keys).

    Raises:
        MedsynthError: missing path, unreadable file, unsupported type.
    """
    path = Path(path)
    if not path.exists():
        raise MedsynthError(path, "not found")
    if path.is_dir():
        return _describe_folder(path)
    if path.suffix.lower() == ".csv":
        return _describe_manifest(path)
    if path.suffix.lower() == ".npz":
        return _describe_npz(path)
    return _describe_image(path)


def _describe_image(path: Path, *, series_uid: str | None = None) -> dict:
    rec = read_image(path, series_uid=series_uid)
    modality = rec.modality if rec.modality != "unknown" else guess_modality(rec.array)
    out = {
        "path": str(path),
        "kind": "image",
        "format": rec.meta.get("format"),
        "modality": modality,
        "shape": list(rec.array.shape),
        "spacing_mm": [round(float(s), 4) for s in rec.spacing],
        "intensity": _intensity(rec.array),
    }
    for k in ("photometric", "dicom_modality", "transfer_syntax", "series_uid", "patient_id", "n_slices", "frames",
              "rescale"):
        v = rec.meta.get(k)
        if v not in (None, ""):
            out[k] = v
    if rec.meta.get("sop_class"):
        out["sop_class"] = sop_class_name(rec.meta["sop_class"])
    if path.is_file():
        out["usable"] = {m: "yes" if r is None else f"no: {r.reason}" for m, r in _refusals(path).items()}
    return out


def _describe_folder(folder: Path) -> dict:
    formats: Counter = Counter()
    series: dict[str, dict] = {}
    refused: dict[str, list] = {m: [] for m in _RUNS}
    first = None
    n = n_files = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            n += 1
            f = Path(root) / name
            fmt = detect_format(f)
            if name == "labels.csv":
                continue
            n_files += 1
            for m, r in _refusals(f).items():
                if r is not None:
                    refused[m].append(r)
            formats[fmt or "other"] += 1
            if fmt == "dicom":
                try:
                    ds = _dcmread(f, stop_before_pixels=True)
                except MedsynthError:
                    formats["dicom_unreadable"] += 1
                    continue
                if "Rows" not in ds:
                    continue
                uid = str(ds.get("SeriesInstanceUID", "")) or "<none>"
                s = series.setdefault(uid, {
                    "series_uid": uid,
                    "modality": dicom_modality(ds.get("Modality")),
                    "dicom_modality": str(ds.get("Modality", "")),
                    "patient_id": str(ds.get("PatientID", "")),
                    "slices": 0,
                    "folder": str(f.parent.relative_to(folder)),
                })
                s["slices"] += int(ds.get("NumberOfFrames", 1) or 1)
            if first is None and fmt in ("dicom", "nifti", "pil"):
                try:
                    first = _describe_image(f)
                except MedsynthError:
                    pass
    if n == 0:
        raise MedsynthError(folder, "empty folder")
    out = {"path": str(folder), "kind": "folder", "files": dict(formats), "series": list(series.values()),
           "would_skip": {m: summary(r, n_files) if r else "nothing" for m, r in refused.items()}}
    if (folder / "nodules_axial_50px.npz").exists():
        out["lidc"] = True
    labels_csv = folder / "labels.csv"
    if labels_csv.is_file():
        import pandas as pd

        try:
            df = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
        except Exception as exc:
            raise MedsynthError(labels_csv, f"unreadable CSV ({type(exc).__name__})") from None
        col = "label" if "label" in df.columns else ("malignancy_class" if "malignancy_class" in df.columns else None)
        if col:
            out["labels"] = _counts(df[col])
        out["labels_rows"] = len(df)
    if first is not None:
        out["first_image"] = first
    return out


def _describe_manifest(csv: Path) -> dict:
    from .manifest import drop_duplicate_rows, read_manifest

    df = read_manifest(csv, check_files=False)
    n_dup = len(df) - len(drop_duplicate_rows(df, path=csv))
    missing = [p for p in df["path"] if not os.path.exists(p)]
    out = {
        "path": str(csv),
        "kind": "manifest",
        "rows": int(len(df)),
        "columns": list(map(str, df.columns)),
        "patients": int(df["patient_id"].nunique()),
        "missing_files": len(missing),
        "duplicate_rows": n_dup,
        "labels": _counts(df["label"].tolist()),
    }
    out["counts"] = {col: _counts(df[col].tolist()) for col in ("modality", "format", "kind", "split", "source")
                     if col in df.columns}
    return out


def _describe_npz(path: Path) -> dict:
    arrays = load_npz_arrays(path)
    out = {
        "path": str(path),
        "kind": "npz",
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
    }
    images = arrays.get("images", next(iter(arrays.values())) if len(arrays) == 1 else None)
    if images is not None and np.issubdtype(images.dtype, np.number) and images.size:
        out["images"] = int(images.shape[0]) if images.ndim >= 3 else 1
        out["intensity"] = _intensity(images)
        out["modality"] = guess_modality(images)
    for k in ("labels", "label"):
        if k in arrays:
            out["labels"] = _counts(np.asarray(arrays[k]).reshape(-1).tolist())
            break
    return out
