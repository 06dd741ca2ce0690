"""Adversarial losses and regularisers as pure functions (no ``.backward()`` inside).

All take logits/scores ``(N,)`` or ``(N, 1)`` and return scalar tensors.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def bce_d_loss(real_logits: Tensor, fake_logits: Tensor, real_target: float = 1.0) -> Tensor:
    """Discriminator BCE: real -> ``real_target`` (one-sided label smoothing when < 1), fake -> 0."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_target))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def bce_g_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss ``-log D(G(z))``."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def wgan_d_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Critic loss ``E[D(fake)] - E[D(real)]``."""
    return fake_scores.mean() - real_scores.mean()


def wgan_g_loss(fake_scores: Tensor) -> Tensor:
    """Generator loss ``-E[D(fake)]``."""
    return -fake_scores.mean()


def drift_penalty(real_scores: Tensor) -> Tensor:
    """``E[D(real)^2]``: keeps critic outputs near zero (Karras et al. 2018)."""
    return real_scores.pow(2).mean()


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, generator=None) -> Tensor:
    """WGAN-GP penalty ``E[(||grad D(x_hat)|| - 1)^2]`` on random interpolates (Gulrajani et al. 2017).

    Args:
        critic: maps images to scores; called once on the interpolates.
        real, fake: ``(N, C, *S)`` images; ``fake`` should be detached.
    """
    n = real.shape[0]
    eps = torch.rand((n,) + (1,) * (real.dim() - 1), generator=generator, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()
