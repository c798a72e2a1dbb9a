"""The DDPM training objective and the one place where eps / x0 / v predictions are converted.

With ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` and ``v = sqrt(abar) eps - sqrt(1 - abar) x0``
(Salimans & Ho 2022), any one prediction together with ``x_t`` determines the other two exactly:

* eps -> ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``
* x0  -> ``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)``
* v   -> ``x0 = sqrt(abar) x_t - sqrt(1 - abar) v``, ``eps = sqrt(1 - abar) x_t + sqrt(abar) v``

Nothing here looks at the shape of ``x`` beyond its batch dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from cdm4mi.diffusion.sampling import warm_start, warm_start_top_up
from cdm4mi.diffusion.schedule import NoiseSchedule, broadcast_to

PARAMETERIZATIONS = ("eps", "x0", "v")
LOSS_TYPES = ("l1", "l2", "huber")

# A network as the diffusion code sees it: ``network(x, t, cond) -> prediction`` for a batch.
NetworkFn = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


class Objective(Protocol):
    """What training and inference need of an objective (``DiffusionObjective``, ``ScoreMatchingObjective``):
    the loss of a batch, and the highest timestep trained on (None: the whole process)."""

    max_train_timestep: int | None

    def loss(self, network: NetworkFn, x0: torch.Tensor, cond: object = None,
             generator: torch.Generator | None = None, input_noise_std: torch.Tensor | None = None) -> torch.Tensor: ...


def check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"diffusion.parameterization: unknown '{parameterization}'; choose one of {list(PARAMETERIZATIONS)}")


def check_loss(loss_type: str, huber_delta: float) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"diffusion.loss_type: unknown '{loss_type}'; choose one of {list(LOSS_TYPES)}")
    if not huber_delta > 0:
        raise ValueError(f"diffusion.huber_delta: must be > 0, got {huber_delta}")


def _coefficients(schedule: NoiseSchedule, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alpha_bar = schedule.alpha_bar(t)
    return broadcast_to(alpha_bar.sqrt(), x), broadcast_to((1 - alpha_bar).sqrt(), x)


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Draw ``x_t ~ q(x_t | x0)`` with the given standard-normal ``noise``."""
    signal, sigma = _coefficients(schedule, t, x0)
    return signal * x0 + sigma * noise


def prediction_target(
    parameterization: str, schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What a network of the given parameterization should output for ``x_t = q_sample(x0, t, noise)``."""
    signal, sigma = _coefficients(schedule, t, x0)
    return target_with_coefficients(parameterization, x0, noise, signal, sigma)


def target_with_coefficients(
    parameterization: str, x0: torch.Tensor, noise: torch.Tensor, signal: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The target for ``x_t = signal * x0 + sigma * noise`` (v needs ``signal^2 + sigma^2 = 1``)."""
    if parameterization == "eps":
        return noise
    if parameterization == "x0":
        return x0
    return signal * noise - sigma * x0


def split_prediction(
    parameterization: str, schedule: NoiseSchedule, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output into the pair (x0 estimate, eps estimate)."""
    signal, sigma = _coefficients(schedule, t, x_t)
    return split_with_coefficients(parameterization, model_output, x_t, signal, sigma)


def split_with_coefficients(
    parameterization: str, output: torch.Tensor, x_t: torch.Tensor, signal: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a network output for ``x_t = signal * x0 + sigma * eps``.

    ``signal`` and ``sigma`` broadcast against ``x_t``; the v formulas need ``signal^2 + sigma^2 = 1``.
    """
    if parameterization == "eps":
        return (x_t - sigma * output) / signal, output
    if parameterization == "x0":
        return output, (x_t - signal * output) / sigma
    check_parameterization(parameterization)
    return signal * x_t - sigma * output, sigma * x_t + signal * output


def eps_from_x0(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The eps consistent with ``x_t`` and a (possibly clipped) x0 estimate."""
    signal, sigma = _coefficients(schedule, t, x_t)
    return (x_t - signal * x0) / sigma


def elementwise_loss(loss_type: str, output: torch.Tensor, target: torch.Tensor, huber_delta: float = 1.0) -> torch.Tensor:
    """Unreduced ``l1`` / ``l2`` / ``huber`` loss between a network output and its target."""
    if loss_type == "l1":
        return (output - target).abs()
    if loss_type == "l2":
        return (output - target) ** 2
    return F.huber_loss(output, target, reduction="none", delta=huber_delta)


@dataclass(frozen=True)
class DiffusionObjective:
    """DDPM denoising loss: sample ``t`` and ``eps``, noise ``x0``, regress the parameterization's target.

    ``min_snr_gamma`` enables Min-SNR-gamma weighting (Hang et al. 2023): each sample's loss is
    weighted as if it were an x0 loss weighted by ``min(SNR, gamma)``. ``max_train_timestep``
    trains only ``t <= max_train_timestep``: for a model that will only ever be warm-started at low
    noise (denoising), all capacity goes where it is used; it cannot then sample from pure noise.

    ``warm_start_share``: the share of items whose state is built as a warm start builds it at inference
    (``cdm4mi.training.warm_start``): from the item's own noisy input (the centre channel of ``cond``), of
    known noise std ``input_noise_std`` (model units, per item; NaN: unknown, never warm), topped up with
    fresh noise to the timestep whose noise std is ``factor * input_noise_std`` (factor uniform in [1, sqrt 2],
    the range inference uses) and scaled by sqrt(abar). Otherwise ``x_t`` and the condition carry independent
    noises in training but the *same* noise at inference, which a network trained on the former misreads (on a
    real brain CT it raised the input's error; ``benchmarks/bench_quality.py``). The target stays ``x0``; for
    eps and v it is the noise implied by that state.
    """

    schedule: NoiseSchedule
    parameterization: str = "eps"
    loss_type: str = "l2"
    huber_delta: float = 1.0
    min_snr_gamma: float | None = None
    max_train_timestep: int | None = None
    warm_start_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.warm_start_share <= 1:
            raise ValueError(f"diffusion.warm_start_share: a share in [0, 1], got {self.warm_start_share}")
        if self.max_train_timestep is not None and not 0 <= self.max_train_timestep < self.schedule.timesteps:
            raise ValueError(
                f"diffusion.max_train_timestep: must lie in [0, {self.schedule.timesteps - 1}], got {self.max_train_timestep}"
            )
        check_parameterization(self.parameterization)
        check_loss(self.loss_type, self.huber_delta)
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ValueError(f"diffusion.min_snr_gamma: must be > 0, got {self.min_snr_gamma}")

    def loss(
        self, model: NetworkFn, x0: torch.Tensor, cond: object = None, generator: torch.Generator | None = None,
        input_noise_std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean loss over the batch for a network ``model(x_t, t, cond)``."""
        high = self.schedule.timesteps if self.max_train_timestep is None else self.max_train_timestep + 1
        t = torch.randint(0, high, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = q_sample(self.schedule, x0, t, noise)
        if self.warm_start_share > 0 and input_noise_std is not None:
            x_t, t, noise = self.warm_started(x0, cond, input_noise_std, x_t, t, noise, high, generator)
        output = model(x_t, t, cond)
        target = prediction_target(self.parameterization, self.schedule, x0, noise, t)
        per_sample = self.elementwise_loss(output.float(), target.float()).flatten(1).mean(dim=1)
        return (per_sample * self.weights(t).to(per_sample)).mean()

    def warm_started(self, x0: torch.Tensor, cond: object, input_noise_std: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor, noise: torch.Tensor, high: int, generator: torch.Generator | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, noise) with a ``warm_start_share`` of the items warm-started from their input (the class
        docstring); ``noise`` of those is the one their state implies, ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)``."""
        batch, device = x0.shape[0], x0.device
        sigma = input_noise_std.to(device=device, dtype=torch.float64)
        draws = torch.rand((2, batch), device=device, dtype=torch.float64, generator=generator)
        warm = (draws[0] < self.warm_start_share) & torch.isfinite(sigma) & (sigma > 0)
        if not bool(warm.any()):
            return x_t, t, noise
        sigma = torch.where(warm, sigma, torch.zeros_like(sigma))
        t_warm = self.schedule.timesteps_for_noise_std(sigma * (1 + (2**0.5 - 1) * draws[1])).clamp(max=high - 1)
        image = cond["image"] if isinstance(cond, dict) else cond
        start = (image.shape[1] - x0.shape[1]) // 2  # the input itself: the centre channel(s) of a 2.5D stack
        noisy = image[:, start : start + x0.shape[1]].to(torch.float64)
        top_up = broadcast_to(warm_start_top_up(self.schedule, t_warm, sigma), noisy)
        state = warm_start(self.schedule, noisy + top_up * noise.to(torch.float64), t_warm)
        implied = eps_from_x0(self.schedule, x0.to(torch.float64), state, t_warm)
        mask = broadcast_to(warm, x0).bool()
        return (torch.where(mask, state.to(x_t.dtype), x_t), torch.where(warm, t_warm.to(t.dtype), t),
                torch.where(mask, implied.to(noise.dtype), noise))

    def elementwise_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return elementwise_loss(self.loss_type, output, target, self.huber_delta)

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights [B] (all ones without Min-SNR-gamma)."""
        if self.min_snr_gamma is None:
            return torch.ones(t.shape, dtype=torch.float64, device=t.device)
        snr = self.schedule.signal_to_noise(t)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.parameterization == "eps":
            return clipped / snr
        if self.parameterization == "x0":
            return clipped
        return clipped / (snr + 1)
