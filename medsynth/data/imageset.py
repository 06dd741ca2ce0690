"""The image set every loader returns: images in [-1, 1] with labels, patients, paths and splits.

Its own module so that the loaders (:mod:`medsynth.data.dataset`, :mod:`medsynth.data.lidc`)
import it one way and never each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageSet:
    """A set of images ready for a model.

    Attributes:
        images: float32 ``(N, 1, H, W)`` or ``(N, 1, D, H, W)`` in ``[-1, 1]``.
        labels: int64 ``(N,)``; -1 = unknown.
        patient_ids: N patient identifiers.
        paths: N source paths (``file.npz#i`` for images inside an npz).
        splits: N of ``"train"``, ``"val"``, ``"test"`` (or ``""``).
        modality: ``"xray"`` or ``"ct"``.
        skipped: the files of the source that were left out, as ``(path relative to the data
            source, reason)``: unsuitable files of a folder (other modality, colour, empty, not
            DICOM...) and images repeated within a split (kept once). ``run/data_report.json``
            counts them; ``run/local/skipped_files.json`` (never shared) names them. Kept by
            :meth:`subset` and :meth:`split` (they describe the source).
    """

    images: torch.Tensor
    labels: torch.Tensor
    patient_ids: list[str]
    paths: list[str]
    splits: list[str]
    modality: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        n = int(self.images.shape[0])
        lens = {len(self.labels), len(self.patient_ids), len(self.paths), len(self.splits)}
        if lens != {n}:
            raise ValueError(
                f"ImageSet fields disagree in length: images {n}, labels {len(self.labels)}, "
                f"patient_ids {len(self.patient_ids)}, paths {len(self.paths)}, splits {len(self.splits)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx) -> "ImageSet":
        """Rows ``idx`` (int sequence, numpy/torch index array or boolean mask) as a new set."""
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask of shape {idx.shape} for {len(self)} images")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        t = torch.as_tensor(idx, dtype=torch.long)
        return ImageSet(
            images=self.images[t],
            labels=self.labels[t],
            patient_ids=[self.patient_ids[i] for i in idx],
            paths=[self.paths[i] for i in idx],
            splits=[self.splits[i] for i in idx],
            modality=self.modality,
            skipped=list(self.skipped),
        )

    def split(self, name: str) -> "ImageSet":
        """The images whose split is ``name`` (``train``, ``val`` or ``test``)."""
        return self.subset(np.array([s == name for s in self.splits], dtype=bool))
