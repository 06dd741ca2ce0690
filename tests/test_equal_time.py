"""pipelines/studies/equal_time/study.py: arm parsing, resumable scoring and the results table."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.studies.equal_time import study as et

ROOT = et.ROOT


def test_arm_parsing():
    assert et.parse_arm("stylegan2") == ("stylegan2", None)
    assert et.parse_arm("progan:diffaug") == ("progan", "diffaug")
    for bad in ("dcgan:flip", ":ada", ""):
        with pytest.raises(ValueError, match="arm"):
            et.parse_arm(bad)


def test_train_command_sets_the_process_clock_and_augment(tmp_path):
    class A:
        modality, data, minutes, max_steps, seed, set = "ct", "/d/lidc", 6.0, 10**7, 0, ["train.batch_size=16"]

    cmd = et.train_command("dcgan:ada", A, tmp_path, None)
    sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
    assert sets == ["train.clock=process", "train.threads=1", "train.batch_size=16", "model.params.augment=ada"]
    assert cmd[cmd.index("--model") + 1] == "dcgan" and cmd[cmd.index("--data") + 1] == "/d/lidc"
    resumed = et.train_command("dcgan", A, tmp_path, tmp_path / "00000-ct-dcgan")
    assert "--resume" in resumed and "--model" not in resumed
    assert not any(s.startswith("model.params.augment") for s in resumed)


def _row(arm, fd):
    ms = {"mean": 0.5, "sd": 0.1}
    return {"arm": arm, "steps": 10, "kimg_g": 0.64, "g_img_per_cpu_s": 50.0, "fd": {"mean": fd, "sd": 1.0},
            "fd_floor": {"mean": 5.0, "sd": 1.0}, "kid": ms, "precision": ms, "recall": ms, "density": ms,
            "coverage": ms, "ms_ssim_synthetic": 0.1, "ms_ssim_real": 0.05, "dcr_frac_below_real_p1": 0.02}


def test_markdown_compares_every_arm_with_the_reference():
    res = {"data": "default", "modality": "xray", "size": 64, "minutes": 6.0, "jobs": 2, "count": 500,
           "encoder_fingerprint": "abc", "command": "python -m pipelines.studies.equal_time", "reference": "dcgan",
           "machine": "x", "torch": "2", "date": "2026-11-27", "arms": [_row("dcgan", 40.0), _row("stylegan2:ada", 30.0)]}
    md = et.markdown(res)
    assert "| stylegan2:ada |" in md and "-10.0 (-25 %)" in md and "reference" in md
    assert md.count("\n| ") == 4  # header, separator, 2 arms
    assert "By class" not in md  # no arm has per-class figures


def test_markdown_adds_the_per_class_table():
    ms = {"mean": 0.5, "sd": 0.1}
    pc = {"0": {"fd": {"mean": 7.0, "sd": 1.0}, "fd_floor": {"mean": 6.0, "sd": 1.0}, "precision": ms,
                "recall": {"mean": 0.8, "sd": 0.0}, "coverage": ms},
          "1": {"skipped": "3 real / 250 synthetic images (needs >= 24 / 6)"}}
    res = {"data": "d", "modality": "ct", "size": 64, "minutes": 20.0, "jobs": 1, "count": 500,
           "encoder_fingerprint": "abc", "command": "c", "reference": "dcgan", "machine": "x", "torch": "2",
           "date": "2026-11-27", "arms": [_row("dcgan", 40.0), dict(_row("progan", 30.0), per_class=pc)]}
    md = et.markdown(res)
    assert "| arm | class 0 |" in md and "| progan | 7.0 (6.0) / 0.80 / 0.50 |" in md and "| dcgan | – |" in md
    assert "class 1" not in md  # skipped everywhere


def test_markdown_shows_the_two_sample_test_beside_the_fd():
    ts = {"auroc": 0.987654, "ci": [0.97, 0.999], "p_value": 1e-9, "m": 252, "floor": {"auroc": 0.52, "ci": [0.45, 0.6]}}
    row = dict(_row("progan", 30.0), two_sample=et._two_sample(ts))
    assert row["two_sample"]["floor_auroc"] == 0.52 and row["two_sample"]["m"] == 252
    res = {"data": "d", "modality": "xray", "size": 64, "minutes": 20.0, "jobs": 2, "count": 500,
           "encoder_fingerprint": "abc", "command": "c", "reference": "dcgan", "machine": "x", "torch": "2",
           "date": "2026-12-06", "arms": [_row("dcgan", 40.0), row,
                                          dict(_row("sagan", 50.0), two_sample={"skipped": "too few"})]}
    md = et.markdown(res)
    assert "| progan | 10 | 0.64 | 50.0 | 30.0 ± 1.0 | -10.0 (-25 %) | 0.988 [0.970, 0.999] |" in md
    assert "| dcgan | 10 | 0.64 | 50.0 | 40.0 ± 1.0 | reference | – |" in md  # scored before the test existed
    assert "| sagan |" in md and "| skipped |" in md
    assert "two halves of the real images gives 0.520" in md
    assert et._two_sample(None) is None


def test_scored_evaluation_is_reused_only_with_the_same_encoder(tmp_path):
    from medsynth.metrics.fidelity import encoder_fingerprint, save_encoder, train_feature_encoder

    enc = train_feature_encoder(torch.rand(16, 1, 16, 16) * 2 - 1, seed=0, steps=2)
    save_encoder(enc, tmp_path / "enc.pt")

    class A:
        count, seed = 500, 0

    # a committed evaluation file (the current schema), re-labelled as this run's
    ev = json.loads((ROOT / "reports" / "phantom_spot" / "evaluate" / "evaluation.json").read_text())
    ev.update({"step": 7, "n_synthetic_sampled": 500, "seed": 0})
    ev["fidelity"]["encoder"]["fingerprint"] = encoder_fingerprint(enc)
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(ev))
    assert et._evaluated_with(path, tmp_path / "enc.pt", A, 7)
    old_schema = {k: v for k, v in ev.items() if k != "schema_version"}
    (tmp_path / "old.json").write_text(json.dumps(old_schema))
    assert not et._evaluated_with(tmp_path / "old.json", tmp_path / "enc.pt", A, 7)  # older file: score again
    assert not et._evaluated_with(path, tmp_path / "enc.pt", A, 8)  # trained further since
    ev["fidelity"]["encoder"]["fingerprint"] = "other"
    path.write_text(json.dumps(ev))
    assert not et._evaluated_with(path, tmp_path / "enc.pt", A, 7)
    assert not et._evaluated_with(tmp_path / "missing.json", tmp_path / "enc.pt", A, 7)


def test_repeated_set_options_are_all_kept():
    # argparse's nargs="*" alone keeps only the last --set; every override must reach every arm.
    args = et.build_parser().parse_args(
        ["--arms", "progan", "--out", "x", "--set", "model.lr_g=0.0005", "--set", "model.lr_d=0.0005", "a.b=1"])
    assert args.set == ["model.lr_g=0.0005", "model.lr_d=0.0005", "a.b=1"]
    assert et.build_parser().parse_args(["--arms", "dcgan", "--out", "x"]).set == []
