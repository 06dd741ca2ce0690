"""A classifier two-sample test: can a small CNN tell synthetic images from real ones?

Feature-space metrics (:mod:`medsynth.metrics.fidelity`) judge a synthetic set through one fixed
encoder and can miss what that encoder ignores (texture, noise, upsampling artefacts). This is a
second judge that learns its own features: a small CNN is trained to label real images 0 and
synthetic images 1, and scored on images it did not train on (the classifier two-sample test of
Lopez-Paz & Oquab, 2017, read through its AUROC).

Protocol (:func:`two_sample_test`):

* **balance**: ``m = min(len(real), len(synth))`` random images of each set (seeded);
* **cross-fitting**: the ``2m`` images are split into ``folds`` folds stratified by set; for each
  fold a fresh CNN (:class:`SmallCNN`: stride-2 conv blocks with BatchNorm and LeakyReLU, global
  average pool, linear) is trained on the other folds and scores the held-out fold, so every
  image gets exactly one out-of-fold score;
* **AUROC** (``sklearn.metrics.roc_auc_score``) of all ``2m`` out-of-fold scores: 0.5 = the CNN
  cannot tell the sets apart, 1.0 = it tells every synthetic image from every real one;
* **uncertainty**: a 95 % percentile bootstrap CI over images
  (:func:`medsynth.metrics.stats.bootstrap_ci`) and a one-sided Mann-Whitney U p-value of
  "synthetic scores > real scores" (H0: AUROC = 0.5). The out-of-fold scores of different folds
  come from different models and the models share training images, so the scores are not
  strictly independent: the p-value and CI are approximate (a label-permutation test would need
  the CNN retrained per permutation);
* **floor**: the same protocol on two disjoint random halves of the *real* images,
  ``min(len(real) // 2, m)`` each: what a perfect generator would score at (about) this sample
  size, expected ≈ 0.5 (cross-validated AUROC under H0 scatters around, and slightly below, 0.5).

Deterministic: the same inputs, ``seed`` and torch thread count give the same numbers. The torch
global RNG is forked (the caller's random state is left as it was); torch threads are not changed.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsynth.errors import MedsynthError
from medsynth.metrics.stats import bootstrap_ci

logger = logging.getLogger(__name__)

#: fewest images per side (real, synthetic) the test runs on
MIN_PER_SIDE = 20
#: defaults sized so that 300 + 300 images at 64² (main test and floor) take seconds on 2 CPU cores
DEFAULT_FOLDS = 3
DEFAULT_EPOCHS = 10
DEFAULT_WIDTH = 16
DEFAULT_BATCH = 64
DEFAULT_LR = 1e-3
#: fewest optimiser steps per CNN: small sets train for more epochs than ``epochs`` so that they are trained at all
DEFAULT_MIN_STEPS = 60
MAX_BLOCKS = 4

READING = "1.0 = a small CNN tells every synthetic image from real; 0.5 = it cannot"


class SmallCNN(nn.Module):
    """Real-vs-synthetic classifier: ``blocks`` × (3×3 or 3×3×3 conv, stride 2 → BatchNorm → LeakyReLU(0.2)),
    global average pool, linear → one logit.

    Args:
        spatial_dims: 2 (``Conv2d``) or 3 (``Conv3d``).
        width: channels of the first block; later blocks double it up to ``4 * width``.
        blocks: number of stride-2 blocks (1..4).
    """

    def __init__(self, spatial_dims: int, width: int = DEFAULT_WIDTH, blocks: int = MAX_BLOCKS):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(blocks):
            c_out = width * min(2 ** i, 4)
            layers += [conv(c_in, c_out, 3, stride=2, padding=1, bias=False), norm(c_out), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *S)`` in [-1, 1] → ``(B,)`` logits (higher = more likely synthetic)."""
        return self.head(self.features(x).flatten(2).mean(2)).squeeze(1)


def _as_images(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if x.dim() not in (4, 5) or x.shape[1] != 1:
        raise MedsynthError(name, f"expected (N, 1, H, W) or (N, 1, D, H, W) images, got shape {tuple(x.shape)}")
    if not all(bool(torch.isfinite(c).all()) for c in x.split(256)):  # in pieces: no set-sized temporaries
        raise MedsynthError(name, "images contain NaN or infinite values")
    return x


def _batches(n: int, batch_size: int, g: torch.Generator | None) -> list[torch.Tensor]:
    """Indices ``0..n-1`` (shuffled when ``g`` is given) in near-equal batches of at most ``batch_size``."""
    idx = torch.randperm(n, generator=g) if g is not None else torch.arange(n)
    return list(idx.tensor_split(max(1, math.ceil(n / batch_size))))


def n_epochs(n_train: int, *, epochs: int, batch_size: int, min_steps: int) -> int:
    """Epochs one CNN trains for: ``epochs``, or more when that gives fewer than ``min_steps`` optimiser steps."""
    return max(epochs, math.ceil(min_steps / max(1, math.ceil(n_train / batch_size))))


def n_blocks(spatial: tuple[int, ...]) -> int:
    """Stride-2 blocks of the CNN for images of ``spatial`` size: up to :data:`MAX_BLOCKS`, fewer for tiny images."""
    return max(1, min(MAX_BLOCKS, int(math.log2(min(spatial)))))


def _fit_score(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, *, epochs: int, width: int,
               batch_size: int, lr: float, seed: int, device: torch.device) -> np.ndarray:
    """Train a :class:`SmallCNN` on ``(x_tr, y_tr)`` and return its logits on ``x_te`` as ``(len(x_te),)`` float64."""
    blocks = n_blocks(tuple(x_tr.shape[2:]))
    torch.manual_seed(seed)
    net = SmallCNN(x_tr.dim() - 2, width, blocks).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in _batches(len(x_tr), batch_size, g):
            loss = F.binary_cross_entropy_with_logits(net(x_tr[idx].to(device)), y_tr[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    # BatchNorm statistics of the final weights (not a running mix over training): one pass, equal weights
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None
        for idx in _batches(len(x_tr), batch_size, None):
            net(x_tr[idx].to(device))
        net.eval()
        return torch.cat([net(x_te[idx].to(device)).cpu() for idx in _batches(len(x_te), batch_size, None)]
                         ).double().numpy()


def _cross_fit(x0: torch.Tensor, x1: torch.Tensor, *, folds: int, epochs: int, min_steps: int, width: int,
               batch_size: int, lr: float, rng: np.random.Generator,
               device: torch.device) -> tuple[np.ndarray, np.ndarray, list, int]:
    """Out-of-fold logits of ``x0`` (label 0) and ``x1`` (label 1), folds stratified by label.

    Returns:
        ``(y, scores, fold_aurocs, epochs_run)``: ``(n0 + n1,)`` labels and out-of-fold logits, one AUROC
        per fold, and the most epochs a fold's CNN trained for (:func:`n_epochs`).
    """
    from sklearn.metrics import roc_auc_score

    x = torch.cat([x0, x1])
    y = np.r_[np.zeros(len(x0)), np.ones(len(x1))]
    fold = np.empty(len(y), dtype=np.int64)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    scores = np.full(len(y), np.nan)
    fold_aurocs, epochs_run = [], 0
    yt = torch.as_tensor(y, dtype=torch.float32)
    for k in range(folds):
        te, tr = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
        ep = n_epochs(len(tr), epochs=epochs, batch_size=batch_size, min_steps=min_steps)
        epochs_run = max(epochs_run, ep)
        scores[te] = _fit_score(x[tr_t], yt[tr_t], x[te_t], epochs=ep, width=width, batch_size=batch_size,
                                lr=lr, seed=int(rng.integers(2 ** 31)), device=device)
        fold_aurocs.append(float(roc_auc_score(y[te], scores[te])))
    return y, scores, fold_aurocs, epochs_run


def _auroc_summary(y: np.ndarray, s: np.ndarray, *, n_boot: int, seed: int) -> dict:
    from scipy.stats import mannwhitneyu

    ci = bootstrap_ci(y, s, "auroc", n_boot=n_boot, seed=seed)
    p = float(mannwhitneyu(s[y == 1], s[y == 0], alternative="greater").pvalue)
    return {"auroc": float(ci.point), "ci": [float(ci.lo), float(ci.hi)], "p_value": p}


def two_sample_test(
    real,
    synth,
    *,
    folds: int = DEFAULT_FOLDS,
    epochs: int = DEFAULT_EPOCHS,
    min_steps: int = DEFAULT_MIN_STEPS,
    width: int = DEFAULT_WIDTH,
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    n_boot: int = 1000,
    seed: int = 0,
    floor: bool = True,
    min_per_side: int = MIN_PER_SIDE,
    device: str | torch.device = "cpu",
) -> dict:
    """Classifier two-sample test of real against synthetic images (see the module docstring).

    Args:
        real: ``(N, 1, H, W)`` or ``(N, 1, D, H, W)`` float images in [-1, 1] (label 0).
        synth: ``(M, 1, *S)`` float images in [-1, 1], the same ``S`` (label 1).
        folds: cross-fitting folds (2 ≤ folds ≤ images per side of the floor).
        epochs: training epochs of each fold's CNN (Adam, ``lr``, batches of ``batch_size``).
        min_steps: fewest optimiser steps of each CNN: a small set trains for more epochs
            (``epochs_run`` in the result).
        width: channels of the CNN's first block.
        n_boot: bootstrap resamples of the AUROC CIs.
        seed: seeds the subsets, folds, CNN initialisation and batch order, and the bootstrap.
        floor: also run the protocol on two disjoint halves of the real images.
        min_per_side: fewest images of each set (:data:`MIN_PER_SIDE`).
        device: where the CNNs train (``cpu`` is deterministic; a GPU may not be bit-exact).

    Returns:
        A JSON-ready dict: ``auroc``, ``ci`` ``[lo, hi]`` (95 % bootstrap over images), ``p_value``
        (one-sided Mann-Whitney U, synthetic scores > real scores), ``fold_aurocs``,
        ``epochs_run``; ``floor`` ``{"auroc", "ci", "p_value", "fold_aurocs", "n_per_side", "epochs_run"}``
        or ``None``; ``m`` (images per side), ``n_real``, ``n_synthetic``, ``folds``, ``epochs``,
        ``min_steps``, ``width``, ``blocks``, ``seconds`` and ``method`` (one line).

    Raises:
        MedsynthError: not ``(N, 1, *S)`` images, different image shapes, non-finite values,
            fewer than ``min_per_side`` images on a side, or ``folds`` out of range.
    """
    t0 = time.perf_counter()
    r, s = _as_images(real, "real images"), _as_images(synth, "synthetic images")
    if r.shape[1:] != s.shape[1:]:
        raise MedsynthError("two-sample test", f"real images {tuple(r.shape[1:])} and synthetic images "
                                               f"{tuple(s.shape[1:])} differ in shape")
    if len(r) < min_per_side or len(s) < min_per_side:
        raise MedsynthError("two-sample test", f"too few images: needs at least {min_per_side} real and "
                                               f"{min_per_side} synthetic, got {len(r)} and {len(s)}")
    m = min(len(r), len(s))
    h = min(len(r) // 2, m)
    if not 2 <= folds <= (h if floor else m):
        raise MedsynthError("two-sample test", f"folds must be between 2 and {h if floor else m} "
                                               f"(images per side), got {folds}")
    if epochs < 1 or width < 1 or batch_size < 2 or min_steps < 0:
        raise MedsynthError("two-sample test", f"epochs and width must be >= 1, batch_size >= 2 and min_steps >= 0, "
                                               f"got {epochs}, {width}, {batch_size}, {min_steps}")
    dev = torch.device(device)
    kw = {"folds": folds, "epochs": epochs, "min_steps": min_steps, "width": width, "batch_size": batch_size,
          "lr": lr, "device": dev}
    with torch.random.fork_rng(devices=[]):
        rng = np.random.default_rng([seed, 0])
        ri = torch.as_tensor(np.sort(rng.permutation(len(r))[:m]))
        si = torch.as_tensor(np.sort(rng.permutation(len(s))[:m]))
        y, scores, fold_aurocs, ep = _cross_fit(r[ri], s[si], rng=rng, **kw)
        out = {**_auroc_summary(y, scores, n_boot=n_boot, seed=seed), "fold_aurocs": fold_aurocs, "epochs_run": ep}
        fl = None
        if floor:
            rng_f = np.random.default_rng([seed, 1])
            perm = torch.as_tensor(rng_f.permutation(len(r)))
            yf, sf, fold_f, ep_f = _cross_fit(r[perm[:h]], r[perm[h: 2 * h]], rng=rng_f, **kw)
            fl = {**_auroc_summary(yf, sf, n_boot=n_boot, seed=seed + 1), "fold_aurocs": fold_f,
                  "n_per_side": int(h), "epochs_run": ep_f}
    blocks = n_blocks(tuple(r.shape[2:]))
    out.update({
        "floor": fl, "m": int(m), "n_real": len(r), "n_synthetic": len(s), "folds": int(folds),
        "epochs": int(epochs), "min_steps": int(min_steps), "width": int(width), "blocks": blocks,
        "seconds": round(time.perf_counter() - t0, 2),
        "method": (f"small CNN ({blocks} stride-2 conv blocks from width {width}, BatchNorm, LeakyReLU, global "
                   f"average pool, linear) trained real (0) vs synthetic (1) on m = {m} images each, {folds}-fold "
                   f"stratified cross-fitting, {epochs} epochs (at least {min_steps} steps) Adam lr {lr:g} batch "
                   f"{batch_size}; AUROC of the out-of-fold logits, 95% percentile bootstrap CI over images "
                   f"({n_boot}), one-sided Mann-Whitney U p-value (synthetic > real); floor: the same on two "
                   "disjoint halves of the real images"),
    })
    logger.info("two-sample test: AUROC %.3f [%.3f, %.3f]%s, m = %d, %.1f s", out["auroc"], *out["ci"],
                "" if fl is None else f" (floor {fl['auroc']:.3f})", m, out["seconds"])
    return out
