"""Matplotlib figures without pyplot (object API on an Agg canvas), rendered to PNG bytes.

Shared by the evaluation (:mod:`medsynth.metrics.evaluate`) and the report
(:mod:`medsynth.report.build`): no global backend switch, nothing written to disk here.
"""

from __future__ import annotations

import io


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
