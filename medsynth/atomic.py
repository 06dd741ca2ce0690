"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

A reader never sees a half-written file, and a crash leaves the previous version in place. Every
writer in medsynth (configs, checkpoints, grids, manifests, DICOM/NIfTI/PNG, reports, caches) goes
through :func:`atomic_path`.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Args:
        path: the final file (its folder is created).
        suffix: ending of the temporary name (some writers choose the format by extension).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 files; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
