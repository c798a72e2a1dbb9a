"""Schedules, timestep spacings, parameterization conversions and the training loss."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from cdm4mi.diffusion import (
    DiffusionObjective,
    NoiseSchedule,
    make_betas,
    prediction_target,
    q_sample,
    split_prediction,
)
from cdm4mi.diffusion.timesteps import previous_timesteps, sampling_timesteps

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("name", sorted(DIFFUSERS_NAME))
def test_betas_match_diffusers(name):
    # Our scaled_linear defaults to latent diffusion's range; diffusers wants it passed explicitly.
    beta_range = {"beta_start": 8.5e-4, "beta_end": 1.2e-2} if name == "scaled_linear" else {}
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAME[name], **beta_range).betas.double()
    torch.testing.assert_close(make_betas(name, 1000), theirs, rtol=1e-5, atol=1e-7)


def test_named_schedules_follow_their_formulas():
    # latent-diffusion's / CDM4MI's "sqrt": square roots of linearly spaced betas.
    sqrt = make_betas("sqrt", 1000)
    assert sqrt[0].item() == pytest.approx(0.01) and sqrt[-1].item() == pytest.approx(0.02**0.5)
    # latent-diffusion's "linear" is our scaled_linear: linear in sqrt(beta).
    root = make_betas("scaled_linear", 1000).sqrt()
    assert torch.allclose(root.diff(), root.diff()[0].expand(999), atol=1e-12)
    cosine = NoiseSchedule.from_config("cosine", 1000)
    assert cosine.betas.max().item() == pytest.approx(0.999)
    # abar follows cos^2 up to the cap at the very end.
    t = torch.arange(900)
    expected = torch.cos(((t + 1) / 1000 + 0.008) / 1.008 * torch.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    torch.testing.assert_close(cosine.alphas_cumprod[:900], expected.double(), rtol=1e-5, atol=1e-8)


def test_custom_betas_from_list_and_files(tmp_path):
    betas = np.linspace(1e-3, 0.05, 20)
    np.savetxt(tmp_path / "betas.txt", betas)
    np.save(tmp_path / "betas.npy", betas)
    for source in (betas.tolist(), tmp_path / "betas.txt", str(tmp_path / "betas.npy")):
        np.testing.assert_allclose(make_betas("custom", 20, betas=source).numpy(), betas)
    with pytest.raises(ValueError, match="diffusion.betas: 20 betas given but diffusion.timesteps is 10"):
        make_betas("custom", 10, betas=betas.tolist())
    with pytest.raises(ValueError, match=r"diffusion.betas: every beta must lie in \(0, 1\)"):
        make_betas("custom", 2, betas=[0.1, 1.5])
    with pytest.raises(ValueError, match="diffusion.betas: file not found"):
        make_betas("custom", 2, betas=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="diffusion.beta_schedule: unknown 'quadratic'"):
        make_betas("quadratic", 10)


def test_alpha_bar_lookup_and_noise_level():
    schedule = NoiseSchedule.from_config("linear", 1000)
    assert schedule.alpha_bar(torch.tensor(-1)).item() == 1.0
    assert schedule.alpha_bar(torch.tensor(0)).item() == pytest.approx(1 - 1e-4)
    torch.testing.assert_close(schedule.alpha_bar(torch.tensor([3, 999])), schedule.alphas_cumprod[[3, 999]])
    t = schedule.timestep_for_noise_std(0.1)
    ratio = ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt()
    assert ratio[t - 1] < 0.1 < ratio[t + 1]


@pytest.mark.parametrize(
    "spacing, expected",
    [
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_timestep_spacings(spacing, expected):
    timesteps = sampling_timesteps(1000, 10, spacing)
    assert timesteps.tolist() == expected
    assert previous_timesteps(timesteps).tolist() == expected[1:] + [-1]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 3, 7, 50])
def test_warm_start_timesteps_begin_at_t_start(spacing, num_steps):
    timesteps = sampling_timesteps(1000, num_steps, spacing, t_start=137)
    assert timesteps[0].item() == 137 and len(timesteps) == num_steps
    assert timesteps.min().item() >= 0 and bool((timesteps.diff() < 0).all())


def test_timestep_errors_name_the_option():
    with pytest.raises(ValueError, match="sampling.timestep_spacing: unknown 'middle'"):
        sampling_timesteps(1000, 10, "middle")
    with pytest.raises(ValueError, match=r"sampling.steps: must lie in \[1, 11\]"):
        sampling_timesteps(1000, 20, "trailing", t_start=10)
    with pytest.raises(ValueError, match="sampling.t_start"):
        sampling_timesteps(1000, 10, "trailing", t_start=1000)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine", "sqrt"])
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_conversions_are_exact(schedule_name, parameterization):
    schedule = NoiseSchedule.from_config(schedule_name, 1000)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, 5, generator=generator, dtype=torch.float64)
    eps = torch.randn(64, 3, 5, generator=generator, dtype=torch.float64)
    # Where abar ~ 0 (cosine's capped end, most of sqrt) x0 from eps is ill-conditioned by nature.
    usable = (schedule.alphas_cumprod > 1e-3).nonzero().flatten()
    t = usable[torch.randint(0, len(usable), (64,), generator=generator)]
    x_t = q_sample(schedule, x0, t, eps)
    target = prediction_target(parameterization, schedule, x0, eps, t)
    x0_back, eps_back = split_prediction(parameterization, schedule, target, x_t, t)
    torch.testing.assert_close(x0_back, x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eps_back, eps, rtol=1e-6, atol=1e-6)


def test_v_target_closed_form():
    schedule = NoiseSchedule.from_config("linear", 1000)
    x0, eps, t = torch.ones(2, 1), torch.zeros(2, 1), torch.tensor([0, 999])
    v = prediction_target("v", schedule, x0.double(), eps.double(), t)
    torch.testing.assert_close(v.flatten(), -(1 - schedule.alpha_bar(t)).sqrt())


@pytest.mark.parametrize("loss_type", ["l1", "l2", "huber"])
def test_loss_is_zero_for_a_perfect_model_and_positive_otherwise(loss_type):
    schedule = NoiseSchedule.from_config("linear", 100)
    objective = DiffusionObjective(schedule, "x0", loss_type)
    x0 = torch.randn(16, 4)
    perfect = lambda x_t, t, cond: x0  # noqa: E731 - an x0-model that knows the answer
    assert objective.loss(perfect, x0).item() == pytest.approx(0.0, abs=1e-12)
    off_by_two = lambda x_t, t, cond: x0 + 2  # noqa: E731
    expected = {"l1": 2.0, "l2": 4.0, "huber": 1.5}[loss_type]  # huber(2, delta=1) = 2 - 0.5
    assert objective.loss(off_by_two, x0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("parameterization, expected", [("eps", "min/snr"), ("x0", "min"), ("v", "min/(snr+1)")])
def test_min_snr_weights(parameterization, expected):
    schedule = NoiseSchedule.from_config("linear", 1000)
    objective = DiffusionObjective(schedule, parameterization, min_snr_gamma=5.0)
    t = torch.tensor([0, 100, 500, 999])
    snr = schedule.signal_to_noise(t)
    clipped = snr.clamp(max=5.0)
    reference = {"min/snr": clipped / snr, "min": clipped, "min/(snr+1)": clipped / (snr + 1)}[expected]
    torch.testing.assert_close(objective.weights(t), reference)
    assert objective.weights(torch.tensor([999]))[0].item() == pytest.approx(1.0 if parameterization == "eps" else reference[-1].item())


def test_objective_rejects_unknown_options():
    schedule = NoiseSchedule.from_config("linear", 10)
    with pytest.raises(ValueError, match="diffusion.parameterization: unknown 'score'"):
        DiffusionObjective(schedule, "score")
    with pytest.raises(ValueError, match="diffusion.loss_type: unknown 'l3'"):
        DiffusionObjective(schedule, "eps", "l3")
