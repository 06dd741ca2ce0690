"""medsynth.data.seg: image/mask pairs as DICOM Segmentation objects (CoGAN pairs, phantom
ground truth, CycleGAN change regions), read back with highdicom, marked, free of input identifiers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import write_dx
from medsynth.data.seg import (
    generator_origin,
    read_sources,
    translation_difference_mask,
    translation_origin,
    write_seg,
)
from medsynth.data.writers import SyntheticInfo, write_ct_series, write_synthetic_set
from medsynth.errors import MedsynthError

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

INFO = SyntheticInfo(model="cogan", run="00007-xray-cogan", seed=3)
TRANSLATED = SyntheticInfo(model="cyclegan", run="00002-xray-cyclegan", translation="a2b")
SEG_UID = "1.2.840.10008.5.1.4.1.1.66.4"
#: the phantom grids of tests/test_phantom.py, small enough for a fast sample set
TINY_GRIDS = {"roi": {"voxel_mm": 5.0, "depth_shape": 24, "depth_mm": 12.0},
              "xray_grid": {"shape": (32, 32, 32), "spacing_mm": 12.0},
              "ct_grid": {"shape": (8, 16, 16), "spacing_mm": (20.0, 24.0, 24.0)}}


def _blob(shape, centre, r):
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (sum((g - c) ** 2 for g, c in zip(grids, centre)) <= r * r).astype(np.uint8)


def _read_mask(path: Path, sources) -> np.ndarray:
    """The SEG's segment 1 on the given source instances, (n, H, W) uint8 (missing frames = empty)."""
    seg = hd.seg.segread(path)
    px = seg.get_pixels_by_source_instance([str(s.SOPInstanceUID) for s in sources], segment_numbers=[1],
                                           assert_missing_frames_are_empty=True)
    return px[..., 0].astype(np.uint8)


def _referenced(ds) -> list[str]:
    return [str(i.ReferencedSOPInstanceUID) for s in ds.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence]


def _header_text(ds) -> str:
    out = []

    def visit(d):
        for el in d:
            if el.VR == "SQ":
                for item in el.value:
                    visit(item)
            elif el.tag != 0x7FE00010:
                out.append(str(el.value))

    visit(ds.file_meta)
    visit(ds)
    return "\n".join(out)


def _no_temp_files(folder: Path):
    assert not [p for p in folder.rglob(".*") if p.is_file()], "temporary files left behind"


def _synthetic_dx(folder: Path, n=1, size=16, info=INFO):
    x = np.random.default_rng(0).uniform(-1, 1, (n, 1, size, size)).astype(np.float32)
    df = write_synthetic_set(folder, x, [0] * n, modality="xray", fmt="dicom", info=info)
    return [folder / p for p in df["path"]]


# ---- the writer ------------------------------------------------------------------------------------


def test_dx_seg_round_trip_reference_and_synthetic_marking(tmp_path):
    img = _synthetic_dx(tmp_path / "img")[0]
    src = read_sources(img)
    mask = _blob((16, 16), (6, 9), 3)
    out = write_seg(tmp_path / "seg" / "a_seg.dcm", src, mask, origin=generator_origin(INFO), info=INFO)
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == SEG_UID and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    np.testing.assert_array_equal(_read_mask(out, src)[0], mask)
    assert _referenced(ds) == [str(src[0].SOPInstanceUID)]
    assert ds.StudyInstanceUID == src[0].StudyInstanceUID
    # the image's synthetic identity, and the marking in the file
    assert ds.PatientID == src[0].PatientID and ds.PatientID.startswith("SYNTHETIC-")
    assert str(ds.PatientName) == "SYNTHETIC^" and not ds.get("PatientBirthDate") and not ds.get("StudyDate")
    for kw in ("SeriesDescription", "ImageComments", "DerivationDescription"):
        text = str(ds.get(kw, ""))
        assert "medsynth" in text and INFO.model in text and INFO.run in text, kw
    assert "SYNTHETIC" in ds.ImageComments and "not a real patient" in ds.ImageComments
    assert ds.ManufacturerModelName == "medsynth cogan" and ds.BurnedInAnnotation == "NO"
    assert list(ds.PatientOrientation) == list(src[0].PatientOrientation)  # DX: no frame of reference
    s = ds.SegmentSequence[0]
    assert s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    alg = s.SegmentationAlgorithmIdentificationSequence[0]
    assert "cogan" in alg.AlgorithmName and INFO.run in alg.AlgorithmName and alg.AlgorithmVersion
    assert str(tmp_path) not in _header_text(ds)
    _no_temp_files(tmp_path)


def test_ct_series_seg_round_trip_omits_empty_slices(tmp_path):
    vol = np.full((5, 12, 12), -800.0)
    files = write_ct_series(tmp_path / "ct", vol, spacing=(2.0, 1.0, 1.0), patient_id="SYNTHETIC-00004", info=INFO)
    src = read_sources(files)
    mask = np.zeros((5, 12, 12), np.uint8)
    mask[1:4] = _blob((3, 12, 12), (1, 5, 6), 2)
    out = write_seg(tmp_path / "ct_seg.dcm", src, mask.astype(bool), origin=generator_origin(INFO), info=INFO)
    ds = pydicom.dcmread(out)
    assert int(ds.NumberOfFrames) == 3  # slices 0 and 4 are empty: not stored
    np.testing.assert_array_equal(_read_mask(out, src), mask)
    assert sorted(_referenced(ds)) == sorted(str(s.SOPInstanceUID) for s in src)
    assert ds.FrameOfReferenceUID == src[0].FrameOfReferenceUID


def test_empty_mask_is_an_explicit_empty_segment_or_skipped(tmp_path):
    src = read_sources(_synthetic_dx(tmp_path / "img")[0])
    zero = np.zeros((16, 16), np.uint8)
    out = write_seg(tmp_path / "e.dcm", src, zero, origin=generator_origin(INFO), info=INFO)
    ds = pydicom.dcmread(out)
    assert int(ds.NumberOfFrames) == 1 and "empty" in ds.ContentDescription
    assert not _read_mask(out, src).any()
    assert write_seg(tmp_path / "skip.dcm", src, zero, origin=generator_origin(INFO), info=INFO, empty="skip") is None
    assert not (tmp_path / "skip.dcm").exists()
    with pytest.raises(MedsynthError, match="empty"):
        write_seg(tmp_path / "x.dcm", src, zero, origin=generator_origin(INFO), info=INFO, empty="maybe")


def test_refuses_foreign_sources_and_masks_that_do_not_fit(tmp_path):
    planted = write_dx(tmp_path / "real.dcm", np.zeros((16, 16)), patient_id="PID-PLANTED-5519")
    mask = _blob((16, 16), (8, 8), 3)
    with pytest.raises(MedsynthError, match="medsynth wrote"):
        write_seg(tmp_path / "s.dcm", read_sources(planted), mask, origin=generator_origin(INFO), info=INFO)
    src = read_sources(_synthetic_dx(tmp_path / "img")[0])
    bad = {"float": (mask.astype(np.float32), "threshold it first"), "values": (mask * 2, "0 and 1"),
           "size": (mask[:8], "differ in size"), "slices": (np.stack([mask, mask]), "2 mask slices")}
    for name, (m, msg) in bad.items():
        with pytest.raises(MedsynthError, match=msg):
            write_seg(tmp_path / f"{name}.dcm", src, m, origin=generator_origin(INFO), info=INFO)
    assert [p.name for p in tmp_path.glob("*.dcm")] == ["real.dcm"]  # nothing written
    _no_temp_files(tmp_path)


# ---- CycleGAN change region ----------------------------------------------------------------------


def test_translation_difference_mask_finds_the_added_blob_and_nothing_in_noise():
    rng = np.random.default_rng(1)
    src = np.clip(rng.normal(-0.3, 0.2, (32, 32)), -1, 1)
    yy, xx = np.mgrid[:32, :32]
    bump = 0.6 * np.exp(-((yy - 12) ** 2 + (xx - 20) ** 2) / (2 * 3.0 ** 2))
    noise = rng.normal(0, 0.02, (32, 32))
    m = translation_difference_mask(src, src + bump + noise)
    half = (bump >= 0.3).astype(np.uint8)  # the bump's region at half its height
    iou = (m & half).sum() / (m | half).sum()
    assert m[12, 20] == 1 and iou > 0.8
    assert not translation_difference_mask(src, src + noise).any()  # nothing brightened by >= floor
    assert not translation_difference_mask(src, src - bump).any()  # made darker: not a density gain
    # two bumps: only the region holding the peak
    second = 0.4 * np.exp(-((yy - 25) ** 2 + (xx - 5) ** 2) / (2 * 2.0 ** 2))
    m2 = translation_difference_mask(src, src + bump + second)
    assert m2[12, 20] == 1 and m2[25, 5] == 0
    with pytest.raises(MedsynthError):
        translation_difference_mask(src, src[:10])


def test_translation_seg_is_marked_as_translation_and_as_a_change_region(tmp_path):
    img = _synthetic_dx(tmp_path / "img", info=TRANSLATED)[0]
    src = read_sources(img)
    assert src[0].PatientID.startswith("TRANSLATED-")
    mask = _blob((16, 16), (8, 8), 3)
    out = write_seg(tmp_path / "t.dcm", src, mask, origin=translation_origin(TRANSLATED, fraction=0.5, floor=0.1),
                    info=TRANSLATED)
    ds = pydicom.dcmread(out)
    assert "TRANSLATION" in ds.ImageComments and "NOT SYNTHETIC" in ds.ImageComments
    assert ds.PatientID == src[0].PatientID
    s = ds.SegmentSequence[0]
    assert s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion" and s.SegmentLabel == "translation change"
    assert "not a delineation" in s.SegmentDescription
    np.testing.assert_array_equal(_read_mask(out, src)[0], mask)


# ---- CoGAN pairs -----------------------------------------------------------------------------------


def test_pair_segs_of_ct_volumes_reference_each_series_in_slice_order(tmp_path):
    from medsynth.data.seg import write_pair_segs

    x = np.random.default_rng(4).uniform(-1, 1, (2, 1, 4, 8, 8)).astype(np.float32)
    df = write_synthetic_set(tmp_path / "domain0", x, [0, 0], modality="ct", fmt="dicom", info=INFO)
    masks = -np.ones_like(x)
    masks[0, 0, 1:3, 2:5, 3:6] = 0.7  # volume 1: a block on slices 1-2; volume 2: empty
    table = write_pair_segs(tmp_path / "domain1", tmp_path / "domain0", df, masks, info=INFO)
    assert table["mask_pixels"].tolist() == [18, 0] and (table["path"] != "").all()  # empty ones written too
    assert pd.read_csv(tmp_path / "domain1" / "seg.csv")["mask_pixels"].tolist() == [18, 0]
    for i, row in enumerate(table.to_dict("records")):
        files = sorted((tmp_path / "domain1" / row["image"]).glob("*.dcm"))
        src = read_sources(files)
        assert [int(s.InstanceNumber) for s in src] == [1, 2, 3, 4]
        got = _read_mask(tmp_path / "domain1" / row["path"], src)
        np.testing.assert_array_equal(got, (masks[i, 0] > 0).astype(np.uint8))
        assert row["referenced_sop_instance_uid"].split(";") == [str(s.SOPInstanceUID) for s in src]
    with pytest.raises(MedsynthError, match="masks must be"):
        write_pair_segs(tmp_path / "bad", tmp_path / "domain0", df, masks[:1], info=INFO)


# ---- CoGAN pairs through the command line --------------------------------------------------------


@pytest.mark.slow
def test_generate_pairs_seg_writes_masks_as_seg_of_domain_one(tmp_path, one_thread):
    import torch

    from medsynth.cli import app, default_data
    from medsynth.data.writers import sample_pairs_in_batches
    from medsynth.runs import load_trained

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    r = invoke("train", "--modality", "xray", "--model", "cogan", "--size", "16", "--steps", "2", "--set",
               "model.width=4", "--set", "model.latent_dim=16", "--out", tmp_path / "runs", "--no-progress")
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs").glob("*-xray-cogan"))
    out = tmp_path / "pairs"
    r = invoke("generate", run, "--pairs", "--seg", "--format", "dicom", "--count", "4", "--seed", "5",
               "--out", out)
    assert r.exit_code == 0, r.output
    images = pd.read_csv(out / "domain0" / "manifest.csv")
    table = pd.read_csv(out / "domain1" / "seg.csv", keep_default_na=False)
    assert len(images) == len(table) == 4 and not list((out / "domain1").glob("synthetic_*[0-9].dcm"))
    # the same pairs again, from the run: each SEG holds its pair's mask domain thresholded at 0
    _, model, _ = load_trained(run)
    _, x2 = sample_pairs_in_batches(model, 4, generator=torch.Generator().manual_seed(5))
    want = (x2[:, 0] > 0).numpy().astype(np.uint8)
    assert table["mask_pixels"].tolist() == want.reshape(4, -1).sum(1).tolist()
    planted = [str(tmp_path), str(default_data().parent), "PHANTOM"]
    for i, row in enumerate(table.to_dict("records")):
        img = (out / "domain1" / row["image"]).resolve()
        assert img == (out / "domain0" / images["path"][i]).resolve()
        src = read_sources(img)
        seg_path = out / "domain1" / row["path"]
        ds = pydicom.dcmread(seg_path)
        assert _referenced(ds) == [str(src[0].SOPInstanceUID)] == [row["referenced_sop_instance_uid"]]
        np.testing.assert_array_equal(_read_mask(seg_path, src)[0], want[i])
        assert ds.PatientID == src[0].PatientID == row["patient_id"] and ds.PatientID.startswith("SYNTHETIC-")
        assert run.name in ds.ImageComments and "SYNTHETIC" in ds.ImageComments
        text = _header_text(ds)
        assert not [p for p in planted if p in text]  # no input path, no patient ID of the training data
    listed = set((out / "medsynth-outputs.json").read_text().split('"'))
    assert "domain1/seg.csv" in listed  # --overwrite can remove the SEGs too
    # --seg needs --pairs and DICOM: one line, before anything is loaded or written
    for args in (["--seg"], ["--seg", "--pairs", "--format", "png"]):
        r = runner.invoke(app, ["generate", str(run), *args, "--out", str(tmp_path / "no")])
        assert r.exit_code == 2 and "--seg" in r.output and "--format dicom" in r.output
        assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_generate_from_seg_writes_each_translation_change_mask(tmp_path, one_thread):
    """CycleGAN ``generate --from --seg``: one SEG per translated image, holding exactly
    :func:`translation_difference_mask` of (source, translation), referencing the translation."""
    from medsynth.cli import app
    from medsynth.data.dataset import load_image_set
    from medsynth.data.writers import translate_in_batches
    from medsynth.runs import load_trained

    runner = CliRunner()
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (12, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "a.npz", images=a, labels=np.zeros(12, int), patient_ids=[f"a{i}" for i in range(12)])
    np.savez(tmp_path / "b.npz", images=a + 3.0, labels=np.ones(12, int), patient_ids=[f"b{i}" for i in range(12)])
    r = runner.invoke(app, ["train", "--modality", "xray", "--model", "cyclegan", "--size", "16", "--steps", "2",
                            "--set", "model.width=4", "--domain-a", str(tmp_path / "a.npz"), "--domain-b",
                            str(tmp_path / "b.npz"), "--out", str(tmp_path / "runs"), "--no-progress"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs").glob("*-xray-cyclegan"))
    out = tmp_path / "translated"
    r = runner.invoke(app, ["generate", str(run), "--from", str(tmp_path / "a.npz"), "--seg", "--format", "dicom",
                            "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    images = pd.read_csv(out / "manifest.csv")
    table = pd.read_csv(out / "seg" / "seg.csv", keep_default_na=False)
    assert len(images) == len(table) == 12
    # the same translations again, from the run: each SEG holds translation_difference_mask(source, translation)
    src = load_image_set(str(tmp_path / "a.npz"), modality="xray", size=16).images
    _, model, _ = load_trained(run)
    trans = translate_in_batches(model, src, "a2b")
    want = [translation_difference_mask(src[i, 0].numpy(), trans[i, 0].numpy()) for i in range(12)]
    assert table["mask_pixels"].tolist() == [int(m.sum()) for m in want] and sum(table["mask_pixels"]) > 0
    for i, row in enumerate(table.to_dict("records")):
        ref = read_sources(out / images["path"][i])
        assert row["referenced_sop_instance_uid"] == str(ref[0].SOPInstanceUID)
        if row["path"]:
            ds = pydicom.dcmread(out / "seg" / row["path"])
            assert _referenced(ds) == [str(ref[0].SOPInstanceUID)] and ds.PatientID.startswith("TRANSLATED-")
            assert "not a delineation" in ds.SegmentSequence[0].SegmentDescription
            np.testing.assert_array_equal(_read_mask(out / "seg" / row["path"], ref)[0], want[i])


# ---- the phantom's ground truth ------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    from medsynth.phantom import generate_sample_data

    root = tmp_path_factory.mktemp("phantom_seg")
    manifest = generate_sample_data(root / "seg", n_xray=8, n_ct=4, seed=3, n_png=0, n_volumes=0, n_series=1,
                                    seg=True, **TINY_GRIDS)
    return manifest


def test_phantom_seg_holds_the_simulator_ground_truth(phantom_set):
    from medsynth.phantom.anatomy import make_patient
    from medsynth.phantom.imaging import simulate_radiograph
    from medsynth.phantom.sample import _acquisition, _streams, xray_patient

    root = phantom_set.parent
    df = pd.read_csv(phantom_set, keep_default_na=False)
    dx = df[(df["format"] == "dicom") & (df["modality"] == "xray")]
    assert (dx["seg"] != "").sum() == (dx["label"] == 1).sum() > 0  # a SEG for every radiograph with a nodule
    assert (dx[dx["label"] == 0]["seg"] == "").all()
    for row in dx[dx["seg"] != ""].to_dict("records"):
        i = int(row["patient_id"].split("-")[1])
        ss, arng, nrng = _streams(3, i)
        acq = _acquisition(arng)
        p = xray_patient(ss, 3, i, "lung_spot", TINY_GRIDS["roi"])
        r = simulate_radiograph(p, nrng, size=64, photons=acq.photons, scatter_fraction=acq.scatter_fraction,
                                gamma=acq.gamma)
        src = read_sources(root / row["path"])
        np.testing.assert_array_equal(_read_mask(root / row["seg"], src)[0], r.nodule_mask)
        ds = pydicom.dcmread(root / row["seg"])
        assert ds.PatientID == row["patient_id"] and _referenced(ds) == [str(src[0].SOPInstanceUID)]
        s = ds.SegmentSequence[0]
        assert s.SegmentAlgorithmType == "AUTOMATIC" and "ground truth" in s.SegmentAlgorithmName
        assert "ground truth" in s.SegmentDescription and "PHANTOM" in ds.ImageComments
    series = df[(df["format"] == "dicom_series") & (df["seg"] != "")]
    assert len(series) == 1
    row = series.iloc[0]
    i = int(row["patient_id"].split("-")[1])
    p = make_patient(_streams(3, i)[0], **TINY_GRIDS["ct_grid"])
    files = sorted((root / row["path"]).glob("*.dcm"))
    np.testing.assert_array_equal(_read_mask(root / row["seg"], read_sources(files)), p.nodule_mask)


def test_phantom_seg_is_off_by_default_and_reproducible(phantom_set, tmp_path):
    from medsynth.phantom import generate_sample_data

    plain = generate_sample_data(tmp_path / "plain", n_xray=8, n_ct=4, seed=3, n_png=0, n_volumes=0, n_series=1,
                                 **TINY_GRIDS)
    assert "seg" not in pd.read_csv(plain).columns and not list(plain.parent.rglob("*_seg.dcm"))
    # the default set is unchanged by the option's existence: same rows, same image files
    with_seg = pd.read_csv(phantom_set, keep_default_na=False).drop(columns="seg")
    pd.testing.assert_frame_equal(pd.read_csv(plain, keep_default_na=False), with_seg)
    a = pydicom.dcmread(phantom_set.parent / with_seg["path"][0])
    b = pydicom.dcmread(plain.parent / with_seg["path"][0])
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.PixelData == b.PixelData
    # SEG UIDs derive from the set's seed: a second set has the same ones
    again = generate_sample_data(tmp_path / "again", n_xray=8, n_ct=4, seed=3, n_png=0, n_volumes=0, n_series=1,
                                 seg=True, **TINY_GRIDS)
    seg_rel = pd.read_csv(again, keep_default_na=False).query("seg != ''")["seg"].iloc[0]
    assert (pydicom.dcmread(again.parent / seg_rel).SOPInstanceUID
            == pydicom.dcmread(phantom_set.parent / seg_rel).SOPInstanceUID)


# ---- dciodvfy ----------------------------------------------------------------------------------------


def _dciodvfy() -> str | None:
    return os.environ.get("MEDSYNTH_DCIODVFY") or shutil.which("dciodvfy")


@pytest.mark.skipif(_dciodvfy() is None, reason="dciodvfy (dicom3tools) not found: set MEDSYNTH_DCIODVFY or put "
                                                "dciodvfy on PATH")
def test_dciodvfy_reports_no_error_for_any_seg_kind(tmp_path, phantom_set):
    exe = _dciodvfy()
    dx_src = read_sources(_synthetic_dx(tmp_path / "dx")[0])
    ct_df = write_synthetic_set(tmp_path / "ct", np.zeros((1, 1, 12, 12), np.float32), [0], modality="ct",
                                fmt="dicom", info=INFO)
    ct_src = read_sources(tmp_path / "ct" / ct_df["path"][0])
    vol_files = write_ct_series(tmp_path / "vol", np.full((4, 12, 12), -700.0), patient_id="SYNTHETIC-00001",
                                info=INFO)
    tr_src = read_sources(_synthetic_dx(tmp_path / "tr", info=TRANSLATED)[0])
    m2 = _blob((16, 16), (8, 8), 3)
    m3 = np.stack([np.zeros((12, 12), np.uint8), _blob((12, 12), (6, 6), 2), _blob((12, 12), (6, 6), 1),
                   np.zeros((12, 12), np.uint8)])
    gen = generator_origin(INFO)
    files = [
        write_seg(tmp_path / "dx.dcm", dx_src, m2, origin=gen, info=INFO),
        write_seg(tmp_path / "ct.dcm", ct_src, _blob((12, 12), (5, 5), 2), origin=gen, info=INFO),
        write_seg(tmp_path / "vol.dcm", read_sources(vol_files), m3, origin=gen, info=INFO),
        write_seg(tmp_path / "empty.dcm", dx_src, m2 * 0, origin=gen, info=INFO),
        write_seg(tmp_path / "tr.dcm", tr_src, m2, origin=translation_origin(TRANSLATED, fraction=0.5, floor=0.1),
                  info=TRANSLATED),
    ]
    df = pd.read_csv(phantom_set, keep_default_na=False)
    files += [phantom_set.parent / s for s in df[df["seg"] != ""]["seg"]]
    assert {pydicom.dcmread(f).SOPClassUID for f in files} == {SEG_UID}
    phantom_kinds = set(df[df["seg"] != ""]["format"])
    assert phantom_kinds == {"dicom", "dicom_series"}  # phantom DX and CT series SEGs both checked
    for f in files:
        res = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if "Error" in ln]
        assert errors == [], f"{f.name}: {errors}"
