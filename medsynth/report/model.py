"""The report model: everything one report shows, read from a run's files (:mod:`medsynth.report.read`).

The sections (:mod:`medsynth.report.sections`) are functions of a :class:`ReportModel` alone;
they compute no metric. The evaluation and the benchmark are the validated contents of their
result files (schema in :mod:`medsynth.results`), so the report shows exactly the numbers those
files hold: one Fréchet distance, from one encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """What ``medsynth train`` left in the run directory.

    Attributes:
        name: the run directory's name (also the report folder's).
        run_dir: the run directory as given.
        config: ``config.yaml`` parsed; ``config_text`` its text.
        stats: ``stats.jsonl`` rows (empty without the file).
        model, modality, data_source, steps_configured: from the config (``None`` if absent);
            ``data_source`` is the run's shareable name of its data (never an input path).
        data_fingerprint: the content fingerprint of the training images (``None`` in older runs).
        steps_done, kimg, wall_seconds, img_per_s_last: from the last stats row (``None`` if absent).
        last_grid: ``(file name, PNG bytes)`` of the newest ``samples/step_*.png``, or ``None``.
    """

    name: str
    run_dir: Path
    config: dict
    config_text: str
    stats: list[dict]
    model: str | None
    modality: str | None
    data_source: str | None
    data_fingerprint: str | None
    steps_configured: int | None
    steps_done: int | None
    kimg: float | None
    wall_seconds: float | None
    img_per_s_last: float | None
    last_grid: tuple[str, bytes] | None


@dataclass(frozen=True)
class Evaluation:
    """The run's ``evaluate/evaluation.json`` (kind ``evaluation``) and its figures.

    Attributes:
        path: the JSON file.
        data: its validated contents.
        figures: PNG bytes by file name, for the figures it lists that are on disk, less those
            showing real training images (``REAL_IMAGE_FIGURES``) unless the report shows them.
        computed_by_report: whether the report ran the evaluation (the run had none).
        withheld: the listed figures left out because they show real training images.
    """

    path: Path
    data: dict
    figures: dict[str, bytes]
    computed_by_report: bool
    withheld: tuple[str, ...] = ()

    @property
    def fidelity(self) -> dict:
        return self.data["fidelity"]

    @property
    def privacy(self) -> dict:
        return self.data["privacy"]

    @property
    def two_sample(self) -> dict | None:
        """The classifier two-sample test (``fidelity.two_sample``); ``None`` in evaluations written before it."""
        return self.data["fidelity"].get("two_sample")

    @property
    def step(self) -> int | None:
        return self.data.get("step")

    @property
    def seed(self) -> int:
        return self.data["seed"]


@dataclass(frozen=True)
class Benchmark:
    """A ``results.json`` of ``medsynth benchmark`` (kind ``benchmark``) and its ``plot.png``.

    Attributes:
        path: the JSON file.
        data: its validated contents (``summary`` and ``diffs`` rows, ``config``, ``n_test``...).
        plot: the PNG bytes of ``plot.png`` beside it, or ``None``.
    """

    path: Path
    data: dict
    plot: bytes | None

    @property
    def summary(self) -> list[dict]:
        return self.data["summary"]

    @property
    def diffs(self) -> list[dict]:
        return self.data["diffs"]

    @property
    def config(self) -> dict:
        return self.data["config"]


@dataclass(frozen=True)
class ReportModel:
    """One report's inputs.

    Attributes:
        run: the run directory's files.
        evaluation: the run's evaluation (always present: the report runs it when missing).
        benchmark: the benchmark results, or ``None``.
        benchmark_dir: where the benchmark was looked for.
        show_real: whether the report shows real training images (``medsynth report --show-real``;
            default off: it then contains none, and says so only when it does).
    """

    run: RunInfo
    evaluation: Evaluation
    benchmark: Benchmark | None
    benchmark_dir: Path
    show_real: bool = False

    def run_summary(self) -> dict[str, Any]:
        """The run's facts as ``report.json`` → ``summary`` carries them."""
        r, fid = self.run, self.evaluation.fidelity
        return {"model": r.model, "modality": r.modality, "data_source": r.data_source,
                "data_fingerprint": r.data_fingerprint,
                "image_shape": list(self.evaluation.data["image_shape"]), "steps_configured": r.steps_configured,
                "steps_done": r.steps_done, "kimg": r.kimg, "wall_seconds": r.wall_seconds,
                "img_per_s_last": r.img_per_s_last, "n_real_train": fid["n_real_train"],
                "n_synthetic": fid["n_synthetic"]}
