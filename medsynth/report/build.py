"""Build ``reports/<run>/`` (Markdown, self-contained HTML, JSON, PNG figures) for one run.

Three steps, one module each: **reading** (:mod:`medsynth.report.read`: the run's files and
result files -> a :class:`~medsynth.report.model.ReportModel`, running the evaluation once when
the run has none), **sections** (:mod:`medsynth.report.sections`: each a function of that model)
and **rendering** (:mod:`medsynth.report.render` for Markdown and HTML; ``report.json`` through
:mod:`medsynth.results`). The report computes no metric of its own: its Fréchet distance is the
evaluation's. It never imports ``medsynth.train``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from medsynth.atomic import write_bytes, write_text
from medsynth.metrics.evaluate import REAL_IMAGE_FIGURES
from medsynth.report.read import read_model
from medsynth.report.render import Document, html_page, markdown
from medsynth.report.sections import SECTIONS, title
from medsynth.results import REPORT, write_result
from medsynth.runs import versions

logger = logging.getLogger(__name__)


def build_report(
    run_dir: str | Path,
    *,
    out_root: str | Path = "reports",
    benchmark_dir: str | Path | None = None,
    real: str | None = None,
    count: int = 500,
    seed: int = 0,
    encoder: str | Path | nn.Module | None = None,
    encoder_steps: int = 300,
    show_real: bool = False,
    data_root: str | Path | None = None,
) -> Path:
    """Write ``<out_root>/<run name>/report.{md,html,json}`` and its PNG figures (atomic writes).

    The document opens with a one-page summary (does augmentation help, by how much, with 95%
    CIs and paired-test p-values per arm; memorisation and membership inference; fidelity
    against the real-vs-real floor), then fidelity, privacy, downstream benchmark, and run and
    configuration provenance. ``report.json`` holds every figure the Markdown shows (the
    summary's under ``headline``); ``report.html`` embeds the PNGs as ``data:`` URIs.

    By default the report holds no real training image (the evaluation's figures that show them
    are left out, with a note) and no input path (the run records its data by a shareable name).
    With ``show_real`` it shows them, and its first line says that it contains patient images
    (``report.json``: ``contains_patient_images``).

    Args:
        run_dir: a run directory (``config.yaml`` required; ``stats.jsonl``, ``samples/step_*.png``,
            ``evaluate/`` and ``benchmark/`` used when present).
        out_root: parent folder of the report folder.
        benchmark_dir: folder with ``medsynth benchmark``'s ``results.json`` (and ``plot.png``);
            default ``<run_dir>/benchmark`` when it exists.
        real, count, seed, encoder, encoder_steps, data_root: used only when the run has no
            ``evaluate/evaluation.json``: the report then runs
            :func:`medsynth.metrics.evaluate.evaluate_run` with them (as ``medsynth evaluate``
            does, writing the same files into the run) and logs that it did.
        show_real: show the real training images of the evaluation's figures (default off).

    Returns:
        The report folder.

    Raises:
        MedsynthError: missing or invalid run files, or a result file of another schema.
    """
    model = read_model(run_dir, benchmark_dir=benchmark_dir, real=real, count=count, seed=seed, encoder=encoder,
                       encoder_steps=encoder_steps, show_real=show_real, data_root=data_root)
    parts = [title(model)] + [section(model) for section in SECTIONS]
    doc = Document()
    for part in parts:
        doc.extend(part.doc)
    out_dir = Path(out_root) / model.run.name
    for name, data in doc.images.items():
        write_bytes(out_dir / name, data)
    for name in REAL_IMAGE_FIGURES:  # an earlier --show-real report's copies go: no patient image stays behind
        stale = out_dir / f"eval_{name}"
        if f"eval_{name}" not in doc.images and stale.is_file():
            stale.unlink()
            logger.info("removed %s (real training images) left by an earlier report", stale)
    page_title = f"medsynth report: {model.run.name}"
    write_text(out_dir / "report.md", markdown(doc))
    write_text(out_dir / "report.html", html_page(doc, page_title))
    ev = model.evaluation
    write_result(out_dir / "report.json", REPORT, {
        "run": model.run.name, "run_dir": str(model.run.run_dir), "contains_patient_images": model.show_real,
        "summary": model.run_summary(),
        "config": model.run.config,
        "evaluation": {"file": str(ev.path), "step": ev.step, "seed": ev.seed,
                       "computed_by_report": ev.computed_by_report},
        **{part.key: part.data for part in parts if part.key is not None},
        "figures": {name.removesuffix(".png"): name for name in doc.images},
        "versions": versions(),
    })
    logger.info("report written to %s", out_dir)
    return out_dir
