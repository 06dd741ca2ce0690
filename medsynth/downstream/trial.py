"""A declared, resumable augmentation trial: does synthetic data help tumour detection (issue 16)?

The protocol (:class:`TrialProtocol`, a YAML file saved into the trial folder before anything
runs) names the data size, the real fractions, the generators (primary + comparators) with their
repeats and synthetic:real ratios, the generator CPU budget, the classifier seeds and settings,
the bootstrap, the primary comparison and the secondary family (Holm-corrected together).

Design (one trial folder ``OUT``):

1. **Subsets.** The real set's patient-level splits are used as they are (train / val / test).
   For each repeat ``r`` the training patients are subsampled per fraction, stratified by patient
   class and nested, with seed ``r`` (:func:`medsynth.downstream.benchmark.subsample_patients`).
2. **Generators** (``OUT/generators/<gen>_f<fraction>_r<r>/``, a normal run directory): one per
   (generator, fraction, repeat), trained *only* on that subset's training images, class-
   conditional (``model.num_classes=2`` forced), seed ``r``, to a process-CPU-time budget on
   ``threads`` threads. The subset's patient IDs are recorded with the run (``RUN/trial_subset.json``
   and the part record); the classifier part refuses a pool whose patients differ from its real
   subset (:class:`~medsynth.errors.MedsynthError`).
3. **Pools** (``OUT/pools/<key>.npz``): ``max(ratio) x n_real`` images per generator run, classes
   interleaved so every prefix keeps the real subset's prevalence (:func:`interleaved_labels`),
   fixed sampling seed, no release gate (utility is measured on ungated samples). The arm at ratio
   ``k`` uses the first ``round(k n_real)`` images (nested doses).
4. **Fidelity**: one feature encoder trained once on the *validation* images (``OUT/encoder.pt``,
   hash recorded); per pool, the Fréchet distance of its first ``fidelity.count`` images to the
   validation images and the classifier two-sample AUROC
   (:func:`medsynth.metrics.two_sample.two_sample_test`, validation images vs synthetic).
5. **Classifiers** per (fraction, repeat, seed): ``real`` (``E`` epochs), ``real-equal-steps``
   (as many optimiser steps as ``real+synthetic`` at ratio 1), ``real-duplicated`` (the real
   subset repeated to the size of real+synthetic at ratio 1, ``E`` epochs) and ``<gen>@<k>``
   (real + synthetic at ratio ``k``, ``E`` epochs). Epochs are chosen on the validation split;
   test predictions are stored per test image. Real-only arms depend only on the subset and the
   seed, so cells with the same subset (every repeat at fraction 1.0) share one part.
6. **Analysis** (:func:`analyse_trial`): per comparison, the hierarchical paired bootstrap
   (:func:`medsynth.metrics.stats.hierarchical_paired_bootstrap`: repeats, seeds within
   repeats, test patients), the per-(r, s) differences and the seed ensemble beside it; the
   primary comparison at full alpha, the secondary family with Holm's adjustment; the
   dose-response and fidelity-vs-gain figures. ``trial.json`` holds only what the parts
   determine (no times), so a resumed trial gives the same file; times and generator
   fingerprints (checkpoint hashes, CPU seconds) are in ``generators.json`` and ``timings.json``.

Every part writes its record atomically (``OUT/parts/<kind>/<key>.json``) after its outputs, so an
interrupted trial continues with the missing parts only (a generator run with a checkpoint
resumes from it). Progress goes through :mod:`medsynth.progress`: ``trial: k/N parts``.
Generator training lives in :mod:`medsynth.train`, a sibling layer: the caller passes it in as
``trainer`` (the CLI passes :func:`medsynth.train.loop.train` behind its config checks).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medsynth.atomic import atomic_path, write_text
from medsynth.config import parse_override
from medsynth.downstream.benchmark import pseudonyms, subsample_patients
from medsynth.downstream.classifier import predict_proba, train_classifier
from medsynth.errors import MedsynthError
from medsynth.metrics.stats import auroc, hierarchical_paired_bootstrap, holm
from medsynth.progress import Progress

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROTOCOL",
    "REAL_ARMS",
    "Part",
    "TrialProtocol",
    "analyse_trial",
    "interleaved_labels",
    "load_protocol",
    "plan_trial",
    "run_trial",
]

#: the packaged phantom protocol (`medsynth trial`'s default)
DEFAULT_PROTOCOL = Path(__file__).with_name("trial_phantom.yaml")
ARM_REAL, ARM_EQUAL_STEPS, ARM_DUPLICATED = "real", "real-equal-steps", "real-duplicated"
REAL_ARMS = (ARM_REAL, ARM_EQUAL_STEPS, ARM_DUPLICATED)
#: the ratio the controls are matched to (real+synthetic at ratio 1)
CONTROL_RATIO = 1.0

#: ``trainer(cfg, images, labels, run_dir, resume)``: trains a generator run to its config's budget
Trainer = Callable[[Any, torch.Tensor, torch.Tensor, Path, bool], None]


@dataclass
class GeneratorSpec:
    """One generator of the trial.

    Attributes:
        preset: a packaged run preset's name or a YAML path (:func:`medsynth.config.locate_preset`).
        sets: ``--set``-style overrides applied after the preset (``model.params.augment=diffaug``).
        repeats: independent runs per fraction (seeds and subsets ``r = 0 .. repeats-1``).
        ratios: synthetic:real ratios of its classifier arms.
    """

    preset: str
    sets: list[str] = field(default_factory=list)
    repeats: int = 1
    ratios: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class TrialProtocol:
    """The declared trial (see the module docstring and ``trial_phantom.yaml``)."""

    name: str
    declared: str
    data: dict
    fractions: list[float]
    generators: dict[str, GeneratorSpec]
    primary_generator: str
    primary: dict
    secondary: list[dict]
    generator_cpu_minutes: float = 1.5
    generator_max_steps: int = 10_000_000
    generator_sets: list[str] = field(default_factory=list)
    threads: int = 1
    sampling_seed: int = 12345
    classifier_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    classifier: dict = field(default_factory=lambda: {"epochs": 15, "batch_size": 32, "width": 16,
                                                      "arch": "cnn", "lr": 1e-3})
    fidelity: dict = field(default_factory=lambda: {"count": 250, "encoder_steps": 300, "encoder_seed": 0,
                                                    "two_sample": True, "two_sample_n_boot": 200})
    n_boot: int = 10000
    bootstrap_seed: int = 0
    alpha: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def max_repeats(self) -> int:
        return max(g.repeats for g in self.generators.values())

    def arms(self, fraction: float, repeat: int) -> list[str]:
        """Arm names of one (fraction, repeat) cell: the real arms, then ``<gen>@<k>``."""
        out = list(REAL_ARMS) if repeat < self.max_repeats else []
        for g, spec in self.generators.items():
            if repeat < spec.repeats:
                out += [arm_name(g, k) for k in spec.ratios]
        return out


def arm_name(generator: str, ratio: float) -> str:
    return f"{generator}@{float(ratio):g}"


def parse_arm(arm: str) -> tuple[str, float] | None:
    """``(generator, ratio)`` of a synthetic arm, ``None`` for a real arm."""
    if arm in REAL_ARMS:
        return None
    g, _, k = arm.partition("@")
    return g, float(k)


def _override(d: dict, text: str) -> None:
    parts, value = parse_override(text)  # the run config's ``--set`` syntax
    key = ".".join(parts)
    node = d
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise MedsynthError("--set", f"{key}: no such protocol setting")
        node = node[p]
    if parts[-1] not in node:
        raise MedsynthError("--set", f"{key}: no such protocol setting")
    node[parts[-1]] = value


def load_protocol(path: str | Path | None = None, overrides: list[str] | None = None) -> TrialProtocol:
    """Read and check a trial protocol YAML (default :data:`DEFAULT_PROTOCOL`).

    Args:
        path: the YAML file.
        overrides: ``key=value`` texts (dotted keys, YAML values), e.g. ``n_boot=2000``.

    Raises:
        MedsynthError: unreadable file, unknown or missing settings, comparisons naming arms the
            protocol does not run.
    """
    path = Path(path) if path is not None else DEFAULT_PROTOCOL
    if not path.is_file():
        raise MedsynthError(path, "trial protocol not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MedsynthError(path, f"is not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise MedsynthError(path, "a trial protocol is a YAML mapping")
    base = TrialProtocol(name="", declared="", data={}, fractions=[], generators={}, primary_generator="",
                         primary={}, secondary=[]).to_dict()
    unknown = sorted(set(raw) - set(base))
    if unknown:
        raise MedsynthError(path, f"unknown protocol setting(s) {', '.join(unknown)}")
    for text in overrides or []:
        _override(raw, text)
    return protocol_from_dict(raw, where=str(path))


def protocol_from_dict(raw: dict, where: str = "protocol") -> TrialProtocol:
    """A checked :class:`TrialProtocol` from its dict form (as saved in ``protocol.yaml``)."""
    raw = copy.deepcopy(raw)
    try:
        gens = {name: GeneratorSpec(**spec) for name, spec in raw.pop("generators").items()}
        p = TrialProtocol(generators=gens, **raw)
    except (TypeError, KeyError, AttributeError) as exc:
        raise MedsynthError(where, f"malformed trial protocol ({exc})") from None
    p.fractions = [float(f) for f in p.fractions]
    for spec in p.generators.values():
        spec.ratios = [float(k) for k in spec.ratios]
    if not p.fractions or not all(0 < f <= 1 for f in p.fractions):
        raise MedsynthError(where, f"fractions must lie in (0, 1], got {p.fractions}")
    if p.primary_generator not in p.generators:
        raise MedsynthError(where, f"primary_generator {p.primary_generator!r} is not among the generators")
    if CONTROL_RATIO not in p.generators[p.primary_generator].ratios:
        raise MedsynthError(where, "the primary generator needs ratio 1 (the controls are matched to it)")
    if any(s.repeats < 1 or not s.ratios or min(s.ratios) <= 0 for s in p.generators.values()):
        raise MedsynthError(where, "every generator needs repeats >= 1 and ratios > 0")
    if not p.classifier_seeds or p.n_boot < 1 or p.threads < 1 or p.generator_cpu_minutes <= 0:
        raise MedsynthError(where, "needs classifier seeds, n_boot >= 1, threads >= 1 and a CPU budget > 0")
    for c in [p.primary, *p.secondary]:
        if set(c) != {"a", "b", "fraction"}:
            raise MedsynthError(where, f"a comparison names a, b and fraction, got {c}")
        c["fraction"] = float(c["fraction"])
        if c["fraction"] not in p.fractions:
            raise MedsynthError(where, f"comparison {c}: fraction not in {p.fractions}")
        for arm in (c["a"], c["b"]):
            if arm not in p.arms(c["fraction"], 0):
                raise MedsynthError(where, f"comparison {c}: the protocol runs no arm {arm!r}")
    return p


# ---------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class Part:
    """One unit of work with its own record ``OUT/parts/<kind>/<key>.json``.

    ``kind`` is ``encoder``, ``generator``, ``pool`` or ``classifier``; a classifier part of a
    real arm is keyed by its subset's hash, not by the repeat (cells with one subset share it).
    """

    kind: str
    key: str
    fraction: float | None = None
    repeat: int | None = None
    generator: str | None = None
    arm: str | None = None
    seed: int | None = None


def gen_key(generator: str, fraction: float, repeat: int) -> str:
    return f"{generator}_f{fraction:g}_r{repeat}"


def clf_key(arm: str, fraction: float, repeat: int, seed: int, subset_sha: str) -> str:
    if arm in REAL_ARMS:
        return f"{arm}_f{fraction:g}_sub{subset_sha[:12]}_s{seed}"
    return f"{arm}_f{fraction:g}_r{repeat}_s{seed}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _subsets(real, protocol: TrialProtocol) -> dict[tuple[float, int], np.ndarray]:
    """``{(fraction, repeat): sorted image indices into real}`` of the training subsets."""
    labels = np.asarray(real.labels).astype(np.int64)
    pids = np.asarray(list(map(str, real.patient_ids)))
    tr = np.flatnonzero(np.asarray(real.splits) == "train")
    out = {}
    for r in range(protocol.max_repeats):
        sub = subsample_patients(labels[tr], pids[tr], protocol.fractions, seed=r)
        for f in protocol.fractions:
            out[(f, r)] = tr[sub[f]]
    return out


def _subset_sha(pids: np.ndarray, idx: np.ndarray) -> str:
    return _sha(json.dumps(sorted(set(pids[idx].tolist()))).encode())


def plan_trial(protocol: TrialProtocol, subset_shas: dict[tuple[float, int], str]) -> list[Part]:
    """Every part of the trial in execution order: the encoder, then per fraction the generator runs
    and their pools of every repeat, then the classifier runs (the first fraction first, so a partial
    trial has the primary cells first; generators first, so concurrent workers are not left waiting
    for a pool). Duplicated real-arm parts appear once."""
    parts: list[Part] = [Part("encoder", "encoder")]
    seen = set()
    for f in protocol.fractions:
        for r in range(protocol.max_repeats):
            for g, spec in protocol.generators.items():
                if r < spec.repeats:
                    parts.append(Part("generator", gen_key(g, f, r), f, r, g))
                    parts.append(Part("pool", gen_key(g, f, r), f, r, g))
        for r in range(protocol.max_repeats):
            for s in protocol.classifier_seeds:
                for arm in protocol.arms(f, r):
                    key = clf_key(arm, f, r, s, subset_shas[(f, r)])
                    if key in seen:
                        continue
                    seen.add(key)
                    g = None if arm in REAL_ARMS else parse_arm(arm)[0]
                    parts.append(Part("classifier", key, f, r, g, arm, s))
    return parts


def interleaved_labels(n: int, prevalence: float) -> np.ndarray:
    """``(n,)`` int64 labels in ``{0, 1}`` whose every prefix of length ``m`` holds
    ``round(m * prevalence)`` ones (half rounded up; within one of it for any ``m``)."""
    i = np.arange(n + 1)
    c = np.floor(i * float(prevalence) + 0.5)
    return np.diff(c).astype(np.int64)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps of one epoch of :func:`train_classifier` (a last batch of one is skipped)."""
    full, rest = divmod(int(n), int(batch_size))
    return full + (1 if rest >= 2 or (rest == 1 and n == 1) else 0)


# ---------------------------------------------------------------------------------------------
# the trial folder


def _record_path(out: Path, part: Part) -> Path:
    return out / "parts" / part.kind / f"{part.key}.json"


def _write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _prepare_folder(out: Path, protocol: TrialProtocol, data_record: dict) -> None:
    """Save the protocol and the data record, or check that a folder's saved ones are the same."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "protocol.yaml"
    text = yaml.safe_dump(protocol.to_dict(), sort_keys=True)
    if saved.is_file():
        before = yaml.safe_load(saved.read_text())
        now = yaml.safe_load(text)
        if before != now:
            keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise MedsynthError(saved, f"this trial folder was started under another protocol (differs in "
                                       f"{', '.join(keys)}); a declared protocol cannot change: use a new --out")
    else:
        write_text(saved, text)
    data_path = out / "data.json"
    if data_path.is_file():
        before = _read_json(data_path)
        if before.get("fingerprint") != data_record["fingerprint"]:
            raise MedsynthError(data_path, f"this trial folder was started on other data (fingerprint "
                                           f"{before.get('fingerprint')}, now {data_record['fingerprint']}); "
                                           "use a new --out")
    else:
        _write_json(data_path, data_record)


def _data_record(real, protocol: TrialProtocol, subsets: dict) -> dict:
    from medsynth.runs import images_fingerprint

    images = torch.as_tensor(real.images, dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(real.labels)).to(torch.int64)
    splits = np.asarray(real.splits)
    pids = np.asarray(list(map(str, real.patient_ids)))
    te = np.flatnonzero(splits == "test")
    fp = images_fingerprint(images, labels)
    fp = "sha256:" + _sha((fp + json.dumps(splits.tolist()) + json.dumps(pids.tolist())).encode())[:16]
    return {
        "fingerprint": fp,
        "image_shape": list(images.shape[1:]),
        "modality": getattr(real, "modality", None),
        "n": {s: int((splits == s).sum()) for s in ("train", "val", "test")},
        "n_patients": {s: len(set(pids[splits == s])) for s in ("train", "val", "test")},
        "prevalence": {s: float(labels.numpy()[splits == s].mean()) for s in ("train", "val", "test")},
        "y_test": labels.numpy()[te].tolist(),
        "test_patients": pseudonyms(pids[te]),
        "subsets": {f"{f:g}/{r}": {"sha": _subset_sha(pids, idx), "n_images": len(idx),
                                   "n_patients": len(set(pids[idx])),
                                   "prevalence": float(labels.numpy()[idx].mean())}
                    for (f, r), idx in sorted(subsets.items())},
    }


def _check_real(real) -> None:
    splits = np.asarray(real.splits)
    labels = np.asarray(real.labels)
    pids = np.asarray(list(map(str, real.patient_ids)))
    for s in ("train", "val", "test"):
        if not (splits == s).any():
            raise MedsynthError(None, f"real set: the trial needs a '{s}' split (patient-level splits)")
        if len(np.unique(labels[splits == s])) < 2 or not np.isin(labels[splits == s], (0, 1)).all():
            raise MedsynthError(None, f"real set: the '{s}' split needs labels 0 and 1 (both present)")
    sides = {}
    for p, s in zip(pids, splits):
        if s and sides.setdefault(p, s) != s:
            raise MedsynthError(None, f"patient leakage: patient {p} on two splits")


# ---------------------------------------------------------------------------------------------
# execution


@dataclass
class _Ctx:
    out: Path
    protocol: TrialProtocol
    real: Any
    images: torch.Tensor
    labels: np.ndarray
    pids: np.ndarray
    splits: np.ndarray
    subsets: dict
    trainer: Trainer | None


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run_encoder(ctx: _Ctx, part: Part) -> dict:
    from medsynth.metrics.fidelity import encoder_fingerprint, save_encoder, train_feature_encoder

    va = np.flatnonzero(ctx.splits == "val")
    fid = ctx.protocol.fidelity
    enc = train_feature_encoder(ctx.images[va], seed=int(fid["encoder_seed"]), steps=int(fid["encoder_steps"]))
    path = save_encoder(enc, ctx.out / "encoder.pt")
    return {"fingerprint": encoder_fingerprint(enc), "file_sha256": _file_sha(path), "n_images": len(va),
            "n_patients": len(set(ctx.pids[va])), "trained_on": "validation split only",
            "steps": int(fid["encoder_steps"]), "seed": int(fid["encoder_seed"])}


def _generator_config(ctx: _Ctx, part: Part, run_dir: Path):
    from medsynth import config as C
    from medsynth.runs import images_fingerprint

    p, spec = ctx.protocol, ctx.protocol.generators[part.generator]
    d = p.data
    base = {"data": {"modality": d["modality"], "size": int(d["size"]), "spatial_dims": int(d["spatial_dims"])},
            "model": {"name": _preset_model(spec.preset), "num_classes": 2},  # conditional, always
            "train": {"out": str(run_dir.parent)}}
    if d["modality"] == "ct":
        base["data"]["ct_window"] = d.get("ct_window", "lung")
    sets = [*spec.sets, *p.generator_sets, f"train.minutes={p.generator_cpu_minutes}", "train.clock=process",
            f"train.threads={p.threads}", f"train.steps={p.generator_max_steps}", f"train.seed={part.repeat}"]
    cfg = C.resolve(preset=spec.preset, overrides=sets, base=base)
    idx = ctx.subsets[(part.fraction, part.repeat)]
    fp = images_fingerprint(ctx.images[idx], torch.as_tensor(ctx.labels[idx]))
    cfg.data.source = fp  # a shareable name: the subset's content fingerprint
    cfg.data.fingerprint = fp
    return cfg, sets


def _preset_model(preset: str) -> str:
    from medsynth.config import load_yaml, locate_preset

    name = (load_yaml(locate_preset(preset)).get("model") or {}).get("name")
    if not name:
        raise MedsynthError(preset, "a trial generator preset must name model.name")
    return str(name)


def _run_generator(ctx: _Ctx, part: Part) -> dict:
    from medsynth.config import load_config, validate
    from medsynth.runs import checkpoint_path, checkpoint_progress

    if ctx.trainer is None:
        raise MedsynthError(None, "the trial needs a generator trainer to train its generators")
    p = ctx.protocol
    run_dir = ctx.out / "generators" / part.key
    idx = ctx.subsets[(part.fraction, part.repeat)]
    patients = sorted(set(ctx.pids[idx].tolist()))
    cfg, sets = _generator_config(ctx, part, run_dir)
    info = checkpoint_progress(run_dir) if run_dir.is_dir() else None
    if run_dir.is_dir() and info is None:
        shutil.rmtree(run_dir)  # started but never checkpointed: start again
    budget_s = 60.0 * p.generator_cpu_minutes
    images, labels = ctx.images[idx], torch.as_tensor(ctx.labels[idx]).to(torch.int64)
    if info is None:
        run_dir.mkdir(parents=True)
        _write_json(run_dir / "trial_subset.json", {"patients": patients, "n_images": len(idx)})
        ctx.trainer(cfg, images, labels, run_dir, False)
    elif info["cpu_seconds"] < budget_s - 1.0 and info["step"] < p.generator_max_steps:
        log.info("trial: resuming generator %s at step %d", part.key, info["step"])
        ctx.trainer(validate(load_config(run_dir / "config.yaml")), images, labels, run_dir, True)
    info = checkpoint_progress(run_dir)
    if info is None:
        raise MedsynthError(run_dir, "generator training left no checkpoint")
    ck = checkpoint_path(run_dir)
    return {
        "generator": part.generator, "fraction": part.fraction, "repeat": part.repeat,
        "patients": patients, "subset_sha": _subset_sha(ctx.pids, idx), "n_images": len(idx),
        "prevalence": float(ctx.labels[idx].mean()), "preset": p.generators[part.generator].preset, "sets": sets,
        "seed": part.repeat,
        "fingerprint": {"checkpoint_sha256": _file_sha(ck), "config_sha256": _file_sha(run_dir / "config.yaml"),
                        "steps": info["step"], "cpu_seconds": round(info["cpu_seconds"], 1),
                        "wall_seconds": round(info["seconds"], 1),
                        "device": "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu",
                        "threads": p.threads},
    }


def _pool_size(p: TrialProtocol, generator: str, n_real: int) -> int:
    return int(round(max(p.generators[generator].ratios) * n_real))


def _run_pool(ctx: _Ctx, part: Part) -> dict:
    from medsynth.data.writers import sample_in_batches
    from medsynth.metrics.fidelity import extract_features, frechet_distance, load_encoder
    from medsynth.runs import load_trained

    p = ctx.protocol
    gen = _read_json(ctx.out / "parts" / "generator" / f"{part.key}.json")
    idx = ctx.subsets[(part.fraction, part.repeat)]
    n_pool = _pool_size(p, part.generator, len(idx))
    prevalence = float(ctx.labels[idx].mean())
    labels = interleaved_labels(n_pool, prevalence)
    _, model, _ = load_trained(ctx.out / "generators" / part.key)
    with torch.no_grad():
        images = sample_in_batches(model, n_pool, labels=torch.as_tensor(labels),
                                   generator=torch.Generator().manual_seed(p.sampling_seed),
                                   desc=f"trial: sampling {part.key}").float()
    if images.shape[1:] != ctx.images.shape[1:]:
        raise MedsynthError(part.key, f"generator makes {tuple(images.shape[1:])} images, the real set "
                                      f"{tuple(ctx.images.shape[1:])}")
    path = ctx.out / "pools" / f"{part.key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, images=images.numpy(), labels=labels)
    va = np.flatnonzero(ctx.splits == "val")
    fid = p.fidelity
    m = min(int(fid["count"]), n_pool)
    enc = load_encoder(ctx.out / "encoder.pt")
    fd = frechet_distance(extract_features(enc, images[:m]), extract_features(enc, ctx.images[va]))
    rec = {"generator": part.generator, "fraction": part.fraction, "repeat": part.repeat,
           "patients": gen["patients"], "n": n_pool, "n_positive": int(labels.sum()), "prevalence": prevalence,
           "images_sha256": _sha(images.numpy().tobytes()), "sampling_seed": p.sampling_seed,
           "release_gate": "none (utility measured on ungated samples)",
           "fd": float(fd), "fd_n_synthetic": m, "fd_n_real": len(va)}
    if fid.get("two_sample", True):
        from medsynth.metrics.two_sample import two_sample_test

        ts = two_sample_test(ctx.images[va], images[:m], floor=False, seed=0,
                             n_boot=int(fid.get("two_sample_n_boot", 200)))
        rec["two_sample"] = {"auroc": ts["auroc"], "ci": ts["ci"], "m": ts["m"]}
    return rec


def _train_set(ctx: _Ctx, part: Part) -> tuple[torch.Tensor, np.ndarray, int, int, int, dict]:
    """``(x, y, epochs, n_real, n_synthetic, extra)`` of a classifier part."""
    p = ctx.protocol
    e, b = int(p.classifier["epochs"]), int(p.classifier["batch_size"])
    idx = ctx.subsets[(part.fraction, part.repeat)]
    n = len(idx)
    n_ctrl = n + int(round(CONTROL_RATIO * n))
    if part.arm == ARM_REAL:
        return ctx.images[idx], ctx.labels[idx], e, n, 0, {}
    if part.arm == ARM_DUPLICATED:
        dup = np.resize(idx, n_ctrl)
        return ctx.images[dup], ctx.labels[dup], e, n_ctrl, 0, {}
    if part.arm == ARM_EQUAL_STEPS:
        target = e * steps_per_epoch(n_ctrl, b)
        epochs = max(1, int(round(target / steps_per_epoch(n, b))))
        return ctx.images[idx], ctx.labels[idx], epochs, n, 0, {"target_steps": target}
    g, k = parse_arm(part.arm)
    key = gen_key(g, part.fraction, part.repeat)
    pool_rec = _read_json(ctx.out / "parts" / "pool" / f"{key}.json")
    real_patients = sorted(set(ctx.pids[idx].tolist()))
    if pool_rec["patients"] != real_patients:
        only_gen = sorted(set(pool_rec["patients"]) - set(real_patients))
        only_clf = sorted(set(real_patients) - set(pool_rec["patients"]))
        raise MedsynthError(ctx.out / "parts" / "pool" / f"{key}.json",
                            f"generator {key} was trained on other patients than the classifier's real subset "
                            f"({len(only_gen)} only in the generator's, {len(only_clf)} only in the classifier's): "
                            "refusing to mix them")
    with np.load(ctx.out / "pools" / f"{key}.npz") as z:
        pool_x, pool_y = z["images"], z["labels"]
    if _sha(pool_x.tobytes()) != pool_rec["images_sha256"]:
        raise MedsynthError(ctx.out / "pools" / f"{key}.npz", "pool images differ from their record")
    m = int(round(k * n))
    x = torch.cat([ctx.images[idx], torch.from_numpy(pool_x[:m])])
    y = np.concatenate([ctx.labels[idx], pool_y[:m]])
    return x, y, e, n, m, {"generator_run": key, "pool_sha256": pool_rec["images_sha256"]}


def _run_classifier(ctx: _Ctx, part: Part) -> dict:
    p = ctx.protocol
    x, y, epochs, n_real, n_syn, extra = _train_set(ctx, part)
    va = np.flatnonzero(ctx.splits == "val")
    te = np.flatnonzero(ctx.splits == "test")
    c = p.classifier
    model = train_classifier(x, y, spatial_dims=ctx.images.ndim - 2, epochs=epochs,
                             batch_size=int(c["batch_size"]), seed=int(part.seed), width=int(c["width"]),
                             arch=str(c["arch"]), lr=float(c["lr"]), x_val=ctx.images[va], y_val=ctx.labels[va])
    p_te = predict_proba(model, ctx.images[te])
    idx = ctx.subsets[(part.fraction, part.repeat)]
    hist = model.history
    return {"arm": part.arm, "fraction": part.fraction, "seed": part.seed,
            "repeat": None if part.arm in REAL_ARMS else part.repeat,
            "subset_sha": _subset_sha(ctx.pids, idx), "n_train_real": n_real, "n_train_synthetic": n_syn,
            "epochs": epochs, "steps": epochs * steps_per_epoch(len(y), int(c["batch_size"])),
            "best_epoch": int(model.best_epoch),
            "val_auroc": max((h["val_auroc"] for h in hist if h["val_auroc"] is not None), default=None),
            "test_auroc": auroc(ctx.labels[te], p_te), "p_test": [float(v) for v in p_te],
            "train_seconds": round(sum(h["seconds"] for h in hist), 2), **extra}


_RUNNERS = {"encoder": _run_encoder, "generator": _run_generator, "pool": _run_pool, "classifier": _run_classifier}


def _dep_paths(out: Path, part: Part) -> list[Path]:
    """Record files that must exist before ``part`` can run (its pool's generator and the encoder;
    a synthetic arm's pool)."""
    if part.kind == "pool":
        return [out / "parts" / "generator" / f"{part.key}.json", out / "parts" / "encoder" / "encoder.json"]
    if part.kind == "classifier" and part.generator is not None:
        g, _ = parse_arm(part.arm)
        return [out / "parts" / "pool" / f"{gen_key(g, part.fraction, part.repeat)}.json"]
    return []


def _claim_path(out: Path, part: Part) -> Path:
    return out / "parts" / part.kind / f"{part.key}.claim"


#: a worker touches its claim this often (seconds) while the part runs ...
CLAIM_HEARTBEAT_S = 60.0
#: ... and a claim untouched for this long is stale, whichever host made it
CLAIM_STALE_S = 600.0


def _claim_is_stale(path: Path) -> bool:
    """A claim nobody keeps. Made on this host: its process no longer runs. Made on another host:
    untouched for :data:`CLAIM_STALE_S` (its worker's heartbeat stopped). Unreadable: older than a
    minute (a worker killed between creating and writing it)."""
    try:
        age = time.time() - path.stat().st_mtime
        c = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return age > 60
    if c.get("host") != socket.gethostname():
        return age > CLAIM_STALE_S
    try:
        os.kill(int(c["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _claim(path: Path) -> bool:
    """Claim a part for this process by creating ``path`` exclusively (``O_EXCL``), holding
    ``{"pid", "host", "started"}``. A stale claim (:func:`_claim_is_stale`) is taken over: it is
    renamed away first, so of two workers taking over the same claim only one succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if attempt or not _claim_is_stale(path):
                return False
            try:
                os.rename(path, path.with_name(f"{path.name}.stale-{os.getpid()}"))
            except FileNotFoundError:
                return False
            path.with_name(f"{path.name}.stale-{os.getpid()}").unlink(missing_ok=True)
            log.info("trial: taking over the stale claim %s", path)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, fh)
        return True
    return False


class _Heartbeat:
    """Touch ``path`` every :data:`CLAIM_HEARTBEAT_S` seconds from a daemon thread until :meth:`stop`,
    so other workers see the claim is kept (a dead worker's claim goes stale)."""

    def __init__(self, path: Path):
        self.path, self._stop = path, threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"claim {path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CLAIM_HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def trial_timings(out: str | Path) -> dict[str, dict]:
    """``{"<kind>/<key>": {"wall_s", "cpu_s"}}`` of every part run, from ``OUT/timings/`` (one file per
    part, so concurrent workers never write the same file) and an older single ``timings.json``."""
    out = Path(out)
    t = dict(_read_json(out / "timings.json")["parts"]) if (out / "timings.json").is_file() else {}
    if (out / "timings").is_dir():
        for f in sorted((out / "timings").glob("*/*.json")):
            t[f"{f.parent.name}/{f.stem}"] = _read_json(f)
    return t


def run_trial(real, protocol: TrialProtocol, out: str | Path, *, trainer: Trainer | None,
              max_parts: int | None = None, analyse: bool = True, wait: bool = True,
              poll_s: float = 10.0) -> dict:
    """Run the missing parts of a trial, then analyse what is there.

    Several workers (processes, on one or more hosts sharing ``out``) may run the same trial at
    once: each part is claimed by creating ``OUT/parts/<kind>/<key>.claim`` exclusively, a part
    runs only once its inputs exist (a pool after its generator and the encoder, a synthetic arm
    after its pool), and a worker waits while every part it could run is claimed by another.
    A worker touches its claim every minute while the part runs; a claim left by a dead process of
    this host, or one of another host untouched for ten minutes (its worker died), is taken over.

    Args:
        real: ``ImageSet`` with ``images`` ``(N, 1, *S)`` in ``[-1, 1]`` at the protocol's size,
            ``labels`` in ``{0, 1}``, ``patient_ids`` and ``splits`` (``train``/``val``/``test``).
        protocol: the declared protocol (saved as ``OUT/protocol.yaml`` on the first call; a
            folder holding another one is refused).
        out: the trial folder.
        trainer: ``trainer(cfg, images, labels, run_dir, resume)`` training a generator run to
            ``cfg``'s budget (``None``: refused when a generator part is missing).
        max_parts: run at most this many missing parts, then stop (``None``: all).
        analyse: write ``trial.json`` / ``trial.md`` / the figures at the end.
        wait: when every runnable part is claimed by another worker, wait for it (``poll_s``
            seconds between looks); ``False``: return instead.

    Returns:
        ``{"parts", "done_before", "ran", "remaining", "complete", "analysis"}`` (``analysis``:
        the ``trial.json`` dict or ``None``; ``remaining`` counts parts other workers still hold).

    Raises:
        MedsynthError: missing splits or classes, patient leakage, a changed protocol or data in
            ``out``, a generator whose patients differ from its classifier's subset.
    """
    out = Path(out)
    _check_real(real)
    images = torch.as_tensor(real.images, dtype=torch.float32)
    want = (int(protocol.data["size"]),) * int(protocol.data["spatial_dims"])
    if tuple(images.shape[2:]) != want:
        raise MedsynthError(None, f"real images are {tuple(images.shape[2:])}, the protocol's size is {want}")
    subsets = _subsets(real, protocol)
    data_record = _data_record(real, protocol, subsets)
    _prepare_folder(out, protocol, data_record)
    pids = np.asarray(list(map(str, real.patient_ids)))
    ctx = _Ctx(out, protocol, real, images, np.asarray(real.labels).astype(np.int64), pids,
               np.asarray(real.splits), subsets, trainer)
    shas = {key: _subset_sha(pids, idx) for key, idx in subsets.items()}
    parts = plan_trial(protocol, shas)
    done_before = sum(_record_path(out, pt).is_file() for pt in parts)
    ran = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(protocol.threads)
    try:
        with Progress("trial", len(parts), "parts", initial=done_before) as bar:
            while max_parts is None or ran < max_parts:
                pending = [pt for pt in parts if not _record_path(out, pt).is_file()]
                if not pending:
                    break
                pt = next((q for q in pending if all(d.is_file() for d in _dep_paths(out, q))
                           and _claim(_claim_path(out, q))), None)
                if pt is None:
                    held = [q for q in pending if _claim_path(out, q).exists()]
                    if not held:
                        raise MedsynthError(out, f"{len(pending)} part(s) cannot run and no worker holds one")
                    if not wait:
                        break
                    bar.set_postfix(f"waiting: {len(held)} part(s) held by other workers")
                    time.sleep(poll_s)
                    continue
                beat = _Heartbeat(_claim_path(out, pt))
                try:
                    if _record_path(out, pt).is_file():  # finished by another worker since the look
                        continue
                    bar.set_postfix(f"{pt.kind} {pt.key}")
                    t0, c0 = time.perf_counter(), time.process_time()
                    rec = _RUNNERS[pt.kind](ctx, pt)
                    torch.set_num_threads(protocol.threads)  # a generator run may have set its own
                    _write_json(_record_path(out, pt), rec)
                    _write_json(out / "timings" / pt.kind / f"{pt.key}.json",
                                {"wall_s": round(time.perf_counter() - t0, 2),
                                 "cpu_s": round(time.process_time() - c0, 2)})
                finally:
                    beat.stop()
                    _claim_path(out, pt).unlink(missing_ok=True)
                ran += 1
                bar.update(1)
    finally:
        torch.set_num_threads(threads)
    remaining = sum(not _record_path(out, pt).is_file() for pt in parts)
    analysis = analyse_trial(out) if analyse else None
    return {"parts": len(parts), "done_before": done_before, "ran": ran, "remaining": remaining,
            "complete": remaining == 0, "analysis": analysis}


# ---------------------------------------------------------------------------------------------
# analysis


def _load_parts(out: Path, kind: str) -> dict[str, dict]:
    folder = out / "parts" / kind
    return {p.stem: _read_json(p) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def _repeats_of(protocol: TrialProtocol, a: str, b: str) -> list[int]:
    n = protocol.max_repeats
    for arm in (a, b):
        g = parse_arm(arm)
        if g is not None:
            n = min(n, protocol.generators[g[0]].repeats)
    return list(range(n))


def _cell_scores(protocol, data, clf, arm, f, r) -> dict[int, list[float]]:
    sha = data["subsets"][f"{f:g}/{r}"]["sha"]
    out = {}
    for s in protocol.classifier_seeds:
        rec = clf.get(clf_key(arm, f, r, s, sha))
        if rec is not None:
            out[s] = rec["p_test"]
    return out


def _compare(protocol: TrialProtocol, data: dict, clf: dict, comp: dict) -> dict:
    a, b, f = comp["a"], comp["b"], float(comp["fraction"])
    y = np.asarray(data["y_test"])
    seeds = protocol.classifier_seeds
    planned = _repeats_of(protocol, a, b)
    used, sa, sb = [], [], []
    for r in planned:
        ca, cb = _cell_scores(protocol, data, clf, a, f, r), _cell_scores(protocol, data, clf, b, f, r)
        if all(s in ca and s in cb for s in seeds):
            used.append(r)
            sa.append([ca[s] for s in seeds])
            sb.append([cb[s] for s in seeds])
    res = {"comparison": f"{a} - {b}", "a": a, "b": b, "fraction": f, "repeats_planned": planned,
           "repeats_used": used, "seeds": list(seeds), "complete": used == planned}
    if not used:
        return {**res, "available": False}
    hb = hierarchical_paired_bootstrap(y, np.asarray(sa), np.asarray(sb), clusters=data["test_patients"],
                                       n_boot=protocol.n_boot, seed=protocol.bootstrap_seed, alpha=protocol.alpha)
    ens_a = auroc(y, np.mean(sa, axis=(0, 1)))
    ens_b = auroc(y, np.mean(sb, axis=(0, 1)))
    per_run = [{"repeat": r, "seed": s, "diff": hb["per_run"][i][j]}
               for i, r in enumerate(used) for j, s in enumerate(seeds)]
    note = ("one generator run: the generator level does not vary (its run-to-run variance is not estimated)"
            if len(used) == 1 else "")
    return {**res, "available": True, "estimate": hb["diff"], "lo": hb["lo"], "hi": hb["hi"], "p": hb["p"],
            "auroc_a": hb["a"], "auroc_b": hb["b"], "n_boot": hb["n_boot"], "n_degenerate": hb["n_degenerate"],
            "n_clusters": hb["n_clusters"], "per_run": per_run,
            "per_run_sd": float(np.std([x["diff"] for x in per_run], ddof=1)) if len(per_run) > 1 else 0.0,
            "ensemble": {"auroc_a": ens_a, "auroc_b": ens_b, "diff": ens_a - ens_b}, "note": note}


def analyse_trial(out: str | Path) -> dict:
    """Read the part records of a trial folder; write ``trial.json``, ``trial.md``,
    ``dose_response.png``, ``fidelity_vs_gain.png`` and ``generators.json``.

    Comparisons whose cells are not all there use the repeats whose seeds are all present and
    are marked ``complete: false``; the whole analysis is labelled ``partial`` until every part
    of the plan has its record.

    Returns:
        The ``trial.json`` dict.
    """
    from scipy.stats import spearmanr

    out = Path(out)
    protocol = protocol_from_dict(yaml.safe_load((out / "protocol.yaml").read_text()), str(out / "protocol.yaml"))
    data = _read_json(out / "data.json")
    shas = {(float(k.split("/")[0]), int(k.split("/")[1])): v["sha"] for k, v in data["subsets"].items()}
    parts = plan_trial(protocol, shas)
    have = {pt for pt in parts if _record_path(out, pt).is_file()}
    clf = _load_parts(out, "classifier")
    gens = _load_parts(out, "generator")
    pools = _load_parts(out, "pool")
    enc = _load_parts(out, "encoder").get("encoder")
    primary = _compare(protocol, data, clf, protocol.primary)
    if primary.get("available"):
        primary["met"] = bool(primary["p"] <= protocol.alpha)
        # the sign of the point estimate only: "gain"/"harm" would read as findings when p > alpha
        primary["direction"] = ("positive" if primary["estimate"] > 0 else
                                "negative" if primary["estimate"] < 0 else "zero")
    secondary = [_compare(protocol, data, clf, c) for c in protocol.secondary]
    avail = [i for i, c in enumerate(secondary) if c.get("available")]
    if avail:
        # Holm over the declared family: a comparison not yet available counts as p = 1, which can only
        # raise the others' adjusted p (a partial trial never rejects more than the complete one could)
        adj = holm([c["p"] if c.get("available") else 1.0 for c in secondary])
        for i in avail:
            secondary[i]["p_holm"] = float(adj[i])
            secondary[i]["reject"] = bool(adj[i] <= protocol.alpha)
    runs = []
    for key, g in sorted(gens.items()):
        pool = pools.get(key)
        row = {"run": key, "generator": g["generator"], "fraction": g["fraction"], "repeat": g["repeat"],
               "n_images": g["n_images"], "n_patients": len(g["patients"]), "steps": g["fingerprint"]["steps"]}
        if pool is not None:
            row.update(fd=pool["fd"], two_sample_auroc=(pool.get("two_sample") or {}).get("auroc"),
                       pool_sha256=pool["images_sha256"], pool_n=pool["n"])
        gain = _cell_scores(protocol, data, clf, arm_name(g["generator"], CONTROL_RATIO), g["fraction"], g["repeat"])
        base = _cell_scores(protocol, data, clf, ARM_REAL, g["fraction"], g["repeat"])
        y = np.asarray(data["y_test"])
        diffs = [auroc(y, gain[s]) - auroc(y, base[s]) for s in protocol.classifier_seeds if s in gain and s in base]
        row["gain_at_1"] = float(np.mean(diffs)) if diffs else None
        row["gain_n_seeds"] = len(diffs)
        runs.append(row)
    pts = [(r["fd"], r["gain_at_1"]) for r in runs if r.get("fd") is not None and r["gain_at_1"] is not None]
    rho = spearmanr(*zip(*pts)) if len(pts) >= 3 else None
    same = {}
    for f in protocol.fractions:
        cells = [(_cell_scores(protocol, data, clf, ARM_EQUAL_STEPS, f, r), _cell_scores(protocol, data, clf, ARM_REAL, f, r))
                 for r in range(protocol.max_repeats)]
        pairs = {(data["subsets"][f"{f:g}/{r}"]["sha"], s): (e[s], b[s])
                 for r, (e, b) in enumerate(cells) for s in protocol.classifier_seeds if s in e and s in b}
        same[f"{f:g}"] = [sum(e == b for e, b in pairs.values()), len(pairs)]
    complete = len(have) == len(parts)
    res = {
        "status": "complete" if complete else "partial",
        "parts": {"done": len(have), "planned": len(parts),
                  "by_kind": {k: [sum(1 for pt in have if pt.kind == k), sum(1 for pt in parts if pt.kind == k)]
                              for k in ("encoder", "generator", "pool", "classifier")}},
        "protocol": protocol.to_dict(),
        "data": {k: v for k, v in data.items() if k not in ("y_test", "test_patients")},
        "n_test": len(data["y_test"]), "n_test_patients": len(set(data["test_patients"])),
        "encoder": None if enc is None else {k: v for k, v in enc.items() if k != "file_sha256"},
        "primary": primary,
        "secondary": secondary,
        "secondary_correction": f"Holm step-down over the {len(protocol.secondary)} secondary comparisons, "
                                f"alpha {protocol.alpha}",
        "generator_runs": runs,
        "equal_steps_identical_to_real": {
            "cells": same,
            "why": "the validation-selected epoch of real-equal-steps fell within the first E epochs, which are "
                   "those of real (same seed, same data, same batch order): the extra steps were offered, not used"},
        "fidelity_vs_gain": {"spearman_rho": None if rho is None else float(rho.statistic),
                             "spearman_p": None if rho is None else float(rho.pvalue), "n_runs": len(pts)},
        "method": ("hierarchical paired bootstrap: generator repeats with replacement, classifier seeds within "
                   "each with replacement, test patients with replacement (one draw shared by both arms); "
                   "statistic = difference of the mean-over-(repeat, seed) test AUROC; percentile CI; two-sided p "
                   "= 2 min(P(d*<=0), P(d*>=0)) floored at 1/B"),
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "trial.json", res)
    _write_json(out / "generators.json", {k: {"preset": g["preset"], "sets": g["sets"], "seed": g["seed"],
                                              "n_images": g["n_images"], **g["fingerprint"]}
                                          for k, g in sorted(gens.items())})
    _dose_figure(out / "dose_response.png", protocol, data, clf, res)
    _fidelity_figure(out / "fidelity_vs_gain.png", runs, res)
    write_text(out / "trial.md", trial_markdown(res, _read_json(out / "generators.json"), enc))
    return res


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def _dose_figure(path: Path, protocol: TrialProtocol, data: dict, clf: dict, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g, f = protocol.primary_generator, float(protocol.primary["fraction"])
    comps = [c for c in [res["primary"], *res["secondary"]]
             if c.get("available") and c["b"] == ARM_REAL and c["fraction"] == f and c["a"].startswith(g + "@")]
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for c in sorted(comps, key=lambda c: parse_arm(c["a"])[1]):
        k = parse_arm(c["a"])[1]
        ax.errorbar([k], [c["estimate"]], yerr=[[c["estimate"] - c["lo"]], [c["hi"] - c["estimate"]]],
                    fmt="o", color="tab:red", capsize=3)
        ax.scatter([k] * len(c["per_run"]), [x["diff"] for x in c["per_run"]], s=8, color="tab:red", alpha=0.35)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ratios = protocol.generators[g].ratios
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{k:g}" for k in ratios])
    ax.set_xlabel("synthetic : real ratio")
    ax.set_ylabel(f"Δ test AUROC vs real ({g}, {100 * f:g}% real)")
    ax.set_title(f"Dose-response: mean over (repeat, seed), hierarchical 95% CI; dots: single runs "
                 f"[{res['status']}]", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)


def _fidelity_figure(path: Path, runs: list[dict], res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    colors = {}
    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    markers = {}
    for r in runs:
        if r.get("fd") is None or r["gain_at_1"] is None:
            continue
        c = colors.setdefault(r["generator"], palette[len(colors) % len(palette)])
        m = markers.setdefault(r["fraction"], "os^D"[len(markers) % 4])
        ax.scatter(r["fd"], r["gain_at_1"], color=c, marker=m, label=f"{r['generator']}, {100 * r['fraction']:g}%")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    if uniq:
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    fv = res["fidelity_vs_gain"]
    rho = "n/a" if fv["spearman_rho"] is None else f"{fv['spearman_rho']:.2f} (p={fv['spearman_p']:.2f})"
    ax.set_xlabel("Fréchet distance of the pool to the validation images (one encoder)")
    ax.set_ylabel("Δ test AUROC at ratio 1 vs real (mean over seeds)")
    ax.set_title(f"Fidelity vs gain per generator run; Spearman ρ = {rho}, n = {fv['n_runs']} [{res['status']}]",
                 fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)


def _ci(c: dict) -> str:
    return f"{c['estimate']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"


def trial_markdown(res: dict, generators: dict, encoder: dict | None = None) -> str:
    """The trial report (Markdown) from ``trial.json``, ``generators.json`` and the encoder's record
    (its file's sha256 is not in ``trial.json``: ``torch.save`` output differs between saves of the
    same weights; the weights' fingerprint is)."""
    p = res["protocol"]
    status = res["status"]
    lines = [f"# Augmentation trial `{p['name']}` ({status.upper()})", ""]
    if status != "complete":
        lines += [f"**PARTIAL**: {res['parts']['done']} of {res['parts']['planned']} parts done "
                  f"(by kind, done/planned: {res['parts']['by_kind']}); comparisons marked incomplete use only "
                  "the repeats whose seeds all finished.", ""]
    d = res["data"]
    lines += [f"Protocol declared {p['declared']} (`protocol.yaml` beside this file). Data: {d['modality']} "
              f"{'x'.join(map(str, d['image_shape'][1:]))}, train/val/test {d['n']['train']}/{d['n']['val']}/"
              f"{d['n']['test']} images of {d['n_patients']['train']}/{d['n_patients']['val']}/"
              f"{d['n_patients']['test']} patients. Test AUROC on {res['n_test']} images of "
              f"{res['n_test_patients']} patients. Generators trained only on each subset's patients, "
              f"{p['generator_cpu_minutes']} CPU-minutes each ({p['threads']} thread), class-conditional, pools in "
              "the subset's prevalence, ungated. Classifier: "
              f"{p['classifier']}, seeds {p['classifier_seeds']}. Bootstrap B = {p['n_boot']}.", "",
              f"Method: {res['method']}.", "", "## Primary endpoint", ""]
    pr = res["primary"]
    lines += ["| comparison | fraction | Δ AUROC [95% CI] | p | α | result | repeats × seeds | seed ensemble Δ |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    if pr.get("available"):
        lines.append(f"| {pr['comparison']} | {pr['fraction']:g} | {_ci(pr)} | {pr['p']:.4f} | {p['alpha']} | "
                     f"**{'met' if pr['met'] else 'not met'}** (estimate {pr['direction']}) | "
                     f"{len(pr['repeats_used'])} × {len(pr['seeds'])}{'' if pr['complete'] else ' (incomplete)'} | "
                     f"{pr['ensemble']['diff']:+.4f} |")
    else:
        lines.append(f"| {pr['comparison']} | {pr['fraction']:g} | not available yet | | | | | |")
    lines += ["", "## Secondary comparisons (Holm-corrected family)", "", res["secondary_correction"] + ".", "",
              "| comparison | fraction | Δ AUROC [95% CI] | raw p | Holm p | reject? | repeats × seeds | "
              "seed ensemble Δ | note |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in res["secondary"]:
        if not c.get("available"):
            lines.append(f"| {c['comparison']} | {c['fraction']:g} | not available yet | | | | | | |")
            continue
        lines.append(f"| {c['comparison']} | {c['fraction']:g} | {_ci(c)} | {c['p']:.4f} | {c['p_holm']:.4f} | "
                     f"{'reject' if c['reject'] else 'not rejected'} | {len(c['repeats_used'])} × {len(c['seeds'])}"
                     f"{'' if c['complete'] else ' (incomplete)'} | {c['ensemble']['diff']:+.4f} | {c['note']} |")
    lines += ["", "## Per-run differences (repeat r, classifier seed s)", "",
              "| comparison | fraction | " + " | ".join(["per-(r, s) Δ AUROC"]) + " | sd |", "| --- | --- | --- | --- |"]
    for c in [pr, *res["secondary"]]:
        if c.get("available"):
            cells = ", ".join(f"r{x['repeat']}s{x['seed']} {x['diff']:+.3f}" for x in c["per_run"])
            lines.append(f"| {c['comparison']} | {c['fraction']:g} | {cells} | {c['per_run_sd']:.3f} |")
    lines += ["", "## Generator runs: fidelity and gain", "",
              f"Encoder: trained once on the validation images only (fingerprint "
              f"{(res['encoder'] or {}).get('fingerprint')}, file sha256 "
              f"{str((encoder or {}).get('file_sha256'))[:16]}…). Gain = Δ test AUROC of `<gen>@1` vs `real` "
              "(mean over seeds).", "",
              "| run | patients | steps | CPU s | FD | two-sample AUROC | gain at ratio 1 | checkpoint sha256 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["generator_runs"]:
        g = generators.get(r["run"], {})
        fd = "—" if r.get("fd") is None else f"{r['fd']:.2f}"
        ts = "—" if r.get("two_sample_auroc") is None else f"{r['two_sample_auroc']:.3f}"
        gain = "—" if r["gain_at_1"] is None else f"{r['gain_at_1']:+.4f} ({r['gain_n_seeds']} seeds)"
        lines.append(f"| {r['run']} | {r['n_patients']} | {r['steps']} | {g.get('cpu_seconds', '—')} | {fd} | {ts} | "
                     f"{gain} | {str(g.get('checkpoint_sha256', ''))[:16]}… |")
    fv = res["fidelity_vs_gain"]
    lines += ["", "Spearman ρ (FD vs gain, all generator runs): "
              + ("n/a" if fv["spearman_rho"] is None else f"{fv['spearman_rho']:.3f} (p = {fv['spearman_p']:.3f}, "
                 f"n = {fv['n_runs']})"), "",
              "Figures: `dose_response.png`, `fidelity_vs_gain.png`.", "",
              "## Caveats", "",
              "- Comparator generators have one run per fraction: their generator-to-generator variance is not "
              "estimated (the generator level of their bootstrap has one element).",
              "- Utility is measured on ungated samples (no release gate inside the trial).",
              "- Real-only arms at a fraction where every repeat draws the same patients (100 %) are trained once "
              "per seed and shared by the repeats.",
              "- `real-equal-steps` matches the optimiser steps of real+synthetic at ratio 1 by whole epochs "
              "(steps recorded per run). With the epoch chosen on validation AUROC, it returns the very model of "
              "`real` whenever that choice falls within the first E epochs (same seed, data and batch order): "
              "identical predictions in " + ", ".join(f"{v[0]} of {v[1]} distinct cells at {100 * float(k):g} %"
                                                      for k, v in res["equal_steps_identical_to_real"]["cells"].items())
              + "."]
    return "\n".join(lines) + "\n"
