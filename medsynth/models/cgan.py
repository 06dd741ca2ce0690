"""Conditional GAN (Mirza & Osindero 2014), convolutional.

Medical job: tumour-present vs tumour-absent generation on small images (label 1 = nodule
present), e.g. to rebalance a detection training set towards the rare positive class.

As in the paper the class enters both networks as a **one-hot vector**: concatenated to z in G
(``z ++ onehot(y)`` feeds the first dense layer of a DCGAN generator) and, in D, as one-hot
label *maps* appended to the image as extra channels (``params.d_cond: channel``; ``projection``
is available for comparison). This is exactly the conditioning that DCGAN's class-conditional
mode uses by default since it measured best (``reports/recipe/``), so CGAN is that model with
the condition made mandatory: a DCGAN subclass rather than a second copy of the same code.
"""

from __future__ import annotations

from medsynth.errors import MedsynthError
from medsynth.models.dcgan import DCGAN
from medsynth.models.registry import register_model


@register_model("cgan")
class CGAN(DCGAN):
    """Conditional DCGAN: phases D then G; the class (one-hot) conditions both networks."""

    #: Conditional by definition (use dcgan for unconditional training).
    requires_labels = True

    def __init__(self, cfg):
        super().__init__(cfg)
        if self.p.g_cond != "onehot":
            raise MedsynthError("model.params.g_cond", "cgan concatenates a one-hot label to z (g_cond: onehot)")
