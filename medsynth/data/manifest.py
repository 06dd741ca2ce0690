"""CSV manifests of images and patient-level train/val/test splits.

A manifest has the required columns ``path``, ``label``, ``patient_id`` and the optional
columns ``split`` (train|val|test), ``mask``, ``modality`` (xray|ct), ``format``
(dicom|dicom_series|nifti|png|npz), ``kind`` (radiograph|slice|volume), ``source``
(real|synthetic|translated: CycleGAN translations of real images); any other column is kept.
Paths are relative to the CSV's folder (absolute paths are allowed). :func:`read_manifest`
returns them resolved to absolute paths and :func:`write_manifest` writes them back relative to
the CSV.

One file is one patient's: a path listed under two patient IDs, or with two labels, is refused
(:func:`check_duplicate_paths`, on every read); a row repeating a file already listed (same path
and kind) is dropped with a warning by :func:`drop_duplicate_rows` (the loaders call it), so no
image is trained on twice.

Format preference (:func:`select_rows`): when the same images are stored in several formats,
one format is kept per patient (and kind), in the order ``dicom > dicom_series > nifti > png >
npz`` (any other format last): the richest header (units, spacing) wins.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from medsynth.atomic import atomic_path
from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label", "patient_id")
SPLITS = ("train", "val", "test")
#: preferred format first
FORMAT_PREFERENCE = ("dicom", "dicom_series", "nifti", "png", "npz")
_PATH_COLUMNS = ("path", "mask")


def _resolve(value, base: Path) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return ""
    p = Path(str(value).strip())
    return str(p if p.is_absolute() else (base / p))


def read_manifest(csv: str | Path, *, check_files: bool = True) -> pd.DataFrame:
    """Read a manifest CSV.

    Args:
        csv: the manifest file.
        check_files: raise if any ``path`` (or non-empty ``mask``) does not exist.

    Returns:
        DataFrame with ``path`` (and ``mask``) as absolute path strings, ``label`` int64
        (-1 = unknown), ``patient_id`` str, and ``split`` str when present.

    Raises:
        MedsynthError: unreadable CSV, missing required columns, bad labels or splits,
            missing files (the first few listed with the count), a patient in two splits, a
            file listed under two patient IDs or with two labels.
    """
    csv = Path(csv)
    if not csv.is_file():
        raise MedsynthError(csv, "manifest file not found")
    try:
        df = pd.read_csv(csv, dtype={"patient_id": str}, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise MedsynthError(csv, f"unreadable CSV ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    df.columns = [str(c).strip().lstrip("\ufeff") for c in df.columns]
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing_cols:
        raise MedsynthError(csv, f"missing required column(s) {', '.join(missing_cols)}; has {', '.join(map(str, df.columns))}")
    if len(df) == 0:
        raise MedsynthError(csv, "manifest has no rows")
    base = csv.resolve().parent
    for col in _PATH_COLUMNS:
        if col in df.columns:
            df[col] = [_resolve(v, base) for v in df[col]]
    if (df["path"] == "").any():
        rows = [int(i) for i in np.flatnonzero(df["path"] == "")[:5] + 2]
        raise MedsynthError(csv, f"empty 'path' on line(s) {rows}")
    labels = pd.to_numeric(df["label"].replace("", np.nan), errors="coerce")
    bad = labels.notna() & (labels != labels.round())
    if bad.any() or (df["label"].notna() & labels.isna()).any():
        bad_rows = [int(i) for i in np.flatnonzero(bad | (df["label"].notna() & labels.isna()))[:5] + 2]
        raise MedsynthError(csv, f"'label' must be an integer (or empty for unknown); bad on line(s) {bad_rows}")
    df["label"] = labels.fillna(-1).astype(np.int64)
    df["patient_id"] = df["patient_id"].fillna("").astype(str)
    if (df["patient_id"] == "").any():
        rows = [int(i) for i in np.flatnonzero(df["patient_id"] == "")[:5] + 2]
        raise MedsynthError(csv, f"empty 'patient_id' on line(s) {rows}")
    for col in ("split", "modality", "format", "kind", "source"):
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str).str.strip().str.lower()
    if "split" in df.columns:
        bad = sorted(set(df["split"]) - set(SPLITS) - {""})
        if bad:
            raise MedsynthError(csv, f"unknown split value(s) {bad}; expected train, val or test")
        check_patient_split(df, path=csv)
    check_duplicate_paths(df, path=csv)
    if check_files:
        paths = list(df["path"])
        if "mask" in df.columns:
            paths += [m for m in df["mask"] if m]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            shown = ", ".join(os.path.relpath(p, base) if p.startswith(str(base)) else p for p in missing[:3])
            raise MedsynthError(csv, f"{len(missing)} listed file(s) missing, e.g. {shown}")
    return df


def _path_keys(df: pd.DataFrame) -> pd.Series:
    """One key per file: the path with ``..``, ``.`` and symbolic links resolved."""
    return df["path"].map(lambda p: os.path.normcase(os.path.realpath(p)))


def _shown(p: str, path) -> str:
    base = Path(path).resolve().parent if path is not None else None
    if base is not None and str(p).startswith(str(base)):
        return Path(os.path.relpath(p, base)).as_posix()
    return str(p)


def check_duplicate_paths(df: pd.DataFrame, *, path: str | Path | None = None) -> None:
    """Raise MedsynthError if one file is listed under two patient IDs or with two labels.

    Args:
        df: manifest rows with absolute ``path`` (as :func:`read_manifest` makes them).
        path: the manifest, named in the message (listed paths are shown relative to it).
    """
    keys = _path_keys(df)
    for col, what, why in (("patient_id", "patient IDs", "a file belongs to one patient"),
                           ("label", "labels", "an image has one label")):
        n = df.groupby(keys)[col].nunique()
        bad = n[n > 1]
        if len(bad):
            rows = df[keys == bad.index[0]]
            desc = ", ".join(f"{v} on line {i + 2}" for i, v in zip(rows.index, rows[col]))
            more = f"; {len(bad)} files are" if len(bad) > 1 else ""
            raise MedsynthError(path, f"{_shown(rows['path'].iloc[0], path)} is listed under {rows[col].nunique()} "
                                      f"{what} ({desc}){more}; {why}")


def drop_duplicate_rows(df: pd.DataFrame, *, path: str | Path | None = None) -> pd.DataFrame:
    """Keep the first row of each file (per ``kind``) listed more than once; warn with the count.

    Rows of one file agree on patient and label (:func:`check_duplicate_paths`), so a
    repeated row would only train on the same image twice.

    Args:
        df: manifest rows (from :func:`read_manifest`).
        path: the manifest, named in the warning.

    Returns:
        ``df`` without the repeated rows (original index and order kept).
    """
    key = pd.DataFrame({"path": _path_keys(df), "kind": df["kind"] if "kind" in df.columns else ""})
    dup = key.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((key.iloc[:i] == key.iloc[i]).all(axis=1).to_numpy())[0])
        log.warning("%s: %d duplicate row(s) (a file listed again) kept once, e.g. line %d repeats line %d (%s)",
                    path, int(dup.sum()), df.index[i] + 2, df.index[first] + 2, _shown(df["path"].iloc[i], path))
    return df[~dup]


def check_patient_split(df: pd.DataFrame, *, path: str | Path | None = None) -> None:
    """Raise MedsynthError if any patient appears in more than one split.

    Rows with an empty split are ignored. ``path`` names the manifest in the message.
    """
    if "split" not in df.columns:
        return
    sub = df[df["split"].astype(str) != ""]
    n_splits = sub.groupby("patient_id")["split"].nunique()
    leaked = n_splits[n_splits > 1]
    if len(leaked):
        ids = ", ".join(map(str, leaked.index[:5]))
        raise MedsynthError(path, f"{len(leaked)} patient(s) appear in more than one split (e.g. {ids}); splits must be by patient")


def patient_split(
    df: pd.DataFrame,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    stratify: bool = True,
) -> pd.DataFrame:
    """Assign a patient-level ``split`` column (train/val/test).

    Patients (not rows) are divided in the given fractions with scikit-learn's
    ``train_test_split``, stratified by the patient's label (its largest row label, so a patient
    with any positive image counts as positive) when every class has enough patients, else
    unstratified. Deterministic for a given ``seed``.

    Args:
        df: a manifest-like frame with ``patient_id`` and ``label``.
        fractions: train, val, test fractions (normalised to sum to 1; zeros allowed).
        seed: random seed.
        stratify: stratify by patient label where possible.

    Returns:
        A copy of ``df`` with a ``split`` column.
    """
    from sklearn.model_selection import train_test_split

    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    f = f / f.sum()
    patients = df.groupby("patient_id", sort=True)["label"].max() if "label" in df.columns else \
        pd.Series(0, index=sorted(df["patient_id"].unique()))
    ids = np.asarray(patients.index, dtype=object)
    plabels = np.asarray(patients.values)
    out = df.copy()
    if len(ids) == 0:
        out["split"] = []
        return out

    def _split(idx, frac_second):
        """Split index array idx into (first, second) with second ~ frac_second of it."""
        if frac_second <= 0 or len(idx) == 0:
            return idx, idx[:0]
        if frac_second >= 1:
            return idx[:0], idx
        n_second = int(round(frac_second * len(idx)))
        if n_second == 0 or n_second == len(idx):
            return (idx, idx[:0]) if n_second == 0 else (idx[:0], idx)
        strat = plabels[idx] if stratify else None
        if strat is not None:
            _, counts = np.unique(strat, return_counts=True)
            n_cls = len(counts)
            if counts.min() < 2 or n_second < n_cls or len(idx) - n_second < n_cls:
                strat = None
        return tuple(train_test_split(idx, test_size=n_second, random_state=seed, stratify=strat))

    all_idx = np.arange(len(ids))
    rest, test = _split(all_idx, f[2])
    val_frac = f[1] / (f[0] + f[1]) if (f[0] + f[1]) > 0 else 0.0
    train, val = _split(rest, val_frac)
    assign = {}
    for name, idx in (("train", train), ("val", val), ("test", test)):
        for i in idx:
            assign[ids[i]] = name
    out["split"] = [assign[p] for p in out["patient_id"]]
    return out


def write_manifest(df: pd.DataFrame, csv: str | Path) -> Path:
    """Write a manifest atomically, with ``path``/``mask`` relative to the CSV's folder.

    Paths on another drive (Windows) or not below a common root stay absolute.
    """
    csv = Path(csv)
    csv.parent.mkdir(parents=True, exist_ok=True)
    base = csv.resolve().parent
    out = df.copy()
    for col in _PATH_COLUMNS:
        if col in out.columns:
            out[col] = [_relative(v, base) for v in out[col]]
    with atomic_path(csv) as tmp:
        out.to_csv(tmp, index=False)
    return csv


def _relative(value, base: Path) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == "":
        return ""
    p = Path(str(value))
    if not p.is_absolute():
        return p.as_posix()
    try:
        return Path(os.path.relpath(p.resolve(), base)).as_posix()
    except ValueError:
        return str(p)


def select_rows(
    df: pd.DataFrame,
    *,
    modality: str | None = None,
    kind: str | None = None,
    split: str | None = None,
    fmt: str | None = None,
) -> pd.DataFrame:
    """Filter manifest rows; keep one format per patient when images come in several.

    Args:
        df: a manifest frame (from :func:`read_manifest`).
        modality: keep rows of this modality (rows without a ``modality`` column all match).
        kind: keep rows of this kind (``radiograph``, ``slice``, ``volume``).
        split: keep rows of this split.
        fmt: keep only this format; when ``None`` and the ``format`` column holds several
            formats, each (patient, modality, kind) keeps only its most preferred format:
            ``dicom > dicom_series > nifti > png > npz`` > anything else.

    Returns:
        The selected rows (original index kept, original order).
    """
    out = df
    for col, val in (("modality", modality), ("kind", kind), ("split", split), ("format", fmt)):
        if val is not None and col in out.columns:
            out = out[out[col].astype(str).str.lower() == str(val).lower()]
    if fmt is None and "format" in out.columns and out["format"].nunique() > 1:
        rank = {f: i for i, f in enumerate(FORMAT_PREFERENCE)}
        r = out["format"].map(lambda f: rank.get(str(f).lower(), len(rank)))
        keys = [c for c in ("patient_id", "modality", "kind") if c in out.columns]
        best = r.groupby([out[k] for k in keys]).transform("min")
        out = out[r == best]
    return out
