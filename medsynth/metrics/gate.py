"""Release gate: remove synthetic images that lie too close to a training image before they leave.

``medsynth evaluate`` *measures* memorisation (DCR, ``frac_below_real_p1``); the gate *acts* on it,
per image, at release time (``medsynth generate --gate``, ``medsynth augment --gate``).

**Rule.** A candidate synthetic image is removed when its distance to the closest training image
is at or below the threshold in EITHER space:

* ``pixel``: L2 distance of the flattened pixels in [-1, 1] (the DCR of
  :func:`medsynth.metrics.membership.dcr_nndr`, the same number ``medsynth evaluate`` reports);
* ``feature``: L2 distance of the standardised features of the project's own encoder
  (:mod:`medsynth.metrics.fidelity`: autoencoder bottleneck + texture statistics, trained on the
  training images only; by default the run's own, trained like ``medsynth evaluate``'s default
  encoder). It catches copies moved by a pixel or two, which lie far away in pixel space (copies of
  64² phantoms / LIDC crops shifted by 1 px: pixel space removed 6 % / 12 %, feature space 37 % /
  54 %). Pixel space catches what the encoder lets pass: copies with added noise (sigma 0.1) were
  all removed in pixel space on the three sets measured, in feature space 100 % / 0 % / 29 %
  (lung-spot / whole-chest / LIDC); copies with an intensity offset of +0.1: pixel 100 % / 69 % /
  100 %, feature under 1 %.

**Thresholds.** Per space, the ``quantile`` (default 0.01) of the real-to-real *leave-one-patient-
out* nearest-neighbour distance among the training images: each training image's distance to the
closest training image **of another patient**. Why another patient and not just another image: a
training set often holds several images of one patient (the LIDC crops: up to 9 nodules of one
scan, some overlapping; the same radiograph as DICOM and PNG; several crops or slices of one
volume). Those near-duplicates would make the leave-one-out distribution start near 0, the 1st
percentile would collapse toward 0, and the gate would pass a synthetic image as close to a
training image as two crops of the same scan are to each other. Excluding the patient's own
images measures what the gate is meant to measure: how close two *different people's* images get.
Where every image has its own patient id, leave-one-patient-out is plain leave-one-out. Each space
flags about its own quantile of fresh images, and the two spaces flag partly different images,
so the per-space quantile (:func:`space_quantile`) is lowered until the union removes ``quantile``
of the training images leave-one-patient-out; the record states the expected rate
(``loo_removed_fraction``). On small sets the smallest distances are discrete (a mutual nearest
pair ties, so each space flags at least 2 images). Measured at the default 0.01 on real held-out
images, 64² (``reports/release_gate/``): 1.8 % of 168 lung-spot phantoms, 0 % of 120 whole-chest
phantoms, 2.7 % of 291 LIDC crops (without the calibration: 2.4 %, 0 %, 2.7 %). With two
overlapping crops per patient, plain leave-one-out halved the thresholds (LIDC feature space
2.11 -> 0.81) and let 39 % of the noised copies through in feature space.

**Cost.** Every nearest-neighbour distance comes from :func:`~medsynth.metrics.membership.dcr_nndr`
(sklearn's brute-force search, itself computed in bounded-memory chunks), called on at most
``chunk`` query rows at a time: no ``N x M`` distance matrix beyond ``chunk x M`` is held. The
leave-one-patient-out distances take whole patients per chunk: the nearest image outside the
chunk (one call) and the nearest image of another patient inside it (one call, plus one per
patient with several images in the chunk).

The record (:meth:`ReleaseGate.record`) names spaces, thresholds, quantile, how many images were
screened and removed (per space and in all) and the encoder's fingerprint; it holds no path and
no patient id. :func:`write_gate_record` writes it as ``release_gate.json`` (atomic).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from medsynth.atomic import write_text
from medsynth.errors import MedsynthError
from medsynth.metrics.fidelity import (
    encoder_fingerprint,
    extract_features,
    load_encoder,
    save_encoder,
    train_feature_encoder,
)
from medsynth.metrics.membership import dcr_nndr

logger = logging.getLogger(__name__)

GATE_FORMAT = "medsynth-release-gate/1"
#: the sidecar file generate / augment write beside their manifest
GATE_FILE = "release_gate.json"
#: the gate's feature encoder of a run, trained once on its training images (never shared: RUN/local/)
RUN_ENCODER = Path("local") / "gate_encoder.pt"
DEFAULT_QUANTILE = 0.01
#: query rows per nearest-neighbour call
DEFAULT_CHUNK = 256
#: sampling rounds of :func:`gated_sample` before it gives up
MAX_ROUNDS = 10
#: at most this many candidates per missing image in one round
MAX_OVERSAMPLE = 4
RULE = ("an image is removed when its distance to the closest training image is at or below the threshold "
        "in EITHER space (pixel or feature)")
THRESHOLD_RULE = ("per space, a quantile (space_quantile) of the leave-one-patient-out nearest-neighbour distance "
                  "among the training images: each training image's distance to the closest training image of "
                  "another patient (several images of one patient would otherwise pull the threshold toward 0); "
                  "space_quantile is chosen so that the training images removed in either space are the quantile")
SPACE_DESCRIPTIONS = {"pixel": "L2 distance of the flattened pixels in [-1, 1]",
                      "feature": "L2 distance of the standardised features of the feature encoder"}


def _vectors(images, name: str) -> np.ndarray:
    """``(N, C, *S)`` images (tensor or array) -> ``(N, D)`` float32 rows."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim not in (4, 5) or x.shape[0] == 0:
        raise MedsynthError(name, f"expected (N, C, H, W) or (N, C, D, H, W) images, got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1).astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise MedsynthError(name, "images contain non-finite values")
    return x


def nearest_distance(query: np.ndarray, reference: np.ndarray, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Distance of each query row to its closest reference row, ``chunk`` query rows at a time.

    Args:
        query: ``(N, D)`` rows.
        reference: ``(M, D)`` rows; M = 0 gives ``inf``.
        chunk: query rows per :func:`~medsynth.metrics.membership.dcr_nndr` call.

    Returns:
        ``(N,)`` float64 L2 distances >= 0.
    """
    n = len(query)
    if len(reference) == 0:
        return np.full(n, np.inf)
    if len(reference) == 1:  # dcr_nndr needs two reference rows; one is a plain distance
        return np.linalg.norm(query.astype(np.float64) - reference[0].astype(np.float64), axis=1)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk):
        out[s : s + chunk] = dcr_nndr(query[s : s + chunk], reference)[0]
    return out


def _patient_chunks(groups: np.ndarray, chunk: int) -> list[np.ndarray]:
    """Row indices in chunks of whole patients, about ``chunk`` rows each (a larger patient alone)."""
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    chunks, cur = [], []
    for rows in members.values():
        if cur and len(cur) + len(rows) > chunk:
            chunks.append(np.asarray(cur))
            cur = []
        cur += rows
    if cur:
        chunks.append(np.asarray(cur))
    return chunks


def loo_distances(vectors: np.ndarray, patient_ids=None, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Leave-one-patient-out nearest-neighbour distance of every row.

    Args:
        vectors: ``(N, D)`` rows (flattened images or features).
        patient_ids: ``(N,)`` patient of each row; ``None`` = every row its own patient (plain
            leave-one-out).
        chunk: about this many query rows (whole patients) per nearest-neighbour call.

    Returns:
        ``(N,)`` float64: each row's distance to the closest row of ANOTHER patient.

    Raises:
        MedsynthError: fewer than 2 patients (no other patient to measure against).
    """
    v = np.asarray(vectors)
    n = len(v)
    groups = np.arange(n) if patient_ids is None else np.asarray([str(p) for p in patient_ids])
    if len(groups) != n:
        raise MedsynthError("patient_ids", f"{len(groups)} patient ids for {n} images")
    if len(np.unique(groups)) < 2:
        raise MedsynthError("training images", f"{n} image(s) of {len(np.unique(groups))} patient(s): the "
                                               "release gate needs images of at least 2 patients")
    out = np.empty(n, dtype=np.float64)
    for rows in _patient_chunks(groups, chunk):
        inside = np.zeros(n, dtype=bool)
        inside[rows] = True
        best = nearest_distance(v[rows], v[~inside], chunk=chunk)  # every row outside is another patient's
        g = groups[rows]
        _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
        single = counts[inv.ravel()] == 1
        if single.any() and len(rows) >= 3:
            within = dcr_nndr(v[rows], v[rows], exclude_self=True)[0]  # nearest other row: another patient for singles
            best[single] = np.minimum(best[single], within[single])
        elif single.any() and len(rows) == 2:  # two single-image patients: each other's only neighbour here
            d = float(np.linalg.norm(v[rows[0]].astype(np.float64) - v[rows[1]].astype(np.float64)))
            best = np.minimum(best, d)
        for p in np.unique(g[~single]):
            own = g == p
            best[own] = np.minimum(best[own], nearest_distance(v[rows[own]], v[rows[~own]], chunk=chunk))
        out[rows] = best
    return out


@dataclass
class GateTally:
    """What a gate removed, summed over screening calls.

    Attributes:
        screened: candidate images screened.
        removed: images removed per space (an image too close in both spaces counts in both) and
            ``total`` (each removed image once).
        rounds: sampling rounds (:func:`gated_sample`; 1 for a single screening).
    """

    screened: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    rounds: int = 0

    def add(self, flagged: dict[str, np.ndarray], removed: np.ndarray) -> None:
        self.screened += int(len(removed))
        for space, f in flagged.items():
            self.removed[space] = self.removed.get(space, 0) + int(np.sum(f))
        self.removed["total"] = self.removed.get("total", 0) + int(np.sum(removed))


@dataclass
class ReleaseGate:
    """A fitted gate: the training images' references and the per-space thresholds.

    Build it with :func:`fit_gate`; screen candidates with :meth:`screen`.

    Attributes:
        thresholds: ``{space: threshold}`` (``pixel``, and ``feature`` when an encoder is given).
        quantile: the target fraction of leave-one-patient-out training images removed (either space).
        space_quantile: the quantile of each space's leave-one-patient-out distances the thresholds
            are (:func:`space_quantile`: equals ``quantile`` with one space, less with two).
        n_train, n_patients: training images and patients the references hold.
        encoder: the feature encoder (``None``: pixel space only).
        encoder_info: what the record says of the encoder (fingerprint, feature length, source).
        chunk: query rows per nearest-neighbour call.
        context: extra fields for the record (run name, model, data fingerprint); no paths.
    """

    thresholds: dict[str, float]
    quantile: float
    space_quantile: float
    n_train: int
    n_patients: int
    encoder: nn.Module | None
    encoder_info: dict | None
    chunk: int
    train_vectors: dict[str, np.ndarray] = field(repr=False)
    context: dict = field(default_factory=dict)

    @property
    def spaces(self) -> tuple[str, ...]:
        return tuple(self.thresholds)

    def distances(self, images) -> dict[str, np.ndarray]:
        """Per space, each image's distance to its closest training image.

        Args:
            images: ``(N, 1, *S)`` float32 in [-1, 1], the training images' shape.

        Returns:
            ``{space: (N,) float64}``.
        """
        q = _vectors(images, "candidates")
        if q.shape[1] != self.train_vectors["pixel"].shape[1]:
            raise MedsynthError("candidates", f"{q.shape[1]} pixels per image, the training images have "
                                              f"{self.train_vectors['pixel'].shape[1]}")
        out = {"pixel": nearest_distance(q, self.train_vectors["pixel"], chunk=self.chunk)}
        if "feature" in self.thresholds:
            f = np.concatenate([extract_features(self.encoder, torch.as_tensor(images[s : s + self.chunk]))
                                for s in range(0, len(q), self.chunk)])
            out["feature"] = nearest_distance(f, self.train_vectors["feature"], chunk=self.chunk)
        return out

    def screen(self, images, tally: GateTally | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Which candidates pass: removed when at or below the threshold in EITHER space.

        Args:
            images: ``(N, 1, *S)`` float32 in [-1, 1].
            tally: counts to add this screening to.

        Returns:
            ``(keep (N,) bool, {space: (N,) distances})``.
        """
        dist = self.distances(images)
        flagged = {s: dist[s] <= self.thresholds[s] for s in self.thresholds}
        removed = np.logical_or.reduce(list(flagged.values()))
        if tally is not None:
            tally.add(flagged, removed)
        return ~removed, dist

    def record(self, tally: GateTally) -> dict:
        """The JSON-ready record: rule, spaces, thresholds, quantile, counts, encoder; no path, no patient id."""
        removed = {s: int(tally.removed.get(s, 0)) for s in (*self.spaces, "total")}
        return {"format": GATE_FORMAT, "ran": True, "rule": RULE, "spaces": list(self.spaces),
                "distance": {s: SPACE_DESCRIPTIONS[s] for s in self.spaces},
                "threshold_rule": THRESHOLD_RULE, "quantile": self.quantile, "space_quantile": self.space_quantile,
                "thresholds": {s: float(t) for s, t in self.thresholds.items()},
                "reference": {"n_train": self.n_train, "n_patients": self.n_patients,
                              "leave_out": ("patient" if self.n_patients < self.n_train else "image (one per patient)"),
                              **self.context},
                "n_screened": int(tally.screened), "n_removed": removed,
                "n_kept": int(tally.screened - removed["total"]), "rounds": int(tally.rounds),
                "encoder": self.encoder_info}

    def summary_line(self, tally: GateTally) -> str:
        """One line for DICOM ImageComments, PNG text and the manifest, e.g. ``release gate (removed if
        within the threshold of a training image in either space, quantile 0.01): pixel thr=8.512,
        feature thr=3.104; removed 3/400``."""
        thr = ", ".join(f"{s} thr={t:.4g}" for s, t in self.thresholds.items())
        either = "either space" if len(self.thresholds) > 1 else "pixel space"
        return (f"release gate (removed if within the threshold of a training image in {either}, quantile "
                f"{self.quantile:g}): {thr}; removed {tally.removed.get('total', 0)}/{tally.screened}")


def _check_quantile(quantile: float) -> float:
    q = float(quantile)
    if not 0.0 <= q < 1.0 or math.isnan(q):
        raise MedsynthError("--gate-quantile", f"must be a number in [0, 1), got {quantile}")
    return q


def space_quantile(loo: dict[str, np.ndarray], quantile: float, *, iterations: int = 40) -> float:
    """The per-space quantile whose thresholds remove ``quantile`` of the leave-one-out images in
    EITHER space (the union): the largest ``q' <= quantile`` with union fraction ``<= quantile``.

    One space: ``quantile`` itself. Two spaces: between ``quantile / 2`` (disjoint flags) and
    ``quantile`` (identical flags); found by bisection (the union grows with ``q'``). Without this
    the union of two per-space 1st percentiles removed 2.4 % / 2.7 % of held-out real lung-spot
    phantoms / LIDC crops instead of about 1 %.

    Args:
        loo: ``{space: (N,) leave-one-patient-out distances}``.
        quantile: the target fraction in [0, 1).
        iterations: bisection steps.
    """
    if len(loo) == 1 or quantile == 0.0:
        return quantile

    def union(qs: float) -> float:
        return float(np.logical_or.reduce([d <= np.quantile(d, qs) for d in loo.values()]).mean())

    lo, hi = 0.0, quantile
    if union(hi) <= quantile:
        return hi
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if union(mid) <= quantile else (lo, mid)
    return lo


def fit_gate(train_images, *, patient_ids=None, encoder: nn.Module | None = None,
             quantile: float = DEFAULT_QUANTILE, chunk: int = DEFAULT_CHUNK, encoder_info: dict | None = None,
             context: dict | None = None, calibrate: bool = True) -> ReleaseGate:
    """Fit the gate on the generator's training images.

    Args:
        train_images: ``(N, 1, *S)`` float32 in [-1, 1], the images the generator trained on
            (N >= 2, from at least 2 patients).
        patient_ids: ``(N,)`` patient of each image: the leave-one-out neighbour of an image is
            never one of its own patient's images; ``None`` = one patient per image.
        encoder: the feature encoder (trained on ``train_images`` only); ``None`` gates in pixel
            space only.
        quantile: the thresholds' quantile of the leave-one-patient-out distances, in [0, 1).
        chunk: query rows per nearest-neighbour call (memory: ``chunk x N`` distances at a time).
        encoder_info: what the record says of the encoder (default: its fingerprint and length).
        context: extra record fields (run name, model, data fingerprint); no paths, no ids.
        calibrate: choose the per-space quantile so that the union of the spaces removes
            ``quantile`` of the training images leave-one-patient-out (:func:`space_quantile`);
            ``False``: every space's threshold is its own ``quantile`` (the union then removes up
            to twice as many).

    Returns:
        The :class:`ReleaseGate`.
    """
    q = _check_quantile(quantile)
    if int(chunk) < 1:
        raise MedsynthError("chunk", f"must be >= 1, got {chunk}")
    x = torch.as_tensor(train_images).detach().to(torch.float32).cpu()
    px = _vectors(x, "training images")
    groups = None if patient_ids is None else [str(p) for p in patient_ids]
    vectors = {"pixel": px}
    if encoder is not None:
        vectors["feature"] = np.concatenate([extract_features(encoder, x[s : s + chunk])
                                             for s in range(0, len(x), chunk)])
        if encoder_info is None:
            encoder_info = {"fingerprint": encoder_fingerprint(encoder), "feature_dim": int(vectors["feature"].shape[1])}
    loo = {s: loo_distances(v, groups, chunk=int(chunk)) for s, v in vectors.items()}
    q_space = space_quantile(loo, q) if calibrate else q
    thresholds = {s: float(np.quantile(d, q_space)) for s, d in loo.items()}
    flagged = {s: d <= thresholds[s] for s, d in loo.items()}
    # the fraction of training images the gate would remove as if they were new: what to expect for fresh
    # real images of new patients (the union of the spaces: calibrated to the quantile)
    expected = {s: float(f.mean()) for s, f in flagged.items()}
    expected["either"] = float(np.logical_or.reduce(list(flagged.values())).mean())
    n_patients = len(x) if groups is None else len(set(groups))
    ctx = dict(context or {}, loo_removed_fraction=expected)
    if len(x) * q < 1:
        ctx["note"] = (f"{len(x)} training images < 1 / quantile: the threshold is about the smallest real-real "
                       "distance, so fresh real images are removed more often than the quantile says")
        logger.warning("release gate: %s", ctx["note"])
    logger.info("release gate on %d training images (%d patients), quantile %g: %s", len(x), n_patients, q,
                ", ".join(f"{s} {t:.4g}" for s, t in thresholds.items()))
    return ReleaseGate(thresholds=thresholds, quantile=q, space_quantile=q_space, n_train=len(x), n_patients=n_patients,
                       encoder=encoder, encoder_info=encoder_info if encoder is not None else None,
                       chunk=int(chunk), train_vectors=vectors, context=ctx)


def release_gate(candidates, train_images, *, patient_ids=None, encoder: nn.Module | None = None,
                 quantile: float = DEFAULT_QUANTILE, chunk: int = DEFAULT_CHUNK,
                 calibrate: bool = True) -> tuple[np.ndarray, dict]:
    """Screen candidate synthetic images against the generator's training images in one call.

    Args:
        candidates: ``(M, 1, *S)`` float32 in [-1, 1], synthetic images.
        train_images, patient_ids, encoder, quantile, chunk, calibrate: as :func:`fit_gate`.

    Returns:
        ``(kept, record)``: ``kept`` the ``(K,)`` int64 indices of the candidates that pass (in
        order); ``record`` as :meth:`ReleaseGate.record`.
    """
    gate = fit_gate(train_images, patient_ids=patient_ids, encoder=encoder, quantile=quantile, chunk=chunk,
                    calibrate=calibrate)
    tally = GateTally(rounds=1)
    keep, _ = gate.screen(candidates, tally)
    return np.flatnonzero(keep).astype(np.int64), gate.record(tally)


def gated_sample(sample: Callable[[int, torch.Tensor | None], torch.Tensor], count: int, gate: ReleaseGate, *,
                 labels: torch.Tensor | None = None, max_rounds: int = MAX_ROUNDS,
                 tally: GateTally | None = None) -> tuple[torch.Tensor, GateTally]:
    """Sample until ``count`` images pass the gate, in rounds.

    Image ``i`` of the result has class ``labels[i]``. Round 1 samples exactly ``count`` images
    (the draw an ungated ``generate`` makes with the same generator state); each later round samples
    the missing slots again, ``k`` candidates each (``k`` from the pass rate so far, at most
    :data:`MAX_OVERSAMPLE`), and fills each slot with its first candidate that passes.

    Args:
        sample: ``sample(n, labels)`` -> ``(n, 1, *S)`` float32 in [-1, 1] (``labels`` ``(n,)``
            int64 or ``None``); a seeded generator inside makes the result reproducible.
        count: images wanted, >= 1.
        gate: the fitted :class:`ReleaseGate`.
        labels: ``(count,)`` int64 classes (conditional models) or ``None``.
        max_rounds: rounds before giving up.
        tally: counts to add to (default a new one).

    Returns:
        ``(images (count, 1, *S), tally)``.

    Raises:
        MedsynthError: fewer than ``count`` images passed after ``max_rounds`` rounds (one line:
            how many passed, how many were removed).
    """
    count = int(count)
    if count < 1:
        raise MedsynthError("--count", f"must be >= 1, got {count}")
    tally = tally or GateTally()
    filled: list[torch.Tensor | None] = [None] * count
    need = np.arange(count)
    while len(need):
        if tally.rounds >= max_rounds:
            raise MedsynthError("--count", (
                f"release gate: after {tally.rounds} sampling rounds only {count - len(need)} of {count} images "
                f"passed ({tally.removed.get('total', 0)} of {tally.screened} sampled were within the threshold of "
                "a training image): the generator reproduces its training images; ask for fewer with --count "
                "or retrain"))
        tally.rounds += 1
        passed = tally.screened - tally.removed.get("total", 0)
        rate = 1.0 if tally.screened == 0 else passed / tally.screened
        k = 1 if tally.screened == 0 else min(MAX_OVERSAMPLE, max(1, math.ceil(1.0 / max(rate, 1e-9))))
        slots = np.tile(need, k)
        lab = None if labels is None else labels[torch.as_tensor(slots)]
        x = sample(len(slots), lab)
        keep, _ = gate.screen(x, tally)
        for j in np.flatnonzero(keep):
            slot = int(slots[j])
            if filled[slot] is None:
                filled[slot] = x[j]
        need = np.asarray([i for i in need if filled[i] is None], dtype=np.int64)
        logger.info("release gate round %d: %d of %d candidates passed, %d images still missing", tally.rounds,
                    int(keep.sum()), len(slots), len(need))
    return torch.stack(filled), tally


# ------------------------------------------------------------------------------------------- a run


def load_run_training_set(run_dir: str | Path, cfg, *, data: str | None = None):
    """The images a run's generator trained on: its training split, checked against its fingerprint.

    Args:
        run_dir: the run directory.
        cfg: its resolved config (``load_trained``).
        data: a data source (a path) to use instead of the run's local record
            (:func:`medsynth.runs.read_data_source`).

    Returns:
        ``(ImageSet, fingerprint)``.

    Raises:
        MedsynthError: no local record and no ``data``, unreadable data, a two-domain run, or data
            other than the run trained on (another fingerprint).
    """
    from medsynth.data.dataset import load_image_set
    from medsynth.runs import images_fingerprint, read_data_source

    d = cfg.data
    if d.domain_b is not None:
        raise MedsynthError(run_dir, "a two-domain run (domain A and B): the release gate screens sampled images "
                                     "of one-domain runs")
    source = data if data is not None else read_data_source(run_dir)[0]
    ds = load_image_set(source, modality=d.modality, size=d.size, spatial_dims=d.spatial_dims, split=d.split,
                        ct_window=d.ct_window)
    fp = images_fingerprint(ds.images, ds.labels)
    if d.fingerprint is not None and fp != d.fingerprint:
        raise MedsynthError("--data" if data is not None else run_dir,
                            f"holds other images than the run was trained on (fingerprint {fp}, the run's "
                            f"{d.fingerprint}): the release gate compares against the run's own training data")
    return ds, fp


def run_gate_encoder(run_dir: str | Path, train_images, fingerprint: str, *, encoder: str | Path | None = None,
                     seed: int = 0, steps: int = 300) -> tuple[nn.Module, dict]:
    """The gate's feature encoder for a run and what the record says of it.

    With ``encoder`` (a file written by :func:`medsynth.metrics.fidelity.save_encoder`, e.g.
    ``RUN/evaluate/encoder.pt``) that one; otherwise the run's own, ``RUN/local/gate_encoder.pt``,
    trained once on the run's training images (``seed``, ``steps``: the settings of ``medsynth
    evaluate``'s default encoder) and reused while the training data keep their fingerprint, so
    every release of a run is gated in the same feature space. It stays in ``RUN/local/`` (never
    shared): it was fitted to patient images.

    Returns:
        ``(encoder, info)``: ``info`` ``{"fingerprint", "feature_dim", "source", "train_info"}``.
    """
    if encoder is not None:
        enc, source = load_encoder(encoder), f"supplied file {Path(encoder).name}"
    else:
        path = Path(run_dir) / RUN_ENCODER
        enc = None
        if path.is_file():
            try:
                enc = load_encoder(path)
            except MedsynthError as exc:
                logger.warning("release gate: %s; training a new one", exc)
            if enc is not None and enc.train_info.get("data_fingerprint") != fingerprint:
                logger.info("release gate: the cached encoder was trained on other data; training a new one")
                enc = None
        source = "the run's gate encoder (trained on its training images; kept in RUN/local/)"
        if enc is None:
            enc = train_feature_encoder(train_images, seed=seed, steps=steps)
            enc.train_info["data_fingerprint"] = fingerprint
            try:
                save_encoder(enc, path)
            except OSError as exc:  # a read-only run folder: the gate still runs, the next call retrains
                logger.warning("release gate: could not keep the encoder in %s (%s)", path, exc.strerror or exc)
    dim = int(extract_features(enc, torch.as_tensor(train_images[:1])).shape[1])
    info = {"fingerprint": encoder_fingerprint(enc), "feature_dim": dim, "source": source,
            "train_info": {k: v for k, v in dict(getattr(enc, "train_info", {})).items()
                           if k in ("seed", "steps", "n_images", "final_mse")}}
    return enc, info


def fit_run_gate(run_dir: str | Path, cfg, *, data: str | None = None, quantile: float = DEFAULT_QUANTILE,
                 encoder: str | Path | None = None, chunk: int = DEFAULT_CHUNK) -> ReleaseGate:
    """:func:`fit_gate` on a run's training data (:func:`load_run_training_set`) with its gate
    encoder (:func:`run_gate_encoder`); the record names the run (its folder name), model and the
    training data's fingerprint.

    Raises:
        MedsynthError: as :func:`load_run_training_set`, a bad ``quantile``, a bad encoder file.
    """
    from medsynth.progress import Progress

    q = _check_quantile(quantile)
    ds, fp = load_run_training_set(run_dir, cfg, data=data)
    with Progress("release gate", total=2, unit="stages") as prog:
        prog.set_postfix("feature encoder")
        enc, info = run_gate_encoder(run_dir, ds.images, fp, encoder=encoder)
        prog.update(1)
        prog.set_postfix("thresholds")
        gate = fit_gate(ds.images, patient_ids=ds.patient_ids, encoder=enc, quantile=q, chunk=chunk,
                        encoder_info=info, context={"run": Path(run_dir).resolve().name, "model": cfg.model.name,
                                                    "train_data_fingerprint": fp, "train_split": cfg.data.split})
        prog.update(1)
        prog.set_postfix("")
    return gate


def not_run_record(reason: str) -> dict:
    """The record of a gate that did not run, and why (no path)."""
    return {"format": GATE_FORMAT, "ran": False, "reason": reason, "rule": RULE}


def write_gate_record(folder: str | Path, record: dict) -> Path:
    """Write ``record`` as ``folder/release_gate.json`` (atomic)."""
    return write_text(Path(folder) / GATE_FILE, json.dumps(record, indent=1) + "\n")


def read_gate_record(folder: str | Path) -> dict | None:
    """``folder/release_gate.json``, or ``None`` when there is none.

    Raises:
        MedsynthError: the file exists but is not a gate record.
    """
    path = Path(folder) / GATE_FILE
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedsynthError(path, f"unreadable ({exc.__class__.__name__})") from None
    if not isinstance(rec, dict) or rec.get("format") != GATE_FORMAT:
        raise MedsynthError(path, "is not a medsynth release gate record")
    return rec
