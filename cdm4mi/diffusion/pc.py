"""Predictor-corrector sampling of the reverse SDE (Song et al. 2021, Algorithms 4 and 5), for any SDE
of ``cdm4mi.diffusion.sde`` and any denoiser ``model(x, t, cond)``.

Times are those given (``sampling_times``: ``linspace(1, t_min, num_steps)``). At each time but the last,
``n_corrector`` Langevin
steps ``x += e * score + sqrt(2 e) z`` with ``e = 2 alpha (snr ||z|| / ||score||)^2`` are followed by one
Euler-Maruyama step of ``dx = [f x - g^2 score] dt + g dW`` down to the next time. As in Song et al.'s code
the norms are averaged over the batch (a per-sample ratio explodes near a mode in low dimensions), and
``alpha`` is the step's own ``signal(t)^2 / signal(t_next)^2`` (DDPM's ``1 - beta_i``; 1 for VE).
The last time returns the network's noise-free x0 estimate at ``t_min``, as ``ddim_sample`` does
(Song et al. return the last Euler-Maruyama mean instead, which keeps noise of std ``std(t_min)``).
"""

from __future__ import annotations

from typing import Annotated

import pydantic
import torch

from cdm4mi.diffusion.denoiser import SDEDenoiser
from cdm4mi.diffusion.sampling import StepCallback, noise_like, step_pairs
from cdm4mi.diffusion.schedule import broadcast_to
from cdm4mi.diffusion.sde import SDE, sde_time
from cdm4mi.registry import checked_options

SNR = Annotated[float, pydantic.Field(gt=0)]  # the Langevin corrector's signal-to-noise ratio
Correctors = Annotated[int, pydantic.Field(ge=0)]  # corrector steps per predictor step (0: Euler-Maruyama)


@checked_options("sampling")
@torch.no_grad()
def pc_sample(
    denoiser: SDEDenoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    cond: object = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    snr: SNR = 0.16,
    n_corrector: Correctors = 1,
) -> torch.Tensor:
    """Sample from ``x``, a draw from the prior at ``timesteps[0]`` = 1 (``sde.prior_sample``), over the SDE
    times ``timesteps``; returns x0 shaped like ``x``.

    One predictor evaluation per time (the last one denoises) plus ``n_corrector`` Langevin evaluations
    before each of the others; ``n_corrector = 0`` is plain Euler-Maruyama. Noise comes from
    ``generator``; ``callback(step, t, x, x0)`` sees every step.
    """
    sde = denoiser.sde
    for step, (t, t_next) in enumerate(step_pairs(timesteps, progress, f"PC ({sde.name} SDE)")):
        if t_next < 0:  # the last time: denoise
            x0, _ = denoiser(x, t, cond)
            x = x0
        else:
            for _ in range(n_corrector):
                x = langevin_step(denoiser, x, t, t_next, cond, snr, generator)
            x0, eps = denoiser(x, t, cond)
            x = euler_maruyama_step(sde, x, eps, t, t_next, noise_like(x, generator))
        if callback is not None:
            callback(step, t, x, x0)
    return x


def euler_maruyama_step(
    sde: SDE, x: torch.Tensor, eps: torch.Tensor, t: float, t_next: float, noise: torch.Tensor
) -> torch.Tensor:
    """One step of the reverse SDE from ``t`` down to ``t_next`` given the eps estimate at ``(x, t)``."""
    time = sde_time(t, x)
    drift, g = sde.drift_and_diffusion(x, time)
    _, std = sde.marginal(time)
    score = -eps / broadcast_to(std, x)
    dt = t - t_next
    return x - (drift - g**2 * score) * dt + g * dt**0.5 * noise


def langevin_step(
    denoiser: SDEDenoiser,
    x: torch.Tensor,
    t: float,
    t_next: float,
    cond: object,
    snr: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One Langevin corrector step at time ``t`` towards the marginal ``p_t``."""
    _, eps = denoiser(x, t, cond)
    signal, std = denoiser.sde.marginal(torch.tensor([t, t_next], dtype=torch.float64))
    score = -eps / broadcast_to(std[0], x)
    noise = noise_like(x, generator)
    alpha = float((signal[0] / signal[1]) ** 2)
    ratio = noise.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()
    step_size = 2 * alpha * (snr * ratio) ** 2
    return x + step_size * score + (2 * step_size).sqrt() * noise
