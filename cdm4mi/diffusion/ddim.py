"""DDIM sampling and inversion (Song, Meng & Ermon 2021) as plain functions of a denoiser.

``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z`` with
``sigma = eta * sqrt((1 - abar_prev)/(1 - abar_t)) * sqrt(1 - abar_t/abar_prev)``:
``eta = 0`` is the deterministic ODE sampler, ``eta = 1`` has DDPM's posterior variance.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pydantic
import torch

from cdm4mi.diffusion.denoiser import ScheduleDenoiser
from cdm4mi.diffusion.sampling import StepCallback, alpha_bar_like, noise_like, step_pairs
from cdm4mi.diffusion.schedule import NoiseSchedule
from cdm4mi.registry import checked_options


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


Eta = Annotated[float, pydantic.Field(ge=0)]  # 0: deterministic DDIM; 1: DDPM's posterior variance


@checked_options("sampling")
@torch.no_grad()
def ddim_sample(
    denoiser: ScheduleDenoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    cond: object = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    eta: Eta = 0.0,
) -> torch.Tensor:
    """Run DDIM from ``x`` (prior noise, or the warm-start state at ``timesteps[0]``) over ``timesteps``
    (``sampling_timesteps``) to a clean sample; noise for ``eta > 0`` comes from ``generator``; ``callback``
    sees every step. Returns the final x0 estimate, shaped like ``x``.
    """
    for step, (t, t_prev) in enumerate(step_pairs(timesteps, progress, "DDIM")):
        x0, eps = denoiser(x, t, cond)
        noise = noise_like(x, generator) if eta > 0 else None
        x = ddim_step(x0, eps, t, t_prev, denoiser.schedule, eta, noise)
        if callback is not None:
            callback(step, t, x, x0)
    return x


@torch.no_grad()
def ddim_invert(
    denoiser: ScheduleDenoiser,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    cond: object = None,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM run backwards: clean ``x0`` -> the state at ``timesteps[0]``.

    Each step from ``t_prev`` up to ``t`` reuses the eps predicted at ``t_prev`` (the standard
    approximation), so ``ddim_sample(ddim_invert(x0))`` over the same timesteps returns ``x0`` up to
    discretization error. Clipping x0 (``clip_x0``) does not apply: inversion never clips.
    """
    pairs = list(step_pairs(timesteps, progress, "DDIM inversion"))
    unclipped = dataclasses.replace(denoiser, clip_x0=None)
    x = x0
    for t, t_prev in reversed(pairs):
        # The clean end point (t_prev = -1) has no timestep of its own: ask at the first noisy one.
        query_t = t if t_prev < 0 else t_prev
        x0_estimate, eps = unclipped(x, query_t, cond)
        if t_prev < 0:
            x0_estimate = x
        x = ddim_step(x0_estimate, eps, t_prev, t, denoiser.schedule)
    return x
