"""Run configuration: dataclass defaults -> YAML preset (``medsynth/presets/*.yaml``) -> ``--set key=value``.

The resolved config is a plain nested dict when saved (``config.yaml`` in every run directory)
and inside checkpoints, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
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
            phantom sample data (``sample_data/manifest.csv``). In a run's saved config (and
            checkpoints) it is the shareable name :func:`medsynth.runs.shareable_source` gives:
            ``default``, ``data-root:<path relative to the declared data root>`` or the content
            fingerprint; never the input path, which only ``RUN/local/data_source.json`` holds.
        modality: ``"xray"`` or ``"ct"``.
        size: model input edge length in pixels (voxels for 3D).
        spatial_dims: 2 (radiographs, CT slices) or 3 (CT volumes).
        ct_window: CT window name (``"lung"``, ``"mediastinal"``) or ``[centre, width]`` in HU.
        split: which split to train on (``"train"``; ``None`` = all rows).
        domain_b: two-domain variants (CycleGAN, CoGAN) from two sources: ``source`` is domain A
            (label 0) and ``domain_b`` domain B (label 1), whatever labels the files carry
            (``medsynth train --domain-a DIR --domain-b DIR``). ``None``: one source, its labels.
            Saved in a run as a shareable name, like ``source``.
        fingerprint: set by ``medsynth train``: :func:`medsynth.runs.images_fingerprint` of the
            training images and labels as loaded (``train --resume`` refuses other data).
        stream: ``"auto"``, ``"on"`` or ``"off"``: train from an on-disk cache of the decoded images
            read batch by batch (memory flat in the data size) or from one in-memory tensor
            (:mod:`medsynth.data.stream`). ``auto`` streams when the decoded float32 set would
            exceed ``memory_budget_mb``. Both give the same batches bit for bit.
        cache_dir: folder of the streaming cache (files named by a hash of the data's files and the
            pipeline settings, never by a path); ``None``: ``$MEDSYNTH_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/medsynth``, else ``~/.cache/medsynth``.
        memory_budget_mb: ``stream: auto`` keeps the set in memory up to this many MiB of decoded
            float32 images; ``None``: the smaller of 1024 MiB and 10 % of the machine's memory.
        workers: data-loader worker processes that prefetch streamed batches; ``None``: 0 on the
            CPU (each batch read in the training process: cheaper there than a worker's hand-over),
            2 with CUDA; 0 reads each batch in the training process.
    """

    source: str = "default"
    modality: str = "xray"
    size: int = 64
    spatial_dims: int = 2
    ct_window: Any = "lung"
    split: str | None = "train"
    domain_b: str | None = None
    fingerprint: str | None = None
    stream: str = "auto"
    cache_dir: str | None = None
    memory_budget_mb: float | None = None
    workers: int | None = None


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
        tensorboard: TensorBoard event files in ``RUN/tensorboard/`` (:mod:`medsynth.train.tensorboard`,
            needs ``pip install 'medsynth-gan[tensorboard]'``): ``"auto"`` (written when the
            ``tensorboard`` package imports; otherwise one log line says they are not), ``"on"``
            (a missing package is an error) or ``"off"``. ``stats.jsonl`` is written either way.
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
    tensorboard: str = "auto"


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
            if value is not None and not isinstance(value, dict):
                raise MedsynthError(f"{where}", f"{key!r} must be a mapping of the variant's parameters, got {value!r}")
            updates[key] = {**current, **(value or {})}
        elif isinstance(current, tuple) and isinstance(value, list):
            updates[key] = tuple(value)
        else:
            updates[key] = value
    return dataclasses.replace(dc, **updates)


def from_dict(values: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a RunConfig from a nested dict (e.g. a saved ``config.yaml``)."""
    return _merge(RunConfig(), values or {}, where)


# --------------------------------------------------------------------------------------------
# validation: every setting's type (from the dataclass type hints) and its range or choices (RULES)


#: Image edge lengths the models take (``data.size``): powers of two from 8 to 1024. A variant
#: may need more (e.g. ``multiscale`` a size above its coarse grid); building it says so.
SIZES: tuple[int, ...] = tuple(2 ** k for k in range(3, 11))


@dataclass(frozen=True)
class Range:
    """A numeric setting's bounds (``None``: unbounded); ``open`` excludes the bound itself.
    For a tuple setting (``model.betas``) every element is checked."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        lo_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        hi_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return lo_ok and hi_ok

    def describe(self) -> str:
        lo = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        if lo and hi:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return lo or hi or ""


@dataclass(frozen=True)
class Choices:
    """A setting that takes one of ``values`` (compared with their type: ``1`` is not ``True``);
    ``also``: further spellings accepted but not listed (YAML's bare ``off`` read as false)."""

    values: tuple
    also: tuple = ()

    def holds(self, value: Any) -> bool:
        return any(type(value) is type(c) and value == c for c in self.values + self.also)

    def describe(self) -> str:
        return "one of " + ", ".join(_yaml_word(c) for c in self.values)


def _shown(value: Any) -> str:
    """A bad value in a message: YAML's words for null and booleans, ``repr`` otherwise."""
    return _yaml_word(value) if value is None or isinstance(value, bool) else repr(value)


def _yaml_word(value: Any) -> str:
    """A value as it is written in YAML / ``--set`` (``null``, ``true``, ``auto``, ``64``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Window:
    """``data.ct_window``: a window's name (names checked where the windows live,
    :data:`medsynth.data.windows.CT_WINDOWS`) or ``[centre, width]`` in HU with width > 0."""

    def holds(self, value: Any) -> bool:
        if isinstance(value, str):
            return True
        return (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
                and math.isfinite(value[0]) and value[1] > 0)

    def describe(self) -> str:
        return "a window name (lung, mediastinal) or [centre, width] in HU with width > 0"


_POSITIVE = Range(0, low_open=True)
_COUNT = Range(1)
_FLAG = Choices(("auto", True, False))

#: Ranges and choices beyond each setting's type (``section.key`` -> rule). A setting absent here
#: is checked by type alone.
RULES: dict[str, Range | Choices | Window] = {
    "data.modality": Choices(("xray", "ct")),
    "data.size": Choices(SIZES),
    "data.spatial_dims": Choices((2, 3)),
    "data.ct_window": Window(),
    "data.split": Choices(("train", "val", "test", None)),
    "data.stream": Choices(("auto", "on", "off"), also=(True, False)),  # YAML reads bare on/off as booleans
    "data.memory_budget_mb": Range(0),
    "data.workers": Range(0),
    "model.latent_dim": _COUNT,
    "model.width": _COUNT,
    "model.num_classes": Range(0),
    "model.lr_g": _POSITIVE,
    "model.lr_d": _POSITIVE,
    "model.betas": Range(0, 1, high_open=True),
    "model.ema_beta": Range(0, 1),
    "model.size": Choices(SIZES),
    "model.spatial_dims": Choices((2, 3)),
    "model.channels": _COUNT,
    "train.steps": _COUNT,
    "train.minutes": _POSITIVE,
    "train.clock": Choices(("wall", "process")),
    "train.batch_size": _COUNT,
    "train.seed": Range(0),
    "train.tick_every": _COUNT,
    "train.sample_every": _COUNT,
    "train.checkpoint_every": _COUNT,
    "train.threads": _COUNT,
    "train.amp": Choices(("auto", "off", "bf16", "fp16"), also=(False,)),  # YAML reads a bare `off` as false
    "train.channels_last": _FLAG,
    "train.compile": _FLAG,
    "train.fused_adam": _FLAG,
    "train.dp_noise_multiplier": Range(0),
    "train.dp_epsilon": _POSITIVE,
    "train.dp_max_grad_norm": _POSITIVE,
    "train.dp_delta": Range(0, 1, low_open=True, high_open=True),
    "train.dp_accountant": Choices(("rdp", "prv")),
    "train.tensorboard": Choices(("auto", "on", "off"), also=(True, False)),  # YAML reads bare on/off as booleans
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_ok(hint: Any, value: Any) -> bool:
    """Whether ``value`` has the type ``hint`` names (``int``, ``float`` (ints too), ``str``, ``bool``,
    ``X | None``, ``tuple[X, Y]``, ``tuple[X, ...]``, ``list[X]``, ``dict[str, X]``, ``Any``)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return _is_number(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_type_ok(a, v) for a, v in zip(args, value))
        return all(_type_ok(args[0], v) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe_type(hint: Any, rule: Range | None = None) -> str:
    """What a setting of type ``hint`` (within ``rule``) must be, in words: ``an integer >= 1``,
    ``a number > 0 or null``, ``a list of 2 numbers in [0, 1)``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [_describe_type(a, rule) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    bounds = f" {rule.describe()}" if rule is not None else ""
    if origin is tuple:
        item = _describe_type(args[0]).removeprefix("an ").removeprefix("a ")
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{item}s{bounds}"
    if origin is dict:
        return "a mapping"
    words = {int: "an integer", float: "a number", str: "text", bool: "true or false"}
    return words.get(hint, getattr(hint, "__name__", str(hint))) + bounds


def check_fields(cls: type, values: Mapping[str, Any], where: str, rules: Mapping[str, Any] | None = None) -> None:
    """Check ``values`` against the fields of dataclass ``cls``: each value's type (the field's
    type hint) and, where ``rules`` has ``"<where>.<name>"``, its range or choices.

    Args:
        cls: a dataclass (a config section, a variant's ``VariantParams``).
        values: field name -> value (names not among the fields are left to the caller).
        where: the settings' prefix in messages (``"train"``, ``"model.params"``).
        rules: ``"<where>.<name>"`` -> :class:`Range` / :class:`Choices` / :class:`Window`.

    Raises:
        MedsynthError: one line naming the first bad setting (``train.steps``), its value and what
            it must be (type and range or choices).
    """
    hints = typing.get_type_hints(cls)
    rules = rules or {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        key, value = f"{where}.{f.name}", values[f.name]
        hint, rule = hints.get(f.name, Any), rules.get(f"{where}.{f.name}")
        if isinstance(rule, (Choices, Window)):
            if not rule.holds(value):
                raise MedsynthError(key, f"must be {rule.describe()}, got {_shown(value)}")
            continue
        wanted = _describe_type(hint, rule)
        if not _type_ok(hint, value):
            raise MedsynthError(key, f"must be {wanted}, got {_shown(value)}")
        if rule is not None and value is not None:
            items = value if isinstance(value, (list, tuple)) else [value]
            if not all(rule.holds(v) for v in items):
                raise MedsynthError(key, f"must be {wanted}, got {_shown(value)}")


def validate(cfg: RunConfig) -> RunConfig:
    """Check every setting of a resolved config: types from the dataclass type hints, ranges and
    choices from :data:`RULES` (``model.params`` is a mapping here; its entries are checked by the
    variant, :meth:`medsynth.models.base.VariantParams.from_dict`).

    Returns:
        ``cfg`` unchanged.

    Raises:
        MedsynthError: one line naming the key, the value and what it must be, e.g.
            ``train.steps: must be an integer >= 1, got 'abc'``.
    """
    for section in ("data", "model", "train"):
        sec = getattr(cfg, section)
        check_fields(type(sec), {f.name: getattr(sec, f.name) for f in dataclasses.fields(sec)}, section, RULES)
    return cfg


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
        raise MedsynthError(path, f"not valid YAML ({(str(exc).splitlines() or [''])[0]})") from None
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
    self-describing. The result is checked by :func:`validate`.

    Raises:
        MedsynthError: an unknown setting, a missing preset, or a setting of the wrong type or
            out of its range (one line naming the key, the value and what it must be).
    """
    cfg = RunConfig()
    if preset is not None:
        cfg = _merge(cfg, _no_derived(load_yaml(locate_preset(preset)), str(preset)), str(preset))
    if base:
        cfg = _merge(cfg, _no_derived(base, "command line"), "command line")
    for text in overrides or []:
        path, value = parse_override(text)
        cfg = _merge(cfg, _no_derived(_nest(path, value), f"--set {text}"), f"--set {text}")
    return _finish(cfg)


#: Model settings filled from the data section (never set directly: they would be overwritten).
_DERIVED = {"size": "data.size (--size)", "spatial_dims": "data.spatial_dims (--spatial-dims)"}


def _no_derived(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values``, refusing ``model.size``/``model.spatial_dims`` (copied from the data section)."""
    model = values.get("model") if isinstance(values, dict) else None
    for key, source in _DERIVED.items():
        if isinstance(model, dict) and key in model:
            raise MedsynthError(where, f"model.{key} is copied from {source}: set that instead")
    return values


def _finish(cfg: RunConfig) -> RunConfig:
    """Copy the model's ``size``/``spatial_dims`` from the data section, then :func:`validate`."""
    cfg.model = dataclasses.replace(cfg.model, size=cfg.data.size, spatial_dims=cfg.data.spatial_dims)
    return validate(cfg)


def override(cfg: RunConfig, key: str, value: Any, where: str) -> RunConfig:
    """A copy of ``cfg`` with the setting ``key`` (``train.steps``, ``model.params.r1_gamma``) set to
    ``value``, validated.

    Raises:
        MedsynthError: an unknown key (named by ``where``, e.g. ``--set train.stepz=3``) or a bad value.
    """
    return _finish(_merge(cfg, _no_derived(_nest(key.split("."), value), where), where))


def flat_settings(cfg: RunConfig) -> dict[str, Any]:
    """Every setting as ``section.key`` -> value (``model.params`` entries as ``model.params.<name>``)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out[f"{prefix}{k}"] = v

    walk("", cfg.to_dict())
    return out


def save_config(cfg: RunConfig, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: str | Path) -> RunConfig:
    return from_dict(load_yaml(path), str(path))
