"""The denoiser wrappers: one question, "(x0, eps) at (x, t, cond)?", answered the same way the objectives train."""

from __future__ import annotations

import pytest
import torch

from cdm4mi.diffusion import NoiseSchedule, ScheduleDenoiser, SDEDenoiser, guided, q_sample
from cdm4mi.diffusion.guidance import classifier_free_guidance
from cdm4mi.diffusion.sde import VESDE, VPSDE, scaled_coefficients


def network(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
    shift = 0.0 if cond is None else cond
    return torch.tanh(0.5 * x + t.float().view(-1, *[1] * (x.ndim - 1)) / 1000 + shift)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_schedule_denoiser_inverts_the_forward_process(parameterization):
    """An oracle network that outputs the true target recovers the true x0 and eps exactly."""
    schedule = NoiseSchedule.from_config("cosine", 1000)
    x0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([10, 200, 500, 900])
    x_t = q_sample(schedule, x0, t, eps)
    abar = schedule.alpha_bar(t)[:, None]
    target = {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[parameterization]
    x0_hat, eps_hat = ScheduleDenoiser(lambda x, tt, c: target, schedule, parameterization)(x_t, t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_one_timestep_for_the_batch_reaches_the_network_per_sample_and_clipping_rederives_eps():
    schedule = NoiseSchedule.from_config("linear", 100)
    seen = []
    denoiser = ScheduleDenoiser(lambda x, t, c: seen.append(t) or 10 * x, schedule, "x0", clip_x0=(-1.0, 1.0))
    x = torch.randn(5, 2)
    x0, eps = denoiser(x, 40)
    assert seen[0].tolist() == [40] * 5 and x0.abs().max() <= 1.0
    abar = schedule.alpha_bar(torch.tensor(40)).float()
    torch.testing.assert_close(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, x)  # consistent with x_t


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()])
def test_sde_denoiser_feeds_the_scaled_state_and_network_time(sde):
    x = torch.randn(3, 4, dtype=torch.float64)
    received = {}

    def recorder(scaled, time, cond):
        received.update(scaled=scaled, time=time)
        return torch.zeros_like(scaled)

    x0, eps = SDEDenoiser(recorder, sde, "eps")(x, 0.3)
    c_in, a, _ = scaled_coefficients(sde, torch.tensor(0.3, dtype=torch.float64), x)
    torch.testing.assert_close(received["scaled"], c_in * x)
    assert received["time"].shape == (3,) and torch.allclose(received["time"], sde.network_time(torch.tensor(0.3)))
    torch.testing.assert_close(x0, c_in * x / a)  # eps = 0: x0 is the scaled state over its signal


def test_guidance_wraps_the_network_of_any_denoiser():
    schedule = NoiseSchedule.from_config("linear", 100)
    base = ScheduleDenoiser(network, schedule, "v")
    assert guided(base, 1.0) is base
    x, cond = torch.randn(2, 3), torch.full((2, 3), 0.4)
    expected = ScheduleDenoiser(classifier_free_guidance(network, 3.0), schedule, "v")(x, 50, cond)
    for got, want in zip(guided(base, 3.0)(x, 50, cond), expected, strict=True):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="diffusion.parameterization"):
        SDEDenoiser(network, VESDE(), "v")


def test_sampler_options_are_checked_from_their_signature_for_python_callers_too():
    """The constraint lives once, in the sampler's annotation; the config reuses the same alias."""
    from cdm4mi.config import SamplingConfig
    from cdm4mi.diffusion import ddim_sample, ddpm_sample, sampling_timesteps

    schedule = NoiseSchedule.from_config("linear", 20)
    denoiser = ScheduleDenoiser(network, schedule, "eps")
    x, steps = torch.randn(1, 1, 4, 4), sampling_timesteps(20, 4)
    with pytest.raises(ValueError, match=r"sampling.eta: Input should be greater than or equal to 0 \(got -0.5\)"):
        ddim_sample(denoiser, x, steps, eta=-0.5)
    with pytest.raises(ValueError, match="sampling.variance: Input should be 'fixed_small' or 'fixed_large'"):
        ddpm_sample(denoiser, x, steps, variance="learned")
    assert ddim_sample(denoiser, x, steps, eta=1, generator=torch.Generator().manual_seed(0)).shape == x.shape
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        SamplingConfig(eta=-0.5)
