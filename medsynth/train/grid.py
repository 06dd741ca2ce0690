"""Image grids for sample previews (PNG, 8-bit grey)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medsynth.atomic import atomic_path


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``(N, 1, H, W)`` (or ``(N, 1, D, H, W)``: the central axial slice) images in [-1, 1]
    into one ``uint8`` array ``(rows*H, cols*W)``."""
    x = images.detach().float().cpu()
    if x.dim() == 5:
        x = x[:, :, x.shape[2] // 2]
    x = x[:, 0]
    n, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.uint8)
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save a grid PNG atomically."""
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(make_grid(images, nrow)).save(tmp, format="PNG")
    return Path(path)
