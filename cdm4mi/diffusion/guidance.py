"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any network ``model(x, t, cond)``
(``cdm4mi.diffusion.denoiser.guided`` applies it to a denoiser's network).

``guided = uncond + w * (cond - uncond)``, where ``uncond = model(x, t, None)`` is the network's null-condition
branch (trained by dropping the condition with ``network.cond_drop_prob``). The combination is applied to
the raw network output: its weights sum to one and every eps/x0/v conversion is affine in the output for
a given ``x_t``, so guiding x0 or v predictions is the same as guiding eps. ``w = 1`` is the conditional
model itself (no second call); ``w = 0`` the unconditional one; ``w > 1`` sharpens towards the condition.
"""

from __future__ import annotations

import torch

from cdm4mi.diffusion.objective import NetworkFn


def classifier_free_guidance(model: NetworkFn, guidance_scale: float) -> NetworkFn:
    """``model`` with its condition amplified by ``guidance_scale`` (returned unchanged for 1)."""
    if guidance_scale == 1.0:
        return model

    def guided(x: torch.Tensor, t: torch.Tensor, cond: object) -> torch.Tensor:
        if cond is None:
            raise ValueError("sampling.guidance_scale: guidance needs a condition, got cond=None")
        conditional = model(x, t, cond)
        unconditional = model(x, t, None)
        return unconditional + guidance_scale * (conditional - unconditional)

    return guided
