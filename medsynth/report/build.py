"""Build ``reports/<run>/`` (Markdown, self-contained HTML, JSON, PNG figures) for one run.

The report reads the run directory only (``config.yaml``, ``stats.jsonl``, the latest
``samples/step_*.png`` and, if present, ``benchmark/results.json`` / ``plot.png``) plus the
images handed in by the caller (real training images and synthetic images); it never imports
``medsynth.train``. Every random choice (encoder training, real/real halves, which images the
grids show) is derived from ``seed``, so the same inputs give the same numbers.

Sections: summary, samples (synthetic grid beside real grid, the last training sample grid),
training curves, downstream benchmark, fidelity (Fréchet distance on the project's own
encoder and the real-vs-real floor) and privacy (nearest-neighbour distances).
"""

from __future__ import annotations

import base64
import html
import io
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

#: A synthetic set is flagged when more than this fraction of its images lie closer to a
#: training image than the 1st percentile of real-to-real distances (≈0.01 expected).
MEMORISATION_FLAG_FRACTION = 0.05
N_CLOSEST_PAIRS = 8
#: Random real/real splits (and synthetic subsamples) averaged for the equal-size FD figures.
FD_REPEATS = 10
GRID_N = 16

_STATS_SKIP = {"step", "kimg", "seconds", "img_per_s", "tick", "time"}


# --------------------------------------------------------------------------------------------
# small utilities


def _jsonable(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, paths to str."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
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


def _new_figure(w: float, h: float):
    # The object-oriented API: no pyplot, no global backend switch (Agg canvas).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


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


def _read_benchmark(bench_dir: Path | None) -> dict | None:
    if bench_dir is None:
        return None
    path = Path(bench_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MedsynthError(path, "is not valid JSON") from exc
    if not isinstance(data, dict):
        raise MedsynthError(path, "is not a benchmark results object")
    return data


# --------------------------------------------------------------------------------------------
# figures


def _fig_grids(synth: np.ndarray, real: np.ndarray, syn_titles: str, real_titles: str) -> bytes:
    ncol = 4
    fig = _new_figure(9, 4.8)
    for ax, imgs, title in zip(fig.subplots(1, 2), (synth, real), (syn_titles, real_titles)):
        ax.imshow(_tile(imgs, ncol), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return _png_bytes(fig)


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
    fig = _new_figure(5 * len(panels) + 0.5, 3.6)
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
    return _png_bytes(fig)


def _fig_nn_hist(synth_d: np.ndarray, real_d: np.ndarray, summ: dict, space: str) -> bytes:
    fig = _new_figure(6, 3.6)
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
    return _png_bytes(fig)


def _fig_pairs(synth: np.ndarray, real: np.ndarray, dists: np.ndarray) -> bytes:
    n = len(dists)
    fig = _new_figure(1.3 * n + 0.6, 3.2)
    axes = np.atleast_2d(fig.subplots(2, n, squeeze=False))
    for j in range(n):
        for i, (img, lab) in enumerate(((synth[j], "synthetic"), (real[j], "nearest real"))):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(lab, fontsize=8)
        axes[0, j].set_title(f"d={dists[j]:.2f}", fontsize=8)
    fig.tight_layout()
    return _png_bytes(fig)


def _fig_benchmark(summary: list[dict]) -> bytes | None:
    rows = [r for r in summary if "fraction" in r and isinstance(r.get("auroc"), (int, float))]
    if not rows:
        return None
    fig = _new_figure(5.5, 3.8)
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
    return _png_bytes(fig)


# --------------------------------------------------------------------------------------------
# the report


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

    Args:
        run_dir: a run directory (``config.yaml`` required; ``stats.jsonl``,
            ``samples/step_*.png`` and ``benchmark/`` used when present).
        real_train: the real **training** images (an ``ImageSet``; ``images`` ``(N, 1, H, W)``
            or ``(N, 1, D, H, W)`` float32 in [-1, 1]). If its ``splits`` mark some images as
            ``train`` and others not, only the ``train`` ones are used.
        synthetic: ``(M, 1, H, W)`` / ``(M, 1, D, H, W)`` float32 in [-1, 1], same image shape.
        synthetic_labels: optional ``(M,)`` class labels; adds per-class Fréchet distances.
        out_root: parent folder of the report folder.
        benchmark_dir: folder with ``results.json`` (and ``plot.png``) from
            ``pipelines.benchmark.write_benchmark``; default ``<run_dir>/benchmark``.
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
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedsynthError(run_dir, "run directory not found")
    cfg, cfg_text = _read_config(run_dir)
    stats = _read_stats(run_dir)
    bench_dir = Path(benchmark_dir) if benchmark_dir is not None else run_dir / "benchmark"
    bench = _read_benchmark(bench_dir)

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
    doc = _Doc()
    result: dict[str, Any] = {"run": name, "run_dir": str(run_dir), "seed": int(seed)}

    # ---- summary
    last = _flat_numeric(stats[-1]) if stats else {}
    summary = {
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
    result["summary"] = summary
    result["config"] = cfg
    doc.h(f"medsynth report: {name}", 1)
    doc.p(
        f"Model **{_fmt(model_name)}** on **{_fmt(modality)}** images "
        f"({' × '.join(map(str, real_x.shape[2:]))}), compared with {len(real_x)} real training images. "
        f"All numbers are reproducible with seed {seed}."
    )
    doc.h("Summary")
    wall = summary["wall_seconds"]
    doc.table(
        ["item", "value"],
        [
            ["model", _fmt(model_name)],
            ["modality", _fmt(modality)],
            ["training data", _fmt(summary["data_source"])],
            ["image shape (C, spatial)", " × ".join(map(str, summary["image_shape"]))],
            ["steps done / configured", f"{_fmt(summary['steps_done'])} / {_fmt(summary['steps_configured'])}"],
            ["images seen (kimg)", _fmt(summary["kimg"])],
            ["wall time", "–" if wall is None else f"{wall:.1f} s ({wall / 60:.1f} min)"],
            ["real training images", len(real_x)],
            ["synthetic images evaluated", len(syn_x)],
        ],
    )

    # ---- samples
    doc.h("Samples")
    si = np.sort(rng.choice(len(syn_x), size=min(GRID_N, len(syn_x)), replace=False))
    ri = np.sort(rng.choice(len(real_x), size=min(GRID_N, len(real_x)), replace=False))
    slice_note = " (central axial slices)" if real_x.dim() == 5 else ""
    doc.img("fig_samples.png", _fig_grids(_view2d(syn_x[si]), _view2d(real_x[ri]),
                                         f"synthetic{slice_note}", f"real training{slice_note}"),
            f"{len(si)} random synthetic images (left) beside {len(ri)} random real training images (right){slice_note}.")
    grid = _latest_sample_grid(run_dir)
    if grid is not None:
        doc.img("fig_last_training_grid.png", grid.read_bytes(), f"Last sample grid written during training ({grid.name}).")
        result["last_training_grid"] = grid.name

    # ---- training curves
    doc.h("Training curves")
    curves = _fig_curves(stats)
    if curves is None:
        doc.p("No training statistics (stats.jsonl missing or empty).")
    else:
        doc.img("fig_training_curves.png", curves, "Losses and other logged statistics per tick against the training step.")
    result["n_stats_lines"] = len(stats)

    # ---- benchmark
    doc.h("Downstream benchmark")
    result["benchmark"] = _benchmark_section(doc, bench, bench_dir)

    # ---- fidelity
    enc, enc_info = _resolve_encoder(encoder, real_x, seed, encoder_steps, out_dir)
    fr = extract_features(enc, real_x)
    fs = extract_features(enc, syn_x)
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
    result["fidelity"] = {
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
    doc.h("Fidelity")
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
         f"{_fmt(fd_matched)} ± {_fmt(result['fidelity']['fd_synthetic_vs_real_matched_sd'])}"],
        [f"real-vs-real floor: half A ({m}) vs half B ({m}); mean ± sd of {FD_REPEATS} splits",
         f"{_fmt(floor_matched)} ± {_fmt(result['fidelity']['fd_floor_matched_sd'])}"],
        ["ratio (matched synthetic / floor; 1 = indistinguishable)", result["fidelity"]["fd_ratio_to_floor"]],
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

    # ---- privacy
    result["privacy"] = _privacy_section(doc, syn_x, real_x, fs, fr, seed, max_real_queries)
    result["evaluation"] = _evaluation_section(doc, run_dir)

    doc.h("Configuration")
    doc.p("The resolved configuration of the run (`config.yaml`).")
    doc.pre(cfg_text)

    # ---- write
    figures = {}
    for fname, data in doc.images.items():
        write_bytes(out_dir / fname, data)
        figures[fname.removesuffix(".png")] = fname
    result["figures"] = figures
    result["versions"] = {"torch": str(torch.__version__), "numpy": np.__version__}
    write_bytes(out_dir / "report.md", doc.markdown().encode("utf-8"))
    write_bytes(out_dir / "report.html", doc.html(f"medsynth report: {name}").encode("utf-8"))
    write_bytes(out_dir / "report.json", (json.dumps(_jsonable(result), indent=1) + "\n").encode("utf-8"))
    logger.info("report written to %s", out_dir)
    return out_dir


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
    doc.img("fig_closest_pairs.png", _fig_pairs(syn_v, real_v, d_px[order]),
            f"The {len(order)} synthetic images closest to a training image (top) and that training image (bottom)"
            + (" — central axial slices." if syn_x.dim() == 5 else "."))
    return {"pixel": s_px, "features": s_ft, "memorisation_flag": bool(flag),
            "flag_rule": f"frac_below_real_p1 > {MEMORISATION_FLAG_FRACTION}", "closest_pairs": closest}


def _evaluation_section(doc: _Doc, run_dir: Path) -> dict | None:
    """The fidelity/privacy suite written by ``medsynth evaluate RUN`` (``RUN/evaluate/``)."""
    from medsynth.metrics.evaluate import evaluation_tables, read_evaluation

    doc.h("Fidelity and privacy suite")
    ev = read_evaluation(run_dir)
    if ev is None:
        doc.p(f"Not computed: run `medsynth evaluate {run_dir}` (KID, precision/recall, density/coverage, "
              "intensity, MS-SSIM diversity, NNDR, membership inference), then rebuild the report.")
        return None
    fid = ev["fidelity"]
    doc.p(f"From `{run_dir.name}/evaluate/evaluation.json` (checkpoint step {_fmt(ev.get('step'))}, "
          f"{fid['n_synthetic']} synthetic images, seed {_fmt(ev.get('seed'))}). Protocol: {fid['protocol']}. "
          f"Features: {fid['encoder']['kind']}, fingerprint `{fid['encoder']['fingerprint']}` (its own encoder: "
          "compare its feature-space numbers only with evaluations of the same fingerprint).")
    if ev["privacy"].get("memorisation_flag"):
        doc.p("**WARNING: possible memorisation** in the evaluation's synthetic sample "
              f"({ev['privacy']['flag_rule']}).")
    for title, header, rows in evaluation_tables(ev):
        doc.h(title, 3)
        doc.table(header, rows)
    for name, cap in (("fig_closest_pairs.png", "Evaluation: closest synthetic/training pairs (top: synthetic)."),
                      ("fig_dcr_nndr.png", "Evaluation: DCR and NNDR distributions, synthetic vs real references."),
                      ("fig_intensity.png", "Evaluation: intensity histograms inside the body mask.")):
        path = run_dir / "evaluate" / name
        if path.is_file():
            doc.img("eval_" + name, path.read_bytes(), cap)
    return ev


def _benchmark_section(doc: _Doc, bench: dict | None, bench_dir: Path) -> dict | None:
    if bench is None:
        doc.p(f"No benchmark results (`{bench_dir}/results.json` not found).")
        return None
    summary = [r for r in bench.get("summary", []) or [] if isinstance(r, dict)]
    diffs = {float(d["fraction"]): d for d in bench.get("diffs", []) or [] if isinstance(d, dict) and "fraction" in d}
    cfg = bench.get("config", {}) if isinstance(bench.get("config"), dict) else {}
    doc.p(
        "Downstream tumour-detection classifier trained on real images only vs real + synthetic, "
        f"tested on real held-out patients (n_test = {_fmt(bench.get('n_test'))}, "
        f"{_fmt(bench.get('n_test_patients'))} patients). "
        + (f"Aggregation: {cfg['aggregation']}. " if "aggregation" in cfg else "")
        + (f"Threshold: {cfg['threshold_rule']}." if "threshold_rule" in cfg else "")
    )

    def ci(r, k):
        if r.get(k) is None:
            return "–"
        lo, hi = r.get(f"{k}_lo"), r.get(f"{k}_hi")
        return f"{_fmt(r[k])} [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else _fmt(r[k])

    rows = []
    for r in sorted(summary, key=lambda r: (float(r.get("fraction", 0)), str(r.get("arm", "")))):
        d = diffs.get(float(r.get("fraction", -1)))
        is_aug = d is not None and str(r.get("arm", "")) != "real"
        diff = (f"{_fmt(d.get('diff'))} [{_fmt(d.get('lo'))}, {_fmt(d.get('hi'))}], p={_fmt(d.get('p'))}"
                if is_aug else "")
        seed_sd = (f"{_fmt(r['auroc_seed_mean'])} ± {_fmt(r.get('auroc_seed_sd'))}"
                   if r.get("auroc_seed_mean") is not None else "–")
        rows.append([str(r.get("arm", "?")), _pct(r.get("fraction")), ci(r, "auroc"), ci(r, "sensitivity"),
                     ci(r, "specificity"), seed_sd, diff])
    if rows:
        doc.table(["arm", "real training patients", "AUROC [95% CI]", "sensitivity [CI]", "specificity [CI]",
                   "per-seed AUROC mean ± sd", "Δ AUROC vs real-only [CI], p"], rows)
    else:
        doc.p("results.json has no summary rows.")
    plot = bench_dir / "plot.png"
    img = plot.read_bytes() if plot.is_file() else _fig_benchmark(summary)
    if img is not None:
        doc.img("fig_benchmark.png", img, "Test AUROC against the fraction of real training patients used.")
    return {"summary": summary, "diffs": list(diffs.values()), "n_test": bench.get("n_test"),
            "source": str(bench_dir / "results.json")}
