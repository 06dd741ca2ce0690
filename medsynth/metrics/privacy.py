"""Privacy: does the generator reproduce its training images? Nearest-neighbour distances.

For every synthetic image we find the closest *training* image (the distance to closest record,
DCR) and compare the DCR distribution with the leave-one-out nearest-neighbour distances of the
training images among themselves. A generator that copies training images has DCRs near 0,
far below what two distinct real images ever reach; independent samples have DCRs like the
real-to-real ones. This is a screening test for memorisation, not a proof of privacy: a small
DCR can also be a legitimate near-duplicate, and a large one does not rule out membership
inference.

Distances are Euclidean (L2) either on the flattened images in [-1, 1] (``space="pixel"``) or
on encoder features (``space="features"``, see :mod:`medsynth.metrics.fidelity`). The search
uses chunked matrix products in float32 to find the neighbour, then recomputes the distance to
the chosen neighbour exactly, so an exact copy reports 0 rather than float32 round-off.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from medsynth.errors import MedsynthError

logger = logging.getLogger(__name__)


def _to_vectors(x, *, space: str, encoder: nn.Module | None, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise MedsynthError(name, f"expected a tensor or array, got {type(x).__name__}")
    x = x.detach().cpu()
    if x.shape[0] == 0:
        raise MedsynthError(name, "no images")
    if space == "features":
        if x.dim() == 2:  # already feature vectors
            return x.to(torch.float32)
        if encoder is None:
            raise MedsynthError(name, 'space="features" needs an encoder (or (N, F) feature arrays)')
        from medsynth.metrics.fidelity import extract_features

        return torch.from_numpy(extract_features(encoder, x))
    if space != "pixel":
        raise MedsynthError("space", f'must be "pixel" or "features", got {space!r}')
    if x.dim() not in (4, 5):
        raise MedsynthError(name, f"expected (N, 1, H, W) or (N, 1, D, H, W) images, got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).to(torch.float32)


def _nn_search(
    q: torch.Tensor, ref: torch.Tensor, *, exclude_self: bool, chunk_elems: int = 2**24
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbour of every row of q among rows of ref; q is ref itself when exclude_self."""
    if q.shape[1] != ref.shape[1]:
        raise MedsynthError("real", f"vector length {ref.shape[1]} differs from the queries' {q.shape[1]}")
    if exclude_self and ref.shape[0] < 2:
        raise MedsynthError("real", "need at least 2 real images for leave-one-out distances")
    ref_sq = (ref * ref).sum(1)
    rows = max(1, chunk_elems // max(1, ref.shape[0]))
    idx_all = torch.empty(q.shape[0], dtype=torch.long)
    for s in range(0, q.shape[0], rows):
        qc = q[s : s + rows]
        d2 = (qc * qc).sum(1, keepdim=True) + ref_sq[None, :] - 2.0 * (qc @ ref.T)
        if exclude_self:
            r = torch.arange(s, s + qc.shape[0])
            d2[r - s, r] = float("inf")
        idx_all[s : s + qc.shape[0]] = d2.argmin(1)
    # exact distance to the chosen neighbour (float64), immune to the mm cancellation error
    dist = (q.double() - ref[idx_all].double()).norm(dim=1)
    return dist.numpy(), idx_all.numpy()


def nearest_neighbours(
    synth, real, *, space: str = "pixel", encoder: nn.Module | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each synthetic image to its closest real (training) image.

    Args:
        synth: ``(N, 1, H, W)`` / ``(N, 1, D, H, W)`` float32 in [-1, 1], or ``(N, F)``
            feature vectors when ``space="features"``.
        real: the real training images (or features), same layout as ``synth``.
        space: ``"pixel"`` (L2 on flattened [-1, 1] intensities) or ``"features"``.
        encoder: the feature encoder, needed when ``space="features"`` and images are given.

    Returns:
        ``(dist (N,) float64 ≥ 0, idx (N,) int64)``: the distance to, and index in ``real`` of,
        each synthetic image's nearest real image.
    """
    q = _to_vectors(synth, space=space, encoder=encoder, name="synthetic")
    ref = _to_vectors(real, space=space, encoder=encoder, name="real")
    return _nn_search(q, ref, exclude_self=False)


def real_to_real_nn(
    real,
    *,
    space: str = "pixel",
    encoder: nn.Module | None = None,
    max_queries: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Leave-one-out nearest-neighbour distances within the real set (the reference distribution).

    Args:
        real: ``(N, 1, H, W)`` / ``(N, 1, D, H, W)`` float32 in [-1, 1], or ``(N, F)`` features.
        space: ``"pixel"`` or ``"features"`` (as in :func:`nearest_neighbours`).
        encoder: the feature encoder for ``space="features"`` on images.
        max_queries: if set and smaller than N, only this many real images (chosen with
            ``seed``) are queried, each still against all other N-1 images.
        seed: seeds the choice of queries.

    Returns:
        ``(M,)`` float64 distances, M = min(N, max_queries); duplicates within the real set
        give 0.
    """
    ref = _to_vectors(real, space=space, encoder=encoder, name="real")
    n = ref.shape[0]
    if max_queries is not None and max_queries < n:
        sel = np.sort(np.random.default_rng(seed).choice(n, size=max_queries, replace=False))
        # reorder so the queries come first: then "exclude self" is the diagonal
        rest = np.setdiff1d(np.arange(n), sel)
        order = torch.from_numpy(np.concatenate([sel, rest]))
        ref = ref[order]
        dist, _ = _nn_search(ref[:max_queries], ref, exclude_self=True)
        return dist
    dist, _ = _nn_search(ref, ref, exclude_self=True)
    return dist


def memorisation_summary(synth_nn_dist, real_nn_dist) -> dict[str, float]:
    """Summarises synthetic→real distances against the real→real reference.

    Args:
        synth_nn_dist: ``(N,)`` distances from :func:`nearest_neighbours` (DCR).
        real_nn_dist: ``(M,)`` distances from :func:`real_to_real_nn`.

    Returns:
        ``dcr_median``, ``dcr_min``, ``dcr_p5`` (synthetic), ``real_nn_median``,
        ``real_nn_p1``, ``real_nn_p5`` (reference), ``dcr_ratio`` (median DCR / median
        real→real; ≈1 for independent samples, →0 for copies), ``frac_below_real_p1`` and
        ``frac_below_real_p5`` (fraction of synthetic images at least as close to a training
        image as the 1st / 5th percentile of real→real distances; expected ≈0.01 / 0.05 for
        a generator that does not copy), ``n_synthetic``, ``n_real_queries``.
    """
    s = np.asarray(synth_nn_dist, dtype=np.float64).ravel()
    r = np.asarray(real_nn_dist, dtype=np.float64).ravel()
    if s.size == 0 or r.size == 0:
        raise MedsynthError("distances", "empty distance array")
    p1, p5 = np.percentile(r, [1, 5])
    med_r = float(np.median(r))
    return {
        "n_synthetic": int(s.size),
        "n_real_queries": int(r.size),
        "dcr_median": float(np.median(s)),
        "dcr_min": float(s.min()),
        "dcr_p5": float(np.percentile(s, 5)),
        "real_nn_median": med_r,
        "real_nn_p1": float(p1),
        "real_nn_p5": float(p5),
        "dcr_ratio": float(np.median(s) / med_r) if med_r > 0 else float("nan"),
        "frac_below_real_p1": float(np.mean(s <= p1)),
        "frac_below_real_p5": float(np.mean(s <= p5)),
    }
