"""Adversarial losses and regularisers, and the diffusion noise-prediction loss, as pure functions
(no ``.backward()`` inside).

The adversarial ones take logits/scores ``(N,)`` or ``(N, 1)``; all return scalar tensors.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def bce_real_loss(real_logits: Tensor, real_target: float = 1.0) -> Tensor:
    """The real half of the discriminator BCE: ``real_logits`` -> ``real_target`` (one-sided label
    smoothing when < 1)."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_target))


def bce_fake_loss(fake_logits: Tensor) -> Tensor:
    """The fake half of the discriminator BCE: ``fake_logits`` -> 0."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def bce_d_loss(real_logits: Tensor, fake_logits: Tensor, real_target: float = 1.0) -> Tensor:
    """Discriminator BCE: real -> ``real_target`` (one-sided label smoothing when < 1), fake -> 0."""
    return bce_real_loss(real_logits, real_target) + bce_fake_loss(fake_logits)


def bce_g_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss ``-log D(G(z))``."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def logistic_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """StyleGAN's logistic discriminator loss ``E[softplus(D(fake))] + E[softplus(-D(real))]`` (the
    BCE with targets 1/0, written with softplus)."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def logistic_g_loss(fake_logits: Tensor) -> Tensor:
    """StyleGAN's non-saturating generator loss ``E[softplus(-D(G(z)))]``."""
    return F.softplus(-fake_logits).mean()


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


def wgan_gp_d_loss(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, real_scores: Tensor,
                   fake_scores: Tensor, *, gp_weight: float, drift_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """The WGAN-GP critic loss with drift (Gulrajani et al. 2017; Karras et al. 2018):
    ``E[D(fake)] - E[D(real)] + gp_weight * GP + drift_weight * E[D(real)^2]``.

    Args:
        critic: maps images to scores (for the gradient penalty on interpolates).
        real, fake: ``(N, C, *S)`` images the critic scored (augmented; ``fake`` made under no_grad).
        real_scores, fake_scores: the critic's scores ``(N,)`` of ``real`` and ``fake``.
    Returns:
        ``(loss, w, gp)``: the scalar loss, the critic term ``E[D(fake)] - E[D(real)]`` (minus the
        Wasserstein estimate) and the unweighted gradient penalty.
    """
    w = wgan_d_loss(real_scores, fake_scores)
    gp = gradient_penalty(critic, real, fake)
    return w + gp_weight * gp + drift_weight * drift_penalty(real_scores), w, gp


def r1_penalty(real_logits: Tensor, real: Tensor) -> Tensor:
    """R1 ``E[||grad D(x)||^2]`` on real images (Mescheder et al. 2018), unweighted.

    Args:
        real_logits: D's outputs ``(N,)`` computed from ``real``.
        real: ``(N, C, *S)`` images with ``requires_grad`` set before D saw them.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


# ---- hinge, least-squares, minimax, cycle / identity, orthogonal regularisation ----------------


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge discriminator loss ``E[relu(1 - D(real))] + E[relu(1 + D(fake))]`` (SAGAN, BigGAN)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Hinge generator loss ``-E[D(fake)]``."""
    return -fake_logits.mean()


def minimax_g_loss(fake_logits: Tensor) -> Tensor:
    """The original (saturating) generator loss ``E[log(1 - D(G(z)))]`` (Goodfellow et al. 2014),
    minimised by G; ``log(1 - sigmoid(l)) = -softplus(l)``."""
    return -F.softplus(fake_logits).mean()


def lsgan_d_term(scores: Tensor, target: float) -> Tensor:
    """One half of the least-squares discriminator loss ``0.5 E[(D(x) - target)^2]`` (Mao et al.
    2017): target 1 for real, 0 for fake images. Scores of any shape (e.g. PatchGAN maps)."""
    return 0.5 * (scores - target).pow(2).mean()


def lsgan_g_loss(fake_scores: Tensor) -> Tensor:
    """Least-squares generator loss ``E[(D(fake) - 1)^2]``."""
    return (fake_scores - 1.0).pow(2).mean()


def l1_loss(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference: CycleGAN's cycle-consistency ``|G_BA(G_AB(a)) - a|`` and identity
    ``|G_AB(b) - b|`` terms."""
    return (a - b).abs().mean()


def orthogonal_regulariser(weights: list[Tensor]) -> Tensor:
    """BigGAN's orthogonal regularisation ``sum_W ||W W^T * (1 - I)||_F^2`` with each weight
    reshaped to ``(out, -1)``: pushes filters towards orthogonality without constraining their norms
    (Brock et al. 2019, eq. 3), which makes G amenable to the truncation trick."""
    total = weights[0].new_zeros(()) if weights else torch.zeros(())
    for w in weights:
        m = w.flatten(1)
        gram = m @ m.t()
        total = total + (gram * (1.0 - torch.eye(gram.shape[0], device=w.device, dtype=w.dtype))).pow(2).sum()
    return total


def noise_prediction_loss(predicted_noise: Tensor, noise: Tensor) -> Tensor:
    """Denoising diffusion's "simple" loss (Ho et al. 2020, eq. 14): the mean squared error
    between the noise ``epsilon`` added to the images and the network's prediction of it, both
    ``(N, C, *S)``; computed in float32 (under autocast the prediction may be bf16/fp16)."""
    return F.mse_loss(predicted_noise.float(), noise.float())
