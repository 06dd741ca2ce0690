"""pipelines/studies/cogan_pairs/study.py: the unpaired image/mask set and the alignment metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.data.dataset import load_image_set
from medsynth.errors import MedsynthError
from pipelines.studies.cogan_pairs.study import (
    bootstrap_ci,
    mask_contrast,
    mask_stats,
    shuffled_contrast,
    unpaired_split,
    write_unpaired_npz,
)


def _toy_pairs(n=24, size=16, seed=0):
    """Images with a bright disc at a random place on a noisy dark background, and the disc's mask."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = -0.6 + 0.05 * torch.randn(n, 1, size, size, generator=g)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        cy, cx = torch.randint(3, size - 3, (2,), generator=g).tolist()
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 2
        masks[i, 0][disc] = 1.0
        images[i, 0][disc] = 0.6
    return images, masks


def test_unpaired_split_never_pairs_a_patient_with_itself():
    pids = [f"P{i // 2:03d}" for i in range(41)]  # 21 patients, most with 2 rows
    a, b = unpaired_split(pids, seed=3)
    assert len(a) + len(b) == len(pids) and not set(a) & set(b)
    pa, pb = {pids[i] for i in a}, {pids[i] for i in b}
    assert not pa & pb and pa | pb == set(pids)
    assert abs(len(pa) - len(pb)) <= 1
    a2, _ = unpaired_split(pids, seed=4)
    assert not np.array_equal(a, a2)  # the seed matters
    with pytest.raises(MedsynthError, match="2 patients"):
        unpaired_split(["P0", "P0"])


def test_unpaired_npz_round_trips_through_the_data_layer(tmp_path):
    images, masks = _toy_pairs(n=6, size=16)
    images = images.clamp(-1, 1)
    pids = [f"P{i}" for i in range(6)]
    a, b = unpaired_split(pids, seed=0)
    path = write_unpaired_npz(tmp_path / "u.npz", images, masks * 2 - 1, pids, a, b)
    ims = load_image_set(path, modality="ct", size=16, split="train", ct_window="lung")
    assert ims.labels.tolist() == [0] * len(a) + [1] * len(b)
    assert torch.allclose(ims.images[: len(a)], images[a], atol=1e-5)
    dom2 = ims.images[len(a):]
    assert set(dom2.unique().tolist()) == {-1.0, 1.0}  # masks come back exactly -1/+1
    assert torch.equal(dom2 > 0, masks[b] > 0)
    # patient ids keep which half each row came from, and no patient is in both
    assert {p.split("/")[0] for p in ims.patient_ids[: len(a)]}.isdisjoint(
        {p.split("/")[0] for p in ims.patient_ids[len(a):]})
    with pytest.raises(MedsynthError, match="share a patient"):
        write_unpaired_npz(tmp_path / "bad.npz", images, masks * 2 - 1, pids, a, np.r_[b, a[:1]])


def test_alignment_metric_high_for_true_pairs_near_zero_for_shuffled():
    images, masks = _toy_pairs(n=32, size=16)
    aligned = mask_contrast(images, masks, ring=2)
    assert np.all(aligned > 1.0)  # 0.6 inside vs. about -0.6 (plus some disc edge) around
    shuffled = shuffled_contrast(images, masks, k=8, ring=2, seed=0)
    assert abs(np.nanmean(shuffled)) < 0.25
    diff = bootstrap_ci(aligned - shuffled, seed=0)
    assert diff["lo"] > 1.0 and diff["n"] == 32
    # a shuffle that keeps each image's own mask is not a control: same as aligned
    assert np.allclose(mask_contrast(images, masks[torch.arange(32)]), aligned)


def test_alignment_metric_empty_masks_and_stats():
    images, masks = _toy_pairs(n=4, size=16)
    masks[1] = 0
    c = mask_contrast(images, masks)
    assert np.isnan(c[1]) and np.isfinite(c[[0, 2, 3]]).all()
    s = mask_stats(masks)
    assert s["frac_empty"] == 0.25 and s["n"] == 4
    assert s["area_p5_25_50_75_95"][-1] == 9.0  # a radius-sqrt(2) disc: a 3x3 block
    assert bootstrap_ci(np.array([np.nan]))["n"] == 0


def test_lidc_pairs_are_crops_of_one_nodule_with_its_own_mask(shared_data):
    from pipelines.studies.cogan_pairs.study import load_lidc_pairs

    real = load_lidc_pairs(shared_data / "lidc_nodules", size=32, seed=0)
    n = len(real["patient_ids"])
    assert real["images"].shape == (n, 1, 32, 32) and real["masks"].shape == (n, 1, 32, 32)
    assert float(real["images"].min()) >= -1.0 and float(real["images"].max()) <= 1.0
    assert set(real["masks"].unique().tolist()) <= {0.0, 1.0}
    assert all(isinstance(p, str) and p not in ("", "nan") for p in real["patient_ids"])
    # Each crop's own mask covers denser tissue than a mask of another crop: the pairing survives cropping.
    hu_c = mask_contrast(real["images"], real["masks"])
    hu_s = shuffled_contrast(real["images"], real["masks"], k=4)
    assert np.nanmean(hu_c) > np.nanmean(hu_s) + 0.3
    # Crops sit at different offsets: the masks' centres spread over several pixels.
    ys = (real["masks"][:, 0].sum(2) * torch.arange(32)).sum(1) / real["masks"][:, 0].sum((1, 2)).clamp(min=1)
    assert float(ys.std()) > 3.0
    # The same seed gives the same crops.
    again = load_lidc_pairs(shared_data / "lidc_nodules", size=32, seed=0)
    assert torch.equal(again["masks"], real["masks"])
    with pytest.raises(MedsynthError, match="exceeds"):
        load_lidc_pairs(shared_data / "lidc_nodules", size=64)


def test_window_error_zero_for_one_slice_in_both_windows_positive_for_others():
    from medsynth.data.windows import hu_to_unit
    from pipelines.studies.cogan_pairs.study import mediastinal_from_lung, shuffled_window_error, window_error

    g = torch.Generator().manual_seed(0)
    hu = -900.0 + 60.0 * torch.randn(12, 1, 16, 16, generator=g)  # lung parenchyma
    hu[:, :, 4:10, 4:10] = 40.0 + 300.0 * torch.rand(12, 1, 6, 6, generator=g) - 150.0  # soft tissue ...
    for i in range(12):  # ... moved per slice, with a bone-like patch above the lung window
        hu[i] = hu[i].roll(shifts=(i, 2 * i), dims=(1, 2))
        hu[i, 0, 0, i] = 600.0
    lung, med = hu_to_unit(hu, "lung").float(), hu_to_unit(hu, "mediastinal").float()
    pred, known = mediastinal_from_lung(lung)
    assert not bool(known.all()) and bool(known.any())  # the >= 150 HU pixels are not determined
    assert torch.allclose(pred[known], med[known], atol=1e-4)
    own = window_error(lung, med)
    other = shuffled_window_error(lung, med, k=4)
    assert np.all(own < 0.05) and np.all(other > 20.0)
    # A constant lung image above the window's top determines nothing: NaN, not 0.
    assert np.isnan(window_error(torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))[0]


def test_head_channel_use_tells_shared_from_disjoint_channel_sets():
    from medsynth.config import resolve
    from medsynth.models.registry import build_model
    from pipelines.studies.cogan_pairs.study import head_channel_use

    cfg = resolve(base={"model": {"name": "cogan", "width": 8, "latent_dim": 16, "num_classes": 2,
                                  "params": {"g_private": 1}}, "data": {"size": 16, "spatial_dims": 2}})
    model = build_model(cfg.model)
    w0, w1 = (h[0].weight for h in model.generator(True).heads)
    c = w0.shape[0]
    with torch.no_grad():
        w1.copy_(w0)
    same = head_channel_use(model, top=2)
    assert same["top_overlap"] == 2 and same["cosine"] > 0.999
    with torch.no_grad():  # head 0 reads the first half of the channels only, head 1 the second half
        w0[c // 2:] = 0
        w1[: c // 2] = 0
    apart = head_channel_use(model, top=2)
    assert apart["top_overlap"] == 0 and apart["cosine"] < 1e-9


def test_head_channel_use_reads_pointwise_heads_by_input_channel():
    from medsynth.config import resolve
    from medsynth.models.registry import build_model
    from pipelines.studies.cogan_pairs.study import head_channel_use

    cfg = resolve(base={"model": {"name": "cogan", "width": 8, "latent_dim": 16, "num_classes": 2,
                                  "params": {"head": "pointwise", "head_channels": 8}},
                        "data": {"size": 16, "spatial_dims": 2}})
    model = build_model(cfg.model)
    w0, w1 = (h[0].weight for h in model.generator(True).heads)  # Conv: (hidden, in_channels, 1, 1)
    with torch.no_grad():
        w0[:, 4:] = 0  # head 0 reads map channels 0-3, head 1 channels 4-7
        w1[:, :4] = 0
    use = head_channel_use(model, top=2)
    assert use["channels"] == 8 and use["top_overlap"] == 0 and use["cosine"] < 1e-9


def test_marginal_fd_near_its_floor_for_real_images_far_for_constant_ones():
    from pipelines.studies.cogan_pairs.study import marginal_fd

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    c = torch.rand(80, 2, generator=g) * 10 + 3  # blobs at random centres: a real-looking domain
    real = (torch.exp(-((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2) / 8) * 2 - 1)[:, None]
    same = marginal_fd(real[:40], real[40:], encoder_steps=40)
    flat = marginal_fd(real[:40], torch.full((40, 1, 16, 16), -1.0), encoder_steps=40)
    assert same["m"] == 20 and same["h"] == 20 and same["repeats"] == 5
    assert flat["synthetic"]["mean"] > 5 * same["synthetic"]["mean"]
    assert same["synthetic"]["mean"] < 3 * same["floor"]["mean"] + 1e-6
