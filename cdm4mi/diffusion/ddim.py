"""DDIM sampling and inversion (Song, Meng & Ermon 2021) as plain functions of a denoiser.

``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z`` with
``sigma = eta * sqrt((1 - abar_prev)/(1 - abar_t)) * sqrt(1 - abar_t/abar_prev)``:
``eta = 0`` is the deterministic ODE sampler, ``eta = 1`` has DDPM's posterior variance.
"""

from __future__ import annotations

import torch

from cdm4mi.diffusion.sampling import (
    Denoiser,
    StepCallback,
    alpha_bar_like,
    noise_like,
    predict_x0_eps,
    step_pairs,
)
from cdm4mi.diffusion.schedule import NoiseSchedule
from cdm4mi.diffusion.timesteps import sampling_timesteps


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update from ``t`` to ``t_prev`` given the (x0, eps) estimates at ``t``."""
    alpha_bar = alpha_bar_like(schedule, t, x0)
    alpha_bar_prev = alpha_bar_like(schedule, t_prev, x0)
    if eta == 0:
        return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps
    if noise is None:
        raise ValueError("ddim_step: eta > 0 needs noise")
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt()
    return alpha_bar_prev.sqrt() * x0 + direction * eps + sigma * noise


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    num_steps: int = 50,
    parameterization: str = "eps",
    cond: object = None,
    eta: float = 0.0,
    timestep_spacing: str = "leading",
    t_start: int | None = None,
    clip_x0: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run DDIM from ``x`` (prior noise, or the warm-start state at ``t_start``) to a clean sample.

    ``model(x_t, t, cond)`` returns the ``parameterization`` prediction for a batch; noise for
    ``eta > 0`` comes from ``generator``; ``callback`` sees every step. Returns the final x0 estimate,
    shaped like ``x``.
    """
    if eta < 0:
        raise ValueError(f"sampling.eta: must be >= 0, got {eta}")
    timesteps = sampling_timesteps(schedule.timesteps, num_steps, timestep_spacing, t_start)
    for step, (t, t_prev) in enumerate(step_pairs(timesteps, progress, "DDIM")):
        x0, eps = predict_x0_eps(model, x, t, cond, schedule, parameterization, clip_x0)
        noise = noise_like(x, generator) if eta > 0 else None
        x = ddim_step(x0, eps, t, t_prev, schedule, eta, noise)
        if callback is not None:
            callback(step, t, x, x0)
    return x


@torch.no_grad()
def ddim_invert(
    model: Denoiser,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    num_steps: int = 50,
    parameterization: str = "eps",
    cond: object = None,
    timestep_spacing: str = "leading",
    t_start: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM run backwards: clean ``x0`` -> the state at the first sampling timestep.

    Each step from ``t_prev`` up to ``t`` reuses the eps predicted at ``t_prev`` (the standard
    approximation), so ``ddim_sample(ddim_invert(x0))`` returns ``x0`` up to discretization error.
    """
    timesteps = sampling_timesteps(schedule.timesteps, num_steps, timestep_spacing, t_start)
    pairs = list(step_pairs(timesteps, progress, "DDIM inversion"))
    x = x0
    for t, t_prev in reversed(pairs):
        # The clean end point (t_prev = -1) has no timestep of its own: ask at the first noisy one.
        query_t = t if t_prev < 0 else t_prev
        x0_estimate, eps = predict_x0_eps(model, x, query_t, cond, schedule, parameterization)
        if t_prev < 0:
            x0_estimate = x
        x = ddim_step(x0_estimate, eps, t_prev, t, schedule)
    return x
