"""Diffusion in continuous time (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Every SDE here has a linear drift, ``dx = f(t) x dt + g(t) dW`` for ``t`` in ``[t_min, 1]``, and so a Gaussian
perturbation kernel ``x_t = signal(t) x0 + std(t) z`` with ``d log(signal)/dt = f`` and
``d(std^2)/dt = 2 f std^2 + g^2``:

=================  ======================================================  ==============================
SDE                ``f``, ``g``                                            ``signal``, ``std``
=================  ======================================================  ==============================
``VPSDE``          ``-beta/2``, ``sqrt(beta)``;                            ``exp(-int beta / 2)``,
                   ``beta(t) = beta_min + t (beta_max - beta_min)``        ``sqrt(1 - signal^2)``
``VESDE``          ``0``, ``sigma sqrt(2 log(sigma_max / sigma_min))``     ``1``, ``sigma(t) =
                                                                           sigma_min (sigma_max/sigma_min)^t``
``DiscreteVPSDE``  as VP, with ``beta(t) = -d log(abar)/dt``               ``sqrt(abar)``, ``sqrt(1 - abar)``
=================  ======================================================  ==============================

As in Song et al., VE's ``std(0) = sigma_min``: the SDE starts from data already carrying that noise.
``DiscreteVPSDE`` is the VP SDE of a trained DDPM schedule, so that the PC and ODE samplers run on
DDPM checkpoints: ``t`` is the float timestep index ``s = t (T - 1)``, ``log(abar)`` is a monotone cubic
through the table's entries (so ``beta(t)`` is continuous) and ``t_min = 0`` is index 0.

Network convention, shared by ``ScoreMatchingObjective`` and ``SDEDenoiser`` (``cdm4mi.diffusion.denoiser``): the network is called as
``model(c_in * x_t, network_time(t), cond)`` with ``c_in = 1 / sqrt(signal^2 + std^2)`` (1 for VP; unit
variance for unit-variance data under VE) and predicts eps, x0 or v of the scaled state
``c_in x_t = a x0 + b z`` (``a = c_in signal``, ``b = c_in std``, ``a^2 + b^2 = 1``); the score is
``-eps / std``. Nothing here looks at the shape of ``x`` beyond its batch dimension.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from cdm4mi.diffusion.objective import (
    NetworkFn,
    check_loss,
    check_parameterization,
    elementwise_loss,
    target_with_coefficients,
)
from cdm4mi.diffusion.schedule import NoiseSchedule, broadcast_to

SDE_KINDS = ("vp", "ve")
# Continuous time t in [0, 1] reaches the network as t * 999: the range of timesteps a backbone sees in
# 1000-step DDPM training, which its sinusoidal embedding is sized for.
CONTINUOUS_TIME_SCALE = 999.0


class SDE(ABC):
    """What the samplers and the objective need from an SDE; subclasses give the two coefficient maps."""

    name: str
    t_min: float
    prior_std: float  # the prior at t = 1 is N(0, prior_std^2 I)
    variance_preserving: bool  # signal^2 + std^2 = 1, so the v parameterization is defined

    @abstractmethod
    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(signal, std)`` of ``x_t = signal x0 + std z`` at times ``t`` ([B] or 0-dim): float64, shaped like ``t``."""

    @abstractmethod
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f, g)`` at times ``t`` ([B] or 0-dim) for ``dx = f x dt + g dW``: float64, shaped like ``t``."""

    @abstractmethod
    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep the network is fed at SDE times ``t``: float64, shaped like ``t``."""

    def drift_and_diffusion(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(x, t)`` shaped like ``x`` and ``g(t)`` broadcastable against it, both in x's dtype."""
        f, g = self.coefficients(t)
        return broadcast_to(f, x) * x, broadcast_to(g, x)

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """A draw from the prior ``N(0, prior_std^2 I)`` at t = 1, made on the generator's device."""
        source = generator.device if generator is not None else device
        noise = torch.randn(shape, generator=generator, dtype=dtype, device=source)
        return (self.prior_std * noise).to(device if device is not None else noise.device)


@dataclass(frozen=True)
class VPSDE(SDE):
    """Variance preserving: the continuous limit of DDPM with a linear beta schedule.

    The prior is N(0, I); the true marginal at t = 1 keeps ``signal(1) = exp(-(beta_min + beta_max)/4)``
    (0.0066 with the defaults) of the data.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    name = "vp"
    prior_std = 1.0
    variance_preserving = True

    def __post_init__(self) -> None:
        if not self.beta_min > 0:
            raise ValueError(f"diffusion.sde.beta_min: must be > 0, got {self.beta_min}")
        if not self.beta_max >= self.beta_min:
            raise ValueError(f"diffusion.sde.beta_max: must be >= beta_min ({self.beta_min}), got {self.beta_max}")
        check_t_min(self.t_min)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t.double() * (self.beta_max - self.beta_min)

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t.double()
        log_signal = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        # 1 - exp(2 log_signal) loses every digit for small t; expm1 keeps them.
        return log_signal.exp(), (-torch.expm1(2 * log_signal)).sqrt()

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta = self.beta(t)
        return -0.5 * beta, beta.sqrt()

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.double() * CONTINUOUS_TIME_SCALE


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding: ``x_t = x0 + sigma(t) z`` with geometric ``sigma(t)`` (NCSN++); prior N(0, sigma_max^2 I)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    name = "ve"
    variance_preserving = False

    def __post_init__(self) -> None:
        if not self.sigma_min > 0:
            raise ValueError(f"diffusion.sde.sigma_min: must be > 0, got {self.sigma_min}")
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"diffusion.sde.sigma_max: must be > sigma_min ({self.sigma_min}), got {self.sigma_max}")
        check_t_min(self.t_min)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t.double()

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.sigma(t)
        return torch.ones_like(sigma), sigma

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.sigma(t)
        return torch.zeros_like(sigma), sigma * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.double() * CONTINUOUS_TIME_SCALE


@dataclass(frozen=True, eq=False)  # (compared by identity: it holds tensors)
class DiscreteVPSDE(SDE):
    """The VP SDE a discrete DDPM schedule implies: ``abar`` at the float timestep index ``s = t (T - 1)``.

    At integer indices the marginal is the schedule's exactly, and the network sees ``s`` as its timestep,
    so a DDPM-trained eps / x0 / v model is this SDE's score model. The prior is N(0, I).

    Between indices ``log(abar)`` is a monotone cubic (Fritsch-Carlson / PCHIP, harmonic-mean slopes),
    so ``beta(t) = -d log(abar)/dt`` is continuous and >= 0. Linear interpolation, with ``beta`` constant
    per index, makes the ODE's velocity jump at every index: Heun then stops converging (measured on
    Gaussian data, linear schedule: 7e-4 error at 100 steps, 2.5e-3 at 200; 1e-3 and 2e-4 with PCHIP).
    """

    schedule: NoiseSchedule
    name = "discrete_vp"
    t_min = 0.0
    prior_std = 1.0
    variance_preserving = True

    def __post_init__(self) -> None:
        if self.schedule.timesteps < 2:
            raise ValueError(f"diffusion.timesteps: the SDE view of a schedule needs >= 2, got {self.schedule.timesteps}")
        log_alpha_bar = self.schedule.alphas_cumprod.log()
        secants = log_alpha_bar.diff()  # all < 0: every beta lies in (0, 1)
        inner = 2 / (1 / secants[:-1] + 1 / secants[1:])
        object.__setattr__(self, "_log_alpha_bar", log_alpha_bar)
        object.__setattr__(self, "_slopes", torch.cat([secants[:1], inner, secants[-1:]]))

    def _hermite(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per time: position ``u`` in its segment ``[k, k+1]``, log(abar) and slopes at both ends."""
        index = self.network_time(t).clamp(0, self.schedule.timesteps - 1)
        k = index.floor().long().clamp(max=self.schedule.timesteps - 2)
        table, slopes = self._log_alpha_bar.to(t.device), self._slopes.to(t.device)
        return index - k, table[k], table[k + 1], slopes[k], slopes[k + 1]

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, start, end, slope_start, slope_end = self._hermite(t)
        log_alpha_bar = ((2 * u**3 - 3 * u**2 + 1) * start + (u**3 - 2 * u**2 + u) * slope_start
                         + (3 * u**2 - 2 * u**3) * end + (u**3 - u**2) * slope_end)
        return (0.5 * log_alpha_bar).exp(), (-torch.expm1(log_alpha_bar)).sqrt()

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, start, end, slope_start, slope_end = self._hermite(t)
        d_log_alpha_bar = ((6 * u**2 - 6 * u) * (start - end) + (3 * u**2 - 4 * u + 1) * slope_start
                           + (3 * u**2 - 2 * u) * slope_end)
        beta = (-d_log_alpha_bar * (self.schedule.timesteps - 1)).clamp(min=0)  # (rounding only)
        return -0.5 * beta, beta.sqrt()

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.double() * (self.schedule.timesteps - 1)


def check_t_min(t_min: float) -> None:
    if not 0 < t_min < 1:
        raise ValueError(f"diffusion.sde.t_min: must lie in (0, 1), got {t_min}")


def sde_from_config(kind: str, **options: float | None) -> SDE:
    """The ``diffusion.sde`` section as an SDE: ``kind`` 'vp' takes ``beta_min``, ``beta_max``, ``t_min``; 've'
    takes ``sigma_min``, ``sigma_max``, ``t_min``. Options of the other kind, and None values, are ignored:
    the dataclasses' defaults are the only ones."""
    if kind not in SDE_KINDS:
        raise ValueError(f"diffusion.sde.kind: unknown '{kind}'; choose one of {list(SDE_KINDS)}")
    sde_class = VPSDE if kind == "vp" else VESDE
    fields = {field.name for field in dataclasses.fields(sde_class)}
    return sde_class(**{key: value for key, value in options.items() if key in fields and value is not None})


def check_sde_parameterization(sde: SDE, parameterization: str) -> None:
    check_parameterization(parameterization)
    if parameterization == "v" and not sde.variance_preserving:
        raise ValueError(f"diffusion.parameterization: 'v' needs a variance-preserving SDE, not '{sde.name}'; use eps or x0")


def sampling_times(sde: SDE, num_steps: int) -> torch.Tensor:
    """``num_steps`` evenly spaced SDE times from 1 down to ``t_min`` (float64); samplers denoise at the last."""
    if num_steps < 1:
        raise ValueError(f"sampling.steps: must be >= 1, got {num_steps}")
    return torch.linspace(1.0, sde.t_min, num_steps, dtype=torch.float64)


def sde_time(t: float, x: torch.Tensor) -> torch.Tensor:
    """One SDE time for the whole batch: a 0-dim float64 tensor on x's device (coefficients broadcast)."""
    return torch.tensor(t, dtype=torch.float64, device=x.device)


def scaled_coefficients(sde: SDE, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(c_in, a, b)`` broadcastable against ``x`` in its dtype: ``c_in x_t = a x0 + b z``."""
    signal, std = sde.marginal(t)
    c_in = (signal**2 + std**2).rsqrt()
    return broadcast_to(c_in, x), broadcast_to(c_in * signal, x), broadcast_to(c_in * std, x)


@dataclass(frozen=True)
class ScoreMatchingObjective:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7) with ``lambda(t) = std(t)^2``.

    Per sample: ``t ~ U[t_min, 1]``, ``z ~ N(0, I)``, ``x_t = signal x0 + std z``; with the eps
    parameterization the loss is ``||eps_pred - z||^2`` (= ``std^2 ||score_pred - score||^2``). x0 and v
    networks regress their own targets unweighted, as ``DiffusionObjective`` does, which weights the score
    error by ``std^4 / signal^2`` (x0) or ``std^2 / a^2`` (v). ``l1`` and ``huber`` replace the
    squared error as in ``DiffusionObjective``.
    """

    sde: SDE
    parameterization: str = "eps"
    loss_type: str = "l2"
    huber_delta: float = 1.0
    max_train_timestep = None  # trains on the whole time range (the ``Objective`` interface)

    def __post_init__(self) -> None:
        check_sde_parameterization(self.sde, self.parameterization)
        check_loss(self.loss_type, self.huber_delta)

    def loss(
        self, model: NetworkFn, x0: torch.Tensor, cond: object = None, generator: torch.Generator | None = None,
        input_noise_std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean loss over the batch for a network ``model(c_in x_t, network_time(t), cond)`` (``input_noise_std``:
        unused, no warm starts on an SDE)."""
        uniform = torch.rand((x0.shape[0],), device=x0.device, dtype=torch.float64, generator=generator)
        t = self.sde.t_min + (1 - self.sde.t_min) * uniform
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        _, a, b = scaled_coefficients(self.sde, t, x0)
        output = model(a * x0 + b * noise, self.sde.network_time(t), cond)
        target = target_with_coefficients(self.parameterization, x0, noise, a, b)
        per_sample = elementwise_loss(self.loss_type, output.float(), target.float(), self.huber_delta)
        return per_sample.flatten(1).mean(dim=1).mean()
