"""The resolved config is validated before any data is loaded: every setting's type (from the
dataclass type hints) and range or choices (``medsynth.config.RULES``), the variant's own
``model.params`` by its ``VariantParams`` type hints, and what only the variant knows (built on the
meta device). Each bad setting is ONE line ``error: <key>: must be ..., got ...`` with exit code 2,
no traceback, no data loaded and no run folder made."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from medsynth import cli
from medsynth.cli import app
from medsynth.config import (
    RULES,
    SIZES,
    Choices,
    Range,
    check_fields,
    preset_names,
    resolve,
    validate,
)
from medsynth.errors import MedsynthError

runner = CliRunner()
TINY = ["--steps", "2", "--size", "32", "--set", "model.width=8", "--no-progress"]


def one_error_line(result) -> str:
    """The single non-empty output line of a refused command (asserting there is exactly one)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if the command loads any data: validation must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the config was validated")

    monkeypatch.setattr(cli, "_load_set", refuse)


@pytest.mark.parametrize("args,key,shown,allowed", [
    (["--set", "train.steps=abc"], "train.steps", "'abc'", "an integer >= 1"),
    (["--set", "model.lr_g=fast"], "model.lr_g", "'fast'", "a number > 0"),
    (["--set", "model.width=-3"], "model.width", "-3", "an integer >= 1"),
    (["--set", "train.checkpoint_every=0"], "train.checkpoint_every", "0", "an integer >= 1"),
    (["--size", "63"], "data.size", "63", "one of 8, 16, 32, 64, 128, 256, 512, 1024"),
    (["--batch-size", "0"], "train.batch_size", "0", "an integer >= 1"),
    (["--steps", "-3"], "train.steps", "-3", "an integer >= 1"),
    (["--minutes", "-1"], "train.minutes", "-1.0", "a number > 0 or null"),
    (["--set", "train.clock=cpu"], "train.clock", "'cpu'", "one of wall, process"),
    (["--set", "train.amp=fp8"], "train.amp", "'fp8'", "one of auto, off, bf16, fp16"),
    (["--set", "model.betas=[0.5]"], "model.betas", "(0.5,)", "a list of 2 numbers in [0, 1)"),
    (["--set", "data.split=all"], "data.split", "'all'", "one of train, val, test, null"),
    (["--set", "train.dp_delta=2"], "train.dp_delta", "2", "a number in (0, 1) or null"),
    (["--model", "wgan_gp", "--set", "model.params.n_critic=abc"], "model.params.n_critic", "'abc'", "an integer"),
    (["--model", "stylegan2", "--set", "model.params.r1_gamma=fast"], "model.params.r1_gamma", "'fast'", "a number or null"),
    (["--set", "model.params.augment_p=x"], "model.params.augment_p", "'x'", "a number or null"),
])
def test_bad_setting_is_one_line_before_any_data(tmp_path, no_data, args, key, shown, allowed):
    out = tmp_path / "runs"
    line = one_error_line(runner.invoke(app, ["train", *TINY, *args, "--out", str(out)]))
    assert line == f"error: {key}: must be {allowed}, got {shown}"
    assert not out.exists()  # no run folder, not even its parent


@pytest.mark.parametrize("args,key,words", [
    (["--set", "data.ct_window=bone", "--modality", "ct"], "data.ct_window", "unknown CT window 'bone'"),
    (["--set", "train.device=tpu"], "train.device", "not a device"),
    (["--set", "model.params.nope=1"], "model.params (dcgan)", "unknown parameter(s) ['nope']"),
    (["--set", "model.params=3"], "--set model.params=3", "must be a mapping"),
    (["--set", "train.stepz=3"], "--set train.stepz=3", "unknown setting 'stepz'"),
])
def test_what_only_the_variant_or_library_knows_is_checked_before_data(tmp_path, no_data, args, key, words):
    out = tmp_path / "runs"
    line = one_error_line(runner.invoke(app, ["train", *TINY, *args, "--out", str(out)]))
    assert line.startswith(f"error: {key}: ") and words in line
    assert not out.exists()


def test_every_packaged_preset_validates():
    for name in preset_names():
        validate(resolve(preset=name))


def test_every_rule_names_a_field_and_refuses_something():
    cfg = resolve()
    for key, rule in RULES.items():
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key
        if key in ("model.size", "model.spatial_dims"):  # copied from data.*, refused when set directly
            with pytest.raises(MedsynthError, match=rf"model\.{name} is copied from data\.{name}"):
                resolve(overrides=[f"{key}=32"])
            continue
        bad = "'not a value'" if isinstance(rule, (Choices, Range)) else "[1, 0]"  # [centre, width 0]
        with pytest.raises(MedsynthError, match=rf"^{key.replace('.', chr(92) + '.')}: must be "):
            resolve(overrides=[f"{key}={bad}"])


def test_types_come_from_the_type_hints():
    @dataclass
    class Toy:
        n: int = 1
        x: float = 0.5
        name: str = "a"
        flag: bool = False
        maybe: float | None = None
        pair: tuple[float, float] = (0.1, 0.2)
        many: tuple[int, ...] = (1,)

    ok = {"n": 3, "x": 2, "name": "b", "flag": True, "maybe": None, "pair": [1, 2.5], "many": [1, 2, 3]}
    check_fields(Toy, ok, "toy")
    for key, value in [("n", True), ("n", 1.5), ("n", "3"), ("x", "fast"), ("x", False), ("name", 3),
                       ("flag", 1), ("maybe", "x"), ("pair", [1]), ("pair", 1.0), ("many", [1, "a"])]:
        with pytest.raises(MedsynthError, match=rf"^toy\.{key}: must be "):
            check_fields(Toy, {key: value}, "toy")
    with pytest.raises(MedsynthError, match=r"toy\.n: must be an integer >= 1, got 0"):
        check_fields(Toy, {"n": 0}, "toy", {"toy.n": Range(1)})


def test_yaml_off_and_sizes():
    assert resolve(overrides=["train.amp=off"]).train.amp is False  # YAML's bare off: accepted as off
    assert resolve(overrides=["data.size=32"]).model.size == 32
    for size in SIZES:
        resolve(overrides=[f"data.size={size}"])
    for size in (4, 48, 2048, "64"):
        with pytest.raises(MedsynthError, match="data.size"):
            resolve(overrides=[f"data.size={size!r}" if isinstance(size, str) else f"data.size={size}"])
