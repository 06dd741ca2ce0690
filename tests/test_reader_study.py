"""medsynth/metrics/reader_study.py and `medsynth reader-study`: a blinded visual Turing test.

Simulated readers (pipelines/studies/reader_study_example/study.py) on the phantom radiographs of
sample_data/ and a tiny DCGAN run: a perfect reader (AUC 1), a seeded random reader (CI covers
0.5), a reader biased by the centre-spot contrast the lung-spot images carry (a nodule lifts the
centre: AUC above 0.5 where real images carry nodules and the "synthetic" ones do not, below 0.5
the other way round, ~0.5 where both sides are mixed); blinding of PNG and DICOM case files; the
key kept apart; bad answer files -> one line.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from medsynth.cli import app
from medsynth.data.manifest import read_manifest, select_rows
from medsynth.errors import MedsynthError
from medsynth.metrics import reader_study as rs
from pipelines.studies.reader_study_example.study import (
    centre_spot_reader,
    perfect_reader,
    random_reader,
    write_answers,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "manifest.csv"
runner = CliRunner()

#: strings that would give a case's origin away if they appeared in a case file
MARKERS = (b"SYNTHETIC", b"synthetic", b"Synthetic", b"TRANSLAT", b"PHANTOM", b"Phantom", b"dcgan", b"medsynth:")


def _phantom_rows() -> pd.DataFrame:
    return select_rows(read_manifest(SAMPLE), modality="xray").reset_index(drop=True)


def _manifest(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)  # absolute paths (read_manifest resolved them)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny DCGAN run (32 px, 2 steps) on 48 phantom radiographs, its 40 generated PNGs
    (RUN/synthetic/manifest.csv) and a real manifest of 40 other phantom radiographs."""
    from conftest import train_tiny_cli_run

    from medsynth.data.dataset import load_image_set

    root = tmp_path_factory.mktemp("tiny")
    rows = _phantom_rows()
    train_csv = _manifest(rows.iloc[:48], root / "train" / "manifest.csv")
    real_csv = _manifest(rows.iloc[100:140], root / "real" / "manifest.csv")
    ims = load_image_set(train_csv, modality="xray", size=32)
    images = ((ims.images[:, 0].numpy() + 1) * 2000).astype(np.float32)  # detector-like units
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        _, run = train_tiny_cli_run(root, images)
    run = root / run
    r = runner.invoke(app, ["generate", str(run), "--count", "40", "--format", "png"])
    assert r.exit_code == 0, r.output
    return {"root": root, "run": run, "synthetic": run / "synthetic" / "manifest.csv", "real": real_csv}


@pytest.fixture(scope="module")
def png_study(tiny):
    """`medsynth reader-study build` (CLI): 15 real + 15 synthetic PNG cases, confidence scale."""
    out = tiny["root"] / "png" / "cases"
    r = runner.invoke(app, ["reader-study", "build", "--data", str(tiny["real"]), "--synthetic", str(tiny["synthetic"]),
                            "--size", "32", "--n-real", "15", "--n-synthetic", "15", "--format", "png",
                            "--out", str(out), "--seed", "3"])
    assert r.exit_code == 0, r.output
    return {"cases": out, "key": rs.default_key_folder(out), "run": tiny["run"], "tiny": tiny}


def _png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _leaks(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [m for m in MARKERS if m in data]


def _score(key, *answers, n_boot=400, seed=0) -> dict:
    return rs.score(key, list(answers), n_boot=n_boot, seed=seed)


# ----------------------------------------------------------------------------- build: layout and blinding
def test_png_cases_are_blinded(png_study, tiny):
    cases, key = png_study["cases"], png_study["key"]
    files = sorted(cases.glob("case_*"))
    assert [f.name for f in files] == [f"case_{k:04d}.png" for k in range(1, 31)]
    assert {p.name for p in cases.iterdir()} == {*(f.name for f in files), rs.README, rs.TEMPLATE,
                                                  "medsynth-outputs.json"}
    kdf, study = rs.read_key(key)
    assert (kdf["truth"] == "real").sum() == 15 and (kdf["truth"] == "synthetic").sum() == 15
    assert study["generator"]["run"] == tiny["run"].name and set(kdf.loc[kdf.truth == "synthetic", "generator"]) == {
        tiny["run"].name}
    # shuffled: the real cases are not a block
    truth = (kdf["truth"] == "real").to_numpy()
    assert 0 < truth[:15].sum() < 15
    # no text (or other ancillary) chunk, one bit depth, one size, same bytes count, no marker
    headers, sizes = set(), set()
    for f in files:
        kinds = [k for k, _ in _png_chunks(f)]
        assert set(kinds) == {b"IHDR", b"IDAT", b"IEND"}, (f, kinds)
        headers.add(_png_chunks(f)[0][1])  # IHDR: width, height, bit depth, colour type, compression...
        sizes.add(f.stat().st_size)
        assert _leaks(f) == [], f
    assert len(headers) == 1 and struct.unpack(">IIB", next(iter(headers))[:9]) == (32, 32, 16)
    assert len(sizes) == 1
    assert len({f.stat().st_mtime for f in files}) == 1
    # the marker check can fail: the generated source files are marked, and found
    source = next((tiny["run"] / "synthetic").glob("*.png"))
    assert b"tEXt" in {k for k, _ in _png_chunks(source)} and _leaks(source)
    # the key lies apart, the case folder names no truth, the template lists every case, unfilled
    assert not rs._inside(key, cases) and (key / rs.KEY_FILE).is_file() and (key / rs.SOURCES_FILE).is_file()
    for name in (rs.README, rs.TEMPLATE, "medsynth-outputs.json"):
        text = (cases / name).read_text()
        assert tiny["run"].name not in text and "PHANTOM" not in text and "real_" not in text
    tpl = pd.read_csv(cases / rs.TEMPLATE, dtype=str, keep_default_na=False)
    assert list(tpl.columns) == ["case", "reader", "rating"] and list(tpl["case"]) == list(kdf["case"])
    assert (tpl["reader"] == "").all() and (tpl["rating"] == "").all()
    readme = (cases / rs.README).read_text()
    assert "MUST NEVER LEAVE THE STUDY" in readme and "5 = certainly real" in readme
    # real patients appear in the key as pseudonyms only
    assert kdf.loc[kdf.truth == "real", "patient"].str.fullmatch(r"P\d{4}").all()
    assert "PHANTOM" not in (key / rs.KEY_FILE).read_text()


def test_dicom_cases_have_one_header_layout(tiny):
    """DICOM cases from a run sampled now and from real DICOM phantoms (which carry PatientID
    PHANTOM-...): the same tags with the same values apart from the pixels and the case's own
    number/UIDs, equal file sizes, no marker and no patient ID."""
    out = tiny["root"] / "dicom" / "cases"
    built = rs.build(tiny["real"], tiny["run"], out=out, n_real=6, n_synthetic=6, fmt="dicom", seed=1)
    assert built.key == rs.default_key_folder(out) and built.generator == tiny["run"].name
    kdf, study = rs.read_key(built.key)
    assert study["generator"]["sampled"] is True and study["size"] == 32
    per_case = {"PixelData", "SOPInstanceUID", "PatientID", "PatientName", "InstanceNumber"}

    def flat(ds):
        return {(e.tag, e.keyword): (e.value if e.keyword != "PixelData" else None) for e in ds.iterall()}

    dss = {c: pydicom.dcmread(out / f"{c}.dcm") for c in kdf["case"]}
    ref_case = kdf["case"].iloc[0]
    ref = flat(dss[ref_case])
    ref_meta = {e.keyword: e.value for e in dss[ref_case].file_meta}
    for case, truth in zip(kdf["case"], kdf["truth"]):
        ds = dss[case]
        cur = flat(ds)
        assert set(cur) == set(ref), (case, truth, set(cur) ^ set(ref))
        differ = {kw for (tag, kw), v in cur.items() if v != ref[(tag, kw)]}
        assert differ <= per_case, (case, truth, differ)
        meta = {e.keyword: e.value for e in ds.file_meta}
        assert {k for k in meta if meta[k] != ref_meta.get(k)} <= {"MediaStorageSOPInstanceUID"}
        number = int(case.split("_")[1])
        assert ds.PatientID == f"CASE-{number:04d}" and int(ds.InstanceNumber) == number
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.BitsStored == 12 and ds.Rows == 32
        assert _leaks(out / f"{case}.dcm") == []
    assert len({(out / f"{c}.dcm").stat().st_size for c in kdf["case"]}) == 1
    assert len({str(ds.SOPInstanceUID) for ds in dss.values()}) == len(dss)
    # the real inputs do carry patient IDs (and the marker check finds a marked synthetic DICOM)
    real_file = Path(pd.read_csv(tiny["real"])["path"].iloc[0])
    assert b"PHANTOM" in real_file.read_bytes()
    from medsynth.data.writers import SyntheticInfo, write_dicom_dx

    marked = write_dicom_dx(tiny["root"] / "marked.dcm", np.zeros((4, 4), np.uint16),
                            info=SyntheticInfo(model="dcgan", run="r"))
    assert _leaks(marked)


def test_key_inside_the_case_folder_is_refused(tiny):
    out = tiny["root"] / "refused" / "cases"
    r = runner.invoke(app, ["reader-study", "build", "--data", str(tiny["real"]), "--synthetic", str(tiny["synthetic"]),
                            "--size", "32", "--n-real", "2", "--n-synthetic", "2", "--out", str(out),
                            "--key-out", str(out / "key")])
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "inside the case folder" in r.stderr
    assert not out.exists()
    with pytest.raises(MedsynthError, match="inside the answer-key folder"):
        rs.build(tiny["real"], tiny["synthetic"], out=out, key_out=out.parent, n_real=2, n_synthetic=2, size=32)


def test_synthetic_source_listing_real_rows_or_too_few_images_is_refused(tiny):
    marked = read_manifest(tiny["synthetic"]).assign(source="real")
    csv = _manifest(marked, tiny["root"] / "marked_real" / "manifest.csv")
    with pytest.raises(MedsynthError, match="synthetic images only"):
        rs.build(tiny["real"], csv, out=tiny["root"] / "x" / "cases", n_real=2, n_synthetic=2, size=32)
    with pytest.raises(MedsynthError, match="holds 40 synthetic image"):
        rs.build(tiny["real"], tiny["synthetic"], out=tiny["root"] / "y" / "cases", n_real=2, n_synthetic=41,
                 size=32)
    with pytest.raises(MedsynthError, match="pixel-identical"):
        rs.build(tiny["real"], tiny["real"], out=tiny["root"] / "z" / "cases", n_real=40, n_synthetic=40, size=32)


# ----------------------------------------------------------------------------- score: simulated readers
def test_perfect_and_random_readers_via_cli(png_study, tmp_path):
    key = png_study["key"]
    names = list(rs.read_key(key)[0]["case"])
    perfect = write_answers(perfect_reader(key), tmp_path / "perfect.csv")
    rand = write_answers(random_reader(names, seed=5), tmp_path / "random.csv")
    out = tmp_path / "results"
    r = runner.invoke(app, ["reader-study", "score", "--key", str(key), "--answers", str(perfect), str(rand),
                            "--out", str(out), "--n-boot", "500"])
    assert r.exit_code == 0, r.output
    import json

    res = json.loads((out / rs.RESULTS_JSON).read_text())
    assert res["kind"] == "reader_study" and (out / rs.RESULTS_MD).is_file()
    by = {x["reader"]: x for x in res["readers"]}
    p = by["perfect"]
    assert p["auc"]["point"] == 1.0 and p["auc"]["lo"] == 1.0 and p["auc_delong"]["se"] == 0.0
    assert p["synthetic_judged_real"]["point"] == 0.0 and p["sensitivity"]["point"] == 1.0
    assert p["specificity"]["point"] == 1.0
    q = by["random"]
    assert q["auc"]["lo"] < 0.5 < q["auc"]["hi"] and q["auc_delong"]["lo"] < 0.5 < q["auc_delong"]["hi"]
    assert res["pooled"]["auc"]["point"] == pytest.approx((1.0 + q["auc"]["point"]) / 2)
    md = (out / rs.RESULTS_MD).read_text()
    assert "| perfect | 1.000 [1.000, 1.000]" in md and "pooled" in md and res["interpretation"] in md
    assert "perfect: AUC 1.000" in r.stdout


def test_random_reader_ci_covers_half_over_seeds(png_study, tmp_path):
    """A blind reader: over 20 seeds the bootstrap 95% CI covers 0.5 nearly always (>= 17 of 20)."""
    key = png_study["key"]
    names = list(rs.read_key(key)[0]["case"])
    covered = 0
    for s in range(20):
        f = write_answers(random_reader(names, seed=100 + s), tmp_path / f"r{s}.csv")
        a = _score(key, f, n_boot=300)["readers"][0]["auc"]
        covered += a["lo"] <= 0.5 <= a["hi"]
    assert covered >= 17


def test_pooled_ci_resamples_the_same_cases_for_every_reader(png_study, tmp_path):
    """Two readers giving identical answers: the pooled CI equals the single reader's (same resampled
    cases for both; independent resampling per reader would narrow it)."""
    key = png_study["key"]
    names = list(rs.read_key(key)[0]["case"])
    one = random_reader(names, seed=9, name="a")
    f1 = write_answers(one, tmp_path / "a.csv")
    f2 = write_answers(one.assign(reader="b"), tmp_path / "b.csv")
    single = _score(key, f1, n_boot=500)
    double = _score(key, f1, f2, n_boot=500)
    s, d = single["readers"][0]["auc"], double["pooled"]["auc"]
    assert d["point"] == pytest.approx(s["point"]) and d["lo"] == pytest.approx(s["lo"]) and d["hi"] == pytest.approx(
        s["hi"])
    assert double["pooled"]["synthetic_judged_real"]["point"] == pytest.approx(
        single["readers"][0]["synthetic_judged_real"]["point"])


@pytest.mark.parametrize("truth_by_label, expect", [("nodule_real", "above"), ("nodule_synthetic", "below"),
                                                    ("mixed", "covers")])
def test_reader_biased_by_the_centre_spot(tmp_path, truth_by_label, expect):
    """The centre-spot reader rates by the contrast of the image centre (a nodule of the lung-spot view
    lifts it). Where real images carry nodules and the "synthetic" side (phantom radiographs standing in
    for a generator that never draws nodules) does not, its AUC is above 0.5; the other way round,
    below; with both sides drawn from the same mix, the CI covers 0.5."""
    rows = _phantom_rows()
    rng = np.random.default_rng(0)
    nod, free = rows[rows["label"] == 1], rows[rows["label"] == 0]
    if truth_by_label == "nodule_real":
        real, syn = nod, free
    elif truth_by_label == "nodule_synthetic":
        real, syn = free, nod
    else:
        perm = rng.permutation(len(rows))[:160]
        real, syn = rows.iloc[perm[:80]], rows.iloc[perm[80:]]
    real_csv = _manifest(real.iloc[:80], tmp_path / "real" / "manifest.csv")
    syn_csv = _manifest(syn.iloc[:80], tmp_path / "syn" / "manifest.csv")
    built = rs.build(real_csv, syn_csv, out=tmp_path / "cases", n_real=40, n_synthetic=40, seed=2)
    names = list(rs.read_key(built.key)[0]["case"])
    f = write_answers(centre_spot_reader(built.cases, names), tmp_path / "centre.csv")
    a = _score(built.key, f, n_boot=500)["readers"][0]["auc"]
    if expect == "above":
        assert a["lo"] > 0.55, a
    elif expect == "below":
        assert a["hi"] < 0.45, a
    else:
        assert a["lo"] < 0.5 < a["hi"] and abs(a["point"] - 0.5) < 0.15, a


def test_binary_scale(tiny, tmp_path):
    built = rs.build(tiny["real"], tiny["synthetic"], out=tmp_path / "cases", n_real=8, n_synthetic=8, size=32,
                     scale="binary", seed=4)
    assert "rating: real or synthetic" in (built.cases / rs.README).read_text()
    names = list(rs.read_key(built.key)[0]["case"])
    p = _score(built.key, write_answers(perfect_reader(built.key), tmp_path / "p.csv"))["readers"][0]
    assert p["auc"]["point"] == 1.0 and p["synthetic_judged_real"]["point"] == 0.0
    assert p["sensitivity"]["point"] == 1.0 and p["synthetic_undecided"] == 0.0
    r = random_reader(names, seed=1, scale="binary")
    r.loc[0, "rating"] = "REAL"  # the words are read case-insensitively
    res = _score(built.key, write_answers(r, tmp_path / "r.csv"))["readers"][0]
    judged = (r["rating"].str.lower() == "real").to_numpy()
    syn = (rs.read_key(built.key)[0]["truth"] == "synthetic").to_numpy()
    assert res["synthetic_judged_real"]["point"] == pytest.approx(judged[syn].mean())
    bad = r.assign(rating=["4"] + list(r["rating"][1:]))
    with pytest.raises(MedsynthError, match="not on the study's binary scale"):
        _score(built.key, write_answers(bad, tmp_path / "bad.csv"))


def test_delong_matches_hand_computation():
    d = rs.delong([1, 1, 0, 0], [3, 2, 1, 2])
    # psi = [[1, 1], [1, 0.5]]: AUC 0.875; V10 = V01 = [1, 0.75], var = 2 * 0.03125 / 2
    assert d["auc"] == pytest.approx(0.875) and d["se"] == pytest.approx(np.sqrt(0.03125))
    assert d["hi"] == 1.0 and d["lo"] == pytest.approx(0.875 - 1.96 * np.sqrt(0.03125))
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 60), rng.integers(1, 6, 60)
    assert rs.delong(y, s)["auc"] == pytest.approx(roc_auc_score(y, s))
    assert rs._mw_auc(y, s.astype(float)) == pytest.approx(roc_auc_score(y, s))


# ----------------------------------------------------------------------------- bad answer files
def _answers(png_study) -> pd.DataFrame:
    return perfect_reader(png_study["key"], name="dr_a").astype({"rating": str})


@pytest.mark.parametrize("case, pattern", [
    ("unknown_case", r"row \d+: unknown case 'case_0099'"),
    ("missing_case", r"missing answers: reader 'dr_a' did not rate 1 of 30 case\(s\) \(e\.g\. case_0007\)"),
    ("duplicate", r"duplicate answer: reader 'dr_a' rated case_0003 twice \(rows 4 and 32\)"),
    ("out_of_scale", r"row 6: rating '7' for case_0005 .* not on the study's confidence scale"),
    ("not_a_number", r"rating 'maybe' .* not on the study's confidence scale"),
    ("no_rating", r"row 3: no rating for case_0002"),
    ("no_reader", r"row 2 \(case_0001\) names no reader"),
    ("missing_column", r"missing column\(s\) rating"),
    ("reader_in_two_files", r"reader 'dr_a' also answers in good\.csv"),
    ("not_found", r"answer file not found"),
])
def test_bad_answer_files_give_one_line(png_study, tmp_path, case, pattern):
    df = _answers(png_study)
    good = write_answers(df, tmp_path / "good.csv")
    files = []
    if case == "unknown_case":
        df.loc[5, "case"] = "case_0099"
    elif case == "missing_case":
        df = df.drop(index=6)
    elif case == "duplicate":
        df = pd.concat([df, df.iloc[[2]]], ignore_index=True)
    elif case == "out_of_scale":
        df.loc[4, "rating"] = "7"
    elif case == "not_a_number":
        df.loc[4, "rating"] = "maybe"
    elif case == "no_rating":
        df.loc[1, "rating"] = ""
    elif case == "no_reader":
        df.loc[0, "reader"] = ""
    elif case == "missing_column":
        df = df.drop(columns="rating")
    elif case == "reader_in_two_files":
        files = [good]
    bad = tmp_path / "bad.csv"
    if case != "not_found":
        write_answers(df, bad)
    r = runner.invoke(app, ["reader-study", "score", "--key", str(png_study["key"]), "--answers", *map(str, files),
                            str(bad), "--out", str(tmp_path / "res"), "--n-boot", "50"])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0].startswith(f"error: {bad}: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "res" / rs.RESULTS_JSON).exists()


def test_answer_file_accepts_file_names_and_float_integers(png_study, tmp_path):
    df = _answers(png_study)
    df["case"] = df["case"] + ".png"
    df["rating"] = df["rating"].astype(float).map(lambda v: f"{v:.1f}")
    res = _score(png_study["key"], write_answers(df, tmp_path / "a.csv"), n_boot=100)
    assert res["readers"][0]["auc"]["point"] == 1.0
