"""Checkpoints: state_dicts + resolved config + versions, written atomically, loaded with
``torch.load(weights_only=True)``. Whole modules are never pickled."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from medsynth.atomic import atomic_path
from medsynth.errors import MedsynthError


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
        raise MedsynthError(path, f"not a readable medsynth checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
