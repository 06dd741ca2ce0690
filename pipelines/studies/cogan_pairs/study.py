"""CoGAN image/mask pairs from unpaired data: a CT slice and its nodule mask from one latent.

The medical job of CoGAN (Liu & Tuzel 2016) here: learn to generate *aligned* pairs (a CT slice
and a nodule mask that sits on the nodule) without ever showing the model a pair, e.g. to
augment segmentation training sets.

1. **Unpaired training set.** The nodule-bearing phantom CT slices of the manifest's train split
   (``modality=ct``, ``kind=slice``, non-empty ``mask``) are split *by patient* into two disjoint
   halves (seeded): domain 1 (label 0) = the lung-window slices of the first half, domain 2
   (label 1) = the nodule masks (0/1 mapped to -1/+1) of the other half. No patient contributes
   both an image and a mask, so no image is ever paired with its own mask. The set is written
   as an ``.npz`` that ``medsynth train --data`` reads as CT: every row is its model-ready
   ``[-1, 1]`` array expressed in lung-window HU (``unit_to_hu``), which the standard CT pipeline
   (lung window, resize to the same size = identity) maps back exactly; masks become exactly
   -1/+1. The pipeline checks this round trip after writing.
2. **Training**: ``medsynth train --modality ct --model cogan --data <npz>`` with a process-CPU
   budget (``--minutes``, ``train.clock=process``, ``train.threads=1``), preset
   ``medsynth/presets/ct_cogan.yaml``, with **per-pixel generator heads** on one shared 1-channel
   map (``--head pointwise``, the default: ``model.params.head=pointwise``, ``head_channels=1``) or the
   paper's private up-sampling layers (``--head conv``).
3. **Pairs**: ``sample_pairs`` -> ``pairs.png`` (image | mask | overlay) and, for reference,
   ``real_pairs.png`` (real training slices with their own masks).
4. **Alignment**: per pair, the mask is thresholded (> 0) and the contrast is the mean image HU
   (lung window, clipped) inside the mask minus the mean in a ring of ``--ring`` pixels around it
   (square dilation). A nodule mask that sits on the nodule gives a large positive contrast (soft
   tissue vs. lung). Control: the same images with masks from *other* latents (``--shuffles``
   per image, averaged). Ceiling: real slices with their own masks; floor: real slices with other
   patients' masks. Reported: mean contrasts and a bootstrap 95% CI of the per-pair difference
   (aligned - shuffled). Also the mask area distribution (pixels, connected components) of
   generated vs. real masks.

Sources and pairings: the phantom slices of a manifest (default) or, with ``--lidc DIR``, the real
LIDC-IDRI axial nodule slices (one random ``--size`` crop per nodule, split by patient). Domain 2
(``--pair``): the nodule ``mask`` (default), the ``segmented`` nodule (the slice inside its mask,
-1 outside; the generated mask is where it exceeds ``--segmented-threshold``), or, LIDC only, the
mediastinal ``window`` of the slices, scored by :func:`window_error` (the mediastinal rendering a
lung-window image determines, compared with the generated one; 0 for a real slice). Every run
also records :func:`head_channel_use` (whether the two private generator heads read the same
shared channels) and :func:`marginal_fd` of each domain (realism is not traded for alignment).

Run: ``python -m pipelines.studies.cogan_pairs [--lidc DIR] [--pair mask|segmented|window]
[--minutes 6] [--seed 0] [--set KEY=VALUE]... [--run RUN_DIR] [--out DIR]``; writes ``DIR/{pairs.png,
real_pairs.png, results.json}`` (default ``reports/cogan_pairs``). ``--run`` skips training and
evaluates an existing run. The committed runs and their reading are in
``reports/cogan_pairs/README.md``. In short: with the paper's heads (``--head conv``) no run
aligned its pairs (the heads read disjoint shared channels: two scenes in one trunk); with
per-pixel heads on one shared map (``--head pointwise``) the LIDC window and mask pairs align.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------------------- data
def load_real_pairs(manifest: str | Path, *, split: str = "train", size: int = 64,
                    window: str = "lung") -> dict:
    """The nodule-bearing CT slices of ``split`` with their masks, model-ready.

    Args:
        manifest: a medsynth manifest CSV with ``modality=ct``, ``kind=slice`` rows and a ``mask``
            column (NIfTI masks of the same shape as the slice).
        split: manifest split to use.
        size: output side length.
        window: CT window for the images.

    Returns:
        ``{"images": float32 (N, 1, size, size) in [-1, 1], "masks": float32 (N, 1, size, size)
        in {0, 1}, "patient_ids": list of N str}``.

    Raises:
        MedsynthError: no such rows.
    """
    from medsynth.data.manifest import read_manifest, select_rows
    from medsynth.data.readers import read_image
    from medsynth.data.transforms import pipeline_for

    df = read_manifest(manifest)
    for col in ("modality", "kind", "mask", "split"):
        if col not in df.columns:
            raise MedsynthError(manifest, f"needs a {col!r} column")
    df = df[(df["modality"] == "ct") & (df["kind"] == "slice") & (df["mask"] != "") & (df["split"] == split)]
    df = select_rows(df)
    if len(df) == 0:
        raise MedsynthError(manifest, f"no CT slice rows with a mask in split {split!r}")
    pipe = pipeline_for("ct", size, window=window, spatial_dims=2, with_mask=True)
    images, masks, pids = [], [], []
    for r in df.sort_values("patient_id").to_dict("records"):
        im = read_image(r["path"], modality="ct").array.astype(np.float32)
        mk = (read_image(r["mask"]).array > 0.5).astype(np.float32)
        if im.ndim != 2 or mk.shape != im.shape:
            raise MedsynthError(r["mask"], f"mask {mk.shape} / image {im.shape}: expected equal 2D shapes")
        out = pipe({"image": im[None], "mask": mk[None]})
        images.append(out["image"])
        masks.append(out["mask"])
        pids.append(str(r["patient_id"]))
    log.info("%d real image/mask pairs (%s split) at %d px", len(pids), split, size)
    return {"images": torch.stack(images).float(), "masks": torch.stack(masks).float(), "patient_ids": pids}


def load_lidc_pairs(root: str | Path, *, size: int = 32, seed: int = 0, window: str = "lung") -> dict:
    """Real LIDC-IDRI nodule slices with their nodule masks, one random ``size``² crop per nodule.

    ``nodules_axial_50px.npz`` (1 mm pixels) is centred on each nodule; a crop at a random offset
    (seeded) puts the nodule anywhere within the central ``50 - size`` px, so a mask's position is
    informative (a shuffled mask of another crop lies elsewhere) and its size and shape too.

    Args:
        root: the ``lidc_nodules`` folder (``nodules_axial_50px.npz``, ``labels.csv``).
        size: crop side (<= 50; a power of two for the GAN).
        seed: crop offsets.
        window: CT window for the images.

    Returns:
        As :func:`load_real_pairs`: ``images`` (N, 1, size, size) in [-1, 1], ``masks`` in {0, 1},
        ``patient_ids`` (``lidc_patient_id``); plus ``mediastinal``, the same crops in the
        mediastinal window (N, 1, size, size) in [-1, 1].

    Raises:
        MedsynthError: missing files or columns, or ``size`` > 50.
    """
    import pandas as pd

    from medsynth.data.windows import hu_to_unit

    root = Path(root)
    npz_path, csv_path = root / "nodules_axial_50px.npz", root / "labels.csv"
    for f in (npz_path, csv_path):
        if not f.is_file():
            raise MedsynthError(f, "not found (expected the lidc_nodules folder)")
    with np.load(npz_path) as z:
        hu, mk = z["images"].astype(np.float32), z["masks"] > 0
    table = pd.read_csv(csv_path)
    if "lidc_patient_id" not in table.columns or len(table) != len(hu):
        raise MedsynthError(csv_path, f"needs a lidc_patient_id column and {len(hu)} rows")
    side = hu.shape[-1]
    if size > side:
        raise MedsynthError(None, f"crop size {size} exceeds the {side}-px LIDC slices")
    off = np.random.default_rng(seed).integers(0, side - size + 1, size=(len(hu), 2))
    images = np.stack([hu[i, y:y + size, x:x + size] for i, (y, x) in enumerate(off)])
    masks = np.stack([mk[i, y:y + size, x:x + size] for i, (y, x) in enumerate(off)])
    log.info("%d real LIDC image/mask pairs, %d-px crops", len(images), size)
    crops = torch.from_numpy(images)[:, None].double()
    return {"images": hu_to_unit(crops, window).float(), "mediastinal": hu_to_unit(crops, "mediastinal").float(),
            "masks": torch.from_numpy(masks)[:, None].float(),
            # 2 rows lack a patient id: their scan (series_uid) stands in, so they stay on one side.
            "patient_ids": [str(v) for v in table["lidc_patient_id"].fillna(table["series_uid"])]}


def unpaired_split(patient_ids: list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split rows by patient into an image half and a mask half (disjoint patient sets).

    Args:
        patient_ids: one id per row (a patient may have several rows; they stay together).
        seed: shuffles the patients.

    Returns:
        ``(image_rows, mask_rows)``: int64 row indices; the patients of the two are disjoint
        and together cover every row (the image half gets the extra patient when odd).

    Raises:
        MedsynthError: fewer than 2 patients.
    """
    uniq = sorted(set(patient_ids))
    if len(uniq) < 2:
        raise MedsynthError(None, f"an unpaired split needs at least 2 patients, got {len(uniq)}")
    order = np.random.default_rng(seed).permutation(len(uniq))
    first = {uniq[i] for i in order[: (len(uniq) + 1) // 2]}
    rows = np.arange(len(patient_ids))
    in_first = np.array([p in first for p in patient_ids], dtype=bool)
    return rows[in_first], rows[~in_first]


def write_unpaired_npz(path: str | Path, images: torch.Tensor, second: torch.Tensor, patient_ids: list[str],
                       image_rows: np.ndarray, mask_rows: np.ndarray, *, window: str = "lung",
                       second_name: str = "mask") -> Path:
    """Write the two-domain unpaired set as an ``.npz`` that ``medsynth train --data`` reads as CT.

    Domain 1 (label 0) = ``images[image_rows]``; domain 2 (label 1) = ``second[mask_rows]`` (a
    nodule mask as -1/+1, or the mediastinal-window rendering). Every row is stored as lung-window HU (``unit_to_hu``) so the standard CT
    pipeline with the same window and size returns the ``[-1, 1]`` arrays unchanged.

    Args:
        path: output ``.npz``.
        images: ``(N, 1, S, S)`` in [-1, 1].
        second: ``(N, 1, S, S)`` in [-1, 1], the domain-2 rendering of each row.
        patient_ids: N ids.
        image_rows, mask_rows: rows of each domain (see :func:`unpaired_split`).
        second_name: suffix of domain 2's ids (``<patient>/<second_name>``).
        window: the CT window training will use.

    Returns:
        ``path``.
    """
    from medsynth.atomic import atomic_path
    from medsynth.data.windows import unit_to_hu

    if set(patient_ids[i] for i in image_rows) & set(patient_ids[i] for i in mask_rows):
        raise MedsynthError(None, "image and mask halves share a patient: the set would not be unpaired")
    x = torch.cat([images[image_rows], second[mask_rows]])[:, 0]
    hu = unit_to_hu(x.double(), window).float().numpy()
    labels = np.r_[np.zeros(len(image_rows)), np.ones(len(mask_rows))].astype(np.int64)
    pids = np.array([f"{patient_ids[i]}/image" for i in image_rows] + [f"{patient_ids[i]}/{second_name}" for i in mask_rows])
    with atomic_path(path, ".npz.tmp") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=hu, labels=labels, patient_ids=pids, splits=np.array(["train"] * len(labels)))
    log.info("wrote %s: %d images (domain 1) + %d %s (domain 2)", path, len(image_rows), len(mask_rows),
             second_name)
    return Path(path)


def check_npz_round_trip(path: str | Path, expected: torch.Tensor, labels: np.ndarray, *, size: int,
                         window: str = "lung", atol: float = 1e-4) -> float:
    """Load ``path`` with medsynth's data layer and compare with ``expected`` ``(N, 1, S, S)``.

    Returns:
        The largest absolute difference.

    Raises:
        MedsynthError: a difference above ``atol`` or changed labels.
    """
    from medsynth.data.dataset import load_image_set

    ims = load_image_set(path, modality="ct", size=size, spatial_dims=2, split="train", ct_window=window)
    if not np.array_equal(ims.labels.numpy(), labels):
        raise MedsynthError(path, "labels changed on loading")
    err = float((ims.images - expected).abs().max())
    if err > atol:
        raise MedsynthError(path, f"loaded images differ from the written ones by {err:.3g} (> {atol})")
    return err


# ----------------------------------------------------------------------------- metrics
def ring_of(masks: torch.Tensor, ring: int) -> torch.Tensor:
    """Pixels within ``ring`` px (square dilation) of the mask, mask excluded.

    Args:
        masks: bool ``(N, 1, H, W)``.

    Returns:
        bool ``(N, 1, H, W)``.
    """
    k = 2 * int(ring) + 1
    dil = F.max_pool2d(masks.float(), k, stride=1, padding=int(ring)) > 0
    return dil & ~masks


def mask_contrast(images: torch.Tensor, masks: torch.Tensor, *, ring: int = 2) -> np.ndarray:
    """Mean image value inside each mask minus the mean in a ring around it.

    Args:
        images: ``(N, 1, H, W)`` in any units (HU here).
        masks: ``(N, 1, H, W)``; pixels > 0 are inside.
        ring: ring width in pixels.

    Returns:
        float64 ``(N,)``; NaN where the mask (or its ring) is empty.
    """
    m = masks > 0
    r = ring_of(m, ring)
    x = images.double()
    n_in, n_ring = m.sum((1, 2, 3)).double(), r.sum((1, 2, 3)).double()
    mean_in = (x * m).sum((1, 2, 3)) / n_in.clamp(min=1)
    mean_ring = (x * r).sum((1, 2, 3)) / n_ring.clamp(min=1)
    c = (mean_in - mean_ring).numpy()
    c[(n_in == 0).numpy() | (n_ring == 0).numpy()] = np.nan
    return c


def shuffled_contrast(images: torch.Tensor, masks: torch.Tensor, *, k: int = 8, ring: int = 2,
                      seed: int = 0) -> np.ndarray:
    """Control: each image with the masks of ``k`` *other* pairs (non-empty ones), contrast averaged.

    Args:
        images: ``(N, 1, H, W)``.
        masks: ``(N, 1, H, W)``; pixels > 0 are inside.
        k: other masks per image (at most the number of other non-empty masks).

    Returns:
        float64 ``(N,)``; NaN where no other non-empty mask exists.
    """
    n = images.shape[0]
    nonempty = np.flatnonzero((masks > 0).flatten(1).any(1).numpy())
    rng = np.random.default_rng(seed)
    out = np.full(n, np.nan)
    for i in range(n):
        pool = nonempty[nonempty != i]
        if len(pool) == 0:
            continue
        js = rng.choice(pool, size=min(k, len(pool)), replace=False)
        c = mask_contrast(images[i:i + 1].expand(len(js), -1, -1, -1), masks[js], ring=ring)
        out[i] = np.nanmean(c) if np.isfinite(c).any() else np.nan
    return out


def bootstrap_ci(x: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of the finite values of ``x`` and its percentile bootstrap 95% CI."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    return {"mean": float(x.mean()), "lo": float(np.percentile(means, 2.5)),
            "hi": float(np.percentile(means, 97.5)), "n": int(len(x))}


def mask_stats(masks: torch.Tensor) -> dict:
    """Area (pixels > 0) and connected-component statistics of ``(N, 1, H, W)`` masks."""
    from scipy import ndimage

    m = (masks > 0).numpy()[:, 0]
    areas = m.sum((1, 2)).astype(np.float64)
    comps = np.array([ndimage.label(a)[1] for a in m], dtype=np.float64)
    q = np.percentile(areas, [5, 25, 50, 75, 95])
    return {"n": int(len(m)), "frac_empty": float((areas == 0).mean()),
            "area_mean": float(areas.mean()), "area_sd": float(areas.std()),
            "area_p5_25_50_75_95": [float(v) for v in q],
            "components_mean": float(comps.mean()), "frac_one_component": float((comps == 1).mean())}


def summarise(name: str, aligned: np.ndarray, shuffled: np.ndarray, *, seed: int = 0) -> dict:
    """Mean contrasts of aligned and shuffled pairs and the bootstrap CI of their difference."""
    return {"set": name, "aligned": bootstrap_ci(aligned, seed=seed), "shuffled": bootstrap_ci(shuffled, seed=seed),
            "aligned_minus_shuffled": bootstrap_ci(aligned - shuffled, seed=seed)}


def mediastinal_from_lung(lung: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mediastinal-window rendering a lung-window image determines, and where it determines it.

    The lung window (-1350..150 HU) contains the mediastinal one's lower part (-160..240 HU): below
    150 HU a lung-window value fixes the mediastinal value (-1 below -160 HU); at the lung window's
    clipped top (>= 150 HU) it only bounds it.

    Args:
        lung: ``(N, 1, H, W)`` lung-window images in [-1, 1].

    Returns:
        ``(predicted, known)``: the mediastinal rendering ``(N, 1, H, W)`` in [-1, 1] and a bool
        mask of the pixels where the prediction is exact.
    """
    from medsynth.data.windows import hu_to_unit, unit_to_hu, window_bounds

    hu = unit_to_hu(lung.double().clamp(-1, 1), "lung")
    return hu_to_unit(hu, "mediastinal").float(), hu < window_bounds("lung")[1] - 1e-3


def window_error(lung: torch.Tensor, mediastinal: torch.Tensor) -> np.ndarray:
    """Per pair, mean |mediastinal - the rendering its lung image determines| in HU, over the
    determined pixels (:func:`mediastinal_from_lung`): 0 for a real slice shown in both windows.

    Args:
        lung, mediastinal: ``(N, 1, H, W)`` in [-1, 1] (lung and mediastinal window).

    Returns:
        float64 ``(N,)`` in HU (mediastinal window: 1 unit = 200 HU); NaN where no pixel is determined.
    """
    pred, known = mediastinal_from_lung(lung)
    err = (mediastinal.double() - pred.double()).abs() * 200.0 * known
    n = known.sum((1, 2, 3)).double()
    out = (err.sum((1, 2, 3)) / n.clamp(min=1)).numpy()
    out[(n == 0).numpy()] = np.nan
    return out


def shuffled_window_error(lung: torch.Tensor, mediastinal: torch.Tensor, *, k: int = 8, seed: int = 0) -> np.ndarray:
    """Control: each lung image against the mediastinal images of ``k`` *other* pairs, error averaged."""
    n = lung.shape[0]
    rng = np.random.default_rng(seed)
    out = np.full(n, np.nan)
    for i in range(n):
        pool = np.delete(np.arange(n), i)
        if len(pool) == 0:
            continue
        js = rng.choice(pool, size=min(k, len(pool)), replace=False)
        out[i] = np.nanmean(window_error(lung[i:i + 1].expand(len(js), -1, -1, -1), mediastinal[js]))
    return out


def head_channel_use(model, *, top: int = 8) -> dict:
    """Which shared feature channels each private generator head reads, from its first layer's weights.

    CoGAN's pairing rests on both heads rendering the *same* shared features. If the shared trunk
    has room, the heads can instead read disjoint channel sets: two independent scenes in one
    trunk, and no alignment. Per input channel the norm of the head's first-layer weights measures
    how much that head reads it.

    Args:
        model: a trained CoGAN variant (its EMA generator is inspected when present).
        top: size of each head's most-read channel set (at most a quarter of the channels).

    Returns:
        ``{"channels", "cosine", "top_overlap", "top"}``: the cosine between the two heads'
        per-channel norms, and how many of each head's ``top`` most-read channels the other shares
        (``top`` = same channels; 0 = disjoint).
    """
    heads = model.generator(True).heads
    norms = []
    for head in heads:
        conv = next(m for m in head.modules()
                    if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)))
        w = conv.weight.detach().double()
        w = w if conv.transposed else w.transpose(0, 1)  # -> (in_channels, out_channels, *k)
        norms.append(w.flatten(1).norm(dim=1))  # (in_channels,)
    a, b = norms
    top = min(int(top), max(1, len(a) // 4))  # a quarter at most, or every head would 'share' all
    overlap = len(set(a.argsort(descending=True)[:top].tolist()) & set(b.argsort(descending=True)[:top].tolist()))
    return {"channels": int(len(a)), "cosine": float(a @ b / (a.norm() * b.norm())), "top_overlap": overlap,
            "top": top}


def marginal_fd(real: torch.Tensor, synth: torch.Tensor, *, seed: int = 0, repeats: int = 5,
                encoder_steps: int = 300) -> dict:
    """Fréchet distance of one domain's generated images to that domain's real training images.

    Alignment is worthless if it costs the images their realism, so every pairing run also scores
    each domain's marginal. The protocol is ``medsynth evaluate``'s: a feature encoder trained on
    the real images (seeded), then per random split ``m`` synthetic vs real half A against real
    half B vs real half A (the floor).

    Args:
        real: ``(N, 1, S, S)`` real images of the domain in [-1, 1], N ≥ 8.
        synth: ``(M, 1, S, S)`` generated images of the domain in [-1, 1].

    Returns:
        ``{"synthetic": {"mean", "sd"}, "floor": {"mean", "sd"}, "m", "h", "repeats", "encoder_fingerprint"}``.
    """
    from medsynth.metrics.evaluate import split_indices
    from medsynth.metrics.fidelity import encoder_fingerprint, extract_features, frechet_distance, train_feature_encoder

    enc = train_feature_encoder(real, seed=seed, steps=encoder_steps)
    fr, fs = extract_features(enc, real), extract_features(enc, synth)
    h = len(fr) // 2
    m = min(h, len(fs))
    syn, flo = [], []
    for a, b, si in split_indices(len(fr), len(fs), repeats, np.random.default_rng(seed)):
        syn.append(frechet_distance(fs[si], fr[a[:m]]))
        flo.append(frechet_distance(fr[b], fr[a[:m]]))
    ms = lambda v: {"mean": float(np.mean(v)), "sd": float(np.std(v))}  # noqa: E731  (population sd over splits)
    return {"synthetic": ms(syn), "floor": ms(flo), "m": int(m), "h": int(h), "repeats": int(max(1, repeats)),
            "encoder_fingerprint": encoder_fingerprint(enc)}


# ----------------------------------------------------------------------------- figure
def tiles_png(columns: list[torch.Tensor], path: str | Path, *, cols: int = 4, scale: int = 2) -> Path:
    """Grid of side-by-side tuples: tuple ``i`` shows ``columns[j][i]`` (each ``(N, 1, S, S)`` in
    [-1, 1]) for every ``j``; ``cols`` tuples per row."""
    return _grid_png([[((c[i, 0].clamp(-1, 1).numpy() + 1) * 127.5).astype(np.uint8) for c in columns]
                      for i in range(columns[0].shape[0])], path, cols=cols, scale=scale)


def _grid_png(tuples: list[list[np.ndarray]], path: str | Path, *, cols: int, scale: int) -> Path:
    """Write tuples of ``(S, S)`` grey or ``(S, S, 3)`` uint8 tiles as one PNG grid."""
    from PIL import Image

    from medsynth.atomic import atomic_path

    n, k, s = len(tuples), len(tuples[0]), tuples[0][0].shape[0]
    rows = (n + cols - 1) // cols
    pad = 2
    tw, th = k * s + (k - 1) * pad, s
    canvas = np.full((rows * (th + 3 * pad), cols * (tw + 4 * pad), 3), 255, dtype=np.uint8)
    for i, tiles in enumerate(tuples):
        r, c = divmod(i, cols)
        y, x = r * (th + 3 * pad), c * (tw + 4 * pad)
        for j, tile in enumerate(tiles):
            x0 = x + j * (s + pad)
            canvas[y:y + s, x0:x0 + s] = tile if tile.ndim == 3 else tile[..., None]
    img = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    with atomic_path(path, ".png.tmp") as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def pairs_png(images: torch.Tensor, masks: torch.Tensor, path: str | Path, *, cols: int = 4,
              scale: int = 2) -> Path:
    """Grid of (image | mask | overlay) triplets, ``cols`` triplets per row.

    Args:
        images: ``(N, 1, S, S)`` in [-1, 1].
        masks: ``(N, 1, S, S)`` in [-1, 1] (generated) or {0, 1}; shown thresholded at > 0.
        path: output PNG.
    """
    tuples = []
    for i in range(images.shape[0]):
        g = ((images[i, 0].clamp(-1, 1).numpy() + 1) * 127.5).astype(np.uint8)
        m = (masks[i, 0] > 0).numpy()
        grey = np.repeat(g[..., None], 3, -1)
        ov = grey.astype(np.float32)
        ov[m] = 0.5 * ov[m] + 0.5 * np.array([255.0, 0.0, 0.0])
        tuples.append([grey, np.repeat((m * 255).astype(np.uint8)[..., None], 3, -1), ov.astype(np.uint8)])
    return _grid_png(tuples, path, cols=cols, scale=scale)


# ----------------------------------------------------------------------------- main
def _train(npz: Path, parent: Path, args) -> tuple[Path, list[str]]:
    """Train CoGAN on ``npz`` under ``parent`` to the CPU budget
    (:func:`pipelines.studies.budget.train_to_budget`: a finished run is reused, an interrupted one
    resumed). Returns the run and the new-run argv."""
    from pipelines.studies.budget import train_command, train_to_budget

    new_args = ["--modality", "ct", "--model", "cogan", "--data", str(npz), "--size", str(args.size),
                "--seed", str(args.seed)]
    kw = dict(minutes=args.minutes, max_steps=args.max_steps, sets=list(args.set))
    run = train_to_budget(parent, new_args, name="cogan", **kw)
    return run, train_command(parent, None, new_args, **kw)


def _rel(text: str) -> str:
    """``text`` with this checkout's root folder removed from paths (results stay portable)."""
    return text.replace(str(ROOT) + os.sep, "")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default=str(ROOT / "sample_data" / "manifest.csv"))
    ap.add_argument("--lidc", default=None, help="the lidc_nodules folder: real LIDC slices and nodule masks "
                    "(random --size crops) instead of the manifest's phantom slices")
    ap.add_argument("--pair", choices=("mask", "segmented", "window"), default="mask",
                    help="domain 2: nodule masks (default); 'segmented': the slice inside its nodule mask, -1 "
                         "outside (the mask = where it exceeds --segmented-threshold); 'window': the mediastinal "
                         "window of the slices (needs --lidc)")
    ap.add_argument("--segmented-threshold", type=float, default=-0.9,
                    help="'segmented' pairs: a generated pixel above this (in [-1, 1]) is inside the mask")
    ap.add_argument("--minutes", type=float, default=6.0, help="process-CPU-time budget of training")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head", choices=("pointwise", "conv"), default="pointwise",
                    help="generator heads: 'pointwise' (default; per-pixel heads on one shared 1-channel map, the "
                         "set-up that aligned the pairs) or 'conv' (the paper's private up-sampling layers)")
    ap.add_argument("--set", action="append", default=[], help="extra `medsynth train --set` overrides")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "cogan_pairs"), help="work folder (npz, run)")
    ap.add_argument("--run", default=None, help="evaluate this existing run directory instead of training")
    ap.add_argument("--n-eval", type=int, default=512, help="generated pairs for the metrics")
    ap.add_argument("--n-show", type=int, default=16, help="pairs in pairs.png")
    ap.add_argument("--ring", type=int, default=2)
    ap.add_argument("--shuffles", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "reports" / "cogan_pairs"))
    args = ap.parse_args(argv)
    if args.head == "pointwise":  # before the user's --set, which may still change head_channels
        args.set = ["model.params.head=pointwise", "model.params.head_channels=1", *args.set]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)

    from medsynth.atomic import write_text
    from medsynth.data.windows import unit_to_hu
    from medsynth.runs import load_trained

    out, work = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    if args.lidc:
        real = load_lidc_pairs(args.lidc, size=args.size, seed=args.seed)
    else:
        real = load_real_pairs(args.manifest, size=args.size)
    if args.pair == "window" and "mediastinal" not in real:
        raise MedsynthError("--pair window", "needs --lidc (the manifest source has masks only)")
    if args.pair == "window":
        second = real["mediastinal"]
    elif args.pair == "segmented":  # the nodule's own pixels, the rest at the window's floor
        second = torch.where(real["masks"] > 0, real["images"], torch.full_like(real["images"], -1.0))
    else:
        second = real["masks"] * 2 - 1
    img_rows, mask_rows = unpaired_split(real["patient_ids"], seed=args.seed)
    # A constant training image (an empty mask, an all-lung crop in the mediastinal window) is
    # rejected by the data layer: leave such rows out of their domain and record how many.
    def varies(x: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        flat = x[rows].flatten(1)
        return rows[(flat.amax(1) > flat.amin(1)).numpy()]

    n_split = (len(img_rows), len(mask_rows))
    img_rows, mask_rows = varies(real["images"], img_rows), varies(second, mask_rows)
    dropped = {"domain1": n_split[0] - len(img_rows), "domain2": n_split[1] - len(mask_rows)}
    if any(dropped.values()):
        log.info("constant rows left out: %s", dropped)
    npz = work / f"unpaired_train_s{args.seed}.npz"
    write_unpaired_npz(npz, real["images"], second, real["patient_ids"], img_rows, mask_rows,
                       second_name={"window": "mediastinal", "segmented": "segmented"}.get(args.pair, "mask"))
    expected = torch.cat([real["images"][img_rows], second[mask_rows]])
    labels = np.r_[np.zeros(len(img_rows)), np.ones(len(mask_rows))].astype(np.int64)
    rt_err = check_npz_round_trip(npz, expected, labels, size=args.size)
    log.info("npz round trip through load_image_set: max |diff| %.2g", rt_err)

    cmd = None
    if args.run:
        run = Path(args.run)
    else:
        run, cmd = _train(npz, work / f"seed{args.seed}", args)
    _, model, ck = load_trained(run)

    g = torch.Generator().manual_seed(args.seed + 1000)
    x_img, x_mask = model.sample_pairs(args.n_eval, generator=g)
    train_info = {"command": _rel(" ".join(cmd[1:])) if cmd else None, "overrides": args.set, "run": _rel(str(run)),
                  "step": int(ck["step"]), "cpu_seconds": round(float(ck.get("cpu_seconds", 0.0)), 1),
                  "wall_seconds": round(float(ck["seconds"]), 1), "head_channel_use": head_channel_use(model)}
    unpaired = {"n_real_pairs": len(real["patient_ids"]), "n_patients": len(set(real["patient_ids"])),
                "domain1_images": int(len(img_rows)), "domain2": int(len(mask_rows)),
                "patients_shared_between_domains": len({real["patient_ids"][i] for i in img_rows}
                                                       & {real["patient_ids"][i] for i in mask_rows}),
                "constant_rows_left_out": dropped, "npz_round_trip_max_abs_diff": rt_err}
    source = os.path.relpath(args.lidc, ROOT) if args.lidc else os.path.relpath(args.manifest, ROOT)
    fidelity = {"domain1": marginal_fd(real["images"][img_rows], x_img, seed=args.seed),
                "domain2": marginal_fd(second[mask_rows], x_mask, seed=args.seed)}
    log.info("marginal FD: domain 1 %.1f (floor %.1f), domain 2 %.1f (floor %.1f)",
             fidelity["domain1"]["synthetic"]["mean"], fidelity["domain1"]["floor"]["mean"],
             fidelity["domain2"]["synthetic"]["mean"], fidelity["domain2"]["floor"]["mean"])
    if args.pair == "window":
        return _window_report(args, out, real, x_img, x_mask, train_info, unpaired, source, fidelity)
    if args.pair == "segmented":  # the generated mask is where the segmented image is above the floor
        x_mask = torch.where(x_mask > args.segmented_threshold, 1.0, -1.0)
    pairs_png(x_img[: args.n_show], x_mask[: args.n_show], out / "pairs.png")
    show = np.linspace(0, len(real["patient_ids"]) - 1, min(8, len(real["patient_ids"]))).round().astype(int)
    pairs_png(real["images"][show], real["masks"][show], out / "real_pairs.png")

    hu_syn, hu_real = unit_to_hu(x_img.double(), "lung"), unit_to_hu(real["images"].double(), "lung")
    syn_mask = (x_mask > 0).float()
    kw = dict(ring=args.ring)
    res_syn = summarise("generated pairs (same latent)", mask_contrast(hu_syn, syn_mask, **kw),
                        shuffled_contrast(hu_syn, syn_mask, k=args.shuffles, seed=args.seed, **kw), seed=args.seed)
    res_real = summarise("real pairs (own mask; ceiling)", mask_contrast(hu_real, real["masks"], **kw),
                         shuffled_contrast(hu_real, real["masks"], k=args.shuffles, seed=args.seed, **kw),
                         seed=args.seed)
    # Does the generated image look like a nodule slice at all? Real masks on generated images.
    rng = np.random.default_rng(args.seed)
    pick = torch.as_tensor(rng.integers(0, len(real["patient_ids"]), size=args.n_eval))
    real_on_syn = bootstrap_ci(mask_contrast(hu_syn, real["masks"][pick], **kw), seed=args.seed)

    result = {
        "format": "medsynth-cogan-pairs/1",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source, "pair": "image/mask" if args.pair == "mask" else
        f"image/segmented nodule (mask = pixels > {args.segmented_threshold})", "size": args.size, "seed": args.seed,
        "unpaired_set": unpaired, "train": train_info,
        "metric": {"units": "HU (lung window -1350..150, clipped)", "ring_px": args.ring,
                   "shuffles_per_image": args.shuffles, "n_generated": args.n_eval,
                   "mask_threshold": "> 0 (generated masks in [-1, 1])"},
        "contrast": {"generated": res_syn, "real": res_real, "real_masks_on_generated_images": real_on_syn},
        "mask_area": {"generated": mask_stats(syn_mask), "real": mask_stats(real["masks"])},
        "marginal_fd": fidelity,
    }
    write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", out / "results.json")
    return result


def _window_report(args, out: Path, real: dict, x_lung: torch.Tensor, x_med: torch.Tensor, train_info: dict,
                   unpaired: dict, source: str, fidelity: dict) -> dict:
    """Lung/mediastinal window pairs: figure and window-consistency figures -> ``out/results.json``."""
    from medsynth.atomic import write_text

    pred, _ = mediastinal_from_lung(x_lung)
    tiles_png([x_lung[: args.n_show], x_med[: args.n_show], pred[: args.n_show]], out / "pairs.png")
    show = np.linspace(0, len(real["patient_ids"]) - 1, min(8, len(real["patient_ids"]))).round().astype(int)
    tiles_png([real["images"][show], real["mediastinal"][show]], out / "real_pairs.png")
    k, sd = args.shuffles, args.seed
    gen_a, gen_s = window_error(x_lung, x_med), shuffled_window_error(x_lung, x_med, k=k, seed=sd)
    # Real slices: their own mediastinal rendering (0 by construction) and other slices' (no alignment).
    real_s = shuffled_window_error(real["images"], real["mediastinal"], k=k, seed=sd)
    result = {
        "format": "medsynth-cogan-pairs/1",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source, "pair": "lung/mediastinal window", "size": args.size, "seed": args.seed,
        "unpaired_set": unpaired, "train": train_info,
        "metric": {"units": "HU, mean |mediastinal - rendering determined by the lung image| over determined "
                            "pixels (lung HU < 150)", "shuffles_per_image": k, "n_generated": args.n_eval},
        "window_error": {
            "generated": {"aligned": bootstrap_ci(gen_a, seed=sd), "shuffled": bootstrap_ci(gen_s, seed=sd),
                          "shuffled_minus_aligned": bootstrap_ci(gen_s - gen_a, seed=sd)},
            "real": {"aligned": bootstrap_ci(window_error(real["images"], real["mediastinal"]), seed=sd),
                     "shuffled": bootstrap_ci(real_s, seed=sd)},
        },
        "marginal_fd": fidelity,
    }
    write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", out / "results.json")
    return result
