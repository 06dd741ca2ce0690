"""One update of one phase: the single path every update takes, compiled or eager.

An update draws its batch (through the privacy hooks), runs the variant's ``loss`` under the
run's autocast, checks the loss is finite, runs backward (through the fp16 grad scaler when on),
averages the phase's gradients over processes and steps the phase's optimiser.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, GANVariant, Phase, StepInfo
from medsynth.train import distributed as ddp
from medsynth.train.stats import Tally

log = logging.getLogger(__name__)


class LossGuard:
    """Stops the run when a loss becomes non-finite, and keeps the last checkpoint a good one.

    On CPU every loss is checked when computed, before its backward (reading a CPU scalar waits
    for nothing): a bad loss checkpoints the state from before that update, then raises. On other
    devices a per-update read would be a host sync, so a flag on the device collects every
    update's check and is read at each tick and before each checkpoint (:meth:`verify`); a bad
    flag raises without writing, so the previous checkpoint stays the last good state.

    Args:
        run_dir: the run directory (named in the error).
        checkpointer: the run's :class:`~medsynth.train.checkpointer.Checkpointer`.
        info: this process's place under torchrun (all ranks stop together).
        device: the training device.
    """

    def __init__(self, run_dir: Path, checkpointer, info: ddp.DistInfo, device: torch.device):
        self.run_dir, self.checkpointer, self.info, self.device = Path(run_dir), checkpointer, info, device
        self.each_update = device.type == "cpu"
        self.bad = torch.zeros((), dtype=torch.bool, device=device)

    def check(self, loss: Tensor, ph: Phase, step: int) -> None:
        """Check the scalar ``loss`` of one update of ``ph`` at ``step``, before its backward."""
        if not self.each_update:
            self.bad |= ~torch.isfinite(loss.detach())
        elif ddp.any_rank(not math.isfinite(loss.item()), self.info, self.device):
            self.checkpointer.save(step)
            raise MedsynthError(self.run_dir, f"loss of phase {ph.name} became {loss.item()} at step {step}; "
                                              "last good state is in checkpoints/last.pt (try a lower learning rate)")

    def verify(self, step: int) -> None:
        """Raise if a loss became non-finite since the last check (devices other than CPU)."""
        if not self.each_update and ddp.any_rank(bool(self.bad), self.info, self.device):
            raise MedsynthError(self.run_dir, f"a loss became non-finite before step {step}; the last good state is "
                                              "the previous checkpoint in checkpoints/last.pt (try a lower learning "
                                              "rate or train.amp=off)")

    def checkpoint(self, step: int) -> None:
        """Checkpoint the state after ``step`` steps if every loss so far was finite (else raise)."""
        self.verify(step)
        self.checkpointer.save(step)


def _unique(params) -> list[nn.Parameter]:
    return list({id(p): p for p in params}.values())


class PhaseUpdater:
    """Runs the updates of the variant's phases, compiled or eager, through one path.

    Only the running phase's parameters require grad during its updates. With ``train.compile``
    the modules run compiled until a phase fails so (e.g. double backward for R1 or a gradient
    penalty): that phase is logged and runs eagerly from then on, through the same path.

    Args:
        model: the variant.
        phases: its phases.
        opts: the optimisers by key.
        speed: the resolved :class:`~medsynth.train.speed.Speed` (autocast, compile).
        scaler: the grad scaler (a no-op unless fp16).
        data: the run's :class:`~medsynth.train.batches.Batches`.
        privacy: the privacy hooks (:class:`~medsynth.train.dp.PrivacyHooks`).
        guard: the run's :class:`LossGuard`.
        info: this process's place under torchrun.

    Attributes:
        tally: the stats and images of the updates since the last tick.
    """

    def __init__(self, model: GANVariant, phases: list[Phase], opts: dict[str, torch.optim.Optimizer], speed,
                 scaler: torch.amp.GradScaler, data, privacy, guard: LossGuard, info: ddp.DistInfo):
        self.model, self.opts, self.speed, self.scaler = model, opts, speed, scaler
        self.data, self.privacy, self.guard, self.info = data, privacy, guard, info
        self.params = {ph.name: _unique(model.sub_modules(ph.modules)) for ph in phases}
        self.trainable = _unique(p for ph in phases for p in self.params[ph.name])
        own = {name: {id(p) for p in ps} for name, ps in self.params.items()}
        self.frozen = {name: [p for p in self.trainable if id(p) not in ids] for name, ids in own.items()}
        self.compiled = {ph.name for ph in phases} if speed.compile else set()  # phases still running compiled
        self.autocast = speed.autocast()  # one context object, entered once per update
        self.tally = Tally()

    def run_phase(self, ph: Phase, info: StepInfo) -> None:
        """The ``ph.repeats`` updates of ``ph`` in the step ``info``."""
        for p in self.params[ph.name]:
            p.requires_grad_(True)
        for p in self.frozen[ph.name]:
            p.requires_grad_(False)
        for _ in range(ph.repeats):
            self.update(ph, info)

    def update(self, ph: Phase, info: StepInfo) -> None:
        """One update of ``ph``: batch, loss, backward, gradient all-reduce, optimiser step."""
        if not self.privacy.begin(ph):  # an empty Poisson batch: the noise-only update is made
            return
        batch = self.privacy.batch(ph, self.data)
        stats = self._loss_backward(ph, batch, info)
        ddp.all_reduce_gradients(self.params[ph.name], self.info)
        self.scaler.step(self.opts[ph.opt_key])
        self.scaler.update()
        self.privacy.after_update(ph)
        self.tally.add(stats, self.data.rank_batch_size)

    def end_step(self) -> None:
        """After the step's last phase: every parameter requires grad again."""
        for p in self.trainable:
            p.requires_grad_(True)
        self.privacy.end_step()

    def _loss_backward(self, ph: Phase, batch: Batch, info: StepInfo) -> dict:
        if ph.name in self.compiled:
            try:
                return self._forward_backward(ph, batch, info)
            except MedsynthError:
                raise
            except Exception as exc:  # e.g. double backward (R1, gradient penalty) under compile
                self.compiled.discard(ph.name)
                log.warning("compile: phase %s failed compiled (%s: %s); it runs eagerly from now on",
                            ph.name, type(exc).__name__, (str(exc).splitlines() or [''])[0][:160])
        with torch.compiler.set_stance("force_eager") if self.speed.compile else contextlib.nullcontext():
            return self._forward_backward(ph, batch, info)

    def _forward_backward(self, ph: Phase, batch: Batch, info: StepInfo) -> dict:
        with self.autocast:
            loss, stats = self.model.loss(ph.name, batch, info)
        self.opts[ph.opt_key].zero_grad(set_to_none=True)
        self.guard.check(loss, ph, info.step)
        self.scaler.scale(loss).backward()
        return stats
