"""The ``Backbone`` protocol: what the trainer, the samplers and inference rely on in a network, stated once.
``build_backbone`` refuses a registered backbone that does not keep it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Backbone(Protocol):
    size_multiple: int
    """Every spatial side of the input must divide by this (a U-Net's 2^(levels - 1), a DiT's patch size); 1 for
    any size and for networks of vectors. Inference pads slices to it, validation pads whole scans."""
    cond_drop_prob: float
    """Probability with which training drops the condition (the unconditional branch classifier-free guidance
    needs); 0: none, and ``sampling.guidance_scale`` must stay 1."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        """The prediction (eps, x0 or v) for a batch ``x`` at timesteps ``t`` ([B]) under the condition ``cond``."""
        ...
