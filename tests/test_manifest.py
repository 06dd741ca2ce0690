"""Manifest CSV reading/writing, patient-level splits and format preference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsynth.data.manifest import (
    check_patient_split,
    patient_split,
    read_manifest,
    select_rows,
    write_manifest,
)
from medsynth.errors import MedsynthError


def _touch(folder, names):
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_read_resolves_paths_relative_to_csv(tmp_path):
    _touch(tmp_path / "d", ["img/a.png", "img/b.png", "m/a.nii.gz"])
    csv = tmp_path / "d" / "m.csv"
    csv.write_text("path,label,patient_id,mask,split,extra\nimg/a.png,1,007,m/a.nii.gz,train,q\nimg/b.png,,8,,TEST,r\n")
    df = read_manifest(csv)
    assert df["path"].tolist() == [str(tmp_path / "d/img/a.png"), str(tmp_path / "d/img/b.png")]
    assert df["mask"].tolist() == [str(tmp_path / "d/m/a.nii.gz"), ""]
    assert df["label"].tolist() == [1, -1] and df["label"].dtype == np.int64
    assert df["patient_id"].tolist() == ["007", "8"]  # ids stay strings (leading zeros kept)
    assert df["split"].tolist() == ["train", "test"] and "extra" in df.columns


def test_missing_files_listed_with_count(tmp_path):
    _touch(tmp_path, ["ok.png"])
    csv = tmp_path / "m.csv"
    lines = ["path,label,patient_id", "ok.png,0,a"] + [f"gone{i}.png,0,p{i}" for i in range(7)]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(MedsynthError) as ei:
        read_manifest(csv)
    msg = str(ei.value)
    assert "7 listed file(s) missing" in msg and "gone0.png" in msg and "gone6.png" not in msg
    assert str(csv) in msg and "\n" not in msg
    assert len(read_manifest(csv, check_files=False)) == 8


@pytest.mark.parametrize(
    "content, words",
    [
        ("path,label\na.png,1\n", "missing required column(s) patient_id"),
        ("path,label,patient_id\n", "no rows"),
        ("path,label,patient_id\na.png,yes,p\n", "'label' must be an integer"),
        ("path,label,patient_id,split\na.png,1,p,holdout\n", "unknown split"),
        ("path,label,patient_id,split\na.png,1,p,train\na.png,0,p,test\n", "more than one split"),
    ],
)
def test_bad_manifests(tmp_path, content, words):
    _touch(tmp_path, ["a.png"])
    csv = tmp_path / "m.csv"
    csv.write_text(content)
    with pytest.raises(MedsynthError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(csv)


def test_write_manifest_atomic_relative_roundtrip(tmp_path):
    _touch(tmp_path / "d", ["x/a.png", "x/b.png"])
    df = pd.DataFrame({"path": [str(tmp_path / "d/x/a.png"), "x/b.png"], "label": [0, 1], "patient_id": ["p", "q"]})
    out = write_manifest(df, tmp_path / "d" / "out.csv")
    raw = pd.read_csv(out)
    assert raw["path"].tolist() == ["x/a.png", "x/b.png"]
    assert [p.name for p in (tmp_path / "d").iterdir() if p.name.startswith(".")] == []  # no temp left
    back = read_manifest(out)
    assert back["path"].tolist() == [str(tmp_path / "d/x/a.png"), str(tmp_path / "d/x/b.png")]


def _patients_frame(n_pat=50, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pat):
        lab = int(p < n_pat * 0.3)
        for _ in range(int(rng.integers(1, 4))):
            rows.append({"patient_id": f"p{p}", "label": lab, "path": f"{p}.png"})
    return pd.DataFrame(rows)


def test_patient_split_is_patient_level_stratified_deterministic():
    df = _patients_frame()
    a = patient_split(df, seed=3)
    b = patient_split(df, seed=3)
    c = patient_split(df, seed=4)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()
    check_patient_split(a)  # no patient on two sides
    per_pat = a.groupby("patient_id").agg(split=("split", "first"), label=("label", "max"))
    counts = per_pat["split"].value_counts()
    assert counts["train"] == 30 and counts["val"] == 10 and counts["test"] == 10
    pos = per_pat[per_pat["label"] == 1]["split"].value_counts()
    assert pos["train"] == 9 and pos["val"] == 3 and pos["test"] == 3  # 15 positives, stratified


def test_patient_split_edge_cases():
    df = _patients_frame(5)
    s = patient_split(df, fractions=(1, 0, 0))
    assert set(s["split"]) == {"train"}
    s = patient_split(df, fractions=(0.5, 0, 0.5))
    assert set(s["split"]) <= {"train", "test"}
    one = pd.DataFrame({"patient_id": ["a"], "label": [1]})
    assert patient_split(one)["split"].tolist()[0] in ("train", "val", "test")
    with pytest.raises(ValueError):
        patient_split(df, fractions=(1, -1, 0))


def test_check_patient_split_detects_leak():
    df = pd.DataFrame({"patient_id": ["a", "a", "b"], "split": ["train", "val", "test"]})
    with pytest.raises(MedsynthError, match="1 patient"):
        check_patient_split(df)
    check_patient_split(df.drop(index=1))


def test_select_rows_prefers_dicom_per_patient():
    df = pd.DataFrame({
        "patient_id": ["a", "a", "b", "c", "c", "c", "d"],
        "modality": ["xray", "xray", "xray", "ct", "ct", "ct", "xray"],
        "kind": ["radiograph", "radiograph", "radiograph", "volume", "volume", "slice", "radiograph"],
        "format": ["png", "dicom", "png", "nifti", "dicom_series", "png", "npz"],
        "split": ["train"] * 7,
        "path": list("1234567"),
        "label": [0] * 7,
    })
    x = select_rows(df, modality="xray")
    assert x["path"].tolist() == ["2", "3", "7"]  # a: dicom over png; b only png; d only npz
    v = select_rows(df, modality="ct", kind="volume")
    assert v["path"].tolist() == ["5"]
    assert select_rows(df, modality="ct")["path"].tolist() == ["5", "6"]  # one per (patient, kind)
    assert select_rows(df, modality="xray", fmt="png")["path"].tolist() == ["1", "3"]
    assert select_rows(df, split="val").empty
