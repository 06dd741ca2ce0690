"""The variant contract: what every GAN in medsynth declares so the one training loop can run it.

A variant lists its *phases* (which sub-modules one optimiser updates, how often, with how many
repeats) and computes a loss per phase. The loop in :mod:`medsynth.train.loop` runs the phases
and never asks which model it is running.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Phase:
    """One optimiser and what it updates.

    Attributes:
        name: phase name, also the optimiser's key in checkpoints (``"G"``, ``"D"``, ...).
        modules: attribute names of the sub-modules whose parameters this phase updates.
        lr: Adam learning rate.
        betas: Adam betas.
        every: run on steps with ``step % every == 0`` (lazy regularisation).
        repeats: updates per step, each on a fresh batch (``n_critic``).
        optimizer: share the Adam optimiser of the phase with this name (lazy regularisation
            phases reuse their main phase's optimiser, as in StyleGAN2); ``None`` = its own.
    """

    name: str
    modules: tuple[str, ...]
    lr: float
    betas: tuple[float, float] = (0.5, 0.999)
    every: int = 1
    repeats: int = 1
    optimizer: str | None = None

    @property
    def opt_key(self) -> str:
        return self.optimizer or self.name


@dataclass
class Batch:
    """A training batch.

    Attributes:
        images: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` float32 in [-1, 1].
        labels: ``(N,)`` int64 class labels, or ``None`` for unconditional training.
    """

    images: Tensor
    labels: Tensor | None = None


@dataclass
class VariantParams:
    """Base class for a variant's own hyper-parameters (``model.params`` in the config)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, variant: str):
        from medsynth.errors import MedsynthError

        from medsynth.train.augment import split_params

        # The engine's common parameters (augmentation of D's input) are handled by GANVariant.
        _, values = split_params(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedsynthError(f"model.params ({variant})", f"unknown parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


class GANVariant(nn.Module):
    """Base class of all registered GAN variants.

    Subclasses build their networks in ``__init__(cfg)`` (a :class:`~medsynth.config.ModelConfig`)
    and implement :meth:`phases`, :meth:`loss` and :meth:`generate`. Everything needed to resume
    exactly (EMA weights, schedules) must live in parameters or buffers so ``state_dict`` holds it.
    """

    registry_name: str = "?"
    #: Whether :meth:`generate` accepts ``truncation=psi`` (StyleGAN-style truncation trick).
    supports_truncation: bool = False

    def __init__(self, cfg):
        super().__init__()
        from medsynth.train.augment import build_augment_pipe

        self.cfg = cfg
        self.spatial_dims = int(cfg.spatial_dims)
        self.image_shape = (int(cfg.channels),) + (int(cfg.size),) * self.spatial_dims
        self.num_classes = int(cfg.num_classes)
        # Augmentation of everything D sees (model.params.augment: none | diffaug | ada); None when off,
        # so state_dicts of unaugmented models are unchanged.
        self.augment_pipe = build_augment_pipe(cfg.params, getattr(self, "registry_name", "?"))

    # ---- the contract -------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        """Default: :meth:`adversarial_phases` with one D update per step."""
        return self.adversarial_phases()

    def adversarial_phases(self, n_critic: int = 1) -> list[Phase]:
        """The usual schedule: phase ``D`` (``n_critic`` updates, each on a fresh batch) then
        phase ``G``, Adam with the config's ``lr_d``/``lr_g`` and ``betas``."""
        b = tuple(self.cfg.betas)
        return [Phase("D", ("D",), self.cfg.lr_d, b, repeats=int(n_critic)), Phase("G", ("G",), self.cfg.lr_g, b)]

    def loss(self, phase: str, batch: Batch, step: int) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss for ``phase`` on ``batch`` and a dict of floats to log."""
        raise NotImplementedError

    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True) -> Tensor:
        """Map latents (and labels) to images ``(N, C, *S)`` in [-1, 1].

        Default: ``self.G_ema`` (if the variant keeps one and ``ema``) else ``self.G``, called as
        ``G(z, labels)``; variants with other generator signatures override it.
        """
        return self.generator(ema)(z, labels)

    def d_outputs(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """``self.D`` on real and fake images, both through the augmentation hook; the real
        outputs also feed ADA's overfitting statistic. Returns ``(real_logits, fake_logits)``."""
        return self.d_real(self.D(self.d_input(real), labels)), self.D(self.d_input(fake), labels)

    def generator(self, ema: bool = True) -> nn.Module:
        """The network used for sampling: the EMA copy when present and asked for, else ``G``."""
        g_ema = getattr(self, "G_ema", None)
        return g_ema if (ema and g_ema is not None) else self.G

    def on_step_end(self, step: int) -> None:
        """Called by the loop after each step (EMA, schedules). Default: ADA ``p`` update and EMA
        update if present; overrides must call ``super().on_step_end(step)``."""
        if self.augment_pipe is not None:
            self.augment_pipe.update(step)
        if getattr(self, "G_ema", None) is not None:
            # Warm-up: early on the average follows the generator closely, so short runs get a
            # useful EMA instead of one dominated by the random initialisation.
            beta = min(float(self.cfg.ema_beta), (1.0 + step) / (10.0 + step))
            ema_update(self.G_ema, self.G, beta)

    # ---- augmentation of D's input (every variant calls these around every D call) --------
    def d_input(self, x: Tensor) -> Tensor:
        """Augment ``(N, C, *S)`` images in [-1, 1] (real or generated) before D sees them.

        Identity when ``model.params.augment`` is ``"none"``; differentiable otherwise, so G's
        gradient flows through the augmentation.
        """
        return x if self.augment_pipe is None else self.augment_pipe(x)

    def d_real(self, logits: Tensor) -> Tensor:
        """Record D's logits ``(N,)`` on (augmented) real images for adaptive augmentation;
        returns them unchanged. Call it in the main D phase only."""
        if self.augment_pipe is not None:
            self.augment_pipe.observe_real(logits)
        return logits

    def augment_stats(self) -> dict[str, float]:
        """``{"aug/p": p[, "aug/rt": r_t]}`` to merge into D's loss stats (empty when off)."""
        return {} if self.augment_pipe is None else self.augment_pipe.stats()

    # ---- shared helpers ----------------------------------------------------------------
    def conditioning(self, batch: Batch) -> tuple[Tensor | None, Tensor]:
        """``(labels (N,) or None for unconditional models, latents (N, latent_dim))`` for one
        loss call on ``batch`` (latents on the batch's device)."""
        labels = batch.labels if self.num_classes > 0 else None
        return labels, self.latent(batch.images.shape[0], device=batch.images.device)

    def d_stats(self, loss: Tensor, real_logits: Tensor, fake_logits: Tensor, *,
                probabilities: bool = True) -> dict:
        """Stats of a D phase as device tensors: its loss, D's mean output on real and on fake
        images (sigmoid probabilities for logistic losses, raw scores for hinge losses when
        ``probabilities`` is False) and the augmentation stats."""
        out = (torch.sigmoid if probabilities else (lambda t: t))
        return {"loss/D": loss.detach(), "D(real)": out(real_logits).mean().detach(),
                "D(fake)": out(fake_logits).mean().detach(), **self.augment_stats()}

    def latent(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Standard normal latents ``(n, latent_dim)``."""
        return torch.randn(n, self.cfg.latent_dim, generator=generator, device=device)

    def random_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        if self.num_classes <= 0:
            return None
        return torch.randint(0, self.num_classes, (n,), generator=generator)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        labels: Tensor | int | None = None,
        generator: torch.Generator | None = None,
        ema: bool = True,
        batch_size: int = 256,
        truncation: float | None = None,
    ) -> Tensor:
        """Draw ``n`` images ``(n, C, *S)`` in [-1, 1], in eval mode, from the EMA generator if any.

        Args:
            labels: ``None`` (random classes when conditional), an int class for all, or ``(n,)``.
            generator: a seeded ``torch.Generator`` makes the output reproducible.
            truncation: psi in [0, 1] for variants with ``supports_truncation`` (``None``/1 = off;
                0 = the image of the average latent). Other variants reject anything but ``None``/1.
        """
        gen_kw = {}
        if truncation is not None and float(truncation) != 1.0:
            if not self.supports_truncation:
                raise ValueError(f"model {self.registry_name!r} does not support truncation")
            gen_kw["truncation"] = float(truncation)
        was_training = self.training
        self.eval()
        try:
            if self.num_classes > 0:
                if labels is None:
                    labels = self.random_labels(n, generator)
                elif isinstance(labels, int):
                    if not 0 <= labels < self.num_classes:
                        raise ValueError(f"class {labels} outside 0..{self.num_classes - 1}")
                    labels = torch.full((n,), labels, dtype=torch.long)
            else:
                labels = None
            z = self.latent(n, generator)
            out = []
            for i in range(0, n, batch_size):
                lab = None if labels is None else labels[i : i + batch_size]
                out.append(self.generate(z[i : i + batch_size], lab, ema=ema, **gen_kw))
            return torch.cat(out).clamp(-1, 1) if out else torch.empty((0,) + self.image_shape)
        finally:
            self.train(was_training)

    def sub_modules(self, names: tuple[str, ...]) -> Iterator[nn.Parameter]:
        for name in names:
            yield from getattr(self, name).parameters()


def make_ema(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` for the exponential moving average of its weights."""
    ema = copy.deepcopy(module)
    ema.requires_grad_(False)
    ema.eval()
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema <- beta * ema + (1 - beta) * model`` for parameters; buffers copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - beta)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
