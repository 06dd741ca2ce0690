"""Privacy beyond the DCR screen: NNDR and membership-inference attacks with a control.

* :func:`dcr_nndr` — for each query image, the distance to its nearest reference image (DCR)
  and the nearest-to-second-nearest distance ratio (NNDR, in [0, 1]); a copy of a training
  image has DCR 0 and NNDR 0, while a typical new image lies about as far from its nearest as
  from its second-nearest neighbour (NNDR near 1). Computed with sklearn ``NearestNeighbors``
  on flattened pixels in [-1, 1] (or on ``(N, F)`` features).
* Membership inference (MIA): an attacker scores real images; a high score should mean "was
  in the training set". Attack AUROC = P(score of a random training image > score of a random
  held-out image) (0.5 = no information), with a percentile bootstrap 95 % CI
  (:func:`medsynth.metrics.stats.bootstrap_ci`, resampling patients when patient ids are
  given). Two attacks:

  - **distance attack** (:func:`distance_attack_scores`): score = minus the L2 distance of a
    real image to its nearest synthetic image; only the synthetic images are needed, which is
    what anyone who receives a shared synthetic set has;
  - **discriminator attack** (:func:`discriminator_scores`): score = the run's discriminator
    logit on the image (white-box; the discriminator saw the training images).

  **Control**: the same attack scores two disjoint random halves of the *held-out* real
  images (split by patient) against each other. Neither half was trained on, so its AUROC
  must be near 0.5; it shows the spread a no-leak attack has at these sample sizes. If the
  attack AUROC is high but held-out images differ in distribution from training images
  (different site, scanner), a high AUROC can come from that shift rather than from a leak;
  the attack is then only read as a leak if the training-vs-held-out AUROC clearly exceeds
  both 0.5 and the control.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from medsynth.errors import MedsynthError
from medsynth.metrics.stats import bootstrap_ci
from medsynth.models.base import GANVariant

logger = logging.getLogger(__name__)


#: query rows per nearest-neighbour search call (:func:`nearest_neighbours`)
QUERY_CHUNK = 256
#: and at most about this many bytes of query rows (float64, times k for the exact distances)
QUERY_CHUNK_BYTES = 32 * 2**20
#: reference rows are searched in pieces of at most about this many bytes (float64)
REFERENCE_CHUNK_BYTES = 32 * 2**20


def _rows(x, name: str) -> np.ndarray:
    """``(N, F)`` / ``(N, 1, *S)`` -> ``(N, D)`` rows in their own dtype (a view where possible)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim not in (2, 4, 5) or a.shape[0] == 0:
        raise MedsynthError(name, f"expected (N, F) features or (N, 1, *S) images, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def _f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64, copy=False)


def nearest_neighbours(query, reference, k: int = 1, *, exclude_self: bool = False, query_chunk: int = QUERY_CHUNK,
                       reference_chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest reference rows of every query row (L2), in bounded memory.

    The search (sklearn ``NearestNeighbors``, brute force) runs on ``query_chunk`` query rows at a
    time against ``reference_chunk`` reference rows at a time, keeping a running top-``k`` per query
    row, so no ``N x M`` distance matrix and no float64 copy of a whole set is ever held; the
    distances returned are then recomputed exactly (float64 differences) for the chosen neighbours
    (the search's dot-product form leaves ~1e-6 for copies). The same neighbours as one search over
    everything, up to ties.

    Args:
        query: ``(N, 1, *S)`` images (flattened) or ``(N, F)`` vectors.
        reference: ``(M, ...)`` rows of the same length; M >= k (M >= k + 1 with ``exclude_self``).
        k: neighbours per query row.
        exclude_self: ``query`` *is* ``reference`` (same rows, same order): each row's own entry
            is skipped (for exact duplicates, another row of equal distance may be skipped instead).
        query_chunk: query rows per search call (>= 1); fewer when their float64 copy (times
            ``k``) would exceed :data:`QUERY_CHUNK_BYTES`.
        reference_chunk: reference rows per search (>= 1); default: all of them, or fewer when
            their float64 copy would exceed :data:`REFERENCE_CHUNK_BYTES`.

    Returns:
        ``(dist (N, k) float64 >= 0, idx (N, k) int64)``, nearest first by the search's distances
        (an exact distance may differ from the search's in the last digits, so near-ties can appear
        out of order, as with one sklearn search).
    """
    q, r = _rows(query, "query"), _rows(reference, "reference")
    if q.shape[1] != r.shape[1]:
        raise MedsynthError("reference", f"vector length {r.shape[1]} differs from the queries' {q.shape[1]}")
    k = int(k)
    want = k + 1 if exclude_self else k
    if k < 1 or len(r) < want:
        raise MedsynthError("reference", f"need at least {want} reference rows, got {len(r)}")
    if exclude_self and len(q) != len(r):
        raise MedsynthError("query", "exclude_self needs query and reference to be the same rows")
    # fewer query rows per piece when rows are large (1024² images are 8 MiB each in float64)
    qc = max(1, min(int(query_chunk), QUERY_CHUNK_BYTES // max(8 * want * q.shape[1], 1)))
    rc = reference_chunk or max(want, REFERENCE_CHUNK_BYTES // max(8 * r.shape[1], 1))
    rc = max(want, int(rc))
    n = len(q)
    best_d = np.full((n, want), np.inf)
    best_i = np.full((n, want), -1, dtype=np.int64)
    for r0 in range(0, len(r), rc):
        ref = _f64(r[r0 : r0 + rc])
        nn = NearestNeighbors(n_neighbors=min(want, len(ref))).fit(ref)
        for q0 in range(0, n, qc):
            d, i = nn.kneighbors(_f64(q[q0 : q0 + qc]))
            cat_d = np.concatenate([best_d[q0 : q0 + qc], d], axis=1)
            cat_i = np.concatenate([best_i[q0 : q0 + qc], i + r0], axis=1)
            order = np.argsort(cat_d, axis=1, kind="stable")[:, :want]
            best_d[q0 : q0 + qc] = np.take_along_axis(cat_d, order, axis=1)
            best_i[q0 : q0 + qc] = np.take_along_axis(cat_i, order, axis=1)
        del nn, ref
    if exclude_self:
        own = best_i == np.arange(n)[:, None]
        # drop each row's own entry (or, for exact duplicates, the last column); keep k
        keep = np.where(own.any(1, keepdims=True), ~own, np.arange(want)[None, :] < k)
        best_i = best_i[keep].reshape(n, k)
    dist = np.empty((n, k))
    for q0 in range(0, n, qc):  # exact distances to the chosen neighbours
        idx = best_i[q0 : q0 + qc]
        dist[q0 : q0 + qc] = np.linalg.norm(_f64(q[q0 : q0 + qc])[:, None, :] - _f64(r[idx.ravel()]).reshape(
            idx.shape[0], k, -1), axis=2)
    return dist, best_i


def dcr_nndr(query, reference, *, exclude_self: bool = False, query_chunk: int = QUERY_CHUNK,
             reference_chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distance to closest record and nearest-neighbour distance ratio.

    Args:
        query: ``(N, 1, *S)`` images in [-1, 1] (flattened) or ``(N, F)`` vectors.
        reference: ``(M, 1, *S)`` / ``(M, F)``, same length per row; M ≥ 2 (≥ 3 with
            ``exclude_self``).
        exclude_self: ``query`` *is* ``reference`` (same rows, same order): each row's own
            entry is skipped (leave-one-out real-to-real reference distribution).
        query_chunk, reference_chunk: the search's pieces (:func:`nearest_neighbours`: bounded
            memory, the same result).

    Returns:
        ``(dcr (N,) ≥ 0, nndr (N,) in [0, 1])``; NNDR = d1 / d2, and 0 when d2 = 0 (then
        d1 = 0 too: the query has duplicates in the reference).
    """
    need = 3 if exclude_self else 2
    if len(_rows(reference, "reference")) < need:
        raise MedsynthError("reference", f"need at least {need} reference rows, got {len(_rows(reference, 'reference'))}")
    dist, _ = nearest_neighbours(query, reference, 2, exclude_self=exclude_self, query_chunk=query_chunk,
                                 reference_chunk=reference_chunk)
    d1, d2 = dist[:, 0], dist[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 0.0)
    return d1, np.clip(ratio, 0.0, 1.0)


def distance_summary(synth_vals, real_vals) -> dict[str, float]:
    """Synthetic DCR or NNDR values against the real-to-real reference values.

    Returns:
        ``median``, ``p5`` (synthetic), ``real_median``, ``real_p1``, ``real_p5``
        (reference), ``frac_below_real_p1`` / ``frac_below_real_p5`` (fraction of synthetic
        values at or below the reference 1st / 5th percentile; ≈0.01 / 0.05 when the
        generator does not copy, → 1 for copies), ``n_synthetic``, ``n_reference``.
    """
    s = np.asarray(synth_vals, dtype=np.float64).ravel()
    r = np.asarray(real_vals, dtype=np.float64).ravel()
    if s.size == 0 or r.size == 0:
        raise MedsynthError("distances", "empty distance array")
    p1, p5 = np.percentile(r, [1, 5])
    return {"n_synthetic": int(s.size), "n_reference": int(r.size), "median": float(np.median(s)),
            "p5": float(np.percentile(s, 5)), "real_median": float(np.median(r)), "real_p1": float(p1),
            "real_p5": float(p5), "frac_below_real_p1": float(np.mean(s <= p1)),
            "frac_below_real_p5": float(np.mean(s <= p5))}


def distance_attack_scores(real_images, synthetic, *, query_chunk: int = QUERY_CHUNK,
                           reference_chunk: int | None = None) -> np.ndarray:
    """Score of the distance attack: minus the L2 distance of each real image to its nearest
    synthetic image (higher = more likely a training image).

    Args:
        real_images: ``(N, 1, *S)`` in [-1, 1] (or ``(N, F)`` features).
        synthetic: ``(M, 1, *S)`` in [-1, 1] (or ``(M, F)``).
        query_chunk, reference_chunk: the search's pieces (:func:`nearest_neighbours`).

    Returns:
        ``(N,)`` float64 scores ≤ 0.
    """
    q, r = _rows(real_images, "real_images"), _rows(synthetic, "synthetic")
    if q.shape[1] != r.shape[1]:
        raise MedsynthError("synthetic", f"vector length {r.shape[1]} differs from the real images' {q.shape[1]}")
    return -nearest_neighbours(q, r, 1, query_chunk=query_chunk, reference_chunk=reference_chunk)[0][:, 0]


@torch.no_grad()
def discriminator_scores(model: GANVariant, images, labels=None, *, batch_size: int = 64,
                         seed: int = 0) -> np.ndarray:
    """Discriminator logits of a trained variant on real images (the white-box attack score).

    ``model.d_logits(x, labels)`` (default ``D(x, labels)``) is called in eval mode on un-augmented
    images. Discriminators with minibatch statistics (minibatch-stddev) score each image together
    with its batch, so the images are scored in one seeded random order: training and held-out
    images share batches and neither group gets systematically different companions.

    Args:
        model: a :class:`medsynth.models.base.GANVariant` with ``supports_d_logits``.
        images: ``(N, 1, *S)`` float32 in [-1, 1].
        labels: ``(N,)`` int64 class labels (needed when the model is class-conditional).
        batch_size: images per D call (use the training batch size).
        seed: seeds the scoring order.

    Returns:
        ``(N,)`` float64 logits in the images' order (higher = "real" to D).

    Raises:
        MedsynthError: ``model`` is not a variant, the variant declares no ``d_logits``
            (``supports_d_logits`` False: e.g. CycleGAN's two domain discriminators, ProGAN's
            staged D), or labels are missing/unknown.
    """
    if not isinstance(model, GANVariant):
        raise MedsynthError("model", f"{type(model).__name__} is not a GAN variant (no discriminator score)")
    if not model.supports_d_logits:
        raise MedsynthError("model", f"{type(model).__name__} declares no discriminator score (supports_d_logits "
                                     "is False); discriminator attack not supported for this variant")
    d = model.d_logits
    x = torch.as_tensor(images).detach().to(torch.float32).cpu()
    n = len(x)
    conditional = model.num_classes > 0
    lab = None
    if conditional:
        if labels is None:
            raise MedsynthError("labels", "the model is class-conditional: the discriminator needs labels")
        lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(lab) != n or (lab < 0).any() or (lab >= model.num_classes).any():
            raise MedsynthError("labels", f"need {n} labels in 0..{model.num_classes - 1}")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    was_training = model.training
    model.eval()
    out = torch.empty(n, dtype=torch.float64)
    for s in range(0, n, batch_size):
        idx = order[s : s + batch_size]
        logits = d(x[idx], None if lab is None else lab[idx])
        out[idx] = logits.reshape(len(idx), -1).mean(1).double().cpu()
    model.train(was_training)
    return out.numpy()


def _auc_ci(pos, neg, pos_clusters, neg_clusters, *, n_boot: int, seed: int) -> dict:
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.asarray(neg, dtype=np.float64).ravel()
    if len(pos) < 2 or len(neg) < 2:
        raise MedsynthError("scores", f"need at least 2 scores per group, got {len(pos)} and {len(neg)}")
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    clusters = None
    if pos_clusters is not None and neg_clusters is not None:
        clusters = np.r_[np.asarray([f"a:{c}" for c in pos_clusters]), np.asarray([f"b:{c}" for c in neg_clusters])]
    ci = bootstrap_ci(y, s, "auroc", n_boot=n_boot, seed=seed, clusters=clusters)
    return {"auroc": ci.point, "lo": ci.lo, "hi": ci.hi, "n_members": int(len(pos)),
            "n_nonmembers": int(len(neg)), "n_boot": ci.n_boot,
            "resampled": "patients" if clusters is not None else "images"}


def control_split(n: int, groups: Sequence | None = None, *, seed: int = 0) -> np.ndarray:
    """Bool ``(n,)``: a random half of ``n`` held-out images (whole groups, e.g. patients)."""
    g = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    k = int(g.max()) + 1 if n else 0
    if k < 2:
        raise MedsynthError("held-out", f"need at least 2 held-out patients/images for the control, got {k}")
    chosen = np.random.default_rng(seed).permutation(k)[: k // 2]
    return np.isin(g, chosen)


def permutation_null(pos, neg, pos_groups: Sequence | None = None, neg_groups: Sequence | None = None, *,
                     n_perm: int = 1000, seed: int = 0) -> dict:
    """Permutation null of the attack AUROC: how high it gets when membership is random.

    The member / non-member labels are permuted over whole patients (``*_groups``; over images
    without them), keeping the number of member patients, and the AUROC (Mann-Whitney, ties
    counted one half) is recomputed for each permutation. Unlike one random held-out split, this
    gives the whole distribution an attack with no signal produces on these very scores.

    Args:
        pos: ``(N,)`` attack scores of members; higher = "member".
        neg: ``(M,)`` scores of non-members.
        pos_groups, neg_groups: optional patient ids of each (members' and non-members' patients
            are disjoint by construction; ids are kept apart by side).
        n_perm: permutations.
        seed: seeds the permutations.

    Returns:
        ``{"auroc", "null_mean", "null_sd", "null_95": [lo, hi], "p_value", "n_permutations",
        "permuted"}``; ``p_value`` is one-sided (attack above chance), ``(1 + #{null >= auroc}) /
        (1 + n_perm)``.
    """
    from scipy.stats import rankdata

    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    if len(pos) < 2 or len(neg) < 2:
        raise MedsynthError("scores", f"need at least 2 scores per group, got {len(pos)} and {len(neg)}")
    grouped = pos_groups is not None and neg_groups is not None
    if grouped:
        ids = np.r_[np.asarray([f"a:{c}" for c in np.asarray(pos_groups).ravel()]),
                    np.asarray([f"b:{c}" for c in np.asarray(neg_groups).ravel()])]
        cluster = np.unique(ids, return_inverse=True)[1].ravel()
    else:
        cluster = np.arange(len(pos) + len(neg))
    k = int(cluster.max()) + 1
    n_member_clusters = len(np.unique(cluster[: len(pos)]))
    ranks = rankdata(np.r_[pos, neg])

    def auc(labels: np.ndarray) -> np.ndarray:  # labels (P, N) bool -> (P,) AUROC
        n1 = labels.sum(1).astype(np.float64)
        n0 = labels.shape[1] - n1
        return (labels @ ranks - n1 * (n1 + 1) / 2) / (n1 * n0)

    observed = float(auc(np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)][None])[0])
    rng = np.random.default_rng([seed, 7])
    null = np.empty(int(n_perm))
    for b0 in range(0, int(n_perm), 200):  # (200, N) labels at a time
        b = min(200, int(n_perm) - b0)
        member = np.argsort(rng.random((b, k)), axis=1)[:, :n_member_clusters]
        is_member = np.zeros((b, k), bool)
        np.put_along_axis(is_member, member, True, axis=1)
        null[b0 : b0 + b] = auc(is_member[:, cluster])
    return {"auroc": observed, "null_mean": float(null.mean()), "null_sd": float(null.std(ddof=1)),
            "null_95": [float(np.quantile(null, 0.025)), float(np.quantile(null, 0.975))],
            "p_value": float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null))),
            "n_permutations": int(n_perm), "permuted": "patients" if grouped else "images"}


def membership_attack(
    member_scores,
    nonmember_scores,
    *,
    member_groups: Sequence | None = None,
    nonmember_groups: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Attack AUROC (training vs held-out) with its bootstrap CI, and the held-out control.

    Args:
        member_scores: ``(N,)`` attack scores of training (member) images; higher = "member".
        nonmember_scores: ``(M,)`` scores of held-out real images (M ≥ 4).
        member_groups, nonmember_groups: optional patient ids: bootstrap and the control split
            resample / split whole patients.
        n_boot: bootstrap resamples.
        seed: seeds the bootstrap and the control split.

    Returns:
        ``{"attack": {"auroc", "lo", "hi", ...}, "control": {...}, "excess_over_control"}``;
        ``attack`` is members vs all non-members; ``control`` is one random half of the
        non-members (by patient) against the other half, scored the same way (≈0.5);
        ``excess_over_control`` = attack AUROC - control AUROC; ``permutation``: the attack AUROC's
        permutation null over patients (:func:`permutation_null`, ``max(n_boot, 200)``
        permutations) with its one-sided p-value: the control to read (one random half says little).
    """
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    ng = None if nonmember_groups is None else np.asarray(nonmember_groups)
    mg = None if member_groups is None else np.asarray(member_groups)
    attack = _auc_ci(member_scores, neg, mg, ng, n_boot=n_boot, seed=seed)
    half = control_split(len(neg), ng, seed=seed)
    control = _auc_ci(neg[half], neg[~half], None if ng is None else ng[half],
                      None if ng is None else ng[~half], n_boot=n_boot, seed=seed + 1)
    null = permutation_null(member_scores, neg, mg, ng, n_perm=max(n_boot, 200), seed=seed)
    return {"attack": attack, "control": control, "excess_over_control": attack["auroc"] - control["auroc"],
            "permutation": null}
