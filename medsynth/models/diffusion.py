"""Denoising diffusion (DDPM training, DDIM sampling): the non-adversarial comparator of the GAN family.

Medical job: a likelihood-based generator for radiographs and CT slices (2D) or small CT volumes
(3D), optionally class-conditional (nodule absent/present), that does not mode-collapse and
needs no discriminator. It is the reference a GAN's fidelity and diversity are compared with at
equal budget; it samples far more slowly (one network pass per sampling step).

Built from MONAI core's generative modules, no network of its own:
    * ``monai.networks.nets.DiffusionModelUNet``: the noise predictor ``eps(x_t, t[, y])`` with a
      sinusoidal timestep embedding; class conditioning through its class embedding
      (``num_class_embeds = num_classes + 1``: the extra row is the "no label" class of
      classifier-free guidance). MONAI's middle block always has self-attention at the lowest
      resolution; ``attention_levels`` adds it to the levels' blocks.
    * ``monai.networks.schedulers.DDPMScheduler``: the training noise schedule (cosine by
      default; ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, ``add_noise``).
    * ``monai.networks.schedulers.DDIMScheduler``: deterministic sampling (eta = 0) in
      ``sample_steps`` steps from Gaussian noise, predicted ``x_0`` clipped to [-1, 1] each step.

Training (one phase ``U``, Adam with ``model.lr_g`` and ``model.betas``): images ``x_0`` in
[-1, 1], timesteps uniform in ``0..num_train_timesteps - 1``, loss = MSE between the true and the
predicted noise (:func:`medsynth.losses.noise_prediction_loss`, epsilon prediction). With
``cond_drop > 0`` a conditional model sees the "no label" class for that fraction of the batch,
so ``guidance`` (classifier-free guidance weight ``w``: ``eps_u + w (eps_c - eps_u)``) can be
used when sampling (``guidance = 1``: the conditional prediction alone, one pass per step).

Contract: one phase, no discriminator (``supports_d_logits = False``: the membership attack on D
is skipped, the distance attack still runs), no augmentation (there is no D input to augment;
augmenting the training images would put the augmentations into the samples), no DP phase.
The latents of :meth:`~medsynth.models.base.GANVariant.sample` are the initial noise, shaped like
the images; the same latents give the same images. The state_dict holds the UNet and its EMA
copy; the schedules are constants of the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medsynth import losses
from medsynth.config import Choices, Range, check_fields
from medsynth.errors import MedsynthError
from medsynth.models.augment import split_params
from medsynth.models.base import Batch, GANVariant, Phase, StepInfo, VariantParams, ema_beta, ema_update, make_ema
from medsynth.models.registry import register_model

#: Noise schedules of MONAI's ``NoiseSchedules`` (``beta_start``/``beta_end`` apply to all but ``cosine``).
SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")

_WHERE = "model.params"
#: Ranges and choices of :class:`DiffusionParams` beyond their types (checked like ``config.RULES``).
RULES = {
    f"{_WHERE}.channels": Range(1),
    f"{_WHERE}.num_res_blocks": Range(0),
    f"{_WHERE}.head_channels": Range(1),
    f"{_WHERE}.norm_groups": Range(1),
    f"{_WHERE}.num_train_timesteps": Range(2),
    f"{_WHERE}.schedule": Choices(SCHEDULES),
    f"{_WHERE}.beta_start": Range(0, 1, low_open=True, high_open=True),
    f"{_WHERE}.beta_end": Range(0, 1, low_open=True, high_open=True),
    f"{_WHERE}.sample_steps": Range(1),
    f"{_WHERE}.sample_batch": Range(1),
    f"{_WHERE}.cond_drop": Range(0, 1, high_open=True),
    f"{_WHERE}.guidance": Range(0),
}


@dataclass
class DiffusionParams(VariantParams):
    """``model.params`` of the diffusion model.

    Attributes:
        channels: UNet channels per level, from full resolution down (each level after the first
            halves the resolution); ``None`` = ``model.width`` x (1, 2, 4).
        attention_levels: self-attention in each level's blocks; ``None`` = at levels of at most
            16² (2D) or 8³ (3D) positions (attention at 32² cost 5-12 convolutions on 2 CPU cores).
            The middle block (lowest resolution) always has attention (MONAI's UNet).
        num_res_blocks: residual blocks per level on the way down (one more on the way up), one
            number for all levels or one per level.
        head_channels: channels per attention head (fewer at levels with fewer channels).
        norm_groups: GroupNorm groups; ``None`` = the largest of 8, 4, 2, 1 dividing every level's channels.
        num_train_timesteps: diffusion steps T of the training schedule.
        schedule: noise schedule (:data:`SCHEDULES`). ``cosine`` (Nichol & Dhariwal 2021): on the
            phantom radiographs at 32² after 500 steps x 32 it gave chest-shaped samples where
            ``linear_beta`` (DDPM's 1e-4..0.02) still gave noise textures.
        beta_start: first beta of the schedule (not ``cosine``).
        beta_end: last beta of the schedule (not ``cosine``).
        sample_steps: DDIM steps per sample (eta = 0: deterministic given the initial noise).
        sample_batch: images denoised together while sampling (bounds memory; 3D volumes).
        cond_drop: fraction of a conditional model's training images shown with the "no label"
            class (classifier-free guidance); 0 = off.
        guidance: classifier-free guidance weight w at sampling (1 = conditional prediction only;
            other values need ``cond_drop > 0`` and cost two UNet passes per step).
    """

    channels: list[int] | None = None
    attention_levels: list[bool] | None = None
    num_res_blocks: int | list[int] = 1
    head_channels: int = 32
    norm_groups: int | None = None
    num_train_timesteps: int = 1000
    schedule: str = "cosine"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    sample_steps: int = 50
    sample_batch: int = 32
    cond_drop: float = 0.0
    guidance: float = 1.0


def _problem(name: str, text: str) -> MedsynthError:
    return MedsynthError(f"{_WHERE}.{name}", f"diffusion: {text}")


def unet_settings(p: DiffusionParams, width: int, size: int, spatial_dims: int) -> dict:
    """The keyword arguments of ``DiffusionModelUNet`` (beyond dims, in/out channels and classes)
    for ``model.params`` ``p``, checked against each other and the image size.

    Raises:
        MedsynthError: one line naming the parameter at fault.
    """
    chans = [int(c) for c in p.channels] if p.channels is not None else [width, 2 * width, 4 * width]
    levels = len(chans)
    if levels < 1:
        raise _problem("channels", "need at least one level")
    lowest = size >> (levels - 1)
    if size % 2 ** (levels - 1) or lowest < 2:
        raise _problem("channels", f"{levels} levels halve {size} px {levels - 1} times: the lowest level "
                                   "must keep at least 2 px (use fewer levels)")
    limit = 16 if spatial_dims == 2 else 8
    attn = ([bool(a) for a in p.attention_levels] if p.attention_levels is not None
            else [size >> i <= limit for i in range(levels)])
    if len(attn) != levels:
        raise _problem("attention_levels", f"need one entry per level ({levels}), got {len(attn)}")
    blocks = [int(p.num_res_blocks)] * levels if isinstance(p.num_res_blocks, int) else [int(b) for b in p.num_res_blocks]
    if len(blocks) != levels:
        raise _problem("num_res_blocks", f"need one number or one per level ({levels}), got {len(blocks)}")
    groups = int(p.norm_groups) if p.norm_groups is not None else next(g for g in (8, 4, 2, 1)
                                                                        if all(c % g == 0 for c in chans))
    if any(c % groups for c in chans):
        raise _problem("norm_groups", f"{groups} groups do not divide every level's channels {chans}")
    heads = [min(int(p.head_channels), c) for c in chans]
    for i, (c, h) in enumerate(zip(chans, heads)):
        if (attn[i] or i == levels - 1) and c % h:
            raise _problem("head_channels", f"{h} does not divide the {c} channels of attention level {i}")
    return {"channels": tuple(chans), "attention_levels": tuple(attn), "num_res_blocks": tuple(blocks),
            "norm_num_groups": groups, "num_head_channels": tuple(heads)}


def _schedulers(p: DiffusionParams) -> tuple[nn.Module, nn.Module]:
    """``(DDPMScheduler, DDIMScheduler)`` of the same schedule, the DDIM one set to ``sample_steps``.
    Built on the CPU whatever device is current (a config check builds the model on ``meta``)."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    kw = {"num_train_timesteps": int(p.num_train_timesteps), "schedule": p.schedule, "clip_sample": True,
          "prediction_type": "epsilon"}
    if p.schedule != "cosine":
        kw.update(beta_start=float(p.beta_start), beta_end=float(p.beta_end))
    with torch.device("cpu"):
        train = DDPMScheduler(**kw)
        sample = DDIMScheduler(**kw)
        sample.set_timesteps(int(p.sample_steps))
    return train, sample


@register_model("diffusion")
class Diffusion(GANVariant):
    """Denoising diffusion (MONAI UNet, DDPM noise schedule, DDIM sampling): one phase U, no D; EMA UNet."""

    #: No discriminator: nothing scores images for the membership attack.
    supports_d_logits = False

    def __init__(self, cfg):
        super().__init__(cfg)
        if self.augment_pipe is not None:
            raise MedsynthError(f"{_WHERE}.augment", "diffusion has no discriminator whose input could be augmented "
                                                     "(augmenting its training images would put the augmentations "
                                                     "into the samples): use none")
        self.p = DiffusionParams.from_dict(cfg.params, "diffusion")
        check_fields(DiffusionParams, split_params(cfg.params)[1], _WHERE, RULES)
        p = self.p
        if p.beta_end <= p.beta_start and p.schedule != "cosine":
            raise _problem("beta_end", f"must exceed beta_start ({p.beta_start:g}), got {p.beta_end:g}")
        if p.sample_steps > p.num_train_timesteps:
            raise _problem("sample_steps", f"at most num_train_timesteps ({p.num_train_timesteps}), got {p.sample_steps}")
        if p.guidance != 1.0 and (self.num_classes <= 0 or p.cond_drop <= 0):
            raise _problem("guidance", "classifier-free guidance needs a conditional model trained with cond_drop > 0 "
                                       "(the 'no label' class is otherwise never trained)")
        from monai.networks.nets import DiffusionModelUNet

        self.unet = DiffusionModelUNet(
            spatial_dims=self.spatial_dims, in_channels=int(cfg.channels), out_channels=int(cfg.channels),
            num_class_embeds=(self.num_classes + 1) if self.num_classes > 0 else None,
            **unet_settings(p, int(cfg.width), int(cfg.size), self.spatial_dims))
        self.unet_ema = make_ema(self.unet) if cfg.ema_beta > 0 else None
        # constants of the config (no parameters or buffers: nothing of them in the state_dict)
        self.noise_schedule, self.sampler = _schedulers(p)

    # ---- training -----------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        """One phase ``U``: the UNet, Adam with ``model.lr_g`` and ``model.betas``."""
        return [Phase("U", ("unet",), self.cfg.lr_g, tuple(self.cfg.betas))]

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        """Noise-prediction MSE at uniform timesteps on ``batch.images`` ``(N, C, *S)`` in [-1, 1]."""
        if phase != "U":
            raise KeyError(phase)
        x0 = batch.images
        labels = self.class_labels(batch.labels)
        n = x0.shape[0]
        t = torch.randint(0, int(self.p.num_train_timesteps), (n,), device=x0.device)
        noise = torch.randn_like(x0)
        xt = self.noise_schedule.add_noise(x0, noise, t)
        if labels is not None and self.p.cond_drop > 0:
            drop = torch.rand(n, device=x0.device) < self.p.cond_drop
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        loss = losses.noise_prediction_loss(self.unet(xt, t, class_labels=labels), noise)
        return loss, {"loss/U": loss.detach()}

    def on_step_end(self, info: StepInfo) -> None:
        """EMA of the UNet's weights (``model.ema_beta`` with the warm-up of :func:`ema_beta`)."""
        super().on_step_end(info)
        if self.unet_ema is not None:
            ema_update(self.unet_ema, self.unet, ema_beta(self.cfg.ema_beta, int(info.step)))

    # ---- sampling -----------------------------------------------------------------------------
    def generator(self, ema: bool = True) -> nn.Module:
        """The UNet used for sampling: the EMA copy when present and asked for."""
        return self.unet_ema if (ema and self.unet_ema is not None) else self.unet

    def latent(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """The initial noise of ``n`` samples: standard normal ``(n, C, *S)`` (the images' shape)."""
        return torch.randn((n,) + self.image_shape, generator=generator, device=device)

    def generate(self, z: Tensor, labels: Tensor | None, *, ema: bool = True) -> Tensor:
        """DDIM sampling (eta = 0, ``sample_steps`` steps, no gradients) from the initial noise ``z``
        ``(N, C, *S)`` (and labels ``(N,)``) to images ``(N, C, *S)`` in [-1, 1], on the UNet's
        device; the same ``z`` and labels give the same images."""
        net = self.generator(ema)
        labels = self.class_labels(labels)
        dev = next(net.parameters()).device
        step = int(self.p.sample_batch)
        out = []
        with torch.no_grad():
            for i in range(0, z.shape[0], step):
                lab = None if labels is None else labels[i: i + step].to(dev)
                out.append(self._denoise(net, z[i: i + step].to(dev, torch.float32), lab))
        if not out:
            return torch.empty((0,) + self.image_shape, device=dev)
        return torch.cat(out).clamp(-1, 1)

    def _denoise(self, net: nn.Module, x: Tensor, labels: Tensor | None) -> Tensor:
        """The DDIM chain from noise ``x`` ``(n, C, *S)`` at the last training timestep to step 0."""
        guided = labels is not None and self.p.guidance != 1.0
        if guided:
            both = torch.cat([labels, torch.full_like(labels, self.num_classes)])
        for t in self.sampler.timesteps.tolist():
            if guided:
                tt = torch.full((2 * x.shape[0],), t, dtype=torch.long, device=x.device)
                cond, uncond = net(torch.cat([x, x]), tt, class_labels=both).float().chunk(2)
                eps = uncond + self.p.guidance * (cond - uncond)
            else:
                tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
                eps = net(x, tt, class_labels=labels).float()
            x, _ = self.sampler.step(eps, t, x)
        return x

