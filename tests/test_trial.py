"""The augmentation trial (medsynth/downstream/trial.py): end to end on a tiny protocol, resume
part by part, the patient-ID check, the protocol lock, classifier determinism; and the statistics
it rests on (Holm, the hierarchical paired bootstrap)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from medsynth.data.imageset import ImageSet
from medsynth.downstream.classifier import predict_proba, train_classifier
from medsynth.downstream.trial import (
    DEFAULT_PROTOCOL,
    interleaved_labels,
    load_protocol,
    plan_trial,
    run_trial,
    steps_per_epoch,
)
from medsynth.errors import MedsynthError
from medsynth.metrics.stats import bootstrap_ci, hierarchical_paired_bootstrap, holm


def _trainer(cfg, images, labels, run_dir, resume):
    from medsynth.cli import trial_trainer

    trial_trainer(cfg, images, labels, run_dir, resume)


def _real(n_per_split=(24, 20, 20), size=16, seed=0) -> ImageSet:
    """Blob (label 1) / no blob (label 0) images, one per patient, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    xs, ys, pids, splits = [], [], [], []
    for split, n in zip(("train", "val", "test"), n_per_split):
        for i in range(n):
            y = i % 2
            x = 0.3 * torch.randn(1, size, size, generator=g) - 0.5
            if y:
                c = torch.randint(4, size - 4, (2,), generator=g)
                x[0, c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2] += 0.8
            xs.append(x.clamp(-1, 1))
            ys.append(y)
            pids.append(f"{split}-{i:03d}")
            splits.append(split)
    n = len(ys)
    return ImageSet(images=torch.stack(xs), labels=torch.tensor(ys), patient_ids=pids, paths=[""] * n,
                    splits=splits, modality="xray")


def _protocol_file(tmp_path, **changes):
    raw = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    raw.update({
        "name": "tiny", "data": {"modality": "xray", "size": 16, "spatial_dims": 2, "ct_window": "lung"},
        "fractions": [0.5, 1.0],
        "generators": {"dcgan": {"preset": "xray_dcgan", "sets": ["model.params.augment=diffaug"],
                                 "repeats": 1, "ratios": [1, 2]}},
        "primary_generator": "dcgan",
        "generator_cpu_minutes": 10.0, "generator_max_steps": 2,
        "generator_sets": ["train.batch_size=8", "train.checkpoint_every=1", "train.tick_every=1",
                           "train.sample_every=1000000", "model.width=8"],
        "classifier_seeds": [0, 1], "classifier": {"epochs": 1, "batch_size": 8, "width": 4, "arch": "cnn", "lr": 0.001},
        "fidelity": {"count": 20, "encoder_steps": 5, "encoder_seed": 0, "two_sample": False},
        "n_boot": 200,
        "primary": {"a": "dcgan@1", "b": "real", "fraction": 0.5},
        "secondary": [{"a": "dcgan@1", "b": "real-equal-steps", "fraction": 0.5},
                      {"a": "dcgan@2", "b": "real-duplicated", "fraction": 0.5},
                      {"a": "dcgan@1", "b": "real", "fraction": 1.0}],
    })
    raw.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny trial run in two goes (stopped after 4 parts, then continued) and once straight."""
    tmp = tmp_path_factory.mktemp("trial")
    proto = load_protocol(_protocol_file(tmp))
    real = _real()
    first = run_trial(real, proto, tmp / "resumed", trainer=_trainer, max_parts=4)
    second = run_trial(real, proto, tmp / "resumed", trainer=_trainer)
    straight = run_trial(real, proto, tmp / "straight", trainer=_trainer)
    return tmp, proto, real, first, second, straight


def test_trial_resumes_part_by_part_and_gives_the_same_answer(finished):
    tmp, proto, real, first, second, straight = finished
    assert first["ran"] == 4 and not first["complete"] and first["analysis"]["status"] == "partial"
    assert second["done_before"] == 4 and second["ran"] == second["parts"] - 4 and second["complete"]
    assert straight["ran"] == straight["parts"]
    # parts: encoder + per (fraction, repeat) 1 generator + 1 pool; classifiers: 3 real arms at 0.5 and
    # once more at 1.0 (a different subset), 2 doses, per seed
    assert second["parts"] == 1 + 2 * 2 + 2 * 2 * (3 + 2)
    a = json.loads((tmp / "resumed" / "trial.json").read_text())
    b = json.loads((tmp / "straight" / "trial.json").read_text())
    assert a == b and a["status"] == "complete"
    for f in ("trial.md", "dose_response.png", "fidelity_vs_gain.png", "generators.json", "protocol.yaml",
              "encoder.pt"):
        assert (tmp / "resumed" / f).is_file(), f
    # a third call finds nothing to do
    again = run_trial(real, proto, tmp / "resumed", trainer=None)
    assert again["ran"] == 0 and again["done_before"] == again["parts"]


def test_trial_report_has_primary_and_holm_family(finished):
    tmp = finished[0]
    res = json.loads((tmp / "resumed" / "trial.json").read_text())
    pr = res["primary"]
    assert pr["available"] and pr["lo"] <= pr["hi"] and 0 < pr["p"] <= 1 and isinstance(pr["met"], bool)
    assert len(pr["per_run"]) == 2 and pr["repeats_used"] == [0]
    ps = [c["p"] for c in res["secondary"]]
    assert [c["p_holm"] for c in res["secondary"]] == pytest.approx(holm(ps).tolist())
    md = (tmp / "resumed" / "trial.md").read_text()
    assert "Primary endpoint" in md and ("**met**" in md or "**not met**" in md) and "Holm" in md
    gens = json.loads((tmp / "resumed" / "generators.json").read_text())
    assert set(gens) == {"dcgan_f0.5_r0", "dcgan_f1_r0"}
    assert all(g["steps"] == 2 and len(g["checkpoint_sha256"]) == 64 for g in gens.values())


def test_pools_keep_the_subset_prevalence_and_train_on_the_subset_only(finished):
    tmp, proto, real = finished[:3]
    rec = json.loads((tmp / "resumed" / "parts" / "pool" / "dcgan_f0.5_r0.json").read_text())
    subset = json.loads((tmp / "resumed" / "data.json").read_text())["subsets"]["0.5/0"]
    assert rec["n"] == 2 * subset["n_images"]
    assert rec["n_positive"] == round(rec["n"] * subset["prevalence"])
    train_patients = {p for p, s in zip(real.patient_ids, real.splits) if s == "train"}
    assert set(rec["patients"]) < train_patients and len(rec["patients"]) == subset["n_patients"]


def test_patient_mismatch_fails_loudly(finished, tmp_path):
    tmp, proto, real = finished[:3]
    folder = tmp_path / "t"
    shutil.copytree(tmp / "resumed", folder)
    rec_path = folder / "parts" / "pool" / "dcgan_f0.5_r0.json"
    rec = json.loads(rec_path.read_text())
    rec["patients"] = rec["patients"][:-1] + ["val-000"]
    rec_path.write_text(json.dumps(rec))
    victim = next((folder / "parts" / "classifier").glob("dcgan@1_f0.5_r0_s0.json"))
    victim.unlink()
    with pytest.raises(MedsynthError, match="other patients"):
        run_trial(real, proto, folder, trainer=None)


def test_changed_protocol_is_refused(finished, tmp_path):
    tmp, proto, real = finished[:3]
    other = load_protocol(_protocol_file(tmp_path, n_boot=300))
    with pytest.raises(MedsynthError, match="another protocol .*n_boot"):
        run_trial(real, other, tmp / "resumed", trainer=None)


def test_protocol_checks_and_default_protocol():
    p = load_protocol()  # the packaged phantom protocol
    assert p.primary == {"a": "stylegan2@1", "b": "real", "fraction": 0.25} and len(p.secondary) == 9
    assert p.generators["stylegan2"].repeats == 3 and p.generators["stylegan2"].ratios == [0.25, 0.5, 1, 2, 4]
    assert "model.params.augment=diffaug" in p.generators["dcgan"].sets
    shas = {(f, r): f"{f}-{r}" for f in p.fractions for r in range(3)}
    kinds = [pt.kind for pt in plan_trial(p, shas)]
    assert kinds.count("generator") == 2 * (3 + 1 + 1) and kinds.count("pool") == 10
    with pytest.raises(MedsynthError, match="no arm"):
        load_protocol(None, ["primary={a: stylegan2@3, b: real, fraction: 0.25}"])
    with pytest.raises(MedsynthError, match="no such protocol setting"):
        load_protocol(None, ["nonsense=1"])


def test_interleaved_labels_keep_prevalence_in_every_prefix():
    for prev in (0.0, 0.3, 0.47, 0.5, 1.0):
        y = interleaved_labels(101, prev)
        cum = np.cumsum(y)
        m = np.arange(1, 102)
        assert set(np.unique(y)) <= {0, 1}
        assert np.all(np.abs(cum - m * prev) <= 0.5 + 1e-9)
    assert steps_per_epoch(63, 32) == 2 and steps_per_epoch(65, 32) == 2 and steps_per_epoch(66, 32) == 3


def test_classifier_is_deterministic_for_a_seed():
    real = _real(size=16)
    x, y = real.images[:24], real.labels[:24].numpy()
    xv, yv = real.images[24:44], real.labels[24:44].numpy()
    runs = [predict_proba(train_classifier(x, y, epochs=2, batch_size=8, width=4, seed=s, x_val=xv, y_val=yv),
                          real.images[44:]) for s in (3, 3, 4)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


# --- statistics --------------------------------------------------------------------------------


def test_holm_hand_computed():
    # sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(0.06, 1*0.5)
    adj = holm([0.03, 0.01, 0.5, 0.02])
    assert adj == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert holm([0.04, 0.3]) == pytest.approx([0.08, 0.3])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        holm([0.1, float("nan")])


def _toy(rng, n=120):
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    base = y * 1.0 + rng.normal(0, 1.0, n)
    return y, base


def test_hierarchical_ci_widens_with_training_noise_and_matches_patient_ci_without():
    rng = np.random.default_rng(0)
    y, base = _toy(rng)
    b = np.broadcast_to(base, (3, 3, len(y)))
    a_same = np.broadcast_to(base + 0.3 * y, (3, 3, len(y)))
    res0 = hierarchical_paired_bootstrap(y, a_same, b, n_boot=2000, seed=1)
    # identical cells: the patient-only paired bootstrap of the difference
    from medsynth.metrics.stats import paired_bootstrap_diff

    ref = paired_bootstrap_diff(y, base + 0.3 * y, base, n_boot=2000, seed=1)
    assert res0["hi"] - res0["lo"] == pytest.approx(ref["hi"] - ref["lo"], rel=0.1)
    # seed-to-seed spread, then also generator-to-generator spread, in the synthetic arm
    seed_noise = rng.normal(0, 0.8, (1, 3, len(y)))
    gen_noise = rng.normal(0, 0.8, (3, 1, len(y))) + rng.normal(0, 0.6, (3, 1, 1)) * y
    res1 = hierarchical_paired_bootstrap(y, a_same + seed_noise, b, n_boot=2000, seed=1)
    res2 = hierarchical_paired_bootstrap(y, a_same + seed_noise + gen_noise, b, n_boot=2000, seed=1)
    w0, w1, w2 = (r["hi"] - r["lo"] for r in (res0, res1, res2))
    assert w1 > 1.1 * w0 and w2 > 1.1 * w1


def test_hierarchical_p_is_large_under_the_null_and_small_for_a_real_shift():
    ps = []
    for k in range(20):
        rng = np.random.default_rng(100 + k)
        y, base = _toy(rng, n=80)
        a = base + rng.normal(0, 0.5, (2, 2, len(y)))
        b = base + rng.normal(0, 0.5, (2, 2, len(y)))
        ps.append(hierarchical_paired_bootstrap(y, a, b, n_boot=500, seed=k)["p"])
    assert np.mean(np.asarray(ps) < 0.05) <= 0.2 and np.median(ps) > 0.2
    rng = np.random.default_rng(7)
    y, base = _toy(rng, n=80)
    a = base + 1.5 * y + rng.normal(0, 0.3, (2, 2, len(y)))
    b = base + rng.normal(0, 0.3, (2, 2, len(y)))
    res = hierarchical_paired_bootstrap(y, a, b, n_boot=500, seed=0)
    assert res["p"] <= 0.01 and res["lo"] > 0


def test_hierarchical_matches_bootstrap_ci_point():
    rng = np.random.default_rng(3)
    y, base = _toy(rng)
    res = hierarchical_paired_bootstrap(y, base[None, None] + y, base[None, None], n_boot=100)
    assert res["a"] == pytest.approx(bootstrap_ci(y, base + y, n_boot=10).point)


def test_cli_analyse_only(finished, tmp_path):
    from typer.testing import CliRunner

    from medsynth.cli import app

    tmp = finished[0]
    res = CliRunner().invoke(app, ["trial", "--analyse-only", "--out", str(tmp / "resumed")])
    assert res.exit_code == 0, res.output
    assert "primary [complete]: dcgan@1 - real at 50% real" in res.output
    bad = CliRunner().invoke(app, ["trial", "--analyse-only", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "not a trial folder" in bad.output


def test_claimed_part_is_left_to_its_worker_and_a_stale_claim_is_taken_over(finished, tmp_path):
    """Concurrent workers: a part claimed by a live process is not run (wait=False returns), the
    rest is; a claim by a dead process is taken over; the finished trial equals one run straight."""
    import os
    import subprocess
    import sys

    tmp, proto, real = finished[:3]
    folder = tmp_path / "t"
    shutil.copytree(tmp / "resumed", folder, ignore=shutil.ignore_patterns("trial.json"))
    victims = sorted((folder / "parts" / "classifier").glob("*.json"))[:2]
    for v in victims:
        v.unlink()
    live, dead = (v.with_suffix(".claim") for v in victims)
    live.write_text(json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(), "started": 0}))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead.write_text(json.dumps({"pid": int(gone.stdout), "host": __import__("socket").gethostname(), "started": 0}))
    info = run_trial(real, proto, folder, trainer=None, wait=False)
    assert info["ran"] == 1 and info["remaining"] == 1 and not info["complete"]
    assert victims[1].is_file() and not dead.exists()  # taken over, run, released
    assert not victims[0].is_file() and live.exists()  # left to its (live) worker
    live.unlink()  # that worker "stops"; nobody holds the part now
    info = run_trial(real, proto, folder, trainer=None)
    assert info["ran"] == 1 and info["complete"]
    a = json.loads((folder / "trial.json").read_text())
    b = json.loads((tmp / "straight" / "trial.json").read_text())
    assert a == b


def test_two_workers_share_one_trial(tmp_path):
    """Two processes on one trial folder: every part runs exactly once, and the answer equals a
    single worker's."""
    import subprocess
    import sys

    proto_path = _protocol_file(tmp_path, fractions=[0.5], secondary=[
        {"a": "dcgan@1", "b": "real-equal-steps", "fraction": 0.5}])
    # both workers import, report ready, then start together on a signal (so both find work)
    code = ("import sys, json, time, pathlib; sys.path.insert(0, %r); import test_trial as t; "
            "from medsynth.downstream.trial import load_protocol, run_trial; "
            "d = pathlib.Path(sys.argv[2]).parent; (d / ('ready%%s' %% sys.argv[3])).touch(); "
            "[time.sleep(0.05) for _ in range(2000) if not (d / 'go').exists()]; "
            "info = run_trial(t._real(), load_protocol(sys.argv[1]), sys.argv[2], trainer=t._trainer, poll_s=0.2); "
            "print(json.dumps({'ran': info['ran'], 'complete': info['complete']}))") % str(
        __import__("pathlib").Path(__file__).parent)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(proto_path), str(tmp_path / "shared"), str(i)],
                              stdout=subprocess.PIPE, text=True, env=env) for i in range(2)]
    for _ in range(2400):
        if all((tmp_path / f"ready{i}").exists() for i in range(2)):
            break
        __import__("time").sleep(0.05)
    (tmp_path / "go").touch()
    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    single = run_trial(_real(), load_protocol(proto_path), tmp_path / "single", trainer=_trainer)
    assert sum(o["ran"] for o in outs) == single["parts"] and all(o["ran"] >= 1 for o in outs)
    assert not list((tmp_path / "shared" / "parts").glob("*/*.claim"))
    a = json.loads((tmp_path / "shared" / "trial.json").read_text())
    b = json.loads((tmp_path / "single" / "trial.json").read_text())
    assert a == b
    timed = {f"{f.parent.name}/{f.stem}" for f in (tmp_path / "shared" / "timings").glob("*/*.json")}
    assert len(timed) == single["parts"]


def test_partial_trial_counts_missing_comparisons_in_holm(finished, tmp_path):
    """A comparison not yet available enters Holm as p = 1 (the declared family size m is kept), so a
    partial report's adjusted p-values are never smaller than the complete trial's could be."""
    from medsynth.downstream.trial import analyse_trial

    tmp = finished[0]
    folder = tmp_path / "t"
    shutil.copytree(tmp / "resumed", folder)
    for f in (folder / "parts" / "classifier").glob("dcgan@1_f1_*.json"):  # the 100 % comparison's arm
        f.unlink()
    res = analyse_trial(folder)
    sec = res["secondary"]
    assert res["status"] == "partial" and not sec[-1].get("available")
    ps = [c["p"] for c in sec[:-1]] + [1.0]
    assert [c["p_holm"] for c in sec[:-1]] == pytest.approx(holm(ps)[:-1].tolist())
    assert "p_holm" not in sec[-1]


def test_claims_of_other_hosts_go_stale_without_heartbeat(tmp_path, monkeypatch):
    """A claim from another host is live while its worker's heartbeat touches it and stale once it
    has been untouched for CLAIM_STALE_S; the heartbeat keeps a claim fresh and stops on request."""
    import os
    import time

    import medsynth.downstream.trial as T

    claim = tmp_path / "part.claim"
    claim.write_text(json.dumps({"pid": 1, "host": "another-host", "started": 0}))
    assert not T._claim_is_stale(claim)
    old = time.time() - T.CLAIM_STALE_S - 5
    os.utime(claim, (old, old))
    assert T._claim_is_stale(claim)
    assert T._claim(claim) and json.loads(claim.read_text())["pid"] == os.getpid()  # taken over
    os.utime(claim, (old, old))
    assert not T._claim_is_stale(claim)  # this host's live process holds it, heartbeat or not
    monkeypatch.setattr(T, "CLAIM_HEARTBEAT_S", 0.05)
    beat = T._Heartbeat(claim)
    time.sleep(0.5)
    beat.stop()
    assert time.time() - claim.stat().st_mtime < 5 and not T._claim_is_stale(claim)
