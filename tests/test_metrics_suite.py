"""The fidelity/privacy suite: KID, PRDC, intensity, MS-SSIM diversity, NNDR, membership
inference with its control, the evaluate_sets pipeline and `medsynth evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import train_tiny_cli_run
from medsynth.errors import MedsynthError
from medsynth.metrics.diversity import mean_pairwise_ms_ssim, ms_ssim, ms_ssim_settings
from medsynth.metrics.evaluate import evaluate_sets, evaluation_markdown, write_evaluation
from medsynth.metrics.intensity import body_mask, body_threshold, intensity_distance
from medsynth.metrics.membership import (
    control_split,
    dcr_nndr,
    discriminator_scores,
    distance_attack_scores,
    distance_summary,
    membership_attack,
)
from medsynth.metrics.prdc import kernel_inception_distance, prdc
from medsynth.results import SCHEMA_VERSION, read_evaluation


# one torch thread: these tests train small encoders; several threads only contend on CI's 2 cores
pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n: int, size: int = 32, *, seed: int) -> torch.Tensor:
    """(n, 1, size, size) in [-1, 1]: a bright disc on a noisy grey body, background -1 border."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.rand(n, 2, generator=g) * size * 0.4 + size * 0.3
    r = torch.rand(n, generator=g) * size * 0.1 + size * 0.08
    d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
    img = torch.where(d2 < r[:, None, None] ** 2, 0.6, -0.4) + 0.15 * torch.randn(n, size, size, generator=g)
    img[:, :, :3] = -1.0  # background columns outside the body
    return img[:, None].clamp(-1, 1)


class _Flatten(nn.Module):
    """A fixed stand-in feature encoder: 4×4 average pooling, flattened (64 features at 32²)."""

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 4).flatten(1)


# ---- KID --------------------------------------------------------------------------------------


def test_kid_identical_near_zero_and_shift_positive():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16))
    same = kernel_inception_distance(a, a, subset_size=200, n_subsets=20)
    indep = kernel_inception_distance(a, rng.normal(size=(400, 16)), subset_size=200, n_subsets=20)
    shifted = kernel_inception_distance(a, a + 1.0, subset_size=200, n_subsets=20)
    bigger = kernel_inception_distance(a, a + 2.0, subset_size=200, n_subsets=20)
    assert shifted["mean"] > 0.5 and bigger["mean"] > 2 * shifted["mean"]
    assert abs(same["mean"]) < 0.02 * shifted["mean"] and abs(indep["mean"]) < 0.05 * shifted["mean"]
    assert same["std"] >= 0 and same["subset_size"] == 200 and same["n_subsets"] == 20


def test_kid_seeded_and_bad_input():
    a = np.random.default_rng(1).normal(size=(50, 4))
    b = a + 0.3
    assert kernel_inception_distance(a, b, seed=3) == kernel_inception_distance(a, b, seed=3)
    with pytest.raises(MedsynthError):
        kernel_inception_distance(a, np.zeros((10, 5)))
    with pytest.raises(MedsynthError):
        kernel_inception_distance(a, np.full((10, 4), np.nan))


# ---- precision / recall / density / coverage ----------------------------------------------------


def test_prdc_real_against_itself_is_perfect():
    a = np.random.default_rng(0).normal(size=(200, 8))
    r = prdc(a, a, k=5)
    assert r["precision"] == 1.0 and r["recall"] == 1.0 and r["coverage"] == 1.0
    assert r["density"] >= 1.0


def test_prdc_mode_collapse_has_zero_recall_and_low_coverage():
    a = np.random.default_rng(0).normal(size=(200, 8))
    collapsed = np.repeat(a[:1], 100, axis=0)  # every synthetic sample is the same real point
    r = prdc(a, collapsed, k=5)
    assert r["recall"] == 0.0
    assert r["precision"] == 1.0  # the copy is a real point: perfectly "realistic"
    assert r["coverage"] < 0.1  # only the real points whose k-NN ball holds that one point


def test_prdc_independent_vs_disjoint():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6))
    same = prdc(a, b)
    far = prdc(a, b + 20.0)
    assert min(same["precision"], same["recall"], same["coverage"]) > 0.7 and 0.6 < same["density"] < 1.5
    assert far["precision"] == 0.0 and far["recall"] == 0.0 and far["coverage"] == 0.0 and far["density"] == 0.0


# ---- intensity --------------------------------------------------------------------------------


def test_intensity_identical_zero_and_shift_measured_in_units():
    x = _blobs(40, seed=0)
    same = intensity_distance(x, x, modality="xray")
    assert same["w1"] == 0.0 and same["hist_intersection"] == pytest.approx(1.0)
    assert same["profile_l1_y"] == 0.0 and same["profile_l1_x"] == 0.0
    body = x > -0.95
    shifted = torch.where(body, (x + 0.2).clamp(max=1.0), x)
    d = intensity_distance(x, shifted, modality="xray")
    assert 0.15 < d["w1"] < 0.21 and d["hist_intersection"] < 0.7
    assert d["profile_l1_x"] > 0.1
    # CT: the same normalised shift is 0.1 * 1500 / 2 = 75 HU in the lung window
    ct = (x * 0.5).clamp(-1, 1)
    d_ct = intensity_distance(ct, torch.where(ct > body_threshold("ct"), ct + 0.1, ct), modality="ct")
    assert 65 < d_ct["w1"] < 76


def test_body_mask_rule_and_3d_profiles():
    x = _blobs(4, seed=1)
    m = body_mask(x, modality="xray")
    assert not m[:, :, :, :3].any() and m[:, :, :, 3:].float().mean() > 0.99
    # CT lung window: -950 HU is the stricter limit; mediastinal: the lowest 2.5 % of the window
    assert body_threshold("ct", "lung") > body_threshold("xray")
    assert body_threshold("ct", "mediastinal") == pytest.approx(-0.95)
    v = torch.zeros(3, 1, 8, 8, 8)
    w = v.clone()
    w[:, :, :4] = 0.5  # brighter upper half along z only
    d = intensity_distance(v, w, modality="xray")
    assert d["profile_l1_z"] == pytest.approx(0.25) and d["profile_l1_y"] == pytest.approx(0.25)
    with pytest.raises(MedsynthError):
        intensity_distance(v, w, modality="mri")
    with pytest.raises(MedsynthError):
        intensity_distance(torch.full((2, 1, 8, 8), -1.0), torch.zeros(2, 1, 8, 8), modality="xray")


# ---- diversity --------------------------------------------------------------------------------


def test_ms_ssim_identical_is_one_and_collapse_detected():
    x = _blobs(30, size=64, seed=3)
    assert np.allclose(ms_ssim(x[:5], x[:5]), 1.0, atol=1e-5)
    diverse = mean_pairwise_ms_ssim(x, n_pairs=60)
    collapsed = mean_pairwise_ms_ssim(x[:1].repeat(30, 1, 1, 1), n_pairs=60)
    assert collapsed["mean"] == pytest.approx(1.0, abs=1e-5)
    assert diverse["mean"] < 0.6 and diverse["n_pairs"] == 60


def test_ms_ssim_settings_fit_64_and_32_cubed():
    assert ms_ssim_settings((64, 64))["kernel_size"] == 7
    assert ms_ssim_settings((32, 32, 32))["kernel_size"] == 7
    assert ms_ssim_settings((16, 16, 16))["kernel_size"] == 3
    v = torch.rand(3, 1, 16, 16, 16) * 2 - 1
    assert np.allclose(ms_ssim(v, v), 1.0, atol=1e-5)
    with pytest.raises(MedsynthError):
        ms_ssim_settings((8, 8))


# ---- NNDR / DCR -------------------------------------------------------------------------------


def test_dcr_nndr_copies_and_leave_one_out():
    x = _blobs(30, seed=4)
    dcr, nndr = dcr_nndr(x[:10], x)
    assert (dcr == 0).all() and (nndr == 0).all()
    loo_d, loo_r = dcr_nndr(x, x, exclude_self=True)
    assert (loo_d > 0).all() and ((loo_r > 0) & (loo_r <= 1)).all()
    flat = x.reshape(30, -1).double()
    brute = torch.cdist(flat, flat).fill_diagonal_(float("inf")).sort(1).values
    assert np.allclose(loo_d, brute[:, 0].numpy()) and np.allclose(loo_r, (brute[:, 0] / brute[:, 1]).numpy())
    s = distance_summary(dcr, loo_d)
    assert s["frac_below_real_p1"] == 1.0


def test_dcr_nndr_duplicates_in_reference():
    x = _blobs(6, seed=5)
    ref = torch.cat([x, x[:1], x[:1]])  # image 0 three times
    d, r = dcr_nndr(ref, ref, exclude_self=True)
    assert d[0] == 0 and r[0] == 0 and d[-1] == 0


# ---- membership inference ---------------------------------------------------------------------


def test_mia_memorised_set_flagged_and_control_near_half():
    train, held = _blobs(60, seed=6), _blobs(60, seed=7)
    groups_t = [f"t{i // 2}" for i in range(60)]
    groups_h = [f"h{i // 2}" for i in range(60)]
    memorised = membership_attack(distance_attack_scores(train, train), distance_attack_scores(held, train),
                                  member_groups=groups_t, nonmember_groups=groups_h, n_boot=300)
    assert memorised["attack"]["auroc"] == 1.0 and memorised["attack"]["lo"] > 0.95
    c = memorised["control"]
    assert c["lo"] < 0.5 < c["hi"] and abs(c["auroc"] - 0.5) < 0.2
    assert memorised["attack"]["resampled"] == "patients"
    fresh = _blobs(60, seed=8)  # a generator that samples the distribution without copying
    indep = membership_attack(distance_attack_scores(train, fresh), distance_attack_scores(held, fresh), n_boot=300)
    assert indep["attack"]["lo"] < 0.5 < indep["attack"]["hi"]


def test_control_split_by_patient():
    groups = np.repeat(np.arange(10), 3)
    half = control_split(30, groups, seed=1)
    assert half.sum() == 15
    for g in range(10):
        assert len(set(half[groups == g])) == 1  # a patient is never on both sides
    with pytest.raises(MedsynthError):
        control_split(3, ["p", "p", "p"])


def _tiny_model(name: str):
    """A seeded 16² class-conditional variant, width 4."""
    from medsynth.config import resolve
    from medsynth.models.registry import build_model

    cfg = resolve(base={"model": {"name": name, "width": 4, "latent_dim": 16, "num_classes": 2},
                        "data": {"size": 16, "spatial_dims": 2}})
    torch.manual_seed(0)
    return build_model(cfg.model)


def test_discriminator_scores_order_and_labels():
    model = _tiny_model("dcgan")
    x = torch.rand(12, 1, 16, 16) * 2 - 1
    y = torch.arange(12) % 2
    s = discriminator_scores(model, x, y, batch_size=12)
    assert s.shape == (12,) and np.isfinite(s).all()
    # one batch holds everything, so the scoring order cannot change a score
    assert np.allclose(s, discriminator_scores(model, x, y, batch_size=12, seed=5), atol=1e-5)
    assert model.training  # the caller's mode is restored
    model.eval()  # scores are eval-mode logits (BatchNorm running statistics)
    d_direct = model.D(x, y).reshape(12, -1).mean(1).double().detach().numpy()
    assert np.allclose(s, d_direct, atol=1e-5)
    with pytest.raises(MedsynthError):
        discriminator_scores(model, x, None)
    with pytest.raises(MedsynthError):
        discriminator_scores(nn.Linear(2, 2), x)


# ---- the suite --------------------------------------------------------------------------------


def test_evaluate_sets_copying_generator_flagged_and_written(tmp_path):
    train, held = _blobs(48, seed=10), _blobs(24, seed=11)
    enc = _Flatten()
    ev, figs = evaluate_sets(train, train.clone(), encoder=enc, modality="xray", heldout_x=held,
                             train_groups=[f"p{i}" for i in range(48)], heldout_groups=[f"q{i}" for i in range(24)],
                             d_score=lambda imgs, lab: -imgs.mean((1, 2, 3)).numpy(),
                             seed=0, repeats=2, kid_subsets=5, ms_ssim_pairs=20, n_boot=100)
    priv, fid = ev["privacy"], ev["fidelity"]
    assert priv["memorisation_flag"] and priv["dcr"]["frac_below_real_p1"] == 1.0
    mia = priv["membership_inference"]
    assert mia["distance"]["attack"]["auroc"] == 1.0 and abs(mia["distance"]["control"]["auroc"] - 0.5) < 0.3
    assert "auroc" in mia["discriminator"]["attack"]
    # a copying generator matches the real set: its numbers sit at or below the real-vs-real floor
    assert fid["prdc"]["synthetic"]["precision"]["mean"] > 0.9
    assert fid["fd"]["synthetic"]["mean"] <= fid["fd"]["floor"]["mean"] * 1.5
    assert set(figs) == {"fig_samples.png", "fig_closest_pairs.png", "fig_dcr_nndr.png", "fig_intensity.png"}
    assert all(b[:8] == b"\x89PNG\r\n\x1a\n" for b in figs.values())
    # the floor split by patient, and the held-out (not fitted on) floor beside it at equal n
    assert fid["protocol"].endswith("by patient (no patient in both halves)")
    assert fid["fd_heldout"]["n"] == 24 and fid["fd_heldout"]["heldout"]["mean"] > 0
    assert mia["distance"]["permutation"]["p_value"] < 0.05  # a copying generator: the attack beats its null
    write_evaluation(ev, figs, tmp_path / "evaluate")
    back = read_evaluation(tmp_path)
    assert (back["kind"], back["schema_version"]) == ("evaluation", SCHEMA_VERSION)
    assert list(back)[:2] == ["kind", "schema_version"]  # the file opens with its schema
    assert back["privacy"]["memorisation_flag"] is True
    assert back["figures"]["fig_samples"] == "fig_samples.png"
    assert all((tmp_path / "evaluate" / f).is_file() for f in back["figures"].values())
    md = (tmp_path / "evaluate" / "evaluation.md").read_text()
    assert "Memorisation flag: YES" in md and "| distance to nearest synthetic (attacks the released synthetic set) | 1.000" in md


def test_evaluate_sets_collapsed_generator_and_no_heldout():
    train = _blobs(48, seed=12)
    collapsed = train[:1].repeat(30, 1, 1, 1) + 0.001 * torch.randn(30, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    ev, _ = evaluate_sets(train, collapsed, encoder=_Flatten(), modality="xray", seed=0, repeats=1,
                          kid_subsets=5, ms_ssim_pairs=20)
    fid = ev["fidelity"]
    assert fid["prdc"]["synthetic"]["recall"]["mean"] < 0.1 < fid["prdc"]["floor"]["recall"]["mean"]
    assert fid["diversity_ms_ssim"]["synthetic"]["mean"] > 0.95 > fid["diversity_ms_ssim"]["real"]["mean"]
    assert fid["kid"]["synthetic"]["mean"] > fid["kid"]["floor"]["mean"]
    assert "skipped" in ev["privacy"]["membership_inference"]
    assert "no held-out real images" in evaluation_markdown(dict(ev, figures={}))


def test_read_evaluation_refuses_other_schemas_in_one_line(tmp_path):
    assert read_evaluation(tmp_path) is None
    path = tmp_path / "evaluate" / "evaluation.json"
    path.parent.mkdir()
    for data, problem in (
        ({"format": "medsynth-evaluation/1", "fidelity": {}}, "has no schema_version"),  # before the schema
        ({"kind": "evaluation", "schema_version": SCHEMA_VERSION + 1}, f"has schema_version {SCHEMA_VERSION + 1}"),
        ({"kind": "benchmark", "schema_version": SCHEMA_VERSION}, "not a medsynth evaluation file"),
        ({"kind": "evaluation", "schema_version": SCHEMA_VERSION, "seed": 0}, "lacks modality, image_shape"),
        ([1, 2], "not a JSON object"),
    ):
        path.write_text(json.dumps(data))
        with pytest.raises(MedsynthError) as info:
            read_evaluation(tmp_path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: ") and problem in msg and "\n" not in msg, msg
    path.write_text("{not json")
    with pytest.raises(MedsynthError, match="is not valid JSON"):
        read_evaluation(tmp_path)


def test_per_class_fidelity_finds_the_collapsed_class():
    train = _blobs(96, seed=30)
    yr = np.arange(96) % 2
    g = torch.Generator().manual_seed(1)
    good = _blobs(40, seed=31)  # class 0: fresh images from the real distribution
    bad = train[1:2].repeat(40, 1, 1, 1) + 0.001 * torch.randn(40, 1, 32, 32, generator=g)  # class 1: one image
    synth, ys = torch.cat([good, bad]), np.r_[np.zeros(40, int), np.ones(40, int)]
    kw = dict(encoder=_Flatten(), modality="xray", seed=0, repeats=2, kid_subsets=5, ms_ssim_pairs=10,
              train_labels=yr)
    ev, _ = evaluate_sets(train, synth, synth_labels=ys, **kw)
    pc = ev["fidelity"]["per_class"]
    assert set(pc) == {"0", "1"} and pc["0"]["n_real"] == 48 and pc["1"]["n_synthetic"] == 40
    assert pc["1"]["prdc"]["recall"]["mean"] < 0.1 < pc["0"]["prdc"]["recall"]["mean"]
    assert pc["1"]["fd"]["mean"] > pc["0"]["fd"]["mean"]
    assert "Fidelity by class" in evaluation_markdown(dict(ev, figures={}))
    plain, _ = evaluate_sets(train, synth, **kw)  # per-class figures have their own RNG: pooled ones unchanged
    assert "per_class" not in plain["fidelity"]
    assert plain["fidelity"]["fd"] == ev["fidelity"]["fd"] and plain["fidelity"]["prdc"] == ev["fidelity"]["prdc"]
    few = np.where((yr == 1) & (np.arange(96) >= 40), -1, yr)  # 20 known class-1 images: too few
    small, _ = evaluate_sets(train, synth, synth_labels=ys, **{**kw, "train_labels": few})
    assert "20 real" in small["fidelity"]["per_class"]["1"]["skipped"] and "fd" in small["fidelity"]["per_class"]["0"]


@pytest.mark.slow
def test_cli_evaluate_on_a_tiny_run(tmp_path, monkeypatch):

    from medsynth.cli import app

    monkeypatch.chdir(tmp_path)
    runner, run = train_tiny_cli_run(tmp_path, ((_blobs(48, seed=20)[:, 0].numpy() + 1) * 1000).astype(np.float32))  # detector-like units
    r = runner.invoke(app, ["evaluate", str(run), "--count", "40", "--encoder-steps", "10", "--repeats", "1",
                            "--n-boot", "50"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ev = json.loads((run / "evaluate" / "evaluation.json").read_text())
    mia = ev["privacy"]["membership_inference"]
    assert mia["n_members"] > mia["n_nonmembers"] > 0
    assert 0 <= mia["discriminator"]["attack"]["auroc"] <= 1 and "control" in mia["distance"]
    assert ev["fidelity"]["n_synthetic"] == 40 and (run / "evaluate" / "encoder.pt").is_file()
    assert (run / "evaluate" / "evaluation.md").read_text().startswith("# medsynth evaluation: 00000-xray-dcgan")
    r = runner.invoke(app, ["evaluate", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "error:" in r.output


def test_evaluate_sets_3d_ct_volumes():
    g = torch.Generator().manual_seed(0)
    train = (torch.rand(24, 1, 16, 16, 16, generator=g) * 1.2 - 0.6)
    synth = (torch.rand(8, 1, 16, 16, 16, generator=g) * 1.2 - 0.3)  # brighter: shifted HU
    enc = nn.Sequential(nn.AvgPool3d(4), nn.Flatten())
    ev, figs = evaluate_sets(train, synth, encoder=enc, modality="ct", ct_window="lung", seed=0, repeats=1,
                             kid_subsets=3, ms_ssim_pairs=6)
    inten = ev["fidelity"]["intensity"]
    assert inten["units"].startswith("HU")
    assert {"profile_l1_z", "profile_l1_y", "profile_l1_x"} <= set(inten["synthetic"])
    # a 0.3 shift in [-1, 1] is 225 HU in the lung window; the real halves differ by far less
    assert inten["synthetic"]["w1"]["mean"] > 150 > 10 * inten["floor"]["w1"]["mean"]
    assert ev["fidelity"]["diversity_ms_ssim"]["settings"]["kernel_size"] == 3
    assert "fig_closest_pairs.png" in figs


def test_discriminator_scores_route_two_domain_images_to_their_head():
    model = _tiny_model("cogan")
    x = torch.rand(10, 1, 16, 16) * 2 - 1
    y = torch.tensor([0, 1] * 5)
    s = discriminator_scores(model, x, y, batch_size=10)  # one batch: D has a batch statistic (mbstd)
    model.eval()
    with torch.no_grad():
        for dom in (0, 1):
            direct = model.D(x[y == dom], dom).reshape(5, -1).mean(1).double().numpy()
            assert np.allclose(s[(y == dom).numpy()], direct, atol=1e-5)


def test_membership_permutation_null_is_calibrated_and_detects_a_shift():
    """The attack's permutation null (over patients): its observed AUROC is sklearn's, p-values are
    not small when members and non-members come from one distribution, and tiny for a real shift."""
    from sklearn.metrics import roc_auc_score

    from medsynth.metrics.membership import permutation_null

    ps = []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        pos, neg = rng.normal(0, 1, 60), rng.normal(0, 1, 40)
        r = permutation_null(pos, neg, np.repeat(np.arange(30), 2), np.repeat(np.arange(20), 2), n_perm=300, seed=seed)
        assert r["auroc"] == pytest.approx(roc_auc_score(np.r_[np.ones(60), np.zeros(40)], np.r_[pos, neg]))
        assert r["null_95"][0] < 0.5 < r["null_95"][1] and r["permuted"] == "patients"
        ps.append(r["p_value"])
    assert np.mean(np.asarray(ps) < 0.05) <= 0.2 and 0.3 < np.mean(ps) < 0.7
    rng = np.random.default_rng(1)
    shifted = permutation_null(rng.normal(1.0, 1, 60), rng.normal(0, 1, 40), n_perm=300)
    assert shifted["p_value"] == pytest.approx(1 / 301) and shifted["auroc"] > shifted["null_95"][1]


def test_floor_halves_split_by_patient():
    """With patient ids the floor's real halves share no patient, keep their sizes (h rows in A,
    m in B) in every repeat, and the by-image protocol is unchanged without them."""
    from medsynth.metrics.evaluate import floor_sizes, split_indices

    groups = np.repeat(np.arange(40), np.r_[np.full(20, 1), np.full(10, 2), np.full(10, 4)])  # 80 rows, 40 patients
    h, m = floor_sizes(len(groups), 500, groups)
    assert (h, m) == (40, 37)  # B loses at most one patient's rows but one (the largest has 4)
    for a, b, si in split_indices(len(groups), 500, 20, np.random.default_rng(0), groups):
        assert len(a) == h and len(b) == m and len(si) == m
        assert not set(groups[a]) & set(groups[b])
    plain = list(split_indices(80, 500, 3, np.random.default_rng(0)))
    rng = np.random.default_rng(0)
    for a, b, si in plain:
        perm = rng.permutation(80)
        np.testing.assert_array_equal(a, perm[:40])
        np.testing.assert_array_equal(b, perm[40:80])
        rng.permutation(500)
