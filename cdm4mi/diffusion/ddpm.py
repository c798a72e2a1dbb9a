"""DDPM ancestral sampling (Ho et al. 2020), also over strided sub-sequences of timesteps.

From ``t`` to ``t_prev`` the step uses the effective ``beta = 1 - abar_t / abar_prev``, so a
sub-sequence is the exact ancestral sampler of the coarser Markov chain (Nichol & Dhariwal 2021):
mean ``sqrt(abar_prev) beta / (1 - abar_t) * x0 + sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t) * x_t``,
variance ``(1 - abar_prev) / (1 - abar_t) * beta`` (``fixed_small``) or ``beta`` (``fixed_large``).
"""

from __future__ import annotations

from typing import Literal

import torch

from cdm4mi.diffusion.denoiser import ScheduleDenoiser
from cdm4mi.diffusion.sampling import StepCallback, alpha_bar_like, noise_like, step_pairs
from cdm4mi.diffusion.schedule import NoiseSchedule
from cdm4mi.registry import checked_options

VARIANCES = ("fixed_small", "fixed_large")
Variance = Literal[VARIANCES]


def ddpm_step(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: NoiseSchedule,
    noise: torch.Tensor | None,
    variance: str = "fixed_small",
) -> torch.Tensor:
    """One ancestral step: a draw from ``q(x_prev | x_t, x0)``; no noise is added on the last step."""
    alpha_bar = alpha_bar_like(schedule, t, x_t)
    alpha_bar_prev = alpha_bar_like(schedule, t_prev, x_t)
    beta = 1 - alpha_bar / alpha_bar_prev
    mean = (alpha_bar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar)
    if t_prev < 0:
        return mean
    if noise is None:
        raise ValueError("ddpm_step: a step to t_prev >= 0 needs noise")
    var = beta if variance == "fixed_large" else (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    return mean + var.sqrt() * noise


@checked_options("sampling")
@torch.no_grad()
def ddpm_sample(
    denoiser: ScheduleDenoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    cond: object = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    variance: Variance = "fixed_small",
) -> torch.Tensor:
    """Ancestral sampling from ``x`` (prior noise or the warm-start state at ``timesteps[0]``) over
    ``timesteps`` (every timestep, or a stride of them: ``sampling_timesteps``)."""
    for step, (t, t_prev) in enumerate(step_pairs(timesteps, progress, "DDPM")):
        x0, _ = denoiser(x, t, cond)
        noise = noise_like(x, generator) if t_prev >= 0 else None
        x = ddpm_step(x0, x, t, t_prev, denoiser.schedule, noise, variance)
        if callback is not None:
            callback(step, t, x, x0)
    return x
