"""The speed options a run uses: ``TrainConfig``'s ``auto`` settings resolved for the device.

``train.amp``, ``train.channels_last``, ``train.compile`` and ``train.fused_adam`` are ``auto`` by
default; :func:`resolve_speed` turns an option on only where it was measured to help and says
why in :attr:`Speed.notes`. The loop (:mod:`medsynth.train.loop`) applies the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medsynth.errors import MedsynthError


@dataclass(frozen=True)
class Speed:
    """The speed options a run actually uses (``TrainConfig``'s ``"auto"`` resolved for the device).

    Attributes:
        device: where the model and the (cached) images live.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` (autocast of each phase's forward pass).
        channels_last: channels-last (``channels_last_3d`` for volumes) memory format.
        compile: ``torch.compile`` of the modules the phases update.
        fused_adam: Adam's fused kernel.
        notes: why each ``"auto"`` went the way it did, and options that could not be used.
    """

    device: torch.device
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    fused_adam: bool = False
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"device": str(self.device), "amp": self.amp, "channels_last": self.channels_last,
                "compile": self.compile, "fused_adam": self.fused_adam, "notes": list(self.notes)}

    def memory_format(self, spatial_dims: int) -> torch.memory_format | None:
        """Memory format of images and image-rank weights: channels-last (``channels_last_3d`` for
        volumes) when on, ``None`` (leave tensors as they are) when off."""
        if not self.channels_last:
            return None
        return torch.channels_last if int(spatial_dims) == 2 else torch.channels_last_3d

    def autocast(self) -> torch.autocast:
        """The autocast context of each phase's forward pass (disabled when ``amp`` is off)."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported()) or bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch without the probes: do not guess
        return False


def _flag(value, name: str) -> bool | None:
    if value == "auto":
        return None
    if isinstance(value, bool):
        return value
    raise MedsynthError(f"train.{name}", f"must be auto, true or false, got {value!r}")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``train.device`` -> a torch device (``auto``: CUDA if available; under torchrun on GPUs
    ``cuda:LOCAL_RANK``)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise MedsynthError("train.device", f"not a device: {spec!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MedsynthError("train.device", f"{spec!r} asked for but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def resolve_speed(tc, local_rank: int = 0, spatial_dims: int = 2) -> Speed:
    """Resolve ``TrainConfig``'s speed options for the device this process trains on.

    ``"auto"`` turns an option on only where it was measured to help (``reports/speed_options_cpu.json``
    for this project's CPU; the GPU record from ``pipelines/benches/gpu.py``):

    * ``amp``: bf16 on CUDA devices with bf16 support and on CPUs with AVX512-BF16/AMX (training
      images per CPU-second 1.28x StyleGAN2, 1.56x DCGAN at 64² on this project's CPU); otherwise
      off. fp16 is never chosen automatically.
    * ``channels_last``: on for 2D models (CPU: 1.15x / 1.17x alone, 1.26x / 1.27x on top of bf16;
      H100, ``reports/gpu_bench_h100.json``, on top of bf16 at 256²: StyleGAN2 1.13x, ProGAN 0.99x);
      off for 3D (not measured).
    * ``compile``: off (CPU: 1.14x for DCGAN but minutes of compilation under load, and R1/gradient
      penalty phases cannot run compiled; H100: StyleGAN2 256² did not finish compiling in 60 s).
    * ``fused_adam``: on where torch has a fused Adam kernel for the device (CPU: 1.10x DCGAN,
      1.01x StyleGAN2).
    """
    dev = resolve_device(str(tc.device), local_rank)
    notes: list[str] = []
    amp = "off" if tc.amp is False else str(tc.amp)  # YAML reads a bare `off` as false
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise MedsynthError("train.amp", f"must be auto, off, bf16 or fp16, got {amp!r}")
    if amp == "auto":
        if dev.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "off"
            notes.append(f"amp auto -> {amp} (CUDA bf16 support: {amp == 'bf16'})")
        elif dev.type == "cpu":
            amp = "bf16" if _cpu_has_bf16() else "off"
            notes.append(f"amp auto -> {amp} (CPU AVX512-BF16/AMX: {amp == 'bf16'})")
        else:
            amp = "off"
            notes.append(f"amp auto -> off (not measured on {dev.type})")
    cl = _flag(tc.channels_last, "channels_last")
    if cl is None:
        cl = dev.type in ("cpu", "cuda") and int(spatial_dims) == 2
        notes.append(f"channels_last auto -> {'on' if cl else 'off'} (measured gain: 2D models on CPU and H100)")
    comp = _flag(tc.compile, "compile")
    if comp is None:
        comp = False
        notes.append("compile auto -> off (small CPU gain, minutes of compilation; H100 compile > 60 s)")
    fused = _flag(tc.fused_adam, "fused_adam")
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    has_fused = dev.type in _get_fused_kernels_supported_devices()
    if fused is None:
        fused = has_fused
        notes.append(f"fused_adam auto -> {fused} (fused Adam kernel for {dev.type}: {has_fused})")
    elif fused and not has_fused:
        notes.append(f"fused_adam requested but torch has no fused Adam for {dev.type}: using the foreach Adam")
        fused = False
    return Speed(dev, amp, bool(cl), bool(comp), bool(fused), tuple(notes))
