"""The denoiser: a network wrapped once with its parameterization and its noise process, so that every sampler
asks it one question, "the (x0, eps) estimates at (x, t, cond)?" (k-diffusion's ``Denoiser`` wrappers, EDM's
``*Precond`` classes). Samplers never see a parameterization, a schedule argument or a network convention.

* ``ScheduleDenoiser``: discrete time, ``t`` a timestep index of a ``NoiseSchedule``; the network sees
  ``(x_t, t)``. DDIM, DDPM and DDIM inversion take one.
* ``SDEDenoiser``: continuous time, ``t`` an SDE time in ``[t_min, 1]``; the network sees
  ``(c_in x_t, network_time(t))`` (the convention of ``cdm4mi.diffusion.sde``). PC, the probability-flow ODE
  and ODE encoding take one.
* ``guided(denoiser, w)``: the same denoiser with classifier-free guidance of weight ``w``.

A network is any callable ``network(x, t, cond) -> output`` (``NetworkFn``): a backbone, or a test oracle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cdm4mi.diffusion.guidance import classifier_free_guidance
from cdm4mi.diffusion.objective import (
    NetworkFn,
    check_parameterization,
    eps_from_x0,
    split_prediction,
    split_with_coefficients,
)
from cdm4mi.diffusion.schedule import NoiseSchedule
from cdm4mi.diffusion.sde import SDE, check_sde_parameterization, scaled_coefficients


@dataclass(frozen=True, eq=False)
class ScheduleDenoiser:
    """``network`` predicting ``parameterization`` (eps / x0 / v) of ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``
    at timestep indices of ``schedule``. ``clip_x0`` clamps the x0 estimate and re-derives eps from it."""

    network: NetworkFn
    schedule: NoiseSchedule
    parameterization: str = "eps"
    clip_x0: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_parameterization(self.parameterization)

    def __call__(self, x: torch.Tensor, t: int | torch.Tensor, cond: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) at timestep ``t``: one index for the whole batch, or one per sample ([B])."""
        t_batch = torch.as_tensor(t, dtype=torch.long, device=x.device).expand(x.shape[0])
        output = self.network(x, t_batch, cond).to(x.dtype)
        x0, eps = split_prediction(self.parameterization, self.schedule, output, x, t_batch)
        if self.clip_x0 is not None:
            x0 = x0.clamp(*self.clip_x0)
            eps = eps_from_x0(self.schedule, x0, x, t_batch)
        return x0, eps


@dataclass(frozen=True, eq=False)
class SDEDenoiser:
    """``network`` predicting ``parameterization`` of the scaled state ``c_in x_t`` of ``sde`` (the score is
    ``-eps / std``); ``t`` is SDE time."""

    network: NetworkFn
    sde: SDE
    parameterization: str = "eps"

    def __post_init__(self) -> None:
        check_sde_parameterization(self.sde, self.parameterization)

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor, cond: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) at SDE time ``t``: one time for the whole batch, or one per sample ([B]). The network
        always gets one timestep per sample."""
        time = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        c_in, a, b = scaled_coefficients(self.sde, time, x)
        scaled = c_in * x
        output = self.network(scaled, self.sde.network_time(time).expand(x.shape[0]), cond).to(x.dtype)
        return split_with_coefficients(self.parameterization, output, scaled, a, b)


Denoiser = ScheduleDenoiser | SDEDenoiser


def guided(denoiser: Denoiser, guidance_scale: float) -> Denoiser:
    """``denoiser`` with classifier-free guidance of weight ``guidance_scale`` (itself for 1). Guidance acts on
    the network's output, before any clipping of x0 (``cdm4mi.diffusion.guidance``)."""
    if guidance_scale == 1.0:
        return denoiser
    return dataclasses.replace(denoiser, network=classifier_free_guidance(denoiser.network, guidance_scale))
