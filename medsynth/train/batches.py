"""Where training batches come from: the in-memory images and one shared, checkpointed sampler.

Every process draws the same global batch indices from :class:`BatchSampler` and keeps its
contiguous slice of them (:func:`medsynth.train.distributed.shard`), so the data order is one
seeded state, identical on every rank and resumed exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medsynth.errors import MedsynthError
from medsynth.models.base import Batch
from medsynth.train import distributed as ddp


class BatchSampler:
    """Shuffled epochs over ``n`` items drawn with its own seeded generator; its whole state
    (generator, current permutation, position) is checkpointed for exact resume.

    ``batch_size`` is the global batch, clamped to ``n``.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if n == 0:
            raise MedsynthError("data", "no training images")
        self.n, self.batch_size = n, min(batch_size, n)
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> Tensor:
        """``(batch_size,)`` int64 indices of the next global batch."""
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos: self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, sd: dict) -> None:
        self.gen.set_state(sd["gen"])
        self.perm = sd["perm"].clone()
        self.pos = int(sd["pos"])


class Batches:
    """The training images on the device and this process's slice of every global batch.

    Args:
        images: ``(N, C, *S)`` float32 in [-1, 1], already on the training device.
        labels: ``(N,)`` int64 on the same device, or ``None``.
        sampler: the shared sampler (global batches).
        info: this process's place under torchrun.
        memory_format: layout the batch images are given (channels-last), ``None`` to keep theirs.

    Raises:
        MedsynthError: the global batch does not split evenly over the processes.
    """

    def __init__(self, images: Tensor, labels: Tensor | None, sampler: BatchSampler, info: ddp.DistInfo,
                 memory_format: torch.memory_format | None = None):
        if sampler.batch_size % info.world:
            raise MedsynthError("train.batch_size", f"global batch {sampler.batch_size} is not divisible by the "
                                                    f"{info.world} processes")
        self.images, self.labels, self.sampler, self.info = images, labels, sampler, info
        self.memory_format = memory_format

    @property
    def batch_size(self) -> int:
        """The global batch actually drawn (``train.batch_size`` clamped to the data size)."""
        return self.sampler.batch_size

    @property
    def rank_batch_size(self) -> int:
        """Images of one global batch this process trains on."""
        return self.sampler.batch_size // self.info.world

    def next(self) -> Batch:
        """This process's slice of the next global batch."""
        return self.take(ddp.shard(self.sampler.next(), self.info))

    def take(self, idx: Tensor) -> Batch:
        """The batch of images (and labels) at ``idx`` ``(B,)``."""
        x = self.images[idx]
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        return Batch(x, None if self.labels is None else self.labels[idx])
