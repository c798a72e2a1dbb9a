"""CT noise in HU from the scan alone (``estimate_ct_noise_hu``) against the simulator's known noise: a water
phantom at three doses and two pixel sizes, and the real CT_small slice with inserted noise. The white-noise
wavelet estimator (``estimate_noise_std``) reads far too low on FBP noise: asserted too."""

import math

import numpy as np
import pytest
from scan_files import CT_SMALL, water_phantom

from cdm4mi.data.normalize import HUWindow
from cdm4mi.io.read import load_scan
from cdm4mi.simulate.ct_dose import simulate_low_dose_ct
from cdm4mi.simulate.noise_estimate import (
    estimate_ct_noise_hu,
    estimate_input_noise,
    estimate_noise_std,
    soft_tissue_noise_hu,
    units_per_hu,
)

DOSES = (0.1, 0.25, 0.5)


@pytest.fixture(scope="module")
def phantom_cases() -> dict[tuple[float, float], tuple[np.ndarray, float]]:
    """(pixel mm, dose) -> (noisy slice, known noise std in soft tissue, HU)."""
    cases = {}
    for spacing in (0.5, 0.8):
        clean = water_phantom(256, spacing)
        for dose in DOSES:
            noisy = simulate_low_dose_ct(clean, spacing, dose, seed=round(100 * dose))
            cases[spacing, dose] = noisy, soft_tissue_noise_hu(noisy - clean, clean)
    return cases


@pytest.fixture(scope="module")
def ct_small() -> tuple[np.ndarray, tuple[float, float]]:
    scan = load_scan(CT_SMALL, modality="CT")
    return scan.array, scan.spacing_mm[1:]


@pytest.mark.parametrize("dose", DOSES)
@pytest.mark.parametrize("spacing", (0.5, 0.8))
def test_estimate_matches_simulated_fbp_noise_where_the_wavelet_one_reads_low(phantom_cases, spacing, dose):
    noisy, known = phantom_cases[spacing, dose]
    assert 4 < known < 20  # HU: 50 % to 10 % dose of a 11-20 cm phantom at I0 1.5e5
    assert estimate_ct_noise_hu(noisy) == pytest.approx(known, rel=0.15)  # measured 0.96-1.01
    # Ramp/Hann-filtered noise has little power on the finest wavelet scale: a quarter of the std is seen.
    assert estimate_noise_std(noisy[None]) < 0.4 * known


def test_noiseless_phantom_reads_zero():
    assert estimate_ct_noise_hu(water_phantom(256, 0.8)) < 0.5


def test_real_slice_noise_adds_in_quadrature(ct_small):
    """CT_small: the estimate on the slice with inserted noise is the sum in quadrature of the estimate on the
    original (its own noise, whatever texture counts as noise) and the std of the inserted noise."""
    original, spacing = ct_small
    own = estimate_ct_noise_hu(original)
    assert 10 < own < 50  # HU; the wavelet MAD gives 7
    assert estimate_noise_std(original) < 0.3 * own
    for flux, seed in ((3e3, 1), (1e4, 2)):  # low fluxes: CT_small is a 8.5 cm crop, little attenuation
        noisy = simulate_low_dose_ct(original, spacing, 0.25, incident_flux=flux, seed=seed)
        inserted = soft_tissue_noise_hu(noisy - original, original)
        assert inserted > 0.5 * own
        assert estimate_ct_noise_hu(noisy) == pytest.approx(math.hypot(own, inserted), rel=0.1)


def test_volume_is_the_median_of_its_slices(phantom_cases):
    slices = np.stack([phantom_cases[0.5, dose][0] for dose in DOSES])
    per_slice = [estimate_ct_noise_hu(s) for s in slices]
    assert estimate_ct_noise_hu(slices) == per_slice[1] == float(np.median(per_slice))
    assert estimate_ct_noise_hu(slices[:1]) == per_slice[0]


@pytest.mark.parametrize("image", [np.full((64, 64), -1000.0), np.full((64, 64), 500.0)])
def test_no_soft_tissue_gives_nan(image):
    assert math.isnan(estimate_ct_noise_hu(image))
    assert math.isnan(soft_tissue_noise_hu(np.ones_like(image), image))


def test_image_too_small_for_eight_windows_gives_nan():
    assert math.isnan(estimate_ct_noise_hu(np.zeros((10, 10))))
    assert math.isnan(estimate_ct_noise_hu(np.zeros((20, 40))))  # 2 x 4 windows
    assert estimate_ct_noise_hu(np.zeros((28, 35))) == 0  # 3 x 4


def test_estimate_input_noise_in_model_units(phantom_cases):
    noisy, _ = phantom_cases[0.8, 0.25]
    window = HUWindow(scale_hu=250.0)
    units = np.asarray(window.forward(noisy[None]))
    assert units_per_hu(window) == pytest.approx(1 / 250)
    assert estimate_input_noise(units, window, "ct_flat_regions") == pytest.approx(estimate_ct_noise_hu(noisy) / 250)
    assert estimate_input_noise(units, window, "wavelet") == estimate_noise_std(units)
    with pytest.raises(ValueError, match="noise_estimator"):
        estimate_input_noise(units, window, "mad")
