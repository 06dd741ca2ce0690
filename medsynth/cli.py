"""The ``medsynth`` command line (typer). The only module that parses arguments or prints.

Typical session::

    medsynth train --modality xray                 # embedded phantom radiographs, ~5 min on 2 cores
    medsynth generate runs/00000-xray-dcgan --count 400 --format dicom
    medsynth augment --synthetic runs/00000-xray-dcgan/synthetic/manifest.csv --out aug/
    medsynth benchmark --real sample_data/manifest.csv --synthetic runs/00000-xray-dcgan
    medsynth report runs/00000-xray-dcgan
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from medsynth.errors import MedsynthError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="medsynth: train GANs on chest X-ray / CT, write synthetic augmentation sets, "
                       "and measure whether they help tumour detection. Works offline.")

log = logging.getLogger("medsynth")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("medsynth").setLevel(logging.INFO if verbose else logging.WARNING)


def _friendly(fn: Callable) -> Callable:
    """Turn MedsynthError (bad input) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _setup_logging(os.environ.get("MEDSYNTH_VERBOSE") == "1")
        try:
            return fn(*args, **kwargs)
        except MedsynthError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: the last checkpoint is kept; continue with --resume RUN", err=True)
            raise typer.Exit(130) from None

    return wrapper


def default_data() -> Path:
    """The embedded phantom sample set (``sample_data/manifest.csv`` beside the package)."""
    from medsynth.config import PACKAGE_ROOT

    for root in (PACKAGE_ROOT, Path.cwd()):
        p = root / "sample_data" / "manifest.csv"
        if p.exists():
            return p
    raise MedsynthError("sample_data/manifest.csv", "embedded sample data not found; "
                                                    "make it with `medsynth sample-data --out sample_data`")


def _data_source(source: str) -> str:
    return str(default_data()) if source in ("", "default") else source


def _load_set(source: str, *, modality: str, size: int, spatial_dims: int, ct_window: Any, split: str | None,
              domain_b: str | None = None):
    from medsynth.data.dataset import load_image_set, load_two_domains

    kw = dict(modality=modality, size=size, spatial_dims=spatial_dims, split=split, ct_window=ct_window)
    if domain_b is not None:
        return load_two_domains(_data_source(source), _data_source(domain_b), **kw)
    return load_image_set(_data_source(source), **kw)


# --------------------------------------------------------------------------------------------
@app.command()
@_friendly
def train(
    modality: str = typer.Option("xray", help="xray or ct"),
    model: str = typer.Option("dcgan", help="registered variant (see `medsynth models`)"),
    data: str = typer.Option("default", help="manifest CSV, folder, .npz, or the LIDC folder; default: embedded phantoms"),
    size: Optional[int] = typer.Option(None, help="image size (power of two)"),
    spatial_dims: Optional[int] = typer.Option(None, "--spatial-dims", help="2 (radiographs/slices) or 3 (CT volumes)"),
    steps: Optional[int] = typer.Option(None, help="training steps"),
    minutes: Optional[float] = typer.Option(None, help="wall-clock cap in minutes"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    seed: Optional[int] = typer.Option(None),
    conditional: Optional[bool] = typer.Option(None, "--conditional/--unconditional",
                                               help="class-conditional on the label column (nodule present)"),
    out: str = typer.Option("runs", help="parent folder of run directories"),
    preset: Optional[Path] = typer.Option(None, help="YAML preset (default: pipelines/<modality>_<model>.yaml)"),
    set_: list[str] = typer.Option([], "--set", help="override any setting: --set model.width=16"),
    resume: Optional[Path] = typer.Option(None, help="continue this run directory exactly from its last checkpoint"),
    domain_a: Optional[str] = typer.Option(None, "--domain-a", help="two-domain variants (cyclegan, cogan): "
                                           "domain A's folder/manifest (label 0); with --domain-b"),
    domain_b: Optional[str] = typer.Option(None, "--domain-b", help="domain B's folder/manifest (label 1)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train a generator. Writes runs/NNNNN-<modality>-<model>/ (config, stats, grids, checkpoints)."""
    from medsynth import config as C
    from medsynth.train.loop import new_run_dir
    from medsynth.train.loop import train as run_train

    if resume is not None:
        cfg = C.load_config(resume / "config.yaml")
        extra: dict[str, Any] = {}
        if steps is not None:
            extra.setdefault("train", {})["steps"] = steps
        if minutes is not None:
            extra.setdefault("train", {})["minutes"] = minutes
        cfg = C.from_dict({**cfg.to_dict(), **{k: {**cfg.to_dict()[k], **v} for k, v in extra.items()}})
        run_dir = resume
    else:
        if modality not in ("xray", "ct"):
            raise MedsynthError("--modality", f"must be xray or ct, got {modality!r}")
        preset_path = preset or C.find_preset(modality, model)
        base: dict[str, Any] = {"data": {"modality": modality, "source": data}, "model": {"name": model},
                                "train": {"out": out}}
        for section, key, value in [("data", "size", size), ("data", "spatial_dims", spatial_dims),
                                    ("train", "steps", steps), ("train", "minutes", minutes),
                                    ("train", "batch_size", batch_size), ("train", "seed", seed)]:
            if value is not None:
                base[section][key] = value
        if conditional is not None:
            base["model"]["num_classes"] = 2 if conditional else 0
        if (domain_a is None) != (domain_b is None):
            raise MedsynthError("--domain-a/--domain-b", "give both domains (or neither)")
        if domain_a is not None:
            if data != "default":
                raise MedsynthError("--data", "give either --data or --domain-a/--domain-b, not both")
            base["data"].update(source=domain_a, domain_b=domain_b)
            base["model"]["num_classes"] = 2
        cfg = C.resolve(preset=preset_path, overrides=set_, base=base)
        if cfg.data.source in ("", "default"):
            cfg.data.source = str(default_data())
        run_dir = None
    d = cfg.data
    t0 = time.perf_counter()
    ds = _load_set(d.source, modality=d.modality, size=d.size, spatial_dims=d.spatial_dims,
                   ct_window=d.ct_window, split=d.split, domain_b=d.domain_b)
    labels = ds.labels if cfg.model.num_classes > 0 else None
    typer.echo(f"data: {len(ds)} {d.modality} images {tuple(ds.images.shape[1:])} from {d.source} "
               f"(split {d.split}) in {time.perf_counter() - t0:.1f}s", err=True)
    if run_dir is None:
        run_dir = new_run_dir(cfg.train.out, f"{d.modality}-{cfg.model.name}")
    typer.echo(f"run: {run_dir}", err=True)
    res = run_train(cfg, ds.images, labels, run_dir, resume=resume is not None, progress=progress)
    typer.echo(f"done: {res.step} steps, {res.seconds / 60:.1f} min, {res.images_per_second:.0f} img/s -> {res.run_dir}")


@app.command()
@_friendly
def generate(
    run: Path = typer.Argument(..., help="run directory (or checkpoint file)"),
    count: int = typer.Option(100, help="number of images"),
    class_: Optional[int] = typer.Option(None, "--class", help="class label for all images (conditional models)"),
    seed: int = typer.Option(0),
    fmt: str = typer.Option("png", "--format", help="png, dicom or nifti"),
    truncation: Optional[float] = typer.Option(None, help="truncation psi in [0, 1] (StyleGAN2, BigGAN): fidelity/diversity dial"),
    from_: Optional[Path] = typer.Option(None, "--from", help="translate the images of this folder/manifest (CycleGAN)"),
    direction: str = typer.Option("a2b", help="translation direction with --from: a2b or b2a"),
    pairs: bool = typer.Option(False, "--pairs", help="write aligned pairs of both domains (CoGAN)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default RUN/synthetic)"),
):
    """Write synthetic images (marked synthetic) and a manifest.csv."""
    import torch

    from medsynth.data.writers import SyntheticInfo, write_synthetic_set
    from medsynth.train.loop import load_trained

    if fmt not in ("png", "dicom", "nifti"):
        raise MedsynthError("--format", f"must be png, dicom or nifti, got {fmt!r}")
    cfg, model, ck = load_trained(run)
    if truncation is not None and not model.supports_truncation:
        raise MedsynthError("--truncation", f"model {cfg.model.name!r} has no truncation trick (stylegan2, biggan do)")
    run_dir = run if run.is_dir() else run.parent.parent
    out = out or run_dir / "synthetic"
    info = SyntheticInfo(model=cfg.model.name, run=run_dir.name, seed=seed)
    g = torch.Generator().manual_seed(seed)
    d = cfg.data
    if from_ is not None:
        if not hasattr(model, "translate"):
            raise MedsynthError("--from", f"model {cfg.model.name!r} does not translate images (use a CycleGAN run)")
        if direction not in ("a2b", "b2a"):
            raise MedsynthError("--direction", f"must be a2b or b2a, got {direction!r}")
        src = _load_set(str(from_), modality=d.modality, size=d.size, spatial_dims=d.spatial_dims,
                        ct_window=d.ct_window, split=None)
        with torch.no_grad():
            images = torch.cat([model.translate(src.images[i:i + 64], direction=direction)
                                for i in range(0, len(src), 64)]).clamp(-1, 1)
        lab = torch.full((len(images),), 1 if direction == "a2b" else 0, dtype=torch.long)
        df = write_synthetic_set(out, images, lab, modality=d.modality, fmt=fmt, info=info, ct_window=d.ct_window)
        typer.echo(f"translated {len(df)} images ({direction}) from {from_} -> {out} (manifest.csv)")
        return
    if pairs:
        if not hasattr(model, "sample_pairs"):
            raise MedsynthError("--pairs", f"model {cfg.model.name!r} does not make coupled pairs (use a CoGAN run)")
        x1, x2 = model.sample_pairs(count, generator=g)
        for dom, x in ((0, x1), (1, x2)):
            write_synthetic_set(out / f"domain{dom}", x, torch.full((count,), dom, dtype=torch.long),
                                modality=d.modality, fmt=fmt, info=info, ct_window=d.ct_window)
        typer.echo(f"wrote {count} aligned pairs -> {out}/domain0, {out}/domain1 (same row = same latent)")
        return
    labels = None
    if model.num_classes > 0:
        labels = (torch.full((count,), class_, dtype=torch.long) if class_ is not None
                  else torch.arange(count) % model.num_classes)
        if class_ is not None and not 0 <= class_ < model.num_classes:
            raise MedsynthError("--class", f"model has classes 0..{model.num_classes - 1}")
    elif class_ is not None:
        raise MedsynthError("--class", "this model is unconditional")
    images = model.sample(count, labels=labels, generator=g, truncation=truncation)
    lab = labels if labels is not None else torch.full((count,), -1, dtype=torch.long)
    df = write_synthetic_set(out, images, lab, modality=cfg.data.modality, fmt=fmt, info=info,
                             ct_window=cfg.data.ct_window)
    typer.echo(f"wrote {len(df)} synthetic {fmt} images -> {out} (manifest.csv)")


@app.command()
@_friendly
def augment(
    synthetic: Path = typer.Option(..., help="synthetic manifest.csv (from `medsynth generate`)"),
    real: str = typer.Option("default", help="real manifest CSV (default: embedded phantoms)"),
    modality: str = typer.Option("xray"),
    out: Path = typer.Option(..., help="output folder for the augmented manifest"),
):
    """Write an augmented dataset manifest: every real row (its split kept) + synthetic rows in the
    training split, each marked source=real|synthetic. Files are referenced, not copied."""
    from medsynth.data.manifest import read_manifest, select_rows, write_manifest
    import pandas as pd

    real_df = select_rows(read_manifest(_data_source(real)), modality=modality)
    syn_df = read_manifest(synthetic)
    real_df = real_df.assign(source="real")
    syn_df = syn_df.assign(source="synthetic", split="train")
    df = pd.concat([real_df, syn_df], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(df, out / "manifest.csv")
    n_tr = int((real_df.get("split") == "train").sum()) if "split" in real_df else len(real_df)
    typer.echo(f"augmented manifest: {n_tr} real training + {len(syn_df)} synthetic rows "
               f"({len(real_df)} real rows in all) -> {out / 'manifest.csv'}")


def _synthetic_set(spec: str, real, *, count: int, seed: int, size: int, spatial_dims: int, modality: str, ct_window):
    """A synthetic ImageSet from a run directory (sampled now, balanced classes) or a manifest."""
    import torch

    from medsynth.data.dataset import ImageSet
    from medsynth.train.loop import load_trained

    p = Path(spec)
    if p.is_dir() and (p / "checkpoints").exists():
        cfg, model, _ = load_trained(p)
        if model.num_classes <= 0:
            raise MedsynthError(p, "benchmark needs a class-conditional generator (train with --conditional)")
        if cfg.data.size != size or cfg.data.spatial_dims != spatial_dims:
            raise MedsynthError(p, f"generator makes {cfg.data.size}px {cfg.data.spatial_dims}D images, "
                                   f"benchmark uses {size}px {spatial_dims}D")
        count = -(-count // model.num_classes) * model.num_classes  # equal count per class
        labels = torch.arange(count) % model.num_classes
        images = model.sample(count, labels=labels, generator=torch.Generator().manual_seed(seed))
        n = len(images)
        return ImageSet(images=images, labels=labels, patient_ids=[f"synthetic-{i}" for i in range(n)],
                        paths=[""] * n, splits=["train"] * n, modality=modality)
    return _load_set(spec, modality=modality, size=size, spatial_dims=spatial_dims, ct_window=ct_window, split=None)


@app.command()
@_friendly
def benchmark(
    real: str = typer.Option("default", help="real data with patient-level splits: manifest CSV or the LIDC folder"),
    synthetic: Optional[str] = typer.Option(None, help="run directory (sampled now) or synthetic manifest CSV"),
    modality: str = typer.Option("xray"),
    size: int = typer.Option(64),
    spatial_dims: int = typer.Option(2, "--spatial-dims"),
    ct_window: str = typer.Option("lung", "--ct-window"),
    fractions: str = typer.Option("0.1,0.25,1.0", help="real training fractions"),
    seeds: int = typer.Option(5, help="number of seeds (>= 5 recommended)"),
    arms: str = typer.Option("all", help="comma list of arms: real, real+classic, real+synthetic, "
                             "real+classic+synthetic, synthetic-only; 'all' = every arm the data allows"),
    arch: str = typer.Option("cnn", help="classifier: cnn (position-invariant), monai, resnet18, resnet10"),
    device: str = typer.Option("cpu", help="torch device for classifier training (cpu, cuda)"),
    epochs: int = typer.Option(15),
    synthetic_ratio: float = typer.Option(1.0, "--synthetic-ratio", help="synthetic images per real training image"),
    n_boot: int = typer.Option(1000, "--n-boot"),
    min_steps: int = typer.Option(100, "--min-steps", help="at least this many optimiser steps (small fractions)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: RUN/benchmark or benchmarks/<name>)"),
):
    """Tumour classifier per arm (real, +classic augmentation, +synthetic, both, synthetic-only) at reduced
    real fractions, several seeds, patient-held-out test set: AUROC, sens@90%spec, spec@90%sens with
    patient-bootstrap 95% CIs and paired bootstrap tests against real-only."""
    from pipelines.benchmark import run_benchmark, write_benchmark

    fr = tuple(float(f) for f in fractions.split(","))
    real_set = _load_set(real, modality=modality, size=size, spatial_dims=spatial_dims, ct_window=ct_window, split=None)
    syn_set = None
    if synthetic:
        n_train = sum(s == "train" for s in real_set.splits)
        syn_set = _synthetic_set(synthetic, real_set, count=max(2, int(round(synthetic_ratio * n_train))), seed=1234,
                                 size=size, spatial_dims=spatial_dims, modality=modality, ct_window=ct_window)
    t0 = time.perf_counter()
    arm_list = None if arms.strip() == "all" else tuple(a.strip() for a in arms.split(",") if a.strip())
    if arm_list is None and syn_set is None:
        typer.echo("no --synthetic: running the real and real+classic arms only")
    result = run_benchmark(real_set, syn_set, arms=arm_list, fractions=fr, seeds=tuple(range(seeds)),
                           epochs=epochs, synthetic_ratio=synthetic_ratio, n_boot=n_boot, min_steps=min_steps,
                           classifier_kwargs={"arch": arch, "device": device})
    if out is None:
        sp = Path(synthetic) if synthetic else None
        out = sp / "benchmark" if sp is not None and sp.is_dir() else Path("benchmarks") / f"{modality}-{Path(real).stem or 'data'}"
    write_benchmark(result, out)
    typer.echo(f"benchmark ({time.perf_counter() - t0:.0f}s) -> {out}")
    summ = out / "results.json"
    if summ.exists():
        typer.echo(_benchmark_table(json.loads(summ.read_text())))


def _benchmark_table(res: dict) -> str:
    """A compact text table of the benchmark summary and paired differences."""
    def f3(v):
        return "  nan" if v is None else f"{v:.3f}"

    lines = [f"{'arm':23s} {'fraction':>8s}  {'AUROC [95% CI]':22s} {'sens@90spec':>11s} {'spec@90sens':>11s}"]
    for r in res.get("summary") or []:
        lines.append(f"{r['arm']:23s} {r['fraction']:8.2f}  {f3(r['auroc'])} [{f3(r['auroc_lo'])}, {f3(r['auroc_hi'])}]"
                     f"   {f3(r.get('sens_at_90spec')):>11s} {f3(r.get('spec_at_90sens')):>11s}")
    for d in res.get("diffs") or []:
        if d.get("metric") == "auroc":
            lines.append(f"{d['comparison']} at {d['fraction']:.2f}: AUROC {d['diff']:+.3f} "
                         f"[{d['lo']:+.3f}, {d['hi']:+.3f}] p={d['p']:.3f}")
    lines.append(f"test set: {res.get('n_test')} images from {res.get('n_test_patients')} patients")
    return "\n".join(lines)


@app.command()
@_friendly
def report(
    run: Path = typer.Argument(..., help="run directory"),
    real: Optional[str] = typer.Option(None, help="real data (default: the run's training data)"),
    benchmark_dir: Optional[Path] = typer.Option(None, "--benchmark", help="benchmark folder (default RUN/benchmark)"),
    count: int = typer.Option(500, help="synthetic images sampled for the fidelity/privacy audit"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("reports"), help="parent folder of reports"),
    encoder: Optional[Path] = typer.Option(None, help="saved feature encoder (keeps FD comparable across reports)"),
    encoder_steps: int = typer.Option(300, "--encoder-steps", help="steps when the encoder is trained here"),
):
    """Markdown + HTML + JSON report in reports/<run>/: a one-page summary (augmentation benefit per arm with
    CIs and paired p-values, memorisation and membership inference, fidelity vs the real floor), then fidelity,
    privacy (with RUN/evaluate/ from `medsynth evaluate`), benchmark and provenance sections."""
    import torch

    from medsynth.report.build import build_report
    from medsynth.train.loop import load_trained

    if benchmark_dir is not None and not benchmark_dir.is_dir():
        raise MedsynthError(benchmark_dir, "benchmark folder not found")
    cfg, model, _ = load_trained(run)
    d = cfg.data
    real_set = _load_set(real or d.source, modality=d.modality, size=d.size, spatial_dims=d.spatial_dims,
                         ct_window=d.ct_window, split="train", domain_b=None if real else d.domain_b)
    labels = (torch.arange(count) % model.num_classes) if model.num_classes > 0 else None
    syn = model.sample(count, labels=labels, generator=torch.Generator().manual_seed(seed))
    bdir = benchmark_dir or (run / "benchmark")
    path = build_report(run, real_train=real_set, synthetic=syn, synthetic_labels=labels, out_root=out,
                        benchmark_dir=bdir if bdir.exists() else None, seed=seed, encoder=encoder,
                        encoder_steps=encoder_steps)
    typer.echo(f"report -> {path}")


@app.command()
@_friendly
def evaluate(
    run: Path = typer.Argument(..., help="run directory"),
    real: Optional[str] = typer.Option(None, help="real data (default: the run's training data source)"),
    count: int = typer.Option(500, help="synthetic images sampled"),
    seed: int = typer.Option(0),
    encoder: Optional[Path] = typer.Option(None, help="saved feature encoder (keeps features fixed across runs)"),
    encoder_steps: int = typer.Option(300, "--encoder-steps", help="steps when the encoder is trained here"),
    repeats: int = typer.Option(5, help="random real/real splits for the floors"),
    n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap resamples for attack AUROC CIs"),
    inception_weights: Optional[Path] = typer.Option(
        None, "--inception-weights", help="local TorchScript Inception feature network: adds the standard "
                                          "Inception FID (never downloaded)"),
    inception_input: str = typer.Option("uint8", "--inception-input",
                                        help="that network's input range: uint8 (0..255), unit, sym"),
):
    """Fidelity (FD, KID, precision/recall, density/coverage, intensity, MS-SSIM diversity, each with a
    real-vs-real floor) and privacy (DCR/NNDR, closest pairs, membership inference with a control)
    -> RUN/evaluate/evaluation.{json,md} + figures."""
    from medsynth.metrics.evaluate import evaluate_run

    t0 = time.perf_counter()
    path = evaluate_run(run, real=real, count=count, seed=seed, encoder=encoder, encoder_steps=encoder_steps,
                        repeats=repeats, n_boot=n_boot, inception_weights=inception_weights,
                        inception_input=inception_input)
    typer.echo(f"evaluation ({time.perf_counter() - t0:.0f}s) -> {path} (and evaluation.md)")


@app.command("sample-data")
@_friendly
def sample_data(
    out: Path = typer.Option(Path("sample_data"), help="output folder"),
    n_xray: int = typer.Option(420, "--n-xray", help="patients with radiographs (DICOM DX)"),
    n_ct: int = typer.Option(300, "--n-ct", help="patients with an axial CT slice (NIfTI)"),
    n_png: int = typer.Option(30, "--n-png", help="radiographs also written as PNG"),
    seed: int = typer.Option(0),
    xray_view: str = typer.Option("lung_spot", "--xray-view",
                                  help="radiograph view: lung_spot (64 mm field near a nodule site, 1 mm "
                                       "pixels: the detection task) or chest (whole chest, 384 mm field)"),
):
    """Simulate chest phantoms (HU volumes with nodules, CT, DRR radiographs) and write them with a manifest."""
    from medsynth.phantom import generate_sample_data
    from medsynth.phantom.sample import XRAY_VIEWS

    if xray_view not in XRAY_VIEWS:
        raise MedsynthError("--xray-view", f"must be one of {', '.join(XRAY_VIEWS)}, got {xray_view!r}")
    t0 = time.perf_counter()
    manifest = generate_sample_data(out, n_xray=n_xray, n_ct=n_ct, n_png=min(n_png, n_xray), seed=seed,
                                    xray_view=xray_view)
    typer.echo(f"sample data -> {manifest} ({time.perf_counter() - t0:.0f}s)")


@app.command()
@_friendly
def models():
    """List the registered GAN variants."""
    from medsynth.models.registry import get_model, list_models

    for name in list_models():
        doc = (get_model(name).__doc__ or "").strip().splitlines()
        typer.echo(f"{name:12s} {doc[0] if doc else ''}")


@app.command()
@_friendly
def info(path: Path = typer.Argument(..., help="a file or folder")):
    """What medsynth reads from a file or folder: modality, shape, spacing, intensities, labels."""
    from medsynth.data.info import describe

    for key, value in describe(path).items():
        typer.echo(f"{key}: {value}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
