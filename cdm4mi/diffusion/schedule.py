"""Noise schedules: the betas of the forward process and the cumulative products built from them.

Names differ between libraries; cdm4mi uses diffusers' names:

=================  ===========================================  =====================================
cdm4mi name        betas                                        also known as
=================  ===========================================  =====================================
``linear``         ``linspace(beta_start, beta_end, T)``         DDPM (Ho et al. 2020); latent-diffusion
                   (default 1e-4 .. 2e-2)                        and CDM4MI call it ``sqrt_linear``
``scaled_linear``  ``linspace(sqrt(start), sqrt(end), T)**2``    latent-diffusion's and CDM4MI's
                   (default 8.5e-4 .. 1.2e-2)                    ``linear``; Stable Diffusion
``cosine``         ``1 - abar(t+1)/abar(t)``, capped at 0.999,   diffusers ``squaredcos_cap_v2``
                   ``abar(t) = cos((t/T + s)/(1 + s) * pi/2)^2`` (Nichol & Dhariwal 2021, s = 0.008)
``sqrt``           ``linspace(beta_start, beta_end, T)**0.5``    latent-diffusion's and CDM4MI's
                   (default 1e-4 .. 2e-2, so betas 0.01 .. 0.14) ``sqrt``; destroys signal early
``custom``         a list of T betas, or a ``.txt``/``.npy``
                   file holding them
=================  ===========================================  =====================================

Timestep ``t = -1`` stands for "no noise": ``alpha_bar(-1) = 1``, the end point of every sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SCHEDULES = ("linear", "scaled_linear", "cosine", "sqrt", "custom")
_DEFAULT_RANGE = {"linear": (1e-4, 2e-2), "scaled_linear": (8.5e-4, 1.2e-2), "sqrt": (1e-4, 2e-2)}


def make_betas(
    name: str,
    timesteps: int,
    beta_start: float | None = None,
    beta_end: float | None = None,
    betas: list[float] | str | Path | None = None,
    cosine_s: float = 0.008,
) -> torch.Tensor:
    """Betas of the named schedule as a float64 tensor of length ``timesteps``."""
    if name not in SCHEDULES:
        raise ValueError(f"diffusion.beta_schedule: unknown '{name}'; choose one of {list(SCHEDULES)}")
    if timesteps < 1:
        raise ValueError(f"diffusion.timesteps: must be >= 1, got {timesteps}")
    if name == "custom":
        return _custom_betas(betas, timesteps)
    if betas is not None:
        raise ValueError(f"diffusion.betas: only used with beta_schedule 'custom', not '{name}'")
    if name == "cosine":
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alpha_bar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    start, end = _DEFAULT_RANGE[name]
    start = start if beta_start is None else beta_start
    end = end if beta_end is None else beta_end
    if name == "linear":
        return torch.linspace(start, end, timesteps, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64) ** 2
    return torch.linspace(start, end, timesteps, dtype=torch.float64) ** 0.5


def _custom_betas(betas: list[float] | str | Path | None, timesteps: int) -> torch.Tensor:
    if betas is None:
        raise ValueError("diffusion.betas: beta_schedule 'custom' needs a list of betas or a .txt/.npy file")
    if isinstance(betas, (str, Path)):
        path = Path(betas)
        if not path.is_file():
            raise ValueError(f"diffusion.betas: file not found: {path}")
        values = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    else:
        values = np.asarray(betas, dtype=np.float64)
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() != timesteps:
        raise ValueError(f"diffusion.betas: {values.numel()} betas given but diffusion.timesteps is {timesteps}")
    if not bool(((values > 0) & (values < 1)).all()):
        raise ValueError("diffusion.betas: every beta must lie in (0, 1)")
    return values


@dataclass(frozen=True)
class NoiseSchedule:
    """The forward process ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` for ``t = 0 .. T-1``."""

    betas: torch.Tensor  # float64 [T]

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).flatten()
        object.__setattr__(self, "betas", betas)
        # Index 0 holds t = -1 (no noise), so alpha_bar(t) is a plain lookup at t + 1.
        table = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, dim=0)])
        object.__setattr__(self, "_alpha_bar_table", table)

    @classmethod
    def from_config(cls, name: str, timesteps: int, **kwargs) -> "NoiseSchedule":
        return cls(make_betas(name, timesteps, **kwargs))

    @property
    def timesteps(self) -> int:
        return self.betas.numel()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alpha_bar_table[1:]

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """``abar_t`` (float64) for integer timesteps ``t``; ``t < 0`` gives 1 (the clean end point)."""
        t = torch.as_tensor(t, dtype=torch.long)
        return self._alpha_bar_table[(t + 1).clamp(min=0).cpu()].to(t.device)

    def signal_to_noise(self, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.alpha_bar(t)
        return alpha_bar / (1 - alpha_bar)

    def timestep_for_noise_std(self, noise_std: float) -> int:
        """The timestep whose noise-to-signal ratio ``sqrt((1 - abar)/abar)`` is closest to ``noise_std``.

        A warm-started denoiser scales an input of noise std ``sigma`` (in model units) by
        ``sqrt(abar_t)``: it is then distributed like ``x_t`` of a clean image exactly when
        ``sigma = sqrt((1 - abar_t)/abar_t)``.
        """
        return int(self.timesteps_for_noise_std(torch.tensor([float(noise_std)]))[0])

    def timesteps_for_noise_std(self, noise_std: torch.Tensor) -> torch.Tensor:
        """``timestep_for_noise_std`` for each of a batch of noise stds ``[B]``: timestep indices ``[B]``."""
        alpha_bar = self.alphas_cumprod.to(torch.float64)
        ratio = ((1 - alpha_bar) / alpha_bar).sqrt().to(noise_std.device)
        return (ratio[None, :] - noise_std.to(torch.float64)[:, None]).abs().argmin(dim=1)


def broadcast_to(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values [B] (or a scalar) as a tensor that broadcasts against ``x`` [B, ...], in x's dtype."""
    values = values.to(device=x.device, dtype=x.dtype)
    if values.ndim == 0:
        return values
    return values.reshape(-1, *([1] * (x.ndim - 1)))
