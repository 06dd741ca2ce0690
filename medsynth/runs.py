"""Run directories and their checkpoints: one module that training, metrics, the report and the CLI
all use to write, find and read what ``medsynth train`` leaves behind.

A run directory holds ``config.yaml``, ``stats.jsonl``, ``samples/`` and ``checkpoints/last.pt``.
Checkpoints are state_dicts + the resolved config + versions, written atomically and loaded with
``torch.load(weights_only=True)``; whole modules are never pickled.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from medsynth.atomic import atomic_path
from medsynth.errors import MedsynthError

#: The checkpoint of a run, relative to its directory.
CHECKPOINT = "checkpoints/last.pt"


def versions() -> dict[str, str]:
    """Versions of medsynth, torch, MONAI (``"not installed"`` where training runs without it,
    e.g. a GPU box with torch alone: the loop does not need MONAI) and Python."""
    from importlib import metadata

    import medsynth

    try:  # the installed distribution's version: no import of MONAI (seconds) just to read it
        monai_version = metadata.version("monai")
    except metadata.PackageNotFoundError:
        monai_version = "not installed"
    return {"medsynth": str(medsynth.__version__), "torch": str(torch.__version__), "monai": monai_version,
            "python": platform.python_version()}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, nested dicts/lists) atomically."""
    with atomic_path(path) as tmp:
        torch.save({**payload, "versions": versions()}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); one-line error if unreadable."""
    path = Path(path)
    if not path.exists():
        raise MedsynthError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a medsynth checkpoint
        raise MedsynthError(path, f"not a readable medsynth checkpoint ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:120]})") from None


def checkpoint_path(run: str | Path) -> Path:
    """``run/checkpoints/last.pt`` for a run directory; a checkpoint file is returned as it is."""
    run = Path(run)
    return run / CHECKPOINT if run.is_dir() else run


def load_trained(run: str | Path) -> tuple[Any, Any, dict]:
    """Rebuild a trained variant from a run directory (or a checkpoint file).

    Returns:
        ``(config, model, checkpoint)``: the run's :class:`~medsynth.config.RunConfig`, the
        variant in eval mode on the CPU, and the checkpoint dict.
    """
    from medsynth.config import from_dict
    from medsynth.models.registry import build_model

    ckpt = checkpoint_path(run)
    ck = load_checkpoint(ckpt)
    cfg = from_dict(ck["config"], str(ckpt))
    model = build_model(cfg.model)
    model.load_state_dict(ck["model"])
    model.eval()
    return cfg, model, ck


def find_run(parent: str | Path) -> Path | None:
    """The newest run directory (one holding a ``config.yaml``) under ``parent``, or None."""
    parent = Path(parent)
    runs = sorted(p for p in parent.glob("*") if (p / "config.yaml").is_file()) if parent.is_dir() else []
    return runs[-1] if runs else None


def checkpoint_progress(run: str | Path) -> dict | None:
    """``{"step", "seconds", "cpu_seconds"}`` of a run's last checkpoint, or None if it has none."""
    ck = checkpoint_path(run)
    if not ck.is_file():
        return None
    d = load_checkpoint(ck)
    return {"step": int(d["step"]), "seconds": float(d["seconds"]), "cpu_seconds": float(d.get("cpu_seconds", 0.0))}


def describe_dp(summary: dict | None) -> str:
    """The one-line differential-privacy statement of a run (``summary`` from a checkpoint's ``dp``)."""
    if not summary:
        return "not used (the run was trained without differential privacy; no epsilon to report)"
    eps = summary.get("epsilon")
    eps_s = "infinite (no noise)" if eps is None else f"{eps:.3g}"
    return (f"{summary['mechanism']}: epsilon = {eps_s} at delta = {summary['delta']:.3g} after "
            f"{summary['private_updates']} updates (noise multiplier {summary['noise_multiplier']:.3g}, "
            f"clipping norm {summary['max_grad_norm']:.3g}, sample rate {summary['sample_rate']:.3g}, "
            f"{summary['accountant']} accountant); covers {summary['scope']}")
