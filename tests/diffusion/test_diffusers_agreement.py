"""Step-by-step agreement with diffusers' schedulers, and where (and why) ours differs.

diffusers' DDIM steps from ``t`` to ``t - T//n``. That is the next listed timestep for ``leading``
spacing and for ``trailing`` when ``n`` divides ``T``, so there both must agree to float precision.
For ``linspace`` (999, 888, ..., 0 with T=1000, n=10) ``t - T//n`` gives 899, 788, ...: off the
list. Ours steps 999 -> 888, as the list says.
"""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from cdm4mi.diffusion import NoiseSchedule, ScheduleDenoiser, ddim_sample, ddim_step, ddpm_sample
from cdm4mi.diffusion.timesteps import previous_timesteps, sampling_timesteps

PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
BETA_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
T = 1000


def dummy_model(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
    """A fixed nonlinear function of x and t: any model will do for agreement."""
    return torch.tanh(0.7 * x + 0.3 * x.roll(1, dims=-1) + t.float().view(-1, *[1] * (x.ndim - 1)) / T)


def ours_and_theirs(schedule_name: str, parameterization: str, cls):
    schedule = NoiseSchedule(torch.as_tensor(cls(num_train_timesteps=T, beta_schedule=BETA_SCHEDULE[schedule_name]).betas, dtype=torch.float64))
    kwargs = dict(num_train_timesteps=T, beta_schedule=BETA_SCHEDULE[schedule_name], clip_sample=False,
                  prediction_type=PREDICTION_TYPE[parameterization])
    if cls is DDIMScheduler:
        kwargs.update(set_alpha_to_one=True, steps_offset=0)
    return schedule, kwargs


@pytest.mark.parametrize("spacing, num_steps", [("leading", 10), ("leading", 37), ("trailing", 10), ("trailing", 50)])
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule_name", sorted(BETA_SCHEDULE))
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_agrees_with_diffusers_step_by_step(spacing, num_steps, parameterization, schedule_name, eta):
    schedule, kwargs = ours_and_theirs(schedule_name, parameterization, DDIMScheduler)
    theirs = DDIMScheduler(timestep_spacing=spacing, **kwargs)
    theirs.set_timesteps(num_steps)
    timesteps = sampling_timesteps(T, num_steps, spacing)
    assert theirs.timesteps.tolist() == timesteps.tolist()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 6, generator=generator)
    for t, t_prev in zip(timesteps.tolist(), previous_timesteps(timesteps).tolist()):
        noise = torch.randn(x.shape, generator=generator)
        expected = theirs.step(dummy_model(x, torch.tensor([t])), t, x, eta=eta, variance_noise=noise).prev_sample
        x0, eps = ScheduleDenoiser(dummy_model, schedule, parameterization)(x, t)
        x = ddim_step(x0, eps, t, t_prev, schedule, eta, noise)
        torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_ddpm_agrees_with_diffusers_whole_chain(spacing, parameterization):
    """diffusers' DDPM does step to the next listed timestep, for every spacing, strided or not."""
    schedule, kwargs = ours_and_theirs("linear", parameterization, DDPMScheduler)
    theirs = DDPMScheduler(timestep_spacing=spacing, variance_type="fixed_small", **kwargs)
    theirs.set_timesteps(20)
    x_T = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    x = x_T.clone()
    generator = torch.Generator().manual_seed(2)
    for t in theirs.timesteps:
        x = theirs.step(dummy_model(x, t.view(1)), t, x, generator=generator).prev_sample
    ours = ddpm_sample(ScheduleDenoiser(dummy_model, schedule, parameterization), x_T,
                       sampling_timesteps(T, 20, spacing), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_full_ddim_chain_agrees_with_diffusers():
    schedule, kwargs = ours_and_theirs("scaled_linear", "v", DDIMScheduler)
    theirs = DDIMScheduler(timestep_spacing="trailing", **kwargs)
    theirs.set_timesteps(25)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    x = x_T.clone()
    for t in theirs.timesteps:
        x = theirs.step(dummy_model(x, t.view(1)), t, x).prev_sample
    ours = ddim_sample(ScheduleDenoiser(dummy_model, schedule, "v"), x_T, sampling_timesteps(T, 25, "trailing"))
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_linspace_is_where_diffusers_ddim_steps_off_its_own_list():
    schedule, kwargs = ours_and_theirs("linear", "eps", DDIMScheduler)
    theirs = DDIMScheduler(timestep_spacing="linspace", **kwargs)
    theirs.set_timesteps(10)
    assert theirs.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    expected = theirs.step(dummy_model(x, torch.tensor([999])), 999, x).prev_sample
    x0, eps = ScheduleDenoiser(dummy_model, schedule, "eps")(x, 999)
    # diffusers' result is exactly a step 999 -> 899 = 999 - 1000//10, a timestep not in its list ...
    torch.testing.assert_close(ddim_step(x0, eps, 999, 899, schedule), expected, rtol=1e-4, atol=1e-5)
    # ... while ours steps to the next listed timestep, 888, and so lands elsewhere.
    ours = ddim_step(x0, eps, 999, 888, schedule)
    assert (ours - expected).abs().max() > 1e-3


def test_linspace_mismatch_biases_diffusers_mean_on_gaussian_data():
    """The consequence, measured with the exact denoiser of N(1, 0.5^2) and 10 steps: each of
    diffusers' updates starts from a state whose noise level is not the one the model is told, and
    the sample mean drifts by ~0.1 sigma; ours stays within the standard error of the mean."""
    from gaussian_oracle import GaussianOracle

    mu, sigma, n = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), 20_000
    schedule, kwargs = ours_and_theirs("linear", "eps", DDIMScheduler)
    oracle = GaussianOracle(mu, sigma, schedule, "eps")
    x_T = oracle.marginal(999, n, torch.Generator().manual_seed(5))
    theirs = DDIMScheduler(timestep_spacing="linspace", **kwargs)
    theirs.set_timesteps(10)
    x = x_T.clone()
    for t in theirs.timesteps:
        x = theirs.step(oracle(x, t.view(1)), t, x).prev_sample
    ours = ddim_sample(ScheduleDenoiser(oracle, schedule), x_T, sampling_timesteps(T, 10, "linspace"))
    standard_error = sigma.item() / n**0.5
    assert abs(ours.mean().item() - 1.0) < 4 * standard_error
    assert abs(x.mean().item() - 1.0) > 0.03
