"""Where training batches come from: the images (in memory, or streamed from the disk cache) and
one shared, checkpointed sampler.

Every process draws the same global batch indices from :class:`BatchSampler` and keeps its
contiguous slice of them (:func:`medsynth.train.distributed.shard`), so the data order is one
seeded state, identical on every rank and resumed exactly.

:class:`Batches` indexes the images held on the device. :class:`StreamBatches` is its streaming
counterpart (same interface, same images in the same order, bit for bit) over
:class:`medsynth.data.stream.StreamedImages`: a ``DataLoader`` with worker processes reads this
rank's slice of each coming global batch from the cache while the model trains. What it reads is
decided by a copy of the sampler taken when the first batch is asked for (after a resume has
restored the sampler), and each batch it hands over is checked against the indices the shared
sampler itself draws at that moment: the checkpointed sampler state stays the one of the batches
actually trained on, however far the workers have read ahead, so ``--resume`` stays exact.
"""

from __future__ import annotations

import logging
import os
import time

import torch
from torch import Tensor

from medsynth.data.stream import StreamedImages
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch
from medsynth.train import distributed as ddp

log = logging.getLogger(__name__)


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

    def copy(self) -> "BatchSampler":
        """An independent sampler in this one's state: it draws the same batches from here on."""
        other = BatchSampler.__new__(BatchSampler)
        other.n, other.batch_size = self.n, self.batch_size
        other.gen = torch.Generator()
        other.gen.set_state(self.gen.get_state())
        other.perm, other.pos = self.perm.clone(), self.pos
        return other


def _check_divisible(sampler: BatchSampler, info: ddp.DistInfo) -> None:
    if sampler.batch_size % info.world:
        raise MedsynthError("train.batch_size", f"global batch {sampler.batch_size} is not divisible by the "
                                                f"{info.world} processes")


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
        _check_divisible(sampler, info)
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

    def close(self) -> None:
        """Nothing to release (the streaming counterpart stops its workers)."""


def loader_workers(setting: int | None, device: torch.device) -> int:
    """``data.workers``: the setting, or by default 0 on the CPU (each batch read in the training
    process: reading 64 rows of the cache costs ~1 ms, less than handing a batch over from a worker
    process, which also competes with the training threads for the cores; measured on 2 cores,
    DCGAN 64² batch 64: data wait 1.5 ms per step with 0 workers, 6.6 ms with 1,
    ``pipelines/benches/streaming_memory.py --workers``) and 2 with CUDA (where the step does not
    use the CPU cores the readers need)."""
    if setting is not None:
        return int(setting)
    return 2 if torch.device(device).type == "cuda" else 0


class _RankIndices:
    """What the ``DataLoader`` fetches: this rank's slice of every global batch a copy of the shared
    sampler draws from its state at creation on (endless; iterated in the training process)."""

    def __init__(self, sampler: BatchSampler, info: ddp.DistInfo):
        self.sampler, self.info = sampler.copy(), info

    def __iter__(self):
        while True:
            yield ddp.shard(self.sampler.next(), self.info).tolist()


class _Rows(torch.utils.data.Dataset):
    """The streamed images as a map-style dataset that fetches a whole batch at once.

    Each fetch is logged at DEBUG level (``stream: rank R of W read images [i, j, ...]``, the set's
    indices, in the process that reads them): the record of which images a torchrun rank read
    (``tests/test_multinode.py`` checks each reads only its slice of every global batch)."""

    def __init__(self, images: StreamedImages, info: ddp.DistInfo = ddp.DistInfo()):
        self.images, self.info = images, info

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        """``(indices (B,) int64, images (B, C, *S) float32)`` of one batch.

        In a worker process the batch is read straight into shared memory (as ``default_collate``
        does): a batch made in ordinary memory would be copied there on its way to the training
        process, and those short-lived buffers grew the worker's resident memory steadily (measured
        with batches of 64 images at 64²: 300 -> 370 MiB over 400 batches; read into shared memory
        it stayed at 302 MiB, most of it pages shared with the training process it was forked from)."""
        ii = torch.as_tensor(idx, dtype=torch.int64)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stream: rank %d of %d read images %s", self.info.rank, self.info.world, ii.tolist())
        out = torch.empty((len(ii), *self.images.row_shape), dtype=torch.float32)
        if torch.utils.data.get_worker_info() is not None:
            out.share_memory_()
        return ii, self.images.read(ii, out=out)


def _as_fetched(batch):
    """The DataLoader's collate step: ``_Rows.__getitems__`` already made the batch."""
    return batch


def _drop_inherited_locks(worker_id: int = 0) -> None:
    """A reader process's first act (``worker_init_fn``): close the descriptors of locked files it
    inherited from the training process by ``fork``, above all the run's writer lock
    (:func:`medsynth.runs.run_lock`). A ``flock`` lasts while any descriptor of it is open, so a
    reader outliving a killed training process (it notices within seconds) would otherwise keep the
    run locked and refuse ``train --resume`` meanwhile. Closing a copy does not release the lock the
    training process holds. Linux only (``/proc``); elsewhere workers are spawned and inherit nothing."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in fds:
        try:
            with open(f"/proc/self/fdinfo/{name}", encoding="ascii", errors="replace") as fh:
                locked = any(line.startswith("lock:") for line in fh)
            if locked:
                os.close(int(name))
        except (OSError, ValueError):
            continue


class StreamBatches(Batches):
    """:class:`Batches` over images streamed from the disk cache: the same global batches from the
    same sampler, this process's slice of each, read ahead by ``DataLoader`` workers.

    Args:
        images: the :class:`~medsynth.data.stream.StreamedImages` ``(N, C, *S)`` in [-1, 1].
        labels: ``(N,)`` int64 on the training device, or ``None``.
        sampler: the shared sampler (global batches; checkpointed).
        info: this process's place under torchrun.
        memory_format: layout the batch images are given (channels-last), ``None`` to keep theirs.
        device: the training device (batches are pinned and copied asynchronously on CUDA).
        workers: reader processes (0: read each batch in this process when it is asked for).
        prefetch: batches each worker reads ahead.

    Attributes:
        wait_seconds: seconds spent in :meth:`next` and :meth:`take` (waiting for reads, copies).
        served: batches handed out.

    Raises:
        MedsynthError: the global batch does not split evenly over the processes.
    """

    def __init__(self, images: StreamedImages, labels: Tensor | None, sampler: BatchSampler, info: ddp.DistInfo,
                 memory_format: torch.memory_format | None = None, *, device: torch.device | str = "cpu",
                 workers: int = 1, prefetch: int = 2):
        super().__init__(images, labels, sampler, info, memory_format)
        self.device = torch.device(device)
        self.workers, self.prefetch = int(workers), int(prefetch)
        self._batches = None
        self.wait_seconds, self.served = 0.0, 0

    def _start(self):
        """The loader's endless iterator, reading from the sampler's present state on."""
        pin = self.device.type == "cuda"
        # its own generator: a DataLoader iterator draws its workers' base seed from the generator it
        # is given, else from torch's global one, which would shift the run's noise at every (re)start
        loader = torch.utils.data.DataLoader(
            _Rows(self.images, self.info), batch_sampler=_RankIndices(self.sampler, self.info),
            num_workers=self.workers,
            collate_fn=_as_fetched, pin_memory=pin, prefetch_factor=self.prefetch if self.workers else None,
            generator=torch.Generator(), worker_init_fn=_drop_inherited_locks if self.workers else None)
        return iter(loader)

    def next(self) -> Batch:
        """This process's slice of the next global batch (read ahead by the workers)."""
        t0 = time.perf_counter()
        if self._batches is None:
            self._batches = self._start()  # before the draw below: the copy starts at this very batch
        idx = ddp.shard(self.sampler.next(), self.info)
        got, x = next(self._batches)
        if not torch.equal(got, idx):
            raise RuntimeError("streamed batch out of step with the sampler (the sampler's state changed after "
                               "streaming began)")
        batch = self._batch(x, idx)
        self.wait_seconds += time.perf_counter() - t0
        self.served += 1
        return batch

    def take(self, idx: Tensor) -> Batch:
        """The batch of images (and labels) at ``idx`` ``(B,)``, read now (e.g. DP's Poisson draws)."""
        t0 = time.perf_counter()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stream: rank %d of %d read images %s", self.info.rank, self.info.world, idx.tolist())
        x = self.images.read(idx)
        if self.device.type == "cuda":
            x = x.pin_memory()
        batch = self._batch(x, idx)
        self.wait_seconds += time.perf_counter() - t0
        self.served += 1
        return batch

    def _batch(self, x: Tensor, idx: Tensor) -> Batch:
        x = x.to(self.device, non_blocking=True)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        return Batch(x, None if self.labels is None else self.labels[idx.to(self.labels.device)])

    def close(self) -> None:
        """Stop the reader processes (a later :meth:`next` starts new ones at the sampler's state);
        log how many batches this rank was served and its data wait so far (info level, every rank)."""
        if self.served:
            log.info("stream: rank %d of %d served %d batches, %.2f s waiting for data", self.info.rank,
                     self.info.world, self.served, self.wait_seconds)
        self._batches = None
