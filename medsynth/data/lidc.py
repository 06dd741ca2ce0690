"""LIDC-IDRI lung-nodule crops (via LUNA16 / NODE21) as a benign-vs-malignant ImageSet.

The folder (``lidc_nodules/``) holds ``nodules_axial_50px.npz`` (axial centre slices,
``(1186, 50, 50)`` int16 HU), ``nodules_3d_32px.npz`` (``(1186, 32, 32, 32)`` int16 HU, z-y-x)
and ``labels.csv`` (one row per crop, row order = array index). The task keeps
``malignancy_class`` 0 (benign, median rating < 3) and 1 (malignant, median > 3) and leaves out
2 (indeterminate) and -1 (unmatched). Labels are radiologists' suspicion, not pathology.

Splits are by patient (``lidc_patient_id``): ``sklearn.model_selection.StratifiedGroupKFold``
with 5 folds (shuffled with ``seed``) gives test = fold 0, val = fold 1, train = folds 2-4, so
about 60/20/20 with the class balance kept, and no patient on two sides. The crops are
checked by content as well (:func:`medsynth.data.checks.check_duplicates`): the same HU crop on
two sides is refused, twice on one side kept once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medsynth.data.checks import check_duplicates, pixel_hash
from medsynth.data.imageset import ImageSet
from medsynth.data.windows import hu_to_unit
from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

__all__ = ["load_lidc", "lidc_patient_split", "LIDC_FILES"]

#: spatial_dims -> (npz file name, native size)
LIDC_FILES: dict[int, tuple[str, int]] = {
    2: ("nodules_axial_50px.npz", 50),
    3: ("nodules_3d_32px.npz", 32),
}
_REQUIRED = ("lidc_patient_id", "malignancy_class")


def lidc_patient_split(
    labels: np.ndarray, patient_ids: list[str] | np.ndarray, seed: int = 0
) -> list[str]:
    """Patient-level stratified train/val/test split (~60/20/20).

    Args:
        labels: ``(N,)`` binary labels.
        patient_ids: ``(N,)`` patient id per case.
        seed: shuffling seed of ``StratifiedGroupKFold``.

    Returns:
        ``N`` strings in ``{"train", "val", "test"}``; each patient on one side only.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(labels)
    groups = np.asarray(patient_ids)
    folds = np.empty(len(y), dtype=np.int64)
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    for k, (_, test_idx) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
        folds[test_idx] = k
    names = np.where(folds == 0, "test", np.where(folds == 1, "val", "train"))
    return names.tolist()


def _resize(x: torch.Tensor, size: int, spatial_dims: int) -> torch.Tensor:
    """Resize ``(N, 1, *S)`` to ``size`` per axis (bilinear/trilinear; antialiased 2D shrink)."""
    if all(s == size for s in x.shape[2:]):
        return x
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    shrink = size < min(x.shape[2:])
    out = F.interpolate(
        x, size=(size,) * spatial_dims, mode=mode, align_corners=False,
        antialias=bool(shrink and spatial_dims == 2),
    )
    return out.clamp_(-1.0, 1.0)


def load_lidc(
    root: str | Path,
    *,
    spatial_dims: int = 2,
    size: int | None = 64,
    ct_window: str | tuple[float, float] = "lung",
    seed: int = 0,
) -> ImageSet:
    """Load the LIDC nodule crops as a benign (0) vs malignant (1) :class:`ImageSet`.

    Args:
        root: the ``lidc_nodules`` folder.
        spatial_dims: 2 (axial centre slice, native 50 px) or 3 (32^3 volume, z-y-x).
        size: output size per spatial axis (``None`` keeps the native 50 / 32). Beware that
            3D at 64 means 64^3 voxels per case (~0.8 GB for all crops).
        ct_window: CT window name (``"lung"``, ``"mediastinal"``) or ``(centre, width)`` HU.
        seed: seed of the patient-level split.

    Returns:
        ``ImageSet`` with ``images`` ``(N, 1, size, size)`` or ``(N, 1, size, size, size)``
        float32 in ``[-1, 1]`` (HU windowed then resized), ``labels`` ``(N,)`` int64 in
        ``{0, 1}``, ``patient_ids`` (LIDC patient ids), ``paths`` (``<npz>#<row index>``),
        ``splits`` (``train|val|test`` by patient) and ``modality="ct"``. N = 726 with the
        shipped data (383 benign, 343 malignant, 450 patients).

    Raises:
        MedsynthError: the folder or one of its files is missing or malformed.
    """
    root = Path(root)
    if spatial_dims not in LIDC_FILES:
        raise MedsynthError(root, f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if not root.is_dir():
        raise MedsynthError(root, "LIDC nodule folder not found")
    fname, native = LIDC_FILES[spatial_dims]
    npz_path, csv_path = root / fname, root / "labels.csv"
    for p in (npz_path, csv_path):
        if not p.is_file():
            raise MedsynthError(p, "missing from the LIDC nodule folder")
    try:
        table = pd.read_csv(csv_path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a user-input problem
        raise MedsynthError(csv_path, f"cannot read CSV ({exc})") from exc
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise MedsynthError(csv_path, f"missing column(s) {', '.join(missing)}")
    try:
        with np.load(npz_path) as data:
            hu = data["images"]
    except Exception as exc:  # noqa: BLE001
        raise MedsynthError(npz_path, f"cannot read array 'images' ({exc})") from exc
    if hu.ndim != spatial_dims + 1 or len(hu) != len(table):
        raise MedsynthError(
            npz_path, f"images have shape {hu.shape}, expected {len(table)} crops of "
            f"{spatial_dims}D"
        )

    cls = table["malignancy_class"].to_numpy()
    keep = np.flatnonzero(np.isin(cls, (0, 1)))
    if len(keep) == 0:
        raise MedsynthError(csv_path, "no benign (0) or malignant (1) rows")
    labels = cls[keep].astype(np.int64)
    pids = table["lidc_patient_id"].astype(str).to_numpy()[keep]

    x = torch.from_numpy(hu[keep].astype(np.float32)).unsqueeze(1)
    x = hu_to_unit(x, ct_window).float()
    x = _resize(x, native if size is None else int(size), spatial_dims).contiguous()

    splits = lidc_patient_split(labels, pids, seed=seed)
    paths = [f"{npz_path}#{i}" for i in keep.tolist()]
    # the same crop twice: refused across splits, kept once within one (none in the shipped data)
    hashes = [pixel_hash(a) for a in hu[keep]]
    kept, dropped = check_duplicates(hashes, [f"{fname}#{i}" for i in keep.tolist()], pids.tolist(), splits,
                                     labels.tolist(), where=root)
    if dropped:
        idx = np.asarray(kept, dtype=np.int64)
        x, labels, pids = x[torch.from_numpy(idx)], labels[idx], pids[idx]
        splits, paths, keep = [splits[i] for i in kept], [paths[i] for i in kept], keep[idx]
    log.info(
        "LIDC %dD: %d crops (%d malignant), %d patients, size %s",
        spatial_dims, len(keep), int(labels.sum()), len(set(pids)), tuple(x.shape[2:]),
    )
    return ImageSet(
        images=x,
        labels=torch.from_numpy(labels),
        patient_ids=pids.tolist(),
        paths=paths,
        splits=splits,
        modality="ct",
        skipped=dropped,
    )
