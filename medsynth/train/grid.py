"""Image grids for sample previews (PNG, 8-bit grey), and the loop's grid writer."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from medsynth.atomic import atomic_path
from medsynth.figures import make_grid
from medsynth.train import distributed as ddp
from medsynth.train.tensorboard import RunBoard


#: most pixels (voxels) of the samples of one grid or end-of-run picture (64 images of 32³): a
#: full-resolution run does not spend CPU-minutes sampling 64 images of 1024² per grid
#: (the multi-scale model makes one in ~10 s on one core; 64 would eat a few-minute budget)
GRID_PIXELS = 64 * 32**3


def grid_count(n: int, image_shape) -> int:
    """Images of a grid: at most ``n``, at most :data:`GRID_PIXELS` pixels in all, at least
    ``min(n, 4)``; ``image_shape`` ``(C, *S)``. 64 up to 256² (2D) and 32³ (3D), 4 at 1024²."""
    px = 1
    for s in tuple(image_shape)[1:]:
        px *= int(s)
    return max(min(int(n), 4), min(int(n), GRID_PIXELS // px))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save a grid PNG atomically."""
    return _save_png(make_grid(images, nrow), path)


def _save_png(grid, path: str | Path) -> Path:
    """Save a :func:`~medsynth.figures.make_grid` array ``(H, W)`` uint8 as a grey PNG, atomically."""
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return Path(path)


def fixed_samples(model, n: int, seed: int) -> torch.Tensor:
    """The ``n`` samples of a run's grids: latents from a CPU generator seeded ``seed + 12345``,
    classes in turn; the global CPU RNG is left as it was. ``(n, C, *S)`` in [-1, 1]."""
    with torch.random.fork_rng(devices=[]):
        g = torch.Generator().manual_seed(int(seed) + 12345)
        labels = None if model.num_classes <= 0 else torch.arange(n) % model.num_classes
        return model.sample(n, labels=labels, generator=g)


class GridWriter:
    """Writes ``run_dir/samples/step_NNNNNN.png``: the model's samples of fixed latents (rank 0),
    and the same picture into the run's TensorBoard events (tag ``samples``), when it writes them.

    The latents come from a generator seeded with ``seed + 12345`` on the CPU, so every grid of a
    run shows the same latents. The global CPU RNG is restored afterwards: grids never shift
    training's noise. On other devices the samples come from a CPU copy of the model.

    Args:
        model: the variant being trained.
        model_cfg: its :class:`~medsynth.config.ModelConfig` (to build the CPU copy).
        run_dir: the run directory.
        n: images per grid (8 per row).
        seed: the run's seed.
        info: this process's place under torchrun.
        device: the training device.
        board: the run's TensorBoard events (none: ``None``).
    """

    def __init__(self, model, model_cfg, run_dir: Path, n: int, seed: int, info: ddp.DistInfo, device: torch.device,
                 board: RunBoard | None = None):
        self.model, self.model_cfg, self.run_dir, self.seed = model, model_cfg, Path(run_dir), int(seed)
        self.n = grid_count(n, model.image_shape)
        self.info, self.device, self.board = info, device, board or RunBoard()
        self._cpu_copy = None

    def write(self, step: int) -> None:
        """The grid of the model after ``step`` steps."""
        if not self.info.is_main:
            return
        grid = make_grid(fixed_samples(self._source(), self.n, self.seed), 8)
        _save_png(grid, self.run_dir / "samples" / f"step_{step:06d}.png")
        self.board.image("samples", grid, step)

    def _source(self):
        if self.device.type == "cpu":
            return self.model
        if self._cpu_copy is None:  # sample() draws latents on the CPU
            from medsynth.models.registry import build_model

            self._cpu_copy = build_model(self.model_cfg)
        self._cpu_copy.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        return self._cpu_copy


def side_by_side(synthetic: torch.Tensor, real: torch.Tensor, *, title_synthetic: str, title_real: str,
                 nrow: int = 8, scale: int = 2) -> Image.Image:
    """One picture: a grid of ``synthetic`` images left, an equal grid of ``real`` images right.

    Args:
        synthetic, real: ``(N, 1, H, W)`` (or ``(N, 1, D, H, W)``: central slices) in [-1, 1]; the
            same N each.
        title_synthetic, title_real: captions written above each grid.
        nrow: images per row.
        scale: nearest-neighbour enlargement (64² images are small on a screen).

    Returns:
        A greyscale PIL image.
    """
    from PIL import ImageDraw

    a, b = make_grid(synthetic, nrow), make_grid(real, nrow)
    h, w = a.shape
    gap, top = 24, 22
    canvas = Image.new("L", (2 * w * scale + gap, h * scale + top), color=255)
    for k, (arr, title) in enumerate(((a, title_synthetic), (b, title_real))):
        x0 = k * (w * scale + gap)
        canvas.paste(Image.fromarray(arr).resize((w * scale, h * scale), Image.NEAREST), (x0, top))
        ImageDraw.Draw(canvas).text((x0 + 2, 4), title, fill=0)
    return canvas


def write_final_picture(model, real: torch.Tensor, path: str | Path, *, n: int, seed: int,
                        step: int) -> Path:
    """The end-of-run picture: the last grid's samples (the fixed latents of :class:`GridWriter`)
    beside ``n`` real training images drawn at random (seeded), written atomically as PNG.

    It shows real training images: the CLI writes it under ``RUN/local/``, the part of a run that
    is never shared.

    Args:
        model: the trained variant (its EMA generator samples).
        real: ``(N, 1, *S)`` real training images in [-1, 1].
        path: the PNG to write.
        n: images per side.
        seed: the run's seed (the latents are the grids' ``seed + 12345``; the real draw uses ``seed``).
        step: the step the samples are from (caption).
    """
    n = grid_count(n, model.image_shape)
    x = fixed_samples(model, n, seed).detach().cpu()
    idx = torch.randperm(len(real), generator=torch.Generator().manual_seed(int(seed)))[:n]
    pic = side_by_side(x, real[idx.sort().values].cpu(), title_synthetic=f"synthetic (step {step})",
                       title_real=f"real training images ({len(idx)} at random)")
    with atomic_path(path, ".png") as tmp:
        pic.save(tmp, format="PNG")
    return Path(path)
