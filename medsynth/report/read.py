"""Reading a run for the report: its files -> a :class:`~medsynth.report.model.ReportModel`.

The run directory gives ``config.yaml``, ``stats.jsonl`` and the newest ``samples/step_*.png``;
the result files (:mod:`medsynth.results`) give the evaluation (``evaluate/evaluation.json`` and
its PNGs) and the benchmark (``results.json`` and ``plot.png``). A run without an evaluation is
evaluated here, once, by :func:`medsynth.metrics.evaluate.evaluate_run` — the same call and the
same files as ``medsynth evaluate`` — so every report carries the whole suite.

Privacy: the evaluation's figures that show real training images
(:data:`~medsynth.metrics.evaluate.REAL_IMAGE_FIGURES`) are read only when the report is to show
them (``show_real``); the run's ``local/`` folder is never read. A config written before runs
recorded their data privately names its input path: that path is withheld from the report.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from medsynth import results
from medsynth.errors import MedsynthError
from medsynth.metrics.evaluate import REAL_IMAGE_FIGURES
from medsynth.report.model import Benchmark, Evaluation, ReportModel, RunInfo

logger = logging.getLogger(__name__)


#: what a run's ``data.source``/``data.domain_b`` says in place of an input path that an older
#: medsynth wrote into ``config.yaml`` (shown neither in the report's tables nor in its config text)
PATH_WITHHELD = "<input path withheld>"


def _shareable_name(value: Any) -> bool:
    """Whether a recorded data source is a shareable name (:func:`medsynth.runs.shareable_source`)."""
    return value is None or (isinstance(value, str)
                             and (value == "default" or value.startswith(("data-root:", "sha256:"))))


def _read_config(run_dir: Path) -> tuple[dict, str]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise MedsynthError(run_dir, "no config.yaml: not a medsynth run directory")
    text = path.read_text(encoding="utf-8")
    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise MedsynthError(path, f"is not valid YAML ({exc.__class__.__name__})") from exc
    if not isinstance(cfg, dict):
        raise MedsynthError(path, "is not a mapping of settings")
    data = cfg.get("data")
    if isinstance(data, dict) and not all(_shareable_name(data.get(k)) for k in ("source", "domain_b")):
        cfg = {**cfg, "data": {k: (v if k not in ("source", "domain_b") or _shareable_name(v) else PATH_WITHHELD)
                               for k, v in data.items()}}
        text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    return cfg, text


def _read_stats(run_dir: Path) -> list[dict]:
    path = run_dir / "stats.jsonl"
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MedsynthError(path, f"line {i} is not valid JSON") from exc
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _latest_sample_grid(run_dir: Path) -> Path | None:
    best, best_step = None, -1
    for p in (run_dir / "samples").glob("step_*.png"):
        m = re.fullmatch(r"step_(\d+)\.png", p.name)
        if m and int(m.group(1)) > best_step:
            best, best_step = p, int(m.group(1))
    return best


def _setting(cfg: dict, dotted: str) -> Any:
    """A scalar setting of the resolved config (``data.modality``...), ``None`` if absent."""
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return None if isinstance(cur, (dict, list)) else cur


def _number(row: dict, key: str) -> float | None:
    v = row.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read_run(run_dir: str | Path) -> RunInfo:
    """The run directory's own files as a :class:`RunInfo`.

    Raises:
        MedsynthError: no such directory, no/invalid ``config.yaml``, a ``stats.jsonl`` line
            that is not JSON.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedsynthError(run_dir, "run directory not found")
    cfg, text = _read_config(run_dir)
    stats = _read_stats(run_dir)
    last = stats[-1] if stats else {}
    grid = _latest_sample_grid(run_dir)
    return RunInfo(
        name=run_dir.resolve().name, run_dir=run_dir, config=cfg, config_text=text, stats=stats,
        model=_setting(cfg, "model.name"), modality=_setting(cfg, "data.modality"),
        data_source=_setting(cfg, "data.source"), data_fingerprint=_setting(cfg, "data.fingerprint"),
        steps_configured=_setting(cfg, "train.steps"),
        steps_done=_number(last, "step"), kimg=_number(last, "kimg"), wall_seconds=_number(last, "seconds"),
        img_per_s_last=_number(last, "img_per_s"),
        last_grid=None if grid is None else (grid.name, grid.read_bytes()),
    )


def read_evaluation(run_dir: Path, *, real: str | None, count: int, seed: int,
                    encoder: str | Path | nn.Module | None, encoder_steps: int, show_real: bool = False,
                    data_root: str | Path | None = None) -> Evaluation:
    """The run's evaluation; when it has none, :func:`~medsynth.metrics.evaluate.evaluate_run` first.

    Args:
        run_dir: the run directory.
        real, count, seed, encoder, encoder_steps, data_root: :func:`~medsynth.metrics.evaluate.evaluate_run`'s
            arguments, used only when the run has no evaluation yet.
        show_real: read the figures that show real training images too (else they are withheld).

    Raises:
        MedsynthError: an evaluation file of another schema (:func:`medsynth.results.read_result`).
    """
    data = results.read_evaluation(run_dir)
    computed = data is None
    if computed:
        from medsynth.metrics.evaluate import evaluate_run

        logger.info("report: %s has no evaluation; running it as `medsynth evaluate` would (%d synthetic "
                    "images, seed %d) -> %s", run_dir, count, seed, results.evaluation_file(run_dir))
        evaluate_run(run_dir, real=real, count=count, seed=seed, encoder=encoder, encoder_steps=encoder_steps,
                     data_root=data_root)
        data = results.read_evaluation(run_dir)
    path = results.evaluation_file(run_dir)
    listed = [name for name in data["figures"].values() if (path.parent / name).is_file()]
    withheld = tuple(name for name in listed if name in REAL_IMAGE_FIGURES and not show_real)
    figures = {name: (path.parent / name).read_bytes() for name in listed if name not in withheld}
    return Evaluation(path=path, data=data, figures=figures, computed_by_report=computed, withheld=withheld)


def read_model(run_dir: str | Path, *, benchmark_dir: str | Path | None = None, real: str | None = None,
               count: int = 500, seed: int = 0, encoder: str | Path | nn.Module | None = None,
               encoder_steps: int = 300, show_real: bool = False,
               data_root: str | Path | None = None) -> ReportModel:
    """Everything a report shows, from the run's files (evaluating the run if it never was).

    Args:
        run_dir: a run directory (``config.yaml`` required).
        benchmark_dir: folder of ``medsynth benchmark``'s ``results.json`` (required there when
            given); default ``RUN/benchmark``, used when present.
        real, count, seed, encoder, encoder_steps, data_root: for the evaluation when the run has none
            (:func:`medsynth.metrics.evaluate.evaluate_run`).
        show_real: the report shows real training images (default: it holds none).

    Raises:
        MedsynthError: missing or invalid run files or result files.
    """
    run = read_run(run_dir)
    bench_dir = Path(benchmark_dir) if benchmark_dir is not None else run.run_dir / "benchmark"
    bench = results.read_benchmark(bench_dir)
    if bench is None and benchmark_dir is not None:
        raise MedsynthError(bench_dir / results.BENCHMARK_FILE, "not found: not a `medsynth benchmark` output folder")
    evaluation = read_evaluation(run.run_dir, real=real, count=count, seed=seed, encoder=encoder,
                                 encoder_steps=encoder_steps, show_real=show_real, data_root=data_root)
    plot = bench_dir / "plot.png"
    benchmark = None if bench is None else Benchmark(
        path=bench_dir / results.BENCHMARK_FILE, data=bench, plot=plot.read_bytes() if plot.is_file() else None)
    return ReportModel(run=run, evaluation=evaluation, benchmark=benchmark, benchmark_dir=bench_dir,
                       show_real=show_real)
