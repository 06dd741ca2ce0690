"""Run configuration: dataclass defaults -> YAML preset (``medsynth/presets/*.yaml``) -> ``--set key=value``.

The resolved config is a plain nested dict when saved (``config.yaml`` in every run directory)
and inside checkpoints, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsynth.atomic import write_text
from medsynth.errors import MedsynthError

#: The repository / installed package root (parent of ``medsynth/``).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: The presets shipped with the package (package data): ``<modality>_<model>[_gpu].yaml``.
PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class DataConfig:
    """Where training images come from and how they are prepared.

    Attributes:
        source: manifest CSV, folder, ``.npz`` or LIDC folder; ``"default"`` means the embedded
            phantom sample data (``sample_data/manifest.csv``).
        modality: ``"xray"`` or ``"ct"``.
        size: model input edge length in pixels (voxels for 3D).
        spatial_dims: 2 (radiographs, CT slices) or 3 (CT volumes).
        ct_window: CT window name (``"lung"``, ``"mediastinal"``) or ``[centre, width]`` in HU.
        split: which split to train on (``"train"``; ``None`` = all rows).
        domain_b: two-domain variants (CycleGAN, CoGAN) from two sources: ``source`` is domain A
            (label 0) and ``domain_b`` domain B (label 1), whatever labels the files carry
            (``medsynth train --domain-a DIR --domain-b DIR``). ``None``: one source, its labels.
    """

    source: str = "default"
    modality: str = "xray"
    size: int = 64
    spatial_dims: int = 2
    ct_window: Any = "lung"
    split: str | None = "train"
    domain_b: str | None = None


@dataclass
class ModelConfig:
    """Generator/discriminator settings common to all variants.

    Attributes:
        name: registered variant name (``medsynth models`` lists them).
        latent_dim: size of the generator's noise vector z.
        width: base channel width (the widest layer is ``8 * width``).
        num_classes: 0 for unconditional, else number of class labels (e.g. 2 = nodule absent/present).
        lr_g, lr_d: Adam learning rates of the generator and discriminator phases.
        betas: Adam betas.
        ema_beta: decay of the exponential moving average of the generator (0 disables EMA).
        params: variant-specific hyper-parameters (each variant documents and validates its own).
    """

    name: str = "dcgan"
    latent_dim: int = 128
    width: int = 32
    num_classes: int = 0
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema_beta: float = 0.999
    params: dict[str, Any] = field(default_factory=dict)
    # Filled from DataConfig at resolve time so a model file is self-describing.
    size: int = 64
    spatial_dims: int = 2
    channels: int = 1


@dataclass
class TrainConfig:
    """Loop settings.

    Attributes:
        steps: number of training steps (one step runs every phase that is due).
        minutes: optional time cap; training stops at whichever of steps/minutes comes first.
        clock: what ``minutes`` counts: ``"wall"`` (elapsed time) or ``"process"`` (this
            process's CPU time, all threads: with ``threads=1`` the compute a run received, which
            other jobs on a shared machine do not eat into; equal-budget comparisons use it).
        batch_size: images per phase update.
        seed: seeds data order, initialisation and noise.
        tick_every: steps between stats lines (``stats.jsonl``).
        sample_every: steps between sample grids.
        checkpoint_every: steps between checkpoints (a final one is always written).
        threads: torch intra-op threads (``None``: leave torch's default).
        out: parent folder of run directories.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...;
            under ``torchrun`` on GPUs each process takes ``cuda:LOCAL_RANK``.
        amp: mixed precision of each phase's forward pass: ``"off"``, ``"bf16"`` (autocast, no
            scaler), ``"fp16"`` (autocast with ``torch.amp.GradScaler``) or ``"auto"`` (bf16
            where measured to help: CUDA with bf16 support, CPUs with AVX512-BF16).
        channels_last: channels-last memory format for model and images (``"auto"``: on where
            measured to help, 2D on CPU; see ``medsynth.train.speed.resolve_speed``), ``true`` or ``false``.
        compile: ``torch.compile`` the modules the phases update (``"auto"``: off; small CPU gain
            for minutes of compilation), ``true`` or ``false``.
        fused_adam: Adam's fused kernel (``"auto"``: on where torch has one for the device).
        dp_noise_multiplier: differentially private training of the discriminator (DP-SGD,
            ``medsynth/train/dp.py``, needs ``pip install 'medsynth-gan[dp]'``): Gaussian noise std
            over the clipping norm. ``None`` (and no ``dp_epsilon``) = DP off.
        dp_epsilon: alternative to ``dp_noise_multiplier``: target epsilon after ``steps``; the
            noise multiplier is solved for by the accountant.
        dp_max_grad_norm: per-sample clipping norm C of the discriminator's gradient.
        dp_delta: delta of the (epsilon, delta) guarantee; ``None`` = 1 / number of training images.
        dp_accountant: ``"rdp"`` or ``"prv"`` (opacus accountants).
    """

    steps: int = 1000
    minutes: float | None = None
    clock: str = "wall"
    batch_size: int = 64
    seed: int = 0
    tick_every: int = 50
    sample_every: int = 250
    checkpoint_every: int = 250
    threads: int | None = None
    out: str = "runs"
    device: str = "auto"
    amp: str = "auto"
    channels_last: Any = "auto"
    compile: Any = "auto"
    fused_adam: Any = "auto"
    dp_noise_multiplier: float | None = None
    dp_epsilon: float | None = None
    dp_max_grad_norm: float = 1.0
    dp_delta: float | None = None
    dp_accountant: str = "rdp"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    """Tuples -> lists, recursively (YAML- and ``weights_only``-friendly)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _merge(dc: Any, values: dict[str, Any], where: str) -> Any:
    """Return a copy of dataclass ``dc`` with ``values`` merged in (nested, strict keys)."""
    known = {f.name: f for f in dataclasses.fields(dc)}
    updates = {}
    for key, value in values.items():
        if key not in known:
            raise MedsynthError(where, f"unknown setting {key!r}; known: {', '.join(known)}")
        current = getattr(dc, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise MedsynthError(where, f"{key!r} must be a mapping")
            updates[key] = _merge(current, value, where)
        elif key == "params":
            updates[key] = {**current, **(value or {})}
        elif isinstance(current, tuple) and isinstance(value, list):
            updates[key] = tuple(value)
        else:
            updates[key] = value
    return dataclasses.replace(dc, **updates)


def from_dict(values: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a RunConfig from a nested dict (e.g. a saved ``config.yaml``)."""
    return _merge(RunConfig(), values or {}, where)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value parsed as YAML: numbers, bools, lists, null)."""
    if "=" not in text:
        raise MedsynthError("--set", f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise MedsynthError("--set", f"cannot parse value of {key!r}: {exc}") from None
    return key.strip().split("."), value


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    for key in path[:-1]:
        cur = cur.setdefault(key, {})
    cur[path[-1]] = value
    return out


def preset_names() -> list[str]:
    """Names of the presets shipped with the package (``xray_dcgan``, ``ct3d_progan_gpu``...)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def find_preset(modality: str, model: str) -> Path | None:
    """The packaged preset ``<modality>_<model>`` (``medsynth/presets/<modality>_<model>.yaml``) if it exists."""
    p = PRESET_DIR / f"{modality}_{model}.yaml"
    return p if p.exists() else None


def locate_preset(spec: str | Path) -> Path:
    """The preset file ``spec`` names: a YAML file's path, else a packaged preset's name.

    Args:
        spec: a path to a YAML file (``my/preset.yaml``), or the name of a preset shipped in
            ``medsynth/presets/`` with or without ``.yaml`` (``xray_stylegan2_gpu``). An existing
            file wins over a packaged name.

    Raises:
        MedsynthError: ``spec`` is neither an existing file nor a packaged preset's name.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if len(path.parts) == 1:
        packaged = PRESET_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
        if packaged.is_file():
            return packaged
    raise MedsynthError(path, "preset not found: neither a file nor a packaged preset "
                              f"({', '.join(preset_names())})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise MedsynthError(path, "preset file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MedsynthError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MedsynthError(path, "a preset must be a mapping of sections (data, model, train)")
    return data


def resolve(
    *,
    preset: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults <- preset YAML <- ``base`` dict (CLI options) <- ``--set`` overrides.

    ``preset`` is a YAML file's path or a packaged preset's name (:func:`locate_preset`). The
    model's ``size``/``spatial_dims`` are copied from the data section so saved models are
    self-describing.
    """
    cfg = RunConfig()
    if preset is not None:
        cfg = _merge(cfg, load_yaml(locate_preset(preset)), str(preset))
    if base:
        cfg = _merge(cfg, base, "command line")
    for text in overrides or []:
        path, value = parse_override(text)
        cfg = _merge(cfg, _nest(path, value), f"--set {text}")
    cfg.model = dataclasses.replace(cfg.model, size=int(cfg.data.size), spatial_dims=int(cfg.data.spatial_dims))
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: str | Path) -> RunConfig:
    return from_dict(load_yaml(path), str(path))
