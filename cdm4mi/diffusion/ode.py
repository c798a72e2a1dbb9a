"""Sampling and encoding with the probability-flow ODE (Song et al. 2021, eq. 13) of any SDE of
``cdm4mi.diffusion.sde``, for any ``SDEDenoiser`` (``cdm4mi.diffusion.denoiser``).

``dx/dt = f x - g^2 / 2 * score = f x + g^2 / (2 std) * eps`` carries the prior at t = 1 to the data
distribution deterministically. Fixed-step methods (``euler``; ``heun``, second order, two evaluations
a step) run over the given times (``sampling_times``: ``linspace(1, t_min, num_steps)``); ``rk45`` is
scipy's adaptive Runge-Kutta (rtol = atol = 1e-5) on the whole batch flattened to one float64 vector, and
uses the times only for its ends and to place the states shown to ``callback``. Sampling ends with the network's x0 estimate at ``t_min``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

from cdm4mi.diffusion.denoiser import SDEDenoiser
from cdm4mi.diffusion.sampling import StepCallback, step_pairs
from cdm4mi.diffusion.schedule import broadcast_to
from cdm4mi.diffusion.sde import sde_time
from cdm4mi.registry import checked_options

ODE_METHODS = ("euler", "heun", "rk45")
ODEMethod = Literal[ODE_METHODS]
RK45_TOLERANCE = 1e-5
logger = logging.getLogger(__name__)

# ``velocity(x, t) -> (dx/dt, x0 estimate)`` at one SDE time t for the whole batch.
Velocity = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def probability_flow(denoiser: SDEDenoiser, cond: object) -> Velocity:
    """The ODE's right-hand side for this denoiser, returning the x0 estimate it got along the way."""
    sde = denoiser.sde

    def velocity(x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        time = sde_time(t, x)
        x0, eps = denoiser(x, time, cond)
        drift, g = sde.drift_and_diffusion(x, time)
        _, std = sde.marginal(time)
        return drift + 0.5 * g**2 * eps / broadcast_to(std, x), x0

    return velocity


def fixed_step(velocity: Velocity, x: torch.Tensor, t: float, t_next: float, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler or Heun step from ``t`` to ``t_next`` (either direction); returns (new x, x0 estimate at t)."""
    dt = t_next - t
    slope, x0 = velocity(x, t)
    x_euler = x + dt * slope
    if method == "euler":
        return x_euler, x0
    slope_next, _ = velocity(x_euler, t_next)
    return x + dt * 0.5 * (slope + slope_next), x0


@checked_options("sampling", keys={"method": "ode_method"})
@torch.no_grad()
def ode_sample(
    denoiser: SDEDenoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    cond: object = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    method: ODEMethod = "heun",
) -> torch.Tensor:
    """Integrate from ``x``, a prior draw at ``timesteps[0]`` = 1, down the SDE times ``timesteps`` to the last
    (``t_min``); returns the x0 estimate there.

    Evaluations for ``n`` times: ``n`` (euler), ``2 n - 1`` (heun), the solver's count plus one (rk45, logged;
    plus ``n - 1`` with a callback). The ODE is deterministic: ``generator`` is accepted for the sampler
    signature and unused. ``callback(step, t, x, x0)`` sees every step.
    """
    velocity = probability_flow(denoiser, cond)
    if method == "rk45" and len(timesteps) > 1:  # (a single step is the x0 estimate at t = 1 for every method)
        return _rk45_sample(velocity, x, timesteps, progress, callback)
    for step, (t, t_next) in enumerate(step_pairs(timesteps, progress, f"ODE {method} ({denoiser.sde.name} SDE)")):
        if t_next < 0:  # the last time: denoise
            x = x0 = velocity(x, t)[1]
        else:
            x, x0 = fixed_step(velocity, x, t, t_next, method)
        if callback is not None:
            callback(step, t, x, x0)
    return x


@checked_options("sampling", keys={"method": "ode_method"})
@torch.no_grad()
def ode_encode(
    denoiser: SDEDenoiser,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    cond: object = None,
    progress: bool = False,
    method: ODEMethod = "heun",
) -> torch.Tensor:
    """The inverse map: clean ``x0`` -> its latent at ``timesteps[0]`` = 1, integrating the ODE up from the last
    time ``t_min`` through ``timesteps`` in reverse (rk45 only uses the two ends).

    It starts from the noise-free ``signal(t_min) x0``, so ``ode_sample(ode_encode(x0))`` returns ``x0``
    up to the integration error and the x0 estimate's shrinkage at ``t_min`` (relative ``std(t_min)^2 /
    data variance``: 4e-4 for VP's defaults and unit-variance data).
    """
    if len(timesteps) < 2:
        raise ValueError(f"sampling.steps: encoding integrates between {len(timesteps)} times; needs >= 2")
    times = timesteps.flip(0)
    signal, _ = denoiser.sde.marginal(times[:1])
    x = broadcast_to(signal[0], x0) * x0
    velocity = probability_flow(denoiser, cond)
    if method == "rk45":
        return _rk45(velocity, x, [float(times[0]), float(times[-1])], None, progress, "ODE encoding rk45")[-1]
    pairs = list(zip(times[:-1].tolist(), times[1:].tolist(), strict=True))
    for t, t_next in tqdm(pairs, desc=f"ODE encoding {method}", disable=not progress, leave=False):
        x, _ = fixed_step(velocity, x, t, t_next, method)
    return x


def _rk45_sample(
    velocity: Velocity, x: torch.Tensor, grid: torch.Tensor, progress: bool, callback: StepCallback | None
) -> torch.Tensor:
    """Adaptive integration to ``t_min`` and a last evaluation there; with a callback, the dense solution at
    every ``grid`` time is shown along with its x0 estimate (one extra evaluation each)."""
    times = grid.tolist()
    states = _rk45(velocity, x, [times[0], times[-1]], times if callback is not None else None, progress, "ODE rk45")
    if callback is None:
        return velocity(states[-1], times[-1])[1]
    for step, t in enumerate(times):
        x0 = velocity(states[step], t)[1]
        callback(step, t, states[step + 1] if step + 1 < len(times) else x0, x0)
    return x0


def _rk45(
    velocity: Velocity, x: torch.Tensor, span: list[float], t_eval: list[float] | None, progress: bool, description: str
) -> list[torch.Tensor]:
    """Solve from ``span[0]`` to ``span[-1]``: the states at ``t_eval`` (or just the end point), shaped like ``x``."""
    bar = tqdm(desc=f"{description} (evaluations)", disable=not progress, leave=False)

    def right_hand_side(t: float, y: np.ndarray) -> np.ndarray:
        bar.update()
        state = torch.from_numpy(y).reshape(x.shape).to(device=x.device, dtype=x.dtype)
        return velocity(state, float(t))[0].double().flatten().cpu().numpy()

    solution = solve_ivp(
        right_hand_side, (span[0], span[-1]), x.double().flatten().cpu().numpy(), method="RK45",
        t_eval=t_eval, rtol=RK45_TOLERANCE, atol=RK45_TOLERANCE,
    )
    bar.close()
    if not solution.success:
        raise RuntimeError(f"probability-flow ODE (rk45) failed: {solution.message}")
    logger.info("probability-flow ODE (rk45): %d network evaluations", solution.nfev)
    columns = range(solution.y.shape[1]) if t_eval is not None else [solution.y.shape[1] - 1]
    return [torch.from_numpy(solution.y[:, k].copy()).reshape(x.shape).to(device=x.device, dtype=x.dtype) for k in columns]
