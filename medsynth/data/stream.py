"""Training images streamed from an on-disk cache, with memory flat in the size of the data set.

:func:`load_training_data` is what ``medsynth train`` loads its images with. It either returns an
:class:`~medsynth.data.imageset.ImageSet` (the whole set decoded into one float32 tensor, as
:func:`medsynth.data.dataset.load_image_set` does) or a :class:`StreamSet`, whose
:class:`StreamedImages` stay on disk and are read batch by batch
(:class:`medsynth.train.batches.StreamBatches` prefetches them with a ``DataLoader``). Which one
is ``data.stream``'s choice (:func:`decide`):

* ``off``: in memory, exactly :func:`~medsynth.data.dataset.load_image_set`.
* ``on``: streamed.
* ``auto`` (the default): streamed when the decoded float32 set (``N x C x size^dims x 4`` bytes)
  would exceed ``data.memory_budget_mb``; by default the smaller of 1024 MiB and 10 % of the
  machine's physical memory. The in-memory path holds two copies of the set at its peak (the
  stacked tensor and the bytes its content fingerprint hashes; a third, transient one when repeats
  are dropped), so 10 % keeps that peak well under a third of the memory; and streaming costs no
  measurable training speed (``pipelines/benches/streaming_memory.py``: data wait 0.4-1.4 % of a
  DCGAN 64² step on 2 shared cores), so holding more than 1 GiB would only cost memory.
  The LIDC nodule folder (small fixed crops, loaded by :mod:`medsynth.data.lidc`) always loads
  in memory.

Both paths give the same images bit for bit: the cache stores the pipeline's float32 output
losslessly, so ``train --resume`` may switch between them (and the run's fingerprint is the same).

**The cache.** One folder per data set and settings under ``data.cache_dir`` (default
:func:`default_cache_dir`, ``~/.cache/medsynth``: outside any run and the repository):
``stream/<key>.rows`` holds the transformed images as raw little-endian float32 rows
``(C, *S)``, one per image in the source's order; ``stream/<key>.npz`` its index (rows kept, labels,
skipped files, content fingerprint). ``<key>`` is a hash of the source's files (each file's path,
size and modification time; a manifest's listed files included: the rule of
:func:`medsynth.data.dataset.load_image_set`'s cache) and of the settings that shape the images
(modality, size, dims, split, CT window, cache version, MONAI and medsynth versions): a changed
file or setting gives another key, so a stale cache is never read; file names never carry a
path. The index is written last (atomically), so a half-built cache is never used; a damaged one
is rebuilt. Builders of the same key (torchrun ranks) take a file lock: one builds, the others
reuse. On several machines the cache folder may be shared or not: on a shared filesystem with
locks (NFS) the first rank to take the lock builds it for all nodes; on each node's local disk
(``$MEDSYNTH_CACHE_DIR`` on node-local scratch) each node builds its own, the same rows bit for
bit, and ``medsynth train`` stops every rank unless all loaded the same images (content
fingerprints compared across ranks). A filesystem that refuses locks is named in one error.
Under torchrun each rank then reads only its slice of every global batch
(:class:`medsynth.train.batches.StreamBatches`). Rows are read with ``os.preadv`` into the
batch's own buffer: the pages go through the kernel's page cache and never count as the
process's memory (a memory map would: its touched pages are resident set size).

**Checks, streamed.** The cache is built in one pass over the files, with one image decoded at a
time: each image is checked and hashed (:func:`medsynth.data.checks.pixel_hash`) as
:func:`~medsynth.data.dataset.load_image_set` does, transformed, written, and added to the set's
content fingerprint (:func:`medsynth.runs.images_fingerprint`'s hash, computed incrementally).
Then the split's integrity by content is checked over the hashes
(:func:`medsynth.data.checks.check_duplicates`: the same pixels on two sides refused, repeats
kept once and recorded as skipped); when repeats were dropped, the fingerprint is recomputed by
one sequential read of the kept rows. A cache that is reused repeats its skipped-files record and
the duplicate warning; a refused set leaves no cache, so it is refused again next time.

Why not MONAI's ``PersistentDataset`` (the issue's first suggestion; both measured by
``pipelines/benches/streaming_memory.py`` on the same 2,000 radiographs, same decoding and
pipeline, 2 shared cores): it stores one ``torch.save`` file per image named by a hash of the item
dictionary (the path: a changed file under the same path would be served stale unless the key
carried its size and time), its warm random batches read 215 images/s there against 87,000 for
the row file (400x; ~3,900/s on an idle machine per ``/work/shared/notes/cpu-sizing.md``: 16 ms
per batch of 64, 16 % of a DCGAN 64² width-16 step at 610 images/s unless a worker hides it), its
cold pass took 23 s against 14 s, and it wrote 2,000 files of 136 MB in all against one 33 MB
file. One file also keeps the build atomic and the cache easy to remove.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medsynth.atomic import atomic_path
from medsynth.data.checks import check_duplicates, pixel_hash, relative
from medsynth.data.dataset import (
    _build,
    _collect_items,
    _fingerprint,
    _Item,
    _prepare,
    check_request,
    is_lidc_folder,
    join_domains,
    load_image_set,
    load_two_domains,
    source_base,
)
from medsynth.data.imageset import ImageSet
from medsynth.data.transforms import pipeline_for
from medsynth.errors import MedsynthError

log = logging.getLogger(__name__)

#: bump when the row file or index layout changes (old caches are then never read)
CACHE_VERSION = 1
#: ``data.stream`` values
STREAM_SETTINGS = ("auto", "on", "off")
#: environment variable naming the cache folder (beats the XDG default, not ``data.cache_dir``)
CACHE_ENV = "MEDSYNTH_CACHE_DIR"
#: ``stream: auto`` default budget: at most this many MiB of decoded images in memory...
BUDGET_CAP_MB = 1024
#: ...and at most this fraction of the machine's physical memory
BUDGET_FRACTION = 0.10
#: images per sequential read when hashing a cache
_CHUNK = 256


# ----------------------------------------------------------------------------- settings
def switch_setting(option: str, value: Any, choices: tuple[str, ...]) -> str:
    """An ``auto|on|off``-style setting as one of ``choices`` (YAML's bare ``on``/``off`` arrive as
    booleans).

    Raises:
        MedsynthError: any other value (naming ``option``).
    """
    if value is True:
        return "on"
    if value is False:
        return "off"
    if value in choices:
        return str(value)
    raise MedsynthError(option, f"must be one of {', '.join(choices)}, got {value!r}")


def stream_setting(value: Any) -> str:
    """``data.stream`` as one of :data:`STREAM_SETTINGS` (:func:`switch_setting`)."""
    return switch_setting("data.stream", value, STREAM_SETTINGS)


def default_cache_dir() -> Path:
    """``$MEDSYNTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/medsynth``, else ``~/.cache/medsynth``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medsynth"


def physical_memory_bytes() -> int | None:
    """The machine's physical memory in bytes (``None`` where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget_bytes(budget_mb: float | None) -> int:
    """The bytes of decoded images ``stream: auto`` keeps in memory: ``budget_mb`` MiB, or by
    default the smaller of :data:`BUDGET_CAP_MB` MiB and :data:`BUDGET_FRACTION` of physical memory."""
    if budget_mb is not None:
        return int(float(budget_mb) * 2**20)
    cap = BUDGET_CAP_MB * 2**20
    total = physical_memory_bytes()
    return cap if total is None else min(cap, int(total * BUDGET_FRACTION))


def _mib(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


@dataclass(frozen=True)
class LoadDecision:
    """How ``medsynth train`` holds its images, and why.

    Attributes:
        setting: ``data.stream`` (``auto``, ``on``, ``off``).
        stream: streamed from the disk cache (``True``) or held in memory.
        images: images the decision was made for (before repeats are dropped).
        decoded_bytes: their size decoded: ``images x C x size^dims x 4``.
        budget_bytes: the ``auto`` budget compared against (``None`` for ``on``/``off``).
        reason: the decision in words (no path).
    """

    setting: str
    stream: bool
    images: int
    decoded_bytes: int
    budget_bytes: int | None
    reason: str

    def line(self) -> str:
        """One line for the log: ``streamed from disk: 50000 images, 3.05 GiB decoded > budget ...``."""
        return f"{'streamed from disk' if self.stream else 'held in memory'}: {self.images} images, {self.reason}"

    def record(self) -> dict:
        """The decision for ``RUN/data_report.json`` (counts and settings only)."""
        return {"mode": "stream" if self.stream else "memory", "setting": self.setting, "images": self.images,
                "decoded_bytes": self.decoded_bytes, "budget_bytes": self.budget_bytes, "reason": self.reason}


def decide(setting: Any, n_images: int, row_bytes: int, budget_bytes: int) -> LoadDecision:
    """Whether a set of ``n_images`` decoded images of ``row_bytes`` each is streamed.

    Args:
        setting: ``data.stream``.
        n_images: images to load.
        row_bytes: bytes of one decoded float32 image.
        budget_bytes: ``auto``'s in-memory budget (:func:`memory_budget_bytes`).
    """
    setting = stream_setting(setting)
    nbytes = int(n_images) * int(row_bytes)
    if setting == "on":
        return LoadDecision(setting, True, n_images, nbytes, None, f"{_mib(nbytes)} decoded (data.stream=on)")
    if setting == "off":
        return LoadDecision(setting, False, n_images, nbytes, None, f"{_mib(nbytes)} decoded (data.stream=off)")
    stream = nbytes > budget_bytes
    return LoadDecision(setting, stream, n_images, nbytes, budget_bytes,
                        f"{_mib(nbytes)} decoded {'>' if stream else '<='} budget {_mib(budget_bytes)} "
                        "(data.stream=auto, data.memory_budget_mb)")


# ----------------------------------------------------------------------------- reading rows
class RowFile:
    """One cache file of float32 rows ``row_shape``, read with ``os.preadv`` (no memory map).

    Picklable (DataLoader workers): each process opens its own descriptor.
    """

    def __init__(self, path: str | Path, row_shape: tuple[int, ...], n_rows: int):
        self.path, self.row_shape, self.n_rows = Path(path), tuple(int(s) for s in row_shape), int(n_rows)
        self.row_elems = math.prod(self.row_shape)
        self.row_bytes = 4 * self.row_elems
        self._fd: int | None = None
        self._pid: int | None = None

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Read rows ``rows`` ``(B,)`` into ``out`` ``(B, row_elems)`` float32 (C-contiguous).

        Raises:
            MedsynthError: the file ended early (a damaged cache: delete it and it is rebuilt).
        """
        fd = self._handle()
        for i, r in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            view = memoryview(out[i]).cast("B")
            done, offset = 0, r * self.row_bytes
            while done < self.row_bytes:
                got = os.preadv(fd, [view[done:]], offset + done)
                if got <= 0:
                    raise MedsynthError(self.path, f"cache file ends before row {r} of {self.n_rows}: delete it "
                                                   "(it is rebuilt from the data)")
                done += got

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass


def _indices(idx: Any, n: int) -> np.ndarray:
    """``idx`` (int sequence, int or bool tensor/array, slice, range) as int64 indices in ``[0, n)``."""
    if isinstance(idx, slice):
        return np.arange(n, dtype=np.int64)[idx]
    if isinstance(idx, Tensor):
        idx = idx.detach().cpu().numpy()
    a = np.asarray(idx)
    if a.dtype == bool:
        if a.shape != (n,):
            raise IndexError(f"boolean mask of shape {a.shape} for {n} images")
        return np.flatnonzero(a).astype(np.int64)
    a = a.astype(np.int64).reshape(-1)
    a = np.where(a < 0, a + n, a)
    if a.size and (a.min() < 0 or a.max() >= n):
        raise IndexError(f"index out of range for {n} images")
    return a


class StreamedImages:
    """``(N, C, *S)`` float32 images in [-1, 1] that stay on disk: one or more cache row files and,
    per image, its file and row. Stands in for the images tensor where a run only needs ``shape``,
    ``len`` and indexing (``images[idx]`` reads those rows into a new CPU tensor).

    Args:
        files: the row files (all of one row shape).
        rows: per file, the int64 rows of its images, in the set's order (file 0's images first).
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, files: list[RowFile], rows: list[np.ndarray]):
        if not files or len(files) != len(rows) or len({f.row_shape for f in files}) != 1:
            raise ValueError("StreamedImages needs one row array per file and files of one row shape")
        self.files = files
        self.row_shape = files[0].row_shape
        self._row = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        self._part = None if len(files) == 1 else np.concatenate(
            [np.full(len(r), k, dtype=np.int16) for k, r in enumerate(rows)])
        self.shape = torch.Size((len(self._row), *self.row_shape))

    def __len__(self) -> int:
        return int(self.shape[0])

    def read(self, idx: Any, out: Tensor | None = None) -> Tensor:
        """The images at ``idx`` as ``(B, C, *S)`` float32 (into ``out`` when given, e.g. pinned memory)."""
        ii = _indices(idx, len(self))
        if out is None:
            out = torch.empty((len(ii), *self.row_shape), dtype=torch.float32)
        flat = out.numpy().reshape(len(ii), -1)
        if self._part is None:
            self.files[0].read_rows(self._row[ii], flat)
            return out
        parts = self._part[ii]
        for k, f in enumerate(self.files):
            sel = np.flatnonzero(parts == k)
            if sel.size:
                buf = np.empty((sel.size, f.row_elems), dtype=np.float32)
                f.read_rows(self._row[ii[sel]], buf)
                flat[sel] = buf
        return out

    def __getitem__(self, idx: Any) -> Tensor:
        if isinstance(idx, (int, np.integer)):
            return self.read([int(idx)])[0]
        return self.read(idx)

    def chunks(self, idx: Any = None, size: int = _CHUNK) -> Iterator[Tensor]:
        """The images at ``idx`` (default: all, in order) in chunks of ``size`` (sequential reads)."""
        ii = np.arange(len(self), dtype=np.int64) if idx is None else _indices(idx, len(self))
        for s in range(0, len(ii), size):
            yield self.read(ii[s: s + size])


def content_fingerprint(chunks, shape: tuple[int, ...], labels: Tensor | np.ndarray | None) -> str:
    """:func:`medsynth.runs.images_fingerprint` computed over ``chunks`` of a set of ``shape``
    (its float32 rows in order) without holding the set: ``"sha256:"`` + 16 hex digits."""
    h = hashlib.sha256(repr(tuple(int(s) for s in shape)).encode())
    for c in chunks:
        h.update(np.ascontiguousarray(c.numpy() if isinstance(c, Tensor) else c, dtype=np.float32).tobytes())
    return _finish(h, labels)


def _finish(h, labels) -> str:
    if labels is not None:
        lab = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        h.update(np.ascontiguousarray(lab, dtype=np.int64).tobytes())
    return "sha256:" + h.hexdigest()[:16]


@dataclass
class StreamSet:
    """A training set whose images stream from the disk cache.

    Attributes:
        images: the :class:`StreamedImages` ``(N, C, *S)``.
        labels: ``(N,)`` int64 (-1 = unknown; the domain 0/1 for two domains).
        modality: ``"xray"`` or ``"ct"``.
        skipped: the source's files left out ``(path relative to the source, reason)``, as
            :attr:`medsynth.data.imageset.ImageSet.skipped`.
        known_fingerprint: the fingerprint of all images with ``labels`` when the cache already
            holds it (``None``: computed on demand by one read).
    """

    images: StreamedImages
    labels: Tensor
    modality: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    known_fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self, select: Tensor | None = None, *, with_labels: bool = True) -> str:
        """:func:`medsynth.runs.images_fingerprint` of the images (and labels) at ``select`` (a
        boolean mask; default all), equal to it on the same images held in memory.

        Args:
            select: ``(N,)`` bool, the images to fingerprint (e.g. one domain: ``labels == 0``).
            with_labels: include their labels (as ``images_fingerprint(images, labels)``).
        """
        if select is None and with_labels and self.known_fingerprint is not None:
            return self.known_fingerprint
        ii = np.arange(len(self)) if select is None else _indices(select, len(self))
        shape = (len(ii), *self.images.row_shape)
        fp = content_fingerprint(self.images.chunks(ii), shape, self.labels[torch.as_tensor(ii)] if with_labels else None)
        if select is None and with_labels:
            self.known_fingerprint = fp
        return fp


# ----------------------------------------------------------------------------- the cache
@dataclass
class _Cache:
    """A built cache as its index describes it."""

    rows: RowFile
    keep: np.ndarray
    labels: np.ndarray
    skipped: list[tuple[str, str]]
    fingerprint: str
    modality: str

    @property
    def n(self) -> int:
        return len(self.keep)


def cache_key(source: Path, *, modality: str, size: int, spatial_dims: int, split: str | None, ct_window) -> str:
    """The cache's name for a source and settings: a hash of every file's path, size and mtime
    (:func:`medsynth.data.dataset._fingerprint`) and of the settings that shape the images."""
    import monai

    import medsynth

    params = dict(kind="stream-rows", v=CACHE_VERSION, source=str(Path(source).resolve()), modality=modality,
                  size=int(size), spatial_dims=int(spatial_dims), split=split,
                  ct_window=list(ct_window) if not isinstance(ct_window, str) else ct_window,
                  dtype="float32", byteorder=sys.byteorder, monai=monai.__version__, medsynth=medsynth.__version__)
    return _fingerprint(Path(source), params)


def _paths(folder: Path, key: str) -> tuple[Path, Path, Path]:
    return folder / f"{key}.rows", folder / f"{key}.npz", folder / f"{key}.lock"


def _read_index(folder: Path, key: str, row_shape: tuple[int, ...]) -> _Cache | None:
    """The cache ``key`` when it is complete and whole, else ``None`` (a damaged one is logged)."""
    rows_path, index_path, _ = _paths(folder, key)
    if not index_path.is_file():
        return None
    try:
        with np.load(index_path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION or tuple(int(s) for s in z["row_shape"]) != tuple(row_shape):
                raise ValueError("other version or shape")
            n_rows = int(z["n_rows"])
            rows = RowFile(rows_path, row_shape, n_rows)
            if rows_path.stat().st_size != n_rows * rows.row_bytes:
                raise ValueError(f"{rows_path.name} has {rows_path.stat().st_size} bytes, expected "
                                 f"{n_rows * rows.row_bytes}")
            return _Cache(rows=rows, keep=z["keep"].astype(np.int64), labels=z["labels"].astype(np.int64),
                          skipped=[(str(p), str(r)) for p, r in z["skipped"]], fingerprint=str(z["fingerprint"]),
                          modality=str(z["modality"]))
    except Exception as exc:  # a damaged or foreign cache is rebuilt, never fatal
        log.warning("ignoring unreadable stream cache %s (%s); rebuilding it", index_path, exc)
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created) for the block: one builder per cache key, also
    across machines on a shared filesystem that supports locks (NFS does).

    Raises:
        MedsynthError: the filesystem refuses locks (some network filesystems mounted without them).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        raise MedsynthError(path.parent, f"cannot lock the stream cache here ({exc.strerror}): set data.cache_dir "
                                         f"or ${CACHE_ENV} to a folder on a local disk") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _build_cache(folder: Path, key: str, items: list[_Item], skipped: list[tuple[str, str]], *, modality: str,
                 size: int, spatial_dims: int, ct_window, where: Path, base: Path) -> _Cache:
    """Decode, check, hash, transform and write ``items`` one at a time (flat memory), check the
    split by content, write the index. A refusal leaves no cache behind."""
    t0 = time.perf_counter()
    pipe = pipeline_for(modality, size, window=ct_window, spatial_dims=spatial_dims)
    row_shape = (1,) + (int(size),) * spatial_dims
    rows_path, index_path, _ = _paths(folder, key)
    n = len(items)
    h = hashlib.sha256(repr((n, *row_shape)).encode())
    hashes: list[str] = []
    with atomic_path(rows_path, ".tmp") as tmp:
        with open(tmp, "wb") as fh:
            for it in items:
                x = _prepare(it, modality, spatial_dims, ct_window)
                hashes.append(pixel_hash(x))
                y = pipe({"image": x})["image"]
                if tuple(y.shape) != row_shape:
                    raise MedsynthError(it.path, f"transformed to shape {tuple(y.shape)}, expected {row_shape}")
                row = np.ascontiguousarray(y.to(torch.float32).numpy())
                fh.write(row.tobytes())
                h.update(row.tobytes())
        shown = [relative(it.path, base) for it in items]
        keep, dropped = check_duplicates(hashes, shown, [it.patient_id for it in items],
                                         [it.split for it in items], [it.label for it in items], where=where)
    del hashes, shown
    keep_a = np.asarray(keep, dtype=np.int64)
    labels = np.asarray([items[i].label for i in keep], dtype=np.int64)
    rows = RowFile(rows_path, row_shape, n)
    if dropped:  # the fingerprint covers the kept rows only: one sequential read of them
        part = StreamedImages([rows], [keep_a])
        fp = content_fingerprint(part.chunks(), (len(keep_a), *row_shape), labels)
    else:
        fp = _finish(h, labels)
    skipped_all = sorted(skipped + dropped)
    with atomic_path(index_path, ".npz.tmp") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, version=np.array(CACHE_VERSION), row_shape=np.array(row_shape), n_rows=np.array(n),
                 keep=keep_a, labels=labels, fingerprint=np.array(fp), modality=np.array(modality),
                 skipped=np.array(skipped_all, dtype=str).reshape(-1, 2))
    log.info("stream cache: %d %s images at %d px written in %.1fs (%s)", len(keep_a), modality, size,
             time.perf_counter() - t0, _mib(n * rows.row_bytes))
    return _Cache(rows=rows, keep=keep_a, labels=labels, skipped=skipped_all, fingerprint=fp, modality=modality)


@dataclass
class _Source:
    """One source on its way to being loaded: its cache key, the cache if built, else its items."""

    path: Path
    key: str
    cache: _Cache | None = None
    items: list[_Item] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.cache.n if self.cache is not None else len(self.items or [])


def load_training_data(
    source: str | Path,
    *,
    modality: str = "xray",
    size: int = 64,
    spatial_dims: int = 2,
    split: str | None = "train",
    ct_window: str | tuple[float, float] = "lung",
    domain_b: str | Path | None = None,
    stream: Any = "auto",
    cache_dir: str | Path | None = None,
    memory_budget_mb: float | None = None,
) -> tuple[ImageSet | StreamSet, LoadDecision]:
    """A run's training images, in memory or streamed from the disk cache (module docstring).

    Args:
        source: manifest CSV, folder, ``.npz`` or the LIDC folder (domain A with ``domain_b``).
        modality, size, spatial_dims, split, ct_window: as :func:`~medsynth.data.dataset.load_image_set`.
        domain_b: two-domain variants: domain B's source (A's images labelled 0, B's 1, as
            :func:`~medsynth.data.dataset.load_two_domains`).
        stream: ``data.stream``: ``auto``, ``on`` or ``off``.
        cache_dir: the cache folder (``None``: :func:`default_cache_dir`).
        memory_budget_mb: ``auto``'s budget (``None``: :func:`memory_budget_bytes`'s default).

    Returns:
        ``(set, decision)``: an :class:`~medsynth.data.imageset.ImageSet` (images ``(N, 1, *S)``
        float32 in [-1, 1] in memory) or a :class:`StreamSet` (the same images, on disk), and the
        :class:`LoadDecision` (logged at info level).

    Raises:
        MedsynthError: what :func:`~medsynth.data.dataset.load_image_set` refuses (unsuitable or
            missing files, the same pixels on two sides of the split...), or a bad ``stream``.
    """
    setting = stream_setting(stream)
    paths = [Path(source)] + ([Path(domain_b)] if domain_b is not None else [])
    kw = dict(modality=modality, size=size, spatial_dims=spatial_dims, split=split, ct_window=ct_window)
    row_bytes = 4 * int(size) ** spatial_dims
    for p in paths:
        check_request(p, modality=modality, spatial_dims=spatial_dims, split=split)
    if setting == "off" or any(is_lidc_folder(p) for p in paths):
        ds = load_image_set(paths[0], **kw) if len(paths) == 1 else load_two_domains(*paths, **kw)
        if setting == "off":
            decision = decide("off", len(ds), row_bytes, 0)
        else:
            decision = LoadDecision(setting, False, len(ds), int(ds.images.nbytes), None,
                                    "the LIDC nodule folder (fixed small crops) loads in memory")
        log.info("data: %s", decision.line())
        return ds, decision

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / "stream"
    row_shape = (1,) + (int(size),) * spatial_dims
    sources = []
    for p in paths:
        src = _Source(p, cache_key(p, **kw))
        src.cache = _read_index(folder, src.key, row_shape)
        if src.cache is None:
            src.items, src.skipped = _collect_items(p, modality=modality, spatial_dims=spatial_dims, split=split)
        sources.append(src)
    decision = decide(setting, sum(s.n for s in sources), row_bytes, memory_budget_bytes(memory_budget_mb))
    log.info("data: %s", decision.line())

    if not decision.stream:
        sets = []
        for s in sources:
            if s.items is None:
                s.items, s.skipped = _collect_items(s.path, modality=modality, spatial_dims=spatial_dims, split=split)
            sets.append(_build(s.items, modality=modality, size=size, spatial_dims=spatial_dims, ct_window=ct_window,
                               where=s.path, base=source_base(s.path), skipped=s.skipped))
        return (sets[0] if len(sets) == 1 else join_domains(*sets)), decision

    for s in sources:
        if s.cache is None:
            with _locked(_paths(folder, s.key)[2]):
                s.cache = _read_index(folder, s.key, row_shape)  # another process may have built it meanwhile
                if s.cache is None:
                    s.cache = _build_cache(folder, s.key, s.items or [], s.skipped, modality=modality, size=size,
                                           spatial_dims=spatial_dims, ct_window=ct_window, where=s.path,
                                           base=source_base(s.path))
            s.items = None
        else:
            log.info("stream cache: reusing %d %s images at %d px (%s)", s.cache.n, modality, size, s.key)
            _repeat_skipped(s.path, s.cache.skipped)
    return _stream_set(sources, modality), decision


def _repeat_skipped(where: Path, skipped: list[tuple[str, str]]) -> None:
    """A reused cache repeats the warning its build gave about skipped files (each at info level)."""
    if skipped:
        log.warning("%s: %d file(s) skipped when this cached set was built, e.g. %s (%s); each listed at info "
                    "level and in the run's local/skipped_files.json", where, len(skipped), *skipped[0])
        for rel, reason in skipped:
            log.info("skipped %s: %s", rel, reason)


def _stream_set(sources: list[_Source], modality: str) -> StreamSet:
    caches = [s.cache for s in sources if s.cache is not None]
    images = StreamedImages([c.rows for c in caches], [c.keep for c in caches])
    if len(caches) == 1:
        c = caches[0]
        return StreamSet(images, torch.from_numpy(c.labels.copy()), modality, list(c.skipped), c.fingerprint)
    a, b = caches
    labels = torch.cat([torch.zeros(a.n, dtype=torch.long), torch.ones(b.n, dtype=torch.long)])
    skipped = [(f"domain_a/{p}", r) for p, r in a.skipped] + [(f"domain_b/{p}", r) for p, r in b.skipped]
    return StreamSet(images, labels, modality, skipped)
