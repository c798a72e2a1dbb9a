"""What every sampler shares: its signature, warm starts, noise and the progress bar.

Every sampler is a function ``sampler(denoiser, x, timesteps, cond=None, generator=None, callback=None,
progress=False, **its own options)``: ``denoiser`` (``cdm4mi.diffusion.denoiser``) answers (x0, eps) at
``(x, t, cond)``; ``timesteps`` lists the times to visit, from the start down (timestep indices from
``sampling_timesteps`` for DDIM/DDPM, SDE times from ``sampling_times`` for PC/ODE); the sampler steps from
each to the next and denoises after the last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from tqdm.auto import tqdm

from cdm4mi.diffusion.schedule import NoiseSchedule, broadcast_to
from cdm4mi.diffusion.timesteps import previous_timesteps

SAMPLERS = ("ddim", "ddpm", "pc", "ode")  # ddim/ddpm over timestep indices, pc/ode over SDE time

# ``callback(step, t, x, x0)`` after each sampler step: the step's index, its time (a timestep index,
# or SDE time in [0, 1]), the new state and the current x0 estimate (for figures of the process).
StepCallback = Callable[[int, float, torch.Tensor, torch.Tensor], None]


def alpha_bar_like(schedule: NoiseSchedule, t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``abar_t`` in x's dtype, broadcasting against ``x``: a 0-dim tensor for one timestep, ``[B, 1, ...]``
    for one per item (``t = -1`` gives 1)."""
    return broadcast_to(schedule.alpha_bar(torch.as_tensor(t)), x)


def warm_start_top_up(schedule: NoiseSchedule, t_start: int | torch.Tensor,
                      input_noise_std: float | torch.Tensor) -> torch.Tensor:
    """Std (float64, per item for tensors) of the fresh noise that brings an input of noise std
    ``input_noise_std`` up to the noise of ``t_start``: ``sqrt((1 - abar)/abar - std^2)``, 0 when it has as much."""
    alpha_bar = schedule.alpha_bar(torch.as_tensor(t_start))
    noise_std = torch.as_tensor(input_noise_std, dtype=torch.float64, device=alpha_bar.device)
    return ((1 - alpha_bar) / alpha_bar - noise_std**2).clamp(min=0).sqrt()


def warm_start(
    schedule: NoiseSchedule, x_init: torch.Tensor, t_start: int | torch.Tensor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """The state at ``t_start`` (one timestep, or one per item ``[B]``) from an image ``x_init``.

    With ``noise`` this is ``q(x_t | x0 = x_init)`` (SDEdit). Without, ``x_init`` is taken to carry
    its own noise already (a low-dose scan): ``sqrt(abar) * x_init`` matches ``x_t`` of the clean
    image when the input noise std is ``sqrt((1 - abar)/abar)``; see
    ``NoiseSchedule.timestep_for_noise_std`` (and ``warm_start_top_up`` for an input with less).
    """
    alpha_bar = alpha_bar_like(schedule, t_start, x_init)
    x_t = alpha_bar.sqrt() * x_init
    if noise is not None:
        x_t = x_t + (1 - alpha_bar).sqrt() * noise
    return x_t


def step_pairs(timesteps: torch.Tensor, progress: bool, description: str) -> Iterator[tuple[int, int]]:
    """(t, t_next) pairs along the list, the last one's ``t_next`` -1, with a progress bar when asked."""
    pairs = list(zip(timesteps.tolist(), previous_timesteps(timesteps).tolist(), strict=True))
    return iter(tqdm(pairs, desc=description, disable=not progress, leave=False))


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device (as diffusers does)."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
