"""The report's sections: each a function of the :class:`~medsynth.report.model.ReportModel` alone.

A :class:`Section` holds the content (a :class:`~medsynth.report.render.Document`) and the
figures ``report.json`` carries for it under ``key``, so the JSON holds every number the
Markdown shows. Nothing here computes a metric: fidelity and privacy are the evaluation's
numbers, the benchmark's are ``results.json``'s; the summary only picks, compares against the
stated rules and formats them.

Order: a one-page **summary** (does augmentation help, by how much — per arm and real fraction,
the paired difference to real-only with its 95% CI and p-value; is there memorisation; the
membership-inference attacks against their control; fidelity against the real-vs-real floor),
then **fidelity**, **privacy**, the **downstream benchmark** and **run / configuration provenance**.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from medsynth.figures import new_figure, png_bytes
from medsynth.metrics.evaluate import TWO_SAMPLE_READING, evaluation_tables
from medsynth.report.model import ReportModel
from medsynth.report.render import Document
from medsynth.results import jsonable

REFERENCE_ARM = "real"
ARM_ORDER = ("real", "real+classic", "real+synthetic", "real+classic+synthetic", "synthetic-only")
#: the paired metrics of the benchmark, with their labels
PAIRED_METRICS = (("auroc", "AUROC"), ("sens_at_90spec", "sens@90%spec"), ("spec_at_90sens", "spec@90%sens"))
VERDICT_RULE = ("better / worse than real-only when the paired 95% CI of the difference excludes 0; "
                "otherwise no significant difference")
#: a membership-inference attack is read as a signal when the lower end of its 95% CI lies above
#: both chance (0.5) and the control AUROC (held-out half vs held-out half, scored the same way)
MIA_RULE = ("membership signal when the attack AUROC's 95% CI lies wholly above both 0.5 and the control AUROC "
            "(one half of the held-out images against the other, scored the same way)")

_STATS_SKIP = {"step", "kimg", "seconds", "img_per_s", "tick", "time"}


@dataclass
class Section:
    """One part of the report: its content and what ``report.json`` carries under ``key``."""

    key: str | None
    doc: Document
    data: Any = None


# --------------------------------------------------------------------------------------------
# formatting


def fmt(v: Any, nd: int = 3) -> str:
    """A number as the report prints it: ``–`` when missing or not finite, ``yes``/``no`` for booleans."""
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


def _sfmt(v: Any) -> str:
    """Signed figure: ``+0.062``, ``-0.003``; ``–`` when missing."""
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return "–"
    return f"{float(v):+.3f}"


def _diff_text(d: dict | None, with_p: bool = True) -> str:
    """``+0.062 [+0.032, +0.092], p = 0.040`` (or ``–``)."""
    if not d or d.get("diff") is None:
        return "–"
    text = f"{_sfmt(d['diff'])} [{_sfmt(d.get('lo'))}, {_sfmt(d.get('hi'))}]"
    return text + (f", p = {fmt(d.get('p'))}" if with_p else "")


def _ci_text(point: Any, lo: Any, hi: Any) -> str:
    if point is None:
        return "–"
    return f"{fmt(point)} [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else fmt(point)


def _frac_key(f: Any) -> float:
    return round(float(f), 6)


# --------------------------------------------------------------------------------------------
# the rules the summary applies


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


def mia_signal(attack: dict, control: dict) -> bool:
    """:data:`MIA_RULE`: the attack's 95% CI lower end above 0.5 and above the control AUROC.

    Args:
        attack: ``{"auroc", "lo", "hi"}`` of training vs held-out images (AUROC in [0, 1]).
        control: ``{"auroc", ...}`` of held-out half vs held-out half.
    """
    lo, ctrl = attack.get("lo"), control.get("auroc")
    return bool(lo is not None and ctrl is not None and lo > max(0.5, ctrl))


def benchmark_headline(bench: dict) -> dict:
    """Per arm and real fraction: the arm's AUROC and its paired differences to real-only.

    Args:
        bench: a benchmark result (:func:`medsynth.results.read_benchmark`): ``summary`` and
            ``diffs`` rows.

    Returns:
        ``{"reference_arm", "rule", "n_auroc_comparisons", "n_better", "n_worse", "caveats",
        "arms": [{"arm", "verdict_text", "fractions": [{"fraction", "auroc", "auroc_lo",
        "auroc_hi", "real_auroc", "diffs": {metric: {"diff", "lo", "hi", "p", "verdict"...}}}]}]}``;
        the reference arm is listed first with empty ``diffs``. Differences are looked up by
        (arm, fraction, metric), never by fraction alone.
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
        entry: dict[str, Any] = {"arm": arm, "fractions": rows}
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


def two_sample_headline(ts: dict | None) -> dict | None:
    """The summary's figures of the classifier two-sample test: ``{"auroc", "lo", "hi", "p_value",
    "floor_auroc", "floor_lo", "floor_hi", "m"}``, ``{"skipped": reason}``, or ``None`` when the
    evaluation has no test (written before it)."""
    if ts is None or "skipped" in ts:
        return None if ts is None else {"skipped": ts["skipped"]}
    fl = ts.get("floor") or {}
    lo, hi = ts["ci"]
    flo, fhi = fl.get("ci") or [None, None]
    return {"auroc": ts["auroc"], "lo": lo, "hi": hi, "p_value": ts.get("p_value"), "floor_auroc": fl.get("auroc"),
            "floor_lo": flo, "floor_hi": fhi, "m": ts["m"]}


def headline(m: ReportModel) -> dict:
    """The summary's figures: benchmark differences, memorisation, membership inference, fidelity."""
    ev = m.evaluation
    fid, priv = ev.fidelity, ev.privacy
    mem = {"dcr_frac_below_real_p1": priv["dcr"]["frac_below_real_p1"],
           "nndr_frac_below_real_p1": priv["nndr"]["frac_below_real_p1"],
           "dcr_median": priv["dcr"]["median"], "real_nn_median": priv["dcr"]["real_median"],
           "n_synthetic": fid["n_synthetic"], "flag": bool(priv["memorisation_flag"]), "rule": priv["flag_rule"]}
    mi = priv["membership_inference"]
    if "skipped" in mi:
        mia: dict[str, Any] = {"skipped": mi["skipped"]}
    else:
        mia = {"n_members": mi.get("n_members"), "n_nonmembers": mi.get("n_nonmembers"), "rule": MIA_RULE}
        for key in ("distance", "discriminator"):
            d = mi.get(key, {})
            if "attack" not in d:
                mia[key] = {"skipped": d.get("skipped", "not run")}
                continue
            a, c = d["attack"], d["control"]
            mia[key] = {"auroc": a["auroc"], "lo": a["lo"], "hi": a["hi"], "control_auroc": c["auroc"],
                        "control_lo": c["lo"], "control_hi": c["hi"],
                        "excess_over_control": d.get("excess_over_control"), "signal": mia_signal(a, c),
                        "permutation": None if not d.get("permutation") else
                        {k: d["permutation"][k] for k in ("null_95", "p_value", "n_permutations", "permuted")}}
    fd, floor = fid["fd"]["synthetic"]["mean"], fid["fd"]["floor"]["mean"]
    fidelity = {
        "fd": [fd, floor],
        "fd_ratio_to_floor": fd / floor if floor else None,
        "kid": [fid["kid"]["synthetic"]["mean"], fid["kid"]["floor"]["mean"]],
        **{k: [fid["prdc"]["synthetic"][k]["mean"], fid["prdc"]["floor"][k]["mean"]]
           for k in ("precision", "recall", "density", "coverage")},
        "ms_ssim": [fid["diversity_ms_ssim"]["synthetic"]["mean"], fid["diversity_ms_ssim"]["real"]["mean"]],
        "matched_n": fid["m"],
        "encoder_fingerprint": fid["encoder"]["fingerprint"],
        "two_sample": two_sample_headline(ev.two_sample),
    }
    return {"benchmark": None if m.benchmark is None else benchmark_headline(m.benchmark.data),
            "memorisation": mem, "membership_inference": mia, "fidelity": fidelity}


# --------------------------------------------------------------------------------------------
# the sections


def _evaluation_source(m: ReportModel) -> str:
    ev = m.evaluation
    by = ("sampled by the evaluation this report ran, as `medsynth evaluate` does (the run had none)"
          if ev.computed_by_report else "sampled by `medsynth evaluate`")
    return (f"From `{m.run.name}/evaluate/evaluation.json` (checkpoint step {fmt(ev.step)}, "
            f"{ev.fidelity['n_synthetic']} synthetic images {by}, seed {fmt(ev.seed)}).")


def _evaluation_tables(m: ReportModel, area: str, doc: Document) -> None:
    """The evaluation's tables of ``area`` (``Fidelity`` or ``Privacy``) as level-3 sections."""
    for title, header, rows in evaluation_tables(m.evaluation.data):
        if title.startswith(area):
            doc.h(title, 3)
            doc.table(header, rows)


def _evaluation_figure(m: ReportModel, doc: Document, name: str, caption: str) -> None:
    data = m.evaluation.figures.get(name)
    if data is not None:
        doc.img("eval_" + name, data, caption)


def _withheld_note(m: ReportModel, doc: Document, name: str, text: str) -> None:
    """Say that the evaluation's figure ``name`` was left out (real training images), and how to show it."""
    if name in m.evaluation.withheld:
        doc.p(f"{text} It stays in the run (`{m.run.name}/evaluate/{name}`); `medsynth report --show-real` "
              "shows it, in a report then marked as containing patient images.")


#: the report's first line when it shows real training images (``medsynth report --show-real``)
PATIENT_IMAGES_WARNING = ("**CONTAINS PATIENT IMAGES:** this report shows real training images (made with "
                          "`medsynth report --show-real`); share it only where those images may go.")


def title(m: ReportModel) -> Section:
    """The report's title and its one-sentence scope, after :data:`PATIENT_IMAGES_WARNING` when
    the report shows real training images."""
    r, ev = m.run, m.evaluation
    doc = Document()
    if m.show_real:
        doc.p(PATIENT_IMAGES_WARNING)
    doc.h(f"medsynth report: {r.name}", 1)
    doc.p(f"Model **{fmt(r.model)}** on **{fmt(r.modality)}** images "
          f"({' × '.join(map(str, ev.data['image_shape'][1:]))}), trained {fmt(r.steps_done)} steps; "
          f"{ev.fidelity['n_synthetic']} synthetic images compared with {ev.fidelity['n_real_train']} real "
          f"training images. Fidelity and privacy figures are those of the run's evaluation "
          f"(`evaluate/evaluation.json`, seed {fmt(ev.seed)}"
          + ("; computed for this report" if ev.computed_by_report else "") + ").")
    return Section(None, doc)


def summary(m: ReportModel) -> Section:
    """The one-page summary; ``report.json`` → ``headline`` holds every figure it prints."""
    h = headline(m)
    doc = Document()
    doc.h("Summary")
    _summary_benchmark(m, h["benchmark"], doc)
    mem = h["memorisation"]
    doc.p(f"**Is there memorisation?** {'**Flagged**' if mem['flag'] else 'Not flagged'}. Of the evaluation's "
          f"{mem['n_synthetic']} synthetic images, DCR {mem['dcr_frac_below_real_p1']:.1%} and NNDR "
          f"{mem['nndr_frac_below_real_p1']:.1%} lie below the 1st percentile of the real-to-real "
          f"(leave-one-out) distances (≈1% expected; flagged when `{mem['rule']}`); median distance to the "
          f"closest training image (DCR) {fmt(mem['dcr_median'])} against {fmt(mem['real_nn_median'])} "
          "real-to-real (pixel L2).")
    mia = h["membership_inference"]
    if "skipped" in mia:
        doc.p(f"**Membership inference:** skipped by the evaluation: {mia['skipped']}.")
    else:
        parts = []
        for key, lab in (("distance", "distance attack (on the released synthetic set)"),
                         ("discriminator", "discriminator attack (white-box, on the checkpoint's D: a reason not "
                                           "to share D, not a property of the synthetic set)")):
            d = mia[key]
            if "skipped" in d:
                parts.append(f"{lab}: skipped ({d['skipped']})")
                continue
            pm = d.get("permutation")
            null = ("" if not pm else f", permutation null ({pm['n_permutations']} permutations over "
                    f"{pm['permuted']}) {pm['null_95'][0]:.3f}–{pm['null_95'][1]:.3f}, one-sided p = {pm['p_value']:.3f}")
            parts.append(f"{lab} AUROC {_ci_text(d['auroc'], d['lo'], d['hi'])} against its control "
                         f"{_ci_text(d['control_auroc'], d['control_lo'], d['control_hi'])} "
                         f"(difference {_sfmt(d['excess_over_control'])}){null} — "
                         + ("**signal above the control**" if d["signal"] else "no signal beyond the control"))
        doc.p(f"**Membership inference** ({fmt(mia['n_members'])} training vs {fmt(mia['n_nonmembers'])} held-out "
              f"real images, 95% bootstrap CIs): {'; '.join(parts)}. Rule: {mia['rule']}.")
    fh = h["fidelity"]
    ratio = fh["fd_ratio_to_floor"]
    doc.p(f"**Fidelity against the real-vs-real floor.** Fréchet distance on the evaluation's encoder "
          f"(fingerprint `{fh['encoder_fingerprint']}`, matched n = {fh['matched_n']}): synthetic {fmt(fh['fd'][0])} "
          f"against a floor of {fmt(fh['fd'][1])} between two halves of the real images, "
          + (f"{fmt(ratio)}× the floor (1 = as close as real images are to each other)."
             if ratio is not None and math.isfinite(ratio) else "ratio undefined (zero floor)."))
    rows = [["Fréchet distance", *fh["fd"], "lower"], ["KID", *fh["kid"], "lower (≈0)"],
            *[[f"{k} (k-NN manifold)", *fh[k], "higher (≈ floor)"] for k in ("precision", "recall", "density",
                                                                            "coverage")],
            ["mean pairwise MS-SSIM (diversity; floor = all real)", *fh["ms_ssim"], "≈ real; higher = collapse"]]
    ts = fh["two_sample"]
    if ts is None:
        doc.p("**Two-sample classifier test:** not in this evaluation (written before the test existed); rerun "
              "`medsynth evaluate` to add it.")
    elif "skipped" in ts:
        doc.p(f"**Two-sample classifier test:** skipped by the evaluation: {ts['skipped']}.")
    else:
        doc.p(f"**Two-sample classifier test.** A small CNN trained to tell synthetic from real images (m = "
              f"{fmt(ts['m'])} of each, cross-fitted, scored on images it did not train on) reaches AUROC "
              f"**{_ci_text(ts['auroc'], ts['lo'], ts['hi'])}** (p = {fmt(ts['p_value'])} against 0.5), against a "
              f"floor of {_ci_text(ts['floor_auroc'], ts['floor_lo'], ts['floor_hi'])} between two halves of the real "
              f"images ({TWO_SAMPLE_READING}).")
        rows.append(["two-sample classifier AUROC (0.5 = indistinguishable)", ts["auroc"], ts["floor_auroc"],
                     "lower (≈ floor ≈ 0.5)"])
    doc.table(["metric", "synthetic vs real", "real vs real (floor)", "better"],
              [[r[0], fmt(r[1]), fmt(r[2]), r[3]] for r in rows])
    return Section("headline", doc, h)


def _summary_benchmark(m: ReportModel, bh: dict | None, doc: Document) -> None:
    if bh is None:
        doc.p("**Does augmentation help?** Not measured: no benchmark results for this run "
              f"(run `medsynth benchmark --synthetic {m.run.run_dir}`, or pass `--benchmark DIR`).")
        return
    data = m.benchmark.data
    n_test, pats = data["n_test"], data["n_test_patients"]
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
          f"patient-bootstrap 95% CI], two-sided p), on {fmt(n_test)} held-out test cases"
          + (f" from {fmt(pats)} patients" if pats is not None else "") + ". " + " ".join(lines)
          + ("" if not bh["caveats"] else " **Caveats:** " + "; ".join(bh["caveats"]) + "."))
    rows = []
    for arm in bh["arms"]:
        for r in arm["fractions"]:
            d = r["diffs"]
            is_ref = arm["arm"] == bh["reference_arm"]
            rows.append([arm["arm"], _pct(r["fraction"]), _ci_text(r["auroc"], r["auroc_lo"], r["auroc_hi"]),
                         "reference" if is_ref else _diff_text(d.get("auroc"), with_p=False),
                         "" if is_ref else fmt((d.get("auroc") or {}).get("p")),
                         "" if is_ref else _diff_text(d.get("sens_at_90spec")),
                         "" if is_ref else _diff_text(d.get("spec_at_90sens")),
                         "" if is_ref else (d.get("auroc") or {}).get("verdict", "not tested")])
    doc.table(["arm", "real training patients", "AUROC [95% CI]", "Δ AUROC vs real-only [95% CI]", "p",
               "Δ sens@90%spec [95% CI], p", "Δ spec@90%sens [95% CI], p", "AUROC verdict"], rows)
    doc.p(f"Verdict rule: {bh['rule']}. p-values are per comparison, not adjusted for the "
          f"{bh['n_auroc_comparisons']} AUROC comparisons shown.")


def fidelity(m: ReportModel) -> Section:
    """Sample images, the evaluation's fidelity tables (with floors, per class) and intensity figure."""
    ev = m.evaluation
    fid = ev.fidelity
    volumes = len(ev.data["image_shape"]) == 4
    doc = Document()
    doc.h("Fidelity")
    _evaluation_figure(m, doc, "fig_samples.png",
                       "Random synthetic images (left) beside random real training images (right)"
                       + (", central slices." if volumes else "."))
    _withheld_note(m, doc, "fig_samples.png", "The evaluation's figure of random synthetic images beside real "
                   "training images is left out: it shows patient images. The generator's samples are in the "
                   "last training grid (provenance section).")
    enc = fid["encoder"]
    doc.p(f"{_evaluation_source(m)} Protocol: {fid['protocol']}. Features: {enc['kind']}, fingerprint "
          f"`{enc['fingerprint']}`, {fmt(enc.get('feature_dim'))} features"
          + (f" ({enc['source']})" if enc.get("source") else "")
          + ": compare feature-space numbers only between evaluations with the same fingerprint.")
    doc.p("Reading: synthetic ≈ floor, the synthetic images are as close to the real ones as real images are to "
          "each other; far above it, distinguishable; well below it, closer to the training images than new "
          "real images would be — check the privacy section for copies.")
    if ev.two_sample is not None:
        doc.p("The two-sample classifier test is a second judge that learns its own features (a small CNN trained "
              "to tell synthetic from real images, scored on images it did not train on): it sees what the fixed "
              f"encoder may miss, such as noise, texture or upsampling artefacts. {TWO_SAMPLE_READING}.")
    _evaluation_tables(m, "Fidelity", doc)
    inc = fid.get("inception_fid")
    if inc:
        doc.p(f"Inception FID (user-supplied weights `{inc['weights']}`, {inc['feature_dim']} features, "
              f"n = {inc['n']}): **{fmt(inc['fid'])} ± {fmt(inc['fid_sd'])}** against a real-vs-real floor of "
              f"{fmt(inc['floor'])} ± {fmt(inc['floor_sd'])}.")
    _evaluation_figure(m, doc, "fig_intensity.png", "Intensity histograms inside the body mask, synthetic vs real.")
    return Section("fidelity", doc, fid)


def privacy(m: ReportModel) -> Section:
    """The evaluation's memorisation screen (DCR/NNDR, closest pairs) and membership inference."""
    ev = m.evaluation
    priv = ev.privacy
    doc = Document()
    doc.h("Privacy")
    doc.p(f"{_evaluation_source(m)} Distance to closest record (DCR): for every synthetic image, the L2 distance "
          "to the nearest real training image (flattened pixels in [-1, 1]); NNDR: its ratio to the second "
          "nearest. Both are set against the leave-one-out distances among the training images; a generator "
          "that copies its training data lies far below them. This screens for memorisation; it is not a proof "
          f"of privacy. Membership-inference rule used in the summary: {MIA_RULE}.")
    if priv["memorisation_flag"]:
        doc.p(f"**WARNING: possible memorisation** in the evaluation's synthetic sample (`{priv['flag_rule']}`).")
    _evaluation_tables(m, "Privacy", doc)
    _evaluation_figure(m, doc, "fig_closest_pairs.png",
                       "The synthetic images closest to a training image (top) and that training image (bottom).")
    _withheld_note(m, doc, "fig_closest_pairs.png", "The closest-pairs figure is left out: it shows real training "
                   "images, and the synthetic images nearest to them may be copies of them; the distances are "
                   "in the tables above.")
    _evaluation_figure(m, doc, "fig_dcr_nndr.png", "DCR and NNDR distributions, synthetic vs real references.")
    if ev.data.get("dp"):
        doc.p(f"Differential privacy: {ev.data['dp']}.")
    return Section("privacy", doc, priv)


def benchmark(m: ReportModel) -> Section:
    """Every arm with its CI, every paired difference against real-only, the benchmark's plot."""
    doc = Document()
    doc.h("Downstream benchmark")
    if m.benchmark is None:
        doc.p(f"No benchmark results (`{m.benchmark_dir}/results.json` not found).")
        return Section("benchmark", doc, None)
    b = m.benchmark
    summ, cfg, data = b.summary, b.config, b.data
    doc.p("Downstream tumour-detection classifier per arm, tested on real held-out patients "
          f"(n_test = {fmt(data['n_test'])}, {fmt(data['n_test_patients'])} patients). "
          + (f"Arms: {', '.join(map(str, cfg['arms']))}. " if cfg.get("arms") else "")
          + (f"Seeds: {', '.join(map(str, cfg['seeds']))}. " if cfg.get("seeds") else "")
          + (f"Aggregation: {cfg['aggregation']}. " if "aggregation" in cfg else "")
          + (f"Paired test: {cfg['paired_test']}. " if "paired_test" in cfg else "")
          + (f"Threshold: {cfg['threshold_rule']}." if "threshold_rule" in cfg else ""))
    doc.p(f"Source: `{b.path}`.")

    doc.h("Each arm (seed ensemble, patient-bootstrap 95% CI)", 3)
    arms = _arm_order([s["arm"] for s in summ])
    rows = []
    for r in sorted(summ, key=lambda r: (_frac_key(r["fraction"]), arms.index(r["arm"]))):
        seed_sd = (f"{fmt(r['auroc_seed_mean'])} ± {fmt(r.get('auroc_seed_sd'))}"
                   if r.get("auroc_seed_mean") is not None else "–")
        n_train = (f"{fmt(r.get('n_train_real'))} + {fmt(r.get('n_train_synthetic'))}"
                   if r.get("n_train_real") is not None else "–")
        rows.append([str(r["arm"]), _pct(r["fraction"]), n_train,
                     *[_ci_text(r.get(k), r.get(f"{k}_lo"), r.get(f"{k}_hi"))
                       for k in ("auroc", "sens_at_90spec", "spec_at_90sens", "sensitivity", "specificity")],
                     seed_sd])
    if rows:
        doc.table(["arm", "real training patients", "training images (real + synthetic)", "AUROC [95% CI]",
                   "sens@90%spec [CI]", "spec@90%sens [CI]", "sensitivity at threshold [CI]",
                   "specificity at threshold [CI]", "per-seed AUROC mean ± sd"], rows)
    else:
        doc.p("The results have no summary rows.")

    doc.h("Paired differences against real-only", 3)
    labels = dict(PAIRED_METRICS)
    metric_order = [k for k, _ in PAIRED_METRICS]
    arms = _arm_order([d["arm"] for d in b.diffs])
    rows = []
    for d in sorted(b.diffs, key=lambda d: (arms.index(d["arm"]), _frac_key(d["fraction"]),
                                            metric_order.index(d["metric"]) if d["metric"] in metric_order
                                            else len(metric_order))):
        seed_d = (f"{_sfmt(d['diff_seed_mean'])} ± {fmt(d.get('diff_seed_sd'))}"
                  if d.get("diff_seed_mean") is not None else "–")
        rows.append([str(d["arm"]), _pct(d["fraction"]), labels.get(d["metric"], str(d["metric"])),
                     _diff_text(d, with_p=False), fmt(d.get("p")), seed_d, _verdict(d)])
    if rows:
        doc.table(["arm", "real training patients", "metric", "arm − real-only [95% CI]", "p",
                   "per-seed difference mean ± sd", "verdict"], rows)
    else:
        doc.p("The results have no paired-difference rows.")
    if b.plot is not None:
        doc.img("fig_benchmark.png", b.plot, "Test AUROC against the fraction of real training patients used "
                                             "(one line per arm, 95% CI bands).")
    return Section("benchmark", doc, {"source": str(b.path), "summary": summ, "diffs": b.diffs,
                                      "n_test": data["n_test"], "n_test_patients": data["n_test_patients"],
                                      "config": cfg})


def _flat_numeric(row: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_numeric(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[key] = v
    return out


def fig_training_curves(stats: list[dict]) -> bytes | None:
    """PNG of the losses (left) and other logged statistics (right) against the step; ``None`` without any."""
    flat = [r for r in (_flat_numeric(s) for s in stats) if "step" in r]
    keys = sorted({k for r in flat for k in r} - _STATS_SKIP)
    loss_keys = [k for k in keys if "loss" in k.lower()]
    panels = [p for p in (("losses", loss_keys), ("other statistics", [k for k in keys if k not in loss_keys]))
              if p[1]]
    if not panels:
        return None
    fig = new_figure(5 * len(panels) + 0.5, 3.6)
    for ax, (name, ks) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        for k in ks:
            pts = [(r["step"], r[k]) for r in flat if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None,
                    label=k.removeprefix("loss/"))
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def provenance(m: ReportModel) -> Section:
    """Where every figure came from: the run, its curves and last grid, the result files, the config."""
    r, ev = m.run, m.evaluation
    wall = r.wall_seconds
    doc = Document()
    doc.h("Run and configuration provenance")
    doc.table(["item", "value"], [
        ["run directory", str(r.run_dir)],
        ["model", fmt(r.model)],
        ["modality", fmt(r.modality)],
        ["training data", fmt(r.data_source) + ("" if r.data_fingerprint in (None, r.data_source)
                                                else f" (images {r.data_fingerprint})")],
        ["image shape (C, spatial)", " × ".join(map(str, ev.data["image_shape"]))],
        ["steps done / configured", f"{fmt(r.steps_done)} / {fmt(r.steps_configured)}"],
        ["images seen (kimg)", fmt(r.kimg)],
        ["wall time", "–" if wall is None else f"{wall:.1f} s ({wall / 60:.1f} min)"],
        ["real training images", fmt(ev.fidelity["n_real_train"])],
        ["synthetic images evaluated", fmt(ev.fidelity["n_synthetic"])],
        ["evaluation", f"{r.name}/evaluate/evaluation.json (step {fmt(ev.step)}, encoder "
                       f"`{ev.fidelity['encoder']['fingerprint']}`"
                       + (", computed by this report)" if ev.computed_by_report else ")")],
        ["benchmark", "none" if m.benchmark is None else str(m.benchmark.path)],
    ])
    prov: dict[str, Any] = {"run_dir": str(r.run_dir), "files": ["config.yaml"] + (["stats.jsonl"] if r.stats else []),
                            "withheld_figures": list(ev.withheld),
                            "evaluation": str(ev.path), "evaluation_step": ev.step,
                            "evaluation_computed_by_report": ev.computed_by_report,
                            "benchmark": None if m.benchmark is None else str(m.benchmark.path),
                            "n_stats_lines": len(r.stats), "last_training_grid": None}
    if ev.step is not None and r.steps_done is not None and int(ev.step) != int(r.steps_done):
        doc.p(f"**Note:** the evaluation is from checkpoint step {ev.step} but the run's statistics end at step "
              f"{fmt(r.steps_done)}: rerun `medsynth evaluate` for the current checkpoint.")
        prov["evaluation_stale"] = True
    curves = fig_training_curves(r.stats)
    if curves is None:
        doc.p("No training statistics (stats.jsonl missing or empty).")
    else:
        doc.img("fig_training_curves.png", curves, "Losses and other logged statistics per tick against the training step.")
    if r.last_grid is not None:
        name, png = r.last_grid
        doc.img("fig_last_training_grid.png", png, f"Last sample grid written during training ({name}).")
        prov["last_training_grid"] = name
    if m.benchmark is not None and m.benchmark.config:
        doc.p("Benchmark settings (`results.json` → `config`).")
        doc.pre(yaml.safe_dump(jsonable(m.benchmark.config), sort_keys=False, allow_unicode=True))
    doc.p("The resolved configuration of the run (`config.yaml`).")
    doc.pre(r.config_text)
    return Section("provenance", doc, prov)


#: the sections after the title, in reading order
SECTIONS = (summary, fidelity, privacy, benchmark, provenance)
