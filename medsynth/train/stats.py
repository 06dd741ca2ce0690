"""The run's stats lines: per-tick means of the variants' stats, written to ``stats.jsonl``.

One JSON object per tick (``train.tick_every`` steps): ``step``, ``kimg``, ``seconds``,
``cpu_seconds``, ``img_per_s``, the means of every stat the phases returned since the last tick
(``loss/D``, ``D(real)``, ...) and the privacy hooks' entries (``dp/epsilon``). Each line's numbers
also go to the run's TensorBoard events (:mod:`medsynth.train.tensorboard`), when it writes them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from medsynth.progress import Progress
from medsynth.train import distributed as ddp
from medsynth.train.tensorboard import RunBoard

log = logging.getLogger(__name__)

STATS_FILE = "stats.jsonl"


class Tally:
    """Sums of the phases' stats and the images drawn since the last tick.

    Stats values may be device tensors: they are summed on the device and read once per tick
    (:meth:`means`), never per update.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float | Tensor] = {}
        self.counts: dict[str, int] = {}
        self.images = 0

    def add(self, stats: dict, images: int) -> None:
        """One update's ``stats`` (floats or scalar tensors) and the images this process drew for it."""
        for k, v in stats.items():
            v = v.detach().float() if isinstance(v, Tensor) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.images += images

    def means(self, info: ddp.DistInfo, device: torch.device) -> dict[str, float]:
        """Means of the stats since the last tick: one host read (over all ranks under torchrun)."""
        if not info.enabled and all(isinstance(v, float) for v in self.sums.values()):
            return {k: self.sums[k] / self.counts[k] for k in self.sums}
        keys = sorted(set().union(*ddp.gather_objects(sorted(self.sums), info))) if info.enabled else list(self.sums)
        sums = torch.stack([torch.as_tensor(self.sums.get(k, 0.0), dtype=torch.float64, device=device).reshape(())
                            for k in keys]) if keys else torch.zeros(0, dtype=torch.float64, device=device)
        counts = torch.tensor([float(self.counts.get(k, 0)) for k in keys], dtype=torch.float64, device=device)
        if info.enabled:
            import torch.distributed as dist

            dist.all_reduce(sums)
            dist.all_reduce(counts)
        return dict(zip(keys, (sums / counts.clamp_min(1)).tolist()))

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.images = 0


class TickWriter:
    """Writes a stats line every ``tick_every`` steps (rank 0), feeds the progress bar and ``on_tick``.

    Args:
        run_dir: the run directory (``stats.jsonl`` goes there).
        tick_every: steps between lines (a line is also written at the last step, ``steps``).
        steps: the run's last step.
        batch_size: the global batch actually drawn (``kimg = step * batch_size / 1000``).
        info: this process's place under torchrun.
        device: the training device (stats tensors live there).
        extra: called at each tick for more entries (the privacy hooks' ``stats``).
        on_tick: called with each line (rank 0 only).
        progress: report progress (rank 0 only), starting at ``start_step``: a bar on a terminal,
            plain ``n/N steps, elapsed, left`` log lines otherwise (:mod:`medsynth.progress`).
        start_step: the step training starts (or resumes) at.
        board: the run's TensorBoard events: every line's numbers as scalars at its step (rank 0).
    """

    def __init__(self, run_dir: Path, *, tick_every: int, steps: int, batch_size: int, info: ddp.DistInfo,
                 device: torch.device, extra: Callable[[], dict], on_tick: Callable[[dict], None] | None,
                 progress: bool, start_step: int, board: RunBoard | None = None):
        self.path = Path(run_dir) / STATS_FILE
        self.tick_every, self.steps, self.batch_size = int(tick_every), int(steps), int(batch_size)
        self.info, self.device, self.extra, self.on_tick = info, device, extra, on_tick
        self.board = board or RunBoard()
        self.bar = None
        if progress and info.is_main:
            self.bar = Progress("train", self.steps, "steps", initial=start_step)
        self.tick_t = time.perf_counter()

    def step_done(self, step: int) -> bool:
        """Advance the progress bar to ``step``; whether a line is due after it."""
        if self.bar is not None:
            self.bar.update(1)
        return step % self.tick_every == 0 or step == self.steps

    def write(self, step: int, tally: Tally, seconds: float, cpu_seconds: float) -> None:
        """Append the line of the tick ending at ``step`` and clear ``tally`` (collective under torchrun)."""
        now = time.perf_counter()
        means = tally.means(self.info, self.device)
        line = {"step": step, "kimg": round(step * self.batch_size / 1000, 3),
                "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
                "img_per_s": round(tally.images * self.info.world / max(now - self.tick_t, 1e-9), 2),
                **{k: round(v, 6) for k, v in means.items()}, **self.extra()}
        if self.info.is_main:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(line) + "\n")
            self.board.scalars(line)
            if self.bar is not None:
                self.bar.set_postfix(", ".join(f"{k}={v:.3f}" for k, v in line.items() if k.startswith("loss/")))
            if self.on_tick is not None:
                self.on_tick(line)
        tally.clear()
        self.tick_t = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def truncate_stats(run_dir: Path, step: int) -> None:
    """Drop stats lines written after the checkpoint a run resumes from (nothing is counted twice)."""
    path = Path(run_dir) / STATS_FILE
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))
