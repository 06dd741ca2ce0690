"""Optional standard Inception FID from a feature network the user supplies (never downloaded).

medsynth's own fidelity figures use an encoder trained on the real training split
(:mod:`medsynth.metrics.fidelity`). Papers quote FID on Inception-v3 pool features; a user who
has those weights locally can pass them with ``medsynth evaluate --inception-weights PATH``.

Accepted file: a **TorchScript** module (``torch.jit.load``; no pickled Python code is executed)
that maps ``(N, 3, 299, 299)`` images to ``(N, F)`` features (``F = 2048`` for Inception-v3
pool3), e.g. NVIDIA's ``inception-2015-12-05.pt`` used by the StyleGAN2-ADA/StyleGAN3
metrics, whose ``forward(img, return_features=True)`` takes ``uint8``-range values 0..255.
The input convention is a parameter (``input_range``): ``"uint8"`` (0..255, the default,
matching that file), ``"unit"`` (0..1) or ``"sym"`` (-1..1).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.errors import MedsynthError

logger = logging.getLogger(__name__)

INPUT_RANGES = ("uint8", "unit", "sym")


def load_inception(path: str | Path):
    """Load a TorchScript feature network; a one-line :class:`MedsynthError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MedsynthError(path, "Inception weights file not found")
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any load failure is a bad input file
        raise MedsynthError(path, f"not a TorchScript feature network ({type(exc).__name__}); export the "
                                  "Inception model with torch.jit.script/trace") from None
    net.eval()
    return net


def _prepare(x: torch.Tensor, input_range: str, size: int) -> torch.Tensor:
    """``(N, 1, H, W)`` (or ``(N, 1, D, H, W)``: central axial slice) in [-1, 1] -> ``(N, 3, size, size)``."""
    if x.dim() == 5:
        x = x[:, :, x.shape[2] // 2]
    x = F.interpolate(x.float().clamp(-1, 1), size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    if input_range == "uint8":
        return (x + 1.0) * 127.5
    if input_range == "unit":
        return (x + 1.0) * 0.5
    return x


def inception_features(net, images, *, input_range: str = "uint8", size: int = 299,
                       batch_size: int = 32) -> np.ndarray:
    """Features ``(N, F)`` float64 of images ``(N, 1, *S)`` in [-1, 1] (grey repeated to RGB)."""
    if input_range not in INPUT_RANGES:
        raise MedsynthError("--inception-input", f"must be one of {', '.join(INPUT_RANGES)}, got {input_range!r}")
    x = torch.as_tensor(images)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            b = _prepare(x[i:i + batch_size], input_range, size)
            try:
                f = net(b, return_features=True)
            except (RuntimeError, TypeError):  # a network without that keyword argument
                f = net(b)
            if isinstance(f, (tuple, list)):
                f = f[0]
            if f.dim() != 2:
                f = f.flatten(1)
            out.append(f.double().cpu())
    return torch.cat(out).numpy()


def inception_fid(net, real, synth, *, input_range: str = "uint8", seed: int = 0, repeats: int = 5) -> dict:
    """Inception FID of synthetic vs real, with the real-vs-real floor at the same sample size.

    Args:
        net: a network from :func:`load_inception`.
        real, synth: ``(N, 1, *S)`` / ``(M, 1, *S)`` in [-1, 1].
        repeats: random halvings averaged: synthetic (n/2) vs real half A against real half B vs
            real half A, as for the project's own Fréchet distance.

    Returns:
        ``{"fid", "fid_sd", "floor", "floor_sd", "n", "feature_dim", "input_range"}``.
    """
    from medsynth.metrics.fidelity import frechet_distance

    fr = inception_features(net, real, input_range=input_range)
    fs = inception_features(net, synth, input_range=input_range)
    rng = np.random.default_rng(seed)
    h = len(fr) // 2
    m = min(h, len(fs))
    fids, floors = [], []
    for _ in range(max(1, int(repeats))):
        p = rng.permutation(len(fr))
        a, b = fr[p[:h]][:m], fr[p[h:2 * h]][:m]
        s = fs[rng.permutation(len(fs))[:m]]
        fids.append(frechet_distance(s, a))
        floors.append(frechet_distance(b, a))
    return {"fid": float(np.mean(fids)), "fid_sd": float(np.std(fids)), "floor": float(np.mean(floors)),
            "floor_sd": float(np.std(floors)), "n": int(m), "feature_dim": int(fr.shape[1]),
            "input_range": input_range}
