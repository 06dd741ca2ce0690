"""Build ``reports/<run>/`` (Markdown, self-contained HTML, JSON, PNG figures) for one run.

The report reads the run directory only (``config.yaml``, ``stats.jsonl``, the latest
``samples/step_*.png``, ``benchmark/results.csv`` / ``results.json`` / ``plot.png`` and
``evaluate/evaluation.json`` with its PNGs when present) plus the images handed in by the caller
(real training images and synthetic images); it never imports ``medsynth.train``. Every random
choice (encoder training, real/real halves, which images the grids show) is derived from
``seed``, so the same inputs give the same numbers.

It reads like the results section of a paper: a one-page **summary** first (does augmentation
help, by how much — per arm and real fraction, the paired difference to real-only with its
95% CI and p-value for AUROC, sens@90%spec and spec@90%sens; is there memorisation — the DCR /
NNDR flag and the membership-inference AUROC against its control; fidelity against the
real-vs-real floor), then **fidelity** (sample grids, Fréchet distance on the project's own
encoder, the ``medsynth evaluate`` suite), **privacy** (nearest-neighbour distances, closest
pairs, membership inference), the **downstream benchmark** (every arm, every paired
difference, the plot) and **run / configuration provenance** (training curves, sources,
versions, resolved config). ``report.json`` carries every figure the Markdown shows, the
summary's under ``headline``; the HTML embeds its figures as ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from torch import nn

from medsynth.atomic import write_bytes
from medsynth.errors import MedsynthError
from medsynth.figures import new_figure, png_bytes
from medsynth.metrics.evaluate import MEMORISATION_FLAG_FRACTION, N_CLOSEST_PAIRS, fig_closest_pairs
from medsynth.metrics.evaluate import jsonable as _jsonable
from medsynth.metrics.fidelity import (
    encoder_fingerprint,
    extract_features,
    frechet_distance,
    frechet_floor,
    load_encoder,
    save_encoder,
    train_feature_encoder,
)
from medsynth.metrics.privacy import memorisation_summary, nearest_neighbours, real_to_real_nn

if TYPE_CHECKING:  # pragma: no cover
    from medsynth.data.dataset import ImageSet

logger = logging.getLogger(__name__)

#: Random real/real splits (and synthetic subsamples) averaged for the equal-size FD figures.
FD_REPEATS = 10
GRID_N = 16

_STATS_SKIP = {"step", "kimg", "seconds", "img_per_s", "tick", "time"}


# --------------------------------------------------------------------------------------------
# small utilities


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return "–"
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
            return f"{v:.{nd}g}"
        return f"{v:.{nd}f}"
    return str(v)


def _pct(f: Any) -> str:
    return f"{100 * float(f):g}%" if isinstance(f, (int, float)) else "–"


def _lookup(cfg: Any, dotted: str) -> Any:
    cur = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _first(cfg: dict, *keys: str) -> Any:
    for k in keys:
        v = _lookup(cfg, k)
        if v is not None and not isinstance(v, (dict, list)):
            return v
    return None


def _view2d(x: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) or (N, 1, D, H, W) → (N, H, W) numpy; 3D shows the central axial slice."""
    x = x.detach().float().cpu()
    if x.dim() == 5:
        x = x[:, :, x.shape[2] // 2]
    return x[:, 0].clamp(-1, 1).numpy()


def _tile(imgs: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
    n, h, w = imgs.shape
    nrow = max(1, math.ceil(n / ncol))
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), -1.0, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = imgs[i]
    return out


# --------------------------------------------------------------------------------------------
# a tiny document model rendered to Markdown and HTML


@dataclass
class _Doc:
    blocks: list[tuple] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", header, [[_fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]))

    def img(self, name: str, data: bytes, caption: str) -> None:
        self.images[name] = data
        self.blocks.append(("img", name, caption))

    def extend(self, other: "_Doc") -> None:
        """Append another document's blocks and images (a section built separately)."""
        self.blocks.extend(other.blocks)
        self.images.update(other.images)

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "pre":
                out.append("```\n" + b[1].rstrip("\n") + "\n```")
            elif b[0] == "table":
                esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                lines = ["| " + " | ".join(esc(c) for c in b[1]) + " |",
                         "| " + " | ".join("---" for _ in b[1]) + " |"]
                lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in b[2]]
                out.append("\n".join(lines))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        css = (
            "body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;"
            "max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
            "h1{border-bottom:2px solid #345;padding-bottom:.2em}h2{margin-top:1.6em;color:#345}"
            "table{border-collapse:collapse;margin:.8em 0;font-size:.92em}"
            "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
            "th{background:#eef2f6}tr:nth-child(even) td{background:#fafafa}"
            "pre{background:#f5f5f5;padding:.8em;overflow-x:auto;font-size:.85em}"
            "figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}"
            "figcaption{font-size:.88em;color:#555}.warn{color:#a40000;font-weight:bold}"
        )
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{css}</style></head><body>",
        ]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                text = html.escape(b[1])
                text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
                text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
                out.append(f"<p>{text}</p>")
            elif b[0] == "pre":
                out.append(f"<pre>{html.escape(b[1])}</pre>")
            elif b[0] == "table":
                rows = ["<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in b[1]) + "</tr>"]
                rows += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2]]
                out.append("<table>" + "".join(rows) + "</table>")
            elif b[0] == "img":
                data = base64.b64encode(self.images[b[1]]).decode("ascii")
                out.append(
                    f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(b[2])}</figcaption></figure>"
                )
        out.append("</body></html>")
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# reading the run directory


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


def _flat_numeric(row: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_numeric(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[key] = v
    return out


def _latest_sample_grid(run_dir: Path) -> Path | None:
    best, best_step = None, -1
    for p in (run_dir / "samples").glob("step_*.png"):
        m = re.fullmatch(r"step_(\d+)\.png", p.name)
        if m and int(m.group(1)) > best_step:
            best, best_step = p, int(m.group(1))
    return best


def _clean(v: Any) -> Any:
    """A CSV/JSON cell as a Python value: NaN and pandas NA to ``None``, numpy scalars to Python."""
    if v is None:
        return None
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    try:
        import pandas as pd

        if v is pd.NA:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return v


#: integer columns of the tidy benchmark table (pandas reads them as floats beside empty cells)
_COUNT_COLUMNS = ("seed", "n_seeds", "n_test", "n_val", "n_boot", "n_degenerate", "n_patients_real", "n_train_real",
                  "n_train_synthetic", "epochs_run", "best_epoch")


def _counts_to_int(row: dict) -> dict:
    for k in _COUNT_COLUMNS:
        v = row.get(k)
        if isinstance(v, float) and v.is_integer():
            row[k] = int(v)
    return row


def _frac_key(f: Any) -> float:
    return round(float(f), 6)


def _normalise_diff(d: dict, source: Path, notes: list[str]) -> dict:
    """One paired-difference row in the layout of ``pipelines.benchmark`` (``lo``/``hi``/``a``/``b``)."""
    d = _counts_to_int({k: _clean(v) for k, v in d.items()})
    for old, new in (("diff_lo", "lo"), ("diff_hi", "hi"), ("arm_value", "a"), ("real_value", "b")):
        if old in d and d.get(new) is None:
            d[new] = d.pop(old)
        else:
            d.pop(old, None)
    arm = d.get("arm")
    if (not arm or " - " in str(arm)) and d.get("comparison"):
        d["arm"] = str(d["comparison"]).split(" - ")[0].strip()
    elif arm and " - " in str(arm):
        d["arm"] = str(arm).split(" - ")[0].strip()
    if not d.get("arm"):
        raise MedsynthError(source, "a paired-difference row names no arm (no 'arm' or 'comparison')")
    if not d.get("metric"):
        note = "paired-difference rows without a 'metric' (older benchmark): read as AUROC differences"
        if note not in notes:
            notes.append(note)
            logger.warning("%s: %s", source, note)
        d["metric"] = "auroc"
    if d.get("fraction") is None:
        raise MedsynthError(source, f"a paired-difference row of arm {d['arm']!r} has no fraction")
    return d


def _read_benchmark(bench_dir: Path | None) -> dict | None:
    """The benchmark of ``pipelines.benchmark.write_benchmark``, or ``None`` when there is none.

    ``results.csv`` (the tidy table: ``kind`` = ``run|summary|diff``) gives the summary and
    paired-difference rows; ``results.json`` adds the settings and the test-set size. Either
    file alone is enough (the CSV wins when both give the rows).

    Returns:
        ``{"summary": [...], "diffs": [...], "config", "n_test", "n_test_patients",
        "sources", "notes"}``; every diff row carries ``arm``, ``fraction``, ``metric``,
        ``diff``, ``lo``, ``hi``, ``p``.

    Raises:
        MedsynthError: unreadable files, missing columns, or two rows for the same
            (arm, fraction, metric).
    """
    if bench_dir is None:
        return None
    bench_dir = Path(bench_dir)
    csv_path, json_path = bench_dir / "results.csv", bench_dir / "results.json"
    if not csv_path.is_file() and not json_path.is_file():
        return None
    data: dict = {}
    if json_path.is_file():
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MedsynthError(json_path, "is not valid JSON") from exc
        if not isinstance(data, dict):
            raise MedsynthError(json_path, "is not a benchmark results object")
    notes: list[str] = []
    sources = []
    if csv_path.is_file():
        import pandas as pd

        try:
            df = pd.read_csv(csv_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise MedsynthError(csv_path, f"is not a readable CSV ({exc.__class__.__name__})") from exc
        missing = {"kind", "arm", "fraction"} - set(df.columns)
        if missing:
            raise MedsynthError(csv_path, f"missing column(s) {', '.join(sorted(missing))}: not a benchmark table")
        summary = [_counts_to_int({k: _clean(v) for k, v in r.items()
                                   if k not in ("kind", "seed", "metric", "diff", "diff_lo", "diff_hi", "p",
                                                "comparison")})
                   for r in df[df["kind"] == "summary"].to_dict("records")]
        raw_diffs = [{k: v for k, v in r.items() if k != "kind"} for r in df[df["kind"] == "diff"].to_dict("records")]
        sources.append(str(csv_path))
        n_test = next((s.get("n_test") for s in summary if s.get("n_test") is not None), None)
        if n_test is None:
            n_test = data.get("n_test")
    else:
        summary = [dict(r) for r in data.get("summary", []) or [] if isinstance(r, dict)]
        raw_diffs = [dict(d) for d in data.get("diffs", []) or [] if isinstance(d, dict)]
        n_test = data.get("n_test")
    if data:
        sources.append(str(json_path))
    src = csv_path if csv_path.is_file() else json_path
    diffs = [_normalise_diff(d, src, notes) for d in raw_diffs]
    seen: set = set()
    for d in diffs:
        key = (d["arm"], _frac_key(d["fraction"]), d["metric"])
        if key in seen:
            raise MedsynthError(src, f"two paired-difference rows for arm {key[0]!r}, fraction {key[1]:g}, "
                                     f"metric {key[2]!r}")
        seen.add(key)
    for r in summary:
        if r.get("arm") is None or r.get("fraction") is None:
            raise MedsynthError(src, "a summary row names no arm or fraction")
    return {
        "summary": summary,
        "diffs": diffs,
        "config": data.get("config") if isinstance(data.get("config"), dict) else {},
        "n_test": _clean(n_test),
        "n_test_patients": _clean(data.get("n_test_patients")),
        "timings": data.get("timings") if isinstance(data.get("timings"), dict) else {},
        "sources": sources,
        "notes": notes,
    }


# --------------------------------------------------------------------------------------------
# the benchmark headline: one entry per arm and fraction, the paired differences per metric

REFERENCE_ARM = "real"
ARM_ORDER = ("real", "real+classic", "real+synthetic", "real+classic+synthetic", "synthetic-only")
#: the paired metrics of the benchmark, with their labels
PAIRED_METRICS = (("auroc", "AUROC"), ("sens_at_90spec", "sens@90%spec"), ("spec_at_90sens", "spec@90%sens"))
VERDICT_RULE = ("better / worse than real-only when the paired 95% CI of the difference excludes 0; "
                "otherwise no significant difference")


def _verdict(d: dict | None) -> str:
    if not d or d.get("lo") is None or d.get("hi") is None:
        return "not tested"
    if d["lo"] > 0:
        return "better"
    if d["hi"] < 0:
        return "worse"
    return "no significant difference"


def _arm_order(arms) -> list[str]:
    arms = list(dict.fromkeys(arms))
    return sorted(arms, key=lambda a: (ARM_ORDER.index(a) if a in ARM_ORDER else len(ARM_ORDER), arms.index(a)))


def benchmark_headline(bench: dict) -> dict:
    """Per arm and real fraction: the arm's AUROC and its paired differences to real-only.

    Args:
        bench: the output of :func:`_read_benchmark`.

    Returns:
        ``{"reference_arm", "rule", "n_auroc_comparisons", "arms": [{"arm", "verdict_text",
        "fractions": [{"fraction", "auroc", "auroc_lo", "auroc_hi", "real_auroc",
        "diffs": {metric: {"diff", "lo", "hi", "p", "verdict"}}}]}]}``; the reference arm is
        listed first with empty ``diffs``. Differences are looked up by (arm, fraction,
        metric), never by fraction alone.
    """
    summ = {(str(r["arm"]), _frac_key(r["fraction"])): r for r in bench["summary"]}
    diffs = {(str(d["arm"]), _frac_key(d["fraction"]), str(d["metric"])): d for d in bench["diffs"]}
    arms = _arm_order([a for a, _ in summ] + [a for a, _, _ in diffs])
    fractions = sorted({f for _, f in summ} | {f for _, f, _ in diffs})
    out = []
    for arm in arms:
        rows = []
        for f in fractions:
            s = summ.get((arm, f), {})
            if not s and not any((arm, f, m) in diffs for m, _ in PAIRED_METRICS):
                continue
            ref = summ.get((REFERENCE_ARM, f), {})
            dd = {}
            if arm != REFERENCE_ARM:
                for m, _ in PAIRED_METRICS:
                    d = diffs.get((arm, f, m))
                    if d is not None:
                        dd[m] = {"diff": d.get("diff"), "lo": d.get("lo"), "hi": d.get("hi"), "p": d.get("p"),
                                 "diff_seed_mean": d.get("diff_seed_mean"), "diff_seed_sd": d.get("diff_seed_sd"),
                                 "verdict": _verdict(d)}
            rows.append({"fraction": f, "auroc": s.get("auroc"), "auroc_lo": s.get("auroc_lo"),
                         "auroc_hi": s.get("auroc_hi"), "real_auroc": ref.get("auroc"), "diffs": dd})
        entry = {"arm": arm, "fractions": rows}
        if arm != REFERENCE_ARM:
            groups: dict[str, list[str]] = {}
            for r in rows:
                groups.setdefault(r["diffs"].get("auroc", {}).get("verdict", "not tested"), []).append(_pct(r["fraction"]))
            entry["verdict_text"] = "; ".join(f"{v} at {', '.join(fs)}" for v, fs in groups.items())
        out.append(entry)
    verdicts = [r["diffs"]["auroc"]["verdict"] for a in out for r in a["fractions"] if "auroc" in r["diffs"]]
    caveats = []
    n_seeds = [int(r["n_seeds"]) for r in bench["summary"] if r.get("n_seeds") is not None]
    if n_seeds and min(n_seeds) < 5:
        caveats.append(f"only {min(n_seeds)} seed(s) per arm (5 recommended)")
    chance = [_pct(f) for f in fractions
              if summ.get((REFERENCE_ARM, f), {}).get("auroc_lo") is not None
              and summ[(REFERENCE_ARM, f)]["auroc_lo"] <= 0.5]
    if chance:
        caveats.append(f"the real-only classifier's AUROC CI includes chance (0.5) at {', '.join(chance)}: "
                       "the yardstick is too weak there for the differences to mean much")
    return {"reference_arm": REFERENCE_ARM, "rule": VERDICT_RULE, "n_auroc_comparisons": len(verdicts),
            "n_better": verdicts.count("better"), "n_worse": verdicts.count("worse"), "caveats": caveats,
            "arms": out}


def _sfmt(v: Any) -> str:
    """Signed figure: ``+0.062``, ``-0.003``; ``–`` when missing."""
    if v is None or not isinstance(v, (int, float, np.floating)) or not math.isfinite(float(v)):
        return "–"
    return f"{float(v):+.3f}"


def _diff_text(d: dict | None, with_p: bool = True) -> str:
    """``+0.062 [+0.032, +0.092], p = 0.040`` (or ``–``)."""
    if not d or d.get("diff") is None:
        return "–"
    text = f"{_sfmt(d['diff'])} [{_sfmt(d.get('lo'))}, {_sfmt(d.get('hi'))}]"
    return text + (f", p = {_fmt(d.get('p'))}" if with_p else "")


def _ci_text(point: Any, lo: Any, hi: Any) -> str:
    if point is None:
        return "–"
    return f"{_fmt(point)} [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else _fmt(point)


# --------------------------------------------------------------------------------------------
# figures


def _fig_grids(synth: np.ndarray, real: np.ndarray, syn_titles: str, real_titles: str) -> bytes:
    ncol = 4
    fig = new_figure(9, 4.8)
    for ax, imgs, title in zip(fig.subplots(1, 2), (synth, real), (syn_titles, real_titles)):
        ax.imshow(_tile(imgs, ncol), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)


def _fig_curves(stats: list[dict]) -> bytes | None:
    flat = [_flat_numeric(r) for r in stats]
    flat = [r for r in flat if "step" in r]
    if not flat:
        return None
    keys = sorted({k for r in flat for k in r} - _STATS_SKIP)
    loss_keys = [k for k in keys if "loss" in k.lower()]
    other_keys = [k for k in keys if k not in loss_keys]
    panels = [("losses", loss_keys)] + ([("other statistics", other_keys)] if other_keys else [])
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig = new_figure(5 * len(panels) + 0.5, 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, ks) in zip(axes, panels):
        for k in ks:
            pts = [(r["step"], r[k]) for r in flat if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None,
                    label=k.removeprefix("loss/"))
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def _fig_nn_hist(synth_d: np.ndarray, real_d: np.ndarray, summ: dict, space: str) -> bytes:
    fig = new_figure(6, 3.6)
    ax = fig.subplots()
    lo = min(synth_d.min(), real_d.min())
    hi = max(synth_d.max(), real_d.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
    ax.hist(real_d, bins=bins, density=True, alpha=0.55, label=f"real → real (leave-one-out, n={real_d.size})")
    ax.hist(synth_d, bins=bins, density=True, alpha=0.55, label=f"synthetic → real (DCR, n={synth_d.size})")
    for q, ls in (("real_nn_p1", ":"), ("real_nn_p5", "--")):
        ax.axvline(summ[q], color="k", ls=ls, lw=1, label=f"real→real {'1st' if q.endswith('1') else '5th'} percentile")
    ax.set_xlabel(f"nearest-neighbour L2 distance ({space})")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def _fig_benchmark(summary: list[dict]) -> bytes | None:
    rows = [r for r in summary if "fraction" in r and isinstance(r.get("auroc"), (int, float))]
    if not rows:
        return None
    fig = new_figure(5.5, 3.8)
    ax = fig.subplots()
    arms = list(dict.fromkeys(str(r.get("arm", "")) for r in rows))
    for arm in arms:
        g = sorted((r for r in rows if str(r.get("arm", "")) == arm), key=lambda r: r["fraction"])
        x = [100 * r["fraction"] for r in g]
        y = [r["auroc"] for r in g]
        ax.plot(x, y, "o-", label=arm)
        if all(isinstance(r.get("auroc_lo"), (int, float)) and isinstance(r.get("auroc_hi"), (int, float)) for r in g):
            ax.fill_between(x, [r["auroc_lo"] for r in g], [r["auroc_hi"] for r in g], alpha=0.2)
    ax.set_xlabel("real training patients used (%)")
    ax.set_ylabel("test AUROC (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


# --------------------------------------------------------------------------------------------
# the report


#: a membership-inference attack is read as a signal when the lower end of its 95% CI lies above
#: both chance (0.5) and the control AUROC (held-out half vs held-out half, scored the same way)
MIA_RULE = ("membership signal when the attack AUROC's 95% CI lies wholly above both 0.5 and the control AUROC "
            "(one half of the held-out images against the other, scored the same way)")


def mia_signal(attack: dict, control: dict) -> bool:
    """:data:`MIA_RULE`: the attack's 95% CI lower end above 0.5 and above the control AUROC.

    Args:
        attack: ``{"auroc", "lo", "hi"}`` of training vs held-out images (AUROC in [0, 1]).
        control: ``{"auroc", ...}`` of held-out half vs held-out half.
    """
    lo, ctrl = attack.get("lo"), control.get("auroc")
    return bool(lo is not None and ctrl is not None and lo > max(0.5, ctrl))


def _resolve_encoder(encoder, real_x: torch.Tensor, seed: int, steps: int, out_dir: Path):
    if encoder is None:
        enc = train_feature_encoder(real_x, seed=seed, steps=steps)
        path = save_encoder(enc, out_dir / "encoder.pt")
        return enc, {"source": "trained for this report on the real training images",
                     "file": path.name}
    if isinstance(encoder, (str, Path)):
        enc = load_encoder(encoder)
        return enc, {"source": "loaded", "file": str(encoder)}
    if isinstance(encoder, nn.Module):
        return encoder, {"source": "supplied by the caller", "file": None}
    raise MedsynthError("encoder", f"expected a path or an nn.Module, got {type(encoder).__name__}")


def build_report(
    run_dir: str | Path,
    *,
    real_train: "ImageSet",
    synthetic: torch.Tensor,
    synthetic_labels=None,
    out_root: str | Path = "reports",
    benchmark_dir: str | Path | None = None,
    encoder: nn.Module | str | Path | None = None,
    seed: int = 0,
    encoder_steps: int = 300,
    max_real_queries: int = 2000,
) -> Path:
    """Write ``<out_root>/<run name>/report.{md,html,json}`` and its PNG figures.

    The document opens with a one-page summary (does augmentation help, by how much, with
    95% CIs and paired-test p-values per arm; memorisation and membership inference; fidelity
    against the real-vs-real floor), then one section per area: fidelity, privacy, downstream
    benchmark, run and configuration provenance. ``report.json`` holds every figure the
    Markdown shows (the summary's under ``headline``); ``report.html`` embeds the PNGs as
    ``data:`` URIs and links nothing outside itself.

    Args:
        run_dir: a run directory (``config.yaml`` required; ``stats.jsonl``,
            ``samples/step_*.png``, ``benchmark/`` and ``evaluate/evaluation.json`` (from
            ``medsynth evaluate``) used when present).
        real_train: the real **training** images (an ``ImageSet``; ``images`` ``(N, 1, H, W)``
            or ``(N, 1, D, H, W)`` float32 in [-1, 1]). If its ``splits`` mark some images as
            ``train`` and others not, only the ``train`` ones are used.
        synthetic: ``(M, 1, H, W)`` / ``(M, 1, D, H, W)`` float32 in [-1, 1], same image shape.
        synthetic_labels: optional ``(M,)`` class labels; adds per-class Fréchet distances.
        out_root: parent folder of the report folder.
        benchmark_dir: folder with ``results.csv`` and/or ``results.json`` (and ``plot.png``)
            from ``pipelines.benchmark.write_benchmark``; default ``<run_dir>/benchmark``.
        encoder: feature encoder (module or file from ``save_encoder``); ``None`` trains one on
            ``real_train`` with ``seed`` and saves it as ``encoder.pt`` in the report folder, so
            later reports can reuse it and stay comparable.
        seed: seeds the encoder training, the real/real halves and the images shown.
        encoder_steps: training steps when the encoder is trained here.
        max_real_queries: at most this many real images are queried for the real→real
            nearest-neighbour reference (each against all others).

    Returns:
        The report folder (containing ``report.md``, ``report.html``, ``report.json``).

    Raises:
        MedsynthError: missing/invalid run files, or image shapes that do not match.
    """
    from medsynth.metrics.evaluate import read_evaluation

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedsynthError(run_dir, "run directory not found")
    cfg, cfg_text = _read_config(run_dir)
    stats = _read_stats(run_dir)
    bench_dir = Path(benchmark_dir) if benchmark_dir is not None else run_dir / "benchmark"
    bench = _read_benchmark(bench_dir)
    ev = read_evaluation(run_dir)

    real_x = torch.as_tensor(real_train.images, dtype=torch.float32).detach().cpu()
    real_labels = getattr(real_train, "labels", None)
    splits = list(getattr(real_train, "splits", []) or [])
    if splits and len(splits) == len(real_x) and "train" in splits and any(s != "train" for s in splits):
        keep = torch.tensor([s == "train" for s in splits])
        logger.info("report: using the %d of %d real images in the train split", int(keep.sum()), len(splits))
        real_x = real_x[keep]
        real_labels = None if real_labels is None else torch.as_tensor(real_labels)[keep]
    syn_x = torch.as_tensor(synthetic, dtype=torch.float32).detach().cpu()
    if real_x.dim() not in (4, 5) or real_x.shape[1] != 1 or len(real_x) < 4:
        raise MedsynthError("real_train", f"need at least 4 images (N, 1, H, W) or (N, 1, D, H, W), got {tuple(real_x.shape)}")
    if syn_x.dim() not in (4, 5) or syn_x.shape[1] != 1 or len(syn_x) < 2:
        raise MedsynthError("synthetic", f"need at least 2 images (M, 1, H, W) or (M, 1, D, H, W), got {tuple(syn_x.shape)}")
    if syn_x.shape[1:] != real_x.shape[1:]:
        raise MedsynthError(
            "synthetic", f"image shape {tuple(syn_x.shape[1:])} differs from the real images' {tuple(real_x.shape[1:])}"
        )
    if synthetic_labels is not None:
        synthetic_labels = np.asarray(torch.as_tensor(synthetic_labels).cpu()).astype(np.int64).ravel()
        if len(synthetic_labels) != len(syn_x):
            raise MedsynthError("synthetic_labels", f"{len(synthetic_labels)} labels for {len(syn_x)} images")

    name = run_dir.resolve().name
    out_dir = Path(out_root) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    modality = _first(cfg, "data.modality", "modality") or getattr(real_train, "modality", None)
    model_name = _first(cfg, "model.name", "model", "model.variant")
    result: dict[str, Any] = {"run": name, "run_dir": str(run_dir), "seed": int(seed)}

    last = _flat_numeric(stats[-1]) if stats else {}
    run_info = {
        "model": model_name,
        "modality": modality,
        "data_source": _first(cfg, "data.source", "source"),
        "image_shape": list(real_x.shape[1:]),
        "steps_configured": _first(cfg, "train.steps", "steps"),
        "steps_done": last.get("step"),
        "kimg": last.get("kimg"),
        "wall_seconds": last.get("seconds"),
        "img_per_s_last": last.get("img_per_s"),
        "n_real_train": int(len(real_x)),
        "n_synthetic": int(len(syn_x)),
    }
    result["summary"] = run_info
    result["config"] = cfg

    # ---- fidelity (computed into its own section document)
    fid_doc = _Doc()
    fid_doc.h("Fidelity")
    si = np.sort(rng.choice(len(syn_x), size=min(GRID_N, len(syn_x)), replace=False))
    ri = np.sort(rng.choice(len(real_x), size=min(GRID_N, len(real_x)), replace=False))
    slice_note = " (central axial slices)" if real_x.dim() == 5 else ""
    fid_doc.img("fig_samples.png", _fig_grids(_view2d(syn_x[si]), _view2d(real_x[ri]),
                                             f"synthetic{slice_note}", f"real training{slice_note}"),
                f"{len(si)} random synthetic images (left) beside {len(ri)} random real training images (right){slice_note}.")
    enc, enc_info = _resolve_encoder(encoder, real_x, seed, encoder_steps, out_dir)
    fr = extract_features(enc, real_x)
    fs = extract_features(enc, syn_x)
    result["fidelity"] = _fidelity_section(fid_doc, enc, enc_info, fr, fs, synthetic_labels, real_labels, seed)
    if ev is not None:
        _emit_evaluation(fid_doc, ev, run_dir, "fidelity")

    # ---- privacy
    priv_doc = _Doc()
    result["privacy"] = _privacy_section(priv_doc, syn_x, real_x, fs, fr, seed, max_real_queries)
    if ev is not None:
        _emit_evaluation(priv_doc, ev, run_dir, "privacy")
    else:
        priv_doc.p(f"Membership inference and NNDR: not computed. Run `medsynth evaluate {run_dir}` (KID, "
                   "precision/recall, density/coverage, intensity, MS-SSIM diversity, NNDR, membership inference "
                   "with its control), then rebuild the report.")
    result["evaluation"] = ev

    # ---- benchmark
    bench_doc = _Doc()
    bench_doc.h("Downstream benchmark")
    result["benchmark"] = _benchmark_section(bench_doc, bench, bench_dir)

    # ---- provenance
    prov_doc = _Doc()
    result["provenance"] = _provenance_section(prov_doc, run_dir, run_info, stats, cfg_text, bench, ev, result)

    # ---- the summary page, then the sections
    headline = _headline(result, ev)
    result["headline"] = headline
    doc = _Doc()
    doc.h(f"medsynth report: {name}", 1)
    doc.p(
        f"Model **{_fmt(model_name)}** on **{_fmt(modality)}** images "
        f"({' × '.join(map(str, real_x.shape[2:]))}), trained {_fmt(run_info['steps_done'])} steps; "
        f"{len(syn_x)} synthetic images compared with {len(real_x)} real training images. "
        f"All numbers are reproducible with seed {seed}."
    )
    _summary_section(doc, headline, result, ev, run_dir)
    for part in (fid_doc, priv_doc, bench_doc, prov_doc):
        doc.extend(part)

    # ---- write
    figures = {}
    for fname, data in doc.images.items():
        write_bytes(out_dir / fname, data)
        figures[fname.removesuffix(".png")] = fname
    result["figures"] = figures
    result["versions"] = _versions()
    write_bytes(out_dir / "report.md", doc.markdown().encode("utf-8"))
    write_bytes(out_dir / "report.html", doc.html(f"medsynth report: {name}").encode("utf-8"))
    write_bytes(out_dir / "report.json", (json.dumps(_jsonable(result), indent=1) + "\n").encode("utf-8"))
    logger.info("report written to %s", out_dir)
    return out_dir


def _versions() -> dict:
    import medsynth

    out = {"medsynth": getattr(medsynth, "__version__", None), "torch": str(torch.__version__),
           "numpy": np.__version__}
    try:
        import monai

        out["monai"] = monai.__version__
    except ImportError:  # pragma: no cover - monai is a dependency
        out["monai"] = None
    return out


# --------------------------------------------------------------------------------------------
# the summary page


def _headline(result: dict, ev: dict | None) -> dict:
    """The summary's figures: benchmark differences, memorisation, membership inference, fidelity."""
    fid, priv = result["fidelity"], result["privacy"]
    h: dict[str, Any] = {}
    h["benchmark"] = benchmark_headline(result["benchmark"]) if result.get("benchmark") else None
    mem = {
        "report_dcr": {"frac_below_real_p1": priv["pixel"]["frac_below_real_p1"],
                       "dcr_median": priv["pixel"]["dcr_median"], "real_nn_median": priv["pixel"]["real_nn_median"],
                       "n_synthetic": result["summary"]["n_synthetic"], "flag": priv["memorisation_flag"],
                       "rule": priv["flag_rule"]},
        "flag": bool(priv["memorisation_flag"]),
    }
    mia: dict[str, Any] | None = None
    if ev is not None:
        ep = ev["privacy"]
        mem["evaluation"] = {"dcr_frac_below_real_p1": ep["dcr"]["frac_below_real_p1"],
                             "nndr_frac_below_real_p1": ep["nndr"]["frac_below_real_p1"],
                             "n_synthetic": ev["fidelity"]["n_synthetic"],
                             "flag": bool(ep.get("memorisation_flag")), "rule": ep.get("flag_rule")}
        mem["flag"] = mem["flag"] or bool(ep.get("memorisation_flag"))
        m = ep.get("membership_inference", {})
        if "skipped" in m:
            mia = {"skipped": m["skipped"]}
        else:
            mia = {"n_members": m.get("n_members"), "n_nonmembers": m.get("n_nonmembers"), "rule": MIA_RULE}
            for key in ("distance", "discriminator"):
                d = m.get(key, {})
                if "attack" not in d:
                    mia[key] = {"skipped": d.get("skipped", "not run")}
                    continue
                a, c = d["attack"], d["control"]
                mia[key] = {"auroc": a["auroc"], "lo": a["lo"], "hi": a["hi"], "control_auroc": c["auroc"],
                            "control_lo": c["lo"], "control_hi": c["hi"],
                            "excess_over_control": d.get("excess_over_control"),
                            "signal": mia_signal(a, c)}
    h["memorisation"] = mem
    h["membership_inference"] = mia
    fh: dict[str, Any] = {"fd_matched": fid["fd_synthetic_vs_real_matched"], "fd_floor_matched": fid["fd_floor_matched"],
                          "fd_ratio_to_floor": fid["fd_ratio_to_floor"], "fd_matched_n": fid["fd_matched_n"],
                          "encoder_fingerprint": fid["encoder"]["fingerprint"]}
    if ev is not None:
        ef = ev["fidelity"]
        fh["evaluation"] = {
            "fd": [ef["fd"]["synthetic"]["mean"], ef["fd"]["floor"]["mean"]],
            "kid": [ef["kid"]["synthetic"]["mean"], ef["kid"]["floor"]["mean"]],
            **{k: [ef["prdc"]["synthetic"][k]["mean"], ef["prdc"]["floor"][k]["mean"]]
               for k in ("precision", "recall", "density", "coverage")},
            "ms_ssim": [ef["diversity_ms_ssim"]["synthetic"]["mean"], ef["diversity_ms_ssim"]["real"]["mean"]],
            "encoder_fingerprint": ef["encoder"]["fingerprint"],
        }
    h["fidelity"] = fh
    return h


def _summary_section(doc: _Doc, h: dict, result: dict, ev: dict | None, run_dir: Path) -> None:
    doc.h("Summary")
    # -- augmentation
    bh, bench = h["benchmark"], result.get("benchmark")
    if bh is None:
        doc.p("**Does augmentation help?** Not measured: no benchmark results for this run "
              f"(run `medsynth benchmark --synthetic {run_dir}`, or pass `--benchmark DIR`).")
    else:
        n_test = bench.get("n_test")
        pats = bench.get("n_test_patients")
        lines = []
        for arm in bh["arms"]:
            if arm["arm"] == bh["reference_arm"]:
                continue
            parts = [f"{_diff_text(r['diffs'].get('auroc'))} at {_pct(r['fraction'])}"
                     for r in arm["fractions"] if "auroc" in r["diffs"]]
            if parts:
                lines.append(f"**{arm['arm']}**: AUROC {'; '.join(parts)} of the real training patients — "
                             f"{arm['verdict_text']}.")
            else:
                lines.append(f"**{arm['arm']}**: no paired AUROC difference in the results.")
        n, nb, nw = bh["n_auroc_comparisons"], bh["n_better"], bh["n_worse"]
        doc.p(f"**Does augmentation help?** In test AUROC, {nb} of {n} arm × real-fraction comparisons are better "
              f"than real-only, {nw} worse and {n - nb - nw} not significantly different. Differences are against "
              "the real-only arm trained on the same real patients (seed ensembles; difference [paired "
              f"patient-bootstrap 95% CI], two-sided p), on {_fmt(n_test)} held-out test cases"
              + (f" from {_fmt(pats)} patients" if pats is not None else "") + ". " + " ".join(lines)
              + ("" if not bh["caveats"] else " **Caveats:** " + "; ".join(bh["caveats"]) + "."))
        rows = []
        for arm in bh["arms"]:
            for r in arm["fractions"]:
                d = r["diffs"]
                is_ref = arm["arm"] == bh["reference_arm"]
                rows.append([arm["arm"], _pct(r["fraction"]), _ci_text(r["auroc"], r["auroc_lo"], r["auroc_hi"]),
                             "reference" if is_ref else _diff_text(d.get("auroc"), with_p=False),
                             "" if is_ref else _fmt((d.get("auroc") or {}).get("p")),
                             "" if is_ref else _diff_text(d.get("sens_at_90spec")),
                             "" if is_ref else _diff_text(d.get("spec_at_90sens")),
                             "" if is_ref else (d.get("auroc") or {}).get("verdict", "not tested")])
        doc.table(["arm", "real training patients", "AUROC [95% CI]", "Δ AUROC vs real-only [95% CI]", "p",
                   "Δ sens@90%spec [95% CI], p", "Δ spec@90%sens [95% CI], p", "AUROC verdict"], rows)
        doc.p(f"Verdict rule: {bh['rule']}. p-values are per comparison, not adjusted for the "
              f"{bh['n_auroc_comparisons']} AUROC comparisons shown."
              + (" " + " ".join(bench["notes"]) + "." if bench.get("notes") else ""))
    # -- memorisation
    mem = h["memorisation"]
    own = mem["report_dcr"]
    text = (f"**Is there memorisation?** {'**Flagged**' if mem['flag'] else 'Not flagged'}. "
            f"Of this report's {own['n_synthetic']} synthetic images, {own['frac_below_real_p1']:.1%} lie closer to "
            "a training image than the 1st percentile of real-to-real nearest-neighbour distances (≈1% expected; "
            f"flagged above {MEMORISATION_FLAG_FRACTION:.0%}); median distance to the closest training image "
            f"(DCR) {_fmt(own['dcr_median'])} against {_fmt(own['real_nn_median'])} real-to-real (pixel L2).")
    if "evaluation" in mem:
        e = mem["evaluation"]
        text += (f" In the `medsynth evaluate` sample ({e['n_synthetic']} images): DCR {e['dcr_frac_below_real_p1']:.1%} "
                 f"and NNDR {e['nndr_frac_below_real_p1']:.1%} below the real 1st percentile "
                 f"({'flagged' if e['flag'] else 'not flagged'}).")
    doc.p(text)
    # -- membership inference
    mia = h["membership_inference"]
    if mia is None:
        doc.p(f"**Membership inference:** not computed (run `medsynth evaluate {run_dir}`, then rebuild the report).")
    elif "skipped" in mia:
        doc.p(f"**Membership inference:** skipped by the evaluation: {mia['skipped']}.")
    else:
        parts = []
        for key, lab in (("distance", "distance attack"), ("discriminator", "discriminator attack")):
            d = mia.get(key, {})
            if "skipped" in d:
                parts.append(f"{lab}: skipped ({d['skipped']})")
                continue
            parts.append(f"{lab} AUROC {_ci_text(d['auroc'], d['lo'], d['hi'])} against its control "
                         f"{_ci_text(d['control_auroc'], d['control_lo'], d['control_hi'])} "
                         f"(difference {_sfmt(d['excess_over_control'])}) — "
                         + ("**signal above the control**" if d["signal"] else "no signal beyond the control"))
        doc.p(f"**Membership inference** ({_fmt(mia['n_members'])} training vs {_fmt(mia['n_nonmembers'])} held-out "
              f"real images, 95% bootstrap CIs): {'; '.join(parts)}. Rule: {mia['rule']}.")
    # -- fidelity
    fh = h["fidelity"]
    ratio = fh["fd_ratio_to_floor"]
    doc.p(f"**Fidelity against the real-vs-real floor.** Fréchet distance on the project's own encoder "
          f"(matched n = {fh['fd_matched_n']}): synthetic {_fmt(fh['fd_matched'])} against a floor of "
          f"{_fmt(fh['fd_floor_matched'])} between two halves of the real images, "
          + (f"{_fmt(ratio)}× the floor (1 = as close as real images are to each other)."
             if ratio is not None and math.isfinite(ratio) else "ratio undefined (zero floor)."))
    rows = [["Fréchet distance (report encoder, matched n)", fh["fd_matched"], fh["fd_floor_matched"], "lower"]]
    if "evaluation" in fh:
        e = fh["evaluation"]
        rows += [["Fréchet distance (evaluation encoder)", *e["fd"], "lower"],
                 ["KID (evaluation encoder)", *e["kid"], "lower (≈0)"],
                 *[[f"{k} (k-NN manifold)", *e[k], "higher (≈ floor)"] for k in ("precision", "recall", "density",
                                                                               "coverage")],
                 ["mean pairwise MS-SSIM (diversity; floor = all real)", *e["ms_ssim"], "≈ real; higher = collapse"]]
    doc.table(["metric", "synthetic vs real", "real vs real (floor)", "better"], rows)


# --------------------------------------------------------------------------------------------
# the sections


def _fidelity_section(doc: _Doc, enc, enc_info: dict, fr, fs, synthetic_labels, real_labels, seed: int) -> dict:
    fd = frechet_distance(fs, fr)
    # Equal sizes: m synthetic vs real half A (m) against real half A vs half B, averaged over
    # FD_REPEATS random splits (a single split's floor varied by ±30% on 435 LIDC crops).
    h = len(fr) // 2
    m = min(h, len(fs))
    split_rng = np.random.default_rng(seed)
    fd_rep, floor_rep = [], []
    for _ in range(FD_REPEATS):
        perm = split_rng.permutation(len(fr))
        fd_rep.append(frechet_distance(fs[split_rng.permutation(len(fs))[:m]], fr[perm[:m]]))
        floor_rep.append(frechet_distance(fr[perm[:m]], fr[perm[h : h + m]]))
    fd_matched, floor_matched = float(np.mean(fd_rep)), float(np.mean(floor_rep))
    floor = frechet_floor(fr, seed, n_repeats=FD_REPEATS)
    per_class = {}
    if synthetic_labels is not None and real_labels is not None:
        rl = np.asarray(torch.as_tensor(real_labels).cpu()).ravel()
        for c in sorted(set(synthetic_labels.tolist()) & set(rl.tolist())):
            if c < 0:
                continue
            a, b = fs[synthetic_labels == c], fr[rl == c]
            if len(a) >= 4 and len(b) >= 4:
                per_class[str(c)] = {"fd": frechet_distance(a, b), "n_synthetic": int(len(a)), "n_real": int(len(b))}
    enc_desc = {
        "kind": "convolutional autoencoder (bottleneck + texture statistics), trained on real training images only",
        **enc_info,
        "config": dict(vars(enc.cfg)) if hasattr(enc, "cfg") else None,
        "feature_dim": int(fr.shape[1]),
        "fingerprint": encoder_fingerprint(enc),
        "train_info": dict(getattr(enc, "train_info", {})),
    }
    out = {
        "fd_synthetic_vs_real": fd,
        "fd_floor_real_vs_real": floor,
        "fd_matched_n": int(m),
        "fd_repeats": FD_REPEATS,
        "fd_synthetic_vs_real_matched": fd_matched,
        "fd_synthetic_vs_real_matched_sd": float(np.std(fd_rep, ddof=1)),
        "fd_floor_matched": floor_matched,
        "fd_floor_matched_sd": float(np.std(floor_rep, ddof=1)),
        "fd_ratio_to_floor": fd_matched / floor_matched if floor_matched and floor_matched > 0 else float("nan"),
        "per_class": per_class,
        "encoder": enc_desc,
    }
    doc.h("Fréchet distance on the report's encoder", 3)
    doc.p(
        "Fréchet distance (FD) between Gaussians fitted to image features. The features come from "
        "the project's own convolutional autoencoder trained (self-supervised, reconstruction loss) on "
        "the real training images only — no downloaded network. FD depends on sample size, so the "
        "fair comparison is at equal sizes: synthetic vs one random half of the real images, against "
        "the real-vs-real floor (two disjoint halves), each averaged over random splits."
    )
    rows = [
        [f"synthetic ({len(fs)}) vs all real training images ({len(fr)})", fd],
        [f"synthetic ({m}) vs real half A ({m}); mean ± sd of {FD_REPEATS} splits",
         f"{_fmt(fd_matched)} ± {_fmt(out['fd_synthetic_vs_real_matched_sd'])}"],
        [f"real-vs-real floor: half A ({m}) vs half B ({m}); mean ± sd of {FD_REPEATS} splits",
         f"{_fmt(floor_matched)} ± {_fmt(out['fd_floor_matched_sd'])}"],
        ["ratio (matched synthetic / floor; 1 = indistinguishable)", out["fd_ratio_to_floor"]],
    ]
    rows += [[f"class {c}: synthetic ({v['n_synthetic']}) vs real ({v['n_real']})", v["fd"]] for c, v in per_class.items()]
    doc.table(["comparison", "FD"], rows)
    doc.p(
        "Reading: ratio ≈ 1, the synthetic images are as close to the real ones as real images are to "
        "each other; > 1, distinguishable (on LIDC crops, held-out real images gave 0.9, blurred ones "
        "1.6, noisy ones 2.2); well below 1, closer to the training images than new real images would "
        "be — check the privacy section for copies."
    )
    doc.p(
        f"Encoder: {enc_info['source']}"
        + (f" (`{enc_info['file']}`)" if enc_info.get("file") else "")
        + f", fingerprint `{enc_desc['fingerprint']}`, {enc_desc['feature_dim']} features. "
        "FD values are comparable only between reports with the same encoder fingerprint."
    )
    return out


def _privacy_section(doc: _Doc, syn_x, real_x, fs, fr, seed: int, max_real_queries: int) -> dict:
    d_px, idx_px = nearest_neighbours(syn_x, real_x, space="pixel")
    r_px = real_to_real_nn(real_x, space="pixel", max_queries=max_real_queries, seed=seed)
    s_px = memorisation_summary(d_px, r_px)
    d_ft, _ = nearest_neighbours(fs, fr, space="features")
    r_ft = real_to_real_nn(fr, space="features", max_queries=max_real_queries, seed=seed)
    s_ft = memorisation_summary(d_ft, r_ft)
    flag = s_px["frac_below_real_p1"] > MEMORISATION_FLAG_FRACTION
    order = np.argsort(d_px, kind="stable")[:N_CLOSEST_PAIRS]
    closest = [{"synthetic_index": int(i), "real_index": int(idx_px[i]), "distance": float(d_px[i])} for i in order]

    doc.h("Privacy")
    doc.h("Distance to the closest training image (this report's synthetic sample)", 3)
    doc.p(
        "Distance to closest record (DCR): for every synthetic image, the L2 distance to the nearest "
        "real training image (flattened pixels in [-1, 1]; and in the encoder's feature space), against "
        "the leave-one-out nearest-neighbour distances among the real training images. A generator "
        "that copies its training data has DCRs far below the real-to-real distances. "
        f"If more than {MEMORISATION_FLAG_FRACTION:.0%} of synthetic images are closer to a training "
        "image than the 1st percentile of real-to-real distances (≈1% expected), the set is flagged. "
        "This screens for memorisation; it is not a proof of privacy. Very smooth (blurry) samples "
        "also lie close to many images in L2: check the closest pairs below (copies look identical)."
    )
    if flag:
        doc.p(f"**WARNING: possible memorisation** — {s_px['frac_below_real_p1']:.1%} of synthetic images "
              "lie closer to a training image than 99% of real images lie to each other.")
    keys = [("dcr_median", "median DCR"), ("dcr_min", "minimum DCR"), ("dcr_p5", "5th percentile DCR"),
            ("real_nn_median", "median real→real"), ("real_nn_p1", "1st percentile real→real"),
            ("real_nn_p5", "5th percentile real→real"), ("dcr_ratio", "median DCR / median real→real"),
            ("frac_below_real_p1", "fraction of synthetic ≤ real→real 1st pct"),
            ("frac_below_real_p5", "fraction of synthetic ≤ real→real 5th pct")]
    doc.table(["statistic", "pixel space", "feature space"], [[lab, s_px[k], s_ft[k]] for k, lab in keys])
    doc.img("fig_nn_distances.png", _fig_nn_hist(d_px, r_px, s_px, "pixels"),
            "Nearest-neighbour distances: synthetic → real training vs real → real (leave-one-out), pixel space.")
    syn_v = _view2d(syn_x[torch.as_tensor(order)])
    real_v = _view2d(real_x[torch.as_tensor(idx_px[order])])
    pairs = fig_closest_pairs(torch.as_tensor(syn_v)[:, None], torch.as_tensor(real_v)[:, None], d_px[order])
    doc.img("fig_closest_pairs.png", pairs,
            f"The {len(order)} synthetic images closest to a training image (top) and that training image (bottom)"
            + (" — central axial slices." if syn_x.dim() == 5 else "."))
    return {"pixel": s_px, "features": s_ft, "memorisation_flag": bool(flag),
            "flag_rule": f"frac_below_real_p1 > {MEMORISATION_FLAG_FRACTION}", "closest_pairs": closest}


def _emit_evaluation(doc: _Doc, ev: dict, run_dir: Path, part: str = "all") -> None:
    """Tables and figures of a ``medsynth evaluate`` result; ``part`` = ``all|fidelity|privacy``."""
    from medsynth.metrics.evaluate import evaluation_tables

    fid = ev["fidelity"]
    source = (f"From `{run_dir.name}/evaluate/evaluation.json` (checkpoint step {_fmt(ev.get('step'))}, "
              f"{fid['n_synthetic']} synthetic images sampled by `medsynth evaluate`, seed {_fmt(ev.get('seed'))}).")
    if part in ("all", "fidelity"):
        doc.h("Fidelity and privacy suite" if part == "all" else "Fidelity suite (`medsynth evaluate`)", 3)
        doc.p(f"{source} Protocol: {fid['protocol']}. Features: {fid['encoder']['kind']}, fingerprint "
              f"`{fid['encoder']['fingerprint']}` (its own encoder: compare its feature-space numbers only with "
              "evaluations of the same fingerprint).")
    else:
        doc.h("Memorisation and membership inference (`medsynth evaluate`)", 3)
        doc.p(source + f" Membership-inference rule used in the summary: {MIA_RULE}.")
    if part in ("all", "privacy") and ev["privacy"].get("memorisation_flag"):
        doc.p("**WARNING: possible memorisation** in the evaluation's synthetic sample "
              f"({ev['privacy']['flag_rule']}).")
    for title, header, rows in evaluation_tables(ev):
        area = "fidelity" if title.lower().startswith("fidelity") else "privacy"
        if part in ("all", area):
            doc.h(title, 4 if part != "all" else 3)
            doc.table(header, rows)
    figs = {"privacy": (("fig_closest_pairs.png", "Evaluation: closest synthetic/training pairs (top: synthetic)."),
                        ("fig_dcr_nndr.png", "Evaluation: DCR and NNDR distributions, synthetic vs real references.")),
            "fidelity": (("fig_intensity.png", "Evaluation: intensity histograms inside the body mask."),)}
    for area in ("privacy", "fidelity") if part == "all" else (part,):
        for fname, cap in figs[area]:
            path = run_dir / "evaluate" / fname
            if path.is_file():
                doc.img("eval_" + fname, path.read_bytes(), cap)
    if part in ("all", "privacy") and ev.get("dp"):
        doc.p(f"Differential privacy: {ev['dp']}.")


def _evaluation_section(doc: _Doc, run_dir: Path) -> dict | None:
    """The fidelity/privacy suite written by ``medsynth evaluate RUN`` (``RUN/evaluate/``), all in one section."""
    from medsynth.metrics.evaluate import read_evaluation

    ev = read_evaluation(run_dir)
    if ev is None:
        doc.h("Fidelity and privacy suite")
        doc.p(f"Not computed: run `medsynth evaluate {run_dir}` (KID, precision/recall, density/coverage, "
              "intensity, MS-SSIM diversity, NNDR, membership inference), then rebuild the report.")
        return None
    _emit_evaluation(doc, ev, Path(run_dir), "all")
    return ev


def _benchmark_section(doc: _Doc, bench: dict | None, bench_dir: Path) -> dict | None:
    if bench is None:
        doc.p(f"No benchmark results (`{bench_dir}/results.csv` or `results.json` not found).")
        return None
    summary, cfg = bench["summary"], bench["config"]
    doc.p(
        "Downstream tumour-detection classifier per arm, tested on real held-out patients "
        f"(n_test = {_fmt(bench.get('n_test'))}"
        + (f", {_fmt(bench['n_test_patients'])} patients" if bench.get("n_test_patients") is not None else "")
        + "). "
        + (f"Arms: {', '.join(map(str, cfg['arms']))}. " if cfg.get("arms") else "")
        + (f"Seeds: {', '.join(map(str, cfg['seeds']))}. " if cfg.get("seeds") else "")
        + (f"Aggregation: {cfg['aggregation']}. " if "aggregation" in cfg else "")
        + (f"Paired test: {cfg['paired_test']}. " if "paired_test" in cfg else "")
        + (f"Threshold: {cfg['threshold_rule']}." if "threshold_rule" in cfg else "")
    )
    doc.p("Sources: " + ", ".join(f"`{s}`" for s in bench["sources"]) + ".")
    for note in bench["notes"]:
        doc.p(f"Note: {note}.")

    doc.h("Each arm (seed ensemble, patient-bootstrap 95% CI)", 3)
    rows = []
    for r in sorted(summary, key=lambda r: (_frac_key(r["fraction"]), _arm_order([s["arm"] for s in summary]).index(r["arm"]))):
        seed_sd = (f"{_fmt(r['auroc_seed_mean'])} ± {_fmt(r.get('auroc_seed_sd'))}"
                   if r.get("auroc_seed_mean") is not None else "–")
        n_train = (f"{_fmt(r.get('n_train_real'))} + {_fmt(r.get('n_train_synthetic'))}"
                   if r.get("n_train_real") is not None else "–")
        rows.append([str(r["arm"]), _pct(r["fraction"]), n_train,
                     *[_ci_text(r.get(m), r.get(f"{m}_lo"), r.get(f"{m}_hi"))
                       for m in ("auroc", "sens_at_90spec", "spec_at_90sens", "sensitivity", "specificity")],
                     seed_sd])
    if rows:
        doc.table(["arm", "real training patients", "training images (real + synthetic)", "AUROC [95% CI]",
                   "sens@90%spec [CI]", "spec@90%sens [CI]", "sensitivity at threshold [CI]",
                   "specificity at threshold [CI]", "per-seed AUROC mean ± sd"], rows)
    else:
        doc.p("The results have no summary rows.")

    doc.h("Paired differences against real-only", 3)
    labels = dict(PAIRED_METRICS)
    rows = []
    arms = _arm_order([d["arm"] for d in bench["diffs"]])
    metric_order = [m for m, _ in PAIRED_METRICS]
    for d in sorted(bench["diffs"], key=lambda d: (arms.index(d["arm"]), _frac_key(d["fraction"]),
                                                   metric_order.index(d["metric"]) if d["metric"] in metric_order
                                                   else len(metric_order))):
        seed_d = (f"{_sfmt(d['diff_seed_mean'])} ± {_fmt(d.get('diff_seed_sd'))}"
                  if d.get("diff_seed_mean") is not None else "–")
        rows.append([str(d["arm"]), _pct(d["fraction"]), labels.get(d["metric"], str(d["metric"])),
                     _diff_text(d, with_p=False), _fmt(d.get("p")), seed_d, _verdict(d)])
    if rows:
        doc.table(["arm", "real training patients", "metric", "arm − real-only [95% CI]", "p",
                   "per-seed difference mean ± sd", "verdict"], rows)
    else:
        doc.p("The results have no paired-difference rows.")
    plot = bench_dir / "plot.png"
    img = plot.read_bytes() if plot.is_file() else _fig_benchmark(summary)
    if img is not None:
        doc.img("fig_benchmark.png", img, "Test AUROC against the fraction of real training patients used "
                                          "(one line per arm, 95% CI bands).")
    return {"summary": summary, "diffs": bench["diffs"], "n_test": bench.get("n_test"),
            "n_test_patients": bench.get("n_test_patients"), "config": cfg, "sources": bench["sources"],
            "notes": bench["notes"]}


def _provenance_section(doc: _Doc, run_dir: Path, info: dict, stats: list[dict], cfg_text: str,
                        bench: dict | None, ev: dict | None, result: dict) -> dict:
    doc.h("Run and configuration provenance")
    wall = info["wall_seconds"]
    doc.table(
        ["item", "value"],
        [
            ["run directory", str(run_dir)],
            ["model", _fmt(info["model"])],
            ["modality", _fmt(info["modality"])],
            ["training data", _fmt(info["data_source"])],
            ["image shape (C, spatial)", " × ".join(map(str, info["image_shape"]))],
            ["steps done / configured", f"{_fmt(info['steps_done'])} / {_fmt(info['steps_configured'])}"],
            ["images seen (kimg)", _fmt(info["kimg"])],
            ["wall time", "–" if wall is None else f"{wall:.1f} s ({wall / 60:.1f} min)"],
            ["real training images", info["n_real_train"]],
            ["synthetic images evaluated by this report", info["n_synthetic"]],
            ["report encoder fingerprint", f"`{result['fidelity']['encoder']['fingerprint']}`"],
            ["benchmark", ", ".join(bench["sources"]) if bench else "none"],
            ["evaluation", "none" if ev is None else
             f"{run_dir.name}/evaluate/evaluation.json (step {_fmt(ev.get('step'))}, encoder "
             f"`{ev['fidelity']['encoder']['fingerprint']}`)"],
        ],
    )
    prov: dict[str, Any] = {"run_dir": str(run_dir), "files": ["config.yaml"] + (["stats.jsonl"] if stats else []),
                            "benchmark_sources": bench["sources"] if bench else [],
                            "evaluation_step": None if ev is None else ev.get("step")}
    if ev is not None and ev.get("step") is not None and info["steps_done"] is not None \
            and int(ev["step"]) != int(info["steps_done"]):
        doc.p(f"**Note:** the evaluation is from checkpoint step {ev['step']} but the run's statistics end at step "
              f"{_fmt(info['steps_done'])}: rerun `medsynth evaluate` for the current checkpoint.")
        prov["evaluation_stale"] = True
    curves = _fig_curves(stats)
    if curves is None:
        doc.p("No training statistics (stats.jsonl missing or empty).")
    else:
        doc.img("fig_training_curves.png", curves, "Losses and other logged statistics per tick against the training step.")
    result["n_stats_lines"] = len(stats)
    grid = _latest_sample_grid(run_dir)
    if grid is not None:
        doc.img("fig_last_training_grid.png", grid.read_bytes(), f"Last sample grid written during training ({grid.name}).")
        result["last_training_grid"] = grid.name
    if bench and bench["config"]:
        doc.p("Benchmark settings (`results.json` → `config`).")
        doc.pre(yaml.safe_dump(_jsonable(bench["config"]), sort_keys=False, allow_unicode=True))
    doc.p("The resolved configuration of the run (`config.yaml`).")
    doc.pre(cfg_text)
    return prov
