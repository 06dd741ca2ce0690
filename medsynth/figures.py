"""Matplotlib figures without pyplot (object API on an Agg canvas), rendered to PNG bytes, and
image mosaics.

Shared by the evaluation (:mod:`medsynth.metrics.evaluate`), the report (:mod:`medsynth.report`)
and the training loop's sample grids (:mod:`medsynth.train.grid`): no global backend switch,
nothing written to disk here.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch


def new_figure(w: float, h: float):
    """A ``matplotlib.figure.Figure`` of ``w`` x ``h`` inches at 110 dpi on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, *, tight: bool = False) -> bytes:
    """The figure as PNG bytes (no ``Software`` metadata, so equal figures give equal bytes)."""
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


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
