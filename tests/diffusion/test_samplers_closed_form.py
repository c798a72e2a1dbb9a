"""Samplers driven by the exact denoiser of Gaussian data must reproduce that Gaussian.

Data ``x0 ~ N(mu, sigma^2)`` with two coordinates (sigma 0.5 and 2, so a swapped or missing
factor of sigma shows). Samplers start from the exact marginal at their first timestep (not
N(0, 1): scaled_linear keeps abar_T = 0.005). With n samples the standard error of the mean is
``sigma / sqrt(n)`` and of the relative std ``1 / sqrt(2 n)``; we allow 4 standard errors plus the
sampler's own discretization bias (measured with these step counts: <= 1.5 % for linear,
scaled_linear, cosine, custom; the sqrt schedule spends its first betas of 0.01-0.02 on almost
no signal, which costs DDPM with the fixed_small variance up to 7 % of the std).
"""

import math

import pytest
import torch
from gaussian_oracle import GaussianOracle

from cdm4mi.diffusion import NoiseSchedule, ScheduleDenoiser, ddim_invert, ddim_sample, ddpm_sample, warm_start
from cdm4mi.diffusion.timesteps import sampling_timesteps

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([0.5, 2.0], dtype=torch.float64)
N = 10_000
SCHEDULES = ["linear", "scaled_linear", "cosine", "sqrt", "custom"]


def make_schedule(name: str, timesteps: int = 1000) -> NoiseSchedule:
    if name == "custom":  # a hand-written geometric schedule, as a user might load from a file
        betas = torch.logspace(-4, math.log10(0.03), timesteps, dtype=torch.float64).tolist()
        return NoiseSchedule.from_config("custom", timesteps, betas=betas)
    return NoiseSchedule.from_config(name, timesteps)


def timesteps(schedule: NoiseSchedule, steps: int | None = None, spacing: str = "leading",
              t_start: int | None = None) -> torch.Tensor:
    """The timesteps a sampler visits: ``steps`` of them (None: every one from the start down)."""
    span = schedule.timesteps if t_start is None else t_start + 1
    return sampling_timesteps(schedule.timesteps, steps or span, spacing, t_start)


def run(
    sampler: str, oracle: GaussianOracle, schedule: NoiseSchedule, schedule_name: str, generator: torch.Generator
) -> torch.Tensor:
    if sampler == "ddpm":
        x_T = oracle.marginal(schedule.timesteps - 1, N, generator)
        denoiser = ScheduleDenoiser(oracle, schedule, oracle.parameterization)
        return ddpm_sample(denoiser, x_T, timesteps(schedule), generator=generator)
    # The sqrt schedule has almost no signal left after ~50 of 1000 steps: strided DDIM would
    # spend only a few steps where it matters, so it gets the full chain.
    steps = 1000 if schedule_name == "sqrt" else 250
    first = int(sampling_timesteps(schedule.timesteps, steps, "trailing")[0])
    x_T = oracle.marginal(first, N, generator)
    denoiser = ScheduleDenoiser(oracle, schedule, oracle.parameterization)
    return ddim_sample(denoiser, x_T, timesteps(schedule, steps, "trailing"))


# ddpm walks every timestep (1000 network calls): the inner loop (make test-fast) keeps the ddim half
@pytest.mark.parametrize("sampler", [pytest.param("ddpm", marks=pytest.mark.slow), "ddim"])
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_exact_denoiser_reproduces_gaussian(sampler, parameterization, schedule_name):
    schedule = make_schedule(schedule_name)
    oracle = GaussianOracle(MU, SIGMA, schedule, parameterization)
    samples = run(sampler, oracle, schedule, schedule_name, torch.Generator().manual_seed(1))
    bias = 0.07 if schedule_name == "sqrt" else 0.015
    mean_tolerance = 4 * SIGMA / math.sqrt(N) + bias * SIGMA
    std_tolerance = 4 / math.sqrt(2 * N) + bias
    assert samples.shape == (N, 2)
    assert bool(((samples.mean(0) - MU).abs() < mean_tolerance).all()), (samples.mean(0), MU)
    assert bool(((samples.std(0) / SIGMA - 1).abs() < std_tolerance).all()), (samples.std(0), SIGMA)


def test_a_wrong_parameterization_fails_the_same_check():
    """The check above has teeth: reading an x0-model's output as eps gives the wrong distribution."""
    schedule = make_schedule("linear")
    oracle = GaussianOracle(MU, SIGMA, schedule, "x0")
    x_T = oracle.marginal(999, N, torch.Generator().manual_seed(1))
    samples = ddim_sample(ScheduleDenoiser(oracle, schedule, "eps"), x_T, timesteps(schedule, 250, "trailing"))
    assert ((samples.mean(0) - MU).abs() > 0.1).any() or ((samples.std(0) / SIGMA - 1).abs() > 0.1).any()


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_ddim_with_eta_one_matches_ddpm_statistics(parameterization):
    schedule = make_schedule("cosine")
    oracle = GaussianOracle(MU, SIGMA, schedule, parameterization)
    generator = torch.Generator().manual_seed(2)
    x_T = oracle.marginal(999, N, generator)
    samples = ddim_sample(ScheduleDenoiser(oracle, schedule, parameterization), x_T, timesteps(schedule, 1000),
                          eta=1.0, generator=generator)
    assert bool(((samples.mean(0) - MU).abs() < 4 * SIGMA / math.sqrt(N) + 0.015 * SIGMA).all())
    assert bool(((samples.std(0) / SIGMA - 1).abs() < 4 / math.sqrt(2 * N) + 0.015).all())


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_inversion_round_trip(spacing):
    """Inversion reuses eps from the lower timestep, so the round trip is exact up to a first-order
    error: five times the steps must give about a fifth of the error."""
    schedule = make_schedule("linear")
    oracle = GaussianOracle(MU, SIGMA, schedule, "eps")
    x0 = MU + SIGMA * torch.randn(500, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    denoiser = ScheduleDenoiser(oracle, schedule)

    def round_trip_error(steps: int) -> float:
        latent = ddim_invert(denoiser, x0, timesteps(schedule, steps, spacing))
        assert latent.std(0).max() < 1.2  # it really reached the noise end (the data std is 2)
        restored = ddim_sample(denoiser, latent, timesteps(schedule, steps, spacing))
        return ((restored - x0).abs().max(0).values / SIGMA).max().item()

    coarse, fine = round_trip_error(100), round_trip_error(500)
    assert fine < 0.04
    assert 3.5 < coarse / fine < 6.5


def test_warm_start_samples_the_posterior_of_a_noisy_input():
    """Denoising by warm start: a noisy observation y = x0 + s*z scaled by sqrt(abar_t), with
    s^2 = (1 - abar_t)/abar_t, is exactly x_t of x0, so DDPM from t must sample p(x0 | y):
    mean mu + sigma^2/(sigma^2 + s^2) (y - mu), variance sigma^2 s^2 / (sigma^2 + s^2)."""
    schedule = make_schedule("linear")
    t_start = schedule.timestep_for_noise_std(0.4)
    alpha_bar = schedule.alpha_bar(torch.tensor(t_start))
    s = ((1 - alpha_bar) / alpha_bar).sqrt()
    oracle = GaussianOracle(MU, SIGMA, schedule, "eps")
    observation = torch.tensor([2.0, 1.0], dtype=torch.float64)
    x_t = warm_start(schedule, observation.expand(N, 2), t_start)
    samples = ddpm_sample(ScheduleDenoiser(oracle, schedule), x_t, timesteps(schedule, t_start=t_start),
                          generator=torch.Generator().manual_seed(4))
    shrink = SIGMA**2 / (SIGMA**2 + s**2)
    posterior_mean = MU + shrink * (observation - MU)
    posterior_std = (SIGMA**2 * s**2 / (SIGMA**2 + s**2)).sqrt()
    assert oracle.calls == t_start + 1
    assert bool(((samples.mean(0) - posterior_mean).abs() < 4 * posterior_std / math.sqrt(N) + 0.01).all())
    assert bool(((samples.std(0) / posterior_std - 1).abs() < 4 / math.sqrt(2 * N) + 0.05).all())


def test_warm_start_with_noise_is_q_sample():
    schedule = make_schedule("cosine")
    x = torch.randn(4, 3)
    noise = torch.randn(4, 3)
    a = schedule.alpha_bar(torch.tensor(300)).float()
    torch.testing.assert_close(warm_start(schedule, x, 300, noise), a.sqrt() * x + (1 - a).sqrt() * noise)


def test_clipping_bounds_the_x0_estimate_and_seed_makes_runs_repeatable():
    schedule = make_schedule("linear", 100)
    oracle = GaussianOracle(torch.tensor([3.0]), torch.tensor([1.0]), schedule, "eps")
    x_T = torch.randn(2000, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    clipped = ddim_sample(ScheduleDenoiser(oracle, schedule, clip_x0=(-1.0, 1.0)), x_T, timesteps(schedule, 20))
    assert clipped.max().item() <= 1.0 + 1e-9
    denoiser = ScheduleDenoiser(oracle, schedule)
    runs = [ddpm_sample(denoiser, x_T, timesteps(schedule, 20), generator=torch.Generator().manual_seed(6))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = ddpm_sample(denoiser, x_T, timesteps(schedule, 20), generator=torch.Generator().manual_seed(7))
    assert not torch.equal(runs[0], other)


def test_samplers_are_shape_agnostic():
    schedule = make_schedule("linear", 50)
    for shape in [(3, 2), (2, 1, 8, 8), (1, 1, 4, 4, 4)]:
        model = lambda x, t, cond: 0.1 * x  # noqa: E731 - any shape-preserving callable
        denoiser = ScheduleDenoiser(model, schedule)
        assert ddim_sample(denoiser, torch.randn(shape), timesteps(schedule, 5)).shape == shape
        assert ddpm_sample(denoiser, torch.randn(shape), timesteps(schedule, 5)).shape == shape
