"""Differentially private training of the discriminator (DP-SGD with opacus).

Switched on by ``train.dp_noise_multiplier`` (sigma) or ``train.dp_epsilon`` (a target epsilon
after ``train.steps``; sigma is solved by the accountant). Needs ``pip install 'medsynth-gan[dp]'``.

What is private, and why this design:

* Only the variant's ``dp_phase`` (DCGAN/CGAN: ``"D"``, a class attribute; variants without it
  refuse DP) reads real images. Its update is DP-SGD (Abadi et al. 2016): the real batch is
  **Poisson-sampled** (each training image independently with rate ``q = batch_size / N``, from
  a generator checkpointed here), opacus's ``GradSampleModule`` hooks on the phase's modules give
  per-sample gradients, and opacus's ``DPOptimizer`` (wrapping the phase's Adam) clips each to
  ``dp_max_grad_norm``, adds Gaussian noise ``sigma * C`` to the sum and divides by the expected
  batch size. D is called on the real batch and on an equally large fake batch in one backward:
  opacus sums the two forward passes per sample index, so the clipped unit is ``(real_i, fake_i)``;
  fakes come from G, which is itself a post-processing of earlier private D updates.
* Every other phase (G) gets a *public* batch: zero images of the expected batch size (the
  variant promises, by declaring ``dp_phase``, that they read only its size) and labels drawn
  uniformly from the classes, so G sees the data only through D (post-processing property).
* The variant's ``dp_params(params)`` makes D per-sample clippable (DCGAN: BatchNorm -> GroupNorm,
  no minibatch-stddev), logged as a warning; the config written to the run holds the params used.
* opacus's accountant (RDP by default, PRV on request) is stepped once per private update with
  ``(sigma, q)``; its history, the Poisson and label generators and epsilon are checkpointed, so
  a resumed run continues the accountant exactly. The global RNG (noise) is checkpointed by the loop.
* The epsilon is logged in every stats line (``dp/epsilon``) and written to ``privacy.json``.

Limits, stated in ``privacy.json``: the guarantee covers the model weights (hence samples) only;
the training stats (``loss/D``, ``D(real)``) and any grids of D's outputs are computed on the
private batch and are not privatised. One process only (no torchrun), float32 (no autocast),
contiguous (not channels-last) weights, no ``torch.compile``. Empty Poisson batches (probability
``(1 - q)^N``) are a noise-only update.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
from pathlib import Path

import torch
from torch import Tensor

from medsynth.atomic import write_text
from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

PRIVACY_FILE = "privacy.json"
INSTALL = "pip install 'medsynth-gan[dp]'"


def dp_requested(tc) -> bool:
    """Whether ``train`` asks for differentially private training."""
    return tc.dp_noise_multiplier is not None or tc.dp_epsilon is not None


def prepare_config(cfg):
    """Check a DP request and return ``cfg`` with the variant's DP-compatible ``model.params``.

    Raises:
        MedsynthError: opacus missing, the variant has no ``dp_phase``, or bad DP settings.
    """
    from medsynth.models.registry import get_model

    tc = cfg.train
    where = "train.dp_noise_multiplier" if tc.dp_noise_multiplier is not None else "train.dp_epsilon"
    try:
        importlib.import_module("opacus")
    except ImportError:
        raise MedsynthError(where, f"differentially private training needs opacus: {INSTALL}") from None
    cls = get_model(cfg.model.name)
    if cls.dp_phase is None:
        supported = sorted(n for n in _registered() if get_model(n).dp_phase is not None)
        raise MedsynthError(where, f"model {cfg.model.name!r} does not support differentially private training "
                                   f"(supported: {', '.join(supported)})")
    if tc.dp_noise_multiplier is not None and tc.dp_epsilon is not None:
        raise MedsynthError("train.dp_epsilon", "set dp_epsilon or dp_noise_multiplier, not both")
    if tc.dp_noise_multiplier is not None and not float(tc.dp_noise_multiplier) >= 0:
        raise MedsynthError("train.dp_noise_multiplier", f"must be >= 0, got {tc.dp_noise_multiplier}")
    if tc.dp_epsilon is not None and not float(tc.dp_epsilon) > 0:
        raise MedsynthError("train.dp_epsilon", f"must be > 0, got {tc.dp_epsilon}")
    if not float(tc.dp_max_grad_norm) > 0:
        raise MedsynthError("train.dp_max_grad_norm", f"must be > 0, got {tc.dp_max_grad_norm}")
    if tc.dp_delta is not None and not 0 < float(tc.dp_delta) < 1:
        raise MedsynthError("train.dp_delta", f"must be in (0, 1), got {tc.dp_delta}")
    if tc.dp_accountant not in ("rdp", "prv"):
        raise MedsynthError("train.dp_accountant", f"must be rdp or prv, got {tc.dp_accountant!r}")
    if str(tc.amp) not in ("auto", "off"):
        raise MedsynthError("train.amp", "differentially private training runs in float32: set train.amp=off")
    if tc.compile is True:
        raise MedsynthError("train.compile", "opacus's per-sample gradient hooks do not run compiled: set compile=false")
    params = cls.dp_params(cfg.model.params)
    changed = {k: v for k, v in params.items() if (cfg.model.params or {}).get(k, "unset") != v}
    if changed:
        log.warning("dp: model.params changed so that D's gradients are per-sample (recorded in config.yaml): %s",
                    changed)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, params=params))


def _registered() -> list[str]:
    from medsynth.models.registry import list_models

    return list_models()


def speed_for_dp(speed):
    """``speed`` with autocast, channels-last and compile off (logged): per-sample gradients run
    in float32, eagerly, on contiguous weights. Measured: with channels-last conv weights opacus
    1.6's per-sample gradients of multi-channel convs came out wrong (relative error 1.0 against
    autograd), and D stopped learning even without noise."""
    notes = list(speed.notes)
    if speed.amp != "off":
        notes.append(f"amp {speed.amp} -> off: differentially private training runs in float32")
    if speed.channels_last:
        notes.append("channels_last -> off: opacus's per-sample conv gradients are wrong for channels-last weights")
    if speed.compile:
        notes.append("compile -> off: opacus's per-sample gradient hooks run eagerly")
    return dataclasses.replace(speed, amp="off", channels_last=False, compile=False, notes=tuple(notes))


class PrivacyHooks:
    """What the training loop asks of differential privacy, at each point of a step.

    This base class is non-private training: every hook is a no-op and every phase draws its
    batch from the shared sampler. :class:`DPTraining` overrides each hook. The loop calls them
    unconditionally, so it holds no "is DP on?" branch.
    """

    def begin(self, ph) -> bool:
        """Before one update of phase ``ph``. ``False``: the update was made here (DP: a
        noise-only update on an empty Poisson batch) and the loop skips its forward/backward."""
        return True

    def batch(self, ph, data):
        """The :class:`~medsynth.models.base.Batch` of one update of ``ph``, drawn from
        ``data`` (a :class:`medsynth.train.batches.Batches`)."""
        return data.next()

    def after_update(self, ph) -> None:
        """After the optimiser step of one update of ``ph``."""

    def end_step(self) -> None:
        """After the last phase of a step."""

    def stats(self) -> dict[str, float]:
        """Entries for the stats line."""
        return {}

    def checkpoint(self, run_dir: str | Path) -> dict:
        """Entries for the checkpoint (rank 0, at each checkpoint; may write files into ``run_dir``)."""
        return {}

    def restore(self, ck: dict) -> None:
        """Continue from the checkpoint ``ck``."""


class DPTraining(PrivacyHooks):
    """The private phase's sampler, per-sample gradients, DP optimiser and accountant.

    Args:
        tc: the ``TrainConfig`` (DP fields checked by :func:`prepare_config`).
        model: the variant (its ``dp_phase`` names the private phase).
        phases: the variant's phases.
        opts: the loop's optimisers by key; the private phase's one is replaced by a ``DPOptimizer``.
        n_train: number of training images ``N``.
        batch_size: expected batch size ``q * N`` of the private phase (``train.batch_size`` capped at N).
        image_shape: ``(C, *S)`` of the images (for the public batches of the other phases).
        device: training device.
    """

    def __init__(self, tc, model, phases, opts: dict, n_train: int, batch_size: int, image_shape, device):
        import opacus
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        self.phase = next((ph for ph in phases if ph.name == model.dp_phase), None)
        if self.phase is None:
            raise MedsynthError("train.dp_noise_multiplier", f"the model has no phase {model.dp_phase!r}")
        if any(q.opt_key == self.phase.opt_key for q in phases if q is not self.phase):
            raise MedsynthError("train.dp_noise_multiplier", f"phase {self.phase.name} shares its optimiser: "
                                                             "DP needs it to be the private phase's own")
        self.n, self.batch_size = int(n_train), int(batch_size)
        self.q = self.batch_size / self.n
        self.image_shape, self.device = tuple(image_shape), device
        self.num_classes = int(model.num_classes)
        self.max_grad_norm = float(tc.dp_max_grad_norm)
        self.delta = float(tc.dp_delta) if tc.dp_delta is not None else 1.0 / self.n
        self.accountant_name = tc.dp_accountant
        ph = self.phase
        self.planned_updates = math.ceil(int(tc.steps) / ph.every) * ph.repeats
        self.target_epsilon = None if tc.dp_epsilon is None else float(tc.dp_epsilon)
        if self.target_epsilon is not None:
            self.sigma = float(get_noise_multiplier(target_epsilon=self.target_epsilon, target_delta=self.delta,
                                                    sample_rate=self.q, steps=self.planned_updates,
                                                    accountant=self.accountant_name))
            log.info("dp: noise multiplier %.4f reaches epsilon %.3g at delta %.3g after %d updates",
                     self.sigma, self.target_epsilon, self.delta, self.planned_updates)
        else:
            self.sigma = float(tc.dp_noise_multiplier)
        if self.sigma == 0:
            log.warning("dp: noise multiplier 0: per-sample clipping only, no privacy (epsilon is infinite)")
        # Hooks on the modules themselves: the variant keeps calling self.D as before and its
        # state_dict keys are unchanged. strict=True rejects modules with buffers (BatchNorm).
        self.gsm = []
        for name in ph.modules:
            # In-place activations would modify the outputs opacus's backward hooks wrap (a torch
            # error): out of place gives the same values, at the cost of one activation copy.
            for m in getattr(model, name).modules():
                if getattr(m, "inplace", False) is True:
                    m.inplace = False
            try:
                self.gsm.append(GradSampleModule(getattr(model, name), loss_reduction="mean", strict=True))
            except NotImplementedError as exc:
                raise MedsynthError(f"model.{name}", f"not per-sample clippable ({(str(exc).splitlines() or [''])[0]})") from None
        for g in self.gsm:
            g.disable_hooks()
        self.optimizer = DPOptimizer(opts[ph.opt_key], noise_multiplier=self.sigma, max_grad_norm=self.max_grad_norm,
                                     expected_batch_size=self.batch_size, loss_reduction="mean")
        opts[ph.opt_key] = self.optimizer
        self.accountant = create_accountant(mechanism=self.accountant_name)
        self.opacus_version = opacus.__version__
        self.gen = torch.Generator().manual_seed(int(tc.seed) + 7919)
        self.label_gen = torch.Generator().manual_seed(int(tc.seed) + 7927)
        self.updates = 0
        self._idx: Tensor | None = None
        log.info("dp: DP-SGD on phase %s (sigma %.4f, C %.3g, Poisson rate %.4g = %d/%d, delta %.3g, %s accountant)",
                 ph.name, self.sigma, self.max_grad_norm, self.q, self.batch_size, self.n, self.delta,
                 self.accountant_name)

    # ---- the loop's hooks (PrivacyHooks) -------------------------------------------------
    def is_private(self, ph) -> bool:
        return ph.name == self.phase.name

    def begin(self, ph) -> bool:
        """Before one update of ``ph``: per-sample hooks on for the private phase only, Poisson draw.

        Returns:
            ``False`` when the Poisson batch came out empty: a noise-only update was made and
            accounted, and the loop skips this update's forward/backward.
        """
        private = self.is_private(ph)
        for g in self.gsm:
            (g.enable_hooks if private else g.disable_hooks)()
        if not private:
            return True
        self._idx = torch.nonzero(torch.rand(self.n, generator=self.gen) < self.q).squeeze(1)
        if self._idx.numel():
            return True
        log.warning("dp: empty Poisson batch (probability (1-q)^N): noise-only update")
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.optimizer.params:
            p.grad_sample = torch.zeros((0,) + tuple(p.shape), dtype=p.dtype, device=p.device)
        self.optimizer.step()
        self.after_update(ph)
        return False

    def batch(self, ph, data):
        """The private phase: the images of the current Poisson draw from ``data``; any other
        phase: :meth:`public_batch` (it never sees the data)."""
        return data.take(self._idx) if self.is_private(ph) else self.public_batch()

    def public_batch(self):
        """A batch for non-private phases: ``(batch_size, C, *S)`` zeros, uniform labels (or None)."""
        from medsynth.models.base import Batch

        x = torch.zeros((self.batch_size,) + self.image_shape, device=self.device)
        y = None if self.num_classes <= 0 else torch.randint(
            0, self.num_classes, (self.batch_size,), generator=self.label_gen).to(self.device)
        return Batch(x, y)

    def after_update(self, ph) -> None:
        """After the optimiser step of ``ph``: account one private update."""
        if self.is_private(ph):
            self.accountant.step(noise_multiplier=self.sigma, sample_rate=self.q)
            self.updates += 1

    def end_step(self) -> None:
        for g in self.gsm:
            g.disable_hooks()

    # ---- accounting, persistence ---------------------------------------------------------
    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (0 before the first update; inf without noise)."""
        if self.updates == 0:
            return 0.0
        if self.sigma == 0:
            return math.inf
        return float(self.accountant.get_epsilon(delta=self.delta))

    def stats(self) -> dict[str, float]:
        """``{"dp/epsilon": eps}`` for the stats line; empty without noise (infinite epsilon is not JSON)."""
        eps = self.epsilon()
        return {"dp/epsilon": eps} if math.isfinite(eps) else {}

    def summary(self) -> dict:
        """JSON-ready record of the guarantee (``privacy.json``, the checkpoint, ``medsynth evaluate``)."""
        eps = self.epsilon()
        return {
            "mechanism": f"DP-SGD on phase {self.phase.name} (opacus {self.opacus_version} GradSampleModule + "
                         "DPOptimizer, Poisson sampling)",
            "epsilon": eps if math.isfinite(eps) else None, "delta": self.delta,
            "noise_multiplier": self.sigma, "max_grad_norm": self.max_grad_norm, "sample_rate": self.q,
            "expected_batch_size": self.batch_size, "n_train": self.n, "private_updates": self.updates,
            "planned_updates": self.planned_updates, "target_epsilon": self.target_epsilon,
            "accountant": self.accountant_name,
            "scope": "model weights and samples; training stats (stats.jsonl) are computed on private "
                     "batches and are not privatised",
        }

    def state_dict(self) -> dict:
        hist = [[float(s), float(q), int(n)] for s, q, n in self.accountant.history]
        return {"history": hist, "gen": self.gen.get_state(), "label_gen": self.label_gen.get_state(),
                "updates": self.updates, "sigma": self.sigma, "summary": self.summary()}

    def load_state_dict(self, sd: dict) -> None:
        if abs(float(sd["sigma"]) - self.sigma) > 1e-9 * max(1.0, self.sigma):
            raise MedsynthError("train.dp_noise_multiplier", f"checkpoint used noise multiplier {sd['sigma']}, "
                                                             f"this run {self.sigma}")
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in sd["history"]]
        self.gen.set_state(sd["gen"])
        self.label_gen.set_state(sd["label_gen"])
        self.updates = int(sd["updates"])

    def write(self, run_dir: str | Path) -> None:
        """Write ``run_dir/privacy.json`` atomically."""
        write_text(Path(run_dir) / PRIVACY_FILE, json.dumps(self.summary(), indent=2) + "\n")

    def checkpoint(self, run_dir: str | Path) -> dict:
        """``{"dp": state}`` for the checkpoint; writes ``privacy.json`` beside it."""
        self.write(run_dir)
        return {"dp": self.state_dict()}

    def restore(self, ck: dict) -> None:
        self.load_state_dict(ck["dp"])
