"""The tree's structure: import rules (import-linter), presets as package data, one folder per study.

The import rules live in ``pyproject.toml`` (``[tool.importlinter]``): the layers of ``medsynth``,
``medsynth`` never importing ``pipelines``, no import cycle inside any ``medsynth`` subpackage,
studies and benches independent. Imports inside functions count. ``lint-imports`` from the
repository root prints the same report.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medsynth.config import PRESET_DIR, find_preset, locate_preset, preset_names, resolve
from medsynth.errors import MedsynthError

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "pipelines" / "studies"


def test_import_contracts_hold():
    # a fresh process with the checkout first on the path (pipelines/ is not installed); no cache
    # so a stale graph never hides a new import
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (
        "an import rule of pyproject.toml [tool.importlinter] is broken (import-linter comes with "
        f"`pip install -e '.[test]'`):\n{r.stdout}\n{r.stderr}")
    assert "0 broken" in r.stdout, r.stdout


def test_presets_are_package_data_and_pipelines_is_not_installed():
    tomllib = pytest.importorskip("tomllib")
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert PRESET_DIR == ROOT / "medsynth" / "presets"
    globs = tool["package-data"]["medsynth"]
    files = sorted(p.relative_to(ROOT / "medsynth").as_posix() for p in PRESET_DIR.iterdir())
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)
    assert not any(fnmatch.fnmatch("pipelines", pat) for pat in tool["packages"]["find"]["include"])


def test_preset_by_name_or_path(tmp_path, monkeypatch):
    assert "xray_stylegan2_gpu" in preset_names() and "ct3d_progan" in preset_names()
    packaged = PRESET_DIR / "xray_stylegan2_gpu.yaml"
    assert locate_preset("xray_stylegan2_gpu") == packaged
    assert locate_preset("xray_stylegan2_gpu.yaml") == packaged
    assert find_preset("xray", "dcgan") == PRESET_DIR / "xray_dcgan.yaml"
    assert resolve(preset="xray_stylegan2_gpu").to_dict() == resolve(preset=packaged).to_dict()
    # a file wins over a packaged name, and any path works
    monkeypatch.chdir(tmp_path)
    (tmp_path / "xray_dcgan.yaml").write_text(yaml.safe_dump({"model": {"width": 7}}))
    assert resolve(preset="xray_dcgan.yaml").model.width == 7
    assert resolve(preset=tmp_path / "xray_dcgan.yaml").model.width == 7
    with pytest.raises(MedsynthError, match="xray_stylegan2_gpu"):
        locate_preset("xray_stylegan3")
    with pytest.raises(MedsynthError, match="preset not found"):
        locate_preset("elsewhere/xray_dcgan.yaml")


@pytest.mark.parametrize("study", sorted(p.name for p in STUDIES.iterdir() if (p / "study.py").exists()))
def test_each_study_is_a_folder_with_its_command(study):
    folder = STUDIES / study
    assert (folder / "__main__.py").exists() and (folder / "__init__.py").exists()
    assert f"python -m pipelines.studies.{study}" in (folder / "README.md").read_text()
