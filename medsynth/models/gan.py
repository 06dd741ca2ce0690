"""The original GAN (Goodfellow et al. 2014): multilayer perceptrons on flattened images.

Medical job: the baseline every report compares against. It has no notion of locality (every
pixel is an independent input of a dense layer), so whatever a convolutional variant gains over
it on fidelity or downstream AUROC is what the architecture buys.

Networks: G maps z through ``len(hidden)`` ReLU dense layers to ``prod(image_shape)`` outputs
and a tanh; D maps the flattened image through LeakyReLU(0.2) dense layers with dropout (the
paper used maxout units with dropout) to one logit. Hidden widths default to
``(8 * width, 16 * width)`` in G and the reverse in D (width 32: 256 and 512 units).
With ``num_classes > 0`` the one-hot label is concatenated to z and to D's input (the MLP
conditional GAN of Mirza & Osindero 2014); the convolutional conditional model is ``"cgan"``.

Loss: non-saturating ``-log D(G(z))`` for G by default (the paper's practical recommendation);
``params.g_loss: minimax`` uses the saturating ``log(1 - D(G(z)))`` the theory is written for.
3D volumes work but are flattened too: at 64³ the first layer alone has 262k x hidden weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsynth import losses
from medsynth.errors import MedsynthError
from medsynth.models.base import Batch, GANVariant, VariantParams, make_ema, StepInfo
from medsynth.models.registry import register_model


@dataclass
class GANParams(VariantParams):
    """``model.params`` of the MLP GAN.

    Attributes:
        g_loss: ``"nonsaturating"`` (default) or ``"minimax"``.
        hidden: hidden layer widths of G (D uses them reversed); empty = ``(8w, 16w)``.
        dropout: dropout probability in D's hidden layers.
        real_target: BCE target for real images (1.0 = the paper; 0.9 = one-sided smoothing).
    """

    g_loss: str = "nonsaturating"
    hidden: tuple[int, ...] = ()
    dropout: float = 0.3
    real_target: float = 1.0


class MLPGenerator(nn.Module):
    """z (+ one-hot label) -> dense ReLU layers -> ``prod(image_shape)`` -> tanh.

    Shapes: z ``(N, latent_dim)``, labels ``(N,)`` -> ``(N, *image_shape)`` in [-1, 1].
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, ...], hidden: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        layers: list[nn.Module] = []
        c = latent_dim + num_classes
        for h in hidden:
            layers += [nn.Linear(c, h), nn.ReLU(inplace=True)]
            c = h
        layers += [nn.Linear(c, math.prod(image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_classes > 0:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], 1)
        return self.net(z).view(z.shape[0], *self.image_shape)


class MLPDiscriminator(nn.Module):
    """Flattened image (+ one-hot label) -> dense LeakyReLU(0.2) + dropout layers -> logit.

    Shapes: ``(N, *image_shape)``, labels ``(N,)`` -> logits ``(N,)``.
    """

    def __init__(self, image_shape: tuple[int, ...], hidden: tuple[int, ...], num_classes: int = 0,
                 dropout: float = 0.3):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c = math.prod(image_shape) + num_classes
        for h in hidden:
            layers += [nn.Linear(c, h), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)]
            c = h
        layers.append(nn.Linear(c, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = x.flatten(1)
        if self.num_classes > 0:
            h = torch.cat([h, F.one_hot(labels, self.num_classes).to(h.dtype)], 1)
        return self.net(h).squeeze(1)


@register_model("gan")
class GAN(GANVariant):
    """MLP GAN: phases D then G, one update each per step; EMA generator for sampling."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.p = GANParams.from_dict(cfg.params, "gan")
        if self.p.g_loss not in ("nonsaturating", "minimax"):
            raise MedsynthError("model.params.g_loss",
                                f"gan: must be 'nonsaturating' or 'minimax', got {self.p.g_loss!r}")
        hidden = tuple(int(h) for h in self.p.hidden) or (8 * cfg.width, 16 * cfg.width)
        self.G = MLPGenerator(cfg.latent_dim, self.image_shape, hidden, self.num_classes)
        self.D = MLPDiscriminator(self.image_shape, hidden[::-1], self.num_classes, self.p.dropout)
        self.G_ema = make_ema(self.G) if cfg.ema_beta > 0 else None

    def loss(self, phase: str, batch: Batch, info: StepInfo):
        g_loss = losses.minimax_g_loss if self.p.g_loss == "minimax" else losses.bce_g_loss
        return self.adversarial_loss(phase, batch, lambda r, f: losses.bce_d_loss(r, f, self.p.real_target), g_loss)
