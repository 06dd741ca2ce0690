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
   ``pipelines/ct_cogan.yaml``.
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

Run: ``python -m pipelines.cogan_pairs [--minutes 6] [--seed 0] [--set KEY=VALUE]... [--run RUN_DIR]
[--out DIR]``; writes ``DIR/{pairs.png, real_pairs.png, results.json}`` (default
``reports/cogan_pairs``). ``--run`` skips training and evaluates an existing run. The committed
runs (preset, DiffAugment, 6 and 20 CPU minutes) and their reading are in
``reports/cogan_pairs/README.md``: at 6 minutes the preset collapses and no configuration tried
aligns; at 20 minutes with DiffAugment a small alignment signal appears.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


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


def write_unpaired_npz(path: str | Path, images: torch.Tensor, masks: torch.Tensor, patient_ids: list[str],
                       image_rows: np.ndarray, mask_rows: np.ndarray, *, window: str = "lung") -> Path:
    """Write the two-domain unpaired set as an ``.npz`` that ``medsynth train --data`` reads as CT.

    Domain 1 (label 0) = ``images[image_rows]``; domain 2 (label 1) = ``masks[mask_rows]`` mapped
    0/1 -> -1/+1. Every row is stored as lung-window HU (``unit_to_hu``) so the standard CT
    pipeline with the same window and size returns the ``[-1, 1]`` arrays unchanged.

    Args:
        path: output ``.npz``.
        images: ``(N, 1, S, S)`` in [-1, 1].
        masks: ``(N, 1, S, S)`` in {0, 1}.
        patient_ids: N ids.
        image_rows, mask_rows: rows of each domain (see :func:`unpaired_split`).
        window: the CT window training will use.

    Returns:
        ``path``.
    """
    from medsynth.atomic import atomic_path
    from medsynth.data.windows import unit_to_hu

    if set(patient_ids[i] for i in image_rows) & set(patient_ids[i] for i in mask_rows):
        raise MedsynthError(None, "image and mask halves share a patient: the set would not be unpaired")
    x = torch.cat([images[image_rows], masks[mask_rows] * 2.0 - 1.0])[:, 0]
    hu = unit_to_hu(x.double(), window).float().numpy()
    labels = np.r_[np.zeros(len(image_rows)), np.ones(len(mask_rows))].astype(np.int64)
    pids = np.array([f"{patient_ids[i]}/image" for i in image_rows] + [f"{patient_ids[i]}/mask" for i in mask_rows])
    with atomic_path(path, ".npz.tmp") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=hu, labels=labels, patient_ids=pids, splits=np.array(["train"] * len(labels)))
    log.info("wrote %s: %d images (domain 1) + %d masks (domain 2)", path, len(image_rows), len(mask_rows))
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


# ----------------------------------------------------------------------------- figure
def pairs_png(images: torch.Tensor, masks: torch.Tensor, path: str | Path, *, cols: int = 4,
              scale: int = 2) -> Path:
    """Grid of (image | mask | overlay) triplets, ``cols`` triplets per row.

    Args:
        images: ``(N, 1, S, S)`` in [-1, 1].
        masks: ``(N, 1, S, S)`` in [-1, 1] (generated) or {0, 1}; shown thresholded at > 0.
        path: output PNG.
    """
    from PIL import Image

    from medsynth.atomic import atomic_path

    n, s = images.shape[0], images.shape[-1]
    rows = (n + cols - 1) // cols
    pad = 2
    tw, th = 3 * s + 2 * pad, s
    canvas = np.full((rows * (th + 3 * pad), cols * (tw + 4 * pad), 3), 255, dtype=np.uint8)
    for i in range(n):
        g = ((images[i, 0].clamp(-1, 1).numpy() + 1) * 127.5).astype(np.uint8)
        m = (masks[i, 0] > 0).numpy()
        grey = np.repeat(g[..., None], 3, -1)
        mk = np.repeat((m * 255).astype(np.uint8)[..., None], 3, -1)
        ov = grey.astype(np.float32)
        ov[m] = 0.5 * ov[m] + 0.5 * np.array([255.0, 0.0, 0.0])
        r, c = divmod(i, cols)
        y, x = r * (th + 3 * pad), c * (tw + 4 * pad)
        for j, tile in enumerate((grey, mk, ov.astype(np.uint8))):
            x0 = x + j * (s + pad)
            canvas[y:y + s, x0:x0 + s] = tile
    img = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    with atomic_path(path, ".png.tmp") as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


# ----------------------------------------------------------------------------- main
def _train(npz: Path, parent: Path, args) -> tuple[Path, list[str]]:
    cmd = [sys.executable, "-m", "medsynth.cli", "train", "--modality", "ct", "--model", "cogan",
           "--data", str(npz), "--size", str(args.size), "--minutes", str(args.minutes),
           "--steps", str(args.max_steps), "--seed", str(args.seed), "--out", str(parent), "--no-progress",
           "--set", "train.clock=process", "--set", "train.threads=1"]
    for s in args.set:
        cmd += ["--set", s]
    parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.info("train: %s", " ".join(cmd))
    with open(parent / "train.log", "a") as fh:
        res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if res.returncode:
        raise RuntimeError(f"training failed (exit {res.returncode}); see {parent / 'train.log'}")
    runs = sorted(p for p in parent.iterdir() if p.is_dir() and p.name.endswith("-ct-cogan"))
    if not runs:
        raise RuntimeError(f"no run directory under {parent}")
    return runs[-1], cmd


def _rel(text: str) -> str:
    """``text`` with this checkout's root folder removed from paths (results stay portable)."""
    return text.replace(str(ROOT) + os.sep, "")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default=str(ROOT / "sample_data" / "manifest.csv"))
    ap.add_argument("--minutes", type=float, default=6.0, help="process-CPU-time budget of training")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="extra `medsynth train --set` overrides")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "cogan_pairs"), help="work folder (npz, run)")
    ap.add_argument("--run", default=None, help="evaluate this existing run directory instead of training")
    ap.add_argument("--n-eval", type=int, default=512, help="generated pairs for the metrics")
    ap.add_argument("--n-show", type=int, default=16, help="pairs in pairs.png")
    ap.add_argument("--ring", type=int, default=2)
    ap.add_argument("--shuffles", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "reports" / "cogan_pairs"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)

    from medsynth.atomic import write_text
    from medsynth.data.windows import unit_to_hu
    from medsynth.train.loop import load_trained

    out, work = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    real = load_real_pairs(args.manifest, size=args.size)
    img_rows, mask_rows = unpaired_split(real["patient_ids"], seed=args.seed)
    npz = work / f"unpaired_train_s{args.seed}.npz"
    write_unpaired_npz(npz, real["images"], real["masks"], real["patient_ids"], img_rows, mask_rows)
    expected = torch.cat([real["images"][img_rows], real["masks"][mask_rows] * 2 - 1])
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
        "manifest": os.path.relpath(args.manifest, ROOT), "size": args.size, "seed": args.seed,
        "unpaired_set": {
            "n_patients_nodule_train": len(real["patient_ids"]),
            "domain1_images": int(len(img_rows)), "domain2_masks": int(len(mask_rows)),
            "patients_shared_between_domains": len({real["patient_ids"][i] for i in img_rows}
                                                   & {real["patient_ids"][i] for i in mask_rows}),
            "npz_round_trip_max_abs_diff": rt_err,
        },
        "train": {"command": _rel(" ".join(cmd[1:])) if cmd else None, "overrides": args.set, "run": _rel(str(run)),
                  "step": int(ck["step"]),
                  "cpu_seconds": round(float(ck.get("cpu_seconds", 0.0)), 1),
                  "wall_seconds": round(float(ck["seconds"]), 1)},
        "metric": {"units": "HU (lung window -1350..150, clipped)", "ring_px": args.ring,
                   "shuffles_per_image": args.shuffles, "n_generated": args.n_eval,
                   "mask_threshold": "> 0 (generated masks in [-1, 1])"},
        "contrast": {"generated": res_syn, "real": res_real, "real_masks_on_generated_images": real_on_syn},
        "mask_area": {"generated": mask_stats(syn_mask), "real": mask_stats(real["masks"])},
    }
    write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", out / "results.json")
    return result


if __name__ == "__main__":
    r = main()
    print(json.dumps({k: r[k] for k in ("contrast", "mask_area")}, indent=1))
