"""The score-SDE view (Song et al. 2021): SDE coefficients, predictor-corrector and probability-flow ODE
sampling, and the score-matching loss, checked against closed forms.

Data ``x0 ~ N(mu, sigma^2)`` per coordinate (mu = [1.5, -0.5], sigma = [0.5, 2], as in
test_samplers_closed_form.py) has an exact network for every SDE: ``eps*(x_t) = std (x_t - signal mu) /
(signal^2 sigma^2 + std^2)``. ``SDEOracle`` is that network behind the real interface: it receives
``c_in x_t`` and ``network_time(t)`` and undoes both itself. Samplers start from the exact marginal at t = 1.

Distribution checks (N = 10,000 samples, seed 1) allow 4 standard errors (``sigma / sqrt(N)`` for the
mean, ``1 / sqrt(2N)`` for the relative std) plus each sampler's measured bias (seeds 1-3):

* PC, 500 steps, snr 0.16, one corrector step: the std of the narrow coordinate (sigma 0.5) is 2.3-3.5 %
  too large on every SDE, all else within noise. That is the corrector's own bias: unadjusted Langevin with
  step e inflates the variance v of a coordinate by about e / (2 v), and Song's step size is set from the
  batch-mean norms, dominated by the narrow coordinate. Allowed: 4 %.
* Euler-Maruyama (n_corrector = 0), 500 steps: within noise (<= 1.9 % in the std, <= 2.8 % of sigma in
  the mean). Allowed: 1.5 %.
* ODE, Euler 1000 steps: VP and discrete VP within noise; VE's std is 2-3.2 % too small (Euler trails the
  growth of x under sigma_max = 50). Allowed: 3.5 %. Heun 100 steps and rk45: within noise. Allowed: 1 %.

The ODE is also checked sample by sample against its exact map ``(x_t - signal_t mu) / sqrt(signal_t^2
sigma^2 + std_t^2) = const`` (followed by the x0 estimate at t_min), max error / sigma over 2,000 samples:
rk45 2-4e-5 (VP, VE), 4e-4 (discrete VP, whose beta(t) has kinks at the indices); Heun 200 steps 3e-4
(VP), 4e-3 (VE), 2e-4 (discrete VP), and halving the steps multiplies the error by 4.0-5.1 (second order);
Euler's error doubles (1.95-1.98).
"""

import math

import pytest
import torch

from cdm4mi.diffusion import NoiseSchedule
from cdm4mi.diffusion.denoiser import SDEDenoiser
from cdm4mi.diffusion.ode import ode_encode, ode_sample
from cdm4mi.diffusion.pc import pc_sample
from cdm4mi.diffusion.schedule import broadcast_to
from cdm4mi.diffusion.sde import VESDE, VPSDE, DiscreteVPSDE, ScoreMatchingObjective, sampling_times, sde_from_config

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([0.5, 2.0], dtype=torch.float64)
N = 10_000
ONE = torch.ones((), dtype=torch.float64)


def pc(network, x, sde, steps=500, parameterization="eps", **options):
    """Predictor-corrector over ``steps`` evenly spaced SDE times, for a network of ``parameterization``."""
    return pc_sample(SDEDenoiser(network, sde, parameterization), x, sampling_times(sde, steps), **options)


def ode(network, x, sde, steps=100, parameterization="eps", **options):
    return ode_sample(SDEDenoiser(network, sde, parameterization), x, sampling_times(sde, steps), **options)


def encode(network, x0, sde, steps=100, parameterization="eps", **options):
    return ode_encode(SDEDenoiser(network, sde, parameterization), x0, sampling_times(sde, steps), **options)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors of 20,000 numbers gain nothing from a second thread, and when another job keeps the other core
    busy every transcendental op waits for it (36 ms instead of 0.2 ms); restore the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_sde(name: str):
    if name == "vp":
        return VPSDE()
    if name == "ve":
        return VESDE()
    return DiscreteVPSDE(NoiseSchedule.from_config(name.removeprefix("discrete_"), 1000))


SDES = ["vp", "ve", "discrete_linear"]


class SDEOracle:
    """The exact network for N(mu, sigma^2) data: ``model(c_in x_t, network_time(t), cond)`` -> eps / x0 / v.

    ``mu`` and ``sigma`` broadcast against one sample (``[2]`` for vectors, ``[2, 1, 1]`` for images).
    """

    def __init__(self, sde, parameterization: str = "eps", mu: torch.Tensor = MU, sigma: torch.Tensor = SIGMA):
        self.sde, self.parameterization, self.mu, self.sigma = sde, parameterization, mu, sigma
        self.calls = 0

    def __call__(self, x_in: torch.Tensor, network_time: torch.Tensor, cond: object = None) -> torch.Tensor:
        self.calls += 1
        assert network_time.shape == (x_in.shape[0],)
        t = network_time / self.sde.network_time(ONE)  # every network_time is t times a constant
        signal, std = (broadcast_to(value, x_in) for value in self.sde.marginal(t))
        c_in = (signal**2 + std**2).rsqrt()
        x_t = x_in / c_in
        variance = signal**2 * self.sigma**2 + std**2
        eps = std * (x_t - signal * self.mu) / variance
        x0 = self.mu + signal * self.sigma**2 * (x_t - signal * self.mu) / variance
        return {"eps": eps, "x0": x0, "v": c_in * (signal * eps - std * x0)}[self.parameterization]


def marginal_moments(sde, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the data's marginal at time t, per coordinate."""
    signal, std = sde.marginal(torch.tensor(t, dtype=torch.float64))
    return signal * MU, (signal**2 * SIGMA**2 + std**2).sqrt()


def exact_prior(sde, n: int, generator: torch.Generator) -> torch.Tensor:
    mean, std = marginal_moments(sde, 1.0)
    return mean + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def exact_flow(sde, x_1: torch.Tensor) -> torch.Tensor:
    """Where the probability-flow ODE takes ``x_1``: to t_min, then the x0 estimate there."""
    mean_1, std_1 = marginal_moments(sde, 1.0)
    signal, _ = sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64))
    _, std_min = marginal_moments(sde, sde.t_min)
    return MU + signal * SIGMA**2 / std_min * (x_1 - mean_1) / std_1


# ---------------------------------------------------------------------------------------------- the SDEs


@pytest.mark.parametrize("name", ["vp", "ve", "discrete_linear", "discrete_cosine"])
def test_marginal_follows_the_sde(name):
    """d log(signal)/dt = f and d(std^2)/dt = 2 f std^2 + g^2 (the variance of x_t for x0 = 0)."""
    sde = make_sde(name)
    # Between the discrete schedule's indices (where beta(t) is smooth), and clear of its capped end.
    t = (torch.arange(20, 980, 37, dtype=torch.float64) + 0.3) / 999
    h = 1e-6
    signal_up, std_up = sde.marginal(t + h)
    signal_down, std_down = sde.marginal(t - h)
    f, g = sde.coefficients(t)
    _, std = sde.marginal(t)
    torch.testing.assert_close((signal_up.log() - signal_down.log()) / (2 * h), f, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close((std_up**2 - std_down**2) / (2 * h), 2 * f * std**2 + g**2, rtol=1e-6, atol=1e-6)
    x = torch.randn(len(t), 3, 4, 4, dtype=torch.float64)
    drift, diffusion = sde.drift_and_diffusion(x, t)
    torch.testing.assert_close(drift, f[:, None, None, None] * x)
    assert diffusion.shape == (len(t), 1, 1, 1)
    torch.testing.assert_close(diffusion.flatten(), g)


def test_prior_ends():
    vp, ve = VPSDE(beta_min=0.1, beta_max=20.0), VESDE(sigma_min=0.01, sigma_max=50.0)
    signal, std = vp.marginal(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert signal.tolist() == pytest.approx([1.0, math.exp(-(0.1 + 20.0) / 4)], rel=1e-12)
    torch.testing.assert_close(signal**2 + std**2, torch.ones(2, dtype=torch.float64))
    signal, std = ve.marginal(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert signal.tolist() == [1.0, 1.0, 1.0]
    assert std.tolist() == pytest.approx([0.01, math.sqrt(0.01 * 50), 50.0], rel=1e-12)
    assert (vp.name, vp.t_min, ve.name, ve.t_min) == ("vp", 1e-3, "ve", 1e-5)
    for sde, prior_std in [(vp, 1.0), (ve, 50.0), (make_sde("discrete_linear"), 1.0)]:
        draw = sde.prior_sample((20_000, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert draw.shape == (20_000, 3) and draw.dtype == torch.float64
        assert draw.std().item() == pytest.approx(prior_std, rel=0.02)
        assert draw.mean().abs().item() < 0.03 * prior_std
        again = sde.prior_sample((20_000, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert torch.equal(draw, again)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_discrete_vp_is_the_schedule_at_its_indices(schedule_name):
    schedule = NoiseSchedule.from_config(schedule_name, 1000)
    sde = DiscreteVPSDE(schedule)
    index = torch.arange(1000, dtype=torch.float64)
    t = index / 999
    signal, std = sde.marginal(t)
    torch.testing.assert_close(signal**2, schedule.alphas_cumprod, rtol=1e-10, atol=0)
    torch.testing.assert_close(std**2, 1 - schedule.alphas_cumprod, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(sde.network_time(t), index)
    # Between indices: monotone, beta >= 0, and the integral of beta over one index is -log(1 - beta_k).
    fine = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    signal_fine, _ = sde.marginal(fine)
    assert bool((signal_fine.diff() <= 0).all())
    f, g = sde.coefficients(fine)
    assert bool((g >= 0).all()) and bool(torch.isfinite(g).all())
    k = 500
    segment = torch.linspace(k / 999, (k + 1) / 999, 2001, dtype=torch.float64)
    beta = sde.coefficients(segment)[1] ** 2
    assert torch.trapezoid(beta, segment).item() == pytest.approx(-math.log(1 - schedule.betas[k + 1].item()), rel=1e-5)
    assert (sde.name, sde.t_min) == ("discrete_vp", 0.0)


# ---------------------------------------------------------------------------------------------- sampling

SAMPLERS = {
    # name: (run(oracle, x_1, sde, generator), allowed bias as a fraction of sigma)
    "pc": (lambda model, x, sde, g: pc(model, x, sde, 500, generator=g), 0.04),
    "euler_maruyama": (lambda model, x, sde, g: pc(model, x, sde, 500, n_corrector=0, generator=g), 0.015),
    "ode_euler": (lambda model, x, sde, g: ode(model, x, sde, 1000, method="euler"), 0.035),
    "ode_heun": (lambda model, x, sde, g: ode(model, x, sde, 100, method="heun"), 0.01),
    "ode_rk45": (lambda model, x, sde, g: ode(model, x, sde, method="rk45"), 0.01),
}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("sde_name", SDES)
def test_exact_network_reproduces_gaussian(sde_name, sampler):
    sde = make_sde(sde_name)
    run, bias = SAMPLERS[sampler]
    generator = torch.Generator().manual_seed(1)
    samples = run(SDEOracle(sde), exact_prior(sde, N, generator), sde, generator)
    assert samples.shape == (N, 2)
    assert_gaussian(samples, bias)


def assert_gaussian(samples: torch.Tensor, bias: float) -> None:
    mean_tolerance = 4 * SIGMA / math.sqrt(N) + bias * SIGMA
    std_tolerance = 4 / math.sqrt(2 * N) + bias
    assert bool(((samples.mean(0) - MU).abs() < mean_tolerance).all()), (samples.mean(0), MU)
    assert bool(((samples.std(0) / SIGMA - 1).abs() < std_tolerance).all()), (samples.std(0), SIGMA)


def test_a_wrong_parameterization_fails_the_same_check():
    """The check above has teeth: an x0 network read as eps gives the wrong distribution."""
    sde = VPSDE()
    generator = torch.Generator().manual_seed(1)
    samples = pc(SDEOracle(sde, "x0"), exact_prior(sde, N, generator), sde, 200, generator=generator)
    with pytest.raises(AssertionError):
        assert_gaussian(samples, 0.04)


@pytest.mark.parametrize("sde_name", SDES)
def test_probability_flow_is_the_exact_map(sde_name):
    sde = make_sde(sde_name)
    x_1 = exact_prior(sde, 2000, torch.Generator().manual_seed(2))
    expected = exact_flow(sde, x_1)

    def error(method: str, steps: int = 100) -> float:
        return ((ode(SDEOracle(sde), x_1, sde, steps, method=method) - expected).abs() / SIGMA).max().item()

    assert error("rk45") < (1e-3 if sde_name.startswith("discrete") else 1e-4)
    heun_coarse, heun_fine = error("heun", 100), error("heun", 200)
    assert heun_fine < (5e-3 if sde_name == "ve" else 5e-4)
    assert 3.5 < heun_coarse / heun_fine < 6
    euler_coarse, euler_fine = error("euler", 100), error("euler", 200)
    assert 1.8 < euler_coarse / euler_fine < 2.2


@pytest.mark.parametrize("sde_name", ["vp", "discrete_linear"])
@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_x0_and_v_networks_sample_like_eps(sde_name, parameterization):
    sde = make_sde(sde_name)
    x_1 = exact_prior(sde, 500, torch.Generator().manual_seed(3))
    for run in (lambda p: ode(SDEOracle(sde, p), x_1, sde, 50, p),
                lambda p: pc(SDEOracle(sde, p), x_1, sde, 50, p, generator=torch.Generator().manual_seed(4))):
        torch.testing.assert_close(run(parameterization), run("eps"), rtol=1e-9, atol=1e-9)


def test_x0_network_on_ve_samples_like_eps():
    sde = VESDE()
    x_1 = exact_prior(sde, 500, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ode(SDEOracle(sde, "x0"), x_1, sde, 50, "x0"),
                               ode(SDEOracle(sde), x_1, sde, 50), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", SDES)
def test_ode_encoding_is_the_exact_inverse_map(sde_name):
    """Encoding starts from signal(t_min) x0; decoding ends with the x0 estimate at t_min, which shrinks
    x0 - mu by signal^2 sigma^2 / (signal^2 sigma^2 + std^2) there (a 1e-4 effect, kept in the check)."""
    sde = make_sde(sde_name)
    model = SDEOracle(sde)
    x0 = MU + SIGMA * torch.randn(2000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    signal, _ = sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64))
    mean_min, std_min = marginal_moments(sde, sde.t_min)
    mean_1, std_1 = marginal_moments(sde, 1.0)
    expected_latent = mean_1 + std_1 * (signal * x0 - mean_min) / std_min
    latent = encode(model, x0, sde, method="rk45")
    tolerance = 1e-3 if sde_name.startswith("discrete") else 1e-4
    assert ((latent - expected_latent).abs() / std_1).max().item() < tolerance
    shrink = signal**2 * SIGMA**2 / std_min**2
    restored = ode(model, encode(model, x0, sde, 200), sde, 200)
    assert ((restored - (MU + shrink * (x0 - MU))).abs() / SIGMA).max().item() < (1e-2 if sde_name == "ve" else 1e-3)


def test_pc_is_repeatable_with_a_generator_and_rk45_callbacks_see_the_dense_path():
    sde = VPSDE()
    model = SDEOracle(sde)
    x_1 = exact_prior(sde, 100, torch.Generator().manual_seed(6))
    runs = [pc(model, x_1, sde, 20, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], pc(model, x_1, sde, 20, generator=torch.Generator().manual_seed(8)))
    seen = []
    result = ode(model, x_1, sde, 5, method="rk45", callback=lambda step, t, x, x0: seen.append((step, t, x, x0)))
    assert [step for step, *_ in seen] == [0, 1, 2, 3, 4]
    assert [t for _, t, *_ in seen] == pytest.approx(torch.linspace(1, sde.t_min, 5).tolist())
    assert torch.equal(seen[-1][2], result) and torch.equal(seen[-1][3], result)
    # The state after step 2 is the dense solution at the step's next time; compare with the exact map.
    t_next = seen[3][1]
    mean_1, std_1 = marginal_moments(sde, 1.0)
    mean_t, std_t = marginal_moments(sde, t_next)
    torch.testing.assert_close(seen[2][2], mean_t + std_t * (x_1 - mean_1) / std_1, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 2), (2, 1, 8, 8), (1, 1, 4, 4, 4)])
@pytest.mark.parametrize("sampler", ["pc", "euler", "heun", "rk45"])
def test_samplers_are_shape_agnostic_and_call_back_every_step(shape, sampler):
    def model(x, t, cond):
        assert t.shape == (shape[0],)
        return 0.1 * x

    for sde in (VPSDE(), VESDE(), make_sde("discrete_linear")):
        x = sde.prior_sample(shape, generator=torch.Generator().manual_seed(0))
        steps = []
        callback = lambda step, t, x_step, x0, seen=steps: seen.append((step, t, x_step.shape, x0.shape))  # noqa: E731
        if sampler == "pc":
            result = pc(model, x, sde, 4, callback=callback)
        else:
            result = ode(model, x, sde, 4, method=sampler, callback=callback)
        assert result.shape == shape and result.dtype == x.dtype
        assert [step for step, *_ in steps] == [0, 1, 2, 3]
        assert [t for _, t, *_ in steps] == pytest.approx(torch.linspace(1, sde.t_min, 4).tolist())
        assert all(a == shape and b == shape for *_, a, b in steps)


# ------------------------------------------------------------------------------------------------ the loss


def expected_loss(sde, parameterization: str, loss_type: str = "l2") -> float:
    """E over t ~ U[t_min, 1], x0, z of the oracle's loss: per coordinate the target's posterior variance,
    ``w(t) * Var(z | x_t)`` with ``Var(z | x_t) = signal^2 sigma^2 / (signal^2 sigma^2 + std^2)`` and
    ``w = 1`` (eps), ``std^2 / signal^2`` (x0), ``(signal^2 + std^2) / signal^2`` (v); l1 takes
    ``E|N(0, v)| = sqrt(2 v / pi)``."""
    t = torch.linspace(sde.t_min, 1, 20_001, dtype=torch.float64)
    signal, std = (value[:, None] for value in sde.marginal(t))
    variance = signal**2 * SIGMA**2 / (signal**2 * SIGMA**2 + std**2)
    weight = {"eps": 1.0, "x0": std**2 / signal**2, "v": (signal**2 + std**2) / signal**2}[parameterization]
    per_coordinate = weight * variance
    if loss_type == "l1":
        per_coordinate = (2 * per_coordinate / math.pi).sqrt()
    return (torch.trapezoid(per_coordinate.mean(1), t) / (1 - sde.t_min)).item()


def monte_carlo_loss(objective, model, x0: torch.Tensor, repeats: int = 8) -> tuple[float, float]:
    """Mean and standard error of ``objective.loss`` over independent draws."""
    losses = torch.tensor([objective.loss(model, x0, generator=torch.Generator().manual_seed(seed)).item()
                           for seed in range(repeats)], dtype=torch.float64)
    return losses.mean().item(), (losses.std() / math.sqrt(repeats)).item()


@pytest.mark.parametrize("sde_name, parameterization, loss_type", [
    ("vp", "eps", "l2"), ("vp", "x0", "l2"), ("vp", "v", "l2"), ("vp", "eps", "l1"),
    ("ve", "eps", "l2"), ("ve", "x0", "l2"), ("ve", "eps", "l1"), ("discrete_linear", "eps", "l2"),
])
def test_loss_of_the_exact_network_is_its_closed_form_minimum(sde_name, parameterization, loss_type):
    sde = make_sde(sde_name)
    objective = ScoreMatchingObjective(sde, parameterization, loss_type)
    x0 = MU + SIGMA * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mean, standard_error = monte_carlo_loss(objective, SDEOracle(sde, parameterization), x0)
    expected = expected_loss(sde, parameterization, loss_type)
    assert standard_error < 0.01 * expected  # the check below is sharp
    assert abs(mean - expected) < 4 * standard_error + 2e-3 * expected, (mean, expected, standard_error)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_a_perturbed_network_scores_worse_by_exactly_its_offset(sde_name):
    """With the same t and z, adding delta to eps* adds delta^2 + 2 delta mean(eps* - z); the second term
    has mean zero and variance (the oracle's loss) / (B D)."""
    sde = make_sde(sde_name)
    objective = ScoreMatchingObjective(sde)
    x0 = MU + SIGMA * torch.randn(50_000, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    oracle, delta = SDEOracle(sde), 0.1
    exact = objective.loss(oracle, x0, generator=torch.Generator().manual_seed(11)).item()
    perturbed = objective.loss(lambda x, t, c: oracle(x, t, c) + delta, x0, generator=torch.Generator().manual_seed(11)).item()
    noise = 2 * delta * math.sqrt(expected_loss(sde, "eps") / x0.numel())
    assert abs(perturbed - exact - delta**2) < 4 * noise


def test_loss_works_on_images_and_feeds_the_network_scaled_inputs():
    """[B, C, H, W] data with per-channel mu, sigma: the same closed form. Under VE the network sees unit
    variance inputs (c_in x_t) for unit-variance data, and t * 999 as its timestep."""
    sde = VESDE()
    mu, sigma = MU.reshape(2, 1, 1), SIGMA.reshape(2, 1, 1)
    x0 = mu + sigma * torch.randn(2000, 2, 3, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    objective = ScoreMatchingObjective(sde)
    mean, standard_error = monte_carlo_loss(objective, SDEOracle(sde, mu=mu, sigma=sigma), x0)
    assert abs(mean - expected_loss(sde, "eps")) < 4 * standard_error + 2e-3 * mean

    seen = {}

    def recorder(x, t, cond):
        seen.update(x=x, t=t, cond=cond)
        return torch.zeros_like(x)

    unit = torch.randn(50_000, 4, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    loss = objective.loss(recorder, unit, cond="c", generator=torch.Generator().manual_seed(14))
    assert loss.item() == pytest.approx(1.0, abs=0.02)  # a zero eps prediction costs E z^2 = 1
    assert seen["cond"] == "c" and seen["t"].shape == (50_000,)
    assert seen["x"].std().item() == pytest.approx(1.0, abs=0.01)
    t = seen["t"] / 999
    assert t.min().item() >= sde.t_min and t.max().item() <= 1
    assert t.mean().item() == pytest.approx((1 + sde.t_min) / 2, abs=0.005)


def test_loss_is_repeatable_with_a_generator_and_huber_interpolates_l1_and_l2():
    sde = VPSDE()
    x0 = torch.randn(64, 2, 4, 4)
    model = lambda x, t, c: 0.5 * x  # noqa: E731
    losses = {}
    for loss_type, delta in [("l2", 1.0), ("l1", 1.0), ("huber", 1e3), ("huber", 1e-4)]:
        objective = ScoreMatchingObjective(sde, "eps", loss_type, delta)
        losses[loss_type, delta] = objective.loss(model, x0, generator=torch.Generator().manual_seed(15))
        again = objective.loss(model, x0, generator=torch.Generator().manual_seed(15))
        assert torch.equal(losses[loss_type, delta], again) and losses[loss_type, delta].ndim == 0
    assert losses["huber", 1e3].item() == pytest.approx(0.5 * losses["l2", 1.0].item(), rel=1e-6)
    assert losses["huber", 1e-4].item() / 1e-4 == pytest.approx(losses["l1", 1.0].item(), rel=1e-3)
    other = ScoreMatchingObjective(sde).loss(model, x0, generator=torch.Generator().manual_seed(16))
    assert other.item() != losses["l2", 1.0].item()


# ------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("kwargs, key", [
    ({"kind": "subvp"}, "diffusion.sde.kind"),
    ({"kind": "vp", "beta_min": 0.0}, "diffusion.sde.beta_min"),
    ({"kind": "vp", "beta_min": 1.0, "beta_max": 0.5}, "diffusion.sde.beta_max"),
    ({"kind": "ve", "sigma_min": -1.0}, "diffusion.sde.sigma_min"),
    ({"kind": "ve", "sigma_min": 1.0, "sigma_max": 1.0}, "diffusion.sde.sigma_max"),
    ({"kind": "vp", "t_min": 0.0}, "diffusion.sde.t_min"),
    ({"kind": "ve", "t_min": 1.5}, "diffusion.sde.t_min"),
])
def test_bad_sde_options_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        sde_from_config(**kwargs)


def test_sde_from_config_builds_what_it_says():
    vp = sde_from_config("vp", beta_min=0.2, beta_max=10.0, t_min=1e-2)
    assert isinstance(vp, VPSDE) and (vp.beta_min, vp.beta_max, vp.t_min) == (0.2, 10.0, 1e-2)
    ve = sde_from_config("ve", sigma_min=0.02, sigma_max=80.0)
    assert isinstance(ve, VESDE) and (ve.sigma_min, ve.sigma_max, ve.t_min, ve.prior_std) == (0.02, 80.0, 1e-5, 80.0)


def test_bad_sampler_and_objective_options_name_the_key():
    vp, ve = VPSDE(), VESDE()
    model = lambda x, t, c: x  # noqa: E731
    x = torch.randn(2, 3)
    cases = [
        ("diffusion.parameterization", lambda: ScoreMatchingObjective(ve, "v")),
        ("diffusion.parameterization", lambda: ScoreMatchingObjective(vp, "score")),
        ("diffusion.loss_type", lambda: ScoreMatchingObjective(vp, "eps", "l3")),
        ("diffusion.huber_delta", lambda: ScoreMatchingObjective(vp, "eps", "huber", 0.0)),
        ("diffusion.parameterization", lambda: pc(model, x, ve, 5, "v")),
        ("diffusion.parameterization", lambda: ode(model, x, ve, 5, "v")),
        ("sampling.snr", lambda: pc(model, x, vp, 5, snr=0.0)),
        ("sampling.n_corrector", lambda: pc(model, x, vp, 5, n_corrector=-1)),
        ("sampling.steps", lambda: pc(model, x, vp, 0)),
        ("sampling.steps", lambda: ode(model, x, vp, 0)),
        ("sampling.ode_method", lambda: ode(model, x, vp, 5, method="rk4")),
        ("diffusion.timesteps", lambda: DiscreteVPSDE(NoiseSchedule.from_config("linear", 1))),
    ]
    for key, call in cases:
        with pytest.raises(ValueError, match=key):
            call()
