"""The ``medsynth`` command line (typer). The only module that parses arguments or prints.

Typical session::

    medsynth train --modality xray                 # embedded phantom radiographs, ~5 min on 2 cores
    medsynth generate runs/00000-xray-dcgan --count 400 --format dicom   # release gate on by default
    medsynth augment --synthetic runs/00000-xray-dcgan/synthetic/manifest.csv --out aug/
    medsynth benchmark --data sample_data/manifest.csv --synthetic runs/00000-xray-dcgan
    medsynth report runs/00000-xray-dcgan
    medsynth reader-study build --synthetic runs/00000-xray-dcgan --out cases/   # blinded visual Turing test
    medsynth reader-study score --key cases_key --answers reader1.csv --out reader-results/

One vocabulary: an option name means the same thing, with the same type, on every command.

* ``--data`` (text) is the real data on every command that reads real images (train, augment,
  benchmark, evaluate, report): a manifest CSV, a folder, an ``.npz`` or the LIDC folder. One name
  because it is one concept, whichever role the real images play (training set, reference of a
  fidelity audit, the real rows of an augmented manifest). Left out, it is the natural real data
  of the command: the data the run was trained on where the command reads a run (evaluate,
  report), the embedded phantom set otherwise (train, augment, benchmark); ``--data default``
  names the phantom set explicitly. Other data sources (``--synthetic``, ``--domain-a``,
  ``--domain-b``, ``--from``) are text of the same kind.
* ``--seed`` is always one integer value; a number of seeds is ``--n-seeds`` (benchmark: seeds
  0..N-1).
* ``--out`` is always a folder (a path) the command writes into. Commands that name their own
  folder per run write it inside ``--out`` (train: ``--out/NNNNN-<modality>-<model>/``, report:
  ``--out/<run>/``); the others write their files directly in it.
* ``--count`` is a number of synthetic images, ``--n-boot`` a number of bootstrap resamples.
* Choices are ``Enum`` types: ``--help`` lists them and typer rejects anything else with its
  one-line usage error (exit 2). Boolean options are ``--x/--no-x`` pairs.

Deprecated spellings, still accepted for one release (rewritten to the new option before parsing,
so they behave exactly like it, absent from ``--help``, and logged as a deprecation warning naming
the new option); the table is :data:`RENAMED`:

===========================  ==================
old                          new
===========================  ==================
augment ``--real``           ``--data``
benchmark ``--real``         ``--data``
benchmark ``--seeds``        ``--n-seeds``
evaluate ``--real``          ``--data``
report ``--real``            ``--data``
train ``--unconditional``    ``--no-conditional``
trial ``--real``             ``--data``
===========================  ==================
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
import typer.core

from medsynth.errors import MedsynthError

log = logging.getLogger("medsynth")

#: Deprecated option spellings, per command: old -> new (kept for one release; see the module docstring).
RENAMED: dict[str, dict[str, str]] = {
    "augment": {"--real": "--data"},
    "benchmark": {"--real": "--data", "--seeds": "--n-seeds"},
    "evaluate": {"--real": "--data"},
    "report": {"--real": "--data"},
    "train": {"--unconditional": "--no-conditional"},
    "trial": {"--real": "--data"},
}


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at the time of each record (a handler
    bound once to the stream of the first call breaks when a caller swaps stderr, e.g. tests)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Formatter(logging.Formatter):
    """``LEVEL logger: message``, except progress lines (``medsynth.progress``), which are plain."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "medsynth.progress" and record.levelno == logging.INFO:
            return record.getMessage()
        return super().format(record)


def _setup_logging() -> None:
    """Log WARNING and above to stderr (INFO and above with ``MEDSYNTH_VERBOSE=1``; with ``=2`` also
    medsynth's DEBUG lines, e.g. the images each torchrun rank's reader fetched); idempotent."""
    verbose = os.environ.get("MEDSYNTH_VERBOSE")
    level = logging.INFO if verbose in ("1", "2") else logging.WARNING
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    logging.getLogger("medsynth").setLevel(logging.DEBUG if verbose == "2" else level)
    # progress of long commands: a bar on a terminal, plain lines otherwise (medsynth.progress)
    logging.getLogger("medsynth.progress").setLevel(logging.INFO)
    from medsynth import progress

    progress.set_mode("auto")


def _rename_deprecated(command: str, args: list[str]) -> list[str]:
    """``args`` of ``command`` with each deprecated spelling of :data:`RENAMED` (``--old`` or
    ``--old=value``) replaced by the new one, each replacement logged as a deprecation warning.

    Raises:
        typer.BadParameter: both spellings of one option were given (a usage error, exit code 2).
    """
    renamed = RENAMED.get(command, {})
    options = args[:args.index("--")] if "--" in args else args  # after "--": positional
    given = {arg.partition("=")[0] for arg in options}
    out = []
    for arg in options:
        opt, eq, value = arg.partition("=")
        if opt in renamed:
            if renamed[opt] in given:
                raise typer.BadParameter(f"give {renamed[opt]} only ({opt} is its deprecated spelling)",
                                         param_hint=f"'{opt}'")
            _setup_logging()
            log.warning("`medsynth %s %s` is deprecated and will be removed in the next release: use %s",
                        command, opt, renamed[opt])
            arg = renamed[opt] + eq + value
        out.append(arg)
    return out + args[len(options):]


class _Group(typer.core.TyperGroup):
    """The command group; accepts the deprecated spellings of :data:`RENAMED` (hidden from ``--help``)."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        return name, command, _rename_deprecated(name or "", rest)


# rich_markup_mode=None: plain help (flags without a `<bool>` type, choices as <a|b>) and the usual
# one-line usage error for a bad value
app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="medsynth: train GANs on chest X-ray / CT, write synthetic augmentation sets, "
                       "and measure whether they help tumour detection. Works offline.")


class Modality(str, Enum):
    """``--modality``."""

    xray = "xray"
    ct = "ct"


class ImageFormat(str, Enum):
    """``generate --format``: the writers of :mod:`medsynth.data.writers`."""

    png = "png"
    dicom = "dicom"
    nifti = "nifti"


class Direction(str, Enum):
    """``generate --direction``: CycleGAN translation A -> B or B -> A."""

    a2b = "a2b"
    b2a = "b2a"


class CtWindow(str, Enum):
    """``--ct-window``: the named windows of :data:`medsynth.data.windows.CT_WINDOWS`."""

    lung = "lung"
    mediastinal = "mediastinal"


class Arch(str, Enum):
    """``benchmark --arch``: :data:`medsynth.downstream.classifier.ARCHS`."""

    cnn = "cnn"
    monai = "monai"
    resnet18 = "resnet18"
    resnet10 = "resnet10"


class Device(str, Enum):
    """``benchmark --device`` (one GPU of several: ``CUDA_VISIBLE_DEVICES``)."""

    cpu = "cpu"
    cuda = "cuda"


class InceptionInput(str, Enum):
    """``evaluate --inception-input``: :data:`medsynth.metrics.inception.INPUT_RANGES`."""

    uint8 = "uint8"
    unit = "unit"
    sym = "sym"


class XrayView(str, Enum):
    """``sample-data --xray-view``: :data:`medsynth.phantom.sample.XRAY_VIEWS`."""

    lung_spot = "lung_spot"
    chest = "chest"


_DATA_HELP = "real data: manifest CSV, folder, .npz or the LIDC folder; default: "
_DATA_EMBEDDED = _DATA_HELP + "the embedded phantom set"
_DATA_TRAIN = (_DATA_HELP + "the embedded phantom set: X-ray, the whole-chest demo folder sample_data/chest/ "
               "(unlabelled DICOM); CT (and --data sample_data/manifest.csv for X-ray), the labelled lung-spot "
               "radiographs and CT slices of the detection task")
_DATA_OF_RUN = _DATA_HELP + "the data the run was trained on"
_DATA_ROOT_HELP = ("declared data root (default: $MEDSYNTH_DATA_ROOT): a data source under it is recorded by its "
                   "path relative to it; otherwise by a content fingerprint, never by its path")


def _friendly(fn: Callable) -> Callable:
    """Turn MedsynthError (bad input) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except MedsynthError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: a run keeps its last checkpoint (continue it with --resume RUN); generate keeps "
                       "its finished chunks (run the same command with --continue); a run with none yet and unfinished "
                       "augment output were removed", err=True)
            raise typer.Exit(130) from None

    return wrapper


def default_data(part: str = "manifest.csv") -> Path:
    """The embedded phantom sample set beside the package: ``sample_data/manifest.csv`` (lung-spot
    radiographs with nodule labels, CT slices; the detection task), or ``part="chest"``, the folder of
    unlabelled whole-chest demo radiographs."""
    from medsynth.config import PACKAGE_ROOT

    for root in (PACKAGE_ROOT, Path.cwd()):
        p = root / "sample_data" / part
        if p.exists():
            return p
    raise MedsynthError(f"sample_data/{part}", "embedded sample data not found; "
                                               "make it with `medsynth sample-data --out sample_data`")


#: what `train` says when it trains on the embedded whole-chest demo folder
DEMO_NOTE = ("the embedded whole-chest demo radiographs; the nodule-detection path (generate, augment, benchmark) "
             "trains on the lung-spot set: --data sample_data/manifest.csv")


def _is_default(source: str | None) -> bool:
    return source in (None, "", "default")


def _data_source(source: str | None) -> str:
    """A data source as given, with ``None``, ``""`` and ``"default"`` meaning the embedded phantom set."""
    return str(default_data()) if source in (None, "", "default") else source


def _load_set(source: str, *, modality: str, size: int, spatial_dims: int, ct_window: Any, split: str | None,
              domain_b: str | None = None):
    from medsynth.data.dataset import load_image_set, load_two_domains

    kw = dict(modality=modality, size=size, spatial_dims=spatial_dims, split=split, ct_window=ct_window)
    if domain_b is not None:
        return load_two_domains(_data_source(source), _data_source(domain_b), **kw)
    return load_image_set(_data_source(source), **kw)


def _load_training_set(source: str, d, domain_b: str | None):
    """``train``'s images: in memory or streamed from the disk cache as ``data.stream`` decides
    (:func:`medsynth.data.stream.load_training_data`). Returns ``(ImageSet | StreamSet, LoadDecision)``."""
    from medsynth.data.stream import load_training_data

    return load_training_data(_data_source(source), modality=d.modality, size=d.size, spatial_dims=d.spatial_dims,
                              split=d.split, ct_window=d.ct_window,
                              domain_b=None if domain_b is None else _data_source(domain_b), stream=d.stream,
                              cache_dir=d.cache_dir, memory_budget_mb=d.memory_budget_mb)


def _set_fingerprint(ds, select=None) -> str:
    """:func:`medsynth.runs.images_fingerprint` of a loaded training set, in memory or streamed (the
    same value for the same images): all images with their labels, or the images at ``select``."""
    from medsynth.data.stream import StreamSet
    from medsynth.runs import images_fingerprint

    if isinstance(ds, StreamSet):
        return ds.fingerprint() if select is None else ds.fingerprint(select, with_labels=False)
    return images_fingerprint(ds.images, ds.labels) if select is None else images_fingerprint(ds.images[select])


def _demo_default(cfg, conditional: bool | None) -> bool:
    """Whether a new run without ``--data`` trains on the whole-chest demo folder: 2D X-ray, a model
    that can train without labels, and no ``--conditional`` (the others get the labelled lung-spot set)."""
    from medsynth.models.registry import get_model

    return (_is_default(cfg.data.source) and cfg.data.modality == "xray" and cfg.data.spatial_dims == 2
            and conditional is not True and cfg.data.domain_b is None
            and not get_model(cfg.model.name).requires_labels)


def _training_paths(cfg, resume: Path | None, *, data: str | None, domain_a: str | None,
                    domain_b: str | None, conditional: bool | None = None) -> tuple[str, str | None]:
    """The real paths ``(source, domain B)`` that ``train`` loads: the command line's for a new run;
    for ``--resume`` those given again (``--data`` or ``--domain-a/--domain-b``), else the run's local
    record (:func:`medsynth.runs.read_data_source`, which asks for ``--data`` when it is missing)."""
    from medsynth.runs import read_data_source

    if resume is None:
        if _demo_default(cfg, conditional):
            return str(default_data("chest")), cfg.data.domain_b  # the newcomer's first run: whole chests
        return _data_source(cfg.data.source), cfg.data.domain_b
    if data is not None or domain_a is not None:
        return _data_source(data if domain_a is None else domain_a), domain_b
    return read_data_source(resume)


def _train_unconditionally(cfg, ds, *, resume: Path | None, conditional: bool | None) -> bool:
    """Whether a new run of a conditional-by-preset model falls back to unconditional training: no
    image of ``ds`` has a label (a folder of DICOM files, say), the user did not ask for
    ``--conditional``, and the variant can train without labels (CGAN, CycleGAN, CoGAN cannot)."""
    from medsynth.models.registry import get_model

    return (resume is None and conditional is None and cfg.model.num_classes > 0 and len(ds) > 0
            and not get_model(cfg.model.name).requires_labels and bool((ds.labels < 0).all()))


def _record_data(cfg, ds, source: str, *, resume: bool, data_root: Path | None) -> None:
    """What a run records of its data. New run: ``cfg.data``'s input paths become shareable names
    (:func:`medsynth.runs.shareable_source`: ``default``, ``data-root:<relative path>`` or the
    content fingerprint) and ``cfg.data.fingerprint`` the loaded set's. Resume: data other than the
    run's (another fingerprint) is refused, so the continued run stays exact. Under torchrun every
    rank (node) must have loaded the same images: all stop together otherwise."""
    from medsynth.runs import data_root as declared_root
    from medsynth.runs import shareable_source
    from medsynth.train import distributed as ddp

    d = cfg.data
    fp = _set_fingerprint(ds)
    ddp.check_same(fp, ddp.init_from_env(), path=source, what="training images")  # torchrun: one set on all nodes
    if resume:
        if d.fingerprint is not None and fp != d.fingerprint:
            raise MedsynthError(source, f"holds other images than the run was trained on (fingerprint {fp}, the "
                                        f"run's {d.fingerprint}): give the run's training data with --data")
        return
    root = declared_root(data_root)
    if d.domain_b is None:
        d.source = shareable_source(d.source, fingerprint=fp, root=root)
    else:
        d.source = shareable_source(d.source, fingerprint=_set_fingerprint(ds, ds.labels == 0), root=root)
        d.domain_b = shareable_source(d.domain_b, fingerprint=_set_fingerprint(ds, ds.labels == 1), root=root)
    d.fingerprint = fp


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the option ``name`` (its parameter name) was given on the command line, not defaulted."""
    source = ctx.get_parameter_source(name)  # an enum of the click typer runs on (typer may vendor its own)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _resume_config(ctx: typer.Context, run: Path, overrides: list[str], *, modality: Modality, model: str,
                   size: int | None, spatial_dims: int | None, steps: int | None, minutes: float | None,
                   batch_size: int | None, seed: int | None, conditional: bool | None,
                   out: Path) -> tuple[Any, dict[str, tuple[Any, Any]]]:
    """The config ``train --resume RUN`` continues with, and the settings it changes.

    Options that define the run (``--modality``, ``--model``, ``--size``, ``--spatial-dims``,
    ``--batch-size``, ``--seed``, ``--conditional``, ``--out``) may be repeated with the run's own
    value; ``--preset`` is refused. ``--steps``, ``--minutes`` and ``--set`` of a key in
    :data:`medsynth.train.loop.RESUME_CHANGEABLE` are applied; a ``--set`` of any other key must
    leave its value as the run has it.

    Returns:
        ``(config, {key: (run's value, new value)})``.

    Raises:
        MedsynthError: one line naming the conflicting option and the run's value, or a run that
            already reached its steps.
    """
    from medsynth import config as C
    from medsynth.runs import checkpoint_progress
    from medsynth.train.loop import RESUME_CHANGEABLE

    cfg = C.validate(C.load_config(run / "config.yaml"))
    keep = "a resumed run keeps its {what} ({value}); drop the option, or start a new run without --resume"
    fixed = [("modality", "--modality", "modality", cfg.data.modality, lambda: modality.value),
             ("model", "--model", "model", cfg.model.name, lambda: model),
             ("size", "--size", "image size", cfg.data.size, lambda: size),
             ("spatial_dims", "--spatial-dims", "spatial dims", cfg.data.spatial_dims, lambda: spatial_dims),
             ("batch_size", "--batch-size", "batch size", cfg.train.batch_size, lambda: batch_size),
             ("seed", "--seed", "seed", cfg.train.seed, lambda: seed),
             ("conditional", "--conditional/--no-conditional", "conditioning",
              cfg.model.num_classes > 0, lambda: conditional),
             ("out", "--out", "folder", run.resolve().parent, lambda: out.resolve())]
    for name, option, what, value, given in fixed:
        if _given(ctx, name) and given() != value:
            raise MedsynthError(option, keep.format(what=what, value=value))
    if _given(ctx, "preset"):
        raise MedsynthError("--preset", f"a resumed run keeps the settings it started with ({run / 'config.yaml'}); "
                                        "drop --preset, or start a new run without --resume")
    given: list[tuple[str, str, Any]] = [(opt, key, value) for opt, key, value in
                                         [("--steps", "train.steps", steps), ("--minutes", "train.minutes", minutes)]
                                         if value is not None]
    for text in overrides:
        path, value = C.parse_override(text)
        given.append((f"--set {text}", ".".join(path), value))
    new = cfg
    for option, key, value in given:
        before = C.flat_settings(new)
        new = C.override(new, key, value, option)
        for k, v in C.flat_settings(new).items():
            if before.get(k) != v and k not in RESUME_CHANGEABLE:
                raise MedsynthError(option, f"a resumed run keeps {k} = {C.flat_settings(cfg).get(k)!r}; on --resume "
                                            f"only {', '.join(RESUME_CHANGEABLE)} can change")
    old, now = C.flat_settings(cfg), C.flat_settings(new)
    changes = {k: (old.get(k), v) for k, v in now.items() if old.get(k) != v}
    progress = checkpoint_progress(run)
    if progress is None:
        raise MedsynthError(run, "has no checkpoint to resume from (checkpoints/last.pt); start a new run")
    if new.train.steps <= progress["step"]:
        raise MedsynthError("--steps", f"the run is at step {progress['step']} of train.steps = {new.train.steps}: "
                                       "give more steps to continue it")
    return new, changes


# --------------------------------------------------------------------------------------------
@app.command()
@_friendly
def train(
    ctx: typer.Context,
    modality: Annotated[Modality, typer.Option(help="imaging modality")] = Modality.xray,
    model: Annotated[str, typer.Option(help="registered variant (see `medsynth models`)")] = "dcgan",
    data: Annotated[Optional[str], typer.Option(help=_DATA_TRAIN)] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help=_DATA_ROOT_HELP)] = None,
    size: Annotated[Optional[int], typer.Option(help="image size (power of two); default: the preset's")] = None,
    spatial_dims: Annotated[Optional[int], typer.Option(
        "--spatial-dims", min=2, max=3, help="2 (radiographs/slices) or 3 (CT volumes); default: the preset's")] = None,
    steps: Annotated[Optional[int], typer.Option(help="training steps")] = None,
    minutes: Annotated[Optional[float], typer.Option(help="wall-clock cap in minutes")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="global batch (over all torchrun processes)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed; default: the preset's")] = None,
    conditional: Annotated[Optional[bool], typer.Option(
        "--conditional/--no-conditional", help="class-conditional on the label column (nodule present); "
                                               "default: the preset's")] = None,
    out: Annotated[Path, typer.Option(help="parent folder of run directories")] = Path("runs"),
    preset: Annotated[Optional[str], typer.Option(
        help="YAML preset: a file, or a packaged preset's name (medsynth/presets/, e.g. xray_stylegan2_gpu; "
             "default: <modality>_<model>)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="override any setting: --set model.width=16 (repeatable)")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="continue this run directory exactly from its last checkpoint")] = None,
    domain_a: Annotated[Optional[str], typer.Option(
        "--domain-a", help="two-domain variants (cyclegan, cogan): domain A's folder/manifest (label 0); "
                           "with --domain-b, instead of --data")] = None,
    domain_b: Annotated[Optional[str], typer.Option(
        "--domain-b", help="domain B's folder/manifest (label 1)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar on stderr")] = True,
    quick_check: Annotated[bool, typer.Option(
        "--quick-check/--no-quick-check", help="at the end, a small CNN's real-vs-synthetic AUROC beside its "
                                               "real-vs-real floor (seconds; 2D runs up to 128²)")] = True,
):
    """Train a generator. Writes runs/NNNNN-<modality>-<model>/ (config, stats, grids, checkpoints).

    The settings are checked before any data is loaded, the run folder is made only after the data
    loaded, and a start that fails before its first checkpoint removes it again. With --resume only
    --steps, --minutes and --set of train.steps, train.minutes, train.checkpoint_every,
    train.sample_every, train.tick_every, train.threads may change (recorded in RUN/resumes.jsonl);
    other options must agree with the run. One process writes a run at a time (RUN/.lock)."""
    from medsynth import config as C
    from medsynth.data.geometry import training_geometry
    from medsynth.runs import check_output_folder, write_data_report, write_data_source
    from medsynth.train.loop import check_config, check_data, fresh_run_dir, hold_run
    from medsynth.train.loop import train as run_train

    with ExitStack() as stack:
        changes: dict[str, tuple[Any, Any]] = {}
        if resume is not None:
            if not (resume / "config.yaml").is_file():
                raise MedsynthError(resume, "not a run directory (no config.yaml): --resume takes a folder "
                                            "`medsynth train` made")
            stack.enter_context(hold_run(resume))  # before the data loads: a second writer stops at once
            cfg, changes = _resume_config(ctx, resume, set_ or [], modality=modality, model=model, size=size,
                                          spatial_dims=spatial_dims, steps=steps, minutes=minutes,
                                          batch_size=batch_size, seed=seed, conditional=conditional, out=out)
            run_dir: Path | None = resume
        else:
            preset_path = preset or C.find_preset(modality.value, model)
            base: dict[str, Any] = {"data": {"modality": modality.value}, "model": {"name": model},
                                    "train": {"out": str(out)}}
            if data is not None:
                base["data"]["source"] = data
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
                if data is not None:
                    raise MedsynthError("--data", "give either --data or --domain-a/--domain-b, not both")
                base["data"].update(source=domain_a, domain_b=domain_b)
                base["model"]["num_classes"] = 2
            cfg = C.resolve(preset=preset_path, overrides=set_ or [], base=base)
            check_output_folder(cfg.train.out)
            run_dir = None
        cfg = check_config(cfg)
        d = cfg.data
        source, source_b = _training_paths(cfg, resume, data=data, domain_a=domain_a, domain_b=domain_b,
                                           conditional=conditional)
        t0 = time.perf_counter()
        ds, loading = _load_training_set(source, d, source_b)
        demo = resume is None and _is_default(cfg.data.source) and Path(source).name == "chest"
        typer.echo(f"data: {len(ds)} {d.modality} images {tuple(ds.images.shape[1:])} from {source} "
                   + (f"({DEMO_NOTE})" if demo else f"(split {d.split})")
                   + f" in {time.perf_counter() - t0:.1f}s", err=True)
        if loading.stream:
            typer.echo(f"data: {loading.line()}; cache {ds.images.files[0].path.parent}", err=True)
        if _train_unconditionally(cfg, ds, resume=resume, conditional=conditional):
            cfg.model.num_classes = 0
            cfg = check_config(cfg)
            typer.echo(f"data: no image carries a class label: training {cfg.model.name} unconditionally "
                       "(give a manifest with a label column to condition on labels)", err=True)
        labels = ds.labels if cfg.model.num_classes > 0 else None
        _record_data(cfg, ds, source, resume=resume is not None, data_root=data_root)  # resume: same images?
        check_data(cfg, ds.images, labels)  # before the run folder is made
        if run_dir is None:
            run_dir = stack.enter_context(fresh_run_dir(cfg.train.out, f"{d.modality}-{cfg.model.name}"))
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 alone writes the run
            write_data_source(run_dir, source, source_b)  # the only record of the input path: RUN/local/
            write_data_report(run_dir, len(ds), ds.skipped, loading=loading.record(),
                              geometry=training_geometry(source, modality=d.modality, spatial_dims=d.spatial_dims,
                                                         size=d.size, split=d.split))
        typer.echo(f"run: {run_dir}", err=True)
        for key, (before, after) in changes.items():
            typer.echo(f"resume: {key} {before} -> {after}", err=True)
        res = run_train(cfg, ds.images, labels, run_dir, resume=resume is not None, changes=changes,
                        progress=progress)
    typer.echo(f"done: {res.step} steps, {res.seconds / 60:.1f} min, {res.images_per_second:.0f} img/s -> {res.run_dir}")
    if int(os.environ.get("RANK", "0")) == 0:
        _train_summary(res, cfg, ds.images, quick_check=quick_check)


def _train_summary(res, cfg, real, *, quick_check: bool) -> None:
    """The end of ``train``: where the run, its last grid, the picture beside real images and the
    checkpoint are; a quick fidelity figure against its floor (2D runs up to 128²); the next commands."""
    from medsynth.train.grid import write_final_picture

    run = Path(res.run_dir)
    grids = sorted((run / "samples").glob("step_*.png"))
    picture = write_final_picture(res.model, real, run / "local" / FINAL_PICTURE, n=32, seed=cfg.train.seed,
                                  step=res.step)
    lines = [("run", run), ("samples", grids[-1] if grids else "(none)"),
             ("beside real", f"{picture} (shows real training images: it stays in RUN/local/, never shared)"),
             ("checkpoint", run / "checkpoints" / "last.pt")]
    if quick_check:
        lines.append(("quick check", _quick_check(res.model, real, cfg)))
    width = max(len(k) for k, _ in lines) + 1
    for k, v in lines:
        typer.echo(f"{k + ':':<{width}} {v}")
    typer.echo("next:")
    typer.echo(f"  medsynth generate {run} --count 400 --format dicom   # synthetic DICOM set, marked synthetic")
    typer.echo(f"  medsynth evaluate {run}                             # fidelity + privacy audit (~1 min)")


#: the end-of-run picture (last samples beside real training images), under RUN/local/
FINAL_PICTURE = "samples_vs_real.png"
#: at most this many images per side in train's quick check
QUICK_CHECK_N = 256


def _quick_check(model, real, cfg) -> str:
    """One line: the two-sample classifier test on up to :data:`QUICK_CHECK_N` images a side, beside
    its real-vs-real floor; or why it was skipped."""
    import torch

    from medsynth.metrics.two_sample import two_sample_test

    d = cfg.data
    if d.spatial_dims != 2 or d.size > 128:
        return f"skipped for {d.spatial_dims}D {d.size}² runs (costs minutes): medsynth evaluate RUN has it"
    n = min(QUICK_CHECK_N, len(real))
    if n < 40:
        return f"skipped: {n} real images (needs 40)"
    g = torch.Generator().manual_seed(int(cfg.train.seed) + 777)
    labels = None if model.num_classes <= 0 else torch.arange(n) % model.num_classes
    with torch.no_grad():
        synth = model.sample(n, labels=labels, generator=g).detach().cpu()
    idx = torch.randperm(len(real), generator=g)[:n]
    t = two_sample_test(real[idx].cpu(), synth, seed=int(cfg.train.seed))
    fl = t["floor"]
    return (f"a small CNN tells synthetic from real with AUROC {t['auroc']:.2f} "
            f"[{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]; real vs real {fl['auroc']:.2f} (0.5 = cannot tell, "
            f"1.0 = tells every image; {n} a side, {t['seconds']:.0f}s)")


@app.command()
@_friendly
def generate(
    run: Annotated[Path, typer.Argument(help="run directory (or checkpoint file)")],
    count: Annotated[int, typer.Option(help="number of synthetic images")] = 100,
    class_: Annotated[Optional[int], typer.Option(
        "--class", help="class label for all images (conditional models); default: classes in turn")] = None,
    seed: Annotated[int, typer.Option(help="random seed of the latents")] = 0,
    fmt: Annotated[ImageFormat, typer.Option("--format", help="file format")] = ImageFormat.png,
    truncation: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="truncation psi (StyleGAN2, BigGAN): fidelity/diversity dial")] = None,
    from_: Annotated[Optional[str], typer.Option(
        "--from", help="translate the images of this folder/manifest (CycleGAN)")] = None,
    direction: Annotated[Direction, typer.Option(help="translation direction with --from")] = Direction.a2b,
    pairs: Annotated[bool, typer.Option(
        "--pairs/--no-pairs", help="write aligned pairs of both domains (CoGAN)")] = False,
    seg: Annotated[bool, typer.Option(
        "--seg/--no-seg", help="with --pairs --format dicom: domain 2 is a mask; write it as DICOM SEG files "
                               "(OUT/domain1/*_seg.dcm, seg.csv) referencing domain 1's images, thresholded at 0; "
                               "with --from --format dicom (CycleGAN): the region each translation made denser "
                               "(a heuristic change mask) as SEG files in OUT/seg/")] = False,
    out: Annotated[Optional[Path], typer.Option(help="output folder; default: RUN/synthetic")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite/--no-overwrite", help="replace medsynth's earlier output in --out (only the files listed in "
                                           "its medsynth-outputs.json); without it a non-empty --out is refused")] = False,
    resume: Annotated[bool, typer.Option(
        "--continue/--no-continue", help="continue an interrupted generate in --out (Ctrl-C, killed): give the same "
                                         "arguments; it writes the remaining chunks, and the set ends identical to "
                                         "an uninterrupted run")] = False,
    gate: Annotated[Optional[bool], typer.Option("--gate/--no-gate", help=_GATE_HELP)] = None,
    gate_quantile: Annotated[float, typer.Option("--gate-quantile", help=_GATE_QUANTILE_HELP)] = 0.01,
    gate_encoder: Annotated[Optional[Path], typer.Option("--gate-encoder", help=_GATE_ENCODER_HELP)] = None,
    data: Annotated[Optional[str], typer.Option(help=_DATA_OF_RUN + " (the release gate's reference)")] = None,
):
    """Write synthetic images (marked synthetic) and a manifest.csv.

    --out must be empty or new: a folder holding files is refused, unless --overwrite, which
    removes only the files medsynth recorded there (medsynth-outputs.json: an earlier generate's
    images and manifest), never other files.

    Sampled images are made, gated and written in chunks (1000 images; fewer for large 3D volumes), so
    memory does not grow with --count. Chunk k's latents come from a generator seeded by (--seed, k)
    (chunk 0: --seed itself). An interrupted generate (Ctrl-C, killed) keeps its finished chunks;
    run the same command with --continue to write the rest: the final set (files, pixels, manifest,
    release_gate.json) is the one an uninterrupted run writes. manifest.csv appears only when the set
    is complete.

    Release gate (on by default when the run's training data can be read): sampled images closer to a
    training image than the threshold in pixel OR feature space are removed and replaced by new
    samples (rounds, at most 10 per chunk) until --count images pass; release_gate.json (totals over all
    chunks), the manifest's release_gate column and every file record the thresholds and how many were
    removed (in a set of several chunks: of the file's own chunk)."""
    from medsynth.runs import load_trained, resumable_output

    if count < 1:
        raise MedsynthError("--count", f"must be a number of images >= 1, got {count}")
    _check_gate_quantile(gate_quantile)
    if seg and not ((pairs or from_ is not None) and fmt is ImageFormat.dicom):
        raise MedsynthError("--seg", "writes CoGAN mask pairs (--pairs) or CycleGAN change masks (--from) as DICOM "
                                     "SEG: it needs one of them and --format dicom")
    if resume and overwrite:
        raise MedsynthError("--continue", "continues the output in --out; --overwrite replaces it: give one of them")
    cfg, model, ck = load_trained(run)
    if truncation is not None and not model.supports_truncation:
        raise MedsynthError("--truncation", f"model {cfg.model.name!r} has no truncation trick (stylegan2, biggan do)")
    _check_class(model, class_, translation=from_ is not None or pairs or model.supports_translation)
    run_dir = run if run.is_dir() else run.parent.parent
    arguments = _generate_arguments(run_dir, cfg, ck, count=count, class_=class_, seed=seed, fmt=fmt,
                                    truncation=truncation, from_=from_, direction=direction, pairs=pairs, seg=seg,
                                    gate=gate, gate_quantile=gate_quantile, gate_encoder=gate_encoder, data=data)
    with resumable_output(out or run_dir / "synthetic", "generate", arguments, overwrite=overwrite,
                          resume=resume) as folder:
        if folder.complete:
            typer.echo(f"{folder.folder} already holds this generate's complete set (manifest.csv): nothing to do")
            return
        release = _release_gate(run_dir, cfg, gate=gate, quantile=gate_quantile, data=data, encoder=gate_encoder,
                                not_applicable=_gate_not_applicable(model, from_=from_, pairs=pairs))
        _generate_into(folder.folder, run_dir, cfg, model, count=count, class_=class_, seed=seed, fmt=fmt,
                       truncation=truncation, from_=from_, direction=direction, pairs=pairs, seg=seg,
                       release=release, resumable=folder)


def _check_class(model, class_: int | None, *, translation: bool) -> None:
    """``--class``: only for conditional models, within their classes (checked before --out is touched)."""
    if class_ is None or translation:
        return
    if model.num_classes <= 0:
        raise MedsynthError("--class", "this model is unconditional")
    if not 0 <= class_ < model.num_classes:
        raise MedsynthError("--class", f"model has classes 0..{model.num_classes - 1}")


def _path_digest(path) -> str | None:
    """A digest naming an input path in a shared record (paths may name patients)."""
    import hashlib

    if path is None:
        return None
    return "sha256:" + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]


def _generate_arguments(run_dir: Path, cfg, ck: dict, *, count: int, class_: int | None, seed: int, fmt: ImageFormat,
                        truncation: float | None, from_: str | None, direction: Direction, pairs: bool, seg: bool,
                        gate: bool | None, gate_quantile: float, gate_encoder: Path | None, data: str | None) -> dict:
    """Everything a generate's output depends on (medsynth-outputs.json ``arguments``): a ``--continue``
    with other values is refused. Input paths as digests; the checkpoint by its step; the chunk size."""
    from medsynth.data.writers import generate_chunk_size

    shape = (1,) + (int(cfg.data.size),) * int(cfg.data.spatial_dims)
    return {"run": _path_digest(run_dir), "checkpoint_step": int(ck.get("step", -1)), "count": int(count),
            "class": class_, "seed": int(seed), "format": fmt.value, "truncation": truncation,
            "from": _path_digest(from_), "direction": direction.value if from_ is not None else None,
            "pairs": bool(pairs), "seg": bool(seg), "gate": gate, "gate_quantile": float(gate_quantile),
            "gate_encoder": _path_digest(gate_encoder), "data": _path_digest(data),
            "chunk": generate_chunk_size(shape)}


def _output_spacing(run_dir: Path, d) -> tuple[float, ...] | None:
    """The pixel spacing ``generate`` writes: the run's recorded field of view / ``data.size``
    (:func:`medsynth.data.geometry.output_spacing`); ``None`` (1 mm written) with a line saying why."""
    from medsynth.data.geometry import output_spacing
    from medsynth.runs import read_data_geometry

    geometry = read_data_geometry(run_dir)
    spacing = output_spacing(geometry, d.size)
    if spacing is None:
        why = (geometry or {}).get("reason") or "the run recorded no field of view (made before medsynth recorded it)"
        typer.echo(f"pixel spacing: 1 mm written ({why})", err=True)
    elif not geometry.get("uniform", True):
        typer.echo(f"pixel spacing: {' x '.join(f'{v:.4g}' for v in spacing)} mm, from the median field of view of "
                   "training images that differ in field of view", err=True)
    return spacing


def _generate_into(out: Path, run_dir: Path, cfg, model, *, count: int, class_: int | None, seed: int,
                   fmt: ImageFormat, truncation: float | None, from_: str | None, direction: Direction,
                   pairs: bool, seg: bool = False, release: _Release | None = None, resumable=None) -> None:
    """The body of ``generate``: sample (or translate) and write into the prepared folder ``out``.

    Sampled images go chunk by chunk (:func:`medsynth.synthesis.write_synthetic_chunks`); translations (--from) and pairs (--pairs)
    in one piece: their memory is bounded by the input set (--from) or they are small studies (--pairs).

    ``release``: the release gate (:func:`_release_gate`) or why it does not run; ``None``: no gate, no record.
    ``resumable``: the :class:`medsynth.runs.ResumableOutput` of ``out`` (saves progress after each chunk)."""
    import torch

    from medsynth.data.writers import (
        SyntheticInfo,
        sample_pairs_in_batches,
        translate_in_batches,
        write_synthetic_set,
    )

    info = SyntheticInfo(model=cfg.model.name, run=run_dir.name, seed=seed,
                         gate=None if release is None else release.note)
    g = torch.Generator().manual_seed(seed)
    d = cfg.data
    spacing = _output_spacing(run_dir, d)  # the training images' field of view / data.size
    if from_ is not None:
        if not model.supports_translation:
            raise MedsynthError("--from", f"model {cfg.model.name!r} does not translate images (use a CycleGAN run)")
        src = _load_set(from_, modality=d.modality, size=d.size, spatial_dims=d.spatial_dims,
                        ct_window=d.ct_window, split=None)
        images = translate_in_batches(model, src.images, direction.value)
        lab = torch.full((len(images),), 1 if direction is Direction.a2b else 0, dtype=torch.long)
        # translations of the real images passed in: marked as translations (derived from patient data)
        info = SyntheticInfo(model=cfg.model.name, run=run_dir.name, translation=direction.value)
        df = write_synthetic_set(out, images, lab, modality=d.modality, fmt=fmt.value, info=info,
                                 ct_window=d.ct_window)
        typer.echo(f"translated {len(df)} images ({direction.value}) from {from_} -> {out} (manifest.csv; "
                   "marked as translations of real images, not synthetic)")
        if seg:  # where each translation made the image denser, as SEG objects referencing the translation
            import numpy as np

            from medsynth.data.seg import SEG_TABLE, translation_difference_mask, translation_origin, write_pair_segs

            masks = np.stack([translation_difference_mask(a[0].numpy(), b[0].numpy())
                              for a, b in zip(src.images, images)])[:, None]
            segs = write_pair_segs(out / "seg", out, df, masks, info=info,
                                   origin=translation_origin(info, fraction=0.5, floor=0.1))
            typer.echo(f"wrote {len(segs)} change masks as DICOM SEG -> {out / 'seg'} ({SEG_TABLE}; "
                       f"{int((segs['mask_pixels'] == 0).sum())} empty; a heuristic change region, not a delineation)")
        return
    if pairs:
        if not model.supports_pairs:
            raise MedsynthError("--pairs", f"model {cfg.model.name!r} does not make coupled pairs (use a CoGAN run)")
        x1, x2 = sample_pairs_in_batches(model, count, generator=g)
        if seg:  # domain 2 is a mask: DICOM SEG objects referencing domain 1's images
            from medsynth.data.seg import SEG_TABLE, write_pair_segs

            df = write_synthetic_set(out / "domain0", x1, torch.zeros(count, dtype=torch.long),
                                     modality=d.modality, fmt=fmt.value, info=info, ct_window=d.ct_window,
                                     spacing=spacing)
            segs = write_pair_segs(out / "domain1", out / "domain0", df, x2, info=info)
            typer.echo(f"wrote {count} images -> {out}/domain0 and their masks as DICOM SEG -> {out}/domain1 "
                       f"({SEG_TABLE}; {int((segs['mask_pixels'] == 0).sum())} empty masks, written as empty SEGs)")
            return
        for dom, x in ((0, x1), (1, x2)):
            write_synthetic_set(out / f"domain{dom}", x, torch.full((count,), dom, dtype=torch.long),
                                modality=d.modality, fmt=fmt.value, info=info, ct_window=d.ct_window,
                                spacing=spacing)
        typer.echo(f"wrote {count} aligned pairs -> {out}/domain0, {out}/domain1 (same row = same latent)")
        return
    if model.supports_translation:
        raise MedsynthError("--from", f"model {cfg.model.name!r} makes images only by translating the images you "
                                      "pass in: give --from FOLDER (and --direction)")
    _check_class(model, class_, translation=False)
    gated = release is not None and release.fit() is not None
    if release is not None and not gated and release.note is not None:  # fit() may have just said why not
        from dataclasses import replace

        info = replace(info, gate=release.note)
    from medsynth.synthesis import write_synthetic_chunks

    done = int((resumable.progress if resumable is not None else {}).get("chunks_done", 0))
    if done:
        typer.echo(f"continuing: {done} of {resumable.progress['chunks']} chunks were written before; writing the rest",
                   err=True)
    n_written, total, chunks = write_synthetic_chunks(
        out, cfg, model, count=count, class_=class_, seed=seed, fmt=fmt.value, truncation=truncation, info=info,
        gate=release.gate if gated else None, resumable=resumable, spacing=spacing)
    if release is not None and not gated and release.note is not None:
        from medsynth.metrics.gate import not_run_record, write_gate_record

        write_gate_record(out, not_run_record(release.note))
    typer.echo(f"wrote {n_written} synthetic {fmt.value} images -> {out} (manifest.csv)")
    if total is not None:
        typer.echo(f"{_gate_result(release.gate, total, chunks)} -> {out / 'release_gate.json'}")


# -------------------------------------------------------------------------------------------- release gate
_GATE_HELP = ("release gate: remove every synthetic image whose distance to the closest training image of the run "
              "is at or below the threshold in pixel OR feature space (threshold: the --gate-quantile of the "
              "training images' own distances to their closest image of another patient); recorded in "
              "release_gate.json, the manifest and every file; default: on when the run's training data can be "
              "read, else one line says it did not run")
_GATE_QUANTILE_HELP = ("the release gate's threshold quantile in [0, 1): a fresh real image of a new patient is "
                       "removed about this often per space")
_GATE_ENCODER_HELP = ("saved feature encoder for the gate's feature space (e.g. RUN/evaluate/encoder.pt); default: "
                      "the run's own, trained once on its training data and kept in RUN/local/gate_encoder.pt")


class _Release:
    """The release gate of one generate / augment (:func:`_release_gate`), fitted when :meth:`fit` is
    first called (after the command's cheap checks). ``note``: what the files and release_gate.json
    say instead when the gate does not run (no path; ``None``: nothing is recorded)."""

    def __init__(self, note: str | None, fit: Callable[[], Any] | None = None):
        self.note, self._fit, self.gate = note, fit, None

    def fit(self):
        """The fitted gate, or ``None`` (then :attr:`note` says why)."""
        if self._fit is not None:
            self.gate, self.note = self._fit()
            self._fit = None
        return self.gate


def _check_gate_quantile(q: float) -> None:
    if not 0.0 <= q < 1.0:
        raise MedsynthError("--gate-quantile", f"must be a number in [0, 1), got {q}")


def _gate_not_applicable(model, *, from_: str | None, pairs: bool) -> str | None:
    """Why the release gate does not apply to this generate (``None``: it applies)."""
    if from_ is not None or model.supports_translation:
        return "--from writes translations of the images you pass in, not sampled synthetic images"
    if pairs:
        return "--pairs writes coupled pairs of a two-domain run; the gate screens sampled images of one-domain runs"
    return None


def _release_gate(run_dir: Path | None, cfg, *, gate: bool | None, quantile: float, data: str | None,
                  encoder: Path | None, not_applicable: str | None) -> _Release:
    """The release gate of generate / augment: fitted on the run's training data on :meth:`_Release.fit`,
    or one line saying why it does not run.

    ``gate`` None (the default): on when it applies and the run's own training data can be read and
    used, else one line on stderr and a note in the files. ``--gate`` (True): any reason it cannot run
    is an error; so is a bad ``--data`` or ``--gate-encoder`` in either case.
    """
    _check_gate_quantile(quantile)
    if gate is False:
        typer.echo("release gate: off (--no-gate): the synthetic images are not screened against the training "
                   "images", err=True)
        return _Release("release gate: off (--no-gate), not screened against the training images")
    if not_applicable is not None:
        if gate:
            raise MedsynthError("--gate", f"does not apply here: {not_applicable}")
        if "--from" in not_applicable:
            return _Release(None)  # translations are marked as such, never as synthetic
        typer.echo(f"release gate: not run: {not_applicable}", err=True)
        return _Release("release gate: not run (coupled pairs of a two-domain run)")

    def fit():
        from medsynth.metrics.gate import RUN_ENCODER, fit_run_gate
        from medsynth.runs import DATA_SOURCE_FILE

        t0 = time.perf_counter()
        if encoder is None and not (run_dir / RUN_ENCODER).is_file() and (
                data is not None or (run_dir / DATA_SOURCE_FILE).is_file()):
            typer.echo("release gate: training its feature encoder on the run's training images (once per run, "
                       f"kept in {RUN_ENCODER}; about 10-40 s on a CPU)", err=True)
        try:
            g = fit_run_gate(run_dir, cfg, data=None if data is None else _data_source(data), quantile=quantile,
                             encoder=encoder)
        except MedsynthError as exc:
            if gate or data is not None or encoder is not None:
                raise
            typer.echo(f"release gate: not run: {exc}; give the run's training data with --data, or pass --no-gate",
                       err=True)
            return None, "release gate: not run (the run's training data was not available or not usable)"
        thr = ", ".join(f"{s} <= {t:.4g}" for s, t in g.thresholds.items())
        typer.echo(f"release gate: {g.n_train} training images of {g.n_patients} patients; removing images with "
                   f"{thr} (quantile {g.quantile:g}, {time.perf_counter() - t0:.0f}s)", err=True)
        return g, None

    return _Release(None, fit)


def _gate_result(gate, tally, chunks: int = 1) -> str:
    """One line: what the gate removed (``chunks``: screened in that many chunks, their rounds summed)."""
    per = ", ".join(f"{tally.removed.get(s, 0)} in {s} space" for s in gate.spaces)
    rounds = f" in {tally.rounds} rounds" if tally.rounds > 1 else ""
    if chunks > 1:
        rounds = f" in {chunks} chunks ({tally.rounds} rounds)"
    return (f"release gate: removed {tally.removed.get('total', 0)} of {tally.screened} images screened{rounds} "
            f"({per})")


def _run_of(synthetic: Path) -> Path | None:
    """The run a synthetic manifest was written in: the run folder holding its folder (``RUN/synthetic/``)."""
    cand = synthetic.resolve().parent.parent
    return cand if (cand / "config.yaml").is_file() and (cand / "checkpoints").is_dir() else None


#: synthetic rows augment's release gate decodes and screens at a time
AUGMENT_GATE_CHUNK = 1000


def _gate_rows(syn_df, synthetic: Path, out: Path, *, run: Path | None, gate: bool | None, quantile: float,
               encoder: Path | None):
    """augment's release gate: the synthetic rows that pass, with a ``release_gate`` column; writes
    ``out/release_gate.json``. The reference is the training data of ``run`` (default: the run the
    manifest lies in)."""
    import tempfile

    from medsynth.data.dataset import load_image_set
    from medsynth.metrics.gate import GateTally, not_run_record, read_gate_record, write_gate_record
    from medsynth.runs import load_trained

    _check_gate_quantile(quantile)
    earlier = read_gate_record(synthetic.parent)  # generate's record of the set, if it is beside the manifest

    def not_run(note: str):
        # the rows keep what generate recorded of them (a gate that ran then is not undone by this one)
        prev = syn_df["release_gate"].fillna("") if "release_gate" in syn_df else ""
        write_gate_record(out, {**not_run_record(note), "synthetic_set": earlier})
        return syn_df.assign(release_gate=[v if v else note for v in prev] if "release_gate" in syn_df else note)

    run_dir = run if run is not None else _run_of(synthetic)
    if gate is not False and run_dir is None:
        if gate or encoder is not None:
            raise MedsynthError("--run", f"{synthetic} does not lie in a run folder: name the run that generated it "
                                         "(its training data is the gate's reference)")
        typer.echo(f"release gate: not run: {synthetic} does not lie in a run folder; name the run that generated "
                   "it with --run, or pass --no-gate", err=True)
        return not_run("release gate: not run by augment (the generating run was not named)")
    if run_dir is not None and not (run_dir / "config.yaml").is_file():
        raise MedsynthError(run_dir, "no config.yaml: not a medsynth run directory")
    if gate is False:
        release = _release_gate(run_dir, None, gate=False, quantile=quantile, data=None, encoder=None,
                                not_applicable=None)
    else:
        if earlier is not None and earlier.get("ran") and earlier.get("reference", {}).get("run") not in (
                None, run_dir.resolve().name):
            raise MedsynthError("--run", f"{synthetic} was generated by run {earlier['reference']['run']} (its "
                                         f"release_gate.json), not {run_dir.resolve().name}")
        cfg, model, _ = load_trained(run_dir)
        translated = "source" in syn_df and (syn_df["source"] == "translated").any()
        release = _release_gate(run_dir, cfg, gate=gate, quantile=quantile, data=None, encoder=encoder,
                                not_applicable=_gate_not_applicable(model, from_="rows" if translated else None,
                                                                    pairs=False))
    if release.fit() is None:
        return syn_df if release.note is None else not_run(release.note)
    d = cfg.data
    tally = GateTally(rounds=1)
    passed: dict[str, bool] = {}
    # the synthetic images are decoded and screened AUGMENT_GATE_CHUNK rows at a time (each chunk through a
    # temporary manifest of absolute paths): memory does not grow with the synthetic set
    with tempfile.TemporaryDirectory(prefix="medsynth-augment-") as tmp:
        part = Path(tmp) / "chunk.csv"
        for s in range(0, len(syn_df), AUGMENT_GATE_CHUNK):
            rows_k = syn_df.iloc[s : s + AUGMENT_GATE_CHUNK].assign(
                path=[str(Path(p).resolve()) for p in syn_df["path"].iloc[s : s + AUGMENT_GATE_CHUNK]])
            rows_k.to_csv(part, index=False)
            ims = load_image_set(part, modality=d.modality, size=d.size, spatial_dims=d.spatial_dims, split=None,
                                 ct_window=d.ct_window)
            keep, _ = release.gate.screen(ims.images, tally)
            passed.update({str(Path(p).resolve()): bool(k) for p, k in zip(ims.paths, keep)})
            base = Path(tmp)
            for rel, reason in ims.skipped:  # exact repeats of another image, loaded once: its twin's verdict
                twin = reason.removeprefix("same pixels as ").removesuffix(" (duplicate kept once)")
                if twin != reason and str((base / twin).resolve()) in passed:
                    passed[str((base / rel).resolve())] = passed[str((base / twin).resolve())]
            del ims, keep
    rows = [str(Path(p).resolve()) for p in syn_df["path"]]
    missing = [r for r in rows if r not in passed]
    if missing:
        raise MedsynthError(synthetic, f"{len(missing)} synthetic row(s) are not {d.modality} images the run "
                                       f"{run_dir.name} makes, e.g. {Path(missing[0]).name}: the gate cannot screen them")
    ok = [passed[r] for r in rows]
    write_gate_record(out, {**release.gate.record(tally), "synthetic_set": earlier})
    typer.echo(_gate_result(release.gate, tally))
    return syn_df[ok].assign(release_gate=release.gate.summary_line(tally))


@app.command()
@_friendly
def augment(
    synthetic: Annotated[str, typer.Option(help="synthetic manifest.csv (from `medsynth generate`)")],
    out: Annotated[Path, typer.Option(help="output folder for the augmented manifest.csv")],
    data: Annotated[Optional[str], typer.Option(
        help="real data: a manifest CSV; default: the embedded phantom set")] = None,
    modality: Annotated[Modality, typer.Option(help="modality of the real rows kept")] = Modality.xray,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite/--no-overwrite", help="replace medsynth's earlier output in --out (only the files listed in "
                                           "its medsynth-outputs.json); without it a non-empty --out is refused")] = False,
    run: Annotated[Optional[Path], typer.Option(
        help="the run that generated --synthetic: the release gate's reference is its training data; default: "
             "the run folder --synthetic's folder lies in (RUN/synthetic/manifest.csv)")] = None,
    gate: Annotated[Optional[bool], typer.Option("--gate/--no-gate", help=_GATE_HELP)] = None,
    gate_quantile: Annotated[float, typer.Option("--gate-quantile", help=_GATE_QUANTILE_HELP)] = 0.01,
    gate_encoder: Annotated[Optional[Path], typer.Option("--gate-encoder", help=_GATE_ENCODER_HELP)] = None,
):
    """Write an augmented dataset manifest: every real row (its split kept) + synthetic rows in the
    training split, each marked source=real|synthetic|translated. Files are referenced, not copied.

    --out must be empty or new: a folder holding files is refused, unless --overwrite, which removes
    only the files medsynth recorded there (medsynth-outputs.json), never other files (an augmented
    manifest's images are referenced, so they are never among them).

    Release gate (on by default when the generating run is known: --run, or the run folder holding
    --synthetic): synthetic rows whose image lies too close to one of that run's training images (pixel
    OR feature space) are left out; OUT/release_gate.json and the manifest's release_gate column record it."""
    from medsynth.data.manifest import read_manifest, select_rows, write_manifest
    from medsynth.runs import check_output_folder, command_output
    import pandas as pd

    check_output_folder(out)  # before reading the manifests
    for option, csv in (("--synthetic", Path(synthetic)), ("--data", Path(_data_source(data)))):
        if csv.suffix.lower() == ".csv" and csv.resolve().parent == out.resolve():
            raise MedsynthError(out, f"is the folder of the {option} manifest: the augmented manifest goes "
                                     "elsewhere (referenced files are never overwritten)")
    real_df = select_rows(read_manifest(_data_source(data)), modality=modality.value)
    syn_df = read_manifest(synthetic)
    real_df = real_df.assign(source="real")
    # rows written as translations of real images (CycleGAN --from) stay marked as such
    kept = syn_df["source"].where(syn_df["source"] == "translated", "synthetic") if "source" in syn_df else "synthetic"
    syn_df = syn_df.assign(source=kept, split="train")
    _check_gate_quantile(gate_quantile)
    with command_output(out, "augment", overwrite=overwrite):
        syn_df = _gate_rows(syn_df, Path(synthetic), out, run=run, gate=gate, quantile=gate_quantile,
                            encoder=gate_encoder)
        df = pd.concat([real_df, syn_df], ignore_index=True)
        write_manifest(df, out / "manifest.csv")
    n_tr = int((real_df.get("split") == "train").sum()) if "split" in real_df else len(real_df)
    typer.echo(f"augmented manifest: {n_tr} real training + {len(syn_df)} synthetic rows "
               f"({len(real_df)} real rows in all) -> {out / 'manifest.csv'}")


def _stored_sizes(spec: str, modality: str, spatial_dims: int) -> dict[tuple[int, ...], int]:
    """How many images of a synthetic set (manifest CSV, folder of images, ``.npz``) are stored at
    each size (the last ``spatial_dims`` axes), before any resampling."""
    from collections import Counter

    from medsynth.data.manifest import read_manifest, select_rows
    from medsynth.data.readers import detect_format, load_npz_arrays, read_image

    p = Path(spec)
    if p.suffix.lower() == ".npz" and p.is_file():
        arrays = load_npz_arrays(p)
        images = arrays.get("images", next(iter(arrays.values())) if len(arrays) == 1 else None)
        return {} if images is None else {tuple(int(v) for v in images.shape[-spatial_dims:]): int(images.shape[0])}
    if p.suffix.lower() == ".csv":
        paths = list(select_rows(read_manifest(p), modality=modality)["path"])
    elif p.is_dir():
        formats = {f: detect_format(f) for f in sorted(p.rglob("*")) if f.is_file()}
        paths = [f for f, fmt in formats.items() if fmt in ("nifti", "pil") or (fmt == "dicom" and spatial_dims == 2)]
        if spatial_dims == 3:  # a DICOM volume is a series: one folder of slices
            paths += sorted({f.parent for f, fmt in formats.items() if fmt == "dicom"})
    else:
        return {}
    return dict(Counter(tuple(int(v) for v in read_image(f).array.shape[-spatial_dims:]) for f in paths))


def _synthetic_set(spec: str, real, *, count: int, seed: int, size: int, spatial_dims: int, modality: str, ct_window,
                   resize: bool = False):
    """A synthetic ImageSet from a run directory (sampled now, balanced classes) or a manifest.

    A set stored at another size than the benchmark's is refused unless ``resize`` (then it is
    resampled to ``size`` like real images, and logged); a run's generator must make ``size``."""
    import torch

    from medsynth.data.dataset import ImageSet
    from medsynth.data.writers import sample_in_batches
    from medsynth.runs import load_trained

    p = Path(spec)
    if p.is_dir() and (p / "checkpoints").exists():
        cfg, model, _ = load_trained(p)
        if model.num_classes <= 0:
            raise MedsynthError(p, "benchmark needs a class-conditional generator (train with --conditional)")
        if cfg.data.size != size or cfg.data.spatial_dims != spatial_dims:
            raise MedsynthError(p, f"generator makes {cfg.data.size}px {cfg.data.spatial_dims}D images, benchmark "
                                   f"uses {size}px {spatial_dims}D: benchmark with --size {cfg.data.size} "
                                   f"--spatial-dims {cfg.data.spatial_dims}, or write its images with "
                                   "`medsynth generate` and pass --resize-synthetic")
        count = -(-count // model.num_classes) * model.num_classes  # equal count per class
        labels = torch.arange(count) % model.num_classes
        images = sample_in_batches(model, count, labels=labels, generator=torch.Generator().manual_seed(seed),
                                   desc="benchmark: sampling synthetic")
        n = len(images)
        return ImageSet(images=images, labels=labels, patient_ids=[f"synthetic-{i}" for i in range(n)],
                        paths=[""] * n, splits=["train"] * n, modality=modality)
    want = (size,) * spatial_dims
    other = {s: n for s, n in _stored_sizes(spec, modality, spatial_dims).items() if s != want}
    if other:
        shown = ", ".join(f"{n} at {'x'.join(map(str, s))}" for s, n in sorted(other.items()))
        if not resize:
            raise MedsynthError(spec, f"synthetic images are not {'x'.join(map(str, want))} like the benchmark's "
                                      f"--size {size} ({shown}): benchmark at their size, or pass "
                                      "--resize-synthetic to resample them")
        log.warning("--resize-synthetic: resampling %d synthetic images (%s) to %s", sum(other.values()), shown,
                    "x".join(map(str, want)))
    return _load_set(spec, modality=modality, size=size, spatial_dims=spatial_dims, ct_window=ct_window, split=None)


@app.command()
@_friendly
def benchmark(
    data: Annotated[Optional[str], typer.Option(
        help="real data with patient-level splits: manifest CSV, folder, .npz or the LIDC folder; "
             "default: the embedded phantom set")] = None,
    synthetic: Annotated[Optional[str], typer.Option(
        help="run directory (sampled now) or synthetic manifest CSV; default: none (real arms only)")] = None,
    modality: Annotated[Modality, typer.Option(help="imaging modality")] = Modality.xray,
    size: Annotated[int, typer.Option(help="image size (power of two)")] = 64,
    spatial_dims: Annotated[int, typer.Option(
        "--spatial-dims", min=2, max=3, help="2 (radiographs/slices) or 3 (CT volumes)")] = 2,
    ct_window: Annotated[CtWindow, typer.Option("--ct-window", help="CT display window")] = CtWindow.lung,
    fractions: Annotated[str, typer.Option(help="comma list of real training fractions")] = "0.1,0.25,1.0",
    n_seeds: Annotated[int, typer.Option(
        "--n-seeds", min=1, help="number of classifier seeds (0..N-1; >= 5 recommended)")] = 5,
    arms: Annotated[str, typer.Option(
        help="comma list of arms: real, real+classic, real+synthetic, real+classic+synthetic, synthetic-only; "
             "'all' = every arm the data allows")] = "all",
    arch: Annotated[Arch, typer.Option(
        help="classifier: cnn (position-invariant), monai, resnet18, resnet10")] = Arch.cnn,
    device: Annotated[Device, typer.Option(help="torch device for classifier training")] = Device.cpu,
    epochs: Annotated[int, typer.Option(help="classifier training epochs")] = 15,
    synthetic_ratio: Annotated[float, typer.Option(
        "--synthetic-ratio", help="synthetic images per real training image")] = 1.0,
    n_boot: Annotated[int, typer.Option("--n-boot", help="bootstrap resamples for the CIs and tests")] = 1000,
    min_steps: Annotated[int, typer.Option(
        "--min-steps", help="at least this many optimiser steps (small fractions)")] = 100,
    out: Annotated[Optional[Path], typer.Option(
        help="output folder; default: RUN/benchmark, or benchmarks/<modality>-<data name>")] = None,
    resize_synthetic: Annotated[bool, typer.Option(
        "--resize-synthetic/--no-resize-synthetic", help="resample synthetic files stored at another size than "
                                                         "--size (logged); without it such a set is refused")] = False,
):
    """Tumour classifier per arm (real, +classic augmentation, +synthetic, both, synthetic-only) at reduced
    real fractions, several seeds, patient-held-out test set: AUROC, sens@90%spec, spec@90%sens with
    patient-bootstrap 95% CIs and paired bootstrap tests against real-only."""
    from medsynth.config import SIZES
    from medsynth.downstream.benchmark import run_benchmark, write_benchmark
    from medsynth.results import read_benchmark
    from medsynth.runs import check_output_folder

    try:
        fr = tuple(float(f) for f in fractions.split(","))
    except ValueError:
        raise MedsynthError("--fractions", f"must be a comma list of numbers, got {fractions!r}") from None
    if not all(0 < f <= 1 for f in fr):
        raise MedsynthError("--fractions", f"each fraction must lie in (0, 1], got {fractions!r}")
    if size not in SIZES:
        raise MedsynthError("--size", f"must be one of {', '.join(map(str, SIZES))}, got {size}")
    for option, value, low in (("--epochs", epochs, 1), ("--n-boot", n_boot, 1), ("--min-steps", min_steps, 0)):
        if value < low:
            raise MedsynthError(option, f"must be an integer >= {low}, got {value}")
    if not synthetic_ratio > 0:
        raise MedsynthError("--synthetic-ratio", f"must be a number > 0, got {synthetic_ratio}")
    if out is None:
        sp = Path(synthetic) if synthetic else None
        name = Path(data or "default").stem or "data"
        out = sp / "benchmark" if sp is not None and sp.is_dir() else Path("benchmarks") / f"{modality.value}-{name}"
    check_output_folder(out)  # before the classifiers train, not after
    real_set = _load_set(data, modality=modality.value, size=size, spatial_dims=spatial_dims,
                         ct_window=ct_window.value, split=None)
    syn_set = None
    if synthetic:
        n_train = sum(s == "train" for s in real_set.splits)
        syn_set = _synthetic_set(synthetic, real_set, count=max(2, int(round(synthetic_ratio * n_train))), seed=1234,
                                 size=size, spatial_dims=spatial_dims, modality=modality.value,
                                 ct_window=ct_window.value, resize=resize_synthetic)
    t0 = time.perf_counter()
    arm_list = None if arms.strip() == "all" else tuple(a.strip() for a in arms.split(",") if a.strip())
    if arm_list is None and syn_set is None:
        typer.echo("no --synthetic: running the real and real+classic arms only")
    result = run_benchmark(real_set, syn_set, arms=arm_list, fractions=fr, seeds=tuple(range(n_seeds)),
                           epochs=epochs, synthetic_ratio=synthetic_ratio, n_boot=n_boot, min_steps=min_steps,
                           classifier_kwargs={"arch": arch.value, "device": device.value})
    write_benchmark(result, out)
    typer.echo(f"benchmark ({time.perf_counter() - t0:.0f}s) -> {out}")
    typer.echo(_benchmark_table(read_benchmark(out)))


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
    run: Annotated[Path, typer.Argument(help="run directory")],
    data: Annotated[Optional[str], typer.Option(help=_DATA_OF_RUN)] = None,
    benchmark_dir: Annotated[Optional[Path], typer.Option(
        "--benchmark", help="benchmark folder; default: RUN/benchmark")] = None,
    count: Annotated[int, typer.Option(
        min=2, help="number of synthetic images sampled for the fidelity/privacy audit")] = 500,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    out: Annotated[Path, typer.Option(help="parent folder of report folders")] = Path("reports"),
    encoder: Annotated[Optional[Path], typer.Option(
        help="saved feature encoder (keeps FD comparable across reports)")] = None,
    encoder_steps: Annotated[int, typer.Option(
        "--encoder-steps", min=1, help="steps when the encoder is trained here")] = 300,
    show_real: Annotated[bool, typer.Option(
        "--show-real/--no-show-real", help="show real training images (the evaluation's side-by-side samples "
                                           "and closest pairs); the report's first line then says it contains "
                                           "patient images")] = False,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help=_DATA_ROOT_HELP)] = None,
):
    """Markdown + HTML + JSON report in reports/<run>/: a one-page summary (augmentation benefit per arm with
    CIs and paired p-values, memorisation and membership inference, fidelity vs the real floor), then fidelity,
    privacy, benchmark and provenance sections. It shows RUN/evaluate/ (running `medsynth evaluate` first, with
    --data/--count/--seed/--encoder/--encoder-steps, when the run has none) and the benchmark's results.json.
    It holds no real training image unless --show-real, and no input path."""
    from medsynth.report import build_report

    if benchmark_dir is not None and not benchmark_dir.is_dir():
        raise MedsynthError(benchmark_dir, "benchmark folder not found")
    path = build_report(run, out_root=out, benchmark_dir=benchmark_dir,
                        real=None if data is None else _data_source(data), count=count, seed=seed, encoder=encoder,
                        encoder_steps=encoder_steps, show_real=show_real, data_root=data_root)
    typer.echo(f"report -> {path}" + (" (CONTAINS PATIENT IMAGES: --show-real)" if show_real else ""))


@app.command()
@_friendly
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory")],
    data: Annotated[Optional[str], typer.Option(help=_DATA_OF_RUN)] = None,
    count: Annotated[int, typer.Option(min=2, help="number of synthetic images sampled")] = 500,
    seed: Annotated[int, typer.Option(help="random seed of sampling, encoder, splits and bootstraps")] = 0,
    encoder: Annotated[Optional[Path], typer.Option(
        help="saved feature encoder (keeps features fixed across runs); default: trained here")] = None,
    encoder_steps: Annotated[int, typer.Option(
        "--encoder-steps", min=1, help="steps when the encoder is trained here")] = 300,
    repeats: Annotated[int, typer.Option(min=1, help="random real/real splits for the floors")] = 5,
    n_boot: Annotated[int, typer.Option("--n-boot", min=1, help="bootstrap resamples for attack AUROC CIs")] = 1000,
    inception_weights: Annotated[Optional[Path], typer.Option(
        "--inception-weights", help="local TorchScript Inception feature network: adds the standard "
                                    "Inception FID (never downloaded)")] = None,
    inception_input: Annotated[InceptionInput, typer.Option(
        "--inception-input", help="that network's input range: uint8 (0..255), unit (0..1), sym (-1..1)")
    ] = InceptionInput.uint8,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help=_DATA_ROOT_HELP)] = None,
):
    """Fidelity (FD, KID, precision/recall, density/coverage, intensity, MS-SSIM diversity, each with a
    real-vs-real floor) and privacy (DCR/NNDR, closest pairs, membership inference with a control)
    -> RUN/evaluate/evaluation.{json,md} + figures (fig_samples.png and fig_closest_pairs.png show real
    training images: keep them in the run); the Fréchet distance also goes to TensorBoard
    (RUN/tensorboard/evaluate/, as the run's train.tensorboard says)."""
    from medsynth.metrics.evaluate import evaluate_run

    t0 = time.perf_counter()
    path = evaluate_run(run, real=None if data is None else _data_source(data), count=count, seed=seed,
                        encoder=encoder, encoder_steps=encoder_steps, repeats=repeats, n_boot=n_boot,
                        inception_weights=inception_weights, inception_input=inception_input.value,
                        data_root=data_root)
    from medsynth.train.tensorboard import write_evaluation as tensorboard_evaluation

    board = tensorboard_evaluation(run)  # FD at the run's step, as the run's train.tensorboard says
    typer.echo(f"evaluation ({time.perf_counter() - t0:.0f}s) -> {path} (and evaluation.md)"
               + (f"; Fréchet distance also in {board}" if board else ""))


def trial_trainer(cfg, images, labels, run_dir: Path, resume: bool) -> None:
    """The generator trainer of ``medsynth trial`` (:func:`medsynth.downstream.trial.run_trial`): the
    config and data checks of ``train``, then :func:`medsynth.train.loop.train` into ``run_dir``."""
    from medsynth.train.loop import check_config, check_data
    from medsynth.train.loop import train as run_train

    cfg = check_config(cfg)
    check_data(cfg, images, labels)
    run_train(cfg, images, labels, run_dir, resume=resume)


@app.command()
@_friendly
def trial(
    data: Annotated[Optional[str], typer.Option(
        help="real data with patient-level train/val/test splits: manifest CSV, folder, .npz or "
                                 "the LIDC folder; default: the embedded phantom set")] = None,
    protocol: Annotated[Optional[Path], typer.Option(
        help="trial protocol YAML; default: the packaged phantom protocol (medsynth/downstream/trial_phantom.yaml)")]
    = None,
    out: Annotated[Path, typer.Option(help="trial folder (resumable: run again to continue)")] = Path("runs/trial"),
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="override a protocol setting before the trial starts: --set n_boot=2000 (repeatable)")] = None,
    analyse_only: Annotated[bool, typer.Option(
        "--analyse-only/--no-analyse-only", help="only (re)write trial.json, trial.md and the figures")] = False,
):
    """A declared augmentation trial (issue 16): generators trained per real subset, classifier arms with
    controls and doses, hierarchical bootstrap, Holm-corrected secondary family. Resumable part by part;
    a folder started under another protocol is refused. Start the same command again (another shell or
    host sharing OUT) for more workers: they share the parts through claim files."""
    from medsynth.downstream.trial import analyse_trial, load_protocol, run_trial

    t0 = time.perf_counter()
    if analyse_only:
        if not (out / "protocol.yaml").is_file():
            raise MedsynthError(out, "not a trial folder (no protocol.yaml)")
        res = analyse_trial(out)
    else:
        proto = load_protocol(protocol, set_ or [])
        d = proto.data
        real = _load_set(data, modality=d["modality"], size=int(d["size"]), spatial_dims=int(d["spatial_dims"]),
                         ct_window=d.get("ct_window", "lung"), split=None)
        typer.echo(f"trial {proto.name}: {len(real)} real images -> {out}", err=True)
        info = run_trial(real, proto, out, trainer=trial_trainer)
        res = info["analysis"]
        typer.echo(f"trial: {info['ran']} part(s) run now, {info['done_before']} done before, "
                   f"{info['remaining']} left, {time.perf_counter() - t0:.0f}s")
    pr = res["primary"]
    if pr.get("available"):
        typer.echo(f"primary [{res['status']}]: {pr['comparison']} at {100 * pr['fraction']:g}% real: "
                   f"ΔAUROC {pr['estimate']:+.4f} [{pr['lo']:+.4f}, {pr['hi']:+.4f}], p = {pr['p']:.4f}: "
                   f"{'met' if pr['met'] else 'not met'}")
    else:
        typer.echo(f"primary [{res['status']}]: not available yet")
    typer.echo(f"-> {out / 'trial.md'}")


@app.command("sample-data")
@_friendly
def sample_data(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("sample_data"),
    n_xray: Annotated[int, typer.Option("--n-xray", help="patients with radiographs (DICOM DX)")] = 420,
    n_ct: Annotated[int, typer.Option("--n-ct", help="patients with an axial CT slice (NIfTI)")] = 300,
    n_png: Annotated[int, typer.Option("--n-png", help="radiographs also written as PNG")] = 30,
    seed: Annotated[int, typer.Option(help="random seed of the phantoms")] = 0,
    xray_view: Annotated[XrayView, typer.Option(
        "--xray-view", help="radiograph view: lung_spot (64 mm field near a nodule site, 1 mm pixels: the "
                            "detection task) or chest (whole chest, 384 mm field)")] = XrayView.lung_spot,
    n_chest: Annotated[int, typer.Option(
        "--n-chest", help="whole-chest demo radiographs in OUT/chest/ (a folder of unlabelled DICOM files: what "
                          "`medsynth train --modality xray` trains on by default)")] = 300,
    seg: Annotated[bool, typer.Option(
        "--seg/--no-seg", help="also write the nodule masks of the DICOM images with a nodule (DX radiographs, CT "
                               "series) as DICOM SEG files: OUT/xray/seg/, OUT/ct/series/*_seg.dcm, manifest "
                               "column seg (simulator ground truth)")] = False,

    xray_size: Annotated[int, typer.Option(
        "--xray-size", min=16, max=4096,
        help="radiograph side in pixels (DX files and OUT/chest/); ImagerPixelSpacing = field of view / size "
             "(whole chest: 384 mm, e.g. 0.375 mm at 1024; OUT/chest/ above 96 px comes from a finer phantom grid, "
             "~5 s a radiograph at 1024)")] = 64,
):
    """Simulate chest phantoms (HU volumes with nodules, CT, DRR radiographs) and write them with a manifest."""
    from medsynth.phantom import generate_sample_data

    t0 = time.perf_counter()
    manifest = generate_sample_data(out, n_xray=n_xray, n_ct=n_ct, n_png=min(n_png, n_xray), seed=seed,
                                    xray_view=xray_view.value, n_chest=min(n_chest, n_xray), seg=seg,
                                    xray_size=xray_size)
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
def info(path: Annotated[Path, typer.Argument(help="a file or folder")]):
    """What medsynth reads from a file or folder: modality, shape, spacing, intensities, labels."""
    from medsynth.data.info import describe

    for key, value in describe(path).items():
        typer.echo(f"{key}: {value}")


# -------------------------------------------------------------------------------------------- reader study
reader_study_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                               help="blinded reader study (visual Turing test): build the cases and the key, "
                                    "score the readers' answers")
app.add_typer(reader_study_app, name="reader-study")


class CaseFormat(str, Enum):
    """``reader-study build --format``: the case files' format."""

    png = "png"
    dicom = "dicom"


class RatingScale(str, Enum):
    """``reader-study build --scale``: :data:`medsynth.metrics.reader_study.SCALES`."""

    confidence = "confidence"
    binary = "binary"


@reader_study_app.command("build")
@_friendly
def reader_study_build(
    synthetic: Annotated[str, typer.Option(
        help="synthetic images: a run directory (sampled now with --seed) or a synthetic manifest CSV / folder "
             "(e.g. RUN/synthetic/manifest.csv)")],
    out: Annotated[Path, typer.Option(help="case folder for the readers (new or empty)")],
    data: Annotated[Optional[str], typer.Option(help=_DATA_EMBEDDED)] = None,
    n_real: Annotated[int, typer.Option("--n-real", min=1, help="number of real images")] = 50,
    n_synthetic: Annotated[int, typer.Option("--n-synthetic", min=1, help="number of synthetic images")] = 50,
    fmt: Annotated[CaseFormat, typer.Option("--format", help="case file format")] = CaseFormat.png,
    scale: Annotated[RatingScale, typer.Option(
        help="rating scale: confidence (1-5 that the image is real, 5 = certainly real) or binary "
             "(real/synthetic)")] = RatingScale.confidence,
    key_out: Annotated[Optional[Path], typer.Option(
        "--key-out", help="answer-key folder, kept apart from the cases; default: the sibling OUT_key/ "
                          "(refused inside --out)")] = None,
    seed: Annotated[int, typer.Option(help="random seed of the draws, the shuffle and a run's sampling")] = 0,
    modality: Annotated[Optional[Modality], typer.Option(
        help="imaging modality; default: the run's, else xray")] = None,
    size: Annotated[Optional[int], typer.Option(help="image side length; default: the run's, else 64")] = None,
    ct_window: Annotated[CtWindow, typer.Option("--ct-window", help="CT display window")] = CtWindow.lung,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite/--no-overwrite", help="replace medsynth's earlier output in --out and --key-out (only the "
                                           "files listed in their medsynth-outputs.json)")] = False,
):
    """Write a blinded, shuffled mix of real and synthetic images as case_0001.png/.dcm (no origin in any
    file: NEVER let them leave the study), a README and a response template into --out, and the answer key
    into --key-out."""
    from medsynth.metrics.reader_study import build

    built = build(_data_source(data), synthetic, out=out, key_out=key_out, n_real=n_real, n_synthetic=n_synthetic,
                  fmt=fmt.value, scale=scale.value, seed=seed, modality=None if modality is None else modality.value,
                  size=size, ct_window=ct_window.value, overwrite=overwrite)
    typer.echo(f"cases: {len(built.case_files)} ({built.n_real} real, {built.n_synthetic} synthetic from "
               f"{built.generator}) -> {built.cases} (README.txt, responses_template.csv; unmarked synthetic and "
               "real patient images: they must never leave the study)")
    typer.echo(f"key:   {built.key} (keep it apart from the readers)")
    typer.echo(f"next:  medsynth reader-study score --key {built.key} --answers READER1.csv READER2.csv "
               "--out RESULTS")


@reader_study_app.command("score")
@_friendly
def reader_study_score(
    key: Annotated[Path, typer.Option(help="answer-key folder written by `reader-study build`")],
    answers: Annotated[list[Path], typer.Option(
        metavar="CSV", help="answer CSV(s) with columns case, reader, rating: --answers A.csv B.csv ... (or repeat --answers)")],
    out: Annotated[Path, typer.Option(help="output folder for reader_study.json and reader_study.md")],
    more_answers: Annotated[Optional[list[Path]], typer.Argument(
        hidden=True, metavar="CSV", help="further answer CSVs after --answers")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=1, help="bootstrap resamples for the CIs")] = 1000,
    seed: Annotated[int, typer.Option(help="random seed of the bootstrap")] = 0,
):
    """Score the readers: per reader AUC (bootstrap and DeLong CIs), fraction of synthetic images judged
    real, sensitivity/specificity for spotting synthetic; pooled over readers (bootstrap over cases)."""
    from medsynth.metrics.reader_study import score, write_results
    from medsynth.runs import check_output_folder

    check_output_folder(out)
    res = score(key, [*answers, *(more_answers or [])], n_boot=n_boot, seed=seed)
    json_path, md_path = write_results(res, out)
    for r in res["readers"]:
        a = r["auc"]
        typer.echo(f"{r['reader']}: AUC {a['point']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}], synthetic judged real "
                   f"{r['synthetic_judged_real']['point']:.3f}")
    p = res["pooled"]["auc"]
    typer.echo(f"pooled: AUC {p['point']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]")
    typer.echo(res["interpretation"])
    typer.echo(f"results -> {json_path}, {md_path}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
