"""The variant contract: what every GAN in medsynth declares so the one training loop can run it.

A variant lists its *phases* (which sub-modules one optimiser updates, how often, with how many
repeats) and computes a loss per phase. The loop in :mod:`medsynth.train.loop` runs the phases
and never asks which model it is running.

Everything a caller may ask of a variant is declared on :class:`GANVariant`, with a default:
capability flags (``requires_labels``, ``supports_truncation``, ``supports_translation``,
``supports_pairs``, ``supports_d_logits``, ``dp_phase``) and the methods behind them
(``translate``, ``sample_pairs``, ``d_logits``, ``dp_params``, ``cross_rank_sums``). Callers read
the declaration and never probe with ``getattr``/``hasattr``/``inspect``. A variant overrides only
names declared here, and lists any public name of its own in ``extra_api``; the contract test
(``tests/test_contract.py``) fails on anything else, so a misspelt override cannot pass silently.

Conventions every variant follows:
    * **Fakes for a D phase** are made under ``torch.no_grad()`` (no graph for G is built), never
      as ``G(z).detach()``; the G phase makes them with gradients.
    * **Labels** reach the networks only through :meth:`GANVariant.class_labels` (directly or via
      :meth:`GANVariant.conditioning` / :meth:`GANVariant.generate`): ``None`` for an
      unconditional model, checked present for a conditional one. Networks do not check again.
    * **Schedules** read :class:`StepInfo` (the global step and batch), never the size of the
      batch a process is handed.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn

from medsynth.config import check_fields
from medsynth.errors import MedsynthError
from medsynth.models.augment import AugmentSettings, build_augment_pipe, split_params


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


@dataclass(frozen=True)
class StepInfo:
    """The training loop's view of progress, identical on every process (torchrun ranks included).

    Variants read schedules (ProGAN growth, ADA, EMA warm-up, the R1 heuristic) from it, never from
    the size of the batch they are handed, which under torchrun is one rank's slice.

    Attributes:
        step: 0-based index of the current step; in :meth:`GANVariant.on_step_end`, the step just
            finished.
        batch_size: the global batch: images in one phase update, summed over all processes.
        world_size: processes training together (1 without torchrun).
    """

    step: int
    batch_size: int
    world_size: int = 1

    @property
    def images_seen(self) -> int:
        """Images per phase update shown through the end of this step, over all processes:
        ``(step + 1) * batch_size`` (StyleGAN2-ADA's ``cur_nimg`` after the step)."""
        return (int(self.step) + 1) * int(self.batch_size)


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
        """The variant's parameters from ``model.params``: names checked, and each value's type
        against the field's type hint (:func:`medsynth.config.check_fields`). The augmentation
        entries are GANVariant's (checked when it builds the augment pipe).

        Raises:
            MedsynthError: one line naming ``model.params.<name>`` (unknown, or of the wrong type).
        """
        _, values = split_params(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedsynthError(f"model.params ({variant})", f"unknown parameter(s) {unknown}; known: {sorted(known)}")
        check_fields(cls, values, "model.params")
        return cls(**values)


class GANVariant(nn.Module):
    """Base class of all registered GAN variants: the whole contract, with its defaults.

    Subclasses build their networks in ``__init__(cfg)`` (a :class:`~medsynth.config.ModelConfig`)
    and implement :meth:`loss` (and :meth:`phases` / :meth:`generate` where the defaults do not
    fit). Everything needed to resume exactly (EMA weights, schedules) must live in parameters or
    buffers so ``state_dict`` holds it. The usual sub-modules are ``G`` and ``D`` (what the default
    :meth:`generate`, :meth:`adversarial_phases` and :meth:`d_logits` use) and ``G_ema``.
    """

    #: The name the variant is registered under (set by ``@register_model``).
    registry_name: ClassVar[str] = "?"
    #: True for variants that only make sense with labels (class-conditional by definition, or two
    #: domains given as labels 0/1): the constructor refuses ``model.num_classes == 0``.
    requires_labels: ClassVar[bool] = False
    #: Whether :meth:`generate` accepts ``truncation=psi`` (StyleGAN-style truncation trick); set it
    #: and add the keyword to ``generate`` together.
    supports_truncation: ClassVar[bool] = False
    #: Whether :meth:`translate` maps real images between two domains (CycleGAN); set it and
    #: override ``translate`` together.
    supports_translation: ClassVar[bool] = False
    #: Whether :meth:`sample_pairs` draws aligned image pairs (CoGAN); set it and override
    #: ``sample_pairs`` together.
    supports_pairs: ClassVar[bool] = False
    #: Whether :meth:`d_logits` scores images (the discriminator membership attack). False for
    #: variants with no single discriminator of real images at full size (staged, patch or
    #: two-domain critics that have no per-image score of the training images).
    supports_d_logits: ClassVar[bool] = True
    #: The phase made differentially private by ``medsynth/train/dp.py`` (the one phase that reads
    #: real images; every other phase must read only the batch's size and labels), or ``None``:
    #: the variant refuses DP training.
    dp_phase: ClassVar[str | None] = None
    #: Public names the variant defines beyond this contract (its own helpers, e.g. ProGAN's
    #: ``set_stage``). The contract test rejects any other public name a variant class defines.
    extra_api: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.spatial_dims = int(cfg.spatial_dims)
        self.image_shape = (int(cfg.channels),) + (int(cfg.size),) * self.spatial_dims
        self.num_classes = int(cfg.num_classes)
        if self.requires_labels and self.num_classes <= 0:
            raise MedsynthError("model.num_classes", f"{self.registry_name} needs labels (conditional or two-domain "
                                                     "by definition): set model.num_classes > 0")
        #: The EMA copy of the generator (:func:`make_ema`), set by variants that keep one.
        self.G_ema: nn.Module | None = None
        # Augmentation of everything D sees (model.params.augment: none | diffaug | ada); None when off,
        # so state_dicts of unaugmented models are unchanged.
        check_fields(AugmentSettings, split_params(cfg.params)[0], "model.params")
        self.augment_pipe = build_augment_pipe(cfg.params, self.registry_name)

    # ---- the contract: training -----------------------------------------------------------
    def phases(self) -> list[Phase]:
        """Default: :meth:`adversarial_phases` with one D update per step. Override for other
        schedules (``n_critic``, lazy regularisation, more networks)."""
        return self.adversarial_phases()

    def adversarial_phases(self, n_critic: int = 1) -> list[Phase]:
        """The usual schedule: phase ``D`` (``n_critic`` updates, each on a fresh batch) then
        phase ``G``, Adam with the config's ``lr_d``/``lr_g`` and ``betas``."""
        b = tuple(self.cfg.betas)
        return [Phase("D", ("D",), self.cfg.lr_d, b, repeats=int(n_critic)), Phase("G", ("G",), self.cfg.lr_g, b)]

    def loss(self, phase: str, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Scalar loss for ``phase`` on ``batch`` (this process's slice of the global batch) at the
        progress ``info``, and a dict of stats to log (device tensors, detached). Every variant
        overrides it."""
        raise NotImplementedError

    def on_step_end(self, info: StepInfo) -> None:
        """Called by the loop after each step (EMA, schedules) with the step just finished, after
        the loop has summed :meth:`cross_rank_sums` over all processes. Default: ADA ``p`` update
        and EMA update of ``G_ema`` if present (the EMA warm-up follows ``info.step``). Variants with
        schedules of their own override it and call ``super().on_step_end(info)``."""
        step = int(info.step)
        if self.augment_pipe is not None:
            self.augment_pipe.update(step)
        if self.G_ema is not None:
            ema_update(self.G_ema, self.G, ema_beta(self.cfg.ema_beta, step))

    def cross_rank_sums(self) -> list[Tensor]:
        """Tensors the loop sums in place over all processes (``all_reduce`` SUM) right before
        :meth:`on_step_end`; each holds only the step's own contribution, so summing every step is
        exact. Default: the augment pipe's accumulators (ADA's ``sign(D(real))`` sum and count;
        empty list when augmentation is off or not adaptive). Override (extending the default) for
        other statistics that must be global."""
        return [] if self.augment_pipe is None else self.augment_pipe.step_sums()

    # ---- the contract: sampling --------------------------------------------------------------
    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True) -> Tensor:
        """Map latents ``(N, latent_dim)`` (and labels ``(N,)``) to images ``(N, C, *S)`` in [-1, 1].

        Default: :meth:`generator` called as ``G(z, labels)``; variants with other generator
        signatures override it (and accept ``truncation=`` when ``supports_truncation``).
        """
        return self.generator(ema)(z, self.class_labels(labels))

    def generator(self, ema: bool = True) -> nn.Module:
        """The network used for sampling: ``G_ema`` when present and asked for, else ``G``."""
        return self.G_ema if (ema and self.G_ema is not None) else self.G

    def translate(self, images: Tensor, direction: str = "a2b", *, ema: bool = True, batch_size: int = 64) -> Tensor:
        """Translate real images ``(N, C, *S)`` in [-1, 1] between the two domains (``"a2b"`` or
        ``"b2a"``), in eval mode; ``(N, C, *S)`` in [-1, 1]. Only variants with
        ``supports_translation`` override it; the default refuses in one line."""
        raise MedsynthError("model", f"model {self.registry_name!r} does not translate images "
                                     "(supports_translation is False)")

    def sample_pairs(self, n: int, *, generator: torch.Generator | None = None,
                     ema: bool = True) -> tuple[Tensor, Tensor]:
        """``n`` aligned pairs from the same latents: two ``(n, C, *S)`` tensors in [-1, 1]. Only
        variants with ``supports_pairs`` override it; the default refuses in one line."""
        raise MedsynthError("model", f"model {self.registry_name!r} does not make coupled pairs "
                                     "(supports_pairs is False)")

    # ---- the contract: privacy -----------------------------------------------------------------
    def d_logits(self, images: Tensor, labels: Tensor | None) -> Tensor:
        """The discriminator's score of images ``(N, C, *S)`` in [-1, 1] (labels ``(N,)`` for
        conditional models), ``(N,)`` or ``(N, ...)`` (a score map, averaged by the caller), without
        augmentation; the caller sets eval mode and ``no_grad`` (membership inference).

        Default: ``D(images, labels)``. Variants whose D has another signature override it; variants
        without such a D set ``supports_d_logits = False`` and the default raises
        :class:`~medsynth.errors.MedsynthError`.
        """
        if not self.supports_d_logits:
            raise MedsynthError("model", f"{type(self).__name__} has no discriminator of the form D(images, labels); "
                                         "discriminator attack not supported for this variant")
        return self.D(images, self.class_labels(labels))

    @classmethod
    def dp_params(cls, params: dict | None) -> dict:
        """``model.params`` made per-sample clippable for differentially private training of
        ``dp_phase`` (called by ``medsynth/train/dp.py`` only for variants with a ``dp_phase``).

        Default: unchanged (a D without layers that mix the samples of a batch). Variants whose D
        has such layers (BatchNorm, minibatch-stddev) override it and return the changed copy.
        """
        return dict(params or {})

    # ---- labels --------------------------------------------------------------------------------
    def class_labels(self, labels: Tensor | None) -> Tensor | None:
        """The labels this variant's networks get: ``None`` for an unconditional model (whatever
        was passed), ``labels`` ``(N,)`` int64 for a conditional one. The one place the rule
        "a conditional model needs labels" is checked.

        Raises:
            ValueError: the model is conditional (``num_classes > 0``) and ``labels`` is ``None``.
        """
        if self.num_classes <= 0:
            return None
        if labels is None:
            raise ValueError(f"model {self.registry_name!r} is class-conditional: labels are required")
        return labels

    def conditioning(self, batch: Batch) -> tuple[Tensor | None, Tensor]:
        """``(labels (N,) or None for unconditional models, latents (N, latent_dim))`` for one
        loss call on ``batch`` (latents on the batch's device)."""
        return self.class_labels(batch.labels), self.latent(batch.images.shape[0], device=batch.images.device)

    def random_labels(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        """Labels ``(n,)`` used by :meth:`sample` when none are given: uniform classes for a
        conditional model, ``None`` otherwise. Override for another default (CoGAN: domain 1)."""
        if self.num_classes <= 0:
            return None
        return torch.randint(0, self.num_classes, (n,), generator=generator)

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

    # ---- shared helpers for loss ---------------------------------------------------------------
    def d_outputs(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """``self.D`` on real and fake images, both through the augmentation hook; the real
        outputs also feed ADA's overfitting statistic. Returns ``(real_logits, fake_logits)``."""
        return self.d_real(self.D(self.d_input(real), labels)), self.D(self.d_input(fake), labels)

    def adversarial_loss(self, phase: str, batch: Batch, d_loss: Callable[[Tensor, Tensor], Tensor],
                         g_loss: Callable[[Tensor], Tensor], *,
                         probabilities: bool = True) -> tuple[Tensor, dict]:
        """The usual phases ``D`` and ``G`` of a variant whose networks are ``G(z, labels)`` and
        ``D(images, labels)``: ``D`` is :meth:`d_phase_loss` on ``batch`` and fakes made under
        ``no_grad``; ``G`` is ``g_loss(D(d_input(G(z, labels))))`` with stats ``{"loss/G"}``.
        ``d_loss``/``g_loss`` are pure functions of :mod:`medsynth.losses` (BCE, hinge...)."""
        labels, z = self.conditioning(batch)
        if phase == "D":
            with torch.no_grad():
                fake = self.G(z, labels)
            return self.d_phase_loss(batch.images, fake, labels, d_loss, probabilities=probabilities)
        if phase == "G":
            loss = g_loss(self.D(self.d_input(self.G(z, labels)), labels))
            return loss, {"loss/G": loss.detach()}
        raise KeyError(phase)

    def d_phase_loss(self, real: Tensor, fake: Tensor, labels: Tensor | None,
                     d_loss: Callable[[Tensor, Tensor], Tensor], *,
                     probabilities: bool = True) -> tuple[Tensor, dict]:
        """The usual D phase: :meth:`d_outputs` on real images and fakes (made under ``no_grad``),
        ``d_loss(real_logits, fake_logits)`` (a pure function of :mod:`medsynth.losses`) and
        :meth:`d_stats`. Returns ``(loss, stats)``."""
        real_logits, fake_logits = self.d_outputs(real, fake, labels)
        loss = d_loss(real_logits, fake_logits)
        return loss, self.d_stats(loss, real_logits, fake_logits, probabilities=probabilities)

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
        """Parameters of the sub-modules named ``names`` (a phase's ``modules``)."""
        for name in names:
            yield from getattr(self, name).parameters()


def ema_beta(beta: float, step: int) -> float:
    """EMA decay after step ``step`` (0-based, global): ``min(beta, (1 + step) / (10 + step))``.
    The warm-up makes the average follow the generator closely early on, so short runs get a
    useful EMA instead of one dominated by the random initialisation."""
    return min(float(beta), (1.0 + step) / (10.0 + step))


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
