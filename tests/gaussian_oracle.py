"""The exact denoiser for Gaussian data, used as a model that cannot be wrong.

For ``x0 ~ N(mu, sigma^2)`` (independent per coordinate) and ``x_t = sqrt(a) x0 + sqrt(1 - a) eps``:
``E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a sigma^2 + 1 - a)`` and
``E[x0 | x_t] = mu + sqrt(a) sigma^2 (x_t - sqrt(a) mu) / (a sigma^2 + 1 - a)``.
"""

from __future__ import annotations

import torch

from cdm4mi.diffusion.schedule import NoiseSchedule, broadcast_to


class GaussianOracle:
    """``model(x, t, cond)`` returning the exact eps / x0 / v prediction for N(mu, sigma^2) data."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, schedule: NoiseSchedule, parameterization: str):
        self.mu, self.sigma, self.schedule, self.parameterization = mu, sigma, schedule, parameterization
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        self.calls += 1
        a = broadcast_to(self.schedule.alpha_bar(t), x)
        mu, sigma = self.mu.to(x), self.sigma.to(x)
        variance = a * sigma**2 + 1 - a
        eps = (1 - a).sqrt() * (x - a.sqrt() * mu) / variance
        x0 = mu + a.sqrt() * sigma**2 * (x - a.sqrt() * mu) / variance
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[self.parameterization]

    def marginal(self, t: int, n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        """``n`` exact draws of ``x_t`` (the true prior at ``t``; not N(0, 1) when abar_T > 0)."""
        a = self.schedule.alpha_bar(torch.tensor(t)).to(dtype)
        mean = a.sqrt() * self.mu.to(dtype)
        std = (a * self.sigma.to(dtype) ** 2 + 1 - a).sqrt()
        return mean + std * torch.randn((n, self.mu.numel()), generator=generator, dtype=dtype)
