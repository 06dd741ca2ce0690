"""Progress of long commands (:mod:`medsynth.progress`) and its use by benchmark and generate.

Plain log lines are what a user sees when stderr is not a terminal (a log file, CI, nohup):
``desc: n/N unit, m:ss elapsed, about m:ss left[, status]``, at most every ``EVERY_S`` seconds and
once at the end. The tests set ``EVERY_S = 0`` (every update logs) and restore the mode.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from test_benchmark import _synthetic, _tiny_set

from medsynth import progress
from medsynth.config import resolve
from medsynth.data.writers import (
    SyntheticInfo,
    sample_in_batches,
    sample_pairs_in_batches,
    translate_in_batches,
    write_synthetic_set,
)
from medsynth.downstream.benchmark import ARM_AUG, ARM_REAL, run_benchmark
from medsynth.errors import MedsynthError
from medsynth.models.registry import build_model
from medsynth.progress import Progress, fmt_seconds, track

LOGGER = "medsynth.progress"


@pytest.fixture
def lines(monkeypatch, caplog):
    """Log mode, a line at every update; returns a function giving the progress lines so far."""
    monkeypatch.setattr(progress, "_MODE", "log")  # restored after the test
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger=LOGGER)
    return lambda: [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_fmt_seconds():
    assert fmt_seconds(0) == "0:00"
    assert fmt_seconds(75.3) == "1:15"
    assert fmt_seconds(59.6) == "1:00"
    assert fmt_seconds(3725) == "1:02:05"
    assert fmt_seconds(-4) == "0:00"


def test_log_mode_counts_time_left_and_a_final_line(lines):
    with Progress("job", 3, "files") as p:
        p.update(1)
        p.set_postfix("file a")
        p.update(1)
        p.update(1)
    out = lines()
    assert re.fullmatch(r"job: 1/3 files, \d+:\d\d elapsed, about \d+:\d\d left", out[0])
    assert re.fullmatch(r"job: 2/3 files, \d+:\d\d elapsed, about \d+:\d\d left, file a", out[1])
    assert 3 <= len(out) <= 4  # the last update's line and/or the closing one
    assert all(re.fullmatch(r"job: 3/3 files, \d+:\d\d elapsed, file a", s) for s in out[2:])  # nothing left
    p.close()  # closing twice logs nothing more
    assert len(lines()) == len(out)


def test_lines_are_throttled_but_the_final_line_always_comes(lines):
    with Progress("slow", 100, "items", every_s=3600) as p:
        for _ in range(100):
            p.update(1)
        assert lines() == []
    assert len(lines()) == 1 and lines()[0].startswith("slow: 100/100 items, ")


def test_unknown_total_and_resumed_count(lines):
    with Progress("open", None, "rows") as p:
        p.update(2)
    assert lines()[0].startswith("open: 2/? rows, ") and "left" not in lines()[0]
    with Progress("resumed", 10, "steps", initial=8) as p:
        assert p.line().startswith("resumed: 8/10 steps, ") and "left" not in p.line()  # no rate yet
        p.update(1)
    assert lines()[-2].startswith("resumed: 9/10 steps, ") and "left" in lines()[-2]


def test_off_mode_emits_nothing(lines):
    progress.set_mode("off")
    with Progress("quiet", 5, "it") as p:
        for _ in range(5):
            p.update(1)
    assert list(track(range(4), "quiet too")) == [0, 1, 2, 3]
    assert lines() == []


def test_set_mode_rejects_unknown_modes():
    with pytest.raises(ValueError, match="auto, bar, log or off"):
        progress.set_mode("verbose")


def test_track_yields_every_item_and_counts_them(lines):
    items = ["a", "b", "c"]
    assert list(track(items, "letters", unit="letters")) == items
    assert lines()[-1].startswith("letters: 3/3 letters, ")
    assert list(track((i for i in range(5)), "gen")) == list(range(5))  # no len(): total unknown
    assert lines()[-1].startswith("gen: 5/? it, ")


def test_benchmark_logs_classifiers_done_of_total(lines):
    res = run_benchmark(
        _tiny_set(), _synthetic(), arms=(ARM_REAL, ARM_AUG), fractions=(0.5, 1.0), seeds=(0,),
        epochs=1, batch_size=16, n_boot=10, classifier_kwargs={"width": 4},
    )
    assert len(res.rows) == 4
    bench = [s for s in lines() if s.startswith("benchmark: ") and " classifiers" in s]
    first = {}  # the first line at each count
    for s in bench:
        first.setdefault(int(re.match(r"benchmark: (\d+)/4 classifiers, ", s).group(1)), s)
    assert list(first) == [1, 2, 3, 4]  # a line after each classifier (EVERY_S = 0)
    assert "about" in first[1] and "left" in first[1]
    # "k/N classifiers, ..., arm A": k done, A training now; order: seed, fraction, arm
    assert first[1].endswith("arm real+synthetic, 50% real, seed 0")
    assert first[2].endswith("arm real, 100% real, seed 0")
    assert first[3].endswith("arm real+synthetic, 100% real, seed 0")
    assert bench[-1].endswith(" elapsed") and "arm" not in bench[-1]  # all done: no current arm
    # the bootstrap after the classifiers: 2 arms x 2 fractions summaries + 1 x 2 paired tests
    assert any(s.startswith("benchmark: bootstrap CIs and paired tests: 6/6 ") for s in lines())


def test_write_synthetic_set_logs_files_written(lines, tmp_path):
    x = torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 1, 8, 8)
    df = write_synthetic_set(tmp_path, x, torch.tensor([0, 1, 0]), modality="xray", fmt="png",
                             info=SyntheticInfo(model="dcgan", run="r"))
    assert len(df) == 3
    writing = [s for s in lines() if s.startswith("generate: writing: ")]
    assert [s.split(",")[0] for s in writing[:3]] == [f"generate: writing: {k}/3 files" for k in (1, 2, 3)]


def _assert_same_images(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float rounding (convolution kernels round differently per batch size); other
    latents or classes would differ on the scale of the images themselves."""
    scale = float(b.abs().max())
    assert a.shape == b.shape and scale > 0
    assert float((a - b).abs().max()) <= 1e-4 * scale


def _model(preset: str):
    torch.manual_seed(0)
    return build_model(resolve(preset=preset, overrides=["data.size=32", "model.width=4"]).model).eval()


def test_sample_in_batches_matches_one_sample_call(lines):
    model = _model("xray_dcgan")
    assert model.num_classes == 2
    for labels in (None, torch.tensor([1, 0, 1, 1, 0, 0, 1])):  # None: classes drawn like sample's
        one = model.sample(7, labels=labels, generator=torch.Generator().manual_seed(5))
        batched = sample_in_batches(model, 7, labels=labels, generator=torch.Generator().manual_seed(5),
                                    batch_size=3)
        assert batched.shape == (7, 1, 32, 32)
        _assert_same_images(batched, one)
    counts = [s.split(",")[0] for s in lines() if s.startswith("generate: sampling: ")]
    assert counts[:3] == ["generate: sampling: 3/7 images", "generate: sampling: 6/7 images",
                          "generate: sampling: 7/7 images"]
    with pytest.raises(MedsynthError, match="labels for 7 images"):
        sample_in_batches(model, 7, labels=torch.zeros(6, dtype=torch.long))
    with pytest.raises(MedsynthError, match="at least one image"):
        sample_in_batches(model, 0)


def test_pairs_and_translations_in_batches_match_one_call(lines):
    cogan = _model("xray_cogan")
    a = cogan.sample_pairs(5, generator=torch.Generator().manual_seed(1))
    b = sample_pairs_in_batches(cogan, 5, generator=torch.Generator().manual_seed(1), batch_size=2)
    for x, y in zip(a, b):
        _assert_same_images(y, x)
    cyclegan = _model("xray_cyclegan")
    images = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (5, 1, 32, 32)).astype(np.float32))
    _assert_same_images(translate_in_batches(cyclegan, images, "a2b", batch_size=2), cyclegan.translate(images, "a2b"))
    assert any(s.startswith("generate: sampling pairs: 5/5 pairs") for s in lines())
    assert any(s.startswith("generate: translating: 5/5 images") for s in lines())
