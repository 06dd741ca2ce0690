"""Generate phantom datasets: in-memory radiograph arrays and the on-disk sample-data set.

Every patient ``i`` of a set with seed ``s`` is drawn from ``SeedSequence([s, i])``, so the
same seed always gives the same patients (byte-identical arrays) whatever else is generated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsynth.phantom.anatomy import make_patient
from medsynth.phantom.imaging import add_ct_noise, simulate_radiograph

log = logging.getLogger(__name__)

#: Grid used for radiographs and 2D CT slices: 96^3 voxels of 4 mm (384 mm field of view).
XRAY_GRID = {"shape": (96, 96, 96), "spacing_mm": (4.0, 4.0, 4.0)}
#: Grid for the full CT volumes/series: 40 slices of 6 mm, 64 x 64 pixels of 6 mm.
CT_GRID = {"shape": (40, 64, 64), "spacing_mm": (6.0, 6.0, 6.0)}
#: The X-ray detection task images "lung spot" radiographs: an ``field_mm`` square field of the
#: frontal projection, centred within ``jitter`` x field of a possible nodule site (the nodule's
#: centre for positives; a site drawn by the same sampler for negatives, so the field position
#: carries no label information), on a grid of ``voxel_mm`` in-plane and the whole AP depth
#: (``depth_shape`` x ``depth_mm``). At 64² pixels are 1 mm, so 10..30 mm nodules span
#: 10..30 pixels. The whole-chest view (:data:`XRAY_GRID`, 6 mm pixels at 64²) leaves a
#: 20 mm nodule 3 pixels wide among ribs, vessels and lung borders: a small CNN trained on
#: 200 such images stayed at chance (AUROC 0.49..0.53, also with 800 images or at 128²;
#: see reports/phantom_difficulty.json).
XRAY_ROI = {"field_mm": 64.0, "voxel_mm": 1.0, "depth_shape": 80, "depth_mm": 4.0, "jitter": 0.15}
#: default radiograph view: ``"lung_spot"`` (:data:`XRAY_ROI`) or ``"chest"`` (:data:`XRAY_GRID`)
XRAY_VIEW = "lung_spot"
XRAY_VIEWS = ("lung_spot", "chest")
#: Fraction of DX files written as MONOCHROME1 (inverted stored values).
MONOCHROME1_FRACTION = 0.15


@dataclass(frozen=True)
class Acquisition:
    """Per-patient X-ray/CT acquisition settings (drawn from the patient's seed)."""

    photons: float
    scatter_fraction: float
    gamma: float
    ct_sigma_hu: float
    photometric: str


def _acquisition(rng: np.random.Generator) -> Acquisition:
    return Acquisition(
        photons=float(np.exp(rng.uniform(np.log(2e4), np.log(8e4)))),
        scatter_fraction=float(rng.uniform(0.1, 0.3)),
        gamma=float(rng.uniform(0.85, 1.15)),
        ct_sigma_hu=float(rng.uniform(8.0, 25.0)),
        photometric="MONOCHROME1" if rng.random() < MONOCHROME1_FRACTION else "MONOCHROME2",
    )


def _streams(seed: int, i: int):
    """(phantom seed sequence, acquisition rng, noise rng) of patient ``i``."""
    ss = np.random.SeedSequence([int(seed), int(i)])
    a, b, c = ss.spawn(3)
    return a, np.random.default_rng(b), np.random.default_rng(c)


def patient_id(i: int) -> str:
    """Phantom identity of patient ``i``: ``PHANTOM-0007``."""
    return f"PHANTOM-{i:04d}"


def xray_patient(ss, seed: int, i: int, view: str = XRAY_VIEW, grid: dict | None = None):
    """The phantom of patient ``i`` on the grid of radiograph ``view``.

    Args:
        ss: the patient's phantom seed sequence (:func:`_streams`).
        seed, i: dataset seed and patient index (they seed the field position of a spot view).
        view: ``"lung_spot"`` or ``"chest"`` (see :data:`XRAY_ROI`).
        grid: for ``"chest"``, overrides :data:`XRAY_GRID`; for ``"lung_spot"``, overrides
            keys of :data:`XRAY_ROI`.

    Returns:
        :class:`~medsynth.phantom.anatomy.Patient`; the same patient (anatomy, nodule) in
        either view, only the grid differs.
    """
    if view == "chest":
        return make_patient(ss, **(grid or XRAY_GRID))
    if view != "lung_spot":
        raise ValueError(f"radiograph view must be one of {XRAY_VIEWS}, got {view!r}")
    from medsynth.phantom.anatomy import _draw_nodule

    roi = {**XRAY_ROI, **(grid or {})}
    coarse = make_patient(ss, shape=(12, 12, 12), spacing_mm=32.0)  # params and nodule only
    loc = np.random.default_rng([int(seed), int(i), 7])
    site = coarse.nodule if coarse.nodule is not None else _draw_nodule(coarse.params, loc)
    c = np.array(site["centre_mm"], float)
    field, vox = float(roi["field_mm"]), float(roi["voxel_mm"])
    c[0] += loc.uniform(-1.0, 1.0) * roi["jitter"] * field
    c[2] += loc.uniform(-1.0, 1.0) * roi["jitter"] * field
    n = int(round(field / vox))
    depth, dmm = int(roi["depth_shape"]), float(roi["depth_mm"])
    origin = (c[0] - (n - 1) / 2 * vox, -(depth - 1) / 2 * dmm, c[2] - (n - 1) / 2 * vox)
    return make_patient(ss, shape=(n, depth, n), spacing_mm=(vox, dmm, vox), origin=origin)


def simulate_xray_arrays(n: int, *, seed: int = 0, size: int = 64, start: int = 0, view: str = XRAY_VIEW):
    """Simulate ``n`` phantom radiographs in memory.

    Args:
        n: number of patients (indices ``start .. start + n - 1``).
        seed: set seed.
        size: output image side, pixels.
        view: ``"lung_spot"`` (default) or ``"chest"`` (see :data:`XRAY_ROI`).

    Returns:
        ``(pixels (n, size, size) uint16 0..4095 dense = bright, labels (n,) int64,
        infos list[dict|None])``.
    """
    pix = np.zeros((n, size, size), np.uint16)
    lab = np.zeros(n, np.int64)
    infos = []
    for k in range(n):
        ss, arng, nrng = _streams(seed, start + k)
        acq = _acquisition(arng)
        p = xray_patient(ss, seed, start + k, view)
        r = simulate_radiograph(p, nrng, size=size, photons=acq.photons,
                                scatter_fraction=acq.scatter_fraction, gamma=acq.gamma)
        pix[k] = r.pixels
        lab[k] = p.label
        infos.append(p.nodule)
    return pix, lab, infos


def _axial_slice(p, z_index: float, size: int):
    """Axial slice of patient ``p`` at (fractional) slice ``z_index``, resampled to ``size``²."""
    vol, m = p.volume_hu, p.nodule_mask
    k = int(np.clip(round(z_index), 0, vol.shape[0] - 1))
    f = (size / vol.shape[1], size / vol.shape[2])
    img = ndimage.zoom(ndimage.gaussian_filter(vol[k], 0.45 / min(f)), f, order=1, grid_mode=True, mode="nearest")
    mask = ndimage.zoom(m[k].astype(np.float32), f, order=1, grid_mode=True, mode="nearest")
    mk = (mask >= 0.5).astype(np.uint8)
    if m[k].any() and not mk.any():
        mk[np.unravel_index(int(np.argmax(mask)), mask.shape)] = 1
    spacing = (p.spacing[1] * vol.shape[1] / size, p.spacing[2] * vol.shape[2] / size)
    ox, oy, oz = p.origin
    # origin of the resampled grid: first pixel centre
    origin = (ox - p.spacing[2] / 2 + spacing[1] / 2, oy - p.spacing[1] / 2 + spacing[0] / 2, oz + k * p.spacing[0])
    return img[:size, :size].astype(np.float32), mk[:size, :size], spacing, origin, k


def _split_by_patient(labels: np.ndarray, seed: int, fractions=(0.6, 0.2, 0.2)) -> np.ndarray:
    """Stratified patient-level split -> array of "train" / "val" / "test"."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7777]))
    out = np.empty(len(labels), dtype=object)
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        n = len(idx)
        n_tr = int(round(fractions[0] * n))
        n_va = int(round(fractions[1] * n))
        out[idx[:n_tr]] = "train"
        out[idx[n_tr:n_tr + n_va]] = "val"
        out[idx[n_tr + n_va:]] = "test"
    return out


def _fmt_loc(info) -> str:
    if info is None:
        return ""
    return ";".join(f"{v:.1f}" for v in info["centre_mm"])


def generate_sample_data(
    out_dir: str | Path,
    *,
    n_xray: int,
    n_ct: int,
    seed: int = 0,
    n_png: int = 60,
    n_volumes: int = 3,
    n_series: int = 2,
    xray_size: int = 64,
    ct_size: int = 64,
    compress_dx: bool = False,
    xray_grid: dict | None = None,
    ct_grid: dict | None = None,
    xray_view: str = XRAY_VIEW,
    roi: dict | None = None,
    n_chest: int = 0,
    seg: bool = False,
) -> Path:
    """Write a phantom chest dataset (DICOM DX, PNG, NIfTI slices/volumes, DICOM CT series).

    Layout under ``out_dir``: ``xray/dicom/PHANTOM-nnnn.dcm`` (all ``n_xray`` patients),
    ``xray/png/`` (the first ``n_png``), ``ct/slices/`` (2D NIfTI axial slices, 64², through the
    nodule for positives, a random lung level otherwise, with ``*_mask.nii.gz`` for positives)
    for the first ``n_ct`` patients, ``ct/volumes/`` (NIfTI volumes + masks) and ``ct/series/``
    (DICOM CT series + NIfTI masks) for a few of them, and ``manifest.csv``.

    Args:
        out_dir: output folder (created).
        n_xray: number of patients (all get a radiograph).
        n_ct: number of those patients that also get a CT slice (``<= n_xray``).
        seed: dataset seed; the same seed gives the same arrays.
        n_png: patients whose radiograph is also written as 8-bit PNG.
        n_volumes, n_series: CT patients written as NIfTI volume / DICOM series.
        xray_size, ct_size: image sides in pixels.
        compress_dx: write the DX files RLE Lossless (pydicom decodes it natively); off by
            default: at 64² the noisy 12-bit images do not shrink below one 8 KiB disk block.
        xray_grid, ct_grid: override :data:`XRAY_GRID` / :data:`CT_GRID` (``shape``,
            ``spacing_mm``), e.g. tiny grids in tests. The whole-chest grid also makes the
            2D CT slices.
        xray_view: radiograph view, ``"lung_spot"`` (default, :data:`XRAY_ROI`) or ``"chest"``.
        roi: overrides keys of :data:`XRAY_ROI` (lung-spot view).
        n_chest: also write the whole-chest demo folder ``chest/`` of the first ``n_chest``
            patients (:func:`write_chest_demo`; not in the manifest: a folder of unlabelled DICOM
            files, as a hospital export would be).
        seg: also write the nodule masks of the DICOM images with a nodule (DX radiographs:
            the projected mask of :func:`~medsynth.phantom.imaging.simulate_radiograph`; CT
            series: the nodule's voxels) as DICOM SEG files referencing them
            (:func:`medsynth.data.seg.write_seg`, simulator ground truth), ``xray/seg/<id>_seg.dcm``
            and ``ct/series/<id>_seg.dcm``, named in a ``seg`` manifest column (empty for images
            without a nodule: no SEG is written for them). Off by default (the committed
            ``sample_data/`` has none).

    Returns:
        Path of ``manifest.csv``. Its columns: ``patient_id, modality, format, kind, path,
        label, diameter_mm, location, mask, split, photometric`` plus ``texture``, ``shape``,
        ``source`` (``phantom``), and ``seg`` with ``seg=True``.
    """
    import pandas as pd
    from pydicom.uid import generate_uid

    from medsynth.data.seg import phantom_origin, read_sources, write_seg
    from medsynth.data.writers import write_csv, write_ct_series, write_dicom_dx, write_nifti, write_png

    out = Path(out_dir)
    chest = xray_grid  # None: the demo folder's grid follows its size (chest_grid)
    xray_grid = xray_grid or XRAY_GRID
    ct_grid = ct_grid or CT_GRID
    n_ct = min(int(n_ct), int(n_xray))
    rows = []
    labels = np.zeros(n_xray, np.int64)
    centre_z = np.zeros(n_xray)
    ct_choice = []
    uid_root = f"medsynth-sample-{seed}"
    for i in range(n_xray):
        pid = patient_id(i)
        pname = f"Phantom^{i:04d}"
        ss, arng, nrng = _streams(seed, i)
        acq = _acquisition(arng)
        p = xray_patient(ss, seed, i, xray_view, xray_grid if xray_view == "chest" else roi)
        labels[i] = p.label
        info = p.nodule
        centre_z[i] = info["centre_mm"][2] if info else 0.0
        base = {"patient_id": pid, "label": p.label,
                "diameter_mm": round(info["diameter_mm"], 2) if info else 0.0,
                "location": _fmt_loc(info), "texture": info["texture"] if info else "",
                "shape": info["shape"] if info else "", "source": "phantom"}
        r = simulate_radiograph(p, nrng, size=xray_size, photons=acq.photons,
                                scatter_fraction=acq.scatter_fraction, gamma=acq.gamma)
        rel = f"xray/dicom/{pid}.dcm"
        write_dicom_dx(out / rel, r.pixels, pixel_spacing=r.pixel_spacing, photometric=acq.photometric,
                       patient_id=pid, patient_name=pname,
                       study_uid=generate_uid(entropy_srcs=[uid_root, pid, "study-xray"]),
                       series_uid=generate_uid(entropy_srcs=[uid_root, pid, "series-xray"]),
                       sop_uid=generate_uid(entropy_srcs=[uid_root, pid, "dx"]),
                       series_description=f"medsynth chest phantom radiograph, {xray_view} view (synthetic phantom)",
                       compress=compress_dx)
        srel = ""
        if seg and r.nodule_mask.any():
            srel = f"xray/seg/{pid}_seg.dcm"
            write_seg(out / srel, read_sources(out / rel), r.nodule_mask, origin=phantom_origin(projected=True),
                      uid_entropy=f"{uid_root}-{pid}-dx-seg")
        rows.append({**base, "modality": "xray", "format": "dicom", "kind": "radiograph", "path": rel,
                     "mask": "", "photometric": acq.photometric, "seg": srel})
        if i < n_png:
            rel = f"xray/png/{pid}.png"
            write_png(out / rel, (r.pixels >> 4).astype(np.uint8))
            rows.append({**base, "modality": "xray", "format": "png", "kind": "radiograph", "path": rel,
                         "mask": "", "photometric": ""})
        if i < n_ct:
            if xray_view != "chest":  # axial CT slices come from the whole-chest grid
                p = make_patient(ss, **xray_grid)
                info = p.nodule
            if info is not None and info.get("in_grid", True):
                z = info["centre_voxel"][0]
            else:
                zs = np.flatnonzero(p.lung_mask.reshape(p.lung_mask.shape[0], -1).sum(1) > 50)
                zs = zs[(zs > zs.min() + 2) & (zs < zs.max() - 2)] if len(zs) > 6 else zs
                z = float(arng.choice(zs)) if len(zs) else p.volume_hu.shape[0] / 2
            img, mk, sp, org, _ = _axial_slice(p, z, ct_size)
            img = add_ct_noise(img, nrng, sigma_hu=acq.ct_sigma_hu)
            rel = f"ct/slices/{pid}.nii.gz"
            write_nifti(out / rel, np.clip(img, -1024, 3071), spacing=sp, origin=org, dtype=np.int16)
            mrel = ""
            if p.label:
                mrel = f"ct/slices/{pid}_mask.nii.gz"
                write_nifti(out / mrel, mk, spacing=sp, origin=org, dtype=np.uint8, intent="label")
            rows.append({**base, "modality": "ct", "format": "nifti", "kind": "slice", "path": rel,
                         "mask": mrel, "photometric": ""})
            ct_choice.append(i)

    # a few full CT volumes (same patients, CT grid), alternating positives and negatives
    zmax = 0.5 * (ct_grid["shape"][0] - 1) * (np.broadcast_to(ct_grid["spacing_mm"], (3,))[0]) - 10.0
    pos = [i for i in ct_choice if labels[i] == 1 and abs(centre_z[i]) < zmax]
    neg = [i for i in ct_choice if labels[i] == 0]
    picks = []
    for k in range(n_volumes + n_series):
        src = pos if k % 2 == 0 else neg
        src = src if src else (neg or pos)
        if src:
            picks.append(src.pop(0))
    for k, i in enumerate(picks):
        pid = patient_id(i)
        ss, arng, nrng = _streams(seed, i)
        acq = _acquisition(arng)
        p = make_patient(ss, **ct_grid)
        info = p.nodule
        vol = np.clip(add_ct_noise(p.volume_hu, np.random.default_rng(np.random.SeedSequence([seed, i, 3])),
                                   sigma_hu=acq.ct_sigma_hu), -1024, 3071)
        base = {"patient_id": pid, "label": p.label,
                "diameter_mm": round(info["diameter_mm"], 2) if info else 0.0,
                "location": _fmt_loc(info), "texture": info["texture"] if info else "",
                "shape": info["shape"] if info else "", "source": "phantom", "photometric": ""}
        mrel = ""
        if k < n_volumes:
            rel = f"ct/volumes/{pid}.nii.gz"
            write_nifti(out / rel, vol, spacing=p.spacing, origin=p.origin, dtype=np.int16)
            if p.label:
                mrel = f"ct/volumes/{pid}_mask.nii.gz"
                write_nifti(out / mrel, p.nodule_mask, spacing=p.spacing, origin=p.origin, dtype=np.uint8,
                            intent="label")
            rows.append({**base, "modality": "ct", "format": "nifti", "kind": "volume", "path": rel, "mask": mrel})
        else:
            rel = f"ct/series/{pid}"
            files = write_ct_series(out / rel, vol, spacing=p.spacing, origin=p.origin, patient_id=pid,
                                    patient_name=f"Phantom^{i:04d}",
                                    uid_entropy=f"{uid_root}-{pid}-ct",
                                    series_description="medsynth chest phantom CT (synthetic phantom)")
            if seg and p.nodule_mask.any():
                base["seg"] = f"ct/series/{pid}_seg.dcm"
                write_seg(out / base["seg"], read_sources(files), p.nodule_mask, origin=phantom_origin(projected=False),
                          uid_entropy=f"{uid_root}-{pid}-ct-seg")
            if p.label:
                mrel = f"ct/series/{pid}_mask.nii.gz"
                write_nifti(out / mrel, p.nodule_mask, spacing=p.spacing, origin=p.origin, dtype=np.uint8,
                            intent="label")
            rows.append({**base, "modality": "ct", "format": "dicom_series", "kind": "volume", "path": rel,
                         "mask": mrel})

    split = _split_by_patient(labels, seed)
    df = pd.DataFrame(rows)
    df["split"] = [split[int(pid.split("-")[1])] for pid in df["patient_id"]]
    cols = ["patient_id", "modality", "format", "kind", "path", "label", "diameter_mm", "location", "mask",
            "split", "photometric", "texture", "shape", "source"]
    if seg:
        df["seg"] = df["seg"].fillna("") if "seg" in df else ""
        cols.append("seg")
    df = df[cols]
    manifest = write_csv(out / "manifest.csv", df)
    if n_chest > 0:
        write_chest_demo(out / CHEST_DEMO_DIR, n=n_chest, seed=seed, size=xray_size, grid=chest)
    log.info("wrote %d rows for %d patients to %s", len(df), n_xray, manifest)
    return manifest


#: folder of the whole-chest demo radiographs inside a sample-data set
CHEST_DEMO_DIR = "chest"
#: most in-plane voxels of the whole-chest grid (:func:`chest_grid`): 1.5 mm over the 384 mm field.
#: Simulating one patient on 256 x 96 x 256 voxels takes ~3 s and ~0.8 GB at its peak on this CPU;
#: 512 in-plane would take ~4x both. Beyond 256 px the radiograph is resampled from the 1.5 mm line
#: integrals (anti-aliased), with the quantum noise, scatter and detector blur simulated per output pixel.
CHEST_MAX_VOXELS = 256


def chest_grid(size: int) -> dict:
    """The whole-chest phantom grid for radiographs of ``size``² pixels.

    Up to 96 px: :data:`XRAY_GRID` (96³ voxels of 4 mm, 384 mm field; what the committed
    ``sample_data/chest/`` uses). Larger: ``min(size, CHEST_MAX_VOXELS)`` voxels in-plane
    (superior-inferior and right-left) over the same 384 mm field, and 96 voxels of 4 mm along the
    beam (anterior-posterior), so finer anatomy reaches the detector. The patient (anatomy, nodule)
    is the same on every grid; only its sampling differs.

    Args:
        size: radiograph side in pixels.

    Returns:
        ``{"shape": (Z, Y, X), "spacing_mm": (z, y, x)}`` for :func:`xray_patient`.
    """
    if int(size) <= XRAY_GRID["shape"][2]:
        return XRAY_GRID
    zf = XRAY_GRID["shape"][0] * XRAY_GRID["spacing_mm"][0]
    xf = XRAY_GRID["shape"][2] * XRAY_GRID["spacing_mm"][2]
    n = min(int(size), CHEST_MAX_VOXELS)
    return {"shape": (n, XRAY_GRID["shape"][1], n), "spacing_mm": (zf / n, XRAY_GRID["spacing_mm"][1], xf / n)}


def chest_field_mm(grid: dict | None = None) -> tuple[float, float]:
    """``(rows, columns)`` field of view in mm of a whole-chest radiograph on ``grid`` (default
    :data:`XRAY_GRID`): the detector covers the grid's superior-inferior x right-left extent."""
    g = grid or XRAY_GRID
    sp = np.broadcast_to(np.asarray(g["spacing_mm"], float), (3,))
    return float(g["shape"][0] * sp[0]), float(g["shape"][2] * sp[2])


def _write_chest_file(path: Path, p, i: int, seed: int, size: int) -> None:
    """One whole-chest radiograph of phantom ``p`` (patient ``i``) at ``size``² as DICOM DX; the
    noise stream is the patient's own, so the file does not depend on other sizes written."""
    from pydicom.uid import generate_uid

    from medsynth.data.writers import write_dicom_dx

    _, arng, nrng = _streams(seed, i)
    acq = _acquisition(arng)
    pid = patient_id(i)
    uid_root = f"medsynth-sample-{seed}"
    r = simulate_radiograph(p, nrng, size=size, photons=acq.photons, scatter_fraction=acq.scatter_fraction,
                            gamma=acq.gamma)
    write_dicom_dx(path, r.pixels, pixel_spacing=r.pixel_spacing, photometric=acq.photometric,
                   patient_id=pid, patient_name=f"Phantom^{i:04d}",
                   study_uid=generate_uid(entropy_srcs=[uid_root, pid, "study-xray"]),
                   series_uid=generate_uid(entropy_srcs=[uid_root, pid, "series-xray-chest"]),
                   sop_uid=generate_uid(entropy_srcs=[uid_root, pid, "dx-chest"]),
                   series_description="medsynth chest phantom radiograph, chest view (synthetic phantom)")


def write_chest_demo(out_dir: str | Path, *, n: int, seed: int = 0, size: int = 64, grid: dict | None = None) -> Path:
    """Write whole-chest phantom radiographs as a plain folder of DICOM DX files (no manifest, no labels).

    The first thing a newcomer trains on (``medsynth train --modality xray`` without ``--data``): the
    view a person expects of a chest radiograph (384 mm field: lungs, heart, ribs, clavicles, spine),
    and the situation of a hospital export (a folder of DICOM files that carry no class label). The
    patients are those of :func:`generate_sample_data` with the same ``seed`` (same anatomy and
    nodules, whole-chest view: at 6 mm pixels a 20 mm nodule is 3 pixels wide, so these images serve
    the demo, not the detection task). Files are ``PHANTOM-nnnn.dcm``, identities phantom labels;
    ``ImagerPixelSpacing`` is the field of view (384 mm) / ``size``.

    Args:
        out_dir: output folder (created).
        n: number of patients (indices ``0 .. n - 1``).
        seed: dataset seed (the same as the lung-spot set's for the same patients).
        size: image side, pixels (e.g. 512 or 1024 for full-resolution work: 0.75 / 0.375 mm pixels).
        grid: overrides the phantom grid (default :func:`chest_grid` of ``size``: :data:`XRAY_GRID`
            up to 96 px).

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = grid or chest_grid(size)
    for i in range(int(n)):
        ss, _, _ = _streams(seed, i)
        _write_chest_file(out / f"{patient_id(i)}.dcm", xray_patient(ss, seed, i, "chest", grid), i, seed, size)
    log.info("whole-chest demo: %d radiographs -> %s", n, out)
    return out


#: bump when :func:`write_chest_sizes`' output changes (a folder of another version is rewritten)
CHEST_SIZES_VERSION = 1


def write_chest_sizes(root: str | Path, *, n: int, sizes, seed: int = 0) -> dict[int, Path]:
    """Whole-chest radiographs of the same ``n`` patients at several sizes, each phantom simulated
    once per grid; resumable and reused.

    ``root/<size>/PHANTOM-nnnn.dcm`` is byte for byte what :func:`write_chest_demo` writes for that
    size (grid :func:`chest_grid` of the size; sizes above 256 share the 256-voxel phantom). Each
    file is written atomically and a file already there is kept, so an interrupted call resumes;
    ``root/<size>.complete.json`` (written last, beside the folder so that the folder holds only
    images: n, seed, grid, field of view, version) marks a finished folder, which a later call with the same settings returns at once. Simulation cost on
    this CPU: ~3 s per patient on the 256-voxel grid plus ~2 s per 1024² radiograph.

    Args:
        root: parent folder (e.g. ``~/.cache/medsynth-bench/fullres``).
        n: patients per size.
        sizes: radiograph sides in pixels.
        seed: dataset seed.

    Returns:
        ``{size: folder}``.
    """
    import json

    from medsynth.atomic import write_text

    root = Path(root)
    folders = {int(s): root / str(int(s)) for s in sizes}

    def marker(size: int) -> dict:
        grid = chest_grid(size)
        return {"version": CHEST_SIZES_VERSION, "n": int(n), "seed": int(seed), "size": size,
                "grid": {"shape": list(grid["shape"]), "spacing_mm": list(np.broadcast_to(grid["spacing_mm"], (3,)))},
                "field_of_view_mm": list(chest_field_mm(grid))}

    def done(size: int) -> bool:
        f = root / f"{size}.complete.json"
        try:
            return json.loads(f.read_text()) == marker(size)
        except (OSError, ValueError):
            return False

    todo = [s for s in folders if not done(s)]
    by_grid: dict[tuple, list[int]] = {}
    for s in todo:
        folders[s].mkdir(parents=True, exist_ok=True)
        by_grid.setdefault(tuple(chest_grid(s)["shape"]), []).append(s)
    for shape, group in by_grid.items():
        grid = chest_grid(group[0])
        for i in range(int(n)):
            missing = [s for s in group if not (folders[s] / f"{patient_id(i)}.dcm").is_file()]
            if not missing:
                continue
            ss, _, _ = _streams(seed, i)
            p = xray_patient(ss, seed, i, "chest", grid)
            for s in missing:
                _write_chest_file(folders[s] / f"{patient_id(i)}.dcm", p, i, seed, s)
            del p
        for s in group:
            write_text(root / f"{s}.complete.json", json.dumps(marker(s), indent=1) + "\n")
            log.info("whole-chest radiographs: %d at %d² -> %s", n, s, folders[s])
    return folders
