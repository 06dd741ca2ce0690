"""TensorBoard event files of a run (medsynth/train/tensorboard.py), read back with TensorBoard's own
reader (``EventAccumulator``): the scalars are ``stats.jsonl``'s lines (the source of truth), the
images are the sample grids' pixels, the config text is ``config.yaml``; a resume (also after a
SIGKILL) leaves no step twice; ``medsynth evaluate``'s Fréchet distance lands at the run's step;
without the package training runs unchanged with one log line, ``on`` without it is a one-line
error, ``off`` writes nothing.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from conftest import tiny_train_cfg, tiny_train_data, train_tiny_cli_run  # noqa: E402
from medsynth.errors import MedsynthError  # noqa: E402
from medsynth.train import tensorboard as tb  # noqa: E402
from medsynth.train.distributed import DistInfo  # noqa: E402
from medsynth.train.loop import check_config, train  # noqa: E402


_cfg, _data = tiny_train_cfg, tiny_train_data  # the tiny run every test here trains (conftest)


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _stats(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "stats.jsonl").read_text().splitlines() if s.strip()]


def _assert_scalars_are_stats(run: Path) -> None:
    """Every number of every stats line is a scalar at its step, once, equal to it in float32; no other scalar."""
    acc, lines = _events(run / tb.TB_DIR), _stats(run)
    keys = {k for ln in lines for k, v in ln.items() if k != "step" and isinstance(v, (int, float))}
    assert set(acc.Tags()["scalars"]) == {tb.tag(k) for k in keys}
    for key in keys:
        want = [(ln["step"], np.float32(ln[key])) for ln in lines if key in ln]
        assert [(e.step, np.float32(e.value)) for e in acc.Scalars(tb.tag(key))] == want, key


def test_events_mirror_stats_grids_and_config(tmp_path):
    x, y = _data()
    run = tmp_path / "r"
    train(_cfg(), x, y, run)
    lines = _stats(run)
    assert [ln["step"] for ln in lines] == [2, 4, 6]
    assert {"loss/D", "loss/G", "img_per_s", "seconds", "kimg"} <= set(lines[0])
    _assert_scalars_are_stats(run)
    acc = _events(run / tb.TB_DIR)
    assert tb.tag("D(real)") == "D_real" and "D_real" in acc.Tags()["scalars"]
    grids = acc.Images("samples")
    assert [e.step for e in grids] == [0, 3, 6]
    for e in grids:  # the very pixels of the PNG grid (a grey PNG)
        shown = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)))
        png = np.asarray(Image.open(run / "samples" / f"step_{e.step:06d}.png"))
        assert e.width == png.shape[1] and e.height == png.shape[0]
        assert shown.shape == png.shape and (shown == png).all()
    (config,) = acc.Tensors("config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert config.step == 0
    assert "".join(ln[4:] + "\n" for ln in text.splitlines()) == (run / "config.yaml").read_text()


def test_resume_after_a_crash_writes_no_step_twice(tmp_path):
    """A run stopped after its step-4 stats line (checkpoint at 3), then resumed: TensorBoard shows
    steps 2, 4, 6 once each, with the resumed run's values (its step-4 line, not the lost one)."""
    x, y = _data()
    run = tmp_path / "r"

    def crash(line):
        if line["step"] == 4:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        train(_cfg(), x, y, run, on_tick=crash)
    lost = _events(run / tb.TB_DIR)
    assert [e.step for e in lost.Scalars("loss/D")] == [2, 4]  # on disk before the crash
    lost_seconds = lost.Scalars("seconds")[-1].value
    train(_cfg(), x, y, run, resume=True)
    assert [ln["step"] for ln in _stats(run)] == [2, 4, 6]
    _assert_scalars_are_stats(run)
    acc = _events(run / tb.TB_DIR)
    assert acc.Scalars("seconds")[1].value != lost_seconds  # the step-4 value is the resumed run's
    assert [e.step for e in acc.Images("samples")] == [0, 3, 6]
    assert [e.step for e in acc.Tensors("config/text_summary")] == [0]  # the resume changed nothing


def test_resume_that_changes_settings_shows_the_new_config(tmp_path):
    x, y = _data()
    run = tmp_path / "r"
    train(_cfg(steps=3), x, y, run)
    cfg = _cfg(steps=6)
    train(cfg, x, y, run, resume=True, changes={"train.steps": (3, 6)})
    _assert_scalars_are_stats(run)
    configs = _events(run / tb.TB_DIR).Tensors("config/text_summary")
    assert [e.step for e in configs] == [0, 3]
    assert "steps: 6" in configs[1].tensor_proto.string_val[0].decode()


def test_everything_up_to_a_checkpoint_is_on_disk_when_it_is_written(tmp_path, monkeypatch):
    """What a SIGKILL right after a checkpoint leaves: the event files then already hold every
    stats line and grid up to the checkpoint's step (a resume purges only later steps). The event
    writer's background thread is slowed down, so only a flush that waits for it passes."""
    import time

    from tensorboard.summary.writer.record_writer import RecordWriter

    from medsynth.train.update import LossGuard

    write = RecordWriter.write

    def slow_write(self, data):
        time.sleep(0.01)
        write(self, data)

    monkeypatch.setattr(RecordWriter, "write", slow_write)
    seen = {}
    save = LossGuard.checkpoint

    def checkpoint(self, step):
        save(self, step)
        acc = _events(self.run_dir / tb.TB_DIR)  # read from disk by another reader, the writer still open
        seen[step] = ([e.step for e in acc.Scalars("loss/D")], [e.step for e in acc.Images("samples")])

    monkeypatch.setattr(LossGuard, "checkpoint", checkpoint)
    x, y = _data()
    train(_cfg(steps=7, tick_every=1, sample_every=2), x, y, tmp_path / "r")
    assert seen == {3: ([1, 2, 3], [0, 2]), 6: ([1, 2, 3, 4, 5, 6], [0, 2, 4, 6]),
                    7: ([1, 2, 3, 4, 5, 6, 7], [0, 2, 4, 6, 7])}


def _block_tensorboard(monkeypatch):
    """Make ``import tensorboard`` (and torch's wrapper of it) fail, as when the package is not installed."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def _tensorboard_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "tensorboard" in r.getMessage().lower()]


def test_without_the_package_auto_trains_unchanged_with_one_line(tmp_path, monkeypatch, caplog):
    _block_tensorboard(monkeypatch)
    x, y = _data()
    with caplog.at_level(logging.INFO):
        res = train(_cfg(), x, y, tmp_path / "r")
    assert res.step == 6 and [ln["step"] for ln in _stats(tmp_path / "r")] == [2, 4, 6]
    assert not (tmp_path / "r" / tb.TB_DIR).exists() and not list(tmp_path.rglob("events.out.tfevents.*"))
    assert _tensorboard_lines(caplog) == [tb.MISSING_LINE]
    assert "\n" not in tb.MISSING_LINE and "pip install 'medsynth-gan[tensorboard]'" in tb.MISSING_LINE


def test_on_without_the_package_is_a_one_line_error(tmp_path, monkeypatch):
    _block_tensorboard(monkeypatch)
    x, y = _data()
    for call in (lambda: check_config(_cfg(tensorboard="on")), lambda: train(_cfg(tensorboard="on"), x, y, tmp_path / "r")):
        with pytest.raises(MedsynthError) as err:
            call()
        assert err.value.path == "train.tensorboard" and "\n" not in str(err.value)
        assert "pip install 'medsynth-gan[tensorboard]'" in str(err.value)
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_off_writes_nothing_and_logs_nothing(tmp_path, caplog):
    x, y = _data()
    with caplog.at_level(logging.INFO):
        train(_cfg(tensorboard="off"), x, y, tmp_path / "r")
    assert (tmp_path / "r" / "stats.jsonl").is_file() and not (tmp_path / "r" / tb.TB_DIR).exists()
    assert _tensorboard_lines(caplog) == []


def test_setting_is_validated_and_yaml_booleans_accepted():
    with pytest.raises(MedsynthError, match="train.tensorboard: must be one of auto, on, off"):
        _cfg(tensorboard="yes")
    assert tb.tensorboard_setting(_cfg(tensorboard=True).train.tensorboard) == "on"  # YAML's bare `on`
    assert tb.tensorboard_setting(_cfg(tensorboard=False).train.tensorboard) == "off"
    assert _cfg().train.tensorboard == "auto"


def test_only_rank_zero_writes(tmp_path):
    board = tb.open_run_board(tmp_path, "on", DistInfo(rank=1, world=2), start_step=0, show_config=False)
    assert not board.enabled and not (tmp_path / tb.TB_DIR).exists()


def test_evaluate_writes_the_frechet_distance_at_the_runs_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from medsynth.cli import app

    images = ((torch.rand(48, 32, 32, generator=torch.Generator().manual_seed(2)).numpy() + 1) * 1000)
    runner, run = train_tiny_cli_run(tmp_path, images.astype(np.float32))
    tiny = ["--count", "8", "--encoder-steps", "1", "--repeats", "1", "--n-boot", "10"]
    for seed in ("0", "1"):  # evaluating again at the same step replaces the value
        r = runner.invoke(app, ["evaluate", str(run), *tiny, "--seed", seed], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert "Fréchet distance also in" in r.output
    ev = json.loads((run / "evaluate" / "evaluation.json").read_text())
    acc = _events(run / tb.TB_DIR / tb.EVALUATE_DIR)
    assert set(acc.Tags()["scalars"]) == {"fidelity/fd", "fidelity/fd_floor"}
    assert [(e.step, np.float32(e.value)) for e in acc.Scalars("fidelity/fd")] == \
        [(2, np.float32(ev["fidelity"]["fd"]["synthetic"]["mean"]))]
    assert [(e.step, np.float32(e.value)) for e in acc.Scalars("fidelity/fd_floor")] == \
        [(2, np.float32(ev["fidelity"]["fd"]["floor"]["mean"]))]
    assert ev["step"] == 2
    # the training events beside them are untouched
    assert [e.step for e in _events(run / tb.TB_DIR).Scalars("loss/D")] == [ln["step"] for ln in _stats(run)]
