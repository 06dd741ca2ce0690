"""TensorBoard event files of a run, beside ``stats.jsonl`` (which stays the source of truth).

``train.tensorboard`` (``auto|on|off``, default ``auto``: on when the optional ``tensorboard``
package imports, ``pip install 'medsynth-gan[tensorboard]'``) makes rank 0 write, with
``torch.utils.tensorboard.SummaryWriter`` (no torchvision needed):

* ``RUN/tensorboard/``: at every stats line, one scalar per number in the line, tagged with the
  line's key (``loss/D``, ``aug/p``, ``img_per_s``, ``seconds``, ``kimg``, ``dp/epsilon``...; a
  character TensorBoard refuses becomes ``_``: ``D(real)`` -> ``D_real``, :func:`tag`) at the line's
  ``step`` (the x axis; ``step`` itself is not a scalar); the sample grids (tag
  ``samples``: the very pixels of ``RUN/samples/step_NNNNNN.png``, a grey PNG); the resolved config
  (text tag ``config/text_summary``: ``config.yaml``, at step 0 and again at a resume that changes
  settings).
* ``RUN/tensorboard/evaluate/``: ``medsynth evaluate``'s Fréchet distance at the evaluated
  checkpoint's step (:func:`write_evaluation`): ``fidelity/fd`` (synthetic vs real, mean over the
  splits) and ``fidelity/fd_floor`` (real vs real), plus ``fidelity/inception_fid`` and
  ``fidelity/inception_fid_floor`` when Inception FID was computed. A separate TensorBoard run,
  so that evaluating again at the same step replaces the earlier values without touching training's.

View them with ``tensorboard --logdir runs/``. TensorBoard stores scalars as float32: a scalar is
its stats line's value rounded to float32.

Every write is flushed at once, so everything up to a checkpoint is on disk before the checkpoint
is. A resumed run (``train --resume``, also after a kill) opens a new event file in the same
folder with ``purge_step = resumed step + 1``: TensorBoard's readers (the ``EventAccumulator``
and the data server behind ``tensorboard``) then drop every event the earlier files hold for a
later step, as :func:`medsynth.train.stats.truncate_stats` drops those stats lines, so no step
appears twice.

Without the package and ``auto``, training runs unchanged and one log line says that no
TensorBoard files are written and how to install the package; ``on`` without it is a one-line
:class:`~medsynth.errors.MedsynthError` before any data is loaded; ``off`` writes nothing.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.errors import MedsynthError
from medsynth.train import distributed as ddp

log = logging.getLogger(__name__)

#: where a run's training events go (``RUN/tensorboard/``) and ``medsynth evaluate``'s (``RUN/tensorboard/evaluate/``)
TB_DIR = "tensorboard"
EVALUATE_DIR = "evaluate"
SETTINGS: tuple[str, ...] = ("auto", "on", "off")
INSTALL = "pip install 'medsynth-gan[tensorboard]'"
#: the one line ``auto`` logs when the package is missing
MISSING_LINE = (f"TensorBoard files are not written: the tensorboard package is not installed ({INSTALL}; "
                "train.tensorboard=off silences this line)")


def tensorboard_setting(value: Any) -> str:
    """``train.tensorboard`` as one of :data:`SETTINGS` (YAML's bare ``on``/``off`` arrive as booleans;
    :func:`medsynth.data.stream.switch_setting`).

    Raises:
        MedsynthError: any other value.
    """
    from medsynth.data.stream import switch_setting

    return switch_setting("train.tensorboard", value, SETTINGS)


def summary_writer_class(setting: Any) -> type | None:
    """``torch.utils.tensorboard.SummaryWriter`` if ``setting`` asks for TensorBoard files and the
    ``tensorboard`` package imports; ``None`` for ``off``, or for ``auto`` without the package.

    Raises:
        MedsynthError: ``on`` without the package (one line saying how to install it), or a bad setting.
    """
    setting = tensorboard_setting(setting)
    if setting == "off":
        return None
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard imports it lazily on some versions)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        if setting == "on":
            raise MedsynthError("train.tensorboard", f"is on but the tensorboard package does not import ({exc}); "
                                                     f"{INSTALL}, or set train.tensorboard=auto or off") from None
        return None
    return SummaryWriter


def tag(key: str) -> str:
    """The TensorBoard tag of a stats key: the key itself, where each run of characters TensorBoard
    refuses in a tag (other than letters, digits, ``_``, ``-``, ``/``, ``.``) becomes one ``_``,
    none at the end: ``loss/D`` -> ``loss/D``, ``D(real)`` -> ``D_real``."""
    return re.sub(r"[^-/\w.]+", "_", key).rstrip("_") or "_"


class RunBoard:
    """One TensorBoard event folder being written (or nothing: ``writer=None``), flushed after every write.

    Args:
        writer: an open ``SummaryWriter``, or ``None`` (every method is then a no-op).
    """

    def __init__(self, writer: Any = None):
        self.writer = writer

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def scalars(self, line: dict[str, Any], step: int | None = None) -> None:
        """One scalar per number in ``line`` (a stats line: booleans and non-numbers skipped), at
        ``step`` (default ``line["step"]``, which is not written as a scalar)."""
        if self.writer is None:
            return
        step = int(line["step"] if step is None else step)
        for key, value in line.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(tag(key), float(value), step)
        self.writer.flush()

    def image(self, name: str, grid: np.ndarray, step: int) -> None:
        """A grey picture ``grid`` ``(H, W)`` uint8 (0 black .. 255 white) at ``step``."""
        if self.writer is None:
            return
        if grid.dtype != np.uint8 or grid.ndim != 2:
            raise ValueError(f"image {name!r}: expected an (H, W) uint8 array, got {grid.dtype} {grid.shape}")
        # encoded here as a grey PNG, as TensorBoard's image summary allows (colorspace 1): add_image
        # would first make float32 and RGB copies (~290 MiB for a grid of four 1024² images)
        import io

        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        buf = io.BytesIO()
        Image.fromarray(grid, mode="L").save(buf, format="PNG")
        img = Summary.Image(height=grid.shape[0], width=grid.shape[1], colorspace=1,
                            encoded_image_string=buf.getvalue())
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag(name), image=img)]),
                                                   int(step))
        self.writer.flush()

    def text(self, name: str, text: str, step: int) -> None:
        """``text`` shown verbatim (a Markdown code block) at ``step``."""
        if self.writer is None:
            return
        self.writer.add_text(tag(name), "".join("    " + ln + "\n" for ln in text.splitlines()), int(step))
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> RunBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_run_board(run_dir: str | Path, setting: Any, info: ddp.DistInfo, *, start_step: int,
                   show_config: bool) -> RunBoard:
    """The training run's board in ``RUN/tensorboard/`` (rank 0; a no-op board elsewhere, and for
    ``off`` or ``auto`` without the package, which logs :data:`MISSING_LINE` once).

    Args:
        run_dir: the run directory.
        setting: ``train.tensorboard``.
        info: this process's place under torchrun.
        start_step: the step training starts at: 0, or the resumed checkpoint's step (events the
            folder holds for later steps are purged: ``purge_step = start_step + 1``).
        show_config: show the resolved config (``RUN/config.yaml``'s text, tag ``config/text_summary``) at
            ``start_step``: a new run, or a resume that changed settings.

    Raises:
        MedsynthError: ``on`` without the package.
    """
    cls = summary_writer_class(setting)
    if not info.is_main:
        return RunBoard()
    if cls is None:
        if tensorboard_setting(setting) == "auto":
            log.warning(MISSING_LINE)
        return RunBoard()
    folder = Path(run_dir) / TB_DIR
    board = RunBoard(_open(cls, folder, purge_step=start_step + 1 if start_step > 0 else None))
    if show_config:
        board.text("config", (Path(run_dir) / "config.yaml").read_text(encoding="utf-8"), start_step)
    return board


def write_evaluation(run_dir: str | Path) -> Path | None:
    """Write the Fréchet distances of the run's evaluation (``RUN/evaluate/evaluation.json``, written
    by ``medsynth evaluate``) into ``RUN/tensorboard/evaluate/`` at the evaluated checkpoint's step,
    replacing any written there for that step or a later one (``purge_step``), as the run's
    ``train.tensorboard`` says. Without the package it writes nothing and logs one line (``auto``:
    :data:`MISSING_LINE`; ``on``: the error :func:`summary_writer_class` raises, as a warning, since
    the evaluation itself is already written).

    Scalars: ``fidelity/fd`` (``fidelity.fd.synthetic.mean``), ``fidelity/fd_floor``
    (``fidelity.fd.floor.mean``) and, when computed, ``fidelity/inception_fid`` and
    ``fidelity/inception_fid_floor``.

    Args:
        run_dir: the run directory (its ``config.yaml`` holds ``train.tensorboard``).

    Returns:
        The folder written, or ``None`` when nothing was written.

    Raises:
        MedsynthError: the run has no evaluation.
    """
    from medsynth.config import load_config
    from medsynth.results import evaluation_file, read_evaluation

    run_dir = Path(run_dir)
    evaluation = read_evaluation(run_dir)
    if evaluation is None:
        raise MedsynthError(evaluation_file(run_dir), "not found: run `medsynth evaluate` first")
    setting = load_config(run_dir / "config.yaml").train.tensorboard
    try:
        cls = summary_writer_class(setting)
    except MedsynthError as exc:  # `on` without the package: the evaluation itself is written and stands
        log.warning("%s", exc)
        return None
    if cls is None:
        if tensorboard_setting(setting) == "auto":
            log.warning(MISSING_LINE)
        return None
    step = int(evaluation["step"])
    fd = evaluation["fidelity"]["fd"]
    values = {"fidelity/fd": fd["synthetic"]["mean"], "fidelity/fd_floor": fd["floor"]["mean"]}
    values.update(_inception_values(evaluation["fidelity"].get("inception_fid") or {}))
    folder = run_dir / TB_DIR / EVALUATE_DIR
    with RunBoard(_open(cls, folder, purge_step=max(step, 0))) as board:
        board.scalars({k: v for k, v in values.items() if v is not None and math.isfinite(float(v))}, step=step)
    return folder


def _inception_values(res: dict) -> dict[str, float]:
    """``fidelity/inception_fid`` and ``fidelity/inception_fid_floor`` from the evaluation's
    ``inception_fid`` entry (:func:`medsynth.metrics.inception.inception_fid`: ``fid``, ``floor``)."""
    return {name: float(res[key]) for key, name in (("fid", "fidelity/inception_fid"),
                                                    ("floor", "fidelity/inception_fid_floor")) if key in res}


def _open(cls: type, folder: Path, *, purge_step: int | None) -> Any:
    """A ``SummaryWriter`` on ``folder`` whose event file sorts after the folder's existing ones.

    Readers take a folder's event files in name order (``events.out.tfevents.<unix second>.<host>.
    <pid>.<n>``): a file opened in the same second as an earlier one could sort before it, and a
    purge it carries would then come first and purge nothing. So it waits for the next second then.
    """
    folder.mkdir(parents=True, exist_ok=True)
    newest = max((_stamp(p.name) for p in folder.glob("events.out.tfevents.*")), default=-1)
    while int(time.time()) <= newest and newest - int(time.time()) < 2:
        time.sleep(0.05)
    return cls(log_dir=str(folder), purge_step=purge_step)


def _stamp(name: str) -> int:
    """The unix second in an event file's name (-1 when it has none)."""
    part = name.split(".")[3] if name.count(".") >= 3 else ""
    return int(part) if part.isdigit() else -1
