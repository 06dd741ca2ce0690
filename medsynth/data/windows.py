"""CT display windows (centre, width) in Hounsfield units, shared by transforms and writers."""

from __future__ import annotations

#: name -> (centre HU, width HU)
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinal": (40.0, 400.0),
}


def window_bounds(window: str | tuple[float, float]) -> tuple[float, float]:
    """Return ``(low, high)`` HU for a named window or a ``(centre, width)`` pair."""
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise KeyError(f"unknown CT window {window!r}; known: {', '.join(CT_WINDOWS)}")
        window = CT_WINDOWS[window]
    centre, width = float(window[0]), float(window[1])
    return centre - width / 2.0, centre + width / 2.0


def hu_to_unit(hu, window: str | tuple[float, float] = "lung"):
    """Map HU to [-1, 1] through a window (clipped). Works on numpy arrays and tensors."""
    lo, hi = window_bounds(window)
    x = (hu - lo) / (hi - lo) * 2.0 - 1.0
    return x.clip(-1.0, 1.0)


def unit_to_hu(x, window: str | tuple[float, float] = "lung"):
    """Inverse of :func:`hu_to_unit` inside the window: [-1, 1] -> HU."""
    lo, hi = window_bounds(window)
    return (x + 1.0) / 2.0 * (hi - lo) + lo
