"""Data-parallel training with PyTorch's own ``torch.distributed``, started by ``torchrun``.

The one training loop (:mod:`medsynth.train.loop`) runs unchanged under ``torchrun``: it reads
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` from the environment (:func:`init_from_env`), and this
module supplies the few collective pieces it needs:

* **Gradients.** After each phase's ``backward`` the phase's gradients are averaged over ranks
  (:func:`all_reduce_gradients`: one flattened ``all_reduce`` per dtype). We do this instead of
  wrapping sub-modules in ``DistributedDataParallel`` because medsynth's phases update a
  *subset* of modules while running others in the same graph (G's loss runs D; D's loss runs G
  under ``no_grad``/``detach``), several phases share one optimiser and modules (StyleGAN2's lazy
  ``Dreg``/``Greg``, CoGAN's shared layers), and R1/gradient-penalty/path-length terms need double
  backward. DDP would need ``find_unused_parameters=True`` (an extra graph traversal per step)
  plus renamed ``module.`` state_dict keys and wrappers the variants' ``loss`` would have to
  call through; averaging the gradients of exactly the parameters the phase updates is the
  same arithmetic as DDP, keeps the model, its ``state_dict`` and checkpoints identical to
  single-process ones, and cannot miss a module.
* **Statistics that must be global** (ADA's overfitting sums: the tensors of the variant's
  ``cross_rank_sums()``) are summed over ranks (:func:`all_reduce_sum`) right before
  ``on_step_end``, so schedules see the whole global batch.
* **Buffers** (BatchNorm running stats, ADA ``p``, path-length mean, ProGAN stage) are
  broadcast from rank 0 after each step, as DDP's ``broadcast_buffers`` does, so every rank
  holds the same model.
* **BatchNorm** is converted to synchronised batch norm (:func:`convert_sync_batchnorm`):
  ``torch.nn.SyncBatchNorm`` on GPUs; on CPU, where torch's ``SyncBatchNorm`` refuses CPU
  tensors, :class:`CPUSyncBatchNorm` computes the same global statistics through the
  differentiable functional ``all_reduce`` (``torch.distributed._functional_collectives``,
  which ``torch.distributed.nn.functional.all_reduce``'s deprecation points to). Other batch-statistics layers
  (minibatch standard deviation) see the per-rank batch, as in StyleGAN2's reference code.
* **Data**: every rank draws the same global batch indices from the shared, seeded sampler and
  keeps its contiguous slice of ``global_batch / world_size`` (:func:`shard`), the
  ``DistributedSampler`` arithmetic with exact resume for free. Streamed from the disk cache
  (``data.stream``), a rank's reader fetches only that slice of every global batch
  (:class:`medsynth.train.batches.StreamBatches`; ``MEDSYNTH_VERBOSE=2`` logs each fetch).
* **Several machines** (``torchrun --nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``):
  nothing here assumes a shared disk. Rank 0 alone creates and writes the run folder; each node
  may load its own copy of the data and build its own stream cache, and the ranks compare the
  content fingerprints of what they loaded (:func:`check_same`) before training. ``--resume``
  reads the checkpoint on every rank, so it needs the run folder on every node.
  ``tests/test_multinode.py`` runs two agents as two nodes on one machine with no shared folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not started by ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env() -> DistInfo:
    """Initialise the default process group from ``torchrun``'s environment variables.

    Idempotent. Backend ``gloo`` for CPU tensors and, when CUDA is present, ``nccl`` for CUDA
    tensors (``"cpu:gloo,cuda:nccl"``). Returns ``DistInfo()`` (rank 0 of 1) outside torchrun.
    """
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
        import atexit

        atexit.register(_destroy)  # a clean exit: torch warns about (and can stall on) a live group
        log.info("distributed: rank %d of %d (local rank %d), backend %s", rank, world, local, backend)
    return DistInfo(rank=rank, world=world, local_rank=local)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, info: DistInfo):
    """``obj`` from rank 0 on every rank (pickled; small objects only, e.g. a run path)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shard(idx: Tensor, info: DistInfo) -> Tensor:
    """This rank's contiguous slice of the global batch indices ``idx`` ``(B_global,)``."""
    if not info.enabled:
        return idx
    n = idx.shape[0] // info.world
    return idx[info.rank * n: (info.rank + 1) * n]


def check_same(value: str, info: DistInfo, *, path, what: str) -> None:
    """Stop every rank together, with one line, unless all ranks hold the same ``value``.

    For what each node computes from its own disk and must agree on: the content fingerprint of the
    training images (each node may load its own copy of the data and build its own stream cache).

    Args:
        value: this rank's value (a short string, e.g. ``"sha256:..."``).
        info: this process's place under torchrun (a no-op for one process).
        path: what the error names (this rank's data source).
        what: the value in words (``"training images"``).

    Raises:
        MedsynthError: on every rank, naming the first rank that disagrees with rank 0.
    """
    if not info.enabled:
        return
    values = gather_objects(value, info)
    other = [r for r, v in enumerate(values) if v != values[0]]
    if other:
        raise MedsynthError(path, f"{what} differ between the torchrun processes: rank 0 has {values[0]}, rank "
                                  f"{other[0]} {values[other[0]]} (every node must see the same data at the same path)")


def _grouped(tensors: list[Tensor]) -> dict[tuple, list[Tensor]]:
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


def all_reduce_gradients(params: list[nn.Parameter], info: DistInfo) -> None:
    """Average ``p.grad`` over ranks for every parameter in ``params`` that has one (in place).

    Every rank runs the same phase graph, so the same parameters carry gradients on all ranks.
    """
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    for group in _grouped(grads).values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat.div_(info.world)
        off = 0
        for g in group:
            g.copy_(flat[off: off + g.numel()].view_as(g))
            off += g.numel()


def broadcast_tensors(tensors: Iterable[Tensor], info: DistInfo) -> None:
    """Copy rank 0's values of ``tensors`` into every rank's (in place; one broadcast per dtype)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for group in _grouped([t for t in tensors if t.numel()]).values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.broadcast(flat, src=0)
            off = 0
            for t in group:
                t.copy_(flat[off: off + t.numel()].view_as(t))
                off += t.numel()


def all_reduce_sum(tensors: list[Tensor], info: DistInfo) -> None:
    """Sum each of ``tensors`` over ranks, in place (one ``all_reduce`` per dtype; a no-op for an
    empty list or a single process)."""
    if not info.enabled or not tensors:
        return
    with torch.no_grad():
        for group in _grouped(tensors).values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            off = 0
            for t in group:
                t.copy_(flat[off: off + t.numel()].view_as(t))
                off += t.numel()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (one tiny all_reduce)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with statistics over the whole global batch on CPU/gloo (any spatial rank).

    ``torch.nn.SyncBatchNorm`` only accepts GPU tensors; this computes the same thing: per
    channel sum, sum of squares and count are summed over ranks with the differentiable
    functional ``all_reduce`` (its backward is an all_reduce too), so gradients flow to every rank's inputs.
    Same parameters, buffers and ``state_dict`` keys as ``BatchNorm{1,2,3}d``; in eval mode (or
    outside a process group) it is plain batch norm with the running statistics.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        import torch.distributed._functional_collectives as funcol

        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=torch.float32, device=x.device)
        local = torch.cat([xf.sum(dims), xf.pow(2).sum(dims), count])
        tot = funcol.wait_tensor(funcol.all_reduce(local, "sum", dist.group.WORLD))
        c = x.shape[1]
        n = tot[-1]
        mean = tot[:c] / n
        var = (tot[c: 2 * c] / n - mean.pow(2)).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """Replace every ``BatchNorm{1,2,3}d`` in ``module`` by a synchronised one (in place where
    possible). Returns ``(module, number converted)``; parameters and buffers are kept."""
    n = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (nn.SyncBatchNorm, CPUSyncBatchNorm))
            for m in module.modules())
    if n == 0:
        return module, 0
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module), n
    return _to_cpu_sync(module), n


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, CPUSyncBatchNorm)):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child))
    return out
