"""Rician noise: Rayleigh background, high-SNR limit, the Rice mean in between, options."""

import math

import numpy as np
import pytest
from scipy import stats

from cdm4mi.simulate.mri_noise import add_rician_noise


def test_zero_signal_is_rayleigh() -> None:
    out = add_rician_noise(np.zeros((1000, 1000)), sigma_percent=5.0, reference=200.0, seed=0)
    sigma = 10.0
    assert out.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.005)
    assert out.std() == pytest.approx(sigma * math.sqrt(2 - math.pi / 2), rel=0.005)


def test_high_snr_is_gaussian_around_the_signal() -> None:
    signal = np.full((500, 500), 1000.0, dtype=np.float32)
    out = add_rician_noise(signal, sigma_percent=1.0, reference=1000.0, seed=1)
    assert out.mean() == pytest.approx(1000.0 + 10.0**2 / (2 * 1000.0), abs=0.1)  # Rician bias sigma^2/2s
    assert out.std() == pytest.approx(10.0, rel=0.01)


def test_mean_at_snr_one_matches_rice_distribution() -> None:
    out = add_rician_noise(np.full((800, 800), 20.0), sigma_percent=20.0, reference=100.0, seed=2)
    assert out.mean() == pytest.approx(stats.rice(b=1.0, scale=20.0).mean(), rel=0.005)


def test_default_reference_is_99th_percentile() -> None:
    image = np.zeros((400, 400), dtype=np.float32)
    image[100:300, 100:300] = np.linspace(100.0, 500.0, 200)[None, :]
    out = add_rician_noise(image, sigma_percent=2.0, seed=3)
    sigma = 0.02 * np.percentile(image, 99)
    assert (out - image)[150:250, 250:300].std() == pytest.approx(sigma, rel=0.03)


def test_reproducible_and_input_untouched() -> None:
    image = np.full((32, 32), 50.0, dtype=np.float32)
    first = add_rician_noise(image, 3.0, seed=4)
    np.testing.assert_array_equal(first, add_rician_noise(image, 3.0, rng=np.random.default_rng(4)))
    assert not np.array_equal(first, add_rician_noise(image, 3.0, seed=5))
    assert np.all(image == 50.0) and first.dtype == np.float32 and first.shape == image.shape


@pytest.mark.parametrize(
    "image, kwargs, option",
    [
        (np.ones((4, 4)), {"sigma_percent": -1.0}, "sigma_percent"),
        (np.ones((4, 4)), {"sigma_percent": 1.0, "reference": 0.0}, "reference"),
        (np.zeros((4, 4)), {"sigma_percent": 1.0}, "reference"),
        (np.full((4, 4), np.inf), {"sigma_percent": 1.0}, "image"),
        (np.ones((4, 4)), {"sigma_percent": 1.0, "seed": 1, "rng": np.random.default_rng()}, "seed, rng"),
    ],
)
def test_invalid_options_raise(image: np.ndarray, kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        add_rician_noise(image, **kwargs)
