"""Downstream tumour-detection classifier: a small MONAI CNN with one logit.

Architectures (``arch``):

* ``"cnn"`` (default): :class:`PoolCNN`, four stride-2 stages of MONAI ``Convolution``
  (conv-BN-ReLU, optionally followed by a ``ResidualUnit``), then global max pooling
  concatenated with global average pooling and one linear layer. Its features do not depend
  on where a finding sits in the image (translation invariant up to the stride grid).
* ``"monai"``: the MONAI ``Classifier`` (stages then flatten + dense). The dense head sees
  every position separately, so a small finding at a random position is learnt poorly
  (measured: 0.61 test AUROC vs 0.98 for a global-max-pool CNN on a 64² random-position blob
  task). Kept for comparison.
* ``"resnet18"`` / ``"resnet10"``: MONAI ``ResNet`` (2D or 3D). For small inputs (smallest
  spatial size < 64) the stem is MedMNIST's adaptation: 3-wide stride-1 first conv and no
  max pooling.

Used by the benchmark (real-only vs real+synthetic), by phantom-difficulty calibration and,
through :func:`penultimate_features`, as a feature extractor.

Images are float32 ``(N, 1, H, W)`` (2D) or ``(N, 1, D, H, W)`` (3D) in ``[-1, 1]``; labels are
``(N,)`` binary ``{0, 1}`` (1 = nodule / malignant). Training is deterministic for a given
``seed`` on CPU: ``torch.manual_seed`` (inside a forked RNG, so the caller's global state is
untouched) fixes initialisation and dropout, and a ``torch.Generator`` fixes the shuffling.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import Classifier
from torch import Tensor, nn

from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

ARCHS = ("cnn", "monai", "resnet18", "resnet10")

__all__ = [
    "ARCHS",
    "PoolCNN",
    "build_classifier",
    "train_classifier",
    "predict_proba",
    "penultimate_features",
    "monai_augment",
]


class PoolCNN(nn.Module):
    """Position-invariant CNN: stride-2 MONAI conv stages, global max ++ mean pooling, linear.

    Args:
        spatial_dims: 2 or 3.
        channels: output channels of each stride-2 stage, e.g. ``(16, 32, 64, 128)``.
        num_res_units: residual sub-units (a MONAI ``ResidualUnit`` at stride 1) after each
            stage's strided conv; 0 = plain conv-BN-ReLU stages.
        dropout: dropout probability inside the stages (``None`` for none).
        norm: MONAI norm name.

    ``forward`` maps ``(N, 1, *S)`` to logits ``(N, 1)``; ``features`` returns the last
    stage's map ``(N, channels[-1], *S')``; ``pooled`` the head's input ``(N, 2 * channels[-1])``
    (global max then global mean).
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        *,
        num_res_units: int = 1,
        dropout: float | None = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers.append(
                Convolution(spatial_dims, c_in, c, strides=2, kernel_size=3,
                            act="relu", norm=norm, dropout=dropout)
            )
            if num_res_units > 0:
                layers.append(
                    ResidualUnit(spatial_dims, c, c, strides=1, kernel_size=3,
                                 subunits=num_res_units, act="relu", norm=norm, dropout=dropout)
                )
            c_in = c
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_in, 1)

    def features(self, x: Tensor) -> Tensor:
        return self.net(x)

    def pooled(self, x: Tensor) -> Tensor:
        h = self.net(x).flatten(2)
        return torch.cat([h.amax(dim=2), h.mean(dim=2)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pooled(x))


def build_classifier(
    spatial_dims: int = 2,
    in_shape: Sequence[int] = (1, 64, 64),
    width: int = 16,
    *,
    arch: str = "cnn",
    num_res_units: int = 1,
    dropout: float | None = 0.1,
    norm: str = "batch",
    small_stem: bool | None = None,
) -> nn.Module:
    """Build a binary classifier with one output logit.

    Args:
        spatial_dims: 2 or 3; must match ``len(in_shape) - 1``.
        in_shape: ``(1, H, W)`` or ``(1, D, H, W)``; each spatial size should be >= 16
            (``cnn``/``monai``: four stride-2 stages).
        width: channels of the first stage; stages have ``(w, 2w, 4w, 8w)`` channels
            (``cnn``/``monai``; ResNets use their standard widths and ignore it).
        arch: one of :data:`ARCHS` (see the module docstring).
        num_res_units: residual sub-units per stage (0 = plain conv blocks; ``cnn``/``monai``).
        dropout: dropout probability inside the stages (``None`` for none; ``cnn``/``monai``).
        norm: MONAI norm name (``"batch"``, ``"instance"``).
        small_stem: ResNets only: ``True`` = MedMNIST's small-input stem (3-wide stride-1
            first conv, no max pooling); ``False`` = MONAI's stem (7-wide conv, max pooling;
            stride 2 for 3D to keep 3D ResNets affordable on CPU); ``None`` = ``True`` when the
            smallest spatial size is < 64.

    Returns:
        ``nn.Module`` mapping ``(N, 1, *S)`` to logits ``(N, 1)``; it carries ``arch``.
    """
    in_shape = tuple(int(s) for s in in_shape)
    if spatial_dims not in (2, 3) or len(in_shape) != spatial_dims + 1:
        raise MedsynthError(
            None, f"classifier in_shape {in_shape} does not match spatial_dims={spatial_dims}"
        )
    if arch not in ARCHS:
        raise MedsynthError(None, f"unknown classifier arch {arch!r}; choose from {', '.join(ARCHS)}")
    w = int(width)
    channels = (w, 2 * w, 4 * w, 8 * w)
    if arch == "cnn":
        model: nn.Module = PoolCNN(
            spatial_dims, channels, num_res_units=num_res_units, dropout=dropout, norm=norm
        )
    elif arch == "monai":
        model = Classifier(
            in_shape=in_shape,
            classes=1,
            channels=channels,
            strides=(2, 2, 2, 2),
            num_res_units=num_res_units,
            norm=norm,
            dropout=dropout,
        )
    else:
        from monai.networks import nets

        small = min(in_shape[1:]) < 64 if small_stem is None else bool(small_stem)
        if small:
            stem = dict(conv1_t_size=3, conv1_t_stride=1, no_max_pool=True)
        else:
            stem = dict(conv1_t_size=7, conv1_t_stride=2 if spatial_dims == 3 else 1)
        log.debug("%s %dD input %s: stem %s", arch, spatial_dims, in_shape, stem)
        model = getattr(nets, arch)(
            spatial_dims=spatial_dims, n_input_channels=1, num_classes=1, norm=norm, **stem
        )
    model.arch = arch
    return model


def _as_tensor_images(x, spatial_dims: int, name: str = "x") -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    if t.ndim != spatial_dims + 2 or t.shape[1] != 1:
        want = "(N, 1, H, W)" if spatial_dims == 2 else "(N, 1, D, H, W)"
        raise MedsynthError(None, f"classifier {name} has shape {tuple(t.shape)}, expected {want}")
    return t.contiguous()


def _as_labels(y, n: int, name: str = "y") -> Tensor:
    t = torch.as_tensor(np.asarray(y)).reshape(-1)
    if t.numel() != n:
        raise MedsynthError(None, f"classifier {name} has {t.numel()} labels for {n} images")
    vals = set(torch.unique(t).tolist())
    if not vals <= {0, 1}:
        raise MedsynthError(None, f"classifier {name} must be binary 0/1, found {sorted(vals)}")
    return t.to(torch.float32)


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def monai_augment(spatial_dims: int = 2, *, seed: int = 0, prob: float = 0.5) -> Callable:
    """A batch augmentation built from MONAI random dictionary transforms.

    Random flips along every spatial axis and a small random affine (rotation up to ~15
    degrees, scale +-10 %, translation up to 2 px), applied per sample. Flips are safe for
    nodule presence/malignancy (no left/right semantics at crop level).

    Args:
        spatial_dims: 2 or 3.
        seed: seeds the MONAI transforms' random state (deterministic sequence).
        prob: probability of each flip and of the affine.

    Returns:
        ``fn(batch: Tensor (B, 1, *S) in [-1, 1]) -> Tensor`` of the same shape, values
        clipped to ``[-1, 1]``.
    """
    from monai.transforms import Compose, RandAffined, RandFlipd

    keys = ["img"]
    rot = 0.26  # radians, ~15 degrees
    transforms = [RandFlipd(keys, prob=prob, spatial_axis=a) for a in range(spatial_dims)]
    transforms.append(
        RandAffined(
            keys,
            prob=prob,
            rotate_range=(rot,) if spatial_dims == 2 else (rot, rot, rot),
            scale_range=(0.1,) * spatial_dims,
            translate_range=(2,) * spatial_dims,
            padding_mode="border",
        )
    )
    comp = Compose(transforms).set_random_state(seed=seed)

    def apply(batch: Tensor) -> Tensor:
        out = [torch.as_tensor(comp({"img": b})["img"]) for b in batch]
        return torch.stack(out).clamp_(-1.0, 1.0)

    return apply


def train_classifier(
    x,
    y,
    *,
    spatial_dims: int = 2,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    augment: Callable[[Tensor], Tensor] | None = None,
    width: int = 16,
    weight_decay: float = 1e-4,
    pos_weight: float | str | None = None,
    x_val=None,
    y_val=None,
    num_res_units: int = 1,
    dropout: float | None = 0.1,
    device: str | torch.device = "cpu",
    arch: str = "cnn",
    flip_lr: bool = False,
    lr_milestones: Sequence[int] = (),
    lr_gamma: float = 0.1,
    small_stem: bool | None = None,
) -> nn.Module:
    """Train a binary classifier with BCE-with-logits and Adam.

    Args:
        x: images ``(N, 1, H, W)`` / ``(N, 1, D, H, W)`` float32 in ``[-1, 1]`` (tensor or array).
        y: labels ``(N,)`` in ``{0, 1}``.
        spatial_dims: 2 or 3.
        epochs: passes over the training data.
        batch_size: minibatch size; the last partial batch is kept (a final batch of one
            sample is merged away by dropping it only when BatchNorm would fail).
        lr: Adam learning rate.
        seed: fixes initialisation, dropout and shuffling.
        augment: optional ``fn(batch) -> batch`` applied to each training batch
            (see :func:`monai_augment`).
        width: first-stage channels (see :func:`build_classifier`).
        weight_decay: Adam L2 weight decay.
        pos_weight: ``None`` (unweighted), ``"balanced"`` (``n_neg / n_pos``) or a float,
            passed to ``BCEWithLogitsLoss(pos_weight=...)``.
        x_val, y_val: optional validation set; when given (with both classes present) the
            weights of the epoch with the best validation AUROC are returned (earliest on
            ties). The test set must never be passed here.
        num_res_units, dropout: see :func:`build_classifier`.
        device: torch device for training; the returned model is on CPU.
        arch: classifier architecture, one of :data:`ARCHS` (default ``"cnn"``).
        flip_lr: flip each training image left-right (last axis) with probability 0.5,
            drawn from the seeded generator (applied before ``augment``).
        lr_milestones: epochs after which the learning rate is multiplied by ``lr_gamma``
            (``MultiStepLR``; MedMNIST uses 50 and 75 of 100 epochs). Empty = constant lr.
        lr_gamma: learning-rate factor at each milestone.
        small_stem: ResNet stem choice (see :func:`build_classifier`).

    Returns:
        The trained model (eval mode, CPU) with a ``history`` attribute: a list of per-epoch
        dicts ``{"epoch", "loss", "val_auroc" (or None), "seconds"}`` and ``best_epoch``.
    """
    xt = _as_tensor_images(x, spatial_dims)
    yt = _as_labels(y, len(xt))
    n = len(xt)
    if n == 0:
        raise MedsynthError(None, "classifier got an empty training set")
    use_val = x_val is not None and y_val is not None
    if use_val:
        xv = _as_tensor_images(x_val, spatial_dims, "x_val")
        yv = _as_labels(y_val, len(xv), "y_val").numpy()
        if len(np.unique(yv)) < 2:
            log.warning("validation set has one class only; using the last epoch")
            use_val = False

    n_pos = float(yt.sum())
    if pos_weight == "balanced":
        pw = (n - n_pos) / max(n_pos, 1.0)
    elif pos_weight is None:
        pw = None
    else:
        pw = float(pos_weight)
    dev = torch.device(device)
    loss_fn = nn.BCEWithLogitsLoss(
        pos_weight=None if pw is None else torch.tensor([pw], device=dev)
    )

    history: list[dict] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_classifier(
            spatial_dims,
            tuple(xt.shape[1:]),
            width,
            arch=arch,
            num_res_units=num_res_units,
            dropout=dropout,
            small_stem=small_stem,
        ).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = (
            torch.optim.lr_scheduler.MultiStepLR(opt, [int(m) for m in lr_milestones], lr_gamma)
            if lr_milestones else None
        )
        gen = torch.Generator().manual_seed(seed)
        best_auc, best_state, best_epoch = -np.inf, None, epochs
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for start in range(0, n, batch_size):
                idx = perm[start : start + batch_size]
                if len(idx) < 2 and n > 1:  # BatchNorm cannot train on one sample
                    continue
                xb, yb = xt[idx], yt[idx]
                if flip_lr:
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                    if flip.any():
                        xb = xb.clone()
                        xb[flip] = xb[flip].flip(-1)
                if augment is not None:
                    xb = augment(xb)
                xb, yb = xb.to(dev), yb.to(dev)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb).reshape(-1), yb)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            if sched is not None:
                sched.step()
            rec = {"epoch": epoch, "loss": total / max(seen, 1), "val_auroc": None}
            if use_val:
                auc = _auroc(yv, predict_proba(model, xv, device=dev))
                rec["val_auroc"] = auc
                if auc > best_auc:
                    best_auc, best_epoch = auc, epoch
                    best_state = copy.deepcopy(model.state_dict())
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            log.debug("classifier epoch %d: %s", epoch, rec)
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    model.history = history
    model.best_epoch = best_epoch
    return model


@torch.no_grad()
def predict_proba(
    model: nn.Module, x, *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Probabilities of the positive class.

    Args:
        model: a classifier from :func:`build_classifier` / :func:`train_classifier`.
        x: images ``(N, 1, *S)`` float32 in ``[-1, 1]``.
        batch_size: inference batch size.
        device: device to run on.

    Returns:
        ``(N,)`` float64 numpy array in ``[0, 1]``.
    """
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    out = []
    for start in range(0, len(xt), batch_size):
        logits = model(xt[start : start + batch_size].to(device)).reshape(-1)
        out.append(torch.sigmoid(logits).cpu().double())
    if not out:
        return np.zeros(0, dtype=np.float64)
    return torch.cat(out).numpy()


@torch.no_grad()
def penultimate_features(
    model: nn.Module, x, *, pool: bool = True, batch_size: int = 256
) -> np.ndarray:
    """Features from the last convolutional stage / the input of the linear head.

    Args:
        model: a classifier from :func:`build_classifier` (any :data:`ARCHS`).
        x: images ``(N, 1, *S)`` float32 in ``[-1, 1]``.
        pool: ``cnn``/``monai``: average over spatial positions of the last stage
            (``(N, 8 * width)``). ``False`` returns exactly what the linear head sees:
            ``monai`` the flattened map, ``cnn`` global max ++ mean (``(N, 16 * width)``).
            ResNets always return the head's input (average-pooled, ``(N, 512)``).
        batch_size: inference batch size.

    Returns:
        ``(N, F)`` float32 numpy array.
    """
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    arch = getattr(model, "arch", "monai")
    feats = []
    for start in range(0, len(xt), batch_size):
        xb = xt[start : start + batch_size]
        if arch.startswith("resnet"):
            captured: list[Tensor] = []
            hook = model.fc.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
            try:
                model(xb)
            finally:
                hook.remove()
            h = captured[0].flatten(1)
        elif arch == "cnn" and not pool:
            h = model.pooled(xb)
        else:
            h = model.net(xb)
            h = h.mean(dim=tuple(range(2, h.ndim))) if pool else h.flatten(1)
        feats.append(h.float())
    if not feats:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(feats).numpy()
