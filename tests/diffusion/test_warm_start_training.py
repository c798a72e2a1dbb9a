"""``DiffusionObjective(warm_start_share=...)``: training items warm-started from their own noisy input, as
inference starts them. The state has the noise of its timestep, the timestep matches the input's noise,
the targets are the ones that state implies (an oracle network scores zero), and without a share or a known
noise nothing changes."""

from __future__ import annotations

import pytest
import torch

from cdm4mi.config import load_config
from cdm4mi.diffusion import DiffusionObjective, NoiseSchedule

SCHEDULE = NoiseSchedule.from_config("linear", 1000)
SIGMA = 0.08  # the input's noise std, model units


def batch(size: int = 16, side: int = 64, seed: int = 0) -> tuple[torch.Tensor, dict, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.rand((size, 1, side, side), generator=generator) - 0.5
    noisy = x0 + SIGMA * torch.randn(x0.shape, generator=generator)
    return x0, {"image": noisy, "vector": torch.zeros(size, 2)}, torch.full((size,), SIGMA)


class Recorder:
    """A network that records what it was given and answers what ``answer(x_t, t)`` says."""

    def __init__(self, answer=None):
        self.answer, self.seen = answer, []

    def __call__(self, x_t, t, cond):
        self.seen.append((x_t.clone(), t.clone()))
        return torch.zeros_like(x_t) if self.answer is None else self.answer(x_t, t)


def test_a_warm_state_carries_the_noise_of_its_timestep_and_the_input_it_came_from():
    x0, cond, sigma = batch()
    objective = DiffusionObjective(SCHEDULE, "x0", "l2", max_train_timestep=200, warm_start_share=1.0)
    network = Recorder()
    objective.loss(network, x0, cond, torch.Generator().manual_seed(1), input_noise_std=sigma)
    x_t, t = network.seen[0]
    lowest, highest = (SCHEDULE.timestep_for_noise_std(SIGMA * factor) for factor in (1.0, 2**0.5))
    assert lowest < highest and bool(((t >= lowest) & (t <= highest)).all()) and len(set(t.tolist())) > 1
    alpha_bar = SCHEDULE.alpha_bar(t).view(-1, 1, 1, 1)
    # x_t / sqrt(abar) - x0: the input's noise plus the top-up, of std sqrt((1 - abar) / abar) as q(x_t | x0) has
    noise_std = (x_t / alpha_bar.sqrt() - x0).flatten(1).std(dim=1)
    expected = ((1 - alpha_bar) / alpha_bar).sqrt().flatten()
    torch.testing.assert_close(noise_std.double(), expected, rtol=0.05, atol=0)
    # and it is built on the input itself: what is left after removing the input is the top-up alone
    top_up = ((1 - alpha_bar) / alpha_bar - SIGMA**2).clamp(min=0).sqrt().flatten()
    torch.testing.assert_close((x_t / alpha_bar.sqrt() - cond["image"]).flatten(1).std(dim=1).double(), top_up,
                               rtol=0.05, atol=2e-3)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_an_oracle_network_scores_zero_on_warm_and_cold_items(parameterization):
    x0, cond, sigma = batch()

    def oracle(x_t, t):  # the exact answer for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, given x0
        alpha_bar = SCHEDULE.alpha_bar(t).view(-1, 1, 1, 1).float()
        eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        return {"eps": eps, "x0": x0, "v": alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0}[parameterization]

    objective = DiffusionObjective(SCHEDULE, parameterization, "l2", max_train_timestep=200, warm_start_share=0.5)
    loss = objective.loss(Recorder(oracle), x0, cond, torch.Generator().manual_seed(2), input_noise_std=sigma)
    assert float(loss) < 1e-8
    wrong = objective.loss(Recorder(), x0, cond, torch.Generator().manual_seed(2), input_noise_std=sigma)
    assert float(wrong) > 1e-3


def test_without_a_share_or_a_known_noise_the_loss_is_the_plain_one():
    x0, cond, sigma = batch()

    def run(objective, **kwargs):
        network = Recorder()
        loss = objective.loss(network, x0, cond, torch.Generator().manual_seed(3), **kwargs)
        return loss, network.seen[0]

    plain = run(DiffusionObjective(SCHEDULE, "x0", "l1", max_train_timestep=200))
    for objective, kwargs in [
        (DiffusionObjective(SCHEDULE, "x0", "l1", max_train_timestep=200, warm_start_share=0.0), {"input_noise_std": sigma}),
        (DiffusionObjective(SCHEDULE, "x0", "l1", max_train_timestep=200, warm_start_share=1.0), {}),
        # a real low-dose input (NaN: noise unknown) is never warm-started
        (DiffusionObjective(SCHEDULE, "x0", "l1", max_train_timestep=200, warm_start_share=1.0),
         {"input_noise_std": torch.full((len(x0),), float("nan"))}),
    ]:
        loss, (x_t, t) = run(objective, **kwargs)
        assert torch.equal(loss, plain[0]) and torch.equal(x_t, plain[1][0]) and torch.equal(t, plain[1][1])


def test_the_share_needs_simulated_inputs_of_known_noise():
    with pytest.raises(ValueError, match=r"diffusion.warm_start_share': needs data 'paired_scans' with "
                                         r"data.dose_augmentation"):
        load_config("configs/toy2d.yaml", ["diffusion.warm_start_share=0.5"])
    with pytest.raises(ValueError, match=r"diffusion.warm_start_share: a share in \[0, 1\]"):
        DiffusionObjective(SCHEDULE, "x0", warm_start_share=1.5)
    assert load_config("configs/ldct_2d.yaml").diffusion.warm_start_share == 0.5  # the recommended recipe
