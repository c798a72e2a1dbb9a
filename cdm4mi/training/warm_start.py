"""Denoising by a warm start: the low-dose input ``y = x0 + n`` (model units, noise std ``sigma``) scaled by
``sqrt(abar_t)`` is distributed like the forward-process state ``x_t`` of the clean image when
``(1 - abar_t) / abar_t = sigma^2``, so sampling starts at that ``t`` instead of at pure noise (few steps, no
structure invented from the prior). A later ``t_start`` is topped up with fresh noise of variance
``(1 - abar)/abar - sigma^2``. ``cdm4mi denoise`` (``cdm4mi.inference.denoise``) and the validation in HU while
training (``cdm4mi.training.validation``) both denoise this way.
"""

from __future__ import annotations

from typing import Any

import torch

from cdm4mi.diffusion import warm_start
from cdm4mi.diffusion.sampling import warm_start_top_up
from cdm4mi.training.module import DiffusionModule


def warm_start_timestep(module: DiffusionModule, sigma: float, floor: float = 1.0) -> int:
    """The warm start for input noise ``sigma`` (model units): the timestep whose noise std is
    ``sampling.warm_start_factor`` (at least ``floor``) times ``sigma``, within the timesteps it was trained on."""
    t_start = module.schedule.timestep_for_noise_std(sigma * max(module.config.sampling.warm_start_factor, floor))
    limit = module.objective.max_train_timestep
    return t_start if limit is None else min(t_start, limit)


class WarmStartSampler:
    """Maps conditioning images (model units) to denoised samples with one trained model.

    ``vector`` (``[vector_dim]``, the scan's encoded metadata) is added to the condition of every batch,
    so callers that pass image batches only (slice batches, MONAI's sliding-window inferer) need not.
    """

    def __init__(self, module: DiffusionModule, steps: int | None, eta: float | None, t_start: int,
                 input_noise_std: float, generator: torch.Generator, vector: torch.Tensor | None = None):
        self.module, self.t_start, self.generator, self.vector = module, t_start, generator, vector
        self.overrides: dict[str, Any] = {"steps": min(steps or module.config.sampling.steps, t_start + 1)}
        if eta is not None:
            self.overrides["eta"] = eta
        self.top_up_std = float(warm_start_top_up(module.schedule, t_start, input_noise_std))

    def __call__(self, cond: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """Denoised samples of the centre slices of ``cond``: an image stack [B, 2k+1, ...], or a batch's
        ``{"image": stack, "vector": [B, V]}`` carrying its own metadata vectors."""
        image, vector = (cond["image"], cond.get("vector")) if isinstance(cond, dict) else (cond, None)
        context = image.shape[1] // 2
        noisy = image[:, context : context + 1]  # the slice itself (the centre channel for 2.5D)
        if self.top_up_std > 0:
            noise = torch.randn(noisy.shape, generator=self.generator, device=self.generator.device).to(noisy)
            noisy = noisy + self.top_up_std * noise
        x_t = warm_start(self.module.schedule, noisy, self.t_start)
        if vector is None and self.vector is not None:
            vector = self.vector.to(image).expand(image.shape[0], -1)
        cond = image if vector is None else {"image": image, "vector": vector}
        return self.module.sample(x_t, cond, t_start=self.t_start, generator=self.generator, **self.overrides)
