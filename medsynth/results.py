"""medsynth's result files: one versioned schema, written and read by this module only.

=================================  ==============  ==========================================
file                               ``kind``        written by
=================================  ==============  ==========================================
``RUN/evaluate/evaluation.json``   ``evaluation``  ``medsynth evaluate`` (:mod:`medsynth.metrics.evaluate`)
``<folder>/results.json``          ``benchmark``   ``medsynth benchmark`` (:mod:`medsynth.downstream.benchmark`)
``reports/<run>/report.json``      ``report``      ``medsynth report`` (:mod:`medsynth.report`)
=================================  ==============  ==========================================

Every file is one JSON object whose first two fields are ``kind`` and ``schema_version``
(:data:`SCHEMA_VERSION`), followed by the fields its kind requires (:data:`REQUIRED`, dotted
paths into nested objects) and optional ones. Non-finite numbers are written as ``null``.

Schema 1:

* ``evaluation``: ``modality`` (``xray|ct``), ``image_shape`` ``[C, *S]``, ``seed``, ``seconds``,
  ``figures`` ``{stem: file name}``; ``fidelity`` with ``protocol``, ``n_real_train``,
  ``n_synthetic``, ``m``, ``h``, ``repeats``, ``fd``/``kid`` ``{synthetic, floor}`` of
  ``{mean, sd}``, ``prdc`` (``synthetic``/``floor`` per precision, recall, density, coverage;
  ``k``), ``intensity``, ``diversity_ms_ssim``, ``encoder`` (``kind``, ``fingerprint``,
  ``feature_dim``, ``source``...), optional ``per_class`` and ``inception_fid``; ``privacy`` with
  ``dcr``/``nndr`` summaries, ``memorisation_flag``, ``flag_rule``, ``closest_pairs`` and
  ``membership_inference``. From a run also ``run``, ``model``, ``step``, ``real_source``
  (``run``: the run's own training data; else the shareable name of ``--data``:
  ``default``, ``data-root:<relative path>`` or a content fingerprint; never a path),
  ``real_train_fingerprint`` and ``run_data_fingerprint`` (the training images compared against,
  the run's own), ``train_split``, ``n_synthetic_sampled``, ``dp``, ``dp_accounting``.
* ``benchmark``: :class:`medsynth.downstream.benchmark.BenchmarkResult` as a dict: ``config``,
  ``rows``, ``summary`` (one row per arm x fraction), ``diffs`` (one row per non-reference arm x
  fraction x metric: ``arm``, ``fraction``, ``metric``, ``diff``, ``lo``, ``hi``, ``p``...),
  ``n_test``, ``n_test_patients``, ``n_val``, ``timings``, ``test_predictions``.
* ``report``: ``run``, ``run_dir``, ``summary``, ``config``, ``evaluation``, ``headline``,
  ``fidelity``, ``privacy``, ``benchmark``, ``provenance``, ``figures``, ``versions``; optional
  ``contains_patient_images`` (true only for ``medsynth report --show-real``).

A file of another kind, without ``schema_version`` (written before this schema) or of another
version is refused with one line naming the file and the command that rewrites it: no reader
here guesses at older layouts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.atomic import write_text
from medsynth.errors import MedsynthError

#: The version of every result file's layout; bump it (and rewrite the writers) when a field changes.
SCHEMA_VERSION = 1

EVALUATION = "evaluation"
BENCHMARK = "benchmark"
REPORT = "report"

#: The evaluation file of a run, relative to the run directory.
EVALUATION_FILE = Path("evaluate") / "evaluation.json"
#: The benchmark's JSON file inside its output folder.
BENCHMARK_FILE = "results.json"

#: Fields each kind must carry (dotted paths into nested objects).
REQUIRED: dict[str, tuple[str, ...]] = {
    EVALUATION: (
        "modality", "image_shape", "seed", "figures",
        "fidelity.protocol", "fidelity.n_real_train", "fidelity.n_synthetic", "fidelity.m", "fidelity.fd",
        "fidelity.kid", "fidelity.prdc", "fidelity.intensity", "fidelity.diversity_ms_ssim",
        "fidelity.encoder.fingerprint",
        "privacy.dcr", "privacy.nndr", "privacy.memorisation_flag", "privacy.flag_rule",
        "privacy.membership_inference",
    ),
    BENCHMARK: ("config", "rows", "summary", "diffs", "n_test", "n_test_patients", "n_val", "timings"),
    REPORT: ("run", "run_dir", "summary", "config", "evaluation", "headline", "fidelity", "privacy", "benchmark",
             "provenance", "figures", "versions"),
}

_REWRITE = {EVALUATION: "rerun `medsynth evaluate RUN`", BENCHMARK: "rerun `medsynth benchmark`",
            REPORT: "rerun `medsynth report RUN`"}


def jsonable(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to ``None``, paths to ``str``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _missing(data: dict, kind: str) -> list[str]:
    out = []
    for dotted in REQUIRED[kind]:
        cur: Any = data
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                out.append(dotted)
                break
            cur = cur[part]
    return out


def _check(path: Path, kind: str, data: Any) -> dict:
    """``data`` if it is a ``kind`` object of :data:`SCHEMA_VERSION` with every required field."""
    if kind not in REQUIRED:
        raise ValueError(f"unknown result kind {kind!r}")
    if not isinstance(data, dict):
        raise MedsynthError(path, f"is not a medsynth {kind} file (not a JSON object)")
    if "schema_version" not in data:
        raise MedsynthError(path, f"has no schema_version: not a medsynth {kind} file of schema {SCHEMA_VERSION} "
                                  f"(an older medsynth wrote none); {_REWRITE[kind]}")
    if data.get("kind") != kind:
        raise MedsynthError(path, f"is not a medsynth {kind} file (kind {data.get('kind')!r})")
    if data["schema_version"] != SCHEMA_VERSION:
        raise MedsynthError(path, f"has schema_version {data['schema_version']!r}; this medsynth reads {kind} "
                                  f"schema {SCHEMA_VERSION}: {_REWRITE[kind]}")
    missing = _missing(data, kind)
    if missing:
        raise MedsynthError(path, f"{kind} schema {SCHEMA_VERSION} lacks {', '.join(missing)}: {_REWRITE[kind]}")
    if kind == BENCHMARK:
        _check_benchmark_rows(path, data)
    return data


def _check_benchmark_rows(path: Path, data: dict) -> None:
    """Every summary row names its arm and fraction; one paired difference per (arm, fraction, metric)."""
    for r in data["summary"]:
        if not isinstance(r, dict) or r.get("arm") is None or r.get("fraction") is None:
            raise MedsynthError(path, "a summary row names no arm or fraction")
    seen: set = set()
    for d in data["diffs"]:
        if not isinstance(d, dict) or any(d.get(k) is None for k in ("arm", "fraction", "metric")):
            raise MedsynthError(path, "a paired-difference row names no arm, fraction or metric")
        key = (d["arm"], round(float(d["fraction"]), 6), d["metric"])
        if key in seen:
            raise MedsynthError(path, f"two paired-difference rows for arm {key[0]!r}, fraction {key[1]:g}, "
                                      f"metric {key[2]!r}")
        seen.add(key)


def write_result(path: str | Path, kind: str, data: dict) -> Path:
    """Write ``data`` as a ``kind`` file of :data:`SCHEMA_VERSION` (atomic; ``kind`` and version first).

    Args:
        path: the JSON file to write (its folder is created).
        kind: :data:`EVALUATION`, :data:`BENCHMARK` or :data:`REPORT`.
        data: the fields of that kind (:data:`REQUIRED` and optional ones); numpy scalars and
            non-finite floats are converted by :func:`jsonable`.

    Returns:
        ``path``.

    Raises:
        MedsynthError: ``data`` lacks a required field (a writer bug, caught before the file exists).
    """
    path = Path(path)
    body = {k: v for k, v in data.items() if k not in ("kind", "schema_version")}
    out = jsonable({"kind": kind, "schema_version": SCHEMA_VERSION, **body})
    _check(path, kind, out)
    return write_text(path, json.dumps(out, indent=1) + "\n")


def read_result(path: str | Path, kind: str) -> dict:
    """Read a ``kind`` file written by :func:`write_result`.

    Raises:
        MedsynthError: one line naming ``path``: missing, not JSON, another kind, no or another
            ``schema_version``, or a required field missing.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsynthError(path, f"not found (no medsynth {kind} file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedsynthError(path, f"is not valid JSON ({exc.__class__.__name__})") from None
    return _check(path, kind, data)


def evaluation_file(run_dir: str | Path) -> Path:
    """``RUN/evaluate/evaluation.json``."""
    return Path(run_dir) / EVALUATION_FILE


def read_evaluation(run_dir: str | Path) -> dict | None:
    """The run's evaluation (:func:`read_result` of ``RUN/evaluate/evaluation.json``), ``None`` if it has none."""
    path = evaluation_file(run_dir)
    return read_result(path, EVALUATION) if path.is_file() else None


def read_benchmark(folder: str | Path) -> dict | None:
    """The benchmark in ``folder`` (:func:`read_result` of ``folder/results.json``), ``None`` if it has none."""
    path = Path(folder) / BENCHMARK_FILE
    return read_result(path, BENCHMARK) if path.is_file() else None
