"""Published-baseline check: the classifier pipeline, real data only, against MedMNIST v2 figures.

Proves the yardstick before the augmentation benchmark uses it:

* **PneumoniaMNIST** (28 px chest X-ray, normal vs pneumonia; official train/val/test splits):
  MedMNIST v2 ResNet-18 (28) test AUROC **0.944**. Run with ``arch="resnet18"`` and MedMNIST's
  small-input stem (3-wide stride-1 first conv, no max pooling). Pass band: +-0.02.
* **LIDC benign vs malignant** 3D nodule crops (:func:`medsynth.data.lidc.load_lidc`,
  patient-level split): NoduleMNIST3D 3D ResNet-18 (28^3) test AUROC **0.863**. Our crops come
  from LUNA16/NODE21 with the NoduleMNIST3D labelling rule but are not the same images or
  split, so "near" is the expectation, not a band.

MedMNIST's protocol: Adam lr 1e-3, batch 128, 100 epochs, lr x0.1 after epochs 50 and 75,
the epoch with the best validation AUROC is evaluated on test, no augmentation; binary
tasks are trained there with 2-way cross-entropy, here with one logit and BCE (equivalent for
two classes). ``epochs`` is a parameter: the milestones scale with it (50 % and 75 %).

The test AUROC carries a percentile bootstrap 95 % CI (:func:`medsynth.metrics.stats.bootstrap_ci`;
cases resampled for PneumoniaMNIST, which has no patient ids, and whole patients for LIDC).

Run it (it logs progress; the CLI-free entry point follows ``pipelines/studies/phantom_difficulty/study.py``)::

    OMP_NUM_THREADS=1 python -m pipelines.studies.baselines --epochs 4 --lidc-epochs 20
    python -m pipelines.studies.baselines --device cuda          # the full 100-epoch protocol on a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from medsynth.atomic import write_text
from medsynth.errors import MedsynthError
from medsynth.metrics.stats import bootstrap_ci
from medsynth.downstream.classifier import predict_proba, train_classifier

log = logging.getLogger(__name__)

__all__ = [
    "PUBLISHED",
    "load_pneumoniamnist",
    "run_pneumoniamnist",
    "run_lidc3d",
    "write_baselines_report",
]

#: dataset -> published test AUROC, its source, and the tolerance we hold ourselves to
PUBLISHED: dict[str, dict] = {
    "pneumoniamnist": {
        "auroc": 0.944,
        "source": "MedMNIST v2 (Yang et al., Sci. Data 2023), ResNet-18 (28)",
        "tolerance": 0.02,
    },
    "lidc3d": {
        "auroc": 0.863,
        "source": "MedMNIST v2 NoduleMNIST3D, 3D ResNet-18 (28^3)",
        "tolerance": None,
    },
}

DEFAULT_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"


def load_pneumoniamnist(root: str | Path) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Load PneumoniaMNIST's official splits.

    Args:
        root: the ``pneumoniamnist`` folder holding ``pneumoniamnist_28.npz``.

    Returns:
        ``{"train"|"val"|"test": (images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64)}``.

    Raises:
        MedsynthError: folder, file or arrays missing.
    """
    path = Path(root) / "pneumoniamnist_28.npz"
    if not path.is_file():
        raise MedsynthError(path, "PneumoniaMNIST file not found")
    out = {}
    try:
        with np.load(path) as d:
            for split in ("train", "val", "test"):
                img = d[f"{split}_images"]
                lab = d[f"{split}_labels"].reshape(-1).astype(np.int64)
                x = torch.from_numpy(img.astype(np.float32)).unsqueeze(1) / 127.5 - 1.0
                out[split] = (x.contiguous(), lab)
    except KeyError as exc:
        raise MedsynthError(path, f"missing array {exc}") from exc
    return out


def _subset(x: torch.Tensor, y: np.ndarray, n: int | None, seed: int):
    """A class-stratified random subset of ``n`` cases (all when ``n`` is None)."""
    if n is None or n >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    idx = np.concatenate([
        rng.choice(np.flatnonzero(y == c), size=max(1, int(round(n * np.mean(y == c)))), replace=False)
        for c in (0, 1)
    ])
    idx.sort()
    return x[torch.from_numpy(idx)], y[idx]


def _device_desc(device) -> str:
    dev = str(device)
    if dev.startswith("cuda") and torch.cuda.is_available():
        return f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
    return f"{dev} ({platform.processor() or platform.machine()})" if dev == "cpu" else dev


def _milestones(epochs: int) -> tuple[int, ...]:
    """MedMNIST's lr drops at 50 % and 75 % of training (epochs 50 and 75 of 100)."""
    ms = sorted({int(round(epochs * 0.5)), int(round(epochs * 0.75))})
    return tuple(m for m in ms if 0 < m < epochs)


def _fit_and_score(
    name: str,
    data: dict,
    *,
    spatial_dims: int,
    arch: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str,
    n_boot: int,
    small_stem: bool | None,
    test_clusters=None,
    input_desc: str,
    extra: dict | None = None,
) -> dict:
    (xtr, ytr), (xv, yv), (xte, yte) = data["train"], data["val"], data["test"]
    milestones = _milestones(epochs)
    t0 = time.perf_counter()
    model = train_classifier(
        xtr, ytr, spatial_dims=spatial_dims, arch=arch, epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=0.0, seed=seed, x_val=xv, y_val=yv, lr_milestones=milestones,
        small_stem=small_stem, device=device, dropout=None,
    )
    train_s = time.perf_counter() - t0
    p = predict_proba(model, xte, device="cpu")
    ci = bootstrap_ci(yte, p, "auroc", n_boot=n_boot, seed=seed, clusters=test_clusters)
    pub = PUBLISHED[name]
    delta = ci.point - pub["auroc"]
    tol = pub["tolerance"]
    res = {
        "dataset": name,
        "arch": arch,
        "input": input_desc,
        "protocol": {
            "optimizer": "Adam", "lr": lr, "weight_decay": 0.0, "batch_size": batch_size,
            "epochs": epochs, "lr_milestones": list(milestones), "lr_gamma": 0.1,
            "selection": "best validation AUROC", "augmentation": "none", "loss": "BCE, 1 logit",
            "seed": seed,
        },
        "n": {"train": int(len(ytr)), "val": int(len(yv)), "test": int(len(yte))},
        "n_pos": {"train": int(np.sum(ytr)), "val": int(np.sum(yv)), "test": int(np.sum(yte))},
        "best_epoch": int(model.best_epoch),
        "val_auroc_best": max((h["val_auroc"] or float("nan")) for h in model.history),
        "history": model.history,
        "test_auroc": ci.point,
        "ci95": [ci.lo, ci.hi],
        "ci_method": "percentile bootstrap, "
                     + ("patients resampled" if test_clusters is not None else "test images resampled")
                     + f", {ci.n_boot} resamples",
        "published_auroc": pub["auroc"],
        "published_source": pub["source"],
        "delta": delta,
        "tolerance": tol,
        "within_tolerance": None if tol is None else bool(abs(delta) <= tol),
        "device": _device_desc(device),
        "torch_threads": torch.get_num_threads(),
        "train_seconds": train_s,
        "wall_seconds": time.perf_counter() - t0,
    }
    if extra:
        res.update(extra)
    log.info("%s %s: test AUROC %.3f [%.3f, %.3f] (published %.3f, delta %+.3f), best epoch %d, %.0f s",
             name, arch, ci.point, ci.lo, ci.hi, pub["auroc"], delta, model.best_epoch, train_s)
    return res


def run_pneumoniamnist(
    root: str | Path,
    *,
    arch: str = "resnet18",
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    n_boot: int = 1000,
    max_train: int | None = None,
    max_eval: int | None = None,
) -> dict:
    """Train real-only on PneumoniaMNIST (28 px) and score the official test set.

    Args:
        root: the ``pneumoniamnist`` folder.
        arch: classifier architecture (MedMNIST: ``"resnet18"`` with the small-input stem).
        epochs, batch_size, lr: MedMNIST protocol (100, 128, 1e-3); lr x0.1 at 50 %/75 %.
        seed: initialisation / shuffling seed.
        device: torch device to train on (``"cpu"``, ``"cuda"``).
        n_boot: bootstrap resamples for the test AUROC CI.
        max_train, max_eval: stratified subsets for smoke tests (``None`` = full splits).

    Returns:
        A result dict (test AUROC, CI, delta to 0.944, protocol, per-epoch history, timing).
    """
    d = load_pneumoniamnist(root)
    data = {
        "train": _subset(*d["train"], max_train, seed),
        "val": _subset(*d["val"], max_eval, seed),
        "test": _subset(*d["test"], max_eval, seed),
    }
    return _fit_and_score(
        "pneumoniamnist", data, spatial_dims=2, arch=arch, epochs=epochs, batch_size=batch_size,
        lr=lr, seed=seed, device=device, n_boot=n_boot, small_stem=True,
        input_desc="28x28, official splits, grey levels /127.5 - 1",
        extra={"subset": {"max_train": max_train, "max_eval": max_eval}},
    )


def run_lidc3d(
    root: str | Path,
    *,
    arch: str = "resnet18",
    size: int = 32,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    split_seed: int = 0,
    device: str = "cpu",
    n_boot: int = 1000,
    small_stem: bool | None = False,
    max_train: int | None = None,
) -> dict:
    """Train real-only on the LIDC benign/malignant 3D crops and score the patient-held-out test.

    Args:
        root: the ``lidc_nodules`` folder.
        arch: 3D classifier architecture.
        size: voxels per axis (native 32; NoduleMNIST3D uses 28).
        epochs, batch_size, lr: training schedule (lr x0.1 at 50 %/75 % of ``epochs``).
        seed: initialisation / shuffling seed; ``split_seed`` the patient split's seed.
        device: torch device to train on.
        n_boot: bootstrap resamples (whole patients) for the test AUROC CI.
        small_stem: ResNet stem (``False``: 7-wide stride-2 conv + max pool, affordable on CPU;
            ``True``: MedMNIST's stride-1 stem, about 60x the compute at 32^3).
        max_train: stratified training subset for smoke tests.

    Returns:
        A result dict as :func:`run_pneumoniamnist`'s, delta to 0.863.
    """
    from medsynth.data.lidc import load_lidc

    s = load_lidc(root, spatial_dims=3, size=size, seed=split_seed)
    splits = np.asarray(s.splits)
    y = s.labels.numpy()
    pids = np.asarray(s.patient_ids)
    parts = {}
    for name in ("train", "val", "test"):
        idx = np.flatnonzero(splits == name)
        parts[name] = (s.images[torch.from_numpy(idx)], y[idx])
    parts["train"] = _subset(*parts["train"], max_train, seed)
    test_idx = np.flatnonzero(splits == "test")
    return _fit_and_score(
        "lidc3d", parts, spatial_dims=3, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
        seed=seed, device=device, n_boot=n_boot, small_stem=small_stem,
        test_clusters=pids[test_idx],
        input_desc=f"{size}^3, lung window, patient-level split (seed {split_seed})",
        extra={"small_stem": small_stem, "n_test_patients": int(len(set(pids[test_idx])))},
    )


def _md(results: list[dict], meta: dict) -> str:
    lines = [
        "# Published-baseline check (real data only)",
        "",
        "The downstream classifier pipeline (`medsynth/downstream/classifier.py`) trained on real data only, "
        "scored on the held-out test set, against the MedMNIST v2 published test AUROC.",
        "",
        "| dataset | arch | input | epochs (lr drops) | best epoch | test AUROC [95% CI] | published | delta | within band | device | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        pr = r["protocol"]
        band = "n/a" if r["within_tolerance"] is None else (
            f"{'yes' if r['within_tolerance'] else 'NO'} (+-{r['tolerance']})")
        lines.append(
            f"| {r['dataset']} | {r['arch']} | {r['input']} | {pr['epochs']} ({', '.join(map(str, pr['lr_milestones'])) or '-'}) "
            f"| {r['best_epoch']} | {r['test_auroc']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
            f"| {r['published_auroc']:.3f} | {r['delta']:+.3f} | {band} | {r['device']}, {r['torch_threads']} thread(s) "
            f"| {r['wall_seconds'] / 60:.1f} min |"
        )
    lines += ["", "## Protocol and notes", ""]
    for r in results:
        pr = r["protocol"]
        lines.append(
            f"- **{r['dataset']}** ({r['published_source']}): Adam lr {pr['lr']}, batch {pr['batch_size']}, "
            f"{pr['epochs']} epochs, lr x{pr['lr_gamma']} after epochs {pr['lr_milestones']}, "
            f"weight decay {pr['weight_decay']}, {pr['augmentation']} augmentation, {pr['loss']}, "
            + (f"ResNet stem: {'MedMNIST small-input (3-wide stride-1 conv, no max pool)' if r['small_stem'] else 'MONAI 7-wide stride-2 + max pool'}; "
               if "small_stem" in r else "")
            + f"model = {pr['selection']} epoch (val AUROC {r['val_auroc_best']:.3f}); "
            f"n train/val/test = {r['n']['train']}/{r['n']['val']}/{r['n']['test']} "
            f"(positives {r['n_pos']['train']}/{r['n_pos']['val']}/{r['n_pos']['test']}); CI: {r['ci_method']}."
        )
    lines += [
        "",
        "MedMNIST's protocol is 100 epochs; where fewer were run the lr drops were scaled to "
        "50 %/75 % of the run. Per-epoch validation AUROC is in `baselines.json`.",
        "",
        "LIDC caveat: our crops (LUNA16/NODE21 subset of LIDC-IDRI, NoduleMNIST3D's labelling "
        "rule, split by LIDC patient) are not NoduleMNIST3D's images or split, and the test set "
        "is small (CI about +-0.05), so only closeness to 0.863 is expected, not a match.",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items())}."
        + (f" Command: `{meta['command']}`." if meta.get("command") else "")
        + (f" Note: {meta['note']}." if meta.get("note") else ""),
        "",
    ]
    return "\n".join(lines)


def write_baselines_report(
    results: list[dict], out_dir: str | Path, meta: dict | None = None
) -> tuple[Path, Path]:
    """Write ``baselines.json`` and ``baselines.md`` (atomically) into ``out_dir``.

    Args:
        results: result dicts from :func:`run_pneumoniamnist` / :func:`run_lidc3d`.
        out_dir: output folder (created).
        meta: run metadata (``versions``, ``command``...); default: this process's versions.

    Returns:
        ``(json_path, md_path)``.
    """
    import monai

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if meta is None:
        meta = {
            "versions": {"torch": torch.__version__, "monai": monai.__version__,
                         "python": platform.python_version()},
            "machine": platform.processor() or platform.machine(),
        }
    jp = write_text(out / "baselines.json", json.dumps({"meta": meta, "results": results}, indent=2))
    mp = write_text(out / "baselines.md", _md(results, meta))
    return jp, mp


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--which", default="pneumoniamnist,lidc3d")
    ap.add_argument("--epochs", type=int, default=100, help="PneumoniaMNIST epochs (MedMNIST: 100)")
    ap.add_argument("--lidc-epochs", type=int, default=100)
    ap.add_argument("--lidc-arch", default="resnet18")
    ap.add_argument("--lidc-size", type=int, default=32, help="voxels per axis (NoduleMNIST3D: 28)")
    ap.add_argument("--lidc-small-stem", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("reports"))
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("medsynth.downstream.classifier").setLevel(logging.DEBUG)
    which = a.which.split(",")
    if str(a.device).startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        log.info("cudnn.benchmark on; TF32 convolutions allowed: %s",
                 torch.backends.cudnn.allow_tf32)
    results = []
    if "pneumoniamnist" in which:
        results.append(run_pneumoniamnist(a.data / "pneumoniamnist", epochs=a.epochs, seed=a.seed,
                                          device=a.device))
        write_baselines_report(results, a.out)
    if "lidc3d" in which:
        results.append(run_lidc3d(a.data / "lidc_nodules", arch=a.lidc_arch, epochs=a.lidc_epochs,
                                  size=a.lidc_size,
                                  seed=a.seed, device=a.device, small_stem=a.lidc_small_stem))
    jp, mp = write_baselines_report(results, a.out)
    log.info("wrote %s and %s", jp, mp)
